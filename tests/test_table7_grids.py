"""The grids of the papers' remaining tables: tadml_table7 (every row of TADML's Table 7 the kit
trains, the paper's numbers beside, the others listed as not reproduced) and niyaz_msi (seed
000's three set-ups on MSI vs MSS); their smoke versions run to a table."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import yaml
from test_msi import write as write_msi_tiles

from kdlab import reproduce
from kdlab.methods import get_method
from kdlab.methods.kdml import SETUPS
from kdlab.reproduce.grid import GRIDS_DIR

TABLE7_ROWS = {  # (method, networks, teacher) of every row of Table 7 the kit trains
    ("independent", ("resnet20",), None),
    ("independent", ("resnet164",), None),
    ("kd", ("resnet20",), "resnet164"),
    ("fitnet", ("resnet20",), "resnet164"),
    ("fsp", ("resnet20",), "resnet110"),
    ("logit_regression", ("resnet20",), "resnet164"),
    ("dml", ("resnet20", "resnet20"), None),
    ("adml", ("resnet20", "resnet20"), None),
    ("tadml", ("resnet20", "resnet20"), None),
}
NOT_REPRODUCED = ("Quantization", "Binary Connect", "ANC", "TSANC", "KSANC")


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tadml_table7_has_every_row_on_three_data_sets_and_three_seeds():
    grid = reproduce.load_grid("tadml_table7")
    rows = {(c.method, c.models, c.teacher) for c in grid.cells}
    assert rows == TABLE7_ROWS
    assert {c.dataset for c in grid.cells} == {"cifar10", "cifar100", "tinyimagenet"}
    assert len(grid.cells) == 9 * 3 * 3 and {c.seed for c in grid.cells} == {0, 1, 2}
    assert all(c.profile == "paper" and not c.params for c in grid.cells)
    listed = " ".join(grid.not_reproduced)
    assert all(name in listed for name in NOT_REPRODUCED)
    assert all(len(reason) > 40 for reason in grid.not_reproduced.values())


def test_the_papers_table7_numbers_stand_beside_its_rows():
    """Every published number of Table 7 matches a row of the grid: 54.45 … 61.55 on
    Tiny-ImageNet, and no FSP or SNN-MIMIC number there (the table has none)."""
    expected = {
        ("cifar10", "independent", "resnet164"): 93.43,
        ("tinyimagenet", "independent", "resnet164"): 61.55,
        ("cifar100", "fitnet", "resnet20"): 64.96,
        ("tinyimagenet", "fitnet", "resnet20"): 55.59,
        ("cifar10", "fsp", "resnet20"): 88.70,
        ("cifar100", "logit_regression", "resnet20"): 67.21,
        ("tinyimagenet", "independent", "resnet20"): 54.45,
        ("tinyimagenet", "tadml", "resnet20"): 60.11,
    }
    for (dataset, method, arch), acc in expected.items():
        found = reproduce.published_for(dataset, method, [arch])
        assert (acc, "TADML Table 7") in found[0], (dataset, method)
    assert reproduce.published_for("tinyimagenet", "fsp", ["resnet20"]) == [[]]
    assert reproduce.published_for("tinyimagenet", "logit_regression", ["resnet20"]) == [[]]


def test_tadml_table7_smoke_runs_to_a_table(tmp_path):
    out = tmp_path / "t7"
    outcomes = reproduce.run_grid("tadml_table7_smoke", out, how="direct", progress=False)
    assert [o["status"] for o in outcomes] == ["ok"] * 9
    results = _csv(out / "results.csv")
    methods = {r["method"] for r in results}
    assert methods == {m for m, _, _ in TABLE7_ROWS}
    teachers = {r["method"] for r in results if r["network"] == "teacher"}
    assert teachers == {"kd", "fitnet", "fsp", "logit_regression"}  # each trained first
    table = (out / "results.md").read_text()
    assert "| fitnet | cnn_tiny ← cnn_small | digits |" in table
    assert "## Not reproduced" in table and "Binary Connect" in table
    assert all(float(r["final_mean"]) >= 0 for r in results)


def test_niyaz_msi_is_kdmls_three_setups():
    defaults = dataclasses.asdict(get_method("kdml").Params())
    for name in ("niyaz_msi", "niyaz_msi_smoke"):
        grid = reproduce.load_grid(name)
        setups = {
            frozenset((k, v) for k, v in c.params.items() if v != defaults[k]) for c in grid.cells
        }
        assert setups == {frozenset(overrides.items()) for overrides in SETUPS.values()}
        assert all(c.method == "kdml" and len(c.models) == 2 for c in grid.cells)
    grid = reproduce.load_grid("niyaz_msi")
    assert {c.dataset for c in grid.cells} == {"msi_crc"} and len(grid.cells) == 3 * 3
    assert "not available" in grid.description


def test_niyaz_msi_smoke_runs_to_a_table_with_auroc_on_fake_tiles(tmp_path, capsys):
    """The smoke grid on fake tiles in the archives' layout (the real ones cannot be
    downloaded): every student and the students' ensemble, with AUROC and balanced accuracy."""
    (tmp_path / "data").mkdir()
    root = write_msi_tiles(tmp_path / "data", "zip")
    spec = yaml.safe_load((GRIDS_DIR / "niyaz_msi_smoke.yaml").read_text())
    spec["datasets"] = ["msi_crc"]
    spec["settings"] = {"batch_size": 6}
    out = tmp_path / "msi"
    outcomes = reproduce.run_grid(spec, out, how="direct", data_root=root, progress=False)
    assert [o["status"] for o in outcomes] == ["ok"] * 3
    results = _csv(out / "results.csv")
    networks = {(r["params"], r["network"]) for r in results}
    assert {n for _, n in networks} == {"teacher", "student1", "student2", "ensemble"}
    assert not any(n == "teacher" and "use_teacher" in p for p, n in networks)  # ML only
    for row in results:
        assert 0 <= float(row["auroc_mean"]) <= 1 and 0 <= float(row["balanced_acc_mean"]) <= 100
    table = (out / "results.md").read_text()
    assert "final auroc" in table and "final balanced_acc" in table
    assert "| kdml | cnn_tiny+cnn_tiny ← cnn_small | msi_crc | beta=0 |" in table
    runs = _csv(out / "runs.csv")
    assert {"final_auroc", "final_balanced_acc"} <= set(runs[0])


def test_niyaz_msi_smoke_on_digits_runs_to_a_table(tmp_path):
    out = tmp_path / "digits"
    outcomes = reproduce.run_grid("niyaz_msi_smoke", out, how="direct", progress=False)
    assert [o["status"] for o in outcomes] == ["ok"] * 3
    ensembles = [r for r in _csv(out / "results.csv") if r["network"] == "ensemble"]
    assert len(ensembles) == 3 and "auroc_mean" not in ensembles[0]  # digits: accuracy only
    assert Path(out / "results.md").read_text().count("| ensemble |") == 3
