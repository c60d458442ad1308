"""OKDDip: online knowledge distillation with diverse peers (Chen, Mei, Wang, Feng, Chen, AAAI
2020; METHODS.md §11)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import kd_loss
from ..models.branches import BranchView, branch_names, global_pool, the_branched_network
from .base import Edge, Method, check_temperature, check_weight, rampup_weight, register

__all__ = ["PeerAttention", "DiversePeers", "soft_kl"]


class PeerAttention(nn.Module):
    """Each peer's aggregation weights over the peers: ``a_ij = softmax_j(q_i · k_j)``.

    ``q_i = W_q h_i``, ``k_j = W_k h_j`` are linear projections (no bias) of the peers' pooled
    last-stage features ``h`` (B × n × F) to ``F // factor`` dimensions; the softmax runs over
    j, every peer (itself included), so each row of the B × n × n result sums to 1.
    """

    def __init__(self, features: int, factor: int = 8) -> None:
        super().__init__()
        size = max(1, features // factor)
        self.query = nn.Linear(features, size, bias=False)
        self.key = nn.Linear(features, size, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        energy = torch.bmm(self.query(h).float(), self.key(h).float().transpose(1, 2))
        return F.softmax(energy, dim=-1)


def soft_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float):
    """``T² · KL(softmax(target/T) ‖ softmax(z/T))``, batchmean, **without** detaching the target.

    The caller decides what the target's gradient may reach: OKDDip's targets are built from
    detached peer logits, so only the attention weights inside them receive gradient.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    target = F.softmax(target_logits.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(log_p, target, reduction="batchmean")


@register
class DiversePeers(Method):
    """Peers and a leader, branches of one network over a shared trunk: the first m − 1
    branches are the *peers*, the last is the *leader*.

    ``L = Σ_i CE(y, z_i) + CE(y, z_l)
    + α · w(e) · (Σ_i T² KL(x_i ‖ p_i^T) + T² KL(sg softmax(mean_j z_j / T) ‖ p_l^T))``

    - peer i's target ``x_i = softmax(Σ_j a_ij sg z_j / T)``: an attention-weighted mix of the
      peers' detached logits (:class:`PeerAttention` on their detached pooled features). The
      peers' side is detached — no branch receives gradient through another's output — but the
      weights ``a_ij`` are not: this term is what trains the attention, as in the authors'
      code, whose target is not detached at all (their ``KL_Loss``);
    - the leader's target: the peers' mean *logits*, softened by T, detached (the authors'
      ``torch.mean(output_batch, dim=2)`` into ``KL_Loss``; METHODS.md §11 writes the mean
      of the peers' probabilities instead — kdlab follows the code).

    Defaults from the authors' code (github.com/DefangChen/OKDDip, ``train_GL.py``): α = 1,
    T = 3, four branches (3 peers + the leader), the sigmoid ramp-up over 80 epochs
    (``--length 80``, ``get_current_consistency_weight``); the attention projects to
    ``features // 8`` (``models/model_cifar/resnet_GL.py``, ``factor=8``). Their recipe (300
    epochs, batch 128, lr 0.1 ÷10 at 150 and 225, weight decay 5e-4) is a grid's to set.

    The attention is a *trained network* of the method, ``networks["attention"]`` (the
    recipe's optimizer and schedule, as in the authors' single SGD; checkpointed with the
    networks); its gradient comes through the peers' terms (``also_step``).

    Logged terms: ``ce`` = the CE of every branch, ``kd`` = the weighted KL terms. Evaluated:
    the peers (``branch1``…) and the ``leader``; the reported ``ensemble`` is the peers' mean
    softmax (the authors' "ensemble of 0, 1, 2"), their agreement and JS measured pairwise.
    """

    name = "okddip"
    min_networks = 1
    trains_branches = True

    @dataclasses.dataclass
    class Params:
        alpha: float = 1.0  # weight of the distillation terms
        temperature: float = 3.0  # T of every KL term
        rampup: float = 80.0  # epochs of the sigmoid ramp-up of w(e); 0: w = 1 throughout
        factor: int = 8  # the attention projects F features to F // factor

    def __init__(self, networks, **params) -> None:
        super().__init__(networks, **params)
        self.net_name, net = the_branched_network(self.name, self.networks, least=3)
        self.networks["attention"] = PeerAttention(net.feature_dim, self.params.factor)

    def validate(self) -> None:
        check_weight("alpha", self.params.alpha)
        check_temperature("temperature", self.params.temperature)
        check_weight("rampup", self.params.rampup)
        if self.params.factor < 1:
            raise ValueError(f"factor must be ≥ 1, got {self.params.factor}")

    @property
    def net(self) -> nn.Module:
        return self.networks[self.net_name]

    def peers(self) -> list[str]:
        return branch_names(self.net.num_branches - 1)

    def evaluated(self) -> dict[str, nn.Module]:
        views = {name: BranchView(self.net, i) for i, name in enumerate(self.peers())}
        return {**views, "leader": BranchView(self.net, self.net.num_branches - 1)}

    def ensemble_members(self) -> list[str]:
        return self.peers()

    def teaching_edges(self) -> list[Edge]:
        peers, edges = self.peers(), []
        for i, learner in enumerate(peers, 1):
            edges += [Edge(peer, f"mix{i}", "builds") for peer in peers]
            edges.append(Edge(f"mix{i}", learner, "teaches"))
        edges += [Edge(peer, "mean", "builds") for peer in peers]
        return edges + [Edge("mean", "leader", "teaches")]

    def targets(self, logits: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """The peers' targets ``Σ_j a_ij sg z_j`` (B × n × C logits), n = m − 1 peers."""
        n = logits.shape[1] - 1
        h = torch.stack([global_pool(f.detach()) for f in maps[:n]], dim=1)
        attention = self.networks["attention"](h)  # B × n × n, rows sum to 1
        return torch.bmm(attention, logits[:, :n].detach().float())

    def cost_forward(self, x: torch.Tensor) -> None:
        logits, _, maps = self.net(x, return_features=True)
        self.targets(logits, maps)

    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        logits, _, maps = self.net(x, return_features=True)
        n = logits.shape[1] - 1
        mixed = self.targets(logits, maps)
        leader, peers = logits[:, n], logits[:, :n]
        peer_terms = sum(soft_kl(mixed[:, i], peers[:, i], p.temperature) for i in range(n))
        leader_term = kd_loss(leader, peers.mean(1), p.temperature)
        terms = {
            "ce": sum(self.ce(logits[:, i], y) for i in range(n + 1)),
            "kd": p.alpha * rampup_weight(epoch, p.rampup) * (peer_terms + leader_term),
        }
        update({self.net_name: terms}, also_step=("attention",))
        return {}
