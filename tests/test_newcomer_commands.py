"""What a newcomer meets around the command line: a dry run that builds every cell, a CPU
fallback computed from what was asked, ``make lab`` as root, ``make demo``'s progress."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import kdlab
from kdlab import profiles
from kdlab.cli import main
from kdlab.messages import speaking

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the dry run builds every cell


@pytest.mark.parametrize(
    "experiment, said",
    [
        ("{method: dml, models: [cnn_tiny, cnn_tiny], grid: {lam: [1.0, -1.0]}}",
         "cell dml-cnn_tiny+cnn_tiny-smoke-dataset-lam=-1: lam must be ≥ 0, got -1.0"),
        ("{method: kd, models: [cnn_tiny], teacher: cnn_small, params: {temperature: 0}}",
         "temperature must be > 0, got 0"),
        ("{method: tadml, models: [cnn_tiny, cnn_tiny], params: {topo_k: 64}}",
         "topo_k=64 needs batches of more than 64 samples"),
    ],
    ids=["dml-lam", "kd-temperature", "tadml-topo-k"],
)  # fmt: skip
def test_a_dry_run_builds_every_cells_method_and_fails_on_a_bad_value(
    tmp_path, capsys, experiment, said
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"profile: smoke\nseeds: [0, 1]\nexperiments: [{experiment}]\n")
    out = tmp_path / "out"
    assert main(["reproduce", str(grid), "--out", str(out), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("kdlab: error: ")
    assert f"{grid}: experiments[0]" in captured.err and said in captured.err
    assert not out.exists()


# ------------------------------------------------------------------ the CPU fallback


@pytest.fixture
def cpu_with_cifar(monkeypatch):
    """No GPU, and a "cifar10" that is the digits set under that name (no download)."""
    real = profiles.load_dataset

    def load_dataset(name, root=None, train_size=None):
        if name == "cifar10":
            return dataclasses.replace(real("digits", root, train_size=200), name="cifar10")
        return real(name, root, train_size=train_size)

    monkeypatch.setattr(profiles, "load_dataset", load_dataset)
    monkeypatch.setattr(profiles, "pick_device", lambda device="auto": torch.device("cpu"))


def test_a_short_request_keeps_cifar_on_a_cpu_and_says_what_it_costs(cpu_with_cifar, capsys):
    chosen, data = kdlab.profile("lab", epochs=1).load()
    printed = capsys.readouterr().out
    assert data.name == "cifar10" and chosen.dataset == "cifar10"
    assert "cifar10 for 1 epoch(s) is 50,000 training images per network" in printed
    assert "about 1 min to 17 min for each ResNet-20 on a CPU" in printed
    assert " h " not in printed and "hours" not in printed and "instead" not in printed
    chosen, data = kdlab.profile("lab", epochs=30, train_size=1000).load()
    assert data.name == "cifar10"  # 30,000 images: kept too


def test_a_long_request_falls_back_and_says_how_long_it_would_take(cpu_with_cifar, capsys):
    chosen, data = kdlab.profile("lab").load()
    printed = capsys.readouterr().out
    assert data.name == "digits" and chosen.epochs == 30
    assert "cifar10 for 15 epoch(s) is 750,000 training images per network" in printed
    assert "about 18 min to 4.2 h for each ResNet-20" in printed
    assert "train it anyway (dataset='cifar10')" in printed
    with speaking("cli"):
        kdlab.profile("lab", epochs=3).load()
    printed = capsys.readouterr().out
    assert "150,000 training images" in printed and "(--dataset cifar10)" in printed
    chosen, data = kdlab.profile("lab", dataset="cifar10").load()  # named: kept, whatever it asks
    assert data.name == "cifar10"


# ------------------------------------------------------------------ make lab as root


@pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / "Makefile").exists(), reason="no make, no Makefile"
)
@pytest.mark.parametrize("user_id, flag", [("0", True), ("1000", False)])
def test_make_lab_allows_root_only_as_root(tmp_path, user_id, flag):
    """``make -n`` prints the commands without running any (no venv is made)."""
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "-n", "lab", f"VENV={venv}", f"USER_ID={user_id}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lab = [line for line in done.stdout.splitlines() if "jupyter lab" in line]
    assert len(lab) == 1 and ("--allow-root" in lab[0]) == flag
    assert not venv.exists()


# ------------------------------------------------------------------ make demo's progress


@pytest.mark.parametrize("progress", [True, False])
def test_demo_shows_each_notebooks_cells_and_time(tmp_path, monkeypatch, capsys, progress):
    import nbformat
    import papermill

    from kdlab import nbtools

    (tmp_path / "notebooks").mkdir()
    for name in ("00_first.ipynb", "01_second.ipynb"):
        parameters = nbformat.v4.new_code_cell("PROFILE = None\nout_dir = None")
        parameters.metadata["tags"] = ["parameters"]
        nb = nbformat.v4.new_notebook(cells=[parameters])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}  # fmt: skip
        nbformat.write(nb, tmp_path / "notebooks" / name)
    monkeypatch.setattr(nbtools, "repository_root", lambda: tmp_path)
    seen = []

    def execute_notebook(source, target, **kwargs):
        seen.append((Path(source).name, kwargs["progress_bar"]))
        Path(target).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    argv = ["demo", "--notebooks", "00,01", "--out", str(tmp_path / "out"), "--profile", "smoke"]
    assert main(argv + ([] if progress else ["--no-progress"])) == 0
    # papermill's progress bar over each notebook's cells
    assert seen == [("00_first.ipynb", progress), ("01_second.ipynb", progress)]
    err = capsys.readouterr().err
    assert "[1/2] running 00_first.ipynb" in err and "[2/2] running 01_second.ipynb" in err
    assert "00_first.ipynb: 0 s" in err and "01_second.ipynb: 0 s" in err  # each one's time
    assert "| 01_second.ipynb | 0 |" in (tmp_path / "out" / "summary.md").read_text()
