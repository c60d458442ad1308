"""Every panel :mod:`kdlab.live` exposes, built and driven without a browser.

A panel factory is any public function of ``kdlab.live`` whose name ends in ``panel``
(discovered, so a new one is checked too). Each is built with a stub for its function (the
``draw`` or ``train`` the notebook passes) and three controls (an int slider, a float slider, a
dropdown); then:

- the panel is a widget with the class ``kdlab-panel`` and its ``kdlab-figure`` is drawn;
- moving each control redraws that figure (its image changes);
- a ``kdlab-train`` button, clicked, calls the function with every control's value and a live
  plot, which draws into the ``kdlab-live`` output.

tests/test_widgets.py runs it under the installed ipywidgets and, in a subprocess, under Colab's
ipywidgets 7.7.1 (``python tests/widget_check.py`` prints the results as JSON).
"""

from __future__ import annotations

import inspect
import json
import sys


def panel_factories() -> dict:
    from kdlab import live

    return {
        name: obj
        for name, obj in vars(live).items()
        if name.endswith("panel")
        and not name.startswith("_")
        and inspect.isfunction(obj)
        and obj.__module__ == live.__name__
    }


def _descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _descendants(child)


def _png(output) -> str | None:
    images = [o.get("data", {}).get("image/png") for o in output.outputs]
    return images[-1] if images else None


def _controls():
    from kdlab import live

    return {
        "width": live.slider(2, 1, 5, description="width"),
        "scale": live.slider(0.5, 0.0, 1.0, description="scale"),
        "kind": live.dropdown(["one", "two"], description="kind"),
    }


def _build(name, factory, calls):
    """Call ``factory`` with a stub for its required positional parameter and the controls."""
    from matplotlib.figure import Figure

    def stub(**values):
        calls.append(values)
        if values.get("live") is not None:
            values["live"].update()
        fig = Figure(figsize=(2, 1))
        fig.subplots().set_title(", ".join(f"{k}={v}" for k, v in values.items() if k != "live"))
        return fig

    controls = _controls()
    args, kwargs = [], {}
    for param in inspect.signature(factory).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            kwargs.update(controls)
        elif param.default is param.empty and param.kind is not param.VAR_POSITIONAL:
            if args:
                raise TypeError(f"live.{name} needs more than a function and controls: teach "
                                "tests/widget_check.py how to build it")  # fmt: skip
            args.append(stub)
    return factory(*args, **kwargs), controls


def check(name, factory) -> list[str]:
    """The problems of one panel (empty: it builds, and every control and button works)."""
    calls: list[dict] = []
    box, controls = _build(name, factory, calls)
    widgets = list(_descendants(box))
    classes = {c for w in widgets for c in getattr(w, "_dom_classes", ())}
    problems = [] if "kdlab-panel" in box._dom_classes else ["no kdlab-panel class"]
    figures = [w for w in widgets if "kdlab-figure" in getattr(w, "_dom_classes", ())]
    if len(figures) != 1 or _png(figures[0]) is None:
        return [*problems, "its kdlab-figure is missing or not drawn"]
    new_values = {"width": 4, "scale": 0.9, "kind": "two"}
    for key, control in controls.items():
        before = _png(figures[0])
        control.value = new_values[key]
        if _png(figures[0]) == before:
            problems.append(f"moving {key!r} did not redraw the figure")
    for button in [w for w in widgets if "kdlab-train" in getattr(w, "_dom_classes", ())]:
        calls.clear()
        button.click()
        if not calls or {k: v for k, v in calls[-1].items() if k != "live"} != new_values:
            problems.append(f"the train button called {calls} instead of the controls' values")
        live_out = [w for w in widgets if "kdlab-live" in getattr(w, "_dom_classes", ())]
        if not live_out or _png(live_out[0]) is None:
            problems.append("the train button's live plot was not drawn")
    if "kdlab-train" not in classes and name == "train_panel":
        problems.append("train_panel has no kdlab-train button")
    return problems


def main() -> int:
    import ipywidgets

    results = {name: check(name, factory) for name, factory in panel_factories().items()}
    print(json.dumps({"ipywidgets": ipywidgets.__version__, "panels": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
