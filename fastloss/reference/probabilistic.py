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


@reference
def gamma(pred, target, *, xp=np):
    r = target * xp.exp(-pred)
    return elementwise(r + pred - xp.log(target) - 1.0, 1.0 - r)


@reference
def tweedie(pred, target, *, power=1.5, xp=np):
    e1, e2 = xp.exp((1.0 - power) * pred), xp.exp((2.0 - power) * pred)
    if power == 1.0:
        ylogy = xp.where(target > 0, target * xp.log(xp.where(target > 0, target, 1.0)), 0.0)
        loss = e2 - target * pred + ylogy - target
    elif power == 2.0:
        loss = target * xp.exp(-pred) + pred - xp.log(target) - 1.0
    else:
        constant = target ** (2.0 - power) / ((1.0 - power) * (2.0 - power))
        loss = e2 / (2.0 - power) - target * e1 / (1.0 - power) + constant
    return elementwise(loss, e2 - target * e1)
