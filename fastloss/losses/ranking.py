"""Ranking losses on pairs of scores (pointwise: one value per pair, gradients for both scores)."""

from __future__ import annotations

from .._api import family
from .._kernels.mathfn import softplus_sigmoid
from .._spec import Discrete, Input, Interval, Param, Properties
from ._common import sigmoid_curvature, unit_curvature, unit_hessian

#: losses of pairs of scores: one value per pair, gradients for both scores
_pairwise = family("pointwise")


def _margin_ranking(x1, x2, target, margin):
    m = margin - target * (x1 - x2)
    active = not (m <= 0.0)  # true for NaN, so that NaN propagates
    g = -target if m == m else m
    return (m if active else 0.0), (g if active else 0.0), (-g if active else 0.0)


def _margin_ranking_safe(inputs, params, h):
    import numpy as np

    x1, x2, y = (np.asarray(a, dtype=float) for a in inputs)
    return np.abs(params["margin"] - y * (x1 - x2)) > 4 * h


def _margin_ranking_hess(x1, x2, target, margin):
    u = unit_curvature(x1 - x2)
    return u, u


margin_ranking = _pairwise(
    "margin_ranking", _margin_ranking,
    **unit_hessian(_margin_ranking_hess),
    inputs=(
        Input("x1", "Scores of the first items.", differentiable=True),
        Input("x2", "Scores of the second items, broadcastable to ``x1``.", differentiable=True),
        Input("target", "``1`` where ``x1`` should rank higher, ``-1`` where ``x2`` should.",
              Discrete((-1.0, 1.0))),
    ),
    params=(Param("margin", 0.0, "Required score difference", Interval()),),
    summary="Margin ranking loss: a hinge on the score difference of each pair.",
    formula=r"\ell(x_1, x_2, y) = \max\left(0,\; m - y\,(x_1 - x_2)\right),\quad y \in \{-1, +1\}",
    gradient=r"\partial \ell / \partial x_1 = -y,\quad \partial \ell / \partial x_2 = y"
             r"\quad \text{where } m - y (x_1 - x_2) > 0 \text{ (else } 0)",
    reference=("Herbrich, R., Graepel, T., Obermayer, K. (1999). Support vector learning for ordinal "
               "regression. ICANN."),
    equivalents={"PyTorch": "torch.nn.functional.margin_ranking_loss"},
    semantics=("Matches ``torch.nn.functional.margin_ranking_loss``; targets other than -1 and 1 raise "
               "``ValueError`` (PyTorch computes with them silently)."),
    properties=Properties("ranking (pairwise)", "low (linear)", "constant or zero",
                          "learning to rank, preference pairs", "low"),
    fd_safe=_margin_ranking_safe,
    example="""
    >>> x1, x2, y = np.array([0.8, 0.2, 0.5]), np.array([0.3, 0.6, 0.1]), np.array([1, 1, -1])
    >>> round(float(fl.margin_ranking(x1, x2, y, margin=0.1)), 6)
    0.333333
    >>> g1, g2 = fl.margin_ranking.grad(x1, x2, y, margin=0.1)
    >>> g1
    array([ 0.        , -0.33333333,  0.33333333])
    """,
)


def _bpr(pos, neg):
    # -log sigmoid(d) = softplus(-d): no overflow for any score difference
    d = pos - neg
    sp, _, s = softplus_sigmoid(-d)
    return sp, -s, s


def _bpr_hess(pos, neg):
    c = sigmoid_curvature(pos - neg)
    return c, c


bpr = _pairwise(
    "bpr", _bpr,
    hessian=_bpr_hess,
    hessian_formula=r"\partial^2 \ell / \partial s_+^2 = \partial^2 \ell / \partial s_-^2 = \sigma(d)\,(1 - \sigma(d)),\quad d = s_+ - s_-",
    inputs=(
        Input("pos_scores", "Scores of the positive (observed) items.", differentiable=True),
        Input("neg_scores", "Scores of the sampled negative items, broadcastable to ``pos_scores`` "
              "(e.g. ``(B, 1)`` positives against ``(B, K)`` negatives).", differentiable=True),
    ),
    summary="Bayesian personalised ranking: the negative log-likelihood that each positive outranks its negative.",
    formula=r"\ell(s^+, s^-) = -\log \sigma(s^+ - s^-) = \operatorname{softplus}(s^- - s^+)",
    gradient=r"\partial \ell / \partial s^+ = -\sigma(s^- - s^+),\quad \partial \ell / \partial s^- = \sigma(s^- - s^+)",
    reference=("Rendle, S., Freudenthaler, C., Gantner, Z., Schmidt-Thieme, L. (2009). BPR: Bayesian "
               "Personalized Ranking from Implicit Feedback. UAI."),
    equivalents={"PyTorch": "-torch.nn.functional.logsigmoid(pos_scores - neg_scores)"},
    semantics=("Computed as ``softplus(neg - pos)``, finite for any score difference (a naive "
               "``-log(sigmoid(d))`` overflows to inf below d = -745 in float64, -104 in float32)."),
    properties=Properties("ranking (implicit feedback)", "low (linear for large violations)",
                          "bounded in (-1, 1)", "recommender systems with sampled negatives", "medium (exp, log)"),
    example="""
    >>> pos, neg = np.array([2.0, 0.5]), np.array([0.0, 1.0])
    >>> round(float(fl.bpr(pos, neg)), 6)
    0.550502
    >>> g_pos, g_neg = fl.bpr.grad(pos, neg)
    >>> g_pos
    array([-0.05960146, -0.31122967])
    """,
)
