"""JAX adapter: fastloss losses as ``jax.custom_vjp`` functions on CPU, via ``jax.pure_callback``.

::

    import jax
    import fastloss.jax as flj

    value, g = jax.value_and_grad(lambda p: flj.huber(p, target, delta=0.5))(pred)
    step = jax.jit(jax.grad(lambda p: flj.wrap(my_custom_loss)(p, target)))

Every registered loss is available as ``fastloss.jax.<name>``, with every reduction (``"mean"``,
``"sum"``, ``"none"``). The forward pass of the VJP calls the loss's fused ``value_and_grad`` once
on the host (a ``pure_callback``, so it also runs inside ``jax.jit``) and keeps the gradient as the
residual; the backward pass only scales it by the cotangent. Under ``reduction="none"`` the
backward pass gives ``sum_i c_i d loss_i / d inputs``: where each sample's loss depends on its own
elements only (pointwise, rowwise and rowreduce losses) the residual is scaled per element / per
row; where an element feeds several losses (a broadcast differentiable input; the in-batch
negatives of a similarity loss) the backward pass runs the kernel once more with
``weight = cotangent * weight`` and ``reduction="sum"`` (see :mod:`fastloss._adapters`).
Hyper-parameters, ``reduction`` and ``weight`` are not differentiated (``weight`` may be an
array); non-differentiable inputs (targets, labels) get a zero cotangent. Under ``jax.vmap`` the
callback runs once per batch element. Arrays on an accelerator are copied to the host by the
callback: the CUDA backend is reached through :mod:`fastloss.torch` or fastloss's own API.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

try:
    import jax
except ImportError as exc:  # say how to get it: the extra installs the version the adapter is tested with
    raise ImportError(f'fastloss.jax needs JAX: pip install "fastloss[jax]" '
                      f'(from the source tree: pip install ".[jax]"); {exc}') from exc

from . import _adapters
from ._api import Loss
from ._call import signed_weights

__all__ = ["wrap"]


def wrap(loss: Loss) -> Callable[..., jax.Array]:
    """``loss`` as a differentiable JAX function (``jax.grad``, ``jax.jit``, ``jax.vmap``).

    Parameters
    ----------
    loss : Loss
        A registered or custom fastloss loss.

    Returns
    -------
    callable
        ``f(*inputs, **kwargs) -> jax.Array`` with ``loss``'s signature (without ``out=`` and
        ``stats=``); gradients flow to the loss's differentiable inputs, for every reduction.

    Raises
    ------
    TypeError
        ``out=`` or ``stats=`` given, or a parameter that makes the loss return a tuple
        (``return_z_loss=True``).
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"fastloss.jax.wrap expects a fastloss Loss, got {type(loss).__name__}")
    name = loss.spec.name

    def f(*args, **kwargs):
        for k in ("out", "stats"):
            if k in kwargs:
                raise TypeError(f"fastloss.jax.{name}() does not take {k}=")
        inputs, params, weight, reduction, _, _ = loss._bind(args, kwargs, with_out=False)
        _adapters.check_params("fastloss.jax", name, params)
        _adapters.check_none_supported("fastloss.jax", loss, reduction)
        present = tuple(k for k, x in enumerate(inputs) if x is not None)
        fn = _vjp_function(loss, tuple(sorted(params.items())), reduction, present, weight is not None)
        arrays = [jax.numpy.asarray(inputs[k]) for k in present]
        if weight is not None:
            arrays.append(jax.numpy.asarray(weight))
        return fn(*arrays)

    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"JAX (custom_vjp) wrapper of :func:`fastloss.{name}`.\n\n{loss.__doc__}"
    f.__signature__ = loss.__signature__
    f.__wrapped__ = loss
    return f


@cache
def _vjp_function(loss: Loss, params: tuple, reduction: str, present: tuple[int, ...], weighted: bool):
    """A ``custom_vjp`` function of the present inputs (and the weight, last) for fixed keywords."""
    kw = dict(params)
    diff = [j for j, k in enumerate(present) if loss.spec.inputs[k].differentiable]
    n_inputs = len(present)

    def call_args(arrays):
        args = [None] * len(loss.spec.inputs)
        for j, k in enumerate(present):
            args[k] = np.asarray(arrays[j])
        return args, (np.asarray(arrays[-1]) if weighted else None)

    def shapes(arrays) -> list:
        out = [None] * len(loss.spec.inputs)
        for j, k in enumerate(present):
            out[k] = tuple(arrays[j].shape)
        return out

    def value_type(arrays) -> jax.ShapeDtypeStruct:
        x = arrays[0]
        dtype = x.dtype if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else jax.numpy.result_type(float)
        shape = () if reduction != "none" else _adapters.per_sample_shape(loss, kw, shapes(arrays))
        return jax.ShapeDtypeStruct(shape, dtype)

    def grad_types(arrays):
        return tuple(jax.ShapeDtypeStruct(arrays[j].shape, arrays[j].dtype) for j in diff)

    def cast(results, types):
        return tuple(np.asarray(r, dtype=t.dtype).reshape(t.shape) for r, t in zip(results, types))

    def host_value(*arrays):
        args, weight = call_args(arrays)
        return loss(*args, **kw, weight=weight, reduction=reduction)

    def host_value_and_grad(*arrays):
        args, weight = call_args(arrays)
        value, grads = loss.value_and_grad(*args, **kw, weight=weight, reduction=reduction)
        return (value, *(grads if isinstance(grads, tuple) else (grads,)))

    def host_weighted_grad(cotangent, *arrays):
        args, weight = call_args(arrays)
        w = np.asarray(cotangent, dtype=np.float64) if weight is None else np.asarray(cotangent) * weight
        with signed_weights():  # the cotangent may be negative
            grads = loss.grad(*args, **kw, weight=w, reduction="sum")
        return grads if isinstance(grads, tuple) else (grads,)

    def recompute(arrays) -> bool:
        """Whether the backward pass runs the kernel again, with the cotangent as weights (see _adapters)."""
        if reduction != "none":
            return False
        return _adapters.none_rule(loss, kw, shapes(arrays), [present[j] for j in diff]) == "weight"

    @jax.custom_vjp
    def fn(*arrays):
        t = value_type(arrays)
        return jax.pure_callback(
            lambda *a: np.asarray(host_value(*a), dtype=t.dtype).reshape(t.shape), t, *arrays,
            vmap_method="sequential",
        )

    def fwd(*arrays):
        if recompute(arrays):
            return fn(*arrays), ((), arrays)
        # "none" still gives the gradient of the sum: per element or per row, scaled in bwd
        types = (value_type(arrays), *grad_types(arrays))
        out = jax.pure_callback(
            lambda *a: cast(host_value_and_grad(*a), types), types, *arrays, vmap_method="sequential"
        )
        return out[0], (tuple(out[1:]), arrays)

    def bwd(residuals, cotangent):
        grads, arrays = residuals
        if recompute(arrays):  # decided by shapes alone, as in fwd
            types = grad_types(arrays)
            grads = jax.pure_callback(
                lambda c, *a: cast(host_weighted_grad(c, *a), types), types, cotangent, *arrays,
                vmap_method="sequential",
            )
        else:
            if reduction == "none":  # one cotangent per sample, broadcast over the sample's elements
                grads = tuple(
                    g * cotangent.reshape(_adapters.cotangent_shape(loss, kw, cotangent.shape, g.ndim)).astype(g.dtype)
                    for g in grads
                )
            else:
                grads = tuple(g * cotangent.astype(g.dtype) for g in grads)
        by_position = dict(zip(diff, grads))
        return tuple(by_position.get(j) for j in range(n_inputs + int(weighted)))

    fn.defvjp(fwd, bwd)
    return fn


__getattr__, __dir__ = _adapters.module_attributes(__name__, globals(), wrap)
