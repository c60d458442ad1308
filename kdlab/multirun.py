"""Figures of many runs: several settings, each trained with several seeds (the lab profile's
3 seeds × the settings a notebook compares), drawn so that they stay readable and say what n is.

- :func:`training_curves`: one colour per setting, the seeds as a mean line with a ± 1 sd band,
  networks as line styles or small multiples, the legend outside the axes (what
  :class:`kdlab.live.LivePlot` draws).
- :func:`accuracy_points`: mean ± sd per set-up as a point with an error bar, every run a dot,
  n and what it counts in the title, the axis break marked where the axis does not start at 0.

:mod:`kdlab.plots` re-exports both; the notebooks call them from there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .metrics import summarize

__all__ = ["accuracy_points", "accuracy_bars", "training_curves", "palette", "PANEL_TITLES"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _spread(values) -> tuple[list[float], str]:
    """The values of one set-up and what n counts: a flat sequence has one value per seed; a
    ``{seed: value or [value per network]}`` mapping has seeds × networks
    (``"6 (3 seeds × 2 networks)"``)."""
    if not isinstance(values, Mapping):
        flat = [float(v) for v in values]
        return flat, _plural(len(flat), "seed")
    per_seed = [list(v) if isinstance(v, Sequence) else [v] for v in values.values()]
    flat = [float(v) for vs in per_seed for v in vs]
    widths = sorted({len(vs) for vs in per_seed})
    seeds = _plural(len(per_seed), "seed")
    if widths == [1]:
        return flat, seeds
    nets = f"{widths[0]}" if len(widths) == 1 else f"{widths[0]}–{widths[-1]}"
    return flat, f"{len(flat)} ({seeds} × {nets} networks)"


def _mark_break(ax) -> None:
    """The // of a broken axis at the left end of the x axis (the axis does not start at zero):
    one marker, so its size is in points whatever the size of the axes."""
    from matplotlib.path import Path as Shape

    moves = [Shape.MOVETO, Shape.LINETO] * 2
    slashes = Shape([(-1.6, -1.0), (-0.4, 1.0), (0.4, -1.0), (1.6, 1.0)], moves)
    ax.plot(
        [0], [0], transform=ax.transAxes, marker=slashes, markersize=12, color="k", ls="none",
        clip_on=False, zorder=5, gid="axis-break",
    )  # fmt: skip


def accuracy_points(
    results: Mapping[str, Any],
    title: str = "test accuracy (%)",
    published: Mapping[str, float] | None = None,
    quantity: str = "test accuracy (%)",
) -> Figure:
    """Mean ± sample sd of each set-up as a point with an error bar, every run as a dot: one row
    per set-up, so that many set-ups with long names stay readable. Set-ups named
    ``"group: member"`` (a grid's cell and one of its networks) share their group's colour.

    ``results[setup]``: one value per seed (a sequence), or ``{seed: value}``, or ``{seed:
    [value per network]}`` when every network of a cohort counts (n = seeds × networks, and the
    figure says so). ``published``: the papers' numbers for some set-ups, a red ✕.
    ``quantity`` names the axis (e.g. ``"test mAP (%)"`` for retrieval).

    The accuracy axis starts where the data do, not at zero, so that differences of a point are
    visible; the break is marked (//) and written under the axis, since a bar from that start
    would exaggerate them.
    """
    names = list(results)
    spread = {n: _spread(results[n]) for n in names}
    counts = {what for _, what in spread.values()}
    # One colour per set-up; set-ups named "group: member" share their group's colour.
    groups = list(dict.fromkeys(n.partition(": ")[0] for n in names))
    by_group = dict(zip(groups, palette(len(groups))))
    colours = {n: by_group[n.partition(": ")[0]] for n in names}
    longest = max(len(n) for n in names)
    fig = Figure(figsize=(5.0 + 0.065 * longest, 0.42 * len(names) + 1.5), layout="constrained")
    ax = fig.subplots()
    every = []
    for row, name in enumerate(names):
        values, what = spread[name]
        stats = summarize(values)
        offsets = [((i % 5) - 2) * 0.06 for i in range(len(values))]
        ax.scatter(values, [row + o for o in offsets], s=10, color="0.45", zorder=2)
        ax.errorbar(
            stats["mean"], row, xerr=stats["std"], fmt="o", color=colours[name], ms=7,
            capsize=4, lw=1.6, zorder=3, label=name,
        )  # fmt: skip
        every += values
        if published and name in published:
            ax.scatter(published[name], row, marker="x", color="red", s=60, zorder=4)
            every.append(published[name])
    labels = [name if len(counts) == 1 else f"{name}\nn = {spread[name][1]}" for name in names]
    ax.set_yticks(range(len(names)), labels, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)
    low, high = min(every), max(every)
    pad = max(0.5, 0.08 * (high - low))
    end = min(100.0, high + pad) if high < 100 else high + pad
    start = max(0.0, math.floor(low - pad))
    start = 0.0 if start < end - start else start  # cut only an axis mostly empty below the data
    ax.set_xlim(start, end)
    axis = quantity
    if start > 0:
        _mark_break(ax)
        axis += f"; the axis starts at {start:g}, not 0 (//)"
    ax.set_xlabel(axis, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    if published and any(n in published for n in names):
        cross = ax.scatter([], [], marker="x", color="red", label="published (not measured here)")
        ax.legend(
            handles=[cross], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False
        )
    one = "one dot per network of one seed" if "networks" in "".join(counts) else "one dot per seed"
    n_text = f"n = {counts.pop()}" if len(counts) == 1 else "n under each name"
    fig.suptitle(f"{title}\nmean ± sd (error bar), {one}; {n_text}", fontsize=10)
    return fig


# Before the figure drew points, it drew bars; the old name stays for code that uses it.
accuracy_bars = accuracy_points


# --------------------------------------------------------------------------- many runs at once
#
# The notebooks train three seeds × several settings; a figure with one line per run (54 of them
# for notebook 03's ladder) is unreadable. These figures aggregate: one colour per setting, the
# seeds as a mean line with a ± 1 sd band, the networks as line styles or as small multiples,
# and the legend outside the axes.

PANEL_TITLES = {
    "acc": "test accuracy (%)",
    "map": "test mAP (%)",
    "agree": "peer agreement (%)",
    "js": "mean JS (nats)",
    "disc_acc": "discriminator accuracy (train)",
    "map50": "test mAP@0.5 (%)",
}
_STYLES = ["-", ":", "-.", (0, (5, 1.5)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (6, 2, 1, 2))]
_SLOT = re.compile(r"(?:net|peer|student)(\d*)")


def palette(n: int) -> list:
    """``n`` distinct colours: tab10, then tab20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def _slot(name: str) -> str:
    """Where a network's curve goes, so that the same position is compared across methods:
    ``net1``, ``peer1``, ``student1`` and a lone ``student`` are all the first trained network
    (``#1``); pairs follow their members (``peer1-peer2`` → ``#1-#2``); the rest keep their name."""

    def one(part: str) -> str:
        match = _SLOT.fullmatch(part)
        return f"#{match.group(1) or 1}" if match else part

    return "-".join(one(part) for part in name.split("-"))


def _as_runs(runs) -> dict[str, dict[Any, list[Mapping]]]:
    """``{setting: {seed: rows}}`` from that mapping or from a long table (pandas) with the
    columns ``label``, ``seed``, ``epoch`` and one column per metric (``load_results``' curves)."""
    if hasattr(runs, "groupby"):
        return {
            label: {
                seed: [{k: v for k, v in row.items() if v == v} for row in rows.to_dict("records")]
                for seed, rows in frame.groupby("seed", sort=False)
            }
            for label, frame in runs.groupby("label", sort=False)
        }
    return {setting: dict(seeds) for setting, seeds in runs.items()}


def _collect(runs, metrics, networks):
    """Every curve, ``{(metric, position): {setting: [points of one seed, …]}}``, the network
    names behind each position (``{position: "net1 / peer1"}``) and each curve's label
    (``{(setting, position): "dml/peer1"}``)."""
    curves: dict[tuple[str, str], dict[str, list]] = {}
    names: dict[str, list[str]] = {}
    labels: dict[tuple[str, str], str] = {}
    for setting, seeds in runs.items():
        for rows in seeds.values():
            for key in dict.fromkeys(k for row in rows for k in row):
                metric, _, name = key.partition("/")
                if metric not in metrics or not name:
                    continue
                # per-network curves (not the pairs' agree/js/overlap, named a-b) follow networks
                per_network = "-" not in name
                if per_network and networks is not None and name not in networks:
                    continue
                points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    position = _slot(name)
                    curves.setdefault((metric, position), {}).setdefault(setting, [])
                    curves[(metric, position)][setting].append(points)
                    if name not in names.setdefault(position, []):
                        names[position].append(name)
                    labels.setdefault((setting, position), f"{setting}/{name}")
    return curves, {position: " / ".join(n) for position, n in names.items()}, labels


def _mean_band(per_seed: list[list[tuple[int, float]]]):
    """Epochs, the mean over the seeds that reached each epoch, and the sample sd (0 for one)."""
    by_epoch: dict[int, list[float]] = {}
    for points in per_seed:
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(float(value))
    epochs = sorted(by_epoch)
    stats = [summarize(by_epoch[e]) for e in epochs]
    return epochs, [s["mean"] for s in stats], [s["std"] for s in stats]


def _seed_counts(runs) -> str:
    counts = sorted({sum(1 for rows in seeds.values() if rows) for seeds in runs.values()} - {0})
    if not counts:
        return ""
    if counts[-1] == 1:
        return "one seed per line"
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"line: mean over n = {n} seeds, band: ± 1 sd"


def _by_setting(settings, split) -> bool:
    """Colour by setting (else by network position): with several settings, or with one panel
    per network, where the panels already tell the networks apart."""
    return len(settings) > 1 or split


def _encodings(settings, positions, split):
    """Colours and line styles: with several settings (or small multiples), a colour per setting
    and a style per network position (the ensemble dashed); otherwise a colour per position."""
    plain = [p for p in positions if p != "ensemble"]
    if _by_setting(settings, split):
        colours = dict(zip(settings, palette(len(settings))))
        styles = {} if split else {p: _STYLES[i % len(_STYLES)] for i, p in enumerate(plain)}
    else:
        colours = dict(zip(positions, palette(len(positions))))
        styles = {}
    if not split and "ensemble" in positions:
        styles["ensemble"] = "--"
    return colours, styles


def _legend(settings, positions, shown, colours, styles, split):
    from matplotlib.lines import Line2D

    if not _by_setting(settings, split):
        return [
            Line2D([], [], color=colours[p], ls=styles.get(p, "-"), lw=2, label=shown[p])
            for p in positions
        ]
    handles = [Line2D([], [], color=colours[s], lw=2, label=s) for s in settings]
    if len(styles) > 1:
        handles.append(Line2D([], [], color="none", label="network (line style):"))
        handles += [
            Line2D([], [], color="0.3", ls=ls, lw=1.5, label=shown[p]) for p, ls in styles.items()
        ]
    return handles


def _draw_curves(ax, per_setting, colour_of, style, label_of) -> None:
    for setting, per_seed in per_setting.items():
        epochs, means, sds = _mean_band(per_seed)
        colour = colour_of(setting)
        ax.plot(
            epochs, means, ls=style, color=colour, lw=1.6, markersize=3,
            marker="o" if len(epochs) <= 10 else None, label=label_of(setting),
        )  # fmt: skip
        if any(sds):
            low = [m - s for m, s in zip(means, sds)]
            high = [m + s for m, s in zip(means, sds)]
            ax.fill_between(epochs, low, high, color=colour, alpha=0.18, lw=0)


def training_curves(
    runs,
    metrics: Sequence[str] = ("acc",),
    *,
    networks: Sequence[str] | None = None,
    split: bool = False,
    title: str = "",
) -> Figure:
    """Curves of several settings, each trained with several seeds, aggregated over the seeds.

    ``runs``: ``{setting: {seed: history}}`` (a history is a list of per-epoch records, e.g. a
    :class:`kdlab.train.History`), or a long table with ``label``, ``seed`` and ``epoch``
    columns (the curves of :func:`kdlab.reproduce.load_results`). ``metrics``: the panels, any
    of ``acc``, ``map``, ``map50``, ``agree``, ``js``, ``disc_acc`` (those with no curve are
    left out); ``networks`` limits the per-network curves (the task's headline metric, ``acc``
    or ``map``, and any other such as ``map50``) to those network names; the pairs'
    curves (``agree/peer1-peer2``) are always drawn.

    Each setting has one colour; its seeds are drawn as the mean line with a ± 1 sample sd band
    (over the seeds that reached each epoch). Networks at the same position are drawn alike
    across methods (``net1``, ``peer1``, ``student1``, ``student``: the first trained network):
    with a line style each, or with ``split=True`` in a panel each (small multiples). With a
    single setting the networks get the colours instead. The legend sits outside the axes, and
    the figure grows with it so that every panel keeps its size.
    """
    runs = _as_runs(runs)
    curves, shown, labels = _collect(runs, metrics, networks)
    settings = [s for s in runs if any(s in per for per in curves.values())] or list(runs)
    slots = sorted(curves, key=lambda k: (list(metrics).index(k[0]), k[1] == "ensemble", k[1]))
    positions = list(dict.fromkeys(position for _, position in slots))
    if split:
        panels = [[slot] for slot in slots]
    else:
        panels = [p for p in ([s for s in slots if s[0] == m] for m in metrics) if p]
    colours, styles = _encodings(settings, positions, split)
    handles = _legend(settings, positions, shown, colours, styles, split)

    columns = max(1, min(len(panels), 3))
    rows = -(-len(panels) // columns) if panels else 1
    longest = max((len(h.get_label()) for h in handles), default=0)
    legend_width = 0.062 * longest + 0.7 if handles else 0.0
    heading = "\n".join(t for t in (title, _seed_counts(runs)) if t)
    # Wide enough for the heading (left-aligned above the panels) beside the legend.
    text_width = 0.075 * max((len(line) for line in heading.split("\n")), default=0)
    width = max(3.7 * columns + legend_width, text_width + legend_width + 0.4)
    height = max(2.9 * rows + 0.6, 0.19 * len(handles) + 0.8)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels or [[("acc", "")]]):
        for metric, position in panel:
            by_setting = _by_setting(settings, split)
            colour_of = (lambda s: colours[s]) if by_setting else (lambda s, p=position: colours[p])
            _draw_curves(
                ax, curves.get((metric, position), {}), colour_of, styles.get(position, "-"),
                lambda s, p=position: labels[(s, p)],
            )  # fmt: skip
        metric, position = panel[0]
        name = PANEL_TITLES.get(metric, metric)
        ax.set_title(f"{name}: {shown[position]}" if split else name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    if heading:
        fig.suptitle(heading, fontsize=10, x=0.02, ha="left")
    return fig
