"""PCL: peer collaborative learning for online knowledge distillation (Wu & Gong, AAAI 2021;
METHODS.md §11)."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..losses import kd_loss
from ..models.branches import BranchView, branch_names, global_pool, the_branched_network
from .base import (
    Edge,
    Method,
    as_views,
    check_temperature,
    check_weight,
    rampup_weight,
    register,
)

__all__ = ["PeerCollaboration", "PeerEnsembleTeacher", "ema_decay"]


def ema_decay(updates: int, decay: float) -> float:
    """The temporal mean's weight on its past at update ``updates`` (counted from 0):
    ``min(1 − 1/(updates + 1), decay)`` — a true mean of the weights seen so far until the
    exponential average takes over (the mean-teacher rule of the PCL reproduction's
    ``src/utils/ema.py``); the first update copies the network."""
    return min(1.0 - 1.0 / (updates + 1), decay)


class PeerEnsembleTeacher(nn.Module):
    """The peer ensemble teacher as a one-output classifier, for evaluation: the head on the
    concatenated pooled features of the m branches."""

    kind = "classifier"

    def __init__(self, net: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.net, self.head = net, head
        self.arch = f"{net.arch}[peer ensemble]"
        self.train(net.training)

    def forward(self, x) -> torch.Tensor:
        _, _, maps = self.net(x, return_features=True)
        return self.head(torch.cat([global_pool(f) for f in maps], dim=1))

    def member_parameters(self) -> list[nn.Parameter]:
        return [*self.net.parameters(), *self.head.parameters()]


@register
class PeerCollaboration(Method):
    """m peers (branches of one network over a shared trunk), a peer ensemble teacher and a
    temporal mean of every peer:

    ``L = CE(y, z_en) + Σ_i [CE(y, z_i) + w(e) T² KL(sg p_en^T ‖ p_i^T)
    + w(e) · mean_{l≠i} T² KL(sg p_mean,l^T ‖ p_i^T)]``

    - ``z_en``: the **peer ensemble teacher**, a linear classifier on the concatenated pooled
      features of the m branches (``networks["head"]``, a trained network: the recipe's
      optimizer; its gradient, and ``CE(y, z_en)``'s into every branch, come through the
      network's terms, so the step names it in ``also_step``).
    - ``z_mean,l``: the **temporal mean** of the whole network (trunk and branches), branch l's
      output. It is an exponential moving average of the weights, updated *after* every
      optimizer step (:func:`ema_decay`, ``ema_decay`` 0.999) and never by gradient (no
      optimizer, ``requires_grad`` off). Like the mean-teacher code, its BatchNorm statistics
      are its own: it is forwarded in training mode for the targets. Peer i learns from the
      *other* peers' temporal means.
    - With ``augment_per_peer`` (the default) every peer — and its temporal mean — sees its
      own random crop and flip of each image (:attr:`Method.views` = m): the trunk runs once
      per view.

    Defaults: T = 3 (the reproduction's ``KDLoss``), three branches, EMA decay 0.999 with its
    warm-up (``src/utils/ema.py``), per-peer augmentation (``src/datasets/cifar.py``) — from
    the one public code, a reproduction (github.com/shaoeric/Peer-Collaborative-Learning-for-
    Online-Knowledge-Distillation, ``src/losses/loss_wrapper.py``, ``src/controller.py``).
    Its ramp-up, ``lambd · exp(−5 (1 − epoch / lambd)²)`` with ``lambd = 1``, is 1 at epoch 1
    and about 0 from epoch 2 to 80: it switches the distillation off for 80 epochs. kdlab uses
    the family's sigmoid ramp over ``rampup`` = 80 epochs instead
    (:func:`~kdlab.methods.base.rampup_weight`).

    Evaluated, as the paper does, on the temporal means (``mean1``…, whose mean softmax is the
    reported ``ensemble``, their agreement and JS measured pairwise), and also on the raw peers
    (``branch1``…) and the peer ensemble teacher (``teacher``). Logged terms: ``ce`` (the
    peers'), ``ce_teacher``, ``kd_teacher``, ``kd_mean`` (weighted).
    """

    name = "pcl"
    min_networks = 1
    trains_branches = True

    @dataclasses.dataclass
    class Params:
        temperature: float = 3.0  # T of every KL term
        rampup: float = 80.0  # epochs of the sigmoid ramp-up of w(e); 0: w = 1 throughout
        ema_decay: float = 0.999  # the temporal means' decay (after the warm-up)
        augment_per_peer: bool = True  # every peer sees its own augmentation

    def __init__(self, networks, **params) -> None:
        super().__init__(networks, **params)
        self.net_name, net = the_branched_network(self.name, self.networks)
        self.networks["head"] = nn.Linear(net.num_branches * net.feature_dim, net.num_classes)
        mean = copy.deepcopy(net)
        mean.requires_grad_(False)
        self.means = nn.ModuleDict({self.net_name: mean})
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.views = net.num_branches if self.params.augment_per_peer else 1

    def validate(self) -> None:
        p = self.params
        check_temperature("temperature", p.temperature)
        check_weight("rampup", p.rampup)
        if not 0 <= p.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {p.ema_decay}")

    @property
    def net(self) -> nn.Module:
        return self.networks[self.net_name]

    @property
    def mean(self) -> nn.Module:
        return self.means[self.net_name]

    def peers(self, prefix: str = "branch") -> list[str]:
        return branch_names(self.net.num_branches, prefix)

    def evaluated(self) -> dict[str, nn.Module]:
        means = {n: BranchView(self.mean, i) for i, n in enumerate(self.peers("mean"))}
        raw = {n: BranchView(self.net, i) for i, n in enumerate(self.peers())}
        return {**means, **raw, "teacher": PeerEnsembleTeacher(self.net, self.networks["head"])}

    def ensemble_members(self) -> list[str]:
        return self.peers("mean")

    def teaching_edges(self) -> list[Edge]:
        peers, means = self.peers(), self.peers("mean")
        edges = [Edge(p, "teacher", "builds") for p in peers]
        edges += [Edge("teacher", p, "teaches") for p in peers]
        edges += [Edge(p, m, "ema") for p, m in zip(peers, means)]
        pairs = [(l, i) for l in range(len(peers)) for i in range(len(peers)) if i != l]
        return edges + [Edge(means[l], peers[i], "teaches") for l, i in pairs]

    def _forward(self, x):
        """The peers' logits (B × m × C), the teacher's and the temporal means' (detached)."""
        inputs = as_views(x, self.views)
        inputs = tuple(inputs) if self.views > 1 else inputs[0]
        logits, _, maps = self.net(inputs, return_features=True)
        z_en = self.networks["head"](torch.cat([global_pool(f) for f in maps], dim=1))
        with torch.no_grad():
            z_mean = self.mean(inputs)
        return logits, z_en, z_mean

    def cost_forward(self, x: torch.Tensor) -> None:
        self._forward(x)

    @torch.no_grad()
    def update_means(self) -> None:
        """One step of the temporal mean towards the network's current weights:
        ``mean ← α·mean + (1 − α)·weights``, α = :func:`ema_decay` (computed on the device from
        the update counter, a buffer that checkpoints keep, so the step needs no host sync)."""
        updates = self.ema_updates.float()  # exact to 2^24 updates; MPS has no float64
        alpha = (1.0 - 1.0 / (updates + 1.0)).clamp(max=self.params.ema_decay)
        for mean_p, p in zip(self.mean.parameters(), self.net.parameters(), strict=True):
            mean_p.mul_(alpha).add_(p.detach() * (1.0 - alpha))
        self.ema_updates += 1

    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        logits, z_en, z_mean = self._forward(x)
        m, w, t = logits.shape[1], rampup_weight(epoch, p.rampup), p.temperature
        peers = logits.unbind(1)
        from_means = [
            sum(kd_loss(z, z_mean[:, l], t) for l in range(m) if l != i) / (m - 1)
            for i, z in enumerate(peers)
        ]
        terms = {
            "ce": sum(self.ce(z, y) for z in peers),
            "ce_teacher": self.ce(z_en, y),
            "kd_teacher": w * sum(kd_loss(z, z_en, t) for z in peers),
            "kd_mean": w * sum(from_means),
        }
        update({self.net_name: terms}, also_step=("head",))
        self.update_means()  # after the step: the temporal means follow the updated weights
        return {}
