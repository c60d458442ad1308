"""Settings of the browser test, read from the environment, and small helpers.

``KDLAB_BROWSER_ROOT``
    repository root to test (default: the parent of ``tests/``).
``KDLAB_CHROMIUM``
    Chromium binary (default ``/usr/bin/chromium``).
``KDLAB_BROWSER_OUT``
    where screenshots and the server log go (default ``<root>/runs/browser``).
``KDLAB_BROWSER_PROFILE``
    value of ``KDLAB_PROFILE`` for the kernels (default ``smoke``).
``KDLAB_BROWSER_RUN_TIMEOUT``
    seconds allowed for "Run All Cells" per notebook (default 600).
``KDLAB_BROWSER_TRAIN_TIMEOUT``
    seconds allowed for one click of a train button to finish training (default 120).
``KDLAB_BROWSER_REDRAW_TIMEOUT``
    seconds allowed for a figure to redraw after a control change (default 30).
``KDLAB_BROWSER_SERVER_TIMEOUT`` / ``KDLAB_BROWSER_KERNEL_TIMEOUT``
    seconds allowed for JupyterLab to answer / a notebook's kernel to start (default 180).
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE_JS = Path(__file__).resolve().parent / "probe.js"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
NOTEBOOK_KERNEL = "python3"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


RUN_TIMEOUT = _seconds("KDLAB_BROWSER_RUN_TIMEOUT", 600)
TRAIN_TIMEOUT = _seconds("KDLAB_BROWSER_TRAIN_TIMEOUT", 120)
REDRAW_TIMEOUT = _seconds("KDLAB_BROWSER_REDRAW_TIMEOUT", 30)
SERVER_START_TIMEOUT = _seconds("KDLAB_BROWSER_SERVER_TIMEOUT", 180)
KERNEL_START_TIMEOUT = _seconds("KDLAB_BROWSER_KERNEL_TIMEOUT", 180)
WIDGET_RENDER_TIMEOUT = 60.0
POLL_MS = 100  # how often a wait_for_function predicate is evaluated in the page


def repo_root() -> Path:
    return Path(os.environ.get("KDLAB_BROWSER_ROOT") or ROOT).resolve()


def output_dir(root: Path) -> Path:
    out = os.environ.get("KDLAB_BROWSER_OUT")
    return Path(out).resolve() if out else root / "runs" / "browser"


def chromium_path() -> str:
    return os.environ.get("KDLAB_CHROMIUM") or DEFAULT_CHROMIUM


def find_notebooks(root: Path) -> list[Path]:
    return sorted(p for p in (root / "notebooks").glob("*.ipynb") if p.is_file())


def notebook_kernelspec(path: Path) -> str | None:
    try:
        meta = json.loads(path.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return None
    return (meta.get("kernelspec") or {}).get("name")


def missing_browser_tooling() -> str | None:
    """Why the browser test cannot run here, in one line (None when it can)."""
    exe = chromium_path()
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        return (
            f"chromium not found at {exe}; install with `apt-get install -y chromium` "
            "(or point KDLAB_CHROMIUM at a Chromium binary)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            "the Python package playwright is not installed in this environment; "
            f"install with `{sys.executable} -m pip install playwright` "
            "(no browser download is needed: the system Chromium is used)"
        )
    try:
        import ipywidgets  # noqa: F401
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        return f"jupyterlab/ipywidgets not importable ({exc}); install the dev dependencies"
    return None


def launch_browser(playwright):
    return playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
    )


_GREEK = dict(
    zip(
        "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΘΛΞΠΣΦΨΩ",
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
        "pi rho sigma tau upsilon phi chi psi omega Alpha Beta Gamma Delta Theta Lambda Xi "
        "Pi Sigma Phi Psi Omega".split(),
    )
)


def slug(text: str, fallback: str) -> str:
    """File-name-safe ASCII version of a widget description ("α" -> "alpha")."""
    text = "".join(_GREEK.get(ch, ch) for ch in text.strip())
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return (s or fallback)[:60]
