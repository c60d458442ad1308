"""Topology-guided adversarial mutual learning, TADML (METHODS.md §5; a reconstruction)."""

from __future__ import annotations

import dataclasses

import torch

from ..losses import pooled_embedding, topology_loss
from .adml import AdversarialMutualLearning
from .base import check_choice, check_temperature, check_weight, register
from .dml import peer_mean

SAMPLINGS = ("knn", "random")
STAGES = ("last", "all")


@register
class TopologyGuidedMutualLearning(AdversarialMutualLearning):
    """ADML plus agreement on the relations between samples (METHODS.md §5):

    ``L_k = ADML terms + λ_topo · 1/(K_peers − 1) · Σ_{l≠k} L_topo(h_k, sg h_l)``

    - ``h``: the L2-normalised, globally pooled features of a stage (``topo_stages="last"``,
      the embedding before the classifier; ``"all"``: every stage, the losses averaged, which
      needs peers with the same number of stages). Peers may differ in width: only the B×B
      similarities are compared.
    - ``L_topo`` (:func:`kdlab.losses.topology_loss`): for every anchor i, K = ``topo_k`` other
      samples (``topo_sampling``: ``knn`` in the detached peer's embedding, or ``random``),
      ``q_k(j|i) = softmax_j(cos(h_k,i, h_k,j) / τ)`` and ``mean_i KL(sg q_l(·|i) ‖ q_k(·|i))``.
      The peer's embedding is detached.

    Logged per peer: ADML's ``ce``, ``div``, ``adv`` and ``topo`` = the weighted topology term.
    A batch must hold more than ``topo_k`` samples (:meth:`check_batch_size`).
    """

    name = "tadml"
    needs_features = True

    @dataclasses.dataclass
    class Params(AdversarialMutualLearning.Params):
        lam_topo: float = 1.0  # λ_topo, weight of the topology term
        topo_k: int = 16  # K, neighbours per anchor
        topo_tau: float = 0.1  # τ of the neighbour softmax
        topo_sampling: str = "knn"  # knn | random
        topo_stages: str = "last"  # last | all (averaged)

    def __init__(self, networks, **params):
        super().__init__(networks, **params)
        if self.params.topo_stages == "all":
            counts = {len(getattr(net, "stage_channels", ())) for net in self.networks.values()}
            if len(counts) > 1:
                raise ValueError(
                    f"topo_stages='all' needs peers with the same number of stages, got {counts}"
                )

    def validate(self):
        super().validate()
        p = self.params
        check_weight("lam_topo", p.lam_topo)
        check_temperature("topo_tau", p.topo_tau)
        if not p.topo_k >= 1:
            raise ValueError(f"topo_k must be ≥ 1, got {p.topo_k}")
        check_choice("topo_sampling", p.topo_sampling, SAMPLINGS)
        check_choice("topo_stages", p.topo_stages, STAGES)

    def check_batch_size(self, batch_size: int) -> None:
        if self.params.topo_k >= batch_size:
            raise ValueError(
                f"topo_k={self.params.topo_k} needs batches of more than {self.params.topo_k} "
                f"samples, but the smallest batch has {batch_size}: lower topo_k or raise the "
                "batch size"
            )

    def _embeddings(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        chosen = features if self.params.topo_stages == "all" else features[-1:]
        return [pooled_embedding(f) for f in chosen]

    def _topology(self, h: list[torch.Tensor], h_peer: list[torch.Tensor]) -> torch.Tensor:
        """``L_topo(h_k, sg h_l)``, averaged over the chosen stages."""
        p = self.params
        losses = [
            topology_loss(a, b.detach(), p.topo_k, p.topo_tau, p.topo_sampling)
            for a, b in zip(h, h_peer, strict=True)
        ]
        return torch.stack(losses).mean()

    def _peer_terms(self, outputs, views, y) -> dict:
        terms = super()._peer_terms(outputs, views, y)
        embeddings = {name: self._embeddings(features) for name, (_, features) in outputs.items()}
        for name, h in embeddings.items():
            topo = [self._topology(h, h_o) for other, h_o in embeddings.items() if other != name]
            terms[name]["topo"] = self.params.lam_topo * peer_mean(topo)
        return terms
