"""In-browser test of the notebooks: JupyterLab + headless Chromium (Playwright).

For every ``notebooks/*.ipynb`` (sorted) this opens the notebook in a real
JupyterLab, runs all cells with ``KDLAB_PROFILE=smoke`` and checks that

1. no cell shows an error and no kernel-selection dialog appears;
2. every widget renders (no "Loading widget..." / "Error displaying widget",
   every ``.kdlab-panel`` visible);
3. in every ``.kdlab-panel`` each slider and dropdown redraws the panel's
   ``.kdlab-figure`` (within ``KDLAB_BROWSER_REDRAW_TIMEOUT``, default 30 s),
   and each ``.kdlab-train`` button updates the panel's ``.kdlab-live`` plot
   in place (training must finish within ``KDLAB_BROWSER_TRAIN_TIMEOUT``,
   default 120 s);
4. screenshots of the panel before/after every interaction are saved as
   ``runs/browser/<notebook>__<widget>__before.png`` / ``__after.png``.

Run with ``pytest -m browser tests/test_browser.py``.  Set
``KDLAB_BROWSER_ROOT`` to test another checkout (it needs a ``notebooks/``
folder).  Skipped when Chromium or Playwright are unavailable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser_support as bs  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = bs.repo_root()
NOTEBOOKS = bs.find_notebooks(ROOT)
NO_NOTEBOOKS = "__no_notebooks__"


def _params():
    if not NOTEBOOKS:
        return [pytest.param(NO_NOTEBOOKS, id="no-notebooks")]
    return [pytest.param(nb, id=nb.stem) for nb in NOTEBOOKS]


@pytest.fixture(scope="module")
def out_dir() -> Path:
    out = bs.output_dir(ROOT)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def lab_server(out_dir):
    reason = bs.missing_browser_tooling()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    if not NOTEBOOKS:
        pytest.skip(f"browser test skipped: no notebooks in {ROOT / 'notebooks'}")
    server = bs.LabServer(ROOT, log_path=out_dir / "jupyterlab.log")
    try:
        server.check_kernelspec()
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(lab_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = bs.launch_browser(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.parametrize("notebook", _params())
def test_notebook_in_browser(notebook, lab_server, browser, out_dir):
    if notebook == NO_NOTEBOOKS:  # pragma: no cover - the fixture skips first
        pytest.skip(f"no notebooks in {ROOT / 'notebooks'}")
    spec = bs.notebook_kernelspec(notebook)
    if spec != bs.NOTEBOOK_KERNEL:
        pytest.fail(
            f"notebook {notebook.name}: metadata.kernelspec.name is {spec!r}, "
            f"expected '{bs.NOTEBOOK_KERNEL}' (JupyterLab would ask to select a kernel)",
            pytrace=False,
        )

    for stale in out_dir.glob(f"{notebook.stem}__*.png"):
        stale.unlink()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    session = bs.NotebookSession(page, lab_server, notebook, out_dir)
    t0 = time.monotonic()
    try:
        # 1. open, run all cells, no errors, no kernel dialog
        session.open()
        run_s = session.run_all()
        session.check_outputs()
        session.reset_kernel_errors()
        # 2. every widget rendered, every .kdlab-panel visible
        widgets = session.check_widgets_render()
        page.screenshot(path=str(out_dir / f"{notebook.stem}__executed.png"))
        # 3./4. sliders, dropdowns and train buttons, with screenshots
        interactions = session.exercise_panels()
        failures = [i.detail for i in interactions if not i.ok]
        print(
            f"\n[{notebook.stem}] run all: {run_s:.1f}s, "
            f"{widgets['views']} widget output(s), {widgets['panels']} panel(s), "
            f"total {time.monotonic() - t0:.1f}s"
        )
        for i in interactions:
            print(f"  {'ok  ' if i.ok else 'FAIL'} {i.detail} ({i.seconds:.1f}s)")
        if failures:
            raise session.fail(
                f"{len(failures)} widget check(s) failed:\n- " + "\n- ".join(failures)
            )
    except bs.NotebookFailure as exc:
        failure = str(exc)
    else:
        failure = None
    finally:
        try:
            context.close()
        finally:
            try:
                lab_server.shutdown_kernels()
            except Exception:
                pass
    if failure:
        pytest.fail(failure, pytrace=False)
