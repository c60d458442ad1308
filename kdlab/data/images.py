"""Image classification data sets in memory, and the device-resident batch loader.

Every dataset is held as uint8 images (N×C×H×W) and int64 labels. The loader keeps them on the
training device and does the whole input pipeline there, per batch: shuffle (``torch.randperm``
on the device), random crop with zero padding, horizontal flip, conversion to float and
normalisation. The same code runs on a CPU. No worker processes, no PIL, no host round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ImageDataset", "DeviceLoader", "DatasetNotFoundError"]


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
            for chunk in self.train_images.split(4096):  # no float copy of the whole set
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
        keep = torch.tensor(sorted(picked))
        return replace(
            self, train_images=self.train_images[keep], train_labels=self.train_labels[keep]
        )


class DeviceLoader:
    """Batches of a uint8 image tensor kept on the training device, augmented there.

    Each epoch: a permutation from ``torch.randperm`` on the device (every sample once), split
    into ``ceil(N / batch_size)`` batches of near-equal size (so no tiny last batch reaches
    BatchNorm); with ``augment``, a random crop of the zero-padded image (``dataset.padding``
    pixels) and, where ``dataset.flip``, a horizontal flip with probability ½, drawn per sample;
    then ``(x / 255 − mean) / std`` in float32.
    """

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
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.padding, self.flip = shuffle, augment, padding, flip
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for idx in torch.tensor_split(order, len(self)):
            x = self.images[idx]
            if self.augment:
                x = self._crop_and_flip(x)
            x = (x.float() - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
