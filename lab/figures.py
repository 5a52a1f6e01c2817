"""Figure functions of the lab: each takes data and returns a ``plotly.graph_objects.Figure``.

In plotly express's manner, nothing here displays, trains or reads files: the report
(:mod:`lab.report`), the widget panels and the notebooks pass in what they loaded and decide where
the figure goes.

Colour scheme, shared by every figure so that one run or one class looks the same everywhere:

- a run's colour is :func:`run_colors` of the run names, in the order given; its per-criterion
  curves are lighter shades of the same hue, told apart by dash style (one dash per criterion name,
  so ``proto-64`` is dotted in every run);
- a ground-truth class's colour is :func:`class_colors` of the number of classes, indexed by label,
  so class 4 has one colour in every scatter plot and heatmap axis.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "run_colors",
    "class_colors",
    "training_records",
    "loss_curves",
    "results_table",
    "embedding_scatter",
    "cluster_class_counts",
    "learned_hierarchy",
    "relation_names",
    "pair_relation",
    "hierarchy_order",
    "pull_push_map",
    "pf_ps_scatter",
    "pull_share",
]

_RUN_PALETTE = pcolors.qualitative.Plotly
_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")
_TEMPLATE = "plotly_white"
_FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)
_MISSING = "–"


# --------------------------------------------------------------------------------------------- colours

def run_colors(names: Sequence[str]) -> dict[str, str]:
    """One hex colour per run name, by position, from plotly's qualitative palette (cycled)."""
    return {name: _RUN_PALETTE[i % len(_RUN_PALETTE)] for i, name in enumerate(names)}


def class_colors(n_classes: int) -> list[str]:
    """``n_classes`` distinct colours, indexed by class label.

    Up to 10 classes get D3's category10 (the most distinct set); up to 24 Dark24; beyond that the
    colours are sampled around a cyclic scale, since no qualitative palette stays distinct that long.
    """
    if n_classes <= 0:
        return []
    if n_classes <= 10:
        return list(pcolors.qualitative.D3[:n_classes])
    if n_classes <= 24:
        return list(pcolors.qualitative.Dark24[:n_classes])
    return pcolors.sample_colorscale("Phase", [i / n_classes for i in range(n_classes)])


def _shade(hex_color: str, amount: float) -> str:
    """Mix ``hex_color`` with white by ``amount`` in [0, 1): per-criterion curves of one run."""
    r, g, b = pcolors.hex_to_rgb(hex_color)
    mix = [round(c + (255 - c) * amount) for c in (r, g, b)]
    return "rgb({},{},{})".format(*mix)


# ------------------------------------------------------------------------------------------ loss curves

def training_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The training lines of a metrics log, one per step, in step order.

    Event lines (those with an ``"event"`` key) and lines without a ``"step"`` are dropped. When a
    step appears twice — a resumed run re-logs the steps since its last checkpoint — the later line
    wins, because it belongs to the history the final model actually came from.
    """
    by_step: dict[int, Mapping[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or "event" in rec or "step" not in rec:
            continue
        by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def loss_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "Training curves") -> go.Figure:
    """Loss against step for each run: the total (solid) and every criterion's loss (dashed/dotted).

    Parameters
    ----------
    metrics : dict run name -> list of metrics records
        The parsed lines of each run's ``metrics.jsonl``, events included (they are skipped, and
        ``resume`` events are drawn as dotted vertical lines). A criterion that switches on mid-run
        (online clustering after its warm-up) starts where it first appears; no zeros are invented.
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        Three panels sharing the step axis: total losses; per-criterion losses; kNN top-1 at the
        evaluated steps (only when some record carries ``knn_top1``). Every trace has ``legendgroup`` = run name and ``meta`` =
        ``{"run": name, "series": "total" | criterion | "knn_top1"}``; hovering shows the epoch.
    """
    names = list(metrics)
    colours = run_colors(names)
    runs = {name: training_records(metrics[name]) for name in names}

    criteria: list[str] = []  # every criterion name, in order of first appearance, for dash styles
    for recs in runs.values():
        for rec in recs:
            for crit in (rec.get("loss_per_criterion") or {}):
                if crit not in criteria:
                    criteria.append(crit)
    dash_of = {c: _DASHES[i % len(_DASHES)] for i, c in enumerate(criteria)}
    shade_of = {c: 0.12 + 0.33 * (i / max(1, len(criteria) - 1)) for i, c in enumerate(criteria)}

    has_knn = any(_float(r.get("knn_top1")) is not None for recs in runs.values() for r in recs)
    # Totals and per-criterion losses get their own panels: an RCL total sums several criteria and would
    # flatten every other curve if they shared an axis.
    knn_row = 3 if has_knn else None
    fig = make_subplots(rows=3 if has_knn else 2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[0.36, 0.36, 0.28] if has_knn else [0.5, 0.5])

    for name in names:
        recs = runs[name]
        colour = colours[name]
        first = True
        series = [("total", lambda r: r.get("loss"))]
        seen = [c for c in criteria if any(c in (r.get("loss_per_criterion") or {}) for r in recs)]
        series += [(c, (lambda r, c=c: (r.get("loss_per_criterion") or {}).get(c))) for c in seen]
        for label, get in series:
            pts = [(r["step"], _float(get(r)), _float(r.get("epoch"))) for r in recs if _float(get(r)) is not None]
            if not pts:
                continue
            steps, ys, epochs = zip(*pts)
            total = label == "total"
            fig.add_trace(go.Scatter(
                x=list(steps), y=list(ys), customdata=[e if e is not None else float("nan") for e in epochs],
                mode="lines", name=label, legendgroup=name, meta={"run": name, "series": label},
                legendgrouptitle_text=name if first else None,
                line=dict(color=colour if total else _shade(colour, shade_of[label]),
                          width=2.6 if total else 2.0, dash="solid" if total else dash_of[label]),
                hovertemplate=(f"<b>{html.escape(name)}</b> · {html.escape(label)} loss<br>"
                               "step %{x}<br>epoch %{customdata:.2f}<br>loss %{y:.4f}<extra></extra>"),
            ), row=1 if total else 2, col=1)
            first = False
        knn = [(r["step"], _float(r.get("knn_top1")), _float(r.get("epoch"))) for r in recs
               if _float(r.get("knn_top1")) is not None]
        if knn:
            steps, ys, epochs = zip(*knn)
            fig.add_trace(go.Scatter(
                x=list(steps), y=list(ys), customdata=[e if e is not None else float("nan") for e in epochs],
                mode="lines+markers", name="kNN top-1", legendgroup=name,
                meta={"run": name, "series": "knn_top1"},
                legendgrouptitle_text=name if first else None,
                line=dict(color=colour, width=2), marker=dict(size=7, color=colour),
                hovertemplate=(f"<b>{html.escape(name)}</b> · kNN top-1<br>"
                               "step %{x}<br>epoch %{customdata:.2f}<br>top-1 %{y:.3f}<extra></extra>"),
            ), row=knn_row, col=1)
        # a resume restarts from the last checkpoint; marking it explains any kink in the curves
        for rec in metrics[name]:
            if isinstance(rec, Mapping) and rec.get("event") == "resume" and _float(rec.get("step")) is not None:
                fig.add_vline(x=float(rec["step"]), line=dict(color=colour, dash="dot", width=1.2),
                              row="all", col=1)
                fig.add_annotation(x=float(rec["step"]), y=1.0, yref="y domain", xref="x",
                                   text=f"resume ({html.escape(name)})", showarrow=False,
                                   yanchor="bottom", font=dict(size=10, color=colour))

    if not fig.data:
        _note(fig, "no training steps logged yet")
    fig.update_layout(
        title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT, height=820 if has_knn else 600,
        legend=dict(groupclick="toggleitem", tracegroupgap=12, font=dict(size=12)),
        margin=dict(l=70, r=20, t=70, b=60), hovermode="closest",
    )
    fig.update_yaxes(title_text="total loss", row=1, col=1)
    fig.update_yaxes(title_text="per-criterion loss", row=2, col=1)
    if has_knn:
        fig.update_yaxes(title_text="kNN top-1", row=3, col=1)
    fig.update_xaxes(title_text="step", row=3 if has_knn else 2, col=1)
    return fig


# ---------------------------------------------------------------------------------------- results table

def _fmt(value) -> str:
    if value is None or isinstance(value, bool):
        return _MISSING if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    f = _float(value)
    if f is None:
        return str(value)
    if not math.isfinite(f):
        return _MISSING
    return f"{f:.3f}"


def _levels(summaries: Mapping[str, Mapping[str, Any]], key: str) -> list[str]:
    levels: list[str] = []
    for s in summaries.values():
        order = list((s or {}).get("level_names") or []) + list(((s or {}).get(key) or {}))
        for level in order:
            if level in ((s or {}).get(key) or {}) and level not in levels:
                levels.append(level)
    return levels


def _source_text(source) -> str | None:
    """``learned_nmi_source`` is one string or a dict level -> criterion scored; one line either way."""
    if not isinstance(source, Mapping):
        return source
    values = list(dict.fromkeys(map(str, source.values())))
    return values[0] if len(values) == 1 else "; ".join(f"{lv}: {v}" for lv, v in source.items())


def _lines(text: str, width: float) -> int:
    """Rows a cell of ``text`` wraps to in a column of relative ``width`` (about 13 characters a unit)."""
    return max(1, math.ceil(len(text) / max(1.0, 13 * width)))


def results_table(summaries: Mapping[str, Mapping[str, Any] | None], title: str = "Results") -> go.Figure:
    """A table with one row per run: method, dataset, criteria, steps, kNN/linear top-1, NMI, time.

    Parameters
    ----------
    summaries : dict run name -> summary dict (the content of ``summary.json``)
        A run without a summary (interrupted before evaluation) may map to ``None`` or to a partial
        dict (e.g. method and dataset from its config); missing values show as "–".
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        One ``go.Table``. Numbers are formatted to 3 decimals (counts as integers). Per-level columns
        are the union of levels over runs, finest first: ``kNN · <level>`` (only when some dataset has
        more than one level) is kNN top-1 against that ground-truth level; ``NMI k-means · <level>``
        is k-means (as many clusters as the level has classes) on the test features — the same measure
        for every run; ``NMI learned · <level>`` scores the run's own learned criterion (``learned by``
        names it), for runs that learn criteria. The run name is written in the run's colour.
    """
    names = list(summaries)
    colours = run_colors(names)
    knn_levels = _levels(summaries, "knn_top1_per_level")
    if len(knn_levels) < 2:
        knn_levels = []  # one level: "kNN top-1" already is that level's kNN
    nmi_levels = _levels(summaries, "nmi")
    learned_levels = _levels(summaries, "learned_nmi")

    header = ["run", "method", "dataset", "criteria", "steps", "kNN top-1", "linear top-1"]
    header += [f"kNN · {lv}" for lv in knn_levels] + [f"NMI k-means · {lv}" for lv in nmi_levels]
    header += [f"NMI learned · {lv}" for lv in learned_levels]
    header += ["learned by"] if learned_levels else []
    header += ["wall s"]
    rows = []
    for name in names:
        s = summaries[name] or {}
        crit = s.get("criteria")
        row = [name, s.get("method"), s.get("dataset"),
               ", ".join(map(str, crit)) if crit else None, s.get("steps"),
               s.get("knn_top1"), s.get("linear_top1")]
        row += [(s.get("knn_top1_per_level") or {}).get(lv) for lv in knn_levels]
        row += [(s.get("nmi") or {}).get(lv) for lv in nmi_levels]
        row += [(s.get("learned_nmi") or {}).get(lv) for lv in learned_levels]
        row += [_source_text(s.get("learned_nmi_source")) or None] if learned_levels else []
        row += [s.get("wall_seconds")]
        rows.append([_fmt(v) for v in row])

    columns = [list(col) for col in zip(*rows)] if rows else [[] for _ in header]
    numeric_from = 4
    fill = [["#ffffff" if i % 2 == 0 else "#f3f5f9" for i in range(len(rows))]] * len(header)
    font_colours = [[colours[n] for n in names]] + [["#222222"] * len(rows)] * (len(header) - 1)
    widths = [1.6, 0.8, 0.9, 2.0, 0.7, 0.9, 0.9] + [0.9] * (len(knn_levels) + len(nmi_levels) + len(learned_levels))
    widths += [1.0] if learned_levels else []
    widths += [0.8]
    align = ["left"] * numeric_from + ["right"] * (len(header) - numeric_from)
    if learned_levels:
        align[-2] = "left"
    # Rows grow with wrapped text; size the figure to them so no row is cut off.
    heights = [22 + 17 * max(_lines(v, w) for v, w in zip(row, widths)) for row in rows]
    header_lines = max(_lines(h, w) for h, w in zip(header, widths))
    header_h = 18 + 17 * header_lines
    fig = go.Figure(go.Table(
        header=dict(values=[f"<b>{html.escape(h)}</b>" for h in header], fill_color="#2f3b52",
                    font=dict(color="white", size=13), align="center", height=header_h),
        cells=dict(values=columns, fill_color=fill, font=dict(color=font_colours, size=13), height=30,
                   align=align),
        columnwidth=widths,
    ))
    if not rows:
        _note(fig, "no runs")
    top = 56 if title else 8
    # a Table does not shrink to its rows: size the figure to header + rows, or it pads with blank space
    fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT,
                      height=top + header_h + sum(heights or [30]) + 28, margin=dict(l=10, r=10, t=top, b=8))
    return fig


# -------------------------------------------------------------------------------------- embedding plot

def _class_name(label, class_names) -> str:
    if class_names is not None:
        try:
            if isinstance(class_names, Mapping):
                if label in class_names:
                    return str(class_names[label])
            elif 0 <= int(label) < len(class_names):
                return str(class_names[int(label)])
        except (TypeError, ValueError):
            pass
    return str(label)


def _palette_index(labels: np.ndarray, class_names) -> tuple[dict, int]:
    """Map each label to a colour slot: by value for integer labels (stable across runs), else by order."""
    uniq = list(np.unique(labels))
    ints = np.issubdtype(labels.dtype, np.integer) and (len(uniq) == 0 or min(uniq) >= 0)
    if ints:
        size = max(int(max(uniq)) + 1 if uniq else 0,
                   len(class_names) if class_names is not None and not isinstance(class_names, Mapping) else 0)
        return {u: int(u) for u in uniq}, size
    return {u: i for i, u in enumerate(uniq)}, len(uniq)


def embedding_scatter(coords, labels, class_names=None, title: str = "", axis_name: str = "UMAP",
                      subtitle: str | None = None) -> go.Figure:
    """A 2-D scatter of ``coords`` (N, 2) coloured by ``labels`` (N,), one legend entry per class.

    Parameters
    ----------
    coords : array-like, shape (N, 2)
        A layout, e.g. ``umap_embedding(features).coords``.
    labels : array-like, shape (N,)
        Class of each point (ints index ``class_names``; other values are shown as they are).
    class_names : sequence or dict, optional
        Display name per label (``class_names[label]``); missing ones fall back to the label itself.
    title : str
        Figure title.
    subtitle : str, optional
        A second, smaller title line (e.g. how many samples, which level colours them).
    axis_name : str
        Name of the layout method for the axis titles ("UMAP", "PCA"): the axes of such layouts have
        no units, so only their names are shown.
    """
    xy = np.asarray(coords, dtype=np.float64)
    lab = np.asarray(labels)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must have shape (N, 2), got {xy.shape}")
    if lab.ndim != 1 or lab.shape[0] != xy.shape[0]:
        raise ValueError(f"labels must have shape (N,) = ({xy.shape[0]},), got {lab.shape}")
    if not np.isfinite(xy).all():
        raise ValueError("coords must be finite (no NaN/Inf)")

    slot, size = _palette_index(lab, class_names)
    colours = class_colors(max(size, 1))
    fig = go.Figure()
    index = np.arange(len(lab))
    for u in np.unique(lab):
        mask = lab == u
        name = _class_name(u, class_names)
        fig.add_trace(go.Scatter(
            x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=name, customdata=index[mask],
            meta={"label": u.item() if hasattr(u, "item") else u},
            marker=dict(size=6, color=colours[slot[u] % len(colours)], opacity=0.8,
                        line=dict(width=0.4, color="white")),
            hovertemplate=f"class {html.escape(name)}<br>sample %{{customdata}}<extra></extra>",
        ))
    if not fig.data:
        _note(fig, "no points")
    fig.update_layout(
        title=dict(text=title, x=0.01, subtitle=dict(text=subtitle or "")), template=_TEMPLATE,
        font=_FONT, height=540,
        legend=dict(title_text="class", itemsizing="constant", font=dict(size=12)),
        margin=dict(l=40, r=10, t=80 if subtitle else 60, b=40),
    )
    fig.update_xaxes(title_text=f"{axis_name} 1", showticklabels=False, zeroline=False)
    fig.update_yaxes(title_text=f"{axis_name} 2", showticklabels=False, zeroline=False,
                     scaleanchor="x", scaleratio=1)
    return fig


# ----------------------------------------------------------------------------------- learned hierarchy

def cluster_class_counts(cluster_labels, true_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency counts of learned clusters against ground-truth classes.

    Returns ``(cluster_ids, class_ids, counts)`` with ``counts[i, j]`` the number of samples in
    cluster ``cluster_ids[i]`` whose true class is ``class_ids[j]`` (ids sorted ascending).
    """
    c = np.asarray(cluster_labels).ravel()
    t = np.asarray(true_labels).ravel()
    if c.shape != t.shape:
        raise ValueError(f"cluster_labels and true_labels must have the same length, got {c.shape} and {t.shape}")
    cluster_ids, ci = np.unique(c, return_inverse=True)
    class_ids, ti = np.unique(t, return_inverse=True)
    counts = np.zeros((len(cluster_ids), len(class_ids)), dtype=np.int64)
    np.add.at(counts, (ci, ti), 1)
    return cluster_ids, class_ids, counts


def _composition(row: np.ndarray, class_ids, class_names, min_share=0.15, top=3) -> str:
    """The classes a cluster is made of, biggest first: "4 (52%), 9 (40%)"."""
    total = row.sum()
    if total == 0:
        return ""
    order = np.argsort(-row, kind="stable")
    parts = [f"{_class_name(class_ids[j], class_names)} ({row[j] / total:.0%})"
             for k, j in enumerate(order[:top]) if k == 0 or row[j] / total >= min_share]
    return ", ".join(parts)


def _cluster_label(cid) -> str:
    return "unsure" if _float(cid) is not None and _float(cid) < 0 else f"#{cid}"


def learned_hierarchy(criteria_labels, criteria_names, true_labels, true_class_names=None,
                      title: str = "Learned hierarchy") -> go.Figure:
    """What the learned clusters grouped: coarsest learned cluster x ground-truth class, plus a sunburst.

    Parameters
    ----------
    criteria_labels : array-like, shape (C, N)
        Cluster of each sample under each learned criterion, ordered fine -> coarse (e.g. the
        ``criteria_test_labels`` of ``eval.npz``). C may be 0 (MoCo learns no criteria): the figure
        then only carries a note saying so.
    criteria_names : sequence of str, length C
        Names of the criteria (``"proto-64"``, ``"proto-16"``, ``"kmeans-32"`` ...).
    true_labels : array-like, shape (N,)
        Ground-truth class of each sample (usually the finest level).
    true_class_names : sequence or dict, optional
        Display name per ground-truth label.
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        Left: a heatmap, one row per cluster of the coarsest criterion, one column per class; cell
        text and ``customdata`` are counts, colour is the share of the row (so a small cluster's
        make-up is as visible as a big one's). Rows are sorted by dominant class, purest first, so
        clusters holding the same classes sit together, and each row is labelled with its make-up
        ("#3 → 4 (52%), 9 (40%)"). Right: a sunburst from the coarsest criterion (centre) to the finest
        (rim), sectors sized by count and coloured by purity (share of the node's majority class).
        Cluster labels < 0 are shown as "unsure".
    """
    t = np.asarray(true_labels).ravel()
    raw = np.asarray(criteria_labels)
    names = [str(n) for n in (list(criteria_names) if criteria_names is not None else [])]
    if raw.size == 0 and len(names) == 0:
        fig = go.Figure()
        _note(fig, "No learned criteria in this run (e.g. MoCo uses the instance criterion only),<br>"
                   "so there is no learned hierarchy to show.")
        fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT, height=260,
                          xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    if raw.ndim == 1:
        raw = raw[None, :]
    if raw.ndim == 2 and raw.shape[1] == 0 and t.shape[0] == 0:
        fig = go.Figure()
        _note(fig, "No samples to compare the learned criteria with.")
        fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT, height=260,
                          xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    if raw.ndim != 2:
        raise ValueError(f"criteria_labels must have shape (C, N), got {raw.shape}")
    if raw.shape[1] != t.shape[0]:
        raise ValueError(f"criteria_labels must have N = len(true_labels) = {t.shape[0]} columns, "
                         f"got shape {raw.shape}")
    if len(names) != raw.shape[0]:
        raise ValueError(f"criteria_names must name each of the {raw.shape[0]} criteria, got {names}")

    coarse_name = names[-1]
    cluster_ids, class_ids, counts = cluster_class_counts(raw[-1], t)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    dominant = shares.argmax(axis=1)
    unsure = np.array([_cluster_label(c) == "unsure" for c in cluster_ids])
    # by dominant class, purest first; the "unsure" bucket is no cluster, so it goes last
    order = np.lexsort((-shares.max(axis=1), dominant, unsure))
    counts, shares, cluster_ids = counts[order], shares[order], cluster_ids[order]

    row_labels = [f"{_cluster_label(cid)} → {_composition(counts[i], class_ids, true_class_names)}"
                  for i, cid in enumerate(cluster_ids)]
    slot, size = _palette_index(class_ids, true_class_names)  # the scatter plots' class colours
    col_colours = class_colors(max(size, 1))
    col_labels = [_class_name(c, true_class_names) for c in class_ids]
    col_ticks = [f'<span style="color:{col_colours[slot[c] % len(col_colours)]}"><b>{html.escape(name)}</b></span>'
                 for c, name in zip(class_ids, col_labels)]
    show_text = counts.shape[0] <= 40 and counts.shape[1] <= 30

    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.1,
                        specs=[[{"type": "xy"}, {"type": "domain"}]],
                        subplot_titles=(f"{coarse_name} clusters × ground-truth class",
                                        " → ".join(reversed(names)) + " (colour: purity)"))
    hover = [[f"{html.escape(coarse_name)} {_cluster_label(cid)}: {counts[i, j]} samples of class "
              f"{html.escape(col_labels[j])}<br>{shares[i, j]:.0%} of the cluster ({counts[i].sum()} samples)"
              for j in range(len(class_ids))] for i, cid in enumerate(cluster_ids)]
    fig.add_trace(go.Heatmap(
        z=shares, x=list(range(len(class_ids))), y=list(range(len(cluster_ids))),
        # empty cells stay blank so the few non-zero counts of each row stand out
        text=[[str(v) if v else "" for v in row] for row in counts], customdata=counts, hovertext=hover,
        texttemplate="%{text}" if show_text else None,
        textfont=dict(size=11), colorscale="Blues", zmin=0, zmax=1, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="share", side="top"), x=0.53, xanchor="left", len=0.8, thickness=12),
        meta={"criterion": coarse_name, "cluster_ids": [c.item() for c in cluster_ids],
              "class_ids": [c.item() for c in class_ids]},
        hovertemplate="%{hovertext}<extra></extra>",
    ), row=1, col=1)
    # positions are indices so that two classes with the same display name never merge into one column
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(class_ids))), ticktext=col_ticks,
                     title_text="ground-truth class", side="bottom", row=1, col=1)
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(cluster_ids))),
                     ticktext=[html.escape(r) for r in row_labels], autorange="reversed",
                     title_text=f"{coarse_name} cluster → make-up", row=1, col=1)

    ids, labels, parents, values, purity, hover = _sunburst_nodes(raw, names, t, true_class_names)
    fig.add_trace(go.Sunburst(
        ids=ids, labels=labels, parents=parents, values=values, branchvalues="total",
        marker=dict(colors=purity, colorscale="RdYlGn", cmin=0, cmax=1,
                    colorbar=dict(title=dict(text="purity", side="top"), x=1.0, xanchor="left", len=0.8,
                                  thickness=12)),
        customdata=hover, hovertemplate="%{customdata}<extra></extra>", insidetextorientation="radial",
        maxdepth=-1,
    ), row=1, col=2)

    fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT,
                      height=max(460, 140 + 26 * len(cluster_ids)), margin=dict(l=20, r=40, t=90, b=60))
    return fig


def _sunburst_nodes(raw: np.ndarray, names: list[str], true: np.ndarray, class_names):
    """Nodes of the coarse -> fine sunburst, one per distinct label path (robust to imperfect nesting)."""
    class_ids, ti = np.unique(true, return_inverse=True)
    ids, labels, parents, values, purity, hover = [], [], [], [], [], []
    levels = raw[::-1]  # coarse first
    for depth in range(levels.shape[0]):
        paths, inverse = np.unique(levels[: depth + 1].T, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        counts = np.zeros((len(paths), len(class_ids)), dtype=np.int64)
        np.add.at(counts, (inverse, ti), 1)
        crit = names[len(names) - 1 - depth]
        for p, path in enumerate(paths):
            node = "/".join(str(v) for v in path)
            ids.append(node)
            parents.append("/".join(str(v) for v in path[:-1]))
            n = int(counts[p].sum())
            # Inner ring: the coarse cluster's id (as on the heatmap's rows); outer rings: the class a finer
            # cluster mostly holds, so the two levels cannot be confused.
            labels.append(_cluster_label(path[-1]) if depth == 0 else
                          _class_name(class_ids[int(counts[p].argmax())], class_names) if n else "")
            values.append(n)
            purity.append(float(counts[p].max() / n) if n else 0.0)
            hover.append(f"{html.escape(crit)} {_cluster_label(path[-1])}: {n} samples<br>"
                         f"purity {purity[-1]:.2f}<br>{html.escape(_composition(counts[p], class_ids, class_names))}")
    return ids, labels, parents, values, purity, hover


# ------------------------------------------------------------------------------------------- helpers

def _note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15, color="#555555"))


# ------------------------------------------------------------------------------- pull / push decisions

_PULL, _PUSH = "#2166ac", "#b2182b"
_RELATION_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


def _np(x) -> np.ndarray:
    """A tensor or array as a NumPy array (CPU, no grad), without importing torch here."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def relation_names(criteria_names: Sequence[str]) -> list[str]:
    """What it means for a pair to agree first at criterion i, in words: instance -> "same image"; for
    three criteria the next two read "same fine cluster", "same coarse cluster"; else "same <name>"."""
    names = list(criteria_names)
    out = []
    for i, n in enumerate(names):
        if n == "instance":
            out.append("same image")
        elif len(names) == 3 and i in (1, 2):
            out.append("same fine cluster" if i == 1 else "same coarse cluster")
        else:
            out.append(f"same {n}")
    return out


def pair_relation(agreement: np.ndarray) -> np.ndarray:
    """(N, M) index of the finest criterion a pair agrees under, or H when it agrees under none."""
    agreement = np.asarray(agreement, dtype=bool)
    h = agreement.shape[0]
    first = np.where(agreement.any(0), agreement.argmax(0), h)
    return first


def hierarchy_order(labels) -> np.ndarray:
    """Positions sorted coarse -> fine by labels (H, N), so that clusters sit in blocks."""
    labels = _np(labels)
    return np.lexsort(labels)  # lexsort's last key is the primary one: the coarsest row


def _pairs(info, criteria_names):
    """What every pair figure reads from an explanation: P_s, P_f, agreement (H, N, M), criterion names,
    the valid-pair mask (self pairs out in self-contrast) and each pair's relation index."""
    ps, pf, agree = _np(info.relativeness), _np(info.feature_similarity), _np(info.agreement).astype(bool)
    h, n, m = agree.shape
    names = list(criteria_names) if criteria_names is not None else [f"c{i}" for i in range(h)]
    if len(names) != h:
        raise ValueError(f"criteria_names must have {h} names (one per criterion), got {len(names)}")
    valid = np.ones((n, m), dtype=bool)
    if info.self_contrast:
        np.fill_diagonal(valid, False)
    return ps, pf, agree, names, valid, pair_relation(agree)


def pull_push_map(info, criteria_names: Sequence[str] | None = None, order: Sequence[int] | None = None,
                  key_order: Sequence[int] | None = None, title: str = "Pull / push: P_s − P_f") -> go.Figure:
    """Heatmap of ``info.relativeness − info.feature_similarity`` for every (anchor, key) pair.

    Parameters
    ----------
    info : RCLExplanation
        From ``RelativeContrastiveLoss.explain``.
    criteria_names : names of the H criteria (fine -> coarse), for the hover text; default ``c0..``.
    order, key_order : row (anchor) and column (key) orders; e.g. :func:`hierarchy_order` of the labels.
        Default: as given (columns follow ``order`` in self-contrast).

    Returns
    -------
    go.Figure
        One ``go.Heatmap`` whose ``z`` is exactly ``relativeness − feature_similarity`` (rows and columns
        reordered as asked). Positive (P_s > P_f, blue) is pulled, negative (red) pushed; the colour
        scale is centred at 0 and its two sides are labelled pull and push. Hover names the pair's
        relation (same image / same fine cluster / same coarse cluster / unrelated) and its agreement
        under each criterion.
    """
    ps, pf, agree, names, _, relation = _pairs(info, criteria_names)
    h, n, m = agree.shape
    rows = np.arange(n) if order is None else np.asarray(order)
    cols = (rows if info.self_contrast and key_order is None else
            np.arange(m) if key_order is None else np.asarray(key_order))
    z = (ps - pf)[np.ix_(rows, cols)]
    rel_words = relation_names(names) + ["unrelated"]
    relation = relation[np.ix_(rows, cols)]
    marks = np.where(agree[:, rows][:, :, cols], "✓", "✗")  # (H, n, m)
    hover = np.empty((len(rows), len(cols)), dtype=object)
    for a in range(len(rows)):
        for b in range(len(cols)):
            crit = " ".join(f"{names[i]} {marks[i, a, b]}" for i in range(h))
            self_pair = info.self_contrast and rows[a] == cols[b]
            hover[a, b] = (f"anchor {rows[a]} · key {cols[b]}<br>"
                           + ("self pair (excluded)" if self_pair else rel_words[relation[a, b]])
                           + f"<br>{crit}<br>P_s {ps[rows[a], cols[b]]:.4f} · P_f {pf[rows[a], cols[b]]:.4f}")
    span = float(np.abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in cols], y=[str(r) for r in rows], zmid=0.0, zmin=-span, zmax=span,
        colorscale=[[0.0, _PUSH], [0.5, "#f7f7f7"], [1.0, _PULL]], customdata=hover,
        hovertemplate="%{customdata}<br>P_s − P_f %{z:.4f}<extra></extra>",
        colorbar=dict(title=dict(text="P_s − P_f"), tickvals=[-span, 0, span],
                      ticktext=[f"push ({-span:.2g})", "0", f"pull ({span:.2g})"]),
    ))
    fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT, height=560,
                      xaxis=dict(title="key", type="category"), yaxis=dict(title="anchor", type="category",
                                                                           autorange="reversed"))
    return fig


def pf_ps_scatter(info, criteria_names: Sequence[str] | None = None,
                  title: str = "Feature similarity P_f against relativeness P_s") -> go.Figure:
    """Every (anchor, key) pair as a point (P_f, P_s), coloured by relation, with the diagonal.

    Above the diagonal (P_s > P_f) the loss pulls the pair; below it pushes. Self pairs are left out.
    One trace per relation, named as in :func:`relation_names` plus "unrelated".
    """
    ps, pf, agree, names, valid, relation = _pairs(info, criteria_names)
    h = agree.shape[0]
    words = relation_names(names) + ["unrelated"]
    fig = go.Figure()
    top = float(max(ps[valid].max(initial=0), pf[valid].max(initial=0))) * 1.05 or 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="P_f = P_s",
                             line=dict(color="#555", dash="dash", width=1.5), hoverinfo="skip"))
    for r, word in enumerate(words):
        sel = valid & (relation == r)
        if not sel.any():
            continue
        colour = "#9e9e9e" if r == h else _RELATION_COLOURS[r % len(_RELATION_COLOURS)]
        a, b = np.nonzero(sel)
        fig.add_trace(go.Scattergl(
            x=pf[sel], y=ps[sel], mode="markers", name=word, meta={"relation": word},
            marker=dict(size=6, color=colour, opacity=0.75), customdata=np.stack([a, b], 1),
            hovertemplate=(f"{html.escape(word)}<br>anchor %{{customdata[0]}} · key %{{customdata[1]}}<br>"
                           "P_f %{x:.4f} · P_s %{y:.4f}<extra></extra>")))
    fig.add_annotation(x=0.02 * top, y=0.95 * top, text="pulled (P_s > P_f)", showarrow=False, xanchor="left",
                       font=dict(color=_PULL))
    fig.add_annotation(x=0.95 * top, y=0.03 * top, text="pushed (P_s < P_f)", showarrow=False, xanchor="right",
                       font=dict(color=_PUSH))
    fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT, height=520,
                      xaxis=dict(title="P_f (feature similarity)", range=[0, top]),
                      yaxis=dict(title="P_s (relativeness)", range=[0, top]))
    return fig


def pull_share(infos: Mapping[str, Any], criteria_names: Sequence[str],
               title: str = "Share of pairs pulled, by relation") -> go.Figure:
    """Grouped bars: for each relation (same image, same fine cluster, …, unrelated), the share of its
    pairs that each loss pulls. ``infos`` maps a loss's name to its ``explain()`` result on the same
    batch; the relation of a pair comes from the first explanation with all ``criteria_names``
    (typically RCL's), so a typical contrastive loss (instance only) can sit beside it.
    """
    names = list(criteria_names)
    full = next((i for i in infos.values() if _np(i.agreement).shape[0] == len(names)), None)
    if full is None:
        raise ValueError(f"no explanation in infos has the {len(names)} criteria {names}")
    _, _, agree, names, valid, relation = _pairs(full, names)
    h, n, m = agree.shape
    words = relation_names(names) + ["unrelated"]
    present = [r for r in range(h + 1) if (valid & (relation == r)).any()]
    colours = run_colors(list(infos))
    fig = go.Figure()
    for loss_name, info in infos.items():
        pull = _np(info.pull).astype(bool)
        if pull.shape != (n, m):
            raise ValueError(f"explanation {loss_name!r} is for a {pull.shape} batch, expected {(n, m)}")
        shares = [float(pull[valid & (relation == r)].mean()) for r in present]
        counts = [int((valid & (relation == r)).sum()) for r in present]
        fig.add_trace(go.Bar(x=[words[r] for r in present], y=shares, name=loss_name, meta={"loss": loss_name},
                             marker_color=colours[loss_name], customdata=counts, text=[f"{s:.0%}" for s in shares],
                             textposition="outside",
                             hovertemplate=f"{html.escape(loss_name)}<br>%{{x}}: %{{y:.1%}} of %{{customdata}} "
                                           "pairs pulled<extra></extra>"))
    fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, font=_FONT, barmode="group", height=420,
                      yaxis=dict(title="pairs pulled", tickformat=".0%", range=[0, 1.12]),
                      xaxis=dict(title="relation of the pair"))
    return fig
