"""References for the overlap losses (rowreduce convention, see ``embedding.py``).

Masks are ``(N, ...)`` with one value per sample over all the other axes; boxes ``(..., 4)``.
"""

import numpy as np


def _probs(logits, from_logits):
    """Probabilities and their derivative with respect to the inputs."""
    if from_logits:
        p = 0.5 * (1.0 + np.tanh(0.5 * logits))
        return p, p * (1 - p)
    return logits, np.ones_like(logits)


def _sums(p, t):
    axes = tuple(range(1, p.ndim))
    return np.sum(p * t, axis=axes), np.sum(p, axis=axes), np.sum(t, axis=axes)


def _expand(v, like):
    return v.reshape(v.shape + (1,) * (like.ndim - 1))


def tversky(logits, target, alpha, beta, smooth, from_logits):
    p, dp = _probs(logits, from_logits)
    i, sp, st = _sums(p, target)
    fp, fn = sp - i, st - i
    den = i + alpha * fp + beta * fn + smooth
    loss = 1 - (i + smooth) / den
    # d/dp_j of I, FP, FN: t_j, 1 - t_j, -t_j
    d_num = target
    d_den = target + alpha * (1 - target) - beta * target
    g = -(d_num * _expand(den, p) - _expand(i + smooth, p) * d_den) / _expand(den, p) ** 2
    return loss, (g * dp,)


def dice(logits, target, smooth, from_logits):
    p, dp = _probs(logits, from_logits)
    i, sp, st = _sums(p, target)
    den = sp + st + smooth
    loss = 1 - (2 * i + smooth) / den
    g = -(2 * target * _expand(den, p) - _expand(2 * i + smooth, p)) / _expand(den, p) ** 2
    return loss, (g * dp,)


def jaccard(logits, target, smooth, from_logits):
    p, dp = _probs(logits, from_logits)
    i, sp, st = _sums(p, target)
    union = sp + st - i + smooth
    loss = 1 - (i + smooth) / union
    g = -(target * _expand(union, p) - _expand(i + smooth, p) * (1 - target)) / _expand(union, p) ** 2
    return loss, (g * dp,)


def _wmax(a, b):
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def giou(pred_boxes, target_boxes, eps):
    x1, y1, x2, y2 = np.moveaxis(pred_boxes, -1, 0)
    a1, b1, a2, b2 = np.moveaxis(target_boxes, -1, 0)
    iw = np.minimum(x2, a2) - np.maximum(x1, a1)
    ih = np.minimum(y2, b2) - np.maximum(y1, b1)
    on = (iw > 0) & (ih > 0)
    inter = np.where(on, iw * ih, 0.0)
    area = (x2 - x1) * (y2 - y1)
    union = area + (a2 - a1) * (b2 - b1) - inter
    cw = np.maximum(x2, a2) - np.minimum(x1, a1)
    ch = np.maximum(y2, b2) - np.minimum(y1, b1)
    c = cw * ch
    loss = 1 - inter / (union + eps) + (c - union) / (c + eps)
    # chain rule through I, the predicted area and C, each a function of the corners
    dl_di = -1 / (union + eps) - inter / (union + eps) ** 2 + 1 / (c + eps)
    dl_da = inter / (union + eps) ** 2 - 1 / (c + eps)
    dl_dc = ((c + eps) - (c - union)) / (c + eps) ** 2
    di = [-np.where(on, ih, 0) * _wmax(x1, a1), -np.where(on, iw, 0) * _wmax(y1, b1),
          np.where(on, ih, 0) * _wmax(a2, x2), np.where(on, iw, 0) * _wmax(b2, y2)]
    da = [-(y2 - y1), -(x2 - x1), y2 - y1, x2 - x1]
    dc = [-ch * _wmax(a1, x1), -cw * _wmax(b1, y1), ch * _wmax(x2, a2), cw * _wmax(y2, b2)]
    g = np.stack([dl_di * di[k] + dl_da * da[k] + dl_dc * dc[k] for k in range(4)], axis=-1)
    return loss, (g,)


REFERENCES = {"dice": dice, "jaccard": jaccard, "tversky": tversky, "giou": giou}
