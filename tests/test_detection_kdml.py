"""KD + ML for detectors (kdml_det, METHODS.md §10): the per-region terms by hand, the regions
every network classifies, gradients that must not flow, the set-ups, and a resumed run."""

from __future__ import annotations

import math

import pytest
import torch

import kdlab
from kdlab.data.boxes import DetectionLoader
from kdlab.methods.kdml_detection import DETECTOR_LOSSES, region_terms
from kdlab.models import build_model
from kdlab.models.detection import box_head_logits

TEACHER, STUDENT = "fasterrcnn_tiny_resnet", "fasterrcnn_tiny_cnn"


@pytest.fixture(scope="module")
def data():
    return kdlab.load_dataset("synthetic_polyps", train=8, test=4)


@pytest.fixture(scope="module")
def batch(data):
    return next(iter(DetectionLoader.train(data, 2, "cpu", seed=0)))


def _method(students=2, **params):
    torch.manual_seed(0)
    nets = {f"student{i}": build_model(STUDENT, 2) for i in range(1, students + 1)}
    teacher = build_model(TEACHER, 2)
    return kdlab.get_method("kdml_det")(nets, teacher=teacher, **params).train()


# --------------------------------------------------------------------------- the terms by hand
def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_region_terms_on_a_hand_worked_example():
    """Two regions, two classes (background, polyp), a teacher and two peers (N = 3 students):
    kd = α·T²·mean_r KL(p_t^T ‖ p_s^T), ml = β·½·Σ_j mean_r KL(p_sj ‖ p_s) at T = 1."""
    z_s = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    z_t = torch.tensor([[1.0, -1.0], [0.0, 3.0]], requires_grad=True)
    z_p = [torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True),
           torch.tensor([[3.0, 0.0], [0.0, 2.0]], requires_grad=True)]  # fmt: skip
    alpha, beta, t = 0.5, 2.0, 2.0
    terms = region_terms(z_s, z_t, z_p, alpha, beta, t)
    rows = range(2)
    kd = (
        alpha
        * t**2
        * sum(_kl(_softmax(z_t[r].tolist(), t), _softmax(z_s[r].tolist(), t)) for r in rows)
        / 2
    )
    ml = beta * sum(
        sum(_kl(_softmax(p[r].tolist()), _softmax(z_s[r].tolist())) for r in rows) / 2
        for p in z_p) / 2  # fmt: skip
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert terms["ml"].item() == pytest.approx(ml, rel=1e-6)
    (terms["kd"] + terms["ml"]).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None and all(p.grad is None for p in z_p)  # sg: targets are detached
    assert set(region_terms(z_s, None, z_p[:1], alpha, beta, t)) == {"ml"}  # ML only: no kd


# --------------------------------------------------------------------------- shared regions
def test_every_network_classifies_the_students_own_regions(batch):
    method = _method()
    x, y = batch
    torch.manual_seed(1)
    passes, logits, deltas = method.forward_regions(x, y)
    assert set(logits) == {"teacher", "student1", "student2"}
    assert set(deltas) == {"teacher", "student1", "student2"}
    for owner in ("student1", "student2"):
        regions = passes[owner].proposals
        assert sum(map(len, regions)) == len(logits["teacher"][owner]) == 2 * 32
        for name in ("teacher", "student1", "student2"):
            net, own = method.networks[name], passes[name]
            with torch.no_grad():
                expected, _ = box_head_logits(net, own.features, own.image_sizes, regions)
            assert torch.allclose(logits[name][owner], expected, atol=1e-5), (name, owner)
    # the teacher's own regions (its loss) are not the students'
    assert not torch.equal(passes["teacher"].proposals[0], passes["student1"].proposals[0])
    assert logits["student1"]["student1"].requires_grad
    assert not logits["teacher"]["student1"].requires_grad  # soft targets carry no graph


def test_detector_losses_are_torchvisions_and_are_logged_by_name(batch):
    method = _method()
    x, y = batch
    logged = {}

    def update(terms, also_step=()):
        logged.update(terms)

    torch.manual_seed(2)
    method.training_step(x, y, update)
    assert list(logged["teacher"]) == list(DETECTOR_LOSSES)
    assert list(logged["student1"]) == [*DETECTOR_LOSSES, "kd", "ml"]
    # the classifier loss is CE over the sampled regions, as torchvision computes it
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    torch.manual_seed(2)
    passes, logits, deltas = method.forward_regions(x, y)
    own = passes["student1"]
    ce, box = fastrcnn_loss(logits["student1"]["student1"], deltas["student1"], own.labels,
                            own.regression_targets)  # fmt: skip
    torch.manual_seed(2)
    method.training_step(x, y, update)
    assert logged["student1"]["loss_classifier"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert logged["student1"]["loss_box_reg"].item() == pytest.approx(box.item(), rel=1e-5)


# --------------------------------------------------------------------------- gradients
def _gradients(method, batch):
    """Each network's terms' gradient on every network's parameters: ``flows[a][b]`` is True
    when a term of network a reaches a parameter of network b."""
    x, y = batch
    caught = {}
    torch.manual_seed(3)
    method.training_step(x, y, lambda terms, also_step=(): caught.update(terms))
    everyone = method.evaluated()
    flows = {}
    for owner, terms in caught.items():
        total = sum(terms.values())
        flows[owner] = {}
        for name, net in everyone.items():
            params = [p for p in net.parameters() if p.requires_grad]
            grads = (
                torch.autograd.grad(total, params, allow_unused=True, retain_graph=True)
                if params
                else []
            )
            flows[owner][name] = any(g is not None and g.abs().sum() > 0 for g in grads)
    return flows, caught


def test_no_gradient_crosses_networks(batch):
    flows, caught = _gradients(_method(), batch)
    assert flows["teacher"] == {"teacher": True, "student1": False, "student2": False}
    assert flows["student1"] == {"teacher": False, "student1": True, "student2": False}
    assert flows["student2"] == {"teacher": False, "student1": False, "student2": True}
    assert caught["student1"]["kd"].item() > 0 and caught["student1"]["ml"].item() > 0


def test_frozen_teacher_and_the_settings(batch):
    frozen = _method(pretrained_teacher=True)
    assert "teacher" in frozen.frozen and "teacher" not in frozen.networks
    flows, caught = _gradients(frozen, batch)
    assert "teacher" not in caught and not flows["student1"]["teacher"]
    assert caught["student1"]["kd"].item() > 0
    assert not frozen.frozen["teacher"].training  # eval mode while the students train
    _, kd_only = _gradients(_method(beta=0.0), batch)
    assert kd_only["student1"]["ml"].item() == 0.0
    ml_only = _method(use_teacher=False)
    assert list(ml_only.evaluated()) == ["student1", "student2"]
    _, caught = _gradients(ml_only, batch)
    assert "kd" not in caught["student1"] and "teacher" not in caught
    assert ml_only.ensemble_members() == ["student1", "student2"]
    with pytest.raises(ValueError, match="N ≥ 2 students"):
        kdlab.get_method("kdml_det")({"student1": build_model(STUDENT, 2)},
                                     teacher=build_model(TEACHER, 2))  # fmt: skip


def test_the_region_kl_matches_the_hand_formula_on_a_real_batch(batch):
    """The student's kd term equals α·T²·KL computed by hand (softmax, log) from the teacher's
    and the student's logits on the student's regions."""
    method = _method(students=3, alpha=0.7, beta=1.5, temperature=3.0)
    x, y = batch
    torch.manual_seed(4)
    passes, logits, _ = method.forward_regions(x, y)
    caught = {}
    torch.manual_seed(4)
    method.training_step(x, y, lambda terms, also_step=(): caught.update(terms))
    z, t = logits["student2"]["student2"].detach(), logits["teacher"]["student2"]
    p_t, p_s = torch.softmax(t / 3, 1), torch.softmax(z / 3, 1)
    kd = 0.7 * 9 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert caught["student2"]["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    peers = [logits[o]["student2"] for o in ("student1", "student3")]
    ml = 1.5 * sum((torch.softmax(q, 1) * (torch.log_softmax(q, 1) - torch.log_softmax(z, 1)))
                   .sum(1).mean() for q in peers) / 2  # fmt: skip
    assert caught["student2"]["ml"].item() == pytest.approx(ml.item(), rel=1e-5)


# --------------------------------------------------------------------------- the loop
def test_a_resumed_detection_run_equals_an_uninterrupted_one(data, tmp_path):
    config = kdlab.TrainConfig(epochs=2, batch_size=4, lr=0.01, schedule="cosine", device="cpu",
                               seed=0, weight_decay=1e-4)  # fmt: skip
    small = data.subset(4)

    def run(out, **kw):
        return kdlab.run("kdml_det", [STUDENT, STUDENT], small, teacher=TEACHER, config=config,
                         out=out, progress=False, **kw)  # fmt: skip

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", stop_after=1)
    resumed = run(tmp_path / "cut", resume=True)
    assert whole.history.metric == "map" and len(resumed.history) == 2
    for a, b in zip(whole.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    summary = whole.summary
    assert summary["task"] == "detection" and summary["metric"] == "map"
    assert set(summary["networks"]) == {"teacher", "student1", "student2", "ensemble"}
    assert {"final_map", "best_map", "final_map50"} <= set(summary["networks"]["student1"])
    assert summary["networks"]["teacher"]["arch"] == TEACHER
    assert "loss/student1/loss_objectness" in whole.history[0]


def test_the_classifier_loss_takes_the_recipes_label_smoothing(batch):
    """``loss_classifier`` is ``Method.ce``: with ε = 0.3 it is the smoothed CE over the
    student's sampled regions and their labels."""
    from kdlab.losses import cross_entropy

    method = _method()
    x, y = batch
    got = {}
    for eps in (0.0, 0.3):
        method.label_smoothing = eps
        caught = {}
        torch.manual_seed(5)
        method.training_step(x, y, lambda terms, also_step=(), into=caught: into.update(terms))
        got[eps] = caught["student1"]["loss_classifier"].item()
    torch.manual_seed(5)
    with torch.no_grad():
        passes, logits, _ = method.forward_regions(x, y)
    z, labels = logits["student1"]["student1"], torch.cat(passes["student1"].labels)
    assert got[0.3] == pytest.approx(cross_entropy(z, labels, 0.3).item(), rel=1e-5)
    assert got[0.0] == pytest.approx(cross_entropy(z, labels).item(), rel=1e-5)
