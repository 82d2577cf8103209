"""References for the embedding losses.

Rowreduce and similarity convention: the inputs as given (float64; rows along the last axis,
row targets of the rows' shape) and the parameters as keywords; the result is
``(per_row_loss, (grad_input_0, ...))``, the gradients being those of the *sum* of the row losses.
"""

import numpy as np

COSINE_EPS = float(np.float32(1e-12))  # PyTorch's cosine_embedding_loss (a C++ float)
NORM_EPS = 1e-12  # torch.nn.functional.normalize


def contrastive(x1, x2, target, margin):
    u = x1 - x2
    d = np.sqrt(np.sum(u * u, axis=-1))
    h = np.maximum(margin - d, 0.0)
    loss = 0.5 * (target * d**2 + (1 - target) * h**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = target - (1 - target) * np.where(d > 0, h / d, 0.0)
    g = c[..., None] * u
    return loss, (g, -g)


def _distance(x, y, p, eps):
    """PyTorch's pairwise_distance and its gradient with respect to ``x`` (0 where the distance is 0)."""
    u = x - y + eps
    d = np.sum(np.abs(u) ** p, axis=-1) ** (1.0 / p)
    safe = np.where(d > 0, d, 1.0)
    g = np.sign(u) * np.abs(u) ** (p - 1) / safe[..., None] ** (p - 1) * (d > 0)[..., None]
    return d, g


def _tie_weight(a, b):
    """d min(a, b) / da with ties split evenly (PyTorch)."""
    return np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))


def triplet_margin(anchor, positive, negative, margin, p, eps, swap):
    d_ap, g_ap = _distance(anchor, positive, p, eps)
    d_an, g_an = _distance(anchor, negative, p, eps)
    w_an, w_pn = np.ones_like(d_an), np.zeros_like(d_an)
    d_neg, g_pn = d_an, np.zeros_like(g_an)
    if swap:
        d_pn, g_pn = _distance(positive, negative, p, eps)
        w_an, w_pn = _tie_weight(d_an, d_pn), _tie_weight(d_pn, d_an)
        d_neg = np.minimum(d_an, d_pn)
    z = margin + d_ap - d_neg
    act = (z >= 0)[..., None]
    w_an, w_pn = w_an[..., None], w_pn[..., None]
    ga = act * (g_ap - w_an * g_an)
    gp = act * (-g_ap - w_pn * g_pn)
    gn = act * (w_an * g_an + w_pn * g_pn)
    return np.maximum(z, 0.0), (ga, gp, gn)


def cosine_embedding(x1, x2, target, margin):
    m1 = np.sum(x1 * x1, -1) + COSINE_EPS
    m2 = np.sum(x2 * x2, -1) + COSINE_EPS
    root = np.sqrt(m1 * m2)
    cos = np.sum(x1 * x2, -1) / root
    pos = target > 0
    loss = np.where(pos, 1 - cos, np.maximum(cos - margin, 0.0))
    dl = np.where(pos, -1.0, (cos >= margin).astype(float))[..., None]
    g1 = dl * (x2 / root[..., None] - cos[..., None] * x1 / m1[..., None])
    g2 = dl * (x1 / root[..., None] - cos[..., None] * x2 / m2[..., None])
    return loss, (g1, g2)


def _log_softmax(s):
    m = s.max(axis=1, keepdims=True)
    return s - m - np.log(np.sum(np.exp(s - m), axis=1, keepdims=True))


def info_nce(z1, z2, temperature, symmetric, weight=None):
    """Per-pair losses and the gradients of ``sum_i w_i loss_i`` (a pair's loss involves every row)."""
    n = z1.shape[0]
    w = np.ones(n) if weight is None else np.broadcast_to(weight, (n,))
    n1 = np.linalg.norm(z1, axis=1)
    n2 = np.linalg.norm(z2, axis=1)
    u = z1 / np.maximum(n1, NORM_EPS)[:, None]
    v = z2 / np.maximum(n2, NORM_EPS)[:, None]
    s = u @ v.T / temperature
    eye = np.eye(n)
    lr = _log_softmax(s)
    loss = -np.diag(lr)
    ds = w[:, None] * (np.exp(lr) - eye)  # d sum_i w_i row_i / d S
    if symmetric:
        lc = _log_softmax(s.T)
        loss = 0.5 * (loss - np.diag(lc))
        ds = 0.5 * (ds + (w[:, None] * (np.exp(lc) - eye)).T)
    du = ds @ v / temperature
    dv = ds.T @ u / temperature

    def back(d, w, norm):
        radial = np.where(norm > NORM_EPS, np.sum(w * d, axis=1), 0.0)
        return (d - radial[:, None] * w) / np.maximum(norm, NORM_EPS)[:, None]

    return loss, (back(du, u, n1), back(dv, v, n2))


REFERENCES = {
    "contrastive": contrastive,
    "triplet_margin": triplet_margin,
    "cosine_embedding": cosine_embedding,
    "info_nce": info_nce,
}
