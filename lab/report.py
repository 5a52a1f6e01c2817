"""Read run directories and write one self-contained HTML report of them.

What a run directory must hold, and what the report does without the rest:

========================  =========  ==================================================================
file                      required   without it
========================  =========  ==================================================================
``metrics.jsonl``         yes        :class:`FileNotFoundError` naming it: no log, nothing to report.
``summary.json``          no         the run was interrupted before evaluation: its curves are drawn,
                                     its row of the results table shows "–" (``load_run(...,
                                     require_summary=True)`` raises instead).
``config.json``           no         method/dataset are taken from the summary, if any.
``eval.npz``              no         no UMAP and no learned hierarchy for that run.
========================  =========  ==================================================================

Example::

    >>> from lab.report import write_report
    >>> write_report({"MoCo": "runs/moco", "RCL": "runs/rcl"}, "runs/report.html")
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rcl_core.runs import atomic_write_text, read_metrics

from . import figures
from .embedding import umap_embedding

__all__ = ["RunData", "load_run", "load_prototypes", "read_metrics", "write_report", "build_report_html"]

REQUIRED_FILES = ("metrics.jsonl",)


@dataclass
class RunData:
    """Everything the report needs from one run directory.

    ``metrics`` holds every parsed line of ``metrics.jsonl`` in file order, events included;
    ``summary`` and ``eval`` are ``None`` when their file is missing; ``eval`` maps the arrays of
    ``eval.npz`` by name. ``notes`` collects what was skipped while reading (e.g. a partial last line).
    """

    name: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    eval: dict[str, np.ndarray] | None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str | None:
        return (self.summary or {}).get("method") or self.config.get("method")

    @property
    def dataset(self) -> str | None:
        return (self.summary or {}).get("dataset") or self.config.get("dataset")


def load_run(run_dir: str | Path, name: str | None = None, require_summary: bool = False) -> RunData:
    """Read one run directory (see the module docstring for which files are required).

    Parameters
    ----------
    run_dir : path
        The run directory written by the trainer.
    name : str, optional
        Display name; defaults to the directory's name.
    require_summary : bool
        Raise :class:`FileNotFoundError` when ``summary.json`` is missing instead of loading the run
        as interrupted.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a directory, or ``metrics.jsonl`` (or, with ``require_summary``,
        ``summary.json``) is missing; the message names the missing path.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    required = REQUIRED_FILES + (("summary.json",) if require_summary else ())
    for fname in required:
        if not (root / fname).is_file():
            raise FileNotFoundError(f"{fname} is missing from run directory {root} (expected {root / fname})")

    notes: list[str] = []
    metrics = read_metrics(root / "metrics.jsonl", notes)
    config = _read_json(root / "config.json") if (root / "config.json").is_file() else {}
    summary = _read_json(root / "summary.json") if (root / "summary.json").is_file() else None
    if summary is None:
        notes.append("no summary.json: the run stopped before its final evaluation")
    arrays = None
    if (root / "eval.npz").is_file():
        with np.load(root / "eval.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return RunData(name=name or root.name, path=root, config=config, metrics=metrics,
                   summary=summary, eval=arrays, notes=notes)


def load_prototypes(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The online-clustering prototypes in a run's checkpoint: ``{"proto-K": {"prototypes": (K, D),
    "usage": (K,), "parents": (K,) or absent for the coarsest level}}``, fine -> coarse.

    Empty when the run learns no prototypes (MoCo, k-means or ground-truth criteria). Raises
    ``FileNotFoundError`` without a checkpoint and ``ValueError`` for one that cannot be read.
    """
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {path})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["criteria"]
    except Exception as e:
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    names = [n for n in state["names"] if n.startswith("proto-")]
    found = next((c for c in state["criteria"] if "prototypes" in c), None)
    if not names or found is None or not found["prototypes"]:
        return {}
    names.sort(key=lambda n: -int(n.split("-")[1]))  # the clustering keeps its levels fine -> coarse
    out = {}
    for i, name in enumerate(names):
        level = {"prototypes": found["prototypes"][i].numpy(), "usage": found["usage"][i].numpy()}
        if i < len(found["parents"]):
            level["parents"] = found["parents"][i].numpy()
        out[name] = level
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------- report

_INTRO = (
    "<p><b>Relative Contrastive Loss (RCL)</b> replaces the usual contrastive rule &mdash; <i>same "
    "image: pull; anything else: push</i> &mdash; by a graded one. A set of <i>criteria</i>, ordered "
    "fine to coarse (the instance itself, then clusters of a hierarchy learned online), each says which "
    "keys agree with an anchor. Averaging their targets gives the <i>relativeness</i> P<sub>s</sub>: how "
    "positive each key is. A pair is pulled while its feature similarity P<sub>f</sub> is below "
    "P<sub>s</sub> and pushed once above it, so samples sharing a coarse cluster end up closer than "
    "strangers but farther than two views of one image. MoCo v3 is the special case with the instance "
    "criterion alone.</p>"
    "<p>This page shows, for each run: the final evaluation (kNN and linear-probe top-1 on frozen "
    "backbone features, and how well the learned clusters match the ground-truth levels), the training "
    "curves (total loss and each criterion's share), a UMAP of the test-set features coloured by the "
    "finest ground-truth class, and, for runs that learned criteria, which ground-truth classes each "
    "learned coarse cluster grouped together.</p>"
)

# once the page has its final layout, fit every figure to its card (the fonts or a scrollbar may
# have changed the width since each figure was drawn)
_RESIZE = ("<script>window.addEventListener('load', function () {"
           "document.querySelectorAll('.plotly-graph-div').forEach(function (d) {"
           "Plotly.Plots.resize(d); }); });</script>\n")

_CSS = """
body { font-family: Inter, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0;
       background: #f6f7fb; line-height: 1.5; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.9em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin: 1.6em 0 0.5em; border-bottom: 2px solid #dde1ea; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 0.6em 0 0.2em; }
.meta { color: #666; font-size: 0.9em; margin-bottom: 1em; }
.intro { max-width: 980px; }
.card { background: white; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,0.08);
        padding: 8px 12px; margin: 10px 0; }
.grid { display: grid; grid-template-columns: 1fr; gap: 12px; }
.grid.cols-2 { grid-template-columns: repeat(2, minmax(0, 1fr)); }
@media (max-width: 1100px) { .grid.cols-2 { grid-template-columns: 1fr; } }
.notes { color: #8a5a00; font-size: 0.9em; margin: 0.3em 0; }
.muted { color: #666; }
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "run"


def _normalise_run_dirs(run_dirs) -> dict[str, Path]:
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if isinstance(run_dirs, Mapping):
        return {str(k): Path(v) for k, v in run_dirs.items()}
    paths = [Path(p) for p in run_dirs]
    out: dict[str, Path] = {}
    for p in paths:
        name = p.resolve().name
        # two runs called "train" in different folders: name them by their parent too
        if sum(q.resolve().name == name for q in paths) > 1:
            name = f"{p.resolve().parent.name}/{name}"
        base, k = name, 2
        while name in out:
            name, k = f"{base} ({k})", k + 1
        out[name] = p
    return out


def _summary_row(run: RunData) -> dict[str, Any]:
    if run.summary is not None:
        return run.summary
    cfg = run.config
    train = figures.training_records(run.metrics)
    # the config's criteria may be [] (= the method's default); the log says what actually ran
    logged: list[str] = []
    for rec in train:
        logged += [c for c in (rec.get("loss_per_criterion") or {}) if c not in logged]
    return {"method": cfg.get("method"), "dataset": cfg.get("dataset"),
            "criteria": logged or cfg.get("criteria") or None,
            "steps": max((r["step"] for r in train), default=None)}


def _class_names(run: RunData, level: str | None) -> list[str] | None:
    names = ((run.summary or {}).get("class_names") or {})
    if level is not None and level in names:
        return list(names[level])
    return None


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def build_report_html(runs: Sequence[RunData], title: str = "RCL Lab — training report",
                      max_points: int | None = 5000, random_state: int = 0) -> str:
    """The report page of already-loaded runs, as one HTML string (plotly.js inlined once)."""
    from plotly.offline import get_plotlyjs

    config = {"displaylogo": False, "responsive": True}
    sections: list[str] = []

    def fig_html(fig, div_id: str, modebar: bool = True) -> str:
        cfg = config if modebar else {**config, "displayModeBar": False}
        return ('<div class="card">' + fig.to_html(full_html=False, include_plotlyjs=False,
                                                    config=cfg, div_id=div_id) + "</div>")

    names = [r.name for r in runs]
    slugs = {}
    for r in runs:
        s, k = _slug(r.name), 2
        while s in slugs.values():
            s, k = f"{_slug(r.name)}-{k}", k + 1
        slugs[r.name] = s

    notes = [f"<li><b>{html.escape(r.name)}</b>: {html.escape(n)}</li>" for r in runs for n in r.notes]
    if notes:
        sections.append('<div class="notes"><ul>' + "".join(notes) + "</ul></div>")

    sections.append("<h2>Results</h2>")
    table = figures.results_table({r.name: _summary_row(r) for r in runs}, title="")
    sections.append(fig_html(table, "fig-results", modebar=False))  # its modebar would cover the header
    sections.append('<p class="muted">kNN: cosine k-nearest-neighbour vote (k = 20) on frozen backbone '
                    "features; linear: a logistic-regression probe on the same features. NMI (normalised mutual "
                    "information, 1 = identical partition) against each ground-truth level: <i>k-means</i> "
                    "clusters every run's test features into as many clusters as the level has classes, the "
                    "same measure for all runs; <i>learned</i> scores the run's own learned criterion of the "
                    "nearest granularity (named under <i>learned by</i>) — a criterion with more clusters "
                    "than classes scores lower NMI even when its clusters are pure.</p>")

    sections.append("<h2>Training curves</h2>")
    sections.append('<p class="muted">The total is MoCo v3\'s symmetric loss, summed over the criteria with '
                    "their weights, so a run with more criteria has a larger total: compare runs on the "
                    "per-criterion panel (the instance curve is the same InfoNCE in every run). Clustering "
                    "criteria join the loss after a warm-up of instance-only training (<code>cluster_warmup_"
                    "epochs</code>): their curves start there, and the total jumps.</p>")
    sections.append(fig_html(figures.loss_curves({r.name: r.metrics for r in runs},
                                                      title="Loss: total and per criterion"), "fig-loss"))

    with_eval = [r for r in runs if r.eval is not None and "test_features" in r.eval]
    sections.append("<h2>Test-set features (UMAP)</h2>")
    if with_eval:
        cards = []
        for r in with_eval:
            feats = np.asarray(r.eval["test_features"])
            levels = np.asarray(r.eval.get("test_levels", np.zeros((0, feats.shape[0]), dtype=np.int64)))
            level_names = [str(x) for x in r.eval.get("level_names", [])]
            idx = _subsample(feats.shape[0], max_points, random_state)
            emb = umap_embedding(feats[idx], random_state=random_state)
            if levels.ndim == 2 and levels.shape[0] > 0:
                labels, level = levels[0][idx], (level_names[0] if level_names else None)
            else:
                labels, level = np.zeros(len(idx), dtype=np.int64), None
            shown = f"{len(idx)} of {feats.shape[0]}" if len(idx) < feats.shape[0] else f"{len(idx)}"
            sub = f"{shown} test samples" + (f", coloured by {level}" if level else "")
            fig = figures.embedding_scatter(emb.coords, labels, _class_names(r, level),
                                            title=f"{r.name} · {emb.method.upper()}", subtitle=sub,
                                            axis_name=emb.method.upper() if emb.method != "trivial" else "axis")
            cards.append(fig_html(fig, f"fig-umap-{slugs[r.name]}"))
        # a fixed column count: with auto-fit the first plot is drawn before its neighbour exists,
        # at full width, and keeps that width once the grid splits
        cols = "grid cols-2" if len(cards) > 1 else "grid"
        sections.append(f'<div class="{cols}">' + "".join(cards) + "</div>")
    else:
        sections.append('<p class="muted">No run has an eval.npz yet.</p>')

    sections.append("<h2>Learned hierarchy</h2>")
    sections.append('<p class="muted">Rows: clusters of the coarsest learned criterion, each labelled with '
                    "the ground-truth classes it holds; cells: how many test samples of each class fell in "
                    "it. The sunburst nests the finer learned clusters inside the coarse ones; green means "
                    "a cluster holds one class, red that it mixes several.</p>")
    shown_any = False
    for r in with_eval:
        crit_names = [str(x) for x in r.eval.get("criteria_names", [])]
        crit_labels = r.eval.get("criteria_test_labels")
        levels = r.eval.get("test_levels")
        if levels is None or np.asarray(levels).ndim != 2 or not crit_names or crit_labels is None:
            continue
        level_names = [str(x) for x in r.eval.get("level_names", [])]
        level = level_names[0] if level_names else None
        fig = figures.learned_hierarchy(np.asarray(crit_labels), crit_names, np.asarray(levels)[0],
                                        _class_names(r, level),
                                        title=f"{r.name}: learned criteria vs ground truth"
                                              + (f" ({level})" if level else ""))
        sections.append(fig_html(fig, f"fig-hierarchy-{slugs[r.name]}"))
        shown_any = True
    if not shown_any:
        sections.append('<p class="muted">No run has learned criteria with evaluation labels '
                        "(MoCo runs learn none).</p>")

    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    def describe(r: RunData) -> str:
        known = ", ".join(html.escape(str(v)) for v in (r.method, r.dataset) if v)
        return f"<b>{html.escape(r.name)}</b>" + (f" ({known})" if known else "")

    run_list = ", ".join(describe(r) for r in runs)
    head = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n</head>\n")
    body = (f"<body>\n<main>\n<h1>{html.escape(title)}</h1>\n"
            f"<div class=\"meta\">{len(names)} run(s): {run_list} &middot; generated {stamp}</div>\n"
            f"<div class=\"intro\">{_INTRO}</div>\n" + "\n".join(sections) + "\n</main>\n" + _RESIZE + "</body>\n</html>\n")
    return head + body


def write_report(run_dirs, out_path: str | Path, title: str = "RCL Lab — training report",
                 max_points: int | None = 5000, random_state: int = 0) -> Path:
    """Write one self-contained, offline HTML report of ``run_dirs``; return its path.

    Parameters
    ----------
    run_dirs : dict name -> path, or list of paths (or one path)
        The runs to show, in this order (the order also fixes each run's colour). A list names each
        run by its folder (by parent/folder when two folders share a name).
    out_path : path
        The HTML file to write. Parent folders are created; the file is written to a temporary file
        next to it and renamed, so a reader never sees half a report.
    title : str
        Page title.
    max_points : int or None
        At most this many test samples per run go into the UMAP (a fixed random subset), which keeps
        the layout to seconds on large test sets; ``None`` uses all.
    random_state : int
        Seed of the UMAP layout and of the subset.

    Raises
    ------
    FileNotFoundError
        For a run directory without ``metrics.jsonl`` (see :func:`load_run`).
    """
    dirs = _normalise_run_dirs(run_dirs)
    if not dirs:
        raise ValueError("run_dirs must name at least one run directory")
    runs = [load_run(path, name=name) for name, path in dirs.items()]
    page = build_report_html(runs, title=title, max_points=max_points, random_state=random_state)

    return atomic_write_text(out_path, page)
