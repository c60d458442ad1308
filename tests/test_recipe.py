"""The recipe's options every method shares: label smoothing of the CE, and SGD or Adam."""

from __future__ import annotations

import math

import pytest
import torch

import kdlab
from kdlab.losses import cross_entropy
from kdlab.models import build_model
from kdlab.optim import build_optimizers

# Each method with what it needs to be built on 10 classes of 1-channel images.
BUILD = {
    "independent": {},
    "kd": {"teacher": True},
    "dkd": {"teacher": True},
    "dist": {"teacher": True},
    "kd_ls": {"teacher": True},
    "dml": {"peers": 2},
    "adml": {"peers": 2},
    "tadml": {"peers": 2, "topo_k": 4},
    "kdml": {"peers": 2, "teacher": True},
    "fitnet": {"teacher": True},
    "fsp": {"teacher": True, "stages": 1},  # the default's first stage has no CE
    "logit_regression": {"teacher": True, "ce_weight": 1.0},  # SNN-MIMIC's default: no CE
    "kdcl": {"peers": 2},
    # One multi-branch network: its ``ce`` is the sum of the branches' cross-entropies.
    "one": {"model": "cnn_tiny_branches3"},
    "cl_ilr": {"model": "cnn_tiny_branches3"},
    "okddip": {"model": "resnet8_branches4"},
    "pcl": {"model": "cnn_tiny_branches3"},
}


def _capture(terms: dict):
    """An ``update`` that only records the detached terms it is handed."""

    def update(named, also_step=()):
        terms.update({k: {t: v.detach() for t, v in d.items()} for k, d in named.items()})

    return update


def test_label_smoothing_by_hand():
    """ε/C to every class, the true one included (PyTorch's convention): q = (0.8, 0.1, 0.1).
    The other common reading, ε/(C − 1) to the wrong classes only, gives (0.7, 0.15, 0.15)."""
    z = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = z - torch.logsumexp(z, 1, keepdim=True)
    expected = -(0.8 * log_p[0, 0] + 0.1 * log_p[0, 1] + 0.1 * log_p[0, 2])
    other = -(0.7 * log_p[0, 0] + 0.15 * log_p[0, 1] + 0.15 * log_p[0, 2])
    got = cross_entropy(z, torch.tensor([0]), 0.3)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert abs(got.item() - other.item()) > 1e-2


def test_every_method_takes_the_recipes_label_smoothing():
    """The logged ``ce`` term of every network of every method scales with the smoothed CE: with
    ε = 0.3 it is CE_ε / CE_0 times the term without smoothing."""
    classifying = {n for n, m in kdlab.METHODS.items() if "classification" in m.tasks}
    assert set(BUILD) == classifying, "add the new method to BUILD"
    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 10
    for name, needs in BUILD.items():
        torch.manual_seed(1)
        count = needs.get("peers", 1)
        arch = needs.get("model", "cnn_tiny")
        nets = {f"n{i}": build_model(arch, 10, 1) for i in range(count)}
        kwargs = {k: v for k, v in needs.items() if k not in ("peers", "teacher", "model")}
        if needs.get("teacher"):
            kwargs["teacher"] = build_model("cnn_tiny", 10, 1)
        method = kdlab.get_method(name)(nets, **kwargs)
        ratios = {}
        for eps in (0.0, 0.3):
            method.label_smoothing = eps
            terms = {}
            capture = _capture(terms)
            method.training_step(x, y, capture)
            ratios[eps] = {k: d["ce"].item() for k, d in terms.items() if "ce" in d}
        assert ratios[0.0], name
        for net_name, plain in ratios[0.0].items():
            net = method.networks[net_name]
            with torch.no_grad():
                was = net.training
                net.train()
                z = net(x)
                net.train(was)
            outputs = z.unbind(1) if z.dim() == 3 else [z]  # every branch of a branched network
            smoothed = sum(cross_entropy(o, y, 0.3).item() for o in outputs)
            expected = smoothed / sum(cross_entropy(o, y).item() for o in outputs)
            got = ratios[0.3][net_name] / plain
            assert got == pytest.approx(expected, rel=1e-4), (name, net_name)
            assert not math.isclose(expected, 1.0, rel_tol=1e-3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_networks_get_the_recipes_optimizer(optimizer):
    config = kdlab.TrainConfig(optimizer=optimizer, betas=(0.5, 0.999), lr=2e-4, device="cpu")
    method = kdlab.get_method("dml")({f"p{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)})
    optimizers, _ = build_optimizers(method, config, torch.device("cpu"))
    for opt in optimizers.values():
        group = opt.param_groups[0]
        assert group["lr"] == 2e-4 and group["weight_decay"] == config.weight_decay
        if optimizer == "adam":
            assert isinstance(opt, torch.optim.Adam) and group["betas"] == (0.5, 0.999)
        else:
            assert isinstance(opt, torch.optim.SGD) and group["nesterov"]


def test_bad_recipe_options_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; choose sgd or adam"):
        kdlab.TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        kdlab.TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="betas must be two numbers"):
        kdlab.TrainConfig(betas=(0.5,))


def test_a_run_trains_with_label_smoothing_and_adam(digits):
    """The loop hands the recipe's ε to the method: the logged CE of a smoothed run is above
    the smallest CE a smoothed target allows (its entropy), and Adam trains past chance."""
    config = kdlab.TrainConfig(
        epochs=3, batch_size=50, lr=3e-3, optimizer="adam", label_smoothing=0.2,
        schedule="constant", device="cpu",
    )  # fmt: skip
    result = kdlab.run("independent", ["cnn_small"], digits, config=config, progress=False)
    assert result.method.label_smoothing == 0.2
    floor = -(0.82 * math.log(0.82) + 9 * 0.02 * math.log(0.02))  # entropy of the target
    assert result.history[-1]["loss/net1/ce"] > floor
    assert result.history[-1]["acc/net1"] > 20
