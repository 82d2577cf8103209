"""Scalar building blocks shared by loss kernels (compiled into every driver).

The elementary functions (``exp``, ``log1p``, ``sigmoid``, ``softplus``, ...) live in
:mod:`fastloss._kernels.mathfn`, written so that the driver loops calling them vectorise.
"""

from __future__ import annotations

from .._compile import njit
from .._kernels.mathfn import exp


@njit(cache=False, error_model="numpy")
def sign(x):
    """-1, 0 or +1 (0 for 0, NaN for NaN), like ``numpy.sign``."""
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else x * 0.0)


@njit(cache=False, error_model="numpy")
def sigmoid_curvature(x):
    """``sigmoid(x) * (1 - sigmoid(x))`` as ``e / (1 + e)^2`` with ``e = exp(-|x|)``: no cancellation of
    ``1 - sigmoid(x)`` for large ``|x|``, no overflow; NaN for NaN."""
    e = exp(-abs(x))
    q = 1.0 + e
    return e / (q * q)


#: What scikit-learn's ``gradient_hessian`` gives a loss whose second derivative is zero almost
#: everywhere (``AbsoluteError``, ``PinballLoss``): 1, so that a booster's Newton step is a gradient step.
UNIT_HESSIAN_NOTE = (
    "The second derivative is 0 wherever it exists; the Hessian returned is 1, the convention of scikit-learn's "
    "``gradient_hessian`` for piecewise-linear losses (``AbsoluteError``, ``PinballLoss``), so that a booster's "
    "Newton step is a gradient step."
)


def unit_hessian(hessian) -> dict:
    """The Hessian fields of a declaration whose second derivative is zero almost everywhere:
    ``hessian`` (returning :func:`unit_curvature`), its formula and the convention's note."""
    return {"hessian": hessian, "hessian_note": UNIT_HESSIAN_NOTE,
            "hessian_formula": r"\partial^2 \ell / \partial x^2 = 0 \text{ (almost everywhere); returned: } 1"}


@njit(cache=False, error_model="numpy")
def unit_curvature(x):
    """1 for every number, NaN for NaN: the Hessian that scikit-learn's ``gradient_hessian`` gives a
    loss whose second derivative is zero almost everywhere (absolute error, pinball), so that a
    Newton step is a gradient step."""
    return 1.0 if x == x else x
