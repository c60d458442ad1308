"""Tests for the command line: ``kdlab.cli.main([...])`` in-process, and ``python -m kdlab`` once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--dataset", "digits", "--epochs", "2", "--seed", "0", "--train-size", "200"]
COMMON += ["--device", "cpu", "--no-progress"]


def _files(out: Path) -> dict:
    return {
        "config": json.loads((out / "config.json").read_text()),
        "metrics": [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()],
        "summary": json.loads((out / "summary.json").read_text()),
    }


def test_train_independent(tmp_path, capsys):
    out = tmp_path / "ind"
    code = main(["train", "--method", "independent", "--models", "resnet20,resnet20", *COMMON, "--out", str(out)])  # fmt: skip
    assert code == 0
    files = _files(out)
    assert files["config"]["method"] == "independent"
    archs = files["config"]["archs"]
    assert (archs["net1"], archs["net2"]) == ("resnet20", "resnet20")
    assert files["summary"]["dataset"] == "digits"
    assert files["config"]["train"]["epochs"] == 2 and files["config"]["train"]["seed"] == 0
    assert [row["epoch"] for row in files["metrics"]] == [1, 2]
    networks = files["summary"]["networks"]
    assert set(networks) == {"net1", "net2", "ensemble"}
    # Percent of the 540 test images (multiples of 100/540), not fractions.
    accs = [entry["final_acc"] for entry in networks.values()]
    assert all(0 <= a <= 100 and a * 5.4 == pytest.approx(round(a * 5.4)) for a in accs)
    assert max(accs) > 1
    printed = capsys.readouterr().out
    assert "net1: final" in printed and str(out) in printed


@pytest.fixture(scope="module")
def kd_out(tmp_path_factory):
    """``train --method kd --teacher resnet56``: the teacher is trained first, into OUT/teacher."""
    out = tmp_path_factory.mktemp("kd") / "run"
    code = main(
        ["train", "--method", "kd", "--teacher", "resnet56", "--models", "resnet20", *COMMON,
         "--set", "temperature=2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def test_train_kd_trains_the_teacher_first(kd_out):
    teacher = _files(kd_out / "teacher")
    assert teacher["config"]["method"] == "independent"
    assert teacher["config"]["archs"]["net1"] == "resnet56"
    assert len(teacher["metrics"]) == 2
    assert (kd_out / "teacher" / "networks" / "net1.pt").exists()
    files = _files(kd_out)
    assert files["config"]["archs"]["teacher"] == "resnet56"
    assert files["config"]["archs"]["student"] == "resnet20"
    networks = files["summary"]["networks"]
    assert set(networks) == {"teacher", "student"}
    # The frozen teacher is the one trained first: its accuracy is that run's final one.
    assert networks["teacher"]["final_acc"] == teacher["summary"]["networks"]["net1"]["final_acc"]
    assert [row["acc/teacher"] for row in files["metrics"]] == [
        networks["teacher"]["final_acc"]
    ] * 2


def test_set_reaches_the_method(kd_out):
    files = _files(kd_out)
    assert files["config"]["params"] == {"alpha": 0.9, "temperature": 2.0}
    assert files["summary"]["params"]["temperature"] == 2.0


def test_teacher_checkpoint_skips_training_it(kd_out, tmp_path, capsys):
    checkpoint = kd_out / "teacher" / "networks" / "net1.pt"
    out = tmp_path / "from-checkpoint"
    code = main(
        ["train", "--method", "kd", "--teacher-checkpoint", str(checkpoint), "--models", "resnet20",
         *COMMON, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert not (out / "teacher").exists()
    assert "training the teacher" not in capsys.readouterr().err
    files = _files(out)
    assert files["config"]["archs"]["teacher"] == "resnet56"
    expected = _files(kd_out)["summary"]["networks"]["teacher"]["final_acc"]
    assert files["summary"]["networks"]["teacher"]["final_acc"] == expected
    assert files["config"]["params"]["temperature"] == 4.0  # no --set: the default


@pytest.mark.parametrize(
    "args,word",
    [
        (["--method", "distill", "--models", "cnn_tiny"], "distill"),
        (["--method", "independent", "--models", "resnet21"], "resnet21"),
        (["--method", "independent", "--models", "cnn_tiny", "--dataset", "mnist"], "mnist"),
        (["--method", "independent", "--models", "cnn_tiny", "--set", "nonsense=1"], "nonsense"),
        (["--method", "kd", "--teacher", "cnn_small", "--models", "cnn_tiny", "--set", "alpha=abc"], "alpha"),
        (["--method", "kd", "--teacher", "cnn_small", "--models", "cnn_tiny", "--set", "alpha"], "KEY=VALUE"),
        # Found before the teacher is trained, not after:
        (["--method", "kd", "--teacher", "cnn_small", "--models", "cnn_tiny", "--set", "alpha=2"], "alpha"),
        (["--method", "kd", "--teacher", "cnn_small", "--models", "cnn_tiny", "--set", "temperature=0"], "temperature"),
        (["--method", "kd", "--teacher", "cnn_small", "--models", "resnet21"], "resnet21"),
        (["--method", "kd", "--teacher", "resnet21", "--models", "cnn_tiny"], "resnet21"),
        (["--method", "independent", "--models", "cnn_tiny", "--epochs", "0"], "epochs"),
        (["--method", "independent", "--models", "cnn_tiny", "--epochs", "two"], "epochs"),
        (["--method", "kd", "--models", "cnn_tiny"], "--teacher"),
        (["--method", "independent", "--models", "cnn_tiny", "--teacher", "cnn_small"], "teacher"),
        (["--method", "independent", "--models", "cnn_tiny", "--profile", "huge"], "huge"),
        (["--method", "kd", "--teacher-checkpoint", "missing.pt", "--models", "cnn_tiny"], "missing.pt"),
    ],
)  # fmt: skip
def test_bad_arguments_give_one_line_and_code_2(tmp_path, capsys, args, word):
    out = tmp_path / "out"
    argv = ["train", *args, "--out", str(out), "--dataset", "digits", "--train-size", "100"]
    if "--dataset" in args:
        argv = ["train", *args, "--out", str(out)]
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("kdlab: error: ") and word in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()  # nothing was trained, not even a teacher


@pytest.mark.parametrize(
    "argv,word",
    [
        (["train", "--method", "independent", "--models", "cnn_tiny"], "--out"),
        (["train", "--models", "cnn_tiny", "--out", "x"], "--method"),
        (["fly"], "fly"),
        ([], "command"),
    ],
)
def test_parser_errors_give_one_line_and_code_2(capsys, argv, word):
    code = main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("kdlab: error: ") and word in lines[0]


def test_module_entry_point(tmp_path):
    out = tmp_path / "sub"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KDLAB_PROFILE": "smoke"}
    done = subprocess.run(
        [sys.executable, "-m", "kdlab", "train", "--method", "independent", "--models", "cnn_tiny",
         "--dataset", "digits", "--epochs", "1", "--train-size", "100", "--device", "cpu",
         "--no-progress", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "net1: final" in done.stdout
    files = _files(out)
    assert len(files["metrics"]) == 1 and files["summary"]["epochs_done"] == 1
