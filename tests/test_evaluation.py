import pytest
import torch

from rcl_core.evaluation import hierarchy_faithfulness, knn_top1


def test_knn_matches_a_hand_count_and_small_temperatures_tend_to_1nn():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 5, generator=g)
    labels = torch.randint(0, 3, (60,), generator=g)
    test = torch.randn(40, 5, generator=g)
    truth = torch.randint(0, 3, (40,), generator=g)
    tn, qn = torch.nn.functional.normalize(train, dim=1), torch.nn.functional.normalize(test, dim=1)
    sim = qn @ tn.T
    # 1-NN by hand
    nn1 = labels[sim.argmax(1)]
    assert knn_top1(train, labels, test, truth, k=20, temperature=1e-6) == (nn1 == truth).float().mean().item()
    # k=5, T=0.5, by hand: weighted votes
    correct = 0
    for i in range(40):
        top = sim[i].topk(5)
        votes = [0.0, 0.0, 0.0]
        for s, j in zip(top.values.tolist(), top.indices.tolist()):
            votes[int(labels[j])] += float(torch.exp(torch.tensor(s / 0.5)))
        correct += int(max(range(3), key=lambda c: votes[c]) == int(truth[i]))
    assert knn_top1(train, labels, test, truth, k=5, temperature=0.5) == correct / 40


def _faithfulness_by_hand(x, levels):
    """Every triple (n, m, m') with m sharing more levels with n than m' does: cos(n,m) > cos(n,m')."""
    x = torch.nn.functional.normalize(x, dim=1)
    sim = (x @ x.T).tolist()
    n = x.shape[0]
    shared = [[sum(int(levels[l][a] == levels[l][b]) for l in range(len(levels))) for b in range(n)] for a in range(n)]
    good = total = 0.0
    for a in range(n):
        for m in range(n):
            for m2 in range(n):
                if a in (m, m2) or shared[a][m] <= shared[a][m2]:
                    continue
                total += 1
                good += 1.0 if sim[a][m] > sim[a][m2] else 0.5 if sim[a][m] == sim[a][m2] else 0.0
    return good / total


def test_faithfulness_matches_a_count_over_every_triple():
    g = torch.Generator().manual_seed(1)
    fine = torch.arange(18) % 6
    levels = torch.stack([fine, fine // 2, fine // 4])  # 6 -> 3 -> 2 classes, nested
    x = torch.randn(18, 4, generator=g) + 0.8 * torch.nn.functional.one_hot(fine // 2, 4).float()
    x[5] = x[4]  # a tie
    want = _faithfulness_by_hand(x, levels.tolist())
    assert hierarchy_faithfulness(x, levels) == pytest.approx(want, abs=1e-12)
    assert 0.5 < want < 1.0


def test_faithfulness_is_one_for_a_hierarchical_embedding_and_zero_for_an_inverted_one():
    fine = torch.arange(24) % 4
    levels = torch.stack([fine, fine // 2])
    # A coarse direction plus a smaller fine one: same fine class > same family > other family.
    onehot = torch.nn.functional.one_hot
    x = torch.cat([onehot(fine // 2, 2).float() * 2, onehot(fine, 4).float()], 1)
    assert hierarchy_faithfulness(x, levels) == 1.0
    # Each point's classmate sits opposite (cosine -1), the other class at right angles (0).
    angle = torch.tensor([0.0, 180.0, 90.0, 270.0]).deg2rad()
    y = torch.stack([angle.cos(), angle.sin()], 1)
    assert hierarchy_faithfulness(y, torch.tensor([[0, 0, 1, 1]])) == pytest.approx(0.0, abs=1e-6)
    # At most max_anchors anchors: the same value on an embedding every anchor agrees about.
    assert hierarchy_faithfulness(x, levels, max_anchors=5) == 1.0


def test_faithfulness_refuses_bad_input():
    levels = torch.zeros(1, 5, dtype=torch.long)
    for bad, match in ((dict(max_anchors=0), "max_anchors"), (dict(seed=-1), "seed")):
        with pytest.raises(ValueError, match=match):
            hierarchy_faithfulness(torch.randn(5, 3), torch.tensor([[0, 0, 1, 1, 2]]), **bad)
    with pytest.raises(ValueError, match="nested"):
        hierarchy_faithfulness(torch.randn(4, 3), torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]))
    # no direction at all: every pair ties, which counts one half (chance), as documented
    assert hierarchy_faithfulness(torch.zeros(4, 3), torch.tensor([[0, 0, 1, 1]])) == 0.5
    with pytest.raises(ValueError, match="integer class labels"):
        hierarchy_faithfulness(torch.randn(4, 3), torch.tensor([[0.0, 0.0, 1.0, float("nan")]]))
    with pytest.raises(ValueError, match="\\(N, F\\)"):
        hierarchy_faithfulness(torch.randn(4), torch.tensor([[0, 0, 1, 1]]))
    # scale-free, and a model output with gradients is fine
    x = torch.randn(6, 3, requires_grad=True)
    lab = torch.tensor([[0, 0, 1, 1, 2, 2]])
    assert hierarchy_faithfulness(x * 1e30, lab) == pytest.approx(hierarchy_faithfulness(x, lab))
    with pytest.raises(ValueError, match="two different depths"):
        hierarchy_faithfulness(torch.randn(5, 3), levels)
    with pytest.raises(ValueError, match="same N"):
        hierarchy_faithfulness(torch.randn(4, 3), levels)
    x = torch.randn(5, 3)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        hierarchy_faithfulness(x, torch.tensor([[0, 0, 1, 1, 2]]))
