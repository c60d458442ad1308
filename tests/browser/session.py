"""One notebook in one Playwright page: open it, run all cells, check outputs and widgets.

The page reads itself through ``probe.js`` (``window.kdlabProbe``, installed by
:func:`new_page`); every wait is Playwright's ``wait_for_function`` on one of its predicates,
with a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import (
    KERNEL_START_TIMEOUT,
    NOTEBOOK_KERNEL,
    POLL_MS,
    PROBE_JS,
    RUN_TIMEOUT,
    WIDGET_RENDER_TIMEOUT,
)
from .server import LabServer

# calls window.kdlabProbe[name](...args); the one piece of JavaScript kept in Python
CALL_PROBE = "([name, args]) => window.kdlabProbe[name](...args)"


class NotebookFailure(AssertionError):
    pass


def new_page(browser):
    """A page (in its own context) with ``probe.js`` installed before JupyterLab loads."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    context.add_init_script(path=str(PROBE_JS))
    return context, context.new_page()


class NotebookSession:
    """Drive one notebook in one browser page."""

    def __init__(self, page, server: LabServer, notebook: Path, out_dir: Path):
        self.page = page
        self.server = server
        self.notebook = notebook
        self.stem = notebook.stem
        self.rel = notebook.relative_to(server.root).as_posix()
        self.out_dir = out_dir
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.console.append(f"page error: {exc}"))

    # -- the probe ---------------------------------------------------------
    def probe(self, name: str, *args):
        """The value of ``window.kdlabProbe.<name>(*args)`` in the page."""
        return self.page.evaluate(CALL_PROBE, [name, list(args)])

    def wait_for(self, name: str, *args, timeout: float):
        """Wait until ``kdlabProbe.<name>(*args)`` is truthy and return its value, or None
        when ``timeout`` seconds pass first."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            handle = self.page.wait_for_function(
                CALL_PROBE, arg=[name, list(args)], timeout=timeout * 1000, polling=POLL_MS
            )
        except PlaywrightTimeout:
            return None
        return handle.json_value()

    def kernel(self) -> dict:
        """``{requests, pending, errors}`` of the kernel since :meth:`open`."""
        return self.probe("kernel")

    def fail(self, what: str) -> NotebookFailure:
        shot = self.out_dir / f"{self.stem}__FAILED.png"
        try:
            self.page.screenshot(path=str(shot), full_page=True)
            where = f" (screenshot: {shot})"
        except Exception:
            where = ""
        console = ""
        if self.console:
            console = "\nbrowser console errors (for context):\n  " + "\n  ".join(
                c[:300] for c in self.console[-5:]
            )
        return NotebookFailure(f"notebook {self.rel}: {what}{where}{console}")

    def _check_dialogs(self, state: dict) -> None:
        for text in state.get("dialogs") or []:
            if "kernel" in text.lower():
                raise self.fail(
                    f"a kernel dialog appeared instead of the '{NOTEBOOK_KERNEL}' kernel "
                    f"starting (is the notebook's kernelspec '{NOTEBOOK_KERNEL}' and is "
                    f"ipykernel installed in the venv?): {text!r}"
                )
            raise self.fail(f"unexpected JupyterLab dialog: {text!r}")

    # -- open / run --------------------------------------------------------
    def open(self) -> None:
        """Open the notebook; wait for its kernel to be idle and connected; watch the kernel."""
        self.page.goto(self.server.notebook_url(self.rel), wait_until="domcontentloaded")
        state = self.wait_for("opened", self.rel, timeout=KERNEL_START_TIMEOUT)
        if state is None:
            raise self.fail(
                f"kernel not idle within {KERNEL_START_TIMEOUT:.0f}s after opening "
                f"(last state: {self.probe('state', self.rel)}); server log tail:\n"
                f"{self.server.log_tail(2000)}"
            )
        self._check_dialogs(state)
        if state.get("kernelName") != NOTEBOOK_KERNEL:
            raise self.fail(
                f"notebook started kernel {state.get('kernelName')!r}, expected '{NOTEBOOK_KERNEL}'"
            )
        self.probe("watchKernel", self.rel)

    def run_all(self) -> float:
        """Clear the outputs, "Run All Cells", wait until done; return the seconds taken."""
        t0 = time.monotonic()
        self.probe("runAll", self.rel)
        state = self.wait_for("ranAll", self.rel, timeout=RUN_TIMEOUT)
        if state is None:
            running = [c["index"] for c in self.cells() if c["prompt"].startswith("[*]")]
            raise self.fail(
                f"'Run All Cells' did not finish within {RUN_TIMEOUT:.0f}s "
                f"(cells still running/queued: {running})"
            )
        self._check_dialogs(state)
        if state["run"].get("error"):
            raise self.fail(f"'Run All Cells' raised in JupyterLab: {state['run']['error']}")
        return time.monotonic() - t0

    def cells(self) -> list[dict]:
        return self.probe("cells", self.rel)

    def check_outputs(self) -> list[dict]:
        """No cell shows an error, the kernel reported none, every code cell ran."""
        cells = self.cells()
        problems = [
            f"cell {c['index']} shows an error output:\n{err}" for c in cells for err in c["errors"]
        ]
        for err in self.kernel()["errors"]:
            if not any(err[:200] in p for p in problems):
                problems.append(f"kernel reported an error:\n{err}")
        if problems:
            raise self.fail("\n".join(problems))
        missing = [
            c["index"]
            for c in cells
            if c["type"] == "code" and not c["blank"] and c["count"] is None
        ]
        if missing:
            raise self.fail(f"code cells without an execution count after Run All: {missing}")
        self.probe("clearKernelErrors")
        return cells

    def check_widgets_render(self) -> dict:
        """Every widget output rendered; every ``.kdlab-panel`` visible, with a size."""
        from playwright.sync_api import expect

        state = self.wait_for("rendered", self.rel, timeout=WIDGET_RENDER_TIMEOUT)
        if state is None:
            ws = self.probe("widgets", self.rel)
            raise self.fail(
                f"widgets did not render within {WIDGET_RENDER_TIMEOUT:.0f}s: "
                f"{ws['rendered']} of {ws['views']} widget outputs rendered "
                f"(cells not rendered: {ws['missing']}), 'Loading widget...' shown: "
                f"{ws['loading']}, 'Error displaying widget' shown: {ws['errorDisplaying']}"
            )
        panels = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .kdlab-panel")
        for i in range(panels.count()):
            panel = panels.nth(i)
            panel.scroll_into_view_if_needed()
            try:
                expect(panel).to_be_visible(timeout=5_000)
            except AssertionError:
                raise self.fail(f".kdlab-panel #{i + 1} is in the page but not visible") from None
            box = panel.bounding_box()
            if not box or box["width"] < 5 or box["height"] < 5:
                raise self.fail(f".kdlab-panel #{i + 1} has no size on screen ({box})")
        return state

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(self.out_dir / f"{self.stem}__{name}.png"))

    def screenshot_figures(self) -> int:
        """Every figure the notebook shows (each image output, panels' included), one file
        each, ``<notebook>__figure-NN.png``, as the reader sees it: the way to look at the
        figures of a run in another profile (``KDLAB_BROWSER_PROFILE=lab``)."""
        images = self.page.locator(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img"
        )
        for i in range(images.count()):
            image = images.nth(i)
            image.scroll_into_view_if_needed()
            image.screenshot(path=str(self.out_dir / f"{self.stem}__figure-{i + 1:02d}.png"))
        return images.count()
