"""Running a grid: one training per cell, on one of three executors, its state in its folder.

``OUT/cells/<cell>/cell.json`` is a cell's record: its spec, its notebook parameters and its
status (``pending``, ``running``, ``ok``, ``failed``). A cell whose record says ``ok`` and whose
run is there is never run again; any other cell runs, and its training resumes from its last
checkpoint. So a grid interrupted half-way and started again runs only what is missing,
whatever the executor:

- ``local`` (default): the cells one after the other, in this process.
- ``gpus``: a pool of one worker per visible GPU (``CUDA_VISIBLE_DEVICES`` or ``--gpus``); each
  cell runs in a child process (``python -m kdlab.reproduce.worker OUT CELL``) that sees one
  GPU through its own ``CUDA_VISIBLE_DEVICES``.
- ``slurm``: a submitit job array, one task per cell, at most ``array_parallelism`` at once; a
  task that is pre-empted or times out is requeued and resumes from its checkpoint.

A cell executes its notebook with papermill into ``OUT/cells/<cell>/notebook.ipynb`` (kept), or,
``how="direct"``, calls :func:`~kdlab.reproduce.contract.notebook_run` without a notebook.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import read_json, write_json, write_text
from .aggregate import aggregate
from .contract import (
    cell_parameters,
    declared,
    find_run,
    notebook_run,
    runner_notebook,
    settings_profile,
)
from .grid import RUNNER, Cell, Grid, load_grid

EXECUTORS = ("local", "gpus", "slurm")
SLURM_DEFAULTS = {"partition": None, "time": 24 * 60, "gpus_per_task": 1, "cpus_per_task": None,
                  "array_parallelism": 16, "cluster": "slurm"}  # fmt: skip


def _record_path(out: Path, name: str) -> Path:
    return out / "cells" / name / "cell.json"


def _read_record(out: Path, name: str) -> dict:
    path = _record_path(out, name)
    return json.loads(path.read_text()) if path.exists() else {}


def is_done(out: Path, record: Mapping) -> bool:
    """A cell finished before: its record says ok and its run folder is there."""
    return record.get("status") == "ok" and (out / record["run"] / "summary.json").exists()


def plan(
    grid: Grid, out: Path, *, how: str = "papermill", data_root: str | Path | None = None
) -> list[str]:
    """Check every cell's parameters against its notebook, write ``grid.json``, the runner
    notebook and every unfinished cell's record; returns the names of the cells to run."""
    from ..data import default_root

    data_root = Path(data_root or default_root()).resolve()
    names = {nb: list(declared(nb)) for nb in {cell.notebook for cell in grid.cells}}
    records = []
    for index, cell in enumerate(grid.cells):
        runs_dir = (out / "cells" / cell.name / "runs").resolve()
        parameters = cell_parameters(cell, names[cell.notebook], runs_dir, data_root)
        source = str(out.resolve() / "runner.ipynb") if cell.notebook == RUNNER else cell.notebook
        records.append({
            "index": index, "name": cell.name, "group": cell.group, "label": cell.label,
            "spec": cell.spec(), "how": how, "notebook": source if how == "papermill" else None,
            "executed": f"cells/{cell.name}/notebook.ipynb" if how == "papermill" else None,
            "parameters": parameters, "status": "pending",
        })  # fmt: skip
    _check_grid_folder(out, grid.name)
    out.mkdir(parents=True, exist_ok=True)
    source = str(grid.source) if grid.source else None
    write_json(out / "grid.json", {"name": grid.name, "description": grid.description,
                                   "source": source,
                                   "not_reproduced": grid.not_reproduced})  # fmt: skip
    if how == "papermill" and RUNNER in names:
        import nbformat

        write_text(out / "runner.ipynb", nbformat.writes(runner_notebook()))
    todo = []
    for record in records:
        before = _read_record(out, record["name"])
        if is_done(out, before):
            continue
        write_json(_record_path(out, record["name"]), record)
        todo.append(record["name"])
    return todo


def _check_grid_folder(out: Path, name: str) -> None:
    """A grid's folder holds that grid's cells only: the current directory, a training's run
    folder and another grid's folder are refused (their tables would mix); the same grid's
    folder is continued."""
    if out.resolve() == Path.cwd().resolve():
        raise ValueError(f"the results folder {str(out)!r} is the current directory: give the "
                         "grid a folder of its own, e.g. runs/NAME")  # fmt: skip
    if (out / "config.json").exists():
        raise ValueError(f"{out} holds a training's run (config.json): choose another folder "
                         "for the grid")  # fmt: skip
    if (out / "grid.json").exists():
        other = read_json(out / "grid.json", "delete it, or choose another folder").get("name")
        if other != name:
            raise ValueError(f"{out} holds the results of the grid {other!r}, not {name!r}: "
                             "choose another folder (the two tables would mix)")  # fmt: skip


def _cell_of(spec: Mapping, notebook: str | None) -> Cell:
    return Cell(spec["method"], tuple(spec["models"]), spec["teacher"], spec["dataset"],
                dict(spec["params"]), dict(spec["settings"]), spec["seed"], spec["profile"],
                notebook or RUNNER)  # fmt: skip


def run_cell(out: str | Path, name: str) -> dict:
    """Train one cell from its record (in whatever process, job or GPU this is) and write its
    outcome; returns the record. A failing cell is recorded as failed, not raised."""
    out = Path(out)
    record = _read_record(out, name)
    if is_done(out, record):
        return {**record, "status": "skipped"}
    record.update(status="running", visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    record.pop("error", None)
    write_json(_record_path(out, name), record)
    cell = _cell_of(record["spec"], record["notebook"])
    runs_dir = Path(record["parameters"]["out_dir"])
    error = ""
    try:
        if record["how"] == "papermill":
            _execute(cell, Path(record["notebook"]), out / record["executed"], record["parameters"])
        else:
            notebook_run(cell.method, out_dir=runs_dir, run_name=record["parameters"]["run_name"],
                         profile=settings_profile(cell), seeds=[cell.seed], models=cell.models,
                         teacher=cell.teacher, data_root=record["parameters"]["data_root"],
                         progress=False, **cell.params)  # fmt: skip
    except Exception as exc:  # a failing cell is reported and the grid goes on
        error = _describe(exc)
    folder, reason = find_run(cell, runs_dir)
    if error or folder is None:
        record.update(status="failed", error=error or reason)
    else:
        record.update(status="ok", run=str(folder.relative_to(out.resolve())))
    write_json(_record_path(out, name), record)
    return record


@contextlib.contextmanager
def _environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _execute(cell: Cell, source: Path, target: Path, parameters: dict) -> None:
    import papermill

    with _environment(KDLAB_PROFILE=cell.profile):
        papermill.execute_notebook(str(source), str(target), parameters=parameters,
                                   cwd=str(Path.cwd()), progress_bar=False,
                                   request_save_on_cell_execute=True)  # fmt: skip


def _describe(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the notebook's own exception
        return f"{ename}: {evalue}"
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


# ---------------------------------------------------------------------------------------------
# Executors: each runs the named cells of ``out`` and calls ``done(record)`` after each.
# ---------------------------------------------------------------------------------------------
def run_local(out: Path, names: Sequence[str], done) -> None:
    for name in names:
        done(run_cell(out, name))


def visible_gpus(gpus: str | Sequence[str] | None = None) -> list[str]:
    """The device ids of the ``gpus`` pool: ``gpus`` (e.g. ``"0,1"``), else
    ``$CUDA_VISIBLE_DEVICES``, else every GPU torch sees; ValueError if there are none."""
    if gpus is None:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus is None:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    ids = [g.strip() for g in gpus.split(",")] if isinstance(gpus, str) else list(gpus)
    ids = [g for g in ids if g]
    if not ids:
        raise ValueError("the gpus executor found no GPU: give the device ids with --gpus 0,1")
    return ids


def run_gpus(out: Path, names: Sequence[str], done, gpus: Sequence[str]) -> None:
    """One worker per device id; each cell in a child process that sees its device alone."""
    free: queue.Queue[str] = queue.Queue()
    for device in gpus:
        free.put(device)

    def one(name: str) -> dict:
        device = free.get()
        try:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
            command = [sys.executable, "-m", "kdlab.reproduce.worker", str(out), name]
            finished = subprocess.run(command, env=env, capture_output=True, text=True)
        finally:
            free.put(device)
        record = _read_record(out, name)
        if finished.returncode != 0 and record.get("status") != "ok":
            tail = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            record.update(status="failed", error=f"cell process exited {finished.returncode}: "
                                                 f"{tail}")  # fmt: skip
            write_json(_record_path(out, name), record)
        return record

    with concurrent.futures.ThreadPoolExecutor(len(gpus)) as pool:
        for future in concurrent.futures.as_completed([pool.submit(one, n) for n in names]):
            done(future.result())


class CellJob:
    """A submitit job: one cell; requeued (and resumed from its checkpoint) on pre-emption or
    time-out."""

    def __call__(self, out: str, name: str) -> dict:
        return run_cell(out, name)

    def checkpoint(self, out: str, name: str):
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(), out, name)


def _slurm_executor(out: Path, options: Mapping[str, Any]):
    import submitit

    executor = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster=options["cluster"])
    parameters: dict[str, Any] = {
        "name": f"kdlab-{out.name}", "timeout_min": int(options["time"]),
        "slurm_array_parallelism": int(options["array_parallelism"]),
        "slurm_additional_parameters": {"requeue": True},
    }  # fmt: skip
    if options["gpus_per_task"]:
        parameters["gpus_per_node"] = int(options["gpus_per_task"])
    if options["cpus_per_task"]:
        parameters["cpus_per_task"] = int(options["cpus_per_task"])
    if options["partition"]:
        parameters["slurm_partition"] = options["partition"]
    executor.update_parameters(**parameters)
    return executor


def run_slurm(out: Path, names: Sequence[str], done, options: Mapping[str, Any]) -> None:
    """A submitit job array, one task per cell; waits for every task."""
    options = {**SLURM_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    try:
        executor = _slurm_executor(out, options)
        jobs = executor.map_array(CellJob(), [str(out)] * len(names), list(names))
    except Exception as error:  # no cluster, or sbatch refused: a bad partition, time limit…
        last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise ValueError(f"SLURM did not take the job array: {last}") from None
    for job, name in zip(jobs, names):
        try:
            done(job.result())
        except Exception as exc:  # the task died outside the cell (killed, node lost)
            record = _read_record(out, name)
            if record.get("status") != "ok":
                record.update(status="failed", error=f"job {job.job_id}: {_describe(exc)}")
                write_json(_record_path(out, name), record)
            done(record)


def run_grid(
    grid: Grid | str | Path | Mapping,
    out: str | Path,
    *,
    executor: str = "local",
    how: str = "papermill",
    gpus: str | Sequence[str] | None = None,
    slurm: Mapping[str, Any] | None = None,
    notebooks_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run every unfinished cell of ``grid`` into ``out`` on ``executor`` and aggregate the
    results; returns one record per cell (``status``: ok, skipped — finished before —, or
    failed). Every cell's parameters are checked against its notebook before the first runs."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if how not in ("papermill", "direct"):
        raise ValueError(f"unknown way to run a cell {how!r}; choose papermill or direct")
    if not isinstance(grid, Grid):
        grid = load_grid(grid, notebooks_dir)
    devices = visible_gpus(gpus) if executor == "gpus" else []
    slurm = {**SLURM_DEFAULTS, **{k: v for k, v in (slurm or {}).items() if v is not None}}
    if executor == "slurm" and slurm["cluster"] == "slurm" and not shutil.which("sbatch"):
        raise ValueError("the slurm executor needs SLURM's sbatch on the PATH, and there is none")
    out = Path(out)
    todo = plan(grid, out, how=how, data_root=data_root)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell", disable=not progress)

    def done(record: dict) -> None:
        if record.get("status") == "failed":
            where = f"; see {out / record['executed']}" if record.get("executed") else ""
            tqdm.write(f"cell {record['name']} failed: {record['error']}{where}", file=sys.stderr)
        bar.update(1)
        aggregate(out)

    if executor == "local":
        run_local(out, todo, done)
    elif executor == "gpus":
        run_gpus(out, todo, done, devices)
    else:
        run_slurm(out, todo, done, slurm)
    bar.close()
    aggregate(out)
    outcomes = []
    for cell in grid.cells:
        record = _read_record(out, cell.name)
        skipped = cell.name not in todo and is_done(out, record)
        outcomes.append({**record, "status": "skipped"} if skipped else record)
    return outcomes
