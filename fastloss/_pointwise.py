"""Host side of the pointwise kind: broadcasting, dtypes, buffers, then one fused driver call."""

from __future__ import annotations

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
    if reduction != "mean":
        return 1.0
    denom = float(n) if wsum is None else wsum
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(1.0) / np.float64(denom))


class PointwiseKind:
    """Losses defined element by element: ``kernel(*inputs, *params) -> (value, *grads)``."""

    name = "pointwise"

    def __init__(self) -> None:
        self._drivers: dict[tuple[Any, bool], Any] = {}

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

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False):
        name = spec.name
        arrays = [as_array(name, inp.name, x) for inp, x in zip(spec.inputs, inputs)]
        dtype = compute_dtype(arrays[0])
        originals = arrays
        adapt = spec.options.get("adapt_inputs")
        if adapt is not None:
            arrays = adapt(arrays)
        shape = broadcast_shape(name, [i.name for i in spec.inputs], arrays)
        for inp, arr in zip(spec.inputs, arrays):
            if isinstance(inp.domain, Discrete):
                check_discrete(name, inp.name, arr, inp.domain.values)
        diff = [k for k, inp in enumerate(spec.inputs) if inp.differentiable]
        outs = self._check_outs(spec, out, originals, diff, weight) if need_grad else None

        xs = tuple(flat_contiguous(a, shape, dtype) for a in arrays)
        n = xs[0].size
        wsum = None
        if weight is not None:
            warr = as_array(name, "weight", weight)
            check_weight_shape(name, warr, shape)
            w = flat_contiguous(warr, shape, dtype)
            if reduction == "mean":
                wsum = float(np.sum(w, dtype=np.float64))
        else:
            w = np.empty(0, dtype)
        scale = scale_for(reduction, n, wsum)

        if need_grad:
            gs = tuple(self._grad_buffer(outs[j], shape, dtype) for j in range(len(diff)))
        else:
            gs = tuple(np.empty(0, dtype) for _ in diff)
        per_element = need_value and reduction == "none"
        loss_out = np.empty(n, dtype) if per_element else np.empty(0, dtype)
        flags = (
            (pointwise_cpu.NEED_GRAD if need_grad else 0)
            | (pointwise_cpu.PER_ELEMENT if per_element else 0)
            | (pointwise_cpu.NEED_STATS if stats else 0)
        )
        stat_rows = _stats.empty_partials(pointwise_cpu.nchunks(n) if stats else 0)

        total = 0.0
        if n:
            parallel = n >= _config.PARALLEL_THRESHOLD
            drv = self.driver(spec, parallel)
            partials = np.empty(pointwise_cpu.nchunks(n), dtype=np.float64)
            kparams = spec.kernel_params(params)
            if parallel:
                with _threading.guard():
                    total = drv(xs, w, gs, loss_out, kparams, scale, flags, partials, stat_rows)
            else:
                total = drv(xs, w, gs, loss_out, kparams, scale, flags, partials, stat_rows)

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
        names = [spec.inputs[k].name for k in diff]
        if out is None:
            return [None] * len(diff)
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
        return np.empty(int(np.prod(shape)), dtype)

    @staticmethod
    def _finish_grad(g: np.ndarray, x: np.ndarray, x_shape, out, shape) -> np.ndarray:
        gdtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        if out is not None and np.may_share_memory(g, out):
            return out
        full = sum_to_shape(g.reshape(shape), x.shape).reshape(x_shape)
        if out is not None:
            out[...] = full
            return out
        return full.astype(gdtype, copy=False)


POINTWISE = register_kind(PointwiseKind())
