"""MSI vs MSS: microsatellite instability from histology tiles (Kather et al., Nature Medicine
2019), the task of seed 000 (Niyaz & Bathula), colorectal (``msi_crc``) and gastric
(``msi_stad``) cancer.

The public tiles (Zenodo record 2530835, "Histological images for MSI vs. MSS classification in
gastrointestinal cancer, FFPE samples") come as one archive per cancer, split and class:
``CRC_DX_TRAIN_MSIMUT.zip``, ``CRC_DX_TRAIN_MSS.zip``, ``CRC_DX_TEST_MSIMUT.zip``,
``CRC_DX_TEST_MSS.zip`` (and ``STAD_…`` for the gastric set); each holds one class folder,
``MSIMUT/`` or ``MSS/``, of 224×224 tiles at 0.5 µm/px, colour-normalised, named after their
TCGA patient (``…-TCGA-AA-3877-01Z-00-DX1.png``). The archives' train and test splits are split
by patient; the kit keeps them as they are, so no patient's tiles are on both sides. The
training sets are balanced, the test sets are not (CRC_DX: 46,704 training tiles per class;
test 29,335 MSIMUT and 70,569 MSS). Labels: 0 = MSIMUT (MSI or highly mutated: the positive
class, whose softmax AUROC ranks by), 1 = MSS.

**Never downloaded.** The archives are tens of gigabytes: the loader reads them where they are
put, in ``root/`` (default ``data/``), as any of, per split and class (first found):

1. ``<SET>_<SPLIT>/<CLASS>/`` (the archives unzipped with ``-d <SET>_<SPLIT>``);
2. ``<SET>_<SPLIT>_<CLASS>/<CLASS>/`` (each unzipped into a folder of its own name);
3. ``<SET>_<SPLIT>_<CLASS>/`` holding the tiles;
4. ``<SET>_<SPLIT>_<CLASS>.zip``, the archive itself, read without extracting it.

**Size and memory.** Every tile is resized once (PIL's bilinear, antialiased) to ``size``×``size``
(default 64) and kept as uint8: 12,288 bytes a tile at 64 px, 150,528 at 224 px. The whole
CRC_DX set (193,312 tiles) is 2.4 GB at 64 px and 29 GB at 224 px, more than a Colab runtime's
12.7 GB of memory; the default subset is ``max_per_class=5000`` training tiles per class and
``max_test=10000`` test tiles (the test split's class shares kept): 20,000 tiles, 246 MB at 64
px. A subset takes the tiles round-robin over the patients (in an order drawn with seed 0), so
it spans as many patients as it can. The resized arrays are cached once, atomically, in
``root/<name>-<size>px-<subset>.uint8.npz``; the next load reads that file in seconds.

The loader prints the class balance of both splits (tiles, patients, and the archive's whole
split); :func:`class_balance` counts a loaded data set's classes. The task reports accuracy, AUROC and balanced accuracy (:mod:`kdlab.tasks`).
"""

from __future__ import annotations

import io
import random
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from . import register_dataset
from .images import DatasetNotFoundError, ImageDataset

__all__ = ["CLASSES", "MSI_SETS", "class_balance", "load_msi", "msi_crc", "msi_stad"]

CLASSES = ("MSIMUT", "MSS")  # label order: MSIMUT = 0, the positive class
MSI_SETS = {"msi_crc": "CRC_DX", "msi_stad": "STAD"}
SPLITS = ("TRAIN", "TEST")
ZENODO = "https://zenodo.org/record/2530835"
TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_PATIENT = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")

Reader = Callable[[str], bytes]


def _folder_tiles(folder: Path) -> tuple[list[str], Reader] | None:
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in TILE_SUFFIXES)
    return (names, lambda name: (folder / name).read_bytes()) if names else None


def _zip_tiles(path: Path) -> tuple[list[str], Reader] | None:
    archive = zipfile.ZipFile(path)
    names = sorted(
        n
        for n in archive.namelist()
        if Path(n).suffix.lower() in TILE_SUFFIXES and not n.endswith("/")
    )
    return (names, archive.read) if names else None


def find_tiles(root: Path, prefix: str, split: str, klass: str) -> tuple[list[str], Reader]:
    """The tile names of one split and class, and how to read one (module docstring's places,
    first found); DatasetNotFoundError naming the archive when none holds any tile."""
    stem = f"{prefix}_{split}_{klass}"
    for folder in (root / f"{prefix}_{split}" / klass, root / stem / klass, root / stem):
        if folder.is_dir() and (found := _folder_tiles(folder)):
            return found
    if (root / f"{stem}.zip").is_file() and (found := _zip_tiles(root / f"{stem}.zip")):
        return found
    raise DatasetNotFoundError(
        f"no {stem} tiles in {root}/: put {stem}.zip (from {ZENODO}; kdlab never downloads "
        f"these archives, tens of GB in all) or its extracted {klass}/ folder there, e.g. "
        f"{root}/{prefix}_{split}/{klass}/"
    )


def patient_of(name: str) -> str:
    """The TCGA patient of a tile (``TCGA-XX-XXXX`` in its name), else the file's own stem."""
    found = _PATIENT.search(name)
    return found.group(0) if found else Path(name).stem


def pick(names: list[str], count: int | None, seed: int = 0) -> list[str]:
    """``count`` of ``names`` (all for None), round-robin over their patients in an order drawn
    with ``seed``, each patient's tiles shuffled too: the subset spans as many patients as it
    can. Sorted, so the result does not depend on the order of ``names``."""
    if count is None or count >= len(names):
        return sorted(names)
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(patient_of(name), []).append(name)
    queues = [rng.sample(tiles, len(tiles)) for _, tiles in sorted(groups.items())]
    rng.shuffle(queues)
    picked: list[str] = []
    while len(picked) < count:
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop())
    return sorted(picked)


def _resize(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _read_split(root, prefix, split, size, counts, progress):
    """Images, labels and per-class (tiles kept, tiles in all, patients kept) of one split."""
    from tqdm.auto import tqdm

    images, labels, balance = [], [], {}
    for label, klass in enumerate(CLASSES):
        names, read = find_tiles(root, prefix, split, klass)
        chosen = pick(names, counts[klass])
        desc = f"resizing {prefix}_{split}_{klass} to {size} px"
        for name in tqdm(chosen, desc=desc, disable=not progress, file=sys.stderr):
            images.append(_resize(read(name), size))
        labels += [label] * len(chosen)
        balance[klass] = (len(chosen), len(names), len({patient_of(n) for n in chosen}))
    return np.stack(images), np.asarray(labels, dtype=np.int64), balance


def _test_counts(root, prefix, max_test) -> dict[str, int | None]:
    """How many test tiles of each class a ``max_test`` subset keeps: the split's shares."""
    if max_test is None:
        return {k: None for k in CLASSES}
    totals = {k: len(find_tiles(root, prefix, "TEST", k)[0]) for k in CLASSES}
    whole = sum(totals.values())
    if whole <= max_test:
        return {k: None for k in CLASSES}
    first = round(max_test * totals[CLASSES[0]] / whole)
    return {CLASSES[0]: first, CLASSES[1]: max_test - first}


def _cache_name(name, size, max_per_class, max_test) -> str:
    train = "all" if max_per_class is None else str(max_per_class)
    test = "all" if max_test is None else str(max_test)
    return f"{name}-{size}px-train{train}-test{test}.uint8.npz"


def _build(root, name, size, max_per_class, max_test, progress) -> dict[str, np.ndarray]:
    prefix = MSI_SETS[name]
    train = _read_split(
        root, prefix, "TRAIN", size, dict.fromkeys(CLASSES, max_per_class), progress
    )
    test = _read_split(root, prefix, "TEST", size, _test_counts(root, prefix, max_test), progress)
    arrays = {"train_images": train[0], "train_labels": train[1]}
    arrays.update(test_images=test[0], test_labels=test[1])
    for split, balance in (("train", train[2]), ("test", test[2])):
        arrays[f"{split}_balance"] = np.asarray([balance[k] for k in CLASSES], dtype=np.int64)
    return arrays


def class_balance(dataset: ImageDataset) -> dict[str, dict[str, int]]:
    """``{"train": {"MSIMUT": n, "MSS": n}, "test": {…}}``: the tiles of each class in each
    split of a loaded MSI data set (after any ``train_size`` subset)."""
    return {
        split: {k: int((labels == i).sum()) for i, k in enumerate(CLASSES)}
        for split, labels in (("train", dataset.train_labels), ("test", dataset.test_labels))
    }


def _balance(arrays) -> dict[str, dict[str, tuple[int, int, int]]]:
    """``{split: {class: (tiles kept, tiles in the archive, patients kept)}}``, cached."""
    return {
        split: {
            k: tuple(int(v) for v in row) for k, row in zip(CLASSES, arrays[f"{split}_balance"])
        }
        for split in ("train", "test")
    }


def describe_balance(name: str, balance) -> str:
    """One line: the tiles, patients and MSIMUT share of both splits."""
    parts = []
    for split, rows in balance.items():
        kept = {k: rows[k][0] for k in CLASSES}
        share = 100 * kept["MSIMUT"] / max(1, sum(kept.values()))
        patients = sum(rows[k][2] for k in CLASSES)
        whole = " / ".join(f"{rows[k][1]:,}" for k in CLASSES)
        parts.append(
            f"{split} {kept['MSIMUT']:,} MSIMUT / {kept['MSS']:,} MSS ({share:.1f} % MSIMUT, "
            f"{patients} patients; the archive's split: {whole})"
        )
    return f"{name}: " + "; ".join(parts)


def load_msi(name: str, root: Path, size=64, max_per_class=5000, max_test=10000, progress=True):
    """The MSI data set ``name`` (``msi_crc`` or ``msi_stad``) from ``root``: the cached arrays
    if there, else the tiles (module docstring), resized to ``size`` px and cached. Prints the
    class balance. DatasetNotFoundError (one line, where to put which archive) when absent."""
    for option, value in (("size", size), ("max_per_class", max_per_class), ("max_test", max_test)):
        if value is not None and (int(value) != value or value < (8 if option == "size" else 1)):
            raise ValueError(
                f"{option} must be a positive integer (size ≥ 8) or None, got {value!r}"
            )
    cached = root / _cache_name(name, size, max_per_class, max_test)
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    else:
        arrays = _build(root, name, size, max_per_class, max_test, progress)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(cached, write)
    print(describe_balance(name, _balance(arrays)), file=sys.stderr)
    from ..tasks.classification import Classification

    return ImageDataset(
        name,
        torch.from_numpy(arrays["train_images"]),
        torch.from_numpy(arrays["train_labels"]),
        torch.from_numpy(arrays["test_images"]),
        torch.from_numpy(arrays["test_labels"]),
        list(CLASSES),
        padding=size // 16,  # 4 px at 64 px
        flip=True,
        task=Classification(extra_metrics=("auroc", "balanced_acc"), positive=0),
    )


@register_dataset(
    "msi_crc", summary="MSI vs MSS, colorectal tiles (TCGA CRC-DX), 2 classes; not downloaded"
)
def msi_crc(root: Path, download: bool = True, size: int = 64, max_per_class: int | None = 5000,
            max_test: int | None = 10000) -> ImageDataset:  # fmt: skip
    """MSI vs MSS on colorectal cancer tiles (:func:`load_msi`; ``download`` is ignored: these
    archives are never downloaded)."""
    return load_msi("msi_crc", root, size, max_per_class, max_test)


@register_dataset(
    "msi_stad", summary="MSI vs MSS, gastric tiles (TCGA STAD), 2 classes; not downloaded"
)
def msi_stad(root: Path, download: bool = True, size: int = 64, max_per_class: int | None = 5000,
             max_test: int | None = 10000) -> ImageDataset:  # fmt: skip
    """MSI vs MSS on gastric cancer tiles (:func:`load_msi`; ``download`` is ignored)."""
    return load_msi("msi_stad", root, size, max_per_class, max_test)
