"""What the loop does around training, as callbacks: the progress bar and the run folder.

A callback is anything called with ``(record, history)`` after every epoch (a live plot, for
instance). The two here are that and a little more — :class:`LoopCallback` hooks for the
start of the run, every batch and its end — and :func:`kdlab.fit` builds them itself from its
``progress`` and ``out`` arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .checkpoint import TrainingState, save_network
from .data import ImageDataset
from .io import read_json, write_json, write_text
from .messages import say

__all__ = ["LoopCallback", "ProgressBar", "RunFolder", "RunMismatchError", "check_same_run"]

# Settings that may change between an interrupted run and its resumption: where it runs and how
# large the evaluation batches are change no trained number.
_FREE_ON_RESUME = ("device", "eval_batch_size")


class RunMismatchError(ValueError):
    """A run folder holds a run with other settings than the one asked to resume it."""


def check_same_run(out: Path, settings: dict[str, Any]) -> None:
    """Raise :class:`RunMismatchError` when ``out/config.json`` was written with other method,
    parameters, networks, dataset or training recipe than ``settings``: resuming it would mix
    two experiments under one name (or hand back the old result for new settings)."""
    path = out / "config.json"
    if not path.exists():
        return
    advice = say("kdlab cannot check that the run you resume has its settings: delete the file "
                 "to resume with the settings you give, or start afresh with {overwrite}")  # fmt: skip
    saved = read_json(path, advice)
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a kdlab run's config.json (no settings in it); {advice}")
    wanted = json.loads(json.dumps(settings))  # tuples as lists, as they were saved
    for section, value in wanted.items():
        old = saved.get(section)
        if isinstance(value, dict) and isinstance(old, dict):
            keys = [k for k in {**old, **value} if section != "train" or k not in _FREE_ON_RESUME]
            differ = [k for k in keys if old.get(k) != value.get(k)]
            if differ:
                k = differ[0]
                _mismatch(out, f"{section}.{k}", old.get(k), value.get(k))
        elif old != value:
            _mismatch(out, section, old, value)


def _mismatch(out: Path, key: str, old: Any, new: Any) -> None:
    raise RunMismatchError(
        say("{out} holds a run with {key} = {old!r}, not {new!r}: resume it with its own "
            "settings, choose another folder, or start it afresh with {overwrite}",
            out=out, key=key, old=old, new=new)
    )  # fmt: skip


class LoopCallback:
    """A callback with hooks: ``start(history)`` before the first epoch (``history`` holds the
    epochs a resumed run already has), ``batch()`` after every training step, the call
    ``(record, history)`` after every epoch, ``end(run)`` after the last epoch and ``close()``
    always, even when the run fails."""

    def start(self, history: list[dict]) -> None:
        pass

    def batch(self) -> None:
        pass

    def __call__(self, record: dict, history: list[dict]) -> None:
        pass

    def end(self, run: Any) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar(LoopCallback):
    """A tqdm bar over the run's batches, showing each network's last test accuracy; a resumed
    run's bar starts at the epochs it already has and says from which epoch it goes on."""

    def __init__(self, description: str, epochs: int, steps_per_epoch: int) -> None:
        self.description, self.epochs, self.steps = description, epochs, steps_per_epoch
        self.bar = None

    def start(self, history: list[dict]) -> None:
        done = len(history)
        if done < self.epochs:
            from tqdm.auto import tqdm

            desc = self.description + (f" (resumed at epoch {done + 1})" if done else "")
            self.bar = tqdm(total=self.epochs * self.steps, initial=done * self.steps, desc=desc,
                            unit="batch", leave=True)  # fmt: skip

    def batch(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def __call__(self, record: dict, history: list[dict]) -> None:
        if self.bar is not None:
            shown = {k[4:]: f"{v:.1f}" for k, v in record.items() if k.startswith("acc/")}
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunFolder(LoopCallback):
    """The run's folder: ``config.json`` (at once), ``checkpoint.pt`` and ``metrics.jsonl`` (one
    line per epoch, always equal to the history: a resumed run drops unfinished epochs) after
    every epoch, and at the end ``networks/<name>.pt`` for every network with an architecture
    name, then ``summary.json``.

    Cut at any point, the folder holds the old state or the new one, never half of one that a
    later load takes for whole: every file is written atomically (:mod:`kdlab.io`); after an
    epoch the checkpoint is written first (``metrics.jsonl`` is rewritten from its history on
    resume); ``summary.json``, which marks a run finished, comes last; and a folder that held
    another run was cleared by :func:`kdlab.runfolder.claim` (``overwrite``) before this one
    began, its ``summary.json`` first (:func:`kdlab.runfolder.clear`).
    """

    def __init__(
        self,
        out: Path,
        state: TrainingState,
        dataset: ImageDataset,
        config: Any,
        archs: dict[str, str],
        used: dict[str, Any],
        resuming: bool = False,
    ) -> None:
        """``config``: the run's :class:`~kdlab.TrainConfig`; ``archs``: the architecture of each
        network by name; ``used``: the device, precision and layout the loop chose;
        ``resuming``: the run continues the checkpoint in ``out``, which must then have been
        written with the same settings (:func:`check_same_run`)."""
        self.out, self.state, self.dataset, self.archs = out, state, dataset, archs
        self.checkpoint = out / "checkpoint.pt"
        out.mkdir(parents=True, exist_ok=True)
        method = state.method
        settings = {
            "method": method.name,
            "params": dataclasses.asdict(method.params),
            "archs": archs,
            "dataset": dataset.name,
            "train": dataclasses.asdict(config),
        }
        if resuming:
            check_same_run(out, settings)
        write_json(
            out / "config.json", {**settings, "train_size": len(dataset.train_labels), **used}
        )

    def start(self, history: list[dict]) -> None:
        write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    def __call__(self, record: dict, history: list[dict]) -> None:
        # The checkpoint first: an interruption between the two leaves metrics.jsonl an epoch
        # short, which the resumed run rewrites from the checkpoint's history (start); and
        # metrics.jsonl is written whole (atomically), never half a line.
        self.state.save(self.checkpoint, history)
        self.start(history)

    def end(self, run: Any) -> None:
        if not run.history:
            return
        for name, net in run.method.evaluated().items():
            if name in self.archs:
                path = self.out / "networks" / f"{name}.pt"
                save_network(path, net, self.archs[name], self.dataset)
        write_json(self.out / "summary.json", run.summary)
