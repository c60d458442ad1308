"""Deep mutual learning, DML (Zhang, Xiang, Hospedales, Lu, CVPR 2018; METHODS.md §3)."""

from __future__ import annotations

import dataclasses

import torch

from ..losses import mutual_kl
from .base import Edge, Method, check_choice, check_temperature, check_weight, register

UPDATE_ORDERS = ("sync", "alternating")


def peer_mean(values: list[torch.Tensor]) -> torch.Tensor:
    """``1/(K − 1) · Σ_{l≠k}``: the mean of a term over the other peers (DML's convention)."""
    return torch.stack(values).mean() if len(values) > 1 else values[0]


@register
class DeepMutualLearning(Method):
    """K ≥ 2 peers trained together from scratch, each also mimicking the others:

    ``L_k = CE(y, z_k) + λ · 1/(K − 1) · Σ_{l≠k} KL(sg p_l^T ‖ p_k^T)``, ``p^T = softmax(z / T)``.

    The KL goes from the detached peer ``l`` (the target) to network ``k`` (trained), batchmean,
    without a T² factor (DML uses T = 1). The official code sums over the other peers; the kit
    averages (the two agree for K = 2). Any mix of architectures.

    ``update_order``: ``"sync"`` (default) forwards every peer once per batch, computes every peer's
    loss against the detached others and steps every optimizer together. ``"alternating"`` is
    the paper's Algorithm 1: update peer 1, recompute its prediction with its new weights,
    update peer 2 against it, and so on. Every peer is still forwarded once with gradient; the
    recomputation costs K − 1 extra forward passes without gradient (which, in train mode, also
    update BatchNorm's running statistics once more, as re-running the network in the paper does).

    (``update_order`` was called ``schedule`` before; that name now belongs to the learning-rate
    schedule alone, and passing it to DML is an error that names ``update_order``.)

    Logged terms per peer: ``ce`` = CE(y, z_k) and ``kl`` = the weighted mimicry term, so they
    add up to ``L_k``.
    """

    name = "dml"
    role = "peer"
    min_networks = 2
    renamed = {"schedule": "update_order"}

    @dataclasses.dataclass
    class Params:
        lam: float = 1.0  # λ, the weight of the mimicry term
        temperature: float = 1.0  # T of p^T = softmax(z / T)
        update_order: str = "sync"  # "sync" or "alternating" (the paper's Algorithm 1)

    def validate(self):
        check_weight("lam", self.params.lam)
        check_temperature("temperature", self.params.temperature)
        check_choice("update_order", self.params.update_order, UPDATE_ORDERS)

    def teaching_edges(self) -> list[Edge]:
        """Every peer teaches every other peer (notebook 10's graph)."""
        return [Edge(a, b) for a in self.networks for b in self.networks if a != b]

    def _terms(self, name: str, logits: dict[str, torch.Tensor], y: torch.Tensor) -> dict:
        """``{"ce": CE(y, z_k), "kl": λ · mean_{l≠k} KL(sg p_l^T ‖ p_k^T)}`` of peer ``name``."""
        z = logits[name]
        mimicry = [
            mutual_kl(z, z_other, self.params.temperature)
            for other, z_other in logits.items()
            if other != name
        ]
        return {"ce": self.ce(z, y), "kl": self.params.lam * peer_mean(mimicry)}

    def training_step(self, x, y, update, *, epoch=1, step=0):
        logits = {name: net(x) for name, net in self.networks.items()}
        if self.params.update_order == "sync":
            update({name: self._terms(name, logits, y) for name in logits})
            return {}
        # Alternating: each peer's graph from the forward above is still valid at its turn,
        # since only the peers before it have been stepped; those are re-run without gradient.
        names = list(logits)
        for i, name in enumerate(names):
            update({name: self._terms(name, logits, y)})
            if i < len(names) - 1:
                with torch.no_grad():
                    logits[name] = self.networks[name](x)
        return {}
