"""The lab notebooks in a real JupyterLab, driven by headless Chromium.

Run:  .venv/bin/python -m pytest -q -m browser tests/test_browser.py -s

Each test starts JupyterLab on a free localhost port (random token, settings
and runtime files in a temporary folder), opens a notebook copied into the
server's root folder (so the kernel's working directory is that folder), runs
Run > Run All Cells, fails on any error output, checks that ipywidgets sliders
and plotly FigureWidgets rendered, moves the first slider with the keyboard and
waits until a figure changes, and saves a full-page screenshot under
tests/artifacts/ (git-ignored by the .gitignore the test writes there).

Needs Debian's chromium (/usr/bin/chromium; `.ci/run` installs it); the tests
skip only when it is missing. Playwright's own browser downloads are not used.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from browser_helpers import (
    NotebookBrowserError,
    find_chromium,
    jupyter_lab_server,
    run_notebook_in_browser,
)

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NOTEBOOK_01 = REPO / "notebooks" / "01_relative_contrastive_loss.ipynb"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not found (Debian: apt-get install -y chromium; .ci/run does it)")
    return path


@pytest.fixture(scope="module")
def lab_server(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_root")
    scratch = tmp_path_factory.mktemp("lab_home")
    with jupyter_lab_server(root, scratch) as server:  # killed in its finally
        yield server


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# screenshots written by tests/test_browser.py\n*\n")
    return ARTIFACTS / name


def _report(result) -> None:
    print(f"\nscreenshot: {result.screenshot}")
    print(f"  {result.code_cells} code cells, rendered {result.render_state}, "
          f"slider {result.slider_before} -> {result.slider_after} changed figure(s) "
          f"{result.changed_plots}, {result.seconds:.1f}s in the browser, Run All clicked {result.run_all_clicks}x")
    if result.console_errors:
        print(f"  browser console errors: {result.console_errors}")


SCRATCH_CELLS = [
    "import ipywidgets as w, plotly.graph_objects as go, numpy as np",
    """\
fig = go.FigureWidget(go.Scatter(y=np.sin(np.linspace(0, 6, 50))))
s = w.FloatSlider(value=1.0, min=0.1, max=3.0, step=0.1, description="freq")
def upd(ch):
    fig.data[0].y = np.sin(s.value * np.linspace(0, 6, 50))
s.observe(upd, names="value")
w.VBox([s, fig])""",
    # The kernel runs in the server's root folder (where the notebook lies).
    "import os, pathlib\nassert pathlib.Path.cwd().resolve() == pathlib.Path({root!r}).resolve(), os.getcwd()",
]


def test_widgets_and_figurewidget_in_jupyterlab(lab_server, chromium):
    """The infrastructure on a notebook of our own: a slider drives a FigureWidget."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# browser test scratch")]
    root = str(lab_server.root_dir)
    nb.cells += [nbformat.v4.new_code_cell(c.replace("{root!r}", repr(root))) for c in SCRATCH_CELLS]
    # Stale prompts and outputs, as in a notebook saved after a run: the run
    # must clear them rather than take them for its own.
    for i, cell in enumerate(nb.cells[1:], start=1):
        cell.execution_count = i
    nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="OldError", evalue="stale",
                                                  traceback=["Traceback: stale"])]
    nbformat.write(nb, lab_server.root_dir / "scratch_widgets.ipynb")

    result = run_notebook_in_browser(
        lab_server, "scratch_widgets.ipynb", _artifact("browser_scratch.png"),
        chromium=chromium, execute_timeout=90)
    _report(result)
    assert result.changed_plots == [0]


def test_error_output_fails(lab_server, chromium, tmp_path):
    """A traceback in a cell output fails the run (so the checks above can fail)."""
    nb = nbformat.v4.new_notebook()  # no kernelspec metadata: the default kernel starts
    nb.cells = [nbformat.v4.new_code_cell(c) for c in ("x = 1", "1 / 0", "y = 2")]
    nbformat.write(nb, lab_server.root_dir / "scratch_error.ipynb")
    with pytest.raises(NotebookBrowserError, match="ZeroDivisionError"):
        run_notebook_in_browser(lab_server, "scratch_error.ipynb", tmp_path / "error.png",
                                chromium=chromium, execute_timeout=60)


def test_notebook01_in_jupyterlab(request, chromium):
    if not NOTEBOOK_01.exists():
        pytest.skip(f"notebooks/{NOTEBOOK_01.name} not written yet")
    lab_server = request.getfixturevalue("lab_server")
    shutil.copy(NOTEBOOK_01, lab_server.root_dir / NOTEBOOK_01.name)

    result = run_notebook_in_browser(
        lab_server, NOTEBOOK_01.name, _artifact("browser_notebook01.png"),
        chromium=chromium, execute_timeout=120, change_timeout=15)
    _report(result)
