"""Notebook 11's method knobs reach their runs: executed headless with papermill parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "11_hints_and_regression.ipynb"


@pytest.mark.notebook
def test_every_method_knob_reaches_its_run(tmp_path, kernel_environment):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "runs"
    given = {
        "kd_alpha": 0.7,
        "fitnet_beta": 50.0,
        "fitnet_hint_stage": 1,
        "fitnet_stages": 2,
        "fitnet_hint_epochs": 1,
        "fsp_beta": 2.0,
        "fsp_stages": 1,
        "mimic_weight": 0.5,
        "mimic_ce_weight": 0.25,
    }
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={"PROFILE": "smoke", "epochs": 2, "out_dir": str(out_dir),
                    "run_name": "hint", **given},
        kernel_name="python3",
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )  # fmt: skip
    names = {p.name for p in out_dir.iterdir()}
    expected = {"teacher", "student-alone", "fsp-teacher", "kd", "hint", "fsp", "mimic"}
    assert {f"{n}-seed0" for n in expected} | {"try-fitnet-seed0"} <= names
    params = {
        label: json.loads((out_dir / f"{label}-seed0" / "config.json").read_text())["params"]
        for label in ("kd", "hint", "fsp", "mimic")
    }
    assert params["kd"] == {"alpha": 0.7, "temperature": 4.0}
    assert params["hint"]["beta"] == 50.0 and params["hint"]["hint_stage"] == 1
    assert params["hint"]["stages"] == 2 and params["hint"]["hint_epochs"] == 1
    assert params["fsp"]["beta"] == 2.0 and params["fsp"]["stages"] == 1
    assert params["mimic"] == {"weight": 0.5, "ce_weight": 0.25}
    fsp = json.loads((out_dir / "fsp-seed0" / "summary.json").read_text())
    assert fsp["networks"]["teacher"]["arch"] == "cnn_tiny"  # the student's widths, not cnn_small
    kd = json.loads((out_dir / "kd-seed0" / "summary.json").read_text())
    assert kd["epochs"] == 2 and kd["networks"]["teacher"]["arch"] == "cnn_small"
