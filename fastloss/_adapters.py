"""What the framework adapters (:mod:`fastloss.torch`, :mod:`fastloss.jax`) need to know per kind.

A fused kernel gives the gradient of the *reduced* loss. ``"mean"`` and ``"sum"`` are a scalar, so
their vector-Jacobian product is that gradient times the (scalar) cotangent. Under
``reduction="none"`` the loss is a vector ``l_i`` and the product is
``sum_i c_i d l_i / d x``; the kernel still returns the gradient of ``sum_i l_i``, and the adapters
turn it into the product in one of two exact ways:

``"scale"``
    Each ``l_i`` depends on sample ``i``'s own elements only (pointwise losses without broadcast
    differentiable inputs, rowwise losses, rowreduce losses), so the gradient of the sum restricted
    to sample ``i`` *is* ``d l_i / d x_i``: the backward pass multiplies the saved gradient by the
    cotangent, broadcast over each sample's elements (:func:`cotangent_shape`). No second kernel run.
``"weight"``
    A differentiable input was broadcast (one element feeds several ``l_i``), or a sample's loss
    depends on other samples' rows (a similarity loss's in-batch negatives). The loss's ``weight``
    argument multiplies each ``l_i`` (pointwise: per element; similarity: per pair), so the
    backward pass runs the kernel once more with ``weight = cotangent * weight`` and
    ``reduction="sum"``: the gradient of ``sum_i c_i w_i l_i``, which is the product.

Each kind declares its rule (``none_backward``, refined per call by ``none_rule``) and the shapes
involved (``per_sample_shape``, ``cotangent_shape``): see :mod:`fastloss.kinds.base`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from ._registry import REGISTRY
from .kinds import KINDS


def module_attributes(module: str, namespace: dict[str, Any], wrap: Callable) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of an adapter module: ``<module>.<loss>`` is ``wrap``
    of the registered loss of that name, made on first use and kept.

    ``module`` is the adapter's ``__name__`` and ``namespace`` its ``globals()``.
    """

    @cache
    def registered(name: str) -> Callable:
        f = namespace[name] = wrap(REGISTRY[name])  # later lookups find it without __getattr__ (~1 us a call)
        return f

    def __getattr__(name: str):
        if name in REGISTRY:
            return registered(name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *REGISTRY])

    return __getattr__, __dir__


#: Parameters that change what a loss returns (a tuple instead of one value): the adapters refuse
#: them, since an autograd function returns one differentiable loss.
TUPLE_RESULT_PARAMS = ("return_z_loss",)


def check_params(adapter: str, name: str, params: dict) -> None:
    """Raise ``TypeError`` for parameters that would make the loss return several values."""
    for p in TUPLE_RESULT_PARAMS:
        if params.get(p):
            raise TypeError(
                f"{adapter}.{name}: {p}=True returns a tuple of values, but the autograd wrapper returns one "
                f"differentiable loss; call it without {p} (or use fastloss.{name} on arrays)"
            )


def check_none_supported(adapter: str, loss, reduction: str) -> None:
    """Raise ``NotImplementedError`` when ``reduction="none"`` has no backward rule for the loss's kind."""
    kind = loss.spec.kind
    if reduction == "none" and getattr(KINDS.get(kind), "none_backward", None) is None:
        raise NotImplementedError(
            f"{adapter}.{loss.spec.name}: reduction='none' is not differentiable for losses of the {kind!r} kind "
            "(the kind declares no rule for its per-sample gradient; see fastloss._adapters); "
            "reduce with 'mean' or 'sum'"
        )


def per_sample_shape(loss, params: dict, shapes: Sequence[tuple[int, ...] | None]) -> tuple[int, ...]:
    """Shape of the ``reduction="none"`` value for inputs of these shapes (``None``: input omitted).

    JAX needs it before the callback runs; the loss's kind knows it.
    """
    return KINDS[loss.spec.kind].per_sample_shape(loss.spec, params, shapes)


def none_rule(loss, params: dict, shapes: Sequence[tuple[int, ...] | None], wanted: Sequence[int]) -> str:
    """``"scale"`` or ``"weight"``: how the backward pass of ``reduction="none"`` gets the product.

    ``wanted`` are the positions of the inputs whose gradient is needed.
    """
    return KINDS[loss.spec.kind].none_rule(loss.spec, params, shapes, wanted)


def cotangent_shape(loss, params: dict, value_shape: tuple[int, ...], grad_ndim: int) -> tuple[int, ...]:
    """The cotangent of a ``"scale"`` rule reshaped to broadcast over a gradient of ``grad_ndim`` axes."""
    return KINDS[loss.spec.kind].cotangent_shape(loss.spec, params, value_shape, grad_ndim)
