"""Grids: the smoke grid end to end, skipping finished cells, resuming interrupted ones, failing
cells, bad grid files, the published table, and notebook 06."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import kdlab
from kdlab import reproduce
from kdlab.cli import main as cli_main
from kdlab.methods import METHODS
from kdlab.metrics import summarize

ROOT = Path(__file__).resolve().parent.parent


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """The shipped smoke grid, every cell's notebook executed with papermill, once."""
    out = tmp_path_factory.mktemp("smoke-grid")
    code = cli_main(["reproduce", "smoke", "--out", str(out), "--no-progress"])
    return out, code


def test_smoke_grid_end_to_end(smoke_results):
    out, code = smoke_results
    assert code == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*/cell.json")]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    for record in records:
        executed = nbformat.read(out / record["executed"], as_version=4)
        injected = [
            c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
        ]
        assert injected and f"seeds = [{record['spec']['seed']}]" in injected[0].source
        assert (out / record["run"] / "checkpoint.pt").exists()

    runs = _csv(out / "runs.csv")
    results = _csv(out / "results.csv")
    assert {(r["method"], r["network"]) for r in results} == {
        ("independent", "net1"),
        ("kd", "teacher"),
        ("kd", "student"),
    }
    for row in results:
        mine = [r for r in runs if r["label"] == row["label"] and r["network"] == row["network"]]
        assert sorted(int(r["seed"]) for r in mine) == [0, 1] and row["n"] == "2"
        stats = summarize([float(r["final_acc"]) for r in mine])
        assert float(row["final_mean"]) == pytest.approx(stats["mean"])
        assert float(row["final_std"]) == pytest.approx(stats["std"])
        assert float(row["best_mean"]) >= float(row["final_mean"]) - 1e-9
        assert 1 <= float(row["best_epoch_mean"]) <= 2
    # The seeds differ, so the runs differ (a grid that ran one seed twice would fail here).
    alone = [float(r["final_acc"]) for r in runs if r["method"] == "independent"]
    assert alone[0] != alone[1]
    # Two epochs already beat chance (10 %) on digits.
    independent = next(r for r in results if r["method"] == "independent")
    assert float(independent["final_mean"]) > 15
    table = (out / "results.md").read_text()
    assert "| independent | cnn_tiny | digits |" in table and "± " in table


def test_finished_cells_are_skipped(smoke_results):
    out, _ = smoke_results
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("notebook.ipynb")}
    outcomes = reproduce.run_grid("smoke", out, progress=False)
    assert [o["status"] for o in outcomes] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing executed again


def _direct_grid(epochs=3):
    return {
        "name": "direct",
        "profile": "smoke",
        "seeds": [0],
        "settings": {"epochs": epochs, "train_size": 200},
        "experiments": [{"method": "independent", "models": ["cnn_tiny"], "notebook": "runner"}],
    }


def test_interrupted_cell_resumes_to_the_uninterrupted_numbers(tmp_path):
    whole = tmp_path / "whole"
    assert (
        reproduce.run_grid(_direct_grid(), whole, executor="direct", progress=False)[0]["status"]
        == "ok"
    )

    # Interrupt the same cell after one epoch: the folder notebook_run uses, stopped early.
    cell = reproduce.load_grid(_direct_grid()).cells[0]
    runs_dir = tmp_path / "part" / "cells" / cell.name / "runs"
    prof = kdlab.profile("smoke", epochs=3, train_size=200)
    kdlab.run(
        "independent", ["cnn_tiny"], prof.load_dataset(), config=prof.train_config(seed=0),
        out=runs_dir / "independent-cnn_tiny-seed0", stop_after=1, progress=False,
    )  # fmt: skip
    outcome = reproduce.run_grid(_direct_grid(), tmp_path / "part", executor="direct",
                                 progress=False)[0]  # fmt: skip
    assert outcome["status"] == "ok"

    def history(out):
        record = json.loads(next((out / "cells").glob("*/cell.json")).read_text())
        rows = [json.loads(x) for x in (out / record["run"] / "metrics.jsonl").open()]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert [row["epoch"] for row in history(tmp_path / "part")] == [1, 2, 3]
    assert history(tmp_path / "part") == history(whole)
    assert (
        _csv(tmp_path / "part" / "results.csv")[0]["final_mean"]
        == _csv(whole / "results.csv")[0]["final_mean"]
    )


def _notebook(path: Path, source: str) -> Path:
    params = nbformat.v4.new_code_cell(
        "PROFILE = None\nout_dir = None\nseeds = None\nmodels = None",
        metadata={"tags": ["parameters"]},
    )
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def test_failing_cells_are_reported_and_the_grid_goes_on(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "boom.ipynb", 'raise RuntimeError("the loss exploded")')
    _notebook(notebooks / "quiet.ipynb", "print('trained nothing')")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "profile: smoke\nseeds: [0]\nexperiments:\n"
        "  - {method: independent, models: [cnn_tiny], notebook: boom.ipynb}\n"
        "  - {method: independent, models: [cnn_small], notebook: quiet.ipynb}\n"
    )
    out = tmp_path / "out"
    code = cli_main(["reproduce", str(grid), "--out", str(out), "--notebooks", str(notebooks),
                     "--no-progress"])  # fmt: skip
    assert code == 1
    records = sorted(
        (json.loads(p.read_text()) for p in (out / "cells").glob("*/cell.json")),
        key=lambda r: r["index"],
    )
    assert [r["status"] for r in records] == ["failed", "failed"]  # the second ran after the first
    assert records[0]["error"] == "RuntimeError: the loss exploded"
    assert "wrote no run of independent with models cnn_small" in records[1]["error"]
    for record in records:
        assert (out / record["executed"]).exists()
    err = capsys.readouterr().err
    assert "the loss exploded" in err and str(out / records[0]["executed"]) in err
    assert "Cells not finished" in (out / "results.md").read_text()


_ONE = "profile: smoke\nexperiments: [{method: independent, models: [cnn_tiny], %s}]"
BAD_GRIDS = [
    ("profile: smoke\nexperiments: [{method: nope, models: [cnn_tiny]}]",
     "method: 'nope' is not one of: " + ", ".join(sorted(METHODS))),
    ("profile: huge\nexperiments: [{method: kd, models: [cnn_tiny]}]",
     "profile 'huge' is not one of: smoke, lab, paper"),
    ("profile: smoke\nepochs: 3\nexperiments: [{method: kd, models: [cnn_tiny]}]",
     "unknown key 'epochs'; allowed: name, description"),
    ("profile: smoke\nexperiments: [{method: kd, models: [cnn_tiny], params: {alpah: 1}}]",
     "unknown parameter 'alpah' for method 'kd'; known: alpha, temperature"),
    ("profile: smoke\nexperiments: [{method: independent, models: [resnet999]}]",
     "unknown model 'resnet999'; allowed: cnn"),
    (_ONE % "settings: {epoch: 2}", "settings: unknown key 'epoch'; allowed: epochs, batch_size"),
    (_ONE % "teacher: cnn", "teacher: method 'independent' has no teacher"),
    (_ONE % "datasets: [mnist]", "unknown dataset 'mnist'; allowed: digits"),
    (_ONE % "grid: {x: 1}", "grid: x: give a non-empty list of values"),
    (_ONE % "notebook: 99_none.ipynb", "no notebook '99_none.ipynb'"),
    ("profile: smoke\nexperiments: []", "experiments must be a non-empty list"),
    ("profile: smoke\nexperiments: [{method: kd, models: [cnn_tiny]", "not valid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_GRIDS, ids=range(len(BAD_GRIDS)))
def test_bad_grid_is_one_line_error_before_anything_runs(tmp_path, capsys, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    out = tmp_path / "out"
    assert cli_main(["reproduce", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("kdlab: error:")
    assert not out.exists()  # nothing ran


def test_unknown_grid_name_and_undeclared_parameter(tmp_path, capsys):
    assert cli_main(["reproduce", "no_such_grid", "--out", str(tmp_path / "o")]) == 2
    assert "no shipped grid of that name (digits, smoke" in capsys.readouterr().err
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    _notebook(notebooks / "plain.ipynb", "pass")
    grid = {
        "profile": "smoke",
        "experiments": [{"method": "kd", "models": ["cnn_tiny"], "teacher": "cnn_small",
                         "notebook": "plain.ipynb"}],
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"has no parameter 'teacher' \(its parameters: PROFILE"):
        reproduce.run_grid(grid, tmp_path / "o", notebooks_dir=notebooks, progress=False)
    assert not (tmp_path / "o").exists()


def test_shipped_grids_parse():
    smoke = reproduce.load_grid("smoke")
    assert len(smoke.cells) == 4 and {c.method for c in smoke.cells} == {"independent", "kd"}
    assert {c.seed for c in smoke.cells} == {0, 1}
    for name in ("digits", "tadml_table5_cifar100", "tadml_table7"):
        try:
            grid = reproduce.load_grid(name)
        except ValueError as error:  # a method that is not in this checkout yet
            assert "is not one of" in str(error)
            continue
        assert all(c.profile in ("lab", "paper") for c in grid.cells)


def test_published_numbers_match_the_grid_rows():
    found = reproduce.published_for("cifar100", "tadml", ["resnet32", "resnet32"])
    assert found == [[(73.07, "TADML Table 5")], [(73.13, "TADML Table 5")]]
    found = reproduce.published_for("cifar100", "dml", ["resnet32", "resnet32"])
    assert sorted(found[0]) == [(71.19, "DML Table 1"), (71.86, "TADML Table 5")]
    assert reproduce.published_for("cifar100", "dml", ["resnet32", "resnet110"])[1] == [
        (74.08, "TADML Table 5")
    ]
    alone = dict(
        (s, a) for a, s in reproduce.published_for("cifar100", "independent", ["resnet32"])[0]
    )
    assert alone == {"TADML Table 5": 70.47, "DML Table 1": 68.99, "RepDistiller README": 71.14}
    assert reproduce.published_for("cifar100", "kd", ["resnet32"], "resnet110") == [
        [(73.08, "RepDistiller README")]
    ]
    assert reproduce.published_for("cifar100", "kd", ["resnet32"], "resnet56") == [[]]
    assert reproduce.published_for("cifar10", "tadml", ["resnet20", "resnet20"]) == [
        [(93.05, "TADML Table 7")],
        [(93.05, "TADML Table 7")],
    ]
    assert reproduce.published_for("digits", "tadml", ["resnet32", "resnet32"]) == [[], []]


@pytest.mark.notebook
def test_notebook_06_under_nbval(tmp_path):
    env = {**os.environ, "KDLAB_PROFILE": "smoke", "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         str(ROOT / "notebooks" / "06_compare_methods.ipynb")],
        cwd=ROOT / "notebooks", env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
