"""What every reference module shares: the registry, the result type and the reduction.

A reference is written once, with whole-array operations of an array namespace ``xp`` that NumPy,
CuPy and ``jax.numpy`` all have and nothing modified in place, so the same function checks the
kernels in float64 (the tests), is the naive NumPy and CuPy peers of the benchmark at the input's
dtype, and is what JAX differentiates for its peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

REFERENCES: dict[str, Callable[..., Reference]] = {}
"""``name -> reference`` for every loss that has one (filled by :func:`reference`)."""


class Reference(NamedTuple):
    """A loss evaluated per sample, and how to get the gradients of any weighting of those losses.

    ``vjp(cot)`` returns the gradients of ``sum(cot * loss)`` with respect to each differentiable
    input, in argument order. ``cot`` is a Python float (one factor for every sample) or an array
    shaped like ``loss``; passing the reduction's factor in (``1 / n`` for a mean) lets a reference
    fold it into an expression it computes anyway, so the naive peer makes no extra pass for it.
    """

    loss: Any
    vjp: Callable[[Any], tuple]
    #: What ``reduction="mean"`` divides by when there are no sample weights; ``None``: the number of
    #: samples. The row-wise losses with class weights or ``ignore_index`` divide by the summed
    #: weights of the kept targets instead (PyTorch).
    count: Any = None


def reference(func: Callable[..., Reference]) -> Callable[..., Reference]:
    """Register ``func`` as the reference of the loss of the same name."""
    assert func.__name__ not in REFERENCES, f"two references for {func.__name__}"
    REFERENCES[func.__name__] = func
    return func


def elementwise(loss: Any, *slopes: Any) -> Reference:
    """The reference of a loss whose samples each depend on one element of every input:
    ``slopes[k]`` is d loss / d input k element by element."""
    return Reference(loss, lambda cot: tuple(cot * s for s in slopes))


def per_row(cot: Any, extra: int) -> Any:
    """A cotangent given per row (or one float for all rows) broadcast over ``extra`` trailing axes."""
    return cot[(...,) + (None,) * extra] if getattr(cot, "ndim", 0) else cot


def tie_weight(a: Any, b: Any, xp: Any) -> Any:
    """d min(a, b) / da where ``a`` and ``b`` are both free: ties split evenly (as PyTorch), in ``a``'s dtype."""
    return xp.where(a < b, 1.0, xp.where(a == b, 0.5, 0.0)).astype(a.dtype)


def value_and_grad(name: str, *inputs: Any, reduction: str = "mean", sample_weight: Any = None, xp: Any = np,
                   **params: Any) -> tuple[Any, tuple]:
    """The reduced loss ``name`` and its gradients (a tuple, one per differentiable input), from its
    reference (inputs as given, at their dtype).

    ``sample_weight`` is what the API calls ``weight`` for pointwise and per-row losses: weights
    broadcastable to the per-sample losses. (A softmax-family loss's ``weight`` holds class weights, a
    parameter of its reference, passed on with ``params``.) The reduction is that of the kernels:
    ``"mean"`` is ``sum(w * l) / sum(w)``, or the loss's own ``count`` without sample weights.

    >>> import numpy as np
    >>> from fastloss.reference import value_and_grad
    >>> value, (grad,) = value_and_grad("mse", np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    >>> float(value), grad
    (5.0, array([1., 3.]))
    """
    result = REFERENCES[name](*inputs, xp=xp, **params)
    loss = result.loss
    if sample_weight is None:
        if reduction == "none":
            return loss, result.vjp(1.0)
        if reduction == "sum":
            return xp.sum(loss), result.vjp(1.0)
        count = loss.size if result.count is None else result.count
        return xp.sum(loss) / count, result.vjp(1.0 / count)
    if result.count is not None:
        raise ValueError(f"{name} divides its mean by its own count and takes no sample weights")
    w = xp.broadcast_to(xp.asarray(sample_weight, dtype=loss.dtype), loss.shape)
    if reduction == "none":
        return loss * w, result.vjp(w)
    if reduction == "sum":
        return xp.sum(loss * w), result.vjp(w)
    total = xp.sum(w)
    return xp.sum(loss * w) / total, result.vjp(w / total)
