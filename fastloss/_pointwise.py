"""Host side of the pointwise kind: broadcasting, dtypes, buffers, then one fused driver call."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from . import _config, _stats, _threading
from ._compile import scalar_kernel, specialise
from ._kernels import pointwise_cpu
from ._kinds import register_kind
from ._spec import Discrete, LossSpec, Param
from ._validate import (
    as_array,
    broadcast_shape,
    check_discrete,
    check_out,
    check_weight_shape,
    compute_dtype,
)

_compile_lock = threading.Lock()


def sum_to_shape(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast gradient back to the shape of the input it belongs to."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1
    )
    return np.sum(g, axis=axes, dtype=np.float64).reshape(shape)


def flat_contiguous(arr: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A flat C-contiguous ``dtype`` view of ``arr`` broadcast to ``shape`` (copying only if needed)."""
    if arr.shape == shape and arr.dtype == dtype and arr.flags.c_contiguous:
        return arr.reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(arr, shape), dtype=dtype).reshape(-1)


def scale_for(reduction: str, n: int, wsum: float | None) -> float:
    """Gradient scale of the reduction; a zero weight sum gives inf (and so nan/inf results, like NumPy)."""
    if reduction != "mean":
        return 1.0
    denom = float(n) if wsum is None else wsum
    return 1.0 / denom if denom != 0.0 else math.inf


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}
_NO_STATS = _stats.empty_partials(0)


def _empty(dtype: np.dtype) -> np.ndarray:
    """A shared zero-size array (never written) standing for an unused buffer."""
    return _EMPTY[dtype]


class _Layout:
    """What the kind needs to know about a spec's inputs, computed once per loss."""

    def __init__(self, spec: LossSpec) -> None:
        self.spec = spec
        self.names = [i.name for i in spec.inputs]
        self.diff = [k for k, i in enumerate(spec.inputs) if i.differentiable]
        self.discrete = [(k, i.domain.values) for k, i in enumerate(spec.inputs) if isinstance(i.domain, Discrete)]
        self.adapt = spec.options.get("adapt_inputs")
        self.plain = self.adapt is None and not self.discrete

    def ready_inputs(self, inputs) -> tuple[np.ndarray, ...] | None:
        """Flat views of ``inputs`` if they need no conversion, broadcasting or validation, else None."""
        if not self.plain:
            return None
        first = inputs[0]
        if type(first) is not np.ndarray or first.dtype not in _EMPTY or not first.flags.c_contiguous:
            return None
        for x in inputs:
            if type(x) is not np.ndarray or x.shape != first.shape or x.dtype != first.dtype:
                return None
            if not x.flags.c_contiguous:
                return None
        return tuple([x.reshape(-1) for x in inputs])


class PointwiseKind:
    """Losses defined element by element: ``kernel(*inputs, *params) -> (value, *grads)``."""

    name = "pointwise"

    def __init__(self) -> None:
        self._drivers: dict[tuple[Any, bool], Any] = {}
        self._layouts: dict[int, _Layout] = {}

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        return ()

    def driver(self, spec: LossSpec, parallel: bool):
        key = (spec.kernel, parallel)  # not the name: custom losses may share one (or redefine it)
        drv = self._drivers.get(key)
        if drv is None:
            with _compile_lock:
                drv = self._drivers.get(key)
                if drv is None:
                    drv = specialise(
                        pointwise_cpu.pointwise_driver,
                        spec.name,
                        {"_loss_kernel": scalar_kernel(spec.kernel)},
                        parallel=parallel,
                        hashed=(spec.kernel,),
                        cache=spec.options.get("cache", True),
                    )
                    self._drivers[key] = drv
        return drv

    def _layout(self, spec: LossSpec) -> _Layout:
        layout = self._layouts.get(id(spec))  # the layout holds the spec, so its id is not reused
        if layout is None:
            layout = self._layouts[id(spec)] = _Layout(spec)
        return layout

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False):
        name = spec.name
        layout = self._layout(spec)
        diff = layout.diff
        xs = layout.ready_inputs(inputs)
        if xs is not None:  # the common case, checked cheaply: matters for small arrays
            arrays = originals = inputs
            dtype = inputs[0].dtype
            shape = inputs[0].shape
        else:
            arrays = [as_array(name, n, x) for n, x in zip(layout.names, inputs)]
            dtype = compute_dtype(arrays[0])
            originals = arrays
            if layout.adapt is not None:
                arrays = layout.adapt(arrays)
            shape = broadcast_shape(name, layout.names, arrays)
            for k, values in layout.discrete:
                check_discrete(name, layout.names[k], arrays[k], values)
            xs = tuple([flat_contiguous(a, shape, dtype) for a in arrays])
        outs = self._check_outs(spec, out, originals, diff, weight) if need_grad else None
        n = xs[0].size
        wsum = None
        if weight is not None:
            warr = as_array(name, "weight", weight)
            check_weight_shape(name, warr, shape)
            w = flat_contiguous(warr, shape, dtype)
            if reduction == "mean":
                wsum = float(np.sum(w, dtype=np.float64))
        else:
            w = _empty(dtype)
        scale = scale_for(reduction, n, wsum)

        if need_grad:
            gs = tuple([self._grad_buffer(o, shape, dtype) for o in outs])
        else:
            gs = (_empty(dtype),) * len(diff)
        per_element = need_value and reduction == "none"
        loss_out = np.empty(n, dtype) if per_element else _empty(dtype)
        flags = (
            (pointwise_cpu.NEED_GRAD if need_grad else 0)
            | (pointwise_cpu.PER_ELEMENT if per_element else 0)
            | (pointwise_cpu.NEED_STATS if stats else 0)
        )
        stat_rows = _stats.empty_partials(pointwise_cpu.nchunks(n)) if stats else _NO_STATS

        total = 0.0
        if n:
            parallel = n >= _config.PARALLEL_THRESHOLD
            drv = self.driver(spec, parallel)
            kparams = spec.kernel_params(params)
            if parallel:
                with _threading.guard():
                    total = drv(xs, w, gs, loss_out, kparams, scale, flags, stat_rows)
            else:
                total = drv(xs, w, gs, loss_out, kparams, scale, flags, stat_rows)

        value = None
        if need_value:
            out_dtype = arrays[0].dtype if arrays[0].dtype.kind == "f" else dtype
            if reduction == "none":
                value = loss_out.reshape(shape).astype(out_dtype, copy=False)
            elif reduction == "sum":
                value = out_dtype.type(total)
            else:
                value = out_dtype.type(total * scale) if n else out_dtype.type(np.nan)
        grads = ()
        if need_grad:
            grads = tuple(
                self._finish_grad(g, arrays[k], originals[k].shape, outs[j], shape)
                for j, (g, k) in enumerate(zip(gs, diff))
            )
        if stats:
            return value, grads, _stats.combine(stat_rows)
        return value, grads

    @staticmethod
    def _check_outs(spec, out, arrays, diff, weight):
        if out is None:
            return [None] * len(diff)
        names = [spec.inputs[k].name for k in diff]
        outs = list(out) if isinstance(out, tuple) else [out]
        if len(outs) != len(diff):
            raise ValueError(f"{spec.name}: out must hold {len(diff)} gradient buffer(s) ({', '.join(names)})")
        checked = []
        for j, (k, o) in enumerate(zip(diff, outs)):
            if o is None:
                checked.append(None)
                continue
            x = arrays[k]
            gdtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
            forbidden = [(spec.inputs[i].name, a) for i, a in enumerate(arrays) if i != k]
            forbidden += [(f"out[{jj}]", oo) for jj, oo in enumerate(outs) if jj != j and oo is not None]
            if weight is not None and isinstance(weight, np.ndarray):
                forbidden.append(("weight", weight))
            checked.append(check_out(spec.name, f"out[{j}]" if len(diff) > 1 else "out", o, x.shape, gdtype, forbidden))
        return checked

    @staticmethod
    def _grad_buffer(out, shape, dtype) -> np.ndarray:
        """Write straight into ``out`` when it is already the flat buffer the driver needs."""
        if out is not None and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous:
            return out.reshape(-1)
        return np.empty(math.prod(shape), dtype)

    @staticmethod
    def _finish_grad(g: np.ndarray, x: np.ndarray, x_shape, out, shape) -> np.ndarray:
        if out is not None and np.may_share_memory(g, out):
            return out  # the driver wrote straight into ``out``
        full = g.reshape(shape)
        if x.shape != shape:
            full = sum_to_shape(full, x.shape)
        full = full.reshape(x_shape)
        if out is not None:
            out[...] = full
            return out
        gdtype = x.dtype if x.dtype.kind == "f" else full.dtype
        return full if full.dtype == gdtype else full.astype(gdtype)


POINTWISE = register_kind(PointwiseKind())
