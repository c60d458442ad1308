// What the browser test reads from a JupyterLab page, installed before the page's own scripts
// (Playwright's add_init_script) as window.kdlabProbe. JupyterLab exposes itself as
// window.jupyterapp (--LabApp.expose_app_in_browser). Every function here only reads the page,
// except watchKernel (listens to the kernel), runAll (runs the notebook), tagControls (marks
// panels and controls with data-kdlab-test so Playwright locators can address them) and
// watchFrames (records what a live plot shows, frame by frame).
(() => {
  // an error in a stderr text: a traceback, or a line starting with "SomethingError"
  // (warnings and progress bars do not match)
  const ERROR_TEXT = /Traceback|(^|\n)\s*[\w.]*Error\b/;
  const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
  const STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';

  // kernel traffic seen since watchKernel: requests = shell requests the kernel started
  // (status "busy"), busy = those not finished yet (no "idle" with the same parent)
  const kernelWatch = {kernel: null, fn: null, requests: 0, busy: new Set(), errors: []};
  const frameWatch = {};

  const notebookPanel = (path) => {
    const app = window.jupyterapp;
    if (!app || !app.shell) return null;
    for (const w of app.shell.widgets('main')) {
      if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
    }
    return null;
  };
  const kernelOf = (panel) => {
    const sc = panel && panel.sessionContext;
    return sc && sc.session ? sc.session.kernel : null;
  };
  const dialogs = () => Array.from(document.querySelectorAll('.jp-Dialog')).map(
      (d) => (d.innerText || '').trim().slice(0, 500));
  const stderrErrors = (root) => Array.from(root.querySelectorAll(STDERR))
      .map((n) => n.innerText || '').filter((t) => ERROR_TEXT.test(t))
      .map((t) => t.slice(-1500));
  const widgetViews = (cell) => cell.model.outputs.toJSON()
      .filter((o) => o.data && o.data[WIDGET_MIME]).length;
  const panelOf = (pid) => document.querySelector(`[data-kdlab-test="${pid}"]`);
  const own = (panel) => (el) => el.closest('.kdlab-panel') === panel;

  // FNV-1a and a rolling hash over every image, inline SVG, canvas and text in the panel's
  // elements of class cls: two different drawings give two different keys
  const fingerprint = (pid, cls) => {
    const panel = panelOf(pid);
    if (!panel) return {key: 'missing', images: 0, empty: true, errors: [], count: 0};
    const els = Array.from(panel.querySelectorAll(cls)).filter(own(panel));
    let acc = '';
    let images = 0;
    const errors = [];
    for (const el of els) {
      for (const img of el.querySelectorAll('img')) { acc += img.src; images += 1; }
      for (const svg of el.querySelectorAll('svg')) { acc += svg.outerHTML; images += 1; }
      for (const c of el.querySelectorAll('canvas')) {
        try { acc += c.toDataURL(); } catch (e) { acc += 'canvas'; }
        images += 1;
      }
      acc += '|' + (el.innerText || '');
      errors.push(...stderrErrors(el));
    }
    let h1 = 0x811c9dc5;
    let h2 = 0;
    for (let i = 0; i < acc.length; i++) {
      h1 = Math.imul(h1 ^ acc.charCodeAt(i), 16777619) >>> 0;
      h2 = (h2 * 31 + acc.charCodeAt(i)) >>> 0;
    }
    const empty = acc.replace(/\|/g, '').trim() === '';
    return {key: `${acc.length}:${h1}:${h2}`, images, empty, errors, count: els.length};
  };

  const describeControl = (el, kind, id) => {
    const label = el.querySelector(':scope > label, :scope > .widget-label');
    const text = label ? (label.innerText || label.textContent || '').trim() : '';
    const input = el.querySelector('select, input');
    const disabled = el.disabled || (input && input.disabled)
        || el.classList.contains('mod-disabled') || !!el.querySelector('[disabled]');
    const c = {id, kind, description: text, disabled: !!disabled};
    if (kind === 'slider') {
      const ro = el.querySelector('.widget-readout');
      const handle = el.querySelector('.noUi-handle');
      const attr = (a) => (handle ? handle.getAttribute(a) || '' : '');
      c.value = (ro ? (ro.textContent || '').trim() : '') || attr('aria-valuetext');
      c.readout = !!ro;
      c.atMax = parseFloat(attr('aria-valuenow')) >= parseFloat(attr('aria-valuemax'));
    } else if (kind === 'dropdown') {
      c.value = input ? input.value : '';
      c.options = input ? Array.from(input.options).map((o) => o.value) : [];
      c.index = input ? input.selectedIndex : -1;
    } else if (kind === 'checkbox') {
      c.value = input ? String(input.checked) : '';
    } else {
      c.description = (el.innerText || el.title || '').trim();
      c.train = el.classList.contains('kdlab-train');
    }
    return c;
  };

  // every control a widget output shows, in page order, by kind
  const CONTROLS = [
    ['slider', '.widget-slider'],
    ['dropdown', '.widget-dropdown'],
    ['checkbox', '.widget-checkbox'],
    ['button', 'button.widget-button'],
  ];

  window.kdlabProbe = {
    state(path) {
      const panel = notebookPanel(path);
      if (!panel) return {ready: false, dialogs: dialogs(), stage: 'no notebook panel yet'};
      const sc = panel.sessionContext;
      const kernel = kernelOf(panel);
      return {
        ready: !!(panel.context.isReady && sc && sc.isReady),
        stage: 'panel',
        dialogs: dialogs(),
        kernelName: kernel ? kernel.name : null,
        kernelStatus: kernel ? kernel.status : null,
        connection: kernel ? kernel.connectionStatus : null,
        run: window.__kdlabRun || null,
      };
    },

    watchKernel(path) {
      const kernel = kernelOf(notebookPanel(path));
      if (kernelWatch.kernel) kernelWatch.kernel.iopubMessage.disconnect(kernelWatch.fn);
      Object.assign(kernelWatch, {kernel, requests: 0, busy: new Set(), errors: []});
      kernelWatch.fn = (k, msg) => {
        const type = msg.header.msg_type;
        const c = msg.content;
        if (type === 'status') {
          const parent = (msg.parent_header && msg.parent_header.msg_id) || '?';
          if (c.execution_state === 'busy') {
            kernelWatch.requests += 1;
            kernelWatch.busy.add(parent);
          } else if (c.execution_state === 'idle') {
            kernelWatch.busy.delete(parent);
          }
        } else if (type === 'error') {
          kernelWatch.errors.push(`${c.ename}: ${c.evalue}`);
        } else if (type === 'stream' && c.name === 'stderr' && ERROR_TEXT.test(c.text)) {
          kernelWatch.errors.push(c.text.slice(-1500));
        }
      };
      kernel.iopubMessage.connect(kernelWatch.fn);
      return true;
    },

    // {requests, pending, errors}: compare requests before and after an action
    kernel() {
      return {requests: kernelWatch.requests, pending: kernelWatch.busy.size,
              errors: kernelWatch.errors.slice()};
    },

    clearKernelErrors() { kernelWatch.errors = []; },

    async runAll(path) {
      const app = window.jupyterapp;
      app.shell.activateById(notebookPanel(path).id);
      await app.commands.execute('notebook:clear-all-cell-outputs');
      window.__kdlabRun = {done: false};
      app.commands.execute('notebook:run-all-cells').then(
          (r) => { window.__kdlabRun = {done: true, result: String(r)}; },
          (e) => { window.__kdlabRun = {done: true, error: String(e)}; });
      return true;
    },

    cells(path) {
      return notebookPanel(path).content.widgets.map((cell, index) => {
        const m = cell.model;
        const item = {index, type: m.type, blank: !m.sharedModel.getSource().trim(),
                      count: null, errors: [], prompt: ''};
        if (m.type !== 'code') return item;
        item.count = m.executionCount;
        const prompt = cell.node.querySelector('.jp-InputPrompt');
        item.prompt = prompt ? prompt.innerText.trim() : '';
        for (const o of m.outputs.toJSON()) {
          if (o.output_type === 'error') item.errors.push(`${o.ename}: ${o.evalue}`);
        }
        // an error output also renders as stderr: read the stderr text only without one
        if (!item.errors.length) item.errors.push(...stderrErrors(cell.node));
        return item;
      });
    },

    // widget-view outputs in the notebook's model against widgets rendered in the page
    widgets(path) {
      const panel = notebookPanel(path);
      const body = panel.node.innerText || '';
      const missing = [];
      let views = 0;
      let rendered = 0;
      panel.content.widgets.forEach((cell, i) => {
        if (cell.model.type !== 'code') return;
        const want = widgetViews(cell);
        if (!want) return;
        const outs = cell.node.querySelectorAll(
            '.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output');
        const have = Array.from(outs).filter(
            (o) => o.querySelector(':scope > .jupyter-widgets')).length;
        views += want;
        rendered += Math.min(have, want);
        if (have < want) missing.push(i);
      });
      return {loading: body.includes('Loading widget...'),
              errorDisplaying: body.includes('Error displaying widget'),
              views, rendered, missing,
              panels: panel.node.querySelectorAll('.kdlab-panel').length};
    },

    // tag every .kdlab-panel (p1, p2, ...) and every control in the notebook's widgets
    // (p1-c1, ...; controls outside any panel: x1, x2, ...) and describe them
    tagControls(path) {
      const root = notebookPanel(path).node;
      const panels = Array.from(root.querySelectorAll('.kdlab-panel'));
      const out = panels.map((panel, i) => {
        const pid = `p${i + 1}`;
        panel.setAttribute('data-kdlab-test', pid);
        const mine = own(panel);
        return {id: pid, controls: [], figures: Array.from(panel.querySelectorAll(
            '.kdlab-figure')).filter(mine).length, live: Array.from(panel.querySelectorAll(
            '.kdlab-live')).filter(mine).length};
      });
      const stray = [];
      const counts = {};
      const all = CONTROLS.flatMap(([kind, sel]) => Array.from(root.querySelectorAll(
          `.jp-OutputArea-output ${sel}`)).map((el) => [kind, el]));
      all.sort(([, a], [, b]) => (a.compareDocumentPosition(b) & 4 ? -1 : 1));
      for (const [kind, el] of all) {
        const panel = el.closest('.kdlab-panel');
        const pid = panel ? panel.getAttribute('data-kdlab-test') : null;
        counts[pid] = (counts[pid] || 0) + 1;
        const id = pid ? `${pid}-c${counts[pid]}` : `x${counts[pid]}`;
        el.setAttribute('data-kdlab-test', id);
        const c = describeControl(el, kind, id);
        if (pid) out[panels.indexOf(panel)].controls.push(c); else stray.push(c);
      }
      return {panels: out, stray};
    },

    fingerprint,

    // true once the kernel finished every request it started after `since` requests, and the
    // panel's `cls` output shows something other than `before` (or an error turned up: in the
    // output, or from the kernel beyond the `nErrors` it had reported before)
    redrawn(pid, cls, before, since, nErrors) {
      const fp = fingerprint(pid, cls);
      const k = window.kdlabProbe.kernel();
      if (fp.errors.length || k.errors.length > nErrors) return {fp, kernel: k};
      const done = k.requests > since && k.pending === 0;
      return done && fp.key !== before && !fp.empty ? {fp, kernel: k} : null;
    },

    // record every distinct drawing the panel's live plot shows from now on
    watchFrames(pid, cls) {
      const panel = panelOf(pid);
      const w = {keys: new Set([fingerprint(pid, cls).key]), frames: 0,
                 firstImages: 0, maxImages: 0, observer: null};
      const look = () => {
        const fp = fingerprint(pid, cls);
        if (fp.empty || w.keys.has(fp.key)) return;
        w.keys.add(fp.key);
        w.frames += 1;
        if (w.frames === 1) w.firstImages = fp.images;
        w.maxImages = Math.max(w.maxImages, fp.images);
      };
      if (frameWatch[pid]) frameWatch[pid].observer.disconnect();
      w.observer = new MutationObserver(look);
      w.observer.observe(panel, {childList: true, subtree: true, attributes: true,
                                 characterData: true});
      frameWatch[pid] = w;
      return true;
    },

    // {frames, firstImages, maxImages, kernel, fp, done}: done once the kernel finished every
    // request started after `since` and at least one new frame was drawn (or an error turned
    // up: in the live plot, or from the kernel beyond the `nErrors` it had reported before)
    training(pid, cls, since, nErrors) {
      const w = frameWatch[pid];
      const fp = fingerprint(pid, cls);
      const k = window.kdlabProbe.kernel();
      const done = (k.requests > since && k.pending === 0 && w.frames >= 1)
          || fp.errors.length > 0 || k.errors.length > nErrors;
      return {frames: w.frames, firstImages: w.firstImages, maxImages: w.maxImages,
              kernel: k, fp, done};
    },

    trained(pid, cls, since, nErrors) {
      const t = window.kdlabProbe.training(pid, cls, since, nErrors);
      return t.done ? t : null;
    },

    // the state once the notebook's kernel is idle and connected, or a dialog shows
    opened(path) {
      const s = window.kdlabProbe.state(path);
      const up = s.ready && s.kernelStatus === 'idle' && s.connection === 'connected';
      return up || s.dialogs.length ? s : null;
    },

    // the state once "Run All Cells" finished and the kernel is idle, or a dialog shows
    ranAll(path) {
      const s = window.kdlabProbe.state(path);
      const done = s.run && s.run.done && s.kernelStatus === 'idle';
      return done || s.dialogs.length ? s : null;
    },

    // the widget state once every widget output has rendered
    rendered(path) {
      const w = window.kdlabProbe.widgets(path);
      return !w.loading && !w.errorDisplaying && !w.missing.length ? w : null;
    },
  };
})();
