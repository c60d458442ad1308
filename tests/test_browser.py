"""In-browser test of the notebooks: JupyterLab + headless Chromium (Playwright).

For every ``notebooks/*.ipynb`` (sorted) this opens the notebook in a real JupyterLab, runs all
cells with ``KDLAB_PROFILE=smoke`` and checks that

1. no cell shows an error and no kernel-selection dialog appears;
2. every widget renders (no "Loading widget..." / "Error displaying widget", every
   ``.kdlab-panel`` visible);
3. every slider, dropdown, checkbox and button found on the page sits in a ``.kdlab-panel``;
   each slider, dropdown and checkbox redraws its panel's ``.kdlab-figure`` (within
   ``KDLAB_BROWSER_REDRAW_TIMEOUT``, default 30 s) and is put back; each ``.kdlab-train``
   button updates the panel's ``.kdlab-live`` plot in place, and training finishes within
   ``KDLAB_BROWSER_TRAIN_TIMEOUT`` (default 120 s);
4. screenshots of the panel before/after every change are saved as
   ``runs/browser/<notebook>__<control>__before.png`` / ``__after.png``, and one of every
   figure after Run All as ``runs/browser/<notebook>__figure-NN.png``.

How each check waits, and the other settings, are in ``tests/browser/``. Run with
``pytest -m browser tests/test_browser.py``; set ``KDLAB_BROWSER_ROOT`` to test another checkout
(it needs a ``notebooks/`` folder). Skipped when Chromium or Playwright are unavailable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import config  # noqa: E402
from browser.controls import Controls  # noqa: E402
from browser.server import LabServer  # noqa: E402
from browser.session import NotebookFailure, NotebookSession, new_page  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = config.repo_root()
NOTEBOOKS = config.find_notebooks(ROOT)


def _params():
    if not NOTEBOOKS:
        return [pytest.param(None, id="no-notebooks")]
    return [pytest.param(nb, id=nb.stem) for nb in NOTEBOOKS]


@pytest.fixture(scope="module")
def out_dir() -> Path:
    out = config.output_dir(ROOT)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def lab_server(out_dir):
    reason = config.missing_browser_tooling()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    if not NOTEBOOKS:
        pytest.skip(f"browser test skipped: no notebooks in {ROOT / 'notebooks'}")
    server = LabServer(ROOT, log_path=out_dir / "jupyterlab.log")
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
        b = config.launch_browser(pw)
        try:
            yield b
        finally:
            b.close()


def _drive(session: NotebookSession) -> None:
    """Open, run all, check outputs and widgets, exercise every control; print a summary."""
    t0 = time.monotonic()
    session.open()
    run_s = session.run_all()
    session.check_outputs()
    widgets = session.check_widgets_render()
    session.screenshot("executed")
    figures = session.screenshot_figures()
    interactions = Controls(session).exercise_all()
    print(
        f"\n[{session.stem}] run all: {run_s:.1f}s, {widgets['views']} widget output(s), "
        f"{widgets['panels']} panel(s), {figures} figure(s), {len(interactions)} control(s), "
        f"total {time.monotonic() - t0:.1f}s"
    )
    for i in interactions:
        print(f"  {'ok  ' if i.ok else 'FAIL'} {i.detail} ({i.seconds:.1f}s)")
    failures = [i.detail for i in interactions if not i.ok]
    if failures:
        raise session.fail(f"{len(failures)} widget check(s) failed:\n- " + "\n- ".join(failures))


@pytest.mark.parametrize("notebook", _params())
def test_notebook_in_browser(notebook, lab_server, browser, out_dir):
    spec = config.notebook_kernelspec(notebook)
    if spec != config.NOTEBOOK_KERNEL:
        pytest.fail(
            f"notebook {notebook.name}: metadata.kernelspec.name is {spec!r}, expected "
            f"'{config.NOTEBOOK_KERNEL}' (JupyterLab would ask to select a kernel)",
            pytrace=False,
        )
    for stale in out_dir.glob(f"{notebook.stem}__*.png"):
        stale.unlink()
    context, page = new_page(browser)
    failure = None
    try:
        _drive(NotebookSession(page, lab_server, notebook, out_dir))
    except NotebookFailure as exc:
        failure = str(exc)
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
