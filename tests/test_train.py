"""Tests for kdlab.train: the loop learns, is reproducible, validates its input, writes its files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import kdlab
from kdlab.train import History, TrainConfig, pick_precision


def _cpu(**kw) -> TrainConfig:
    values = dict(epochs=2, batch_size=50, lr=0.05, schedule="cosine", device="cpu", seed=0)
    values.update(kw)
    return TrainConfig(**values)


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def full_digits():
    return kdlab.load_dataset("digits")


def test_short_digits_run_beats_chance(full_digits):
    # cnn_small, 3 epochs over the full 1,257-image training split: 93–95 % for seeds 0–2.
    config = _cpu(epochs=3, batch_size=64, lr=0.05)
    result = kdlab.run("independent", ["cnn_small"], full_digits, config=config, progress=False)
    acc = result.history.column("acc/net1")
    assert len(acc) == 3
    assert acc[-1] > 80.0  # chance is 10 %
    assert acc[-1] > acc[0]
    losses = result.history.column("loss/net1/ce")
    assert losses[-1] < losses[0] < 2.5  # ln 10 = 2.30 at the start
    assert [row["lr"] for row in result.history] == pytest.approx([0.05, 0.0375, 0.0125])


def test_same_seed_same_history(digits):
    def once(seed):
        result = kdlab.run(
            "independent", "cnn_tiny,cnn_tiny", digits, config=_cpu(seed=seed), progress=False
        )
        return [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]

    first, second, other = once(0), once(0), once(1)
    assert first == second  # exact equality of every loss and accuracy
    assert first != other
    # Two networks with different initialisations do not agree on every test image.
    assert first[-1]["acc/net1"] != first[-1]["acc/net2"] or first[-1]["agree/net1-net2"] < 100


# --------------------------------------------------------------------------- History


def _history():
    h = History()
    for epoch, (a, b) in enumerate([(50.0, 40.0), (70.0, 60.0), (70.0, 65.0), (65.0, 55.0)], 1):
        h.append(
            {"epoch": epoch, "lr": 0.1, "loss/net1/ce": 1.0 / epoch, "acc/net1": a, "acc/net2": b}
        )
    return h


def test_history_best_and_final():
    h = _history()
    assert h.final("net1") == 65.0 and h.final("net2") == 55.0
    assert h.best("net1") == (70.0, 2)  # a tie: the first epoch that reached it
    assert h.best("net2") == (65.0, 3)
    assert h.networks() == ["net1", "net2"]
    assert h.column("loss/net1/ce") == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert History().networks() == []


# --------------------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"momentum": -0.9}, "momentum"),
        ({"schedule": "linear"}, "schedule"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_train_config_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kwargs)


def test_train_config_defaults_are_the_recipe():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (200, 64, 0.1, 0.9, 5e-4)
    assert c.schedule == "step" and c.milestones == (60, 120, 180) and c.nesterov


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (True, True, torch.bfloat16),
     (False, False, None)],
)  # fmt: skip
def test_auto_precision_on_the_cpu_is_bf16_where_it_is_native(
    monkeypatch, amx, avx512_bf16, expected
):
    """AMX tiles (Intel Xeon 4th generation) or AVX512-BF16 (AMD Zen 4, Intel Cooper Lake)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert pick_precision("auto", torch.device("cpu")) is expected
    assert pick_precision("fp32", torch.device("cpu")) is None  # an explicit choice wins
    assert pick_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert pick_precision("auto", torch.device("mps")) is None


def test_auto_precision_is_fp32_where_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert pick_precision("auto", torch.device("cpu")) is None


def test_the_native_bf16_probe_agrees_with_the_cpu_flags():
    """torch's probes against the kernel's list of CPU flags (what ``lscpu`` shows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo here")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = bool({"amx_tile", "avx512_bf16"} & flags)
    assert kdlab.train.cpu_has_native_bf16() is native
    assert (pick_precision("auto", torch.device("cpu")) is torch.bfloat16) is native


def test_the_run_records_the_precision_it_used(digits, tmp_path):
    kdlab.run("independent", "cnn_tiny", digits, config=_cpu(epochs=1, precision="bf16"),
              out=tmp_path, progress=False)  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["precision"] == "bfloat16"


# --------------------------------------------------------------------------- errors before training


def test_kd_with_an_untrained_teacher_name_is_an_error(digits):
    with pytest.raises(ValueError, match="pretrained teacher"):
        kdlab.run("kd", ["cnn_tiny"], digits, teacher="resnet20", config=_cpu(), progress=False)


def test_kd_without_a_teacher_is_an_error(digits):
    with pytest.raises(ValueError, match="needs a teacher"):
        kdlab.run("kd", ["cnn_tiny"], digits, config=_cpu(), progress=False)


def test_unknown_method_lists_methods(digits):
    with pytest.raises(ValueError) as info:
        kdlab.run("distill", ["cnn_tiny"], digits, config=_cpu(), progress=False)
    message = str(info.value)
    assert "distill" in message and "independent" in message and "kd" in message


def test_unknown_method_parameter(digits):
    with pytest.raises(ValueError, match="temprature") as info:
        kdlab.run(
            "kd", ["cnn_tiny"], digits, teacher=kdlab.build_model("cnn_tiny", 10, 1),
            config=_cpu(), progress=False, temprature=2.0,
        )  # fmt: skip
    assert "temperature" in str(info.value)  # the known names are listed
    with pytest.raises(ValueError, match="alpha"):
        kdlab.run("independent", ["cnn_tiny"], digits, config=_cpu(), progress=False, alpha=0.5)


def test_unknown_model(digits):
    with pytest.raises(ValueError, match="unknown model"):
        kdlab.run("independent", ["resnet21"], digits, config=_cpu(), progress=False)


# --------------------------------------------------------------------------- a kd run and its files


@pytest.fixture(scope="module")
def kd_run(digits, tmp_path_factory):
    """A kd run (cnn_tiny student, untrained cnn_small teacher) written to a folder."""
    torch.manual_seed(123)
    teacher = kdlab.build_model("cnn_small", digits.num_classes, digits.in_channels)
    before = copy.deepcopy(teacher.state_dict())
    out = tmp_path_factory.mktemp("kd")
    result = kdlab.run(
        "kd", ["cnn_tiny"], digits, teacher=teacher, config=_cpu(), out=out, progress=False,
        temperature=2.0,
    )  # fmt: skip
    return result, teacher, before, out


def test_kd_teacher_does_not_change(kd_run):
    result, teacher, before, _ = kd_run
    after = teacher.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():  # weights and BatchNorm statistics alike
        assert torch.equal(after[key].cpu(), value), key
    assert not teacher.training


def test_kd_summary_includes_the_teacher(kd_run):
    result, _, _, _ = kd_run
    networks = result.summary["networks"]
    assert set(networks) == {"teacher", "student"}
    teacher_acc = result.history.column("acc/teacher")
    assert teacher_acc[0] == teacher_acc[1]  # frozen: the same accuracy every epoch
    assert networks["teacher"]["final_acc"] == teacher_acc[-1]
    assert result.summary["params"] == {"alpha": 0.9, "temperature": 2.0}
    # Both logged terms are positive and the student learned something.
    last = result.history[-1]
    assert last["loss/student/ce"] > 0 and last["loss/student/kd"] > 0


def test_metrics_jsonl_equals_history(kd_run):
    result, _, _, out = kd_run
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == list(result.history)
    assert len(lines) == 2


def test_summary_json(kd_run):
    result, _, _, out = kd_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["method"] == "kd" and summary["epochs"] == 2 and summary["epochs_done"] == 2
    for name in ("teacher", "student"):
        entry = summary["networks"][name]
        assert {"final_acc", "best_acc", "best_epoch"} <= set(entry)
        accs = result.history.column(f"acc/{name}")
        assert entry["final_acc"] == accs[-1] and entry["best_acc"] == max(accs)
        assert accs[entry["best_epoch"] - 1] == entry["best_acc"]
        assert 0 <= entry["best_acc"] <= 100
    # Percent, not a fraction: digits' 540 test images give multiples of 100/540.
    student = summary["networks"]["student"]["final_acc"]
    assert student * 5.4 == pytest.approx(round(student * 5.4), abs=1e-6)
    assert student > 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "kd" and config["params"]["temperature"] == 2.0
    assert config["archs"]["student"] == "cnn_tiny" and config["train"]["epochs"] == 2
    assert (out / "checkpoint.pt").exists()
    assert (out / "networks" / "student.pt").exists() and (out / "networks" / "teacher.pt").exists()


def test_saved_network_round_trip(kd_run, digits):
    result, _, _, out = kd_run
    loaded = kdlab.load_network(out / "networks" / "student.pt").eval()
    student = result.method.networks["student"].cpu().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    assert loaded.arch == "cnn_tiny"
