"""Runs that survive interruption: resume gives the uninterrupted numbers; NaN stops cleanly."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import kdlab
from kdlab.cli import main as cli_main
from kdlab.train import NonFiniteLossError


def _config(epochs: int = 3, precision: str = "auto") -> kdlab.TrainConfig:
    # A step schedule whose milestone falls inside the run (the rate drops after epoch 2), so
    # the scheduler state matters.
    return kdlab.TrainConfig(
        epochs=epochs, batch_size=50, lr=0.05, schedule="step", milestones=(2,) if epochs > 2 else (),
        device="cpu",
        precision=precision,
    )  # fmt: skip


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _summary(path):
    summary = json.loads((path / "summary.json").read_text())
    summary.pop("seconds")
    return summary


def _metrics(path):
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return _without_time(json.loads(line) for line in lines)


@pytest.mark.parametrize(
    "method, precision",
    [("independent", "fp32"), ("kd", "fp32"), ("independent", "bf16"), ("kd", "fp16"),
     ("adml", "bf16")],
)  # fmt: skip
def test_resume_equals_uninterrupted(digits, tmp_path, method, precision):
    teacher = None
    if method == "kd":
        torch.manual_seed(0)
        teacher = kdlab.build_model("cnn_tiny", digits.num_classes, digits.in_channels)
    kwargs = dict(teacher=teacher, progress=False)
    models = ["cnn_tiny"] if method == "kd" else ["cnn_tiny", "cnn_tiny"]
    config = _config(precision=precision)

    whole = kdlab.run(method, models, digits, config=config, out=tmp_path / "whole", **kwargs)

    part = tmp_path / "part"
    first = kdlab.run(method, models, digits, config=config, out=part, stop_after=1, **kwargs)
    assert [r["epoch"] for r in first.history] == [1]
    assert not (part / "summary.json").exists() or _summary(part)["epochs_done"] == 1
    # The interrupted process is gone: a fresh run (another seed state) resumes from disk.
    torch.manual_seed(1234)
    resumed = kdlab.run(method, models, digits, config=config, out=part, resume=True, **kwargs)

    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert _without_time(resumed.history) == _without_time(whole.history)
    assert _metrics(part) == _metrics(tmp_path / "whole")
    assert _summary(part) == _summary(tmp_path / "whole")
    # The learning rate really changed at the milestone (epoch 2 of 3), so the schedule resumed.
    assert resumed.history[2]["lr"] == pytest.approx(0.005)
    for name, net in whole.method.networks.items():
        other = resumed.method.networks[name].state_dict()
        for key, value in net.state_dict().items():
            assert torch.equal(value, other[key]), key
    # ADML's discriminators too, and their learning rate followed the networks' schedule.
    for name, module in whole.method.auxiliary.items():
        other = resumed.method.auxiliary[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in module.state_dict().items()), name
    state = torch.load(part / "checkpoint.pt", weights_only=True)
    for name in whole.method.auxiliary:
        lr = state["optimizers"][name]["param_groups"][0]["lr"]
        assert lr == pytest.approx(0.1 * whole.method.params.disc_lr)


def test_checkpoint_loads_with_weights_only(digits, tmp_path):
    kdlab.run("independent", ["cnn_tiny"], digits, config=_config(2), out=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("method", "optimizers", "schedulers", "scaler", "loader", "rng_cpu", "history"):
        assert key in state
    assert [row["epoch"] for row in json.loads(state["history"])] == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_cli_resume(tmp_path, capsys):
    base = [
        "train", "--method", "independent", "--models", "cnn_tiny", "--profile", "smoke",
        "--epochs", "2", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    assert cli_main([*base, "--out", str(tmp_path / "whole")]) == 0
    # Resuming a finished run is a no-op that rewrites the same summary.
    assert cli_main([*base, "--out", str(tmp_path / "whole"), "--resume"]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "missing"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def _nan_in_epoch(monkeypatch, epoch_to_break: int, steps_per_epoch: int):
    """Make the cross-entropy return NaN from the first batch of ``epoch_to_break`` on."""
    from kdlab.methods.independent import Independent

    calls = {"n": 0}
    real = Independent.ce

    def ce(self, logits, y):
        calls["n"] += 1
        loss = real(self, logits, y)
        if calls["n"] > (epoch_to_break - 1) * steps_per_epoch:
            loss = loss * math.nan
        return loss

    monkeypatch.setattr(Independent, "ce", ce)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path, monkeypatch):
    config = _config(3)
    steps = -(-len(digits.train_labels) // config.batch_size)
    _nan_in_epoch(monkeypatch, 2, steps)
    with pytest.raises(NonFiniteLossError) as error:
        kdlab.run("independent", ["cnn_tiny"], digits, config=config, out=tmp_path, progress=False)
    message = str(error.value)
    assert "'net1'" in message and "'ce'" in message and "epoch 2" in message
    assert "checkpoint.pt" in message
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert [row["epoch"] for row in json.loads(state["history"])] == [1]
    assert all(math.isfinite(v) for row in json.loads(state["history"]) for v in row.values())
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").open()] == [1]
    # The kept checkpoint holds finite weights that resume from epoch 1.
    weights = state["method"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_resume_refuses_a_folder_written_with_other_settings(digits, tmp_path):
    """resume='auto' on a finished folder hands back its run: only when the settings are the
    same. Another weight, network or recipe is an error naming the key; the device is free."""
    out = tmp_path / "run"
    models = ["cnn_tiny", "cnn_tiny"]
    config = _config(epochs=1)
    kwargs = dict(config=config, out=out, resume="auto", progress=False)
    kdlab.run("dml", models, digits, lam=1.0, **kwargs)
    again = kdlab.run("dml", models, digits, lam=1.0, **kwargs)  # finished: nothing retrained
    assert [r["epoch"] for r in again.history] == [1]

    with pytest.raises(kdlab.callbacks.RunMismatchError, match=r"params\.lam = 1\.0, not 2\.0"):
        kdlab.run("dml", models, digits, lam=2.0, **kwargs)
    with pytest.raises(kdlab.callbacks.RunMismatchError, match=r"train\.lr = 0\.05, not 0\.1"):
        other = dict(kwargs, config=dataclasses.replace(config, lr=0.1))
        kdlab.run("dml", models, digits, lam=1.0, **other)
    with pytest.raises(
        kdlab.callbacks.RunMismatchError, match=r"archs\.peer2 = .cnn_tiny., not .cnn_small."
    ):
        kdlab.run("dml", ["cnn_tiny", "cnn_small"], digits, lam=1.0, **kwargs)
    moved = dict(kwargs, config=dataclasses.replace(config, device="auto", eval_batch_size=7))
    kdlab.run("dml", models, digits, lam=1.0, **moved)  # where it runs changes no number
    assert json.loads((out / "config.json").read_text())["params"]["lam"] == 1.0
