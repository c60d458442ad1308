"""Object detection data in memory, its device-resident loader, and boxes from masks.

A detection data set is held as uint8 images (N×3×H×W, every image resized once to one size)
with, per image, its boxes (n_i×4 float32, ``xyxy`` in pixels of that size: x right, y down,
``x2 > x1``, edges rather than pixel centres) and labels (n_i int64, 1…C; 0 is the background,
torchvision's convention, so ``classes[0] == "background"`` and ``num_classes`` counts it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

__all__ = ["DetectionDataset", "DetectionLoader", "mask_boxes"]


def _check_split(name: str, split: str, images, boxes, labels, num_classes: int) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: {split} images must be uint8 N×3×H×W, got {images.shape}")
    if not len(images) == len(boxes) == len(labels):
        raise ValueError(f"{name}: {split} images, boxes and labels differ in number")
    h, w = images.shape[2:]
    for i, (b, y) in enumerate(zip(boxes, labels)):
        if b.dim() != 2 or b.shape[1] != 4 or len(b) != len(y):
            raise ValueError(f"{name}: {split} image {i} needs n×4 boxes and n labels")
        if len(b) and not bool(
            ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & (b[:, :2] >= 0).all(1)).all()
            and (b[:, 2] <= w).all()
            and (b[:, 3] <= h).all()
        ):
            raise ValueError(f"{name}: {split} image {i} has a box outside {w}×{h} or empty")
        if len(y) and not bool(((y >= 1) & (y < num_classes)).all()):
            raise ValueError(f"{name}: {split} image {i} has a label outside 1…{num_classes - 1}")


@dataclass
class DetectionDataset:
    """A detection data set as uint8 tensors and per-image boxes and labels (module docstring).

    ``note`` states where the images come from and the split (shown by ``repr``); ``synthetic``
    marks a generated set, and says so wherever the set is printed.
    """

    name: str
    train_images: torch.Tensor  # uint8, N×3×H×W
    train_boxes: list[torch.Tensor]  # float32 n_i×4, xyxy pixels
    train_labels: list[torch.Tensor]  # int64 n_i, 1…C
    test_images: torch.Tensor
    test_boxes: list[torch.Tensor]
    test_labels: list[torch.Tensor]
    classes: list[str]  # classes[0] == "background"
    flip: bool = True  # random horizontal flip of image and boxes while training
    synthetic: bool = False
    note: str = ""
    task: Any = None  # kdlab.tasks.detection.Detection()

    def __post_init__(self) -> None:
        if self.task is None:
            from ..tasks.detection import Detection

            self.task = Detection()
        if not self.classes or self.classes[0] != "background" or len(self.classes) < 2:
            raise ValueError(f"{self.name}: classes must be ['background', <one or more>]")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            boxes, labels = getattr(self, f"{split}_boxes"), getattr(self, f"{split}_labels")
            _check_split(self.name, split, images, boxes, labels, self.num_classes)

    @property
    def num_classes(self) -> int:
        """The number of classes *with* the background (torchvision's ``num_classes``)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[2:])

    def __repr__(self) -> str:
        boxes = sum(len(b) for b in self.train_boxes) / max(len(self.train_boxes), 1)
        kind = " — SYNTHETIC images, not real polyps" if self.synthetic else ""
        return (
            f"DetectionDataset({self.name!r}{kind}: {len(self.train_images)} train / "
            f"{len(self.test_images)} test images of {self.in_channels}×{self.image_size[0]}×"
            f"{self.image_size[1]}, {self.num_classes - 1} class(es) + background, "
            f"{boxes:.2f} boxes per training image{'; ' + self.note if self.note else ''})"
        )

    def subset(self, train_size: int | None, seed: int = 0) -> DetectionDataset:
        """The same data set with a fixed subset of ``train_size`` training images (a seeded
        permutation's first ``train_size``, kept in their order)."""
        if train_size is None or train_size >= len(self.train_images):
            return self
        if train_size < 1:
            raise ValueError(f"train_size must be ≥ 1, got {train_size}")
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(self.train_images), generator=g)[:train_size].sort().values
        return replace(
            self,
            train_images=self.train_images[keep],
            train_boxes=[self.train_boxes[i] for i in keep.tolist()],
            train_labels=[self.train_labels[i] for i in keep.tolist()],
        )


class DetectionLoader:
    """Batches ``(images, targets)`` of a detection split kept on the training device.

    ``images``: B×3×H×W float32 in [0, 1] (the detector normalises); ``targets``: one dict per
    image, ``boxes`` (n×4 float32, xyxy) and ``labels`` (n int64), on the device. Each epoch a
    permutation (``shuffle``) split into ``ceil(N / batch_size)`` near-equal batches; with
    ``flip``, each image and its boxes are mirrored left–right with probability ½
    (``x ↦ W − x``, so ``[x1, y1, x2, y2] ↦ [W − x2, y1, W − x1, y2]``). The permutation and
    the flips are drawn from the loader's own CPU generator (:meth:`state_dict`), so a resumed
    run draws what an uninterrupted one does; no host sync is needed to slice the boxes.
    """

    def __init__(
        self,
        images: torch.Tensor,
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        batch_size: int,
        *,
        shuffle: bool = False,
        flip: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.boxes = [b.to(self.device, torch.float32) for b in boxes]
        self.labels = [y.to(self.device, torch.int64) for y in labels]
        self.batch_size, self.shuffle, self.flip = batch_size, shuffle, flip
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def train(cls, dataset: DetectionDataset, batch_size: int, device, seed: int = 0):
        """The shuffled, flipped loader over the training split."""
        return cls(dataset.train_images, dataset.train_boxes, dataset.train_labels, batch_size,
                   shuffle=True, flip=dataset.flip, device=device, seed=seed)  # fmt: skip

    @classmethod
    def test(cls, dataset: DetectionDataset, batch_size: int, device):
        """The test split in order, unflipped."""
        return cls(dataset.test_images, dataset.test_boxes, dataset.test_labels, batch_size,
                   device=device)  # fmt: skip

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    @property
    def min_batch_size(self) -> int:
        """The size of the smallest batch of an epoch."""
        return len(self.images) // len(self)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        width = self.images.shape[-1]
        for idx in torch.tensor_split(order, len(self)):
            x = self.images[idx.to(self.device)].float().div_(255)
            flipped = [False] * len(idx)
            if self.flip:
                mask = torch.rand(len(idx), generator=self.generator) < 0.5
                flipped = mask.tolist()
                x = torch.where(mask.to(self.device)[:, None, None, None], x.flip(3), x)
            targets = []
            for i, mirror in zip(idx.tolist(), flipped):
                boxes = self.boxes[i]
                if mirror:
                    boxes = torch.stack(
                        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1
                    )
                targets.append({"boxes": boxes, "labels": self.labels[i]})
            yield x, targets


def mask_boxes(
    mask: np.ndarray, threshold: int = 128, min_area: int = 64
) -> list[tuple[float, float, float, float]]:
    """One box per connected component of ``mask >= threshold`` (8-connectivity), xyxy edges.

    ``mask``: an H×W (or H×W×C, channel 0 read) uint8 array — JPEG masks hold values between
    0 and 255 near edges, so they are thresholded, not tested for 255. Components smaller than
    ``min_area`` pixels (JPEG specks) are dropped. Labelling: ``scipy.ndimage.label`` (SciPy
    comes with scikit-learn, a kdlab dependency). Boxes are ordered by their top-left corner.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    components, count = ndimage.label(mask >= threshold, structure=np.ones((3, 3), dtype=int))
    boxes = []
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    for index, found in enumerate(ndimage.find_objects(components), start=1):
        if found is None or sizes[index] < min_area:
            continue
        rows, cols = found
        boxes.append((float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)))
    return sorted(boxes, key=lambda b: (b[1], b[0]))
