"""Notebook 07's figure and panel: the bars show the losses' numbers; every slider redraws."""

from __future__ import annotations

import pytest
import torch

from kdlab import live, plots
from kdlab.losses import dist_terms, dkd_terms, kd_loss, logit_std_kd_loss


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 5, generator=generator)
    teacher = 3 * torch.randn(16, 5, generator=generator)
    labels = torch.randint(0, 5, (16,), generator=generator)
    return student, teacher, labels


def _totals(ax) -> list[float]:
    """The height of each stacked bar (parts with the same x added up), left to right."""
    heights: dict[float, float] = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2, 6)
        heights[x] = heights.get(x, 0.0) + patch.get_height()
    return [heights[x] for x in sorted(heights)]


def test_logit_losses_bars_are_the_weighted_losses(batch):
    student, teacher, labels = batch
    kd, dkd, dist, ls = (0.9, 4.0), (1.0, 8.0, 2.0), (2.0, 3.0, 4.0), (9.0, 2.0)
    fig = plots.logit_losses(
        student, teacher, labels, list("abcde"), 3, kd=kd, dkd=dkd, dist=dist, ls=ls
    )
    _, ax_dkd, ax_all = fig.axes
    # Middle: sample 3, KD's implicit weights (α·(1, 1 − p_t,g)) and DKD's (α, β), at DKD's T.
    tckd, nckd = dkd_terms(student, teacher, labels, dkd[2], reduction="none")
    kd_sample = kd[0] * kd_loss(student[3:4], teacher[3:4], dkd[2]).item()
    assert _totals(ax_dkd) == pytest.approx(
        [kd_sample, dkd[0] * tckd[3].item() + dkd[1] * nckd[3].item()], rel=1e-5
    )
    # Right: each method's weighted distillation term on the whole batch.
    inter, intra = dist_terms(student, teacher, dist[2])
    expected = [
        kd[0] * kd_loss(student, teacher, kd[1]).item(),
        dkd[0] * tckd.mean().item() + dkd[1] * nckd.mean().item(),
        dist[0] * inter.item() + dist[1] * intra.item(),
        ls[0] * logit_std_kd_loss(student, teacher, ls[1]).item(),
    ]
    assert _totals(ax_all) == pytest.approx(expected, rel=1e-5)


def test_logit_losses_controls_start_at_the_given_values_and_redraw_the_panel(batch):
    pytest.importorskip("ipywidgets")
    calls = []

    def draw(**values):
        calls.append(values)
        return plots.logit_losses(*batch, list("abcde"), values["index"])

    controls = live.logit_losses_controls(16, dkd_beta=2.0, ls_temperature=3.0)
    assert len(controls) == 11 and controls["index"].max == 15
    panel = live.panel(draw, **controls)
    assert "kdlab-panel" in panel._dom_classes
    assert [len(row.children) for row in panel.children[:-1]] == [4, 4, 3]  # four to a row
    assert len(calls) == 1
    assert calls[0]["dkd_beta"] == 2.0 and calls[0]["ls_temperature"] == 3.0
    assert calls[0]["dist_gamma"] == 2.0 and calls[0]["index"] == 0  # defaults elsewhere
    controls["dist_gamma"].value = 5.0
    controls["index"].value = 7
    assert calls[-1]["dist_gamma"] == 5.0 and calls[-1]["index"] == 7
    assert len(calls) == 3


def test_logit_losses_controls_reject_an_unknown_setting():
    with pytest.raises(ValueError, match="unknown setting 'dkd_gamma'"):
        live.logit_losses_controls(4, dkd_gamma=1.0)
