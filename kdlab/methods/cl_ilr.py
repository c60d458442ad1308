"""CL-ILR: collaborative learning with intermediate-level representation sharing (Song & Chai,
NeurIPS 2018; METHODS.md §11)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..losses import kd_loss
from ..models.branches import BranchView, branch_names, the_branched_network
from .base import Edge, Method, check_temperature, check_weight, rampup_weight, register

__all__ = ["CollaborativeLearning", "others_mean"]


def others_mean(logits: torch.Tensor) -> torch.Tensor:
    """``mean_{j≠i} z_j`` for every branch i: B × m × C branch logits → B × m × C targets.

    Branch i's target leaves branch i out (its own logits never teach it)."""
    m = logits.shape[1]
    return (logits.sum(1, keepdim=True) - logits) / (m - 1)


@register
class CollaborativeLearning(Method):
    """Branches over a shared trunk, each learning from the mean of the *other* branches:

    ``L = Σ_i [CE(y, z_i) + λ · w(e) · T² · KL(sg softmax(mean_{j≠i} z_j / T) ‖ p_i^T)]``

    The target of branch i is the mean of the other branches' *logits*, softened by T and
    detached; batchmean KL with the T² factor; ``w(e)`` the sigmoid ramp-up over ``rampup``
    epochs (:func:`~kdlab.methods.base.rampup_weight`). With ``ilr`` (the default) the network's
    ``trunk_grad_scale`` is set to 1/m: the gradient reaching the shared trunk is divided by the
    number of branches (backpropagation rescaling, the paper's §3.2), so the trunk takes the
    mean of the branches' gradients instead of their sum.

    No code by the authors was found. The paper writes each head's loss as
    ``β·CE + (1 − β)·soft``; that is this λ = (1 − β)/β up to a factor on the whole loss (a
    TensorFlow reimplementation, github.com/qq456cvb/Collaborative-Learning ``main.py``, uses
    β = 0.5, i.e. λ = 1, with T = 2 and no T²). kdlab's defaults follow METHODS.md §11: T = 3
    with T², λ = 1, and the family's 80-epoch ramp-up (set ``rampup=0`` for none).

    Logged terms: ``ce`` = Σ_i CE, ``kd`` = the weighted KL sum. Evaluated: every branch
    (``branch1``…); the reported ``ensemble`` is their mean softmax.
    """

    name = "cl_ilr"
    min_networks = 1
    trains_branches = True

    @dataclasses.dataclass
    class Params:
        lam: float = 1.0  # λ, the weight of the soft term
        temperature: float = 3.0  # T of the soft targets
        rampup: float = 80.0  # epochs of the sigmoid ramp-up of w(e); 0: w = 1 throughout
        ilr: bool = True  # divide the trunk's gradient by the number of branches

    def __init__(self, networks, **params) -> None:
        super().__init__(networks, **params)
        self.net_name, net = the_branched_network(self.name, self.networks, least=2)
        net.trunk_grad_scale = 1.0 / net.num_branches if self.params.ilr else 1.0

    def validate(self) -> None:
        check_weight("lam", self.params.lam)
        check_temperature("temperature", self.params.temperature)
        check_weight("rampup", self.params.rampup)

    @property
    def net(self) -> nn.Module:
        return self.networks[self.net_name]

    def branches(self) -> list[str]:
        return branch_names(self.net.num_branches)

    def evaluated(self) -> dict[str, nn.Module]:
        return {name: BranchView(self.net, i) for i, name in enumerate(self.branches())}

    def ensemble_members(self) -> list[str]:
        return self.branches()

    def teaching_edges(self) -> list[Edge]:
        names = self.branches()
        edges = []
        for i, learner in enumerate(names, 1):
            target = f"mean≠{i}"
            edges += [Edge(other, target, "builds") for other in names if other != learner]
            edges.append(Edge(target, learner, "teaches"))
        return edges

    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        logits = self.net(x)
        targets = others_mean(logits)
        w = rampup_weight(epoch, p.rampup)
        m = logits.shape[1]
        terms = {
            "ce": sum(self.ce(logits[:, i], y) for i in range(m)),
            "kd": p.lam
            * w
            * sum(kd_loss(logits[:, i], targets[:, i], p.temperature) for i in range(m)),
        }
        update({self.net_name: terms})
        return {}
