"""Tests for kdlab.live.LivePlot: redraws throttled to a share of the wall time, last epoch drawn."""

from __future__ import annotations

import types

import pytest

import kdlab
from kdlab import live
from kdlab.train import History


class _Clock:
    """A fake time.perf_counter: a figure takes ``draw`` seconds to render."""

    def __init__(self, draw: float):
        self.now, self.draw = 0.0, draw

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = _Clock(draw=1.0)
    monkeypatch.setattr(live, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))

    def render(fig, dpi=96):
        clock.now += clock.draw
        return b"png"

    monkeypatch.setattr(live, "figure_png", render)
    return clock


def _epochs(plot: live.LivePlot, clock: _Clock, epochs: int, seconds: float, last=True):
    """Feed ``epochs`` records, ``seconds`` apart, to a tracked callback; the epochs drawn."""
    callback = plot.track("run")
    history = History()
    history.last_epoch = epochs if last else None
    drawn = []
    for epoch in range(1, epochs + 1):
        clock.now += seconds
        history.append({"epoch": epoch, "acc/net1": 10.0 * epoch})
        before = plot.draws
        callback(history[-1], history)
        if plot.draws > before:
            drawn.append(epoch)
    return drawn


def test_redraws_keep_to_their_share_and_the_last_epoch_is_drawn(clock):
    plot = live.LivePlot(output=types.SimpleNamespace(outputs=()), max_share=0.2)
    # A draw takes 1 s, so the next waits 4 s; epochs of 0.5 s: epoch 1 is drawn (ends at 1.5),
    # then the first epoch at or after 5.5 s (epoch 9), which waits until 10.5 s (epoch 17), and
    # the last epoch, 20, though its wait (until 15.5 s) is not over.
    assert _epochs(plot, clock, epochs=20, seconds=0.5) == [1, 9, 17, 20]
    assert plot.output.outputs[0]["data"]["image/png"]  # drawn into the Output


def test_every_epoch_is_drawn_with_max_share_one_or_outside_fit(clock):
    every = live.LivePlot(output=types.SimpleNamespace(outputs=()), max_share=1.0)
    assert _epochs(every, clock, epochs=5, seconds=0.1) == [1, 2, 3, 4, 5]
    # A history that does not say where it ends: every epoch could be the last one.
    unknown = live.LivePlot(output=types.SimpleNamespace(outputs=()))
    assert _epochs(unknown, clock, epochs=5, seconds=0.1, last=False) == [1, 2, 3, 4, 5]


def test_slow_epochs_are_all_drawn(clock):
    plot = live.LivePlot(output=types.SimpleNamespace(outputs=()), max_share=0.2)
    assert _epochs(plot, clock, epochs=4, seconds=5.0) == [1, 2, 3, 4]


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_bad_share(share):
    with pytest.raises(ValueError, match="max_share"):
        live.LivePlot(max_share=share)


def test_fit_marks_its_last_epoch_and_the_live_plot_shows_it(digits, fast_config):
    # A plot that may spend almost no time drawing still shows the final epoch of each fit.
    plot = live.LivePlot(output=types.SimpleNamespace(outputs=()), max_share=1e-6)
    config = kdlab.TrainConfig(**{**vars(fast_config), "epochs": 3})
    run = kdlab.run(
        "independent", ["cnn_tiny"], digits, config=config, progress=False,
        callbacks=[plot.track("a")],
    )  # fmt: skip
    assert run.history.last_epoch == 3
    assert plot.draws == 2  # epoch 1 (nothing drawn yet) and epoch 3 (the last)
    assert [row["epoch"] for row in plot.runs["a"][0]] == [1, 2, 3]  # setting "a", seed 0


def test_a_tracked_run_that_never_reported_does_not_break_the_figure():
    # A run resumed from a finished checkpoint calls no callback: its curve stays empty while
    # later runs draw (notebook 07 re-run over an out_dir holding its teachers).
    plot = live.LivePlot(metrics=("acc", "agree"))
    plot.track("resumed")
    plot.track("new")(
        {"epoch": 1, "acc/student": 50.0}, History([{"epoch": 1, "acc/student": 50.0}])
    )
    fig = plot.figure()
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1


def test_networks_limits_the_accuracy_curves():
    record = {"epoch": 1, "acc/teacher": 90.0, "acc/student": 50.0}
    for networks, drawn in ((None, [[50.0], [90.0]]), (("student",), [[50.0]])):
        plot = live.LivePlot(metrics=("acc",), networks=networks)
        plot.track("kd")(record, History([record]))
        lines = plot.figure().axes[0].lines
        assert sorted(list(line.get_ydata()) for line in lines) == drawn
