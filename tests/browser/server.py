"""A throw-away JupyterLab server for the browser test.

:class:`LabServer` starts JupyterLab on 127.0.0.1 (random port, random token, its own Jupyter
config/data/settings folders, ``KDLAB_PROFILE=smoke`` for the kernels), answers the REST calls
the test needs and stops the server's whole process group again.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .config import NOTEBOOK_KERNEL, SERVER_START_TIMEOUT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
