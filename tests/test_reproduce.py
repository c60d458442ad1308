"""Grids: the smoke grid end to end, the three executors for real (a process pool with fake GPU
ids, submitit's local executor), a grid started again running only what is missing, failing
cells, every shipped grid's dry run, bad grid files, the published table, and notebook 06."""

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
from kdlab.reproduce.contract import CONTRACT, METHOD_NOTEBOOKS, method_knobs

ROOT = Path(__file__).resolve().parent.parent


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _records(out: Path) -> list[dict]:
    records = (json.loads(p.read_text()) for p in (out / "cells").glob("*/cell.json"))
    return sorted(records, key=lambda r: r["index"])


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """The shipped smoke grid, every cell's runner notebook executed with papermill, once."""
    out = tmp_path_factory.mktemp("smoke-grid")
    code = cli_main(["reproduce", "smoke", "--out", str(out), "--no-progress"])
    return out, code


def test_smoke_grid_end_to_end(smoke_results):
    out, code = smoke_results
    assert code == 0
    records = _records(out)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    for record in records:
        executed = nbformat.read(out / record["executed"], as_version=4)
        injected = [
            c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
        ]
        seed = record["spec"]["seed"]
        assert injected and f"seeds = [{seed}]" in injected[0].source
        assert 'run_name = "main"' in injected[0].source
        # The cell's run is the one its run name says, and the cell trained only that one.
        assert record["run"] == f"cells/{record['name']}/runs/main-seed{seed}"
        assert [p.name for p in (out / record["run"]).parent.iterdir()] == [f"main-seed{seed}"]
        assert (out / record["run"] / "checkpoint.pt").exists()
    kd = next(r for r in records if r["spec"]["method"] == "kd")
    teacher = json.loads((out / kd["run"] / "teacher" / "summary.json").read_text())
    assert teacher["method"] == "independent"  # trained first, inside the kd run's folder

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
        stats = summarize([float(r["final"]) for r in mine])
        assert float(row["final_mean"]) == pytest.approx(stats["mean"])
        assert float(row["final_std"]) == pytest.approx(stats["std"])  # sample std (n − 1)
        assert float(row["best_mean"]) >= float(row["final_mean"]) - 1e-9
        assert 1 <= float(row["best_epoch_mean"]) <= 2
    # The seeds differ, so the runs differ (a grid that ran one seed twice would fail here).
    alone = [float(r["final"]) for r in runs if r["method"] == "independent"]
    assert alone[0] != alone[1]
    independent = next(r for r in results if r["method"] == "independent")
    assert float(independent["final_mean"]) > 15  # two epochs already beat chance (10 %)
    table = (out / "results.md").read_text()
    assert "| independent | cnn_tiny | digits |" in table and "± " in table


def test_finished_cells_are_skipped_whatever_the_executor(smoke_results):
    out, _ = smoke_results
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    outcomes = reproduce.run_grid("smoke", out, executor="gpus", gpus="0,1", progress=False)
    assert [o["status"] for o in outcomes] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing executed again


def _direct_grid(epochs=2, seeds=(0,)):
    return {
        "name": "direct",
        "profile": "smoke",
        "seeds": list(seeds),
        "settings": {"epochs": epochs, "train_size": 200},
        "experiments": [{"method": "independent", "models": ["cnn_tiny"]}],
    }


def test_gpus_pool_gives_each_cell_its_own_device(tmp_path):
    """Two workers with fake device ids on the CPU: each cell's process sees one of them."""
    out = tmp_path / "pool"
    outcomes = reproduce.run_grid(_direct_grid(epochs=1, seeds=(0, 1)), out, executor="gpus",
                                  gpus="0,1", how="direct", progress=False)  # fmt: skip
    assert [o["status"] for o in outcomes] == ["ok", "ok"]
    seen = [r["visible_devices"] for r in _records(out)]  # read inside each cell's process
    assert sorted(seen) == ["0", "1"]
    assert len(_csv(out / "runs.csv")) == 2


def test_interrupted_grid_runs_only_what_is_missing(tmp_path):
    """One cell finished, one stopped after an epoch: started again (on another executor), the
    grid trains only the stopped one, from its checkpoint, to the uninterrupted numbers."""
    whole = tmp_path / "whole"
    grid = _direct_grid(epochs=3, seeds=(0, 1))
    reproduce.run_grid(grid, whole, how="direct", progress=False)

    part = tmp_path / "part"
    reproduce.run_grid(_direct_grid(epochs=3, seeds=(0,)), part, how="direct", progress=False)
    finished = next((part / "cells").glob("*/runs/main-seed0/metrics.jsonl"))
    stamp = finished.stat().st_mtime_ns
    cell = reproduce.load_grid(grid).cells[1]
    prof = kdlab.profile("smoke", epochs=3, train_size=200)
    kdlab.run(
        "independent", ["cnn_tiny"], prof.load_dataset(), config=prof.train_config(seed=1),
        out=part / "cells" / cell.name / "runs" / "main-seed1", stop_after=1, progress=False,
    )  # fmt: skip
    outcomes = reproduce.run_grid(grid, part, executor="gpus", gpus="0", how="direct",
                                  progress=False)  # fmt: skip
    assert [o["status"] for o in outcomes] == ["skipped", "ok"]
    assert finished.stat().st_mtime_ns == stamp  # the finished cell did not run again

    def history(out):
        record = _records(out)[1]
        rows = [json.loads(x) for x in (out / record["run"] / "metrics.jsonl").open()]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert [row["epoch"] for row in history(part)] == [1, 2, 3]
    assert history(part) == history(whole)
    assert (
        _csv(part / "results.csv")[0]["final_mean"] == _csv(whole / "results.csv")[0]["final_mean"]
    )


def test_slurm_executor_through_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "slurm"
    outcomes = reproduce.run_grid(_direct_grid(epochs=1, seeds=(0, 1)), out, executor="slurm",
                                  how="direct", slurm={"cluster": "local", "gpus_per_task": 0},
                                  progress=False)  # fmt: skip
    assert [o["status"] for o in outcomes] == ["ok", "ok"]
    assert len(list((out / "slurm").rglob("*_result.pkl"))) == 2  # one task per cell
    assert "| independent | cnn_tiny | digits |" in (out / "results.md").read_text()


def test_slurm_without_a_cluster_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch at all
    out = str(tmp_path / "o")
    assert cli_main(["reproduce", "smoke", "--out", out, "--executor", "slurm"]) == 2
    assert "needs SLURM's sbatch on the PATH" in capsys.readouterr().err
    (tmp_path / "bin").mkdir()
    sbatch = tmp_path / "bin" / "sbatch"  # an sbatch that refuses the array
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n"
    )
    sbatch.chmod(0o755)
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    code = cli_main(["reproduce", "smoke", "--out", out, "--executor", "slurm", "--partition",
                     "nope", "--no-progress"])  # fmt: skip
    assert code == 2
    assert "kdlab: error: SLURM did not take the job array: sbatch: error: invalid partition" in (
        capsys.readouterr().err
    )


def test_a_requeued_slurm_task_runs_the_same_cell_again():
    """Pre-empted or timed out, a task is resubmitted with its cell; the cell resumes."""
    submitit = pytest.importorskip("submitit")
    from kdlab.reproduce.execute import CellJob

    again = CellJob().checkpoint("runs/x", "cell-a")
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, CellJob) and again.args == ("runs/x", "cell-a")


def _notebook(path: Path, source: str, drop=()) -> Path:
    names = [n for n in ["models", *CONTRACT] if n not in drop]
    params = nbformat.v4.new_code_cell(
        "\n".join(f"{n} = None" for n in names), metadata={"tags": ["parameters"]}
    )
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
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
    records = _records(out)
    assert [r["status"] for r in records] == ["failed", "failed"]  # the second ran after the first
    assert records[0]["error"] == "RuntimeError: the loss exploded"
    assert "wrote no run main-seed0" in records[1]["error"]
    for record in records:
        assert (out / record["executed"]).exists()
    err = capsys.readouterr().err
    assert "the loss exploded" in err and str(out / records[0]["executed"]) in err
    assert "Cells not finished" in (out / "results.md").read_text()


@pytest.mark.parametrize("name", reproduce.shipped_grids())
def test_every_shipped_grid_dry_runs(name, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["reproduce", name, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    cells = reproduce.load_grid(name).cells
    assert printed[-1] == f"{len(cells)} cells" and len(printed) == len(cells) + 1
    assert not out.exists()
    if name == "tadml_table5_cifar100":  # 3 seeds × (2 pairs alone + 3 methods × 5 pairs)
        assert len(cells) == 3 * (2 + 3 * 5)


def test_a_grid_can_set_every_knob_of_every_teaching_notebook(tmp_path, capsys):
    """Every recipe setting and every method knob reaches each method's notebook."""
    settings = {
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.01,
        "schedule": "step",
        "milestones": [2],
        "weight_decay": 0.0,
        "precision": "fp32",
        "train_size": 100,
    }
    experiments = [
        {"method": method, "models": ["cnn_tiny"] * (1 if method == "kd" else 2),
         "params": method_knobs(method), "settings": settings,
         **({"teacher": "cnn_small"} if method in ("kd", "kdml") else {})}
        for method in METHOD_NOTEBOOKS
    ]  # fmt: skip
    grid = {"profile": "smoke", "notebooks": dict(METHOD_NOTEBOOKS), "experiments": experiments}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(grid))
    assert cli_main(["reproduce", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for pattern in METHOD_NOTEBOOKS.values():
        assert pattern.split("*")[0] in out


_ONE = "profile: smoke\nexperiments: [{method: independent, models: [cnn_tiny], %s}]"
BAD_GRIDS = [
    ("profile: smoke\nexperiments: [{method: nope, models: [cnn_tiny]}]",
     "experiments[0]: method: 'nope' is not one of: " + ", ".join(sorted(METHODS))),
    ("profile: huge\nexperiments: [{method: kd, models: [cnn_tiny]}]",
     "profile 'huge' is not one of: smoke, lab, paper"),
    ("profile: smoke\nepochs: 3\nexperiments: [{method: kd, models: [cnn_tiny]}]",
     "unknown key 'epochs'; allowed: name, description"),
    ("profile: smoke\nexperiments: [{method: kd, models: [cnn_tiny], params: {alpah: 1}}]",
     "experiments[0] (kd): params: unknown parameter 'alpah' for method 'kd'; known: alpha"),
    ("profile: smoke\nexperiments: [{method: dml, models: [cnn_tiny, cnn_tiny], "
     "params: {schedule: alternating}}]", "it is now 'update_order'"),
    ("profile: smoke\nexperiments: [{method: independent, models: [resnet999]}]",
     "experiments[0] (independent): models: unknown model 'resnet999'; allowed: cnn"),
    (_ONE % "settings: {epoch: 2}", "settings: unknown key 'epoch'; allowed: epochs, batch_size"),
    (_ONE % "settings: {precision: fp8}", "settings: unknown precision 'fp8'"),
    (_ONE % "teacher: cnn", "teacher: method 'independent' has no teacher"),
    (_ONE % "datasets: [mnist]", "datasets: unknown dataset 'mnist'; allowed: digits"),
    (_ONE % "grid: {x: 1}", "grid: x: give a non-empty list of values"),
    (_ONE % "notebook: 99_none.ipynb", "notebook: no notebook '99_none.ipynb'"),
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
    err = capsys.readouterr().err
    assert "no shipped grid of that name (digits, " in err and ", smoke, " in err
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    _notebook(notebooks / "plain.ipynb", "pass")
    grid = {
        "profile": "smoke",
        "experiments": [{"method": "kd", "models": ["cnn_tiny"], "teacher": "cnn_small",
                         "notebook": "plain.ipynb"}],
    }  # fmt: skip
    cell = reproduce.load_grid(grid, notebooks).cells[0]
    with pytest.raises(ValueError, match=rf"cell {cell.name}: notebook plain.ipynb has no "
                                         r"parameter 'teacher' \(its parameters: PROFILE"):  # fmt: skip
        reproduce.run_grid(grid, tmp_path / "o", notebooks_dir=notebooks, progress=False)
    assert not (tmp_path / "o").exists()


def test_train_and_reproduce_share_one_default_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "cache"))
    grid = reproduce.load_grid(_direct_grid())
    reproduce.plan(grid, tmp_path / "out")
    record = _records(tmp_path / "out")[0]
    assert record["parameters"]["data_root"] == str((tmp_path / "cache").resolve())
    assert kdlab.data.default_root() == tmp_path / "cache"  # what `train` loads from


def test_write_table_writes_csv_and_markdown(tmp_path):
    rows = [{"a": 1, "b": None}, {"a": 2.5, "b": "x"}]
    reproduce.write_table(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b", "1.0,", "2.5,x"]
    reproduce.write_table(tmp_path / "t.md", rows, preamble="# T")
    assert (
        tmp_path / "t.md"
    ).read_text() == "# T\n\n| a | b |\n|---|---|\n| 1.0 | – |\n| 2.5 | x |\n"


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
    assert len([row for row in reproduce.PUBLISHED if row["metric"] == "acc"]) == 68


@pytest.mark.notebook
def test_notebook_06_under_nbval(tmp_path):
    env = {**os.environ, "KDLAB_PROFILE": "smoke", "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         str(ROOT / "notebooks" / "06_compare_methods.ipynb")],
        cwd=ROOT / "notebooks", env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
