"""Reproductions: run a grid of notebooks with papermill and aggregate a results table.

``python -m kdlab reproduce GRID --out runs/NAME`` (GRID: a YAML file, or the name of a grid
shipped in ``kdlab/grids/``: ``smoke``, ``digits``, ``tadml_table5_cifar100``, ``tadml_table7``).

A grid is a list of experiments; every experiment expands into cells, one per
dataset × network combination × parameter combination × seed. Each cell executes the method's
notebook with papermill, parameters injected, into ``OUT/cells/<cell>/notebook.ipynb`` (kept),
with the notebook's run folders under ``OUT/cells/<cell>/runs``. A finished cell is skipped when
the grid runs again; an interrupted one executes again and its runs resume from their last
checkpoint. ``OUT/results.md``, ``OUT/results.csv`` (one row per cell group and network: final
and best test accuracy, mean ± sample standard deviation over the seeds with n, the best epoch,
and the published number where the grid matches a published row) and ``OUT/runs.csv`` (one row
per seed and network) are rewritten after every cell.

The notebook contract
---------------------
A notebook the grid can run has a cell tagged ``parameters`` in which every setting defaults to
None ("take the profile's value")::

    PROFILE = None      # smoke | lab | paper
    out_dir = None      # a folder: write every run folder under it
    seeds = None        # the grid sets one seed per cell, e.g. [1]
    models = None       # architectures of the trained networks (a lone student may be `student`)
    teacher = None      # methods with a teacher
    dataset = None      # and any other Profile field the grid sets: epochs, lr, train_size…
    alpha = 0.9         # the method's knobs, named as in the method's Params

and writes each run with ``kdlab.run(..., out=Path(out_dir) / NAME, resume="auto")`` when
``out_dir`` is set — or calls :func:`notebook_run`, which does exactly that. The folder names
are the notebook's own: the grid finds the cell's run by reading every ``summary.json`` under
``out_dir`` (method, seed, architectures, dataset and epochs must match, and every parameter must
equal the grid's value or, where the grid sets none, the method's default, so that a notebook's
variants of its method are never taken for the cell's run; of several matches, the longest).
A parameter the grid sets but the notebook does not declare is an error before anything runs.

Where a method has no notebook yet, the grid executes a small generated notebook
(``OUT/runner.ipynb``) that only calls :func:`notebook_run`; a grid may ask for it explicitly
with ``notebook: runner``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .methods import METHODS, get_method
from .methods.base import make_params
from .metrics import summarize
from .profiles import PROFILES, Profile, profile_name
from .profiles import profile as make_profile

__all__ = [
    "PUBLISHED",
    "Cell",
    "Grid",
    "load_grid",
    "run_grid",
    "aggregate",
    "notebook_run",
    "runner_notebook",
    "published_for",
    "add_arguments",
    "main",
]

GRIDS_DIR = Path(__file__).parent / "grids"
REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# The method → notebook mapping (glob patterns in the notebooks folder). A grid can override it.
METHOD_NOTEBOOKS = {
    "independent": "01_*.ipynb",
    "kd": "01_*.ipynb",
    "dml": "02_*.ipynb",
    "adml": "03_*.ipynb",
    "tadml": "04_*.ipynb",
    "kdml": "05_*.ipynb",
}
RUNNER = "runner"

GRID_KEYS = {
    "name": "the grid's name",
    "description": "one paragraph: what the grid reproduces",
    "profile": f"one of {', '.join(PROFILES)}",
    "seeds": "a list of integer seeds",
    "datasets": "a list of dataset names (default: the profile's)",
    "settings": "profile overrides for every cell (epochs, lr…)",
    "notebooks": "method → notebook file (in the notebooks folder) or 'runner'",
    "experiments": "the list of experiments",
}
EXPERIMENT_KEYS = {
    "method": "the method's name",
    "models": "architectures, one per trained network (or a list of such lists)",
    "teacher": "the teacher's architecture (methods with a teacher)",
    "params": "the method's parameters, fixed",
    "grid": "method parameters → lists of values (every combination is a cell)",
    "seeds": "seeds for this experiment",
    "datasets": "datasets for this experiment",
    "settings": "profile overrides for this experiment",
    "notebook": "the notebook file or 'runner'",
}
SETTINGS = ("epochs", "batch_size", "lr", "schedule", "train_size", "weight_decay")

# ---------------------------------------------------------------------------------------------
# Published numbers (METHODS.md): CIFAR-100 / CIFAR-10 test top-1 accuracy in percent.
# ``models``: the trained networks, in order; ``acc``: one number per network. ``pair=False``
# rows give one network's number whatever its partners are (the network is matched by its
# architecture alone).
# ---------------------------------------------------------------------------------------------
_T5 = "TADML Table 5"
_T5_PROTOCOL = "CIFAR-100, the paper's protocol (not stated here: METHODS.md §5)"
_T7 = "TADML Table 7"
_DML = "DML Table 1"
_DML_PROTOCOL = "200 epochs, single run"
_RD = "RepDistiller README"
_RD_PROTOCOL = "240 epochs, last epoch"


def _row(source, dataset, method, models, acc, protocol, teacher=None, pair=True):
    return {
        "source": source,
        "dataset": dataset,
        "method": method,
        "models": tuple(models),
        "teacher": teacher,
        "acc": tuple(acc),
        "protocol": protocol,
        "pair": pair,
    }


PUBLISHED: list[dict[str, Any]] = [
    # TADML Table 5: networks trained alone, and the DML / ADML / TADML pairs.
    *[
        _row(_T5, "cifar100", "independent", [arch], [acc], _T5_PROTOCOL, pair=False)
        for arch, acc in [
            ("resnet32", 70.47),
            ("resnet110", 73.12),
            ("wrn_10_4", 72.65),
            ("wrn_28_10", 80.77),
        ]
    ],
    *[
        _row(_T5, "cifar100", method, pair_, acc, _T5_PROTOCOL)
        for pair_, rows in [
            (
                ("resnet32", "resnet32"),
                {"dml": (71.86, 71.89), "adml": (72.85, 72.89), "tadml": (73.07, 73.13)},
            ),
            (
                ("resnet32", "resnet110"),
                {"dml": (71.62, 74.08), "adml": (72.66, 74.18), "tadml": (73.14, 74.86)},
            ),
            (
                ("resnet110", "resnet110"),
                {"dml": (74.59, 74.55), "adml": (75.08, 75.10), "tadml": (75.52, 75.71)},
            ),
            (
                ("wrn_10_4", "wrn_10_4"),
                {"dml": (73.06, 73.01), "adml": (73.77, 73.75), "tadml": (73.97, 74.08)},
            ),
            (
                ("wrn_10_4", "wrn_28_10"),
                {"dml": (73.58, 81.11), "adml": (74.61, 81.43), "tadml": (75.11, 82.13)},
            ),
        ]
        for method, acc in rows.items()
    ],  # fmt: skip
    # TADML Table 7: the ResNet20 network, whatever its partner or teacher.
    *[
        _row(_T7, dataset, method, ["resnet20"], [acc], "the paper's protocol", pair=False)
        for dataset, rows in [
            (
                "cifar10",
                {"independent": 91.42, "kd": 91.12, "dml": 91.82, "adml": 92.23, "tadml": 93.05},
            ),
            (
                "cifar100",
                {"independent": 66.63, "kd": 66.66, "dml": 69.47, "adml": 69.60, "tadml": 70.81},
            ),
            (
                "tinyimagenet",
                {"independent": 54.45, "kd": 57.65, "dml": 57.91, "adml": 59.00, "tadml": 60.11},
            ),
        ]
        for method, acc in rows.items()
    ],  # fmt: skip
    # DML Table 1 (single runs): alone, and the mutual pair.
    *[
        row
        for arch, alone, pair_acc in [
            ("resnet32", 68.99, (71.19, 70.75)),
            ("mobilenet", 73.65, (76.21, 76.10)),
            ("wrn_28_10", 78.69, (80.28, 80.08)),
        ]
        for row in (
            _row(_DML, "cifar100", "independent", [arch], [alone], _DML_PROTOCOL, pair=False),
            _row(_DML, "cifar100", "dml", [arch, arch], pair_acc, _DML_PROTOCOL),
        )
    ],
    # Knowledge distillation (RepDistiller README): teachers and students alone, then KD.
    *[
        _row(_RD, "cifar100", "independent", [arch], [acc], _RD_PROTOCOL, pair=False)
        for arch, acc in [
            ("resnet110", 74.31),
            ("resnet32", 71.14),
            ("resnet32x4", 79.42),
            ("resnet8x4", 72.50),
        ]
    ],
    _row(_RD, "cifar100", "kd", ["resnet32"], [73.08], _RD_PROTOCOL, teacher="resnet110"),
    _row(_RD, "cifar100", "kd", ["resnet8x4"], [73.33], _RD_PROTOCOL, teacher="resnet32x4"),
]


def published_for(
    dataset: str | None, method: str, models: Sequence[str], teacher: str | None = None
) -> list[list[tuple[float, str]]]:
    """The published numbers for every trained network of a cell: one list per network of
    ``(accuracy, source)`` pairs (empty where nothing published matches)."""
    found: list[list[tuple[float, str]]] = [[] for _ in models]
    for row in PUBLISHED:
        if row["dataset"] != dataset or row["method"] != method:
            continue
        if row["teacher"] is not None and row["teacher"] != teacher:
            continue
        if row["pair"]:
            if tuple(models) == row["models"]:
                for i, acc in enumerate(row["acc"]):
                    found[i].append((acc, row["source"]))
        else:
            for i, arch in enumerate(models):
                if arch == row["models"][0]:
                    found[i].append((row["acc"][0], row["source"]))
    return found


# ---------------------------------------------------------------------------------------------
# Grids and cells
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Cell:
    """One notebook execution: a method on one dataset with one set of networks and parameters,
    one seed."""

    method: str
    models: tuple[str, ...]
    teacher: str | None
    dataset: str | None
    params: dict[str, Any]
    settings: dict[str, Any]
    seed: int
    profile: str
    notebook: str  # a path, or "runner"

    def spec(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "models": list(self.models),
            "teacher": self.teacher,
            "dataset": self.dataset,
            "params": self.params,
            "settings": self.settings,
            "seed": self.seed,
            "profile": self.profile,
        }

    @property
    def group(self) -> str:
        """The cell without its seed: the seeds of one group are averaged."""
        spec = self.spec()
        spec.pop("seed")
        return _digest(spec)

    @property
    def label(self) -> str:
        """A readable name of the group: method, networks, teacher, dataset and parameters."""
        parts = [self.method, "+".join(self.models)]
        if self.teacher:
            parts.append(f"from-{self.teacher}")
        parts.append(self.dataset or f"{self.profile}-dataset")
        parts += [f"{k}={_short(v)}" for k, v in sorted(self.params.items())]
        parts += [f"{k}={_short(v)}" for k, v in sorted(self.settings.items())]
        return "-".join(parts)

    @property
    def name(self) -> str:
        """The cell's folder name: its label, its seed and a digest of the whole spec."""
        safe = "".join(c if c.isalnum() or c in "+-=._" else "_" for c in self.label)
        return f"{safe}-seed{self.seed}-{_digest(self.spec())}"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


@dataclasses.dataclass
class Grid:
    name: str
    description: str
    cells: list[Cell]
    source: Path | None = None


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _check_keys(where: str, data: Mapping, allowed: Mapping[str, str] | Sequence[str]) -> None:
    for key in data:
        if key not in allowed:
            raise _fail(where, f"unknown key {key!r}; allowed: {', '.join(allowed)}")


def _as_list(where: str, key: str, value: Any, kind: type) -> list:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise _fail(where, f"{key} must be {kind.__name__} values, got {v!r}")
    return values


def _model_sets(where: str, value: Any) -> list[tuple[str, ...]]:
    from .models import available_models, build_model

    if isinstance(value, str):
        value = [[m.strip() for m in value.split(",")]]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, list) for v in value):
        raise _fail(
            where, f"models must be a list of architectures (or of such lists), got {value!r}"
        )
    for models in value:
        for arch in models:
            try:
                build_model(arch, 10, 3)
            except (ValueError, KeyError):
                raise _fail(
                    where, f"unknown model {arch!r}; allowed: {', '.join(available_models())}"
                ) from None
    return [tuple(models) for models in value]


def _find_notebook(pattern: str, notebooks_dir: Path) -> Path | None:
    path = Path(pattern)
    if path.is_absolute():
        return path if path.exists() else None
    matches = sorted(notebooks_dir.glob(pattern))
    return matches[0] if matches else None


def _read_yaml(grid: str | Path) -> tuple[dict, Path]:
    import yaml

    path = Path(grid)
    if not path.exists() and not path.suffix:
        shipped = GRIDS_DIR / f"{grid}.yaml"
        if shipped.exists():
            path = shipped
        else:
            names = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")))
            raise FileNotFoundError(
                f"no grid file {grid!r} and no shipped grid of that name ({names})"
            )
    if not path.exists():
        raise FileNotFoundError(f"no grid file {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else "invalid YAML"
        raise ValueError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a grid is a mapping with the keys {', '.join(GRID_KEYS)}")
    return data, path


def load_grid(grid: str | Path | Mapping, notebooks_dir: str | Path | None = None) -> Grid:
    """Read and check a grid (a YAML path, a shipped grid's name, or a mapping) and expand it
    into cells. Every error is a one-line ValueError naming the key, raised before anything runs.
    """
    if isinstance(grid, Mapping):
        data, source = dict(grid), None
    else:
        data, source = _read_yaml(grid)
    where = str(source or "grid")
    _check_keys(where, data, GRID_KEYS)
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else _default_notebooks_dir()
    prof = data.get("profile")
    try:
        prof = profile_name(prof)
    except ValueError:
        raise _fail(where, f"profile {prof!r} is not one of: {', '.join(PROFILES)}") from None
    experiments = data.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise _fail(where, "experiments must be a non-empty list")
    mapping = dict(METHOD_NOTEBOOKS)
    notebooks = data.get("notebooks") or {}
    if not isinstance(notebooks, dict):
        raise _fail(where, "notebooks must map method names to notebook files")
    for method, nb in notebooks.items():
        if method not in METHODS:
            raise _fail(
                f"{where}: notebooks",
                f"unknown method {method!r}; allowed: {', '.join(sorted(METHODS))}",
            )
        mapping[method] = nb

    cells: list[Cell] = []
    for index, exp in enumerate(experiments):
        here = f"{where}: experiments[{index}]"
        if not isinstance(exp, dict):
            raise _fail(
                here, "an experiment is a mapping with the keys " + ", ".join(EXPERIMENT_KEYS)
            )
        _check_keys(here, exp, EXPERIMENT_KEYS)
        method = exp.get("method")
        if method not in METHODS:
            raise _fail(
                f"{here}: method", f"{method!r} is not one of: {', '.join(sorted(METHODS))}"
            )
        method_cls = get_method(method)
        if "models" not in exp:
            raise _fail(here, "models is required (the architectures of the trained networks)")
        model_sets = _model_sets(f"{here}: models", exp["models"])
        for models in model_sets:
            if len(models) < method_cls.min_networks:
                raise _fail(
                    f"{here}: models",
                    f"method {method!r} needs at least {method_cls.min_networks} networks, "
                    f"got {len(models)}",
                )
        teacher = exp.get("teacher")
        if method_cls.teacher_mode is None and teacher is not None:
            raise _fail(f"{here}: teacher", f"method {method!r} has no teacher")
        if teacher is not None:
            _model_sets(f"{here}: teacher", [teacher])
        seeds = _as_list(f"{here}: seeds", "seeds", exp.get("seeds", data.get("seeds", [0])), int)
        datasets = exp.get("datasets", data.get("datasets"))
        datasets = [None] if datasets is None else _as_list(here, "datasets", datasets, str)
        from .data import DATASETS

        for name in datasets:
            if name is not None and name not in DATASETS:
                raise _fail(
                    f"{here}: datasets", f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}"
                )
        settings = {**(data.get("settings") or {}), **(exp.get("settings") or {})}
        for key in settings:
            if key not in SETTINGS:
                raise _fail(
                    f"{here}: settings", f"unknown key {key!r}; allowed: {', '.join(SETTINGS)}"
                )
        try:
            make_profile(prof, **settings).train_config()
        except (TypeError, ValueError) as error:
            raise _fail(f"{here}: settings", str(error)) from None
        fixed = exp.get("params") or {}
        varied = exp.get("grid") or {}
        if not isinstance(fixed, dict) or not isinstance(varied, dict):
            raise _fail(here, "params and grid must be mappings of method parameters")
        for key, values in varied.items():
            if not isinstance(values, list) or not values:
                raise _fail(f"{here}: grid: {key}", "give a non-empty list of values")
        combos = [
            dict(zip(varied, values, strict=True)) for values in itertools.product(*varied.values())
        ]
        for combo in combos:
            params = {**fixed, **combo}
            try:
                make_params(method_cls, params)
            except (TypeError, ValueError) as error:
                raise _fail(f"{here}: params", str(error)) from None
        nb = exp.get("notebook", mapping.get(method, RUNNER))
        if nb == RUNNER:
            notebook = RUNNER
        else:
            found = _find_notebook(str(nb), notebooks_dir)
            explicit = "notebook" in exp or method in notebooks
            if found is None and explicit:
                raise _fail(f"{here}: notebook", f"no notebook {nb!r} in {notebooks_dir}")
            notebook = str(found) if found else RUNNER  # no notebook for this method yet
        for dataset, models, combo, seed in itertools.product(datasets, model_sets, combos, seeds):
            cells.append(
                Cell(
                    method,
                    models,
                    teacher,
                    dataset,
                    {**fixed, **combo},
                    dict(settings),
                    seed,
                    prof,
                    notebook,
                )
            )
    names = [cell.name for cell in cells]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise _fail(where, f"the cell {duplicate} appears twice")
    return Grid(
        str(data.get("name", source.stem if source else "grid")),
        str(data.get("description", "")),
        cells,
        source,
    )


def _default_notebooks_dir() -> Path:
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else REPO_NOTEBOOKS


# ---------------------------------------------------------------------------------------------
# What a notebook calls
# ---------------------------------------------------------------------------------------------
def notebook_run(
    method: str,
    *,
    out_dir: str | Path | None = None,
    profile: Profile | str | None = None,
    seeds: Sequence[int] | None = None,
    models: Sequence[str] | str | None = None,
    teacher: str | None = None,
    data_root: str | Path = "data",
    progress: bool = True,
    callbacks: Sequence = (),
    **params: Any,
) -> dict[int, Any]:
    """Train ``method`` once per seed, the way a grid cell does; returns ``{seed: Run}``.

    ``profile``: a :class:`~kdlab.profiles.Profile` or its name (default ``$KDLAB_PROFILE``);
    ``models`` default to the profile's student, as many as the method needs; a method with a
    teacher defaults to the profile's teacher. A pretrained teacher (``kd``) is trained first
    with independent training on the same seed and recipe (``teacher-<arch>-seed<k>``). With
    ``out_dir`` every run is written to ``out_dir/<method>-<models>-seed<k>`` and resumes from its
    checkpoint when one is there (``resume="auto"``); without it nothing is written.
    """
    from .train import run

    prof = profile if isinstance(profile, Profile) else make_profile(profile)
    method_cls = get_method(method)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",")]
    models = list(models) if models else [prof.student] * max(1, method_cls.min_networks)
    if method_cls.teacher_mode is not None and teacher is None:
        teacher = prof.teacher
    prof, data = prof.load(str(data_root))
    out_dir = Path(out_dir) if out_dir else None
    runs = {}
    for seed in list(seeds) if seeds is not None else list(prof.seeds):
        config = prof.train_config(seed=seed)
        given_teacher: Any = teacher
        if method_cls.teacher_mode == "pretrained" and isinstance(teacher, str):
            folder = out_dir / f"teacher-{teacher}-seed{seed}" if out_dir else None
            first = run("independent", [teacher], data, config=config, out=folder,
                        resume="auto" if folder else False, progress=progress)  # fmt: skip
            given_teacher = first.method.networks["net1"]
            given_teacher.arch = teacher  # named in the student's summary
        folder = out_dir / f"{method}-{'+'.join(models)}-seed{seed}" if out_dir else None
        runs[seed] = run(
            method,
            models,
            data,
            teacher=given_teacher,
            config=config,
            out=folder,
            resume="auto" if folder else False,
            progress=progress,
            callbacks=callbacks,
            **params,
        )
    return runs


def runner_notebook() -> Any:
    """The small notebook a grid executes for a method without a notebook of its own."""
    import nbformat

    v4 = nbformat.v4
    parameters = v4.new_code_cell(
        "# Parameters (set by the grid; None = take the profile's value)\n"
        "PROFILE = None\nmethod = None\nout_dir = None\nseeds = None\nmodels = None\n"
        "teacher = None\ndataset = None\nepochs = None\nbatch_size = None\nlr = None\n"
        "schedule = None\ntrain_size = None\nweight_decay = None\nparams = None\n"
        'data_root = "data"'
    )
    parameters.metadata["tags"] = ["parameters"]
    nb = v4.new_notebook(
        cells=[
            v4.new_markdown_cell(
                "# One grid cell\n\nGenerated by `kdlab.reproduce` for a method without a "
                "notebook of its own: it trains the method with `kdlab.reproduce.notebook_run`."
            ),
            parameters,
            v4.new_code_cell(
                "import kdlab\nfrom kdlab.reproduce import notebook_run\n\n"
                "cfg = kdlab.profile(PROFILE, dataset=dataset, epochs=epochs, "
                "batch_size=batch_size, lr=lr,\n"
                "                    schedule=schedule, train_size=train_size, "
                "weight_decay=weight_decay)\n"
                "runs = notebook_run(method, out_dir=out_dir, profile=cfg, seeds=seeds, "
                "models=models,\n"
                "                    teacher=teacher, data_root=data_root, **(params or {}))\n"
                "for seed, result in runs.items():\n"
                "    print(seed, result.summary['networks'])"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


# ---------------------------------------------------------------------------------------------
# Running a grid
# ---------------------------------------------------------------------------------------------
def _declared(notebook: str) -> set[str]:
    if notebook == RUNNER:
        return {"PROFILE", "method", "out_dir", "seeds", "models", "teacher", "dataset",
                "data_root", "params", *SETTINGS}  # fmt: skip
    import papermill

    return set(papermill.inspect_notebook(notebook))


def cell_parameters(
    cell: Cell, declared: set[str], out_dir: Path, data_root: str | Path = "data"
) -> dict[str, Any]:
    """The papermill parameters of ``cell`` for a notebook declaring ``declared``; ValueError
    for a setting the grid gives that the notebook has no parameter for."""
    where = f"cell {cell.name}: notebook {Path(cell.notebook).name}"
    values: dict[str, Any] = {"out_dir": str(out_dir), "seeds": [cell.seed]}
    if "PROFILE" in declared:
        values["PROFILE"] = cell.profile
    if "models" in declared:
        values["models"] = list(cell.models)
    elif "student" in declared and len(cell.models) == 1:
        values["student"] = cell.models[0]
    else:
        values["models"] = list(cell.models)
    optional = {"teacher": cell.teacher, "dataset": cell.dataset, **cell.settings}
    values.update({k: v for k, v in optional.items() if v is not None})
    if cell.notebook == RUNNER:
        values.update(method=cell.method, params=dict(cell.params), data_root=str(data_root))
    else:
        values.update(cell.params)
        for key in ("method", "data_root"):
            if key in declared:
                values[key] = cell.method if key == "method" else str(data_root)
    for key in values:
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ValueError(f"{where} has no parameter {key!r} (its parameters: {known})")
    return values


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _trained(summary: Mapping) -> dict[str, dict]:
    return {n: e for n, e in summary["networks"].items() if n not in ("ensemble", "teacher")}


def find_run(cell: Cell, runs_dir: Path) -> tuple[Path | None, str]:
    """The run folder under ``runs_dir`` that is ``cell``'s (read from the summaries), or None
    and why: method, seed, architectures, dataset and the grid's epochs match, and every
    parameter equals the grid's value or, where the grid sets none, the method's default; of
    several such runs, the longest."""
    found = []
    expected = dataclasses.asdict(make_params(get_method(cell.method), cell.params))
    for path in sorted(runs_dir.rglob("summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("method") != cell.method or summary.get("seed") != cell.seed:
            continue
        archs = tuple(e.get("arch") for e in _trained(summary).values())
        if archs != cell.models or cell.dataset and summary.get("dataset") != cell.dataset:
            continue
        if "epochs" in cell.settings and summary.get("epochs") != cell.settings["epochs"]:
            continue
        # Every knob, the ones the grid left out at the method's defaults: a notebook's variants
        # (another schedule, a ladder rung) share the method and networks but not the knobs.
        if not all(_same(summary["params"].get(k), v) for k, v in expected.items()):
            continue
        done = summary.get("epochs_done") == summary.get("epochs")
        found.append((summary.get("epochs") or 0, done, path.parent, summary))
    if found:  # the longest: a notebook's short "try it" run repeats the main run's knobs
        _, done, folder, summary = max(found, key=lambda f: f[:2])
        if done:
            return folder, ""
        return None, f"{folder} stopped at epoch {summary['epochs_done']} of {summary['epochs']}"
    return None, (
        f"the notebook wrote no run of {cell.method} with models {'+'.join(cell.models)}, "
        f"seed {cell.seed}{', dataset ' + cell.dataset if cell.dataset else ''} under {runs_dir}"
    )


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


def _execute(cell: Cell, source: Path, target: Path, parameters: dict, cwd: Path) -> None:
    import papermill

    with _environment(KDLAB_PROFILE=cell.profile):
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=parameters,
            cwd=str(cwd),
            progress_bar=False,
            request_save_on_cell_execute=True,
        )


def _direct(cell: Cell, runs_dir: Path, data_root: str | Path) -> None:
    prof = make_profile(cell.profile, dataset=cell.dataset, **cell.settings)
    notebook_run(cell.method, out_dir=runs_dir, profile=prof, seeds=[cell.seed],
                 models=cell.models, teacher=cell.teacher, data_root=data_root, progress=False,
                 **cell.params)  # fmt: skip


def run_grid(
    grid: Grid | str | Path | Mapping,
    out: str | Path,
    *,
    executor: str = "papermill",
    notebooks_dir: str | Path | None = None,
    data_root: str | Path = "data",
    progress: bool = True,
) -> list[dict]:
    """Run every cell of ``grid`` into ``out`` and aggregate the results; returns one record per
    cell (``status``: ok, skipped — finished before —, or failed, with the executed notebook).

    ``executor="papermill"`` (the default) executes each cell's notebook; ``"direct"`` calls
    :func:`notebook_run` in this process instead (no notebook; quicker, for demonstrations).
    Every cell's parameters are checked against its notebook before the first cell runs.
    """
    if executor not in ("papermill", "direct"):
        raise ValueError(f"unknown executor {executor!r}; choose papermill or direct")
    if not isinstance(grid, Grid):
        grid = load_grid(grid, notebooks_dir)
    out = Path(out)
    data_root = Path(data_root).resolve()
    declared = {nb: _declared(nb) for nb in {cell.notebook for cell in grid.cells}}
    plans = []
    for cell in grid.cells:
        runs_dir = (out / "cells" / cell.name / "runs").resolve()
        plans.append((cell, cell_parameters(cell, declared[cell.notebook], runs_dir, data_root)))

    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(
        json.dumps({"name": grid.name, "description": grid.description,
                    "source": str(grid.source) if grid.source else None}, indent=2) + "\n"
    )  # fmt: skip
    runner = out / "runner.ipynb"
    if executor == "papermill" and RUNNER in declared:
        import nbformat

        nbformat.write(runner_notebook(), runner)

    from tqdm.auto import tqdm

    outcomes = []
    bar = tqdm(plans, desc=f"grid {grid.name}", unit="cell", disable=not progress)
    for index, (cell, parameters) in enumerate(bar):
        cell_dir = out / "cells" / cell.name
        record_path = cell_dir / "cell.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        if record.get("status") == "ok" and (out / record["run"] / "summary.json").exists():
            outcomes.append({**record, "status": "skipped"})
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        executed = cell_dir / "notebook.ipynb"
        source = runner if cell.notebook == RUNNER else Path(cell.notebook)
        record = {
            "index": index,
            "name": cell.name,
            "group": cell.group,
            "label": cell.label,
            "spec": cell.spec(),
            "notebook": str(source) if executor == "papermill" else None,
            "executed": str(executed.relative_to(out)) if executor == "papermill" else None,
            "parameters": parameters,
            "status": "running",
        }
        _write_record(record_path, record)
        bar.set_postfix_str(cell.label, refresh=True)
        error = ""
        try:
            if executor == "papermill":
                _execute(cell, source, executed, parameters, Path.cwd())
            else:
                _direct(cell, Path(parameters["out_dir"]), data_root)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing cell is reported and the grid goes on
            error = _describe(exc)
        folder, reason = find_run(cell, Path(parameters["out_dir"]))
        if error or folder is None:
            record.update(status="failed", error=error or reason)
            where = f"; see {executed}" if executor == "papermill" else ""
            tqdm.write(f"cell {cell.name} failed: {record['error']}{where}", file=sys.stderr)
        else:
            record.update(status="ok", run=str(folder.relative_to(out.resolve())))
        _write_record(record_path, record)
        outcomes.append(record)
        aggregate(out)
    bar.close()
    aggregate(out)
    return outcomes


def _describe(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the notebook's own exception
        return f"{ename}: {evalue}"
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Aggregating
# ---------------------------------------------------------------------------------------------
RESULT_COLUMNS = [
    "label", "method", "models", "teacher", "dataset", "params", "settings", "profile",
    "network", "arch", "n", "seeds", "final_mean", "final_std", "best_mean", "best_std",
    "best_epoch_mean", "epochs", "agree_mean", "published", "published_sources",
]  # fmt: skip
RUN_COLUMNS = [
    "label", "group", "method", "models", "dataset", "seed", "network", "arch", "final_acc",
    "best_acc", "best_epoch", "epochs", "agree", "run", "executed",
]  # fmt: skip


def _records(out: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*/cell.json")]
    return sorted(records, key=lambda r: (r.get("index", 0), r["name"]))


def aggregate(out: str | Path) -> tuple[list[dict], list[dict]]:
    """Write ``results.csv``, ``runs.csv`` and ``results.md`` in ``out`` from its finished cells;
    returns ``(results, runs)`` as lists of rows."""
    out = Path(out)
    runs: list[dict] = []
    failed = []
    for record in _records(out):
        if record.get("status") != "ok":
            failed.append(record)
            continue
        spec = record["spec"]
        summary = json.loads((out / record["run"] / "summary.json").read_text())
        agreement = [v for k, v in summary.get("agreement", {}).items() if k.startswith("agree/")]
        agree = sum(agreement) / len(agreement) if agreement else None
        for network, entry in summary["networks"].items():
            runs.append({
                "label": record["label"], "group": record["group"], "method": spec["method"],
                "models": "+".join(spec["models"]), "dataset": summary.get("dataset"),
                "seed": spec["seed"], "network": network, "arch": entry.get("arch", ""),
                "final_acc": entry["final_acc"], "best_acc": entry["best_acc"],
                "best_epoch": entry["best_epoch"], "epochs": summary["epochs"], "agree": agree,
                "run": record["run"], "executed": record.get("executed") or "",
                "_spec": spec,
            })  # fmt: skip

    results = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in runs:
        groups.setdefault((row["group"], row["network"]), []).append(row)
    for (_, network), rows in groups.items():
        spec = rows[0]["_spec"]
        final = summarize([r["final_acc"] for r in rows])
        best = summarize([r["best_acc"] for r in rows])
        agrees = [r["agree"] for r in rows if r["agree"] is not None]
        published = _published_for_network(spec, rows[0]["dataset"], network, rows[0]["arch"])
        results.append({
            "label": rows[0]["label"], "method": spec["method"], "models": "+".join(spec["models"]),
            "teacher": spec["teacher"] or "", "dataset": rows[0]["dataset"],
            "params": json.dumps(spec["params"], sort_keys=True) if spec["params"] else "",
            "settings": json.dumps(spec["settings"], sort_keys=True) if spec["settings"] else "",
            "profile": spec["profile"], "network": network, "arch": rows[0]["arch"],
            "n": final["n"], "seeds": " ".join(str(r["seed"]) for r in rows),
            "final_mean": final["mean"], "final_std": final["std"],
            "best_mean": best["mean"], "best_std": best["std"],
            "best_epoch_mean": sum(r["best_epoch"] for r in rows) / len(rows),
            "epochs": rows[0]["epochs"],
            "agree_mean": sum(agrees) / len(agrees) if agrees else None,
            "published": published[0][0] if published else None,
            "published_sources": "; ".join(f"{acc:.2f} ({src})" for acc, src in published),
        })  # fmt: skip

    _write_csv(out / "results.csv", RESULT_COLUMNS, results)
    _write_csv(out / "runs.csv", RUN_COLUMNS, runs)
    (out / "results.md").write_text(_markdown(out, results, failed))
    return results, [{k: v for k, v in r.items() if k != "_spec"} for r in runs]


def _published_for_network(spec: Mapping, dataset: str | None, network: str, arch: str):
    if network == "ensemble":
        return []
    if network == "teacher":  # the teacher trained alone
        return published_for(dataset, "independent", [arch])[0] if arch else []
    trained = list(spec["models"])
    names = [n for n in ("net", "peer", "student") if network.startswith(n)]
    position = (
        int(network[len(names[0]) :]) - 1 if names and network[len(names[0]) :].isdigit() else 0
    )
    found = published_for(dataset, spec["method"], trained, spec["teacher"])
    return found[position] if position < len(found) else []


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)


def _markdown(out: Path, results: list[dict], failed: list[dict]) -> str:
    info = json.loads((out / "grid.json").read_text()) if (out / "grid.json").exists() else {}
    lines = [f"# Results: grid {info.get('name', out.name)}", ""]
    if info.get("description"):
        lines += [info["description"].strip(), ""]
    lines += [
        "Test top-1 accuracy (%). **final**: the last epoch; **best**: the best epoch, chosen on "
        "the test split itself (an optimistic number). Mean ± sample standard deviation over the "
        "n seeds (± 0.00 with one seed is no estimate of the noise). **published**: the papers' "
        "numbers for the same method, networks and dataset (METHODS.md; their protocol, not "
        "measured here).",
        "",
        "| method | networks | dataset | parameters | network | n | final | best | best epoch "
        "| published |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        params = ", ".join(f"{k}={_short(v)}" for k, v in json.loads(r["params"] or "{}").items())
        teacher = f" ← {r['teacher']}" if r["teacher"] else ""
        network = f"{r['network']} ({r['arch']})" if r["arch"] else r["network"]
        lines.append(
            f"| {r['method']} | {r['models']}{teacher} | {r['dataset']} | {params} | {network} "
            f"| {r['n']} | {r['final_mean']:.2f} ± {r['final_std']:.2f} "
            f"| {r['best_mean']:.2f} ± {r['best_std']:.2f} | {r['best_epoch_mean']:.1f} "
            f"of {r['epochs']} | {r['published_sources'] or '–'} |"
        )
    if not results:
        lines.append("| (no finished cell yet) | | | | | | | | | |")
    if failed:
        lines += ["", "## Cells not finished", ""]
        for record in failed:
            where = (
                f" — executed notebook: `{record['executed']}`" if record.get("executed") else ""
            )
            lines.append(f"- `{record['name']}`: {record.get('error') or record['status']}{where}")
    return "\n".join(lines) + "\n"


def load_results(out: str | Path):
    """``(results, runs, curves)`` of a grid's output folder as pandas DataFrames; ``curves``
    has one row per cell, seed and epoch with every metric of ``metrics.jsonl``."""
    import pandas as pd

    out = Path(out)
    if not (out / "results.csv").exists():
        raise FileNotFoundError(f"no results.csv in {out}: run a grid into it first")
    results = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False, na_values=[""])
    frames = []
    for (label, seed, run), _ in runs.groupby(["label", "seed", "run"], sort=False):
        metrics = out / run / "metrics.jsonl"
        frame = pd.read_json(metrics, lines=True)
        frame.insert(0, "label", label)
        frame.insert(1, "seed", seed)
        frames.append(frame)
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return results, runs, curves


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    shipped = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")))
    parser.add_argument("grid", help=f"a grid YAML file, or a shipped grid: {shipped}")
    parser.add_argument("--out", required=True, help="the results folder, e.g. runs/NAME")
    parser.add_argument("--notebooks", help="the notebooks folder (default: ./notebooks)")
    parser.add_argument("--data-root", default="data", help="the dataset cache folder")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="train each cell in this process instead of executing its notebook",
    )
    parser.add_argument("--dry-run", action="store_true", help="check the grid, list its cells")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the grid; exit code 0 only if every cell finished."""
    grid = load_grid(args.grid, args.notebooks)
    if args.dry_run:
        declared = {nb: _declared(nb) for nb in {cell.notebook for cell in grid.cells}}
        for cell in grid.cells:  # the parameters are checked against each notebook, too
            cell_parameters(cell, declared[cell.notebook], Path(args.out) / "cells" / cell.name)
            nb = Path(cell.notebook).name if cell.notebook != RUNNER else RUNNER
            print(f"{cell.name}  ({nb})")
        print(f"{len(grid.cells)} cells")
        return 0
    outcomes = run_grid(
        grid,
        args.out,
        executor="direct" if args.direct else "papermill",
        data_root=args.data_root,
        progress=not args.no_progress,
    )
    failed = [o for o in outcomes if o["status"] == "failed"]
    skipped = sum(o["status"] == "skipped" for o in outcomes)
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} cells finished ({skipped} skipped, "
        f"done before); results in {Path(args.out) / 'results.md'}"
    )
    for record in failed:
        where = (
            f" (notebook: {Path(args.out) / record['executed']})" if record.get("executed") else ""
        )
        print(f"failed: {record['name']}: {record['error']}{where}", file=sys.stderr)
    return 0 if not failed else 1
