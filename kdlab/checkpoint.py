"""Checkpoints: what a run saves every epoch to continue bit-exactly, and single networks.

:class:`TrainingState` gathers everything a step changes — the method's modules, the
optimizers, their schedules, the gradient scaler, the loader's shuffling state, the RNG states —
so that a run resumed from ``checkpoint.pt`` gives the numbers of an uninterrupted one.
:func:`save_network` / :func:`load_network` save one trained network with what it takes to
rebuild it. Every file is written atomically (:mod:`kdlab.io`) and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DeviceLoader, ImageDataset
from .io import torch_save
from .messages import option, say
from .methods import Method
from .models import available_models, build_model

__all__ = [
    "TrainingState",
    "save_network",
    "load_network",
    "read_checkpoint",
    "DamagedCheckpointError",
]

_TRAINING_KEYS = ("method", "optimizers", "schedulers", "scaler", "loader", "rng_cpu", "history")
_NETWORK_KEYS = ("arch", "num_classes", "in_channels", "state_dict")


class DamagedCheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that is not the kind of checkpoint asked for."""


def read_checkpoint(
    path: Path, device: Any, keys: tuple[str, ...], kind: str, advice: str
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, checked to hold ``keys``; otherwise a one-line
    :class:`DamagedCheckpointError`: "``path`` is not a readable ``kind`` (why); ``advice``"."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # EOFError (empty), RuntimeError (truncated zip), pickle errors
        if path.stat().st_size == 0:
            why = "an empty file"
        elif not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            why = "truncated, or not written by torch.save"
        else:
            first = (str(error).strip().splitlines() or [""])[0]
            why = f"{type(error).__name__}: {first[:120]}"
        raise DamagedCheckpointError(f"{path} is not a readable {kind} ({why}); {advice}") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise DamagedCheckpointError(f"{path} is not a {kind} (no {missing[0]!r}); {advice}")
    return state


@dataclasses.dataclass
class TrainingState:
    """Everything of a run that a resumed run must restore, by reference (nothing is copied)."""

    method: Method
    optimizers: Mapping[str, torch.optim.Optimizer]
    schedulers: Mapping[str, Any]
    scaler: torch.amp.GradScaler
    loader: DeviceLoader
    device: torch.device

    def save(self, path: Path, history: list[dict]) -> None:
        """Write ``checkpoint.pt`` atomically: the state after the last epoch of ``history``."""
        state = {
            "method": self.method.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "history": json.dumps(list(history)),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        torch_save(path, state)

    def load(self, path: Path) -> list[dict]:
        """Restore the state saved at ``path``; returns the history (one record per epoch).
        A file that cannot be read (empty, truncated, not a training checkpoint) is a one-line
        :class:`DamagedCheckpointError`."""
        afresh = say("start the run afresh with {overwrite}")
        state = read_checkpoint(path, self.device, _TRAINING_KEYS, "training checkpoint", afresh)
        self.method.load_state_dict(state["method"])
        for part in ("optimizers", "schedulers"):
            missing = sorted(set(getattr(self, part)) - set(state[part]))
            if missing:
                raise ValueError(
                    f"{path} has no {part[:-1]} state for {missing[0]!r}: it was written by "
                    f"another method or an older kdlab; {afresh}"
                )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        return json.loads(state["history"])


def save_network(path: str | Path, network: nn.Module, arch: str, dataset: ImageDataset) -> None:
    """Save one network with what :func:`load_network` needs to rebuild it."""
    state = {
        "arch": arch,
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
        "dataset": dataset.name,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    torch_save(path, state)


def load_network(path: str | Path) -> nn.Module:
    """Rebuild a network saved by :func:`save_network` (``torch.load(weights_only=True)``).

    FileNotFoundError when there is no file; :class:`DamagedCheckpointError` (one line) when
    the file is not such a network checkpoint (another kind of file, a training checkpoint,
    a damaged one)."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if str(path) in available_models():  # an architecture given where a file was expected
            arch = str(path)
            hint = f"; {arch!r} is an architecture: {option('teacher', arch)} trains one first"
        raise FileNotFoundError(f"no network checkpoint at {path}{hint}")
    advice = "give a network saved by kdlab: networks/<name>.pt in a run folder"
    state = read_checkpoint(path, "cpu", _NETWORK_KEYS, "kdlab network checkpoint", advice)
    network = build_model(state["arch"], state["num_classes"], state["in_channels"])
    network.load_state_dict(state["state_dict"])
    network.arch = state["arch"]
    return network
