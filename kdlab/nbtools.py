"""What every notebook shares: the Colab badge and set-up cell, the GPU check, the environment.

The repository's address lives in one place, :data:`REPOSITORY` with the pinned :data:`REF` (a
tag or a commit, never a branch: a course installs what it tested). The shipped address is a
placeholder until a course sets its own (its fork). The badge and the set-up cell must be literal
text inside each notebook (on Colab nothing is installed yet), so ``python -m kdlab.nbtools``
writes them into every notebook from here, ``python -m kdlab.nbtools --repository OWNER/NAME
--ref REF`` first rewrites the two values below, and ``python -m kdlab.nbtools --check`` (run by
the tests) fails when a notebook disagrees.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

REPOSITORY = "kdlab/kdlab"  # owner/name on GitHub: a placeholder until a course sets its fork's
REF = "v0.1.0"  # the tag or commit the badge opens and the set-up cell installs

SETUP_MARK = "# kdlab set-up"
# The extras (pyproject.toml) a notebook's set-up cell installs with kdlab, by notebook file.
NOTEBOOK_EXTRAS = {"09_detection_distillation.ipynb": "detection"}


def setup_source(repository: str = "", ref: str = "", extras: str = "") -> str:
    """The set-up cell: on Colab, install kdlab (with ``extras``, e.g. ``"detection"``) at the
    pinned ref, then :func:`gpu_check`."""
    repository, ref = repository or REPOSITORY, ref or REF
    package = f"kdlab[{extras}]" if extras else "kdlab"
    return f"""{SETUP_MARK}: on Colab, install kdlab ({ref}) from its repository and check for a GPU;
# elsewhere it is installed already (make lab). The install upgrades none of the packages Colab's
# kernel runs on (torch, ipykernel, ipywidgets...), so restart nothing.
import sys

if "google.colab" in sys.modules:
    %pip install -q "{package} @ git+https://github.com/{repository}@{ref}"
    from kdlab.nbtools import gpu_check

    gpu_check()
"""


GPU_MESSAGE = (
    "kdlab: this Colab runtime has no GPU, so the lab profile uses its CPU-sized set-up (digits); "
    "for CIFAR on a GPU choose Runtime → Change runtime type → T4 GPU and run the notebook again."
)


def gpu_check() -> str | None:
    """On Colab without a CUDA GPU, print :data:`GPU_MESSAGE` (one line, how to switch the
    runtime) and return it; None elsewhere or with a GPU. The lab profile's fall-back to its
    CPU-sized set-up is :meth:`kdlab.profiles.Profile.load_dataset`'s."""
    if "google.colab" not in sys.modules:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    print(GPU_MESSAGE)
    return GPU_MESSAGE


def repository_root() -> Path:
    """The checkout kdlab runs from (where ``notebooks/`` is)."""
    return Path(__file__).resolve().parents[1]


def badge(notebook: str) -> str:
    """The "Open in Colab" badge (markdown) for ``notebooks/<notebook>``."""
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{REF}/notebooks/{notebook}"
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
    try:
        import papermill
    except ImportError:
        raise ImportError(
            'running notebooks headless needs papermill: pip install "kdlab[repro]"'
        ) from None

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


def _like(source: str | list[str], text: str) -> str | list[str]:
    """``text`` in the form ``source`` had: one string, or nbformat's list of lines."""
    return text if isinstance(source, str) else text.splitlines(keepends=True)


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
        first["source"] = _like(first["source"], "\n".join(lines))
    setup = [
        c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).startswith(SETUP_MARK)
    ]
    want_setup = setup_source(extras=NOTEBOOK_EXTRAS.get(path.name, "")).rstrip("\n")
    if not setup or "".join(setup[0]["source"]) != want_setup:
        ok = False
        if setup:
            setup[0]["source"] = _like(setup[0]["source"], want_setup)
    if not check and not ok:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return ok


_REPOSITORY_FORM = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


_BRANCHES = ("main", "master", "HEAD")


def set_address(repository: str | None = None, ref: str | None = None, path: Path | None = None):
    """Rewrite :data:`REPOSITORY` and :data:`REF` in ``path`` (this file, the one place they live)
    and in this module. ValueError for an address that is not ``OWNER/NAME``, or a branch as ref."""
    global REPOSITORY, REF
    if repository is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", repository):
        raise ValueError(f"--repository must be OWNER/NAME on GitHub, got {repository!r}")
    if ref is not None and (not re.fullmatch(r"[\w.][\w./-]*", ref) or ref in _BRANCHES):
        raise ValueError(f"--ref must be a tag or a commit, not a branch, got {ref!r}")
    path = Path(__file__) if path is None else path
    source = path.read_text()
    for name, value in (("REPOSITORY", repository), ("REF", ref)):
        if value is not None:
            source = re.sub(
                rf'^{name} = "[^"]*"', f'{name} = "{value}"', source, count=1, flags=re.M
            )
    path.write_text(source)
    REPOSITORY, REF = repository or REPOSITORY, ref or REF


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kdlab.nbtools",
        description="Write (or --check) every notebook's Colab badge and set-up cell.",
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    parser.add_argument("--repository", help="OWNER/NAME on GitHub (rewrites REPOSITORY)")
    parser.add_argument("--ref", help="the tag or commit to install and open (rewrites REF)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.check and (args.repository or args.ref):
        parser.error("--check compares only; give --repository/--ref without it")
    root = repository_root()
    if not (root / "notebooks").is_dir():
        parser.error(f"no notebooks/ in {root}: run it from a checkout of kdlab")
    if args.repository or args.ref:
        try:
            set_address(args.repository, args.ref)
        except ValueError as error:
            parser.error(str(error))
    stale = [p.name for p in _notebooks(root) if not stamp(p, check=args.check)]
    if args.check and stale:
        print(
            f"badge or set-up cell out of date in: {', '.join(stale)} (run python -m kdlab.nbtools)"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
