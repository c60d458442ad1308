"""What every notebook shares: the Colab badge and set-up cell, and the environment check.

The repository's address lives in one place, :data:`REPOSITORY`. The badge and the set-up cell
must be literal text inside each notebook (on Colab nothing is installed yet), so
``python -m kdlab.nbtools`` writes them into every notebook from here and
``python -m kdlab.nbtools --check`` (run by the tests) fails when a notebook disagrees.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

REPOSITORY = "kdlab/kdlab"  # owner/name on GitHub
BRANCH = "main"

SETUP_MARK = "# kdlab set-up"
SETUP_SOURCE = f"""{SETUP_MARK}: on Colab, install kdlab from its repository; elsewhere it is installed already
# (make lab). Restart nothing: the install happens before kdlab is first imported.
import sys

if "google.colab" in sys.modules:
    %pip install -q "kdlab @ git+https://github.com/{REPOSITORY}@{BRANCH}"
"""


def repository_root() -> Path:
    """The checkout kdlab runs from (where ``notebooks/`` is)."""
    return Path(__file__).resolve().parents[1]


def badge(notebook: str) -> str:
    """The "Open in Colab" badge (markdown) for ``notebooks/<notebook>``."""
    url = (
        f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{notebook}"
    )
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def environment() -> dict[str, str]:
    """Python, torch, the device kdlab will train on, and its precision."""
    import torch

    from .train import pick_device, pick_precision

    device = pick_device()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info["gpu"] = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    dtype = pick_precision("auto", device)
    info["precision"] = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    return info


def execute(notebook: Path, output: Path, parameters: dict | None = None, progress=False) -> Path:
    """Run a notebook headless with papermill (parameters injected after its ``parameters``
    cell), in the notebook's own folder; the executed copy is written to ``output``."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters or {},
        kernel_name="python3",
        cwd=str(notebook.parent),
        progress_bar=progress,
    )
    return output


def _notebooks(root: Path) -> list[Path]:
    return sorted(p for p in (root / "notebooks").glob("*.ipynb"))


def stamp(path: Path, check: bool = False) -> bool:
    """Write (or, with ``check``, compare) the badge line and the set-up cell of one notebook.

    The badge is the first line of the first (markdown) cell; the set-up cell is the first
    code cell whose source starts with :data:`SETUP_MARK`. Returns True when up to date.
    """
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    ok = True
    first = cells[0]
    lines = "".join(first["source"]).split("\n")
    want_badge = badge(path.name)
    if first["cell_type"] != "markdown" or lines[0] != want_badge:
        ok = False
        if lines[0].startswith("[![Open In Colab]"):
            lines[0] = want_badge
        else:
            lines.insert(0, want_badge)
        first["source"] = "\n".join(lines)
    setup = [
        c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).startswith(SETUP_MARK)
    ]
    if not setup or "".join(setup[0]["source"]) != SETUP_SOURCE.rstrip("\n"):
        ok = False
        if setup:
            setup[0]["source"] = SETUP_SOURCE.rstrip("\n")
    if not check and not ok:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    root = repository_root()
    stale = [p.name for p in _notebooks(root) if not stamp(p, check=check)]
    if check and stale:
        print(
            f"badge or set-up cell out of date in: {', '.join(stale)} (run python -m kdlab.nbtools)"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
