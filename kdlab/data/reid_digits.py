"""``reid_digits``: a tiny re-identification set made from scikit-learn's embedded digits.

Not people: a stand-in with Market-1501's *structure* that needs no download and trains in
seconds on a CPU. An **identity** is one handwritten digit image (one writer's "3" is one
person; another writer's "3" is another person who looks alike). Four **cameras** are four
fixed transforms of the upsampled 16×16 image: a rotation, a scale and shift, a colour cast, a
background level and a contrast of their own (like Market-1501's six cameras: another
viewpoint, another white balance). Each identity is seen twice by each camera (two
**frames**: a one-pixel jitter and pixel noise apart).

- training split: 150 identities × 4 cameras × 2 frames = 1,200 RGB images, labels 0…149;
- queries: 100 other identities, frame 0 of two of their cameras each (200 queries);
- gallery: the rest of those identities' images (600: per query 5 true matches in other
  cameras, and the same camera's other frame, which the protocol removes), 100 distractors
  (identity 0: digit images that are no query's identity, each through one camera) and 20
  junk images (identity −1: a corner of a test identity's image, like a bad detection box).

Every draw is from a fixed seed: the set is the same everywhere. 16×16×3 uint8: 1.9 MB in all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import register_dataset
from .images import DISTRACTOR, JUNK, RetrievalDataset

__all__ = ["reid_digits", "CAMERAS"]

SIZE = 16
# Per camera: rotation (degrees), scale, shift (x, y in pixels), colour cast (R, G, B gains),
# background level (0–255) and contrast.
CAMERAS = (
    dict(angle=0.0, scale=1.0, shift=(0.0, 0.0), tint=(1.0, 1.0, 1.0), background=0, contrast=1.0),
    dict(angle=14.0, scale=0.95, shift=(1.0, 0.0), tint=(1.0, 0.78, 0.55), background=30, contrast=0.9),
    dict(angle=-8.0, scale=0.8, shift=(0.0, 1.0), tint=(0.55, 0.8, 1.0), background=60, contrast=0.75),
    dict(angle=-16.0, scale=1.1, shift=(-1.0, -1.0), tint=(0.7, 1.0, 0.7), background=15, contrast=0.6),
)  # fmt: skip
TRAIN_IDS, TEST_IDS, DISTRACTORS, JUNKS = 150, 100, 100, 20


def _camera(images: torch.Tensor, cam: int, jitter: torch.Tensor) -> torch.Tensor:
    """Grayscale N×1×16×16 in [0, 1] through camera ``cam`` (plus a per-image shift
    ``jitter``, N×2 pixels) → RGB N×3×16×16 in [0, 1]."""
    c = CAMERAS[cam]
    n = len(images)
    angle = math.radians(c["angle"])
    cos, sin = math.cos(angle) / c["scale"], math.sin(angle) / c["scale"]
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).repeat(n, 1, 1)
    theta[:, :, 2] = -(torch.tensor(c["shift"]) + jitter) * 2 / SIZE
    grid = F.affine_grid(theta, (n, 1, SIZE, SIZE), align_corners=False)
    moved = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    strokes = moved * c["contrast"] * torch.tensor(c["tint"]).view(1, 3, 1, 1)
    background = c["background"] / 255
    return (background + (1 - background) * strokes).clamp(0, 1)


def _picture(
    originals: torch.Tensor, cams: np.ndarray, rng: np.random.Generator, frame: int
) -> torch.Tensor:
    """The uint8 RGB images of ``originals`` (N×1×16×16 in [0, 1]) through ``cams``; frame 1
    adds a one-pixel jitter and noise, frame 0 none."""
    out = torch.empty(len(originals), 3, SIZE, SIZE)
    jitter = torch.from_numpy(rng.integers(-1, 2, (len(originals), 2))).float() * frame
    for cam in np.unique(cams):
        where = torch.from_numpy(np.flatnonzero(cams == cam))
        out[where] = _camera(originals[where], int(cam), jitter[where])
    noise = torch.from_numpy(rng.normal(0, 6 * frame, out.shape)).float() / 255
    return ((out + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def _identities(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every image index once, in an order that cycles through the ten digits."""
    per_digit = [rng.permutation(np.flatnonzero(targets == d)) for d in range(10)]
    order = [idx[i] for i in range(max(map(len, per_digit))) for idx in per_digit if i < len(idx)]
    return np.array(order)


@register_dataset(
    "reid_digits",
    task="retrieval",
    embedded=True,
    summary="a re-ID stand-in from the embedded digits: identities × 4 synthetic cameras",
)
def reid_digits(root: Path | None = None, download: bool = False) -> RetrievalDataset:
    """The embedded re-identification set described in the module docstring (no file, no
    network): 1,200 training images of 150 identities; 200 queries and a gallery of 720.
    Built once per process (about a second); every call returns a copy."""
    return dataclasses.replace(_build())


@functools.cache
def _build() -> RetrievalDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(0)
    originals = torch.from_numpy(bunch.images / 16).float()[:, None]
    originals = F.interpolate(originals, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    order = _identities(bunch.target, rng)
    train, test = order[:TRAIN_IDS], order[TRAIN_IDS : TRAIN_IDS + TEST_IDS]
    others = order[TRAIN_IDS + TEST_IDS : TRAIN_IDS + TEST_IDS + DISTRACTORS]
    cams = np.arange(len(CAMERAS))

    def views(ids: np.ndarray) -> tuple[list[torch.Tensor], list[np.ndarray], list[np.ndarray]]:
        """Every (identity, camera, frame) image of ``ids``: images, identity index, camera."""
        images, who, where = [], [], []
        for frame in (0, 1):
            for cam in cams:
                images.append(_picture(originals[ids], np.full(len(ids), cam), rng, frame))
                who.append(np.arange(len(ids)))
                where.append(np.full(len(ids), cam))
        return images, who, where

    images, who, where = views(train)
    train_images, train_labels = torch.cat(images), torch.from_numpy(np.concatenate(who))
    train_cams = torch.from_numpy(np.concatenate(where))
    images, who, where = views(test)
    test_images, test_who, test_cams = torch.cat(images), np.concatenate(who), np.concatenate(where)
    # Queries: frame 0 (the first len(cams)·len(test) images) of cameras (0, 2) or (1, 3).
    is_query = np.zeros(len(test_who), bool)
    is_query[: len(cams) * len(test)] = (test_cams[: len(cams) * len(test)] % 2) == (
        test_who[: len(cams) * len(test)] % 2
    )
    query, gallery = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    ids = torch.from_numpy(test_who + 1)  # test identities 1…100 (0 and −1 are reserved)
    junk_from = rng.choice(gallery, JUNKS, replace=False)
    junk = test_images[junk_from].clone()
    junk[:, :, SIZE // 3 :, :] = 0  # only the top third of the box: a bad detection
    distractor_cams = rng.integers(0, len(cams), DISTRACTORS)
    distractors = _picture(originals[others], distractor_cams, rng, 1)
    images = torch.cat([test_images[query], test_images[gallery], distractors, junk])
    labels = torch.cat([ids[query], ids[gallery], torch.full((DISTRACTORS,), DISTRACTOR),
                        torch.full((JUNKS,), JUNK)])  # fmt: skip
    cameras = np.concatenate([test_cams[query], test_cams[gallery], distractor_cams,
                              test_cams[junk_from]])  # fmt: skip
    return RetrievalDataset(
        "reid_digits", train_images, train_labels.long(), images, labels.long(),
        [f"img{int(i):04d}" for i in train], padding=1, flip=False, erasing=0.0,
        test_cams=torch.from_numpy(cameras + 1).long(), num_query=len(query),
        train_cams=train_cams.long() + 1,
    )  # fmt: skip
