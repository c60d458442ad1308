"""Polyp detection sets: Kvasir-SEG, CVC-ClinicDB, and an embedded synthetic set.

Each is a :class:`~kdlab.data.boxes.DetectionDataset` (one class, ``polyp``, + background) of
the ``detection`` task, its images resized once to ``size``×``size`` (the aspect ratio is not
kept; boxes are scaled with the image) and cached in ``root`` as uint8 arrays
(``<name>-<size>px-<boxes>.npz``; at 320 px, Kvasir-SEG's 1,000 images take 307 MB in memory
and CVC-ClinicDB's 612 take 188 MB). A change of the source folder is not detected: delete the
cache to rebuild it.

Both real sets are downloaded by hand (their licences ask each user to accept the terms and
cite the authors); where one is missing, loading it is a one-line
:class:`~kdlab.data.DatasetNotFoundError` saying where the folder goes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import register_dataset
from .boxes import DetectionDataset, mask_boxes
from .images import DatasetNotFoundError

__all__ = ["synthetic_polyps", "kvasir_seg", "cvc_clinicdb", "CLASSES"]

CLASSES = ["background", "polyp"]
KVASIR_URL = "https://datasets.simula.no/kvasir-seg/"
KVASIR_BOXES = "kavsir_bboxes.json"  # sic: the release's own spelling
CVC_URL = "https://polyp.grand-challenge.org/CVCClinicDB/"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- synthetic
def _blob(size: int, g: torch.Generator, grid: tuple[torch.Tensor, torch.Tensor]):
    """One random soft ellipse: its opacity map (H×W, 1 inside, a soft rim) and distance map."""
    yy, xx = grid
    r = size * (0.09 + 0.13 * torch.rand(1, generator=g).item())
    aspect = 0.7 + 0.6 * torch.rand(1, generator=g).item()
    angle = math.pi * torch.rand(1, generator=g).item()
    cx, cy = (r + (size - 2 * r) * torch.rand(2, generator=g)).tolist()
    c, s = math.cos(angle), math.sin(angle)
    u = (c * (xx - cx) + s * (yy - cy)) / (r * math.sqrt(aspect))
    v = (-s * (xx - cx) + c * (yy - cy)) * math.sqrt(aspect) / r
    distance = (u.square() + v.square()).sqrt()
    return torch.sigmoid((1 - distance) * 8), distance


def _box_of(inside: torch.Tensor) -> Box:
    rows = inside.any(1).nonzero().flatten()
    cols = inside.any(0).nonzero().flatten()
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _overlaps(box: Box, others: Sequence[Box]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _synthetic_image(size: int, g: torch.Generator, grid) -> tuple[torch.Tensor, list[Box]]:
    """A textured pink background (two octaves of smooth noise) with 1–3 polyp-like blobs
    (darker, redder, shaded, with a specular highlight) that do not overlap; their boxes are
    those of each blob's opacity > ½."""
    base = torch.tensor([0.80, 0.45, 0.40]) + 0.10 * (torch.rand(3, generator=g) - 0.5)
    coarse = F.interpolate(torch.rand(1, 3, 5, 5, generator=g), (size, size), mode="bicubic")
    fine = F.interpolate(torch.rand(1, 1, size // 4, size // 4, generator=g), (size, size),
                         mode="bilinear")  # fmt: skip
    image = base[:, None, None] + 0.16 * (coarse[0] - 0.5) + 0.10 * (fine[0] - 0.5)
    count = 1 + int(torch.rand(1, generator=g) < 0.45) + int(torch.rand(1, generator=g) < 0.15)
    boxes: list[Box] = []
    for _ in range(count):
        for _attempt in range(25):
            alpha, distance = _blob(size, g, grid)
            box = _box_of(alpha > 0.5)
            if not _overlaps(box, boxes):
                break
        else:
            continue  # no free place: fewer blobs in this image
        colour = torch.tensor([0.60, 0.20, 0.20]) + 0.08 * (torch.rand(3, generator=g) - 0.5)
        shade = 1 + 0.45 * (1 - distance).clamp(0, 1)  # a bulge lit from the scope
        glint = (
            0.5
            * torch.exp(-((distance - 0.35).square()) / 0.01)
            * (torch.rand(1, generator=g) < 0.7)
        )
        blob = colour[:, None, None] * shade + glint
        image = image * (1 - alpha) + blob * alpha
        boxes.append(box)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), boxes


@register_dataset(
    "synthetic_polyps",
    task="detection",
    embedded=True,
    summary="SYNTHETIC polyp-like blobs on textured backgrounds, 64×64, boxes; no files",
)
def synthetic_polyps(
    root: Path | None = None,
    download: bool = False,
    size: int = 64,
    train: int = 160,
    test: int = 32,
    seed: int = 0,
) -> DetectionDataset:
    """A generated stand-in for polyp detection — **synthetic images, not real polyps** —
    deterministic for a given ``seed``: ``train`` + ``test`` images of ``size``×``size``, each
    a textured pink background with one to three non-overlapping blob-like objects (one or two
    in about 47 % of images each, three in about 7 %), one class (``polyp``). No file, no network;
    it teaches the pipeline, and numbers on it say nothing about real colonoscopy.
    """
    if size < 32 or train < 1 or test < 1:
        raise ValueError("synthetic_polyps needs size ≥ 32 and at least one train and test image")
    g = torch.Generator().manual_seed(seed)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    grid = torch.meshgrid(centres, centres, indexing="ij")
    made = [_synthetic_image(size, g, grid) for _ in range(train + test)]
    images = torch.stack([image for image, _ in made])
    boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for _, b in made]
    labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
    return DetectionDataset(
        "synthetic_polyps", images[:train], boxes[:train], labels[:train], images[train:],
        boxes[train:], labels[train:], list(CLASSES), synthetic=True,
        note=f"generated (seed {seed}): the first {train} images train, the next {test} test",
    )  # fmt: skip


# --------------------------------------------------------------------------- files
def _folder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _read_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as size×size×3 uint8 (bilinear) and its original (width, height)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        original = rgb.size
        return np.asarray(rgb.resize((size, size), Image.BILINEAR), dtype=np.uint8), original


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def _scale(boxes: Sequence[Box], original: tuple[int, int], size: int) -> list[Box]:
    """Boxes of an image of ``original`` (width, height) in the frame of its resized copy,
    clipped to it; a box left empty is dropped."""
    sx, sy = size / original[0], size / original[1]
    scaled = []
    for x1, y1, x2, y2 in boxes:
        box = (max(x1 * sx, 0.0), max(y1 * sy, 0.0), min(x2 * sx, size), min(y2 * sy, size))
        if box[2] > box[0] and box[3] > box[1]:
            scaled.append(box)
    return scaled


def _build(names: Sequence[str], image: Callable, boxes: Callable, size: int) -> dict:
    """Read every named image, resized, with its scaled boxes, into the cache's arrays."""
    images, counts, flat = [], [], []
    for name in names:
        array, original = _read_image(image(name), size)
        found = _scale(boxes(name, original), original, size)
        images.append(array)
        counts.append(len(found))
        flat += found
    return {
        "images": np.stack(images),
        "boxes": np.asarray(flat, dtype=np.float32).reshape(-1, 4),
        "counts": np.asarray(counts, dtype=np.int64),
        "names": np.asarray(list(names)),
    }


def _cached(path: Path, build: Callable[[], dict]) -> dict:
    """The arrays saved at ``path``, built and saved there (atomically) when absent."""
    from ..io import atomic_write

    if path.exists():
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files}
    arrays = build()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)
    return arrays


def _dataset(name: str, arrays: dict, test: np.ndarray, note: str) -> DetectionDataset:
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"].transpose(0, 3, 1, 2)))
    per_image = np.split(arrays["boxes"], np.cumsum(arrays["counts"])[:-1])
    boxes = [torch.from_numpy(b.copy()) for b in per_image]
    labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
    is_test = np.zeros(len(images), dtype=bool)
    is_test[test] = True
    train = np.flatnonzero(~is_test)

    def pick(index):
        return images[index], [boxes[i] for i in index], [labels[i] for i in index]

    return DetectionDataset(name, *pick(train), *pick(np.flatnonzero(is_test)), list(CLASSES),
                            note=note)  # fmt: skip


def _check_choice(boxes: str, threshold: int, size: int) -> None:
    if boxes not in ("json", "masks"):
        raise ValueError(f"boxes must be 'json' or 'masks', got {boxes!r}")
    if not 0 < threshold < 256 or size < 32:
        raise ValueError("threshold must be in 1…255 and size ≥ 32")


# --------------------------------------------------------------------------- Kvasir-SEG
def _read_kvasir(folder: Path, size: int, boxes: str, threshold: int) -> dict:
    """Kvasir-SEG's images resized, with the boxes of its JSON or of its masks."""
    files = _image_files(folder / "images")
    if not files:
        raise ValueError(f"{folder / 'images'} holds no images")
    table = json.loads((folder / KVASIR_BOXES).read_text()) if boxes == "json" else {}
    masks = _image_files(folder / "masks") if boxes == "masks" else {}

    def from_json(name: str, original: tuple[int, int]) -> list[Box]:
        if name not in table:
            raise ValueError(f"{folder / KVASIR_BOXES} has no entry for image {name!r}")
        return [(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in table[name]["bbox"]]

    def from_mask(name: str, original: tuple[int, int]) -> list[Box]:
        if name not in masks:
            raise ValueError(f"{folder / 'masks'} has no mask for image {name!r}")
        return mask_boxes(_read_mask(masks[name]), threshold)

    read = from_json if boxes == "json" else from_mask
    return _build(sorted(files), files.__getitem__, read, size)


@register_dataset(
    "kvasir_seg", task="detection", summary="Kvasir-SEG: 1,000 colonoscopy images, polyp boxes"
)
def kvasir_seg(
    root: Path,
    download: bool = True,
    size: int = 320,
    boxes: str = "json",
    threshold: int = 128,
    test_size: int = 120,
) -> DetectionDataset:
    """Kvasir-SEG (Jha et al., MMM 2020): 1,000 colonoscopy images with polyp masks and boxes.

    Read from ``root/Kvasir-SEG/``: ``images/<id>.jpg``, ``masks/<id>.jpg`` and
    ``kavsir_bboxes.json`` (``{id: {"height", "width", "bbox": [{"label", "xmin", "ymin",
    "xmax", "ymax"}, …]}}``, pixels of the original image). ``boxes="json"``: the boxes of the
    JSON; ``boxes="masks"``: one box per connected component of the mask thresholded at
    ``threshold`` (:func:`~kdlab.data.boxes.mask_boxes`; one mask can hold several polyps).

    Split (the set has none): the ids sorted by name, permuted by
    ``numpy.random.default_rng(0)``; the first ``test_size`` (120) are the test split, the
    other 880 train. Images are resized to ``size``×``size`` (320). Manual download only.
    """
    _check_choice(boxes, threshold, size)
    cache = root / f"kvasir_seg-{size}px-{boxes}.npz"
    folder = _folder(root, ("Kvasir-SEG", "kvasir-seg", "kvasir_seg"))
    needed = ["images", "masks" if boxes == "masks" else KVASIR_BOXES]
    if not cache.exists() and (folder is None or not all((folder / n).exists() for n in needed)):
        raise DatasetNotFoundError(
            f"kvasir_seg is not in {root}/Kvasir-SEG (it needs {' and '.join(needed)}): "
            f"download Kvasir-SEG.zip by hand from {KVASIR_URL} (research and education use, "
            f"cite Jha et al. 2020) and unzip it into {root}/; 'synthetic_polyps' works offline"
        )
    arrays = _cached(cache, lambda: _read_kvasir(folder, size, boxes, threshold))
    if not 0 < test_size < len(arrays["images"]):
        raise ValueError(f"test_size must be between 1 and {len(arrays['images']) - 1}")
    test = np.random.default_rng(0).permutation(len(arrays["images"]))[:test_size]
    note = f"boxes from the {boxes}; a fixed seeded split ({test_size} test images)"
    return _dataset("kvasir_seg", arrays, np.sort(test), note)


# --------------------------------------------------------------------------- CVC-ClinicDB
def _read_cvc(originals: Path, masks_folder: Path, size: int, threshold: int) -> dict:
    """CVC-ClinicDB's frames in frame-number order, resized, with their masks' boxes."""
    files, masks = _image_files(originals), _image_files(masks_folder)
    names = sorted(files, key=lambda n: (int(n) if n.isdigit() else math.inf, n))
    missing = [n for n in names if n not in masks]
    if not names or missing:
        raise ValueError(f"{masks_folder} has no mask for frame {missing[0] if missing else '?'}")

    def from_mask(name: str, original: tuple[int, int]) -> list[Box]:
        return mask_boxes(_read_mask(masks[name]), threshold)

    return _build(names, files.__getitem__, from_mask, size)


@register_dataset(
    "cvc_clinicdb", task="detection", summary="CVC-ClinicDB: 612 colonoscopy frames, polyp boxes"
)
def cvc_clinicdb(
    root: Path, download: bool = True, size: int = 320, threshold: int = 128, test_share=0.2
) -> DetectionDataset:
    """CVC-ClinicDB (Bernal et al., 2015): 612 frames (384×288) from colonoscopy videos, each
    with a polyp mask.

    Read from ``root/CVC-ClinicDB/``: ``Original/<n>.tif`` and ``Ground Truth/<n>.tif``
    (``.png`` accepted too), ``n`` = 1…612. Boxes: one per connected component of the mask
    thresholded at ``threshold``. Split (the set has none): by frame number, the last
    ``test_share`` (20 %, frames 491–612) are the test split. The frames are numbered video
    after video, so a split by number keeps nearly every video on one side (a random split
    would put neighbouring frames of one video on both). Manual download only.
    """
    _check_choice("masks", threshold, size)
    cache = root / f"cvc_clinicdb-{size}px-masks.npz"
    folder = _folder(root, ("CVC-ClinicDB", "cvc-clinicdb", "CVC-612"))
    masks = _folder(folder, ("Ground Truth", "GroundTruth", "ground_truth")) if folder else None
    if not cache.exists() and (folder is None or not (folder / "Original").is_dir() or not masks):
        raise DatasetNotFoundError(
            f"cvc_clinicdb is not in {root}/CVC-ClinicDB (it needs Original/ and Ground Truth/): "
            f"download it by hand from {CVC_URL} (research use, cite Bernal et al. 2015) and "
            f"unzip it into {root}/; 'synthetic_polyps' works offline"
        )
    arrays = _cached(cache, lambda: _read_cvc(folder / "Original", masks, size, threshold))
    count = len(arrays["images"])
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}")
    test = np.arange(count - max(1, round(test_share * count)), count)
    note = f"boxes from the masks; the last {len(test)} frames by number are the test split"
    return _dataset("cvc_clinicdb", arrays, test, note)
