"""Correlation-based and standardised losses, on examples large enough to tell probabilities
from logits, and the invariances their gradients must have (issue 23, point 4).

- A Pearson correlation of two points is always ±1, so DIST's intra-class term on a batch of
  two cannot tell probabilities from logits: here the batch has 16 samples and 10 classes, and
  the reference is computed another way (``torch.corrcoef`` on the softmax outputs).
- Every loss of a softmax is unchanged when a row of the student's logits is shifted by a
  constant: its gradient sums to zero over each row. DIST on logits breaks that (its intra-class
  term correlates columns, which a row shift moves).
- KD with logit standardisation is unchanged by a shift *and* a positive scale of a row, so its
  gradient is orthogonal to the row of ones and to the row itself. Detaching the mean or the
  standard deviation of the standardisation leaves every value as it was and breaks exactly one
  of the two.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab.losses import (
    dist_terms,
    dkd_terms,
    js_divergence,
    kd_loss,
    logit_std_kd_loss,
    mutual_kl,
    probability_distance,
    standardize_logits,
)

B, C = 16, 10


def _logits(seed: int, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(B, C, generator=torch.Generator().manual_seed(seed))


def _corr_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's ρ of each pair of rows, with torch.corrcoef (not kdlab's formula)."""
    return torch.stack([torch.corrcoef(torch.stack([u, v]))[0, 1] for u, v in zip(a, b)])


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_correlates_the_probabilities_of_a_large_batch(temperature):
    # A student close to its teacher (correlated, as in training), 16 samples × 10 classes.
    z_t = _logits(1)
    z_s = z_t + _logits(0, scale=1.5)
    p_s = F.softmax(z_s.double() / temperature, 1)
    p_t = F.softmax(z_t.double() / temperature, 1)
    inter_ref = temperature**2 * (1 - _corr_rows(p_s, p_t).mean())
    intra_ref = temperature**2 * (1 - _corr_rows(p_s.T, p_t.T).mean())
    inter, intra = dist_terms(z_s, z_t, temperature)
    assert inter.item() == pytest.approx(inter_ref.item(), rel=1e-4)
    assert intra.item() == pytest.approx(intra_ref.item(), rel=1e-4)
    # The example tells the two apart: the same correlations of the logits differ clearly.
    # (1 − ρ: 0.23 on probabilities and 0.09 on logits at T = 1, 0.123 and 0.090 at T = 4.)
    on_logits = temperature**2 * (1 - _corr_rows(z_s.T.double(), z_t.T.double()).mean())
    assert abs(on_logits.item() - intra_ref.item()) > 0.2 * intra_ref.item()
    on_logits = temperature**2 * (1 - _corr_rows(z_s.double(), z_t.double()).mean())
    assert abs(on_logits.item() - inter_ref.item()) > 0.1 * inter_ref.item()


LOSSES = {
    "kd": lambda z, t: kd_loss(z, t, 4.0),
    "mutual_kl": lambda z, t: mutual_kl(z, t, 2.0),
    "js": js_divergence,
    "l1": lambda z, t: probability_distance(z, t, "l1"),
    "l2": lambda z, t: probability_distance(z, t, "l2"),
    "dkd_tckd": lambda z, t: dkd_terms(z, t, torch.arange(B) % C, 4.0)[0],
    "dkd_nckd": lambda z, t: dkd_terms(z, t, torch.arange(B) % C, 4.0)[1],
    "dist_inter": lambda z, t: dist_terms(z, t, 4.0)[0],
    "dist_intra": lambda z, t: dist_terms(z, t, 4.0)[1],
    "kd_ls": lambda z, t: logit_std_kd_loss(z, t, 2.0),
}


def _grad(loss, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    loss(z, t).backward()
    return z.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_shift_of_a_row_of_logits_changes_nothing(name):
    loss = LOSSES[name]
    z, t = _logits(2), _logits(3)
    shift = 5.0 * torch.randn(B, 1, generator=torch.Generator().manual_seed(4))
    assert loss(z + shift, t).item() == pytest.approx(loss(z, t).item(), rel=1e-4, abs=1e-6)
    g = _grad(loss, z, t)
    assert g.abs().max() > 1e-4  # a gradient to speak of
    assert g.sum(dim=1).abs().max() < 1e-5 * max(1.0, g.abs().max().item() * C)


def test_kd_with_standardised_logits_ignores_a_row_s_offset_and_scale():
    z, t = _logits(5), _logits(6)
    shift = 4.0 * torch.randn(B, 1, generator=torch.Generator().manual_seed(7))
    scale = torch.rand(B, 1, generator=torch.Generator().manual_seed(8)) * 3 + 0.2
    same = logit_std_kd_loss(scale * z + shift, t, 2.0).item()
    assert same == pytest.approx(logit_std_kd_loss(z, t, 2.0).item(), rel=1e-5)
    assert kd_loss(scale * z + shift, t, 2.0).item() != pytest.approx(
        kd_loss(z, t, 2.0).item(), rel=1e-2
    )


def test_the_standardised_gradient_is_orthogonal_to_shift_and_scale():
    """``L(a·z_i + b) = L(z)`` for every row i: ``Σ_c g_ic = 0`` (shift) and ``Σ_c g_ic·z_ic = 0``
    (scale). With the mean detached the first fails, with the standard deviation the second."""
    z, t = _logits(9), _logits(10)
    g = _grad(lambda a, b: logit_std_kd_loss(a, b, 2.0), z, t)
    size = g.abs().max().item() * z.abs().max().item() * C
    assert g.abs().max() > 1e-4
    assert g.sum(dim=1).abs().max() < 1e-5 * size
    assert (g * z).sum(dim=1).abs().max() < 1e-5 * size
    # The same property on the standardisation itself: any function of Z(z) has it.
    w = torch.randn(B, C, generator=torch.Generator().manual_seed(11))
    g = _grad(lambda a, b: (standardize_logits(a) * w).sum(), z, t)
    assert g.sum(dim=1).abs().max() < 1e-4 and (g * z).sum(dim=1).abs().max() < 1e-4


def test_the_gradient_of_dist_reaches_only_the_student_and_sums_to_zero_per_row():
    z, t = _logits(12), _logits(13).requires_grad_(True)
    zs = z.clone().requires_grad_(True)
    inter, intra = dist_terms(zs, t, 4.0)
    (2.0 * inter + 0.5 * intra).backward()
    assert t.grad is None
    assert zs.grad.sum(dim=1).abs().max() < 1e-5
