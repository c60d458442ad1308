"""One gradient-scaler update per batch, however many optimizers step and however many times
the method calls ``update`` (PyTorch's AMP rule: ``scaler.update()`` once per iteration, after
every optimizer has stepped).

The count is read where it shows: the scaler's growth tracker (the number of updates since the
scale last changed) after N batches in fp16 must be N for every method, with one optimizer or
several (ADML's discriminators and peers, TADML, KD + ML with its adapters, DML in either
update order); and ``GradScaler.update`` is called exactly N times.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import kdlab
from kdlab.data import DeviceLoader
from kdlab.epoch import Updater, train_epoch
from kdlab.methods.base import Method
from kdlab.optim import build_optimizers
from kdlab.precision import Precision

CPU = torch.device("cpu")

# method, networks, parameters: every path with several optimizers (and DML's plain one):
# peers, discriminators, adapters, regressors, a gate, an attention, a head
PATHS = [
    ("dml", 2, {}),
    ("dml", 3, {"update_order": "alternating"}),
    ("adml", 2, {}),
    ("tadml", 2, {"topo_k": 4}),
    ("kdml", 2, {}),
    ("kdml", 2, {"styles": "different"}),
    ("fitnet", 2, {"stages": 1, "beta": 1.0}),  # β = 100 overflows fp16 at the first scale
    ("one", 1, {}),
    ("okddip", 1, {}),
    ("pcl", 1, {}),
    ("kdcl", 2, {}),
]
BRANCHED = {"one": "cnn_tiny_branches3", "okddip": "cnn_tiny_branches4",
            "pcl": "cnn_tiny_branches3"}  # fmt: skip


def _method(name: str, count: int, params: dict) -> Method:
    kdlab.seed_everything(0)
    cls = kdlab.get_method(name)
    arch = BRANCHED.get(name, "cnn_tiny")
    nets = {f"{cls.role}{i}": kdlab.build_model(arch, 10, 1) for i in range(1, count + 1)}
    kwargs = {"teacher": kdlab.build_model("cnn_tiny", 10, 1)} if cls.teacher_mode else {}
    return cls(nets, **kwargs, **params)


def _epoch(method: Method, digits, batches: int) -> tuple[torch.amp.GradScaler, int, int]:
    """One fp16 epoch of ``batches`` batches: (scaler, optimizers, calls of scaler.update)."""
    config = kdlab.TrainConfig(epochs=1, batch_size=25, schedule="constant", device="cpu")
    optimizers, _ = build_optimizers(method, config, CPU)
    precision = Precision(torch.float16, CPU)
    scaler = precision.scaler
    calls = {"update": 0}
    real = scaler.update

    def counted(*args, **kwargs):
        calls["update"] += 1
        return real(*args, **kwargs)

    scaler.update = counted
    loader = DeviceLoader.train(digits, 25, CPU, seed=0)
    chosen = [batch for _, batch in zip(range(batches), loader, strict=False)]
    train_epoch(method, chosen, Updater(optimizers, scaler), precision, epoch=1)
    return scaler, len(optimizers), calls["update"]


@pytest.mark.parametrize(("name", "count", "params"), PATHS)
def test_the_scaler_is_updated_once_per_batch(digits, name, count, params):
    scaler, optimizers, updates = _epoch(_method(name, count, params), digits, batches=6)
    assert optimizers >= 2
    assert updates == 6
    # No overflow in these tiny fp16 runs, so the scale stayed and the tracker counts updates.
    assert scaler.get_scale() == 2.0**16
    assert scaler.state_dict()["_growth_tracker"] == 6


def test_adml_and_dml_count_alike_through_the_loop(digits, tmp_path):
    """Through :func:`kdlab.run`: the saved scaler of ADML (4 optimizers, 2 update calls per
    batch) has the growth tracker of DML (2 optimizers, 1 call): one per batch."""
    config = kdlab.TrainConfig(
        epochs=1, batch_size=50, schedule="constant", device="cpu", precision="fp16"
    )
    steps = len(DeviceLoader.train(digits, 50, CPU))
    trackers = {}
    for name in ("dml", "adml"):
        out = tmp_path / name
        kdlab.run(name, ["cnn_tiny"] * 2, digits, config=config, out=out, progress=False)
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        trackers[name] = state["scaler"]["_growth_tracker"]
        assert json.loads((out / "config.json").read_text())["precision"] == "float16"
    assert trackers == {"dml": steps, "adml": steps}


class TwiceSameOptimizer(Method):
    """A method that steps its one network twice per batch (two ``update`` calls)."""

    name = "twice-test"

    def training_step(self, x, y, update, *, epoch=1, step=0):
        net = self.networks["net1"]
        update({"net1": {"ce": nn.functional.cross_entropy(net(x).float(), y)}})
        update({"net1": {"ce": nn.functional.cross_entropy(net(x).float(), y)}})
        return {}


class NoStep(Method):
    """A method that, in some batches, steps nothing."""

    name = "nostep-test"

    def training_step(self, x, y, update, *, epoch=1, step=0):
        if step % 2 == 0:
            net = self.networks["net1"]
            update({"net1": {"ce": nn.functional.cross_entropy(net(x).float(), y)}})
        return {}


@pytest.mark.parametrize(("cls", "updates"), [(TwiceSameOptimizer, 8), (NoStep, 2)])
def test_an_optimizer_stepped_twice_gets_an_update_between_and_none_for_no_step(
    digits, cls, updates
):
    kdlab.seed_everything(0)
    method = cls({"net1": kdlab.build_model("cnn_tiny", 10, 1)})
    scaler, _, calls = _epoch(method, digits, batches=4)
    assert calls == updates
    assert scaler.state_dict()["_growth_tracker"] == updates
