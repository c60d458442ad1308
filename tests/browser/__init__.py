"""The in-browser notebook test's machinery (``tests/test_browser.py``).

* :mod:`browser.config` — settings from the environment, the tooling check, file names.
* :mod:`browser.server` — a throw-away JupyterLab server on loopback.
* :mod:`browser.session` — one notebook in one Playwright page: open, run all, check outputs.
* :mod:`browser.controls` — every slider, dropdown, checkbox and button the notebook shows.
* ``probe.js`` — what the test reads from the JupyterLab page (``window.kdlabProbe``).

Every wait is on a condition with a deadline (Playwright's ``wait_for_function`` and locator
expectations): a control's figure counts as redrawn once the kernel has finished every request
the change started and the figure shows something else; a training run counts as finished once
the kernel has finished the click's request and the live plot drew at least one new frame.
"""
