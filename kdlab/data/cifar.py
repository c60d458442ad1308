"""CIFAR-10 and CIFAR-100: downloaded once, verified, kept, read as uint8 tensors.

Where :func:`load_cifar` finds a dataset: ``root/<folder>/``, the extracted archive
(``cifar-10-batches-py``, ``cifar-100-python``), read directly; else the archive
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) kept in ``root`` or in the cache, or
downloaded from ``$KDLAB_CIFAR_URL`` (a mirror) or the home server, checked against
torchvision's MD5 and extracted: :func:`kdlab.data.download.fetch`, which Tiny-ImageNet shares.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from . import register_dataset
from .download import COLAB_DRIVE, Archive, CorruptArchiveError, cache_root, fetch
from .images import DatasetNotFoundError, ImageDataset

__all__ = ["load_cifar", "cache_root", "CorruptArchiveError", "CIFAR", "COLAB_DRIVE"]

CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        labels="labels",
        meta=("batches.meta", "label_names"),
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"],
        test=["test"],
        labels="fine_labels",
        meta=("meta", "fine_label_names"),
    ),
}


def archive(name: str) -> Archive:
    """The archive of ``name`` (read from :data:`CIFAR` at call time), mirror ``KDLAB_CIFAR_URL``."""
    spec = CIFAR[name]
    return Archive(name, spec["archive"], spec["url"], spec["md5"], spec["folder"],
                   "KDLAB_CIFAR_URL")  # fmt: skip


def _read_batches(folder: Path, files: list[str], label_key: str):
    images, labels = [], []
    for name in files:
        if not (folder / name).is_file():
            raise DatasetNotFoundError(
                f"{folder}/ is incomplete (no {name}): delete it and load the dataset again"
            )
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def load_cifar(name: str, root: Path, download: bool = True, progress: bool = True):
    """CIFAR-10/100 (``name``) from ``root``, fetched first where needed (module docstring).

    Raises DatasetNotFoundError (one line: what is missing, where it goes, why the download
    failed) and its subclass CorruptArchiveError for a partial or corrupted download.
    """
    spec = CIFAR[name]
    folder = root / spec["folder"]
    if not folder.is_dir():
        fetch(archive(name), root, download, progress)
    train_x, train_y = _read_batches(folder, spec["train"], spec["labels"])
    test_x, test_y = _read_batches(folder, spec["test"], spec["labels"])
    meta_file, meta_key = spec["meta"]
    if (folder / meta_file).exists():
        with open(folder / meta_file, "rb") as f:
            classes = list(pickle.load(f, encoding="latin1")[meta_key])
    else:
        classes = [str(c) for c in range(int(max(train_y.max(), test_y.max())) + 1)]
    return ImageDataset(name, train_x, train_y, test_x, test_y, classes, padding=4, flip=True)


@register_dataset("cifar10", summary="CIFAR-10: 50,000 + 10,000 images, 32×32 RGB, 10 classes")
def cifar10(root: Path, download: bool = True) -> ImageDataset:
    """CIFAR-10 (:func:`load_cifar`)."""
    return load_cifar("cifar10", root, download)


@register_dataset("cifar100", summary="CIFAR-100: 50,000 + 10,000 images, 32×32 RGB, 100 classes")
def cifar100(root: Path, download: bool = True) -> ImageDataset:
    """CIFAR-100 (:func:`load_cifar`)."""
    return load_cifar("cifar100", root, download)
