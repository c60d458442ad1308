"""Adversarial deep mutual learning, ADML (METHODS.md §4; a reconstruction).

The formula follows the ablations of the TADML paper (Tables 1–3); its full text was not
available, so the knobs those tables vary are parameters here.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import probability_distance
from .base import Method, check_choice, check_weight, register
from .dml import peer_mean

DIVERGENCES = ("js", "kl", "l1", "l2")
DISC_INPUTS = ("logits", "features", "logits+label")


def discriminator(in_features: int, hidden: tuple[int, ...] = (128, 256, 128)) -> nn.Sequential:
    """An MLP ``in_features → hidden… → 1`` with LeakyReLU(0.2): one logit, "real" when > 0."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def bce_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """``BCE(σ(logits), target)`` in float32, mean over samples (safe under fp16/bf16 autocast)."""
    logits = logits.float().flatten()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@register
class AdversarialMutualLearning(Method):
    """DML with a chosen peer divergence and one discriminator per network:

    ``L_k = CE(y, z_k) + λ_div · 1/(K − 1) · Σ_{l≠k} D(p_k, sg p_l) + λ_adv · L_adv^k``

    - ``D`` (``divergence``): ``js`` = JS(p_k, sg p_l) (default), ``kl`` = KL(sg p_l ‖ p_k)
      (DML's term), ``l1`` = Σ_c |p_k − p_l|, ``l2`` = Σ_c (p_k − p_l)² — batchmean, T = 1.
    - ``D_k``, an MLP (``disc_hidden``, LeakyReLU(0.2), one logit) on network k's output
      (``disc_input``: ``logits``, the default; ``features``, the last stage's pooled
      features, which needs peers of equal ``feature_dim``; ``logits+label``, the logits
      concatenated with the one-hot label), learns to tell the other peers' outputs (real) from
      network k's own (fake): ``L_D^k = BCE(D_k(sg z_l), 1) + BCE(D_k(sg z_k), 0)``, with every
      other peer's output as "real" when K > 2. Adam, ``disc_lr``, ``disc_betas``.
    - ``L_adv^k = BCE(D_k(z_k), 1)``: network k learns to fool D_k. D_k's parameters get no
      gradient from this term (they are switched off while it is computed).

    Per batch: forward every peer once → one step of every discriminator on detached outputs
    (one ``update`` call naming all of them) → every peer's loss against the stepped
    discriminators → every peer's step. Logged per peer: ``ce``, ``div`` = the weighted
    divergence, ``adv`` = λ_adv·L_adv^k; per discriminator ``bce`` = L_D^k; and
    ``disc_acc/disc_k``, the discriminator's accuracy on the batch (real and fake halves
    weighted equally), measured before its step.
    """

    name = "adml"
    role = "peer"
    min_networks = 2
    needs_features = False  # TADML also needs the stage features

    @dataclasses.dataclass
    class Params:
        lam_div: float = 1.0  # λ_div, weight of the peer divergence
        lam_adv: float = 0.1  # λ_adv, weight of the adversarial term
        divergence: str = "js"  # js | kl | l1 | l2
        disc_input: str = "logits"  # logits | features | logits+label
        disc_hidden: tuple[int, ...] = (128, 256, 128)
        disc_lr: float = 2e-4
        disc_betas: tuple[float, ...] = (0.5, 0.999)

    def __init__(self, networks, **params):
        super().__init__(networks, **params)
        widths = [self._disc_width(net) for net in self.networks.values()]
        # D_k judges network k's output; the peers' outputs it sees as real must fit it too.
        if len(set(widths)) > 1:
            raise ValueError(
                f"disc_input={self.params.disc_input!r} needs peers with outputs of equal width, "
                f"got {sorted(set(widths))}"
            )
        for i, width in enumerate(widths, start=1):
            self.auxiliary[f"disc{i}"] = discriminator(width, tuple(self.params.disc_hidden))

    def validate(self):
        p = self.params
        for name in ("lam_div", "lam_adv"):
            check_weight(name, getattr(p, name))
        check_choice("divergence", p.divergence, DIVERGENCES)
        check_choice("disc_input", p.disc_input, DISC_INPUTS)
        if not p.disc_hidden or any(int(h) < 1 for h in p.disc_hidden):
            raise ValueError(f"disc_hidden must be positive layer sizes, got {p.disc_hidden}")
        if not p.disc_lr > 0:
            raise ValueError(f"disc_lr must be > 0, got {p.disc_lr}")
        if len(p.disc_betas) != 2 or not all(0 <= b < 1 for b in p.disc_betas):
            raise ValueError(f"disc_betas must be two numbers in [0, 1), got {p.disc_betas}")

    def _disc_width(self, net: nn.Module) -> int:
        kind = self.params.disc_input
        attribute = "feature_dim" if kind == "features" else "num_classes"
        width = getattr(net, attribute, None)
        if width is None:
            raise ValueError(f"disc_input={kind!r} needs networks with a {attribute!r} attribute")
        return width + (net.num_classes if kind == "logits+label" else 0)

    def auxiliary_optimizers(self):
        return {
            name: torch.optim.Adam(
                disc.parameters(), lr=self.params.disc_lr, betas=tuple(self.params.disc_betas)
            )
            for name, disc in self.auxiliary.items()
        }

    # -- one batch ----------------------------------------------------------------------------
    def _forward(self, x):
        """Every peer once: ``{name: (logits, stage features or None)}``."""
        if self.needs_features or self.params.disc_input == "features":
            return {name: net(x, return_features=True) for name, net in self.networks.items()}
        return {name: (net(x), None) for name, net in self.networks.items()}

    def _disc_view(self, logits, features, y):
        """What a discriminator sees of one network's output, float32."""
        kind = self.params.disc_input
        if kind == "features":
            return features[-1].float().flatten(2).mean(dim=2)
        if kind == "logits+label":
            one_hot = F.one_hot(y, logits.shape[1]).float()
            return torch.cat([logits.float(), one_hot], dim=1)
        return logits.float()

    def _discriminator_terms(self, views):
        """``L_D^k`` on detached views and each discriminator's accuracy (before its step)."""
        terms, metrics = {}, {}
        names = list(views)
        for i, name in enumerate(names):
            disc_name = f"disc{i + 1}"
            disc = self.auxiliary[disc_name]
            real = torch.cat([views[other].detach() for other in names if other != name])
            d_real = disc(real)
            d_fake = disc(views[name].detach())
            terms[disc_name] = {"bce": bce_logits(d_real, 1.0) + bce_logits(d_fake, 0.0)}
            accuracy = 0.5 * ((d_real > 0).float().mean() + (d_fake <= 0).float().mean())
            metrics[f"disc_acc/{disc_name}"] = accuracy.detach()
        return terms, metrics

    def _adversarial(self, disc: nn.Module, view: torch.Tensor) -> torch.Tensor:
        """``BCE(D_k(z_k), 1)`` with gradient to the network only (D_k's parameters are off)."""
        disc.requires_grad_(False)
        try:
            return bce_logits(disc(view), 1.0)
        finally:
            disc.requires_grad_(True)

    def _peer_terms(self, outputs, views, y) -> dict:
        p = self.params
        names = list(outputs)
        terms = {}
        for i, name in enumerate(names):
            z = outputs[name][0]
            divergence = [
                probability_distance(z, outputs[other][0], p.divergence)
                for other in names
                if other != name
            ]
            terms[name] = {
                "ce": self.ce(z, y),
                "div": p.lam_div * peer_mean(divergence),
                "adv": p.lam_adv * self._adversarial(self.auxiliary[f"disc{i + 1}"], views[name]),
            }
        return terms

    def training_step(self, x, y, update, *, epoch=1, step=0):
        outputs = self._forward(x)
        views = {name: self._disc_view(z, f, y) for name, (z, f) in outputs.items()}
        disc_terms, metrics = self._discriminator_terms(views)
        update(disc_terms)
        update(self._peer_terms(outputs, views, y))
        return metrics
