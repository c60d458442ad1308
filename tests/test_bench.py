"""The speed benchmark: quick mode runs every row; the reference computes the kit's losses."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import kdlab
from kdlab import bench, losses
from kdlab.bench import reference, timing
from kdlab.cli import main


def test_quick_mode_prints_every_row_with_a_numeric_ratio(capsys, tmp_path):
    path = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--batch-size", "32", "--steps", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"torch {torch.__version__}" in out and "device: cpu" in out
    data = json.loads(path.read_text())
    assert [r["row"] for r in data["rows"]] == list(bench.ROWS)
    for name, row in bench.ROWS.items():
        line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        if row.method in kdlab.METHODS:
            match = re.search(r"\| (\d+\.\d+)× \|$", line)
            assert match, line
            numbers = next(r for r in data["rows"] if r["row"] == name)
            ratio = numbers["kdlab_img_s"] / numbers["reference_img_s"]
            assert float(match.group(1)) == pytest.approx(ratio, abs=0.006)
            assert numbers["ratio"] == pytest.approx(ratio)
            assert numbers["kdlab_s_epoch"] == pytest.approx(50_000 / numbers["kdlab_img_s"])
            assert numbers["reference_img_s"] > 0 and math.isfinite(numbers["reference_img_s"])
        else:
            assert "skipped" in line


def test_unknown_row_is_a_usage_error(capsys):
    assert main(["bench", "--quick", "--rows", "dml,nope"]) == 2
    assert "unknown benchmark row 'nope'" in capsys.readouterr().err


def test_every_row_names_a_method_and_its_network_count():
    for row in bench.ROWS.values():
        assert row.networks >= 1
        if row.method in kdlab.METHODS:
            cls = kdlab.get_method(row.method)
            assert row.networks >= cls.min_networks
            assert row.teacher == (cls.teacher_mode is not None)


def test_reference_losses_equal_the_kits():
    """The plainly written reference terms compute what kdlab.losses computes."""
    g = torch.Generator().manual_seed(0)
    z, z_peer = torch.randn(40, 100, generator=g), torch.randn(40, 100, generator=g)
    assert torch.allclose(reference._kl(z, z_peer), losses.mutual_kl(z, z_peer), atol=1e-6)
    assert torch.allclose(
        16 * reference._kl(z, z_peer, 4.0), losses.kd_loss(z, z_peer, 4.0), atol=1e-6
    )
    assert torch.allclose(reference._js(z, z_peer), losses.js_divergence(z, z_peer), atol=1e-6)
    h, h_peer = torch.randn(40, 64, generator=g), torch.randn(40, 64, generator=g)
    assert torch.allclose(
        reference._topology(h, h_peer, 16, 0.1), losses.topology_loss(h, h_peer, 16, 0.1), atol=1e-5
    )


def test_reference_step_trains_the_networks():
    """One reference dml step changes both peers' weights (the loop really steps)."""
    nets = [kdlab.build_model("cnn_tiny", 100) for _ in range(2)]
    before = [n.classifier.weight.detach().clone() for n in nets]
    step = reference._reference_dml(nets, None)
    step(torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,)))
    for net, w in zip(nets, before, strict=True):
        assert not torch.equal(net.classifier.weight, w)


def test_result_numbers():
    r = bench.Result("dml", "a + b", reference_img_s=20.0, kdlab_img_s=50.0)
    assert r.ratio == 2.5 and r.reference_s_epoch == 2500 and r.kdlab_s_epoch == 1000
    assert bench.Result("x", "y", skipped="no").ratio is None
    assert timing._split(10, 3) == [4, 3, 3] and timing._split(2, 5) == [1, 1]
