"""Optimizers and learning-rate schedules of a run (METHODS.md §3).

- Every network in ``method.networks`` gets the recipe's optimizer at ``config.lr``: SGD with
  Nesterov momentum and weight decay (the default), or Adam with ``config.betas`` and weight
  decay (L2 added to the gradient, as in DML's re-identification code).
- The method's auxiliary modules (discriminators, adapters) keep the optimizers the method
  builds (:meth:`~kdlab.methods.Method.auxiliary_optimizers`, e.g. Adam at ``disc_lr``).
- *Every* optimizer, auxiliary ones included, follows the same schedule shape: each learning
  rate is multiplied by the same factor in every epoch (÷10 at the milestones, or the cosine
  curve), starting from its own initial value. So a discriminator's rate falls with the
  networks' rather than staying at its initial value while they anneal.

SGD's kernel: ``fused`` (one kernel for the whole step; with a gradient scaler also no host
synchronisation) on CUDA, ``foreach`` elsewhere; ``TrainConfig(fused=True)`` forces the fused
kernel on the CPU too, which is how the tests run CUDA's path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .methods import Method
    from .train import TrainConfig

__all__ = ["build_optimizers", "make_optimizer", "make_scheduler", "use_fused"]

Optimizers = dict[str, torch.optim.Optimizer]
Schedulers = dict[str, torch.optim.lr_scheduler.LRScheduler]


def use_fused(fused: str | bool, device: torch.device) -> bool:
    """Whether SGD runs fused: ``"auto"`` = on CUDA only; True or False force it."""
    if fused == "auto":
        return device.type == "cuda"
    if not isinstance(fused, bool):
        raise ValueError(f"fused must be 'auto', True or False, got {fused!r}")
    return fused


def make_optimizer(
    module: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The recipe's optimizer for one network: SGD (momentum, Nesterov) or Adam (``betas``),
    with its weight decay and learning rate, on the fused kernel where :func:`use_fused` says."""
    kernel = {"fused": True} if use_fused(config.fused, device) else {"foreach": True}
    if config.optimizer == "adam":
        return torch.optim.Adam(
            module.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
            **kernel,
        )
    return torch.optim.SGD(
        module.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
        **kernel,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """The schedule, stepped once per epoch, relative to the optimizer's initial rate:
    ``step`` (× ``gamma`` at the milestones, given for 200 epochs and scaled to
    ``config.epochs``), ``cosine`` (to 0 at the last epoch) or ``constant``."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        scale = config.epochs / 200
        milestones = sorted({max(1, round(m * scale)) for m in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def build_optimizers(
    method: Method, config: TrainConfig, device: torch.device
) -> tuple[Optimizers, Schedulers]:
    """One optimizer per network and the method's auxiliary optimizers, by module name, and one
    schedule for each of them (the same shape for all)."""
    optimizers: Optimizers = {
        name: make_optimizer(net, config, device) for name, net in method.networks.items()
    }
    auxiliary = method.auxiliary_optimizers()
    taken = sorted(set(auxiliary) & set(optimizers))
    if taken:
        raise ValueError(f"auxiliary optimizer {taken[0]!r} has a network's name")
    optimizers.update(auxiliary)
    schedulers = {name: make_scheduler(opt, config) for name, opt in optimizers.items()}
    return optimizers, schedulers
