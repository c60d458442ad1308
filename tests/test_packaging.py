"""Tests of what ships beside the package: the dependency lists and the committed notebooks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    tomllib = pytest.importorskip("tomli")

from kdlab import nbtools

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# conda-forge names that differ from the PyPI name of the same package.
CONDA_TO_PIP = {"pytorch": "torch"}
# What a conda environment lists that is not a dependency of the package.
CONDA_ONLY = {"python", "pip"}


def _name(requirement: str) -> str:
    """The normalised package name of a requirement such as ``scikit-learn>=1.2``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pyproject_names(text: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Package names of the core dependencies and of the ``extras`` named (an extra that lists
    ``kdlab[...]`` itself contributes the extras it names, not kdlab)."""
    project = tomllib.loads(text)["project"]
    optional = project.get("optional-dependencies", {})
    names, todo, seen = set(), list(extras), set()
    for requirement in project["dependencies"]:
        names.add(_name(requirement))
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            if _name(requirement) == _name(project["name"]):
                todo += re.search(r"\[(.*)\]", requirement).group(1).replace(" ", "").split(",")
            else:
                names.add(_name(requirement))
    return names


def conda_names(text: str) -> set[str]:
    """Package names of a conda environment file, in PyPI spelling: the conda list (minus
    python and pip) and the packages of its ``pip:`` sub-list (minus options and local paths)."""
    names = set()
    for entry in yaml.safe_load(text)["dependencies"]:
        if isinstance(entry, dict):
            for item in entry.get("pip", []):
                item = item.strip()
                if item.startswith("-") or item.startswith((".", "/")):
                    continue  # "-e .", "--no-deps", a local path: the package itself
                names.add(_name(item))
        else:
            name = _name(entry.split("::")[-1])  # "conda-forge::pytorch" → "pytorch"
            if name not in CONDA_ONLY:
                names.add(CONDA_TO_PIP.get(name, name))
    return names


def test_conda_parser_on_a_known_example():
    # The comparison below is only as good as this parser: check it on a fixed example.
    example = """
name: x
channels: [conda-forge]
dependencies:
  - python>=3.10
  - pip
  - pytorch>=2.1
  - conda-forge::scikit-learn >=1.2
  - PyYAML
  - pip:
      - --no-deps
      - -e .
      - nbval==0.11
"""
    assert conda_names(example) == {"torch", "scikit-learn", "pyyaml", "nbval"}
    toml = '[project]\nname = "kdlab"\ndependencies = ["torch>=2.1", "scikit_learn", "PyYAML>=6", "nbval"]\n'
    assert pyproject_names(toml) == {"torch", "scikit-learn", "pyyaml", "nbval"}
    toml += '[project.optional-dependencies]\na = ["x"]\nb = ["y", "kdlab[a]"]\nc = ["z"]\n'
    assert pyproject_names(toml, ("b",)) == {"torch", "scikit-learn", "pyyaml", "nbval", "x", "y"}


def test_pyproject_and_environment_yml_agree():
    environment = ROOT / "environment.yml"
    if not environment.exists():
        pytest.skip("no environment.yml in this checkout")
    # environment.yml is the core packages with the [lab], [repro] and [detection] extras.
    pip = pyproject_names((ROOT / "pyproject.toml").read_text(), ("lab", "repro", "detection"))
    conda = conda_names(environment.read_text())
    assert pip, "pyproject.toml lists no dependencies"
    assert conda == pip, (
        f"only in pyproject.toml: {sorted(pip - conda)}; only in environment.yml: {sorted(conda - pip)}"
    )


def test_environment_yml_installs_kdlab_and_the_same_python():
    environment = ROOT / "environment.yml"
    if not environment.exists():
        pytest.skip("no environment.yml in this checkout")
    deps = yaml.safe_load(environment.read_text())["dependencies"]
    pip_lists = [entry["pip"] for entry in deps if isinstance(entry, dict) and "pip" in entry]
    assert len(pip_lists) == 1 and any(item.strip() in ("-e .", ".") for item in pip_lists[0])
    python = [entry for entry in deps if isinstance(entry, str) and _name(entry) == "python"]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == [f"python{requires}"]


def _requirements(group: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {_name(r): Requirement(r) for r in listed}


def test_core_dependencies_accept_colabs_kernel_packages():
    # The set-up cell installs the core list on Colab: it must take ipywidgets 7.7 as well as 8
    # and leave the kernel's packages alone (tests/test_colab.py resolves it against Colab's).
    core = _requirements()
    assert {"torch", "torchvision", "ipywidgets", "matplotlib", "tqdm"} <= set(core)
    assert core["ipywidgets"].specifier.contains("7.7.1") and core["ipywidgets"].specifier.contains(
        "8.1.5"
    )
    assert not {"ipykernel", "ipython", "jupyterlab", "notebook", "papermill", "nbval"} & set(core)


def test_extras_are_layered():
    lab, repro = _requirements("lab"), _requirements("repro")
    assert {"jupyterlab", "ipykernel"} <= set(lab)
    # ipykernel 7 leaves papermill/nbclient waiting on an idle kernel: the pin stays in [lab].
    assert not lab["ipykernel"].specifier.contains("7.0.0") and lab["ipykernel"].specifier.contains(
        "6.29.5"
    )
    assert {"papermill", "nbval", "submitit"} <= set(repro)
    dev = pyproject_names((ROOT / "pyproject.toml").read_text(), ("dev",))
    assert set(lab) | set(repro) | {"pytest", "ruff", "playwright"} <= dev


def test_make_installs_the_dev_extra():
    # make demo and make test install everything they need through one line.
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'pip install -q -e "\.\[dev\]"', makefile)


# --------------------------------------------------------------------------- notebooks


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert "00_setup_and_data.ipynb" in names and "01_knowledge_distillation.ipynb" in names


def test_badges_and_setup_cells_are_in_sync():
    assert nbtools.main(["--check"]) == 0


def test_nbtools_check_notices_a_stale_badge(tmp_path):
    # The check can fail: a notebook whose badge points elsewhere is reported (and not written).
    nb = json.loads(NOTEBOOKS[0].read_text())
    nb["cells"][0]["source"] = [
        "[![Open In Colab](https://example.org/badge.svg)](https://x)\n",
        "# t",
    ]
    path = tmp_path / NOTEBOOKS[0].name
    path.write_text(json.dumps(nb))
    before = path.read_text()
    assert nbtools.stamp(path, check=True) is False
    assert path.read_text() == before
    assert nbtools.stamp(path) is False and nbtools.stamp(path, check=True) is True


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {i} has outputs"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    source = "".join(first["source"])
    assert "Open In Colab" in source and "colab-badge.svg" in source
    assert f"notebooks/{path.name}" in source  # the badge opens this notebook
