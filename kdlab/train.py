"""The one training loop, for any method and any number of networks.

:func:`fit` trains a :class:`~kdlab.methods.Method` on a dataset: device-resident batches,
mixed precision where it helps, one SGD optimizer per network (Nesterov momentum, weight decay,
step or cosine schedule), the method's own optimizers for its auxiliary modules, a tqdm
progress bar, test metrics every epoch, and — with an output folder — ``config.json``,
``metrics.jsonl``, ``summary.json`` and an atomic checkpoint every epoch that ``resume=True``
continues from. The loop knows no screen: live plots are callbacks handed in.

:func:`run` is the whole recipe in one call: seed, build the networks, build the method, fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import DeviceLoader, ImageDataset, load_dataset
from .methods import Method, get_method
from .metrics import evaluate
from .models import build_model

__all__ = [
    "TrainConfig",
    "History",
    "Run",
    "fit",
    "run",
    "seed_everything",
    "pick_device",
    "save_network",
    "load_network",
]

Callback = Callable[[dict, "History"], None]


@dataclasses.dataclass
class TrainConfig:
    """The optimisation recipe; the defaults are DML's CIFAR-100 recipe (METHODS.md §3)."""

    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step" (÷10 at milestones), "cosine" or "constant"
    milestones: tuple[int, ...] = (60, 120, 180)  # epochs; scaled when epochs ≠ 200
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"  # "auto" = cuda, else mps, else cpu
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16"
    channels_last: str | bool = "auto"  # auto: on for CUDA and CPU (measured faster on both)
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be ≥ 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ValueError("weight_decay and momentum must be ≥ 0")
        if self.schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose step, cosine or constant")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {self.precision!r}; choose auto, fp32, bf16, fp16")
        self.milestones = tuple(int(m) for m in self.milestones)


class History(list):
    """Per-epoch records (dicts): ``epoch``, ``lr``, ``seconds``, ``loss/<net>/<term>``,
    ``acc/<net>``, ``acc/ensemble``, ``agree/<a>-<b>``, ``js/<a>-<b>`` and method metrics.

    ``last_epoch``: the epoch the running :func:`fit` call ends at (``None`` outside one), so a
    callback can tell the final record from the others.
    """

    last_epoch: int | None = None

    def networks(self) -> list[str]:
        """Every name with an accuracy (networks, then ``ensemble``)."""
        return [k[4:] for k in self[0] if k.startswith("acc/")] if self else []

    def final(self, name: str) -> float:
        return self[-1][f"acc/{name}"]

    def best(self, name: str) -> tuple[float, int]:
        """Best test accuracy of ``name`` and the epoch it was reached (the first, on ties)."""
        row = max(self, key=lambda r: (r[f"acc/{name}"], -r["epoch"]))
        return row[f"acc/{name}"], row["epoch"]

    def column(self, key: str) -> list[float]:
        return [row[key] for row in self]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(list(self))


@dataclasses.dataclass
class Run:
    """What :func:`fit` returns: the method (with its trained networks), history and summary."""

    method: Method
    history: History
    summary: dict
    out: Path | None = None

    @property
    def networks(self) -> dict[str, nn.Module]:
        return self.method.evaluated()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon 4th generation and later), on which oneDNN runs
    bf16 convolutions natively. False where this torch cannot tell."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run names the precision :func:`pick_precision` chose: "bfloat16", "float16", "float32"."""
    return str(dtype or torch.float32).replace("torch.", "")


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision="auto"``: bf16 on CUDA compute capability ≥ 8.0, fp16
    below it (with a gradient scaler); on a CPU, bf16 where it has AMX (measured twice as fast
    for a resnet32 step on two cores, accuracy within noise: README, Performance), otherwise
    fp32 (None, no autocast), as on MPS. "fp32", "bf16" and "fp16" force a choice."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def _scheduler(optimizer, config: TrainConfig):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        # The recipe's milestones are for 200 epochs: scale them to shorter or longer runs.
        scale = config.epochs / 200
        milestones = sorted({max(1, round(m * scale)) for m in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def _sgd(module: nn.Module, config: TrainConfig, device: torch.device):
    kwargs = {}
    if device.type == "cuda":
        kwargs["fused"] = True  # one kernel for the whole step, and no host sync with a scaler
    else:
        kwargs["foreach"] = True
    return torch.optim.SGD(
        module.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
        **kwargs,
    )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the run stopped, the last good checkpoint is kept."""


def make_summary(method: Method, history: History, config: TrainConfig, archs: Mapping) -> dict:
    """Final and best test accuracy (percent) of every network and of the ensemble."""
    networks = {}
    for name in history.networks():
        best, best_epoch = history.best(name)
        entry = {"final_acc": history.final(name), "best_acc": best, "best_epoch": best_epoch}
        if name in archs:
            entry = {"arch": archs[name], **entry}
        networks[name] = entry
    last = history[-1]
    return {
        "method": method.name,
        "params": dataclasses.asdict(method.params),
        "dataset": archs.get("_dataset"),
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_done": last["epoch"],
        "networks": networks,
        "agreement": {k: v for k, v in last.items() if k.startswith(("agree/", "js/"))},
        "seconds": sum(history.column("seconds")),
    }


def fit(
    method: Method,
    dataset: ImageDataset,
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool | str = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    archs: Mapping[str, str] | None = None,
    stop_after: int | None = None,
) -> Run:
    """Train ``method`` on ``dataset`` with ``config``.

    Per batch, the method computes its loss terms and calls ``update(terms)``; the loop
    backpropagates their sum and steps the optimizers of the named modules. Per epoch: the
    schedules step, every network is evaluated on the test split (:func:`kdlab.metrics.evaluate`),
    the record is appended to the history (and ``out/metrics.jsonl``), a checkpoint is written
    atomically to ``out/checkpoint.pt``, and each callback is called with ``(record, history)``.

    ``resume=True`` continues from ``out/checkpoint.pt`` (networks, optimizers, schedules,
    gradient scaler, auxiliary modules, RNG states, history) to the same numbers an
    uninterrupted run gives; ``resume="auto"`` resumes when that checkpoint exists and starts
    afresh otherwise (what a notebook run by a grid uses). ``stop_after`` ends the run after
    that many epochs (an interruption, for tests). A NaN or infinite loss raises
    :class:`NonFiniteLossError` naming the network, the term and the epoch; the checkpoint of
    the last good epoch stays.
    """
    config = config or TrainConfig()
    archs = dict(archs or {})
    device = pick_device(config.device)
    amp_dtype = pick_precision(config.precision, device)
    if config.channels_last == "auto":
        # NHWC convolutions: faster on CUDA tensor cores and in oneDNN on CPUs (kdlab/bench.py).
        channels_last = device.type in ("cuda", "cpu")
    else:
        channels_last = bool(config.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    train_loader = DeviceLoader.train(
        dataset, config.batch_size, device, seed=config.seed, channels_last=channels_last
    )
    test_loader = DeviceLoader.test(
        dataset, config.eval_batch_size, device, channels_last=channels_last
    )
    method.check_batch_size(train_loader.min_batch_size)

    optimizers = {name: _sgd(net, config, device) for name, net in method.networks.items()}
    schedulers = {name: _scheduler(opt, config) for name, opt in optimizers.items()}
    optimizers.update(method.auxiliary_optimizers())
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    history = History()
    out = Path(out) if out is not None else None
    checkpoint_path = out / "checkpoint.pt" if out else None
    start_epoch = 0
    if out:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(
            out / "config.json",
            {
                "method": method.name,
                "params": dataclasses.asdict(method.params),
                "archs": archs,
                "train": dataclasses.asdict(config),
                "device": str(device),
                "precision": precision_name(amp_dtype),
                "channels_last": channels_last,
            },
        )
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if resume == "auto":
        resume = checkpoint_path is not None and checkpoint_path.exists()
    if resume:
        if not (checkpoint_path and checkpoint_path.exists()):
            raise FileNotFoundError(f"nothing to resume: no checkpoint.pt in {out}")
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        method.load_state_dict(state["method"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)
        history.extend(json.loads(state["history"]))
        start_epoch = len(history)
    if out:  # metrics.jsonl always equals the history (a resumed run drops unfinished epochs)
        with open(out / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in history)

    sums: dict[str, torch.Tensor] = {}

    def accumulate(key: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        sums[key] = sums[key] + value if key in sums else value

    def update(terms: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        total = 0.0
        for name, named in terms.items():
            optimizers[name].zero_grad(set_to_none=True)
            for term, value in named.items():
                total = total + value
                accumulate(f"loss/{name}/{term}", value)
        scaler.scale(total).backward()
        for name in terms:
            scaler.step(optimizers[name])
        scaler.update()

    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    history.last_epoch = last_epoch
    steps = len(train_loader)
    bar = None
    if progress and start_epoch < last_epoch:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=(last_epoch - start_epoch) * steps, desc=method.name, unit="batch", leave=True
        )
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            started = time.perf_counter()
            method.train()
            sums.clear()
            lr = optimizers[next(iter(method.networks))].param_groups[0]["lr"]
            for step, (x, y) in enumerate(train_loader):
                with autocast():
                    extra = method.training_step(x, y, update, epoch=epoch, step=step)
                for key, value in extra.items():
                    accumulate(key, value)
                if bar is not None:
                    bar.update(1)
            for sched in schedulers.values():
                sched.step()
            # One host transfer per epoch for every logged quantity.
            keys = list(sums)
            values = torch.stack([sums[k] for k in keys]).cpu().tolist() if keys else []
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            for key, value in zip(keys, values):
                mean = value / steps
                if not math.isfinite(mean) and key.startswith("loss/"):
                    _, network, term = key.split("/", 2)
                    raise NonFiniteLossError(
                        f"loss term {term!r} of network {network!r} is {mean} in epoch {epoch}; "
                        "the run stopped"
                        + (f", the last good checkpoint is {checkpoint_path}" if out else "")
                    )
                record[key] = mean
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            record["seconds"] = time.perf_counter() - started
            record.update(
                evaluate(
                    method.evaluated(), test_loader, method.ensemble_members(), autocast=autocast
                )
            )
            history.append(record)
            if out:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                state = {
                    "method": method.state_dict(),
                    "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                    "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                    "scaler": scaler.state_dict(),
                    "loader": train_loader.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "history": json.dumps(list(history)),
                }
                if device.type == "cuda":
                    state["rng_cuda"] = torch.cuda.get_rng_state(device)
                tmp = checkpoint_path.with_suffix(".pt.tmp")
                torch.save(state, tmp)
                os.replace(tmp, checkpoint_path)
            if bar is not None:
                shown = {k[4:]: f"{v:.1f}" for k, v in record.items() if k.startswith("acc/")}
                bar.set_postfix(shown, refresh=False)
            for callback in callbacks:
                callback(record, history)
    finally:
        if bar is not None:
            bar.close()

    if channels_last:  # hand the networks back in the standard layout
        method.to(memory_format=torch.contiguous_format)
    summary = make_summary(method, history, config, archs) if history else {}
    if out and history:
        _write_json(out / "summary.json", summary)
        for name, net in method.evaluated().items():
            if name in archs:
                save_network(out / "networks" / f"{name}.pt", net, archs[name], dataset)
    return Run(method, history, summary, out)


def save_network(path: str | Path, network: nn.Module, arch: str, dataset: ImageDataset) -> None:
    """Save one network with what :func:`load_network` needs to rebuild it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "arch": arch,
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
        "dataset": dataset.name,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_network(path: str | Path) -> nn.Module:
    """Rebuild a network saved by :func:`save_network` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no network checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = build_model(state["arch"], state["num_classes"], state["in_channels"])
    network.load_state_dict(state["state_dict"])
    network.arch = state["arch"]
    return network


def _role_names(method_cls: type[Method], count: int) -> list[str]:
    """``net1``, ``net2``… (or the method's ``role``); a lone student is just ``student``."""
    prefix = method_cls.role
    if count == 1 and prefix == "student":
        return ["student"]
    return [f"{prefix}{i}" for i in range(1, count + 1)]


def run(
    method: str,
    models: Sequence[str] | str,
    dataset: ImageDataset | str = "digits",
    *,
    teacher: nn.Module | str | None = None,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    stop_after: int | None = None,
    **params: Any,
) -> Run:
    """Seed, build the networks and the method, and :func:`fit` them.

    ``models``: architecture names (one per trained network, or a comma-separated string).
    ``teacher``: for methods with a teacher, an architecture name (built and trained with the
    others, for online methods), a path to a network checkpoint, or a network. ``params`` are
    the method's own knobs (e.g. ``alpha=0.9, temperature=4``). Seeding happens before the
    networks are built, so the same seed gives the same run.
    """
    config = config or TrainConfig()
    method_cls = get_method(method)
    dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    if not names or not all(names):
        raise ValueError("give at least one model name")
    seed_everything(config.seed)
    roles = _role_names(method_cls, len(names))
    networks = {
        role: build_model(arch, dataset.num_classes, dataset.in_channels)
        for role, arch in zip(roles, names)
    }
    archs: dict[str, str] = dict(zip(roles, names))
    archs["_dataset"] = dataset.name
    kwargs: dict[str, Any] = {}
    if method_cls.teacher_mode is not None:
        if teacher is None:
            raise ValueError(f"method {method!r} needs a teacher")
        if isinstance(teacher, (str, Path)) and Path(teacher).suffix == ".pt":
            teacher = load_network(teacher)
        elif isinstance(teacher, str):
            if method_cls.teacher_mode == "pretrained":
                raise ValueError(
                    f"method {method!r} distils from a pretrained teacher: pass a trained network "
                    "or a checkpoint path (the command line trains one first)"
                )
            teacher = build_model(teacher, dataset.num_classes, dataset.in_channels)
        archs["teacher"] = getattr(teacher, "arch", type(teacher).__name__)
        kwargs["teacher"] = teacher
    instance = method_cls(networks, **kwargs, **params)
    return fit(
        instance,
        dataset,
        config,
        out=out,
        resume=resume,
        callbacks=callbacks,
        progress=progress,
        archs=archs,
        stop_after=stop_after,
    )
