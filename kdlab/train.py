"""The one training loop, for any method and any number of networks.

:func:`fit` trains a :class:`~kdlab.methods.Method` on a dataset, in named parts a reader can
take one at a time:

- :mod:`kdlab.precision`: float32, bf16 or fp16 (with a gradient scaler), picked per device;
- :mod:`kdlab.optim`: SGD per network (Nesterov momentum, weight decay), the method's own
  optimizers for its auxiliary modules, and one learning-rate schedule shape for all of them;
- :mod:`kdlab.epoch`: one epoch — the method's steps and the ``update`` they call;
- :mod:`kdlab.metrics`: the test metrics after every epoch, in float32;
- :mod:`kdlab.checkpoint`: what a resumed run restores, and single saved networks;
- :mod:`kdlab.callbacks`: the run folder (``config.json``, ``metrics.jsonl``, ``summary.json``,
  an atomic checkpoint every epoch) and the progress bar. The loop knows no screen: live plots
  are callbacks handed in.

:func:`run` is the whole recipe in one call: seed, build the networks, build the method, fit.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .callbacks import LoopCallback, ProgressBar, RunFolder
from .checkpoint import TrainingState, load_network, save_network
from .data import DeviceLoader, ImageDataset, load_dataset
from .epoch import NonFiniteLossError, Updater, train_epoch
from .methods import Method, get_method
from .metrics import evaluate
from .models import build_model
from .optim import build_optimizers, check_milestones
from .precision import (
    PRECISIONS,
    Precision,
    cpu_has_amx,
    cpu_has_native_bf16,
    pick_precision,
    precision_name,
)

__all__ = [
    "TrainConfig",
    "History",
    "Run",
    "fit",
    "run",
    "seed_everything",
    "pick_device",
    "pick_precision",
    "precision_name",
    "cpu_has_amx",
    "cpu_has_native_bf16",
    "save_network",
    "load_network",
    "NonFiniteLossError",
]

Callback = Callable[[dict, "History"], None]


@dataclasses.dataclass
class TrainConfig:
    """The optimisation recipe; the defaults are DML's CIFAR-100 recipe (METHODS.md §3).

    ``milestones`` are epochs of this run, taken as given (the rate drops after each): with
    ``schedule="step"`` every one must lie below ``epochs``, else ValueError naming it. The
    default (60, 120, 180) is for the default 200 epochs; a shorter step-schedule run gives
    its own (:func:`kdlab.optim.scale_milestones` moves a recipe's).
    """

    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step" (÷10 at milestones), "cosine" or "constant"
    milestones: tuple[int, ...] = (60, 120, 180)  # epochs of this run, as given (kdlab.optim)
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"  # "auto" = cuda, else mps, else cpu
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16"
    channels_last: str | bool = "auto"  # auto: on for CUDA and CPU (measured faster on both)
    eval_batch_size: int = 1024
    fused: str | bool = "auto"  # fused SGD kernel; auto: on CUDA only (kdlab.optim)

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
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}"
            )
        if self.fused not in ("auto", True, False):
            raise ValueError(f"fused must be 'auto', True or False, got {self.fused!r}")
        self.milestones = tuple(self.milestones)
        if self.schedule == "step":
            check_milestones(self.milestones, self.epochs)
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


def make_summary(
    method: Method, history: History, config: TrainConfig, archs: Mapping, dataset: str
) -> dict:
    """Final and best test accuracy (percent) of every network and of the ensemble, with the
    method, its parameters, the dataset's name, the seed and the agreement of the last epoch."""
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
        "dataset": dataset,
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_done": last["epoch"],
        "networks": networks,
        "agreement": {k: v for k, v in last.items() if k.startswith(("agree/", "js/"))},
        "seconds": sum(history.column("seconds")),
    }


def _checkpoint_to_resume(out: Path | None, resume: bool | str) -> Path | None:
    """``out/checkpoint.pt`` when the run resumes from it, else None (see :func:`fit`)."""
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    path = out / "checkpoint.pt" if out is not None else None
    if resume == "auto":
        resume = path is not None and path.exists()
    if resume and not (path and path.exists()):
        raise FileNotFoundError(f"nothing to resume: no checkpoint.pt in {out}")
    return path if resume else None


def _place(method: Method, dataset: ImageDataset, config: TrainConfig, device: torch.device):
    """Move the method to the device (NHWC where that is faster); the train and test loaders."""
    if config.channels_last == "auto":
        # NHWC convolutions: faster on CUDA tensor cores and in oneDNN on CPUs (kdlab/bench).
        channels_last = device.type in ("cuda", "cpu")
    else:
        channels_last = bool(config.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    train = DeviceLoader.train(
        dataset, config.batch_size, device, seed=config.seed, channels_last=channels_last
    )
    test = DeviceLoader.test(dataset, config.eval_batch_size, device, channels_last=channels_last)
    method.check_batch_size(train.min_batch_size)
    return channels_last, train, test


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

    Per epoch (:func:`kdlab.epoch.train_epoch`): the method's steps under the precision's
    autocast (:mod:`kdlab.precision`), each handing its loss terms to ``update``; then the
    schedules step (:mod:`kdlab.optim`), every network is evaluated on the test split in
    float32 (:func:`kdlab.metrics.evaluate`), the record is appended to the history, and the
    callbacks are called with ``(record, history)``: with ``out``, the run folder first
    (:class:`kdlab.callbacks.RunFolder`: metrics.jsonl and an atomic checkpoint), then the
    progress bar, then ``callbacks``.

    ``resume=True`` continues from ``out/checkpoint.pt`` (:class:`kdlab.checkpoint.TrainingState`)
    to the same numbers an uninterrupted run gives; ``resume="auto"`` resumes when that
    checkpoint exists and starts afresh otherwise (what a notebook run by a grid uses). A folder
    written with other settings (method, parameters, networks, dataset, recipe) is not resumed:
    :class:`kdlab.callbacks.RunMismatchError` names the first setting that differs.
    ``stop_after`` ends the run after that many epochs (an interruption, for tests). A NaN or
    infinite loss raises :class:`NonFiniteLossError` naming the network, the term and the epoch;
    the checkpoint of the last good epoch stays.
    """
    config = config or TrainConfig()
    archs = dict(archs or {})
    out = Path(out) if out is not None else None
    resume_from = _checkpoint_to_resume(out, resume)
    device = pick_device(config.device)
    precision = Precision.pick(config.precision, device)
    channels_last, train_loader, test_loader = _place(method, dataset, config, device)
    optimizers, schedulers = build_optimizers(method, config, device)
    state = TrainingState(method, optimizers, schedulers, precision.scaler, train_loader, device)
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    hooks: list[LoopCallback] = []
    if out is not None:
        used = {"device": str(device), "precision": precision.name, "channels_last": channels_last}
        hooks.append(RunFolder(out, state, dataset, config, archs, used, resume_from is not None))
    if progress:
        hooks.append(ProgressBar(method.name, last_epoch, len(train_loader)))
    history = History(state.load(resume_from) if resume_from else [])
    history.last_epoch = last_epoch
    update = Updater(optimizers, precision.scaler)
    try:
        for hook in hooks:
            hook.start(history)
        for epoch in range(len(history) + 1, last_epoch + 1):
            record = _epoch(method, state, update, precision, test_loader, epoch, hooks, out)
            history.append(record)
            for callback in [*hooks, *callbacks]:
                callback(record, history)
    finally:
        for hook in hooks:
            hook.close()
    if channels_last:  # hand the networks back in the standard layout
        method.to(memory_format=torch.contiguous_format)
    summary = make_summary(method, history, config, archs, dataset.name) if history else {}
    result = Run(method, history, summary, out)
    for hook in hooks:
        hook.end(result)
    return result


def _epoch(method, state, update, precision, test_loader, epoch, hooks, out) -> dict[str, Any]:
    """One epoch's record: its training means, learning rate, time and test metrics."""
    started = time.perf_counter()
    lr = state.optimizers[next(iter(method.networks))].param_groups[0]["lr"]

    def on_batch() -> None:
        for hook in hooks:
            hook.batch()

    try:
        means = train_epoch(method, state.loader, update, precision, epoch, on_batch)
    except NonFiniteLossError as error:
        if out is None:
            raise
        where = out / "checkpoint.pt"
        raise NonFiniteLossError(f"{error}, the last good checkpoint is {where}") from None
    for scheduler in state.schedulers.values():
        scheduler.step()
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    record: dict[str, Any] = {"epoch": epoch, "lr": lr, **means}
    record["seconds"] = time.perf_counter() - started
    record.update(evaluate(method.evaluated(), test_loader, method.ensemble_members()))
    return record


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
