"""Every parameter default a notebook declares is one papermill reads (issue 23, point 3).

``papermill --help-notebook`` and ``papermill.inspect_notebook`` read a ``parameters`` cell
line by line: an assignment that spans lines (``x = (\\n    None  # …\\n)``) shows its default
as ``"("``. So each notebook's ``parameters`` cell is one assignment per line, of a literal,
and for every parameter the default papermill infers, read back with ``ast.literal_eval``,
equals the value the cell assigns. The notebooks are discovered: one added later is checked too.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def parameters_cell(path: Path) -> str:
    cells = [
        "".join(cell["source"])
        for cell in json.loads(path.read_text())["cells"]
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    return cells[0]


def assigned(source: str, where: str) -> dict:
    """``{name: value}`` of the cell, checking each statement is ``name = literal`` on one line."""
    values = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), f"{where}, line {node.lineno}: not an assignment"
        assert node.lineno == node.end_lineno, f"{where}, line {node.lineno}: spans lines"
        assert len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), where
        name = node.targets[0].id
        try:
            values[name] = ast.literal_eval(node.value)
        except ValueError:
            pytest.fail(f"{where}: {name} is not assigned a literal")
    return values


def test_notebooks_are_found():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_default_the_cell_assigns(path):
    papermill = pytest.importorskip("papermill")
    values = assigned(parameters_cell(path), path.name)
    inferred = papermill.inspect_notebook(str(path))
    assert set(inferred) == set(values), path.name
    for name, value in values.items():
        default = inferred[name]["default"]
        try:
            read = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            pytest.fail(f"{path.name}: papermill reads {name}'s default as {default!r}")
        assert read == value and type(read) is type(value), (path.name, name, default)


def test_the_check_sees_a_default_spread_over_lines(tmp_path):
    """The fault of notebook 07 before: ruff wrapped a long line into a parenthesised value."""
    papermill = pytest.importorskip("papermill")
    # Notebook 07's dkd_warmup as it was: papermill stops at the "=" inside the comment.
    source = "warmup = (\n    None  # epochs; None = mdistiller's 20 of 240\n)\nbeta = 8.0\n"
    with pytest.raises(AssertionError, match="spans lines"):
        assigned(source, "example")
    cell = {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": source,
            "outputs": [], "execution_count": None}  # fmt: skip
    nb = {"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "language": "python",
          "display_name": "Python 3"}}, "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    path = tmp_path / "example.ipynb"
    path.write_text(json.dumps(nb))
    assert papermill.inspect_notebook(str(path))["warmup"]["default"] == "("
