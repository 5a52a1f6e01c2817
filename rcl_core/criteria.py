"""Criteria: the label sets M_1 .. M_H that RCL compares pairs under, ordered fine -> coarse.

Every criterion yields integer labels for a batch (``labels(indices) -> (h, B)``); a
:class:`CriteriaSet` stacks them. Criterion names follow the spec strings of the config:

- ``instance``: each image agrees only with its other view (its dataset index is its label);
- ``gt`` / ``gt:LEVEL``: ground-truth levels of the dataset (oracle ablation, teaching);
- ``kmeans-K``: k-means of granularity K on the training set's key features, recomputed each epoch;
  several granularities form one hierarchical k-means, so their labels are nested;
- ``proto-K``: the paper's online hierarchical clustering, one prototype level per entry (K decreasing).

Online hierarchical clustering (DESIGN.md section 1): keys are assigned to level-1 prototypes by log-domain
Sinkhorn-Knopp with an equal partition; the argmax is the label; prototypes follow their assigned keys by
EMA and are re-normalised; rarely used prototypes are re-seeded from batch keys. Each level-l prototype
has a parent at level l+1, found the same way with the children weighted by usage, and a sample's coarse
label is its fine label's parent, so labels are nested by construction. A sample whose assignment mass
at a level is below ``unsure_threshold`` is "unsure" there: it gets a label of its own, so it agrees only
with its own views at that level.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
             row_marginal: torch.Tensor | None = None, col_marginal: torch.Tensor | None = None) -> torch.Tensor:
    """Entropic optimal transport plan of ``scores`` (B, K), computed in the log domain.

    Returns P (B, K) with column sums ``col_marginal`` (default equal partition, 1/K each) and row
    sums approaching ``row_marginal`` (default 1/B each) as ``iterations`` grows; the last update is on
    columns, so the partition is exact. Divide a row by its sum to get an assignment distribution.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (batch, prototypes), got {tuple(scores.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    b, k = scores.shape
    s = scores.float() / epsilon
    log_r = (torch.full((b,), -np.log(b), device=s.device) if row_marginal is None
             else row_marginal.float().clamp_min(1e-12).log())
    log_c = (torch.full((k,), -np.log(k), device=s.device) if col_marginal is None
             else col_marginal.float().clamp_min(1e-12).log())
    u = torch.zeros(b, device=s.device)
    v = torch.zeros(k, device=s.device)
    for _ in range(iterations):
        u = log_r - torch.logsumexp(s + v[None], dim=1)
        v = log_c - torch.logsumexp(s + u[:, None], dim=0)
    return torch.exp(s + u[:, None] + v[None])


class Criterion:
    """One or more levels of labels. Subclasses set ``names`` (one per level) and ``learned``."""

    names: list[str]
    learned = False

    def labels(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels (levels, B) of the samples with dataset ``indices`` (B,)."""
        raise NotImplementedError

    def label_keys(self, keys: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Labels of an inspection batch with its key features (B, D), learning nothing from it. Criteria
        that label by index (instance, ground truth, k-means tables) ignore the keys."""
        return self.labels(indices)

    def active(self, epoch: float) -> bool:
        return True

    def observe(self, indices: torch.Tensor, keys: torch.Tensor) -> None:
        """See a batch of L2-normalised key features (B, D); online criteria learn from it."""

    def on_epoch_start(self, epoch: int, features: Callable[[], torch.Tensor]) -> None:
        """Called before each epoch; ``features()`` returns the training set's key features (N, D)."""

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Labels (levels, N) for new samples' key features, for evaluation of learned criteria."""
        raise NotImplementedError(f"{type(self).__name__} does not label new samples")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class InstanceCriterion(Criterion):
    names = ["instance"]

    def labels(self, indices):
        return indices[None].long()


class GroundTruthCriterion(Criterion):
    """Ground-truth levels: ``table`` (levels, N) of the training set, ``names`` one per level."""

    def __init__(self, table: torch.Tensor, names: Sequence[str]):
        self.table = table.long()
        self.names = [f"gt:{n}" for n in names]

    def labels(self, indices):
        return self.table[:, indices.to(self.table.device)].to(indices.device)


def _check_levels(kind: str, levels: Sequence[int]) -> list[int]:
    levels = [int(k) for k in levels]
    if not levels or any(k < 2 for k in levels):
        raise ValueError(f"{kind} levels must be integers >= 2, got {levels}")
    if any(a <= b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"{kind} levels must be strictly decreasing (fine -> coarse), got {levels}")
    return levels


class KMeansCriterion(Criterion):
    """Hierarchical k-means recomputed each epoch on the training set's key features (scikit-learn).

    Level 1 clusters the features into ``levels[0]`` clusters; level l+1 clusters level l's centroids,
    weighted by their sizes, so a sample's coarse label is its fine cluster's parent: nested labels.
    """

    learned = True

    def __init__(self, levels: Sequence[int], warmup_epochs: float = 0.0, seed: int = 0):
        self.levels = _check_levels("kmeans", levels)
        self.names = [f"kmeans-{k}" for k in self.levels]
        self.warmup_epochs = warmup_epochs
        self.seed = seed
        self.table: torch.Tensor | None = None  # (levels, N) labels of the training set
        self.centroids: torch.Tensor | None = None  # level-1 centroids (K1, D)
        self.parents: list[torch.Tensor] = []

    def active(self, epoch):
        return epoch >= self.warmup_epochs and self.table is not None

    def on_epoch_start(self, epoch, features):
        if epoch + 1 <= self.warmup_epochs:
            return  # not needed before the epoch it switches on in
        from sklearn.cluster import KMeans

        x = F.normalize(features().float(), dim=1).cpu().numpy()
        if x.shape[0] < self.levels[0]:
            raise ValueError(f"kmeans-{self.levels[0]} needs at least {self.levels[0]} training samples, "
                             f"got {x.shape[0]}")
        state = (self.seed * 1000 + epoch) % (2 ** 32 - 1)
        km = KMeans(self.levels[0], n_init=1, random_state=state).fit(x)
        label = km.labels_
        rows = [label]
        centroids, weight = km.cluster_centers_, np.bincount(label, minlength=self.levels[0]).astype(float)
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32)
        self.parents = []
        for k in self.levels[1:]:
            upper = KMeans(k, n_init=3, random_state=state).fit(centroids, sample_weight=weight + 1e-6)
            parent = upper.labels_
            self.parents.append(torch.as_tensor(parent, dtype=torch.long))
            label = parent[label]
            rows.append(label)
            weight = np.bincount(parent, weights=weight, minlength=k)
            centroids = upper.cluster_centers_
        self.table = torch.as_tensor(np.stack(rows), dtype=torch.long)

    def labels(self, indices):
        if self.table is None:
            raise RuntimeError("kmeans labels are computed at the start of the first epoch after warm-up")
        return self.table[:, indices.cpu()].to(indices.device)

    def predict(self, features):
        if self.centroids is None:
            raise RuntimeError("kmeans has not been fitted yet")
        x = F.normalize(features.float().cpu(), dim=1)
        label = torch.cdist(x, self.centroids.cpu()).argmin(1)
        rows = [label]
        for parent in self.parents:
            label = parent.cpu()[label]
            rows.append(label)
        return torch.stack(rows)

    def state_dict(self):
        return {"table": self.table, "centroids": self.centroids, "parents": self.parents}

    def load_state_dict(self, state):
        self.table, self.centroids, self.parents = state["table"], state["centroids"], list(state["parents"])


class OnlineHierarchicalClustering(Criterion):
    """The paper's criteria: prototype levels ``levels`` (K_1 > K_2 > ...) learned online from keys.

    Args:
        levels: prototypes per level, strictly decreasing.
        epsilon, iterations: Sinkhorn-Knopp entropy and iterations.
        momentum: EMA factor of prototypes (new = momentum * old + (1 - momentum) * batch mean).
        unsure_threshold: a sample whose assignment mass at a level is below it agrees only with itself.
        warmup_epochs: the criteria join the loss from this epoch on (instance only before).
        reseed_usage: a prototype whose usage EMA falls below ``reseed_usage / K`` is re-seeded.
        seed: for initialisation and re-seeding.
    """

    learned = True

    def __init__(self, levels: Sequence[int], epsilon: float = 0.05, iterations: int = 3, momentum: float = 0.9,
                 unsure_threshold: float = 0.0, warmup_epochs: float = 0.0, reseed_usage: float = 0.05,
                 seed: int = 0):
        self.levels = _check_levels("proto", levels)
        self.names = [f"proto-{k}" for k in self.levels]
        self.epsilon, self.iterations, self.momentum = epsilon, iterations, momentum
        self.unsure_threshold, self.warmup_epochs, self.reseed_usage = unsure_threshold, warmup_epochs, reseed_usage
        self.seed = seed
        self.prototypes: list[torch.Tensor] = []  # per level (K_l, D), unit norm
        self.parents: list[torch.Tensor] = []  # per level but the last (K_l,) -> index at level l+1
        self.usage: list[torch.Tensor] = []  # per level (K_l,), EMA of the share of samples assigned
        self.generator: torch.Generator | None = None
        self.steps = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (indices, labels) of the last batch
        self.last_stats: dict[str, float] = {}

    def active(self, epoch):
        return epoch >= self.warmup_epochs and bool(self.prototypes)

    def _init(self, keys: torch.Tensor) -> None:
        self.generator = torch.Generator(device=keys.device).manual_seed(self.seed)
        d = keys.shape[1]
        source = keys
        for k in self.levels:
            # Start each level from its input points (keys, then the finer prototypes) plus noise, so no
            # prototype starts far from the data.
            pick = torch.randint(0, source.shape[0], (k,), generator=self.generator, device=keys.device)
            noise = torch.randn(k, d, generator=self.generator, device=keys.device) * 0.1 / d ** 0.5
            self.prototypes.append(F.normalize(source[pick] + noise, dim=1))
            self.usage.append(torch.full((k,), 1.0 / k, device=keys.device))
            source = self.prototypes[-1]
        for fine, coarse in zip(self.prototypes, self.prototypes[1:]):
            self.parents.append((fine @ coarse.T).argmax(1))

    def _assign(self, points: torch.Tensor, prototypes: torch.Tensor, weight: torch.Tensor | None):
        plan = sinkhorn(points @ prototypes.T, self.epsilon, self.iterations, row_marginal=weight)
        return plan / plan.sum(1, keepdim=True).clamp_min(1e-30)

    def _ema(self, level: int, points: torch.Tensor, weight: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
        """Move level ``level``'s prototypes to the weighted mean of their assigned points; return counts."""
        protos = self.prototypes[level]
        k = protos.shape[0]
        onehot = F.one_hot(assign, k).to(points.dtype) * weight[:, None]
        mass = onehot.sum(0)
        mean = (onehot.T @ points) / mass.clamp_min(1e-12)[:, None]
        used = mass > 0
        m = self.momentum
        moved = F.normalize(m * protos + (1 - m) * mean, dim=1)
        self.prototypes[level] = torch.where(used[:, None], moved, protos)
        share = mass / mass.sum().clamp_min(1e-12)
        self.usage[level] = 0.9 * self.usage[level] + 0.1 * share
        return mass

    def _reseed(self, level: int, points: torch.Tensor) -> int:
        k = self.levels[level]
        dead = self.usage[level] < self.reseed_usage / k
        n = int(dead.sum())
        if n:
            pick = torch.randint(0, points.shape[0], (n,), generator=self.generator, device=points.device)
            noise = torch.randn(n, points.shape[1], generator=self.generator, device=points.device) * 0.05
            self.prototypes[level][dead] = F.normalize(points[pick] + noise / points.shape[1] ** 0.5, dim=1)
            self.usage[level][dead] = 1.0 / k
        return n

    @torch.no_grad()
    def _label(self, keys: torch.Tensor, indices: torch.Tensor | None, update: bool):
        keys = F.normalize(keys.float(), dim=1)
        assign = self._assign(keys, self.prototypes[0], None)  # (B, K1), rows sum to 1
        label = assign.argmax(1)
        rows, conf = [label], [assign.gather(1, label[:, None]).squeeze(1)]
        if update:
            ones = torch.ones(keys.shape[0], device=keys.device)
            self._ema(0, keys, ones, label)
            reseeded = self._reseed(0, keys)
        for level in range(1, len(self.levels)):
            parent = self.parents[level - 1]
            if update:
                # Parents: the finer prototypes, weighted by usage, assigned to this level's prototypes.
                fine, w = self.prototypes[level - 1], self.usage[level - 1]
                plan = self._assign(fine, self.prototypes[level], w / w.sum())
                parent = plan.argmax(1)
                self._ema(level, fine, w, parent)
                reseeded += self._reseed(level, fine)
                self.parents[level - 1] = parent
            # Mass of a coarse cluster = summed mass of its children: confidence only grows with level.
            assign = torch.zeros(keys.shape[0], self.levels[level], device=keys.device).index_add_(1, parent, assign)
            label = parent[label]
            rows.append(label)
            conf.append(assign.gather(1, label[:, None]).squeeze(1))
        labels, conf = torch.stack(rows), torch.stack(conf)
        unsure = conf < self.unsure_threshold
        if indices is not None and bool(unsure.any()):
            # A label no cluster uses: unique per sample (offset past every level's cluster ids).
            own = indices.to(keys.device)[None].expand_as(labels) + max(self.levels)
            labels = torch.where(unsure, own, labels)
        if update:
            self.last_stats = {"unsure_share": float(unsure.float().mean()), "reseeded": float(reseeded),
                               "used_prototypes": float((self.usage[0] > 0.5 / self.levels[0]).sum())}
        return labels

    def observe(self, indices, keys):
        if keys.dim() != 2 or indices.shape != (keys.shape[0],):
            raise ValueError(f"keys must be (B, D) with indices (B,); got {tuple(keys.shape)} and {tuple(indices.shape)}")
        if not torch.isfinite(keys).all():
            raise FloatingPointError("online clustering got NaN or Inf keys: training has diverged "
                                     "(lower --lr or raise --temperature)")
        if not self.prototypes:
            self._init(F.normalize(keys.float(), dim=1))
        self._last = (indices, self._label(keys, indices, update=True))
        self.steps += 1

    def label_keys(self, keys, indices):
        """Labels (levels, B) of a batch's key features without learning from them (inspection)."""
        if not self.prototypes:
            raise RuntimeError("online clustering has not seen any batch yet")
        return self._label(keys.to(self.prototypes[0].device), indices, update=False).to(indices.device)

    def labels(self, indices):
        if self._last is None or not torch.equal(self._last[0], indices):
            raise RuntimeError("online clustering labels come from observe() on the same batch")
        return self._last[1].to(indices.device)

    def predict(self, features):
        if not self.prototypes:
            raise RuntimeError("online clustering has not seen any batch yet")
        return self._label(features.to(self.prototypes[0].device), None, update=False)

    def state_dict(self):
        return {"prototypes": self.prototypes, "parents": self.parents, "usage": self.usage, "steps": self.steps,
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state):
        self.prototypes, self.parents, self.usage = list(state["prototypes"]), list(state["parents"]), list(state["usage"])
        self.steps = state["steps"]
        if state["generator"] is not None:
            self.generator = torch.Generator(device=self.prototypes[0].device)
            self.generator.set_state(state["generator"].cpu())


_SPEC = re.compile(r"^(instance|gt|gt:.+|kmeans-\d+|proto-\d+)$")


class CriteriaSet:
    """The criteria of a run, built from spec strings (see the module docstring).

    ``names`` keeps the order the specs were given in (``gt`` expands in place to one name per
    ground-truth level), and that order is the order of the label rows, of weights and of thresholds.
    ``labels(indices, epoch)`` returns ``(labels (H_active, B), names, positions)`` for the criteria that
    are switched on at ``epoch``; ``positions`` index ``names`` (to pick their weights).
    """

    def __init__(self, specs: Sequence[str], level_table: torch.Tensor | None = None,
                 level_names: Sequence[str] = (), warmup_epochs: float = 0.0, seed: int = 0, **clustering):
        specs = list(specs)
        bad = [s for s in specs if not isinstance(s, str) or not _SPEC.match(s)]
        if bad:
            raise ValueError(f"unknown criteria {bad}: use instance, gt, gt:LEVEL, kmeans-K or proto-K (K >= 2)")
        if not specs or specs[0] != "instance":
            raise ValueError(f"criteria must start with 'instance', got {specs}")
        self.criteria: list[Criterion] = [InstanceCriterion()]
        names: list[str] = ["instance"]
        groups: dict[str, list[int]] = {"kmeans": [], "proto": []}
        for s in specs[1:]:
            if s == "instance":
                raise ValueError("'instance' may appear only once, first")
            if s.startswith("gt"):
                if level_table is None:
                    raise ValueError("ground-truth criteria need the dataset's levels")
                available = list(level_names)
                chosen = available if s == "gt" else [s[3:]]
                missing = [n for n in chosen if n not in available]
                if missing:
                    raise ValueError(f"unknown ground-truth level {missing}; the dataset has {available}")
                gt = GroundTruthCriterion(level_table[[available.index(n) for n in chosen]], chosen)
                self.criteria.append(gt)
                names += gt.names
            else:
                kind, k = s.split("-")
                groups[kind].append(int(k))
                names.append(s)
        if groups["kmeans"]:
            self.criteria.append(KMeansCriterion(groups["kmeans"], warmup_epochs, seed))
        if groups["proto"]:
            self.criteria.append(OnlineHierarchicalClustering(groups["proto"], warmup_epochs=warmup_epochs, seed=seed,
                                                              **clustering))
        if len(set(names)) != len(names):
            raise ValueError(f"criteria repeat: {names}")
        self.names = names

    def check_dataset_size(self, n: int) -> None:
        """Clusterings need at least as many training samples as clusters; say so before training."""
        for c in self.learned:
            if c.levels[0] > n:
                raise ValueError(f"{c.names[0]} asks for {c.levels[0]} clusters but the training set has only "
                                 f"{n} samples; use a smaller K")

    @property
    def learned(self) -> list[Criterion]:
        return [c for c in self.criteria if c.learned]

    def observe(self, indices, keys):
        for c in self.criteria:
            c.observe(indices, keys)

    def on_epoch_start(self, epoch, features):
        cached = {}

        def once():
            if "x" not in cached:
                cached["x"] = features()
            return cached["x"]

        for c in self.criteria:
            c.on_epoch_start(epoch, once)

    def labels(self, indices: torch.Tensor, epoch: float, keys: torch.Tensor | None = None):
        """``keys``: the batch's key features, to label an inspection batch that ``observe`` did not see
        (online clustering labels them without learning); training passes None."""
        by_name = {}
        for c in self.criteria:
            if c.active(epoch):
                rows = c.labels(indices) if keys is None else c.label_keys(keys, indices)
                by_name.update(zip(c.names, rows))
        positions = [i for i, n in enumerate(self.names) if n in by_name]
        names = [self.names[i] for i in positions]
        return torch.stack([by_name[n] for n in names]), names, positions

    def predict(self, features: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Names and labels (C, N) of the learned criteria for new samples' key features."""
        by_name = {}
        for c in self.learned:
            try:
                by_name.update(zip(c.names, c.predict(features).cpu()))
            except RuntimeError:
                continue  # not fitted yet (e.g. a run stopped inside the warm-up)
        # Fine -> coarse within the learned criteria, whatever order the specs gave.
        names = sorted(by_name, key=lambda n: -int(n.split("-")[1]))
        rows = [by_name[n] for n in names]
        return names, (torch.stack(rows) if rows else torch.zeros(0, features.shape[0], dtype=torch.long))

    def state_dict(self):
        return {"names": self.names, "criteria": [c.state_dict() for c in self.criteria]}

    def load_state_dict(self, state):
        if state["names"] != self.names:
            raise ValueError(f"checkpoint criteria {state['names']} do not match the run's {self.names}")
        for c, s in zip(self.criteria, state["criteria"]):
            c.load_state_dict(s)
