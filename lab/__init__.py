"""RCL Lab: figures, widget panels, the live training view and the HTML report on top of ``rcl_core``.

Submodules are imported on first use (``from lab import loss_curves`` works), so that importing
``lab`` stays cheap: plotly and umap-learn (whose numba code compiles on import) load only when a
figure or an embedding is actually asked for.
"""
from __future__ import annotations

import importlib

import rcl_core  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads; see rcl_core/__init__.py)

_EXPORTS = {
    "loss_curves": "figures",
    "results_table": "figures",
    "embedding_scatter": "figures",
    "learned_hierarchy": "figures",
    "run_colors": "figures",
    "pull_push_map": "figures",
    "pf_ps_scatter": "figures",
    "pull_share": "figures",
    "gradient_field": "figures",
    "level_embeddings": "figures",
    "prototype_dendrogram": "figures",
    "run_comparison": "figures",
    "criteria_agreement": "figures",
    "quality_comparison": "figures",
    "speed_growth": "figures",
    "RunBrowser": "panels",
    "EmbeddingExplorer": "panels",
    "load_prototypes": "report",
    "hierarchy_order": "figures",
    "LossExplorer": "panels",
    "sync_figure": "panels",
    "LiveTraining": "live",
    "toy_hierarchy": "toy",
    "TOY_SETS": "toy",
    "class_colors": "figures",
    "umap_embedding": "embedding",
    "Embedding": "embedding",
    "RunData": "report",
    "load_run": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
