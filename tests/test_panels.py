"""Widget panels: a widget value set in Python updates the figures, to values computed independently."""
import numpy as np
import pytest
import torch

from lab.figures import hierarchy_order
from lab.panels import LossExplorer, decreasing_thresholds, sync_figure
from lab.toy import TOY_SETS, anchor_gradients, toy_hierarchy
from rcl_core.loss import RelativeContrastiveLoss


def explorer(**kw):
    toy = toy_hierarchy(2, 3, 4)
    return LossExplorer({"toy": toy}, **kw), toy


def expected_map(toy, criteria, temperature, weights=None):
    """P_s - P_f from a fresh loss, in the explorer's hierarchy order."""
    rows = [toy.names.index(c) for c in criteria]
    labels = toy.labels[rows]
    info = RelativeContrastiveLoss(temperature, weights=weights).explain(toy.queries, toy.keys, labels, labels)
    order = hierarchy_order(toy.labels[1:])
    return (info.relativeness - info.feature_similarity).numpy()[np.ix_(order, order)]


def test_the_temperature_slider_updates_the_map_in_place():
    ex, toy = explorer()
    heatmap = ex.figures["map"].data[0]
    np.testing.assert_allclose(np.asarray(heatmap.z), expected_map(toy, toy.names, 0.2), atol=1e-6)
    ex.controls["temperature"].value = 0.5
    assert ex.figures["map"].data[0] is heatmap  # the same trace object, updated, not a new figure
    np.testing.assert_allclose(np.asarray(heatmap.z), expected_map(toy, toy.names, 0.5), atol=1e-6)
    assert ex.error is None


def test_turning_a_criterion_off_and_weighting_another():
    ex, toy = explorer()
    ex.controls["on:coarse"].value = False
    np.testing.assert_allclose(np.asarray(ex.figures["map"].data[0].z),
                               expected_map(toy, ["instance", "fine"], 0.2), atol=1e-6)
    # the relation words follow the enabled criteria: no "coarse" pairs any more
    words = {t.name for t in ex.figures["scatter"].data}
    assert "same coarse" not in words and "same fine" in words
    ex.controls["weight:fine"].value = 2.5
    np.testing.assert_allclose(np.asarray(ex.figures["map"].data[0].z),
                               expected_map(toy, ["instance", "fine"], 0.2, weights=[1.0, 2.5]), atol=1e-6)
    hover = np.asarray(ex.figures["map"].data[0].customdata)
    assert "coarse" not in hover[0, 0] and "fine" in hover[0, 0]


def test_the_share_bars_match_an_independent_count():
    ex, toy = explorer()
    ex.controls["temperature"].value = 0.3
    bars = {t.name: t for t in ex.figures["share"].data}
    info = RelativeContrastiveLoss(0.3).explain(toy.queries, toy.keys, toy.labels, toy.labels)
    pulled = (info.feature_similarity < info.relativeness).numpy()
    same_image = np.eye(len(toy), dtype=bool)
    fine = (toy.labels[1][:, None] == toy.labels[1][None, :]).numpy() & ~same_image
    assert bars["RCL"].y[0] == pytest.approx(pulled[same_image].mean())
    assert bars["RCL"].y[1] == pytest.approx(pulled[fine].mean())
    assert bars["typical (instance only)"].y[1] == 0.0  # InfoNCE never pulls another image


def test_the_gradient_field_follows_the_loss():
    ex, toy = explorer()
    ex.controls["temperature"].value = 0.4
    grad = anchor_gradients(RelativeContrastiveLoss(0.4), toy.queries, toy.keys, toy.labels).numpy()
    arrows = next(t for t in ex.figures["field"].data if t.meta and t.meta.get("kind") == "arrows")
    q = toy.queries.numpy()
    tangent = -grad - (-grad * q).sum(1, keepdims=True) * q
    scale = arrows.meta["scale"]
    x = np.asarray(arrows.x, dtype=float).reshape(-1, 3)
    idx = arrows.meta["index"]
    np.testing.assert_allclose(x[:, 1], q[idx, 0] + scale * tangent[idx, 0], atol=1e-5)


def test_sigmoid_thresholds_stay_strictly_decreasing_in_the_ui():
    ex, toy = explorer(form="sigmoid", thresholds=[0.8, 0.4, 0.0])
    t = [ex.controls[f"threshold:{n}"] for n in toy.names]
    assert all(s.layout.display is None for s in t)  # visible for the sigmoid form
    t[2].value = 0.6  # coarse above fine: fine and instance move up
    values = [s.value for s in t]
    assert values[2] == 0.6 and values[0] > values[1] > values[2]
    t[0].value = -0.99  # instance below everything: the others move down, instance clipped to leave room
    values = [s.value for s in t]
    assert values[0] > values[1] > values[2] >= -1.0
    assert ex.error is None
    # what is drawn is the sigmoid loss with those thresholds
    info = RelativeContrastiveLoss(0.2, "sigmoid", thresholds=values).explain(toy.queries, toy.keys, toy.labels,
                                                                                toy.labels)
    order = hierarchy_order(toy.labels[1:])
    want = (info.relativeness - info.feature_similarity).numpy()[np.ix_(order, order)]
    np.testing.assert_allclose(np.asarray(ex.figures["map"].data[0].z), want, atol=1e-6)
    ex.controls["form"].value = "softmax"
    assert all(s.layout.display == "none" for s in t)


@pytest.mark.parametrize("values,moved,want", [
    ([0.5, 0.4, 0.3], 1, [0.5, 0.4, 0.3]),
    ([0.5, 0.6, 0.3], 1, [0.61, 0.6, 0.3]),
    ([0.5, 0.4, 0.45], 2, [0.5, 0.46, 0.45]),
    ([1.0, 0.4, 0.3], 1, [1.0, 0.4, 0.3]),
    ([0.5, 1.0, 0.3], 1, [1.0, 0.99, 0.3]),  # no room above: the moved value is clipped
])
def test_decreasing_thresholds(values, moved, want):
    assert decreasing_thresholds(values, moved) == pytest.approx(want)


def test_an_impossible_setting_is_shown_not_raised():
    ex, toy = explorer()
    ex.controls["weight:instance"].value = 0.0
    ex.controls["weight:fine"].value = 0.0
    assert ex.error is None  # coarse alone still has weight
    before = np.asarray(ex.figures["map"].data[0].z).copy()
    ex.controls["weight:coarse"].value = 0.0
    assert ex.error and "positive sum" in ex.error and "positive sum" in ex._status.value
    np.testing.assert_allclose(np.asarray(ex.figures["map"].data[0].z), before)  # the last good figure stays
    ex.controls["weight:instance"].value = 1.0
    assert ex.error is None and ex._status.value == ""


def test_switching_batch_changes_the_figures_shape():
    ex = LossExplorer()
    names = list(TOY_SETS)
    ex.controls["batch"].value = names[1]
    n = len(TOY_SETS[names[1]])
    assert np.asarray(ex.figures["map"].data[0].z).shape == (n, n)


def test_bad_batches_and_settings_are_refused():
    toy = toy_hierarchy(2, 2, 2)
    with pytest.raises(ValueError, match="weights must have one value per criterion"):
        LossExplorer({"t": toy}, weights=[1.0])
    with pytest.raises(ValueError, match="temperature"):
        LossExplorer({"t": toy}, temperature=0.0)
    with pytest.raises(ValueError, match="figures_shown"):
        LossExplorer({"t": toy}, figures_shown=["nope"])
    with pytest.raises(ValueError, match="missing"):
        LossExplorer({"t": {"queries": toy.queries}})
    with pytest.raises(ValueError, match="at least one batch"):
        LossExplorer({})


def test_a_batch_of_real_features_without_2d_has_no_field():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    labels = torch.stack([torch.arange(16), torch.arange(16) // 4])
    ex = LossExplorer({"feat": {"queries": q, "keys": q.roll(1, 1), "labels": labels, "names": ["instance", "k4"]}})
    assert ex.error is None and "2-D" in ex.figures["field"].layout.title.text


def test_sync_figure_replaces_traces_when_their_kinds_change():
    import plotly.graph_objects as go

    w = go.FigureWidget(go.Scatter(y=[1, 2]))
    sync_figure(w, go.Figure([go.Bar(y=[3]), go.Bar(y=[4])]))
    assert [t.type for t in w.data] == ["bar", "bar"] and list(w.data[1].y) == [4]
    sync_figure(w, go.Figure([go.Bar(y=[5]), go.Bar(y=[6])], layout=dict(title="t")))
    assert list(w.data[0].y) == [5] and w.layout.title.text == "t"


# ------------------------------------------------------------------ run browser, embeddings, prototypes

def _two_runs(tmp_path):
    from rcl_core.trainer import train
    from test_trainer import small_config, tiny_dataset

    ds = tiny_dataset()
    dirs = {}
    for name, kw in {"rcl": {}, "moco": {"method": "moco", "criteria": []}}.items():
        cfg = small_config(tmp_path / name, epochs=2, cluster_warmup_epochs=0, **kw)
        train(cfg, dataset=ds)
        dirs[name] = cfg.run_dir
    return dirs


def test_run_browser_follows_the_selection(tmp_path):
    import json
    from pathlib import Path

    from lab.panels import RunBrowser

    dirs = _two_runs(tmp_path)
    browser = RunBrowser(dirs, selected=["rcl"])
    runs_drawn = {t.meta["run"] for t in browser.figures["curves"].data if t.meta and "run" in t.meta}
    assert runs_drawn == {"rcl"}
    browser.controls["runs"].value = ("rcl", "moco")
    runs_drawn = {t.meta["run"] for t in browser.figures["curves"].data if t.meta and "run" in t.meta}
    assert runs_drawn == {"rcl", "moco"}
    bars = {t.name: t for t in browser.figures["comparison"].data}
    knn = {n: json.loads(Path(d, "summary.json").read_text())["knn_top1"] for n, d in dirs.items()}
    for name in ("rcl", "moco"):
        assert bars[name].y[list(bars[name].x).index("kNN top-1")] == pytest.approx(knn[name])
    with pytest.raises(ValueError, match="unknown runs"):
        RunBrowser(dirs, selected=["nope"])


def test_embedding_explorer_recolours_by_the_chosen_level():
    from lab.panels import EmbeddingExplorer

    coords = np.random.default_rng(0).normal(size=(30, 2))
    levels = np.stack([np.arange(30) % 6, np.arange(30) % 2])
    ex = EmbeddingExplorer(coords, levels, ["fine", "coarse"], class_names=[None, ["even", "odd"]])
    assert len(ex.figures["embedding"].data) == 6
    ex.controls["level"].value = "coarse"
    assert sorted(t.name for t in ex.figures["embedding"].data) == ["even", "odd"]
    even = next(t for t in ex.figures["embedding"].data if t.name == "even")
    np.testing.assert_allclose(np.asarray(even.x), coords[levels[1] == 0, 0])
    with pytest.raises(ValueError, match="level_names"):
        EmbeddingExplorer(coords, levels, ["fine"])


def test_load_prototypes_reads_the_checkpoint_fine_to_coarse(tmp_path):
    from lab.report import load_prototypes

    dirs = _two_runs(tmp_path)
    protos = load_prototypes(dirs["rcl"])
    assert list(protos) == ["proto-8", "proto-4"]
    p8, p4 = protos["proto-8"], protos["proto-4"]
    assert p8["prototypes"].shape == (8, 16) and p4["prototypes"].shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(p8["prototypes"], axis=1), 1.0, atol=1e-5)  # unit prototypes
    assert p8["parents"].shape == (8,) and set(p8["parents"]) <= set(range(4)) and "parents" not in p4
    assert load_prototypes(dirs["moco"]) == {}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_prototypes(tmp_path)


def test_criteria_agreement_heatmap_shows_the_summary_values():
    from lab.figures import criteria_agreement

    nmi = {"proto-64": {"shape": 0.61, "family": 0.2}, "proto-16": {"shape": 0.4, "family": 0.35}}
    ari = {"proto-64": {"shape": 0.3, "family": 0.1}, "proto-16": {"shape": 0.2, "family": 0.25}}
    fig = criteria_agreement(nmi, ari)
    hm = fig.data[0]
    assert list(hm.y) == ["proto-64", "proto-16"] and list(hm.x) == ["shape", "family"]
    np.testing.assert_allclose(np.asarray(hm.z), [[0.61, 0.2], [0.4, 0.35]])
    np.testing.assert_allclose(np.asarray(hm.customdata), [[0.3, 0.1], [0.2, 0.25]])
    assert np.asarray(hm.text)[0, 0] == "0.61"
    assert "no learned criteria" in criteria_agreement({}).layout.annotations[0].text
    with pytest.raises(ValueError, match="finite"):
        criteria_agreement({"p": {"shape": float("nan")}})


def test_sync_figure_clears_what_the_new_figure_leaves_out():
    import plotly.graph_objects as go

    w = go.FigureWidget(go.Bar(y=[1], error_y=dict(array=[0.1])))
    w.add_annotation(text="no runs to compare")
    sync_figure(w, go.Figure(go.Bar(y=[2])))
    assert w.data[0].error_y.array is None and not w.layout.annotations and list(w.data[0].y) == [2]


def test_the_instance_criterion_cannot_be_switched_off():
    ex, toy = explorer()
    ex.controls["on:instance"].value = False
    assert ex.controls["on:instance"].value is True and ex.enabled()[0] == "instance"


def test_starting_values_outside_the_default_slider_ranges_are_kept():
    ex, toy = explorer(temperature=5.0, weights=[1.0, 10.0, 1.0])
    assert ex.controls["temperature"].value == pytest.approx(5.0) and ex.controls["weight:fine"].value == 10.0
    assert ex.loss().temperature == pytest.approx(5.0) and ex.loss().weights == [1.0, 10.0, 1.0]


def test_decreasing_thresholds_refuses_what_cannot_be_kept_decreasing():
    with pytest.raises(ValueError, match="finite"):
        decreasing_thresholds([float("nan"), 0.0, -0.5], 1)
    with pytest.raises(ValueError, match="gap"):
        decreasing_thresholds([0.5, 0.0, -0.5], 1, gap=1.5)
    with pytest.raises(ValueError, match="gap"):
        decreasing_thresholds([0.5, 0.0, -0.5], 1, gap=0.0)
    assert decreasing_thresholds([0.5, 3.0, -0.5], 2) == pytest.approx([1.0, 0.99, -0.5])
