"""PyTorch adapter: fastloss losses as differentiable ``torch`` functions that keep the fused kernel.

::

    import fastloss.torch as flt

    loss = flt.huber(pred, target, delta=0.5)          # pred: a CPU tensor with requires_grad
    loss.backward()                                    # pred.grad from the fused forward pass

    my_loss = flt.wrap(my_custom_loss)                 # any Loss, e.g. from @fl.pointwise

Every registered loss is available as ``fastloss.torch.<name>``. The forward pass runs the loss's
``value_and_grad`` once on zero-copy NumPy views of the CPU tensors (``tensor.detach().numpy()``)
and saves the gradient; ``backward`` only scales it by ``grad_output`` (and returns it untouched
when ``grad_output`` is 1, as for ``loss.backward()``). With ``reduction="none"`` the saved
gradient is multiplied by ``grad_output`` element by element (pointwise losses) or row by row
(rowwise losses); only when a differentiable input was broadcast does the backward pass run the
kernel once more, with ``grad_output`` as per-element weights.

Inputs that fastloss does not differentiate (targets, labels, weights) must not require a
gradient: that raises instead of silently returning a zero gradient. CUDA tensors raise for now:
they will go through fastloss's CUDA backend once it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import torch

from ._api import Loss
from ._registry import REGISTRY

__all__ = ["wrap"]


class _Call:
    """A loss with its checked keyword arguments (hyper-parameters, weight, reduction)."""

    def __init__(self, loss: Loss, params: dict, weight, reduction: str):
        self.loss = loss
        self.params = params
        self.weight = weight
        self.reduction = reduction
        self.diff = [k for k, inp in enumerate(loss.spec.inputs) if inp.differentiable]


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: _Call, *inputs):
        arrays = [_host(call, t) for t in inputs]
        kwargs = dict(call.params, weight=call.weight, reduction=call.reduction)
        ctx.call = call
        ctx.wanted = [k for k in call.diff if ctx.needs_input_grad[1 + k]]
        ctx.dtypes = {k: inputs[k].dtype for k in ctx.wanted}
        ctx.recompute = False
        like = next(t for t in inputs if isinstance(t, torch.Tensor))
        if not ctx.wanted:
            return _tensor(call.loss(*arrays, **kwargs), like.dtype)
        if call.reduction == "none" and call.loss.spec.kind == "pointwise":
            shape = np.broadcast_shapes(*(np.shape(a) for a in arrays if a is not None))
            if any(np.shape(arrays[k]) != shape for k in ctx.wanted):
                # a broadcast input's gradient sums over elements whose grad_output differ:
                # computed in backward, with grad_output as weights
                ctx.recompute = True
                ctx.arrays = arrays
                return _tensor(call.loss(*arrays, **kwargs), like.dtype)
        # "none" still gives the gradient of the sum: per element (pointwise) or per row (rowwise),
        # which backward multiplies by grad_output
        value, grads = call.loss.value_and_grad(*arrays, **kwargs)
        by_input = dict(zip(call.diff, grads if isinstance(grads, tuple) else (grads,)))
        ctx.save_for_backward(*(_tensor(by_input[k], ctx.dtypes[k]) for k in ctx.wanted))
        return _tensor(value, like.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        call = ctx.call
        out: list = [None] * len(ctx.needs_input_grad)
        if ctx.recompute:
            # d/dx sum_i grad_output_i * w_i * l_i(x): the same kernel with weights grad_output * w
            w = grad_output.detach().cpu().double().numpy()
            if call.weight is not None:
                w = w * call.weight
            grads = call.loss.grad(*ctx.arrays, **call.params, weight=w, reduction="sum")
            by_input = dict(zip(call.diff, grads if isinstance(grads, tuple) else (grads,)))
            for k in ctx.wanted:
                out[1 + k] = _tensor(by_input[k], ctx.dtypes[k])
            return tuple(out)
        if call.reduction != "none":
            scale = None if grad_output.numel() == 1 and float(grad_output) == 1.0 else grad_output  # .backward()
        elif call.loss.spec.kind == "rowwise":
            scale = grad_output.unsqueeze(call.params["axis"] % (grad_output.ndim + 1))  # one value per row
        else:
            scale = grad_output
        for k, g in zip(ctx.wanted, ctx.saved_tensors):
            out[1 + k] = g if scale is None else g * scale
        return tuple(out)


def _host(call: _Call, x):
    """A NumPy view of a CPU tensor (anything else passes through)."""
    if not isinstance(x, torch.Tensor):
        return x
    if x.device.type != "cpu":
        raise NotImplementedError(
            f"fastloss.torch.{call.loss.spec.name}: got a {x.device.type} tensor; fastloss's CUDA backend is not "
            "available yet, so only CPU tensors are supported (use .cpu() or the PyTorch loss)"
        )
    x = x.detach().resolve_conj().resolve_neg()
    if x.dtype == torch.bfloat16:  # NumPy has no bfloat16: compute in float32
        x = x.float()
    return x.numpy()


def _tensor(a, dtype: torch.dtype) -> torch.Tensor:
    """A NumPy result as a tensor (zero-copy unless a cast to ``dtype`` is needed)."""
    a = np.asarray(a)  # a NumPy scalar becomes a 0-d array, hence a 0-d tensor
    t = torch.from_numpy(a if a.flags.c_contiguous else np.ascontiguousarray(a))
    if dtype.is_floating_point and t.dtype != dtype:
        t = t.to(dtype)
    return t


def wrap(loss: Loss) -> Callable[..., torch.Tensor]:
    """``loss`` as a differentiable function of torch tensors.

    Parameters
    ----------
    loss : Loss
        A registered or custom fastloss loss.

    Returns
    -------
    callable
        ``f(*inputs, **kwargs) -> torch.Tensor`` with ``loss``'s signature (without ``out=`` and
        ``stats=``). Gradients flow to the loss's differentiable inputs.
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"fastloss.torch.wrap expects a fastloss Loss, got {type(loss).__name__}")
    name = loss.spec.name

    def f(*args, **kwargs):
        for k in ("out", "stats"):
            if k in kwargs:
                raise TypeError(f"fastloss.torch.{name}() does not take {k}= (autograd owns the gradient)")
        inputs, params, weight, reduction, _, _ = loss._bind(args, kwargs, with_out=False)
        if not any(isinstance(t, torch.Tensor) for t in inputs):
            raise TypeError(f"fastloss.torch.{name}() expects torch tensors; use fastloss.{name} for NumPy arrays")
        call = _Call(loss, params, _weight(name, weight), reduction)
        _check_requires_grad(loss, inputs)
        if reduction == "none" and loss.spec.kind not in ("pointwise", "rowwise") and any(
            isinstance(inputs[k], torch.Tensor) and inputs[k].requires_grad for k in call.diff
        ):
            raise NotImplementedError(
                f"fastloss.torch.{name}: reduction='none' is differentiable for pointwise and rowwise losses only; "
                "reduce with 'mean' or 'sum'"
            )
        return _FusedLoss.apply(call, *inputs)

    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"PyTorch autograd wrapper of :func:`fastloss.{name}`.\n\n{loss.__doc__}"
    f.__signature__ = loss.__signature__
    f.__wrapped__ = loss
    return f


def _weight(name: str, weight):
    if isinstance(weight, torch.Tensor):
        if weight.requires_grad:
            raise ValueError(f"fastloss.torch.{name}: weight must not require a gradient; detach it")
        if weight.device.type != "cpu":
            raise NotImplementedError(f"fastloss.torch.{name}: weight is a {weight.device.type} tensor")
        return weight.detach().numpy()
    return weight


def _check_requires_grad(loss: Loss, inputs) -> None:
    for inp, t in zip(loss.spec.inputs, inputs):
        if isinstance(t, torch.Tensor) and t.requires_grad and not inp.differentiable:
            raise ValueError(
                f"fastloss.torch.{loss.spec.name}: {inp.name} requires a gradient, but fastloss computes none for "
                f"it; detach it (e.g. {inp.name}.detach()) or use the PyTorch loss"
            )


@cache
def _registered(name: str) -> Callable[..., torch.Tensor]:
    return wrap(REGISTRY[name])


def __getattr__(name: str):
    if name in REGISTRY:
        return _registered(name)
    raise AttributeError(f"module 'fastloss.torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *REGISTRY])
