"""Scalar building blocks shared by loss kernels (``math`` only, compiled into every driver)."""

from __future__ import annotations

import math

from .._compile import njit


@njit(cache=False, error_model="numpy")
def softplus(x):
    """``log(1 + exp(x))`` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=False, error_model="numpy")
def sigmoid(x):
    """Logistic sigmoid without overflow."""
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)


@njit(cache=False, error_model="numpy")
def sign(x):
    """-1, 0 or +1 (0 for 0, NaN for NaN), like ``numpy.sign``."""
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else x * 0.0)
