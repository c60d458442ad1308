"""``python -m kdlab bench --task detection``: the time of one epoch of KD + ML detection, and its
peak memory.

What it measures: ``kdml_det`` (one teacher and two students, the paper profile's networks by
default: a Faster R-CNN ResNet-50-FPN teacher and two MobileNetV3-Large-FPN students) trained by
kdlab's own loop pieces (:func:`kdlab.epoch.train_epoch` with the loop's precision, optimizers
and ``update``) on a **synthetic set of Kvasir-SEG's size**: 880 training and 120 test images of
the cache's size (320×320), random pixels with one or two random boxes each, held on the device
as the real set would be. Random pixels cost what real ones do, and nothing is learned, so the
figures are times, never accuracies. The weights are random too (COCO weights change no cost).

``--warmup`` untimed steps, then ``--steps`` timed steps; seconds per epoch = the mean step
time × the steps of one epoch (880 / batch size), plus the evaluation of the 120 test images
(timed on ``--eval-batches`` batches, scaled). The process's CPU time per step is reported
beside the wall time: with one thread on a machine shared with other work it is what the step
would take alone. Peak memory: on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``), on a CPU the process's peak resident set (``ru_maxrss``:
the interpreter, torch and the data set included).
"""

from __future__ import annotations

import itertools
import math
import resource
import sys
import time
from typing import Any

import torch

__all__ = ["synthetic_detection_set", "time_detection", "main"]

KVASIR = {"train": 880, "test": 120, "size": 320}


def synthetic_detection_set(train: int, test: int, size: int, seed: int = 0):
    """Random uint8 images (``size``×``size``) with one or two random boxes (a sixth to a half
    of the side) each: Kvasir-SEG's shape, for timing only."""
    from ..data.boxes import DetectionDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (train + test, 3, size, size), dtype=torch.uint8, generator=g)
    boxes = []
    for _ in range(train + test):
        count = 1 + int(torch.randint(0, 2, (1,), generator=g))
        side = size * (1 / 6 + torch.rand(count, 1, generator=g) / 3)
        corner = (size - side) * torch.rand(count, 2, generator=g)
        boxes.append(torch.cat([corner, corner + side], 1))
    labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
    return DetectionDataset(
        f"synthetic-{size}px", images[:train], boxes[:train], labels[:train], images[train:],
        boxes[train:], labels[train:], ["background", "polyp"], synthetic=True,
        note="random pixels and boxes, for timing",
    )  # fmt: skip


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def time_detection(
    teacher: str = "fasterrcnn_resnet50_fpn",
    students: tuple[str, ...] = ("fasterrcnn_mobilenet_v3_large_fpn",) * 2,
    *,
    size: int = KVASIR["size"],
    train_images: int = KVASIR["train"],
    test_images: int = KVASIR["test"],
    batch_size: int = 8,
    steps: int = 5,
    warmup: int = 2,
    eval_batches: int = 2,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    log=lambda message: None,
) -> dict[str, Any]:
    """Seconds per training step and per epoch (training and evaluation) and the peak memory of
    ``kdml_det`` on a synthetic set of Kvasir-SEG's shape (module docstring)."""
    from ..config import TrainConfig
    from ..epoch import Updater, train_epoch
    from ..methods import get_method
    from ..models import build_model
    from ..optim import build_optimizers
    from ..precision import Precision
    from ..train import pick_device, seed_everything

    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    data = synthetic_detection_set(train_images, test_images, size, seed)
    seed_everything(seed)
    nets = {f"student{i}": build_model(a, 2) for i, a in enumerate(students, 1)}
    method = get_method("kdml_det")(nets, teacher=build_model(teacher, 2)).to(dev)
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, weight_decay=1e-4,
                         schedule="constant", precision=precision, device=str(dev),
                         seed=seed)  # fmt: skip
    precision_used = Precision.pick(config.precision, dev)
    optimizers, _ = build_optimizers(method, config, dev)
    update = Updater(optimizers, precision_used.scaler)
    train, test = data.task.loaders(data, config, dev)

    def run_steps(count: int) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        train_epoch(method, itertools.islice(iter(train), count), update, precision_used, 1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - started, time.process_time() - cpu

    log(f"warm-up: {warmup} steps of {batch_size} images at {size} px on {dev}")
    run_steps(warmup)
    log(f"timing {steps} steps")
    wall, cpu = run_steps(steps)
    step, cpu_step = wall / steps, cpu / steps

    def evaluate(count: int) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        members = method.ensemble_members()
        data.task.evaluate(method.evaluated(), itertools.islice(iter(test), count), members)
        return time.perf_counter() - started, time.process_time() - cpu

    evaluate(1)  # untimed: the first evaluation imports the COCO and box-fusion libraries
    evaluated = min(eval_batches * test.batch_size, test_images)
    eval_s, eval_cpu = (t / evaluated * test_images for t in evaluate(eval_batches))
    steps_per_epoch = math.ceil(train_images / batch_size)
    return {
        "teacher": teacher, "students": "+".join(students), "size": size,
        "train_images": train_images, "test_images": test_images, "batch_size": batch_size,
        "device": str(dev), "precision": precision_used.name, "threads": torch.get_num_threads(),
        "steps_timed": steps, "s_per_step": step, "cpu_s_per_step": cpu_step,
        "steps_per_epoch": steps_per_epoch,
        "train_s_per_epoch": step * steps_per_epoch, "eval_s_per_epoch": eval_s,
        "s_per_epoch": step * steps_per_epoch + eval_s,
        "eval_cpu_s_per_epoch": eval_cpu, "cpu_s_per_epoch": cpu_step * steps_per_epoch + eval_cpu,
        "peak_memory_gib": _peak_memory_gib(dev),
    }  # fmt: skip


def main(args) -> int:
    """The ``bench --task detection`` command: one table (and ``--json``)."""
    from ..io import write_json
    from .report import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    result = time_detection(
        args.teacher or ("fasterrcnn_tiny_resnet" if quick else "fasterrcnn_resnet50_fpn"),
        tuple(models)
        or ("fasterrcnn_tiny_cnn" if quick else "fasterrcnn_mobilenet_v3_large_fpn",) * 2,
        size=64 if quick else args.size,
        train_images=16 if quick else KVASIR["train"],
        test_images=8 if quick else KVASIR["test"],
        batch_size=args.batch_size or 8,
        steps=args.steps or (1 if quick else 5),
        warmup=args.warmup or (1 if quick else 2),
        eval_batches=1 if quick else 2,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    env = environment(args.device)
    rows = [
        ("networks", f"{result['teacher']} → {result['students']} (kdml_det, random weights)"),
        ("data", f"{result['train_images']} + {result['test_images']} synthetic images of "
                 f"{result['size']}×{result['size']}, batch {result['batch_size']}"),
        ("device", f"{result['device']}, {result['precision']}, {result['threads']} threads"),
        ("s per training step", f"{result['s_per_step']:.2f} (mean of {result['steps_timed']}; "
                                f"process CPU time {result['cpu_s_per_step']:.2f} s)"),
        ("s per epoch, training", f"{result['train_s_per_epoch']:.0f} ({result['steps_per_epoch']} steps)"),
        ("s per epoch, evaluation", f"{result['eval_s_per_epoch']:.0f}"),
        ("s per epoch", f"{result['s_per_epoch']:.0f} ({result['s_per_epoch'] / 60:.1f} min)"),
        ("process CPU s per epoch", f"{result['cpu_s_per_epoch']:.0f}"),
        ("peak memory (GiB)", f"{result['peak_memory_gib']:.2f}"),
    ]  # fmt: skip
    print("\n".join(["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]))
    print(f"\nmeasured on {env['device_name']}, torch {env['torch']}")
    if args.json:
        write_json(args.json, {"environment": env, "result": result})
        print(f"wrote {args.json}")
    return 0
