"""The notebooks under nbval (``make test-notebooks``): a cell that shows a warning fails.

No warning may reach a student's rendered notebook. Fix its cause in the kit; a warning the kit
cannot fix is filtered where it arises, by category and module (``warnings.filterwarnings``),
never by silencing everything. Python prints a warning to the cell's stderr as
``file:line: SomeWarning: message``; nbval keeps a cell's outputs in ``item.test_outputs``.
"""

from __future__ import annotations

import re

import pytest

WARNING = re.compile(r"^\S.*?:\d+: (\w*Warning): (.*)$", re.MULTILINE)


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed:
        return
    shown = warnings_shown(getattr(item, "test_outputs", None))
    if shown:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: a warning reaches the rendered notebook: {shown[0]}"
            + (f" (and {len(shown) - 1} more)" if len(shown) > 1 else "")
            + "; fix its cause, or filter it by category and module where the kit cannot"
        )
