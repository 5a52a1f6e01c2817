import torch

from rcl_core.evaluation import knn_top1


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
