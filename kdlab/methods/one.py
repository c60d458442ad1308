"""ONE: knowledge distillation by on-the-fly native ensemble (Lan, Zhu, Gong, NeurIPS 2018;
METHODS.md §11)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import kd_loss
from ..models.branches import BranchView, branch_names, global_pool, the_branched_network
from .base import Edge, Method, check_temperature, check_weight, rampup_weight, register

__all__ = ["Gate", "GatedEnsemble", "OnTheFlyNativeEnsemble", "gated_logits"]


class Gate(nn.Module):
    """ONE's gate: ``g = softmax(ReLU(BN(FC(pool(trunk)))))`` over the m **branches**.

    Input: the shared trunk's feature map (B × C_t × H × W), globally average-pooled; output:
    B × m importance scores, each row summing to 1 over the branches (not over classes, not
    over the batch). The authors' ``ONE_ResNet`` computes it from the pooled ``layer2`` output
    (``control_v1`` → ``bn_v1`` → ReLU → softmax, ``models/cifar/resnet.py``).
    """

    def __init__(self, channels: int, branches: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, branches)
        self.bn = nn.BatchNorm1d(branches)

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        scores = F.relu(self.bn(self.fc(global_pool(trunk))))
        return F.softmax(scores.float(), dim=1)  # B × m: one weight per branch


def gated_logits(logits: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``z_e = Σ_i g_i z_i``: B × m × C branch logits weighted by the B × m gate → B × C."""
    return torch.einsum("bm,bmc->bc", gate, logits.float())


class GatedEnsemble(nn.Module):
    """The gated ensemble ``z_e`` (ONE's teacher) as a one-output classifier, for evaluation."""

    kind = "classifier"

    def __init__(self, net: nn.Module, gate: Gate) -> None:
        super().__init__()
        self.net, self.gate = net, gate
        self.arch = f"{net.arch}[gated ensemble]"
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, trunk, _ = self.net(x, return_features=True)
        return gated_logits(logits, self.gate(trunk))

    def member_parameters(self) -> list[nn.Parameter]:
        return [*self.net.parameters(), *self.gate.parameters()]


@register
class OnTheFlyNativeEnsemble(Method):
    """One multi-branch network (:mod:`kdlab.models.branches`) whose gated ensemble teaches
    every branch:

    ``L = Σ_i CE(y, z_i) + CE(y, z_e) + w(e) · Σ_i T² · KL(sg p_e^T ‖ p_i^T)``,
    ``z_e = Σ_i g_i z_i``, ``g`` = :class:`Gate` on the shared trunk, softmax over branches.

    The KL goes from the detached ensemble (target) to branch i (trained), batchmean, with the
    T² factor, summed over the branches as in the authors' code; ``CE(y, z_e)`` is the only term
    that trains the gate (and it reaches every branch through ``z_e``). ``w(e)`` is the sigmoid
    ramp-up of :func:`~kdlab.methods.base.rampup_weight` over ``rampup`` epochs.

    Defaults from the authors' code (github.com/Lan1991Xu/ONE_NeurIPS2018): T = 3
    (``loss/kl_loss.py``, which also multiplies by T² and adds 1e-7 to the target; kdlab does
    not add it), the ramp-up over 80 epochs (``scripts/ONE_ResNet32.sh --consistency_rampup
    80``, ``cifar_one.py``), three branches over a shared trunk split before the last stage
    (``models/cifar/resnet.py``, ``ONE_ResNet``). Their recipe (300 epochs, batch 128, lr 0.1
    ÷10 at 150 and 225, weight decay 1e-4) is a recipe, not a knob: a grid sets it.

    The gate is a *trained network* of the method, ``networks["gate"]``: the loop gives it the
    recipe's optimizer and schedule, as the authors train it with the branches in one SGD.
    It has no loss term of its own (its gradient comes through ``CE(y, z_e)``), so the step
    names it in ``also_step``; it is checkpointed with the networks.

    Logged terms of the network: ``ce`` = Σ_i CE(y, z_i), ``ce_teacher`` = CE(y, z_e),
    ``kd`` = the weighted KL sum. Evaluated: every branch (``branch1``…) and the gated
    ensemble (``teacher``); the reported ``ensemble`` is the mean softmax of the branches,
    whose agreement and JS are measured pairwise.
    """

    name = "one"
    min_networks = 1
    trains_branches = True

    @dataclasses.dataclass
    class Params:
        temperature: float = 3.0  # T of the KL to the gated ensemble
        rampup: float = 80.0  # epochs of the sigmoid ramp-up of w(e); 0: w = 1 throughout

    def __init__(self, networks, **params) -> None:
        super().__init__(networks, **params)
        self.net_name, net = the_branched_network(self.name, self.networks)
        self.networks["gate"] = Gate(net.trunk_channels, net.num_branches)

    def validate(self) -> None:
        check_temperature("temperature", self.params.temperature)
        check_weight("rampup", self.params.rampup)

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < 2:
            raise ValueError("one: the gate's BatchNorm needs batches of at least 2 images")

    @property
    def net(self) -> nn.Module:
        return self.networks[self.net_name]

    def branches(self) -> list[str]:
        return branch_names(self.net.num_branches)

    def evaluated(self) -> dict[str, nn.Module]:
        views = {name: BranchView(self.net, i) for i, name in enumerate(self.branches())}
        return {**views, "teacher": GatedEnsemble(self.net, self.networks["gate"])}

    def ensemble_members(self) -> list[str]:
        return self.branches()

    def teaching_edges(self) -> list[Edge]:
        built = [Edge(b, "teacher", "builds") for b in self.branches()]
        return built + [Edge("teacher", b, "teaches") for b in self.branches()]

    def cost_forward(self, x: torch.Tensor) -> None:
        logits, trunk, _ = self.net(x, return_features=True)
        gated_logits(logits, self.networks["gate"](trunk))

    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        logits, trunk, _ = self.net(x, return_features=True)
        z_e = gated_logits(logits, self.networks["gate"](trunk))
        branches = logits.unbind(1)
        w = rampup_weight(epoch, p.rampup)
        terms = {
            "ce": sum(self.ce(z, y) for z in branches),
            "ce_teacher": self.ce(z_e, y),
            "kd": w * sum(kd_loss(z, z_e, p.temperature) for z in branches),
        }
        update({self.net_name: terms}, also_step=("gate",))
        return {}
