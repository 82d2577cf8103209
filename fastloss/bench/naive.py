"""Naive value-and-gradient implementations: the NumPy code a user would write without fastloss.

One plain, idiomatic function per loss: whole-array expressions, temporaries and all, the
``mean`` reduction, the gradient of that mean with respect to each differentiable input. They are
the baseline of the benchmark's speedup column and are tested against fastloss in
``tests/test_bench.py``; every registered loss must have one here (the test fails otherwise).

Each function takes an array namespace ``xp`` (NumPy by default). Only functions that NumPy,
CuPy and ``jax.numpy`` share are used and nothing is modified in place, so the same code is the
"naive CuPy" peer on a GPU and, differentiated by JAX, the body of the JAX peer.

Signature: ``fn(*inputs, xp=numpy, **params) -> (value, grad)``, or ``(value, (grad, ...))`` for
losses with several differentiable inputs (in argument order).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

NAIVE: dict[str, Callable] = {}

LN2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def naive(func: Callable) -> Callable:
    """Register ``func`` as the naive peer of the loss of the same name."""
    NAIVE[func.__name__] = func
    return func


def _signs(target, dtype, xp):
    """Labels in {-1, +1} (0 read as -1), in the prediction's dtype."""
    return xp.where(target > 0, 1.0, -1.0).astype(dtype)


# -- regression ----------------------------------------------------------------------------------


@naive
def mse(pred, target, *, xp=np):
    d = pred - target
    return xp.mean(d * d), (2.0 / d.size) * d


@naive
def mae(pred, target, *, xp=np):
    d = pred - target
    return xp.mean(xp.abs(d)), xp.sign(d) / d.size


@naive
def huber(pred, target, *, delta=1.0, xp=np):
    d = pred - target
    a = xp.abs(d)
    inside = a < delta
    value = xp.where(inside, 0.5 * d * d, delta * (a - 0.5 * delta))
    grad = xp.where(inside, d, delta * xp.sign(d))
    return xp.mean(value), grad / d.size


@naive
def smooth_l1(pred, target, *, beta=1.0, xp=np):
    if beta == 0.0:
        return mae(pred, target, xp=xp)
    d = pred - target
    a = xp.abs(d)
    inside = a < beta
    value = xp.where(inside, 0.5 * d * d / beta, a - 0.5 * beta)
    grad = xp.where(inside, d / beta, xp.sign(d))
    return xp.mean(value), grad / d.size


@naive
def log_cosh(pred, target, *, xp=np):
    d = pred - target
    a = xp.abs(d)
    value = a + xp.log1p(xp.exp(-2.0 * a)) - LN2
    return xp.mean(value), xp.tanh(d) / d.size


@naive
def quantile(pred, target, *, q=0.5, xp=np):
    d = target - pred
    value = xp.maximum(q * d, (q - 1.0) * d)
    grad = xp.where(d > 0, -q, 1.0 - q).astype(pred.dtype)
    return xp.mean(value), grad / d.size


@naive
def robust(pred, target, *, alpha=1.0, scale=1.0, xp=np):
    x = pred - target
    x_c2 = x / (scale * scale)
    z = x * x_c2
    if alpha == 2.0:
        value, grad = 0.5 * z, x_c2
    elif alpha == 0.0:
        value, grad = xp.log1p(0.5 * z), x_c2 / (0.5 * z + 1.0)
    elif alpha == -math.inf:
        value, grad = -xp.expm1(-0.5 * z), x_c2 * xp.exp(-0.5 * z)
    else:
        b = abs(alpha - 2.0)
        t = xp.log1p(z / b)
        value = b / alpha * xp.expm1(0.5 * alpha * t)
        grad = x_c2 * xp.exp((0.5 * alpha - 1.0) * t)
    return xp.mean(value), grad / x.size


# -- binary classification -----------------------------------------------------------------------


@naive
def binary_cross_entropy(pred, target, *, pos_weight=1.0, xp=np):
    softplus_neg = xp.logaddexp(0.0, -pred)  # -log(sigmoid(x))
    softplus_pos = softplus_neg + pred  # -log(1 - sigmoid(x))
    p = xp.exp(-softplus_neg)
    value = pos_weight * target * softplus_neg + (1.0 - target) * softplus_pos
    grad = (1.0 - target) * p - pos_weight * target * (1.0 - p)
    return xp.mean(value), grad / pred.size


@naive
def sigmoid_focal(pred, target, *, alpha=0.25, gamma=2.0, xp=np):
    softplus_neg = xp.logaddexp(0.0, -pred)
    p = xp.exp(-softplus_neg)
    ce = target * softplus_neg + (1.0 - target) * (softplus_neg + pred)
    m = p + target - 2.0 * p * target  # 1 - p_t
    mg = m**gamma
    if gamma == 0.0:
        dmg = 0.0
    else:
        dm = p * (1.0 - p) * (1.0 - 2.0 * target)
        dmg = xp.where(m > 0, gamma * xp.where(m > 0, m, 1.0) ** (gamma - 1.0) * dm, 0.0)
    value = ce * mg
    grad = (p - target) * mg + ce * dmg
    if alpha >= 0.0:
        a = alpha * target + (1.0 - alpha) * (1.0 - target)
        value, grad = value * a, grad * a
    return xp.mean(value), grad / pred.size


@naive
def hinge(pred, target, *, margin=1.0, xp=np):
    y = _signs(target, pred.dtype, xp)
    m = margin - y * pred
    return xp.mean(xp.maximum(m, 0.0)), xp.where(m > 0, -y, 0.0) / pred.size


@naive
def squared_hinge(pred, target, *, margin=1.0, xp=np):
    y = _signs(target, pred.dtype, xp)
    m = xp.maximum(margin - y * pred, 0.0)
    return xp.mean(m * m), -2.0 * y * m / pred.size


# -- likelihoods ---------------------------------------------------------------------------------


@naive
def poisson_nll(pred, target, *, log_input=True, full=False, eps=1e-8, xp=np):
    if log_input:
        rate = xp.exp(pred)
        value, grad = rate - target * pred, rate - target
    else:
        value, grad = pred - target * xp.log(pred + eps), 1.0 - target / (pred + eps)
    if full:
        t = xp.where(target > 1, target, 1.0)  # Stirling term only where target > 1 (as PyTorch)
        value = value + xp.where(target > 1, t * xp.log(t) - t + 0.5 * xp.log(2.0 * math.pi * t), 0.0)
    return xp.mean(value), grad / pred.size


@naive
def gaussian_nll(pred, target, var, *, full=False, eps=1e-6, xp=np):
    v = xp.maximum(var, eps)
    d = pred - target
    value = 0.5 * (xp.log(v) + d * d / v)
    if full:
        value = value + HALF_LOG_2PI
    n = pred.size
    return xp.mean(value), (d / v / n, 0.5 * (1.0 / v - d * d / (v * v)) / n)


# -- regularisation ------------------------------------------------------------------------------


@naive
def l1(x, *, xp=np):
    return xp.mean(xp.abs(x)), xp.sign(x) / x.size


@naive
def l2(x, *, xp=np):
    return xp.mean(0.5 * x * x), x / x.size


# -- row-wise (multiclass) -----------------------------------------------------------------------


@naive
def cross_entropy(logits, target, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None, xp=np):
    """Softmax cross entropy over the last axis with class-index targets (PyTorch semantics),
    plus PaLM's z-loss (mean over kept tokens) and logit soft-capping."""
    raw = logits
    if softcap:
        t = xp.tanh(raw / softcap)
        logits = softcap * t
    c = logits.shape[-1]
    m = xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(logits - m)
    s = xp.sum(e, axis=-1, keepdims=True)
    lse = (xp.log(s) + m)[..., 0]
    valid = target != ignore_index
    label = xp.where(valid, target, 0)
    per_row = lse - xp.take_along_axis(logits, label[..., None], axis=-1)[..., 0]
    if label_smoothing:
        per_row = (1.0 - label_smoothing) * per_row + label_smoothing * (lse - xp.mean(logits, axis=-1))
    if z_loss:
        per_row = per_row + z_loss * lse**2
    count = xp.sum(valid).astype(logits.dtype)
    value = xp.sum(xp.where(valid, per_row, 0.0)) / count
    onehot = xp.arange(c) == label[..., None]
    if label_smoothing:
        onehot = xp.where(onehot, 1.0 - label_smoothing + label_smoothing / c, label_smoothing / c).astype(logits.dtype)
    p = e / s
    dlogits = p - onehot
    if z_loss:
        dlogits = dlogits + (2.0 * z_loss * lse)[..., None] * p
    grad = dlogits * (valid / count)[..., None]
    if softcap:
        grad = grad * (1.0 - t * t)
    return value, grad


def _softmax_target(logits, target, xp):
    """Softmax probabilities, ``log p`` of the target class per row, and the one-hot target mask."""
    m = xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(logits - m)
    s = xp.sum(e, axis=-1, keepdims=True)
    log_p_target = (xp.take_along_axis(logits, target[..., None], axis=-1) - m - xp.log(s))[..., 0]
    onehot = xp.arange(logits.shape[-1]) == target[..., None]
    return e / s, log_p_target, onehot


def _target_loss(logits, target, xp, loss, dloss):
    """Mean of ``loss(log p_y)`` over rows; gradient ``dloss(log p_y) (onehot - p) / rows``."""
    p, lp, onehot = _softmax_target(logits, target, xp)
    rows = lp.size
    return xp.mean(loss(lp)), (dloss(lp) / rows)[..., None] * (onehot - p)


@naive
def softmax_focal(logits, target, *, gamma=2.0, xp=np):
    def loss(lp):
        return -((1.0 - xp.exp(lp)) ** gamma) * lp

    def dloss(lp):
        p = xp.exp(lp)
        u = 1.0 - p
        focus = gamma * xp.where(u > 0, u, 1.0) ** (gamma - 1.0) * p * lp
        return xp.where(u > 0, focus, 0.0) - u**gamma

    return _target_loss(logits, target, xp, loss, dloss)


@naive
def generalized_cross_entropy(logits, target, *, q=0.7, xp=np):
    return _target_loss(logits, target, xp, lambda lp: -xp.expm1(q * lp) / q, lambda lp: -xp.exp(q * lp))


@naive
def poly1_cross_entropy(logits, target, *, epsilon=1.0, xp=np):
    return _target_loss(logits, target, xp, lambda lp: -lp - epsilon * xp.expm1(lp),
                        lambda lp: -1.0 - epsilon * xp.exp(lp))


@naive
def kl_divergence(logits, target, *, xp=np):
    m = xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(logits - m)
    s = xp.sum(e, axis=-1, keepdims=True)
    log_p = logits - m - xp.log(s)
    t_log_t = xp.where(target > 0, target * xp.log(xp.where(target > 0, target, 1.0)), 0.0)
    rows = logits[..., 0].size
    value = xp.sum(t_log_t - target * log_p) / rows
    grad = (xp.sum(target, axis=-1, keepdims=True) * (e / s) - target) / rows
    return value, grad


@naive
def multiclass_hinge(scores, target, *, margin=1.0, p=1, xp=np):
    c = scores.shape[-1]
    rows = scores[..., 0].size
    onehot = xp.arange(c) == target[..., None]
    violation = margin - xp.take_along_axis(scores, target[..., None], axis=-1) + scores
    h = xp.where(onehot, 0.0, xp.maximum(violation, 0.0))
    value = xp.sum(h**p) / (c * rows)
    g = (h > 0).astype(scores.dtype) if p == 1 else 2.0 * h
    g = g / (c * rows)
    return value, g - onehot * xp.sum(g, axis=-1, keepdims=True)


# -- ranking (pointwise pairs of scores) ---------------------------------------------------------


@naive
def margin_ranking(x1, x2, target, *, margin=0.0, xp=np):
    m = margin - target * (x1 - x2)
    g = xp.where(m > 0, -target, 0.0) / x1.size
    return xp.mean(xp.maximum(m, 0.0)), (g, -g)


@naive
def bpr(pos_scores, neg_scores, *, xp=np):
    d = pos_scores - neg_scores
    g = -xp.exp(-xp.logaddexp(0.0, d)) / d.size  # -sigmoid(-d)
    return xp.mean(xp.logaddexp(0.0, -d)), (g, -g)


# -- embeddings (one value per row of (N, D) arrays) ------------------------------------------------


@naive
def contrastive(x1, x2, target, *, margin=1.0, xp=np):
    diff = x1 - x2
    d2 = xp.sum(diff * diff, axis=-1)
    d = xp.sqrt(d2)
    h = xp.maximum(margin - d, 0.0)
    value = xp.mean(0.5 * (target * d2 + (1.0 - target) * h * h))
    c = target - xp.where(d > 0, (1.0 - target) * h / xp.where(d > 0, d, 1.0), 0.0)
    g = (c / d.size)[..., None] * diff
    return value, (g, -g)


@naive
def triplet_margin(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False, xp=np):
    def distance(a, b):  # torch.nn.functional.pairwise_distance: |a - b + eps|_p
        u = a - b + eps
        d = xp.sum(xp.abs(u) ** p, axis=-1) ** (1.0 / p)
        slope = xp.where(d > 0, 1.0 / xp.where(d > 0, d, 1.0) ** (p - 1.0), 0.0)[..., None]
        return d, slope * xp.sign(u) * xp.abs(u) ** (p - 1.0)  # the distance and its gradient in u

    d_ap, g_ap = distance(anchor, positive)
    d_an, g_an = distance(anchor, negative)
    w_an, w_pn, d_neg, g_pn = 1.0, 0.0, d_an, 0.0
    if swap:
        d_pn, g_pn = distance(positive, negative)
        w_an = xp.where(d_an < d_pn, 1.0, xp.where(d_an == d_pn, 0.5, 0.0))[..., None]
        w_pn = 1.0 - w_an
        d_neg = xp.minimum(d_an, d_pn)
    z = margin + d_ap - d_neg
    c = ((z >= 0) / z.size)[..., None]
    grads = (c * (g_ap - w_an * g_an), c * (-g_ap - w_pn * g_pn), c * (w_an * g_an + w_pn * g_pn))
    return xp.mean(xp.maximum(z, 0.0)), tuple(g.astype(anchor.dtype) for g in grads)


@naive
def cosine_embedding(x1, x2, target, *, margin=0.0, xp=np):
    eps = 1e-12  # added to each squared norm, as PyTorch
    m1 = xp.sum(x1 * x1, axis=-1) + eps
    m2 = xp.sum(x2 * x2, axis=-1) + eps
    inv = 1.0 / xp.sqrt(m1 * m2)
    cos = xp.sum(x1 * x2, axis=-1) * inv
    similar = target > 0
    value = xp.mean(xp.where(similar, 1.0 - cos, xp.maximum(cos - margin, 0.0)))
    dl = (xp.where(similar, -1.0, (cos - margin >= 0) * 1.0) / cos.size).astype(x1.dtype)
    g1 = (dl * inv)[..., None] * x2 - (dl * cos / m1)[..., None] * x1
    g2 = (dl * inv)[..., None] * x1 - (dl * cos / m2)[..., None] * x2
    return value, (g1, g2)


@naive
def info_nce(z1, z2, *, temperature=0.1, symmetric=True, xp=np):
    n = z1.shape[0]
    norm1 = xp.maximum(xp.sqrt(xp.sum(z1 * z1, axis=-1, keepdims=True)), 1e-12)
    norm2 = xp.maximum(xp.sqrt(xp.sum(z2 * z2, axis=-1, keepdims=True)), 1e-12)
    u, v = z1 / norm1, z2 / norm2
    s = u @ v.T / temperature
    eye = xp.eye(n, dtype=z1.dtype)

    def softmax_ce(logits):  # cross entropy of each row against the diagonal, and softmax - one-hot
        m = xp.max(logits, axis=-1, keepdims=True)
        e = xp.exp(logits - m)
        total = xp.sum(e, axis=-1, keepdims=True)
        return (xp.log(total) + m)[:, 0] - xp.diagonal(logits), e / total - eye

    loss, g = softmax_ce(s)
    if symmetric:
        loss_t, g_t = softmax_ce(s.T)
        loss, g = 0.5 * (loss + loss_t), 0.5 * (g + g_t.T)
    ds = g / (n * temperature)
    du, dv = ds @ v, ds.T @ u

    def through_norm(dx, x, norm):  # d/dz of z / max(|z|, eps)
        radial = xp.where(norm > 1e-12, xp.sum(x * dx, axis=-1, keepdims=True), 0.0)
        return (dx - radial * x) / norm

    return xp.mean(loss), (through_norm(du, u, norm1), through_norm(dv, v, norm2))


# -- overlap of masks (one value per sample over all its other axes) and of boxes --------------------


def _overlap(logits, target, from_logits, xp, finish):
    """Soft sums ``I, P, T`` per sample, ``finish(I, P, T) -> (loss, dl/dI, dl/dP)``, and the gradient."""
    n = logits.shape[0]
    x = logits.reshape(n, -1)
    t = target.reshape(n, -1)
    p = xp.exp(-xp.logaddexp(0.0, -x)) if from_logits else x
    loss, dl_di, dl_dp = finish(xp.sum(p * t, axis=1), xp.sum(p, axis=1), xp.sum(t, axis=1))
    g = dl_di[:, None] * t + dl_dp[:, None]
    if from_logits:
        g = g * p * (1.0 - p)
    return xp.mean(loss), (g / n).reshape(logits.shape)


@naive
def dice(logits, target, *, smooth=1.0, from_logits=True, xp=np):
    def finish(i, p, t):
        num, den = 2.0 * i + smooth, p + t + smooth
        return 1.0 - num / den, -2.0 / den, num / (den * den)

    return _overlap(logits, target, from_logits, xp, finish)


@naive
def jaccard(logits, target, *, smooth=1.0, from_logits=True, xp=np):
    def finish(i, p, t):
        num, den = i + smooth, p + t - i + smooth
        return 1.0 - num / den, -(1.0 / den + num / (den * den)), num / (den * den)

    return _overlap(logits, target, from_logits, xp, finish)


@naive
def tversky(logits, target, *, alpha=0.5, beta=0.5, smooth=1.0, from_logits=True, xp=np):
    def finish(i, p, t):
        num = i + smooth
        den = (1.0 - alpha - beta) * i + alpha * p + beta * t + smooth
        q = num / (den * den)
        return 1.0 - num / den, -1.0 / den + (1.0 - alpha - beta) * q, alpha * q

    return _overlap(logits, target, from_logits, xp, finish)


@naive
def giou(pred_boxes, target_boxes, *, eps=1e-7, xp=np):
    x1, y1, x2, y2 = (pred_boxes[..., k] for k in range(4))
    a1, b1, a2, b2 = (target_boxes[..., k] for k in range(4))

    def larger(a, b):  # d max(a, b) / da, ties split evenly (as PyTorch)
        return xp.where(a > b, 1.0, xp.where(a == b, 0.5, 0.0))

    iw = xp.minimum(x2, a2) - xp.maximum(x1, a1)
    ih = xp.minimum(y2, b2) - xp.maximum(y1, b1)
    overlap = (iw > 0) & (ih > 0)
    inter = xp.where(overlap, iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
    cw = xp.maximum(x2, a2) - xp.minimum(x1, a1)
    ch = xp.maximum(y2, b2) - xp.minimum(y1, b1)
    ue, ce = union + eps, cw * ch + eps
    value = xp.mean(1.0 - inter / ue + (cw * ch - union) / ce)
    dl_di = -(ue + inter) / (ue * ue) + 1.0 / ce
    dl_da = inter / (ue * ue) - 1.0 / ce
    dl_dc = ue / (ce * ce)
    di_w, di_h = xp.where(overlap, ih, 0.0), xp.where(overlap, iw, 0.0)
    grad = xp.stack([
        -dl_di * di_w * larger(x1, a1) - dl_da * (y2 - y1) - dl_dc * ch * larger(a1, x1),
        -dl_di * di_h * larger(y1, b1) - dl_da * (x2 - x1) - dl_dc * cw * larger(b1, y1),
        dl_di * di_w * larger(a2, x2) + dl_da * (y2 - y1) + dl_dc * ch * larger(x2, a2),
        dl_di * di_h * larger(b2, y2) + dl_da * (x2 - x1) + dl_dc * cw * larger(y2, b2),
    ], axis=-1)
    return value, (grad / x1.size).astype(pred_boxes.dtype)
