"""References for the likelihood losses (``fastloss.losses.probabilistic``)."""

from __future__ import annotations

import math

import numpy as np

from ._common import elementwise, reference

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@reference
def poisson_nll(pred, target, *, log_input=True, full=False, eps=1e-8, xp=np):
    if log_input:
        rate = xp.exp(pred)
        loss, slope = rate - target * pred, rate - target
    else:
        loss, slope = pred - target * xp.log(pred + eps), 1.0 - target / (pred + eps)
    if full:
        # Stirling's term only where target > 1 (as PyTorch); the inner where keeps log away from 0
        t = xp.where(target > 1, target, 1.0)
        loss = loss + xp.where(target > 1, t * xp.log(t) - t + 0.5 * xp.log(2.0 * math.pi * t), 0.0)
    return elementwise(loss, slope)


@reference
def gaussian_nll(pred, target, var, *, full=False, eps=1e-6, xp=np):
    # the clamp of var at eps passes the gradient through (as PyTorch)
    v = xp.maximum(var, eps)
    d = pred - target
    loss = 0.5 * (xp.log(v) + d * d / v)
    if full:
        loss = loss + HALF_LOG_2PI
    return elementwise(loss, d / v, 0.5 * (1.0 / v - d * d / (v * v)))
