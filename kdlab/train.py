"""The one training loop, for any method and any number of networks.

:func:`fit` trains a :class:`~kdlab.methods.Method` on a dataset, in named parts a reader can
take one at a time:

- :mod:`kdlab.precision`: float32, bf16 or fp16 (with a gradient scaler), picked per device;
- :mod:`kdlab.optim`: SGD per network (Nesterov momentum, weight decay), the method's own
  optimizers for its auxiliary modules, and one learning-rate schedule shape for all of them;
- :mod:`kdlab.epoch`: one epoch — the method's steps and the ``update`` they call;
- :mod:`kdlab.tasks`: the data set's task builds the loaders and measures the test metrics
  after every epoch, in float32;
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
from .config import TrainConfig
from .cost import method_cost
from .data import load_dataset
from .epoch import NonFiniteLossError, Updater, train_epoch
from .messages import say
from .methods import METHODS, Method, get_method
from .models import available_models, build_model, model_kind
from .optim import build_optimizers
from .precision import (
    Precision,
    cpu_has_amx,
    cpu_has_native_bf16,
    pick_precision,
    precision_name,
)
from .runfolder import claim

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


class History(list):
    """Per-epoch records (dicts): ``epoch``, ``lr``, ``seconds``, ``loss/<net>/<term>``, the
    task's test metrics (classification: ``acc/<net>``, ``acc/ensemble``, ``agree/<a>-<b>``,
    ``js/<a>-<b>``) and method metrics.

    ``metric``: the task's headline metric (``acc``, ``map``…), which :meth:`networks`,
    :meth:`final` and :meth:`best` read. ``last_epoch``: the epoch the running :func:`fit` call
    ends at (``None`` outside one), so a callback can tell the final record from the others.
    """

    metric: str = "acc"
    last_epoch: int | None = None

    def networks(self) -> list[str]:
        """Every name with a headline metric (networks, then ``ensemble``)."""
        prefix = f"{self.metric}/"
        return [k[len(prefix) :] for k in self[0] if k.startswith(prefix)] if self else []

    def final(self, name: str, metric: str | None = None) -> float:
        return self[-1][f"{metric or self.metric}/{name}"]

    def best(self, name: str) -> tuple[float, int]:
        """Best headline metric of ``name`` and the epoch it was reached (the first, on ties)."""
        key = f"{self.metric}/{name}"
        row = max(self, key=lambda r: (r[key], -r["epoch"]))
        return row[key], row["epoch"]

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
    """The torch device for ``device``: ``"auto"`` (CUDA, else MPS, else the CPU), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"mps"``. A one-line ValueError for any other name and for a
    device this machine does not have, raised before anything is built."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    choose = say("choose {device=auto}, cpu, cuda, cuda:N or mps")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; {choose}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(say("device {name!r}: torch finds no CUDA GPU on this machine; use "
                                 "{device=auto} or {device=cpu}", name=device))  # fmt: skip
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(say("device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 "
                                 "to cuda:{last}; use one of them or {device=auto}",
                                 name=device, count=count, last=count - 1))  # fmt: skip
    elif chosen.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(say("device {name!r}: MPS (Apple's GPU) is not available here; use "
                                 "{device=auto} or {device=cpu}", name=device))  # fmt: skip
    elif chosen.type != "cpu":
        raise ValueError(f"device {device!r} is not one kdlab trains on; {choose}")
    return chosen


def make_summary(
    method: Method, history: History, config: TrainConfig, archs: Mapping, dataset: Any
) -> dict:
    """Final and best headline metric (``final_<metric>``, ``best_<metric>`` and its epoch; the
    last value of every other per-network metric of the task) of every network and of the
    ensemble, with the method, its parameters, the dataset's name, the seed, the agreement of
    the last epoch and, where batches are image tensors, the compute (``cost``: parameters and
    MACs per image, :func:`kdlab.cost.method_cost`)."""
    task, last = dataset.task, history[-1]
    networks = {}
    for name in history.networks():
        best, best_epoch = history.best(name)
        entry = {f"final_{task.metric}": history.final(name)}
        entry.update({f"best_{task.metric}": best, "best_epoch": best_epoch})
        for metric in task.metrics[1:]:
            if f"{metric}/{name}" in last:
                entry[f"final_{metric}"] = last[f"{metric}/{name}"]
        if name in archs:
            entry = {"arch": archs[name], **entry}
        networks[name] = entry
    return {
        "method": method.name,
        "params": dataclasses.asdict(method.params),
        "dataset": dataset.name,
        "task": task.name,
        "metric": task.metric,
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_done": last["epoch"],
        "networks": networks,
        "agreement": {k: v for k, v in last.items() if k.startswith(("agree/", "js/"))},
        "seconds": sum(history.column("seconds")),
        "cost": _cost(method, dataset),
    }


def _cost(method: Method, dataset: Any) -> dict | None:
    """The method's compute on one of the data set's images; None where the task's batches are
    not image tensors (``task.channels_last`` says they are) or the image size is unknown."""
    shape = getattr(dataset, "image_size", None)
    if not dataset.task.channels_last or shape is None:
        return None
    return method_cost(method, (dataset.in_channels, *shape))


def _claim_folder(out: Path | None, resume: bool | str, overwrite: bool) -> Path | None:
    """``out/checkpoint.pt`` when the run resumes from it, else None; refuses or clears the
    folder as :func:`kdlab.runfolder.claim` decides, and says what a resumed run does."""
    if out is None:
        if resume is True or overwrite:
            raise ValueError(say("{resume} and {overwrite} need a run folder: give {out=PATH}"))
        return None
    decision = claim(out, resume, overwrite)
    if decision == "restart" and (out / "config.json").exists():  # not a kd run's teacher/ alone
        print(f"{out}: no finished epoch to resume; training from epoch 1", flush=True)
    return out / "checkpoint.pt" if decision == "resume" else None


def _say_resumed(out: Path, done: int, last_epoch: int, epochs: int) -> None:
    if done >= last_epoch:
        print(f"{out}: finished already ({done} of {epochs} epochs), nothing to train", flush=True)
    else:
        print(f"{out}: resumed from its checkpoint after epoch {done} of {epochs}; training "
              f"epochs {done + 1} to {last_epoch}", flush=True)  # fmt: skip


def check_task(method: Method, dataset: Any) -> None:
    """ValueError unless ``method`` trains the task of ``dataset`` with networks of its kind."""
    task = dataset.task
    if task.name not in method.tasks:
        able = sorted(n for n, m in METHODS.items() if task.name in m.tasks)
        raise ValueError(
            f"method {method.name!r} does not train the {task.name} task of dataset "
            f"{dataset.name!r}; methods that do: {', '.join(able) or 'none'}"
        )
    views = getattr(method, "views", 1)
    if views > 1 and not task.multi_view:
        raise ValueError(
            f"method {method.name!r} trains on {views} augmented views of each image; the "
            f"{task.name} task of dataset {dataset.name!r} gives one"
        )
    for name, net in method.evaluated().items():
        kind = getattr(net, "kind", "classifier")
        if kind != task.model_kind:
            arch = getattr(net, "arch", type(net).__name__)
            raise ValueError(
                f"network {name} ({arch}) is a {kind}; the {task.name} task of dataset "
                f"{dataset.name!r} trains a {task.model_kind}"
            )


def _place(method: Method, dataset: Any, config: TrainConfig, device: torch.device):
    """Move the method to the device (NHWC where that is faster); the task's train and test
    loaders."""
    task = dataset.task
    if config.channels_last == "auto":
        # NHWC convolutions: faster on CUDA tensor cores and in oneDNN on CPUs (kdlab/bench).
        channels_last = task.channels_last and device.type in ("cuda", "cpu")
    else:
        channels_last = bool(config.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    # Views only when the method asks for several: a task without them keeps its signature.
    views = {"views": method.views} if method.views > 1 else {}
    train, test = task.loaders(dataset, config, device, channels_last=channels_last, **views)
    method.check_batch_size(train.min_batch_size)
    return channels_last, train, test


def fit(
    method: Method,
    dataset: Any,
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    archs: Mapping[str, str] | None = None,
    stop_after: int | None = None,
) -> Run:
    """Train ``method`` on ``dataset`` (any data set of :mod:`kdlab.data`) with ``config``.

    The data set's task (:mod:`kdlab.tasks`) builds the loaders and evaluates. Per epoch (:func:`kdlab.epoch.train_epoch`): the method's steps under the precision's
    autocast (:mod:`kdlab.precision`), each handing its loss terms to ``update``; then the
    schedules step (:mod:`kdlab.optim`), every network is evaluated on the test split in
    float32 (``dataset.task.evaluate``), the record is appended to the history, and the
    callbacks are called with ``(record, history)``: with ``out``, the run folder first
    (:class:`kdlab.callbacks.RunFolder`: metrics.jsonl and an atomic checkpoint), then the
    progress bar, then ``callbacks``.

    A folder that holds a run is never overwritten silently (:func:`kdlab.runfolder.claim`):
    ``resume=True`` continues it from ``out/checkpoint.pt``
    (:class:`kdlab.checkpoint.TrainingState`) to the same numbers an uninterrupted run gives,
    and says from which epoch; ``resume="auto"`` resumes when that checkpoint exists and starts
    afresh otherwise (how notebooks and grid cells continue their own runs); ``overwrite=True``
    deletes what the folder holds and starts afresh; with neither, a folder that holds a run is
    refused (:class:`kdlab.runfolder.RunExistsError`). A folder written with other settings
    (method, parameters, networks, dataset, recipe) is not resumed:
    :class:`kdlab.callbacks.RunMismatchError` names the first setting that differs.
    ``stop_after`` ends the run after that many epochs (an interruption, for tests). A NaN or
    infinite loss raises :class:`NonFiniteLossError` naming the network, the term and the epoch;
    the checkpoint of the last good epoch stays.
    """
    config = config or TrainConfig()
    archs = dict(archs or {})
    check_task(method, dataset)
    method.label_smoothing = config.label_smoothing  # every method's CE (Method.ce)
    out = Path(out) if out is not None else None
    device = pick_device(config.device)
    precision = Precision.pick(config.precision, device)
    channels_last, train_loader, test = _place(method, dataset, config, device)
    optimizers, schedulers = build_optimizers(method, config, device)
    state = TrainingState(method, optimizers, schedulers, precision.scaler, train_loader, device)
    resume_from = _claim_folder(out, resume, overwrite)  # after every check that can fail
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    hooks: list[LoopCallback] = []
    if out is not None:
        used = {"device": str(device), "precision": precision.name, "channels_last": channels_last}
        hooks.append(RunFolder(out, state, dataset, config, archs, used, resume_from is not None))
    if progress:
        hooks.append(ProgressBar(method.name, last_epoch, len(train_loader)))
    history = History(state.load(resume_from) if resume_from else [])
    if resume_from:
        _say_resumed(out, len(history), last_epoch, config.epochs)
    history.metric, history.last_epoch = dataset.task.metric, last_epoch
    update = Updater(optimizers, precision.scaler)
    try:
        for hook in hooks:
            hook.start(history)
        for epoch in range(len(history) + 1, last_epoch + 1):
            record = _epoch(method, state, update, precision, dataset.task, test, epoch, hooks, out)
            history.append(record)
            for callback in [*hooks, *callbacks]:
                callback(record, history)
    finally:
        for hook in hooks:
            hook.close()
    if channels_last:  # hand the networks back in the standard layout
        method.to(memory_format=torch.contiguous_format)
    summary = make_summary(method, history, config, archs, dataset) if history else {}
    result = Run(method, history, summary, out)
    for hook in hooks:
        hook.end(result)
    return result


def _epoch(method, state, update, precision, task, test, epoch, hooks, out) -> dict[str, Any]:
    """One epoch's record: its training means, learning rate, time and the task's test
    metrics."""
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
    record.update(task.evaluate(method.evaluated(), test, method.ensemble_members()))
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
    dataset: Any = "digits",
    *,
    teacher: nn.Module | str | None = None,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    stop_after: int | None = None,
    **params: Any,
) -> Run:
    """Seed, build the networks and the method, and :func:`fit` them.

    ``models``: architecture names (one per trained network, or a comma-separated string).
    ``teacher``: for methods with a teacher, an architecture name (built and trained with the
    others, for online methods), a path to a network checkpoint (a :class:`~pathlib.Path`, or a
    string with a suffix or a folder in it), or a network. ``out``, ``resume`` and
    ``overwrite``: the run folder, as in :func:`fit`. ``params`` are
    the method's own knobs (e.g. ``alpha=0.9, temperature=4``). Seeding happens before the
    networks are built, so the same seed gives the same run.
    """
    config = config or TrainConfig()
    method_cls = get_method(method)
    dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    if not names or not all(names):
        raise ValueError("give at least one model name")
    kind = dataset.task.model_kind
    for arch in names + (
        [teacher] if isinstance(teacher, str) and not is_checkpoint_path(teacher) else []
    ):
        if model_kind(arch) != kind:
            raise ValueError(
                f"model {arch!r} is a {model_kind(arch)}; dataset {dataset.name!r} ({dataset.task.name}) "
                f"trains a {kind}: {', '.join(available_models(kind))}"
            )
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
        if is_checkpoint_path(teacher):
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
        overwrite=overwrite,
        callbacks=callbacks,
        progress=progress,
        archs=archs,
        stop_after=stop_after,
    )


def is_checkpoint_path(teacher: Any) -> bool:
    """Whether ``teacher`` names a file rather than an architecture: a :class:`~pathlib.Path`,
    or a string with a suffix (``.pt``, ``.json``…) or a folder in it (architecture names have
    neither)."""
    if isinstance(teacher, Path):
        return True
    return isinstance(teacher, str) and (
        "/" in teacher or "\\" in teacher or bool(Path(teacher).suffix)
    )
