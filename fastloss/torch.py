"""PyTorch adapter: fastloss losses as differentiable ``torch`` functions that keep the fused kernel.

::

    import fastloss.torch as flt

    loss = flt.huber(pred, target, delta=0.5)          # pred: a CPU or CUDA tensor with requires_grad
    loss.backward()                                    # pred.grad from the fused forward pass

    my_loss = flt.wrap(my_custom_loss)                 # any Loss, e.g. from @fl.pointwise

Every registered loss is available as ``fastloss.torch.<name>``, with every reduction
(``"mean"``, ``"sum"``, ``"none"``). The forward pass runs the loss's ``value_and_grad`` once and
saves the gradient; ``backward`` only scales it by ``grad_output`` (and returns it untouched when
``grad_output`` is 1 on the CPU, as for ``loss.backward()``).

Where the tensors live decides the path:

* **CPU tensors** go to the CPU kernels as zero-copy NumPy views (``tensor.detach().numpy()``);
  the results come back as tensors over the same memory (a cast only for float16 / bfloat16,
  computed in float32).
* **CUDA tensors** go, detached but otherwise as they are, to fastloss's CUDA backend, which
  reads them through ``__cuda_array_interface__`` (no host copy) and allocates its results with
  PyTorch's caching allocator on the tensors' stream: the loss comes back as a 0-d CUDA tensor,
  the gradients as CUDA tensors, and ``backward`` scales them on the device (the adapter neither
  waits for the GPU nor copies to the host; the backend's own label checks may read a number
  back). A kind without a CUDA driver raises the backend's ``NotImplementedError``; a machine
  without ``numba-cuda`` or a GPU raises its ``ImportError`` / ``RuntimeError``. Tensors on
  different devices raise ``TypeError``.

  Tested here without a GPU: the routing and the autograd plumbing with stand-in CUDA tensors
  (CPU tensors that report a CUDA device), the backend's kernels under the Numba CUDA simulator;
  not tested: real ``torch`` CUDA tensors, which need a CUDA build of PyTorch and a GPU.

Small batches: ``cross_entropy(logits, target)`` with no keyword but ``reduction``, on CPU
``(N, C)`` float32/float64 logits (at most :data:`SMALL_CROSS_ENTROPY` of them) and int64 class
indices, is ``torch.nn.functional.cross_entropy`` itself: there both are per-call overhead, and a
Python ``autograd.Function`` cannot match PyTorch's C++ path. Its values differ from fastloss's
kernel in the last bits only.

``reduction="none"``: the backward pass gives ``sum_i grad_output_i * d loss_i / d inputs``.
Where each sample's loss depends on its own elements only (pointwise, rowwise and rowreduce
losses) the saved gradient of the sum is scaled per element / per row. Where an element feeds
several losses (a broadcast differentiable input; the in-batch negatives of a similarity loss),
the backward pass runs the kernel once more with ``weight = grad_output * weight`` and
``reduction="sum"`` (see :mod:`fastloss._adapters`).

Inputs that fastloss does not differentiate (targets, labels, weights) must not require a
gradient: that raises instead of silently returning a zero gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

try:
    import torch
except ImportError as exc:  # say how to get it: the extra installs the version the adapter is tested with
    raise ImportError(f'fastloss.torch needs PyTorch: pip install "fastloss[torch]" '
                      f'(from the source tree: pip install ".[torch]"); {exc}') from exc

from torch.nn import functional as _F

from . import _adapters
from ._api import Loss
from ._call import signed_weights
from ._registry import REGISTRY

__all__ = ["SMALL_CROSS_ENTROPY", "wrap"]

_ADAPTER = "fastloss.torch"
#: dtypes whose CPU tensors are NumPy arrays as they are (``.numpy()`` is a view, no cast)
_NUMPY_DTYPES = frozenset({torch.float32, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
                           torch.uint8, torch.bool})


class _Call:
    """A loss with its checked keyword arguments and where it runs.

    ``device`` is ``None`` for CPU tensors (NumPy views, CPU kernels) or the CUDA device of the
    tensors (the tensors themselves, CUDA backend).
    """

    def __init__(self, loss: Loss, params: dict, weight, reduction: str, device: torch.device | None):
        self.loss = loss
        self.params = params
        self.reduction = reduction
        self.device = device
        self.diff = [k for k, inp in enumerate(loss.spec.inputs) if inp.differentiable]
        self.weight = self.array(weight)
        # the forward call's keywords, built once: parameters left at their defaults are left out
        # (the loss fills them in), so that its shortcut has fewer keywords to look at
        given = {p.name: params[p.name] for p in loss._params if params[p.name] is not p.default}
        self.forward_kwargs = dict(given, weight=self.weight, reduction=reduction)

    def array(self, x):
        """What the loss receives for ``x``: a NumPy view of a CPU tensor, a detached CUDA tensor."""
        if not isinstance(x, torch.Tensor):
            return x
        x = x.detach()
        if x.is_conj() or x.is_neg():  # (asked first: resolving costs two dispatches even when a no-op)
            x = x.resolve_conj().resolve_neg()
        if x.dtype == torch.bfloat16:  # neither NumPy nor the CUDA backend has bfloat16: float32
            x = x.float()
        return x if self.device is not None else x.numpy()

    def result(self, a, dtype: torch.dtype) -> torch.Tensor:
        """A loss result as a tensor (zero-copy unless a cast to ``dtype`` is needed)."""
        if self.device is None:
            a = np.asarray(a)  # a NumPy scalar becomes a 0-d array, hence a 0-d tensor
            t = torch.from_numpy(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        elif isinstance(a, torch.Tensor):  # what the CUDA backend returns for torch inputs
            t = a
        else:  # another CUDA array: viewed through its __cuda_array_interface__
            t = torch.as_tensor(a, device=self.device)
        if dtype.is_floating_point and t.dtype != dtype:
            t = t.to(dtype)
        return t

    def kwargs(self, weight, reduction: str) -> dict:
        return dict(self.params, weight=weight, reduction=reduction)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: _Call, *inputs):
        arrays = [call.array(t) for t in inputs]
        kwargs = call.forward_kwargs
        loss = call.loss
        ctx.call = call
        ctx.wanted = [k for k in call.diff if ctx.needs_input_grad[1 + k]]
        ctx.dtypes = {k: inputs[k].dtype for k in ctx.wanted}
        ctx.rule = None
        like = next(t for t in inputs if isinstance(t, torch.Tensor))
        if not ctx.wanted:
            return call.result(loss(*arrays, **kwargs), like.dtype)
        if call.reduction == "none":
            shapes = [None if a is None else tuple(np.shape(a)) for a in arrays]
            ctx.rule = _adapters.none_rule(loss, call.params, shapes, ctx.wanted)
            if ctx.rule == "weight":
                # backward runs the kernel again, with grad_output as weights; the inputs are saved
                # (torch then notices if they are modified in place before backward)
                ctx.save_for_backward(*(t if isinstance(t, torch.Tensor) else None for t in inputs))
                ctx.others = [None if isinstance(t, torch.Tensor) else t for t in inputs]
                return call.result(loss(*arrays, **kwargs), like.dtype)
        # the gradient of the reduced loss ("none": of the sum, scaled per sample in backward)
        value, grads = loss.value_and_grad(*arrays, **kwargs)
        by_input = dict(zip(call.diff, grads if isinstance(grads, tuple) else (grads,)))
        ctx.save_for_backward(*(call.result(by_input[k], ctx.dtypes[k]) for k in ctx.wanted))
        return call.result(value, like.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        call = ctx.call
        out: list = [None] * len(ctx.needs_input_grad)
        if ctx.rule == "weight":
            # d/dx sum_i grad_output_i * w_i * l_i(x): the same kernel with weights grad_output * w
            saved = ctx.saved_tensors
            arrays = [call.array(t if o is None else o) for t, o in zip(saved, ctx.others)]
            w = grad_output.detach()
            # (on CUDA made contiguous: grad_output is often an expanded, zero-stride tensor)
            w = w.double().numpy() if call.device is None else call.array(w.contiguous())
            if call.weight is not None:
                w = w * call.weight
            with signed_weights():  # grad_output may be negative
                grads = call.loss.grad(*arrays, **call.kwargs(w, "sum"))
            by_input = dict(zip(call.diff, grads if isinstance(grads, tuple) else (grads,)))
            for k in ctx.wanted:
                out[1 + k] = call.result(by_input[k], ctx.dtypes[k])
            return tuple(out)
        saved = ctx.saved_tensors
        if ctx.rule == "scale":  # one cotangent per sample, broadcast over the sample's elements
            scales = [
                grad_output.reshape(_adapters.cotangent_shape(call.loss, call.params, grad_output.shape, g.ndim))
                for g in saved
            ]
        elif call.device is None and grad_output.numel() == 1 and float(grad_output) == 1.0:
            scales = [None] * len(saved)  # loss.backward(): the saved gradient as it is
        else:  # on CUDA always multiply: comparing with 1 would wait for the GPU
            scales = [grad_output] * len(saved)
        for k, g, s in zip(ctx.wanted, saved, scales):
            out[1 + k] = g if s is None else g * s
        return tuple(out)


def _device(name: str, loss: Loss, inputs, weight) -> torch.device | None:
    """``None`` when the tensors are on the CPU, their CUDA device otherwise; raise on a mix."""
    named = [(inp.name, x) for inp, x in zip(loss.spec.inputs, inputs)] + [("weight", weight)]
    devices = {}
    for label, x in named:
        if isinstance(x, torch.Tensor):
            dev = x.device
            if dev.type not in ("cpu", "cuda"):
                raise NotImplementedError(
                    f"{_ADAPTER}.{name}: {label} is a {dev.type} tensor; fastloss runs CPU tensors (through NumPy) "
                    "and CUDA tensors (through its CUDA backend)"
                )
            devices.setdefault(dev, label)
    if len(devices) > 1:
        found = ", ".join(f"{label} on {dev}" for dev, label in devices.items())
        raise TypeError(f"{_ADAPTER}.{name}: tensors on different devices ({found}); put them on one device")
    (dev,) = devices or (torch.device("cpu"),)
    if dev.type == "cpu":
        return None
    for label, x in named:  # NumPy arrays or lists beside CUDA tensors (numbers are fine)
        if isinstance(x, (np.ndarray, list, tuple)):
            raise TypeError(
                f"{_ADAPTER}.{name}: {label} is a host {type(x).__name__} but the tensors are on {dev}; "
                "pass it as a tensor on the same device"
            )
    return dev


class _PlainLoss(torch.autograd.Function):
    """The common CPU call, with nothing to decide per call (see ``wrap``).

    Every input is a plain CPU tensor of a NumPy dtype, every differentiable one requires a
    gradient, the reduction is ``"mean"`` or ``"sum"``: the forward pass is one
    ``value_and_grad`` on zero-copy NumPy views, the backward pass hands back the saved
    gradient (scaled by ``grad_output`` unless that is 1). At 64 x 10 the general
    ``_FusedLoss`` spends as long deciding as the kernel spends computing.
    """

    @staticmethod
    def forward(ctx, call: _Call, *inputs):
        value, grads = call.loss.value_and_grad(*[t.detach().numpy() for t in inputs], **call.forward_kwargs)
        ctx.save_for_backward(*[torch.from_numpy(g) for g in (grads if type(grads) is tuple else (grads,))])
        ctx.slots = call.grad_slots
        return torch.from_numpy(np.asarray(value))

    @staticmethod
    def backward(ctx, grad_output):
        out = list(ctx.slots)
        one = grad_output.numel() == 1 and float(grad_output) == 1.0  # loss.backward(): the gradient as it is
        for k, g in zip(ctx.slots.index_of, ctx.saved_tensors):
            out[k] = g if one else g * grad_output
        return tuple(out)


class _Slots(tuple):
    """``backward``'s return value template (``None`` everywhere) and where the gradients go."""

    index_of: tuple[int, ...]


SMALL_CROSS_ENTROPY = 262144
"""Up to this many logits, ``fastloss.torch.cross_entropy(logits, target)`` (no keyword but
``reduction``) calls ``torch.nn.functional.cross_entropy``; for rows longer than 128 classes the
limit shrinks to ``SMALL_CROSS_ENTROPY * 128 / C`` (PyTorch's cost per logit grows with the row
length, fastloss's does not). At such sizes both are mostly per-call overhead, and a Python
``autograd.Function`` (about 80 us for forward and backward on the 2-core test VM before any
arithmetic) cannot match PyTorch's C++ path. ``python bench/torch_small.py --fused-only`` measures
the crossover (1 thread, float32, 2-core VM, fastloss's kernel against PyTorch: 1.6-2.0x slower at
16 x 10 to 64 x 100, 1.1-1.2x at 1024-2048 x 100, faster from 4096 x 100, 16384 x 32, 128 x 1000).
Set it to 0 to run fastloss's kernel at every size.
"""


def _small_cross_entropy(logits, target, reduction: str) -> torch.Tensor | None:
    """``F.cross_entropy`` for a small plain call that it computes as fastloss does, else ``None``.

    Only CPU ``(N, C)`` float32/float64 logits, no more than ``SMALL_CROSS_ENTROPY`` allows, with
    int64 class indices, under fastloss's defaults (``ignore_index=-100``, no smoothing, no
    weights, classes on the last axis), which are PyTorch's. An error (a label out of range,
    mismatched shapes) is left to fastloss, whose message names the argument.
    """
    if not (type(logits) is torch.Tensor and type(target) is torch.Tensor and logits.dtype in _FLOATS
            and target.dtype is torch.int64 and logits.ndim == 2 and target.ndim == 1 and logits.is_cpu
            and target.is_cpu):
        return None
    n = logits.numel()
    if n > SMALL_CROSS_ENTROPY or (logits.shape[1] > 128 and n * logits.shape[1] > SMALL_CROSS_ENTROPY * 128):
        return None
    try:
        return _F.cross_entropy(logits, target, reduction=reduction)
    except (IndexError, RuntimeError, ValueError):
        return None


_FLOATS = (torch.float32, torch.float64)
#: the plain calls PyTorch answers faster at small sizes, by registered loss name
_SMALL_CALLS = {"cross_entropy": _small_cross_entropy}


def wrap(loss: Loss) -> Callable[..., torch.Tensor]:
    """``loss`` as a differentiable function of torch tensors (CPU or CUDA).

    Parameters
    ----------
    loss : Loss
        A registered or custom fastloss loss.

    Returns
    -------
    callable
        ``f(*inputs, **kwargs) -> torch.Tensor`` with ``loss``'s signature (without ``out=`` and
        ``stats=``). Gradients flow to the loss's differentiable inputs, for every reduction.
        CPU tensors run the CPU kernels on zero-copy NumPy views; CUDA tensors run the CUDA
        backend on the tensors themselves and get CUDA tensors back (see the module docstring
        for what was tested without a GPU).

    Raises
    ------
    TypeError
        ``out=`` or ``stats=`` given, no tensor among the inputs, tensors on different devices,
        or a parameter that makes the loss return a tuple (``return_z_loss=True``).
    ValueError
        A non-differentiable input or the weight requires a gradient.
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"{_ADAPTER}.wrap expects a fastloss Loss, got {type(loss).__name__}")
    name = loss.spec.name
    ninputs = len(loss.spec.inputs)
    fixed = [k for k, inp in enumerate(loss.spec.inputs) if not inp.differentiable]
    diff = [k for k, inp in enumerate(loss.spec.inputs) if inp.differentiable]
    # The common call (CPU tensors for every input, no keyword but ``reduction``) runs one _Call
    # per reduction, built on first use: the general route below binds the arguments, finds the
    # device and builds a _Call on every call, which at 64 x 10 costs as much as the kernel.
    plain_calls: dict[str, _Call] = {}
    small = _SMALL_CALLS.get(name) if loss is REGISTRY.get(name) else None

    def plain_call(reduction: str) -> _Call | None:
        call = plain_calls.get(reduction)
        if call is None:
            try:  # what the general route checks for these arguments, once
                _, params, _, _, _, _ = loss._bind((None,) * ninputs, {"reduction": reduction}, with_out=False)
                _adapters.check_params(_ADAPTER, name, params)
            except (TypeError, ValueError):
                return None
            call = plain_calls[reduction] = _Call(loss, params, None, reduction, None)
            call.grad_slots = _Slots([None] * (1 + ninputs))  # backward's (call, *inputs) gradients
            call.grad_slots.index_of = tuple(1 + k for k in diff)
        return call

    def f(*args, **kwargs):
        if len(args) == ninputs and (not kwargs or (len(kwargs) == 1 and type(kwargs.get("reduction")) is str)):
            reduction = kwargs["reduction"] if kwargs else "mean"
            if small is not None and (reduction == "mean" or reduction == "sum" or reduction == "none"):
                value = small(*args, reduction)
                if value is not None:
                    return value
            # exact torch.Tensor on the CPU (a subclass may report another device, see _device);
            # "none" is left to the general route, which checks that it is differentiable
            if (reduction == "mean" or reduction == "sum") and all(
                type(t) is torch.Tensor and t.is_cpu and t.dtype in _NUMPY_DTYPES for t in args
            ) and all(args[k].requires_grad for k in diff) and not any(args[k].requires_grad for k in fixed) and (
                torch.is_grad_enabled()
            ):
                call = plain_call(reduction)
                if call is not None:
                    return _PlainLoss.apply(call, *args)
        for k in ("out", "stats"):
            if k in kwargs:
                raise TypeError(f"{_ADAPTER}.{name}() does not take {k}= (autograd owns the gradient)")
        inputs, params, weight, reduction, _, _ = loss._bind(args, kwargs, with_out=False)
        if not any(isinstance(t, torch.Tensor) for t in inputs):
            raise TypeError(f"{_ADAPTER}.{name}() expects torch tensors; use fastloss.{name} for NumPy arrays")
        _adapters.check_params(_ADAPTER, name, params)
        if isinstance(weight, torch.Tensor) and weight.requires_grad:
            raise ValueError(f"{_ADAPTER}.{name}: weight must not require a gradient; detach it")
        _check_requires_grad(loss, inputs)
        device = _device(name, loss, inputs, weight)
        call = _Call(loss, params, weight, reduction, device)
        if any(isinstance(inputs[k], torch.Tensor) and inputs[k].requires_grad for k in call.diff):
            _adapters.check_none_supported(_ADAPTER, loss, reduction)
        return _FusedLoss.apply(call, *inputs)

    f.__name__ = f.__qualname__ = name
    head = f"PyTorch autograd wrapper of :func:`fastloss.{name}`."
    if small is not None:
        head += (" A plain call on at most ``fastloss.torch.SMALL_CROSS_ENTROPY`` CPU logits is PyTorch's "
                 "own function (see the module docstring).")
    f.__doc__ = f"{head}\n\n{loss.__doc__}"
    f.__signature__ = loss.__signature__
    f.__wrapped__ = loss
    return f


def _check_requires_grad(loss: Loss, inputs) -> None:
    for inp, t in zip(loss.spec.inputs, inputs):
        if isinstance(t, torch.Tensor) and t.requires_grad and not inp.differentiable:
            raise ValueError(
                f"{_ADAPTER}.{loss.spec.name}: {inp.name} requires a gradient, but fastloss computes none for "
                f"it; detach it (e.g. {inp.name}.detach()) or use the PyTorch loss"
            )


__getattr__, __dir__ = _adapters.module_attributes(__name__, globals(), wrap)
