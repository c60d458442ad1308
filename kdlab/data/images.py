"""Image data sets in memory, and the device-resident batch loader.

Every dataset is held as uint8 images (N×C×H×W) and int64 labels: :class:`ImageDataset` for
classification, :class:`RetrievalDataset` (identities, cameras, query and gallery) for
re-identification. The loader keeps them on the training device and does the whole input
pipeline there, per batch: shuffle (``torch.randperm`` on the device), random crop with zero
padding, horizontal flip, conversion to float and normalisation, and optionally random erasing.
The same code runs on a CPU. No worker processes, no PIL, no host round trip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ImageDataset", "RetrievalDataset", "DeviceLoader", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not in the cache folder and could not be downloaded."""


@dataclass
class ImageDataset:
    """A classification dataset as uint8 tensors, with how to augment and normalise it."""

    name: str
    train_images: torch.Tensor  # uint8, N×C×H×W
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    padding: int = 4  # random-crop padding, in pixels (0: no crop)
    flip: bool = True  # random horizontal flip (off where a flip changes the class)
    erasing: float = 0.0  # probability of random erasing per training image (DeviceLoader)
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    task: Any = None  # a kdlab.tasks.Task; None: classification, scored by top-1 accuracy

    def __post_init__(self) -> None:
        if self.task is None:
            from ..tasks.classification import Classification

            self.task = Classification()
        if not self.mean:  # per-channel statistics of the training images, in [0, 1] units
            total = torch.zeros(self.in_channels, dtype=torch.float64)
            squares = torch.zeros(self.in_channels, dtype=torch.float64)
            per_image = max(1, self.train_images[0].numel())
            # about 2**24 values a chunk (128 MB in float64): no float copy of the whole set
            for chunk in self.train_images.split(max(1, 2**24 // per_image)):
                x = chunk.to(torch.float64).div_(255)
                total += x.sum(dim=(0, 2, 3))
                squares += x.square().sum(dim=(0, 2, 3))
            n = self.train_images.numel() // self.in_channels
            mean = total / n
            std = ((squares / n - mean.square()) * n / max(n - 1, 1)).clamp_min(1e-6).sqrt()
            self.mean = tuple(mean.tolist())
            self.std = tuple(std.clamp_min(1e-3).tolist())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[2:])

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}: {len(self.train_labels)} train / "
            f"{len(self.test_labels)} test images of {self.in_channels}×"
            f"{self.image_size[0]}×{self.image_size[1]}, {self.num_classes} classes)"
        )

    def subset(self, train_size: int | None, seed: int = 0) -> ImageDataset:
        """The same dataset with a fixed, class-balanced subset of ``train_size`` training images."""
        if train_size is None or train_size >= len(self.train_labels):
            return self
        if train_size < self.num_classes:
            raise ValueError(f"train_size={train_size} is smaller than the number of classes")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.train_labels), generator=g)
        # Round-robin over classes keeps the subset balanced.
        per_class = [order[self.train_labels[order] == c] for c in range(self.num_classes)]
        picked, i = [], 0
        while len(picked) < train_size:
            for idx in per_class:
                if i < len(idx) and len(picked) < train_size:
                    picked.append(int(idx[i]))
            i += 1
        return self._select_train(torch.tensor(sorted(picked)))

    def _select_train(self, keep: torch.Tensor) -> ImageDataset:
        """The same dataset with only the training images ``keep`` (indices)."""
        return replace(
            self, train_images=self.train_images[keep], train_labels=self.train_labels[keep]
        )


JUNK, DISTRACTOR = -1, 0  # the identities of Market-1501's junk and distractor images


@dataclass
class RetrievalDataset(ImageDataset):
    """A re-identification data set: identity classification to train, retrieval to test.

    ``train_labels`` are the training identities relabelled ``0 … num_classes − 1`` (what the
    classifier learns); ``classes`` their original names. The *test split* is the query images
    followed by the gallery images, in one tensor (embedded in one pass): ``test_images[:
    num_query]`` are the queries, the rest the gallery. ``test_labels`` hold their original
    identities, ``−1`` for junk and ``0`` for distractors (Market-1501's convention), and
    ``test_cams`` the camera of each image; how they are scored is
    :func:`kdlab.tasks.retrieval.retrieval_metrics`. ``train_cams`` (optional) is the camera of
    each training image, for figures only.
    """

    test_cams: torch.Tensor | None = None  # int64, one per test image
    num_query: int = 0
    train_cams: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.task is None:
            from ..tasks.retrieval import Retrieval

            self.task = Retrieval()
        super().__post_init__()
        if self.test_cams is None or len(self.test_cams) != len(self.test_labels):
            raise ValueError(f"{self.name}: give one camera per test image (test_cams)")
        if not 0 < self.num_query < len(self.test_labels):
            raise ValueError(
                f"{self.name}: num_query={self.num_query} must leave a non-empty query and gallery"
            )

    def _select_train(self, keep: torch.Tensor) -> RetrievalDataset:
        chosen = super()._select_train(keep)
        if self.train_cams is not None:
            chosen.train_cams = self.train_cams[keep]
        return chosen

    @property
    def query(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, identities, cameras)`` of the queries."""
        q = self.num_query
        return self.test_images[:q], self.test_labels[:q], self.test_cams[:q]

    @property
    def gallery(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, identities, cameras)`` of the gallery (junk and distractors included)."""
        q = self.num_query
        return self.test_images[q:], self.test_labels[q:], self.test_cams[q:]

    def __repr__(self) -> str:
        gallery = self.test_labels[self.num_query :]
        return (
            f"RetrievalDataset({self.name!r}: {len(self.train_labels)} training images of "
            f"{self.num_classes} identities; {self.num_query} queries, {len(gallery)} gallery "
            f"images ({int((gallery == DISTRACTOR).sum())} distractors, "
            f"{int((gallery == JUNK).sum())} junk) of {self.in_channels}×"
            f"{self.image_size[0]}×{self.image_size[1]})"
        )


class DeviceLoader:
    """Batches of a uint8 image tensor kept on the training device, augmented there.

    Each epoch: a permutation from ``torch.randperm`` on the device (every sample once), split
    into ``ceil(N / batch_size)`` batches of near-equal size (so no tiny last batch reaches
    BatchNorm); with ``augment``, a random crop of the zero-padded image (``dataset.padding``
    pixels) and, where ``dataset.flip``, a horizontal flip with probability ½, drawn per sample;
    then ``(x / 255 − mean) / std`` in float32; then, with probability ``erasing`` per sample,
    random erasing (:meth:`_erase`, Zhong et al., AAAI 2020). Every random draw comes from the
    loader's own generator, whose state a checkpoint keeps, so a resumed run sees the same
    batches as an uninterrupted one.

    ``views`` > 1 (with ``augment``): each batch is ``(views_tuple, labels)``, a tuple of
    ``views`` tensors holding the same images in the same order, each cropped, flipped and
    erased with its own draws (the per-student augmentation of KDCL and PCL,
    :attr:`kdlab.Method.views`).
    """

    ERASE_AREA = (0.02, 0.4)  # the erased rectangle's share of the image (Zhong et al.'s s_l, s_h)
    ERASE_RATIO = (0.3, 1 / 0.3)  # its aspect ratio h/w, drawn log-uniformly

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool = False,
        augment: bool = False,
        padding: int = 0,
        flip: bool = False,
        erasing: float = 0.0,
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
        views: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if views < 1 or (views > 1 and not augment):
            raise ValueError(f"views must be 1, or ≥ 1 with augment=True; got {views}")
        self.views = views
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        if not 0 <= erasing <= 1:
            raise ValueError(f"erasing is a probability in [0, 1], got {erasing}")
        self.shuffle, self.augment, self.padding, self.flip = shuffle, augment, padding, flip
        self.erasing = erasing
        self.channels_last = channels_last
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape) * 255
        self.std = torch.tensor(std, device=self.device).view(shape) * 255
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @classmethod
    def train(cls, dataset: ImageDataset, batch_size: int, device, seed: int = 0, **kw):
        """The shuffled, augmented loader over the training split."""
        return cls(
            dataset.train_images,
            dataset.train_labels,
            batch_size,
            mean=dataset.mean,
            std=dataset.std,
            shuffle=True,
            augment=True,
            padding=dataset.padding,
            flip=dataset.flip,
            erasing=dataset.erasing,
            device=device,
            seed=seed,
            **kw,
        )

    @classmethod
    def test(cls, dataset: ImageDataset, batch_size: int, device, **kw):
        """The test split in order, without augmentation."""
        return cls(
            dataset.test_images,
            dataset.test_labels,
            batch_size,
            mean=dataset.mean,
            std=dataset.std,
            device=device,
            **kw,
        )

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def min_batch_size(self) -> int:
        """The size of the smallest batch of an epoch."""
        return len(self.labels) // len(self)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.padding
        if p > 0:
            x = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=self.generator)
            dx = torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=self.generator)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # B×1×H×1
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # B×1×1×W
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = x[batch, channel, rows, cols]
        if self.flip:
            mask = torch.rand(b, device=x.device, generator=self.generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing of normalised images ``x`` (B×C×H×W): with probability ``erasing`` per
        image, a rectangle of area ``s·H·W`` (``s`` uniform in :attr:`ERASE_AREA`) and aspect
        ratio ``r = h/w`` (log-uniform in :attr:`ERASE_RATIO`) at a uniform position is set to
        0, the training set's mean pixel after normalisation (the re-ID strong baseline's
        fill). A rectangle taller or wider than the image is clipped to it (torchvision and
        Zhong et al. redraw instead), so every draw is one tensor op on the device."""
        b, _, h, w = x.shape
        u = torch.rand(b, 5, device=x.device, generator=self.generator)
        (s_lo, s_hi), (r_lo, r_hi) = self.ERASE_AREA, self.ERASE_RATIO
        area = (s_lo + (s_hi - s_lo) * u[:, 0]) * h * w
        ratio = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[:, 1])
        eh = (area * ratio).sqrt().round().clamp(1, h)
        ew = (area / ratio).sqrt().round().clamp(1, w)
        top = ((h - eh + 1) * u[:, 2]).floor()[:, None]
        left = ((w - ew + 1) * u[:, 3]).floor()[:, None]
        rows = torch.arange(h, device=x.device)[None, :]
        cols = torch.arange(w, device=x.device)[None, :]
        inside_rows = (rows >= top) & (rows < top + eh[:, None])  # B×H
        inside_cols = (cols >= left) & (cols < left + ew[:, None])  # B×W
        mask = inside_rows[:, :, None] & inside_cols[:, None, :]  # B×H×W
        mask &= (u[:, 4] < self.erasing)[:, None, None]
        return x.masked_fill(mask[:, None], 0.0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for idx in torch.tensor_split(order, len(self)):
            images = self.images[idx]
            views = [self._prepare(images) for _ in range(self.views)]
            yield (views[0] if self.views == 1 else tuple(views)), self.labels[idx]

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented (when ``augment``), normalised float32 copy of a batch of images."""
        x = self._crop_and_flip(images) if self.augment else images
        x = (x.float() - self.mean) / self.std
        if self.augment and self.erasing > 0:
            x = self._erase(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
