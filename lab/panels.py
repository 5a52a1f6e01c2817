"""Widget panels: ipywidgets controls wired to :mod:`lab.figures`, nothing else.

A panel owns its controls and its ``go.FigureWidget`` objects; a control's change recomputes the
loss's explanation and updates every figure *in place* (:func:`sync_figure`), so the notebook shows
one set of figures that moves with the sliders instead of a new output per change.

:class:`LossExplorer` is notebook 01's panel: criteria on/off and weights, the loss form, per-criterion
thresholds of the sigmoid form (kept strictly decreasing), the temperature and the toy set or batch
shown; it draws the pull/push map, the P_f / P_s scatter, the share of pairs pulled per relation
(a typical contrastive loss beside RCL) and, for 2-D features, the gradient field.
"""
from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch

from lab import figures
from lab.toy import TOY_SETS, ToySet, anchor_gradients
from rcl_core.loss import RelativeContrastiveLoss

__all__ = ["sync_figure", "LossExplorer", "RunBrowser", "EmbeddingExplorer", "decreasing_thresholds"]


def sync_figure(widget: go.FigureWidget, fig: go.Figure, keep: Sequence[str] = ()) -> None:
    """Make ``widget`` show ``fig``, in place (one message to the browser).

    Traces are updated property by property when the two figures have the same trace types in the same
    order, else replaced. ``keep``: trace properties to leave as they are (e.g. a heatmap's
    ``customdata`` that the caller knows did not change: sending 65k hover strings is the slow part).
    """
    same = len(widget.data) == len(fig.data) and all(a.type == b.type for a, b in zip(widget.data, fig.data))
    with widget.batch_update():
        if same:
            for old, new in zip(widget.data, fig.data):
                # The trace's own property dict: to_plotly_json() would deep-copy every array first.
                props = {k: v for k, v in new._props.items() if k not in ("type", "uid")}
                # What the old trace set and the new one does not (error bars, a note) is reset.
                props.update({k: None for k in old._props if k not in props and k not in ("type", "uid")})
                for k in keep:
                    props.pop(k, None)
                old.update(props, overwrite=True)
        layout = dict(fig.layout._props)
        layout.update({k: None for k in widget.layout._props if k not in layout and k != "template"})
        if getattr(widget, "_lab_template", False):
            # Every lab figure uses one template: sent once; copying it again was the slow part.
            layout.pop("template", None)
        elif "template" in layout:
            widget._lab_template = True
        widget.layout.update(layout, overwrite=True)
    if not same:
        widget.data = ()
        widget.add_traces(list(fig.data))


def decreasing_thresholds(values: Sequence[float], moved: int, gap: float = 0.01, low: float = -1.0,
                          high: float = 1.0) -> list[float]:
    """Thresholds after the user set ``values[moved]``, pushed apart so they stay strictly decreasing.

    Finer criteria (left) must demand more similarity than coarser ones (right). The moved value
    wins; neighbours move by the least amount that keeps a ``gap`` between consecutive values. When
    the range [low, high] cannot hold them all, the moved value itself is clipped.
    """
    t = [float(v) for v in values]
    h = len(t)
    if not 0 <= moved < h:
        raise ValueError(f"moved must index values (0..{h - 1}), got {moved}")
    if not all(np.isfinite(t)):
        raise ValueError(f"values must be finite thresholds, got {list(values)}")
    if not (gap > 0 and gap * (h - 1) <= high - low):
        raise ValueError(f"gap must be > 0 and leave room for {h} thresholds in [{low}, {high}], got {gap}")
    t = [min(max(v, low), high) for v in t]
    # The moved value must leave room for the criteria on both sides.
    t[moved] = min(max(t[moved], low + gap * (h - 1 - moved)), high - gap * moved)
    # Each other value moves the least that keeps a gap to its neighbour and room for those beyond it.
    for j in range(moved + 1, h):  # coarser: below
        t[j] = max(min(t[j], t[j - 1] - gap), low + gap * (h - 1 - j))
    for j in range(moved - 1, -1, -1):  # finer: above
        t[j] = min(max(t[j], t[j + 1] + gap), high - gap * j)
    return t


def keep_decreasing(sliders: Sequence, moved: int) -> None:
    """Move the other threshold sliders (fine -> coarse) the least that keeps the values strictly
    decreasing after ``sliders[moved]`` was set (:func:`decreasing_thresholds`, one slider step apart)."""
    fixed = decreasing_thresholds([s.value for s in sliders], moved, gap=sliders[0].step)
    for s, v in zip(sliders, fixed):
        if abs(s.value - v) > 1e-9:
            s.value = v


def fit_slider(slider, value: float) -> None:
    """Set a slider to ``value``, widening its range first so that the value is never clipped."""
    if hasattr(slider, "base"):  # FloatLogSlider: min and max are exponents
        e = float(np.log(value) / np.log(slider.base))
        slider.min, slider.max = min(slider.min, float(np.floor(e))), max(slider.max, float(np.ceil(e)))
    else:
        slider.min, slider.max = min(slider.min, value), max(slider.max, value)
    slider.value = value


class _Batch:
    """What the panel explains: queries, keys (or None: self-contrast), labels (H, N), names."""

    def __init__(self, name, queries, keys, labels, names, class_names=None):
        self.name, self.queries, self.keys, self.labels = name, queries, keys, labels
        self.names, self.class_names = list(names), class_names
        if labels.shape[0] != len(self.names):
            raise ValueError(f"labels has {labels.shape[0]} rows but {len(self.names)} criteria names were given")


def _as_batch(name: str, data) -> _Batch:
    if isinstance(data, ToySet):
        return _Batch(name, data.queries, data.keys, data.labels, data.names, data.fine_names)
    if isinstance(data, Mapping):
        missing = [k for k in ("queries", "labels", "names") if k not in data]
        if missing:
            raise ValueError(f"batch {name!r} must give queries, labels and names (keys optional); missing {missing}")
        return _Batch(name, torch.as_tensor(data["queries"]), None if data.get("keys") is None else
                      torch.as_tensor(data["keys"]), torch.as_tensor(data["labels"]), data["names"],
                      data.get("class_names"))
    raise TypeError(f"batch {name!r} must be a ToySet or a dict with queries, keys, labels, names; "
                    f"got {type(data).__name__}")


class LossExplorer:
    """Controls for the loss and the figures of its decisions on one batch.

    Parameters
    ----------
    batches : mapping name -> :class:`lab.toy.ToySet` or ``{"queries", "keys", "labels", "names"}``
        The batches to choose from (a dropdown); default the toy sets of :data:`lab.toy.TOY_SETS`.
        All batches must share the criteria names (fine -> coarse, ``instance`` first).
    temperature, form, weights, thresholds : the loss's starting settings.
    figures_shown : which figures to draw, from ``"map"``, ``"scatter"``, ``"share"``, ``"field"``
        (the gradient field is drawn only for 2-D features).

    ``explorer.widget`` is the panel to display; ``explorer.controls`` maps names (``temperature``,
    ``form``, ``batch``, ``on:<criterion>``, ``weight:<criterion>``, ``threshold:<criterion>``) to
    widgets; setting a widget's ``value`` in Python updates the figures as moving it does.
    ``explorer.last_update_seconds`` is the time the last update took.
    """

    def __init__(self, batches: Mapping[str, object] | None = None, temperature: float = 0.2,
                 form: str = "softmax", weights: Sequence[float] | None = None,
                 thresholds: Sequence[float] | None = None,
                 figures_shown: Sequence[str] = ("map", "scatter", "share", "field")):
        self.batches = {n: _as_batch(n, b) for n, b in (TOY_SETS if batches is None else batches).items()}
        if not self.batches:
            raise ValueError("batches must hold at least one batch")
        names = next(iter(self.batches.values())).names
        for b in self.batches.values():
            if b.names != names:
                raise ValueError(f"every batch must have the criteria {names}; {b.name!r} has {b.names}")
        if names[0] != "instance":
            raise ValueError(f"criteria must start with 'instance', got {names}")
        unknown = set(figures_shown) - {"map", "scatter", "share", "field"}
        if unknown:
            raise ValueError(f"figures_shown: unknown figures {sorted(unknown)}; use map, scatter, share, field")
        self.names = list(names)
        h = len(names)
        weights = [1.0] * h if weights is None else [float(w) for w in weights]
        if len(weights) != h:
            raise ValueError(f"weights must have one value per criterion ({h}: {names}), got {len(weights)}")
        thresholds = list(np.linspace(0.8, 0.0, h)) if thresholds is None else [float(t) for t in thresholds]
        if len(thresholds) != h:
            raise ValueError(f"thresholds must have one value per criterion ({h}: {names}), got {len(thresholds)}")
        # Validate the starting settings with the loss's own checks.
        RelativeContrastiveLoss(temperature, form, weights, thresholds if form == "sigmoid" else None)
        self.last_update_seconds = float("nan")
        self.error: str | None = None
        self._hover_key = None
        self._syncing = False
        self._drawn = False

        style = {"description_width": "initial"}
        c: dict[str, widgets.Widget] = {}
        c["batch"] = widgets.Dropdown(options=list(self.batches), description="batch", style=style)
        c["form"] = widgets.ToggleButtons(options=["softmax", "sigmoid"], value=form, description="loss form",
                                          style=style)
        c["temperature"] = widgets.FloatLogSlider(value=temperature, base=10, min=-2, max=0.3, step=0.02,
                                                  description="temperature τ", readout_format=".3f", style=style,
                                                  continuous_update=True)
        fit_slider(c["temperature"], temperature)
        rows = []
        for i, n in enumerate(names):
            c[f"on:{n}"] = widgets.Checkbox(value=True, description=n, indent=False,
                                            disabled=(i == 0), layout=widgets.Layout(width="120px"))
            c[f"weight:{n}"] = widgets.FloatSlider(value=min(weights[i], 3.0), min=0.0, max=3.0, step=0.05,
                                                   description="weight", style=style)
            fit_slider(c[f"weight:{n}"], weights[i])
            c[f"threshold:{n}"] = widgets.FloatSlider(value=thresholds[i], min=-1.0, max=1.0, step=0.01,
                                                      description="threshold", style=style)
            rows.append(widgets.HBox([c[f"on:{n}"], c[f"weight:{n}"], c[f"threshold:{n}"]]))
        self.controls = c
        self._status = widgets.HTML()
        self.figures: dict[str, go.FigureWidget] = {}
        for key in ("map", "scatter", "share", "field"):
            if key in figures_shown:
                self.figures[key] = go.FigureWidget()
        self._refresh_threshold_visibility()
        for w in c.values():
            w.observe(self._on_change, names="value")
        self.update()
        controls = widgets.VBox([widgets.HBox([c["batch"], c["form"]]), c["temperature"], *rows, self._status])
        figs = [f for f in self.figures.values()]
        self.widget = widgets.VBox([controls, *figs])

    # ------------------------------------------------------------------ settings
    @property
    def batch(self) -> _Batch:
        return self.batches[self.controls["batch"].value]

    def enabled(self) -> list[str]:
        return [n for n in self.names if self.controls[f"on:{n}"].value]

    def loss(self, criteria: Sequence[str] | None = None, weighted: bool = True) -> RelativeContrastiveLoss:
        """The loss as the controls set it, over ``criteria`` (default: the enabled ones); ``weighted=False``
        gives every criterion weight 1 (the typical loss shown beside RCL)."""
        c = self.controls
        chosen = list(criteria) if criteria is not None else self.enabled()
        form = c["form"].value
        weights = [c[f"weight:{n}"].value if weighted else 1.0 for n in chosen]
        thresholds = [c[f"threshold:{n}"].value for n in chosen] if form == "sigmoid" else None
        return RelativeContrastiveLoss(c["temperature"].value, form, weights, thresholds)

    def _labels(self, criteria: Sequence[str]) -> torch.Tensor:
        b = self.batch
        return b.labels[[b.names.index(n) for n in criteria]]

    def explain(self, criteria: Sequence[str] | None = None, weighted: bool = True):
        chosen = list(criteria) if criteria is not None else self.enabled()
        b, labels = self.batch, self._labels(chosen)
        return self.loss(chosen, weighted).explain(b.queries, b.keys, labels, None if b.keys is None else labels)

    # ------------------------------------------------------------------ updates
    def _refresh_threshold_visibility(self) -> None:
        sigmoid = self.controls["form"].value == "sigmoid"
        for n in self.names:
            self.controls[f"threshold:{n}"].layout.display = None if sigmoid else "none"

    def _on_change(self, change) -> None:
        if self._syncing:
            return
        owner = change["owner"]
        moved = next(k for k, w in self.controls.items() if w is owner)
        if moved == f"on:{self.names[0]}" and not owner.value:
            self._syncing = True
            owner.value = True  # the finest criterion, instance, is always on (as in training)
            self._syncing = False
            return
        if moved.startswith("threshold:"):
            self._keep_decreasing(self.names.index(moved.split(":", 1)[1]))
        if moved == "form":
            self._refresh_threshold_visibility()
        self.update()

    def _keep_decreasing(self, moved: int) -> None:
        self._syncing = True
        try:
            keep_decreasing([self.controls[f"threshold:{n}"] for n in self.names], moved)
        finally:
            self._syncing = False

    def update(self) -> None:
        """Recompute the explanation and update every figure in place; errors go to the status line."""
        t0 = time.perf_counter()
        try:
            self._draw()
            self.error = None
        except (ValueError, TypeError) as e:  # e.g. every enabled weight at 0
            self.error = str(e)
        self.last_update_seconds = time.perf_counter() - t0
        self._status.value = ("" if self.error is None else
                              f"<span style='color:#b2182b'><b>Not drawn:</b> {html.escape(self.error)}</span>")

    def _draw(self) -> None:
        if self._drawn:
            with figures.template_already_sent():
                self._draw_figures()
        else:
            self._draw_figures()
            self._drawn = True

    def _draw_figures(self) -> None:
        b, chosen = self.batch, self.enabled()
        info = self.explain(chosen)
        order = figures.hierarchy_order(b.labels[1:] if len(b.names) > 1 else b.labels)
        figs = self.figures
        if "map" in figs:
            # The hover texts depend on the batch and the criteria only: a slider keeps those it sent.
            key = (b.name, tuple(chosen))
            same = key == self._hover_key
            fig = figures.pull_push_map(info, chosen, order=order, key_order=order, hover=False if same else None)
            self._hover_key = key
            sync_figure(figs["map"], fig, keep=("customdata",) if same else ())
        if "scatter" in figs:
            sync_figure(figs["scatter"], figures.pf_ps_scatter(info, chosen))
        if "share" in figs:
            infos = {"RCL": info}
            if chosen != ["instance"]:
                try:
                    infos = {"typical (instance only)": self.explain(["instance"], weighted=False), "RCL": info}
                except ValueError:
                    pass  # one view only (keys=None): the instance criterion alone has no positive pair
            sync_figure(figs["share"], figures.pull_share(infos, chosen))
        if "field" in figs:
            if b.queries.shape[1] == 2:
                labels = self._labels(chosen)
                grad = anchor_gradients(self.loss(chosen), b.queries, b.keys, labels).numpy()
                fine = b.labels[1].numpy() if len(b.names) > 1 else None
                sync_figure(figs["field"], figures.gradient_field(b.queries.numpy(), grad, fine, b.class_names))
            else:
                figs["field"].layout.title = "gradient field: only for 2-D features"


class RunBrowser:
    """Pick runs (a multi-select) and compare them: loss curves and the bars of kNN / linear / NMI.

    ``runs`` maps display names to run directories (or :class:`lab.report.RunData`); runs without a
    summary (interrupted) still show their curves. ``browser.widget`` is the panel.
    """

    def __init__(self, runs: Mapping[str, object], selected: Sequence[str] | None = None):
        from lab.report import RunData, load_run

        if not runs:
            raise ValueError("runs must name at least one run directory")
        self.runs = {n: r if isinstance(r, RunData) else load_run(r, name=n) for n, r in runs.items()}
        chosen = list(selected) if selected is not None else list(self.runs)
        unknown = [n for n in chosen if n not in self.runs]
        if unknown:
            raise ValueError(f"selected: unknown runs {unknown}; the runs are {list(self.runs)}")
        self.controls = {"runs": widgets.SelectMultiple(options=list(self.runs), value=chosen, rows=min(8, len(self.runs)),
                                                        description="runs", layout=widgets.Layout(width="420px"))}
        self.figures = {"curves": go.FigureWidget(), "comparison": go.FigureWidget()}
        self.controls["runs"].observe(lambda _c: self.update(), names="value")
        self.update()
        self.widget = widgets.VBox([self.controls["runs"], self.figures["comparison"], self.figures["curves"]])

    def update(self) -> None:
        chosen = list(self.controls["runs"].value)
        runs = [self.runs[n] for n in chosen]
        sync_figure(self.figures["curves"], figures.loss_curves({r.name: r.metrics for r in runs}))
        sync_figure(self.figures["comparison"],
                    figures.run_comparison({r.name: r.summary for r in runs if r.summary is not None}))


class EmbeddingExplorer:
    """One 2-D layout, coloured by the level chosen in a dropdown (ground truth or learned criteria).

    ``levels`` (L, N) labels; ``level_names`` (L,); ``class_names``: per level, a sequence or None.
    """

    def __init__(self, coords, levels, level_names: Sequence[str], class_names=None, axis_name: str = "UMAP",
                 title: str = "Test features"):
        self.coords = np.asarray(coords)
        self.levels = np.atleast_2d(np.asarray(levels))
        self.level_names = list(level_names)
        if self.levels.shape[0] != len(self.level_names):
            raise ValueError(f"levels has {self.levels.shape[0]} rows but {len(self.level_names)} level_names")
        if self.levels.shape[1] != self.coords.shape[0]:
            raise ValueError(f"levels has {self.levels.shape[1]} samples but coords has {self.coords.shape[0]}")
        if not self.level_names:
            raise ValueError("level_names must name at least one level")
        self.class_names = list(class_names) if class_names is not None else [None] * len(self.level_names)
        if len(self.class_names) != len(self.level_names):
            raise ValueError(f"class_names must have one entry (a list of names or None) per level "
                             f"({len(self.level_names)}), got {len(self.class_names)}")
        self.axis_name, self.title = axis_name, title
        self.controls = {"level": widgets.Dropdown(options=self.level_names, description="colour by")}
        self.figures = {"embedding": go.FigureWidget()}
        self.controls["level"].observe(lambda _c: self.update(), names="value")
        self.update()
        self.widget = widgets.VBox([self.controls["level"], self.figures["embedding"]])

    def update(self) -> None:
        i = self.level_names.index(self.controls["level"].value)
        sync_figure(self.figures["embedding"], figures.embedding_scatter(
            self.coords, self.levels[i], self.class_names[i], title=f"{self.title}, coloured by {self.level_names[i]}",
            axis_name=self.axis_name))
