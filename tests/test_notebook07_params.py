"""Notebook 07's method knobs reach their runs: executed headless with papermill parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_beyond_hinton.ipynb"


@pytest.mark.notebook
def test_every_method_knob_reaches_its_run(tmp_path, kernel_environment):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "runs"
    given = {
        "kd_alpha": 0.7,
        "dkd_beta": 3.0,
        "dkd_warmup": 5,
        "dist_gamma": 1.5,
        "dist_ce_weight": 0.5,
        "ls_weight": 4.0,
        "ls_temperature": 3.0,
    }
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={"PROFILE": "smoke", "epochs": 1, "out_dir": str(out_dir), **given},
        kernel_name="python3",
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    names = {p.name for p in out_dir.iterdir()}
    assert {"teacher-seed0", "student-alone-seed0", "try-dkd-seed0"} <= names
    params = {
        label: json.loads((out_dir / f"{label}-seed0" / "config.json").read_text())["params"]
        for label in ("kd", "dkd", "dist", "ls")
    }
    assert params["kd"]["alpha"] == 0.7
    assert params["dkd"]["beta"] == 3.0 and params["dkd"]["warmup"] == 5
    assert params["dist"]["gamma"] == 1.5 and params["dist"]["ce_weight"] == 0.5
    assert params["dist"]["beta"] == 2.0  # not given: the notebook's default
    assert params["ls"] == {"kd_weight": 4.0, "ce_weight": 0.1, "temperature": 3.0}
    for label in ("kd", "dkd", "dist", "ls"):
        summary = json.loads((out_dir / f"{label}-seed0" / "summary.json").read_text())
        assert summary["epochs"] == 1 and summary["networks"]["teacher"]["arch"] == "cnn_small"
