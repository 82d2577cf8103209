"""The parts of a call that every kind shares, written once: checks, scale, reduction, gradients.

A kind's ``run`` (host or CUDA) is the same sequence: convert and check the inputs (shapes, dtypes,
declared domains), check the weights and the ``out=`` buffers, compute the gradient scale of the
reduction, run its compiled driver, then reduce the value and finish the gradients. Everything in
that sequence that does not depend on how the kind lays out its rows lives here, so that a rule
(``out=`` may alias its own input but nothing else; weights are non-negative; a ``mean`` over zero
weight is NaN, as in PyTorch) is stated once, for the CPU and the CUDA sides alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._spec import Discrete, Interval, LossSpec
from ._validate import as_array, check_out, outside, overlaps
from .device import is_device_array


class Result(NamedTuple):
    """What a kind's ``run`` returns: the value (or None), one gradient per differentiable input
    (empty when none was asked for), the gradient statistics (or None) and one Hessian diagonal
    per differentiable input (empty when none was asked for)."""

    value: Any
    grads: tuple
    stats: Any = None
    hess: tuple = ()


# -- gradient buffers (out=) ------------------------------------------------------------------------


def grad_dtype(x) -> np.dtype:
    """The dtype of the gradient of ``x``: its own when floating, else float64."""
    return x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)


def check_outs(loss: str, names: Sequence[str], diff: Sequence[int], out, arrays: Sequence[Any],
               weight, shapes: Sequence[tuple] | None = None, *, check: Callable | None = None) -> list:
    """The user's ``out=`` buffers, one per differentiable input (None where not given).

    ``out`` is one array (one differentiable input) or a tuple with one entry per differentiable
    input. Each must have its input's shape and gradient dtype and be writable; it may be its own
    input (in place) or overlap it (the kind then computes into a private buffer, see
    :func:`writes_through`), but sharing memory with any other input, the weight or another
    ``out`` entry is an error: the result would depend on the order the kernel writes in.

    ``check(label, out, shape, dtype, forbidden)`` checks one buffer and returns what the kind
    keeps of it; the default checks NumPy arrays (:func:`fastloss._validate.check_out`). The CUDA
    kinds pass theirs (:func:`fastloss.device.arrays.out_checker`: the same rules over device
    memory ranges), with their Numba views as ``arrays`` and ``weight``.
    """
    if out is None:
        return [None] * len(diff)
    outs = list(out) if isinstance(out, tuple) else [out]
    if len(outs) != len(diff):
        wanted = ", ".join(names[k] for k in diff)
        raise ValueError(f"{loss}: out must hold {len(diff)} gradient buffer(s) ({wanted})")
    checked = []
    for j, (k, o) in enumerate(zip(diff, outs)):
        if o is None:
            checked.append(None)
            continue
        x = arrays[k]
        forbidden = [(names[i], a) for i, a in enumerate(arrays) if i != k and _is_buffer(a)]
        forbidden += [(f"out[{jj}]", oo) for jj, oo in enumerate(outs) if jj != j and oo is not None]
        if _is_buffer(weight):
            forbidden.append(("weight", weight))
        label = f"out[{j}]" if len(diff) > 1 else "out"
        shape = x.shape if shapes is None else shapes[j]
        if check is None:
            checked.append(check_out(loss, label, o, shape, grad_dtype(x), forbidden))
        else:
            checked.append(check(label, o, tuple(shape), grad_dtype(x), forbidden))
    return checked


def _is_buffer(a) -> bool:
    """Whether ``a`` is memory a gradient could be written over (numbers and lists are not)."""
    return isinstance(a, np.ndarray) or is_device_array(a)


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are views of exactly the same elements in the same order."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def writes_through(out: np.ndarray, own: np.ndarray) -> bool:
    """Whether a kernel may write the gradient of ``own`` straight into ``out``.

    Yes when they do not overlap, or when ``out`` *is* ``own`` (the kernels read each element, or
    stage each block, before writing its gradient). A partial overlap (``out=x[1:]`` for
    ``x[:-1]``) is not: the kernel would read gradients it wrote as inputs, so the kind computes
    into a private buffer and copies it into ``out`` at the end, as NumPy's ufuncs do.
    """
    return same_memory(out, own) or not overlaps(out, own)


# -- weights ---------------------------------------------------------------------------------------


_SIGNED_WEIGHTS = contextvars.ContextVar("fastloss_signed_weights", default=False)


@contextlib.contextmanager
def signed_weights() -> Iterator[None]:
    """Accept negative weights in this context (this thread or task only).

    The framework adapters (:mod:`fastloss.torch`, :mod:`fastloss.jax`) differentiate a
    ``reduction="none"`` loss by running the kernel again with the upstream gradient as the
    weights, which may be negative; a user's ``weight=`` may not.
    """
    token = _SIGNED_WEIGHTS.set(True)
    try:
        yield
    finally:
        _SIGNED_WEIGHTS.reset(token)


def weights_must_be_checked(dtype: np.dtype) -> bool:
    """Whether weights of ``dtype`` must be checked for negative values in this context
    (not unsigned or bool, and not inside :func:`signed_weights`)."""
    return dtype.kind not in "ub" and not _SIGNED_WEIGHTS.get()


#: The interval every weight must lie in (NaN passes, as in NumPy).
WEIGHT_DOMAIN = Interval(0.0, math.inf)


def position(flat_index: int, shape) -> str:
    """``"[i, j]"``: where the element at C-order ``flat_index`` of an array of ``shape`` is
    (empty for a 0-d array), as the error messages of the checks name it."""
    if not len(shape):
        return ""
    index = np.unravel_index(flat_index, tuple(shape))
    return f"[{', '.join(str(int(i)) for i in index)}]"


def weight_error(loss: str, where: str, value) -> ValueError:
    """The error for a negative weight, ``value`` at ``where`` (see :func:`position`)."""
    return ValueError(f"{loss}: weight must be non-negative; weight{where} = {value!r}")


def domain_error(loss: str, name: str, dom: Interval, where: str, value) -> ValueError:
    """The error for an element of input ``name`` outside its declared domain ``dom``."""
    return ValueError(f"{loss}: {name} must be in {dom}; {name}{where} = {value!r}")


def check_weight(loss: str, weight) -> np.ndarray:
    """``weight`` as an array, refusing negative weights (NaN propagates, as in NumPy); see
    :func:`signed_weights` for the one caller that may pass negative ones."""
    w = as_array(loss, "weight", weight)
    if w.size and weights_must_be_checked(w.dtype):
        first = outside(w, 0.0, math.inf, True, True)
        if first >= 0:
            raise weight_error(loss, position(first, w.shape), w.reshape(-1)[first])
    return w


def mean_scale(reduction: str, denom: float) -> float:
    """The factor of a ``mean``: ``1/denom`` (count or summed weights); inf for a zero denominator
    (so the mean is NaN, as in PyTorch and NumPy); 1 for the other reductions."""
    if reduction != "mean":
        return 1.0
    return 1.0 / denom if denom != 0.0 else math.inf


def reduce_value(reduction: str, total: float, rows, scale: float, n: int, shape, dtype: np.dtype):
    """The loss for ``reduction`` from the per-sample losses ``rows`` or their float64 ``total``."""
    if reduction == "none":
        return np.asarray(rows).reshape(shape).astype(dtype, copy=False)
    if reduction == "sum":
        return dtype.type(total)
    if not n:
        return dtype.type(np.nan)
    with np.errstate(invalid="ignore", over="ignore"):
        return dtype.type(total * scale)


# -- declared domains --------------------------------------------------------------------------------


def checked_domains(spec: LossSpec, params) -> list[tuple[int, Interval]]:
    """The (input index, interval) pairs whose values a call must check.

    Non-differentiable inputs (targets, masks, counts) with a bounded :class:`Interval` domain:
    a value outside it is a user error that would otherwise give a plausible wrong number
    (``binary_cross_entropy`` with a target of 2). Discrete domains (labels) are checked by the
    kinds as they read the labels. Predictions are not checked: a prediction outside the domain
    gives NaN or inf, as in NumPy.
    """
    doms = spec.input_domains(params)
    checks = []
    for k, inp in enumerate(spec.inputs):
        dom = doms.get(inp.name)
        if inp.differentiable or not isinstance(dom, Interval):
            continue
        if dom.low == -math.inf and dom.high == math.inf:
            continue
        checks.append((k, dom))
    return checks


def check_domain(loss: str, name: str, arr: np.ndarray, dom: Interval) -> None:
    """Raise ``ValueError`` naming the first element of ``arr`` outside ``dom`` (NaN passes)."""
    if arr.size == 0 or isinstance(dom, Discrete):
        return
    first = outside(arr, dom.low, dom.high, dom.closed[0], dom.closed[1])
    if first >= 0:
        value = np.asarray(arr).reshape(-1)[first] if arr.ndim else arr[()]
        raise domain_error(loss, name, dom, position(first, arr.shape), value)


def check_domains(spec: LossSpec, params, arrays: Sequence[np.ndarray]) -> None:
    """Check every declared domain of ``spec``'s non-differentiable inputs (see :func:`checked_domains`)."""
    for k, dom in checked_domains(spec, params):
        check_domain(spec.name, spec.inputs[k].name, arrays[k], dom)


# -- shapes --------------------------------------------------------------------------------------------


def warn_column_broadcast(loss: str, names: Sequence[str], arrays: Sequence[Any], shape,
                          stacklevel: int = 5) -> None:
    """Warn when ``(N, 1)`` meets ``(N,)`` and NumPy broadcasting makes an ``(N, N)`` loss.

    Almost always a prediction column against a flat target; PyTorch warns for exactly this
    (``mse_loss``: "Using a target size that is different to the input size"). Other
    broadcasting keeps NumPy's rules, silently. ``arrays`` may be host or device arrays (only
    their shapes are read); ``stacklevel`` points the warning at the user's call.
    """
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
        return
    column = [(n, a.shape) for n, a in zip(names, arrays) if a.shape == (shape[0], 1)]
    flat = [(n, a.shape) for n, a in zip(names, arrays) if a.shape == (shape[0],)]
    if column and flat:
        (cn, cs), (fn, fs) = column[0], flat[0]
        warnings.warn(
            f"{loss}: {cn} of shape {cs} and {fn} of shape {fs} broadcast to {tuple(shape)}: a loss per pair, "
            f"not per sample; reshape one of them (e.g. {cn}.reshape(-1)) if that is not what you meant",
            UserWarning, stacklevel=stacklevel,
        )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


PHYSICAL_MEMORY = _physical_memory()


def check_size(loss: str, shape, itemsize: int, buffers: int) -> None:
    """``MemoryError`` before any work when a call needs more memory than the machine has.

    A broadcast view costs nothing to pass (``np.broadcast_to(1.0, (10**12,))``), but the call
    materialises ``buffers`` arrays of the broadcast shape (inputs, gradient): refusing up front
    beats scanning a virtual terabyte before the allocation fails.
    """
    need = math.prod(shape) * itemsize * buffers
    if need > PHYSICAL_MEMORY:
        raise MemoryError(
            f"{loss}: the call needs {need / 2**30:.3g} GiB for inputs of shape {tuple(shape)} "
            f"(this machine has {PHYSICAL_MEMORY / 2**30:.3g} GiB)"
        )
