"""References for the rowwise (multiclass) losses, in plain float64 NumPy.

Convention: ``ref(x, target, weight=None, ignore_index=None, **params) -> (loss, grad, denom)`` with
``x`` of shape ``(n, C)`` (float64), ``target`` class indices ``(n,)`` (int) or probabilities
``(n, C)`` (float), ``weight`` per-class weights or ``None``. ``loss`` holds the per-sample losses
(0 for ignored samples), ``grad`` the gradient of ``loss.sum()`` with respect to ``x``, and
``denom`` what ``reduction="mean"`` divides by (PyTorch semantics).
"""

import numpy as np


def log_softmax(x):
    m = np.max(x, axis=1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def _index_setup(x, y, weight, ignore_index):
    n, c = x.shape
    y = np.asarray(y)
    keep = np.ones(n, bool) if ignore_index is None else y != ignore_index
    ys = np.where(keep, y, 0)
    w = np.ones(c) if weight is None else np.asarray(weight, float)
    onehot = np.zeros((n, c))
    onehot[np.arange(n), ys] = 1.0
    return keep, ys, w, onehot


def _finish(loss, grad, keep):
    return np.where(keep, loss, 0.0), np.where(keep[:, None], grad, 0.0)


def cross_entropy(x, target, weight=None, ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                  return_z_loss=False):
    """Cross entropy of ``c = softcap * tanh(x / softcap)`` (or ``x``) plus ``z_loss * lse(c)**2`` per
    sample, weighted by ``weight[y]`` (index targets) like the sample; gradient through the cap."""
    n, c = x.shape
    eps = label_smoothing
    z = x if softcap is None else softcap * np.tanh(x / softcap)
    dz = np.ones_like(x) if softcap is None else 1.0 - np.tanh(x / softcap) ** 2
    m = np.max(z, axis=1, keepdims=True)
    lse = (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]
    lp = z - lse[:, None]
    p = np.exp(lp)
    w = np.ones(c) if weight is None else np.asarray(weight, float)
    if np.asarray(target).dtype.kind == "f":  # probabilities
        tt = (1 - eps) * target + eps / c
        loss = -np.sum(w * tt * lp, axis=1) + z_loss * lse**2
        grad = (np.sum(w * tt, axis=1, keepdims=True) * p - w * tt + 2 * z_loss * lse[:, None] * p) * dz
        return loss, grad, float(n)
    keep, ys, w, onehot = _index_setup(x, target, weight, ignore_index)
    # torch: (1 - eps) * nll(weight) + eps / C * sum_j w_j (-log p_j)
    wy = w[ys]
    nll = -wy * lp[np.arange(n), ys]
    smooth = -np.sum(w * lp, axis=1)
    loss = (1 - eps) * nll + eps / c * smooth + z_loss * wy * lse**2
    tt = (1 - eps) * onehot * wy[:, None] + eps / c * w  # = w_j t'_j
    grad = (np.sum(tt, axis=1, keepdims=True) * p - tt + 2 * z_loss * (wy * lse)[:, None] * p) * dz
    loss, grad = _finish(loss, grad, keep)
    return loss, grad, float(np.sum(wy[keep]))


def cross_entropy_z_part(x, target, weight=None, ignore_index=None, z_loss=0.0, softcap=None):
    """The z-loss part of :func:`cross_entropy`'s per-sample losses (0 for ignored samples)."""
    z = x if softcap is None else softcap * np.tanh(x / softcap)
    m = np.max(z, axis=1, keepdims=True)
    lse = (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]
    if np.asarray(target).dtype.kind == "f":
        return z_loss * lse**2
    keep, ys, w, _ = _index_setup(x, target, weight, ignore_index)
    return np.where(keep, z_loss * w[ys] * lse**2, 0.0)


def softmax_focal(x, target, weight=None, ignore_index=None, gamma=2.0):
    n = x.shape[0]
    keep, ys, w, onehot = _index_setup(x, target, weight, ignore_index)
    lp = log_softmax(x)
    p = np.exp(lp)
    lpy = lp[np.arange(n), ys]
    py = np.exp(lpy)
    u = 1 - py
    wy = w[ys]
    loss = -wy * u**gamma * lpy
    with np.errstate(divide="ignore", invalid="ignore"):
        dpsi = np.where(u > 0, gamma * u ** (gamma - 1) * py * lpy, 0.0) - u**gamma  # d loss / d log p_y
    grad = (wy * dpsi)[:, None] * (onehot - p)
    loss, grad = _finish(loss, grad, keep)
    return loss, grad, float(np.sum(wy[keep]))


def multiclass_hinge(x, target, weight=None, ignore_index=None, margin=1.0, p=1):
    n, c = x.shape
    _, ys, w, onehot = _index_setup(x, target, weight, ignore_index)
    xy = x[np.arange(n), ys][:, None]
    v = margin - xy + x
    h = np.where(onehot > 0, 0.0, np.maximum(v, 0.0))
    wy = w[ys][:, None]
    loss = np.sum(wy * h**p, axis=1) / c
    dh = (h > 0) * (1.0 if p == 1 else 2 * h)
    grad = wy * dh / c
    grad[np.arange(n), ys] = -np.sum(grad, axis=1)
    return loss, grad, float(n)


def kl_divergence(x, target, weight=None, ignore_index=None):
    n = x.shape[0]
    lp = log_softmax(x)
    t = np.asarray(target, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tlogt = np.where(t == 0, 0.0, t * np.log(t))
    loss = np.sum(tlogt - t * lp, axis=1)
    grad = np.sum(t, axis=1, keepdims=True) * np.exp(lp) - t
    return loss, grad, float(n)


def generalized_cross_entropy(x, target, weight=None, ignore_index=None, q=0.7):
    n = x.shape[0]
    keep, ys, w, onehot = _index_setup(x, target, weight, ignore_index)
    p = np.exp(log_softmax(x))
    py = p[np.arange(n), ys]
    wy = w[ys]
    loss = wy * (1 - py**q) / q
    grad = (wy * py**q)[:, None] * (p - onehot)
    loss, grad = _finish(loss, grad, keep)
    return loss, grad, float(np.sum(wy[keep]))


def poly1_cross_entropy(x, target, weight=None, ignore_index=None, epsilon=1.0):
    n = x.shape[0]
    keep, ys, w, onehot = _index_setup(x, target, weight, ignore_index)
    lp = log_softmax(x)
    p = np.exp(lp)
    py = p[np.arange(n), ys]
    wy = w[ys]
    loss = wy * (-lp[np.arange(n), ys] + epsilon * (1 - py))
    grad = (wy * (1 + epsilon * py))[:, None] * (p - onehot)
    loss, grad = _finish(loss, grad, keep)
    return loss, grad, float(np.sum(wy[keep]))


REFERENCES = {
    "cross_entropy": cross_entropy,
    "softmax_focal": softmax_focal,
    "multiclass_hinge": multiclass_hinge,
    "kl_divergence": kl_divergence,
    "generalized_cross_entropy": generalized_cross_entropy,
    "poly1_cross_entropy": poly1_cross_entropy,
}
