"""Run folders never lose work: a run cut in any phase resumes from that phase to the numbers of
an uninterrupted one; a folder that holds a run is never overwritten without being asked; a
damaged file is one line naming it; every message names the options of the interface that
shows it (``kdlab.runfolder``, ``kdlab.messages``)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

import kdlab
import kdlab.train
from kdlab import reproduce
from kdlab.checkpoint import DamagedCheckpointError
from kdlab.cli import main
from kdlab.reproduce import train_one
from kdlab.runfolder import NotARunFolderError, NothingToResumeError, RunExistsError

DATA = ["--dataset", "digits", "--train-size", "200", "--seed", "0", "--device", "cpu"]
KD = ["train", "--method", "kd", "--teacher", "cnn_small", "--models", "cnn_tiny", "--epochs", "3",
      *DATA, "--no-progress"]  # fmt: skip
ALONE = ["train", "--method", "independent", "--models", "cnn_tiny", "--epochs", "2", *DATA,
         "--no-progress"]  # fmt: skip


def _run_files(out: Path) -> dict:
    """What a run folder records, without the seconds (which differ between two runs)."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("seconds")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "metrics": [{k: v for k, v in r.items() if k != "seconds"}
                                            for r in rows]}  # fmt: skip


def _interrupt_after(monkeypatch, finished: int) -> None:
    """Ctrl-C while the epoch after ``finished`` finished epochs (all phases counted) trains."""
    real, calls = kdlab.train._epoch, {"n": 0}

    def epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > finished:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(kdlab.train, "_epoch", epoch)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdlab: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture(scope="module")
def kd_whole(tmp_path_factory):
    """The kd run (its teacher trained first, 3 + 3 epochs) without interruption."""
    out = tmp_path_factory.mktemp("kd") / "whole"
    assert main([*KD, "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------ resume, whatever the phase


@pytest.mark.parametrize(
    "finished", [0, 1, 3, 4], ids=["teacher-epoch-1", "teacher-epoch-2", "student-epoch-1",
                                   "student-epoch-2"]
)  # fmt: skip
def test_a_kd_run_cut_in_either_phase_resumes_to_the_uninterrupted_numbers(
    kd_whole, tmp_path, monkeypatch, capsys, finished
):
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, finished)
        assert main([*KD, "--out", str(out)]) == 130
    assert "--resume continues it" in capsys.readouterr().err
    assert main([*KD, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    if finished in (1, 4):  # a checkpoint of the phase that was cut: it says where it goes on
        assert "resumed from its checkpoint after epoch 1 of 3; training epochs 2 to 3" in printed
    for folder in (out / "teacher", out):
        assert _run_files(folder) == _run_files(kd_whole / folder.relative_to(out))
    # Every later --resume works too: the finished run is handed back, nothing retrained.
    assert main([*KD, "--out", str(out), "--resume"]) == 0
    assert f"{out}: finished already (3 of 3 epochs)" in capsys.readouterr().out


def test_a_grid_cell_cut_in_its_teacher_phase_resumes(tmp_path, monkeypatch):
    grid = {"name": "kd", "profile": "smoke", "seeds": [0], "settings": {"epochs": 2,
            "train_size": 200}, "experiments": [{"method": "kd", "models": ["cnn_tiny"],
                                                 "teacher": "cnn_small"}]}  # fmt: skip
    whole = tmp_path / "whole"
    reproduce.run_grid(grid, whole, how="direct", progress=False)
    for finished in (1, 3):  # in the teacher's second epoch, in the student's second
        part = tmp_path / f"part{finished}"
        with monkeypatch.context() as patch:
            _interrupt_after(patch, finished)
            with pytest.raises(KeyboardInterrupt):
                reproduce.run_grid(grid, part, how="direct", progress=False)
        outcomes = reproduce.run_grid(grid, part, how="direct", progress=False)
        assert [o["status"] for o in outcomes] == ["ok"]
        run = part / outcomes[0]["run"]
        assert _run_files(run) == _run_files(whole / outcomes[0]["run"])
        assert _run_files(run / "teacher") == _run_files(whole / outcomes[0]["run"] / "teacher")


def test_a_resumed_run_says_from_which_epoch_with_and_without_the_bar(digits, tmp_path, capsys):
    config = kdlab.TrainConfig(epochs=3, batch_size=50, lr=0.05, schedule="cosine", device="cpu")
    for progress in (False, True):
        out = tmp_path / f"bar-{progress}"
        kdlab.run("independent", ["cnn_tiny"], digits, config=config, out=out, stop_after=1,
                  progress=False)  # fmt: skip
        capsys.readouterr()
        kdlab.run("independent", ["cnn_tiny"], digits, config=config, out=out, resume=True,
                  progress=progress)  # fmt: skip
        captured = capsys.readouterr()
        assert f"{out}: resumed from its checkpoint after epoch 1 of 3; training epochs 2 to 3" in (
            captured.out
        )
        assert ("(resumed at epoch 2)" in captured.err) == progress


# ------------------------------------------------------------------ never overwritten silently


def test_a_folder_that_holds_a_run_is_never_overwritten_silently(digits, tmp_path, fast_config):
    out = tmp_path / "run"
    kdlab.run("independent", ["cnn_tiny"], digits, config=fast_config, out=out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = dataclasses.replace(fast_config, seed=1)
    with pytest.raises(RunExistsError) as error:
        kdlab.run("independent", ["cnn_small"], digits, config=other, out=out, progress=False)
    message = str(error.value)
    assert f"{out} holds a run already (finished, 2 epochs)" in message
    assert "resume=True continues it, overwrite=True deletes it" in message and "--" not in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # overwrite=True clears the folder whole: no network of the old run stays beside the new.
    (out / "networks" / "old.pt").write_bytes(b"an older run's network")
    kdlab.run("independent", ["cnn_small"], digits, config=other, out=out, overwrite=True,
              progress=False)  # fmt: skip
    assert sorted(p.name for p in (out / "networks").iterdir()) == ["net1.pt"]
    config = json.loads((out / "config.json").read_text())
    assert config["archs"] == {"net1": "cnn_small"} and config["train"]["seed"] == 1

    # resume="auto", how notebooks and grid cells continue their own runs, keeps working.
    again = kdlab.run("independent", ["cnn_small"], digits, config=other, out=out,
                      resume="auto", progress=False)  # fmt: skip
    assert [row["epoch"] for row in again.history] == [1, 2]


def test_a_cli_run_into_a_run_folder_is_refused_or_overwritten_when_asked(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ALONE, "--out", str(out)]) == 0
    stale = out / "networks" / "net9.pt"
    stale.write_bytes(b"not this run's")
    capsys.readouterr()
    assert main([*ALONE, "--out", str(out), "--seed", "1"]) == 2
    line = _one_error_line(capsys)
    assert "holds a run already (finished, 2 epochs): --resume continues it, --overwrite" in line
    assert "=True" not in line and stale.exists()
    assert main([*ALONE, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert not stale.exists()
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


@pytest.mark.parametrize("where", ["", ".", "cwd-by-path"])
def test_the_current_directory_is_never_a_run_folder(digits, tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path) if where == "cwd-by-path" else where
    config = kdlab.TrainConfig(epochs=1, batch_size=50, schedule="cosine", device="cpu")
    with pytest.raises(NotARunFolderError, match="is the current directory: give the run a "
                                                 "folder of its own, e.g. out='runs/NAME'"):  # fmt: skip
        kdlab.run("independent", ["cnn_tiny"], digits, config=config, out=out, progress=False)
    assert main([*ALONE, "--out", out]) == 2
    assert "e.g. --out runs/NAME" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_never_clears_other_files_or_the_current_directory(
    digits, tmp_path, monkeypatch, fast_config
):
    kwargs = dict(config=fast_config, overwrite=True, progress=False)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("months of work")
    with pytest.raises(NotARunFolderError, match=r"not a kdlab run's \(thesis.tex\)"):
        kdlab.run("independent", ["cnn_tiny"], digits, out=foreign, **kwargs)
    assert (foreign / "thesis.tex").read_text() == "months of work"

    out = tmp_path / "run"
    kdlab.run("independent", ["cnn_tiny"], digits, config=fast_config, out=out, progress=False)
    (out / "analysis").mkdir()
    monkeypatch.chdir(out / "analysis")
    with pytest.raises(NotARunFolderError, match="holds the current directory"):
        kdlab.run("independent", ["cnn_tiny"], digits, out=out, **kwargs)
    assert (out / "summary.json").exists()


def test_resume_needs_a_run_and_contradicts_overwrite(digits, tmp_path, fast_config, capsys):
    kwargs = dict(config=fast_config, progress=False)
    with pytest.raises(NothingToResumeError, match=r"holds no run; drop resume=True to start"):
        kdlab.run("independent", ["cnn_tiny"], digits, out=tmp_path / "none", resume=True, **kwargs)
    with pytest.raises(ValueError, match="resume=True continues a run and overwrite=True"):
        kdlab.run("independent", ["cnn_tiny"], digits, out=tmp_path / "x", resume=True,
                  overwrite=True, **kwargs)  # fmt: skip
    assert main([*ALONE, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no run; drop --resume to start one" in _one_error_line(capsys)


# ------------------------------------------------------------------ damaged files, wrong paths


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*ALONE, "--out", str(out)]) == 0
    return out


def _truncated(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


@pytest.mark.parametrize(
    "name, damage, said",
    [
        ("checkpoint.pt", lambda p: b"", "(an empty file)"),
        ("checkpoint.pt", _truncated, "(truncated, or not written by torch.save)"),
        ("config.json", lambda p: b"", "is damaged (empty)"),
        ("config.json", _truncated, "is damaged (not valid JSON, line"),
        (
            "checkpoint.pt",
            lambda p: (p.parent / "networks" / "net1.pt").read_bytes(),
            "is not a training checkpoint (no 'method')",
        ),
        ("config.json", lambda p: b"[]", "is not a kdlab run's config.json"),
    ],
    ids=[
        "empty-checkpoint",
        "truncated-checkpoint",
        "empty-config",
        "truncated-config",
        "network-as-checkpoint",
        "list-as-config",
    ],
)
def test_a_damaged_file_is_one_line_naming_it(finished_run, tmp_path, capsys, name, damage, said):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / name).write_bytes(damage(out / name))
    assert main([*ALONE, "--out", str(out), "--resume"]) == 2
    line = _one_error_line(capsys)
    assert f"{out / name}" in line and said in line and "--overwrite" in line
    # The Python API says the same in its own words.
    data = kdlab.load_dataset("digits", train_size=200)
    config = kdlab.TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="cosine", device="cpu")
    with pytest.raises(ValueError) as error:
        kdlab.run("independent", ["cnn_tiny"], data, config=config, out=out, resume=True,
                  progress=False)  # fmt: skip
    assert f"{out / name}" in str(error.value) and "overwrite=True" in str(error.value)


def test_a_teacher_checkpoint_that_is_not_a_network_checkpoint_says_so(
    finished_run, digits, tmp_path, capsys, fast_config
):
    for path, said in [
        (finished_run / "config.json", "is not a readable kdlab network checkpoint"),
        (finished_run / "checkpoint.pt", "is not a kdlab network checkpoint (no 'arch')"),
    ]:
        argv = ["train", "--method", "kd", "--teacher-checkpoint", str(path), "--models",
                "cnn_tiny", *DATA, "--out", str(tmp_path / "kd")]  # fmt: skip
        assert main(argv) == 2
        line = _one_error_line(capsys)
        assert said in line and "networks/<name>.pt" in line and "unknown model" not in line
        # The Python API, the path given as a string:
        with pytest.raises(DamagedCheckpointError, match=re.escape(said)):
            train_one("kd", ["cnn_tiny"], digits, config=fast_config, teacher=str(path),
                      out=tmp_path / "api", progress=False)  # fmt: skip
    assert not (tmp_path / "kd").exists() and not (tmp_path / "api").exists()
    assert main(["train", "--method", "kd", "--teacher-checkpoint", "resnet20", "--models",
                 "cnn_tiny", *DATA, "--out", str(tmp_path / "kd")]) == 2  # fmt: skip
    assert "'resnet20' is an architecture: --teacher resnet20" in _one_error_line(capsys)


# ------------------------------------------------------------------ devices


@pytest.mark.parametrize(
    "device, gpus, said",
    [
        ("foo", 0, "unknown device 'foo'; choose --device auto, cpu, cuda, cuda:N or mps"),
        ("cuda", 0, "device 'cuda': torch finds no CUDA GPU on this machine; use --device auto"),
        ("cuda:3", 2, "device 'cuda:3': this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"),
        ("mps", 0, "device 'mps': MPS (Apple's GPU) is not available here"),
        ("meta", 0, "device 'meta' is not one kdlab trains on"),
    ],
)
def test_a_bad_device_is_one_line_before_anything_runs(
    tmp_path, monkeypatch, capsys, device, gpus, said
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "out"
    argv = [*KD, "--out", str(out)]
    argv[argv.index("--device") + 1] = device
    assert main(argv) == 2
    assert said in _one_error_line(capsys)
    assert not out.exists()  # no teacher trained, nothing written
    with pytest.raises(ValueError, match="device='auto'"):  # the Python API's words
        kdlab.train.pick_device(device)


def test_a_grid_folder_holds_one_grid(tmp_path, monkeypatch, capsys):
    """Another grid's folder, a training's run folder and the current directory are refused
    before anything runs: two grids' cells in one folder would mix in one results table."""
    grid = tmp_path / "other.yaml"
    grid.write_text("profile: smoke\nexperiments: [{method: independent, models: [cnn_tiny]}]\n")
    smoke = tmp_path / "smoke"
    smoke.mkdir()
    (smoke / "grid.json").write_text('{"name": "smoke"}')
    assert main(["reproduce", str(grid), "--out", str(smoke)]) == 2
    assert "holds the results of the grid 'smoke', not 'other'" in _one_error_line(capsys)
    assert sorted(p.name for p in smoke.iterdir()) == ["grid.json"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["reproduce", str(grid), "--out", str(run)]) == 2
    assert "holds a training's run (config.json)" in _one_error_line(capsys)
    monkeypatch.chdir(tmp_path / "smoke")
    assert main(["reproduce", str(grid), "--out", ""]) == 2
    assert "is the current directory" in _one_error_line(capsys)
