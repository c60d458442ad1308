"""The precision paths, CUDA's included, run on the CPU; evaluation is float32 whatever trained.

The CUDA branches (fp16 autocast with the gradient scaler and fused SGD on a T4; bf16 on an
A100) are forced on the CPU, where torch supports each, so a mistake in them fails here. The
rule that picks them on CUDA is tested with the capability query replaced.
"""

from __future__ import annotations

import json

import pytest
import torch

import kdlab
from kdlab.data import DeviceLoader
from kdlab.optim import build_optimizers, use_fused
from kdlab.precision import Precision, pick_precision
from kdlab.tasks.classification import evaluate

CUDA = torch.device("cuda")


def _config(**kw) -> kdlab.TrainConfig:
    values = dict(epochs=1, batch_size=50, lr=0.05, schedule="constant", device="cpu",
                  precision="fp32", channels_last=False, fused=False)  # fmt: skip
    values.update(kw)
    return kdlab.TrainConfig(**values)


def _train(digits, tmp_path, name, models="cnn_tiny", **kw):
    out = tmp_path / name
    result = kdlab.run("independent", models, digits, config=_config(**kw), out=out, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return result, state, json.loads((out / "config.json").read_text())


def _weights(result) -> torch.Tensor:
    net = result.method.networks["net1"]
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _norm(weights: torch.Tensor) -> float:
    return weights.norm().item()


@pytest.fixture(scope="module")
def start(digits):
    """The untrained weights every run here starts from (seed 0)."""
    kdlab.seed_everything(0)
    return torch.cat([p.flatten() for p in kdlab.build_model("cnn_tiny", 10, 1).parameters()])


# --------------------------------------------------------------------------- the rule on CUDA


@pytest.mark.parametrize(
    "capability, dtype",
    [((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16),
     ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16)],
)  # fmt: skip
def test_cuda_auto_precision_follows_the_compute_capability(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert pick_precision("auto", CUDA) is dtype
    precision = Precision(pick_precision("auto", CUDA), torch.device("cpu"))
    assert precision.scaled == (dtype is torch.float16)  # a T4 scales its gradients
    assert precision.scaler.is_enabled() == (dtype is torch.float16)
    assert precision.name == {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    # An explicit choice wins over the capability.
    assert pick_precision("fp32", CUDA) is None and pick_precision("bf16", CUDA) is torch.bfloat16


def test_fused_sgd_is_the_cuda_default_and_selectable_anywhere():
    assert use_fused("auto", CUDA) is True
    assert use_fused("auto", torch.device("cpu")) is False
    assert use_fused(True, torch.device("cpu")) is True
    method = kdlab.get_method("independent")({"net1": kdlab.build_model("cnn_tiny", 10, 1)})
    for fused in (True, False):
        optimizers, _ = build_optimizers(method, _config(fused=fused), torch.device("cpu"))
        assert bool(optimizers["net1"].defaults["fused"]) is fused
        assert bool(optimizers["net1"].defaults["foreach"]) is not fused
    with pytest.raises(ValueError, match="fused"):
        kdlab.TrainConfig(fused="yes")


# --------------------------------------------------------------------------- each path trains


def test_fp16_autocast_with_the_gradient_scaler_trains_like_fp32(digits, tmp_path, start):
    fp32, _, _ = _train(digits, tmp_path, "fp32")
    fp16, state, config = _train(digits, tmp_path, "fp16", precision="fp16")
    steps = len(digits.train_labels) // 50
    assert config["precision"] == "float16"
    # The scaler ran: its initial factor 2^16, grown by nothing yet, one unskipped step per batch.
    assert state["scaler"]["scale"] == 2.0**16
    assert state["scaler"]["_growth_tracker"] == steps
    # Autocast was on (the numbers differ from fp32) and the scaled gradients were unscaled
    # before the step (the weights moved as far as fp32's, not 2^16 times more or less).
    assert fp16.history[0]["loss/net1/ce"] != fp32.history[0]["loss/net1/ce"]
    moved_16, moved_32 = _norm(_weights(fp16) - start), _norm(_weights(fp32) - start)
    assert moved_16 == pytest.approx(moved_32, rel=0.02)
    assert _norm(_weights(fp16) - _weights(fp32)) < 0.05 * moved_32


def test_fused_sgd_with_the_scaler_is_the_t4_path(digits, tmp_path, start):
    # As on CUDA: fp16 autocast, the scaler, fused SGD, channels_last.
    plain, _, _ = _train(digits, tmp_path, "plain", precision="fp16", channels_last=True)
    fused, state, config = _train(
        digits, tmp_path, "fused", precision="fp16", fused=True, channels_last=True
    )
    assert config["channels_last"] is True and config["train"]["fused"] is True
    assert state["scaler"]["_growth_tracker"] == len(digits.train_labels) // 50
    moved = _norm(_weights(plain) - start)
    assert _norm(_weights(fused) - _weights(plain)) < 1e-4 * moved
    assert _norm(_weights(fused) - start) > 0.5 * moved


def test_bf16_autocast_trains_without_a_scaler(digits, tmp_path, start):
    fp32, _, _ = _train(digits, tmp_path, "fp32")
    bf16, state, config = _train(digits, tmp_path, "bf16", precision="bf16")
    assert config["precision"] == "bfloat16"
    assert state["scaler"] == {}  # a disabled scaler saves nothing
    assert bf16.history[0]["loss/net1/ce"] != fp32.history[0]["loss/net1/ce"]
    moved = _norm(_weights(fp32) - start)
    assert _norm(_weights(bf16) - start) == pytest.approx(moved, rel=0.05)


# --------------------------------------------------------------------------- fp32 evaluation


def test_metrics_do_not_depend_on_the_training_precision(digits, tmp_path):
    """The metrics logged after bf16 training equal the same weights' float32 evaluation, also
    when evaluate is called inside an autocast."""
    result, _, _ = _train(digits, tmp_path, "bf16", models="cnn_tiny,cnn_tiny", precision="bf16")
    logged = {
        k: v for k, v in result.history[-1].items() if k.startswith(("acc/", "agree/", "js/"))
    }
    assert set(logged) >= {"acc/net1", "acc/ensemble", "agree/net1-net2", "js/net1-net2"}
    test = DeviceLoader.test(digits, 1024, torch.device("cpu"), channels_last=False)
    networks, members = result.method.evaluated(), result.method.ensemble_members()
    assert evaluate(networks, test, members) == logged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert evaluate(networks, test, members) == logged
    # What bf16 evaluation would have logged instead: other numbers (the test can tell).
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        x, _ = next(iter(test))
        z = networks["net1"](x)
    assert not torch.equal(z.float(), networks["net1"](x).detach())


# --------------------------------------------------------------------------- CUDA's bookkeeping


def test_cuda_rng_state_and_synchronisation_with_torch_cuda_faked(digits, tmp_path, monkeypatch):
    """The loop's CUDA-only bookkeeping, run with torch.cuda's calls replaced: the epoch waits
    for the device before it stops the clock, and the checkpoint saves and restores the CUDA
    generator's state."""
    from kdlab.checkpoint import TrainingState
    from kdlab.epoch import Updater
    from kdlab.train import _epoch

    calls = []
    marker = torch.arange(8, dtype=torch.uint8)
    monkeypatch.setattr(
        torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device))
    )
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": marker.clone())
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("rng", state))
    )
    load = torch.load  # the checkpoint maps to the CUDA device; here it stays on the CPU
    monkeypatch.setattr(torch, "load", lambda *a, **kw: load(*a, **{**kw, "map_location": "cpu"}))

    kdlab.seed_everything(0)
    method = kdlab.get_method("independent")({"net1": kdlab.build_model("cnn_tiny", 10, 1)})
    cpu, config = torch.device("cpu"), _config()
    optimizers, schedulers = build_optimizers(method, config, cpu)
    precision = Precision.pick("fp32", cpu)
    train = DeviceLoader.train(digits, 50, cpu, seed=0)
    test = DeviceLoader.test(digits, 1024, cpu)
    state = TrainingState(method, optimizers, schedulers, precision.scaler, train, CUDA)
    record = _epoch(
        method,
        state,
        Updater(optimizers, precision.scaler),
        precision,
        digits.task,
        test,
        1,
        [],
        None,
    )
    assert calls == [("sync", CUDA)] and record["acc/net1"] > 0
    state.save(tmp_path / "checkpoint.pt", [record])
    assert torch.equal(load(tmp_path / "checkpoint.pt", weights_only=True)["rng_cuda"], marker)
    assert state.load(tmp_path / "checkpoint.pt") == [record]
    assert calls[1][0] == "rng" and torch.equal(calls[1][1], marker)
