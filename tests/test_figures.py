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
