"""Every panel of kdlab.live builds and redraws under ipywidgets 8 (this environment) and under
Colab's ipywidgets 7.7.1: that one is installed (without dependencies) into a folder of the
test's own that comes first on PYTHONPATH, so it shadows this environment's ipywidgets 8, and
tests/widget_check.py runs in a subprocess with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import widget_check

ROOT = Path(__file__).resolve().parents[1]
# Colab's ipywidgets and the packages of its generation it imports or ships with.
IPYWIDGETS_7 = [
    "ipywidgets==7.7.1",
    "widgetsnbextension>=3.6,<3.7",
    "jupyterlab-widgets>=1,<2",
    "ipython_genutils==0.2.0",
]


def test_panels_are_discovered():
    assert {"panel", "train_panel"} <= set(widget_check.panel_factories())


@pytest.mark.parametrize("name", sorted(widget_check.panel_factories()))
def test_panel_under_this_ipywidgets(name):
    assert widget_check.check(name, widget_check.panel_factories()[name]) == []


@pytest.fixture(scope="session")
def ipywidgets7(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("ipywidgets7")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    done = subprocess.run([*command, *IPYWIDGETS_7], capture_output=True, text=True, timeout=300)
    offline = (
        "NewConnectionError",
        "Temporary failure in name resolution",
        "Network is unreachable",
    )
    if done.returncode != 0 and any(sign in done.stderr + done.stdout for sign in offline):
        pytest.skip("the package index cannot be reached to install ipywidgets 7.7.1")
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def test_every_panel_under_colabs_ipywidgets_7(ipywidgets7):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ipywidgets7), str(ROOT)]))
    env["MPLBACKEND"] = "Agg"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "widget_check.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ipywidgets"] == "7.7.1"  # the shadowing worked
    assert set(result["panels"]) == set(widget_check.panel_factories())
    assert result["panels"] == {name: [] for name in result["panels"]}
