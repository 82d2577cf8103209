"""References for the pointwise losses (regression, count/Gaussian likelihoods, binary classification)."""

import numpy as np


def mse(x, y):
    d = x - y
    return d**2, (2 * d,)


def mae(x, y):
    d = x - y
    return np.abs(d), (np.sign(d),)


def huber(x, y, delta):
    d = x - y
    quad = np.abs(d) < delta
    return np.where(quad, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta)), (np.clip(d, -delta, delta),)


def smooth_l1(x, y, beta):
    d = x - y
    if beta == 0:
        return np.abs(d), (np.sign(d),)
    quad = np.abs(d) < beta
    return np.where(quad, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta), (np.where(quad, d / beta, np.sign(d)),)


def log_cosh(x, y):
    d = x - y
    # np.logaddexp(d, -d) - log 2 == log(cosh(d)) without overflow
    return np.logaddexp(d, -d) - np.log(2.0), (np.tanh(d),)


def quantile(x, y, q):
    d = y - x
    return np.maximum(q * d, (q - 1) * d), (np.where(y > x, -q, 1 - q),)


def robust(x, y, alpha, scale):
    z = ((x - y) / scale) ** 2
    dz = (x - y) / scale**2  # d(z/2)/dx
    if alpha == 2:
        return 0.5 * z, (dz,)
    if alpha == 0:
        return np.log(0.5 * z + 1), (dz / (0.5 * z + 1),)
    if np.isneginf(alpha):
        return 1 - np.exp(-0.5 * z), (dz * np.exp(-0.5 * z),)
    b = abs(alpha - 2)
    base = z / b + 1
    # base**(alpha/2) - 1 cancels for alpha near 0; expm1/log1p is the same quantity without that
    return b / alpha * np.expm1(alpha / 2 * np.log1p(z / b)), (dz * base ** (alpha / 2 - 1),)


def poisson_nll(x, y, log_input, full, eps):
    if log_input:
        loss, grad = np.exp(x) - y * x, np.exp(x) - y
    else:
        loss, grad = x - y * np.log(x + eps), 1 - y / (x + eps)
    if full:
        with np.errstate(divide="ignore", invalid="ignore"):
            stirling = y * np.log(y) - y + 0.5 * np.log(2 * np.pi * y)
        loss = loss + np.where(y > 1, stirling, 0.0)
    return loss, (grad,)


def gaussian_nll(x, y, var, full, eps):
    v = np.maximum(var, eps)
    loss = 0.5 * (np.log(v) + (x - y) ** 2 / v)
    if full:
        loss = loss + 0.5 * np.log(2 * np.pi)
    return loss, ((x - y) / v, 0.5 / v - 0.5 * (x - y) ** 2 / v**2)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def binary_cross_entropy(x, y, pos_weight):
    # log sigmoid(x) = -logaddexp(0, -x)
    loss = pos_weight * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    p = _sigmoid(x)
    return loss, ((1 - y) * p - pos_weight * y * (1 - p),)


def sigmoid_focal(x, y, alpha, gamma):
    # torchvision.ops.sigmoid_focal_loss, differentiated by hand
    p = _sigmoid(x)
    ce = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    p_t = p * y + (1 - p) * (1 - y)
    m = 1 - p_t
    loss = ce * m**gamma
    dm = p * (1 - p) * (1 - 2 * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        dmg = np.where(m > 0, gamma * m ** (gamma - 1) * dm, 0.0) if gamma != 0 else 0.0
    grad = (p - y) * m**gamma + ce * dmg
    if alpha >= 0:
        a = alpha * y + (1 - alpha) * (1 - y)
        loss, grad = a * loss, a * grad
    return loss, (grad,)


def _signs(y):
    return np.where(y > 0, 1.0, -1.0)


def hinge(x, y, margin):
    s = _signs(y)
    m = margin - s * x
    return np.maximum(0, m), (np.where(m > 0, -s, 0.0),)


def squared_hinge(x, y, margin):
    s = _signs(y)
    m = np.maximum(0, margin - s * x)
    return m**2, (-2 * s * m,)


REFERENCES = {
    f.__name__: f
    for f in (mse, mae, huber, smooth_l1, log_cosh, quantile, robust, poisson_nll, gaussian_nll,
              binary_cross_entropy, sigmoid_focal, hinge, squared_hinge)
}
