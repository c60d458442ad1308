"""What the loop promises a method and a caller: ``update`` steps what it is told, auxiliary
optimizers follow the schedule, the dataset's name reaches the summary, a profile stays put."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import kdlab
from kdlab import profiles
from kdlab.data import DatasetNotFoundError
from kdlab.epoch import Updater
from kdlab.methods.base import Method
from kdlab.optim import build_optimizers


def _config(**kw) -> kdlab.TrainConfig:
    values = dict(epochs=1, batch_size=50, lr=0.05, schedule="constant", device="cpu",
                  precision="fp32")  # fmt: skip
    values.update(kw)
    return kdlab.TrainConfig(**values)


# --------------------------------------------------------------------------- update


def _two_modules():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 1)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.1) for name, m in (("a", a), ("b", b))}
    return a, b, Updater(optimizers, torch.amp.GradScaler("cpu", enabled=False))


def test_update_steps_a_module_without_terms_only_when_told():
    x = torch.ones(2, 3)
    for also_step, b_moves in (((), False), (("b",), True)):
        a, b, update = _two_modules()
        before_a, before_b = a.weight.detach().clone(), b.weight.detach().clone()
        update({"a": {"loss": b(a(x)).square().mean()}}, also_step=also_step)
        assert not torch.equal(a.weight, before_a)
        assert (not torch.equal(b.weight, before_b)) == b_moves
    assert set(update.sums) == {"loss/a/loss"}  # only terms are logged
    # A module named twice is stepped once.
    a, b, update = _two_modules()
    before = a.weight.detach().clone()
    update({"a": {"loss": a(x).sum()}}, also_step=("a",))
    single, _, once = _two_modules()
    once({"a": {"loss": single(x).sum()}})
    assert torch.equal(a.weight, single.weight) and not torch.equal(a.weight, before)


def test_update_zeroes_the_gradients_of_every_module_it_steps():
    """A module in ``also_step`` (kdml's adapters) steps on this call's gradient alone: a
    gradient left from an earlier batch is zeroed first, as for the named modules."""
    x = torch.ones(2, 3)
    fresh = {}
    for stale in (False, True):
        a, b, update = _two_modules()
        if stale:  # what an earlier batch left behind
            for module in (a, b):
                for p in module.parameters():
                    p.grad = torch.full_like(p, 100.0)
        update({"a": {"loss": b(a(x)).square().mean()}}, also_step=("b",))
        fresh[stale] = (a.weight.detach().clone(), b.weight.detach().clone())
    assert torch.equal(fresh[True][0], fresh[False][0])
    assert torch.equal(fresh[True][1], fresh[False][1])


def test_update_naming_a_module_without_optimizer_is_a_clear_error():
    a, _, update = _two_modules()
    with pytest.raises(KeyError, match="'c', which has no optimizer; known: a, b"):
        update({"a": {"loss": a(torch.ones(1, 3)).sum()}}, also_step=("c",))


def test_kdml_adapters_train_without_an_empty_term(digits):
    run = kdlab.run("kdml", ["cnn_tiny", "cnn_tiny"], digits, teacher="cnn_tiny",
                    config=_config(), progress=False, styles="different")  # fmt: skip
    kdlab.seed_everything(0)  # the adapters' initial weights: the same networks, built again
    nets = {f"student{i}": kdlab.build_model("cnn_tiny", 10, 1) for i in (1, 2)}
    teacher = kdlab.build_model("cnn_tiny", 10, 1)
    fresh = kdlab.get_method("kdml")(nets, teacher=teacher, styles="different")
    untrained = fresh.auxiliary["adapters"].state_dict()
    trained = run.method.auxiliary["adapters"].state_dict()
    assert set(trained) == set(untrained)
    assert all(not torch.equal(trained[k], untrained[k]) for k in trained)
    assert not any(k.startswith("loss/adapters") for k in run.history[0])


# --------------------------------------------------------------------------- schedules


class WithAuxiliary(Method):
    """A network and an auxiliary module with Adam at its own rate (not registered)."""

    name = "with-auxiliary-test"

    def __init__(self, networks):
        super().__init__(networks)
        self.auxiliary["critic"] = nn.Linear(2, 1)

    def auxiliary_optimizers(self):
        return {"critic": torch.optim.Adam(self.auxiliary["critic"].parameters(), lr=3e-4)}


@pytest.mark.filterwarnings("ignore:Detected call of")  # schedules only, no training here
@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_auxiliary_optimizers_follow_the_networks_schedule(schedule):
    method = WithAuxiliary({"net1": nn.Linear(2, 2)})
    config = _config(epochs=10, lr=0.1, schedule=schedule, milestones=(3, 6, 9))
    optimizers, schedulers = build_optimizers(method, config, torch.device("cpu"))
    assert set(schedulers) == {"net1", "critic"}
    factors = []
    for _ in range(config.epochs):
        net_lr = optimizers["net1"].param_groups[0]["lr"]
        critic_lr = optimizers["critic"].param_groups[0]["lr"]
        assert critic_lr == pytest.approx(3e-4 * net_lr / 0.1, abs=1e-12)
        factors.append(net_lr / 0.1)
        for scheduler in schedulers.values():
            scheduler.step()
    assert min(factors) < 0.5  # the rates really fell during the run
    if schedule == "cosine":
        assert factors[5] == pytest.approx((1 + math.cos(math.pi * 5 / 10)) / 2)


def test_an_auxiliary_optimizer_may_not_take_a_networks_name():
    class Clash(WithAuxiliary):
        def auxiliary_optimizers(self):
            return {"net1": torch.optim.Adam(self.auxiliary["critic"].parameters())}

    with pytest.raises(ValueError, match="'net1' has a network's name"):
        build_optimizers(Clash({"net1": nn.Linear(2, 2)}), _config(), torch.device("cpu"))


# --------------------------------------------------------------------------- the dataset's name


def test_the_dataset_name_comes_from_the_dataset(digits, tmp_path):
    renamed = dataclasses.replace(digits, name="digits-renamed")
    method = kdlab.get_method("independent")({"net1": kdlab.build_model("cnn_tiny", 10, 1)})
    result = kdlab.fit(method, renamed, _config(), out=tmp_path, progress=False)
    assert result.summary["dataset"] == "digits-renamed"
    assert json.loads((tmp_path / "summary.json").read_text())["dataset"] == "digits-renamed"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dataset"] == "digits-renamed" and config["archs"] == {}


# --------------------------------------------------------------------------- profiles


@pytest.fixture
def offline_cifar(monkeypatch):
    real = profiles.load_dataset

    def load_dataset(name, root=None, train_size=None):
        if name.startswith("cifar"):
            raise DatasetNotFoundError(f"{name} is not cached and could not be downloaded")
        return real(name, root, train_size=train_size)

    monkeypatch.setattr(profiles, "load_dataset", load_dataset)


@pytest.mark.parametrize("device, reason", [("cuda", "could not be downloaded"), ("cpu", "no GPU")])
def test_a_fallback_returns_a_new_profile_and_leaves_the_given_one(
    offline_cifar, monkeypatch, capsys, device, reason
):
    monkeypatch.setattr(profiles, "pick_device", lambda device_="auto": torch.device(device))
    lab = kdlab.profile("lab", epochs=3)
    before = dataclasses.asdict(lab)
    chosen, data = lab.load()
    assert dataclasses.asdict(lab) == before  # unchanged
    assert data.name == "digits" and len(data.train_labels) == 200
    assert (chosen.dataset, chosen.teacher, chosen.student) == ("digits", "resnet20", "cnn_tiny")
    assert chosen.epochs == 3  # set explicitly: the fallback leaves it
    assert chosen.fallback_dataset is None
    printed = capsys.readouterr().out
    assert reason in printed and "uses 'digits' instead" in printed
    assert lab.load_dataset().name == "digits" and dataclasses.asdict(lab) == before
    assert kdlab.PROFILES["lab"].dataset == "cifar10"


def test_a_profile_whose_dataset_is_there_is_returned_itself():
    smoke = kdlab.profile("smoke")
    chosen, data = smoke.load()
    assert chosen is smoke and data.name == "digits" and len(data.train_labels) == 300
