"""The size rule: no module in kdlab/ over 500 lines, no function (or method) over 80.

A function's length runs from its ``def`` line (decorators excluded) to its last line, docstring
and comments included: what a reader has to hold.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdlab"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function in ``source`` longer than ``limit`` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_the_rule_counts_what_it_should():
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    nested = "class A:\n    def method(self):\n" + body.replace("    ", "        ") + "\n"
    assert long_functions(f"def f():\n{body}\n") == []  # 80 lines: allowed
    assert long_functions(f"def f():\n{body}\n    x = 1\n") == [("f", 81)]
    assert long_functions(nested + "        y = 2\n") == [("A.method", 81)]
    assert long_functions("def outer():\n    def inner():\n" + body.replace("    ", "        ")
                          + "\n        y = 2\n") == [("outer", 82), ("outer.inner", 81)]  # fmt: skip


def test_kdlab_has_modules():
    assert len(MODULES) > 10 and PACKAGE / "train.py" in MODULES


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_and_function_sizes(path):
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{_name(path)} has {lines} lines (at most {MAX_MODULE_LINES})"
    )
    too_long = long_functions(source)
    assert not too_long, f"{_name(path)}: functions over {MAX_FUNCTION_LINES} lines: {too_long}"
