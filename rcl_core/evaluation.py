"""Evaluation on frozen features: kNN top-1, linear probe, and agreement of clusterings with ground truth."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def extract_features(encode, images: torch.Tensor, device: torch.device | str, batch_size: int = 512) -> torch.Tensor:
    """Run ``encode`` over ``images`` (N, C, H, W) in batches on ``device``; return (N, F) float32 on CPU."""
    out = [encode(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN top-1 accuracy (Wu et al. 2018 protocol): cosine similarity, the k nearest training
    samples vote for their class with weight exp(similarity / temperature)."""
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("knn_top1 needs non-empty train and test features")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    train_labels = train_labels.long()
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, test.shape[0], 1024):
        sim = test[start:start + 1024] @ train.T
        top, idx = sim.topk(k, dim=1)
        # Shifting by the row's best similarity leaves the vote unchanged and keeps exp() finite at small T.
        weight = torch.exp((top - top[:, :1]) / temperature)
        votes = torch.zeros(sim.shape[0], classes).scatter_add_(1, train_labels[idx], weight)
        correct += int((votes.argmax(1) == test_labels[start:start + 1024].long()).sum())
    return correct / test.shape[0]


def linear_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                test_labels: torch.Tensor, seed: int = 0) -> float:
    """Linear probe: multinomial logistic regression (scikit-learn) on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_labels.numpy())) < 2:
        raise ValueError("linear_top1 needs at least 2 classes in train_labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    probe.fit(train_features.numpy(), train_labels.numpy())
    return float(probe.score(test_features.numpy(), test_labels.numpy()))


def clustering_agreement(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """NMI, ARI and purity of a clustering against ground-truth labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    predicted, truth = np.asarray(predicted), np.asarray(truth)
    table = contingency_matrix(truth, predicted)
    return {"nmi": float(normalized_mutual_info_score(truth, predicted)),
            "ari": float(adjusted_rand_score(truth, predicted)),
            "purity": float(table.max(0).sum() / table.sum())}


def kmeans_labels(features: torch.Tensor, clusters: int, seed: int = 0) -> np.ndarray:
    """k-means (scikit-learn) on L2-normalised features: how a run without learned criteria clusters."""
    from sklearn.cluster import KMeans

    x = F.normalize(features.float(), dim=1).numpy()
    return KMeans(min(clusters, x.shape[0]), n_init=3, random_state=seed).fit_predict(x)


def shared_levels(levels_a: np.ndarray, levels_b: np.ndarray) -> np.ndarray:
    """How many ground-truth levels two samples agree at, for nested levels (L, ...) each: L when they share
    the finest class, 0 when not even the coarsest one -- the depth of their lowest common ancestor."""
    return (np.asarray(levels_a) == np.asarray(levels_b)).sum(0)


def hierarchy_faithfulness(features: torch.Tensor, levels: torch.Tensor, max_anchors: int = 2000,
                           seed: int = 0) -> float:
    """How well cosine similarity orders pairs by the depth of their lowest common ground-truth ancestor.

    For an anchor n and two other samples m, m' where m shares more (nested) levels with n than m' does,
    the probability that cos(n, m) > cos(n, m'), ties counting one half; averaged over every such triple
    (n, m, m') with n among at most ``max_anchors`` anchors (an even random sample beyond that, by
    ``seed``). 1: similarity ranks every pair by its hierarchy; 0.5: no better than chance. With one level
    it is the ROC AUC of "same class" against cosine similarity, pooled over anchors.

    ``features`` (N, F), any scale; an all-zero row has cosine 0 with every sample (so all-zero features give
    0.5). ``levels`` (L, N) integer labels, fine -> coarse, nested.
    """
    raw = torch.as_tensor(features).detach().cpu()
    lv = np.asarray(levels)
    if raw.dim() != 2 or lv.ndim != 2 or lv.shape[1] != raw.shape[0] or raw.shape[1] == 0:
        raise ValueError(f"features must be (N, F) with F >= 1 and levels (L, N) with the same N, got "
                         f"{tuple(raw.shape)} and {lv.shape}")
    if lv.dtype.kind not in "iub":
        raise ValueError(f"levels must hold integer class labels, got dtype {lv.dtype}")
    for fine, coarse in zip(lv, lv[1:]):
        if len(np.unique(np.stack([fine, coarse]), axis=1)[0]) != len(np.unique(fine)):
            raise ValueError("levels must be nested, fine -> coarse: a class of one level belongs to one class of "
                             "the next")
    if isinstance(max_anchors, bool) or not isinstance(max_anchors, (int, np.integer)) or max_anchors < 1:
        raise ValueError(f"max_anchors must be an integer >= 1, got {max_anchors!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    raw = raw.double()  # float64: cosine ignores scale, and huge features must not overflow the norm
    if not bool(torch.isfinite(raw).all()):
        raise ValueError("features must be finite (got NaN or Inf)")
    x = F.normalize(raw, dim=1)  # an all-zero row has cosine 0 with everything, as in knn_top1
    n = x.shape[0]
    anchors = np.arange(n)
    if n > max_anchors:
        anchors = np.sort(np.random.default_rng(seed).choice(n, max_anchors, replace=False))
    sims = (x[torch.as_tensor(anchors)] @ x.T).numpy()
    above = pairs = 0.0
    for row, a in enumerate(anchors):
        depth = shared_levels(lv[:, a:a + 1], lv)
        depth[a] = -1  # the anchor itself is not a pair
        by_depth = [np.sort(sims[row, depth == d]) for d in range(lv.shape[0] + 1)]
        for d, lower in enumerate(by_depth):
            if lower.size == 0:
                continue
            for upper in by_depth[d + 1:]:
                if upper.size:
                    # For every deeper pair: the shallower pairs below it, plus half of the ties.
                    below = np.searchsorted(lower, upper, side="left")
                    tied = np.searchsorted(lower, upper, side="right") - below
                    above += float(below.sum() + 0.5 * tied.sum())
                    pairs += float(upper.size * lower.size)
    if pairs == 0:
        raise ValueError("hierarchy_faithfulness needs pairs at two different depths: samples that share a "
                         "class and samples that do not")
    return above / pairs


def evaluate_features(train_features: torch.Tensor, train_levels: torch.Tensor, test_features: torch.Tensor,
                      test_levels: torch.Tensor, level_names: Sequence[str], k: int = 20,
                      temperature: float = 0.07, seed: int = 0, linear: bool = True) -> dict:
    """kNN top-1 at every ground-truth level (finest first), linear top-1 at the finest, k-means NMI/ARI
    of the test features per level (k = number of classes at that level), and the hierarchy faithfulness
    of the test features (:func:`hierarchy_faithfulness`)."""
    out: dict = {"knn_top1_per_level": {}, "kmeans_nmi": {}, "kmeans_ari": {}}
    for row, name in enumerate(level_names):
        out["knn_top1_per_level"][name] = knn_top1(train_features, train_levels[row], test_features,
                                                   test_levels[row], k, temperature)
        truth = test_levels[row].numpy()
        agree = clustering_agreement(kmeans_labels(test_features, len(np.unique(truth)), seed), truth)
        out["kmeans_nmi"][name], out["kmeans_ari"][name] = agree["nmi"], agree["ari"]
    out["knn_top1"] = out["knn_top1_per_level"][level_names[0]]
    out["faithfulness"] = hierarchy_faithfulness(test_features, test_levels, seed=seed)
    if linear:
        out["linear_top1"] = linear_top1(train_features, train_levels[0], test_features, test_levels[0], seed)
    return out
