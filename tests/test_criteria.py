import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from rcl_core.criteria import CriteriaSet, KMeansCriterion, OnlineHierarchicalClustering, sinkhorn


def blobs(n_per=40, centers=8, dim=16, spread=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centers, dim, generator=g), dim=1)
    y = torch.arange(centers).repeat_interleave(n_per)
    x = F.normalize(c[y] + spread * torch.randn(len(y), dim, generator=g), dim=1)
    return x, y


def test_sinkhorn_equal_partition_and_row_marginals():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 10, generator=g)
    # Skewed scores: without balancing, most samples would pick prototype 0.
    scores[:, 0] += 2.0
    plan = sinkhorn(scores, epsilon=0.5, iterations=50)
    torch.testing.assert_close(plan.sum(0), torch.full((10,), 0.1), atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((64,), 1 / 64), atol=1e-4, rtol=0)
    # Argmax of a balanced plan spreads samples over prototypes; the raw scores do not.
    assert torch.bincount(plan.argmax(1), minlength=10).max() < torch.bincount(scores.argmax(1), minlength=10).max()


def test_sinkhorn_weighted_rows_and_matches_numpy_scaling():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(12, 4, generator=g)
    r = torch.rand(12, generator=g) + 0.1
    r = r / r.sum()
    plan = sinkhorn(scores, epsilon=0.3, iterations=200, row_marginal=r)
    # Independent: classic Sinkhorn matrix scaling in float64 numpy.
    k = np.exp(scores.double().numpy() / 0.3)
    u, v = np.ones(12), np.ones(4)
    for _ in range(200):
        u = r.double().numpy() / (k @ v)
        v = np.full(4, 0.25) / (k.T @ u)
    np.testing.assert_allclose(plan.numpy(), (u[:, None] * k * v[None]), atol=1e-6)


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(3, 2), epsilon=0)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.zeros(3))


def run_online(ohc, x, steps=60, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(x.shape[0], generator=g)[:batch]
        ohc.observe(idx, x[idx])
    return ohc


def test_online_clustering_labels_are_nested_and_prototypes_unit_norm():
    x, _ = blobs()
    ohc = run_online(OnlineHierarchicalClustering([16, 4, 2], epsilon=0.05, momentum=0.8, seed=0), x)
    labels = ohc.predict(x)
    assert labels.shape == (3, x.shape[0])
    for fine, coarse in zip(labels, labels[1:]):
        # Nested: every fine cluster maps to exactly one coarse cluster.
        for f in fine.unique():
            assert coarse[fine == f].unique().numel() == 1
    for p, k in zip(ohc.prototypes, [16, 4, 2]):
        assert p.shape == (k, 16)
        torch.testing.assert_close(p.norm(dim=1), torch.ones(k))
    # The batch labels from observe() obey the same nesting.
    idx = torch.arange(64)
    ohc.observe(idx, x[idx])
    batch = ohc.labels(idx)
    for fine, coarse in zip(batch, batch[1:]):
        pairs = {(int(a), int(b)) for a, b in zip(fine, coarse)}
        assert len({a for a, _ in pairs}) == len(pairs)


def test_online_clustering_recovers_blobs():
    x, y = blobs(n_per=50, centers=8, spread=0.1, seed=3)
    ohc = run_online(OnlineHierarchicalClustering([8, 2], epsilon=0.05, momentum=0.7, seed=1), x, steps=120, batch=100)
    pred = ohc.predict(x)[0].numpy()
    assert adjusted_rand_score(y.numpy(), pred) > 0.8


def test_unsure_samples_agree_only_with_themselves():
    x, _ = blobs(spread=0.6)
    ohc = OnlineHierarchicalClustering([16, 4], epsilon=0.5, unsure_threshold=0.5, seed=0)
    run_online(ohc, x, steps=5)
    idx = torch.arange(64)
    ohc.observe(idx, x[idx])
    labels = ohc.labels(idx)
    sure = ohc.predict(x[idx])  # predict marks nobody unsure
    unsure_fine = labels[0] != sure[0]
    assert unsure_fine.any(), "with a high threshold and flat assignments some samples must be unsure"
    own = labels[0][unsure_fine]
    # Unique labels, outside every cluster id, so no other sample shares them.
    assert own.unique().numel() == own.numel() and (own >= 16).all()
    assert ohc.last_stats["unsure_share"] > 0


def test_reseeding_revives_dead_prototypes():
    # Sinkhorn's equal partition keeps feeding even a far prototype, so starvation is rare; a prototype
    # whose usage EMA still drops below reseed_usage / K is moved onto a batch key.
    x, _ = blobs(centers=2, spread=0.05)
    ohc = OnlineHierarchicalClustering([6, 2], epsilon=0.05, reseed_usage=0.5, seed=0)
    ohc.observe(torch.arange(80), x)
    ohc.prototypes[0][0] = -F.normalize(x.mean(0), dim=0)
    ohc.usage[0][0] = 0.0
    others = ohc.prototypes[0][1:].clone()
    ohc.observe(torch.arange(80), x)
    assert ohc.last_stats["reseeded"] >= 1
    assert (x @ ohc.prototypes[0][0]).max() > 0.95  # it now sits on a key
    assert ohc.usage[0][0] == pytest.approx(1 / 6)
    # The living prototypes only moved by their EMA step (they stay close to where they were).
    assert (F.cosine_similarity(others, ohc.prototypes[0][1:]) > 0.9).all()


def test_online_state_dict_round_trip_continues_identically():
    x, _ = blobs()
    a = run_online(OnlineHierarchicalClustering([8, 2], seed=0), x, steps=10)
    b = OnlineHierarchicalClustering([8, 2], seed=0)
    b.load_state_dict({k: (v.clone() if torch.is_tensor(v) else v) for k, v in a.state_dict().items()})
    idx = torch.arange(50)
    a.observe(idx, x[idx])
    b.observe(idx, x[idx])
    assert torch.equal(a.labels(idx), b.labels(idx))
    for pa, pb in zip(a.prototypes, b.prototypes):
        torch.testing.assert_close(pa, pb)


def test_kmeans_criterion_is_nested_and_matches_sklearn():
    from sklearn.cluster import KMeans

    x, y = blobs(centers=6, spread=0.1)
    km = KMeansCriterion([6, 2], seed=0)
    km.on_epoch_start(0, lambda: x)
    table = km.table
    assert table.shape == (2, x.shape[0])
    ref = KMeans(6, n_init=1, random_state=0).fit_predict(x.numpy())
    assert adjusted_rand_score(ref, table[0].numpy()) == pytest.approx(1.0)
    for f in table[0].unique():
        assert table[1][table[0] == f].unique().numel() == 1
    torch.testing.assert_close(km.labels(torch.tensor([3, 0, 7])), table[:, [3, 0, 7]])
    assert adjusted_rand_score(table[0].numpy(), km.predict(x)[0].numpy()) > 0.95


def test_criteria_set_specs_activation_and_ground_truth():
    levels = torch.stack([torch.arange(100) % 10, torch.arange(100) % 10 // 5])
    cs = CriteriaSet(["instance", "gt:coarse", "proto-8", "proto-4"], levels, ["fine", "coarse"], warmup_epochs=2)
    assert cs.names == ["instance", "gt:coarse", "proto-8", "proto-4"]
    x, _ = blobs(n_per=25, centers=4)
    idx = torch.arange(20, 40)
    cs.observe(idx, x[idx])
    labels, names, positions = cs.labels(idx, epoch=0.5)
    assert names == ["instance", "gt:coarse"] and positions == [0, 1]
    assert torch.equal(labels[0], idx) and torch.equal(labels[1], levels[1, idx])
    labels, names, positions = cs.labels(idx, epoch=2.0)
    assert names == cs.names and positions == [0, 1, 2, 3] and labels.shape == (4, 20)


@pytest.mark.parametrize("specs,match", [
    (["proto-8"], "start with 'instance'"),
    (["instance", "proto-4", "proto-8"], "strictly decreasing"),
    (["instance", "clusters-5"], "unknown criteria"),
    (["instance", "gt:nope"], "unknown ground-truth level"),
    (["instance", "proto-1"], ">= 2"),
])
def test_criteria_set_rejects_bad_specs(specs, match):
    levels = torch.zeros(1, 10, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        CriteriaSet(specs, levels, ["fine"])


def test_online_clustering_refuses_nan_keys():
    x, _ = blobs()
    ohc = OnlineHierarchicalClustering([8, 2], seed=0)
    ohc.observe(torch.arange(10), x[:10])
    bad = x[:10].clone()
    bad[3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        ohc.observe(torch.arange(10), bad)
    assert all(torch.isfinite(p).all() for p in ohc.prototypes)


def test_criteria_set_keeps_the_given_order():
    levels = torch.stack([torch.arange(100) % 10, torch.arange(100) % 10 // 5])
    cs = CriteriaSet(["instance", "proto-8", "gt", "kmeans-4"], levels, ["fine", "coarse"])
    assert cs.names == ["instance", "proto-8", "gt:fine", "gt:coarse", "kmeans-4"]
    x, _ = blobs(n_per=25, centers=4)
    idx = torch.arange(30)
    cs.observe(idx, x[idx])
    labels, names, positions = cs.labels(idx, epoch=5.0)
    # kmeans has not been fitted (no epoch start) so it is not active yet; the rest keep their order.
    assert names == ["instance", "proto-8", "gt:fine", "gt:coarse"] and positions == [0, 1, 2, 3]
    assert torch.equal(labels[2], levels[0, idx]) and torch.equal(labels[3], levels[1, idx])
