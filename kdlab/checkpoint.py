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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DeviceLoader, ImageDataset
from .io import torch_save
from .methods import Method
from .models import build_model

__all__ = ["TrainingState", "save_network", "load_network"]


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
        """Restore the state saved at ``path``; returns the history (one record per epoch)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.method.load_state_dict(state["method"])
        for part in ("optimizers", "schedulers"):
            missing = sorted(set(getattr(self, part)) - set(state[part]))
            if missing:
                raise ValueError(
                    f"{path} has no {part[:-1]} state for {missing[0]!r}: it was written by "
                    "another method or an older kdlab; start afresh (resume=False)"
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
    """Rebuild a network saved by :func:`save_network` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no network checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = build_model(state["arch"], state["num_classes"], state["in_channels"])
    network.load_state_dict(state["state_dict"])
    network.arch = state["arch"]
    return network
