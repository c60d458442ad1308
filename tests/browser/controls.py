"""Every control a notebook shows, exercised in the browser.

Controls are discovered on the page, not listed by hand (``kdlabProbe.tagControls``): every
slider, dropdown, checkbox and button in the notebook's widget outputs. Each must sit in a
``.kdlab-panel`` (otherwise the test cannot tell what it drives), and then

* a slider goes to its far end (End, or Home from the top), a dropdown to its next option, a
  checkbox flips: the panel's ``.kdlab-figure`` must show something else once the kernel has
  finished every request the change started; the control is then put back (a slider's
  starting value typed into its readout) and the figure must redraw again, so the next
  control, and the train button, see the notebook's own settings;
* a ``.kdlab-train`` button is clicked: the panel's ``.kdlab-live`` plot must draw at least one
  new frame, replace its drawing in place (no growing list of images), and the kernel must
  finish the click within ``TRAIN_TIMEOUT``;
* any other button is clicked: the panel's figure or live plot must change.

Screenshots of the panel before and after every change go to
``<out>/<notebook>__<control>__before.png`` / ``__after.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import REDRAW_TIMEOUT, TRAIN_TIMEOUT, slug
from .session import NotebookSession

FIGURE, LIVE = ".kdlab-figure", ".kdlab-live"
KEY_TIMEOUT_MS = 5_000  # for the page to show a control's new value after a key press


@dataclass
class Interaction:
    panel: str
    kind: str
    description: str
    ok: bool
    detail: str
    seconds: float = 0.0
    shots: list[str] = field(default_factory=list)


class Controls:
    """Exercise every control of the notebook open in ``session``."""

    def __init__(self, session: NotebookSession):
        self.s = session
        self.page = session.page
        self.used_names: set[str] = set()

    def exercise_all(self) -> list[Interaction]:
        tagged = self.s.probe("tagControls", self.s.rel)
        done = [
            Interaction(
                "-",
                c["kind"],
                c["description"],
                False,
                f"{c['kind']} '{c['description']}' is outside any .kdlab-panel, so the test "
                "cannot tell which figure it drives (build it with kdlab.live.panel / "
                "train_panel)",
            )
            for c in tagged["stray"]
        ]
        for panel in tagged["panels"]:
            for ctrl in panel["controls"]:
                done.append(self.exercise(panel, ctrl))
        return done

    def exercise(self, panel: dict, ctrl: dict) -> Interaction:
        desc = ctrl["description"] or f"{ctrl['kind']}-{ctrl['id']}"
        label = f"{ctrl['kind']} '{desc}' in panel #{panel['id'][1:]}"
        result = Interaction(panel["id"], ctrl["kind"], desc, False, label)
        t0 = time.monotonic()
        if ctrl["disabled"]:
            result.detail = f"{label} is disabled"
        elif ctrl["kind"] != "button" and not panel["figures"]:
            # e.g. hyper-parameters of a panel that only trains: nothing to redraw
            result.ok = True
            result.detail = f"{label}: panel has no .kdlab-figure, redraw not checked"
        elif ctrl["kind"] == "button" and ctrl["train"] and not panel["live"]:
            result.detail = f"train button {label} has no .kdlab-live output in its panel"
        elif ctrl["kind"] == "button":
            self._button(panel, ctrl, result)
        else:
            self._figure_control(panel, ctrl, result)
        result.seconds = time.monotonic() - t0
        return result

    # -- helpers -----------------------------------------------------------
    def _locator(self, test_id: str):
        return self.page.locator(f'[data-kdlab-test="{test_id}"]')

    def _shoot(self, pid: str, name: str, phase: str) -> str:
        path = self.s.out_dir / f"{self.s.stem}__{name}__{phase}.png"
        panel = self._locator(pid)
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(path))
        return str(path)

    def _shot_name(self, ctrl: dict, pid: str) -> str:
        base = slug(ctrl["description"], f"{pid}-{ctrl['kind']}")
        name, k = base, 2
        while name in self.used_names:
            name, k = f"{base}-{k}", k + 1
        self.used_names.add(name)
        return name

    def _mark(self) -> tuple[int, int]:
        """(requests the kernel has started, errors it has reported) before an action."""
        k = self.s.kernel()
        return k["requests"], len(k["errors"])

    def _new_errors(self, n_errors: int, fp: dict | None) -> list[str]:
        return list((fp or {}).get("errors") or []) + self.s.kernel()["errors"][n_errors:]

    def _redrawn(self, pid: str, cls: str, before: str, mark) -> tuple[dict | None, list[str]]:
        """Wait until the kernel has finished what it started since ``mark`` (from
        :meth:`_mark`) and the panel's ``cls`` output shows something other than ``before``.

        Returns (what it shows then, or None on timeout; errors that turned up)."""
        since, n_errors = mark
        got = self.s.wait_for("redrawn", pid, cls, before, since, n_errors, timeout=REDRAW_TIMEOUT)
        fp = got["fp"] if got else None
        return fp, self._new_errors(n_errors, fp)

    # -- sliders, dropdowns, checkboxes -----------------------------------
    def _change(self, ctrl: dict, back: bool = False) -> str | None:
        """Change the control (``back``: put it back); return the value it shows then, or
        None if it did not move."""
        el = self._locator(ctrl["id"])
        if ctrl["kind"] == "dropdown":
            index = ctrl["index"] if back else (ctrl["index"] + 1) % len(ctrl["options"])
            el.locator("select").select_option(index=index)
            return ctrl["options"][index]
        if ctrl["kind"] == "checkbox":
            el.locator("input").click()
            return ctrl["value"] if back else str(ctrl["value"] != "true").lower()
        return self._move_slider(el, ctrl, back)

    def _move_slider(self, el, ctrl: dict, back: bool) -> str | None:
        """Forward: to the far end (End, or Home from the top), so the figure changes as much
        as the slider allows. Back: the starting value typed into the readout and Enter."""
        readout = el.locator(".widget-readout")
        if back:
            readout.first.fill(ctrl["value"])
            readout.first.press("Enter")
            keys = [None]
        else:
            keys = ["Home", "End"] if ctrl["atMax"] else ["End", "Home"]
        for key in keys:
            if key:
                el.locator(".noUi-handle").first.press(key)
            try:
                self._expect_slider(el, ctrl["value"], same=back)
            except AssertionError:
                continue
            return self._slider_value(el)
        return None

    @staticmethod
    def _slider_value(el) -> str:
        """What a slider shows: its readout, else its handle's aria-valuetext."""
        readout = el.locator(".widget-readout")
        if readout.count():
            return (readout.first.text_content() or "").strip()
        return el.locator(".noUi-handle").first.get_attribute("aria-valuetext") or ""

    @staticmethod
    def _expect_slider(el, value: str, same: bool) -> None:
        """Wait until the slider shows ``value`` (``same``) or anything else."""
        from playwright.sync_api import expect

        readout = el.locator(".widget-readout")
        if readout.count():
            check = expect(readout.first)
            if same:
                check.to_have_text(value, timeout=KEY_TIMEOUT_MS)
            else:
                check.not_to_have_text(value, timeout=KEY_TIMEOUT_MS)
            return
        check = expect(el.locator(".noUi-handle").first)
        if same:
            check.to_have_attribute("aria-valuetext", value, timeout=KEY_TIMEOUT_MS)
        else:
            check.not_to_have_attribute("aria-valuetext", value, timeout=KEY_TIMEOUT_MS)

    def _figure_control(self, panel: dict, ctrl: dict, result: Interaction) -> None:
        pid, label = panel["id"], result.detail
        if ctrl["kind"] == "dropdown" and len(ctrl["options"]) < 2:
            result.ok, result.detail = True, f"{label}: only one option, nothing to change"
            return
        name = self._shot_name(ctrl, pid)
        self._locator(pid).scroll_into_view_if_needed()
        before = self.s.probe("fingerprint", pid, FIGURE)
        result.shots.append(self._shoot(pid, name, "before"))
        mark = self._mark()
        moved = self._change(ctrl)
        fp, errors = self._redrawn(pid, FIGURE, before["key"], mark)
        result.shots.append(self._shoot(pid, name, "after"))
        action = f"changing it from {ctrl['value']!r} to {moved!r}"
        if moved is None:
            result.detail = f"{label}: could not change it (it stays {ctrl['value']!r})"
        elif errors:
            result.detail = f"{label}: {action} raised an error:\n" + "\n".join(errors)
        elif fp is None:
            result.detail = (
                f"{label}: {action} did not change the figure (.kdlab-figure) within "
                f"{REDRAW_TIMEOUT:.0f}s"
            )
        else:
            result.ok, result.detail = True, f"{label}: {action} redrew the figure"
            self._put_back(pid, ctrl, fp["key"], result)

    def _put_back(self, pid: str, ctrl: dict, shown: str, result: Interaction) -> None:
        """Undo the change; the figure must redraw (away from ``shown``) without errors.
        A slider without a readout (nowhere to type its value) stays at its far end."""
        if ctrl["kind"] == "slider" and not ctrl["readout"]:
            return
        mark = self._mark()
        back = self._change(ctrl, back=True)
        fp, errors = self._redrawn(pid, FIGURE, shown, mark)
        if back is None or fp is None or errors:
            result.ok = False
            result.detail += (
                f"; but putting it back to {ctrl['value']!r} "
                + ("failed" if back is None else "did not redraw the figure")
                + (":\n" + "\n".join(errors) if errors else f" within {REDRAW_TIMEOUT:.0f}s")
            )

    # -- buttons -----------------------------------------------------------
    def _button(self, panel: dict, ctrl: dict, result: Interaction) -> None:
        pid, label = panel["id"], result.detail
        name = self._shot_name(ctrl, pid)
        button = self._locator(ctrl["id"])
        button.scroll_into_view_if_needed()
        result.shots.append(self._shoot(pid, name, "before"))
        if not ctrl["train"]:
            before = self.s.probe("fingerprint", pid, f"{FIGURE}, {LIVE}")
            mark = self._mark()
            button.click()
            fp, errors = self._redrawn(pid, f"{FIGURE}, {LIVE}", before["key"], mark)
            result.shots.append(self._shoot(pid, name, "after"))
            if errors:
                result.detail = f"{label}: clicking it raised an error:\n" + "\n".join(errors)
            elif fp is None:
                result.detail = (
                    f"{label}: clicking it did not change the panel within {REDRAW_TIMEOUT:.0f}s"
                )
            else:
                result.ok, result.detail = True, f"{label}: clicking it changed the panel"
            return
        self._train(pid, button, label, result)
        result.shots.append(self._shoot(pid, name, "after"))

    def _train(self, pid: str, button, label: str, result: Interaction) -> None:
        self.s.probe("watchFrames", pid, LIVE)
        since, n_errors = self._mark()
        t0 = time.monotonic()
        button.click()
        done = self.s.wait_for("trained", pid, LIVE, since, n_errors, timeout=TRAIN_TIMEOUT)
        secs = time.monotonic() - t0
        t = done or self.s.probe("training", pid, LIVE, since, n_errors)
        errors = self._new_errors(n_errors, t["fp"])
        if errors:
            result.detail = f"{label}: training raised an error:\n" + "\n".join(errors)
        elif not t["frames"]:
            result.detail = (
                f"{label}: clicking it did not update the live plot (.kdlab-live) within "
                f"{TRAIN_TIMEOUT:.0f}s"
            )
        elif done is None:
            result.detail = (
                f"{label}: the live plot updated ({t['frames']} frame(s)) but training did "
                f"not finish (kernel still busy) within {TRAIN_TIMEOUT:.0f}s"
            )
        elif t["firstImages"] and t["maxImages"] > t["firstImages"]:
            result.detail = (
                f"{label}: the live plot (.kdlab-live) was not redrawn in place: it grew from "
                f"{t['firstImages']} to {t['maxImages']} images (replace the drawing, do not "
                "append to it)"
            )
        else:
            result.ok = True
            result.detail = (
                f"{label}: live plot showed {t['frames']} new frame(s), training took {secs:.1f}s"
            )
