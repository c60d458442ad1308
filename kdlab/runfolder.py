"""Run folders: what a folder holds, and whether a run may write there.

A run never overwrites another run without being asked. Before anything trains, :func:`claim`
looks at what ``out`` holds and at what was asked (``resume``, ``overwrite``) and decides:

============================================  ==========  ==========  ==========  ===========
``out`` holds                                 resume      resume      resume      overwrite
                                              False       True        "auto"      True
============================================  ==========  ==========  ==========  ===========
nothing (absent, or an empty folder)          start       refused     start       start
a run cut before its first epoch ended        refused     start       start       clear, start
a checkpoint (``checkpoint.pt``)              refused     resume      resume      clear, start
a run's results without a checkpoint          refused     refused     refused     clear, start
files that are not a kdlab run's              refused     refused     refused     refused
============================================  ==========  ==========  ==========  ===========

A folder is a run's when it holds one of :data:`RUN_FILES` (``teacher/`` is the first phase
of a run whose teacher trains first: that run's folder holds the teacher's run folder). The
current directory is never a run folder (``out=""`` is the current directory), and
``overwrite`` clears a run folder whole but never one that holds the current directory.
``resume="auto"`` is how notebooks and grid cells continue their own runs.

Refusals are one-line errors naming the folder, what it holds and what to do, in the words of
the interface that asked (:mod:`kdlab.messages`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .io import read_json
from .messages import say

__all__ = [
    "RUN_FILES",
    "RunExistsError",
    "NothingToResumeError",
    "NotARunFolderError",
    "holds",
    "describe",
    "claim",
    "clear",
]

# What kdlab writes into a run folder (see kdlab.callbacks.RunFolder).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "networks", "teacher")


class RunExistsError(ValueError):
    """The folder holds a run, and the new run was not asked to resume or overwrite it."""


class NothingToResumeError(FileNotFoundError):
    """Asked to resume a folder that holds no run."""


class NotARunFolderError(ValueError):
    """The folder is the current directory, a file, or holds files that are not a run's."""


def _names(out: Path) -> set[str]:
    # Temporary files of an interrupted atomic write (kdlab.io) are no one's content.
    return {p.name for p in out.iterdir() if not p.name.endswith(".tmp")}


def holds(out: str | Path) -> str:
    """What ``out`` holds: ``"nothing"``, ``"begun"`` (a run with no finished epoch, or only its
    teacher's run), ``"checkpoint"``, ``"results"`` (a run's results, no checkpoint) or
    ``"other"`` (files, none of them a run's)."""
    out = Path(out)
    if not out.exists():
        return "nothing"
    if not out.is_dir():
        raise NotARunFolderError(f"{out} is a file, not a folder: choose a folder for the run")
    names = _names(out)
    if not names:
        return "nothing"
    if not names & set(RUN_FILES):
        return "other"
    if "checkpoint.pt" in names:
        return "checkpoint"
    metrics = out / "metrics.jsonl"
    if {"summary.json", "networks"} & names or (metrics.is_file() and metrics.stat().st_size):
        return "results"
    return "begun"


def describe(out: str | Path) -> str:
    """How far the run in ``out`` got, in words (for messages): ``finished, 8 epochs``,
    ``stopped after epoch 3 of 8``, ``its teacher stopped after epoch 2 of 8``…"""
    out = Path(out)
    try:
        if (out / "summary.json").is_file():
            summary = read_json(out / "summary.json")
            done, total = summary.get("epochs_done"), summary.get("epochs")
            return (
                f"finished, {total} epochs"
                if done == total
                else f"stopped after epoch {done} of {total}"
            )
        if (out / "checkpoint.pt").is_file():
            done = len((out / "metrics.jsonl").read_text().splitlines())
            total = read_json(out / "config.json")["train"]["epochs"]
            return f"stopped after epoch {done} of {total}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run whose files cannot all be read"
    if (out / "teacher").is_dir() and holds(out / "teacher") != "nothing":
        return f"its teacher {describe(out / 'teacher')}, the rest not begun"
    return "begun, no epoch finished"


def _check_location(out: Path, overwrite: bool) -> None:
    here = Path.cwd().resolve()
    where = out.resolve()
    if str(out) in ("", ".") or where == here:
        raise NotARunFolderError(
            say("the run folder {shown!r} is the current directory: give the run a folder of its "
                "own, e.g. {out=runs/NAME}", shown=str(out))
        )  # fmt: skip
    if overwrite and where in here.parents:
        raise NotARunFolderError(say("{out} holds the current directory: {overwrite} would "
                                     "delete it; choose another folder", out=out))  # fmt: skip


def clear(out: Path) -> None:
    """Delete everything in the folder ``out`` (the folder itself stays).

    Every ``summary.json`` in it (the run's, its teacher's), the mark of a finished run, goes
    first: a clear cut half-way leaves runs that read as unfinished, never one that reads as
    finished with part of its files gone.
    """
    for mark in sorted(out.rglob("summary.json")):
        mark.unlink()
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def claim(
    out: str | Path, resume: bool | str = False, overwrite: bool = False, dry_run: bool = False
) -> str:
    """Decide whether a run may write into ``out`` (see the module's table); clears it for
    ``overwrite`` (unless ``dry_run``: decide only, change nothing). Returns ``"start"``, ``"restart"`` (a begun run with no finished epoch,
    started again) or ``"resume"`` (from ``out/checkpoint.pt``).

    Raises :class:`RunExistsError`, :class:`NothingToResumeError` or
    :class:`NotARunFolderError`, and ValueError for a ``resume`` other than True, False or
    ``"auto"`` or for ``resume`` together with ``overwrite``.
    """
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if overwrite not in (True, False):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r}")
    if overwrite and resume:
        raise ValueError(say("{resume} continues a run and {overwrite} deletes it: choose one"))
    out = Path(out)
    _check_location(out, overwrite)
    kind = holds(out)
    if kind == "other":
        shown = ", ".join(sorted(_names(out))[:3])
        raise NotARunFolderError(
            f"{out} holds files that are not a kdlab run's ({shown}): choose a new or empty "
            "folder for the run"
        )
    if overwrite:
        if kind != "nothing" and not dry_run:
            clear(out)
        return "start"
    if kind == "nothing":
        if resume is True:
            raise NothingToResumeError(
                say("nothing to resume: {out} holds no run; drop {resume} to start one", out=out)
            )
        return "start"
    if resume and kind == "checkpoint":
        return "resume"
    if resume and kind == "begun":
        return "restart"
    if resume:
        raise RunExistsError(
            say("{out} holds a run's results ({how}) but no checkpoint.pt to resume from: "
                "{overwrite} deletes it and starts afresh, or choose another folder",
                out=out, how=describe(out))
        )  # fmt: skip
    raise RunExistsError(
        say("{out} holds a run already ({how}): {resume} continues it, {overwrite} deletes it "
            "and starts afresh, or choose another folder", out=out, how=describe(out))
    )  # fmt: skip
