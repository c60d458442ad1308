"""``python -m kdlab reproduce GRID --out OUT``: check a grid, run it, print where its table is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .contract import cell_parameters, declared
from .execute import EXECUTORS, SLURM_DEFAULTS, run_grid
from .grid import RUNNER, load_grid, shipped_grids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "grid", help=f"a grid YAML file, or a shipped grid: {', '.join(shipped_grids())}"
    )
    parser.add_argument("--out", required=True, help="the results folder, e.g. runs/NAME")
    parser.add_argument("--notebooks", help="the notebooks folder (default: ./notebooks)")
    parser.add_argument(
        "--data-root", help="the dataset cache folder (default: the checkout's data/)"
    )
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local: one cell after the other (default); gpus: one cell per GPU "
                        "at once; slurm: a job array through submitit")  # fmt: skip
    parser.add_argument("--gpus", help="gpus: the device ids, e.g. 0,1,2,3 (default: "
                        "$CUDA_VISIBLE_DEVICES, else every GPU)")  # fmt: skip
    slurm = parser.add_argument_group("slurm executor")
    slurm.add_argument("--partition", help="the SLURM partition (default: the cluster's)")
    slurm.add_argument("--time", type=int, default=SLURM_DEFAULTS["time"],
                       help="minutes per task; a task that times out is requeued and resumes")  # fmt: skip
    slurm.add_argument("--gpus-per-task", type=int, default=SLURM_DEFAULTS["gpus_per_task"],
                       help="GPUs per task (0: none)")  # fmt: skip
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per task")
    slurm.add_argument("--max-running", type=int, default=SLURM_DEFAULTS["array_parallelism"],
                       help="at most this many tasks of the array at once")  # fmt: skip
    parser.add_argument("--direct", action="store_true",
                        help="train each cell without a notebook (no papermill; quicker)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="check the grid, list its cells")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def dry_run(grid, out: Path) -> int:
    """List the cells, having checked every cell's parameters against its notebook (every
    cell's method, networks and recipe were built when the grid was loaded:
    :func:`~kdlab.reproduce.grid.load_grid`)."""
    names = {nb: list(declared(nb)) for nb in {cell.notebook for cell in grid.cells}}
    for cell in grid.cells:
        cell_parameters(cell, names[cell.notebook], out / "cells" / cell.name / "runs", "data")
        notebook = Path(cell.notebook).name if cell.notebook != RUNNER else RUNNER
        print(f"{cell.name}  ({notebook})")
    print(f"{len(grid.cells)} cells")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the grid; exit code 0 only if every cell finished."""
    grid = load_grid(args.grid, args.notebooks)
    if args.dry_run:
        return dry_run(grid, Path(args.out))
    slurm = {"partition": args.partition, "time": args.time, "gpus_per_task": args.gpus_per_task,
             "cpus_per_task": args.cpus_per_task, "array_parallelism": args.max_running}  # fmt: skip
    try:
        outcomes = run_grid(grid, args.out, executor=args.executor,
                            how="direct" if args.direct else "papermill", gpus=args.gpus,
                            slurm=slurm, data_root=args.data_root,
                            progress=not args.no_progress)  # fmt: skip
    except KeyboardInterrupt:
        print(f"kdlab: interrupted; {args.out} keeps every finished cell and epoch: the same "
              "command runs the cells not finished, each from its last checkpoint",
              file=sys.stderr)  # fmt: skip
        return 130
    failed = [o for o in outcomes if o["status"] != "ok" and o["status"] != "skipped"]
    skipped = sum(o["status"] == "skipped" for o in outcomes)
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} cells finished ({skipped} skipped, "
        f"done before); results in {Path(args.out) / 'results.md'}"
    )
    for record in failed:
        executed = record.get("executed")
        where = f" (notebook: {Path(args.out) / executed})" if executed else ""
        print(f"failed: {record['name']}: {record.get('error')}{where}", file=sys.stderr)
    return 0 if not failed else 1
