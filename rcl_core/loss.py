"""Relative Contrastive Loss (RCL).

Reference: Tang, Zhu, Bai, Zhao, Ouyang, "Relative Contrastive Loss for Unsupervised Representation
Learning", ECCV 2022 (poster: "Relative Contrastive Loss for Self-supervised Learning"). The poster gives
the loss as a sum over criteria and the pull/push rule; the exact formulas below are derived from that
definition (see DESIGN.md section 1), not copied from the authors' code.

Softmax form, anchors ``q_n`` and keys ``k_m`` L2-normalised, temperature ``tau``::

    P_f(m|n) = softmax_m(q_n . k_m / tau)                       feature similarity
    T_i(m|n) = 1[y_i(n) = y_i(m)] / #{m' : y_i(n) = y_i(m')}
    L(n)     = sum_i w_i * (-sum_m T_i(m|n) log P_f(m|n))        = W * CE(P_s, P_f)
    P_s      = sum_i w_i T_i / W                                 relativeness

The gradient with respect to the logit ``q_n . k_m / tau`` is ``W (P_f - P_s)``: a pair is *pulled*
when ``P_f < P_s`` and *pushed* when ``P_f > P_s``.

Sigmoid form, cosine ``s``, thresholds ``t_1 > ... > t_H``, agreement ``a_i = +-1``::

    L = mean over pairs of sum_i w_i softplus(-a_i (s - t_i) / tau)

Cost: the positive part of each criterion is linear in the logits, so it is computed from per-label
key sums in O((N + M) D) per criterion; the only N x M tensor is the one InfoNCE needs too.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Sized
from numbers import Real
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

FORMS = ("softmax", "sigmoid")
MIN_TEMPERATURE = 1e-4


@dataclass
class RCLExplanation:
    """What the loss decided for every (anchor, key) pair. All matrices are (N, M), on the input device.

    ``relativeness`` is P_s; in the softmax form each anchor's row sums to 1 over its agreeing keys
    (0 for an anchor that agrees with no key under any criterion); in the sigmoid form it is the
    weighted share of criteria under which the pair agrees. ``feature_similarity`` is P_f in the same
    sense. ``logit_grad`` is d loss / d logits with logits = cosine / temperature. ``agreement`` is a
    bool (H, N, M) tensor — built only here, for inspection of small batches.
    """

    loss: torch.Tensor
    per_criterion: torch.Tensor
    feature_similarity: torch.Tensor
    relativeness: torch.Tensor
    pull: torch.Tensor
    push: torch.Tensor
    logit_grad: torch.Tensor
    cosine: torch.Tensor
    agreement: torch.Tensor
    weights: torch.Tensor
    self_contrast: bool

    @property
    def excess(self) -> torch.Tensor:
        """W * KL(P_s || P_f) averaged over anchors (softmax form): what training can still remove."""
        ps, pf = self.relativeness, self.feature_similarity
        w_row = _row_weight(self.agreement, self.weights, self.self_contrast)
        kl = torch.where(ps > 0, ps * (ps.clamp_min(1e-30).log() - pf.clamp_min(1e-30).log()),
                         torch.zeros_like(ps)).sum(1)
        return (w_row * kl).mean()


def _row_weight(agreement: torch.Tensor, weights: torch.Tensor, self_contrast: bool) -> torch.Tensor:
    agree = agreement.clone()
    if self_contrast:
        agree[:, torch.arange(agree.shape[1]), torch.arange(agree.shape[1])] = False
    has = agree.any(2).to(weights.dtype)  # (H, N)
    return (weights[:, None] * has).sum(0)


def _check_features(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, dim) with batch, dim >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if (x.detach().abs().amax(1) == 0).any():
        raise ValueError(f"{name} contains zero vectors, which cannot be normalised")


def _unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows of any finite norm: dividing by the row's max first keeps the squared norm from
    overflowing (norms above ~1e19 in float32) or vanishing under normalize's eps (norms below ~1e-12)."""
    return F.normalize(x / x.abs().amax(1, keepdim=True), dim=1)


def _check_labels(name: str, labels: torch.Tensor, batch: int, criteria: int | None) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor of shape (criteria, batch), "
                        f"got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.dim() == 1:
        labels = labels[None]
    if labels.dim() != 2 or labels.shape[1] != batch or labels.shape[0] == 0:
        raise ValueError(f"{name} must have shape (criteria, {batch}), got {tuple(labels.shape)}")
    if criteria is not None and labels.shape[0] != criteria:
        raise ValueError(f"{name} has {labels.shape[0]} criteria but labels_q has {criteria}")
    return labels.long()


def _as_weights(weights, criteria: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones(criteria, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != criteria:
        raise ValueError(f"weights must have one value per criterion ({criteria}), got {w.numel()}")
    return w


def _floats(name: str, values) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().flatten().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of numbers (one per criterion), got {values!r}")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers (one per criterion), got {values!r}") from None


def validate_weights(weights: Sequence[float] | None) -> None:
    if weights is None:
        return
    w = _floats("weights", weights)
    if not w or any(not (v >= 0 and v < float("inf")) for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, >= 0, with a positive sum, got {list(weights)}")


def validate_thresholds(thresholds: Sequence[float] | None, form: str) -> None:
    if form == "softmax":
        if thresholds is not None:
            raise ValueError("thresholds apply to form='sigmoid' only; pass thresholds=None for 'softmax'")
        return
    if thresholds is None or (isinstance(thresholds, Sized) and len(thresholds) == 0):
        raise ValueError("thresholds are required for form='sigmoid': one per criterion, strictly decreasing "
                         "(finer criteria demand more similarity)")
    t = _floats("thresholds", thresholds)
    if any(not (-1.0 <= v <= 1.0) for v in t):
        raise ValueError(f"thresholds must be cosine similarities in [-1, 1], got {t}")
    if any(a <= b for a, b in zip(t, t[1:])):
        raise ValueError(f"thresholds must be strictly decreasing (fine -> coarse), got {t}")


class _LogPartition(torch.autograd.Function):
    """Row log-sum-exp whose backward is one in-place (N, M) buffer (``torch.logsumexp``'s needs three);
    this is what keeps the loss's peak memory at InfoNCE's."""

    @staticmethod
    def forward(ctx, logits):
        log_z = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(logits, log_z)
        return log_z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        logits, log_z = ctx.saved_tensors
        return torch.sub(logits, log_z[:, None]).exp_().mul_(grad[:, None])


class RelativeContrastiveLoss(torch.nn.Module):
    """Relative Contrastive Loss over a set of criteria (see the module docstring for the formulas).

    Args:
        temperature: tau > 0.
        form: ``"softmax"`` (a weighted sum of per-criterion SupCon losses; with only the instance
            criterion it is InfoNCE) or ``"sigmoid"`` (pairwise, with per-criterion thresholds).
        weights: one non-negative weight per criterion (fine -> coarse); ``None`` means all ones.
        thresholds: for ``form="sigmoid"``, one cosine threshold per criterion, strictly decreasing.

    Call ``loss_fn(query, key, labels_q, labels_k)``:
        query: (N, D) float, any norm (normalised inside).
        key: (M, D) float, or ``None`` for self-contrast (queries are the keys, self pairs excluded).
        labels_q: (H, N) integer criterion labels, row i = criterion i, fine -> coarse (a 1-D tensor
            is read as H = 1).
        labels_k: (H, M) integer labels of the keys, or ``None`` with ``key=None``.
    Returns a scalar tensor (float32 for half-precision inputs, else the input dtype).

    Example::

        >>> loss_fn = RelativeContrastiveLoss(temperature=0.2)
        >>> q, k = torch.randn(8, 16), torch.randn(8, 16)
        >>> labels = torch.stack([torch.arange(8), torch.arange(8) // 4])   # instance, coarse
        >>> loss = loss_fn(q, k, labels, labels)

    Keys and labels enter only through per-label key sums and the N x M logits, so they can be
    gathered across processes before the call without changing the loss.
    """

    def __init__(self, temperature: float = 0.2, form: str = "softmax",
                 weights: Sequence[float] | None = None, thresholds: Sequence[float] | None = None):
        super().__init__()
        self.temperature = temperature
        self.form = form
        self.weights = None if weights is None else _floats("weights", weights)
        self.thresholds = None if thresholds is None else _floats("thresholds", thresholds)
        self._check_params()

    def _check_params(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, Real) or not 0 < float(t) < float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        if float(t) < MIN_TEMPERATURE:
            # Gradients scale with 1/tau: below this they overflow float32 (and Adam's squares) to inf.
            raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} (smaller values overflow float32 "
                             f"gradients), got {t!r}")
        self.temperature = float(t)
        validate_weights(self.weights)
        validate_thresholds(self.thresholds, self.form)

    # ---------------------------------------------------------------- validation and preparation
    def _prepare(self, query, key, labels_q, labels_k):
        self._check_params()
        _check_features("query", query)
        self_contrast = key is None
        if self_contrast:
            if labels_k is not None:
                raise ValueError("labels_k must be None when key is None (self-contrast uses labels_q)")
            if query.shape[0] < 2:
                raise ValueError(f"query must hold at least 2 samples for self-contrast, got {query.shape[0]}")
        else:
            _check_features("key", key)
            if key.shape[1] != query.shape[1]:
                raise ValueError(f"key dim {key.shape[1]} does not match query dim {query.shape[1]}")
            if labels_k is None:
                raise ValueError("labels_k is required when key is given")
        labels_q = _check_labels("labels_q", labels_q, query.shape[0], None)
        h = labels_q.shape[0]
        if self_contrast:
            labels_k = labels_q
        else:
            labels_k = _check_labels("labels_k", labels_k, key.shape[0], h)
        weights = self.weights
        if weights is not None and len(weights) != h:
            raise ValueError(f"weights must have one value per criterion ({h}), got {len(weights)}")
        if self.form == "sigmoid" and len(self.thresholds) != h:
            raise ValueError(f"thresholds must have one value per criterion ({h}), got {len(self.thresholds)}")
        # Half precision cannot hold logsumexp of 1/tau-scaled logits accurately.
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        q = _unit(query.to(dtype))
        k = q if self_contrast else _unit(key.to(dtype))
        return q, k, labels_q.to(query.device), labels_k.to(query.device), self_contrast

    # ---------------------------------------------------------------- softmax form
    def _softmax_terms(self, q, k, labels_q, labels_k, self_contrast):
        """Return (logZ (N,), positive mean logits (H, N), has-positive mask (H, N))."""
        tau = self.temperature
        n, h = q.shape[0], labels_q.shape[0]
        logits = (q / tau) @ k.T  # 1/tau on the (N, D) side: no (N, M) division forward or backward
        if self_contrast:
            logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=q.device), float("-inf"))
        log_z = _LogPartition.apply(logits)
        # All H criteria in one index space of label groups shared by queries and keys: one index_add,
        # one gather and one dot serve every criterion, whatever H is.
        gq, gk, offset = [], [], 0
        for yq, yk in zip(labels_q, labels_k):
            groups, inverse = torch.unique(torch.cat([yq, yk]), return_inverse=True)
            gq.append(inverse[:n] + offset)
            gk.append(inverse[n:] + offset)
            offset += groups.numel()
        gq, gk = torch.cat(gq), torch.cat(gk)  # (H*N,), (H*M,)
        sums = torch.zeros(offset, k.shape[1], dtype=k.dtype, device=k.device).index_add_(0, gk, k.repeat(h, 1))
        counts = torch.bincount(gk, minlength=offset).to(k.dtype)[gq].view(h, n)
        s = sums[gq].view(h, n, -1)
        if self_contrast:
            s, counts = s - q, counts - 1
        dot = torch.einsum("nd,hnd->hn", q, s) / tau
        has = counts > 0
        pos = torch.where(has, dot / counts.clamp_min(1), torch.zeros_like(dot))
        return log_z, pos, has

    def _compute(self, query, key, labels_q, labels_k):
        q, k, labels_q, labels_k, self_contrast = self._prepare(query, key, labels_q, labels_k)
        h = labels_q.shape[0]
        w = _as_weights(self.weights, h, q)
        with torch.autocast(device_type=q.device.type, enabled=False):
            if self.form == "softmax":
                log_z, pos, has = self._softmax_terms(q, k, labels_q, labels_k, self_contrast)
                if not bool(has.any()):
                    raise ValueError("no anchor has an agreeing key under any criterion: check labels_q/labels_k "
                                     "(with key=None an anchor needs another sample with the same label)")
                per_anchor = torch.where(has, log_z[None] - pos, torch.zeros_like(pos))  # (H, N)
                per_criterion = per_anchor.mean(1)
                loss = (w * per_criterion).sum()
            else:
                per_criterion, grad_carrier = self._sigmoid_per_criterion(q, k, labels_q, labels_k, self_contrast)
                loss = (w * per_criterion).sum() + grad_carrier
        return loss, per_criterion.detach()

    # ---------------------------------------------------------------- sigmoid form
    def _sigmoid_per_criterion(self, q, k, labels_q, labels_k, self_contrast):
        tau = self.temperature
        cos = q @ k.T
        n, m = cos.shape
        off = None
        if self_contrast:
            off = ~torch.eye(n, dtype=torch.bool, device=q.device)
        pairs = n * m - (n if self_contrast else 0)
        values, grad = [], torch.zeros_like(cos.detach())
        w = _as_weights(self.weights, labels_q.shape[0], q)
        # One (N, M) criterion at a time, with the gradient accumulated by hand, so memory stays at two
        # N x M tensors whatever H is (autograd would keep one per criterion).
        with torch.no_grad():
            c = cos.detach()
            for i, (yq, yk, t) in enumerate(zip(labels_q, labels_k, self.thresholds)):
                agree = (yq[:, None] == yk[None, :]).to(c.dtype)
                z = (c - t) / tau
                sign = 2 * agree - 1
                ell = F.softplus(-sign * z)
                g = (torch.sigmoid(z) - agree) / tau
                if off is not None:
                    ell, g = ell * off, g * off
                values.append(ell.sum() / pairs)
                grad += w[i] * g / pairs
        # Value from the no-grad loop; the surrogate carries the gradient d(sum_i w_i l_i)/d cos = grad.
        surrogate = (cos * grad).sum()
        return torch.stack(values), surrogate - surrogate.detach()

    # ---------------------------------------------------------------- public API
    def forward(self, query: torch.Tensor, key: torch.Tensor | None, labels_q: torch.Tensor,
                labels_k: torch.Tensor | None = None) -> torch.Tensor:
        return self._compute(query, key, labels_q, labels_k)[0]

    def forward_with_parts(self, query, key, labels_q, labels_k=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, per_criterion)``; ``per_criterion`` (H,) is unweighted, loss = sum_i w_i per_i."""
        return self._compute(query, key, labels_q, labels_k)

    @torch.no_grad()
    def explain(self, query: torch.Tensor, key: torch.Tensor | None, labels_q: torch.Tensor,
                labels_k: torch.Tensor | None = None) -> RCLExplanation:
        """The loss's decision for every pair. Builds (H, N, M) tensors: meant for inspection batches."""
        q, k, lq, lk, self_contrast = self._prepare(query, key, labels_q, labels_k)
        h, n, m = lq.shape[0], q.shape[0], k.shape[0]
        w = _as_weights(self.weights, h, q)
        tau = self.temperature
        cos = q @ k.T
        agreement = lq[:, :, None] == lk[:, None, :]
        valid = torch.ones(n, m, dtype=torch.bool, device=q.device)
        if self_contrast:
            valid.fill_diagonal_(False)
        agree_valid = agreement & valid
        if self.form == "softmax":
            logits = (cos / tau).masked_fill(~valid, float("-inf"))
            pf = torch.softmax(logits, dim=1)
            counts = agree_valid.sum(2, keepdim=True)  # (H, N, 1)
            targets = agree_valid.to(q.dtype) / counts.clamp_min(1)
            has = counts.squeeze(2) > 0
            if not bool(has.any()):
                raise ValueError("no anchor has an agreeing key under any criterion")
            w_row = (w[:, None] * has).sum(0)  # (N,)
            ps = (w[:, None, None] * targets).sum(0) / w_row.clamp_min(1e-30)[:, None]
            logp = torch.log_softmax(logits, dim=1).masked_fill(~valid, 0.0)
            per_criterion = (-(targets * logp[None]).sum(2)).mean(1)
            logit_grad = (w_row[:, None] * pf - (w[:, None, None] * targets).sum(0)) / n
            active = (w_row > 0)[:, None] & valid
        else:
            z = (cos[None] - torch.tensor(self.thresholds, dtype=q.dtype, device=q.device)[:, None, None]) / tau
            sign = 2 * agreement.to(q.dtype) - 1
            pairs = int(valid.sum())
            ell = F.softplus(-sign * z) * valid
            per_criterion = ell.sum((1, 2)) / pairs
            pf = (w[:, None, None] * torch.sigmoid(z)).sum(0) / w.sum()
            ps = (w[:, None, None] * agreement.to(q.dtype)).sum(0) / w.sum()
            pf, ps = pf * valid, ps * valid
            logit_grad = w.sum() * (pf - ps) / pairs  # d loss / d (cos / tau)
            active = valid
        loss = (w * per_criterion).sum()
        return RCLExplanation(
            loss=loss, per_criterion=per_criterion, feature_similarity=pf, relativeness=ps,
            pull=(pf < ps) & active, push=(pf > ps) & active, logit_grad=logit_grad, cosine=cos,
            agreement=agreement, weights=w, self_contrast=self_contrast)
