"""Drive a real JupyterLab in headless Chromium (Playwright, Debian's chromium).

Used by tests/test_browser.py. Three pieces:

* ``find_chromium()``: the system chromium or ``None`` (the tests skip then).
* ``jupyter_lab_server(root_dir, scratch_dir)``: a JupyterLab server on a free
  localhost port with a random token, isolated from ``~/.jupyter`` (config,
  runtime, user settings, workspaces, IPython dir all under ``scratch_dir``; the
  labextensions are still found in ``sys.prefix/share/jupyter``). Always killed.
* ``run_notebook_in_browser(server, notebook, screenshot)``: opens the notebook,
  runs all cells from the Run menu, waits for every code cell to have an
  execution count, fails on error outputs, checks that ipywidgets sliders and
  plotly figures rendered, nudges a slider and waits until a plotly figure
  changes, and saves a full-page screenshot.

Playwright never downloads a browser here: ``executable_path`` points at the
system chromium (``playwright install`` is never needed or run).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Without the background-networking flags chromium keeps calling Google services,
# which floods a closed network with retries.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# JupyterLab user settings written for the test server (JSON is valid JSON5).
LAB_SETTINGS = {
    # Attach every cell to the DOM: the default ('contentVisibility' / windowing)
    # skips off-screen cells, which hides outputs from selectors and screenshots.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        # A notebook without kernelspec metadata starts the default kernel
        # instead of opening the "Select Kernel" dialog.
        "autoStartDefaultKernel": True,
        # No blank panel-height padding after the last cell (it grows with the
        # viewport, so a screenshot sized to the content would never fit).
        "scrollPastEnd": False,
    },
    # No news / update toasts (they would also try to reach the internet).
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def find_chromium() -> str | None:
    """Path of an executable chromium, or None."""
    candidates = [
        os.environ.get("RCL_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
        shutil.which("chromium-browser"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    base_url: str
    token: str
    root_dir: Path
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    def notebook_url(self, rel_path: str) -> str:
        # ?reset: ignore any saved workspace layout.
        quoted = urllib.parse.quote(rel_path)
        return f"{self.base_url}/lab/tree/{quoted}?reset&token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no server log>"


def _isolated_env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    dirs = {
        "JUPYTER_CONFIG_DIR": scratch / "jupyter_config",
        # The user data dir only; sys.prefix/share/jupyter (labextensions,
        # kernelspec) stays on jupyter's search path.
        "JUPYTER_DATA_DIR": scratch / "jupyter_data",
        "JUPYTER_RUNTIME_DIR": scratch / "jupyter_runtime",
        "JUPYTERLAB_SETTINGS_DIR": scratch / "lab_settings",
        "JUPYTERLAB_WORKSPACES_DIR": scratch / "lab_workspaces",
        "IPYTHONDIR": scratch / "ipython",
    }
    for k, d in dirs.items():
        d.mkdir(parents=True, exist_ok=True)
        env[k] = str(d)
    for rel, content in LAB_SETTINGS.items():
        p = dirs["JUPYTERLAB_SETTINGS_DIR"] / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(content, indent=2))
    env.pop("JUPYTER_TOKEN", None)
    env.pop("JUPYTER_PATH", None)  # nothing from the caller's extra paths
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the server and its kernels (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Kernels in the same group that outlived the server.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def jupyter_lab_server(root_dir: Path, scratch_dir: Path, startup_timeout: float = 90.0):
    """Run ``jupyter lab`` on a free port; yield a LabServer; always kill it."""
    root_dir = Path(root_dir).resolve()
    scratch_dir = Path(scratch_dir).resolve()
    scratch_dir.mkdir(parents=True, exist_ok=True)
    env = _isolated_env(scratch_dir)
    token = secrets.token_hex(24)
    port = free_port()
    log_path = scratch_dir / "jupyter_lab.log"
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        f"--IdentityProvider.token={token}",  # = the deprecated --ServerApp.token
        "--ServerApp.allow_root=True",  # CI containers run as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # no PyPI queries
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: kernel state
    ]
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    server = LabServer(f"http://127.0.0.1:{port}", token, root_dir, log_path, proc)
    try:
        deadline = time.monotonic() + startup_timeout
        status_url = f"{server.base_url}/api/status?token={token}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(status_url, timeout=5) as r:
                    if r.status == 200:
                        json.load(r)
                        break
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"jupyter lab did not answer within {startup_timeout}s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        _kill_group(proc)
        log.close()


# ---------------------------------------------------------------------------
# The browser part.

# Code-cell prompts: "[ ]:" not run, "[*]:" running/queued, "[12]:" done.
_JS_PROMPTS = """() => Array.from(document.querySelectorAll(
    '.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')).map(e => e.textContent.trim())"""

MAX_SCREENSHOT_HEIGHT = 16000

# Scroll the notebook's scroll containers to the top; return how many pixels
# the tallest one still hides.
_JS_SCROLL_TOP_AND_HIDDEN = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return 0;
  let hidden = 0;
  for (const e of [panel, ...panel.querySelectorAll('*')]) {
    const d = e.scrollHeight - e.clientHeight;
    if (d > 0 && /auto|scroll/.test(getComputedStyle(e).overflowY)) {
      e.scrollTop = 0;
      hidden = Math.max(hidden, d);
    }
  }
  return hidden;
}"""

_JS_KERNEL_STATUS = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  const s = w && w.sessionContext && w.sessionContext.session;
  if (s && s.kernel) return s.kernel.connectionStatus + '/' + s.kernel.status;
  if (!app) {
    const e = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
    return e ? 'connected/' + e.getAttribute('data-status') : null;
  }
  return null;
}"""

_JS_ERRORS = r"""() => {
  const out = [];
  for (const e of document.querySelectorAll(
      '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
    const t = e.innerText || '';
    if (/Traceback|^\s*\w*(Error|Exception)\b/m.test(t)) out.push(t.slice(0, 3000));
  }
  for (const e of document.querySelectorAll('.jp-Notebook .jp-OutputArea-output .jp-RenderedText')) {
    const t = e.innerText || '';
    if (/Error displaying widget|Error rendering|Could not render|Failed to load model class/.test(t))
      out.push(t.slice(0, 3000));
  }
  return Array.from(new Set(out));
}"""

_JS_RENDER_STATE = """() => {
  const vis = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const sliders = Array.from(document.querySelectorAll('.jp-Notebook .widget-slider'));
  const plots = Array.from(document.querySelectorAll('.jp-Notebook .js-plotly-plot'));
  return {
    widgets: document.querySelectorAll('.jp-Notebook .jupyter-widgets').length,
    sliders: sliders.length,
    visibleSliders: sliders.filter(vis).length,
    plots: plots.length,
    plotsWithSvg: plots.filter(p => p.querySelector('svg.main-svg') && vis(p)).length,
    loading: Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
      .filter(e => /Loading widget/.test(e.innerText || '')).length,
  };
}"""

# A fingerprint per plotly figure: its data (typed arrays included) plus the
# drawn traces' svg, so any change of data or of what is drawn shows.
_JS_PLOT_FINGERPRINTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .js-plotly-plot'))
  .map(p => {
    let d = '';
    try {
      d = JSON.stringify(p.data || [], (k, v) =>
        (ArrayBuffer.isView(v) ? Array.from(v) : v));
    } catch (e) { d = 'unserialisable:' + e; }
    const layer = p.querySelector('.main-svg .cartesianlayer, .main-svg .plot') ;
    return d + '|' + (layer ? layer.innerHTML : (p.querySelector('.main-svg') || {}).innerHTML);
  })"""


@dataclass
class BrowserRunResult:
    screenshot: Path
    seconds: float
    code_cells: int
    render_state: dict
    changed_plots: list[int]
    slider_before: str
    slider_after: str
    console_errors: list[str]
    run_all_clicks: int = 1


class NotebookBrowserError(AssertionError):
    pass


def _wait(cond, timeout: float, what: str, interval: float = 0.5, diag=None):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() > deadline:
            extra = f"\n{diag()}" if diag else ""
            raise NotebookBrowserError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def run_notebook_in_browser(
    server: LabServer,
    notebook_rel: str,
    screenshot: Path,
    *,
    chromium: str | None = None,
    slider_index: int = 0,
    execute_timeout: float = 150.0,
    change_timeout: float = 10.0,
    min_sliders: int = 1,
    min_plots: int = 1,
) -> BrowserRunResult:
    """Open ``notebook_rel`` (relative to the server's root) and check it end to end.

    Raises NotebookBrowserError (an AssertionError) on any failure; a screenshot
    is saved to ``screenshot`` in every case where the page got that far.
    """
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise NotebookBrowserError("chromium not found")
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    console_errors: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text[:500]))
            page.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"[:500]))

            def diag() -> str:
                with contextlib.suppress(Exception):
                    shot(screenshot)
                parts = []
                with contextlib.suppress(Exception):
                    parts.append(f"prompts: {page.evaluate(_JS_PROMPTS)}")
                with contextlib.suppress(Exception):
                    parts.append(f"render: {page.evaluate(_JS_RENDER_STATE)}")
                with contextlib.suppress(Exception):
                    parts.append(f"kernel: {kernel_status()}")
                parts.append(f"console errors: {console_errors[-10:]}")
                parts.append(f"screenshot: {screenshot}")
                parts.append(f"server log tail:\n{server.log_tail(2500)}")
                return "\n".join(parts)

            def shot(path: Path) -> None:
                # The lab is a fixed-height app whose notebook scrolls inside a
                # panel (.jp-WindowedPanel-outer): grow the viewport until
                # nothing is hidden there, scrolled to the top, so the
                # screenshot shows every cell.
                height = page.viewport_size["height"] if page.viewport_size else 1000
                for _ in range(4):
                    extra = page.evaluate(_JS_SCROLL_TOP_AND_HIDDEN)
                    new_height = int(min(height + extra + 20, MAX_SCREENSHOT_HEIGHT))
                    if extra <= 2 or new_height <= height:
                        break
                    height = new_height
                    page.set_viewport_size({"width": 1400, "height": height})
                    page.wait_for_timeout(700)  # plotly relayouts on resize
                page.evaluate(_JS_SCROLL_TOP_AND_HIDDEN)
                page.wait_for_timeout(200)
                page.screenshot(path=str(path), full_page=True)

            def kernel_status() -> str | None:
                # "connected/idle" etc. from the app (exposed by
                # --LabApp.expose_app_in_browser); the toolbar's execution
                # indicator says "idle" before the websocket is up.
                return page.evaluate(_JS_KERNEL_STATUS)

            page.goto(server.notebook_url(notebook_rel), wait_until="domcontentloaded")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)

            # The kernel must be connected and idle, and stay so for a moment:
            # jupyter_server sometimes fails the first kernel websocket
            # (jupyter-server/jupyter_server#1265) and the client reconnects;
            # requests sent in that window are lost.
            stable = {"n": 0}

            def kernel_ready():
                _dismiss_kernel_dialog(page)
                stable["n"] = stable["n"] + 1 if kernel_status() == "connected/idle" else 0
                return stable["n"] >= 4

            _wait(kernel_ready, 90, "the kernel to be connected and idle", diag=diag)

            n_code = len(page.evaluate(_JS_PROMPTS))
            if n_code == 0:
                raise NotebookBrowserError(f"{notebook_rel}: no code cells found")

            # Run > Run All Cells, from the menu bar.
            def menu(top: str, command: str) -> None:
                page.locator("#jp-MainMenu .lm-MenuBar-itemLabel").filter(
                    has_text=re.compile(rf"^\s*{top}\s*$")).first.click()
                page.locator(f'.lm-Menu-item[data-command="{command}"]').first.click()

            def run_all():
                menu("Run", "runmenu:run-all")  # Run > Run All Cells

            # A notebook saved with outputs shows old prompts ([3]:) and old
            # outputs: Edit > Clear Outputs of All Cells first, so that every
            # prompt and output checked below comes from this run.
            menu("Edit", "editmenu:clear-all")
            _wait(lambda: all(p == "[ ]:" for p in page.evaluate(_JS_PROMPTS))
                  and page.locator(".jp-Notebook .jp-OutputArea-output").count() == 0,
                  15, "the outputs to be cleared", interval=0.25, diag=diag)

            def started():
                return any(p != "[ ]:" for p in page.evaluate(_JS_PROMPTS))

            run_all()
            clicks = 1
            try:
                _wait(started, 20, "a code cell to start")
            except NotebookBrowserError:
                # Nothing ran at all (the request got lost): safe to ask again.
                run_all()
                clicks = 2
                _wait(started, 30, "a code cell to start after a second Run All", diag=diag)

            def all_done():
                prompts = page.evaluate(_JS_PROMPTS)
                errs = page.evaluate(_JS_ERRORS)
                if errs:
                    shot(screenshot)
                    raise NotebookBrowserError(
                        f"{notebook_rel}: error output(s):\n" + "\n---\n".join(errs))
                done = prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts)
                return done and kernel_status() == "connected/idle"

            _wait(all_done, execute_timeout, "all code cells to execute (every prompt [n], kernel idle)",
                  interval=1.0, diag=diag)

            # Widgets render asynchronously after the outputs arrive.
            def rendered():
                st = page.evaluate(_JS_RENDER_STATE)
                ok = (st["visibleSliders"] >= min_sliders and st["plotsWithSvg"] >= min_plots
                      and st["loading"] == 0)
                return st if ok else None

            state = _wait(rendered, 30, f">= {min_sliders} visible .widget-slider and "
                          f">= {min_plots} .js-plotly-plot with svg.main-svg", diag=diag)
            errs = page.evaluate(_JS_ERRORS)
            if errs:
                shot(screenshot)
                raise NotebookBrowserError(f"{notebook_rel}: error output(s):\n" + "\n---\n".join(errs))

            # Move one slider and wait for a figure to change.
            slider = page.locator(".jp-Notebook .widget-slider").nth(slider_index)
            slider.scroll_into_view_if_needed()
            handle = slider.locator(".noUi-handle").first
            readout = slider.locator(".widget-readout")

            def slider_value() -> str:
                # The readout text, or the handle's aria value (readout=False).
                if readout.count():
                    return readout.first.inner_text().strip()
                return handle.get_attribute("aria-valuenow") or ""

            before_val = slider_value()
            before = page.evaluate(_JS_PLOT_FINGERPRINTS)
            handle.focus()
            for _ in range(3):
                handle.press("ArrowRight")
                page.wait_for_timeout(150)
            after_val = slider_value()
            if after_val == before_val:
                # Keyboard did nothing (e.g. at max): drag the handle instead.
                box = handle.bounding_box()
                track = slider.locator(".noUi-target").first.bounding_box()
                if box and track:
                    y = box["y"] + box["height"] / 2
                    page.mouse.move(box["x"] + box["width"] / 2, y)
                    page.mouse.down()
                    page.mouse.move(track["x"] + track["width"] * 0.25, y, steps=8)
                    page.mouse.up()
                    page.wait_for_timeout(300)
                after_val = slider_value()
            if after_val == before_val:
                raise NotebookBrowserError(
                    f"slider #{slider_index} did not move (readout stays {before_val!r})\n{diag()}")

            def changed():
                now = page.evaluate(_JS_PLOT_FINGERPRINTS)
                idx = [i for i, (a, b) in enumerate(zip(before, now)) if a != b]
                return idx or (len(now) != len(before) and [len(now)])

            changed_plots = _wait(changed, change_timeout,
                                  f"a plotly figure to change after slider #{slider_index} "
                                  f"moved {before_val!r} -> {after_val!r}", interval=0.25, diag=diag)
            page.wait_for_timeout(500)
            _wait(lambda: kernel_status() == "connected/idle", 30, "the kernel to be idle after the slider",
                  diag=diag)
            errs = page.evaluate(_JS_ERRORS)
            if errs:
                shot(screenshot)
                raise NotebookBrowserError(
                    f"{notebook_rel}: error output(s) after moving the slider:\n" + "\n---\n".join(errs))
            shot(screenshot)
        finally:
            browser.close()

    return BrowserRunResult(
        screenshot=screenshot.resolve(), seconds=time.monotonic() - t0, code_cells=n_code,
        render_state=state, changed_plots=list(changed_plots), slider_before=before_val,
        slider_after=after_val, console_errors=console_errors, run_all_clicks=clicks,
    )


def _dismiss_kernel_dialog(page) -> bool:
    """Accept a "Select Kernel" dialog if one is open (default kernel)."""
    dlg = page.locator(".jp-Dialog")
    if dlg.count() and "Kernel" in (dlg.first.inner_text() or ""):
        btn = dlg.locator("button.jp-mod-accept")
        if btn.count():
            btn.first.click()
            return True
    return False
