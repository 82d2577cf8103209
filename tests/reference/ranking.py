"""References for the ranking losses (pointwise convention: per-element losses, gradients of the sum)."""

import numpy as np


def margin_ranking(x1, x2, target, margin):
    m = margin - target * (x1 - x2)
    active = m > 0
    return np.where(active, m, 0.0), (np.where(active, -target, 0.0), np.where(active, target, 0.0))


def bpr(pos_scores, neg_scores):
    d = pos_scores - neg_scores
    s = 0.5 * (1.0 - np.tanh(0.5 * d))  # sigmoid(-d) without overflow
    return np.logaddexp(0.0, -d), (-s, s)


REFERENCES = {"margin_ranking": margin_ranking, "bpr": bpr}
