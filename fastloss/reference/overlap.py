"""References for the overlap losses (``fastloss.losses.overlap``).

Masks are ``(N, ...)``: one loss per sample over all its other axes (soft counts of the
intersection ``I`` and the sizes ``P`` and ``T`` of prediction and target). Boxes are ``(..., 4)``
corners ``(x1, y1, x2, y2)``: one loss per box.
"""

from __future__ import annotations

import numpy as np

from ._common import Reference, per_row, reference, tie_weight


def _overlap(logits, target, from_logits, finish, xp):
    """Soft counts per sample, ``finish(I, P, T) -> (loss, dl/dI, dl/dP)``, and the chain rule to the
    inputs (``dI/dp = t``, ``dP/dp = 1``; ``T`` does not depend on the prediction)."""
    axes = tuple(range(1, logits.ndim))
    extra = logits.ndim - 1
    p = xp.exp(-xp.logaddexp(0.0, -logits)) if from_logits else logits  # sigmoid without overflow
    loss, dl_di, dl_dp = finish(xp.sum(p * target, axis=axes), xp.sum(p, axis=axes), xp.sum(target, axis=axes))

    def vjp(cot):
        g = per_row(cot * dl_di, extra) * target + per_row(cot * dl_dp, extra)
        return (g * (p * (1.0 - p)) if from_logits else g,)

    return Reference(loss, vjp)


@reference
def dice(logits, target, *, smooth=1.0, from_logits=True, xp=np):
    def finish(i, p, t):
        num, den = 2.0 * i + smooth, p + t + smooth
        return 1.0 - num / den, -2.0 / den, num / (den * den)

    return _overlap(logits, target, from_logits, finish, xp)


@reference
def jaccard(logits, target, *, smooth=1.0, from_logits=True, xp=np):
    def finish(i, p, t):
        num, den = i + smooth, p + t - i + smooth  # the union
        return 1.0 - num / den, -(1.0 / den + num / (den * den)), num / (den * den)

    return _overlap(logits, target, from_logits, finish, xp)


@reference
def tversky(logits, target, *, alpha=0.5, beta=0.5, smooth=1.0, from_logits=True, xp=np):
    def finish(i, p, t):
        # I + alpha FP + beta FN with FP = P - I, FN = T - I
        num = i + smooth
        den = (1.0 - alpha - beta) * i + alpha * p + beta * t + smooth
        q = num / (den * den)
        return 1.0 - num / den, -1.0 / den + (1.0 - alpha - beta) * q, alpha * q

    return _overlap(logits, target, from_logits, finish, xp)


@reference
def giou(pred_boxes, target_boxes, *, eps=1e-7, xp=np):
    x1, y1, x2, y2 = (pred_boxes[..., k] for k in range(4))
    a1, b1, a2, b2 = (target_boxes[..., k] for k in range(4))

    def larger(a, b):  # d max(a, b) / da, ties split evenly (as PyTorch)
        return tie_weight(b, a, xp)

    iw = xp.minimum(x2, a2) - xp.maximum(x1, a1)
    ih = xp.minimum(y2, b2) - xp.maximum(y1, b1)
    overlap = (iw > 0) & (ih > 0)
    inter = xp.where(overlap, iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
    cw = xp.maximum(x2, a2) - xp.minimum(x1, a1)
    ch = xp.maximum(y2, b2) - xp.minimum(y1, b1)
    ue, ce = union + eps, cw * ch + eps
    loss = 1.0 - inter / ue + (cw * ch - union) / ce
    # the loss through the intersection I, the predicted area A and the enclosing box C
    dl_di = -(ue + inter) / (ue * ue) + 1.0 / ce
    dl_da = inter / (ue * ue) - 1.0 / ce
    dl_dc = ue / (ce * ce)
    di_w, di_h = xp.where(overlap, ih, 0.0), xp.where(overlap, iw, 0.0)

    def vjp(cot):
        i, a, c = cot * dl_di, cot * dl_da, cot * dl_dc
        return (xp.stack([
            -i * di_w * larger(x1, a1) - a * (y2 - y1) - c * ch * larger(a1, x1),
            -i * di_h * larger(y1, b1) - a * (x2 - x1) - c * cw * larger(b1, y1),
            i * di_w * larger(a2, x2) + a * (y2 - y1) + c * ch * larger(x2, a2),
            i * di_h * larger(b2, y2) + a * (x2 - x1) + c * cw * larger(y2, b2),
        ], axis=-1),)

    return Reference(loss, vjp)
