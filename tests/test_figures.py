"""The figures the notebooks draw, at the lab profile's numbers of runs (3 seeds × the settings
each notebook trains), from synthetic histories: readable, honest about n, and warning-free."""

from __future__ import annotations

import itertools
import math
import random
import warnings

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba

from kdlab import live, plots
from kdlab.profiles import PROFILES
from kdlab.train import History

SEEDS = PROFILES["lab"].seeds  # three seeds
EPOCHS = 30  # the lab profile's digits schedule
PAIR = ["peer1", "peer2"]


def _history(networks: list[str], seed: int, offset: float, disc: int = 0) -> History:
    """A plausible training history: accuracy, agreement and JS for every pair, discriminators."""
    rng = random.Random(f"{networks}-{seed}-{offset}")
    rows = History()
    shown = networks + ["ensemble"] if len(networks) > 1 else networks
    for epoch in range(1, EPOCHS + 1):
        row = {"epoch": epoch}
        for i, name in enumerate(shown):
            row[f"acc/{name}"] = 80 + offset + i - 50 * 0.7**epoch + rng.gauss(0, 1)
        for a, b in itertools.combinations(networks, 2):
            row[f"agree/{a}-{b}"] = 95 - 10 * 0.8**epoch + rng.gauss(0, 1)
            row[f"js/{a}-{b}"] = 0.3 * 0.9**epoch + abs(rng.gauss(0, 0.01))
        for d in range(1, disc + 1):
            row[f"disc_acc/disc{d}"] = 0.5 + 0.2 * rng.random()
        rows.append(row)
    return rows


def _runs(settings: dict[str, list[str]], disc: int = 0) -> dict:
    return {
        setting: {seed: _history(nets, seed, 2 * i, disc) for seed in SEEDS}
        for i, (setting, nets) in enumerate(settings.items())
    }


LADDER = ["CE + KL (DML)", "CE + JS", "CE + JS + adv (ADML)", "CE + L1 + adv", "CE + L2 + adv"]
ABLATION = ["none (ADML)", "random, K=16", "K=2", "K=4", "K=8", "K=16", "K=32"]
# Each multi-run figure of the notebooks: (its runs, training_curves' keywords).
FIGURES = {
    "01 teacher and student alone": (
        _runs({"teacher": ["net1"], "student alone": ["net1"]}),
        dict(metrics=("acc",)),
    ),
    "01 distilled against alone": (
        _runs({"student alone": ["net1"], "distilled": ["student", "teacher"]}),
        dict(metrics=("acc",), networks=("net1", "student")),
    ),
    "02 independent and DML": (
        _runs({"independent": ["net1", "net2"], "DML": PAIR}),
        dict(metrics=("acc", "agree", "js")),
    ),
    "02 K = 3 peers": (
        _runs({"DML, K = 3": ["peer1", "peer2", "peer3"]}),
        dict(metrics=("acc", "agree", "js")),
    ),
    "02 sync and alternating": (
        _runs({"sync": PAIR, "alternating": PAIR}),
        dict(metrics=("acc", "agree", "js")),
    ),
    "03 ADML": (_runs({"ADML": PAIR}, disc=2), dict(metrics=("acc", "disc_acc", "js"))),
    "03 the loss ladder": (
        _runs({"CE (independent)": ["net1", "net2"], **{s: PAIR for s in LADDER}}),
        dict(metrics=("acc",), split=True),
    ),
    "04 the K ablation": (
        _runs({s: PAIR for s in ABLATION}),
        dict(metrics=("acc",), split=True),
    ),
    "05 one set-up": (
        _runs({"KD + ML": ["teacher", "student1", "student2"]}),
        dict(metrics=("acc", "agree")),
    ),
    "07 four distilled students": (
        _runs({m: ["student", "teacher"] for m in ("kd", "dkd", "dist", "ls")}),
        dict(metrics=("acc",), networks=("student",)),
    ),
}


def _draw(make):
    """Build and render a figure with every warning an error (a constrained-layout warning
    means the layout gave up)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = make()
        FigureCanvasAgg(fig).draw()  # laid out as the notebooks' PNGs are, and measurable
    return fig


def _style(line) -> tuple:
    # get_linestyle() reports any dash pattern as "--": compare the pattern itself.
    return (to_rgba(line.get_color()), line.get_linestyle(), line._unscaled_dash_pattern)


@pytest.mark.parametrize("name", FIGURES)
def test_multi_run_figures_aggregate_and_stay_readable(name):
    runs, keywords = FIGURES[name]
    fig = _draw(lambda: plots.training_curves(runs, title=name, **keywords))
    width, height = fig.get_size_inches()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    networks = keywords.get("networks")
    for ax in axes:
        box = ax.get_position()
        assert box.width * width >= 2.5 and box.height * height >= 1.8, (
            f"{name}: an axes of {box.width * width:.1f} × {box.height * height:.1f} in"
        )
        styles = [_style(line) for line in ax.lines]
        assert len(set(styles)) == len(styles), f"{name}: two series share colour and style"
    # One line per setting and network position, whatever the number of seeds.
    lines = sum(len(ax.lines) for ax in axes)
    expected = 0
    for metric in keywords.get("metrics", ("acc", "agree", "js")):
        for seeds in runs.values():
            keys = {k for k in seeds[SEEDS[0]][-1] if k.startswith(f"{metric}/")}
            if metric == "acc" and networks:
                keys = {k for k in keys if k[4:] in networks}
            expected += len(keys)
    assert lines == expected, f"{name}: {lines} lines for {expected} (setting, network) curves"
    # The seeds are a band, and the figure says over how many.
    assert any(ax.collections for ax in axes)
    assert f"n = {len(SEEDS)} seeds" in fig._suptitle.get_text()
    # A legend that fits: outside every axes, one entry per setting (and per line style).
    (legend,) = fig.legends
    renderer = fig.canvas.get_renderer()
    outside = legend.get_window_extent(renderer)
    assert not any(outside.overlaps(ax.get_window_extent(renderer)) for ax in axes)
    assert not outside.overlaps(fig._suptitle.get_window_extent(renderer))
    labels = [t.get_text() for t in legend.get_texts()]
    if len(runs) > 1:
        assert [label for label in labels if label in runs] == list(runs)
    assert len(labels) <= len(runs) + 8


def test_the_same_network_position_is_one_curve_across_methods():
    # independent's net1 and DML's peer1 are the first network of each: one style, one legend row.
    runs, keywords = FIGURES["02 independent and DML"]
    fig = _draw(lambda: plots.training_curves(runs, **keywords))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "net1 / peer1" in labels and "net1-net2 / peer1-peer2" in labels
    assert "ensemble" in labels and len(labels) == 2 + 1 + 4


def test_mean_and_band_are_the_seeds_mean_and_sample_sd():
    rows = {s: History([{"epoch": 1, "acc/net1": v}]) for s, v in zip(SEEDS, (80.0, 84.0, 88.0))}
    fig = _draw(lambda: plots.training_curves({"a": rows, "b": rows}))
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [84.0]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert min(band) == pytest.approx(80.0) and max(band) == pytest.approx(88.0)  # sd = 4


def test_live_plot_tracks_settings_and_seeds():
    plot = live.LivePlot(metrics=("acc",))
    for seed in SEEDS:
        record = {"epoch": 1, "acc/net1": 50.0 + seed}
        plot.track("teacher", seed)(record, History([record]))
    plot.add("alone", 0, History([{"epoch": 1, "acc/net1": 40.0}]))
    assert list(plot.runs) == ["teacher", "alone"] and list(plot.runs["teacher"]) == list(SEEDS)
    ax = plot.figure().axes[0]
    assert [list(line.get_ydata()) for line in ax.lines] == [[51.0], [40.0]]


# --------------------------------------------------------------------------- accuracy points


def test_accuracy_points_say_what_n_counts():
    nested = {
        "independent": {s: [90.0 + s, 91.0] for s in SEEDS},
        "DML": {s: [92.0, 90.0] for s in SEEDS},
    }
    fig = _draw(lambda: plots.accuracy_points(nested))
    title = fig._suptitle.get_text()
    assert "n = 6 (3 seeds × 2 networks)" in title and "seed(s)" not in title
    flat = _draw(lambda: plots.accuracy_points({"a": [90.0, 91.0, 92.0], "b": [93.0, 94.0, 95.0]}))
    assert "n = 3 seeds" in flat._suptitle.get_text()
    mixed = _draw(
        lambda: plots.accuracy_points({"K=2": {0: [1.0, 2.0]}, "K=3": {0: [1.0, 2.0, 3.0]}})
    )
    ticks = [t.get_text() for t in mixed.axes[0].get_yticklabels()]
    assert ticks == ["K=2\nn = 2 (1 seed × 2 networks)", "K=3\nn = 3 (1 seed × 3 networks)"]


def test_accuracy_points_mark_an_axis_that_does_not_start_at_zero():
    fig = _draw(lambda: plots.accuracy_points({"a": [90.0, 91.0, 92.0], "b": [93.0, 94.0]}))
    ax = fig.axes[0]
    start = ax.get_xlim()[0]
    assert start > 0
    assert [line for line in ax.lines if line.get_gid() == "axis-break"], "no // on the axis"
    assert f"starts at {start:g}, not 0" in ax.get_xlabel()
    low = _draw(lambda: plots.accuracy_points({"a": [2.0, 5.0, 9.0]}))
    assert low.axes[0].get_xlim()[0] == 0
    assert not [line for line in low.axes[0].lines if line.get_gid() == "axis-break"]


def test_accuracy_points_draw_the_mean_and_the_sample_sd():
    fig = _draw(lambda: plots.accuracy_points({"a": [90.0, 92.0, 97.0]}))
    (container,) = fig.axes[0].containers
    point, _, (bars,) = container
    assert list(point.get_xdata()) == [93.0]
    (segment,) = bars.get_segments()
    sd = math.sqrt(((90 - 93) ** 2 + (92 - 93) ** 2 + (97 - 93) ** 2) / 2)
    assert segment[0][0] == pytest.approx(93 - sd) and segment[1][0] == pytest.approx(93 + sd)


# --------------------------------------------------------------------------- settings


def test_settings_bars_are_as_long_as_their_values():
    controls = {
        "lam": live.slider(0.0, 0.0, 5.0, 0.1, description="λ"),
        "temperature": live.slider(1.0, 0.5, 10.0, 0.5, description="T"),
        "peers": live.slider(2, 2, 4, description="peers K"),
    }
    fig = _draw(lambda: live.settings_figure(controls))
    (values,) = [c for c in fig.axes[0].containers if c.get_label() == "value"]
    widths = [bar.get_width() for bar in values]
    # Each row from zero on its slider's scale: λ = 0 is empty, T = 1 of 10, K = 2 of 4 is half.
    assert widths == pytest.approx([0.0, 0.1, 0.5])
    assert all(bar.get_x() == 0 for bar in values)
