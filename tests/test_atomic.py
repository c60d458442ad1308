"""Every file operation that can be cut half-way leaves the old state or the new one, never a half
that a later load takes for whole (issue 23, point 4): a single file, the checkpoint, and the run
folder as a whole. (The CIFAR download and extraction: tests/test_cifar.py; the PathMNIST
download: tests/test_pathmnist.py.)

A cut is planted where it hurts: the process killed in the middle of writing a file, an error
raised between two files, or in the middle of a checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import kdlab
from kdlab import callbacks, io
from kdlab.checkpoint import TrainingState

ROOT = Path(__file__).resolve().parents[1]


def _config(epochs: int = 3, seed: int = 0) -> kdlab.TrainConfig:
    return kdlab.TrainConfig(epochs=epochs, batch_size=50, lr=0.05, schedule="cosine",
                             device="cpu", precision="fp32", seed=seed)  # fmt: skip


class Cut(KeyboardInterrupt):
    """The interruption planted by a test (a KeyboardInterrupt, as a user's or a kill's)."""


def _untimed(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _history(folder: Path) -> list[dict]:
    return json.loads(torch.load(folder / "checkpoint.pt", weights_only=True)["history"])


def _summary(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("seconds")
    return summary


# --------------------------------------------------------------------------- one file


def test_a_process_killed_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    io.write_json(target, {"version": 1})
    script = textwrap.dedent(f"""
        import os
        from kdlab import io

        def half_then_killed(tmp):
            tmp.write_text('{{"version": 2, "half')
            os._exit(9)  # killed: no exception handler, no finally

        io.atomic_write({str(target)!r}, half_then_killed)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert done.returncode == 9
    assert json.loads(target.read_text()) == {"version": 1}
    io.write_json(target, {"version": 3})  # a later write replaces the leftover .tmp
    assert json.loads(target.read_text()) == {"version": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_checkpoint_cut_half_way_leaves_the_last_whole_one(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    kdlab.run("dml", ["cnn_tiny"] * 2, digits, config=_config(), out=out, stop_after=1,
              progress=False)  # fmt: skip
    before = (out / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def half_then_cut(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise Cut

    monkeypatch.setattr(torch, "save", half_then_cut)
    with pytest.raises(Cut):
        kdlab.run("dml", ["cnn_tiny"] * 2, digits, config=_config(), out=out, resume=True,
                  progress=False)  # fmt: skip
    monkeypatch.setattr(torch, "save", real_save)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert [r["epoch"] for r in _history(out)] == [1]
    assert not list(out.glob("*.tmp"))


# --------------------------------------------------------------------------- the run folder


def _cut_after_epoch(epoch: int):
    def callback(record, history):
        if record["epoch"] == epoch:
            raise Cut

    return callback


def test_a_run_overwriting_a_finished_one_cut_half_way_is_not_taken_for_finished(digits, tmp_path):
    """A run started afresh (overwrite=True) in a folder that holds a finished run and cut after
    its first epoch: the old run's summary.json and networks must not stay beside the new run's
    config and checkpoint, or the folder reads as a finished run of the new settings."""
    out, clean = tmp_path / "run", tmp_path / "clean"
    models, kwargs = ["cnn_tiny"] * 2, dict(progress=False)
    kdlab.run("dml", models, digits, config=_config(seed=0), out=out, **kwargs)
    assert (out / "summary.json").exists() and (out / "networks" / "peer1.pt").exists()

    with pytest.raises(Cut):
        kdlab.run("dml", models, digits, config=_config(seed=1), out=out, overwrite=True,
                  callbacks=[_cut_after_epoch(1)], **kwargs)  # fmt: skip
    assert not (out / "summary.json").exists()
    assert not list(out.glob("networks/*.pt"))
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert [r["epoch"] for r in _history(out)] == [1]
    assert _untimed(_metrics(out)) == _untimed(_history(out))

    kdlab.run("dml", models, digits, config=_config(seed=1), out=out, resume=True, **kwargs)
    kdlab.run("dml", models, digits, config=_config(seed=1), out=clean, **kwargs)
    assert _summary(out) == _summary(clean)
    assert _untimed(_metrics(out)) == _untimed(_metrics(clean))


def test_clearing_a_run_folder_cut_half_way_leaves_no_finished_run(digits, tmp_path, monkeypatch):
    """``overwrite`` clears the folder of a finished two-phase run (a kd run: its teacher's run in
    ``teacher/``): cut after any number of deletions, no summary.json is left beside a run that
    lost some of its files."""
    from kdlab import runfolder
    from kdlab.reproduce import train_one

    whole = tmp_path / "whole"
    train_one("kd", ["cnn_tiny"], digits, config=_config(2), teacher="cnn_tiny", out=whole,
              progress=False)  # fmt: skip
    assert (whole / "summary.json").exists() and (whole / "teacher" / "summary.json").exists()
    real_unlink, real_rmtree = Path.unlink, runfolder.shutil.rmtree
    count = len(list(whole.iterdir())) + 1
    for cut_after in range(1, count + 1):
        out = tmp_path / f"cut{cut_after}"
        runfolder.shutil.copytree(whole, out)
        budget = {"left": cut_after}  # deletions before the cut

        def deleting(real, budget=budget):
            def delete(path, *args, **kwargs):
                if budget["left"] == 0:
                    raise Cut
                budget["left"] -= 1
                return real(path, *args, **kwargs)

            return delete

        monkeypatch.setattr(Path, "unlink", deleting(real_unlink))
        monkeypatch.setattr(runfolder.shutil, "rmtree", deleting(real_rmtree))
        try:
            runfolder.clear(out)
        except Cut:
            pass
        monkeypatch.setattr(Path, "unlink", real_unlink)
        monkeypatch.setattr(runfolder.shutil, "rmtree", real_rmtree)
        for mark in out.rglob("summary.json"):  # a run that reads finished has all its files
            run = mark.parent.relative_to(out)
            lost = [
                f for f in (whole / run).rglob("*") if not (out / f.relative_to(whole)).exists()
            ]
            assert not lost, f"cut after {cut_after} deletions: {run} reads finished, lost {lost}"


def test_a_cut_between_the_checkpoint_and_the_metrics_never_puts_the_metrics_ahead(
    digits, tmp_path, monkeypatch
):
    """metrics.jsonl never holds an epoch the checkpoint lacks (a resumed run would then hold it
    twice, or a reader an epoch that was never saved), and never half a line."""
    out = tmp_path / "run"
    real = TrainingState.save

    def save(self, path, history):
        if len(history) == 2:
            raise Cut  # the process stops as it would save epoch 2
        real(self, path, history)

    monkeypatch.setattr(TrainingState, "save", save)
    with pytest.raises(Cut):
        kdlab.run("dml", ["cnn_tiny"] * 2, digits, config=_config(), out=out, progress=False)
    assert [r["epoch"] for r in _history(out)] == [1]
    assert [r["epoch"] for r in _metrics(out)] == [1]


def test_the_end_of_a_run_cut_before_its_networks_are_saved_is_not_finished(
    digits, tmp_path, monkeypatch
):
    out = tmp_path / "run"

    def cut(*args, **kwargs):
        raise Cut

    monkeypatch.setattr(callbacks, "save_network", cut)
    with pytest.raises(Cut):
        kdlab.run("dml", ["cnn_tiny"] * 2, digits, config=_config(2), out=out, progress=False)
    assert not (out / "summary.json").exists()  # summary.json marks a finished run: last
    monkeypatch.undo()
    done = kdlab.run("dml", ["cnn_tiny"] * 2, digits, config=_config(2), out=out,
                     resume="auto", progress=False)  # fmt: skip
    assert [r["epoch"] for r in done.history] == [1, 2]  # nothing trained again
    assert (out / "summary.json").exists() and (out / "networks" / "peer2.pt").exists()
