"""Market-1501 (Zheng et al., ICCV 2015), person re-identification, in its own on-disk format.

The archive cannot be downloaded by kdlab: its licence asks every user to download it by hand.
Unzip ``Market-1501-v15.09.15.zip`` into the data folder, so that it holds::

    <root>/Market-1501-v15.09.15/bounding_box_train/   12,936 images of 751 identities
    <root>/Market-1501-v15.09.15/bounding_box_test/    the gallery: 19,732 images
    <root>/Market-1501-v15.09.15/query/                3,368 query images

A file name says what the image is: ``0002_c1s1_000451_03.jpg`` is identity 0002, camera 1
(of 6), sequence 1, frame 000451, detection box 03. In the gallery, identity ``-1`` marks a
junk image (a bad detection: never counted) and ``0000`` a distractor (a real person who is no
query: counted as a negative). Files that are not ``.jpg`` (``Thumbs.db``) are ignored; a
``.jpg`` whose name does not parse is an error.

Loading: the training identities are relabelled 0 … 750 in the order of their numbers; images
are decoded once (Pillow, bilinear resize to ``size``) into uint8 arrays and cached in
``<root>/market1501_<H>x<W>.npz``, which the next load reads instead (it is rebuilt when the
folders' file lists change). Junk images are left out of the gallery by default
(``keep_junk=True`` keeps them): the protocol never counts them, so the metrics are the same,
and the gallery is then the 15,913 images the protocol ranks.

**Memory** (uint8, 3 channels): 98,304 bytes per image at 256×128, so 1.27 GB for the training
split, 0.33 GB for the queries and 1.56 GB for the gallery (1.94 GB with junk): 3.2 GB in
all, held once in host memory and once on the training device (the device-resident loader);
the cache file is as large. At ``size=(128, 64)``, a quarter: 0.8 GB.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from ..messages import interface
from . import register_dataset
from .images import JUNK, DatasetNotFoundError, RetrievalDataset

__all__ = ["market1501", "parse_name", "FOLDER", "SPLITS"]

FOLDER = "Market-1501-v15.09.15"
SPLITS = ("bounding_box_train", "bounding_box_test", "query")
_NAME = re.compile(r"(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg")


def parse_name(name: str) -> tuple[int, int]:
    """``(identity, camera)`` of a Market-1501 file name (identity −1: junk, 0: distractor);
    ValueError naming the file when it is not in the format."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"{name!r} is not a Market-1501 image name (e.g. 0002_c1s1_000451_03.jpg: "
            "identity, camera, sequence, frame, box)"
        )
    return int(match.group(1)), int(match.group(2))


def _folder(root: Path) -> Path:
    """``root/Market-1501-v15.09.15`` (or ``root`` itself when it is that folder); a one-line
    DatasetNotFoundError saying where to put it otherwise."""
    for folder in (root / FOLDER, root):
        if all((folder / split).is_dir() for split in SPLITS):
            return folder
    raise DatasetNotFoundError(
        f"market1501 is not in {root}/ and cannot be downloaded (its licence asks for a manual "
        f"download): unzip Market-1501-v15.09.15.zip into {root}/ so that "
        f"{root / FOLDER}/{{{','.join(SPLITS)}}}/ exist, or give the folder that holds it "
        f"({'--data-root DIR' if interface() == 'cli' else 'root=…'})"
    )


def _decode(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """The images at ``paths`` as uint8 N×3×H×W, resized (bilinear) to ``size`` = (H, W)."""
    from PIL import Image

    out = np.empty((len(paths), 3, *size), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        out[i] = np.asarray(resized).transpose(2, 0, 1)
    return out


def _read(folder: Path, size: tuple[int, int], cache: Path) -> dict[str, np.ndarray]:
    """Every split's file names and decoded images: from ``cache`` when it holds the same
    files, else decoded now and written there (atomically; skipped where it cannot be)."""
    names = {
        s: sorted(p.name for p in (folder / s).iterdir() if p.suffix == ".jpg") for s in SPLITS
    }
    if cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            if all(stored[f"{s}_names"].tolist() == names[s] for s in SPLITS):
                return {key: stored[key] for key in stored.files}
    print(f"market1501: decoding {sum(map(len, names.values()))} images at {size[0]}×{size[1]}"
          f" once; the next load reads {cache}")  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        arrays[f"{split}_names"] = np.array(names[split])
        arrays[f"{split}_images"] = _decode([folder / split / n for n in names[split]], size)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
            np.savez(f, **arrays)

    try:
        atomic_write(cache, write)
    except OSError as error:  # a read-only data folder: decode again next time
        print(f"market1501: could not write the cache {cache} ({error})")
    return arrays


def _labels(names: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    parsed = np.array([parse_name(n) for n in names.tolist()], dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(parsed[:, 0]), torch.from_numpy(parsed[:, 1])


@register_dataset(
    "market1501",
    task="retrieval",
    summary="Market-1501 person re-ID: 751 training identities, 3,368 queries (manual download)",
)
def market1501(
    root: Path, download: bool = False, size: tuple[int, int] = (256, 128), keep_junk: bool = False
) -> RetrievalDataset:
    """Market-1501 from ``root`` (see the module docstring for the layout, the parsing rules
    and the memory it takes), as a :class:`~kdlab.data.images.RetrievalDataset`.

    ``size``: (height, width) of every image, 256×128 by default (128×64 for a small set-up).
    Augmentation for training: random crop with 10-pixel zero padding, horizontal flip and
    random erasing with probability ½ (the re-ID strong baseline's). ``download`` is ignored
    (nothing is downloaded). Raises DatasetNotFoundError (one line, saying where to put the
    folder) when it is absent.
    """
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (height, width), each ≥ 16 pixels, got {size}")
    folder = _folder(Path(root))
    arrays = _read(folder, size, Path(root) / f"market1501_{size[0]}x{size[1]}.npz")
    train_ids, train_cams = _labels(arrays["bounding_box_train_names"])
    real = train_ids > 0  # Market-1501's training split holds no junk or distractor
    identities, train_labels = torch.unique(train_ids[real], return_inverse=True)
    query_ids, query_cams = _labels(arrays["query_names"])
    gallery_ids, gallery_cams = _labels(arrays["bounding_box_test_names"])
    keep = torch.ones_like(gallery_ids, dtype=torch.bool) if keep_junk else gallery_ids != JUNK
    train = arrays.pop("bounding_box_train_images")
    return RetrievalDataset(
        "market1501",
        torch.from_numpy(train if bool(real.all()) else train[real.numpy()]),
        train_labels,
        torch.from_numpy(_queries_then_gallery(arrays, keep.numpy())),
        torch.cat([query_ids, gallery_ids[keep]]),
        [f"{int(i):04d}" for i in identities],
        padding=10,
        flip=True,
        erasing=0.5,
        test_cams=torch.cat([query_cams, gallery_cams[keep]]),
        num_query=len(query_ids),
        train_cams=train_cams[real],
    )


def _queries_then_gallery(arrays: dict[str, np.ndarray], keep: np.ndarray) -> np.ndarray:
    """The query images, then the gallery images where ``keep``, in one array written in place
    (no second copy of the gallery in memory)."""
    query, gallery = arrays.pop("query_images"), arrays.pop("bounding_box_test_images")
    test = np.empty((len(query) + int(keep.sum()), *query.shape[1:]), np.uint8)
    test[: len(query)] = query
    np.take(gallery, np.flatnonzero(keep), axis=0, out=test[len(query) :])
    return test
