"""The pull/push figures against values computed independently from the explain() result."""
import numpy as np
import pytest
import torch

from lab import figures
from rcl_core import RelativeContrastiveLoss


def toy(self_contrast=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 12
    q = torch.randn(n, 4, generator=g)
    labels = torch.stack([torch.arange(n), torch.arange(n) // 3, torch.arange(n) // 6])  # image, fine, coarse
    perm = torch.randperm(n, generator=g)
    q, labels = q[perm], labels[:, perm]
    fn = RelativeContrastiveLoss(0.3)
    if self_contrast:
        return fn.explain(q, None, labels), labels
    k = q + 0.1 * torch.randn(n, 4, generator=g)
    return fn.explain(q, k, labels, labels), labels


@pytest.mark.parametrize("self_contrast", [False, True])
def test_pull_push_map_z_is_relativeness_minus_feature_similarity(self_contrast):
    info, labels = toy(self_contrast)
    names = ["instance", "proto-4", "proto-2"]
    fig = figures.pull_push_map(info, names)
    want = (info.relativeness - info.feature_similarity).numpy()
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), want)
    order = figures.hierarchy_order(labels)
    fig = figures.pull_push_map(info, names, order=order, key_order=order)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), want[np.ix_(order, order)])
    # Sorted by hierarchy: coarse labels are non-decreasing along the order.
    assert (np.diff(labels[2].numpy()[order]) >= 0).all()
    bar = fig.data[0].colorbar
    assert fig.data[0].zmid == 0 and "push" in bar.ticktext[0] and "pull" in bar.ticktext[-1]


def test_pull_push_hover_names_the_relation():
    info, labels = toy()
    fig = figures.pull_push_map(info, ["instance", "proto-4", "proto-2"])
    hover = np.asarray(fig.data[0].customdata)
    lab = labels.numpy()
    n = lab.shape[1]
    for a in range(n):
        for b in range(n):
            if a == b:
                word = "same image"
            elif lab[1, a] == lab[1, b]:
                word = "same fine cluster"
            elif lab[2, a] == lab[2, b]:
                word = "same coarse cluster"
            else:
                word = "unrelated"
            assert word in hover[a, b], (a, b, hover[a, b])
    assert "instance ✓" in hover[0, 0] and "instance ✗" in hover[0, 1]


def test_pf_ps_scatter_puts_pulled_pairs_above_the_diagonal():
    info, _ = toy(self_contrast=True)
    fig = figures.pf_ps_scatter(info, ["instance", "proto-4", "proto-2"])
    points = [t for t in fig.data if t.meta]
    total = sum(len(t.x) for t in points)
    assert total == 12 * 11  # every pair but the self pairs
    pulled = sum(int((np.asarray(t.y) > np.asarray(t.x)).sum()) for t in points)
    assert pulled == int(info.pull.sum())
    assert {t.meta["relation"] for t in points} <= {"same image", "same fine cluster", "same coarse cluster",
                                                    "unrelated"}
    # Self-contrast: "same image" never occurs (the other view is not in the batch here).
    assert "same image" not in {t.meta["relation"] for t in points}


def test_criteria_names_count_is_checked():
    info, _ = toy()
    with pytest.raises(ValueError, match="criteria_names must have 3 names"):
        figures.pull_push_map(info, ["instance"])


def test_pull_share_counts_pulled_pairs_per_relation_for_each_loss():
    info, labels = toy()
    g = torch.Generator().manual_seed(0)
    n = labels.shape[1]
    typical = RelativeContrastiveLoss(0.3).explain(torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g),
                                                   labels[:1], labels[:1])
    names = ["instance", "proto-4", "proto-2"]
    fig = figures.pull_share({"typical": typical, "RCL": info}, names)
    lab = labels.numpy()
    same = lambda i: lab[i][:, None] == lab[i][None, :]
    relation = np.where(same(0), 0, np.where(same(1), 1, np.where(same(2), 2, 3)))
    words = ["same image", "same fine cluster", "same coarse cluster", "unrelated"]
    for trace, ex in zip(fig.data, (typical, info)):
        pull = ex.pull.numpy()
        assert list(trace.x) == words
        want = [pull[relation == r].mean() for r in range(4)]
        np.testing.assert_allclose(trace.y, want)
    # The typical loss pulls only the other view of the same image.
    assert list(fig.data[0].y[1:]) == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------- gradient_field

def _segments(trace):
    """(start, end) pairs of a line trace separated by None or NaN (both are gaps in plotly)."""
    xs, ys = list(trace.x), list(trace.y)
    out, cur = [], []
    for x, y in zip(xs + [None], ys + [None]):
        if x is None or (isinstance(x, float) and np.isnan(x)):
            if cur:
                out.append(np.array(cur, dtype=float))
            cur = []
        else:
            cur.append((x, y))
    return out


def _by_kind(fig, kind):
    return [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == kind]


def test_gradient_field_arrows_are_the_scaled_tangential_descent_step():
    angles = np.array([0.1, 0.5, 1.9, 2.4, 4.0, 5.0])
    pts = np.stack([np.cos(angles), np.sin(angles)], 1)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 2))
    grads[2] = 0.0                  # no gradient: no arrow
    grads[4] = 3.0 * pts[4]         # purely radial: cannot move along the circle, no arrow
    labels = np.array([0, 0, 1, 1, 2, 2])
    fig = figures.gradient_field(pts, grads, labels, ["a", "b", "c"])

    # by hand: tangent direction at p is (-p_y, p_x); keep that component of -grad
    tang_dir = np.stack([-pts[:, 1], pts[:, 0]], 1)
    step = (-grads * tang_dir).sum(1, keepdims=True) * tang_dir
    moving = [0, 1, 3, 5]
    s = 0.25 / np.linalg.norm(step[moving], axis=1).max()
    arrows = _by_kind(fig, "arrows")[0]
    assert arrows.meta["index"] == moving
    np.testing.assert_allclose(arrows.meta["scale"], s)
    segs = _segments(arrows)
    assert len(segs) == 4 and all(seg.shape == (2, 2) for seg in segs)
    for i, seg in zip(moving, segs):
        np.testing.assert_allclose(seg[0], pts[i], atol=1e-12)
        np.testing.assert_allclose(seg[1], pts[i] + s * step[i], atol=1e-12)
        assert abs(np.dot(seg[1] - seg[0], seg[0])) < 1e-12  # perpendicular to the radius
    starts = np.array([seg[0] for seg in segs])
    for i in (2, 4):
        assert np.linalg.norm(starts - pts[i], axis=1).min() > 1e-6
    lengths = [np.linalg.norm(seg[1] - seg[0]) for seg in segs]
    assert max(lengths) == pytest.approx(0.25)
    assert f"{s:.3g}" in fig.layout.title.subtitle.text
    # one filled triangle head per arrow, its tip at the arrow's end
    heads = _segments(_by_kind(fig, "arrow_heads")[0])
    assert len(heads) == 4
    for head, seg in zip(heads, segs):
        np.testing.assert_allclose(head[0], seg[1])
    # unit circle, coloured points per class, square axes
    circle = _by_kind(fig, "circle")[0]
    np.testing.assert_allclose(np.hypot(circle.x, circle.y), 1.0)
    colours = figures.class_colors(3)
    points = _by_kind(fig, "points")
    assert [t.meta["label"] for t in points] == [0, 1, 2]
    for t in points:
        np.testing.assert_allclose(np.stack([t.x, t.y], 1), pts[labels == t.meta["label"]])
        assert t.marker.color == colours[t.meta["label"]]
    assert fig.layout.yaxis.scaleanchor == "x"
    assert tuple(fig.layout.xaxis.range) == (-1.4, 1.4) and tuple(fig.layout.yaxis.range) == (-1.4, 1.4)


def test_gradient_field_rcl_descent_turns_toward_the_same_cluster():
    # two points of one fine cluster at 0.0 and 0.6 rad, two of another far away: descent brings the pair closer
    angles = torch.tensor([0.0, 0.6, 3.0, 3.5], dtype=torch.float64)
    pts = torch.stack([angles.cos(), angles.sin()], 1).requires_grad_(True)
    labels = torch.stack([torch.arange(4), torch.tensor([0, 0, 1, 1])])
    RelativeContrastiveLoss(0.2)(pts, None, labels).backward()
    fig = figures.gradient_field(pts.detach(), pts.grad, labels[1])
    segs = _segments(_by_kind(fig, "arrows")[0])
    turn = [seg[0, 0] * (seg[1, 1] - seg[0, 1]) - seg[0, 1] * (seg[1, 0] - seg[0, 0]) for seg in segs]  # > 0: ccw
    assert turn[0] > 0 and turn[1] < 0  # 0.0 moves up toward 0.6, 0.6 moves down toward 0.0


def test_gradient_field_bad_and_tiny_inputs():
    pts = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="gradients"):
        figures.gradient_field(pts, np.array([[np.nan, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="gradients"):
        figures.gradient_field(pts, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="points"):
        figures.gradient_field(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="labels"):
        figures.gradient_field(pts, np.zeros((2, 2)), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="points must be non-zero"):
        figures.gradient_field(np.zeros((2, 2)), np.ones((2, 2)))
    still = figures.gradient_field(pts, np.zeros((2, 2)))
    assert _segments(_by_kind(still, "arrows")[0]) == []
    assert "no point moves" in still.layout.annotations[0].text
    empty = figures.gradient_field(np.zeros((0, 2)), np.zeros((0, 2)))
    assert "no points" in empty.layout.annotations[0].text


# ------------------------------------------------------------------------- loss_curves: excess, change

def test_loss_curves_excess_panel_and_change_events():
    recs = []
    for step in range(0, 60, 10):
        rec = {"step": step, "epoch": step / 20, "loss": 5.0 - step / 20,
               "loss_per_criterion": {"instance": 3.0 - step / 40, "proto-4": 2.0 - step / 40}}
        if step % 20 == 0:
            rec["excess"] = 1.5 - step / 50
        if step == 50:
            rec["knn_top1"] = 0.7
        recs.append(rec)
    recs.insert(3, {"event": "change", "step": 25, "epoch": 1.25, "weights": [1.0, 0.5]})
    other = [{"step": 0, "loss": 4.0, "excess": 0.9}, {"step": 30, "loss": 3.0, "excess": 0.4}]
    fig = figures.loss_curves({"rcl": recs, "b": other})
    series = {(t.meta["run"], t.meta["series"]): t for t in fig.data}
    ex = series[("rcl", "excess")]
    assert list(ex.x) == [0, 20, 40] and list(ex.y) == [r["excess"] for r in recs if "excess" in r]
    assert list(series[("b", "excess")].y) == [0.9, 0.4]
    # panels: total (y), per-criterion (y2), excess (y3), kNN (y4)
    assert series[("rcl", "total")].yaxis == "y" and series[("rcl", "instance")].yaxis == "y2"
    assert ex.yaxis == "y3" and series[("rcl", "knn_top1")].yaxis == "y4"
    assert fig.layout.yaxis3.title.text == "excess W·KL(P_s‖P_f)"
    assert fig.layout.yaxis3.domain[0] > fig.layout.yaxis4.domain[1]  # above the kNN panel
    changes = [s for s in fig.layout.shapes if s.line.dash == "dashdot"]
    assert changes and {s.x0 for s in changes} == {25}
    texts = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("change: weights") for t in texts)
    # no excess logged: the old three-panel layout, no excess trace
    plain = figures.loss_curves({"r": [{k: v for k, v in r.items() if k != "excess"} for r in recs]})
    assert "excess" not in {t.meta["series"] for t in plain.data}
    assert {t.yaxis for t in plain.data if t.meta["series"] == "knn_top1"} == {"y3"}


# ---------------------------------------------------------------------------------- level_embeddings

def test_level_embeddings_one_panel_per_level_coloured_by_its_labels():
    rng = np.random.default_rng(0)
    n = 90
    coords = rng.normal(size=(n, 2))
    fine = np.arange(n) % 6
    coarse = fine // 3
    proto = np.arange(n) % 30  # > 20 clusters: continuous colours
    proto[5] = -1              # an unsure sample
    names = ["fine", "coarse", "proto-30", "parity"]
    levels = np.stack([fine, coarse, proto, np.arange(n) % 2])
    fig = figures.level_embeddings(coords, levels, names,
                                   class_names={"fine": [f"f{i}" for i in range(6)], "coarse": ["A", "B"]})
    assert len(fig.data) == 4
    assert [t.meta["level"] for t in fig.data] == names
    assert len({t.xaxis for t in fig.data}) == 4
    assert [a.text for a in fig.layout.annotations] == names
    # at most 3 per row: the 4th panel sits below the 1st
    assert fig.layout[fig.data[3].yaxis.replace("y", "yaxis")].domain[1] < fig.layout.yaxis.domain[0]
    for t in fig.data:
        np.testing.assert_allclose(np.stack([t.x, t.y], 1), coords)
    for l, k in ((0, 6), (1, 2), (3, 2)):
        palette = figures.class_colors(k)
        assert fig.data[l].meta["colouring"] == "discrete"
        assert list(fig.data[l].marker.color) == [palette[v] for v in levels[l]]
    cont = fig.data[2]
    assert cont.meta["colouring"] == "continuous" and cont.meta["n_classes"] == 30
    colour = np.array(cont.marker.color)
    assert colour[5] == "#bdbdbd"
    ok = proto >= 0
    for v in np.unique(proto[ok]):
        assert len(set(colour[proto == v])) == 1
    assert len(set(colour[ok])) == 30
    # hover names the class at every level
    assert "fine: f4" in fig.data[0].hovertext[4] and "coarse: B" in fig.data[0].hovertext[4]
    assert "proto-30: unsure" in fig.data[2].hovertext[5]
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis2.scaleanchor == "x2"


def test_level_embeddings_bad_and_tiny_inputs():
    coords = np.zeros((4, 2))
    with pytest.raises(ValueError, match="levels"):
        figures.level_embeddings(coords, np.zeros((2, 3), dtype=int), ["a", "b"])
    with pytest.raises(ValueError, match="level_names"):
        figures.level_embeddings(coords, np.zeros((2, 4), dtype=int), ["a"])
    with pytest.raises(ValueError, match="coords"):
        figures.level_embeddings(np.full((4, 2), np.nan), np.zeros((1, 4), dtype=int), ["a"])
    with pytest.raises(ValueError, match="levels"):
        figures.level_embeddings(coords, np.array([[0, 1, np.nan, 0]]), ["a"])
    one = figures.level_embeddings(coords[:1], np.array([3]), ["only"])
    assert len(one.data) == 1
    none = figures.level_embeddings(coords, np.zeros((0, 4), dtype=int), [])
    assert "no levels" in none.layout.annotations[0].text


# ------------------------------------------------------------------------------ prototype_dendrogram

def test_prototype_dendrogram_leaves_and_first_merge():
    rng = np.random.default_rng(3)
    protos = rng.normal(size=(10, 6))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    counts = rng.integers(1, 100, size=10)
    fig = figures.prototype_dendrogram(protos, counts=counts)
    ticks = dict(zip(fig.layout.yaxis.tickvals, fig.layout.yaxis.ticktext))
    assert sorted(ticks.values()) == sorted(f"#{i} ({c})" for i, c in enumerate(counts))
    # closest pair by our own cosine computation
    dist = 1 - protos @ protos.T
    np.fill_diagonal(dist, np.inf)
    a, b = np.unravel_index(np.argmin(dist), dist.shape)
    links = _segments(_by_kind(fig, "links")[0])
    assert len(links) == 9 and all(p.shape == (4, 2) for p in links)
    lowest = min(links, key=lambda p: p[:, 0].max())
    assert lowest[0, 0] == 0 and lowest[3, 0] == 0  # two leaves
    joined = {ticks[lowest[0, 1]], ticks[lowest[3, 1]]}
    assert joined == {f"#{a} ({counts[a]})", f"#{b} ({counts[b]})"}
    assert lowest[1, 0] == pytest.approx(dist[a, b])
    # the last merge (average linkage) is the highest
    assert links[-1][1, 0] == pytest.approx(max(p[1, 0] for p in links))
    named = figures.prototype_dendrogram(protos[:3], names=["x", "y", "z"])
    assert sorted(named.layout.yaxis.ticktext) == ["x", "y", "z"]


def test_prototype_dendrogram_bad_and_tiny_inputs():
    one = figures.prototype_dendrogram(np.ones((1, 4)))
    assert "at least 2" in one.layout.annotations[0].text and len(one.data) == 0
    assert "at least 2" in figures.prototype_dendrogram(np.zeros((0, 4))).layout.annotations[0].text
    with pytest.raises(ValueError, match="prototypes"):
        figures.prototype_dendrogram(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="prototypes"):
        figures.prototype_dendrogram(np.ones(4))
    with pytest.raises(ValueError, match="names"):
        figures.prototype_dendrogram(np.eye(3), names=["a"])
    with pytest.raises(ValueError, match="counts"):
        figures.prototype_dendrogram(np.eye(3), counts=[1, 2])
    two = figures.prototype_dendrogram(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert _segments(_by_kind(two, "links")[0])[0][1, 0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- run_comparison

def test_run_comparison_bars_equal_summary_values_and_std():
    summaries = {
        "rcl": {"knn_top1": 0.91, "linear_top1": 0.93, "knn_top1_per_level": {"fine": 0.91, "coarse": 0.95},
                "nmi": {"fine": 0.7, "coarse": 0.4}, "learned_nmi": {"fine": 0.8}},
        "moco": {"knn_top1": 0.85, "nmi": {"fine": 0.6}},
        "bench": {"knn_top1": {"mean": 0.88, "std": 0.02, "n": 3}, "nmi": {"fine": {"mean": 0.65, "std": 0.05, "n": 3}}},
        "mixed": {"knn_top1": 0.8, "linear_top1": {"mean": 0.9, "std": 0.01, "n": 2}},
    }
    fig = figures.run_comparison(summaries)
    assert list(dict.fromkeys(t.meta["run"] for t in fig.data)) == ["rcl", "moco", "bench", "mixed"]
    assert list(fig.layout.xaxis.categoryarray) == ["kNN top-1", "linear top-1", "kNN fine", "kNN coarse",
                                                    "NMI fine", "NMI coarse", "learned NMI fine"]

    def bars(run):
        """metric -> (height, std or None, text) over the run's traces."""
        out = {}
        for t in fig.data:
            if t.meta["run"] == run:
                sds = t.error_y.array if t.error_y.array is not None else [None] * len(t.x)
                out.update({x: (y, sd, tx) for x, y, sd, tx in zip(t.x, t.y, sds, t.text)})
        return out

    for run, s in summaries.items():
        want = {}
        for key, label in (("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1")):
            if key in s:
                want[label] = s[key]
        for key, word in (("knn_top1_per_level", "kNN"), ("nmi", "NMI"), ("learned_nmi", "learned NMI")):
            for lv, v in s.get(key, {}).items():
                want[f"{word} {lv}"] = v
        got = bars(run)
        assert set(got) == set(want), run  # a missing metric has no bar
        for label, v in want.items():
            height, sd, text = got[label]
            if isinstance(v, dict):
                assert (height, sd) == (v["mean"], v["std"]) and text == f"{v['mean']:.3f}<br>±{v['std']:.3f}"
            else:
                assert (height, sd) == (v, None) and text == f"{v:.3f}"
    # a mixed run: two traces, one slot in each group, one legend entry
    mixed = [t for t in fig.data if t.meta["run"] == "mixed"]
    assert len(mixed) == 2 and {t.offsetgroup for t in mixed} == {"mixed"}
    assert [t.showlegend for t in mixed] == [True, False] and mixed[0].error_y.array is None
    colour = {t.meta["run"]: t.marker.color for t in fig.data}
    assert len(set(colour.values())) == 4 and mixed[0].marker.color == mixed[1].marker.color
    picked = figures.run_comparison(summaries, metrics=["nmi.fine", "kNN top-1"])
    assert list(picked.layout.xaxis.categoryarray) == ["NMI fine", "kNN top-1"]
    assert list(picked.data[0].y) == [0.7, 0.91]


def test_run_comparison_empty_and_bad_inputs():
    assert "no runs" in figures.run_comparison({}).layout.annotations[0].text
    assert len(figures.run_comparison({"a": None}).data) == 0
    with pytest.raises(ValueError, match="summaries\\['a'\\]\\['knn_top1'\\]"):
        figures.run_comparison({"a": {"knn_top1": "high"}})
    with pytest.raises(ValueError, match="metrics"):
        figures.run_comparison({"a": {"knn_top1": 0.5}}, metrics=["accuracy"])
    nan = figures.run_comparison({"a": {"knn_top1": float("nan"), "linear_top1": 0.5}})
    assert list(nan.data[0].x) == ["linear top-1"]
    assert "a: kNN top-1" in nan.layout.annotations[0].text


def test_pf_ps_scatter_samples_each_relation_evenly_when_the_batch_is_large():
    import torch

    from lab.figures import pf_ps_scatter
    from rcl_core.loss import RelativeContrastiveLoss

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(60, 4, generator=g), dim=1)
    labels = torch.stack([torch.arange(60), torch.arange(60) // 6])
    info = RelativeContrastiveLoss(0.2).explain(q, q.roll(1, 0), labels, labels)
    full = pf_ps_scatter(info, ["instance", "k10"])
    counts = {t.name: len(t.x) for t in full.data[1:]}
    assert counts == {"same image": 60, "same k10": 60 * 5, "unrelated": 60 * 54}  # every pair, once
    small = pf_ps_scatter(info, ["instance", "k10"], max_points=300)
    got = {t.name: len(t.x) for t in small.data[1:]}
    assert got == {"same image": 60, "same k10": 100, "unrelated": 100}  # quota 100 per relation
    pf, ps = info.feature_similarity.numpy(), info.relativeness.numpy()
    for t in small.data[1:]:  # the sampled points are real pairs, with their own coordinates
        a, b = np.asarray(t.customdata).T
        np.testing.assert_allclose(t.x, pf[a, b], rtol=1e-6)
        np.testing.assert_allclose(t.y, ps[a, b], rtol=1e-6)
    assert "260 of 3,600 pairs" in small.layout.title.subtitle.text


def test_pull_push_map_labels_its_axes_with_sample_names():
    import torch

    from lab.figures import pull_push_map
    from rcl_core.loss import RelativeContrastiveLoss

    q = torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.stack([torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2])])
    info = RelativeContrastiveLoss(0.2).explain(q, q.roll(1, 0), labels, labels)
    names = ["a", "a", "b", "b", "c", "c"]
    fig = pull_push_map(info, ["instance", "k3"], order=[5, 4, 3, 2, 1, 0], key_order=[0, 1, 2, 3, 4, 5],
                        sample_names=names)
    assert list(fig.data[0].y) == ["c · 5", "c · 4", "b · 3", "b · 2", "a · 1", "a · 0"]
    assert list(fig.data[0].x) == ["a · 0", "a · 1", "b · 2", "b · 3", "c · 4", "c · 5"]
    with pytest.raises(ValueError, match="sample_names"):
        pull_push_map(info, ["instance", "k3"], sample_names=names[:3])


def _agg(values):
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}


def test_quality_comparison_panels_bars_and_error_bars_follow_the_json():
    results = {
        "shapes": {m: {"knn_top1@fine": _agg([a, a + 0.02, a + 0.04]), "knn_top1@coarse": _agg([a + 0.2] * 3),
                       "nmi@coarse": _agg([a / 2, a / 3, a / 4]), "faithfulness": _agg([0.7, 0.72, 0.74]),
                       "ari@fine": _agg([0.1, 0.1, 0.1])}
                   for m, a in (("moco", 0.5), ("rcl", 0.6))},
        # one level: @coarse repeats @fine and is drawn once; a method only this dataset has keeps its colour
        "digits": {m: {"knn_top1@fine": _agg([a, a]), "knn_top1@coarse": _agg([a, a])}
                   for m, a in (("moco", 0.8), ("proto", 0.82), ("rcl", 0.85))},
    }
    fig = figures.quality_comparison(results)
    by_panel = {}
    for t in fig.data:
        by_panel.setdefault(t.xaxis, []).append(t)
    assert sorted(by_panel) == ["x", "x2"]
    shapes, digits = by_panel["x"], by_panel["x2"]
    for t in shapes:
        run = results["shapes"][t.meta["run"]]
        for x, y, sd in zip(t.x, t.y, t.error_y.array):
            assert y == pytest.approx(run[x]["mean"]) and sd == pytest.approx(run[x]["std"])
        assert list(t.x) == ["knn_top1@fine", "knn_top1@coarse", "nmi@coarse", "faithfulness"]  # ari: not asked
    assert {tuple(t.x) for t in digits} == {("knn_top1@fine",)}
    colour = {}
    for t in fig.data:
        assert colour.setdefault(t.meta["run"], t.marker.color) == t.marker.color
    assert sum(bool(t.showlegend) for t in fig.data) == 3  # one legend entry per method
    assert "seeds: 3" in fig.layout.annotations[0].text and "seeds: 2" in fig.layout.annotations[1].text
    only = figures.quality_comparison(results, datasets=["digits"], metrics=["knn_top1@fine", "faithfulness"])
    assert {t.meta["run"] for t in only.data} == {"moco", "proto", "rcl"}


def test_quality_comparison_refuses_what_is_not_quality_json():
    with pytest.raises(ValueError, match="results must be"):
        figures.quality_comparison({"shapes": [1, 2]})
    with pytest.raises(ValueError, match="not in the results"):
        figures.quality_comparison({"shapes": {}}, datasets=["mnist5k"])
    with pytest.raises(ValueError, match="metrics must be a list"):
        figures.quality_comparison({"shapes": {}}, metrics="knn_top1@fine")
    assert "no quality results" in figures.quality_comparison({}).layout.annotations[0].text


def test_speed_growth_draws_each_measured_cost_on_log_axes():
    rows_n = [{"n": n, "h": 4, "d": 128, "infonce_ms": n / 10, "rcl_ms": n / 11, "infonce_peak_bytes": n * 2 ** 10,
               "rcl_peak_bytes": n * 2 ** 9, "pml_sum_ms": n / 2, "pml_sum_peak_bytes": n * 2 ** 11}
              for n in (256, 1024, 4096)]
    rows_h = [{"n": 4096, "h": h, "d": 128, "infonce_ms": 400.0, "rcl_ms": 350.0 + 10 * h,
               "infonce_peak_bytes": 2 ** 27, "rcl_peak_bytes": 2 ** 26} for h in (1, 2, 4)]
    fig = figures.speed_growth({"n": rows_n, "h": rows_h})
    assert fig.layout.xaxis.type == fig.layout.yaxis.type == "log"
    traces = {(t.xaxis, t.legendgroup): t for t in fig.data}
    assert list(traces[("x", "rcl")].y) == [r["rcl_ms"] for r in rows_n]
    assert list(traces[("x2", "pml_sum")].y) == [r["pml_sum_peak_bytes"] / 2 ** 20 for r in rows_n]
    assert list(traces[("x3", "rcl")].x) == [1, 2, 4]
    assert list(traces[("x3", "rcl")].customdata) == pytest.approx([r["rcl_ms"] / 400.0 for r in rows_h])
    assert ("x3", "pml_sum") not in traces  # not measured in the H sweep: no line
    assert "N = 4096" in fig.layout.annotations[2].text
    with pytest.raises(ValueError, match="sweeps must be"):
        figures.speed_growth({})


def test_quality_comparison_says_what_it_cannot_draw():
    good = _agg([0.5, 0.6])
    fig = figures.quality_comparison({"shapes": {"moco": {"knn_top1@fine": {**good, "mean": float("nan")},
                                                          "faithfulness": good}}})
    assert [list(t.x) for t in fig.data] == [["faithfulness"]]
    assert any("not finite" in a.text and "knn_top1@fine" in a.text for a in fig.layout.annotations)
    empty = figures.quality_comparison({"shapes": {"moco": {"faithfulness": good}}}, metrics=["linear_top1"])
    assert any("nothing to draw" in a.text for a in empty.layout.annotations)
    tall = figures.quality_comparison({"shapes": {"moco": {"faithfulness": _agg([4.0, 6.0])}}})
    assert tall.layout.yaxis.range[1] > 5.0 + tall.data[0].error_y.array[0]  # not cut at 1
    for bad, match in (({"shapes": {"moco": {"faithfulness": {**good, "std": -1}}}}, "std'\\] must be a number >= 0"),
                       ({"shapes": {"moco": {"faithfulness": {**good, "n": 2.5}}}}, "positive integer"),
                       ({"shapes": {"moco": {"faithfulness": {**good, "mean": "0.9"}}}}, "mean'\\] must be a number"),
                       ({"shapes": {"moco": "fast"}}, "results\\['shapes'\\]\\['moco'\\] must be a dict")):
        with pytest.raises(ValueError, match=match):
            figures.quality_comparison(bad)
    with pytest.raises(ValueError, match="datasets must be a list"):
        figures.quality_comparison({"shapes": {}}, datasets="shapes")
    with pytest.raises(ValueError, match="metrics must be a list"):
        figures.quality_comparison({"shapes": {}}, metrics=None)


def test_speed_growth_refuses_rows_it_cannot_draw_honestly():
    row = {"n": 4096, "h": 1, "infonce_ms": 1.0, "rcl_ms": 1.0}
    with pytest.raises(ValueError, match="share one N"):
        figures.speed_growth({"h": [row, dict(row, n=2048, h=2)]})
    with pytest.raises(ValueError, match="rcl_ms'\\] must be a positive finite number"):
        figures.speed_growth({"h": [dict(row, rcl_ms=float("nan"))]})
    with pytest.raises(ValueError, match="\\['n'\\] must be a number >= 1"):
        figures.speed_growth({"n": [{"h": 4, "rcl_ms": 1.0}]})
    only_h = figures.speed_growth({"h": [row, dict(row, h=2)]})
    assert any(t.showlegend for t in only_h.data)  # a legend even without the N sweep
