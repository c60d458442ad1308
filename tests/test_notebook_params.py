"""Papermill parameters reach a notebook: notebook 01 executed headless with ``epochs=1``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_knowledge_distillation.ipynb"


@pytest.mark.notebook
def test_papermill_parameters_take_effect(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    # The kernel is a child process: it inherits the environment (this checkout first on the
    # path, one intra-op thread, the smoke profile).
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("KDLAB_PROFILE", "smoke")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out_dir = tmp_path / "runs"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"PROFILE": "smoke", "epochs": 1, "out_dir": str(out_dir), "temperature": 2.0},
        kernel_name="python3",
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1
    assert 'out_dir = "' in "".join(injected[0]["source"])

    folders = sorted(p for p in out_dir.iterdir() if p.is_dir())
    names = {p.name for p in folders}
    assert {"teacher-seed0", "student-alone-seed0", "kd-seed0"} <= names
    for folder in folders:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1, f"{folder.name}: {len(lines)} epochs, the parameter said 1"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["epochs"] == 1 and summary["dataset"] == "digits"
    config = json.loads((out_dir / "kd-seed0" / "config.json").read_text())
    assert config["params"]["temperature"] == 2.0  # a method parameter reached the run too
    assert config["train"]["epochs"] == 1
