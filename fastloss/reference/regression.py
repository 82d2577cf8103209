"""References for the regression losses (``fastloss.losses.regression``): one loss per element."""

from __future__ import annotations

import math

import numpy as np

from ._common import Reference, elementwise, reference

LN2 = math.log(2.0)


@reference
def mse(pred, target, *, xp=np):
    d = pred - target
    # the factor 2 joins the cotangent (a scalar for a mean), so the gradient is one pass over d
    return Reference(d * d, lambda cot: ((2.0 * cot) * d,))


@reference
def mae(pred, target, *, xp=np):
    d = pred - target
    return elementwise(xp.abs(d), xp.sign(d))


@reference
def huber(pred, target, *, delta=1.0, xp=np):
    d = pred - target
    a = xp.abs(d)
    inside = a < delta
    return elementwise(xp.where(inside, 0.5 * d * d, delta * (a - 0.5 * delta)),
                       xp.where(inside, d, delta * xp.sign(d)))


@reference
def smooth_l1(pred, target, *, beta=1.0, xp=np):
    if beta == 0.0:  # the quadratic zone vanishes: L1 (dividing by beta would give 0/0)
        return mae(pred, target, xp=xp)
    d = pred - target
    a = xp.abs(d)
    inside = a < beta
    return elementwise(xp.where(inside, 0.5 * d * d / beta, a - 0.5 * beta), xp.where(inside, d / beta, xp.sign(d)))


@reference
def log_cosh(pred, target, *, xp=np):
    d = pred - target
    # logaddexp(d, -d) - log 2 is log(cosh(d)) without overflow for large |d|
    return elementwise(xp.logaddexp(d, -d) - LN2, xp.tanh(d))


@reference
def quantile(pred, target, *, q=0.5, xp=np):
    d = target - pred
    return elementwise(xp.maximum(q * d, (q - 1.0) * d), xp.where(d > 0, -q, 1.0 - q).astype(d.dtype))


@reference
def robust(pred, target, *, alpha=1.0, scale=1.0, xp=np):
    """Barron's general robust loss; its limits (alpha 2, 0, -inf) are the closed forms of the paper."""
    x = pred - target
    x_c2 = x / (scale * scale)  # d(z/2)/dx
    z = x * x_c2  # (x / scale)**2
    if alpha == 2.0:
        return elementwise(0.5 * z, x_c2)
    if alpha == 0.0:
        return elementwise(xp.log1p(0.5 * z), x_c2 / (0.5 * z + 1.0))
    if alpha == -math.inf:
        return elementwise(-xp.expm1(-0.5 * z), x_c2 * xp.exp(-0.5 * z))
    b = abs(alpha - 2.0)
    t = xp.log1p(z / b)
    # base**(alpha/2) - 1 cancels for alpha near 0; expm1 of the log is the same quantity without that
    return elementwise(b / alpha * xp.expm1(0.5 * alpha * t), x_c2 * xp.exp((0.5 * alpha - 1.0) * t))


@reference
def pseudo_huber(pred, target, *, delta=1.0, xp=np):
    d = pred - target
    r = xp.sqrt(1.0 + (d / delta) ** 2)
    return elementwise(delta * delta * (r - 1.0), d / r)
