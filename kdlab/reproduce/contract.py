"""The notebook contract: what a notebook a grid can run declares, and what a cell gives it.

A notebook that trains (numbered, with an ``out_dir`` parameter) has a cell tagged
``parameters`` that declares

- every name of :data:`CONTRACT`, each defaulting to None ("take the profile's value");
  the optional recipe settings of :data:`~kdlab.reproduce.grid.OPTIONAL_SETTINGS`
  (``optimizer``, ``betas``, ``label_smoothing``) only where it uses them (the runner and
  notebook 08 do): a grid cell that sets one for a notebook without it is refused before
  anything runs;
- its networks: ``models`` (a list, one per trained network) or ``student`` (a lone student),
  and ``teacher`` where its method has one;
- every knob of its main method, named as in the method's ``Params`` and with the same
  default, where :data:`METHOD_NOTEBOOKS` names it as a method's notebook (a notebook of several
  methods with prefixed knobs, like 07, is not named there: a grid runs those methods through
  the runner).

With ``out_dir`` set, its main run of seed ``k`` is written to ``out_dir/<run_name>-seed<k>``
(``run_name`` None: the notebook's own name for it) with ``resume="auto"``; a grid passes
``run_name`` and finds the cell's run there, by name. ``tests/test_notebook_params.py`` checks
every numbered notebook against this rule.

By default a grid runs the small generated :func:`runner_notebook` (one training per cell:
:func:`notebook_run`); a grid that names a teaching notebook (``notebook:``) runs it whole, and
its main run is the cell's result.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..methods import get_method
from ..methods.base import make_params
from ..optim import scale_milestones
from ..profiles import Profile
from ..profiles import profile as make_profile
from .grid import OPTIONAL_SETTINGS, RUNNER, SETTINGS, Cell

CONTRACT = {
    "PROFILE": "smoke | lab | paper",
    "out_dir": "a folder: every run is written there and resumes from there",
    "run_name": "the main run's folder name under out_dir (a grid sets it)",
    "data_root": "the dataset cache folder (None: kdlab.data.default_root())",
    "seeds": "e.g. [0, 1, 2]",
    "dataset": "digits, cifar10, cifar100, pathmnist, reid_digits, market1501, "
    "synthetic_polyps, kvasir_seg, cvc_clinicdb…",
    **{key: "the training recipe (None: the profile's)" for key in SETTINGS},
}
# The notebook whose main run is each method's (a glob in the notebooks folder).
METHOD_NOTEBOOKS = {
    "kd": "01_*.ipynb",
    "dml": "02_*.ipynb",
    "adml": "03_*.ipynb",
    "tadml": "04_*.ipynb",
    "kdml": "05_*.ipynb",
    "kdml_det": "09_*.ipynb",
}
RUN_NAME = "main"  # the run name a grid gives every cell
# The runner also declares the optional recipe settings (optimizer, betas, label_smoothing).
RUNNER_PARAMETERS = ("method", "models", "teacher", "params", *CONTRACT, *OPTIONAL_SETTINGS)


def method_knobs(method: str) -> dict[str, Any]:
    """A method's knobs and their defaults (the fields of its ``Params``)."""
    return dataclasses.asdict(make_params(get_method(method), {}))


def declared(notebook: str) -> dict[str, Any]:
    """The parameters a notebook declares, with their defaults as source text."""
    if notebook == RUNNER:
        return {name: "None" for name in RUNNER_PARAMETERS}
    import papermill

    return {name: p["default"] for name, p in papermill.inspect_notebook(notebook).items()}


def run_folder(runs_dir: str | Path, seed: int, run_name: str = RUN_NAME) -> Path:
    """Where a notebook writes its main run of ``seed`` under ``runs_dir``."""
    return Path(runs_dir) / f"{run_name}-seed{seed}"


def cell_parameters(
    cell: Cell, names: Sequence[str], runs_dir: Path, data_root: str | Path
) -> dict[str, Any]:
    """The papermill parameters of ``cell`` for a notebook declaring ``names``; a one-line
    ValueError naming the cell and the key for a setting the notebook has no parameter for."""
    values: dict[str, Any] = {
        "PROFILE": cell.profile,
        "out_dir": str(runs_dir),
        "run_name": RUN_NAME,
        "data_root": str(data_root),
        "seeds": [cell.seed],
    }
    if "student" in names and "models" not in names and len(cell.models) == 1:
        values["student"] = cell.models[0]
    else:
        values["models"] = list(cell.models)
    optional = {"teacher": cell.teacher, "dataset": cell.dataset, **cell.settings}
    values.update({k: v for k, v in optional.items() if v is not None})
    if cell.notebook == RUNNER:
        values.update(method=cell.method, params=dict(cell.params))
    else:
        values.update(cell.params)
    for key in values:
        if key not in names:
            where = f"cell {cell.name}: notebook {Path(cell.notebook).name}"
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"{where} has no parameter {key!r} (its parameters: {known})")
    return values


def train_one(
    method: str,
    models: Sequence[str],
    data,
    *,
    config,
    teacher: Any = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    teacher_epochs: int | None = None,
    progress: bool = True,
    callbacks: Sequence = (),
    **params: Any,
):
    """Train ``method`` once (:func:`kdlab.run`); the one place that trains a pretrained teacher
    first.

    A teacher given by architecture to a method that needs it trained (``kd``; ``kdml`` with
    ``pretrained_teacher=True``) is trained first with independent training, on the same data,
    seed and recipe (``teacher_epochs`` epochs if given, the milestones scaled to them:
    :func:`kdlab.optim.scale_milestones`), into ``out/teacher`` (in memory
    without ``out``). Such a run has two phases in one folder, the teacher's run in
    ``out/teacher`` and then the students' in ``out``: the folder is claimed once for the whole
    run (:func:`kdlab.runfolder.claim`: refused when it holds a run and neither ``resume`` nor
    ``overwrite`` is set, cleared whole by ``overwrite``), and each phase then continues its own
    part (``resume="auto"``), so a run cut in either phase resumes from that phase. The method's
    parameters, architectures and device are checked before the teacher trains.
    """
    from ..models import build_model
    from ..runfolder import claim
    from ..train import is_checkpoint_path, pick_device, run

    method_cls = get_method(method)
    first = method_cls.teacher_mode == "pretrained" or bool(params.get("pretrained_teacher"))
    if first and isinstance(teacher, str) and not is_checkpoint_path(teacher):
        if data.task.name not in get_method("independent").tasks:
            raise ValueError(
                f"{method} with a pretrained teacher needs a trained {data.task.model_kind}: give "
                f"a network or a saved checkpoint (.pt) as teacher, not the name {teacher!r}"
            )
        n, c = data.num_classes, data.in_channels
        students = [build_model(arch, n, c) for arch in models]
        roles = {f"{method_cls.role}{i}": net for i, net in enumerate(students, 1)}
        method_cls(roles, teacher=build_model(teacher, n, c), **params)  # fails now, not later
        pick_device(config.device)
        folder = None
        if out is not None:
            claim(out, resume, overwrite)  # the whole run: both phases
            folder = Path(out) / "teacher"
            resume, overwrite = "auto", False  # each phase continues its own part
        if progress:
            print(f"training the teacher {teacher} first → {folder or 'memory'}", file=sys.stderr)
        recipe = config
        if teacher_epochs:  # the recipe shrunk (or grown) to the teacher's epochs
            moved = scale_milestones(config.milestones, config.epochs, teacher_epochs)
            recipe = dataclasses.replace(config, epochs=teacher_epochs, milestones=moved)
        done = run("independent", [teacher], data, config=recipe, out=folder, resume=resume,
                   progress=progress)  # fmt: skip
        arch, teacher = teacher, done.method.networks["net1"]
        teacher.arch = arch  # named in the student's summary
    return run(method, list(models), data, teacher=teacher, config=config, out=out,
               resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks,
               **params)  # fmt: skip


def notebook_run(
    method: str,
    *,
    out_dir: str | Path | None = None,
    run_name: str | None = None,
    profile: Profile | str | None = None,
    seeds: Sequence[int] | None = None,
    models: Sequence[str] | str | None = None,
    teacher: str | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence = (),
    **params: Any,
) -> dict[int, Any]:
    """Train ``method`` once per seed, the way a grid cell does; returns ``{seed: Run}``.

    ``profile``: a :class:`~kdlab.profiles.Profile` or its name (default ``$KDLAB_PROFILE``);
    ``models`` default to the profile's student, as many as the method needs; a method with a
    teacher defaults to the profile's teacher (trained first where the method needs it trained:
    :func:`train_one`). With ``out_dir`` every run is written to
    ``out_dir/<run_name>-seed<k>`` (``run_name`` None: the method's name) and resumes from its
    checkpoint (``resume="auto"``); without it nothing is written.
    """
    prof = profile if isinstance(profile, Profile) else make_profile(profile)
    method_cls = get_method(method)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",")]
    models = list(models) if models else [prof.student] * max(1, method_cls.min_networks)
    if method_cls.teacher_mode is not None and teacher is None:
        teacher = prof.teacher
    prof, data = prof.load(data_root)  # the profile that applies (a fallback's, maybe)
    runs = {}
    for seed in list(seeds) if seeds is not None else list(prof.seeds):
        folder = run_folder(out_dir, seed, run_name or method) if out_dir else None
        runs[seed] = train_one(
            method, models, data, config=prof.train_config(seed=seed), teacher=teacher,
            out=folder, resume="auto" if folder else False, progress=progress,
            callbacks=callbacks, **params,
        )  # fmt: skip
    return runs


def runner_notebook() -> Any:
    """The small notebook a grid executes by default: one :func:`notebook_run` of the cell."""
    import nbformat

    v4 = nbformat.v4
    parameters = v4.new_code_cell(
        "# Parameters (set by the grid; None = take the profile's value)\n"
        + "".join(f"{name} = None\n" for name in RUNNER_PARAMETERS)
    )
    parameters.metadata["tags"] = ["parameters"]
    recipe = ", ".join(f"{k}={k}" for k in ("dataset", *SETTINGS, *OPTIONAL_SETTINGS))
    code = (
        "import os\n\nimport kdlab\nfrom kdlab.reproduce import notebook_run\n\n"
        f"cfg = kdlab.profile(PROFILE, {recipe})\n"
        "print('CUDA_VISIBLE_DEVICES =', os.environ.get('CUDA_VISIBLE_DEVICES'))\n"
        "runs = notebook_run(method, out_dir=out_dir, run_name=run_name, profile=cfg, "
        "seeds=seeds,\n    models=models, teacher=teacher, data_root=data_root, "
        "**(params or {}))\n"
        "for seed, result in runs.items():\n"
        "    print(seed, result.summary['networks'])"
    )
    nb = v4.new_notebook(
        cells=[
            v4.new_markdown_cell(
                "# One grid cell\n\nGenerated by `kdlab.reproduce`: it trains the cell's method "
                "once with `kdlab.reproduce.notebook_run`."
            ),
            parameters,
            v4.new_code_cell(code),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    return nb


def settings_profile(cell: Cell) -> Profile:
    """The profile a cell trains with: its profile, dataset and settings."""
    return make_profile(cell.profile, dataset=cell.dataset, **cell.settings)


def find_run(cell: Cell, runs_dir: Path) -> tuple[Path | None, str]:
    """The cell's run folder (``runs_dir/<RUN_NAME>-seed<k>``) if it finished, else None and
    why."""
    import json

    folder = run_folder(runs_dir, cell.seed)
    summary_file = folder / "summary.json"
    if not summary_file.exists():
        return None, f"the notebook wrote no run {folder.name} under {runs_dir}"
    summary: Mapping = json.loads(summary_file.read_text())
    if summary.get("epochs_done") != summary.get("epochs"):
        done, total = summary.get("epochs_done"), summary.get("epochs")
        return None, f"{folder} stopped at epoch {done} of {total}"
    if summary.get("method") != cell.method or summary.get("seed") != cell.seed:
        return None, f"{folder} holds a run of {summary.get('method')}, not of {cell.method}"
    return folder, ""
