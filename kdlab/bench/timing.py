"""Timing the two paths of the benchmark, alternating blocks (the protocol: :mod:`kdlab.bench`)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .reference import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    EPOCH_IMAGES,
    LR,
    MOMENTUM,
    NUM_CLASSES,
    ROWS,
    WEIGHT_DECAY,
    Row,
    SyntheticCIFAR,
    reference_transform,
)


@dataclasses.dataclass
class Result:
    """The numbers of one row (``None`` where the row was skipped)."""

    row: str
    models: str
    reference_img_s: float | None = None
    kdlab_img_s: float | None = None
    compile_s: float | None = None
    skipped: str | None = None

    @property
    def reference_s_epoch(self) -> float | None:
        return EPOCH_IMAGES / self.reference_img_s if self.reference_img_s else None

    @property
    def kdlab_s_epoch(self) -> float | None:
        return EPOCH_IMAGES / self.kdlab_img_s if self.kdlab_img_s else None

    @property
    def ratio(self) -> float | None:
        if self.reference_img_s and self.kdlab_img_s:
            return self.kdlab_img_s / self.reference_img_s
        return None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(
            reference_s_epoch=self.reference_s_epoch,
            kdlab_s_epoch=self.kdlab_s_epoch,
            ratio=self.ratio,
        )
        return out


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int64)
    return images, labels


def _build_networks(row: Row, arch: str, teacher_arch: str, device, seed: int):
    from ..models import build_model

    torch.manual_seed(seed)
    nets = [build_model(arch, NUM_CLASSES).to(device) for _ in range(row.networks)]
    teacher = build_model(teacher_arch, NUM_CLASSES).to(device) if row.teacher else None
    if teacher is not None:
        teacher.requires_grad_(False)
    return nets, teacher


class _ReferencePath:
    def __init__(self, row, arch, teacher_arch, device, dataset, batch_size, workers, seed):
        self.device = device
        nets, teacher = _build_networks(row, arch, teacher_arch, device, seed)
        for net in nets:
            net.train()
        self.step = row.reference(nets, teacher)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )

    def time(self, steps: int, untimed: int = 1) -> float:
        """Seconds for ``steps`` steps (data loading included) after ``untimed`` ones, on a fresh
        iterator whose workers are shut down afterwards."""
        batches = iter(self.loader)

        def one_step(batches) -> None:
            x, y = next(batches)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            self.step(x, y)

        try:
            for _ in range(untimed):
                one_step(batches)
            _sync(self.device)
            started = time.perf_counter()
            for _ in range(steps):
                one_step(batches)
            _sync(self.device)
            return time.perf_counter() - started
        finally:
            del batches  # shuts the workers down: they must not run during kdlab's blocks


class _KdlabPath:
    def __init__(self, row, arch, teacher_arch, device, images, labels, batch_size, seed, options):
        from ..methods import get_method

        self.device, self.images, self.labels = device, images, labels
        self.batch_size, self.seed, self.options = batch_size, seed, options
        nets, teacher = _build_networks(row, arch, teacher_arch, device, seed)
        role = get_method(row.method).role
        names = ["student"] if (row.networks == 1 and role == "student") else None
        names = names or [f"{role}{i}" for i in range(1, row.networks + 1)]
        kwargs = {"teacher": teacher} if teacher is not None else {}
        self.method = get_method(row.method)(dict(zip(names, nets, strict=True)), **kwargs)
        if options.get("compile"):
            for name in list(self.method.networks):
                self.method.networks[name] = torch.compile(self.method.networks[name])
        self.offset = 0
        self.calls = 0

    def time(self, steps: int) -> float:
        """Seconds of one :func:`kdlab.fit` epoch of exactly ``steps`` batches (the loop's own
        timing of its training pass)."""
        from ..data import ImageDataset
        from ..train import TrainConfig, fit

        n = steps * self.batch_size
        start = self.offset % (len(self.labels) - n + 1)
        self.offset = start + n
        dataset = ImageDataset(
            "synthetic-cifar",
            self.images[start : start + n],
            self.labels[start : start + n],
            self.images[: self.batch_size],  # a token test split: evaluation is not timed
            self.labels[: self.batch_size],
            [str(c) for c in range(NUM_CLASSES)],
            padding=4,
            flip=True,
            mean=CIFAR100_MEAN,
            std=CIFAR100_STD,
        )
        config = TrainConfig(
            epochs=1,
            batch_size=self.batch_size,
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
            schedule="constant",
            seed=self.seed + self.calls,
            device=str(self.device),
            precision=self.options.get("precision", "auto"),
            channels_last=self.options.get("channels_last", "auto"),
            eval_batch_size=self.batch_size,
        )
        self.calls += 1
        result = fit(self.method, dataset, config, progress=False)
        return result.history[0]["seconds"]


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def _alternate(ref, ours, name, steps, warmup, rounds, kdlab_threads, log):
    """Warm both paths up, then time ``steps`` steps of each in alternating blocks; returns the
    reference's seconds, kdlab's, and kdlab's warm-up seconds. kdlab's blocks run with
    ``kdlab_threads`` torch threads, the reference's with the default."""
    default_threads = torch.get_num_threads()

    def kdlab_time(count: int) -> float:
        torch.set_num_threads(kdlab_threads)
        try:
            return ours.time(count)
        finally:
            torch.set_num_threads(default_threads)

    ref.time(warmup - 1)
    warm_seconds = kdlab_time(warmup)
    ref_seconds = kdlab_seconds = 0.0
    for block in _split(steps, rounds):
        ref_seconds += ref.time(block)
        kdlab_seconds += kdlab_time(block)
        log(f"{name}: {block} steps each, reference {ref_seconds:.2f} s, kdlab "
            f"{kdlab_seconds:.2f} s so far")  # fmt: skip
    return ref_seconds, kdlab_seconds, warm_seconds


def _check(rows: Sequence[str], batch_size: int, steps: int, warmup: int, rounds: int) -> None:
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown benchmark row {unknown[0]!r}; known: {', '.join(ROWS)}")
    if steps < 1 or warmup < 1 or rounds < 1:
        raise ValueError("steps, warmup and rounds must be ≥ 1")
    if batch_size < 2:
        raise ValueError(f"batch_size must be ≥ 2, got {batch_size}")


def run_benchmark(
    rows: Sequence[str] = ("independent", "kd", "dml", "tadml"),
    models: Sequence[str] = ("resnet32",),
    *,
    teacher: str | None = None,
    batch_size: int = 64,
    steps: int = 30,
    warmup: int = 3,
    rounds: int = 2,
    device: str = "auto",
    workers: int | None = None,
    train_images: int = EPOCH_IMAGES,
    precision: str = "auto",
    channels_last: str | bool = "auto",
    threads: int | None = None,
    compile: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[Result]:
    """Time every row for every architecture; see the module docstring for the protocol.

    ``precision``, ``channels_last``: kdlab's :class:`~kdlab.TrainConfig` switches (the
    reference stays float32, contiguous). ``threads``: ``torch.set_num_threads`` for kdlab's
    blocks (the reference keeps PyTorch's default). ``compile``: ``torch.compile`` kdlab's
    networks; the compile time (warm-up minus as many steady steps) is reported separately.
    """
    from ..methods import METHODS
    from ..train import pick_device

    _check(rows, batch_size, steps, warmup, rounds)
    if train_images < batch_size * max(steps, warmup):
        train_images = batch_size * max(steps, warmup)
    log = log or (lambda message: None)
    device = pick_device(device)
    workers = _cpus() if workers is None else workers
    images, labels = _synthetic(train_images, seed)
    reference_data = SyntheticCIFAR(images, labels, reference_transform())
    kdlab_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    kdlab_labels = torch.from_numpy(labels)
    options = {"precision": precision, "channels_last": channels_last, "compile": compile}
    kdlab_threads = threads or torch.get_num_threads()

    results = []
    for arch in models:
        for name in rows:
            row = ROWS[name]
            label = arch if row.networks == 1 else " + ".join([arch] * row.networks)
            if row.teacher:
                label = f"{teacher or arch} → {label}"
            if row.method not in METHODS:
                results.append(Result(name, label, skipped=f"{row.method!r} not in kdlab.METHODS"))
                log(f"{name}: skipped, method {row.method!r} not in kdlab.METHODS")
                continue
            log(f"{name} ({label}): building")
            ref = _ReferencePath(
                row, arch, teacher or arch, device, reference_data, batch_size, workers, seed
            )
            ours = _KdlabPath(
                row, arch, teacher or arch, device, kdlab_images, kdlab_labels, batch_size, seed,
                options,
            )  # fmt: skip
            timed = _alternate(ref, ours, name, steps, warmup, rounds, kdlab_threads, log)
            ref_seconds, kdlab_seconds, warm_seconds = timed
            result = Result(
                name,
                label,
                reference_img_s=steps * batch_size / ref_seconds,
                kdlab_img_s=steps * batch_size / kdlab_seconds,
            )
            if compile:
                result.compile_s = max(0.0, warm_seconds - warmup * kdlab_seconds / steps)
            results.append(result)
            del ref, ours
    return results
