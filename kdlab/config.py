"""The optimisation recipe of a run: :class:`TrainConfig`.

Every field is a plain value a papermill cell, a grid or ``--set`` can give; validation happens
here, before anything trains.
"""

from __future__ import annotations

import dataclasses

from .optim import check_milestones
from .precision import PRECISIONS

__all__ = ["TrainConfig", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam")


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
    optimizer: str = "sgd"  # every network's: "sgd" (momentum, Nesterov) or "adam" (betas)
    momentum: float = 0.9  # SGD's
    nesterov: bool = True  # SGD's
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam's (β1, β2); DML's re-ID recipe: (0.5, 0.999)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0  # ε of every method's cross-entropy with the label
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}"
            )
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
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
