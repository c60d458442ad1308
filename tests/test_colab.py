"""Colab: the set-up cell's install leaves Colab's kernel packages alone, it installs the pinned
ref, the GPU check speaks up on a CPU runtime, the lab profile then takes its CPU set-up, and the
repository address is set in one place."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_cifar import ARCHIVES, NAMES

import kdlab
from kdlab import nbtools, profiles

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tests" / "colab-constraints-2026-08.txt"
# What Colab's kernel runs on: the install must change none of these.
KERNEL_PACKAGES = (
    "torch", "torchvision", "ipykernel", "ipython", "ipywidgets", "tornado", "pyzmq",
    "jupyter-client", "notebook",
)  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_requirement() -> str:
    """The requirement the set-up cell gives ``%pip install``."""
    found = re.findall(r'%pip install -q "([^"]+)"', nbtools.setup_source())
    assert len(found) == 1, "the set-up cell has one pip install of one requirement"
    return found[0]


def colab_pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


# --------------------------------------------------------------------------- the install


def test_constraints_file_names_its_source_and_every_kernel_package():
    header = CONSTRAINTS.read_text().split("\n\n")[0]
    assert "Colab" in header and "GPU runtime" in header and "August 2026" in header
    assert "assumed" in header  # the patch releases that are not from the published list
    pins = colab_pins()
    assert set(pins) == set(KERNEL_PACKAGES)
    assert pins["ipywidgets"] == "7.7.1" and pins["ipykernel"] == "6.17.1"


def test_setup_cell_installs_the_pinned_ref():
    assert setup_requirement() == (
        f"kdlab @ git+https://github.com/{nbtools.REPOSITORY}@{nbtools.REF}"
    )
    assert nbtools.REF not in ("main", "master", "HEAD")


def _wheel(tmp_path: Path) -> Path:
    """kdlab as a wheel, built from a copy of this checkout (the tree itself stays clean)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kdlab", src / "kdlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path)]
    if _has_setuptools():  # build with it; otherwise pip fetches it (build isolation)
        command.append("--no-build-isolation")
    subprocess.run([*command, str(src)], check=True, capture_output=True, timeout=300)
    return next(tmp_path.glob("kdlab-*.whl"))


def _has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable")


def test_colab_install_changes_none_of_colabs_kernel_packages(tmp_path):
    """Resolve the set-up cell's requirement (the local checkout in place of the git address)
    for Python 3.13 against Colab's versions, as constraints: pip finds no solution when kdlab
    needs another version of any of them. (pip takes Python 3.13's wheels and Requires-Python;
    environment markers it evaluates for the running interpreter.)"""
    wheel = _wheel(tmp_path)
    requirement = setup_requirement().split(" @ ")[0] + f" @ {wheel.as_uri()}"
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
        "--report", str(report), "--python-version", "3.13", "--only-binary=:all:",
        "-c", str(CONSTRAINTS), requirement,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    if done.returncode != 0 and any(sign in output for sign in OFFLINE):
        pytest.skip("the package index cannot be reached")
    # pip explains a failed resolution as "The conflict is caused by:" and indented lines.
    cause = output.partition("The conflict is caused by:")[2].split("\n\n")[0]
    conflicts = [line.strip() for line in cause.splitlines() if line.strip()]
    assert done.returncode == 0, (
        "installing kdlab on Colab would change a package Colab's kernel runs on: "
        + "; ".join(conflicts or output.splitlines()[-5:])
    )
    installs = {
        _norm(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "kdlab" in installs
    pins = colab_pins()
    assert {name: installs.get(name) for name in pins} == pins


# --------------------------------------------------------------------------- the set-up cell


class _Shell:
    """A stand-in for IPython's shell: records the line magics the cell runs."""

    def __init__(self):
        self.magics: list[tuple[str, str]] = []

    def run_line_magic(self, name: str, line: str, _stack_depth=1):
        self.magics.append((name, line))


def _run_setup_cell(monkeypatch, colab: bool, gpu: bool) -> _Shell:
    """Execute the set-up cell as IPython would (its %pip turned into a magic call)."""
    import torch
    from IPython.core.inputtransformer2 import TransformerManager

    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    shell = _Shell()
    code = TransformerManager().transform_cell(nbtools.setup_source())
    exec(compile(code, "set-up cell", "exec"), {"get_ipython": lambda: shell})
    return shell


def test_setup_cell_on_a_colab_cpu_runtime(monkeypatch, capsys):
    shell = _run_setup_cell(monkeypatch, colab=True, gpu=False)
    assert shell.magics == [("pip", f'install -q "{setup_requirement()}"')]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [nbtools.GPU_MESSAGE]  # one line
    assert "Runtime → Change runtime type → T4 GPU" in lines[0]


def test_setup_cell_on_a_colab_gpu_runtime_and_elsewhere(monkeypatch, capsys):
    shell = _run_setup_cell(monkeypatch, colab=True, gpu=True)
    assert len(shell.magics) == 1 and capsys.readouterr().out == ""
    shell = _run_setup_cell(monkeypatch, colab=False, gpu=False)
    assert shell.magics == [] and capsys.readouterr().out == ""  # installs nothing, says nothing


def test_every_notebook_checks_for_a_gpu_in_its_first_code_cell():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        first = next(c for c in cells if c["cell_type"] == "code")
        assert "".join(first["source"]) == nbtools.setup_source().rstrip("\n"), path.name
        assert "gpu_check()" in "".join(first["source"])


# --------------------------------------------------------------------------- the lab profile


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A root holding a small CIFAR-10 archive (test_cifar's), whose checksum is accepted."""
    import hashlib

    from kdlab.data import cifar

    (tmp_path / NAMES["cifar10"]).write_bytes(ARCHIVES["cifar10"])
    md5 = hashlib.md5(ARCHIVES["cifar10"]).hexdigest()
    monkeypatch.setitem(cifar.CIFAR, "cifar10", dict(cifar.CIFAR["cifar10"], md5=md5))
    monkeypatch.delenv("KDLAB_CACHE", raising=False)
    return tmp_path


def _device(monkeypatch, kind: str):
    import torch

    monkeypatch.setattr(profiles, "pick_device", lambda device="auto": torch.device(kind))


def test_lab_profile_without_a_gpu_takes_its_cpu_set_up(cifar_root, monkeypatch, capsys):
    _device(monkeypatch, "cpu")
    cfg = kdlab.profile("lab")
    cfg, data = cfg.load(cifar_root)  # CIFAR-10 is there, but there is no GPU to train it on
    assert data.name == "digits" and cfg.dataset == "digits"
    assert (cfg.epochs, cfg.teacher, cfg.student, cfg.train_size) == (
        30,
        "resnet20",
        "cnn_tiny",
        200,
    )
    assert "no GPU here" in capsys.readouterr().out


def test_lab_profile_with_a_gpu_trains_on_cifar(cifar_root, monkeypatch):
    _device(monkeypatch, "cuda")
    cfg = kdlab.profile("lab")
    cfg, data = cfg.load(cifar_root)
    assert data.name == "cifar10" and (cfg.epochs, cfg.teacher) == (15, "resnet56")


def test_an_explicit_dataset_is_kept_without_a_gpu(cifar_root, monkeypatch):
    _device(monkeypatch, "cpu")
    cfg = kdlab.profile("lab", dataset="cifar10")
    cfg, data = cfg.load(cifar_root)
    assert data.name == "cifar10" and cfg.epochs == 15


# --------------------------------------------------------------------------- the address


@pytest.fixture
def checkout_copy(tmp_path, monkeypatch):
    """nbtools and the notebooks copied to ``tmp_path``, nbtools pointed at the copy."""
    (tmp_path / "kdlab").mkdir()
    shutil.copy(nbtools.__file__, tmp_path / "kdlab" / "nbtools.py")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    monkeypatch.setattr(nbtools, "__file__", str(tmp_path / "kdlab" / "nbtools.py"))
    monkeypatch.setattr(nbtools, "REPOSITORY", nbtools.REPOSITORY)  # restored afterwards
    monkeypatch.setattr(nbtools, "REF", nbtools.REF)
    return tmp_path


def test_a_course_sets_its_address_in_one_place(checkout_copy):
    assert nbtools.main(["--repository", "course-org/kdlab-fork", "--ref", "v2.0"]) == 0
    source = (checkout_copy / "kdlab" / "nbtools.py").read_text()
    assert 'REPOSITORY = "course-org/kdlab-fork"' in source and 'REF = "v2.0"' in source
    nb = json.loads((checkout_copy / "notebooks" / "01_knowledge_distillation.ipynb").read_text())
    text = json.dumps(nb)
    assert "github/course-org/kdlab-fork/blob/v2.0/notebooks/01_knowledge_distillation" in text
    assert "git+https://github.com/course-org/kdlab-fork@v2.0" in text
    assert "kdlab/kdlab" not in text
    assert nbtools.main(["--check"]) == 0


@pytest.mark.parametrize(
    "args", [["--ref", "main"], ["--repository", "not-an-address"], ["--ref", "v1 beta"]]
)
def test_a_branch_or_a_malformed_address_is_refused(checkout_copy, args, capsys):
    before = (checkout_copy / "kdlab" / "nbtools.py").read_text()
    with pytest.raises(SystemExit):
        nbtools.main(args)
    assert "--" in capsys.readouterr().err.splitlines()[-1]
    assert (checkout_copy / "kdlab" / "nbtools.py").read_text() == before


def test_outside_a_checkout_nothing_is_rewritten(checkout_copy, capsys):
    shutil.rmtree(checkout_copy / "notebooks")  # kdlab installed without its notebooks
    before = (checkout_copy / "kdlab" / "nbtools.py").read_text()
    with pytest.raises(SystemExit):
        nbtools.main(["--repository", "course-org/kdlab-fork", "--ref", "v2.0"])
    assert "run it from a checkout" in capsys.readouterr().err
    assert (checkout_copy / "kdlab" / "nbtools.py").read_text() == before
