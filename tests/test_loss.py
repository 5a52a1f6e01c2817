"""RelativeContrastiveLoss against an independent, loop-based reading of DESIGN.md section 1."""
import math

import pytest
import torch
import torch.nn.functional as F

from rcl_core import RelativeContrastiveLoss


def reference_softmax(q, k, lq, lk, tau, weights=None):
    """Plain Python loops over anchors, keys and criteria; returns the loss as a differentiable scalar."""
    self_contrast = k is None
    qn = [v / math.sqrt(float((v * v).sum())) for v in q.double()]
    kn = qn if self_contrast else [v / math.sqrt(float((v * v).sum())) for v in k.double()]
    lk = lq if self_contrast else lk
    h = lq.shape[0]
    weights = [1.0] * h if weights is None else weights
    total = 0.0
    for n in range(len(qn)):
        keys = [m for m in range(len(kn)) if not (self_contrast and m == n)]
        logits = {m: float((qn[n] * kn[m]).sum()) / tau for m in keys}
        mx = max(logits.values())
        log_z = mx + math.log(sum(math.exp(v - mx) for v in logits.values()))
        for i in range(h):
            agree = [m for m in keys if int(lq[i, n]) == int(lk[i, m])]
            if not agree:
                continue
            total += weights[i] * sum(-(logits[m] - log_z) / len(agree) for m in agree)
    return total / len(qn)


def reference_sigmoid(q, k, lq, lk, tau, thresholds, weights=None):
    self_contrast = k is None
    qn = F.normalize(q.double(), dim=1)
    kn = qn if self_contrast else F.normalize(k.double(), dim=1)
    lk = lq if self_contrast else lk
    h = lq.shape[0]
    weights = [1.0] * h if weights is None else weights
    total, pairs = 0.0, 0
    for n in range(qn.shape[0]):
        for m in range(kn.shape[0]):
            if self_contrast and m == n:
                continue
            s = float(qn[n] @ kn[m])
            pairs += 1
            for i in range(h):
                a = 1.0 if int(lq[i, n]) == int(lk[i, m]) else -1.0
                x = -a * (s - thresholds[i]) / tau
                total += weights[i] * (max(x, 0) + math.log1p(math.exp(-abs(x))))
    return total / pairs


def make_batch(n=12, m=10, d=5, h=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g) * 3
    k = torch.randn(m, d, generator=g)
    # nested labels: instance-like, fine, coarse
    lq = torch.stack([torch.arange(n), torch.arange(n) // 3, torch.arange(n) // 6])[:h]
    lk = torch.stack([torch.arange(m), torch.arange(m) // 3, torch.arange(m) // 6])[:h]
    return q, k, lq, lk


@pytest.mark.parametrize("self_contrast", [False, True])
@pytest.mark.parametrize("weights", [None, [1.0, 0.5, 2.0]])
def test_softmax_matches_loop_reference(self_contrast, weights):
    q, k, lq, lk = make_batch()
    fn = RelativeContrastiveLoss(temperature=0.3, weights=weights)
    if self_contrast:
        got = fn(q, None, lq)
        want = reference_softmax(q, None, lq, None, 0.3, weights)
    else:
        got = fn(q, k, lq, lk)
        want = reference_softmax(q, k, lq, lk, 0.3, weights)
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("self_contrast", [False, True])
@pytest.mark.parametrize("weights", [None, [2.0, 0.0, 1.0]])
def test_sigmoid_matches_loop_reference(self_contrast, weights):
    q, k, lq, lk = make_batch(seed=1)
    t = [0.6, 0.2, -0.3]
    fn = RelativeContrastiveLoss(temperature=0.5, form="sigmoid", thresholds=t, weights=weights)
    got = fn(q, None, lq) if self_contrast else fn(q, k, lq, lk)
    want = reference_sigmoid(q, None if self_contrast else k, lq, None if self_contrast else lk, 0.5, t, weights)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_sigmoid_gradient_matches_autograd_of_plain_formula():
    q, k, lq, lk = make_batch(seed=2)
    t, tau = [0.5, 0.1, -0.2], 0.4
    q1 = q.clone().double().requires_grad_(True)
    RelativeContrastiveLoss(tau, "sigmoid", thresholds=t)(q1, k.double(), lq, lk).backward()
    q2 = q.clone().double().requires_grad_(True)
    s = F.normalize(q2, dim=1) @ F.normalize(k.double(), dim=1).T
    agree = (lq[:, :, None] == lk[:, None, :]).double() * 2 - 1
    ref = sum(F.softplus(-agree[i] * (s - t[i]) / tau) for i in range(3)).mean()
    ref.backward()
    torch.testing.assert_close(q1.grad, q2.grad)


def test_instance_criterion_is_infonce():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    tau = 0.2
    labels = torch.arange(16)
    got = RelativeContrastiveLoss(tau)(q, k, labels, labels)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    want = F.cross_entropy(logits, torch.arange(16))
    torch.testing.assert_close(got, want)


def supcon_out(features, labels, tau):
    """SupCon (Khosla et al. 2020, L_out) written from the paper's equation, self-contrast."""
    f = F.normalize(features, dim=1)
    n = f.shape[0]
    logits = f @ f.T / tau
    eye = torch.eye(n, dtype=torch.bool)
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, -float("inf")), 1, keepdim=True)
    pos = (labels[:, None] == labels[None]) & ~eye
    return (-(log_prob * pos).sum(1) / pos.sum(1)).mean()


def test_one_label_criterion_is_supcon_and_several_are_the_sum():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 6, generator=g)
    fine, coarse = torch.arange(20) % 5, torch.arange(20) % 5 // 2
    tau = 0.1
    one = RelativeContrastiveLoss(tau)(x, None, fine[None])
    torch.testing.assert_close(one, supcon_out(x, fine, tau))
    both = RelativeContrastiveLoss(tau, weights=[1.0, 3.0])(x, None, torch.stack([fine, coarse]))
    torch.testing.assert_close(both, supcon_out(x, fine, tau) + 3 * supcon_out(x, coarse, tau))


def test_anchor_without_agreeing_key_contributes_zero_not_nan():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    lq = torch.tensor([[0, 1, 2, 99]])  # anchor 3 agrees with no key
    lk = torch.tensor([[0, 1, 2, 3]])
    got = RelativeContrastiveLoss(0.5)(q, k, lq, lk)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(reference_softmax(q, k, lq, lk, 0.5), rel=1e-5)
    with pytest.raises(ValueError, match="no anchor"):
        RelativeContrastiveLoss(0.5)(q, k, torch.tensor([[5, 6, 7, 8]]), lk)


@pytest.mark.parametrize("form", ["softmax", "sigmoid"])
@pytest.mark.parametrize("self_contrast", [False, True])
def test_explain_logit_grad_equals_autograd_and_pull_is_its_sign(form, self_contrast):
    q, k, lq, lk = make_batch(n=9, m=7, seed=6)
    tau = 0.25
    t = [0.4, 0.0, -0.4] if form == "sigmoid" else None
    fn = RelativeContrastiveLoss(tau, form, weights=[1.0, 0.5, 0.25], thresholds=t)
    key, lab_k = (None, None) if self_contrast else (k, lk)
    info = fn.explain(q, key, lq, lab_k)
    # Autograd through an independent formula written on a logits leaf.
    qn = F.normalize(q.double(), dim=1)
    kn = qn if self_contrast else F.normalize(k.double(), dim=1)
    lk2 = lq if self_contrast else lk
    logits = (qn @ kn.T / tau).requires_grad_(True)
    n, m = logits.shape
    valid = ~torch.eye(n, dtype=torch.bool) if self_contrast else torch.ones(n, m, dtype=torch.bool)
    w = [1.0, 0.5, 0.25]
    if form == "softmax":
        logp = torch.log_softmax(logits.masked_fill(~valid, -float("inf")), 1)
        total = 0
        for i in range(3):
            agree = (lq[i][:, None] == lk2[i][None]) & valid
            cnt = agree.sum(1)
            per = -(logp.masked_fill(~agree, 0).sum(1)) / cnt.clamp_min(1)
            total = total + w[i] * torch.where(cnt > 0, per, torch.zeros_like(per)).mean()
    else:
        total = 0
        for i in range(3):
            a = ((lq[i][:, None] == lk2[i][None]).double() * 2 - 1)
            ell = F.softplus(-a * (logits * tau - t[i]) / tau)
            total = total + w[i] * ell[valid].mean()
    total.backward()
    grad = logits.grad
    torch.testing.assert_close(info.logit_grad.double(), grad, rtol=1e-4, atol=1e-6)
    assert info.loss.item() == pytest.approx(total.item(), rel=1e-5)
    torch.testing.assert_close(info.loss, fn(q, key, lq, lab_k))
    # pull <=> gradient descent raises the logit <=> grad < 0 ; self pairs never.
    assert torch.equal(info.pull, (grad < 0) & valid)
    assert torch.equal(info.push, (grad > 0) & valid)
    if form == "softmax":
        rows = info.relativeness.sum(1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
        assert info.excess.item() >= -1e-6


def test_per_criterion_parts_sum_to_loss():
    q, k, lq, lk = make_batch(seed=7)
    fn = RelativeContrastiveLoss(0.2, weights=[1.0, 2.0, 0.5])
    loss, parts = fn.forward_with_parts(q, k, lq, lk)
    assert parts.shape == (3,)
    assert loss.item() == pytest.approx(float(parts @ torch.tensor([1.0, 2.0, 0.5])), rel=1e-6)
    for i in range(3):
        single = RelativeContrastiveLoss(0.2)(q, k, lq[i:i + 1], lk[i:i + 1])
        assert parts[i].item() == pytest.approx(single.item(), rel=1e-6)


def test_gradient_reaches_keys_and_queries():
    q, k, lq, lk = make_batch(seed=8)
    q.requires_grad_(True)
    k.requires_grad_(True)
    RelativeContrastiveLoss(0.2)(q, k, lq, lk).backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_any_integer_labels_work():
    q, k, lq, lk = make_batch(seed=9)
    base = RelativeContrastiveLoss(0.2)(q, k, lq, lk)
    shifted = RelativeContrastiveLoss(0.2)(q, k, lq * -(10 ** 15) + 7, lk * -(10 ** 15) + 7)
    torch.testing.assert_close(base, shifted)
    small = RelativeContrastiveLoss(0.2)(q, k, lq.to(torch.int16), lk.to(torch.uint8))
    torch.testing.assert_close(base, small)


def test_large_norms_and_small_temperature_stay_finite():
    q, k, lq, lk = make_batch(seed=10)
    for form, t in (("softmax", None), ("sigmoid", [0.9, 0.5, 0.0])):
        fn = RelativeContrastiveLoss(0.01, form, thresholds=t)
        qq = (q * 1e6).requires_grad_(True)
        loss = fn(qq, k * 1e-6, lq, lk)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(qq.grad).all()


def test_float64_and_bfloat16_inputs():
    q, k, lq, lk = make_batch(seed=11)
    fn = RelativeContrastiveLoss(0.2)
    l32 = fn(q, k, lq, lk)
    l64 = fn(q.double(), k.double(), lq, lk)
    assert l64.dtype == torch.float64
    lbf = fn(q.bfloat16(), k.bfloat16(), lq, lk)
    assert lbf.dtype == torch.float32 and torch.isfinite(lbf)
    assert lbf.item() == pytest.approx(l32.item(), rel=2e-2)
    assert l64.item() == pytest.approx(l32.item(), rel=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0), "temperature"),
    (dict(temperature=-1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(form="cosine"), "form"),
    (dict(weights=[1, -1, 1]), "weights"),
    (dict(form="sigmoid"), "thresholds"),
    (dict(form="sigmoid", thresholds=[0.1, 0.5, 0.9]), "strictly decreasing"),
    (dict(form="sigmoid", thresholds=[0.5, 0.5, 0.1]), "strictly decreasing"),
    (dict(thresholds=[0.5, 0.1, 0.0]), "sigmoid"),
])
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RelativeContrastiveLoss(**kwargs)


def test_bad_counts_raise_at_call():
    q, k, lq, lk = make_batch()
    with pytest.raises(ValueError, match="weights"):
        RelativeContrastiveLoss(0.2, weights=[1, 1])(q, k, lq, lk)
    with pytest.raises(ValueError, match="thresholds"):
        RelativeContrastiveLoss(0.2, "sigmoid", thresholds=[0.5, 0.1])(q, k, lq, lk)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda q, k, lq, lk: (q.clone().index_fill_(0, torch.tensor([2]), float("nan")), k, lq, lk), ValueError, "query.*NaN"),
    (lambda q, k, lq, lk: (q, k.clone().index_fill_(0, torch.tensor([0]), float("inf")), lq, lk), ValueError, "key.*NaN or Inf"),
    (lambda q, k, lq, lk: (q.clone().index_fill_(0, torch.tensor([1]), 0.0), k, lq, lk), ValueError, "query.*zero"),
    (lambda q, k, lq, lk: (q, k[:, :3], lq, lk), ValueError, "dim"),
    (lambda q, k, lq, lk: (q[0], k, lq, lk), ValueError, "query.*shape"),
    (lambda q, k, lq, lk: (q, k, lq[:, :5], lk), ValueError, "labels_q.*shape"),
    (lambda q, k, lq, lk: (q, k, lq, lk[:2]), ValueError, "labels_k.*criteria"),
    (lambda q, k, lq, lk: (q, k, lq.float(), lk), TypeError, "labels_q.*integer"),
    (lambda q, k, lq, lk: (q, k, lq, None), ValueError, "labels_k is required"),
    (lambda q, k, lq, lk: (q.long(), k, lq, lk), TypeError, "query.*floating"),
    (lambda q, k, lq, lk: (q, None, lq, lk), ValueError, "labels_k must be None"),
])
def test_bad_inputs_raise_naming_the_argument(mutate, exc, match):
    args = mutate(*make_batch())
    with pytest.raises(exc, match=match):
        RelativeContrastiveLoss(0.2)(*args)


def test_extreme_norms_are_normalised_exactly():
    q, k, lq, lk = make_batch(seed=12)
    fn = RelativeContrastiveLoss(0.2)
    base = fn(q, k, lq, lk)
    for scale in (1e20, 1e-30):
        torch.testing.assert_close(fn(q * scale, k, lq, lk), base)
        torch.testing.assert_close(fn(q, k * scale, lq, lk), base)


def test_parameter_types_are_checked_by_name():
    with pytest.raises(TypeError, match="weights"):
        RelativeContrastiveLoss(0.2, weights="1,2")
    with pytest.raises(TypeError, match="thresholds"):
        RelativeContrastiveLoss(0.2, "sigmoid", thresholds=0.5)
    with pytest.raises(ValueError, match="temperature"):
        RelativeContrastiveLoss(True)
    import numpy as np
    assert RelativeContrastiveLoss(np.float32(0.5)).temperature == 0.5


def test_temperatures_too_small_for_float32_are_refused():
    with pytest.raises(ValueError, match="temperature must be >= 0.0001"):
        RelativeContrastiveLoss(1e-40)
