"""A grid's schema and its validation: a YAML file (or a mapping) expanded into cells.

Every error is a one-line ValueError naming where (the grid file, the experiment, the key)
and what is allowed, raised before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..methods import METHODS, get_method
from ..methods.base import make_params
from ..profiles import PROFILES, profile_name
from ..profiles import profile as make_profile

GRIDS_DIR = Path(__file__).resolve().parent.parent / "grids"
REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
RUNNER = "runner"  # the generated one-run notebook (the default for every method)

GRID_KEYS = {
    "name": "the grid's name",
    "description": "one paragraph: what the grid reproduces",
    "profile": f"one of {', '.join(PROFILES)}",
    "seeds": "a list of integer seeds",
    "datasets": "a list of dataset names (default: the profile's)",
    "settings": "training settings for every cell (epochs, lr…)",
    "notebooks": "method → notebook file (in the notebooks folder) or 'runner'",
    "experiments": "the list of experiments",
    "not_reproduced": "rows of the paper's table the kit cannot train → why (listed in results.md)",
}
EXPERIMENT_KEYS = {
    "method": "the method's name",
    "models": "architectures, one per trained network (or a list of such lists)",
    "teacher": "the teacher's architecture (methods with a teacher)",
    "params": "the method's parameters, fixed",
    "grid": "method parameters → lists of values (every combination is a cell)",
    "seeds": "seeds for this experiment",
    "datasets": "datasets for this experiment",
    "settings": "training settings for this experiment",
    "notebook": "the notebook file or 'runner'",
}
# The training settings a grid may set: the profile's recipe fields (TrainConfig's knobs).
SETTINGS = (
    "epochs", "batch_size", "lr", "schedule", "milestones", "weight_decay", "precision",
    "train_size",
)  # fmt: skip
# Recipe settings a grid may set too, which a notebook need not declare: the runner does, and a
# cell that sets one for a notebook without it fails before anything runs (re-identification's
# Adam and label smoothing; their profiles set them already).
OPTIONAL_SETTINGS = ("optimizer", "betas", "label_smoothing")


@dataclasses.dataclass
class Cell:
    """One training: a method on one dataset with one set of networks and parameters, one
    seed, executed by one notebook (``runner``: the generated one-run notebook)."""

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
        parts += [f"{k}={short(v)}" for k, v in sorted(self.params.items())]
        parts += [f"{k}={short(v)}" for k, v in sorted(self.settings.items())]
        return "-".join(parts)

    @property
    def name(self) -> str:
        """The cell's folder name: its label, its seed and a digest of the whole spec."""
        safe = "".join(c if c.isalnum() or c in "+-=._" else "_" for c in self.label)
        return f"{safe}-seed{self.seed}-{_digest(self.spec())}"


def short(value: Any) -> str:
    """A value as a cell label shows it: lists comma-joined, floats in %g."""
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
    not_reproduced: dict[str, str] = dataclasses.field(default_factory=dict)


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


@functools.cache
def _known_model(arch: str) -> bool:
    from ..models import build_model

    try:
        build_model(arch, 10, 3)
    except (ValueError, KeyError):
        return False
    return True


def _model_sets(where: str, value: Any) -> list[tuple[str, ...]]:
    from ..models import available_models

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
            if not isinstance(arch, str) or not _known_model(arch):
                known = ", ".join(available_models())
                raise _fail(where, f"unknown model {arch!r}; allowed: {known}")
    return [tuple(models) for models in value]


def find_notebook(pattern: str, notebooks_dir: Path) -> Path | None:
    """The notebook a grid names: an absolute path, or a glob in the notebooks folder."""
    path = Path(pattern)
    if path.is_absolute():
        return path if path.exists() else None
    matches = sorted(notebooks_dir.glob(pattern))
    return matches[0] if matches else None


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def _read_yaml(grid: str | Path) -> tuple[dict, Path]:
    import yaml

    path = Path(grid)
    if not path.exists() and not path.suffix:
        shipped = GRIDS_DIR / f"{grid}.yaml"
        if not shipped.exists():
            names = ", ".join(shipped_grids())
            raise FileNotFoundError(
                f"no grid file {grid!r} and no shipped grid of that name ({names})"
            )
        path = shipped
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


def default_notebooks_dir() -> Path:
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else REPO_NOTEBOOKS


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
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    try:
        prof = profile_name(data.get("profile"))
    except ValueError:
        raise _fail(
            where, f"profile {data.get('profile')!r} is not one of: {', '.join(PROFILES)}"
        ) from None
    experiments = data.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise _fail(where, "experiments must be a non-empty list")
    notebooks = data.get("notebooks") or {}
    if not isinstance(notebooks, dict):
        raise _fail(where, "notebooks must map method names to notebook files")
    for method in notebooks:
        if method not in METHODS:
            known = ", ".join(sorted(METHODS))
            raise _fail(f"{where}: notebooks", f"unknown method {method!r}; allowed: {known}")
    cells: list[Cell] = []
    for index, exp in enumerate(experiments):
        here = f"{where}: experiments[{index}]"
        cells += _experiment_cells(here, exp, data, prof, notebooks, notebooks_dir)
    names = [cell.name for cell in cells]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise _fail(where, f"the cell {duplicate} appears twice")
    name = str(data.get("name", source.stem if source else "grid"))
    missing = data.get("not_reproduced") or {}
    if not isinstance(missing, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in missing.items()
    ):
        raise _fail(where, "not_reproduced must map a row's name to the reason, both text")
    return Grid(name, str(data.get("description", "")), cells, source, dict(missing))


def _experiment_cells(
    here: str, exp: Any, data: Mapping, prof: str, notebooks: Mapping, notebooks_dir: Path
) -> list[Cell]:
    """The cells of one experiment, every key checked."""
    if not isinstance(exp, dict):
        raise _fail(here, "an experiment is a mapping with the keys " + ", ".join(EXPERIMENT_KEYS))
    _check_keys(here, exp, EXPERIMENT_KEYS)
    method = exp.get("method")
    if method not in METHODS:
        raise _fail(f"{here}: method", f"{method!r} is not one of: {', '.join(sorted(METHODS))}")
    here = f"{here} ({method})"
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
    datasets = _datasets(here, exp.get("datasets", data.get("datasets")))
    settings = _settings(
        here, prof, {**(data.get("settings") or {}), **(exp.get("settings") or {})}
    )
    fixed, combos = _params(here, method_cls, exp.get("params") or {}, exp.get("grid") or {})
    notebook = _notebook(here, exp.get("notebook", notebooks.get(method, RUNNER)), notebooks_dir)
    cells = [
        Cell(method, models, teacher, dataset, {**fixed, **combo}, dict(settings), seed, prof,
             notebook)
        for dataset, models, combo, seed in itertools.product(datasets, model_sets, combos, seeds)
    ]  # fmt: skip
    for cell in cells:
        _check_builds(here, cell)
    return cells


def _check_builds(here: str, cell: Cell) -> None:
    """Build the cell's networks and method and its recipe, as its training will: a parameter
    value the method refuses (``lam: -1``), a batch too small for it, fails here, naming the
    cell, not when the cell runs."""
    prof = make_profile(cell.profile, dataset=cell.dataset, **cell.settings)
    teacher = cell.teacher or prof.teacher
    key = json.dumps([cell.method, cell.models, teacher, cell.params, prof.batch_size],
                     sort_keys=True)  # fmt: skip
    error = _build_error(key)
    if error:
        raise _fail(f"{here}: cell {cell.label}", error)


@functools.cache
def _build_error(key: str) -> str | None:
    """The one-line error of building a method as ``key`` says (see :func:`_check_builds`)."""
    from ..models import build_model
    from ..train import _role_names

    method, models, teacher, params, batch_size = json.loads(key)
    method_cls = get_method(method)
    roles = _role_names(method_cls, len(models))
    networks = {role: build_model(arch, 10, 3) for role, arch in zip(roles, models)}
    extra = {"teacher": build_model(teacher, 10, 3)} if method_cls.teacher_mode else {}
    try:
        method_cls(networks, **extra, **params).check_batch_size(batch_size)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def _datasets(here: str, datasets: Any) -> list[str | None]:
    from ..data import DATASETS

    if datasets is None:
        return [None]
    datasets = _as_list(here, "datasets", datasets, str)
    for name in datasets:
        if name not in DATASETS:
            raise _fail(
                f"{here}: datasets", f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}"
            )
    return datasets


def _settings(here: str, prof: str, settings: Mapping) -> dict:
    for key in settings:
        if key not in SETTINGS + OPTIONAL_SETTINGS:
            allowed = ", ".join(SETTINGS + OPTIONAL_SETTINGS)
            raise _fail(f"{here}: settings", f"unknown key {key!r}; allowed: {allowed}")
    try:
        make_profile(prof, **settings).train_config()
    except (TypeError, ValueError) as error:
        raise _fail(f"{here}: settings", str(error)) from None
    return dict(settings)


def _params(here: str, method_cls, fixed: Any, varied: Any) -> tuple[dict, list[dict]]:
    if not isinstance(fixed, dict) or not isinstance(varied, dict):
        raise _fail(here, "params and grid must be mappings of method parameters")
    for key, values in varied.items():
        if not isinstance(values, list) or not values:
            raise _fail(f"{here}: grid: {key}", "give a non-empty list of values")
    combos = [
        dict(zip(varied, values, strict=True)) for values in itertools.product(*varied.values())
    ]
    for combo in combos:
        try:
            make_params(method_cls, {**fixed, **combo})
        except (TypeError, ValueError) as error:
            raise _fail(f"{here}: params", str(error)) from None
    return fixed, combos


def _notebook(here: str, name: Any, notebooks_dir: Path) -> str:
    if name == RUNNER:
        return RUNNER
    found = find_notebook(str(name), notebooks_dir)
    if found is None:
        raise _fail(f"{here}: notebook", f"no notebook {name!r} in {notebooks_dir}")
    return str(found)
