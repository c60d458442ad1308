"""Networks, one family per module, found by name through one registry.

Every classifier built by :func:`build_model` shares one interface:

* ``model(x)`` returns the logits, shape ``(B, num_classes)``;
* ``model(x, return_features=True)`` returns ``(logits, features)``, where ``features`` is a
  list with one feature map per stage (each ``B x C_s x H_s x W_s``), taken from the same forward
  pass, in order from the input side. The last entry is the last stage's output right before
  global average pooling, so the globally pooled last entry is the embedding the classifier
  reads (re-identification ranks by it);
* ``model.stage_channels`` lists the channel count of each entry of ``features``;
* ``model.feature_dim`` is the size of that pooled embedding (the channel count of the last
  stage);
* ``model.arch`` is the name the model was built with.

A family registers its builders with :func:`register_model` (one name) or
:func:`register_pattern` (a family of names such as ``wrn_<depth>_<width>``); every module of
this package is imported below, so a new family file registers itself. Each entry says its
``kind``: ``"classifier"`` (classification and retrieval data sets) or ``"detector"``; a data
set's task says which kind it trains (:mod:`kdlab.tasks`).

- :mod:`.cifar`: the CIFAR ResNets, wide ResNets, a MobileNet for 32×32 and small CNNs;
- :mod:`.preact`: the pre-activation bottleneck ResNet-164;
- :mod:`.imagenet`: ImageNet-sized MobileNetV1 (timm), InceptionV1 and ResNet-50 (torchvision).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["available_models", "build_model", "model_kind", "register_model", "register_pattern"]

KINDS = ("classifier", "detector")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered name: ``build(num_classes, in_channels, arch, **options)`` and its kind."""

    name: str
    build: Callable[..., nn.Module]
    kind: str = "classifier"


@dataclasses.dataclass(frozen=True)
class ModelPattern:
    """A family of names: ``regex`` (full match), the pattern as the listing shows it, a check
    of the match (a one-line reason when a name fits the regex but not the family's rule, else
    None), and ``build(match, num_classes, in_channels, arch, **options)``."""

    pattern: str
    regex: re.Pattern
    build: Callable[..., nn.Module]
    check: Callable[[re.Match], str | None]
    kind: str = "classifier"


MODELS: dict[str, ModelEntry] = {}
PATTERNS: list[ModelPattern] = []


def register_model(name: str, *, kind: str = "classifier") -> Callable:
    """Decorator: ``build(num_classes, in_channels, arch, **options)`` builds ``name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}")

    def decorate(build: Callable) -> Callable:
        taken = MODELS.get(name)
        if taken is not None and taken.build is not build:
            raise ValueError(f"model name {name!r} is taken by {taken.build.__module__}")
        MODELS[name] = ModelEntry(name, build, kind)
        return build

    return decorate


def register_pattern(
    pattern: str,
    regex: str,
    *,
    check: Callable[[re.Match], str | None] = lambda match: None,
    kind: str = "classifier",
) -> Callable:
    """Decorator: ``build(match, num_classes, in_channels, arch, **options)`` builds every name
    that fully matches ``regex`` (listed as ``pattern``, e.g. ``wrn_<depth>_<width>``)."""

    def decorate(build: Callable) -> Callable:
        PATTERNS.append(ModelPattern(pattern, re.compile(regex), build, check, kind))
        return build

    return decorate


def available_models(kind: str | None = None) -> list[str]:
    """Names accepted by :func:`build_model` (of one ``kind``, or all): the fixed names, then
    the patterns (e.g. ``wrn_<depth>_<width>``)."""
    names = [n for n, e in MODELS.items() if kind in (None, e.kind)]
    return names + [p.pattern for p in PATTERNS if kind in (None, p.kind)]


def _unknown(name: str, reason: str = "") -> ValueError:
    known = ", ".join(available_models())
    detail = f" ({reason})" if reason else ""
    return ValueError(f"unknown model {name!r}{detail}; known: {known}")


def _find(name: str) -> tuple[Callable[..., nn.Module], str]:
    """The builder of ``name`` (a pattern's with its match bound) and its kind."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name in MODELS:
        return MODELS[name].build, MODELS[name].kind
    for family in PATTERNS:
        match = family.regex.fullmatch(name)
        if match is not None:
            reason = family.check(match)
            if reason:
                raise _unknown(name, reason)
            return functools.partial(family.build, match), family.kind
    raise _unknown(name)


def model_kind(name: str) -> str:
    """``"classifier"`` or ``"detector"``: what the network ``name`` is; ValueError if unknown."""
    return _find(name)[1]


def build_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build the network ``name`` with ``num_classes`` outputs and ``in_channels`` input channels.

    ``options`` are the family's own (e.g. ``pretrained=True`` where a family offers weights;
    see its builder). Raises ``ValueError`` for an unknown name (the message lists the known
    ones) or option, for ``num_classes < 2`` or ``in_channels < 1``, and for a name that fits a
    family's pattern but not its rule (e.g. a ``wrn_<depth>_<width>`` whose depth is not
    ``6n + 4``).
    """
    build, kind = _find(name)
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    if int(in_channels) != in_channels or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels}")
    if options:
        target = MODELS[name].build if name in MODELS else None
        accepted = inspect.signature(target).parameters if target is not None else None
        if accepted is not None and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise ValueError(f"model {name!r} has no option {unknown[0]!r}")
    model = build(int(num_classes), int(in_channels), name, **options)
    model.kind = kind
    return model


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
