"""Files written whole or not at all: a reader (or a resumed run) never sees half a file.

Every write goes to ``<name>.tmp`` beside the target and is renamed over it (``os.replace`` is
atomic on one file system), so an interruption leaves the previous version in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write a temporary file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_json(path: str | Path, advice: str = "") -> Any:
    """The JSON data in ``path``; a one-line ValueError naming the file when it is not JSON
    (empty, truncated or edited by hand), followed by ``advice`` (what to do)."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        what = "empty" if not text.strip() else f"not valid JSON, line {error.lineno}: {error.msg}"
        raise ValueError(f"{path} is damaged ({what}){'; ' + advice if advice else ''}") from None
