"""References for the embedding losses (``fastloss.losses.embedding``): one loss per row of the
row-aligned inputs (rows along the last axis), per-row targets shaped like the leading axes."""

from __future__ import annotations

import numpy as np

from ._common import Reference, per_row, reference, tie_weight

COSINE_EPS = float(np.float32(1e-12))  # added to each squared norm by PyTorch's cosine_embedding_loss (a C++ float)
NORM_EPS = 1e-12  # the floor of a norm in torch.nn.functional.normalize


@reference
def contrastive(x1, x2, target, *, margin=1.0, xp=np):
    u = x1 - x2
    d2 = xp.sum(u * u, axis=-1)
    d = xp.sqrt(d2)
    h = xp.maximum(margin - d, 0.0)
    # d loss / du = (target - (1 - target) h / d) u; the hinge term has no direction at d = 0
    slope = target - xp.where(d > 0, (1.0 - target) * h / xp.where(d > 0, d, 1.0), 0.0)

    def vjp(cot):
        g = per_row(cot * slope, 1) * u
        return g, -g

    return Reference(0.5 * (target * d2 + (1.0 - target) * h * h), vjp)


def _distance(x, y, p, eps, xp):
    """PyTorch's pairwise_distance ``|x - y + eps|_p`` and its gradient in ``x`` (0 where the distance is 0)."""
    u = x - y + eps
    d = xp.sum(xp.abs(u) ** p, axis=-1) ** (1.0 / p)
    slope = xp.where(d > 0, 1.0 / xp.where(d > 0, d, 1.0) ** (p - 1.0), 0.0)
    return d, per_row(slope, 1) * xp.sign(u) * xp.abs(u) ** (p - 1.0)


@reference
def triplet_margin(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False, xp=np):
    d_ap, g_ap = _distance(anchor, positive, p, eps, xp)
    d_an, g_an = _distance(anchor, negative, p, eps, xp)
    if swap:  # the negative's distance is the smaller of anchor's and positive's
        d_pn, g_pn = _distance(positive, negative, p, eps, xp)
        w_an, w_pn = tie_weight(d_an, d_pn, xp)[..., None], tie_weight(d_pn, d_an, xp)[..., None]
        d_neg = xp.minimum(d_an, d_pn)
    else:
        w_an, w_pn, g_pn, d_neg = 1.0, 0.0, 0.0, d_an
    z = margin + d_ap - d_neg
    active = (z >= 0).astype(anchor.dtype)

    def vjp(cot):
        c = per_row(cot * active, 1)
        return c * (g_ap - w_an * g_an), c * (-g_ap - w_pn * g_pn), c * (w_an * g_an + w_pn * g_pn)

    return Reference(xp.maximum(z, 0.0), vjp)


@reference
def cosine_embedding(x1, x2, target, *, margin=0.0, xp=np):
    m1 = xp.sum(x1 * x1, axis=-1) + COSINE_EPS
    m2 = xp.sum(x2 * x2, axis=-1) + COSINE_EPS
    inv = 1.0 / xp.sqrt(m1 * m2)
    cos = xp.sum(x1 * x2, axis=-1) * inv
    similar = target > 0
    slope = xp.where(similar, -1.0, (cos >= margin) * 1.0).astype(x1.dtype)  # d loss / d cos

    def vjp(cot):
        s = cot * slope
        a, b1, b2 = per_row(s * inv, 1), per_row(s * cos / m1, 1), per_row(s * cos / m2, 1)
        return a * x2 - b1 * x1, a * x1 - b2 * x2

    return Reference(xp.where(similar, 1.0 - cos, xp.maximum(cos - margin, 0.0)), vjp)


@reference
def info_nce(z1, z2, *, temperature=0.1, symmetric=True, xp=np):
    """InfoNCE of the normalised pairs: row ``i`` of ``z1`` against every row of ``z2`` (and, when
    symmetric, the reverse), the matching row being the positive. A pair's loss involves every row,
    so ``vjp`` takes the per-pair cotangent into the similarity matrix itself."""
    n = z1.shape[0]
    n1 = xp.sqrt(xp.sum(z1 * z1, axis=-1))
    n2 = xp.sqrt(xp.sum(z2 * z2, axis=-1))
    u = z1 / xp.maximum(n1, NORM_EPS)[:, None]
    v = z2 / xp.maximum(n2, NORM_EPS)[:, None]
    s = u @ v.T / temperature
    eye = xp.eye(n, dtype=z1.dtype)

    def against_diagonal(logits):  # each row's cross entropy against its diagonal entry, and softmax - one-hot
        m = xp.max(logits, axis=-1, keepdims=True)
        e = xp.exp(logits - m)
        total = xp.sum(e, axis=-1, keepdims=True)
        return (xp.log(total) + m)[:, 0] - xp.diagonal(logits), e / total - eye

    loss, slope = against_diagonal(s)
    if symmetric:
        loss_t, slope_t = against_diagonal(s.T)
        loss = 0.5 * (loss + loss_t)

    def through_norm(dx, x, norm):  # d/dz of z / max(|z|, eps): no radial part below the floor
        radial = xp.where(norm > NORM_EPS, xp.sum(x * dx, axis=-1), 0.0)
        return (dx - radial[:, None] * x) / xp.maximum(norm, NORM_EPS)[:, None]

    def vjp(cot):
        c = per_row(cot, 1)
        ds = c * slope if not symmetric else 0.5 * (c * slope + (c * slope_t).T)
        ds = ds / temperature
        return through_norm(ds @ v, u, n1), through_norm(ds.T @ u, v, n2)

    return Reference(loss, vjp)
