"""Live plots and widgets for the notebooks.

Two rules make the notebooks give the same result headless (papermill, nbval) as clicked:

1. Every widget drives a plain function that returns a matplotlib Figure (or trains and
   returns a result); the notebook also calls that function directly with its parameters.
2. Drawing never depends on a screen: figures are rendered to PNG and displayed as images, in
   place (an ``ipywidgets.Output`` for panels, a display handle otherwise).

Panels are ``ipywidgets.VBox`` objects with the CSS class ``kdlab-panel``; the figure a panel
drives sits in an Output with class ``kdlab-figure``, a train button has class ``kdlab-train``
and the live plot it updates has class ``kdlab-live`` (the browser tests look for these).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from typing import Any

from matplotlib.figure import Figure

__all__ = [
    "show",
    "LivePlot",
    "panel",
    "train_panel",
    "settings_figure",
    "figure_png",
    "slider",
    "dropdown",
    "table",
    "logit_losses_controls",
]


def figure_png(fig: Figure, dpi: int = 96) -> bytes:
    """Render a Figure to PNG bytes (no pyplot, no screen)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def show(fig: Figure, handle=None):
    """Display ``fig`` as a PNG image; with ``handle`` (from a previous call), replace it in place.

    Returns the display handle.
    """
    from IPython.display import Image, display

    image = Image(data=figure_png(fig), format="png")
    if handle is None:
        return display(image, display_id=True)
    handle.update(image)
    return handle


def _draw_into(output, fig: Figure) -> None:
    """Replace what an ``ipywidgets.Output`` shows with ``fig``, as one widget-state update.

    Setting ``output.outputs`` directly (rather than ``with output: clear_output(); display()``)
    avoids routing the image through the kernel's output capture, which headless executors
    (nbclient, hence papermill and nbval) handle with a race that can leave them waiting forever.
    """
    import base64

    png = base64.b64encode(figure_png(fig)).decode("ascii")
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {"image/png": png, "text/plain": "<Figure>"},
            "metadata": {},
        },
    )


class LivePlot:
    """Test accuracy (and peer agreement / JS, when there are pairs) redrawn as training goes.

    Use one LivePlot for several settings, each trained with several seeds, so they share
    axes::

        live = LivePlot()
        for seed in (0, 1, 2):
            kdlab.run("independent", ["resnet20"], data, callbacks=[live.track("teacher", seed)])
            kdlab.run("kd", ["cnn_tiny"], data, teacher=…, callbacks=[live.track("kd", seed)])

    ``track(setting, seed)`` returns the callback for :func:`kdlab.fit`; :meth:`add` puts a
    finished run's history beside them. The figure is :func:`kdlab.plots.training_curves`: one
    colour per setting, its seeds as a mean line with a ± 1 sd band, the networks as line
    styles (``split=True``: one panel per network), the legend outside the axes. With
    ``output`` (an ``ipywidgets.Output``) it draws there, otherwise into the notebook cell's
    output, replacing the previous drawing in place. ``metrics`` chooses the panels: any of
    ``"acc"``, ``"agree"``, ``"js"``, ``"disc_acc"``; ``networks`` (e.g. ``("student",)``)
    limits the accuracy curves to those networks (default: every one).
    ``"acc"`` stands for the tracked history's headline metric (``history.metric``: ``acc``
    for classification, ``map`` for retrieval and detection), so the same plot follows any
    task; ``metrics`` may also name any other per-network metric (``map50``), and
    ``networks`` limits those curves too.

    Rendering a figure costs about half a second on a laptop CPU, more than a small network's
    epoch on digits, so a tracked run skips redraws to keep drawing under ``max_share`` of the
    wall time (after a redraw that took d seconds, the next waits d·(1 − share)/share). The
    last epoch of every :func:`kdlab.fit` call is always drawn; ``max_share=1`` draws every
    epoch. :meth:`update` always draws.
    """

    def __init__(
        self,
        output=None,
        metrics: tuple[str, ...] = ("acc", "agree", "js"),
        title="",
        max_share: float = 0.2,
        networks: tuple[str, ...] | None = None,
        split: bool = False,
    ):
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self.output = output
        self.metrics = metrics
        self.title = title
        self.max_share = max_share
        self.networks = networks
        self.split = split
        self.runs: dict[str, dict[Any, list[dict]]] = {}  # setting → seed → per-epoch records
        self.metric = "acc"  # the headline metric of the last tracked history
        self.draws = 0  # how many times the plot was drawn
        self._handle = None
        self._next_draw = 0.0  # time.perf_counter() before which a tracked epoch is not drawn

    def track(self, setting: str, seed: Any = 0) -> Callable[[dict, Any], None]:
        """The callback that feeds one run (``setting``, ``seed``) into the plot."""
        self.runs.setdefault(setting, {})[seed] = []

        def callback(record: dict, history) -> None:
            self.runs[setting][seed] = list(history)
            self.metric = getattr(history, "metric", self.metric)
            last = getattr(history, "last_epoch", None)
            if last is None or record["epoch"] >= last or time.perf_counter() >= self._next_draw:
                self.update()

        return callback

    def add(self, setting: str, seed: Any, history) -> None:
        """Put a finished run's history in the plot (drawn at the next update)."""
        self.runs.setdefault(setting, {})[seed] = list(history)

    def figure(self) -> Figure:
        """The current plot as a Figure (also usable after training, headless)."""
        from .multirun import training_curves

        metrics = [self.metric if m == "acc" else m for m in self.metrics]
        return training_curves(
            self.runs, metrics, networks=self.networks, split=self.split, title=self.title
        )

    def update(self) -> None:
        """Draw the current plot now."""
        started = time.perf_counter()
        fig = self.figure()
        if self.output is not None:
            _draw_into(self.output, fig)
        else:
            self._handle = show(fig, self._handle)
        self.draws += 1
        finished = time.perf_counter()
        share = self.max_share
        self._next_draw = finished + (finished - started) * (1 - share) / share


def slider(value: float, low: float, high: float, step: float | None = None, description=""):
    """A labelled FloatSlider (IntSlider when every bound is an int)."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (value, low, high)):
        return widgets.IntSlider(
            value=value,
            min=low,
            max=high,
            step=int(step or 1),
            description=description,
            continuous_update=False,
            style=style,
        )
    return widgets.FloatSlider(
        value=value,
        min=low,
        max=high,
        step=step or (high - low) / 100,
        description=description,
        continuous_update=False,
        style=style,
    )


def dropdown(options, value=None, description=""):
    import ipywidgets as widgets

    options = list(options)
    return widgets.Dropdown(
        options=options,
        value=options[0] if value is None else value,
        description=description,
        style={"description_width": "initial"},
    )


def panel(draw: Callable[..., Figure], **controls):
    """A widget panel: every control drives ``draw(**values)``, whose Figure is redrawn.

    ``controls`` maps ``draw``'s keyword names to widgets (see :func:`slider`,
    :func:`dropdown`), laid out four to a row. The notebook calls ``draw`` directly with the
    same names for the headless path.
    """
    import ipywidgets as widgets

    figure = widgets.Output().add_class("kdlab-figure")

    def redraw(_change=None) -> None:
        _draw_into(figure, draw(**{name: w.value for name, w in controls.items()}))

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    items = list(controls.values())
    rows = [widgets.HBox(items[i : i + 4]) for i in range(0, len(items), 4)]
    box = widgets.VBox([*rows, figure])
    box.layout.flex_flow = "column"
    return box.add_class("kdlab-panel")


def settings_figure(controls: Mapping[str, Any], formula: str | None = None) -> Figure:
    """The settings a train button will use: each slider's value as a bar from zero (its
    slider's range drawn behind it in grey, so a bar is as long as the value it stands for:
    K = 2 of 2…4 is half the axis, not an empty bar), the value written beside it, each
    dropdown's choice as text, and (``formula``) the loss with the values filled in."""
    numeric = {n: w for n, w in controls.items() if hasattr(w, "min") and hasattr(w, "max")}
    choices = {n: w for n, w in controls.items() if n not in numeric}
    height = 0.42 * max(len(numeric), 1) + (0.6 if formula else 0) + 0.35 * len(choices) + 0.4
    fig = Figure(figsize=(6.4, height), layout="constrained")
    ax = fig.subplots()
    labels = [w.description or n for n, w in numeric.items()]
    # Each row on its own scale, from zero to the slider's largest value (or from its smallest
    # to zero, for a range below zero), so that a bar's length is its value.
    scales = [max(abs(w.min), abs(w.max)) or 1 for w in numeric.values()]
    rows = range(len(labels))
    for i, (w, scale) in enumerate(zip(numeric.values(), scales)):
        ax.barh(i, (w.max - w.min) / scale, left=w.min / scale, color="0.92", height=0.8)
    ax.barh(
        rows, [w.value / s for w, s in zip(numeric.values(), scales)], color="C0", label="value"
    )
    for i, w in enumerate(numeric.values()):
        ax.text(1.02, i, f"{w.value:g}  (range {w.min:g}–{w.max:g})", va="center", fontsize=9)
    ax.axvline(0, color="0.3", lw=1)
    ax.set_yticks(list(rows), labels)
    low = min([w.min / s for w, s in zip(numeric.values(), scales)] + [0.0])
    ax.set_xlim(low, 1.55)
    ax.set_xticks([])
    ax.invert_yaxis()
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    text = "   ".join(f"{w.description or n}: {w.value}" for n, w in choices.items())
    if formula:
        values = {n: w.value for n, w in controls.items()}
        text = formula.format(**values) + ("\n" + text if text else "")
    ax.set_title(text or "settings", fontsize=9, loc="left")
    return fig


def train_panel(
    train: Callable[..., Any],
    *,
    description: str = "train",
    metrics: tuple[str, ...] = ("acc", "agree", "js"),
    formula: str | None = None,
    **controls,
):
    """A panel with controls and a train button: a click calls ``train(**values, live=plot)``.

    ``train`` is the notebook's plain function (also called directly, headless); it must
    hand ``live.track(label)`` callbacks to :func:`kdlab.run` so the plot updates in place
    as it trains. Every control redraws the panel's settings figure (:func:`settings_figure`,
    with ``formula`` — a ``str.format`` template over the control names — filled in), so the
    reader sees the loss that a click will train. A row holds at most four widgets.
    """
    import ipywidgets as widgets

    button = widgets.Button(description=description, button_style="primary", icon="play")
    button.add_class("kdlab-train")
    status = widgets.Label("")
    figure = widgets.Output().add_class("kdlab-figure")
    output = widgets.Output().add_class("kdlab-live")

    def redraw(_change=None) -> None:
        _draw_into(figure, settings_figure(controls, formula))

    def on_click(_button) -> None:
        button.disabled = True
        status.value = "training…"
        try:
            live = LivePlot(output, metrics=metrics)
            train(**{name: w.value for name, w in controls.items()}, live=live)
            status.value = "done"
        except Exception as error:  # show it in the panel instead of losing it in the log
            status.value = f"error: {error}"
            raise
        finally:
            button.disabled = False

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    button.on_click(on_click)
    items = list(controls.values())
    rows = [widgets.HBox(items[i : i + 4]) for i in range(0, len(items), 4)]
    box = widgets.VBox([*rows, figure, widgets.HBox([button, status]), output])
    return box.add_class("kdlab-panel")


def table(rows: list[Mapping[str, Any]], floatfmt: str = ".2f") -> str:
    """A markdown table from a list of dicts (the notebooks display it with ``Markdown``)."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- beyond Hinton


def logit_losses_controls(samples: int, **values) -> dict:
    """The sliders of notebook 07's panel, by the keyword names of its plain function: every
    weight and temperature of KD, DKD, DIST and KD with logit standardisation, and the test
    sample (``samples`` to choose from). ``values`` are the starting values (the notebook's
    parameters); the rest start at the methods' defaults. Hand them to :func:`panel`::

        live.panel(draw_logit_losses, **live.logit_losses_controls(len(labels), dkd_beta=2.0))
    """
    start = {
        "kd_alpha": 0.9, "kd_temperature": 4.0,
        "dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_temperature": 4.0,
        "dist_beta": 2.0, "dist_gamma": 2.0, "dist_temperature": 4.0,
        "ls_weight": 9.0, "ls_temperature": 2.0, "index": 0,
    }  # fmt: skip
    unknown = sorted(set(values) - set(start))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(start)}")
    start.update(values)
    ranges = {  # (low, high, step, label)
        "kd_alpha": (0.0, 1.0, 0.05, "KD α"),
        "kd_temperature": (0.5, 10.0, 0.5, "KD T"),
        "dkd_alpha": (0.0, 4.0, 0.25, "DKD α"),
        "dkd_beta": (0.0, 16.0, 0.5, "DKD β"),
        "dkd_temperature": (0.5, 10.0, 0.5, "DKD T"),
        "dist_beta": (0.0, 8.0, 0.25, "DIST β"),
        "dist_gamma": (0.0, 8.0, 0.25, "DIST γ"),
        "dist_temperature": (0.5, 10.0, 0.5, "DIST T"),
        "ls_weight": (0.0, 20.0, 0.5, "LS weight"),
        "ls_temperature": (0.5, 10.0, 0.5, "LS T"),
    }
    controls = {
        name: slider(float(start[name]), low, max(high, float(start[name])), step, label)
        for name, (low, high, step, label) in ranges.items()
    }
    controls["index"] = slider(int(start["index"]), 0, samples - 1, 1, "test sample")
    return controls
