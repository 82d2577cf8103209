"""Scalar building blocks shared by loss kernels (compiled into every driver).

The elementary functions (``exp``, ``log1p``, ``sigmoid``, ``softplus``, ...) live in
:mod:`fastloss._kernels.mathfn`, written so that the driver loops calling them vectorise.
"""

from __future__ import annotations

from .._compile import njit


@njit(cache=False, error_model="numpy")
def sign(x):
    """-1, 0 or +1 (0 for 0, NaN for NaN), like ``numpy.sign``."""
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else x * 0.0)
