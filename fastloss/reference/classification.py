"""References for the binary classification losses (``fastloss.losses.classification``)."""

from __future__ import annotations

import numpy as np

from ._common import elementwise, reference


def _softplus(x, xp):
    """``log(1 + exp(-x)) = -log sigmoid(x)`` and ``sigmoid(x)``, finite for any ``x``."""
    softplus_neg = xp.logaddexp(0.0, -x)
    return softplus_neg, xp.exp(-softplus_neg)


def _signs(target, dtype, xp):
    """Labels in {-1, +1} (0 read as -1), in the prediction's dtype."""
    return xp.where(target > 0, 1.0, -1.0).astype(dtype)


@reference
def binary_cross_entropy(pred, target, *, pos_weight=1.0, xp=np):
    softplus_neg, p = _softplus(pred, xp)  # -log p and p
    # -log(1 - p) = softplus(x) = softplus(-x) + x
    loss = pos_weight * target * softplus_neg + (1.0 - target) * (softplus_neg + pred)
    return elementwise(loss, (1.0 - target) * p - pos_weight * target * (1.0 - p))


@reference
def sigmoid_focal(pred, target, *, alpha=0.25, gamma=2.0, xp=np):
    """torchvision.ops.sigmoid_focal_loss, differentiated by hand."""
    softplus_neg, p = _softplus(pred, xp)
    ce = target * softplus_neg + (1.0 - target) * (softplus_neg + pred)
    m = p + target - 2.0 * p * target  # 1 - p_t
    mg = m**gamma
    loss, slope = ce * mg, (p - target) * mg
    if gamma != 0.0:  # d m**gamma / dx; m**(gamma - 1) is infinite at m = 0 when gamma < 1, where the product is 0
        dm = p * (1.0 - p) * (1.0 - 2.0 * target)
        slope = slope + ce * xp.where(m > 0, gamma * xp.where(m > 0, m, 1.0) ** (gamma - 1.0) * dm, 0.0)
    if alpha >= 0.0:
        a = alpha * target + (1.0 - alpha) * (1.0 - target)
        loss, slope = a * loss, a * slope
    return elementwise(loss, slope)


@reference
def hinge(pred, target, *, margin=1.0, xp=np):
    y = _signs(target, pred.dtype, xp)
    m = margin - y * pred
    return elementwise(xp.maximum(m, 0.0), xp.where(m > 0, -y, 0.0))


@reference
def squared_hinge(pred, target, *, margin=1.0, xp=np):
    y = _signs(target, pred.dtype, xp)
    m = xp.maximum(margin - y * pred, 0.0)
    return elementwise(m * m, -2.0 * y * m)


@reference
def exponential(pred, target, *, xp=np):
    a, b = xp.exp(-pred), xp.exp(pred)
    return elementwise(target * a + (1.0 - target) * b, (1.0 - target) * b - target * a)
