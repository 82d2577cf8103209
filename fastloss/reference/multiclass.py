"""References for the softmax-family losses (``fastloss.losses.multiclass``): one loss per row of
``logits`` (classes along the last axis), with PyTorch's targets, class weights and ``ignore_index``.

``target`` holds class indices (the logits' shape without the class axis) or, where the loss takes
them, probabilities (the logits' shape). ``weight`` holds one weight per class: a sample with class
index ``y`` counts ``weight[y]`` times, and the mean divides by the summed weights of the kept
targets (the loss's ``count``) unless the loss's declaration says the mean is over rows.
"""

from __future__ import annotations

import numpy as np

from ._common import Reference, per_row, reference


def _softmax(z, xp):
    """Softmax probabilities over the last axis and the log-sum-exp per row (shifted by the row
    maximum, so that no ``exp`` overflows)."""
    m = xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z - m)
    s = xp.sum(e, axis=-1, keepdims=True)
    return e / s, (xp.log(s) + m)[..., 0]


def _capped(x, softcap, xp):
    """``softcap * tanh(x / softcap)`` and its derivative (``None`` without a cap)."""
    if softcap is None:
        return x, None
    t = xp.tanh(x / softcap)
    return softcap * t, 1.0 - t * t


class _Labels:
    """Class-index targets: which rows are kept, their labels (0 for ignored rows, so every row can
    be indexed), the one-hot mask, and each row's class weight and the count the mean divides by."""

    def __init__(self, x, target, weight, ignore_index, xp):
        self.keep = None if ignore_index is None else target != ignore_index
        self.label = target if self.keep is None else xp.where(self.keep, target, 0)
        self.onehot = xp.arange(x.shape[-1]) == self.label[..., None]
        self.wy = None if weight is None else xp.take(weight, self.label)
        rows = xp.ones(target.shape, dtype=x.dtype) if self.wy is None else self.wy
        self.count = xp.sum(rows if self.keep is None else xp.where(self.keep, rows, 0.0))

    def at(self, x, xp):
        """``x`` at each row's label."""
        return xp.take_along_axis(x, self.label[..., None], axis=-1)[..., 0]

    def weighted(self, v):
        return v if self.wy is None else self.wy * v

    def kept(self, v, xp):
        """Per-row values, 0 on ignored rows."""
        return v if self.keep is None else xp.where(self.keep, v, 0.0)


@reference
def cross_entropy(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None,
                  return_z_loss=False, xp=np):
    """Cross entropy of the capped logits ``z`` (``softcap * tanh(x / softcap)``, or ``x``) against
    the (smoothed) target, plus PaLM's ``z_loss * lse(z)**2`` per row, weighted like the row.
    ``return_z_loss`` changes what the API returns, not the loss (see :func:`cross_entropy_z_part`)."""
    z, dcap = _capped(logits, softcap, xp)
    p, lse = _softmax(z, xp)
    c = z.shape[-1]
    eps = label_smoothing
    w = None if weight is None else xp.asarray(weight, dtype=z.dtype)
    if target.dtype.kind == "f":  # probabilities: rows are neither weighted nor ignored
        t = target if not eps else (1.0 - eps) * target + eps / c
        wt = t if w is None else w * t  # w_j t_j
        loss = xp.sum(wt * (lse[..., None] - z), axis=-1) + z_loss * lse * lse
        rows, total = None, xp.sum(wt, axis=-1)
    else:
        rows = _Labels(z, target, w, ignore_index, xp)
        loss = rows.weighted(lse - rows.at(z, xp))
        on = rows.weighted(1.0 - eps)  # the target class's w_j t_j
        if w is None:
            wt = xp.where(rows.onehot, on + eps / c, eps / c).astype(z.dtype) if eps else rows.onehot
            total = 1.0
        else:
            wt = xp.where(rows.onehot, on[..., None], 0.0) + eps / c * w
            total = on + eps / c * xp.sum(w)
        if eps:  # torch: (1 - eps) nll + eps / C sum_j w_j (lse - z_j)
            w_sum, wz = (c, z) if w is None else (xp.sum(w), w * z)
            loss = (1.0 - eps) * loss + eps / c * (w_sum * lse - xp.sum(wz, axis=-1))
        loss = rows.kept(loss + z_loss * rows.weighted(lse * lse), xp)
    # d loss / dz = slope p - w t, with slope = sum_j w_j t_j + 2 z_loss w_y lse
    slope = total + 2.0 * z_loss * (lse if rows is None else rows.weighted(lse)) if z_loss else total

    def vjp(cot):
        row_cot = xp.broadcast_to(xp.asarray(cot, dtype=z.dtype), lse.shape)
        if rows is not None:
            row_cot = rows.kept(row_cot, xp)
        scaled = p if isinstance(slope, float) else p * slope[..., None]
        g = (scaled - wt) * row_cot[..., None]
        return (g if dcap is None else g * dcap,)

    return Reference(loss, vjp, None if rows is None else rows.count)


@reference
def softmax_focal(logits, target, *, weight=None, ignore_index=-100, gamma=2.0, xp=np):
    def loss(lp):
        return -((-xp.expm1(lp)) ** gamma) * lp

    def slope(lp):  # d loss / d log p_y; u**(gamma - 1) is infinite at u = 0 for gamma < 1, the product 0
        py = xp.exp(lp)
        u = -xp.expm1(lp)
        focus = gamma * xp.where(u > 0, u, 1.0) ** (gamma - 1.0) * py * lp
        return xp.where(u > 0, focus, 0.0) - u**gamma

    return _of_target(logits, target, weight, ignore_index, loss, slope, xp)


@reference
def generalized_cross_entropy(logits, target, *, weight=None, ignore_index=-100, q=0.7, xp=np):
    # (1 - p_y**q) / q, with expm1 for p_y near 1
    return _of_target(logits, target, weight, ignore_index, lambda lp: -xp.expm1(q * lp) / q,
                      lambda lp: -xp.exp(q * lp), xp)


@reference
def poly1_cross_entropy(logits, target, *, weight=None, ignore_index=-100, epsilon=1.0, xp=np):
    # -log p_y + epsilon (1 - p_y)
    return _of_target(logits, target, weight, ignore_index, lambda lp: -lp - epsilon * xp.expm1(lp),
                      lambda lp: -1.0 - epsilon * xp.exp(lp), xp)


def _of_target(logits, target, weight, ignore_index, loss, slope, xp):
    """A loss ``loss(log p_y)`` of the target class's log-probability, weighted by ``weight[y]``;
    ``slope`` is its derivative, so the gradient is ``slope(log p_y) (p - onehot)``."""
    p, lse = _softmax(logits, xp)
    w = None if weight is None else xp.asarray(weight, dtype=logits.dtype)
    rows = _Labels(logits, target, w, ignore_index, xp)
    lp = rows.at(logits, xp) - lse
    row_slope = rows.weighted(slope(lp))

    def vjp(cot):
        return ((rows.kept(cot * row_slope, xp))[..., None] * (rows.onehot - p),)

    return Reference(rows.kept(rows.weighted(loss(lp)), xp), vjp, rows.count)


@reference
def multiclass_hinge(scores, target, *, weight=None, margin=1.0, p=1, xp=np):
    """PyTorch's multi_margin_loss: the mean over classes of the hinges (to the power ``p``) of the
    other classes against the target's score; its mean is over rows even with class weights."""
    c = scores.shape[-1]
    w = None if weight is None else xp.asarray(weight, dtype=scores.dtype)
    rows = _Labels(scores, target, w, None, xp)
    h = xp.where(rows.onehot, 0.0, xp.maximum(margin - rows.at(scores, xp)[..., None] + scores, 0.0))
    slope = (h > 0).astype(scores.dtype) if p == 1 else 2.0 * h

    def vjp(cot):
        g = per_row(rows.weighted(cot / c), 1) * slope
        # the target's score enters every other class's hinge with the opposite sign
        return (g - rows.onehot * xp.sum(g, axis=-1, keepdims=True),)

    return Reference(rows.weighted(xp.sum(h**p, axis=-1) / c), vjp)


@reference
def kl_divergence(logits, target, *, xp=np):
    """KL(target || softmax(logits)) per row; ``t log t`` is 0 where ``t`` is."""
    p, lse = _softmax(logits, xp)
    t_log_t = xp.where(target > 0, target * xp.log(xp.where(target > 0, target, 1.0)), 0.0)
    loss = xp.sum(t_log_t - target * (logits - lse[..., None]), axis=-1)
    slope = xp.sum(target, axis=-1, keepdims=True) * p - target
    return Reference(loss, lambda cot: (per_row(cot, 1) * slope,))


def cross_entropy_z_part(logits, target, *, weight=None, ignore_index=-100, z_loss=0.0, softcap=None, xp=np):
    """The z-loss part of :func:`cross_entropy`'s per-row losses (0 on ignored rows): what
    ``return_z_loss=True`` reports, reduced like the loss."""
    z, _ = _capped(logits, softcap, xp)
    _, lse = _softmax(z, xp)
    if target.dtype.kind == "f":
        return z_loss * lse * lse
    w = None if weight is None else xp.asarray(weight, dtype=z.dtype)
    rows = _Labels(z, target, w, ignore_index, xp)
    return rows.kept(z_loss * rows.weighted(lse * lse), xp)
