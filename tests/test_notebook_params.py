"""The notebook contract (kdlab/reproduce/contract.py), checked on every numbered notebook, and
papermill parameters taking effect: notebook 01 executed headless with a whole recipe set."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from kdlab.methods import get_method
from kdlab.reproduce.contract import CONTRACT, METHOD_NOTEBOOKS, method_knobs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = NOTEBOOKS / "01_knowledge_distillation.ipynb"
NUMBERED = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
MAIN_METHOD = {
    path.name: method
    for method, pattern in METHOD_NOTEBOOKS.items()
    for path in NOTEBOOKS.glob(pattern)
}


def _parameters(path: Path) -> dict[str, str]:
    papermill = pytest.importorskip("papermill")
    return {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}


def _code_after_parameters(path: Path) -> str:
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    return "\n".join("".join(c["source"]) for c in cells[index + 1 :])


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("path", NUMBERED, ids=[p.name[:2] for p in NUMBERED])
def test_every_notebook_that_trains_keeps_the_contract(path):
    params = _parameters(path)
    if "out_dir" not in params:  # a notebook that trains nothing (00, 06)
        return
    for name in CONTRACT:
        assert params.get(name) == "None", f"{path.name}: {name} must be a parameter, = None"
    assert "models" in params or "student" in params, f"{path.name}: no models parameter"
    # Used: every parameter is read by a later cell.
    code = _code_after_parameters(path)
    for name in params:
        assert re.search(rf"\b{name}\b", code), f"{path.name}: parameter {name} is never used"
    method = MAIN_METHOD.get(path.name)
    if method is None:  # a grid runs its methods through the runner (07: knobs per method)
        return
    if get_method(method).teacher_mode is not None:
        assert params.get("teacher") == "None", f"{path.name}: teacher must be a parameter"
    for knob, default in method_knobs(method).items():
        assert knob in params, f"{path.name}: the {method} knob {knob!r} is no parameter"
        given = ast.literal_eval(params[knob])
        assert _plain(given) == _plain(default), (
            f"{path.name}: {knob} = {given!r}, {method}: {default!r}"
        )


def test_the_contract_test_catches_a_missing_knob(tmp_path):
    """A notebook 05 without ``styles`` fails the rule above."""
    nb = json.loads((NOTEBOOKS / "05_teacher_and_peers.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = [line for line in cell["source"] if not line.startswith("styles =")]
    broken = tmp_path / "05_teacher_and_peers.ipynb"
    broken.write_text(json.dumps(nb))
    with pytest.raises(AssertionError, match="knob 'styles' is no parameter"):
        test_every_notebook_that_trains_keeps_the_contract(broken)


@pytest.mark.notebook
def test_papermill_parameters_take_effect(tmp_path, kernel_environment):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "runs"
    executed = tmp_path / "executed.ipynb"
    recipe = {"epochs": 2, "batch_size": 40, "lr": 0.02, "schedule": "step", "milestones": [1],
              "weight_decay": 1e-4, "precision": "fp32", "train_size": 120}  # fmt: skip
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"PROFILE": "smoke", "out_dir": str(out_dir), "run_name": "cell",
                    "data_root": str(tmp_path / "data"), "temperature": 2.0, **recipe},
        kernel_name="python3",
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )  # fmt: skip
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1

    names = {p.name for p in out_dir.iterdir() if p.is_dir()}
    assert {"teacher-seed0", "student-alone-seed0", "cell-seed0"} <= names  # the main run: run_name
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["epochs"] == 2 and summary["dataset"] == "digits"
        train = json.loads((folder / "config.json").read_text())["train"]
        for key, value in recipe.items():
            if key != "train_size":
                assert _plain(train[key]) == value, f"{folder.name}: {key}"
    config = json.loads((out_dir / "cell-seed0" / "config.json").read_text())
    assert config["params"]["temperature"] == 2.0  # a method parameter reached the run too
