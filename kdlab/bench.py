"""Training speed of kdlab's loop against the common PyTorch training loop, on the same device.

``python -m kdlab bench`` times, in one run, on one device, with the same models, batch size
and synthetic CIFAR-shaped data (50,000 random uint8 images, 32×32×3, 100 classes):

(a) **the reference**: the loop as it is commonly written. A torchvision-style ``Dataset`` that
    returns PIL images, ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
    ``ToTensor()``, ``Normalize(...)``; a ``DataLoader`` with one worker per CPU
    (``pin_memory`` on CUDA); float32; one ``torch.optim.SGD`` per network (Nesterov momentum
    0.9, weight decay 5e-4, PyTorch's default implementation); each method's loss written out
    plainly (below, ``_reference_*``).
(b) **kdlab**: :func:`kdlab.fit` with the method from :data:`kdlab.METHODS`, the
    device-resident loader (:class:`kdlab.DeviceLoader`) and the loop's defaults
    (``TrainConfig(precision="auto", channels_last="auto")``), unless told otherwise.

Rows: ``independent`` (one network, CE), ``kd`` (a frozen teacher's forward + the KD loss),
``dml`` (2 peers, mutual KL), ``tadml`` (2 peers, JS + discriminators + topology term). A row
whose method is not registered in :data:`kdlab.METHODS` is printed as skipped. Adding a row is
one :class:`Row` in :data:`ROWS` with its reference step.

Measurement: ``--warmup`` untimed steps, then ``--steps`` timed steps per path, split into
``--rounds`` blocks that alternate reference / kdlab, so that a change of load on a shared
machine hits both paths alike. The reference's worker processes live only during its own
blocks (a fresh iterator per block; its first batch and step are untimed, so worker start-up
is not counted), and kdlab's blocks are whole :func:`kdlab.fit` epochs of exactly the block's
steps, timed by the loop itself (``record["seconds"]``: the training pass, not the
evaluation). Throughput is training images per second (a batch of 64 images is 64 images
whether one network or two learn from it); seconds per epoch = 50,000 / (images per second).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ROWS", "Row", "Result", "run_benchmark", "format_table", "add_arguments", "main"]

EPOCH_IMAGES = 50_000  # CIFAR-100's training split
NUM_CLASSES = 100
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# The recipe's optimiser, shared by both paths (METHODS.md §3, DML's CIFAR-100 recipe).
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


# ---------------------------------------------------------------------------------------------
# (a) The reference: the common way
# ---------------------------------------------------------------------------------------------


class SyntheticCIFAR(torch.utils.data.Dataset):
    """A torchvision-``CIFAR100``-style dataset over uint8 HWC arrays: PIL image → transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data, self.targets, self.transform = images, labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def reference_transform(padding: int = 4, size: int = 32):
    """The usual CIFAR training transform (torchvision)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomCrop(size, padding=padding),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )


def _sgd(net: nn.Module) -> torch.optim.Optimizer:
    # PyTorch's default implementation (no foreach/fused argument), as commonly written.
    return torch.optim.SGD(
        net.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )


def _kl(z: torch.Tensor, z_target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(sg p_target^T ‖ p^T), batchmean."""
    return F.kl_div(
        F.log_softmax(z / temperature, dim=1),
        F.softmax(z_target.detach() / temperature, dim=1),
        reduction="batchmean",
    )


def _reference_independent(nets, teacher):
    (net,) = nets
    opt = _sgd(net)

    def step(x, y):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _reference_kd(nets, teacher, alpha: float = 0.9, temperature: float = 4.0):
    (student,) = nets
    teacher.eval()
    opt = _sgd(student)

    def step(x, y):
        with torch.no_grad():
            t = teacher(x)
        z = student(x)
        loss = (1 - alpha) * F.cross_entropy(z, y) + alpha * temperature**2 * _kl(z, t, temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _reference_dml(nets, teacher):
    net1, net2 = nets
    opt1, opt2 = _sgd(net1), _sgd(net2)

    def step(x, y):
        z1, z2 = net1(x), net2(x)
        loss1 = F.cross_entropy(z1, y) + _kl(z1, z2)
        loss2 = F.cross_entropy(z2, y) + _kl(z2, z1)
        opt1.zero_grad()
        opt2.zero_grad()
        (loss1 + loss2).backward()
        opt1.step()
        opt2.step()

    return step


def _js(z: torch.Tensor, z_peer: torch.Tensor) -> torch.Tensor:
    """JS(p, sg p_peer), batchmean."""
    p, q = F.softmax(z, dim=1), F.softmax(z_peer.detach(), dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean"))


def _topology(h: torch.Tensor, h_peer: torch.Tensor, k: int = 16, tau: float = 0.1):
    """mean_i KL(sg q_peer(·|i) ‖ q(·|i)) over each anchor's K nearest neighbours (peer's space)."""
    h = F.normalize(h, dim=1)
    hp = F.normalize(h_peer.detach(), dim=1)
    sim = hp @ hp.T
    sim.fill_diagonal_(-float("inf"))
    index = sim.topk(k, dim=1).indices
    logits = torch.einsum("bd,bkd->bk", h, h[index]) / tau
    target = torch.einsum("bd,bkd->bk", hp, hp[index]) / tau
    return F.kl_div(F.log_softmax(logits, 1), F.softmax(target, 1), reduction="batchmean")


def _reference_tadml(nets, teacher, lam_adv: float = 0.1, lam_topo: float = 1.0):
    net1, net2 = nets
    opt1, opt2 = _sgd(net1), _sgd(net2)
    device = next(net1.parameters()).device

    def mlp():
        return nn.Sequential(
            nn.Linear(NUM_CLASSES, 128), nn.LeakyReLU(0.2),
            nn.Linear(128, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 128), nn.LeakyReLU(0.2),
            nn.Linear(128, 1),
        ).to(device)  # fmt: skip

    d1, d2 = mlp(), mlp()
    opt_d1 = torch.optim.Adam(d1.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d2 = torch.optim.Adam(d2.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()

    def step(x, y):
        z1, f1 = net1(x, return_features=True)
        z2, f2 = net2(x, return_features=True)
        h1, h2 = f1[-1].mean(dim=(2, 3)), f2[-1].mean(dim=(2, 3))
        ones = torch.ones(x.shape[0], 1, device=x.device)
        zeros = torch.zeros(x.shape[0], 1, device=x.device)
        # Discriminators: the peer's output is real, the own network's is fake.
        loss_d = (
            bce(d1(z2.detach()), ones)
            + bce(d1(z1.detach()), zeros)
            + bce(d2(z1.detach()), ones)
            + bce(d2(z2.detach()), zeros)
        )
        opt_d1.zero_grad()
        opt_d2.zero_grad()
        loss_d.backward()
        opt_d1.step()
        opt_d2.step()
        # Peers: CE + JS + fool the own discriminator + agree on the peer's local topology.
        d1.requires_grad_(False)
        d2.requires_grad_(False)
        loss1 = (
            F.cross_entropy(z1, y)
            + _js(z1, z2)
            + lam_adv * bce(d1(z1), ones)
            + lam_topo * _topology(h1, h2)
        )
        loss2 = (
            F.cross_entropy(z2, y)
            + _js(z2, z1)
            + lam_adv * bce(d2(z2), ones)
            + lam_topo * _topology(h2, h1)
        )
        d1.requires_grad_(True)
        d2.requires_grad_(True)
        opt1.zero_grad()
        opt2.zero_grad()
        (loss1 + loss2).backward()
        opt1.step()
        opt2.step()

    return step


# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark row: a kdlab method (by its name in :data:`kdlab.METHODS`), how many
    networks it trains, whether it has a frozen teacher, and the reference's step builder
    ``reference(networks, teacher) -> step(x, y)``."""

    name: str
    method: str
    networks: int
    reference: Callable[[list[nn.Module], nn.Module | None], Callable]
    teacher: bool = False


ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("independent", "independent", 1, _reference_independent),
        Row("kd", "kd", 1, _reference_kd, teacher=True),
        Row("dml", "dml", 2, _reference_dml),
        Row("tadml", "tadml", 2, _reference_tadml),
    )
}


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


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


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
    from .models import build_model

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
        from .methods import get_method

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
        from .data import ImageDataset
        from .train import TrainConfig, fit

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
    from .methods import METHODS
    from .train import pick_device

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown benchmark row {unknown[0]!r}; known: {', '.join(ROWS)}")
    if steps < 1 or warmup < 1 or rounds < 1:
        raise ValueError("steps, warmup and rounds must be ≥ 1")
    if batch_size < 2:
        raise ValueError(f"batch_size must be ≥ 2, got {batch_size}")
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
    default_threads = torch.get_num_threads()
    kdlab_threads = threads or default_threads

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
            ref.time(warmup - 1)
            torch.set_num_threads(kdlab_threads)
            warm_seconds = ours.time(warmup)
            torch.set_num_threads(default_threads)
            ref_seconds = kdlab_seconds = 0.0
            for block in _split(steps, rounds):
                ref_seconds += ref.time(block)
                torch.set_num_threads(kdlab_threads)
                kdlab_seconds += ours.time(block)
                torch.set_num_threads(default_threads)
                log(f"{name}: {block} steps each, reference {ref_seconds:.2f} s, kdlab "
                    f"{kdlab_seconds:.2f} s so far")  # fmt: skip
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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def environment(device: str = "auto") -> dict[str, Any]:
    """Where the numbers were measured."""
    from .train import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name = f"{name}, {_cpus()} CPUs"
    return {
        "device": str(dev),
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(results: Sequence[Result], env: dict[str, Any], settings: dict[str, Any]) -> str:
    """A markdown table of the results with the device, torch version and settings above it."""
    lines = [
        f"device: {env['device']} ({env['device_name']}), torch {env['torch']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        "| row | networks | reference img/s | kdlab img/s | reference s/epoch | kdlab s/epoch "
        "| kdlab / reference |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.row} | {r.models} | skipped: {r.skipped} | | | | |")
            continue
        ratio = _fmt(r.ratio, ".2f")
        lines.append(
            f"| {r.row} | {r.models} | {_fmt(r.reference_img_s, '.1f')} "
            f"| {_fmt(r.kdlab_img_s, '.1f')} | {_fmt(r.reference_s_epoch, '.0f')} "
            f"| {_fmt(r.kdlab_s_epoch, '.0f')} | {ratio}× |"
        )
    compiled = [r for r in results if r.compile_s is not None]
    if compiled:
        lines.append("")
        lines += [
            f"compile time, {r.row}: {r.compile_s:.1f} s (not in the rates)" for r in compiled
        ]
    lines.append("")
    lines.append(
        f"img/s: training images per second (a batch counts once, however many networks learn "
        f"from it); s/epoch = {EPOCH_IMAGES:,} / img/s."
    )
    return "\n".join(lines)


def _bool_or_auto(text: str) -> str | bool:
    value = text.lower()
    if value == "auto":
        return "auto"
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``python -m kdlab bench`` options."""
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated rows (default: {','.join(ROWS)})"
    )
    parser.add_argument(
        "--models", help="comma-separated architectures, one row set each (default: resnet32)"
    )
    parser.add_argument("--teacher", help="the kd row's teacher (default: the same architecture)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64 (DML's recipe)")
    parser.add_argument("--steps", type=int, help="timed steps per path and row (default 30)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3)")
    parser.add_argument("--rounds", type=int, help="alternating reference/kdlab blocks (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--workers", type=int, help="reference DataLoader workers (default: CPUs)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", type=_bool_or_auto, default="auto", help="auto|on|off")
    parser.add_argument("--threads", type=int, help="torch threads in kdlab's blocks")
    parser.add_argument("--compile", action="store_true", help="torch.compile kdlab's networks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="seconds: cnn_tiny, few steps")
    parser.add_argument("--json", help="also save the numbers to this file")


def main(args: argparse.Namespace) -> int:
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    quick = args.quick
    models = args.models or ("cnn_tiny" if quick else "resnet32")
    settings = dict(
        batch_size=args.batch_size,
        steps=args.steps or (3 if quick else 30),
        warmup=args.warmup or (1 if quick else 3),
        rounds=args.rounds or (1 if quick else 2),
        device=args.device,
        workers=args.workers if args.workers is not None else (min(2, _cpus()) if quick else None),
        train_images=2_048 if quick else EPOCH_IMAGES,
        precision=args.precision,
        channels_last=args.channels_last,
        threads=args.threads,
        compile=args.compile,
        seed=args.seed,
    )
    results = run_benchmark(
        rows,
        [m.strip() for m in models.split(",") if m.strip()],
        teacher=args.teacher,
        log=lambda message: print(message, file=sys.stderr, flush=True),
        **settings,
    )
    env = environment(args.device)
    shown = {k: v for k, v in settings.items() if k != "train_images"}
    shown["workers"] = shown["workers"] if shown["workers"] is not None else _cpus()
    if args.precision == "auto":  # say what "auto" chose on this device
        from .train import pick_device, pick_precision, precision_name

        chosen = pick_precision("auto", pick_device(args.device))
        shown["precision"] = f"auto ({precision_name(chosen)})"
    print(format_table(results, env, shown))
    if args.json:
        data = {"environment": env, "settings": shown, "rows": [r.to_dict() for r in results]}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
