"""Write a benchmark's plotly figure as PNG (kaleido, from the benchmark extra, drives the system's
chromium), or as a standalone HTML page when PNG export is not available here."""
from __future__ import annotations

from pathlib import Path


def write_figure(fig, path: str | Path, width: int = 1100) -> str:
    """``fig`` to ``path`` (.png); on failure to ``path`` with .html. Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.write_image(str(path), width=width, height=int(fig.layout.height or 600), scale=1)
        return str(path)
    except Exception as e:  # kaleido missing, or no Chrome for it to drive
        html_path = path.with_suffix(".html")
        fig.write_html(str(html_path), include_plotlyjs=True)
        print(f"   (PNG export unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}; wrote HTML)")
        return str(html_path)
