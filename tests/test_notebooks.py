"""Every notebook runs top to bottom headless (nbclient) with no error, and shows widgets and plots.

The notebooks run in place (cwd = notebooks/, as `rcl lab` opens them), so their runs land in
runs/notebooks/ and the embedded data in data/, both beside notebooks/ as in a checkout.
"""
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"


def test_the_four_notebooks_exist_and_are_committed_without_outputs():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_relative_contrastive_loss.ipynb", "02_train_and_watch.ipynb", "03_ablations.ipynb",
                     "04_learned_hierarchy.ipynb"]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless_with_widgets_and_plots(path):
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - t0
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    mimes = {m for o in outputs for m in o.get("data", {})}
    assert PLOTLY in mimes, f"{path.name} showed no plotly figure"
    assert WIDGET in mimes, f"{path.name} showed no widget"
    # The budget is 3 minutes on 2 CPU cores with the defaults.
    print(f"{path.name}: {seconds:.0f} s")
