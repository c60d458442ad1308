"""Tiny-ImageNet (200 classes, 64×64 RGB) in its own format, decoded once into uint8 arrays.

The archive ``tiny-imagenet-200.zip`` (cs231n's, 248,100,043 bytes, MD5
``90528d7ca1a48142e341f4ef8d21d0de``) extracts to ``tiny-imagenet-200/``::

    wnids.txt                               the 200 class ids (WordNet), one per line
    words.txt                               WordNet id → names (optional: the class names)
    train/<wnid>/images/<wnid>_<k>.JPEG     500 training images per class (100,000)
    val/images/val_<k>.JPEG                 10,000 validation images, all in one folder
    val/val_annotations.txt                 file <TAB> wnid <TAB> box (x0 y0 x1 y1)
    test/images/*.JPEG                      unlabelled: not read

The labels of the validation images come from ``val_annotations.txt``; the ``val/`` folder read
as an image folder (one class per sub-folder) puts all 10,000 images in one class and gives
chance accuracy, a common bug. The validation split is the test split here (the test images
have no public labels), as in the papers that report Tiny-ImageNet accuracy. Labels follow the
order of ``wnids.txt``. Some images are greyscale: they are converted to RGB (three equal
channels).

Memory: 100,000 × 3 × 64 × 64 bytes = 1.23 GB of uint8 training images (1.14 GiB) and 0.12 GB of
validation images, held on the training device by the device-resident loader. Decoding the
110,000 JPEGs takes a minute or two on one CPU core, so the decoded arrays are written once,
atomically, to ``root/tiny-imagenet-200.uint8.npz`` (uncompressed, 1.35 GB) and the next load
reads them in seconds. Delete that file to decode again.

Where the folder is missing, the archive is fetched like CIFAR's (:mod:`.download`): kept in
``root`` or the cache, or downloaded from ``$KDLAB_TINYIMAGENET_URL`` (a mirror) or cs231n's
server, with a progress bar and its MD5 checked.

Augmentation: random crop with 8 pixels of zero padding (CIFAR's 4 at 32 pixels, scaled to 64)
and horizontal flip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from . import register_dataset
from .download import Archive, fetch
from .images import DatasetNotFoundError, ImageDataset

__all__ = ["TINY_IMAGENET", "CACHE_FILE", "decode_folder", "tinyimagenet"]

TINY_IMAGENET = Archive(
    name="tinyimagenet",
    file="tiny-imagenet-200.zip",
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    md5="90528d7ca1a48142e341f4ef8d21d0de",
    folder="tiny-imagenet-200",
    mirror="KDLAB_TINYIMAGENET_URL",
)
CACHE_FILE = "tiny-imagenet-200.uint8.npz"
SIZE = 64
_CACHE_VERSION = 1  # bump when the cached arrays change meaning


def _read_image(path: Path) -> np.ndarray:
    """One JPEG as a 3×64×64 uint8 array (greyscale and CMYK converted to RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.shape != (SIZE, SIZE, 3):
        raise ValueError(
            f"{path} is {rgb.shape[1]}×{rgb.shape[0]}, not 64×64: not Tiny-ImageNet's format"
        )
    return rgb.transpose(2, 0, 1)


def _decode(paths: list[Path], desc: str, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    out = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, disable=not progress, file=sys.stderr)):
        out[i] = _read_image(path)
    return out


def _class_names(folder: Path, wnids: list[str]) -> list[str]:
    """The first WordNet name of every class (``words.txt``), else its id."""
    names = {}
    words = folder / "words.txt"
    if words.is_file():
        for line in words.read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            names[wnid] = text.split(",")[0].strip()
    return [names.get(w) or w for w in wnids]


def _incomplete(folder: Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{folder}/ is incomplete ({what}): delete it and load the dataset again, or put "
        f"{TINY_IMAGENET.file} into {folder.parent}/"
    )


def _validation(folder: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Validation images and their labels, read from ``val/val_annotations.txt``."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _incomplete(folder, "no val/val_annotations.txt")
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{annotations}:{number}: expected 'file<TAB>wnid<TAB>box' with a wnid of "
                f"wnids.txt, got {line!r}"
            )
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return paths, labels


def decode_folder(folder: Path, progress: bool = True) -> dict[str, np.ndarray]:
    """Every training and validation image of ``folder`` (``tiny-imagenet-200/``) and its label,
    as arrays: ``train_images`` N×3×64×64 uint8, ``train_labels`` N int64, ``test_images``,
    ``test_labels`` (the validation split), ``classes`` (names, in ``wnids.txt`` order)."""
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise _incomplete(folder, "no wnids.txt")
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        found = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not found:
            raise _incomplete(folder, f"no train/{wnid}/images/*.JPEG")
        train_paths += found
        train_labels += [index[wnid]] * len(found)
    val_paths, val_labels = _validation(folder, index)
    missing = next((p for p in val_paths if not p.is_file()), None)
    if missing is not None:
        raise _incomplete(folder, f"no val/images/{missing.name}")
    return {
        "train_images": _decode(train_paths, "decoding Tiny-ImageNet train", progress),
        "train_labels": np.asarray(train_labels, dtype=np.int64),
        "test_images": _decode(val_paths, "decoding Tiny-ImageNet val", progress),
        "test_labels": np.asarray(val_labels, dtype=np.int64),
        "classes": np.asarray(_class_names(folder, wnids)),
        "version": np.asarray(_CACHE_VERSION),
    }


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
            np.savez(f, **arrays)

    atomic_write(path, write)


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None for a cache of another format version."""
    with np.load(path, allow_pickle=False) as npz:
        if "version" not in npz.files or int(npz["version"]) != _CACHE_VERSION:
            return None
        return {key: npz[key] for key in npz.files}


@register_dataset(
    "tinyimagenet",
    summary="Tiny-ImageNet: 100,000 + 10,000 (val) images, 64×64 RGB, 200 classes; 1.35 GB",
)
def tinyimagenet(root: Path, download: bool = True, progress: bool = True) -> ImageDataset:
    """Tiny-ImageNet from ``root`` (module docstring): the decoded cache
    ``root/tiny-imagenet-200.uint8.npz`` if there, else the folder ``root/tiny-imagenet-200/``
    (fetched first where needed), decoded and cached.

    Raises DatasetNotFoundError (one line) when the data set is absent and cannot be
    downloaded, or its folder is incomplete; ValueError for a file not in its format.
    """
    cached = root / CACHE_FILE
    arrays = _read_cache(cached) if cached.is_file() else None
    if arrays is None:
        folder = root / TINY_IMAGENET.folder
        if not folder.is_dir():
            fetch(TINY_IMAGENET, root, download, progress)
        arrays = decode_folder(folder, progress)
        _write_cache(cached, arrays)
    return ImageDataset(
        "tinyimagenet",
        torch.from_numpy(arrays["train_images"]),
        torch.from_numpy(arrays["train_labels"]),
        torch.from_numpy(arrays["test_images"]),
        torch.from_numpy(arrays["test_labels"]),
        [str(c) for c in arrays["classes"]],
        padding=8,
        flip=True,
    )
