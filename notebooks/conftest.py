"""The notebooks under nbval (``make test-notebooks``): a cell fails when its rendered output
shows a warning, or when it answers an exercise with a raw Python structure.

- No warning may reach a student's rendered notebook. Fix its cause in the kit; a warning the
  kit cannot fix is filtered where it arises, by category and module
  (``warnings.filterwarnings``), never by silencing everything. Python prints a warning to the
  cell's stderr as ``file:line: SomeWarning: message``.
- The cells under an "Answers" heading print sentences or tables, not a nested list or a dict
  (``[[(73.08, 'RepDistiller README')]]`` is not an answer); a flat vector of numbers is fine.

nbval keeps a cell's outputs in ``item.test_outputs`` and the notebook in ``item.parent.nb``.
"""

from __future__ import annotations

import re

import pytest

WARNING = re.compile(r"^\S.*?:\d+: (\w*Warning): (.*)$", re.MULTILINE)
RAW = re.compile(r"[\[(]\s*[\[(]|\{\s*['\"]")  # a nested list or tuple, a dict with string keys
ANSWERS = re.compile(r"^#+ .*\bAnswers\b", re.MULTILINE)


def warnings_shown(outputs) -> list[str]:
    """``"Category: message"`` for every warning printed on a cell's stderr."""
    shown = []
    for output in outputs or ():
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            text = output.get("text", "")
            for match in WARNING.finditer(text):
                # The message may start on the next line (pandas and seaborn do that).
                message = match.group(2).strip() or text[match.end() :].strip().split("\n")[0]
                shown.append(f"{match.group(1)}: {message}")
    return shown


def raw_answers(outputs) -> list[str]:
    """The lines of a cell's printed output that show a raw nested structure."""
    lines = []
    for output in outputs or ():
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            lines += [line for line in output.get("text", "").splitlines() if RAW.search(line)]
    return lines


def is_answer(cells, cell) -> bool:
    """Whether ``cell`` comes after an "Answers" heading of its notebook."""
    index = next((i for i, c in enumerate(cells) if c is cell), None)
    return index is not None and any(
        c.get("cell_type") == "markdown" and ANSWERS.search("".join(c.get("source", "")))
        for c in cells[:index]
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed:
        return
    outputs = getattr(item, "test_outputs", None)
    shown = warnings_shown(outputs)
    if shown:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: a warning reaches the rendered notebook: {shown[0]}"
            + (f" (and {len(shown) - 1} more)" if len(shown) > 1 else "")
            + "; fix its cause, or filter it by category and module where the kit cannot"
        )
        return
    cells = getattr(getattr(item, "parent", None), "nb", {}).get("cells", [])
    raw = raw_answers(outputs) if is_answer(cells, getattr(item, "cell", None)) else []
    if raw:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: an answer prints a raw Python structure: {raw[0].strip()!r}; "
            "print it as a sentence or a table"
        )
