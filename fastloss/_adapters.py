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

:data:`NONE_BACKWARD` holds the rule of each kind; a kind missing from it has no differentiable
``reduction="none"`` in the adapters (they raise, naming the kind), and the adapters' tests fail
for every registered loss of that kind until it is added here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``reduction="none"`` backward rule of each kind (see the module docstring). ``"pointwise"``
#: scales unless a differentiable input was broadcast (then it reweights).
NONE_BACKWARD: dict[str, str] = {
    "pointwise": "scale",
    "rowwise": "scale",
    "rowreduce": "scale",
    "similarity": "weight",
}

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
    if reduction == "none" and kind not in NONE_BACKWARD:
        raise NotImplementedError(
            f"{adapter}.{loss.spec.name}: reduction='none' is not differentiable for losses of the {kind!r} kind "
            "(the adapter has no rule for their per-sample gradient; see fastloss._adapters); "
            "reduce with 'mean' or 'sum'"
        )


def _broadcast(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def per_sample_shape(loss, params: dict, shapes: Sequence[tuple[int, ...] | None]) -> tuple[int, ...]:
    """Shape of the ``reduction="none"`` value for inputs of these shapes (``None``: input omitted).

    JAX needs it before the callback runs. Pointwise losses that adapt their inputs' shapes
    (``gaussian_nll``'s per-sample ``var``) are asked through ``options["adapt_inputs"]`` on
    broadcast views of ones (no memory of the inputs' size).
    """
    spec = loss.spec
    kind = spec.kind
    present = [s for s in shapes if s is not None]
    if kind == "pointwise":
        shape = _broadcast(present)
        adapt = spec.options.get("adapt_inputs")
        if adapt is not None:
            views = [None if s is None else np.broadcast_to(np.ones((), np.float64), s) for s in shapes]
            shape = _broadcast([np.shape(a) for a in adapt(views) if a is not None])
        if shape is None:
            raise ValueError(f"{spec.name}: inputs of shapes {present} do not broadcast together")
        return shape
    if kind == "rowwise":
        x = shapes[0]
        axis = params["axis"] % len(x) if x else 0
        return tuple(d for i, d in enumerate(x) if i != axis)
    if kind == "rowreduce":
        per_row = spec.options.get("row_inputs", ())
        x = next(s for s, i in zip(shapes, spec.inputs) if i.name not in per_row and s is not None)
        return tuple(x[:1]) if spec.options.get("rows", "last") == "first" else tuple(x[:-1])
    if kind == "similarity":
        return tuple(shapes[0][:1])
    raise NotImplementedError(f"{spec.name}: the adapters do not know the per-sample shape of the {kind!r} kind")


def none_rule(loss, params: dict, shapes: Sequence[tuple[int, ...] | None], wanted: Sequence[int]) -> str:
    """``"scale"`` or ``"weight"``: how the backward pass of ``reduction="none"`` gets the product.

    ``wanted`` are the positions of the inputs whose gradient is needed.
    """
    rule = NONE_BACKWARD[loss.spec.kind]
    if rule == "scale" and loss.spec.kind == "pointwise":
        try:
            value = per_sample_shape(loss, params, shapes)
        except ValueError:  # the kernel will say what is wrong with the shapes
            return "weight"
        if any(shapes[k] != value for k in wanted):
            # an element of a broadcast input feeds several losses whose cotangents differ
            return "weight"
    return rule


def cotangent_shape(loss, params: dict, value_shape: tuple[int, ...], grad_ndim: int) -> tuple[int, ...]:
    """The cotangent of a ``"scale"`` rule reshaped to broadcast over a gradient of ``grad_ndim`` axes.

    Pointwise: the value's own shape (the gradient has it). Rowwise: a 1 where the class axis was.
    Rowreduce: 1s after the row axes (rows lead in both layouts).
    """
    kind = loss.spec.kind
    value_shape = tuple(value_shape)
    if kind == "rowwise":
        axis = params["axis"] % grad_ndim
        return (*value_shape[:axis], 1, *value_shape[axis:])
    if kind == "rowreduce":
        return value_shape + (1,) * (grad_ndim - len(value_shape))
    return value_shape
