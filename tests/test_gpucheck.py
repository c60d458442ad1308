"""``make gpu-check`` (:mod:`kdlab.gpucheck`): its dry run on the CPU, as the GPU machine runs it.

The GPU machine is bare and offline: torch, torchvision, timm, torchmetrics, matplotlib, seaborn,
pandas, scikit-learn and tqdm, but not ipywidgets, pyyaml, papermill or the notebook stack, and no
install (``PYTHONPATH=.``). The dry run here runs in a subprocess in which every package the
machine lacks fails to import, in the ``tiny`` size, and must write its whole report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlab import gpucheck

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ipywidgets", "yaml", "papermill", "nbformat", "nbclient", "IPython", "ipykernel",
          "jupyter_client", "jupyter_core", "traitlets", "comm", "nbval", "submitit", "pytest",
          "_pytest", "playwright", "medmnist", "faster_coco_eval", "pycocotools",
          "ensemble_boxes")  # fmt: skip

BARE = f"""
import runpy, sys
ABSENT = {ABSENT!r}

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)")

sys.meta_path.insert(0, Absent())
for name in list(sys.modules):
    if name.split(".")[0] in ABSENT:
        del sys.modules[name]
"""


def _bare(code: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("KDLAB_PROFILE", None)
    return subprocess.run([sys.executable, "-c", BARE + code, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_import_kdlab_needs_no_notebook_package(tmp_path):
    done = _bare("import kdlab, kdlab.gpucheck, kdlab.bench; print('imported')", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout


def test_the_dry_run_writes_its_report_on_a_bare_machine(tmp_path):
    out = tmp_path / "report"
    code = "sys.argv = ['gpucheck', *sys.argv[1:]]; runpy.run_module('kdlab.gpucheck', run_name='__main__')"
    done = _bare(code, "--out", str(out), "--device", "cpu", "--size", "tiny", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["ok"] and set(report["sections"]) == {"steps", "lab", "bench"}
    steps = report["sections"]["steps"]
    for name in ("fp16", "bf16"):  # the device is the CPU: the same run twice, bit for bit
        assert steps[name]["vs_cpu_same_precision"] == 0.0
        assert steps[name]["fused_sgd"] is True
    assert steps["fp16"]["scaler"]["_growth_tracker"] == steps["steps"]  # one update a step
    assert steps["bf16"]["scaler"] == {}  # bf16 has no scaler
    lab = report["sections"]["lab"]["runs"]
    assert set(lab) == {"teacher", "student alone", "student distilled"}
    bench = report["sections"]["bench"]
    assert bench["row"] == "dml" and bench["ratio"] > 0
    text = (out / "gpu-check.md").read_text()
    for heading in ("## 1. Steps", "## 2. Notebook 01", "## 3. bench", "## 4. Peak GPU memory"):
        assert heading in text
    assert "every check passed" in text


def _result(weights, losses, scaler, precision="float16"):
    return {"weights": torch.tensor(weights, dtype=torch.float64), "losses": losses,
            "scaler": scaler, "fused": True, "precision": precision}  # fmt: skip


def test_the_steps_check_fails_beyond_its_tolerance():
    start = torch.zeros(2, dtype=torch.float64)
    ref = _result([1.0, 0.0], [2.0, 1.5, 1.2], {}, "float32")
    scaler = {"scale": 65536.0, "_growth_tracker": 3.0}
    near = _result([1.2, 0.0], [2.001, 1.501, 1.201], scaler)
    assert gpucheck._compare(near, near, ref, start, "fp16", 3)["ok"]
    far = _result([1.8, 0.0], [2.001, 1.501, 1.201], scaler)  # 80 % of the distance moved
    assert not gpucheck._compare(far, near, ref, start, "fp16", 3)["ok"]
    other_loss = _result([1.2, 0.0], [2.001, 1.501, 1.25], scaler)  # the last step's 4 % off
    assert not gpucheck._compare(other_loss, near, ref, start, "fp16", 3)["ok"]
    twice = _result([1.2, 0.0], [2.001, 1.501, 1.201], {"scale": 65536.0, "_growth_tracker": 6.0})
    assert not gpucheck._compare(twice, near, ref, start, "fp16", 3)["ok"]  # two updates a step
    backed_off = _result(
        [1.2, 0.0], [2.001, 1.501, 1.201], {"scale": 32768.0, "_growth_tracker": 1.0}
    )
    assert gpucheck._compare(backed_off, near, ref, start, "fp16", 3)["ok"]
    nan = _result([float("nan"), 0.0], [2.001, 1.501, 1.201], scaler)
    assert not gpucheck._compare(nan, near, ref, start, "fp16", 3)["ok"]


def test_the_markdown_shows_errors_and_the_memory_of_a_gpu():
    report = {
        "size": "full", "seconds": 1.0, "ok": False,
        "environment": {"date": "2026-12-01", "kdlab": "0.1.0", "torch": "2.14", "device": "cuda",
                        "name": "NVIDIA H200", "capability": "9.0", "cuda": "13.0", "cudnn": 1,
                        "auto_precision": "bfloat16", "cpu": "x86_64"},
        "sections": {"steps": {"ok": False, "error": "RuntimeError: boom",
                               "traceback": "Traceback …\nRuntimeError: boom\n", "seconds": 0.1},
                     "lab": {"ok": False, "skipped": "over budget (430 s)"}},
        "memory": {"steps": {"peak_allocated_mib": 812.5, "peak_reserved_mib": 1024.0}},
    }  # fmt: skip
    text = gpucheck.markdown(report)
    assert "RuntimeError: boom" in text and "over budget" in text and "FAILED" in text
    assert "| steps | 812.5 | 1024.0 |" in text and "NVIDIA H200" in text


def test_a_section_over_the_budget_is_skipped_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "SECTIONS", {"steps": lambda *a: pytest.fail("ran")})
    report = gpucheck.check(tmp_path, torch.device("cpu"), gpucheck.SIZES["tiny"], budget_s=-1)
    assert not report["ok"] and "over budget" in report["sections"]["steps"]["skipped"]
    assert (tmp_path / "gpu-check.md").exists()


def test_make_gpu_check_installs_nothing():
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^gpu-check:(.*)$", makefile, re.MULTILINE)
    assert rule, "no gpu-check target"
    prerequisites = rule.group(1).split(";")[0].split()
    assert prerequisites == [], f"gpu-check must not depend on {prerequisites} (no install)"
    body = rule.group(1) + makefile[rule.end() : rule.end() + 300].split("\n\n")[0]
    assert "PYTHONPATH=." in body and "-m kdlab.gpucheck" in body
    # the venv's Python only where it exists already (a developer's checkout), else python3
    assert "$(PY)" not in body.replace("$(if $(wildcard $(PY)),$(PY),$(PYTHON))", "")
