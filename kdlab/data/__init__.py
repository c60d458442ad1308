"""Datasets, one file each, found by name; and the device-resident batch loader.

Every data set lives in one module of this package: its on-disk format, its parsing rules, its
memory note and its one-line "not found" message, and a loader registered by name with
:func:`register_dataset`. Every module here is imported below, so a new data set file registers
itself. A data set knows its *task* (``dataset.task``, :mod:`kdlab.tasks`): the training loop asks
the task for its loaders and its evaluation and never branches on a data set's name.

- :mod:`.images`: :class:`ImageDataset` (uint8 images and labels) and :class:`DeviceLoader`;
- :mod:`.small`: the embedded ``digits`` set and MedMNIST's ``pathmnist``;
- :mod:`.cifar`: CIFAR-10 and CIFAR-100;
- :mod:`.download`: what archives share (download, checksum, mirror, cache, atomic write);
- :mod:`.tinyimagenet`: Tiny-ImageNet in its own format, decoded once into a cache;
- :mod:`.msi`: MSI vs MSS histology tiles (colorectal, gastric), never downloaded;
- :mod:`.reid_digits`: an embedded re-identification stand-in (retrieval task);
- :mod:`.market1501`: Market-1501, person re-identification (a manual download).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .images import DatasetNotFoundError, DeviceLoader, ImageDataset

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DeviceLoader",
    "ImageDataset",
    "default_root",
    "load_dataset",
    "register_dataset",
]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: its loader ``load(root, download, **options)``, its task's name,
    whether it needs no file and no network (``embedded``), and a one-line description."""

    name: str
    load: Callable[..., Any]
    task: str = "classification"
    embedded: bool = False
    summary: str = ""


DATASETS: dict[str, DatasetEntry] = {}
"""Every data set by name (iterating gives the names, in registration order)."""


def register_dataset(
    name: str, *, task: str = "classification", embedded: bool = False, summary: str = ""
) -> Callable:
    """Decorator: make ``load(root: Path, download: bool, **options)`` available as ``name``.

    A name can be registered once; a second loader under a taken name is an error."""

    def decorate(load: Callable) -> Callable:
        taken = DATASETS.get(name)
        if taken is not None and taken.load is not load:
            raise ValueError(f"dataset name {name!r} is taken by {taken.load.__module__}")
        DATASETS[name] = DatasetEntry(name, load, task, embedded, summary)
        return load

    return decorate


def default_root() -> Path:
    """Where datasets are cached: ``$KDLAB_DATA``, else the checkout's ``data/`` folder (when
    kdlab runs from a clone, whatever the working directory), else ``./data``."""
    if os.environ.get("KDLAB_DATA"):
        return Path(os.environ["KDLAB_DATA"])
    checkout = Path(__file__).resolve().parents[2] / "data"
    return checkout if checkout.is_dir() else Path("data")


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    train_size: int | None = None,
    download: bool = True,
    **options: Any,
):
    """Load the data set ``name`` (see :data:`DATASETS`; ``"digits"``, embedded, is the default).

    ``root`` is the cache folder (default :func:`default_root`); ``download=False`` never goes
    to the network. ``train_size`` keeps a fixed, class-balanced subset of the training split
    (the test split is always whole). ``options`` are the data set's own (an image size, say:
    see its loader's docstring).

    Raises ValueError for an unknown name or option, and DatasetNotFoundError, naming the files
    and where they go, when a data set is absent and cannot be downloaded.
    """
    entry = DATASETS.get(name)
    if entry is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    accepted = inspect.signature(entry.load).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            known = ", ".join(k for k in accepted if k not in ("root", "download")) or "none"
            raise ValueError(
                f"dataset {name!r} has no option {unknown[0]!r} (its options: {known})"
            )
    root = Path(root) if root is not None else default_root()
    dataset = entry.load(root, download, **options)
    return dataset.subset(train_size)


# The embedded sets first, so that listings start with what works offline.
for _name in sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: n != "small"):
    if _name != "images":
        importlib.import_module(f"{__name__}.{_name}")
