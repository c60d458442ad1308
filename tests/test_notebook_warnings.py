"""No warning reaches a rendered notebook, and answers print sentences or tables: under nbval,
notebooks/conftest.py fails a cell whose output shows a warning, or an answer cell that prints a
raw nested structure (make test-notebooks runs every notebook that way)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "notebooks" / "conftest.py"  # the nbval hook (its name clashes with tests/'s)
_spec = importlib.util.spec_from_file_location("notebook_hook", HOOK)
hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hook)
warnings_shown, raw_answers, is_answer = hook.warnings_shown, hook.raw_answers, hook.is_answer


def test_warnings_are_read_off_a_cells_stderr():
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "x.py:1: FutureWarning: on stdout\n"},
        {"output_type": "stream", "name": "stderr", "text": "training: 100%|██| 2/2\n"},
        {
            "output_type": "stream",
            "name": "stderr",
            "text": "/tmp/ipykernel_1/2.py:19: FutureWarning: \n\nSetting a gradient palette "
            "using color= is deprecated.\n  sns.stripplot(\n",
        },
        {"output_type": "stream", "name": "stderr", "text": "a.py:3: UserWarning: layout\n"},
    ]
    assert warnings_shown(outputs) == [
        "FutureWarning: Setting a gradient palette using color= is deprecated.",
        "UserWarning: layout",
    ]


def test_raw_structures_are_found_in_answer_cells_only():
    def out(text):
        return [{"output_type": "stream", "name": "stdout", "text": text}]

    assert raw_answers(out("3: found [[(73.08, 'RepDistiller README')]]\n")) == [
        "3: found [[(73.08, 'RepDistiller README')]]"
    ]
    assert raw_answers(out("4: {'KD + ML': [95.1]}\n"))
    assert (
        raw_answers(out("τ = 0.1: q_1 = [0.5, 0.25, 0.25] (α = 1)\nKD 73.08 % (RepDistiller)\n"))
        == []
    )
    cells = [
        {"cell_type": "code", "source": "x"},
        {"cell_type": "markdown", "source": "### Answers (run to check)"},
        {"cell_type": "code", "source": "y"},
    ]
    assert [is_answer(cells, c) for c in cells] == [False, False, True]


@pytest.mark.notebook
def test_nbval_fails_a_cell_that_shows_a_warning_or_a_raw_answer(tmp_path):
    shutil.copy2(HOOK, tmp_path / "conftest.py")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import sys\nprint('progress', file=sys.stderr)"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('old API', FutureWarning)"),
        nbformat.v4.new_code_cell("print({'a': [1, 2]})"),  # not an answer: allowed
        nbformat.v4.new_markdown_cell("### Answers"),
        nbformat.v4.new_code_cell("print('3: KD gives 73.08 %.')"),
        nbformat.v4.new_code_cell("print([[(73.08, 'RepDistiller README')]])"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, tmp_path / "shows_a_warning.ipynb")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "-rf",
         "shows_a_warning.ipynb"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "2 failed, 3 passed" in output  # stderr without a warning, a sentence: fine
    assert "a warning reaches the rendered notebook: FutureWarning: old API" in output
    assert "an answer prints a raw Python structure" in output
