"""The small data sets: scikit-learn's embedded digits and MedMNIST's PathMNIST."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import register_dataset
from .images import DatasetNotFoundError, ImageDataset

__all__ = ["digits", "pathmnist", "PATHMNIST_CLASSES"]


@register_dataset(
    "digits",
    embedded=True,
    summary="scikit-learn's 8×8 handwritten digits (1,797 images), no network",
)
def digits(root: Path | None = None, download: bool = False) -> ImageDataset:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images): no network needed.

    Fixed split: a stratified 70 % / 30 % train/test split with random_state 0. No flips
    (a mirrored digit is another symbol), 1-pixel crop padding.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # N×1×8×8
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.3, random_state=0, stratify=bunch.target
    )
    return ImageDataset(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te).long(),
        [str(d) for d in range(10)],
        padding=1,
        flip=False,
    )


# MedMNIST's PathMNIST label names, in label order.
PATHMNIST_CLASSES = [
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
    "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
]  # fmt: skip

_PATHMNIST_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _download_pathmnist(medmnist, root: Path, name: str) -> None:
    """medmnist's download of ``name`` into a temporary folder in ``root``, then moved into place
    (``os.replace``: atomic), so that an interrupted download leaves nothing named ``name``."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".pathmnist.") as tmp:
        medmnist.PathMNIST(split="test", download=True, root=tmp)
        os.replace(Path(tmp) / name, root / name)


@register_dataset(
    "pathmnist", summary="MedMNIST's colorectal histology, 9 tissue classes, 28×28 RGB"
)
def pathmnist(root: Path, download: bool = True) -> ImageDataset:
    """MedMNIST's PathMNIST: colorectal cancer histology, 9 tissue classes, 28×28 RGB.

    Read from ``root/pathmnist.npz`` (MedMNIST's format: ``train_images`` N×28×28×3 uint8,
    ``train_labels`` N×1, likewise ``val_*`` and ``test_*``); when absent, the optional
    ``medmnist`` package downloads it there, into a temporary folder first (medmnist writes
    its download in place): only a finished, checked download is moved to ``root``, so a cut
    leaves no half file that a later load would read. The validation split is not used.
    """
    path = root / "pathmnist.npz"
    reason = ""
    if not path.exists() and download:
        try:
            import medmnist
        except ImportError:
            reason = " (the optional medmnist package is not installed)"
        else:
            try:
                _download_pathmnist(medmnist, root, path.name)
            except Exception as error:  # offline, or a failed download
                reason = f" (download failed: {error})".replace("\n", " ")
    if not path.exists():
        raise DatasetNotFoundError(
            f"pathmnist is not in {root}/ and could not be downloaded{reason}: put pathmnist.npz "
            f'(MedMNIST, 28×28) at {path}, or install the extra with pip install "kdlab[medmnist]" '
            f"on a machine with network; the 'digits' dataset works offline."
        )
    with np.load(path) as npz:
        missing = [k for k in _PATHMNIST_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path} is not in MedMNIST's format: it has no {', '.join(missing)}")
        arrays = {k: npz[k] for k in _PATHMNIST_KEYS}

    def images(a: np.ndarray) -> torch.Tensor:
        a = a[..., None] if a.ndim == 3 else a  # grayscale MedMNIST sets are N×H×W
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(torch.uint8)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(-1).astype(np.int64))

    return ImageDataset(
        "pathmnist",
        images(arrays["train_images"]),
        labels(arrays["train_labels"]),
        images(arrays["test_images"]),
        labels(arrays["test_labels"]),
        list(PATHMNIST_CLASSES),
        padding=2,
        flip=True,
    )
