"""Tests for kdlab.losses (cross_entropy, kd_loss) and the loss of the kd method.

Expected values are worked by hand on two-class examples: with p^T = [3/4, 1/4] the logit
difference divided by T is ln 3, and every KL and CE below is a sum of a few logarithms.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.losses import cross_entropy, kd_loss
from kdlab.methods import get_method

LN3 = math.log(3.0)

# KL([3/4, 1/4] ‖ [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120…
KL_34_HALF = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
# KL([1/2, 1/2] ‖ [3/4, 1/4]) = 1/2 ln(2/3) + 1/2 ln 2 = 0.1438410…  (the other direction)
KL_HALF_34 = 0.5 * math.log(2 / 3) + 0.5 * math.log(2.0)


# --------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]: CE is −ln(3/4) for label 1 and −ln(1/4) = ln 4 for label 0.
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    labels = torch.tensor([1, 0])
    expected = 0.5 * (-math.log(0.75) + math.log(4.0))  # mean over the batch = 0.8369882…
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert cross_entropy(logits[:1], labels[:1]).item() == pytest.approx(0.287682, abs=1e-6)


def test_cross_entropy_half_precision_input_gives_float32():
    logits = torch.tensor([[0.0, LN3]], dtype=torch.bfloat16)
    loss = cross_entropy(logits, torch.tensor([1]))
    assert loss.dtype == torch.float32


# --------------------------------------------------------------------------- kd_loss


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_by_hand(temperature):
    # Teacher logits [T ln 3, 0] → p_t^T = [3/4, 1/4]; student logits [0, 0] → p_s^T = [1/2, 1/2].
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[temperature * LN3, 0.0]])
    expected = temperature**2 * KL_34_HALF
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_direction_is_teacher_to_student():
    # KL(p_t ‖ p_s), not KL(p_s ‖ p_t): swapping the roles gives the other number.
    uniform = torch.zeros(1, 2)
    peaked = torch.tensor([[LN3, 0.0]])
    assert kd_loss(uniform, peaked, 1.0).item() == pytest.approx(KL_34_HALF, rel=1e-5)
    assert kd_loss(peaked, uniform, 1.0).item() == pytest.approx(KL_HALF_34, rel=1e-5)


def test_kd_loss_is_batchmean():
    # Two samples: one with KL = KL_34_HALF, one with KL = 0. batchmean divides the sum by
    # B = 2; "mean" would divide by B·C = 4 and give half of it.
    temperature = 2.0
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[temperature * LN3, 0.0], [0.0, 0.0]])
    expected = temperature**2 * KL_34_HALF / 2  # 0.2616240…
    got = kd_loss(student, teacher, temperature).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(expected / 2, rel=1e-3)


def test_kd_loss_of_three_classes_by_hand():
    # p_t = [1/2, 1/4, 1/4] from logits ln[2, 1, 1]; p_s = uniform 1/3.
    # KL = 1/2 ln(3/2) + 2 · 1/4 ln(3/4) = 0.0588915…
    teacher = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    student = torch.tensor([[5.0, 5.0, 5.0]])  # a constant shift leaves the softmax uniform
    expected = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert expected == pytest.approx(0.0588915, abs=1e-7)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_equal_distributions():
    z = torch.randn(5, 7)
    assert kd_loss(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_reaches_the_student_only():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    student = nn.Linear(4, 3)
    assert all(p.requires_grad for p in teacher.parameters())
    x = torch.randn(6, 4)
    loss = kd_loss(student(x), teacher(x), 4.0)
    loss.backward()
    assert teacher.weight.grad is None and teacher.bias.grad is None
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0


def test_kd_loss_gradient_by_hand():
    # d/dz_s of T²·KL(p_t‖p_s) = T·(p_s − p_t) per sample (batchmean: divided by B = 1).
    temperature = 2.0
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[temperature * LN3, 0.0]])
    kd_loss(student, teacher, temperature).backward()
    expected = [temperature * (0.5 - 0.75), temperature * (0.5 - 0.25)]  # [−0.5, 0.5]
    assert student.grad[0].tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_kd_loss_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature)


# --------------------------------------------------------------------------- the kd method


class FixedLogits(nn.Module):
    """A stand-in network: returns the same logits row for every input (a learnable bias)."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def _capture():
    calls = []

    def update(terms):
        calls.append(
            {name: {k: v.detach().clone() for k, v in t.items()} for name, t in terms.items()}
        )
        total = sum(v for t in terms.values() for v in t.values())
        total.backward()

    return calls, update


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_kd_method_loss_is_weighted_sum(alpha):
    temperature = 2.0
    student = FixedLogits([0.0, 0.0])
    teacher = FixedLogits([temperature * LN3, 0.0])
    method = get_method("kd")({"student": student}, teacher=teacher, alpha=alpha, temperature=2.0)
    x = torch.zeros(2, 1)
    y = torch.tensor([0, 1])
    calls, update = _capture()
    extra = method.training_step(x, y, update)
    assert extra == {}
    assert len(calls) == 1 and set(calls[0]) == {"student"}
    terms = calls[0]["student"]
    assert set(terms) == {"ce", "kd"}
    ce = math.log(2.0)  # uniform student: CE = ln 2 for either label
    kd = temperature**2 * KL_34_HALF  # the same teacher row for both samples
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce, abs=1e-6)
    assert terms["kd"].item() == pytest.approx(alpha * kd, abs=1e-6)
    assert (terms["ce"] + terms["kd"]).item() == pytest.approx(
        (1 - alpha) * ce + alpha * kd, abs=1e-6
    )
    # The teacher is frozen and detached: no gradient reaches it; the student gets one.
    assert teacher.logits.grad is None
    assert student.logits.grad is not None


def test_kd_method_freezes_the_teacher_and_keeps_it_in_eval_mode():
    teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    method = get_method("kd")({"student": nn.Linear(3, 4)}, teacher=teacher)
    method.train()
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert "teacher" in method.evaluated() and "teacher" not in method.networks


@pytest.mark.parametrize(
    "params", [{"alpha": -0.1}, {"alpha": 1.5}, {"temperature": 0.0}, {"temperature": -2.0}]
)
def test_kd_method_rejects_bad_parameters(params):
    with pytest.raises(ValueError):
        get_method("kd")({"student": nn.Linear(2, 2)}, teacher=nn.Linear(2, 2), **params)
