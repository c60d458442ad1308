"""Table 7's baselines (METHODS.md §8): FitNet's hint, FSP's flow matrices and logit regression,
worked by hand where the plausible wrong choice (the wrong stage, no regressor, sum vs mean,
logits vs softmax, the FSP normalisation) gives another number; their schedules; gradients that
must not reach the teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlab
from kdlab.epoch import Updater
from kdlab.losses import flow_matrix, fsp_loss, hint_loss, kd_loss, logit_regression_loss
from kdlab.models import build_model
from kdlab.optim import build_optimizers


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


class Fake(nn.Module):
    """A network whose stage maps and logits are fixed tensors, each multiplied by a parameter
    of its own (all 1), so a test can see which of them a loss sends gradient to."""

    def __init__(self, maps, logits):
        super().__init__()
        self.maps = [m.clone() for m in maps]
        self.logits = logits.clone()
        self.scale = nn.Parameter(torch.ones(len(maps)))
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.stage_channels = [m.shape[1] for m in maps]

    def forward(self, x, return_features=False):
        maps = [self.scale[i] * m for i, m in enumerate(self.maps)]
        logits = self.logit_scale * self.logits
        return (logits, maps) if return_features else logits


def _capture(into: dict):
    """An ``update`` that backpropagates every term and records them and ``also_step``."""

    def update(terms, also_step=()):
        into.update({n: dict(d) for n, d in terms.items()})
        into["also_step"] = tuple(also_step)
        sum(v for d in terms.values() for v in d.values()).backward()

    return update


# --------------------------------------------------------------------------------- FitNet

# Two samples, 1×1 maps. The student has one channel at every stage; the teacher three.
STUDENT_MAPS = [t([[2.0], [2.0]]), t([[1.0], [3.0]]), t([[0.0], [4.0]])]
TEACHER_MAPS = [
    t([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
    t([[0.0, 2.0, -1.0], [1.0, 2.0, 1.0]]),
    t([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]]),
]
LOGITS_S = t([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
LOGITS_T = t([[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
Y = torch.tensor([2, 0])


def _maps(maps):
    return [m[:, :, None, None] for m in maps]  # B×C → B×C×1×1


def fitnet(**params):
    student = Fake(_maps(STUDENT_MAPS), LOGITS_S)
    teacher = Fake(_maps(TEACHER_MAPS), LOGITS_T)
    method = kdlab.get_method("fitnet")({"student": student}, teacher=teacher, **params)
    conv = method.auxiliary["regressors"]["student"][0]
    with torch.no_grad():
        conv.weight.fill_(1.0)  # r(f) = BN(f·[1, 1, 1]): the batch's ±1 on every channel
        conv.bias.zero_()
    return method.train(), student, teacher


def test_hint_by_hand_on_the_middle_stage_through_the_regressor():
    """Stage 2: the student's 1 and 3 become −1 and +1 on every teacher channel (the 1×1 conv
    then BatchNorm over the batch); against the teacher's (0, 2, −1) and (1, 2, 1) the squares
    are 1, 9, 0 and 0, 1, 0: mean 11/6. Without the regressor (1 and 3 broadcast) 15/6; the sum
    11; ½ the per-sample sum 2.75; stage 1 (BN of a constant: 0) 1, stage 3 (±1 again) 26."""
    method, _, _ = fitnet()
    terms = {}
    method.training_step(torch.zeros(2, 1), Y, _capture(terms))
    assert terms["student"]["hint"].item() == pytest.approx(100 * 11 / 6, abs=1e-2)
    assert terms["student"]["ce"].item() == pytest.approx(F.cross_entropy(LOGITS_S, Y).item())
    assert terms["also_step"] == ("regressors",)  # the regressor is stepped with the student


def test_hint_loss_mean_over_elements_and_pooling():
    regressed, target = torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, requires_grad=True)
    regressed[:, :, :2, :2] = 5.0  # pooled to 2×2: one position is 5, the others 1
    loss = hint_loss(regressed.requires_grad_(True), target)
    assert loss.item() == pytest.approx((25 + 3 * 1) / 4)
    loss.backward()
    assert target.grad is None and regressed.grad is not None  # sg f_t


def test_fitnet_gradients_reach_the_hinted_stage_and_the_regressor_not_the_teacher():
    method, student, teacher = fitnet(stages=2, hint_epochs=3)
    teacher.requires_grad_(True)  # even a teacher that could learn gets nothing
    terms = {}
    method.training_step(torch.zeros(2, 1), Y, _capture(terms), epoch=3)
    assert list(terms["student"]) == ["hint"]  # the first of two stages: the hint alone
    assert student.scale.grad.tolist()[0] == 0 and student.scale.grad[1] != 0
    assert student.scale.grad[2] == 0 and student.logit_scale.grad is None
    assert method.auxiliary["regressors"]["student"][0].weight.grad.abs().sum() > 0
    assert teacher.scale.grad is None and teacher.logit_scale.grad is None


def test_fitnets_second_stage_is_kd_without_the_hint():
    method, _, _ = fitnet(stages=2, hint_epochs=3, alpha=0.9, temperature=4.0)
    terms = {}
    method.training_step(torch.zeros(2, 1), Y, _capture(terms), epoch=4)
    assert set(terms["student"]) == {"ce", "kd"}
    assert terms["student"]["kd"].item() == pytest.approx(
        0.9 * kd_loss(LOGITS_S, LOGITS_T, 4.0).item(), rel=1e-6
    )
    assert terms["student"]["ce"].item() == pytest.approx(
        0.1 * F.cross_entropy(LOGITS_S, Y).item(), rel=1e-6
    )


def test_fitnet_defaults_are_repdistillers_one_stage():
    p = kdlab.get_method("fitnet").Params()
    assert (p.beta, p.hint_stage, p.stages, p.ce_weight) == (100.0, 2, 1, 1.0)
    assert not p.regressor_relu and p.regressor_lr == 0.05


def test_fitnet_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="hint_stage=4, but teacher has 3 stages: choose 1…3"):
        fitnet(hint_stage=4)
    with pytest.raises(ValueError, match="stages must be 1"):
        fitnet(stages=3)


def test_the_regressor_is_stepped_by_the_loop(digits):
    """One real step through the loop's optimizers: the regressor moves, the teacher does not."""
    students = {"student": build_model("cnn_tiny", 10, 1)}
    teacher = build_model("cnn_small", 10, 1)
    before = [p.clone() for p in teacher.parameters()]
    method = kdlab.get_method("fitnet")(students, teacher=teacher)
    assert [type(m) for m in method.auxiliary["regressors"]["student"]] == [
        nn.Conv2d,
        nn.BatchNorm2d,
    ]
    config = kdlab.TrainConfig(device="cpu", lr=0.05)
    optimizers, _ = build_optimizers(method, config, torch.device("cpu"))
    weight = method.auxiliary["regressors"]["student"][0].weight
    start = weight.detach().clone()
    x, y = digits.train_images[:16].float() / 16, digits.train_labels[:16]
    method.train().training_step(x, y, Updater(optimizers, torch.amp.GradScaler(enabled=False)))
    assert not torch.equal(weight.detach(), start)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


# ------------------------------------------------------------------------------------ FSP


def test_flow_matrix_by_hand_and_the_pooling_of_the_larger_map():
    """G = (1/(h·w)) Σ_s F1[s] F2[s]ᵀ: channels (1, 2, 3, 4) and (0, 1, 0, 1) against
    (1, 1, 2, 2) over four positions give 17/4 and 3/4 (17 and 3 without the 1/(h·w))."""
    f1 = t([[1, 2], [3, 4]])[None, None].repeat(1, 2, 1, 1)
    f1[0, 1] = t([[0, 1], [0, 1]])
    f2 = t([[1, 1], [2, 2]])[None, None]
    assert flow_matrix(f1, f2)[0].tolist() == [[4.25], [0.75]]
    big = f1.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 4×4, each 2×2 constant
    assert flow_matrix(big, f2)[0].tolist() == [[4.25], [0.75]]  # pooled to 2×2 first


STUDENT_FSP = [
    t([[1, 2], [3, 4]])[None, None],
    torch.stack([t([[1, 1], [1, 1]]), t([[0, 2], [0, 2]])])[None],
    t([[2]])[None, None],
]
TEACHER_FSP = [
    t([[1, 1], [1, 1]])[None, None],
    torch.stack([t([[2, 0], [0, 2]]), t([[1, 1], [1, 1]])])[None],
    t([[1]])[None, None],
]


def test_fsp_loss_by_hand():
    """Stages 1-2: G_s = (2.5, 3), G_t = (1, 1); stages 2-3 (stage 2 pooled to 1×1): G_s = (2, 2),
    G_t = (1, 1). Mean of squares per pair 3.125 and 1, mean over pairs 2.0625. The sum over the
    pairs, or the entries' sum, gives 4.125; no 1/(h·w), 25.5."""
    assert fsp_loss(STUDENT_FSP, TEACHER_FSP).item() == pytest.approx(2.0625)


def test_fsp_loss_sends_no_gradient_to_the_teacher():
    student = [m.clone().requires_grad_(True) for m in STUDENT_FSP]
    teacher = [m.clone().requires_grad_(True) for m in TEACHER_FSP]
    fsp_loss(student, teacher).backward()
    assert all(m.grad is None for m in teacher) and all(m.grad is not None for m in student)


def fsp(**params):
    student = Fake(STUDENT_FSP, LOGITS_S[:1])
    teacher = Fake(TEACHER_FSP, LOGITS_T[:1])
    return kdlab.get_method("fsp")({"student": student}, teacher=teacher, **params), teacher


def test_fsp_schedules():
    method, teacher = fsp(fsp_epochs=2, beta=3.0)
    teacher.requires_grad_(True)
    x, y = torch.zeros(1, 1), Y[:1]
    first, second = {}, {}
    method.train().training_step(x, y, _capture(first), epoch=2)
    method.training_step(x, y, _capture(second), epoch=3)
    assert list(first["student"]) == ["fsp"] and first["student"]["fsp"].item() == 3 * 2.0625
    assert list(second["student"]) == ["ce"]  # the main task alone
    assert teacher.scale.grad is None
    one, _ = fsp(stages=1)
    both = {}
    one.train().training_step(x, y, _capture(both), epoch=1)
    assert set(both["student"]) == {"ce", "fsp"}


def test_fsp_needs_the_teachers_channel_counts():
    students = {"student": build_model("resnet20", 10)}
    with pytest.raises(ValueError, match=r"\[16, 32, 64\]\) must be the teacher's \(\[64, 128"):
        kdlab.get_method("fsp")(students, teacher=build_model("resnet164", 10))
    kdlab.get_method("fsp")(students, teacher=build_model("resnet110", 10))  # same widths


def test_fsp_defaults_are_the_two_stage_initialisation():
    p = kdlab.get_method("fsp").Params()
    assert (p.stages, p.fsp_epochs, p.beta, p.ce_weight) == (2, 30, 1.0, 1.0)


# ------------------------------------------------------------------------- logit regression


def test_logit_regression_by_hand():
    """Differences (0, 2, 0) and (−1, −1, −1): squares summed per sample 4 and 3, halved and
    averaged 1.75. On softmax outputs the second sample adds nothing (a shift); the mean over
    elements gives 7/6, no ½ 3.5."""
    assert logit_regression_loss(LOGITS_S, LOGITS_T).item() == pytest.approx(1.75)


def test_logit_regression_detaches_the_teacher_and_weights_its_terms():
    z_s, z_t = LOGITS_S.clone().requires_grad_(True), LOGITS_T.clone().requires_grad_(True)
    logit_regression_loss(z_s, z_t).backward()
    assert z_t.grad is None and torch.allclose(z_s.grad, (LOGITS_S - LOGITS_T) / 2)
    student, teacher = Fake(_maps(STUDENT_MAPS), LOGITS_S), Fake(_maps(TEACHER_MAPS), LOGITS_T)
    method = kdlab.get_method("logit_regression")(
        {"student": student}, teacher=teacher, weight=2.0, ce_weight=0.5
    )
    teacher.requires_grad_(True)
    terms = {}
    method.train().training_step(torch.zeros(2, 1), Y, _capture(terms))
    assert terms["student"]["l2"].item() == pytest.approx(3.5)
    ce = F.cross_entropy(LOGITS_S, Y).item()
    assert terms["student"]["ce"].item() == pytest.approx(0.5 * ce)
    assert teacher.logit_scale.grad is None and student.logit_scale.grad is not None


def test_logit_regression_defaults_are_snn_mimics():
    p = kdlab.get_method("logit_regression").Params()
    assert (p.weight, p.ce_weight) == (1.0, 0.0)


# ------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("method", "params"),
    [("fitnet", {}), ("fitnet", {"stages": 2, "hint_epochs": 1}), ("fsp", {"fsp_epochs": 1}),
     ("logit_regression", {"ce_weight": 1.0})],
)  # fmt: skip
def test_each_method_trains_through_the_loop(digits, fast_config, method, params):
    teacher = kdlab.run("independent", ["cnn_tiny"], digits, config=fast_config, progress=False)
    net = teacher.method.networks["net1"]
    run = kdlab.run(method, ["cnn_tiny"], digits, teacher=net, config=fast_config,
                    progress=False, **params)  # fmt: skip
    last = run.history[-1]
    assert (
        math.isfinite(last["acc/student"])
        and last["acc/teacher"] == teacher.history[-1]["acc/net1"]
    )
    assert all(math.isfinite(v) for k, v in last.items() if k.startswith("loss/"))


def test_a_resumed_fitnet_run_equals_an_uninterrupted_one(digits, tmp_path):
    """The regressor, its optimizer and its schedule are in the checkpoint: stopped after one
    epoch of its two-stage schedule and resumed, FitNet ends where the whole run ends."""
    config = kdlab.TrainConfig(epochs=3, batch_size=50, lr=0.05, schedule="step",
                               milestones=(2,), device="cpu", precision="fp32")  # fmt: skip
    torch.manual_seed(0)
    teacher = build_model("cnn_small", digits.num_classes, digits.in_channels)
    kwargs = dict(teacher=teacher, config=config, progress=False, stages=2, hint_epochs=1)
    whole = kdlab.run("fitnet", ["cnn_tiny"], digits, out=tmp_path / "whole", **kwargs)
    kdlab.run("fitnet", ["cnn_tiny"], digits, out=tmp_path / "part", stop_after=1, **kwargs)
    torch.manual_seed(1234)
    resumed = kdlab.run("fitnet", ["cnn_tiny"], digits, out=tmp_path / "part", resume=True,
                        **kwargs)  # fmt: skip

    def plain(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert plain(resumed.history) == plain(whole.history)
    assert "loss/student/hint" in whole.history[0] and "loss/student/kd" in whole.history[1]
    a = whole.method.auxiliary["regressors"].state_dict()
    b = resumed.method.auxiliary["regressors"].state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert state["optimizers"]["regressors"]["param_groups"][0]["lr"] == pytest.approx(0.005)
