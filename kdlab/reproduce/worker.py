"""One grid cell in a process of its own: ``python -m kdlab.reproduce.worker OUT CELL``
(the ``gpus`` executor starts one per cell, with the cell's ``CUDA_VISIBLE_DEVICES``)."""

from __future__ import annotations

import sys

from .execute import run_cell

if __name__ == "__main__":
    outcome = run_cell(sys.argv[1], sys.argv[2])
    raise SystemExit(0 if outcome.get("status") in ("ok", "skipped") else 1)
