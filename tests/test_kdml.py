"""Tests for the ``kdml`` method: one teacher and peer students trained together (METHODS.md §6)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import kdlab
from kdlab.cli import main
from kdlab.data import DeviceLoader
from kdlab.methods.kdml import SETUPS, TeacherAndPeers, feature_mse
from kdlab.models import build_model
from kdlab.tasks.classification import evaluate


class FixedLogits(nn.Module):
    """A "network" whose output is a fixed logit tensor (B×C), trainable so gradients show."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, x, return_features=False):
        return self.z * 1.0


def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _step_terms(method, x, y):
    """Run one training step and return what it handed to ``update`` (it must call it once)."""
    calls = []
    method.training_step(x, y, lambda terms, also_step=(): calls.append(terms))
    assert len(calls) == 1, "every network must be updated by one update call"
    return calls[0]


def _method(teacher, students, **params):
    nets = {f"student{i}": FixedLogits(z) for i, z in enumerate(students, 1)}
    return TeacherAndPeers(nets, teacher=FixedLogits(teacher), **params)


# -- the formula on fixed logits ------------------------------------------------------------------


def test_student_loss_matches_hand_worked_example():
    # One sample, 3 classes, y = 1, T = 2, α = 0.5, β = 0.25, N = 2. By hand:
    # CE = −log softmax(z_s1)[1] = 0.680270
    # kd = α·T²·KL(p_t^T ‖ p_s1^T) = 0.5·4·0.190634 = 0.381268
    # ml = β·KL(p_s2 ‖ p_s1) = 0.25·0.387030 = 0.096757
    zs = [[[0.5, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]
    method = _method([[2.0, 0.0, -1.0]], zs, alpha=0.5, beta=0.25, temperature=2.0)
    terms = _step_terms(method, torch.zeros(1, 1, 8, 8), torch.tensor([1]))
    s1 = terms["student1"]
    assert set(s1) == {"ce", "kd", "ml"}
    assert s1["ce"].item() == pytest.approx(0.680270, abs=1e-5)
    assert s1["kd"].item() == pytest.approx(0.381268, abs=1e-5)
    assert s1["ml"].item() == pytest.approx(0.096757, abs=1e-5)
    assert set(terms["teacher"]) == {"ce"}  # teacher_learns_from_students is off by default


def test_student_loss_matches_formula_with_three_students_and_a_batch():
    zt = [[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -2.0, 1.5]]
    zs = [
        [[0.1, 0.2, 0.3, 0.4], [2.0, -1.0, 0.0, 0.5]],
        [[-1.0, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]],
        [[0.7, -0.7, 1.2, -0.3], [1.0, 2.0, -1.0, 0.0]],
    ]
    y = [2, 0]
    alpha, beta, t = 0.8, 1.5, 3.0
    method = _method(zt, zs, alpha=alpha, beta=beta, temperature=t)
    terms = _step_terms(method, torch.zeros(2, 1, 8, 8), torch.tensor(y))
    for i in range(3):
        ce = kd = ml = 0.0
        for b in range(2):  # batchmean: sum over classes, mean over the batch
            ce += -math.log(_softmax(zs[i][b])[y[b]]) / 2
            kd += alpha * t**2 * _kl(_softmax(zt[b], t), _softmax(zs[i][b], t)) / 2
            peers = [j for j in range(3) if j != i]
            ml += beta * sum(_kl(_softmax(zs[j][b]), _softmax(zs[i][b])) for j in peers) / 2 / 2
        got = terms[f"student{i + 1}"]
        assert got["ce"].item() == pytest.approx(ce, rel=1e-5)
        assert got["kd"].item() == pytest.approx(kd, rel=1e-5)
        assert got["ml"].item() == pytest.approx(ml, rel=1e-5)  # 1/(N − 1) = ½ of the sum


def test_teacher_back_term_matches_formula():
    zt, zs = [[2.0, 0.0, -1.0]], [[[0.5, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]
    method = _method(zt, zs, teacher_learns_from_students=True, lam_back=0.5)
    terms = _step_terms(method, torch.zeros(1, 1, 8, 8), torch.tensor([0]))
    back = 0.5 * sum(_kl(_softmax(s[0]), _softmax(zt[0])) for s in zs) / 2
    assert terms["teacher"]["ce"].item() == pytest.approx(-math.log(_softmax(zt[0])[0]), rel=1e-6)
    assert terms["teacher"]["back"].item() == pytest.approx(back, rel=1e-5)


# -- where gradient flows -------------------------------------------------------------------------


def _grads(total, method):
    params = {name: net.z for name, net in method.evaluated().items()}
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True, retain_graph=True)
    return {name: g for name, g in zip(params, grads, strict=True)}


@pytest.mark.parametrize("learns_back", [False, True])
def test_no_gradient_from_student_terms_reaches_the_teacher(learns_back):
    method = _method(
        [[2.0, 0.0, -1.0]],
        [[[0.5, 1.0, 0.0]], [[0.0, 0.0, 1.0]]],
        teacher_learns_from_students=learns_back,
    )
    terms = _step_terms(method, torch.zeros(1, 1, 8, 8), torch.tensor([1]))
    student_total = sum(v for name in ("student1", "student2") for v in terms[name].values())
    grads = _grads(student_total, method)
    assert grads["teacher"] is None
    assert grads["student1"].abs().sum() > 0 and grads["student2"].abs().sum() > 0
    # Student 1's peer term trains student 1 only, not student 2.
    ml_grads = _grads(terms["student1"]["ml"], method)
    assert ml_grads["student2"] is None and ml_grads["student1"].abs().sum() > 0
    if learns_back:
        back = _grads(terms["teacher"]["back"], method)
        assert back["teacher"].abs().sum() > 0  # the teacher does learn from the students …
        assert back["student1"] is None and back["student2"] is None  # … and they stay detached


# -- the ensemble is the students', by mean softmax ----------------------------------------------


def test_ensemble_is_mean_softmax_of_students_not_majority_vote_nor_teacher():
    log = lambda probs: [[math.log(p) for p in probs]]  # noqa: E731
    # Students 1 and 2 lean to class 0, student 3 is sure of class 1: the vote says 0, the mean
    # of the softmax outputs (0.335, 0.53, 0.135) says 1, the true label. A confident teacher
    # (class 0) would flip the mean to class 0 if it were wrongly counted in the ensemble.
    method = TeacherAndPeers(
        {
            "student1": FixedLogits(log([0.5, 0.3, 0.2])),
            "student2": FixedLogits(log([0.5, 0.3, 0.2])),
            "student3": FixedLogits(log([0.005, 0.99, 0.005])),
        },
        teacher=FixedLogits(log([0.999, 0.0005, 0.0005])),
    )
    assert method.ensemble_members() == ["student1", "student2", "student3"]
    batches = [(torch.zeros(1, 1, 8, 8), torch.tensor([1]))]
    metrics = evaluate(method.evaluated(), batches, method.ensemble_members())
    assert metrics["acc/student1"] == 0 and metrics["acc/student2"] == 0
    assert metrics["acc/student3"] == 100 and metrics["acc/teacher"] == 0
    assert metrics["acc/ensemble"] == 100  # a majority vote would give 0, with the teacher 0
    assert not any("teacher" in key for key in metrics if key.startswith(("agree/", "js/")))
    assert metrics["agree/student1-student2"] == 100 and metrics["agree/student1-student3"] == 0


# -- validation, before any training --------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"alpha": -0.1}, "alpha must be ≥ 0"),
        ({"beta": -1.0}, "beta must be ≥ 0"),
        ({"lam_back": -1.0}, "lam_back must be ≥ 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -2.0}, "temperature must be > 0"),
        ({"styles": "mixed"}, "unknown styles"),
        ({"gamma": 1.0}, "unknown parameter 'gamma'"),
        ({"use_teacher": False, "teacher_learns_from_students": True}, "trained online"),
        ({"pretrained_teacher": True, "teacher_learns_from_students": True}, "trained online"),
        ({"pretrained_teacher": True, "use_teacher": False}, "needs use_teacher=True"),
    ],
)
def test_bad_parameters_raise_one_line_errors(params, message):
    with pytest.raises(ValueError, match=message) as info:
        _method([[0.0, 1.0]], [[[0.0, 1.0]], [[1.0, 0.0]]], **params)
    assert "\n" not in str(info.value)


def test_one_student_is_an_error_before_training(digits, fast_config):
    with pytest.raises(ValueError, match="N ≥ 2 students, got 1"):
        kdlab.run("kdml", "cnn_tiny", digits, teacher="cnn_tiny", config=fast_config)
    with pytest.raises(ValueError, match="needs a teacher"):
        TeacherAndPeers({"student1": FixedLogits([[0.0]]), "student2": FixedLogits([[0.0]])})


def test_cli_reports_bad_parameter_on_one_line(tmp_path, capsys):
    code = main(
        ["train", "--method", "kdml", "--teacher", "cnn_tiny", "--models", "cnn_tiny,cnn_tiny",
         "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "bad"),
         "--set", "temperature=0"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "kdlab: error: temperature must be > 0, got 0.0"
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


# -- one forward per network per batch ------------------------------------------------------------


@pytest.mark.parametrize("styles", ["same", "different"])
def test_every_network_is_forwarded_once_per_batch(styles):
    teacher = build_model("cnn_small", 10, 1)
    students = {f"student{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2, 3)}
    method = TeacherAndPeers(students, teacher=teacher, styles=styles)
    counts = dict.fromkeys(method.evaluated(), 0)
    for name, net in method.evaluated().items():
        net.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
    _step_terms(method, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert counts == {"teacher": 1, "student1": 1, "student2": 1, "student3": 1}


# -- the learning-styles variant ------------------------------------------------------------------


def test_different_styles_student2_learns_teacher_features_through_adapter():
    torch.manual_seed(0)
    teacher = build_model("cnn_small", 10, 1)  # last stage: 64 channels
    students = {"student1": build_model("cnn_tiny", 10, 1), "student2": build_model("cnn", 10, 1)}
    method = TeacherAndPeers(students, teacher=teacher, styles="different", alpha=2.0, beta=0.5)
    adapters = method.auxiliary["adapters"]
    assert set(adapters) == {"student2_to_teacher", "student1_to_student2", "student2_to_student1"}
    assert adapters["student2_to_teacher"].weight.shape == (64, 128, 1, 1)
    assert set(method.auxiliary_optimizers()) == {"adapters"}
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    terms = _step_terms(method, x, y)
    assert "adapters" not in terms  # no empty terms: the loop steps them through also_step
    assert set(terms["student1"]) == set(terms["student2"]) == {"ce", "kd", "ml", "feat"}
    # Student 2's teacher term is α · MSE(A(f_s2), sg f_t), worked out again here.
    with torch.no_grad():
        _, f_t = teacher(x, return_features=True)
        _, f_2 = students["student2"](x, return_features=True)
        expected = 2.0 * ((adapters["student2_to_teacher"](f_2[-1]) - f_t[-1]) ** 2).mean()
        z_t, z_1 = teacher(x), students["student1"](x)
        expected_kd1 = 2.0 * 16 * kdlab.losses.kl_divergence(z_t, z_1, 4.0)
    assert terms["student2"]["kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["student1"]["kd"].item() == pytest.approx(expected_kd1.item(), rel=1e-5)
    # Student terms reach the students and the adapters, never the teacher.
    student_total = sum(v for n in ("student1", "student2") for v in terms[n].values())
    student_total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert adapters["student2_to_teacher"].weight.grad.abs().sum() > 0
    assert adapters["student1_to_student2"].weight.grad.abs().sum() > 0


def test_feature_mse_pools_to_the_smaller_map_and_detaches_the_target():
    source = torch.ones(2, 3, 4, 4, requires_grad=True)
    target = torch.zeros(2, 3, 2, 2, requires_grad=True)
    loss = feature_mse(source, target)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert target.grad is None and source.grad.abs().sum() > 0


# -- the three set-ups train, through run() and the command line ----------------------------------


def test_setups_give_the_papers_three_losses():
    # The same teacher and students under each set-up: KD + ML has both terms, KD only no peer
    # term, ML only neither a teacher nor a teacher's term.
    zt, zs = [[2.0, 0.0, -1.0]], [[[0.5, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]
    seen = {}
    for setup, overrides in SETUPS.items():
        nets = {f"student{i}": FixedLogits(z) for i, z in enumerate(zs, 1)}
        method = TeacherAndPeers(nets, teacher=FixedLogits(zt), **overrides)
        terms = _step_terms(method, torch.zeros(1, 1, 8, 8), torch.tensor([1]))
        seen[setup] = {name: {k: v.item() for k, v in t.items()} for name, t in terms.items()}
    assert set(seen) == {"KD + ML", "KD only", "ML only"}
    both, kd_only, ml_only = seen["KD + ML"], seen["KD only"], seen["ML only"]
    assert both["student1"]["kd"] > 0 and both["student1"]["ml"] > 0 and "teacher" in both
    assert kd_only["student1"]["kd"] == pytest.approx(both["student1"]["kd"])
    assert kd_only["student1"]["ml"] == 0 and "teacher" in kd_only
    assert set(ml_only) == {"student1", "student2"} and "kd" not in ml_only["student1"]
    assert ml_only["student1"]["ml"] == pytest.approx(both["student1"]["ml"])


def _config(epochs=3):
    return kdlab.TrainConfig(epochs=epochs, batch_size=25, lr=0.05, schedule="cosine", device="cpu")


def test_ml_only_has_no_teacher_and_learns(digits):
    result = kdlab.run(
        "kdml", "cnn_tiny,cnn_tiny", digits, teacher="cnn_small", config=_config(),
        progress=False, use_teacher=False,
    )  # fmt: skip
    assert result.method.teacher is None
    assert set(result.summary["networks"]) == {"student1", "student2", "ensemble"}
    last = result.history[-1]
    assert not any(key.startswith("loss/teacher") or key.endswith("/kd") for key in last)
    assert last["loss/student1/ml"] > 0
    assert result.history.final("ensemble") > 30  # chance is 10 %


def test_kd_only_trains_the_teacher_and_has_a_zero_peer_term(digits):
    result = kdlab.run(
        "kdml", "cnn_tiny,cnn_tiny", digits, teacher="cnn_small", config=_config(),
        progress=False, beta=0.0,
    )  # fmt: skip
    assert set(result.summary["networks"]) == {"teacher", "student1", "student2", "ensemble"}
    last = result.history[-1]
    assert last["loss/student1/ml"] == 0.0 and last["loss/student2/ml"] == 0.0
    assert last["loss/student1/kd"] > 0 and last["loss/teacher/ce"] > 0
    assert result.history.final("teacher") > 30 and result.history.final("ensemble") > 30


def test_pretrained_teacher_is_frozen_and_still_evaluated(digits):
    teacher = kdlab.run(
        "independent", "cnn_small", digits, config=_config(2), progress=False
    ).method.networks["net1"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = kdlab.run(
        "kdml", "cnn_tiny,cnn_tiny", digits, teacher=teacher, config=_config(1),
        progress=False, pretrained_teacher=True,
    )  # fmt: skip
    assert "teacher" in result.method.frozen and "teacher" not in result.method.networks
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert "teacher" in result.summary["networks"]
    assert "loss/teacher/ce" not in result.history[-1]


def test_different_styles_trains_end_to_end(digits):
    result = kdlab.run(
        "kdml", "cnn_tiny,cnn_small", digits, teacher="cnn", config=_config(),
        progress=False, styles="different",
    )  # fmt: skip
    last = result.history[-1]
    assert last["loss/student2/kd"] > 0 and last["loss/student1/feat"] > 0
    assert result.history.final("ensemble") > 30


def test_cli_trains_teacher_and_students_together(tmp_path):
    out = tmp_path / "z"
    code = main(
        ["train", "--method", "kdml", "--teacher", "cnn_small", "--models", "cnn_tiny,cnn_tiny",
         "--dataset", "digits", "--train-size", "200", "--epochs", "2", "--batch-size", "50",
         "--seed", "0", "--device", "cpu", "--out", str(out), "--no-progress",
         "--precision", "fp32"]  # the reloaded teacher below is evaluated in fp32 too
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["networks"]) == ["teacher", "student1", "student2", "ensemble"]
    assert summary["networks"]["teacher"]["arch"] == "cnn_small"
    assert list(summary["agreement"]) == ["agree/student1-student2", "js/student1-student2"]
    assert (out / "networks" / "teacher.pt").exists()
    # The saved teacher is the trained one: reloaded, it gives the accuracy the summary reports.
    dataset = kdlab.load_dataset("digits", train_size=200)
    teacher = kdlab.load_network(out / "networks" / "teacher.pt")
    acc = evaluate({"t": teacher}, DeviceLoader.test(dataset, 1024, "cpu"))["acc/t"]
    assert acc == pytest.approx(summary["networks"]["teacher"]["final_acc"])
