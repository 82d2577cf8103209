"""Regularisation penalties on parameter arrays (one input, no target).

They are ordinary pointwise losses, so they run through the same fused driver and can be a term
of :func:`fastloss.combine`. Like every loss they default to ``reduction="mean"``; the classical
penalties ``||w||_1`` and ``0.5 ||w||_2^2`` are ``reduction="sum"``.
"""

from __future__ import annotations

from .._api import family
from .._spec import Input, Properties
from ._common import sign, unit_curvature, unit_hessian

PARAMS = Input("x", "Parameter array to penalise (e.g. a weight matrix).", differentiable=True)
#: the penalties: one parameter array, per element
_penalty = family("pointwise", inputs=(PARAMS,))


def _away_from_zero(inputs, params, h):
    import numpy as np

    return np.abs(np.asarray(inputs[0], dtype=float)) > 4 * h


def _l1(x):
    return abs(x), sign(x)


def _l1_hess(x):
    return unit_curvature(x)


l1 = _penalty(
    "l1", _l1,
    **unit_hessian(_l1_hess),
    summary="L1 penalty (lasso): the absolute value of each parameter.",
    formula=r"\ell(x) = |x|\qquad(\text{``sum'' reduction: } \|x\|_1)",
    gradient=r"\partial \ell / \partial x = \operatorname{sign}(x)\quad(0 \text{ at } x = 0)",
    reference="Tibshirani, R. (1996). Regression Shrinkage and Selection via the Lasso. JRSS B 58(1).",
    equivalents={"PyTorch": "torch.linalg.vector_norm(x, 1) (reduction='sum')"},
    semantics="With ``reduction='sum'``: ``torch.linalg.vector_norm(x, 1)`` and its subgradient (0 at 0).",
    properties=Properties("regularisation", "n/a", "constant magnitude (sign)", "sparse weights (lasso)", "low"),
    fd_safe=_away_from_zero,
    example="""
    >>> float(fl.l1(np.array([0.5, -2.0, 0.0]), reduction="sum"))
    2.5
    """,
)


def _l2(x):
    return 0.5 * x * x, x


def _l2_hess(x):
    return 1.0 if x == x else x


l2 = _penalty(
    "l2", _l2,
    hessian=_l2_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = 1",
    summary="L2 penalty (ridge, weight decay): half the square of each parameter.",
    formula=r"\ell(x) = \tfrac12 x^2\qquad(\text{``sum'' reduction: } \tfrac12 \|x\|_2^2)",
    gradient=r"\partial \ell / \partial x = x",
    reference="Hoerl, A. E., Kennard, R. W. (1970). Ridge Regression: Biased Estimation for Nonorthogonal Problems. Technometrics 12(1).",
    equivalents={"optax": "optax.l2_loss(x) (per element)",
                 "PyTorch": "weight_decay=lambda in torch.optim.SGD (gradient lambda * x)"},
    semantics="Per element ``optax.l2_loss(x)``; with ``reduction='sum'`` and weight lambda its gradient is "
              "PyTorch's ``weight_decay`` term ``lambda * x``.",
    properties=Properties("regularisation", "n/a", "linear in the parameter", "ridge, weight decay", "low"),
    example="""
    >>> float(fl.l2(np.array([1.0, -2.0]), reduction="sum"))
    2.5
    >>> fl.l2.grad(np.array([1.0, -2.0]), reduction="sum")
    array([ 1., -2.])
    """,
)
