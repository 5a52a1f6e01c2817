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

import contextlib
import contextvars
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
    "gradient_field",
    "level_embeddings",
    "prototype_dendrogram",
    "run_comparison",
    "criteria_agreement",
    "quality_comparison",
    "QUALITY_METRICS",
    "without_repeated_coarse",
    "speed_growth",
]

_RUN_PALETTE = pcolors.qualitative.Plotly
_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")
_TEMPLATE = "plotly_white"
# Set by template_already_sent(): figures built for a widget that already has the template skip it
# (building a template costs ~10 ms per figure, most of a slider update's budget).
_SKIP_TEMPLATE: contextvars.ContextVar[bool] = contextvars.ContextVar("lab_skip_template", default=False)


def _template():
    return None if _SKIP_TEMPLATE.get() else _TEMPLATE


@contextlib.contextmanager
def template_already_sent():
    """Within this block, figure functions leave the template out: for panels that update a
    ``FigureWidget`` which already carries it (see :func:`lab.panels.sync_figure`)."""
    token = _SKIP_TEMPLATE.set(True)
    try:
        yield
    finally:
        _SKIP_TEMPLATE.reset(token)
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


def _event_text(rec: Mapping[str, Any]) -> tuple[str, str]:
    """A ``change`` event in a few words ("weights, temperature") and in full, for the hover."""
    keys = [k for k in rec if k not in ("event", "step", "epoch")]
    full = "<br>".join(f"{html.escape(str(k))} = {html.escape(str(rec[k]))}" for k in keys)
    return ", ".join(map(str, keys)) or "settings", full


def _event_annotations(fig: go.Figure, marks, colours, runs, several: bool) -> int:
    """Label the event lines above the top panel, stacking labels that would overlap; returns the rows used."""
    steps = [float(r["step"]) for recs in runs.values() for r in recs] + [m[0] for m in marks]
    span = (max(steps) - min(steps)) or 1.0 if steps else 1.0
    lane_end: list[float] = []  # right end (in steps) of the last label of each row
    for (step, text, hover), who in sorted(marks.items(), key=lambda kv: kv[0][0]):
        label = text + (f" ({', '.join(who)})" if several or text == "resume" else "")
        width = span * (6.0 * len(label) + 8) / 1000  # about 6 px a character on a ~1000 px wide panel
        lane = next((i for i, end in enumerate(lane_end) if end < step), len(lane_end))
        if lane == len(lane_end):
            lane_end.append(0.0)
        lane_end[lane] = step + width
        fig.add_annotation(x=step, y=1.0, yref="y domain", xref="x", text=html.escape(label), showarrow=False,
                           xanchor="left", xshift=2, yanchor="bottom", yshift=14 * lane,
                           font=dict(size=10, color=colours[who[0]] if len(who) == 1 else "#444444"),
                           hovertext=f"step {step:g}<br>{hover}" if hover else None)
    return len(lane_end)


def loss_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "Training curves") -> go.Figure:
    """Loss against step for each run: the total (solid) and every criterion's loss (dashed/dotted).

    Parameters
    ----------
    metrics : dict run name -> list of metrics records
        The parsed lines of each run's ``metrics.jsonl``, events included. Training lines are drawn;
        ``resume`` events are dotted vertical lines and ``change`` events (a setting changed mid-run,
        ``{"event": "change", "step": S, "weights": ...}``) dash-dot vertical lines annotated with the
        names of what changed. A criterion that switches on mid-run (online clustering after its
        warm-up) starts where it first appears; no zeros are invented. Records may carry ``excess``,
        W·KL(P_s‖P_f): the part of the softmax loss above its floor W·H(P_s), which training can still
        remove.
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        Panels sharing the step axis: total losses; per-criterion losses; the excess (only when some
        record carries ``excess``); kNN top-1 at the evaluated steps (only when some record carries
        ``knn_top1``). Every trace has ``legendgroup`` = run name and ``meta`` =
        ``{"run": name, "series": "total" | criterion | "excess" | "knn_top1"}``; hovering shows the epoch.
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
    has_excess = any(_float(r.get("excess")) is not None for recs in runs.values() for r in recs)
    # Totals and per-criterion losses get their own panels: an RCL total sums several criteria and would
    # flatten every other curve if they shared an axis.
    excess_row = 3 if has_excess else None
    knn_row = (4 if has_excess else 3) if has_knn else None
    n_rows = 2 + has_excess + has_knn
    heights = {2: [0.5, 0.5], 3: [0.36, 0.36, 0.28], 4: [0.3, 0.3, 0.2, 0.2]}[n_rows]
    fig = make_subplots(rows=n_rows, cols=1, shared_xaxes=True, vertical_spacing=0.06 if n_rows < 4 else 0.05,
                        row_heights=heights)
    marks: dict[tuple[float, str, str], list[str]] = {}  # (step, text, hover) -> runs, one label for all of them

    def extra_line(name, recs, key, label, row, unit, fmt, first):
        pts = [(r["step"], _float(r.get(key)), _float(r.get("epoch"))) for r in recs if _float(r.get(key)) is not None]
        if not pts:
            return first
        steps, ys, epochs = zip(*pts)
        fig.add_trace(go.Scatter(
            x=list(steps), y=list(ys), customdata=[e if e is not None else float("nan") for e in epochs],
            mode="lines+markers" if len(pts) <= 60 else "lines", name=label, legendgroup=name,
            meta={"run": name, "series": key}, legendgrouptitle_text=name if first else None,
            line=dict(color=colours[name], width=2), marker=dict(size=6, color=colours[name]),
            hovertemplate=(f"<b>{html.escape(name)}</b> · {html.escape(label)}<br>"
                           f"step %{{x}}<br>epoch %{{customdata:.2f}}<br>{unit} %{{y:{fmt}}}<extra></extra>"),
        ), row=row, col=1)
        return False

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
        if has_excess:
            first = extra_line(name, recs, "excess", "excess W·KL", excess_row, "excess", ".4f", first)
        if has_knn:
            extra_line(name, recs, "knn_top1", "kNN top-1", knn_row, "top-1", ".3f", first)
        # a resume restarts from the last checkpoint, a change alters the loss mid-run: marking them
        # explains any kink in the curves
        for rec in metrics[name]:
            if not isinstance(rec, Mapping) or _float(rec.get("step")) is None:
                continue
            step = float(rec["step"])
            if rec.get("event") == "resume":
                fig.add_vline(x=step, line=dict(color=colour, dash="dot", width=1.2), row="all", col=1)
                marks.setdefault((step, "resume", ""), []).append(name)
            elif rec.get("event") == "change":
                short, full = _event_text(rec)
                fig.add_vline(x=step, line=dict(color=colour, dash="dashdot", width=1.4), row="all", col=1)
                marks.setdefault((step, f"change: {short}", full), []).append(name)
    lanes = _event_annotations(fig, marks, colours, runs, several=len(names) > 1)

    if not fig.data:
        _note(fig, "no training steps logged yet")
    fig.update_layout(
        title=dict(text=title, x=0.01), template=_template(), font=_FONT,
        height={2: 600, 3: 820, 4: 980}[n_rows],
        legend=dict(groupclick="toggleitem", tracegroupgap=12, font=dict(size=12)),
        margin=dict(l=70, r=20, t=70 + 14 * max(0, lanes - 1), b=60), hovermode="closest",
    )
    fig.update_yaxes(title_text="total loss", row=1, col=1)
    fig.update_yaxes(title_text="per-criterion loss", row=2, col=1)
    if has_excess:
        fig.update_yaxes(title_text="excess W·KL(P_s‖P_f)", row=excess_row, col=1)
    if has_knn:
        fig.update_yaxes(title_text="kNN top-1", row=knn_row, col=1)
    fig.update_xaxes(title_text="step", row=n_rows, col=1)
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
    """A table with one row per run: method, dataset, criteria, steps, kNN/linear top-1, faithfulness (when
    the summaries have it), NMI, time.

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

    faithful = any(isinstance(s, Mapping) and s.get("faithfulness") is not None for s in summaries.values())
    header = ["run", "method", "dataset", "criteria", "steps", "kNN top-1", "linear top-1"]
    header += ["faithfulness"] if faithful else []
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
        row += [s.get("faithfulness")] if faithful else []
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
    widths = [1.6, 0.8, 0.9, 2.0, 0.7, 0.9, 0.9] + [0.9] * (int(faithful) + len(knn_levels) + len(nmi_levels) + len(learned_levels))
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
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT,
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
        title=dict(text=title, x=0.01, subtitle=dict(text=subtitle or "")), template=_template(),
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
        fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, height=260,
                          xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    if raw.ndim == 1:
        raw = raw[None, :]
    if raw.ndim == 2 and raw.shape[1] == 0 and t.shape[0] == 0:
        fig = go.Figure()
        _note(fig, "No samples to compare the learned criteria with.")
        fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, height=260,
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

    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT,
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
                  key_order: Sequence[int] | None = None, title: str = "Pull / push: P_s − P_f",
                  hover=None, sample_names: Sequence[str] | None = None) -> go.Figure:
    """Heatmap of ``info.relativeness − info.feature_similarity`` for every (anchor, key) pair.

    Parameters
    ----------
    info : RCLExplanation
        From ``RelativeContrastiveLoss.explain``.
    criteria_names : names of the H criteria (fine -> coarse), for the hover text; default ``c0..``.
    order, key_order : row (anchor) and column (key) orders; e.g. :func:`hierarchy_order` of the labels.
        Default: as given (columns follow ``order`` in self-contrast).
    hover : None (build the hover texts), or the texts of an earlier call with the same labels and
        orders, or False (leave ``customdata`` out: a panel that keeps the texts it already sent).
    sample_names : a name per sample (e.g. its fine cluster, "A1"), shown on the axes as
        ``"A1 · 3"`` (name and index); default the indices alone.

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
    if hover is None:
        hover = _pair_hover(agree, relation, names, rows, cols, info.self_contrast)
    elif hover is not False:
        hover = np.asarray(hover, dtype=object)
        if hover.shape != z.shape:
            raise ValueError(f"hover must be the {z.shape} texts of an earlier call, got shape {hover.shape}")
    if sample_names is not None and len(sample_names) != max(n, m if not info.self_contrast else n):
        raise ValueError(f"sample_names must name every sample ({max(n, m)}), got {len(sample_names)}")

    def axis_text(idx):  # category axes: every label must be unique, hence the index
        return [str(i) if sample_names is None else f"{sample_names[i]} · {i}" for i in idx]

    span = float(np.abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=axis_text(cols), y=axis_text(rows), zmid=0.0, zmin=-span, zmax=span,
        colorscale=[[0.0, _PUSH], [0.5, "#f7f7f7"], [1.0, _PULL]], customdata=None if hover is False else hover,
        hovertemplate="%{customdata}<br>P_s − P_f %{z:.4f}<extra></extra>",
        colorbar=dict(title=dict(text="P_s − P_f", side="right"), tickvals=[-span, 0, span],
                      ticktext=[f"push ({-span:.2g})", "0", f"pull ({span:.2g})"]),
    ))
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, height=560,
                      xaxis=dict(title="key", type="category"), yaxis=dict(title="anchor", type="category",
                                                                           autorange="reversed"))
    return fig


def _pair_hover(agree: np.ndarray, relation: np.ndarray, names: Sequence[str], rows: np.ndarray, cols: np.ndarray,
                self_contrast: bool) -> np.ndarray:
    """(n, m) hover texts: anchor and key, the pair's relation in words, its agreement per criterion.
    Built with object-array operations: a Python loop over 65k pairs is what made a slider slow."""
    words = np.array(relation_names(names) + ["unrelated"], dtype=object)
    text = (np.array([f"anchor {r} · key " for r in rows], dtype=object)[:, None]
            + np.array([f"{c}<br>" for c in cols], dtype=object)[None, :])
    rel = words[relation[np.ix_(rows, cols)]]
    if self_contrast:
        rel = np.where(rows[:, None] == cols[None, :], "self pair (excluded)", rel).astype(object)
    text = text + rel
    for i, name in enumerate(names):
        sep = "<br>" if i == 0 else " "
        text = text + np.where(agree[i][np.ix_(rows, cols)], f"{sep}{name} ✓", f"{sep}{name} ✗").astype(object)
    return text


def pf_ps_scatter(info, criteria_names: Sequence[str] | None = None,
                  title: str = "Feature similarity P_f against relativeness P_s",
                  max_points: int = 20_000) -> go.Figure:
    """Every (anchor, key) pair as a point (P_f, P_s), coloured by relation, with the diagonal.

    Above the diagonal (P_s > P_f) the loss pulls the pair; below it pushes. Self pairs are left out.
    One trace per relation, named as in :func:`relation_names` plus "unrelated". A batch with more
    than ``max_points`` pairs (a 1024 batch has a million) shows an even sample of each relation
    (at most ``max_points`` / relations each, fixed seed), and the subtitle says so.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be an integer >= 1, got {max_points!r}")
    ps, pf, agree, names, valid, relation = _pairs(info, criteria_names)
    h = agree.shape[0]
    words = relation_names(names) + ["unrelated"]
    present = [r for r in range(h + 1) if (valid & (relation == r)).any()]
    quota = max(1, max_points // max(1, len(present))) if int(valid.sum()) > max_points else None
    rng = np.random.default_rng(0)
    shown = 0
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
        if quota is not None and a.size > quota:
            keep = np.sort(rng.choice(a.size, quota, replace=False))
            a, b = a[keep], b[keep]
        shown += a.size
        fig.add_trace(go.Scattergl(
            x=pf[a, b], y=ps[a, b], mode="markers", name=word, meta={"relation": word, "pairs": int(sel.sum())},
            marker=dict(size=6, color=colour, opacity=0.75), customdata=np.stack([a, b], 1),
            hovertemplate=(f"{html.escape(word)}<br>anchor %{{customdata[0]}} · key %{{customdata[1]}}<br>"
                           "P_f %{x:.4f} · P_s %{y:.4f}<extra></extra>")))
    fig.add_annotation(x=0.02 * top, y=0.95 * top, text="pulled (P_s > P_f)", showarrow=False, xanchor="left",
                       font=dict(color=_PULL))
    fig.add_annotation(x=0.95 * top, y=0.03 * top, text="pushed (P_s < P_f)", showarrow=False, xanchor="right",
                       font=dict(color=_PUSH))
    sub = (f"{shown:,} of {int(valid.sum()):,} pairs shown: an even sample of each relation"
           if quota is not None else "")
    fig.update_layout(title=dict(text=title, x=0.01, subtitle=dict(text=sub)), template=_template(), font=_FONT,
                      height=520, xaxis=dict(title="P_f (feature similarity)", range=[0, top]),
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
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, barmode="group", height=420,
                      yaxis=dict(title="pairs pulled", tickformat=".0%", range=[0, 1.12]),
                      xaxis=dict(title="relation of the pair"))
    return fig


# ------------------------------------------------------------------------------------- gradient field

def _finite_matrix(name: str, x, cols: int | None = None) -> np.ndarray:
    """``x`` as a finite float (N, cols) array, or a ValueError naming the argument."""
    a = _np(x)
    try:
        a = a.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}") from None
    if a.ndim != 2 or (cols is not None and a.shape[1] != cols):
        want = f"(N, {cols})" if cols is not None else "(N, D)"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN/Inf)")
    return a


def _point_labels(name: str, labels, n: int) -> np.ndarray:
    lab = _np(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"{name} must have shape (N,) = ({n},), got {lab.shape}")
    if lab.dtype.kind == "f" and not np.isfinite(lab).all():
        raise ValueError(f"{name} must be finite (no NaN)")
    return lab


def _gapped(*columns: np.ndarray) -> np.ndarray:
    """Columns (N,) interleaved row by row, each row ended by NaN: one line trace of N separate pieces
    (plotly leaves a gap at NaN), built without a Python loop."""
    n = columns[0].shape[0]
    out = np.full((n, len(columns) + 1), np.nan)
    for j, c in enumerate(columns):
        out[:, j] = c
    return out.ravel()


def _arrow_heads(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed triangles at ``ends`` pointing away from ``starts``, NaN-separated for one filled trace."""
    v = ends - starts
    length = np.hypot(v[:, 0], v[:, 1])
    u = v / np.maximum(length, 1e-300)[:, None]
    perp = np.stack([-u[:, 1], u[:, 0]], 1)
    # a head never longer than about half its arrow, so short arrows stay arrows, not triangles
    head = np.minimum(0.06, 0.45 * length)[:, None]
    base = ends - head * u
    a, b = base + 0.5 * head * perp, base - 0.5 * head * perp
    return (_gapped(ends[:, 0], a[:, 0], b[:, 0], ends[:, 0]), _gapped(ends[:, 1], a[:, 1], b[:, 1], ends[:, 1]))


def gradient_field(points, gradients, labels=None, class_names=None,
                   title: str = "Where gradient descent moves each feature") -> go.Figure:
    """2-D features on the unit circle with an arrow per point: the direction gradient descent moves it.

    Parameters
    ----------
    points : array-like, shape (N, 2)
        2-D features (unit vectors; rows are L2-normalised for drawing). A zero row has no direction
        on the circle and is an error.
    gradients : array-like, shape (N, 2)
        ``d loss / d point`` for each point (e.g. from autograd on the features).
    labels : array-like, shape (N,), optional
        Fine-cluster (or class) id of each point, for the colours; one legend entry per class.
    class_names : sequence or dict, optional
        Display name per label.
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        The unit circle (``meta={"kind": "circle"}``); the points, one trace per class
        (``meta={"kind": "points", "label": ...}``); the arrow shafts as one trace of segments
        ``point -> point + s · t`` separated by None (``meta={"kind": "arrows", "index": [...],
        "scale": s}``) and their triangular heads (``meta={"kind": "arrow_heads"}``). ``t`` is −gradient
        with its radial component removed — a unit-norm feature can only move along the circle — and
        ``s`` makes the longest arrow 0.25 of the radius; the subtitle states ``s``. Points whose
        tangential gradient is zero get no arrow. Axes span −1.4..1.4 at equal aspect.
    """
    xy = _finite_matrix("points", points, 2)
    grad = _finite_matrix("gradients", gradients, 2)
    if grad.shape != xy.shape:
        raise ValueError(f"gradients must have the shape of points {xy.shape}, got {grad.shape}")
    n = xy.shape[0]
    lab = None if labels is None else _point_labels("labels", labels, n)
    norm = np.linalg.norm(xy, axis=1)
    if (norm == 0).any():
        raise ValueError(f"points must be non-zero (row {int(np.argmin(norm))} is 0): its direction is undefined")
    unit = xy / norm[:, None] if n else xy
    descent = -grad
    tangent = descent - (descent * unit).sum(1, keepdims=True) * unit
    size = np.linalg.norm(tangent, axis=1)
    longest = float(size.max(initial=0.0))
    # a float-rounding residue of a purely radial gradient is no movement along the circle
    moving = size > max(1e-12, 1e-9 * longest) if n else np.zeros(0, dtype=bool)
    scale = 0.25 / longest if moving.any() else 0.0
    ends = unit + scale * tangent

    fig = go.Figure()
    theta = np.linspace(0, 2 * np.pi, 241)
    fig.add_trace(go.Scatter(x=np.cos(theta), y=np.sin(theta), mode="lines", name="unit circle",
                             meta={"kind": "circle"}, line=dict(color="#b0b7c3", width=1.5),
                             hoverinfo="skip", showlegend=False))

    idx = np.nonzero(moving)[0]
    sx, sy = _gapped(unit[idx, 0], ends[idx, 0]), _gapped(unit[idx, 1], ends[idx, 1])
    fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", name="descent step", showlegend=False,
                             meta={"kind": "arrows", "index": idx.tolist(), "scale": scale},
                             line=dict(color="#333a45", width=2), hoverinfo="skip"))
    hx, hy = _arrow_heads(unit[idx], ends[idx])
    fig.add_trace(go.Scatter(x=hx, y=hy, mode="lines", fill="toself", fillcolor="#333a45", name="arrow heads",
                             meta={"kind": "arrow_heads"}, line=dict(color="#333a45", width=1),
                             hoverinfo="skip", showlegend=False))

    # counter-clockwise when the step turns the point the way the angle grows (cross product > 0)
    turn = unit[:, 0] * tangent[:, 1] - unit[:, 1] * tangent[:, 0]
    how = np.where(~moving, "does not move", np.where(turn > 0, "moves counter-clockwise", "moves clockwise"))
    groups = [(None, np.ones(n, dtype=bool))] if lab is None else [(u, lab == u) for u in np.unique(lab)]
    if lab is not None:
        slot, n_slots = _palette_index(lab, class_names)
        palette = class_colors(max(n_slots, 1))
    for u, mask in groups:
        if not mask.any():
            continue
        name = "points" if u is None else _class_name(u, class_names)
        colour = _RUN_PALETTE[0] if u is None else palette[slot[u] % len(palette)]
        ii = np.nonzero(mask)[0]
        hover = [f"sample {i}" + ("" if u is None else f" · {html.escape(name)}")
                 + f"<br>|tangential −∇| {size[i]:.3g}<br>{how[i]}" for i in ii]
        fig.add_trace(go.Scatter(
            x=unit[mask, 0], y=unit[mask, 1], mode="markers", name=name, showlegend=u is not None,
            meta={"kind": "points", "label": None if u is None else (u.item() if hasattr(u, "item") else u)},
            marker=dict(size=11, color=colour, line=dict(width=1, color="white")),
            hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"))

    if n == 0:
        _note(fig, "no points")
    elif not moving.any():
        _note(fig, "every gradient is zero or radial: no point moves along the circle")
    sub = (f"arrow = s · (−∇ with its radial part removed), s = {scale:.3g}: the longest arrow is 0.25 of the radius"
           if moving.any() else "")
    fig.update_layout(title=dict(text=title, x=0.01, subtitle=dict(text=sub)), template=_template(), font=_FONT,
                      height=640, width=720, margin=dict(l=40, r=10, t=90, b=40),
                      legend=dict(title_text="class" if lab is not None else None, itemsizing="constant"))
    fig.update_xaxes(range=[-1.4, 1.4], zeroline=False, title_text="feature 1", constrain="domain")
    fig.update_yaxes(range=[-1.4, 1.4], zeroline=False, title_text="feature 2", scaleanchor="x", scaleratio=1)
    return fig


# ---------------------------------------------------------------------------------- level embeddings

_CONTINUOUS_FROM = 20  # more classes than this and no discrete palette stays readable: a colour scale


def _level_class_names(class_names, level_names: list[str]):
    """Per-level display names from a list (one entry per level) or a dict level name -> names."""
    if class_names is None:
        return [None] * len(level_names)
    if isinstance(class_names, Mapping):
        return [class_names.get(lv) for lv in level_names]
    out = list(class_names)
    if len(out) != len(level_names):
        raise ValueError(f"class_names must have one entry per level ({len(level_names)}), got {len(out)}")
    return out


def level_embeddings(coords, levels, level_names, class_names=None, title: str = "Embedding by level",
                     axis_name: str = "UMAP") -> go.Figure:
    """The same 2-D layout once per level, side by side, each panel coloured by that level's labels.

    Parameters
    ----------
    coords : array-like, shape (N, 2)
        A layout of the samples, e.g. ``umap_embedding(features).coords``.
    levels : array-like of ints, shape (L, N)
        Labels of each sample at each level: ground-truth levels or learned criteria alike (a label
        < 0 is a learned criterion's "unsure" and is drawn grey). A 1-D array is one level.
    level_names : sequence of str, length L
        Panel titles ("fine", "coarse", "proto-64" ...).
    class_names : list (one entry per level) or dict level name -> names, optional
        Display names of each level's labels (a sequence indexed by label, a dict, or None).
    title : str
        Figure title.
    axis_name : str
        Name of the layout method, for the axis titles.

    Returns
    -------
    go.Figure
        One panel per level, at most 3 per row, with a shared range and equal aspect. Each panel is one
        trace (``meta={"level": name, "n_classes": k, "colouring": "discrete" | "continuous"}``): with up
        to 20 classes ``marker.color`` is :func:`class_colors` indexed by label, as in
        :func:`embedding_scatter`; with more, the "Turbo" scale over the label values. Labels < 0 are
        grey (``#bdbdbd``). There is no legend:
        hovering a point names its class at every level.
    """
    xy = _finite_matrix("coords", coords, 2)
    n = xy.shape[0]
    lev = _np(levels)
    if lev.ndim == 1:
        lev = lev[None, :]
    if lev.ndim != 2 or lev.shape[1] != n:
        raise ValueError(f"levels must have shape (L, N) with N = {n} (one row per level), got {lev.shape}")
    if lev.dtype.kind == "f":
        if not np.isfinite(lev).all() or (lev != np.round(lev)).any():
            raise ValueError("levels must hold integer labels (no NaN, no fractions)")
        lev = lev.astype(np.int64)
    elif lev.dtype.kind not in "iub":
        raise ValueError(f"levels must hold integer labels, got dtype {lev.dtype}")
    if isinstance(level_names, str):
        raise ValueError(f"level_names must be a list of names, one per level, got the string {level_names!r}")
    names = [str(x) for x in (list(level_names) if level_names is not None else [])]
    if len(names) != lev.shape[0]:
        raise ValueError(f"level_names must name each of the {lev.shape[0]} levels, got {names}")
    per_level_names = _level_class_names(class_names, names)
    n_levels = len(names)
    if n_levels == 0:
        fig = go.Figure()
        _note(fig, "no levels to colour by")
        fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, height=260,
                          xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig

    cols = min(3, n_levels)
    rows = math.ceil(n_levels / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[html.escape(x) for x in names],
                        horizontal_spacing=0.04, vertical_spacing=0.1 if rows > 1 else 0.0)

    def shown(label, cn):
        return "unsure" if cn is None and label < 0 else _class_name(label, cn)

    # every level's class of each point, so one hover answers "what is this at each level?"
    words = [[shown(v, cn) for v in row] for row, cn in zip(lev.tolist(), per_level_names)]
    hover_all = ["<br>".join(f"{html.escape(names[l])}: {html.escape(words[l][i])}" for l in range(n_levels))
                 for i in range(n)]
    scatter = go.Scattergl if n > 5000 else go.Scatter
    for l, (name, lab, cn) in enumerate(zip(names, lev, per_level_names)):
        r, c = l // cols + 1, l % cols + 1
        known = lab[lab >= 0]
        n_classes = int(np.unique(known).size)
        marker = dict(size=5 if n > 2000 else 7, opacity=0.85, line=dict(width=0.3, color="white"))
        if n_classes <= _CONTINUOUS_FROM:
            slot, n_slots = _palette_index(known, cn)
            palette = class_colors(max(n_slots, 1))
            marker["color"] = [palette[slot[v] % len(palette)] if v >= 0 else "#bdbdbd" for v in lab.tolist()]
            colouring = "discrete"
        else:
            # sampled by hand rather than a colorscale, so an "unsure" point can stay grey
            lo_, hi_ = float(known.min()), float(known.max())
            scale = pcolors.sample_colorscale("Turbo", [(v - lo_) / ((hi_ - lo_) or 1.0) for v in known.tolist()])
            it = iter(scale)
            marker["color"] = [next(it) if v >= 0 else "#bdbdbd" for v in lab.tolist()]
            colouring = "continuous"
        fig.add_trace(scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name=name, showlegend=False, marker=marker,
            meta={"level": name, "n_classes": n_classes, "colouring": colouring},
            customdata=np.arange(n),
            hovertext=[f"<b>{html.escape(name)}: {html.escape(words[l][i])}</b><br>{hover_all[i]}"
                       for i in range(n)],
            hovertemplate="%{hovertext}<br>sample %{customdata}<extra></extra>",
        ), row=r, col=c)

    if n == 0:
        _note(fig, "no points")
        lo, hi = np.zeros(2) - 1, np.ones(2)
    else:
        lo, hi = xy.min(0), xy.max(0)
    pad = 0.05 * max(float((hi - lo).max()), 1e-9)
    fig.update_xaxes(range=[lo[0] - pad, hi[0] + pad], showticklabels=False, zeroline=False, showgrid=False,
                     title_text=f"{axis_name} 1", constrain="domain")
    for l in range(n_levels):
        r, c = l // cols + 1, l % cols + 1
        ref = fig.get_subplot(r, c)
        fig.update_yaxes(range=[lo[1] - pad, hi[1] + pad], showticklabels=False, zeroline=False, showgrid=False,
                         title_text=f"{axis_name} 2" if c == 1 else None,
                         scaleanchor=ref.xaxis.plotly_name.replace("axis", ""), scaleratio=1,
                         constrain="domain", row=r, col=c)
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT,
                      height=120 + 420 * rows, margin=dict(l=40, r=10, t=90, b=40))
    return fig


# ---------------------------------------------------------------------------------- prototype tree

def _cosine_linkage(protos: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    unit = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)  # rounding can make 1 - cos slightly negative
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    return linkage(squareform(dist, checks=False), method="average")


def prototype_dendrogram(prototypes, names=None, counts=None,
                         title: str = "Prototype hierarchy (average linkage, cosine distance)") -> go.Figure:
    """A dendrogram of one level's online-clustering prototypes.

    Parameters
    ----------
    prototypes : array-like, shape (K, D)
        Prototype vectors (unit norm expected; rows are normalised, a zero row is an error).
    names : sequence of str, length K, optional
        Leaf labels; default ``"#i"``.
    counts : sequence of int, length K, optional
        Samples assigned to each prototype, appended to its label: ``"#3 (41)"``.
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        Leaves down the left (y axis tick labels, in dendrogram order), cosine distance 1 − cos along
        x. Built from ``scipy.cluster.hierarchy.linkage(method="average")`` on cosine distances: each
        merge is a ⊐-shaped path of 4 points in the trace ``meta={"kind": "links"}`` (paths separated by
        None, in merge order, leaves at x = 0), and a marker at each merge (``meta={"kind": "merges"}``) whose hover gives the
        distance and the leaves below it. K < 2 gives a figure with a note.
    """
    protos = _finite_matrix("prototypes", prototypes)
    k = protos.shape[0]
    labels = [f"#{i}" for i in range(k)] if names is None else [str(x) for x in names]
    if len(labels) != k:
        raise ValueError(f"names must have one name per prototype ({k}), got {len(labels)}")
    if counts is not None:
        cnt = _np(counts).ravel()
        if cnt.shape[0] != k:
            raise ValueError(f"counts must have one value per prototype ({k}), got {cnt.shape[0]}")
        if cnt.dtype.kind == "f" and not np.isfinite(cnt).all():
            raise ValueError("counts must be finite (no NaN)")
        labels = [f"{lb} ({int(c)})" for lb, c in zip(labels, cnt)]
    fig = go.Figure()
    if k < 2:
        _note(fig, f"{k} prototype{'s' if k != 1 else ''}: a hierarchy needs at least 2")
        fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, height=260,
                          xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    zero = np.linalg.norm(protos, axis=1) == 0
    if zero.any():
        raise ValueError(f"prototypes must be non-zero (row {int(np.argmax(zero))} is 0): cosine distance is undefined")

    from scipy.cluster.hierarchy import leaves_list

    z = _cosine_linkage(protos)
    order = leaves_list(z)  # the dendrogram's leaf order: no link crosses another
    # scipy's layout: leaf j of the order at 5 + 10 j, a merge midway between its two children
    pos = np.zeros(2 * k - 1)
    pos[order] = 5.0 + 10.0 * np.arange(k)
    height = np.zeros(2 * k - 1)
    below = {i: [labels[i]] for i in range(k)}
    lx, ly, mx, my, mtext = [], [], [], [], []
    for m, (a, b, d, _) in enumerate(z):  # in merge order: the first path is the closest pair
        a, b, node = int(a), int(b), k + m
        pos[node], height[node] = (pos[a] + pos[b]) / 2, d
        below[node] = below[a] + below[b]
        lx += [height[a], d, d, height[b], None]
        ly += [pos[a], pos[a], pos[b], pos[b], None]
        mx.append(d)
        my.append(pos[node])
        mtext.append(f"merge at cosine distance {d:.3f}<br>{len(below[node])} prototypes: "
                     f"{html.escape(', '.join(below[node][:12]))}{' …' if len(below[node]) > 12 else ''}")
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", name="links", meta={"kind": "links"}, showlegend=False,
                             line=dict(color="#3b5b92", width=1.8), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", name="merges", meta={"kind": "merges"}, showlegend=False,
                             marker=dict(size=6, color="#3b5b92"), hovertext=mtext,
                             hovertemplate="%{hovertext}<extra></extra>"))
    top = float(z[:, 2].max()) or 1.0
    font_size = 12 if k <= 40 else 10 if k <= 120 else 8
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT,
                      height=int(min(max(360, 120 + (22 if k <= 40 else 15 if k <= 120 else 10) * k), 2600)),
                      margin=dict(l=20, r=20, t=70, b=50), hovermode="closest")
    fig.update_xaxes(title_text="cosine distance (1 − cos)", range=[-0.02 * top, 1.05 * top], zeroline=False)
    fig.update_yaxes(tickmode="array", tickvals=list(5.0 + 10.0 * np.arange(k)),
                     ticktext=[html.escape(labels[i]) for i in order], tickfont=dict(size=font_size),
                     range=[10.0 * k, 0.0], showgrid=False, zeroline=False, ticks="")
    return fig


# ---------------------------------------------------------------------------------- run comparison

_METRIC_LABELS = {"knn_top1": "kNN top-1", "linear_top1": "linear top-1", "faithfulness": "faithfulness"}
_LEVEL_METRICS = {"knn_top1_per_level": "kNN", "nmi": "NMI", "learned_nmi": "learned NMI"}


def _number(value) -> float | None:
    """A real number (not a bool, not a string) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _metric_value(where: str, value) -> tuple[float | None, float | None, int | None]:
    """(mean, std, n) of a summary value: a number, or a benchmark aggregate {"mean", "std", "n"}."""
    if value is None:
        return None, None, None
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise ValueError(f"{where} must be a number or {{'mean', 'std', 'n'}}, got keys {sorted(value)}")
        mean, std, n = _number(value.get("mean")), _number(value.get("std")), value.get("n")
        if mean is None and value.get("mean") is not None:
            raise ValueError(f"{where}['mean'] must be a number, got {value.get('mean')!r}")
        if value.get("std") is not None and (std is None or std < 0):
            raise ValueError(f"{where}['std'] must be a number >= 0, got {value.get('std')!r}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ValueError(f"{where}['n'] must be a positive integer (the number of seeds), got {n!r}")
        return mean, std, None if n is None else int(n)
    if _number(value) is None:
        raise ValueError(f"{where} must be a number or {{'mean', 'std', 'n'}}, got {value!r}")
    return _number(value), None, None


def _comparison_metrics(summaries) -> list[tuple[str, str, str | None]]:
    """(label, key, level) for every metric some summary has, in the report's order."""
    out = [(_METRIC_LABELS[k], k, None) for k in _METRIC_LABELS
           if any(isinstance(s, Mapping) and s.get(k) is not None for s in summaries.values())]
    for key, word in _LEVEL_METRICS.items():
        levels = _levels({n: s for n, s in summaries.items() if isinstance(s, Mapping)}, key)
        if key == "knn_top1_per_level" and len(levels) < 2:
            continue  # one level: "kNN top-1" already is that level's kNN (as in the results table)
        out += [(f"{word} {lv}", key, lv) for lv in levels]
    # Any other key holding a benchmark aggregate is a metric under its own name ("knn_top1@fine").
    known = set(_METRIC_LABELS) | set(_LEVEL_METRICS)
    for s in summaries.values():
        for key, value in (s.items() if isinstance(s, Mapping) else ()):
            if key not in known and isinstance(value, Mapping) and "mean" in value and (key, key, None) not in out:
                out.append((key, key, None))
    return out


def run_comparison(summaries: Mapping[str, Mapping[str, Any] | None], metrics: Sequence[str] | None = None,
                   title: str = "Run comparison") -> go.Figure:
    """Grouped bars of the runs' results: one group per metric, one bar per run.

    Parameters
    ----------
    summaries : dict run name -> summary dict
        As the trainer writes ``summary.json``: ``knn_top1``, ``linear_top1`` and per-level dicts
        ``knn_top1_per_level``, ``nmi`` (k-means), ``learned_nmi`` ({level: value}), ``faithfulness``. A value
        may also be a benchmark aggregate ``{"mean": m, "std": s, "n": k}``: the bar is the mean, with a
        ±std error bar; any other key holding such an aggregate is a metric under its own name (the
        quality benchmark's ``knn_top1@fine`` ...). A run lacking a metric (or a ``None`` summary) has no bar there; a non-finite value is not
        drawn and a note lists it.
    metrics : sequence of str, optional
        Which metrics, in order: x labels as shown ("kNN top-1", "linear top-1", "kNN fine",
        "NMI fine", "learned NMI fine"), or summary keys ("knn_top1", "nmi" for every level of it,
        "nmi.fine" for one). Default: every metric some run has (per-level kNN only when there are
        two levels or more, since with one it repeats kNN top-1).
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        Bars in the run's colour, x = metric labels, y = values, text = the value ("0.912", or
        "0.912<br>±0.010" for an aggregate). A run has one ``go.Bar`` for its plain values and one for its
        aggregates (``meta={"run": name, "std": False | True}``), sharing one slot per group and one
        legend entry; the aggregate trace's ``error_y.array`` holds the stds.
    """
    if not isinstance(summaries, Mapping):
        raise ValueError(f"summaries must be a dict run name -> summary dict, got {type(summaries).__name__}")
    for name, s in summaries.items():
        if s is not None and not isinstance(s, Mapping):
            raise ValueError(f"summaries[{name!r}] must be a summary dict or None, got {type(s).__name__}")
    if isinstance(metrics, str):
        raise ValueError(f"metrics must be a list of metric labels, got the string {metrics!r}")
    available = _comparison_metrics(summaries)
    if metrics is None:
        chosen = available
    else:
        by_label = {lb: (lb, key, lv) for lb, key, lv in available}
        chosen = []
        for m in metrics:
            m = str(m)
            if m in by_label:
                chosen.append(by_label[m])
            elif m in _METRIC_LABELS:
                chosen.append((_METRIC_LABELS[m], m, None))
            elif m in _LEVEL_METRICS:
                chosen += [t for t in available if t[1] == m]
            elif "." in m and m.split(".", 1)[0] in _LEVEL_METRICS:
                key, lv = m.split(".", 1)
                chosen.append((f"{_LEVEL_METRICS[key]} {lv}", key, lv))
            else:
                raise ValueError(f"metrics: unknown metric {m!r}; use a label ({', '.join(by_label) or 'none here'}) "
                                 f"or a key ({', '.join(list(_METRIC_LABELS) + list(_LEVEL_METRICS))}, 'nmi.<level>')")
        chosen = list(dict.fromkeys(chosen))

    names = list(summaries)
    colours = run_colors(names)
    fig = go.Figure()
    skipped, top = [], 0.0
    cells = {}
    for name in names:
        s = summaries[name] or {}
        for label, key, lv in chosen:
            raw = s.get(key) if lv is None else (s.get(key) or {}).get(lv) if isinstance(s.get(key), Mapping) else None
            where = f"summaries[{name!r}][{key!r}]" + ("" if lv is None else f"[{lv!r}]")
            mean, std, count = _metric_value(where, raw)
            if mean is None:
                continue
            if not math.isfinite(mean):
                skipped.append(f"{name}: {label}")
                continue
            std = std if std is not None and math.isfinite(std) else None
            cells[(name, label)] = (mean, std, count)
            top = max(top, mean + (std or 0.0))
    for name in names:
        rows = [(label, *cells[(name, label)]) for label, _, _ in chosen if (name, label) in cells]
        # Values with a std and without go in separate traces: plotly draws a flat cap for a missing std. The
        # two share the run's slot in each group (offsetgroup) and its legend entry.
        parts = [[r for r in rows if r[2] is None], [r for r in rows if r[2] is not None]]
        for part, with_std in ((p, bool(i)) for i, p in enumerate(parts) if p):
            xs, ys, sds, ns = zip(*part)
            text = [f"{y:.3f}" + (f"<br>±{sd:.3f}" if with_std else "") for y, sd in zip(ys, sds)]
            hover = [f"<b>{html.escape(name)}</b><br>{html.escape(x)}: {t.replace('<br>', ' ')}"
                     + (f"<br>n = {k}" if k is not None else "") for x, t, k in zip(xs, text, ns)]
            fig.add_trace(go.Bar(
                x=list(xs), y=list(ys), name=name, meta={"run": name, "std": with_std}, marker_color=colours[name],
                offsetgroup=name, legendgroup=name, showlegend=not (with_std and parts[0]),
                # inside the bar (outside only when it is too short): at its top, or mid-height where an error
                # bar crosses the top
                text=text, textposition="auto", insidetextanchor="middle" if with_std else "end", cliponaxis=False,
                hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
                error_y=dict(type="data", array=list(sds), visible=True, color="#222", thickness=1.5,
                             width=5) if with_std else None,
            ))
    if not fig.data:
        _note(fig, "no runs to compare" if not summaries else "no metrics to compare in these summaries")
    elif skipped:
        fig.add_annotation(text="not drawn (not finite): " + html.escape("; ".join(skipped)), x=0, y=-0.2,
                           xref="paper", yref="paper", xanchor="left", showarrow=False,
                           font=dict(size=11, color="#777"))
    n_bars = sum(len(t.x) for t in fig.data)
    # upright value labels no longer fit once the bars get narrow
    fig.update_traces(textangle=-90 if n_bars > 24 else 0, textfont=dict(size=10 if n_bars > 24 else 11))
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, barmode="group",
                      height=460, bargap=0.18, margin=dict(l=60, r=20, t=70, b=90 if skipped else 60),
                      legend=dict(title_text="run", tracegroupgap=2),
                      xaxis=dict(title="metric", categoryorder="array",
                                 categoryarray=list(dict.fromkeys(lb for lb, _, _ in chosen))),
                      yaxis=dict(title="score", range=[0, max(1.0, top) * 1.08]))
    return fig


def criteria_agreement(criteria_nmi: Mapping[str, Mapping[str, float]],
                       criteria_ari: Mapping[str, Mapping[str, float]] | None = None,
                       title: str = "Learned criteria against the ground truth") -> go.Figure:
    """Heatmap of NMI: one row per learned criterion, one column per ground-truth level (the
    ``criteria_nmi`` / ``criteria_ari`` of a run's summary). Cell text is NMI (ARI on hover).

    A faithful hierarchy has its high values on the diagonal from (fine criterion, fine level) to
    (coarse criterion, coarse level). An empty mapping (a run that learns no criteria) gives a note.
    """
    rows = list(criteria_nmi)
    cols: list[str] = []
    for r in rows:
        for level in criteria_nmi[r]:
            if level not in cols:
                cols.append(level)
    fig = go.Figure()
    if not rows or not cols:
        _note(fig, "no learned criteria: this run (e.g. MoCo v3) learns no clustering")
    else:
        z = np.full((len(rows), len(cols)), np.nan)
        ari = np.full_like(z, np.nan)
        for i, r in enumerate(rows):
            for j, level in enumerate(cols):
                v = _float(criteria_nmi[r].get(level))
                if v is not None and not math.isfinite(v):
                    raise ValueError(f"criteria_nmi[{r!r}][{level!r}] must be finite, got {v}")
                z[i, j] = np.nan if v is None else v
                a = _float((criteria_ari or {}).get(r, {}).get(level))
                ari[i, j] = np.nan if a is None else a
        text = np.where(np.isnan(z), _MISSING, np.char.mod("%.2f", np.nan_to_num(z)))
        fig.add_trace(go.Heatmap(
            z=z, x=cols, y=rows, zmin=0, zmax=1, colorscale="Blues", text=text, texttemplate="%{text}",
            customdata=ari, colorbar=dict(title=dict(text="NMI")),
            hovertemplate="%{y} against %{x}<br>NMI %{z:.3f}<br>ARI %{customdata:.3f}<extra></extra>"))
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT,
                      height=max(260, 90 + 60 * len(rows)), xaxis=dict(title="ground-truth level", side="bottom"),
                      yaxis=dict(title="learned criterion", autorange="reversed"))
    return fig


#: The quality benchmark's headline metrics, in the order :func:`quality_comparison` draws them.
QUALITY_METRICS = ("knn_top1@fine", "knn_top1@coarse", "linear_top1", "nmi@fine", "nmi@coarse", "faithfulness")


def _aggregate_values(run: Mapping[str, Any] | None, metric: str):
    value = (run or {}).get(metric)
    return value.get("values", value.get("mean")) if isinstance(value, Mapping) else value


def without_repeated_coarse(runs: Mapping[str, Mapping[str, Any] | None], metrics: Sequence[str]) -> list[str]:
    """``metrics`` without each ``X@coarse`` whose values equal ``X@fine``'s in every run (a dataset with one
    ground-truth level, where the finest level is the coarsest): what the quality table and figure show."""
    return [m for m in metrics if not (
        m.endswith("@coarse") and m.replace("@coarse", "@fine") in metrics
        and all(_aggregate_values(r, m) == _aggregate_values(r, m.replace("@coarse", "@fine")) for r in runs.values()))]


def quality_comparison(results: Mapping[str, Mapping[str, Mapping[str, Any]]], datasets: Sequence[str] | None = None,
                       metrics: Sequence[str] = QUALITY_METRICS,
                       title: str = "Quality at the same budget: mean ± std over seeds") -> go.Figure:
    """The quality benchmark's results: one panel per dataset, one bar group per metric, one bar per method.

    Parameters
    ----------
    results : dict
        ``benchmarks/quality.py``'s JSON: ``{dataset: {method: {metric: {"mean", "std", "n"}}}}``.
    datasets : sequence of str, optional
        Which datasets, in order (default: all of ``results``).
    metrics : sequence of str
        Metric names to draw where a dataset has them (default :data:`QUALITY_METRICS`). On a dataset with
        one ground-truth level the ``@coarse`` metrics equal the ``@fine`` ones and are drawn once.
    title : str
        Figure title.

    Returns
    -------
    go.Figure
        The bars of :func:`run_comparison` for each dataset (error bars = std over seeds, hover says n),
        stacked in rows; a method keeps its colour and one legend entry across the panels. A value that is
        not finite is not drawn and a note under its panel says so; a panel with nothing to draw says that.
    """
    if not isinstance(results, Mapping) or not all(isinstance(v, Mapping) for v in results.values()):
        raise ValueError("results must be {dataset: {method: {metric: aggregate}}} (benchmarks/quality.py's JSON)")
    for d, runs in results.items():
        for m, r in runs.items():
            if not isinstance(d, str) or not isinstance(m, str) or not isinstance(r, Mapping):
                raise ValueError(f"results[{d!r}][{m!r}] must be a dict of metrics under string dataset and method "
                                 f"names, got {type(r).__name__}")
    if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not all(isinstance(m, str) for m in metrics):
        raise ValueError(f"metrics must be a list of metric names, got {metrics!r}")
    if datasets is not None and (isinstance(datasets, str) or not isinstance(datasets, Sequence)):
        raise ValueError(f"datasets must be a list of dataset names, got {datasets!r}")
    datasets = list(results) if datasets is None else list(datasets)
    unknown = [d for d in datasets if d not in results]
    if unknown:
        raise ValueError(f"datasets: {unknown} not in the results (they hold {list(results)})")
    if not datasets:
        fig = go.Figure()
        _note(fig, "no quality results")
        fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT)
        return fig
    methods = list(dict.fromkeys(m for d in datasets for m in results[d]))
    colours = run_colors(methods)

    def seeds(runs):
        ns = {v.get("n") for r in runs.values() for v in r.values() if isinstance(v, Mapping)}
        return "/".join(str(n) for n in sorted(n for n in ns if isinstance(n, int))) or "?"

    fig = make_subplots(rows=len(datasets), cols=1, vertical_spacing=0.3 / len(datasets),
                        subplot_titles=[f"{html.escape(d)} (seeds: {seeds(results[d])})" for d in datasets])
    shown = set()
    for row, d in enumerate(datasets, start=1):
        runs = results[d]
        here = without_repeated_coarse(runs, [m for m in metrics if any(m in r for r in runs.values())])
        panel = run_comparison(runs, here) if here else go.Figure()
        top = 1.0
        for trace in panel.data:
            name = trace.meta["run"]
            trace.marker.color = colours[name]
            trace.showlegend = bool(trace.showlegend) and name not in shown
            shown.add(name)
            errors = trace.error_y.array if trace.error_y.array is not None else [0.0] * len(trace.y)
            top = max([top] + [y + (e or 0.0) for y, e in zip(trace.y, errors)])
            fig.add_trace(trace, row=row, col=1)
        notes = [a.text for a in panel.layout.annotations] or ([] if panel.data else [
            f"nothing to draw: no method has {', '.join(metrics) or 'any of the metrics asked for'}"])
        for text in notes:
            fig.add_annotation(text=text, x=0, y=-0.22 if panel.data else 0.5, xref="x domain", yref="y domain",
                               xanchor="left", showarrow=False, font=dict(size=11, color="#777"), row=row, col=1)
        fig.update_yaxes(title_text="score", range=[0, top * 1.08], row=row, col=1)
        fig.update_xaxes(categoryorder="array", categoryarray=panel.layout.xaxis.categoryarray or here, row=row, col=1)
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, barmode="group",
                      bargap=0.18, height=120 + 330 * len(datasets), margin=dict(l=60, r=20, t=90, b=50),
                      legend=dict(title_text="method", tracegroupgap=2))
    return fig


_SPEED_NAMES = {"infonce": "InfoNCE (F.cross_entropy)", "rcl": "RCL (rcl_core)",
                "pml_sum": "SupConLoss per criterion, summed (pytorch-metric-learning)"}


def speed_growth(sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
                 title: str = "Loss forward + backward: how time and peak memory grow") -> go.Figure:
    """Log-log growth of the loss's cost: time and peak memory against N (at H = 4) and against H (at one
    N), one line per implementation.

    Parameters
    ----------
    sweeps : dict
        ``benchmarks/speed.py``'s ``loss_sweeps``: ``{"n": rows, "h": rows}``, each row a dict with ``n``,
        ``h``, ``d`` and, per implementation (``infonce``, ``rcl``, ``pml_sum``), ``<name>_ms`` and
        ``<name>_peak_bytes`` (positive numbers; an implementation a row lacks has no point there).
        The rows of the H sweep share one N.

    Returns
    -------
    go.Figure
        Four panels (time / memory against N / H), log axes; hover gives the value and the ratio to InfoNCE.
    """
    if not isinstance(sweeps, Mapping) or not any(sweeps.get(k) for k in ("n", "h")):
        raise ValueError("sweeps must be {'n': rows, 'h': rows} as benchmarks/speed.py writes them")
    checked = {}
    for axis in ("n", "h"):
        rows = sweeps.get(axis) or []
        if isinstance(rows, (str, Mapping)) or not isinstance(rows, Sequence):
            raise ValueError(f"sweeps[{axis!r}] must be a list of rows, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            where = f"sweeps[{axis!r}][{i}]"
            if not isinstance(row, Mapping):
                raise ValueError(f"{where} must be a dict, got {type(row).__name__}")
            for key in ("n", "h"):
                v = _number(row.get(key))
                if v is None or not v >= 1:
                    raise ValueError(f"{where}[{key!r}] must be a number >= 1, got {row.get(key)!r}")
            for name in _SPEED_NAMES:
                for suffix in ("_ms", "_peak_bytes"):
                    if name + suffix in row:
                        v = _number(row[name + suffix])
                        if v is None or not (0 < v < math.inf):
                            raise ValueError(f"{where}[{name + suffix!r}] must be a positive finite number, got "
                                             f"{row[name + suffix]!r}")
        checked[axis] = sorted(rows, key=lambda row: row[axis])
    at_n = sorted({row["n"] for row in checked["h"]})
    if len(at_n) > 1:
        raise ValueError(f"sweeps['h'] rows must share one N (they are one line per implementation), got N = {at_n}")
    at_h = sorted({row["h"] for row in checked["n"]})
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.16, subplot_titles=[
        f"time against N (H = {', '.join(map(str, at_h))})", f"peak memory against N (H = {', '.join(map(str, at_h))})",
        f"time against H (N = {', '.join(map(str, at_n))})", f"peak memory against H (N = {', '.join(map(str, at_n))})"])
    colours = run_colors(list(_SPEED_NAMES))
    legend = set()
    for r, axis in enumerate(("n", "h"), start=1):
        rows = checked[axis]
        for c, (unit, suffix, scale) in enumerate((("ms", "_ms", 1.0), ("MiB", "_peak_bytes", 2.0 ** -20)), start=1):
            for name, label in _SPEED_NAMES.items():
                pts = [(row[axis], row[name + suffix] * scale, row[name + suffix] / row["infonce" + suffix])
                       for row in rows if name + suffix in row and "infonce" + suffix in row]
                if not pts:
                    continue
                xs, ys, ratio = zip(*pts)
                fig.add_trace(go.Scatter(
                    x=list(xs), y=list(ys), mode="lines+markers", name=label, legendgroup=name,
                    showlegend=name not in legend, line=dict(color=colours[name], width=2), marker=dict(size=7),
                    customdata=list(ratio),
                    hovertemplate=f"{label}<br>{axis.upper()} = %{{x}}<br>%{{y:.3g}} {unit}"
                                  "<br>%{customdata:.2f}x InfoNCE<extra></extra>"), row=r, col=c)
                legend.add(name)
            fig.update_yaxes(type="log", title_text=unit, row=r, col=c)
            fig.update_xaxes(type="log", title_text="N (queries = keys)" if axis == "n" else "H (criteria)",
                             tickvals=[row[axis] for row in rows], row=r, col=c)
    fig.update_layout(title=dict(text=title, x=0.01), template=_template(), font=_FONT, height=720,
                      margin=dict(l=60, r=20, t=90, b=60), legend=dict(orientation="h", y=-0.1, x=0))
    return fig
