"""Host side of the pointwise kind: broadcasting, dtypes, buffers, then one fused driver call."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np

from ... import _buffers, _config, _launcher, _stats
from ..._call import (
    Result,
    check_domain,
    check_domains,
    check_outs,
    check_size,
    check_weight,
    checked_domains,
    mean_scale,
    reduce_value,
    same_memory,
    warn_column_broadcast,
    writes_through,
)
from ..._compile import scalar_kernel, specialise
from ..._kernels import tuples
from ..._spec import Discrete, LossSpec, Param
from ..._validate import as_array, broadcast_shape, check_discrete, check_weight_shape, compute_dtype, outside
from ..base import Layouts, register_kind
from . import cpu as pointwise_cpu

_compile_lock = threading.Lock()

#: What a driver binds for its gradient statistics: statistics are compiled only when asked for.
_STATS_FN = {False: tuples.no_stats, True: tuples.chunk_stats}
#: What a driver binds for input staging (in-place calls only).
_STAGE_FNS = {False: (tuples.no_stage, tuples.no_stage_block), True: (tuples.stage_buffers, tuples.stage_block)}


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


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}
_NO_STATS = _stats.empty_partials(0)
_NO_PARTIALS = np.empty(0, np.float64)


#: Fastest serial time per element seen for each driver, in seconds (see ``run_driver``).
_serial_cost: dict[Any, float] = {}


def run_driver(drv, args: tuple, n: int) -> float:
    """Call a compiled chunk function over all chunks of ``n`` elements; the float64 sum of losses.

    A call runs serially on the calling thread, or on several threads (:mod:`fastloss._launcher`)
    when it is large enough to repay waking them: from ``POINTWISE_PARALLEL_FROM`` elements, or
    from ``POINTWISE_SERIAL_BELOW`` when this driver's serial calls of that size took long enough
    per element (a memory-bound loss is ten times cheaper per element than an exp/log one).
    Parallel calls always run the same way, whatever the thread count: each chunk's sum lands in a
    partials row that is then added in chunk order (``np.add.accumulate`` is a sequential sum), the
    order in which the serial path adds them, so the result is the same bits on either path.
    """
    nch = pointwise_cpu.nchunks(n)
    if n < _config.POINTWISE_PARALLEL_FROM:
        if n < _config.POINTWISE_SERIAL_BELOW:
            return drv(*args, _NO_PARTIALS, 0, nch)
        cost = _serial_cost.get(drv)
        if cost is None or n * cost < _config.POINTWISE_PARALLEL_MIN_SECONDS:
            compiled = len(drv.overloads)
            start = time.perf_counter()
            total = drv(*args, _NO_PARTIALS, 0, nch)
            per_element = (time.perf_counter() - start) / n
            # a call that compiled (or loaded from the disk cache) says nothing about speed
            if (cost is None or per_element < cost) and len(drv.overloads) == compiled:
                _serial_cost[drv] = per_element
            return total
    threads = _launcher.num_threads()
    partials = np.empty(nch, dtype=np.float64)
    _launcher.run_ranges(drv, (*args, partials), _launcher.pieces(nch, threads), threads)
    # + 0.0: the serial sum starts from 0.0 and so is never -0.0; an accumulation can be
    return float(np.add.accumulate(partials, out=partials)[-1]) + 0.0


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
        #: declared domains of targets that every call checks (None: they depend on parameters)
        self.domains = checked_domains(spec, {}) if spec.domains is None else None
        #: ``kernel_for(params) -> kernel``: a kernel specialised on some parameter values (e.g. the
        #: bool switches of ``poisson_nll``, so that the vectorised loop does not compute both arms)
        self.kernel_for = spec.options.get("kernel_for")

    def kernel(self, params) -> Any:
        """The scalar kernel to compile for these (checked) parameter values."""
        return self.spec.kernel if self.kernel_for is None else self.kernel_for(params)

    def hessian(self) -> Any:
        """The declared scalar Hessian ``hessian(*inputs, *params) -> h`` (a tuple for several
        differentiable inputs); ``NotImplementedError`` for a loss that declares none."""
        if self.spec.hessian is None:
            raise NotImplementedError(f"{self.spec.name}: no second derivative is declared for this loss")
        return self.spec.hessian

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
    #: one loss per element: scoring and Dask may cut the inputs along any axis
    elementwise = True
    #: ``reduction="none"`` backward in the framework adapters (see :mod:`fastloss._adapters`):
    #: scale the saved gradient, unless a differentiable input was broadcast (see ``none_rule``)
    none_backward = "scale"
    #: ``run`` computes the Hessian diagonal (``need_hess``) of losses that declare ``hessian``
    hessians = True

    def per_sample_shape(self, spec: LossSpec, params, shapes) -> tuple[int, ...]:
        """Shape of the ``reduction="none"`` value for inputs of these shapes (None: omitted): the
        broadcast shape, after the declaration's ``adapt_inputs`` (asked on broadcast views of ones)."""
        present = [s for s in shapes if s is not None]
        adapt = spec.options.get("adapt_inputs")
        if adapt is not None:
            views = [None if s is None else np.broadcast_to(np.ones((), np.float64), s) for s in shapes]
            present = [np.shape(a) for a in adapt(views) if a is not None]
        try:
            return tuple(np.broadcast_shapes(*present))
        except ValueError:
            raise ValueError(f"{spec.name}: inputs of shapes {present} do not broadcast together") from None

    def none_rule(self, spec: LossSpec, params, shapes, wanted) -> str:
        """``"scale"`` unless a differentiable input whose gradient is wanted was broadcast: one of its
        elements then feeds several losses whose cotangents differ, so the kernel reruns weighted."""
        try:
            value = self.per_sample_shape(spec, params, shapes)
        except ValueError:  # the kernel will say what is wrong with the shapes
            return "weight"
        return "weight" if any(shapes[k] != value for k in wanted) else "scale"

    def cotangent_shape(self, spec: LossSpec, params, value_shape, grad_ndim: int) -> tuple[int, ...]:
        """The per-sample cotangent broadcast over a gradient: the gradient has the value's shape."""
        return tuple(value_shape)

    def __init__(self) -> None:
        self._drivers: dict[tuple[Any, bool, bool], Any] = {}
        self._layout = Layouts(_Layout)

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        return ()

    def driver(self, spec: LossSpec, stats: bool = False, kernel=None, staged: bool = False, hessian=None):
        """The compiled :func:`~fastloss.kinds.pointwise.cpu.pointwise_chunks` of ``spec``.

        One function serves serial and parallel calls (see :func:`run_driver`). ``stats``: with
        gradient statistics; ``kernel``: the scalar kernel to compile (default ``spec.kernel``; see
        ``kernel_for``); ``staged``: for calls whose gradient buffer is also an input (in place);
        ``hessian``: the scalar Hessian, for a driver that also writes the Hessian diagonal.
        """
        kernel = spec.kernel if kernel is None else kernel
        key = (kernel, stats, staged, hessian)  # not the name: custom losses may share one (or redefine it)
        drv = self._drivers.get(key)
        if drv is None:
            with _compile_lock:
                drv = self._drivers.get(key)
                if drv is None:
                    drv = self._drivers[key] = self._specialise(spec, kernel, stats, staged, hessian)
        return drv

    def _specialise(self, spec: LossSpec, kernel, stats: bool, staged: bool, hessian=None):
        cache = spec.options.get("cache", True)
        # what is bound is part of the identity (and so of the cache key) of a specialisation
        stage = _STAGE_FNS[staged]
        hashed = (kernel, _STATS_FN[stats], *stage) + ((hessian,) if hessian is not None else ())
        bindings = {"_loss_kernel": scalar_kernel(kernel), "_chunk_stats": _STATS_FN[stats],
                    "_stage_buffers": stage[0], "_stage_block": stage[1],
                    # without a Hessian the branch that would call it is compiled out (_HESS is a constant)
                    "_HESS": hessian is not None, "_hess_kernel": scalar_kernel(hessian or kernel)}
        name = spec.name if hessian is None else f"{spec.name}_hess"
        return specialise(pointwise_cpu.pointwise_chunks, name, bindings,
                          parallel=False, hashed=hashed, cache=cache)

    def fast_path(self, spec: LossSpec, params: tuple[Param, ...], *, need_value: bool, need_grad: bool,
                  with_out: bool):
        """A callable ``fast(args, kwargs)`` for the common call, or None when ``spec`` has none.

        The common call: every input positional, NumPy float32/float64 C-contiguous arrays of one
        shape and dtype, no weight, ``reduction`` "mean" or "sum", no statistics, ``out`` absent or
        exactly the buffer the driver writes. ``fast`` returns the public result (what
        :class:`~fastloss._api.Loss` returns) or ``NotImplemented`` for any other call, which then
        takes the general path (which also raises every error: the fast path never does).
        At 1e3 elements the general path's checks cost several times the kernel.
        """
        layout = self._layout(spec)
        if not layout.plain:
            return None
        defaults = {p.name: p.default for p in params}

        def scans(pvals):  # the declared domains to check, as arguments of ``outside``
            return tuple((k, d.low, d.high, d.closed[0], d.closed[1]) for k, d in checked_domains(spec, pvals))

        vary = spec.domains is not None  # domains that depend on parameter values
        try:
            if spec.check is not None:
                spec.check(dict(defaults))
            default_kparams = spec.kernel_params(defaults)
            default_kernel = layout.kernel(defaults)
            default_scans = scans(defaults)
        except Exception:  # a declaration whose defaults need the general path
            return None
        by_name = {p.name: p for p in params}
        known = {"reduction", "weight", *(("out", "stats") if with_out else ())}
        ninputs = len(layout.names)
        diff = tuple(layout.diff)
        ndiff = len(diff)
        others = tuple(tuple(i for i in range(ninputs) if i != k) for k in diff)
        name = spec.name
        flags = pointwise_cpu.NEED_GRAD if need_grad else 0
        no_grads = {dt: (e,) * ndiff for dt, e in _EMPTY.items()}
        drivers = {}  # driver by kernel (in-place calls look theirs up: rare)
        config = _config
        chunk = pointwise_cpu.CHUNK
        cached_empty = _buffers.empty
        min_cached = _buffers.MIN_BYTES
        slow = NotImplemented

        def fast(args, kwargs):
            if len(args) != ninputs:
                return slow
            x0 = args[0]
            if type(x0) is not np.ndarray:
                return slow
            dtype = x0.dtype
            shape = x0.shape
            empty = _EMPTY.get(dtype)
            if empty is None or not x0.flags.c_contiguous:
                return slow
            flat = len(shape) == 1
            for x in args[1:]:
                if type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype or not x.flags.c_contiguous:
                    return slow
            reduction = "mean"
            out = None
            kparams = default_kparams
            kernel = default_kernel
            domains = default_scans
            if kwargs:
                pvals = None
                for key, v in kwargs.items():
                    if key in by_name:
                        if v is not defaults[key]:
                            if pvals is None:
                                pvals = dict(defaults)
                            pvals[key] = v
                    elif key not in known:
                        return slow
                reduction = kwargs.get("reduction", "mean")
                if type(reduction) is not str or (reduction != "mean" and reduction != "sum"):
                    return slow
                if kwargs.get("weight") is not None:
                    return slow
                if with_out:
                    if kwargs.get("stats", False):
                        return slow
                    out = kwargs.get("out")
                if pvals is not None:
                    try:
                        for p in params:  # declaration order, as the general path checks them
                            if pvals[p.name] is not defaults[p.name]:
                                pvals[p.name] = p.check(name, pvals[p.name])
                        if spec.check is not None:
                            spec.check(pvals)
                    except (TypeError, ValueError):
                        return slow  # the general path raises it, after its own earlier checks
                    kparams = spec.kernel_params(pvals)
                    kernel = layout.kernel(pvals)
                    if vary:
                        domains = scans(pvals)
            n = x0.size
            if n == 0:
                return slow
            xs = args if flat else tuple([x.reshape(-1) for x in args])
            for k, lo, hi, lo_closed, hi_closed in domains:  # targets in their declared domain
                if outside(xs[k], lo, hi, lo_closed, hi_closed) >= 0:
                    return slow
            staged = False
            if not need_grad:
                gs = no_grads[dtype]
            elif out is None:
                if n * dtype.itemsize < min_cached:
                    gs = (np.empty(n, dtype),) if ndiff == 1 else tuple([np.empty(n, dtype) for _ in diff])
                else:
                    gs = tuple([cached_empty(n, dtype) for _ in diff])
            else:
                outs = (out,) if ndiff == 1 and type(out) is np.ndarray else out
                if type(outs) is not tuple or len(outs) != ndiff:
                    return slow
                gl = []
                for j, o in enumerate(outs):
                    if o is None:
                        gl.append(cached_empty(n, dtype))
                        continue
                    if (type(o) is not np.ndarray or o.shape != shape or o.dtype != dtype
                            or not o.flags.c_contiguous or not o.flags.writeable):
                        return slow
                    for i in others[j]:  # an out may alias its own input only: let the general path decide
                        if np.may_share_memory(o, args[i]):
                            return slow
                    if np.may_share_memory(o, args[diff[j]]) and not same_memory(o, args[diff[j]]):
                        return slow  # a partial overlap with its own input: computed in a private buffer
                    for jj, oo in enumerate(outs):
                        if jj != j and oo is not None and np.may_share_memory(o, oo):
                            return slow
                    staged = staged or np.may_share_memory(o, args[diff[j]])  # in place
                    gl.append(o if flat else o.reshape(-1))
                gs = tuple(gl)
            scale = 1.0 / n if reduction == "mean" else 1.0
            drv = drivers.get(kernel) if not staged else None
            if drv is None:
                drv = self.driver(spec, False, kernel, staged)
                if not staged:
                    drivers[kernel] = drv
            if n < config.POINTWISE_SERIAL_BELOW:  # run_driver's first case, without its call and tuple
                total = drv(xs, empty, gs, no_grads[dtype], empty, kparams, scale, flags, _NO_STATS, _NO_PARTIALS,
                            0, (n + chunk - 1) // chunk)
            else:
                total = run_driver(drv, (xs, empty, gs, no_grads[dtype], empty, kparams, scale, flags, _NO_STATS), n)
            value = dtype.type(total * scale if reduction == "mean" else total)
            if not need_grad:
                return value
            if out is None:
                grads = [g if flat else g.reshape(shape) for g in gs]
            else:
                grads = [(g if flat else g.reshape(shape)) if o is None else o for g, o in zip(gs, outs)]
            g = grads[0] if ndiff == 1 else tuple(grads)
            return (value, g) if need_value else g

        return fast

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False,
            need_hess=False, hess_out=None, hess_floor=None):
        """One call: checks, buffers, one fused driver pass. ``need_hess``: also the Hessian
        diagonal, into ``hess_out`` (one array, or a tuple per differentiable input) when given,
        clipped from below at ``hess_floor`` (NaN kept)."""
        name = spec.name
        layout = self._layout(spec)
        diff = layout.diff
        xs = layout.ready_inputs(inputs)
        if xs is not None:  # the common case, checked cheaply: matters for small arrays
            arrays = originals = inputs
            dtype = inputs[0].dtype
            shape = inputs[0].shape
            if layout.domains is None:
                check_domains(spec, params, inputs)
            else:
                for k, dom in layout.domains:
                    check_domain(name, layout.names[k], inputs[k], dom)
        else:
            arrays = [as_array(name, n, x) for n, x in zip(layout.names, inputs)]
            dtype = compute_dtype(arrays[0])
            originals = arrays
            # inputs, weight, gradients and per-element losses are materialised at the largest
            # input's size (at least): refuse the impossible before any scan of a broadcast view
            check_size(name, max((a.shape for a in arrays), key=math.prod), dtype.itemsize,
                       len(arrays) + len(diff) + 1)
            if layout.adapt is not None:
                arrays = layout.adapt(arrays)
            shape = broadcast_shape(name, layout.names, arrays)
            warn_column_broadcast(name, layout.names, originals, shape)
            check_size(name, shape, dtype.itemsize, len(arrays) + len(diff) + 1)
            for k, values in layout.discrete:
                check_discrete(name, layout.names[k], arrays[k], values)
            check_domains(spec, params, originals)
            xs = tuple([flat_contiguous(a, shape, dtype) for a in arrays])
        outs = check_outs(name, layout.names, diff, out, originals, weight) if need_grad else None
        houts = None
        if need_hess:
            hessian = layout.hessian()
            houts = check_outs(name, layout.names, diff, hess_out, originals, weight)
            for h in houts:  # a Hessian buffer must not share memory with a gradient buffer
                if h is not None and any(g is not None and np.may_share_memory(h, g) for g in outs or ()):
                    raise ValueError(f"{name}: out= gives the gradient and the Hessian overlapping buffers")
        n = xs[0].size
        denom = float(n)
        if weight is not None:
            warr = check_weight(name, weight)
            check_weight_shape(name, warr, shape)
            w = flat_contiguous(warr, shape, dtype)
            if reduction == "mean":
                denom = float(np.sum(w, dtype=np.float64))
        else:
            w = _empty(dtype)
        scale = mean_scale(reduction, denom)

        if need_grad:
            gs = tuple([self._grad_buffer(o, originals[k], shape, dtype) for o, k in zip(outs, diff)])
        else:
            gs = (_empty(dtype),) * len(diff)
        # the Hessian always goes through private buffers (copied into ``hess_out`` at the end)
        hs = tuple([_buffers.empty(n, dtype) for _ in diff]) if need_hess else (_empty(dtype),) * len(diff)
        per_element = need_value and reduction == "none"
        loss_out = _buffers.empty(n, dtype) if per_element else _empty(dtype)
        flags = (
            (pointwise_cpu.NEED_GRAD if need_grad else 0)
            | (pointwise_cpu.PER_ELEMENT if per_element else 0)
            | (pointwise_cpu.NEED_STATS if stats else 0)
        )
        stat_rows = _stats.empty_partials(pointwise_cpu.nchunks(n)) if stats else _NO_STATS

        # a gradient buffer that is also an input (in place) needs the staging driver
        staged = out is not None and need_grad and any(np.may_share_memory(g, x) for g in gs for x in xs)
        total = 0.0
        if n:
            drv = self.driver(spec, stats, layout.kernel(params), staged, hessian if need_hess else None)
            total = run_driver(drv, (xs, w, gs, hs, loss_out, spec.kernel_params(params), scale, flags, stat_rows), n)

        value = None
        if need_value:
            out_dtype = arrays[0].dtype if arrays[0].dtype.kind == "f" else dtype
            value = reduce_value(reduction, total, loss_out, scale, n, shape, out_dtype)
        grads = ()
        if need_grad:
            grads = tuple(
                self._finish_grad(g, arrays[k], originals[k].shape, outs[j], shape)
                for j, (g, k) in enumerate(zip(gs, diff))
            )
        hess = ()
        if need_hess:
            hess = tuple(
                self._finish_grad(h, arrays[k], originals[k].shape, houts[j], shape)
                for j, (h, k) in enumerate(zip(hs, diff))
            )
            if hess_floor is not None:
                for h in hess:
                    np.maximum(h, hess_floor, out=h)  # NaN stays NaN
        return Result(value, grads, _stats.combine(stat_rows) if stats else None, hess)

    @staticmethod
    def _grad_buffer(out, own, shape, dtype) -> np.ndarray:
        """Write straight into ``out`` when it is already the flat buffer the driver needs and is
        either its own input exactly (in place: the driver stages it) or overlaps no input."""
        if (out is not None and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
                and writes_through(out, own)):
            return out.reshape(-1)
        return _buffers.empty(math.prod(shape), dtype)

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
