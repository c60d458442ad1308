"""Every weight of every method multiplies its own term, and only it (issue 23, point 4).

A weight applied to the other term (DIST's β on the intra-class term and γ on the inter-class
one, DKD's α on NCKD, KD + ML's α on the peers' term…) gives the same numbers whenever the two
weights are equal, as they are in most defaults (DIST's β = γ = 2). So here every weight of a
method gets a different value, and each is then moved alone: every logged term divided by the
weight that should multiply it must stay the same. A swap, a missing weight or a weight on two
terms changes a quotient.

Every registered method must appear in :data:`WEIGHTS`, and every parameter named like a weight
(``alpha``, ``beta``, ``gamma``, ``lam…``, ``weight``, ``…_weight``) must be moved by the test.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import kdlab
from kdlab.data import DeviceLoader
from kdlab.methods import METHODS
from kdlab.methods.kdml_detection import DETECTOR_LOSSES

WEIGHT_NAME = re.compile(r"^(alpha|beta|gamma|lam(_\w+)?|(\w+_)?weight)$")

# method → (networks, fixed parameters, distinct starting weights, {term: its weight}).
# A term's weight is a function of the parameters; "1" terms have none. Terms are matched by
# name on every network (``teacher/back`` names one network's term only).
WEIGHTS = {
    "independent": (2, {}, {}, {"ce": lambda p: 1.0}),
    "kd": (1, {}, {"alpha": 0.3}, {"ce": lambda p: 1 - p.alpha, "kd": lambda p: p.alpha}),
    "dml": (2, {}, {"lam": 0.6}, {"ce": lambda p: 1.0, "kl": lambda p: p.lam}),
    "adml": (
        2, {}, {"lam_div": 0.6, "lam_adv": 0.25},
        {"ce": lambda p: 1.0, "div": lambda p: p.lam_div, "adv": lambda p: p.lam_adv,
         "bce": lambda p: 1.0},
    ),
    "tadml": (
        2, {"topo_k": 4}, {"lam_div": 0.6, "lam_adv": 0.25, "lam_topo": 1.4},
        {"ce": lambda p: 1.0, "div": lambda p: p.lam_div, "adv": lambda p: p.lam_adv,
         "bce": lambda p: 1.0, "topo": lambda p: p.lam_topo},
    ),
    "kdml": (
        3, {"teacher_learns_from_students": True},
        {"alpha": 0.6, "beta": 1.8, "lam_back": 0.35},
        {"ce": lambda p: 1.0, "kd": lambda p: p.alpha, "ml": lambda p: p.beta,
         "teacher/back": lambda p: p.lam_back},
    ),
    "dkd": (
        1, {"warmup": 1}, {"alpha": 0.7, "beta": 3.0, "ce_weight": 0.4},
        {"ce": lambda p: p.ce_weight, "tckd": lambda p: p.alpha, "nckd": lambda p: p.beta},
    ),
    "dist": (
        1, {}, {"beta": 0.6, "gamma": 1.7, "ce_weight": 0.9},
        {"ce": lambda p: p.ce_weight, "inter": lambda p: p.beta, "intra": lambda p: p.gamma},
    ),
    "kd_ls": (
        1, {}, {"kd_weight": 4.0, "ce_weight": 0.3},
        {"ce": lambda p: p.ce_weight, "kd": lambda p: p.kd_weight},
    ),
    # FitNet in one stage (CE + β·hint): α, the second stage's KD weight, must move nothing.
    "fitnet": (
        1, {"stages": 1}, {"beta": 40.0, "ce_weight": 0.7, "alpha": 0.3},
        {"ce": lambda p: p.ce_weight, "hint": lambda p: p.beta},
    ),
    "fsp": (
        1, {"stages": 1}, {"beta": 0.6, "ce_weight": 1.7},
        {"ce": lambda p: p.ce_weight, "fsp": lambda p: p.beta},
    ),
    "logit_regression": (
        1, {}, {"weight": 1.3, "ce_weight": 0.4},
        {"l2": lambda p: p.weight, "ce": lambda p: p.ce_weight},
    ),
    # The online family (one multi-branch network, or peers), after the ramp-up (w = 1).
    "one": (
        1, {}, {}, {"ce": lambda p: 1.0, "ce_teacher": lambda p: 1.0, "kd": lambda p: 1.0}
    ),
    "cl_ilr": (1, {}, {"lam": 0.6}, {"ce": lambda p: 1.0, "kd": lambda p: p.lam}),
    "okddip": (1, {}, {"alpha": 0.6}, {"ce": lambda p: 1.0, "kd": lambda p: p.alpha}),
    "kdcl": (2, {}, {"lam": 0.6}, {"ce": lambda p: 1.0, "kd": lambda p: p.lam}),
    "pcl": (
        1, {}, {},
        {"ce": lambda p: 1.0, "ce_teacher": lambda p: 1.0, "kd_teacher": lambda p: 1.0,
         "kd_mean": lambda p: 1.0},
    ),
}  # fmt: skip
TEACHERS = {"fsp": "cnn_tiny"}  # FSP needs the student's stage widths; others take cnn_small
# Detection's KD + ML trains detectors on a batch of images with boxes (two classes: background
# and polyp); its detector losses have no weight.
DETECTORS = {"kdml_det": ("fasterrcnn_tiny_cnn", "fasterrcnn_tiny_resnet")}
WEIGHTS["kdml_det"] = (
    2, {}, {"alpha": 0.6, "beta": 1.8},
    {"kd": lambda p: p.alpha, "ml": lambda p: p.beta,
     **{loss: (lambda p: 1.0) for loss in DETECTOR_LOSSES}},
)  # fmt: skip
# The online family's single network has branches (kdlab.models.branches).
ARCHS = {"one": "cnn_tiny_branches3", "cl_ilr": "cnn_tiny_branches3",
         "okddip": "cnn_tiny_branches4", "pcl": "cnn_tiny_branches3"}  # fmt: skip
# Further settings whose terms differ: the feature styles of KD + ML (students 2, 4… learn the
# teacher's features through an adapter, and every student its peers' features).
VARIANTS = {
    "kdml-styles": (
        "kdml", 3, {"styles": "different"}, {"alpha": 0.6, "beta": 1.8},
        {"ce": lambda p: 1.0, "kd": lambda p: p.alpha, "ml": lambda p: p.beta,
         "feat": lambda p: p.beta},
    ),
    # FitNet's second stage (KD after the hint epochs): β and the CE weight move nothing.
    "fitnet-kd-stage": (
        "fitnet", 1, {"stages": 2, "hint_epochs": 1}, {"alpha": 0.3, "beta": 40.0,
                                                       "ce_weight": 0.7},
        {"ce": lambda p: 1 - p.alpha, "kd": lambda p: p.alpha},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def batch(digits):
    x, y = next(iter(DeviceLoader.test(digits, 24, "cpu")))
    return x, y


@pytest.fixture(scope="module")
def detection_batch():
    from kdlab.data.boxes import DetectionLoader

    data = kdlab.load_dataset("synthetic_polyps", train=4, test=2)
    return next(iter(DetectionLoader.train(data, 2, "cpu", seed=0)))


def _method(name: str, count: int, fixed: dict, weights: dict):
    kdlab.seed_everything(0)
    cls = kdlab.get_method(name)
    one_student = count == 1 and cls.role == "student"
    roles = ["student"] if one_student else [f"{cls.role}{i}" for i in range(1, count + 1)]
    if name in DETECTORS:
        student, teacher = DETECTORS[name]
        nets = {role: kdlab.build_model(student, 2) for role in roles}
        return cls(nets, teacher=kdlab.build_model(teacher, 2), **fixed, **weights)
    nets = {role: kdlab.build_model(ARCHS.get(name, "cnn_tiny"), 10, 1) for role in roles}
    teacher = TEACHERS.get(name, "cnn_small")
    kwargs = {"teacher": kdlab.build_model(teacher, 10, 1)} if cls.teacher_mode else {}
    return cls(nets, **kwargs, **fixed, **weights)


def _terms(method, batch) -> dict[str, float]:
    """Every term the method hands ``update`` for one batch, as ``network/term``: value."""
    seen = {}

    def update(terms, also_step=()):
        for network, named in terms.items():
            for term, value in named.items():
                seen[f"{network}/{term}"] = value.item()

    torch.manual_seed(0)
    method.training_step(*batch, update, epoch=10_000, step=0)
    return seen


def _weight_of(key: str, table: dict):
    network, term = key.split("/", 1)
    return table.get(key) or table[term]


def _normalised(method, batch, table) -> dict[str, float]:
    return {
        key: value / _weight_of(key, table)(method.params)
        for key, value in _terms(method, batch).items()
    }


def _check(name, count, fixed, weights, table, batch):
    method = _method(name, count, fixed, weights)
    start = _normalised(method, batch, table)
    assert start and all(abs(v) > 1e-6 for v in start.values()), start
    base = method.params
    for weight, value in weights.items():
        moved = min(value * 1.5, 0.95) if (name, weight) == ("kd", "alpha") else value * 2.5
        method.params = dataclasses.replace(base, **{weight: moved})
        now = _normalised(method, batch, table)
        for key, expected in start.items():
            assert now[key] == pytest.approx(expected, rel=1e-5), f"{name}: {weight} moves {key}"
    method.params = base


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_every_weight_multiplies_its_own_term_only(name, request):
    count, fixed, weights, table = WEIGHTS[name]
    batch = request.getfixturevalue("detection_batch" if name in DETECTORS else "batch")
    _check(name, count, fixed, weights, table, batch)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_weight_multiplies_its_own_term_only_in_other_settings(variant, batch):
    _check(*VARIANTS[variant], batch)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_and_every_weight_is_in_the_table(name):
    assert name in WEIGHTS, f"add method {name!r} and its weights to WEIGHTS"
    fields = [f.name for f in dataclasses.fields(METHODS[name].Params)]
    named_like_weights = {f for f in fields if WEIGHT_NAME.match(f)}
    _, _, weights, _ = WEIGHTS[name]
    assert named_like_weights == set(weights), f"{name}: move every weight of {fields}"
    values = list(weights.values())
    assert len(set(values)) == len(values), f"{name}: give the weights unequal values"
