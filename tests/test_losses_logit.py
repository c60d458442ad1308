"""DKD, DIST and KD with logit standardisation (METHODS.md §7): losses and methods, by hand.

Every expected value is worked by hand on three-class examples built from probabilities with
small denominators (logits are ``T · ln p``, so ``softmax(z / T) = p``). Each example is chosen so
that the plausible wrong choice (the other KL direction, no T², the wrong class masked, the
non-target distribution left unnormalised, correlating logits instead of probabilities, the
population standard deviation, the sum over the batch) gives a different number.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kdlab
from kdlab.losses import (
    cross_entropy,
    dist_terms,
    dkd_terms,
    kd_loss,
    logit_std_kd_loss,
    pearson_correlation,
    standardize_logits,
)
from kdlab.methods import get_method


def logits_of(rows, temperature=1.0):
    """Logits whose softmax at ``temperature`` is each row of probabilities."""
    return temperature * torch.tensor(rows, dtype=torch.float64).log().float()


# The DKD example: teacher p_t = [1/2, 3/8, 1/8], student uniform [1/3, 1/3, 1/3], label 0.
# b_t = [1/2, 1/2], b_s = [1/3, 2/3]; p̂_t = [3/4, 1/4], p̂_s = [1/2, 1/2].
TCKD_0 = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)  # KL(b_t ‖ b_s) = 0.0588915…
NCKD_0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([3/4, 1/4] ‖ [1/2, 1/2]) = 0.1308120…
KD_0 = 0.5 * math.log(1.5) + 0.375 * math.log(9 / 8) + 0.125 * math.log(3 / 8)  # 0.1242973…
# With label 1 instead: b_t = [3/8, 5/8], p̂_t over classes {0, 2} = [4/5, 1/5].
TCKD_1 = 0.375 * math.log(9 / 8) + 0.625 * math.log(15 / 16)  # 0.0038321…
NCKD_1 = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)  # 0.1927448…
TEACHER = [[0.5, 0.375, 0.125]]


# --------------------------------------------------------------------------- DKD


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_dkd_terms_by_hand(temperature):
    teacher = logits_of(TEACHER, temperature)
    student = torch.zeros(1, 3)
    tckd, nckd = dkd_terms(student, teacher, torch.tensor([0]), temperature)
    assert tckd.item() == pytest.approx(temperature**2 * TCKD_0, rel=1e-5)
    assert nckd.item() == pytest.approx(temperature**2 * NCKD_0, rel=1e-5)


def test_dkd_masks_the_true_class_of_each_sample():
    # The same teacher row with label 1: the binary split and the renormalised rest change.
    teacher = logits_of(TEACHER + TEACHER)
    labels = torch.tensor([0, 1])
    tckd, nckd = dkd_terms(torch.zeros(2, 3), teacher, labels, 1.0, reduction="none")
    assert tckd.tolist() == pytest.approx([TCKD_0, TCKD_1], rel=1e-5)
    assert nckd.tolist() == pytest.approx([NCKD_0, NCKD_1], rel=1e-5)
    # batchmean averages the two samples (the sum would be twice this).
    tckd_mean, nckd_mean = dkd_terms(torch.zeros(2, 3), teacher, labels, 1.0)
    assert tckd_mean.item() == pytest.approx((TCKD_0 + TCKD_1) / 2, rel=1e-5)
    assert nckd_mean.item() == pytest.approx((NCKD_0 + NCKD_1) / 2, rel=1e-5)


def test_dkd_direction_is_teacher_to_student():
    # Swapping the roles: KL(b_s ‖ b_t) = 1/3 ln(2/3) + 2/3 ln(4/3) = 0.0566330…, not TCKD_0.
    tckd, _ = dkd_terms(logits_of(TEACHER), torch.zeros(1, 3), torch.tensor([0]), 1.0)
    swapped = math.log(2 / 3) / 3 + 2 / 3 * math.log(4 / 3)
    assert tckd.item() == pytest.approx(swapped, rel=1e-5)
    assert swapped != pytest.approx(TCKD_0, rel=1e-2)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_dkd_with_nckd_weighted_by_the_teacher_non_target_mass(temperature):
    # The decomposition of the DKD paper, per sample, on random logits and labels.
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=generator)
    teacher = 3 * torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    tckd, nckd = dkd_terms(student, teacher, labels, temperature, reduction="none")
    p_gt = torch.softmax(teacher / temperature, 1).gather(1, labels[:, None])[:, 0]
    decomposed = (tckd + (1 - p_gt) * nckd).mean()
    assert decomposed.item() == pytest.approx(
        kd_loss(student, teacher, temperature).item(), rel=1e-5
    )
    # With a constant β (DKD's) the two differ: the decoupling is what DKD changes.
    assert (tckd + nckd).mean().item() != pytest.approx(decomposed.item(), rel=1e-2)


def test_dkd_gradient_is_finite_and_reaches_the_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    tckd, nckd = dkd_terms(student, teacher, torch.tensor([0, 1, 2, 4]))
    (tckd + nckd).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_dkd_terms_of_two_classes_have_no_non_target_part():
    # With C = 2 the rest is one class: p̂ = [1], NCKD = 0, and TCKD is the whole KD.
    teacher = logits_of([[0.75, 0.25]])
    tckd, nckd = dkd_terms(torch.zeros(1, 2), teacher, torch.tensor([0]), 1.0)
    assert nckd.item() == pytest.approx(0.0, abs=1e-7)
    assert tckd.item() == pytest.approx(kd_loss(torch.zeros(1, 2), teacher, 1.0).item(), rel=1e-5)


def test_dkd_rejects_bad_reduction_and_temperature():
    with pytest.raises(ValueError, match="reduction"):
        dkd_terms(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([0]), reduction="sum")
    with pytest.raises(ValueError, match="temperature"):
        dkd_terms(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([0]), temperature=0.0)


# --------------------------------------------------------------------------- DIST

# Two samples, three classes:
#   sample 1: P_t = [1/2, 1/3, 1/6], P_s = [1/6, 1/3, 1/2]  (reversed: ρ = −1)
#   sample 2: P_t = [1/4, 1/4, 1/2], P_s = [1/4, 1/2, 1/4]  (centred ±1/12, 1/6: ρ = −1/2)
# inter = 1 − mean(−1, −1/2) = 7/4.  Across the batch every class's column moves the other
# way in the student (class 0: 1/2 → 1/4 vs 1/6 → 1/4, …): ρ = −1 three times, intra = 2.
P_T = [[1 / 2, 1 / 3, 1 / 6], [1 / 4, 1 / 4, 1 / 2]]
P_S = [[1 / 6, 1 / 3, 1 / 2], [1 / 4, 1 / 2, 1 / 4]]


def test_pearson_correlation_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [0.0, 1.0, 0.0]])
    # affine → 1; reversed → −1; [2/3, −1/3, −1/3]·[−1/3, 2/3, −1/3] / (6/9) = −1/2.
    assert pearson_correlation(a, b).tolist() == pytest.approx([1.0, -1.0, -0.5], abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_dist_terms_by_hand(temperature):
    inter, intra = dist_terms(logits_of(P_S, temperature), logits_of(P_T, temperature), temperature)
    assert inter.item() == pytest.approx(temperature**2 * 7 / 4, rel=1e-5)
    assert intra.item() == pytest.approx(temperature**2 * 2.0, rel=1e-5)


def test_dist_correlates_probabilities_not_logits():
    # The Pearson correlation of the logits ln p of sample 1 is −0.9553…, not −1.
    z_s, z_t = logits_of(P_S[:1]), logits_of(P_T[:1])
    assert pearson_correlation(z_s, z_t).item() == pytest.approx(-0.95533, abs=1e-4)
    inter, _ = dist_terms(z_s, z_t, 1.0)
    assert inter.item() == pytest.approx(2.0, rel=1e-5)  # 1 − ρ with ρ = −1 on probabilities


def test_dist_inter_is_zero_for_a_student_that_ranks_like_the_teacher():
    # P_s = ½ P_t + ½ uniform: an affine map of every row, so ρ = 1 and inter = 0 although the
    # distributions differ (their KL is not 0): DIST matches relations, not values.
    p_t = torch.tensor(P_T)
    p_s = 0.5 * p_t + 0.5 / 3
    inter, _ = dist_terms(p_s.log(), p_t.log(), 1.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(p_s.log(), p_t.log(), 1.0).item() > 0.01


def test_dist_gradient_reaches_the_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    inter, intra = dist_terms(student, teacher)
    (inter + intra).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


# --------------------------------------------------------------------------- logit standardisation


def test_standardize_logits_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    # Row 1: mean 2, sample std √((1 + 0 + 1) / 2) = 1.  Row 2: mean 1, std √((1 + 1 + 4) / 2) = √3.
    # (The population std, divisor C = 3, would give √(2/3) and √2.)
    r3 = math.sqrt(3.0)
    expected = [[-1.0, 0.0, 1.0], [-1 / r3, -1 / r3, 2 / r3]]
    got = standardize_logits(z)
    assert got.tolist()[0] == pytest.approx(expected[0], abs=1e-6)
    assert got.tolist()[1] == pytest.approx(expected[1], abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logit_std_kd_loss_by_hand(temperature):
    # Teacher [10, 20, 30] → [−1, 0, 1]; student [3, 2, 1] → [1, 0, −1], the reverse. With
    # p = softmax([−1, 0, 1] / T), KL(p ‖ reversed p) = (2/T)(p_2 − p_0), and
    # p_2 − p_0 = 2 sinh(1/T) / (1 + 2 cosh(1/T)): T²·KL = 4T sinh(1/T) / (1 + 2 cosh(1/T)).
    teacher = torch.tensor([[10.0, 20.0, 30.0]])
    student = torch.tensor([[3.0, 2.0, 1.0]])
    t = temperature
    expected = 4 * t * math.sinh(1 / t) / (1 + 2 * math.cosh(1 / t))  # 1.150, 1.281
    got = logit_std_kd_loss(student, teacher, temperature).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # Plain KD on the raw logits gives another number (the teacher's range is 20, not 2).
    assert kd_loss(student, teacher, temperature).item() != pytest.approx(expected, rel=0.1)


def test_logit_std_kd_ignores_the_teacher_logit_offset_and_scale():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(6, 10, generator=generator)
    teacher = torch.randn(6, 10, generator=generator)
    rescaled = 5.0 * teacher + 3.0
    same = logit_std_kd_loss(student, rescaled, 2.0).item()
    assert same == pytest.approx(logit_std_kd_loss(student, teacher, 2.0).item(), rel=1e-5)
    assert kd_loss(student, rescaled, 2.0).item() != pytest.approx(
        kd_loss(student, teacher, 2.0).item(), rel=1e-2
    )


def test_logit_std_kd_loss_direction_is_teacher_to_student():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(3, 4, generator=generator)
    teacher = torch.randn(3, 4, generator=generator)
    z_s, z_t = standardize_logits(student), standardize_logits(teacher)
    got = logit_std_kd_loss(student, teacher, 2.0).item()
    assert got == pytest.approx(kd_loss(z_s, z_t, 2.0).item(), rel=1e-6)
    assert got != pytest.approx(kd_loss(z_t, z_s, 2.0).item(), rel=1e-3)


# --------------------------------------------------------------------------- the methods


class FixedLogits(nn.Module):
    """A stand-in network: the same logits row for every input (a learnable bias)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32).clone())

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def _step(name, teacher_row, labels, epoch=1, **params):
    student = FixedLogits([0.0, 0.0, 0.0])
    teacher = FixedLogits(teacher_row)
    method = get_method(name)({"student": student}, teacher=teacher, **params)
    seen = []

    def update(terms):
        seen.append({k: v.detach().clone() for k, v in terms["student"].items()})
        sum(terms["student"].values()).backward()

    x = torch.zeros(len(labels), 1)
    assert method.training_step(x, torch.tensor(labels), update, epoch=epoch) == {}
    assert len(seen) == 1
    assert teacher.logits.grad is None and student.logits.grad is not None
    return {k: v.item() for k, v in seen[0].items()}


@pytest.mark.parametrize(("epoch", "warm"), [(1, 0.05), (10, 0.5), (20, 1.0), (35, 1.0)])
def test_dkd_method_weights_and_warm_up(epoch, warm):
    # Defaults (mdistiller): CE 1, α = 1, β = 8, T = 4, warm-up 20 epochs.
    temperature = 4.0
    row = logits_of(TEACHER, temperature)[0]
    terms = _step("dkd", row, [0], epoch=epoch)
    assert set(terms) == {"ce", "tckd", "nckd"}
    assert terms["ce"] == pytest.approx(math.log(3.0), rel=1e-5)  # uniform student
    assert terms["tckd"] == pytest.approx(warm * 1.0 * 16 * TCKD_0, rel=1e-5)
    assert terms["nckd"] == pytest.approx(warm * 8.0 * 16 * NCKD_0, rel=1e-5)


def test_dkd_method_with_the_teacher_non_target_mass_as_beta_is_kd():
    # One sample, p_t,gt = 1/2: DKD with α = 1, β = 1/2 (warm-up over) is KD with α = 1.
    row = logits_of(TEACHER)[0]
    dkd = _step("dkd", row, [0], epoch=50, beta=0.5, temperature=1.0)
    kd = _step("kd", row, [0], alpha=1.0, temperature=1.0)
    assert dkd["tckd"] + dkd["nckd"] == pytest.approx(kd["kd"], rel=1e-5)
    assert kd["kd"] == pytest.approx(KD_0, rel=1e-5)


def test_dist_method_weights():
    row = logits_of(P_T[:1], 4.0)[0]
    terms = _step("dist", row, [0, 1])  # defaults β = γ = 2, T = 4, CE 1
    assert set(terms) == {"ce", "inter", "intra"}
    student, teacher = torch.zeros(2, 3), row.expand(2, -1)
    inter, intra = dist_terms(student, teacher, 4.0)
    assert terms["ce"] == pytest.approx(math.log(3.0), rel=1e-5)
    assert terms["inter"] == pytest.approx(2 * inter.item(), rel=1e-5)
    assert terms["intra"] == pytest.approx(2 * intra.item(), rel=1e-5, abs=1e-6)


def test_kd_ls_method_weights():
    teacher = torch.tensor([10.0, 20.0, 30.0])
    terms = _step("kd_ls", teacher, [2])  # defaults: CE 0.1, KD 9, base T = 2
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"] == pytest.approx(0.1 * math.log(3.0), rel=1e-5)
    # A uniform student standardises to zeros (0 / (0 + eps)): p̃_s uniform.
    p = torch.softmax(torch.tensor([-1.0, 0.0, 1.0]) / 2, 0)
    kl = (p * (p * 3).log()).sum().item()
    assert terms["kd"] == pytest.approx(9 * 4 * kl, rel=1e-5)
    assert cross_entropy(torch.zeros(1, 3), torch.tensor([2])).item() == pytest.approx(
        math.log(3.0), rel=1e-6
    )


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("dkd", {"beta": -1.0}),
        ("dkd", {"warmup": 0}),
        ("dkd", {"temperature": 0.0}),
        ("dist", {"gamma": -0.5}),
        ("dist", {"temperature": -1.0}),
        ("kd_ls", {"kd_weight": -9.0}),
        ("kd_ls", {"temperature": 0.0}),
    ],
)
def test_methods_reject_bad_parameters(name, params):
    with pytest.raises(ValueError):
        get_method(name)({"student": nn.Linear(2, 3)}, teacher=nn.Linear(2, 3), **params)


def test_dist_refuses_batches_of_one():
    method = get_method("dist")({"student": nn.Linear(2, 3)}, teacher=nn.Linear(2, 3))
    with pytest.raises(ValueError, match="at least 2"):
        method.check_batch_size(1)
    method.check_batch_size(2)


@pytest.mark.parametrize("name", ["dkd", "dist", "kd_ls"])
def test_methods_train_a_student_from_a_frozen_teacher(name, digits):
    config = kdlab.TrainConfig(
        epochs=1, batch_size=50, schedule="constant", device="cpu", precision="fp32", seed=0
    )
    teacher = kdlab.build_model("cnn_tiny", digits.num_classes, digits.in_channels)
    before = [p.clone() for p in teacher.parameters()]
    run = kdlab.run(name, ["cnn_tiny"], digits, teacher=teacher, config=config, progress=False)
    record = run.history[-1]
    assert "acc/student" in record and "acc/teacher" in record
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    terms = {k.split("/")[-1] for k in record if k.startswith("loss/student/")}
    assert terms == {"dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"}}.get(
        name, {"ce", "kd"}
    )
