"""Toy hierarchies of 2-D features on the unit circle, for teaching what RCL decides and why.

A toy set is a batch as the loss sees it: queries (one view of each sample), keys (the other view) and
labels under each criterion, fine -> coarse: ``instance`` (each sample its own class), ``fine``
(small clusters) and ``coarse`` (groups of fine clusters). With 2-D features every decision can be
drawn: each point's gradient is a tangent arrow on the circle (:func:`lab.figures.gradient_field`).

Example::

    >>> toy = toy_hierarchy(coarse=2, fine_per_coarse=3, points_per_fine=4)
    >>> toy.queries.shape, toy.labels.shape, toy.names
    ((24, 2), (3, 24), ['instance', 'fine', 'coarse'])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rcl_core.loss import RelativeContrastiveLoss

__all__ = ["ToySet", "toy_hierarchy", "anchor_gradients", "TOY_SETS"]


@dataclass
class ToySet:
    """A batch of 2-D unit features with a three-level hierarchy.

    ``queries`` and ``keys`` are float32 (N, 2) unit vectors (two views of the same N samples);
    ``labels`` is int64 (3, N) for ``names`` = instance, fine, coarse; ``fine_names`` and
    ``coarse_names`` name the clusters (``"A1"`` is the first fine cluster of coarse group ``A``).
    """

    name: str
    queries: torch.Tensor
    keys: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    fine_names: list[str]
    coarse_names: list[str]

    def __len__(self) -> int:
        return self.queries.shape[0]


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def toy_hierarchy(coarse: int = 2, fine_per_coarse: int = 3, points_per_fine: int = 4,
                  fine_spread: float = 0.7, point_spread: float = 0.25, view_noise: float = 0.05,
                  seed: int = 0, name: str | None = None) -> ToySet:
    """Points on the unit circle in ``coarse`` groups of ``fine_per_coarse`` clusters of ``points_per_fine``.

    Coarse groups sit evenly around the circle; inside a group, fine clusters are ``fine_spread``
    radians apart, and points scatter ``point_spread`` radians (s.d.) around their cluster: by default
    an untidy start, with clusters that overlap a little, as features look early in training. The key of a
    point is the same point turned by ``view_noise`` radians (s.d.): the second augmented view.
    """
    coarse = _check_count("coarse", coarse, 1)
    fine_per_coarse = _check_count("fine_per_coarse", fine_per_coarse, 1)
    points_per_fine = _check_count("points_per_fine", points_per_fine, 1)
    if coarse * fine_per_coarse * points_per_fine < 2:
        raise ValueError("a toy set needs at least 2 points (a contrastive batch needs negatives)")
    for arg, value in (("fine_spread", fine_spread), ("point_spread", point_spread), ("view_noise", view_noise)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{arg} must be a finite number >= 0 (radians), got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    angles, fine, group = [], [], []
    for c in range(coarse):
        centre = 2 * math.pi * c / coarse
        for f in range(fine_per_coarse):
            offset = (f - (fine_per_coarse - 1) / 2) * fine_spread
            angles.append(centre + offset + rng.normal(0, point_spread, points_per_fine))
            fine += [c * fine_per_coarse + f] * points_per_fine
            group += [c] * points_per_fine
    theta = np.concatenate(angles)
    theta_k = theta + rng.normal(0, view_noise, theta.shape)
    n = theta.shape[0]

    def circle(a):
        return torch.tensor(np.stack([np.cos(a), np.sin(a)], 1), dtype=torch.float32)

    letters = [chr(ord("A") + c) if c < 26 else f"G{c}" for c in range(coarse)]
    return ToySet(
        name=name or f"{coarse} coarse × {fine_per_coarse} fine × {points_per_fine} points",
        queries=circle(theta), keys=circle(theta_k),
        labels=torch.tensor(np.stack([np.arange(n), fine, group]), dtype=torch.long),
        names=["instance", "fine", "coarse"],
        fine_names=[f"{letters[c]}{f + 1}" for c in range(coarse) for f in range(fine_per_coarse)],
        coarse_names=letters,
    )


def anchor_gradients(loss_fn: RelativeContrastiveLoss, queries: torch.Tensor, keys: torch.Tensor | None,
                     labels: torch.Tensor) -> torch.Tensor:
    """d loss / d query (N, D) for the batch: where gradient descent moves each anchor is minus this.

    The keys get no gradient (the momentum encoder's side in MoCo v3).
    """
    q = queries.detach().clone().float().requires_grad_(True)
    k = None if keys is None else keys.detach().float()
    loss = loss_fn(q, k, labels, None if keys is None else labels)
    (grad,) = torch.autograd.grad(loss, q)
    return grad.detach()


def _sets() -> dict[str, ToySet]:
    # Spread wide enough that clusters are not yet tidy: that is where the two losses disagree.
    made = [toy_hierarchy(2, 3, 4, seed=0), toy_hierarchy(3, 2, 5, fine_spread=0.6, point_spread=0.2, seed=1),
            toy_hierarchy(4, 2, 3, fine_spread=0.45, point_spread=0.15, seed=2)]
    return {t.name: t for t in made}


TOY_SETS = _sets()
"""Three ready-made toy sets, by name: 2×3×4, 3×2×5 and 4×2×3 (coarse × fine × points)."""
