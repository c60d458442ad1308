"""Helpers for the in-browser notebook test (``tests/test_browser.py``).

Two pieces live here:

* :class:`LabServer` starts a throw-away JupyterLab server on loopback (random
  port, random token, isolated Jupyter config/data/settings directories,
  ``KDLAB_PROFILE=smoke``) and stops it again.
* :class:`NotebookSession` drives one notebook in a Playwright page: open it,
  run all cells, wait for the kernel, check outputs, and exercise every
  ``.kdlab-panel`` (sliders, dropdowns, train buttons).

Environment variables understood by the test:

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
    seconds allowed for one click of a train button (default 120).
``KDLAB_BROWSER_REDRAW_TIMEOUT``
    seconds allowed for a figure to redraw after a control change (default 30).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

DEFAULT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHROMIUM = "/usr/bin/chromium"

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

NOTEBOOK_KERNEL = "python3"
# what counts as an error in a stderr output: a traceback, or a line that
# starts with "SomethingError" (warnings, progress bars etc. do not match)
ERROR_TEXT_JS = r"/Traceback|(^|\n)\s*[\w.]*Error\b/"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


RUN_TIMEOUT = _env_float("KDLAB_BROWSER_RUN_TIMEOUT", 600)
TRAIN_TIMEOUT = _env_float("KDLAB_BROWSER_TRAIN_TIMEOUT", 120)
REDRAW_TIMEOUT = _env_float("KDLAB_BROWSER_REDRAW_TIMEOUT", 30)
SERVER_START_TIMEOUT = _env_float("KDLAB_BROWSER_SERVER_TIMEOUT", 180)
KERNEL_START_TIMEOUT = _env_float("KDLAB_BROWSER_KERNEL_TIMEOUT", 180)
WIDGET_RENDER_TIMEOUT = 60.0
SETTLE_SECONDS = 1.0  # an image must stay unchanged this long to count as final


def repo_root() -> Path:
    return Path(os.environ.get("KDLAB_BROWSER_ROOT") or DEFAULT_ROOT).resolve()


def output_dir(root: Path) -> Path:
    out = os.environ.get("KDLAB_BROWSER_OUT")
    return Path(out).resolve() if out else root / "runs" / "browser"


def chromium_path() -> str:
    return os.environ.get("KDLAB_CHROMIUM") or DEFAULT_CHROMIUM


def find_notebooks(root: Path) -> list[Path]:
    return sorted(p for p in (root / "notebooks").glob("*.ipynb") if p.is_file())


def missing_browser_tooling() -> str | None:
    """Return a human-readable reason if the browser test cannot run here."""
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------

# User settings for the throw-away JupyterLab: never write the notebooks back
# to disk, attach every cell to the DOM (so widgets in long notebooks render),
# no network calls for news/updates.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {
        "autosave": False,
        "confirmClosingDocument": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "autoStartDefaultKernel": False,
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _token_flag() -> str:
    """jupyter_server >= 2 moved the token to the IdentityProvider."""
    try:
        import jupyter_server

        major = int(jupyter_server.__version__.split(".")[0])
    except Exception:  # pragma: no cover - defensive
        major = 2
    return "--IdentityProvider.token" if major >= 2 else "--ServerApp.token"


class LabServer:
    """A JupyterLab server on 127.0.0.1 with a random port and token."""

    def __init__(self, root: Path, log_path: Path, python: str = sys.executable):
        self.root = root
        self.python = python
        self.log_path = log_path
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="kdlab-browser-"))
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- environment -------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("config", "data", "runtime", "settings", "workspaces"):
            (self.tmp / name).mkdir(exist_ok=True)
        env.update(
            KDLAB_PROFILE=os.environ.get("KDLAB_BROWSER_PROFILE", "smoke"),
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            JUPYTER_DATA_DIR=str(self.tmp / "data"),
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(self.tmp / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self.tmp / "workspaces"),
            JUPYTER_PREFER_ENV_PATH="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(self.root), os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        env.pop("JUPYTER_TOKEN", None)
        env.pop("JUPYTER_PATH", None)
        return env

    def _write_settings(self) -> None:
        for rel, content in LAB_SETTINGS.items():
            path = self.tmp / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2))

    def check_kernelspec(self) -> None:
        """The notebooks ask for kernelspec ``python3``: it must exist and run
        a Python that can import ipykernel and ipywidgets."""
        out = subprocess.run(
            [self.python, "-m", "jupyter", "kernelspec", "list", "--json"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"`jupyter kernelspec list` failed:\n{out.stderr}")
        specs = json.loads(out.stdout)["kernelspecs"]
        if NOTEBOOK_KERNEL not in specs:
            raise RuntimeError(
                f"no '{NOTEBOOK_KERNEL}' kernelspec visible to {self.python}: "
                f"found {sorted(specs)}; install ipykernel into the venv"
            )
        argv0 = specs[NOTEBOOK_KERNEL]["spec"]["argv"][0]
        # jupyter_client runs "python"/"python3"/"python3.X" as the server's own
        # interpreter; anything else is taken literally.
        major, minor = sys.version_info[:2]
        if argv0 in {"python", f"python{major}", f"python{major}.{minor}"}:
            kernel_python = self.python
        else:
            kernel_python = argv0
        probe = subprocess.run(
            [kernel_python, "-c", "import ipykernel, ipywidgets, matplotlib"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode != 0:
            raise RuntimeError(
                f"kernelspec '{NOTEBOOK_KERNEL}' runs {kernel_python}, which cannot import "
                f"ipykernel/ipywidgets/matplotlib:\n{probe.stderr[-2000:]}"
            )

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._write_settings()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        cmd = [
            self.python,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"{_token_flag()}={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=None",
            f"--LabApp.user_settings_dir={self.tmp / 'settings'}",
            f"--LabApp.workspaces_dir={self.tmp / 'workspaces'}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI runs as root
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                self.api("GET", "/api/status", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        raise RuntimeError(
            f"JupyterLab did not answer on {self.base_url} within "
            f"{SERVER_START_TIMEOUT:.0f}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except Exception:
                pass
            # kernels were shut down through the REST API above; the server
            # runs in its own session (start_new_session), so signal exactly
            # that process group
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no server log)"

    # -- REST --------------------------------------------------------------
    def api(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(
            self.base_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions") or []:
            try:
                self.api("DELETE", f"/api/sessions/{session['id']}")
            except urllib.error.HTTPError:
                pass
        for kernel in self.api("GET", "/api/kernels") or []:
            try:
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
            except urllib.error.HTTPError:
                pass

    def notebook_url(self, rel_path: str) -> str:
        quoted = urllib.parse.quote(rel_path)
        return f"{self.base_url}/lab/tree/{quoted}?reset&token={self.token}"


# --------------------------------------------------------------------------
# browser side
# --------------------------------------------------------------------------


def launch_browser(playwright):
    return playwright.chromium.launch(
        executable_path=chromium_path(),
        headless=True,
        args=CHROMIUM_ARGS,
    )


# JavaScript run in the JupyterLab page (window.jupyterapp is exposed by
# --LabApp.expose_app_in_browser).
JS_PANEL = """
(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
  }
  return null;
}
"""

JS_STATE = (
    """
(path) => {
  const find = """
    + JS_PANEL
    + """;
  const dialogs = Array.from(document.querySelectorAll('.jp-Dialog')).map(
      d => (d.innerText || '').trim().slice(0, 500));
  const panel = find(path);
  if (!panel) return {ready: false, dialogs, stage: 'no notebook panel yet'};
  const sc = panel.sessionContext;
  const kernel = sc && sc.session ? sc.session.kernel : null;
  return {
    ready: !!(panel.context.isReady && sc && sc.isReady),
    stage: 'panel',
    dialogs,
    kernelName: kernel ? kernel.name : null,
    kernelStatus: kernel ? kernel.status : null,
    connection: kernel ? kernel.connectionStatus : null,
    kernelDisplayName: sc ? sc.kernelDisplayName : null,
    run: window.__kdlabRun || null,
  };
}
"""
)

JS_INSTALL_LISTENER = (
    """
(path) => {
  const panel = ("""
    + JS_PANEL
    + """)(path);
  const kernel = panel.sessionContext.session.kernel;
  window.__kdlabErrors = [];
  if (window.__kdlabListener && window.__kdlabListener.kernel) {
    window.__kdlabListener.kernel.iopubMessage.disconnect(window.__kdlabListener.fn);
  }
  window.__kdlabLastMsg = Date.now();
  // requests the kernel is still working on (busy without matching idle):
  // kernel.status alone can read 'idle' while a widget callback still runs
  window.__kdlabBusy = new Set();
  const fn = (k, msg) => {
    window.__kdlabLastMsg = Date.now();
    const t = msg.header.msg_type;
    if (t === 'status') {
      const parent = (msg.parent_header && msg.parent_header.msg_id) || '?';
      if (msg.content.execution_state === 'busy') window.__kdlabBusy.add(parent);
      else if (msg.content.execution_state === 'idle') window.__kdlabBusy.delete(parent);
    }
    if (t === 'error') {
      window.__kdlabErrors.push(`${msg.content.ename}: ${msg.content.evalue}`);
    } else if (t === 'stream' && msg.content.name === 'stderr'
               && """
    + ERROR_TEXT_JS
    + """.test(msg.content.text)) {
      window.__kdlabErrors.push(msg.content.text.slice(-1500));
    }
  };
  kernel.iopubMessage.connect(fn);
  window.__kdlabListener = {kernel, fn};
  return true;
}
"""
)

JS_RUN_ALL = (
    """
async (path) => {
  const app = window.jupyterapp;
  const panel = ("""
    + JS_PANEL
    + """)(path);
  app.shell.activateById(panel.id);
  await app.commands.execute('notebook:clear-all-cell-outputs');
  window.__kdlabRun = {done: false, t0: Date.now()};
  app.commands.execute('notebook:run-all-cells').then(
    (r) => { window.__kdlabRun = {done: true, result: String(r)}; },
    (e) => { window.__kdlabRun = {done: true, error: String(e)}; });
  return true;
}
"""
)

JS_CELLS = (
    """
(path) => {
  const panel = ("""
    + JS_PANEL
    + """)(path);
  const cells = [];
  panel.content.widgets.forEach((cell, i) => {
    const m = cell.model;
    const src = m.sharedModel ? m.sharedModel.getSource() : m.value.text;
    const item = {index: i, type: m.type, blank: !src.trim(), count: null,
                  errors: [], widgetViews: 0, prompt: ''};
    if (m.type === 'code') {
      item.count = m.executionCount;
      const prompt = cell.node.querySelector('.jp-InputPrompt');
      item.prompt = prompt ? prompt.innerText.trim() : '';
      const outs = m.outputs.toJSON();
      for (const o of outs) {
        if (o.output_type === 'error') item.errors.push(`${o.ename}: ${o.evalue}`);
        if (o.data && o.data['application/vnd.jupyter.widget-view+json']) item.widgetViews += 1;
      }
      const nodes = cell.node.querySelectorAll(
          '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
      // error outputs already counted above also render as stderr: skip them
      for (const n of (item.errors.length ? [] : nodes)) {
        const text = n.innerText || '';
        if ("""
    + ERROR_TEXT_JS
    + """.test(text)) item.errors.push(text.slice(-1500));
      }
    }
    cells.push(item);
  });
  return cells;
}
"""
)

JS_WIDGET_STATE = (
    """
(path) => {
  const panel = ("""
    + JS_PANEL
    + """)(path);
  const root = panel.node;
  const body = root.innerText || '';
  // per code cell: widget-view outputs in the model vs. widgets in the DOM
  const missing = [];
  let views = 0, rendered = 0;
  panel.content.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    let want = 0;
    for (const o of cell.model.outputs.toJSON()) {
      if (o.data && o.data['application/vnd.jupyter.widget-view+json']) want += 1;
    }
    if (!want) return;
    const outs = cell.node.querySelectorAll(
        '.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output');
    let have = 0;
    for (const o of outs) if (o.querySelector(':scope > .jupyter-widgets')) have += 1;
    views += want;
    rendered += Math.min(have, want);
    if (have < want) missing.push(i);
  });
  return {
    loading: body.includes('Loading widget...'),
    errorDisplaying: body.includes('Error displaying widget'),
    views, rendered, missing,
    panels: root.querySelectorAll('.kdlab-panel').length,
  };
}
"""
)

# Tag the panels and their controls with data attributes so that Playwright
# locators can address them, and describe them.
JS_DESCRIBE_PANELS = """
() => {
  const root = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)') || document.body;
  const panels = Array.from(root.querySelectorAll('.kdlab-panel'));
  const label = (el) => {
    const l = el.querySelector(':scope > label, :scope > .widget-label');
    return l ? (l.innerText || l.textContent || '').trim() : '';
  };
  return panels.map((panel, i) => {
    const pid = `p${i + 1}`;
    panel.setAttribute('data-kdlab-test', pid);
    const own = (el) => el.closest('.kdlab-panel') === panel;
    const controls = [];
    let n = 0;
    for (const el of panel.querySelectorAll('.widget-slider')) {
      if (!own(el)) continue;
      const id = `${pid}-c${++n}`;
      el.setAttribute('data-kdlab-test', id);
      const ro = el.querySelector('.widget-readout');
      const handle = el.querySelector('.noUi-handle');
      const shown = ro ? (ro.textContent || '').trim() : '';
      controls.push({id, kind: 'slider', description: label(el),
                     value: shown || (handle ? handle.getAttribute('aria-valuenow') || '' : ''),
                     disabled: !!el.querySelector('[disabled]') || el.classList.contains('mod-disabled')});
    }
    for (const el of panel.querySelectorAll('.widget-dropdown')) {
      if (!own(el)) continue;
      const id = `${pid}-c${++n}`;
      el.setAttribute('data-kdlab-test', id);
      const sel = el.querySelector('select');
      controls.push({id, kind: 'dropdown', description: label(el),
                     value: sel ? sel.value : '',
                     options: sel ? Array.from(sel.options).map(o => o.value) : [],
                     selectedIndex: sel ? sel.selectedIndex : -1,
                     disabled: sel ? sel.disabled : true});
    }
    for (const el of panel.querySelectorAll('button.kdlab-train, .kdlab-train button')) {
      if (!own(el)) continue;
      const id = `${pid}-c${++n}`;
      el.setAttribute('data-kdlab-test', id);
      controls.push({id, kind: 'train', description: (el.innerText || el.title || '').trim(),
                     disabled: el.disabled});
    }
    const figures = Array.from(panel.querySelectorAll('.kdlab-figure')).filter(own).length;
    const live = Array.from(panel.querySelectorAll('.kdlab-live')).filter(own).length;
    return {id: pid, controls, figures, live};
  });
}
"""

# A cheap fingerprint of what an output (".kdlab-figure" / ".kdlab-live")
# currently shows: hash of every image source, inline SVG and text.
JS_FINGERPRINT = (
    """
([pid, cls]) => {
  const panel = document.querySelector(`[data-kdlab-test="${pid}"]`);
  if (!panel) return {key: 'missing', images: 0, empty: true, errors: []};
  const els = Array.from(panel.querySelectorAll(cls)).filter(
      e => e.closest('.kdlab-panel') === panel);
  let acc = '';
  let images = 0;
  const errors = [];
  for (const el of els) {
    for (const img of el.querySelectorAll('img')) { acc += img.src; images += 1; }
    for (const svg of el.querySelectorAll('svg')) { acc += svg.outerHTML; images += 1; }
    for (const c of el.querySelectorAll('canvas')) {
      try { acc += c.toDataURL(); } catch (e) { acc += 'canvas'; }
      images += 1;
    }
    acc += '|' + (el.innerText || '');
    for (const n of el.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
      const t = n.innerText || '';
      if ("""
    + ERROR_TEXT_JS
    + """.test(t)) errors.push(t.slice(-1500));
    }
  }
  let h1 = 0x811c9dc5, h2 = 0;
  for (let i = 0; i < acc.length; i++) {
    h1 = Math.imul(h1 ^ acc.charCodeAt(i), 16777619) >>> 0;
    h2 = (h2 * 31 + acc.charCodeAt(i)) >>> 0;
  }
  return {key: `${acc.length}:${h1}:${h2}`, images, empty: acc.replace(/\\|/g, '').trim() === '',
          errors, count: els.length};
}
"""
)

JS_KERNEL_IDLE = (
    """
(path) => {
  const panel = ("""
    + JS_PANEL
    + """)(path);
  const k = panel && panel.sessionContext.session ? panel.sessionContext.session.kernel : null;
  return {status: k ? k.status : 'none',
          pending: window.__kdlabBusy ? window.__kdlabBusy.size : 0,
          quietMs: Date.now() - (window.__kdlabLastMsg || 0),
          errors: (window.__kdlabErrors || []).length};
}
"""
)


@dataclass
class Interaction:
    panel: str
    kind: str
    description: str
    ok: bool
    detail: str
    seconds: float
    shots: list[str] = field(default_factory=list)


class NotebookFailure(AssertionError):
    pass


class NotebookSession:
    """Drive one notebook in one browser page."""

    def __init__(self, page, server: LabServer, notebook: Path, out_dir: Path):
        self.page = page
        self.server = server
        self.notebook = notebook
        self.stem = notebook.stem
        self.rel = notebook.relative_to(server.root).as_posix()
        self.out_dir = out_dir
        self.used_names: set[str] = set()
        self.interactions: list[Interaction] = []
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.console.append(f"page error: {exc}"))

    # -- small utilities ---------------------------------------------------
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

    def state(self) -> dict:
        try:
            return self.page.evaluate(JS_STATE, self.rel)
        except Exception as exc:  # page still navigating / reloading
            return {"ready": False, "stage": f"page not scriptable yet ({exc})", "dialogs": []}

    def kernel_status(self) -> str:
        return self.page.evaluate(JS_KERNEL_IDLE, self.rel)["status"]

    def kernel_quiet(self, seconds: float) -> bool:
        """Kernel idle and no iopub message for ``seconds``."""
        k = self.page.evaluate(JS_KERNEL_IDLE, self.rel)
        return k["status"] == "idle" and not k["pending"] and k["quietMs"] >= seconds * 1000

    def wait_quiet(self, seconds: float = 1.5, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kernel_quiet(seconds):
                return True
            time.sleep(0.2)
        return False

    def shot_name(self, description: str, fallback: str) -> str:
        base = slug(description, fallback)
        name, k = base, 2
        while name in self.used_names:
            name, k = f"{base}-{k}", k + 1
        self.used_names.add(name)
        return name

    def _check_dialogs(self, st: dict) -> None:
        for text in st.get("dialogs") or []:
            if "Select Kernel" in text or "kernel" in text.lower():
                raise self.fail(
                    f"a kernel dialog appeared instead of the '{NOTEBOOK_KERNEL}' kernel "
                    f"starting (is the notebook's kernelspec '{NOTEBOOK_KERNEL}' and is "
                    f"ipykernel installed in the venv?): {text!r}"
                )
            raise self.fail(f"unexpected JupyterLab dialog: {text!r}")

    # -- open / run --------------------------------------------------------
    def open(self) -> None:
        self.page.goto(self.server.notebook_url(self.rel), wait_until="domcontentloaded")
        deadline = time.monotonic() + KERNEL_START_TIMEOUT
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.state()
            self._check_dialogs(st)
            if (
                st.get("ready")
                and st.get("kernelStatus") == "idle"
                and st.get("connection") == "connected"
            ):
                break
            time.sleep(0.25)
        else:
            raise self.fail(
                f"kernel not idle within {KERNEL_START_TIMEOUT:.0f}s after opening "
                f"(last state: {st}); server log tail:\n{self.server.log_tail(2000)}"
            )
        if st.get("kernelName") != NOTEBOOK_KERNEL:
            raise self.fail(
                f"notebook started kernel {st.get('kernelName')!r}, expected '{NOTEBOOK_KERNEL}'"
            )
        self.page.evaluate(JS_INSTALL_LISTENER, self.rel)

    def run_all(self) -> float:
        t0 = time.monotonic()
        self.page.evaluate(JS_RUN_ALL, self.rel)
        deadline = t0 + RUN_TIMEOUT
        while True:
            st = self.state()
            self._check_dialogs(st)
            run = st.get("run") or {}
            if run.get("done") and st.get("kernelStatus") == "idle":
                break
            if time.monotonic() > deadline:
                running = [c["index"] for c in self.cells() if c["prompt"].startswith("[*]")]
                raise self.fail(
                    f"'Run All Cells' did not finish within {RUN_TIMEOUT:.0f}s "
                    f"(cells still running/queued: {running}; kernel {st.get('kernelStatus')})"
                )
            time.sleep(0.5)
        if run.get("error"):
            raise self.fail(f"'Run All Cells' raised in JupyterLab: {run['error']}")
        return time.monotonic() - t0

    def cells(self) -> list[dict]:
        return self.page.evaluate(JS_CELLS, self.rel)

    def reset_kernel_errors(self) -> None:
        self.page.evaluate("() => { window.__kdlabErrors = []; }")

    def kernel_errors(self) -> list[str]:
        return self.page.evaluate("() => window.__kdlabErrors || []")

    def check_outputs(self) -> list[dict]:
        cells = self.cells()
        problems = []
        for c in cells:
            for err in c["errors"]:
                problems.append(f"cell {c['index']} shows an error output:\n{err}")
        for err in self.kernel_errors():
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
        return cells

    def check_widgets_render(self) -> dict:
        deadline = time.monotonic() + WIDGET_RENDER_TIMEOUT
        ws: dict = {}
        while time.monotonic() < deadline:
            ws = self.page.evaluate(JS_WIDGET_STATE, self.rel)
            if not ws["loading"] and not ws["errorDisplaying"] and not ws["missing"]:
                break
            time.sleep(0.25)
        else:
            raise self.fail(
                f"widgets did not render within {WIDGET_RENDER_TIMEOUT:.0f}s: "
                f"{ws.get('rendered')} of {ws.get('views')} widget outputs rendered "
                f"(cells not rendered: {ws.get('missing')}), 'Loading widget...' shown: "
                f"{ws.get('loading')}, 'Error displaying widget' shown: "
                f"{ws.get('errorDisplaying')}"
            )
        panels = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .kdlab-panel")
        for i in range(panels.count()):
            p = panels.nth(i)
            p.scroll_into_view_if_needed()
            if not p.is_visible():
                raise self.fail(f".kdlab-panel #{i + 1} is in the page but not visible")
            box = p.bounding_box()
            if not box or box["width"] < 5 or box["height"] < 5:
                raise self.fail(f".kdlab-panel #{i + 1} has no size on screen ({box})")
        return ws

    # -- interactions ------------------------------------------------------
    def describe_panels(self) -> list[dict]:
        return self.page.evaluate(JS_DESCRIBE_PANELS)

    def fingerprint(self, pid: str, cls: str) -> dict:
        return self.page.evaluate(JS_FINGERPRINT, [pid, cls])

    def screenshot_bytes(self, pid: str, cls: str) -> bytes | None:
        """Pixels of the panel's first ``cls`` element (None if not on screen)."""
        loc = self.page.locator(f'[data-kdlab-test="{pid}"] {cls}').first
        try:
            box = loc.bounding_box(timeout=2000)
            if not box or box["width"] < 1 or box["height"] < 1:
                return None
            return loc.screenshot(timeout=5000)
        except Exception:
            return None

    def _panel(self, pid: str):
        return self.page.locator(f'[data-kdlab-test="{pid}"]')

    def _shoot(self, pid: str, name: str, phase: str) -> str:
        path = self.out_dir / f"{self.stem}__{name}__{phase}.png"
        panel = self._panel(pid)
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(path))
        return str(path)

    def _wait_changed(
        self,
        pid: str,
        cls: str,
        before: dict,
        timeout: float,
        use_pixels: bool,
        before_px: bytes | None,
    ) -> tuple[bool, dict]:
        """Poll until the output differs from ``before`` (and is non-empty),
        then until it has settled and the kernel is idle again."""
        deadline = time.monotonic() + timeout
        changed_at = None
        last = before
        while time.monotonic() < deadline:
            fp = self.fingerprint(pid, cls)
            if fp["errors"]:
                return False, fp
            differs = fp["key"] != before["key"] and not fp["empty"]
            if not differs and use_pixels and before_px is not None and not fp["empty"]:
                now_px = self.screenshot_bytes(pid, cls)
                differs = now_px is not None and now_px != before_px
            if differs:
                if changed_at is None or fp["key"] != last["key"]:
                    changed_at = time.monotonic()
                elif time.monotonic() - changed_at >= SETTLE_SECONDS and self.kernel_quiet(
                    SETTLE_SECONDS
                ):
                    return True, fp
            last = fp
            time.sleep(0.15)
        return changed_at is not None, last

    def _move_slider(self, cid: str, before_value: str) -> str:
        slider = self.page.locator(f'[data-kdlab-test="{cid}"]')
        readout = slider.locator(".widget-readout")
        handle = slider.locator(".noUi-handle").first

        def value() -> str:
            shown = (readout.first.text_content() or "").strip() if readout.count() else ""
            return shown or (handle.get_attribute("aria-valuenow") or "")

        def changed_within(t: float) -> bool:
            end = time.monotonic() + t
            while time.monotonic() < end:
                if value() != before_value:
                    return True
                time.sleep(0.1)
            return False

        handle.scroll_into_view_if_needed()
        for key in ("End", "Home"):
            handle.focus()
            handle.press(key)
            if changed_within(2.0):
                return value()
        # keyboard did not move it: drag the handle across the track
        track = slider.locator(".noUi-target").first
        box = track.bounding_box()
        hbox = handle.bounding_box()
        if box and hbox:
            for frac in (0.85, 0.15):
                self.page.mouse.move(hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2)
                self.page.mouse.down()
                self.page.mouse.move(
                    box["x"] + box["width"] * frac, box["y"] + box["height"] / 2, steps=8
                )
                self.page.mouse.up()
                if changed_within(2.0):
                    return value()
        return value()

    def exercise_control(self, panel: dict, ctrl: dict) -> Interaction:
        pid = panel["id"]
        kind = ctrl["kind"]
        desc = ctrl["description"] or f"{kind}-{ctrl['id']}"
        label = f"{kind} '{desc}' in panel #{pid[1:]}"
        cls = ".kdlab-live" if kind == "train" else ".kdlab-figure"
        name = self.shot_name(ctrl["description"], f"{pid}-{kind}")
        t0 = time.monotonic()
        shots = []

        if ctrl.get("disabled"):
            return Interaction(pid, kind, desc, False, f"{label} is disabled", 0.0)

        self._panel(pid).scroll_into_view_if_needed()
        before = self.fingerprint(pid, cls)
        use_pixels = before["images"] == 0
        before_px = (
            self.screenshot_bytes(pid, cls)
            if use_pixels and before["count"] and kind != "train"
            else None
        )
        shots.append(self._shoot(pid, name, "before"))

        if kind == "slider":
            after_value = self._move_slider(ctrl["id"], ctrl["value"])
            if after_value == ctrl["value"]:
                shots.append(self._shoot(pid, name, "after"))
                return Interaction(
                    pid,
                    kind,
                    desc,
                    False,
                    f"{label}: could not move the slider (value stays "
                    f"{ctrl['value']!r} after keyboard and drag)",
                    time.monotonic() - t0,
                    shots,
                )
            action = f"moving it from {ctrl['value']} to {after_value}"
            ok, fp = self._wait_changed(pid, cls, before, REDRAW_TIMEOUT, use_pixels, before_px)
            timeout = REDRAW_TIMEOUT
        elif kind == "dropdown":
            options = ctrl["options"]
            if len(options) < 2:
                return Interaction(
                    pid,
                    kind,
                    desc,
                    True,
                    f"{label}: only one option, nothing to change",
                    time.monotonic() - t0,
                    shots,
                )
            new_index = (ctrl["selectedIndex"] + 1) % len(options)
            select = self.page.locator(f'[data-kdlab-test="{ctrl["id"]}"] select')
            select.select_option(index=new_index)
            action = f"changing it from {ctrl['value']!r} to {options[new_index]!r}"
            ok, fp = self._wait_changed(pid, cls, before, REDRAW_TIMEOUT, use_pixels, before_px)
            timeout = REDRAW_TIMEOUT
        else:  # train
            button = self.page.locator(f'[data-kdlab-test="{ctrl["id"]}"]')
            frames, finished, first_images, fp = self._click_train(pid, button, before)
            timeout = TRAIN_TIMEOUT
            action = "clicking it"
            ok = frames >= 1 and not fp["errors"]
            shots.append(self._shoot(pid, name, "after"))
            secs = time.monotonic() - t0
            if fp["errors"]:
                return Interaction(
                    pid,
                    kind,
                    desc,
                    False,
                    f"{label}: training raised an error in .kdlab-live:\n"
                    + "\n".join(fp["errors"]),
                    secs,
                    shots,
                )
            if not ok:
                return Interaction(
                    pid,
                    kind,
                    desc,
                    False,
                    f"{label}: {action} did not update the live plot "
                    f"(.kdlab-live) within {timeout:.0f}s",
                    secs,
                    shots,
                )
            if not finished:
                return Interaction(
                    pid,
                    kind,
                    desc,
                    False,
                    f"{label}: the live plot updated ({frames} frame(s)) but training "
                    f"did not finish (kernel still busy) within {timeout:.0f}s",
                    secs,
                    shots,
                )
            if first_images and fp["images"] > first_images:
                return Interaction(
                    pid,
                    kind,
                    desc,
                    False,
                    f"{label}: the live plot (.kdlab-live) was not redrawn in "
                    f"place: it grew from {first_images} to {fp['images']} "
                    "images (use clear_output(wait=True) before each display)",
                    secs,
                    shots,
                )
            return Interaction(
                pid,
                kind,
                desc,
                True,
                f"{label}: live plot showed {frames} new frame(s), training took {secs:.1f}s",
                secs,
                shots,
            )

        shots.append(self._shoot(pid, name, "after"))
        secs = time.monotonic() - t0
        if fp.get("errors"):
            return Interaction(
                pid,
                kind,
                desc,
                False,
                f"{label}: {action} produced an error in the figure output:\n"
                + "\n".join(fp["errors"]),
                secs,
                shots,
            )
        if not ok:
            return Interaction(
                pid,
                kind,
                desc,
                False,
                f"{label}: {action} did not change the figure (.kdlab-figure "
                f"image) within {timeout:.0f}s",
                secs,
                shots,
            )
        return Interaction(
            pid, kind, desc, True, f"{label}: {action} redrew the figure", secs, shots
        )

    def _click_train(self, pid: str, button, before: dict):
        """Click a train button and follow its live plot until training ends.

        Returns (distinct new frames seen, whether training finished within
        TRAIN_TIMEOUT, images in the first new frame, last fingerprint)."""
        button.scroll_into_view_if_needed()
        button.click()
        deadline = time.monotonic() + TRAIN_TIMEOUT
        seen = {before["key"]}
        frames = 0
        first_images = 0
        last = before
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            fp = self.fingerprint(pid, ".kdlab-live")
            if fp["errors"]:
                return frames, True, first_images, fp
            if fp["key"] != last["key"]:
                last_change = time.monotonic()
            if not fp["empty"] and fp["key"] not in seen:
                seen.add(fp["key"])
                frames += 1
                if frames == 1:
                    first_images = fp["images"]
            last = fp
            if (
                frames >= 1
                and time.monotonic() - last_change >= 2 * SETTLE_SECONDS
                and self.kernel_quiet(SETTLE_SECONDS)
            ):
                return frames, True, first_images, last
            time.sleep(0.1)
        return frames, False, first_images, last

    def exercise_panels(self) -> list[Interaction]:
        panels = self.describe_panels()
        for panel in panels:
            for ctrl in panel["controls"]:
                if ctrl["kind"] in ("slider", "dropdown") and not panel["figures"]:
                    # a panel without a .kdlab-figure has nothing for the
                    # control to redraw (e.g. hyper-parameters of a train panel)
                    self.interactions.append(
                        Interaction(
                            panel["id"],
                            ctrl["kind"],
                            ctrl["description"],
                            True,
                            f"{ctrl['kind']} '{ctrl['description']}' in panel #{panel['id'][1:]}: "
                            "panel has no .kdlab-figure, redraw not checked",
                            0.0,
                        )
                    )
                    continue
                if ctrl["kind"] == "train" and not panel["live"]:
                    self.interactions.append(
                        Interaction(
                            panel["id"],
                            "train",
                            ctrl["description"],
                            False,
                            f"train button '{ctrl['description']}' in panel #{panel['id'][1:]} "
                            "has no .kdlab-live output in its panel",
                            0.0,
                        )
                    )
                    continue
                n_errors = len(self.kernel_errors())
                result = self.exercise_control(panel, ctrl)
                # exceptions raised by callbacks outside an Output widget only
                # reach the kernel's iopub stream (JupyterLab's log console)
                self.wait_quiet(SETTLE_SECONDS, timeout=REDRAW_TIMEOUT)
                new_errors = self.kernel_errors()[n_errors:]
                if new_errors and result.ok:
                    result.ok = False
                    result.detail += "; but the kernel reported an error meanwhile:\n" + "\n".join(
                        new_errors
                    )
                self.interactions.append(result)
        return self.interactions


def notebook_kernelspec(path: Path) -> str | None:
    try:
        meta = json.loads(path.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return None
    return (meta.get("kernelspec") or {}).get("name")
