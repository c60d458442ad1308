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
- The step schedule's milestones are epochs of the run as given: ``milestones=(150, 180, 210)``
  with 240 epochs (mdistiller's CIFAR recipe) drops the rate after epochs 150, 180 and 210.
  Nothing rescales them; a milestone at or past the last epoch is an error
  (:func:`check_milestones`). What shrinks a recipe to fewer epochs (a profile, a grid's
  ``epochs``, a teacher trained for ``--teacher-epochs``) scales its milestones itself, with
  :func:`scale_milestones`.

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

__all__ = [
    "build_optimizers",
    "make_optimizer",
    "make_scheduler",
    "use_fused",
    "check_milestones",
    "scale_milestones",
]

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


def check_milestones(milestones: tuple[int, ...], epochs: int) -> None:
    """ValueError unless ``milestones`` are increasing whole epochs from 1 to ``epochs − 1``.

    A milestone m drops the rate after epoch m, so epoch m + 1 is the first at the lower rate:
    one at or past the last epoch would never act, which means the recipe was written for a
    longer run (the error names it).
    """
    for m in milestones:
        if isinstance(m, bool) or not float(m).is_integer():
            raise ValueError(f"milestone {m!r} is not a whole epoch")
        if m < 1:
            raise ValueError(f"milestone {m} is before the first epoch: milestones count from 1")
        if m >= epochs:
            raise ValueError(
                f"milestone {m} is at or past the last epoch ({epochs}): milestones are epochs of "
                f"this run, so give ones below {epochs} (the default (60, 120, 180) is DML's for "
                "200 epochs; kdlab.optim.scale_milestones scales a recipe) or another schedule"
            )
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"milestones must increase, got {tuple(milestones)}")


def scale_milestones(milestones: tuple[int, ...], epochs: int, new_epochs: int) -> tuple[int, ...]:
    """A recipe's ``milestones`` for ``epochs`` epochs, moved to a run of ``new_epochs``.

    Each becomes ``max(1, round(m · new_epochs / epochs))``; equal ones merge, and those at or
    past the new last epoch are dropped (they would act after the run). The same numbers come
    back when ``new_epochs == epochs``, unchecked. E.g. DML's ``(60, 120, 180)`` of 200 epochs is
    ``(9, 18, 27)`` for 30 epochs and ``(1,)`` for 2.
    """
    if new_epochs == epochs:
        return tuple(milestones)
    moved = {max(1, round(m * new_epochs / epochs)) for m in milestones}
    return tuple(sorted(m for m in moved if m < new_epochs))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """The schedule, stepped once per epoch, relative to the optimizer's initial rate:
    ``step`` (× ``gamma`` after each of ``config.milestones``, epochs of this run as given),
    ``cosine`` (to 0 at the last epoch) or ``constant``."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        check_milestones(config.milestones, config.epochs)
        milestones = list(config.milestones)
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
