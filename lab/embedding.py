"""2-D layouts of feature vectors for the lab's scatter plots.

:func:`umap_embedding` is the one entry point. It returns an :class:`Embedding` — the coordinates and
the name of the method that actually produced them — because a small batch (a live view after the
first step, a test with three samples) cannot be laid out by UMAP, and a plot of a PCA fallback must
not be labelled "UMAP".

Example::

    >>> emb = umap_embedding(features)          # features: (N, F)
    >>> emb.coords.shape, emb.method
    ((N, 2), 'umap')
    >>> coords, method = umap_embedding(features)   # it is a NamedTuple, so it unpacks too
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["Embedding", "umap_embedding", "MIN_UMAP_SAMPLES"]

# UMAP's spectral initialisation needs k < N eigenvectors and its kNN graph needs >= 2 neighbours;
# below 5 samples it either raises (N <= 3) or returns a layout driven by the random init alone.
MIN_UMAP_SAMPLES = 5


class Embedding(NamedTuple):
    """A 2-D layout: ``coords`` float64 (N, 2) and the ``method`` that produced it.

    ``method`` is ``"umap"``, ``"pca"`` (too few samples for UMAP, or UMAP failed on degenerate
    input) or ``"trivial"`` (N <= 1, or no variance at all: every point at the origin).
    """

    coords: np.ndarray
    method: str


def umap_embedding(features, n_neighbors: int | None = None, random_state: int = 0) -> Embedding:
    """Lay out ``features`` (N, F) in 2-D with UMAP (cosine metric), falling back to PCA when N is tiny.

    Parameters
    ----------
    features : array-like, shape (N, F)
        Finite feature vectors, one row per sample (e.g. frozen backbone features). Cosine is the
        metric the contrastive objective trains, so neighbourhoods are taken in that metric.
    n_neighbors : int, optional
        UMAP's neighbourhood size. Default ``min(15, N - 1)``: UMAP's usual 15, shrunk for small sets
        where 15 neighbours would be the whole set. Clipped to ``[2, N - 1]``.
    random_state : int
        Seed for UMAP's initialisation and optimisation; the same seed gives the same layout
        (UMAP then runs single-threaded, which is what makes it reproducible).

    Returns
    -------
    Embedding
        ``(coords, method)``; ``coords`` is float64 (N, 2) and finite.

    Raises
    ------
    ValueError
        If ``features`` is not 2-D or holds NaN/Inf, or if ``n_neighbors`` < 1.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, F), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"features must be finite; {bad} of {x.shape[0]} rows hold NaN or Inf")
    if n_neighbors is not None and n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")

    n = x.shape[0]
    if n <= 1 or x.shape[1] == 0:
        return Embedding(np.zeros((n, 2)), "trivial")
    if n < MIN_UMAP_SAMPLES:
        return _pca_layout(x)

    k = min(15, n - 1) if n_neighbors is None else n_neighbors
    k = int(min(max(k, 2), n - 1))
    try:
        import umap  # deferred: importing umap compiles numba code, seconds the rest of lab never pays

        with warnings.catch_warnings():
            # "n_jobs overridden to 1 by setting random_state" and small-graph notices: expected here.
            warnings.simplefilter("ignore")
            reducer = umap.UMAP(n_neighbors=k, n_components=2, metric="cosine", random_state=random_state)
            coords = np.asarray(reducer.fit_transform(x), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a plot must survive degenerate input; PCA is the honest fallback
        return _pca_layout(x)
    if coords.shape != (n, 2) or not np.isfinite(coords).all():
        return _pca_layout(x)
    return Embedding(coords, "umap")


def _pca_layout(x: np.ndarray) -> Embedding:
    from sklearn.decomposition import PCA

    centred = x.astype(np.float64) - x.mean(axis=0, keepdims=True)
    if not np.any(np.abs(centred) > 0):
        return Embedding(np.zeros((x.shape[0], 2)), "trivial")
    n_comp = min(2, x.shape[0], x.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient input: zero-variance components are fine
        proj = PCA(n_components=n_comp, svd_solver="full").fit_transform(centred)
    coords = np.zeros((x.shape[0], 2))
    coords[:, :n_comp] = np.nan_to_num(proj)
    return Embedding(coords, "pca")
