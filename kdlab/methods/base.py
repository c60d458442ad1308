"""The one kind of object every method is: a :class:`Method` plugged into :func:`kdlab.fit`.

A method owns its networks and says, for one batch, which named loss terms each network gets.
The training loop owns everything else: devices, precision, optimizers and schedules, backward,
logging, evaluation, checkpoints. Adding a method = one file in ``kdlab/methods/`` + a notebook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import nn

from ..losses import cross_entropy

Terms = dict[str, torch.Tensor]  # a network's named loss terms, e.g. {"ce": …, "kd": …}


class Update(Protocol):
    """``update({name: terms, ...}, also_step=())``, handed to :meth:`Method.training_step`.

    The loop zeroes the gradients of every named module, backpropagates the sum of every term
    of every named module, and steps the optimizer of each named module and of each module in
    ``also_step`` (and no other). ``also_step`` is for a module with no loss term of its own
    whose gradient comes through the named terms (kdml's adapters): name it there rather than
    handing the loop an empty set of terms for it.
    """

    def __call__(self, terms: Mapping[str, Terms], *, also_step: Sequence[str] = ()) -> None: ...


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (CLI, grids, :func:`kdlab.run`).

    A name can be registered once: a second class under a taken name is an error, not a silent
    replacement of the first.
    """
    taken = METHODS.get(cls.name)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"method name {cls.name!r} is taken by {taken.__module__}.{taken.__qualname__}"
        )
    METHODS[cls.name] = cls
    return cls


def check_weight(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be ≥ 0, got {value}")


def check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def rampup_weight(epoch: int, length: float = 80.0) -> float:
    """The sigmoid ramp-up ``w(e) = exp(−5 (1 − min(e − 1, L)/L)²)``, 1 once ``e > L``.

    The consistency ramp-up of the mean-teacher code that ONE (``cifar_one.py``,
    ``ramps.sigmoid_rampup``) and OKDDip (``train_GL.py``, ``get_current_consistency_weight``)
    call with their epoch counted from 0; kdlab's epochs count from 1, so epoch ``e`` here is
    their ``e − 1``: w(1) = e⁻⁵ ≈ 0.0067, w(40) ≈ 0.269, w(80) ≈ 0.9992, w(81) = 1. ``L = 0``
    switches the ramp off (w = 1 throughout). METHODS.md §11.
    """
    if length < 0:
        raise ValueError(f"rampup must be ≥ 0 epochs, got {length}")
    if length == 0:
        return 1.0
    current = min(max(epoch - 1, 0), length)
    return math.exp(-5.0 * (1.0 - current / length) ** 2)


def as_views(x: Any, count: int) -> list:
    """``count`` inputs for ``count`` learners: the views the loader gave (a tuple of that
    many tensors, see :attr:`Method.views`), or one tensor repeated."""
    if isinstance(x, (list, tuple)):
        if len(x) != count:
            raise ValueError(f"got {len(x)} augmented views for {count} learners")
        return list(x)
    return [x] * count


class Edge(NamedTuple):
    """One arrow of a method's teaching graph (:meth:`Method.teaching_edges`).

    ``kind``: ``"teaches"`` (the source's detached output is a target of the learner's KL
    term), ``"builds"`` (the source's output is part of a built teacher; gradient may flow),
    ``"ema"`` (the target is a temporal mean of the source, updated after each step).
    """

    source: str
    target: str
    kind: str = "teaches"


@dataclasses.dataclass
class NoParams:
    """This method has no parameters of its own."""


class Method(nn.Module):
    """Base class of every method.

    Subclasses set ``name``, a ``Params`` dataclass (the method's knobs with their defaults;
    ``validate`` raises ValueError before any training), and implement :meth:`training_step`.

    Attributes:
        networks: the networks the loop trains with its SGD and schedule, by role name
            (``net1``, ``peer1``, ``student``, ``teacher``…).
        frozen: networks that are evaluated but never trained (a pretrained teacher).
        auxiliary: further trained modules with optimizers of their own (discriminators),
            built by :meth:`auxiliary_optimizers`; the loop schedules their learning rates with
            the same shape as the networks' (:mod:`kdlab.optim`) and saves them in checkpoints.
    """

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    min_networks: ClassVar[int] = 1
    role: ClassVar[str] = "net"  # networks are named role1, role2, … (a lone student: student)
    teacher_mode: ClassVar[str | None] = (
        None  # None, "pretrained" (frozen) or "online" (trained too)
    )
    renamed: ClassVar[dict[str, str]] = {}  # old parameter name → new: an error that names it
    # The tasks (kdlab.tasks) whose batches the method's step reads: terms on logits and
    # features serve classification and retrieval (identity logits) alike.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "retrieval")

    label_smoothing: float = 0.0  # the recipe's ε (TrainConfig.label_smoothing), set by fit
    # How many augmented views of each training image a step receives (the data set's task
    # must offer them: ``task.multi_view``). 1: ``x`` is a B×C×H×W tensor. V > 1: ``x`` is a
    # tuple of V such tensors, the same images in the same order (one ``y``), each cropped and
    # flipped independently: KDCL's and PCL's per-student augmentation. A method may set it
    # per instance (it depends on its number of students).
    views: int = 1
    # Methods that train multi-branch networks (kdlab.models.branches) say so; the others
    # refuse one with a one-line error rather than fail on its B×m×C logits.
    trains_branches: ClassVar[bool] = False

    def __init__(self, networks: Mapping[str, nn.Module], **params: Any) -> None:
        super().__init__()
        self.params = make_params(self, params)
        self.networks = nn.ModuleDict(dict(networks))
        self.frozen = nn.ModuleDict()
        self.auxiliary = nn.ModuleDict()
        branched = [n for n, net in self.networks.items() if getattr(net, "num_branches", 0)]
        if branched and not self.trains_branches:
            raise ValueError(
                f"method {self.name!r} trains single-output networks; {branched[0]} is a "
                "multi-branch network (one, cl_ilr, okddip and pcl train those)"
            )
        if len(self.networks) < self.min_networks:
            raise ValueError(
                f"method {self.name!r} needs at least {self.min_networks} networks, "
                f"got {len(self.networks)}"
            )
        self.validate()

    # -- what subclasses provide ------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError for invalid parameter values (called before any training)."""

    def training_step(
        self, x: torch.Tensor, y: torch.Tensor, update: Update, *, epoch: int = 1, step: int = 0
    ) -> Terms:
        """Compute the loss terms of one batch and hand them to ``update`` (once or more).

        ``epoch`` counts from 1 and ``step`` (the batch within the epoch) from 0, for methods
        whose loss depends on where training is (DKD's warm-up).

        Returns further per-batch metrics to average over the epoch (e.g. a discriminator's
        accuracy), as detached tensors; the loop logs every loss term it was handed itself.
        """
        raise NotImplementedError

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers of the ``auxiliary`` modules, by the same names, at their initial learning
        rates: the loop multiplies each rate by the schedule's factor every epoch."""
        return {}

    def check_batch_size(self, batch_size: int) -> None:
        """Raise ValueError if a batch of ``batch_size`` samples is too small for the method."""

    # -- shared behaviour ---------------------------------------------------------------------
    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``CE(y, z)`` with the recipe's label smoothing (:func:`kdlab.losses.cross_entropy`):
        every method's cross-entropy with the label goes through here."""
        return cross_entropy(logits, y, self.label_smoothing)

    def evaluated(self) -> dict[str, nn.Module]:
        """Every network whose test accuracy is reported: the frozen ones first."""
        return {**dict(self.frozen), **dict(self.networks)}

    def ensemble_members(self) -> list[str]:
        """The networks whose mean softmax is the reported ensemble (empty: no ensemble)."""
        names = list(self.networks)
        return names if len(names) >= 2 else []

    def teaching_edges(self) -> list[Edge]:
        """Who learns from whom, as arrows between the names of :meth:`evaluated` (and of
        built teachers): what :func:`kdlab.plots.teaching_graph` draws. Default: none."""
        return []

    def cost_forward(self, x: torch.Tensor) -> None:
        """The forward passes one training step makes for one batch ``x``, without gradient:
        what :func:`kdlab.cost.method_cost` counts. Default: every network and frozen one."""
        for net in [*self.frozen.values(), *self.networks.values()]:
            net(x)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        self.frozen.eval()  # a frozen teacher stays in eval mode (BatchNorm statistics fixed)
        return self


def _unknown_parameter(method: Method | type[Method], key: str) -> ValueError:
    if key in method.renamed:
        return ValueError(
            f"method {method.name!r} has no parameter {key!r} any more: it is now "
            f"{method.renamed[key]!r}"
        )
    known = ", ".join(sorted(f.name for f in dataclasses.fields(method.Params))) or "none"
    return ValueError(f"unknown parameter {key!r} for method {method.name!r}; known: {known}")


class FrozenTeacherMethod(Method):
    """Offline distillation: students learn from a frozen, pretrained teacher (KD, DKD, DIST,
    logit standardisation, logit regression; FitNet and FSP, which also read stage features,
    write their own ``training_step`` on the same base).

    The teacher is put in ``frozen`` (eval mode, no gradient, never stepped) and forwarded once
    per batch under ``torch.no_grad()``; each student gets the terms of :meth:`student_terms`,
    which the subclass writes as its formula.
    """

    role = "student"
    teacher_mode = "pretrained"

    def __init__(self, networks: Mapping[str, nn.Module], teacher: nn.Module, **params: Any):
        super().__init__(networks, **params)
        teacher.requires_grad_(False)
        self.frozen["teacher"] = teacher

    def student_terms(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> Terms:
        """One student's named loss terms; ``teacher_logits`` are already detached."""
        raise NotImplementedError

    def training_step(self, x, y, update, *, epoch=1, step=0):
        with torch.no_grad():
            teacher_logits = self.frozen["teacher"](x)
        update(
            {
                name: self.student_terms(student(x), teacher_logits, y, epoch)
                for name, student in self.networks.items()
            }
        )
        return {}


def make_params(method: Method | type[Method], given: Mapping[str, Any]):
    """Build ``method.Params`` from keyword values, with a one-line error for unknown names
    (a renamed parameter's error names its new name)."""
    fields = {f.name for f in dataclasses.fields(method.Params)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise _unknown_parameter(method, unknown[0])
    return method.Params(**given)


def parse_value(method: type[Method], key: str, text: str) -> Any:
    """Convert ``--set key=text`` to the type of the parameter's default value."""
    fields = {f.name: f for f in dataclasses.fields(method.Params)}
    if key not in fields:
        raise _unknown_parameter(method, key)
    field = fields[key]
    default = field.default
    if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            # Elements take the type of the default's elements: (128, 256, 128), (0.5, 0.999).
            kind = float if any(isinstance(v, float) for v in default) else int
            separators = text if kind is float else text.replace("-", ",")
            return tuple(kind(v) for v in separators.split(",") if v)
        if default is None and text.lower() == "none":
            return None
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected a value like {default!r}") from None
    return text
