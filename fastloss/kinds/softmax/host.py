"""Host side of the rowwise kind: class axis, targets, labels, weights, buffers, then one driver call.

A rowwise loss gives one value per sample from a reduction over the class axis (softmax cross
entropy and its relatives). Its declaration says, in ``LossSpec.options``:

``targets``
    Which target forms it accepts: ``"index"`` (integer class indices, the logits' shape without
    the class axis) and/or ``"probs"`` (class probabilities, the logits' shape). As in PyTorch the
    dtype decides: integer targets are indices, floating targets are probabilities.
``ignore_index``
    ``True`` adds the ``ignore_index`` option (index targets equal to it are left out).
``class_weight``
    ``False`` for losses that take no per-class ``weight`` (default ``True``).
``aux``
    The name of a bool parameter (e.g. ``return_z_loss``) that asks for the loss's auxiliary part
    as well: the value becomes a ``(loss, part)`` pair, both reduced alike (the kernel writes the
    part next to each row's loss, see :mod:`fastloss.kinds.softmax.cpu`).
``mean``
    What ``reduction="mean"`` divides by for index targets: ``"weight"`` (PyTorch's
    ``cross_entropy``: the summed class weights of the non-ignored targets, or their count) or
    ``"rows"`` (the number of non-ignored samples, as ``multi_margin_loss``). Probability targets
    always divide by the number of samples.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numba
import numpy as np

from ... import _buffers, _config, _launcher, _stats, _threading
from ..._call import Result, check_domains, check_outs, check_weight, grad_dtype, mean_scale, reduce_value
from ..._compile import compile_readonly, njit, readonly_dispatcher, specialise
from ..._spec import LossSpec, Param
from ..._validate import as_array, compute_dtype, overlaps
from ..base import register_kind
from . import cpu as rowwise_cpu
from . import primitives as rowops

_compile_lock = threading.Lock()


@njit(nogil=True)
def _check_labels(y, nc, ignore_index, use_ignore, w):
    """First invalid label (or -1), number of non-ignored labels and their summed class weights."""
    count = 0
    wsum = 0.0
    for i in range(y.size):
        v = y[i]
        if use_ignore and v == ignore_index:
            continue
        if v < 0 or v >= nc:
            return i, count, wsum
        count += 1
        if w.size:
            wsum += w[v]
    return -1, count, wsum


def _classes_last(a: np.ndarray, axis: int) -> np.ndarray:
    """A view of ``a`` with ``axis`` moved last (``np.moveaxis`` costs 10 us even when it is a no-op)."""
    return a if axis == a.ndim - 1 else np.moveaxis(a, axis, -1)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _mode(n: int, nc: int) -> str:
    """``"split"`` (parallel inside rows), ``"par"`` (parallel over rows) or ``"ser"``.

    Rows go to threads whole unless that leaves more than a quarter of the threads' time idle
    (e.g. 1 or 3 long rows on 2 threads, 8 on 16): then each row is split across all threads,
    which costs a few parallel launches per row. The choice may depend on the thread count because
    split and row-parallel runs give identical bits.
    """
    if n * nc < _config.PARALLEL_THRESHOLD:
        return "ser"
    if nc >= 2 * rowops.SEGMENT:
        threads = numba.get_num_threads()
        if n < 0.75 * threads * -(-n // threads):  # rows per thread, rounded up
            return "split"
    return "par"


#: Driver arguments compiled as read-only arrays (logits, class indices, probability targets,
#: class weights): writable and read-only inputs then share one compilation.
_READONLY = (0, 1, 2, 3)


def _run_blocks(drv, mode: str, args: tuple, partials: np.ndarray, nb: int) -> float:
    """Run driver ``drv`` over all ``nb`` row blocks (compiling it on first use); the float64 total
    of the blocks' partial sums (``partials``, in ``args``), added in block order."""
    try:
        _launch(drv, mode, args, nb)
    except TypeError:  # no compilation for these types yet (drivers compile only here)
        if not compile_readonly(drv, (*args, 0, nb), _READONLY):
            raise
        _launch(drv, mode, args, nb)
    return rowwise_cpu.block_total(partials, nb)


def _launch(drv, mode: str, args: tuple, nb: int) -> None:
    """Run driver ``drv`` over all ``nb`` row blocks, serially or on several threads."""
    if mode == "par":
        # a row block is ~ROW_BLOCK elements, worth a piece of its own
        threads = _launcher.num_threads()
        _launcher.run_ranges(drv, args, _launcher.pieces(nb, threads, min_piece=1), threads)
    elif mode == "ser":
        drv(*args, 0, nb)
    else:
        with _threading.guard():  # the split twins run Numba parallel regions
            drv(*args, 0, nb)


class RowwiseKind:
    """Losses with one value per sample from a reduction over the class axis."""

    name = "rowwise"
    #: one loss per row (sample); the class axis stays whole in scoring and Dask chunks
    elementwise = False
    #: ``reduction="none"`` backward in the adapters: each row's loss depends on its own row only
    none_backward = "scale"
    #: ``run`` computes the Hessian diagonal (``need_hess``) of losses that declare ``hessian``
    hessians = True

    def per_sample_shape(self, spec: LossSpec, params, shapes) -> tuple[int, ...]:
        """The logits' shape without the class axis."""
        x = shapes[0]
        axis = params["axis"] % len(x) if x else 0
        return tuple(d for i, d in enumerate(x) if i != axis)

    def none_rule(self, spec: LossSpec, params, shapes, wanted) -> str:
        return self.none_backward

    def cotangent_shape(self, spec: LossSpec, params, value_shape, grad_ndim: int) -> tuple[int, ...]:
        """The per-row cotangent with a 1 where the class axis was."""
        axis = params["axis"] % grad_ndim
        value_shape = tuple(value_shape)
        return (*value_shape[:axis], 1, *value_shape[axis:])

    def __init__(self) -> None:
        self._drivers: dict[tuple[str, str, Any], Any] = {}
        self._kernels: dict[tuple[Any, bool], Any] = {}

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        ps = []
        if spec.options.get("ignore_index", False):
            ps.append(Param("ignore_index", -100,
                            "Class-index targets equal to this are left out of the loss, the mean and the gradient",
                            type=int))
        ps.append(Param("axis", -1, f"Axis of ``{spec.inputs[0].name}`` that holds the classes", type=int))
        return tuple(ps)

    def driver(self, spec: LossSpec, mode: str, func=None, hessian=None):
        """The compiled driver of ``spec`` for ``mode``, around ``func`` (default ``spec.kernel``).

        ``func`` is one of the kernels a declaration's ``options["kernel_for"]`` picks: a loss may
        give its common case a kernel of its own, which compiles in a fraction of the time of the
        general one (cross entropy without label smoothing or soft-capping). ``hessian``: the
        declaration's Hessian kernel, for a driver that also writes the Hessian diagonal.
        """
        func = spec.kernel if func is None else func
        split = mode == "split"  # "ser" and "par" are one compiled function (run on block ranges)
        key = (spec.name, split, func, hessian)
        drv = self._drivers.get(key)
        if drv is None:
            with _compile_lock:
                drv = self._drivers.get(key)
                if drv is None:
                    kernel = self._kernels.get((func, split))
                    if kernel is None:
                        kernel = self._kernels[func, split] = rowwise_cpu.row_kernel(func, split=split)
                    variant = "" if func is spec.kernel else "__" + func.__name__.lstrip("_")
                    bindings = {"_row_kernel": kernel}
                    if hessian is not None:
                        variant += "__hess"
                        bindings.update(_HESS=True, _hess_kernel=rowwise_cpu.row_kernel(hessian))
                    drv = specialise(
                        rowwise_cpu.rowwise_driver,
                        spec.name + variant + ("__split" if split else ""),
                        bindings,
                        parallel=False,
                        hashed=(func, *(f for pair in rowops.PRIMITIVES.values() for f in pair),
                                *((hessian,) if hessian is not None else ())),
                        cache=spec.options.get("cache", True),
                    )
                    self._drivers[key] = readonly_dispatcher(drv)
        return drv

    @staticmethod
    def kernel_for(spec: LossSpec, params, index_targets: bool):
        """The kernel function for these (checked) parameters and target form."""
        pick = spec.options.get("kernel_for")
        return spec.kernel if pick is None else pick(params, index_targets)

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False,
            need_hess=False, hess_out=None, hess_floor=None):
        """One call: checks, buffers, one fused driver pass. ``need_hess``: also the Hessian
        diagonal with respect to the logits, into ``hess_out`` when given."""
        name = spec.name
        xname, tname = spec.inputs[0].name, spec.inputs[1].name
        if need_hess and spec.hessian is None:
            raise NotImplementedError(f"{name}: no second derivative is declared for this loss")
        logits = as_array(name, xname, inputs[0])
        target = as_array(name, tname, inputs[1])
        if logits.ndim == 0:
            raise ValueError(f"{name}: {xname} needs a class axis; got a 0-d array")
        axis = params["axis"]
        if not -logits.ndim <= axis < logits.ndim:
            raise ValueError(f"{name}: axis {axis} is out of range for {xname} of shape {logits.shape}")
        axis %= logits.ndim
        nc = logits.shape[axis]
        if nc == 0:
            raise ValueError(f"{name}: the class axis (axis {axis}) of {xname} of shape {logits.shape} is empty")
        lead = logits.shape[:axis] + logits.shape[axis + 1:]
        n = math.prod(lead)
        form = self._target_form(spec, logits, target, lead, axis)
        dtype = compute_dtype(logits)

        # -- class weights and labels (all checks before any kernel runs) --------------------
        if weight is not None:
            if not spec.options.get("class_weight", True):
                raise TypeError(f"{name}: takes no class weights (weight=)")
            warr = check_weight(name, weight)
            if warr.shape != (nc,):
                raise ValueError(f"{name}: weight must hold one weight per class, shape ({nc},); got {warr.shape}")
            w = np.ascontiguousarray(warr, dtype=np.float64)
        else:
            w = np.empty(0, np.float64)
        use_ignore = "ignore_index" in params
        ignore_index = int(params["ignore_index"]) if use_ignore else -1
        if form == "index":
            yflat = np.ascontiguousarray(target).reshape(-1)
            bad, count, wsum = _check_labels(yflat, nc, ignore_index, use_ignore, w)
            if bad >= 0:
                where = ", ".join(map(str, np.unravel_index(bad, target.shape))) if target.ndim else ""
                also = f" or ignore_index={ignore_index}" if use_ignore else ""
                raise ValueError(
                    f"{name}: {tname}[{where}] = {yflat[bad]} is not a class index in [0, {nc}){also}"
                )
            y = yflat.astype(np.int64, copy=False)
            if w.size and spec.options.get("mean", "weight") == "weight":
                denom = wsum
            else:
                denom = float(count)
        else:
            check_domains(spec, params, (logits, target))  # probabilities
            y = np.empty(0, np.int64)
            denom = float(n)
        scale = mean_scale(reduction, denom)  # 0 samples or weights: NaN mean, as PyTorch

        # -- rows: (n, classes) C-contiguous, copying only when the layout or dtype requires it --
        xm = _classes_last(logits, axis)
        x2 = np.ascontiguousarray(xm, dtype=dtype).reshape(n, nc)
        private = not np.may_share_memory(x2, logits)
        if form == "probs":
            t2 = np.ascontiguousarray(_classes_last(target, axis), dtype=dtype).reshape(n, nc)
        else:
            t2 = np.empty((0, nc), dtype)
        gdtype = grad_dtype(logits)
        direct = None
        if need_grad:
            if out is not None:
                out = check_outs(name, (xname, tname), (0,), out, (logits, target), weight)[0]
                om = _classes_last(out, axis)
                if out.dtype == dtype and om.flags.c_contiguous:
                    direct = om.reshape(n, nc)
                    same = _address(direct) == _address(x2) and direct.strides == x2.strides
                    if not same and overlaps(direct, x2):
                        x2 = x2.copy()  # out overlaps the logits without being them: read a copy
                        private = True
            if direct is not None:
                g2 = direct
            elif private:
                g2 = x2  # our own copy of the logits: the gradient overwrites it
            else:
                g2 = _buffers.empty((n, nc), dtype)
        else:
            g2 = np.empty((0, nc), dtype)
        if need_hess:
            if hess_out is not None:
                hess_out = check_outs(name, (xname, tname), (0,), hess_out, (logits, target), weight)[0]
                if out is not None and np.may_share_memory(hess_out, out):
                    raise ValueError(f"{name}: out= gives the gradient and the Hessian overlapping buffers")
            h2 = _buffers.empty((n, nc), dtype)  # private: copied into hess_out at the end
        else:
            h2 = np.empty((0, nc), dtype)

        per_row = need_value and reduction == "none"
        aux = need_value and bool(params.get(spec.options.get("aux", ""), False))
        parts = 2 if aux else 1
        loss_rows = np.empty(parts * n if per_row else 0)
        flags = (
            (rowwise_cpu.NEED_GRAD if need_grad else 0)
            | (rowwise_cpu.PER_ROW if per_row else 0)
            | (rowwise_cpu.NEED_STATS if stats else 0)
            | (rowwise_cpu.NEED_AUX if aux else 0)
        )
        nb = rowwise_cpu.nblocks(n, nc)
        stat_rows = _stats.empty_partials(nb if stats else 0)
        total = 0.0
        partials = np.zeros(parts * nb, dtype=np.float64)
        if n:
            mode = _mode(n, nc)
            if need_hess and mode == "split":
                mode = "par"  # the Hessian kernel has no split twin: rows go to threads whole
            kernel = self.kernel_for(spec, params, y.size > 0)
            drv = self.driver(spec, mode, kernel, spec.hessian if need_hess else None)
            args = (x2, y, t2, w, g2, h2, loss_rows, spec.kernel_params(params), scale, ignore_index,
                    flags, partials, stat_rows)
            total = _run_blocks(drv, mode, args, partials, nb)

        value = None
        if need_value:
            out_dtype = logits.dtype if logits.dtype.kind == "f" else np.dtype(np.float64)
            value = reduce_value(reduction, total, loss_rows[:n], scale, n, lead, out_dtype)
            if aux:
                aux_total = 0.0
                for p in partials[nb:]:  # block order, as the driver adds the losses
                    aux_total += p
                value = (value, reduce_value(reduction, aux_total, loss_rows[n:], scale, n, lead, out_dtype))
        def finish(buf, into):
            """A ``(n, classes)`` buffer in the logits' layout, copied into ``into`` when given."""
            full = buf.reshape(xm.shape)
            if axis != logits.ndim - 1:
                full = np.moveaxis(full, -1, axis)
            if into is None:
                return full.astype(gdtype, copy=False)
            into[...] = full
            return into

        grads = ((out if g2 is direct else finish(g2, out)),) if need_grad else ()
        hess = ()
        if need_hess:
            hess = (finish(h2, hess_out),)
            if hess_floor is not None:
                np.maximum(hess[0], hess_floor, out=hess[0])  # NaN stays NaN
        return Result(value, grads, _stats.combine(stat_rows) if stats else None, hess)

    @staticmethod
    def _target_form(spec, logits, target, lead, axis) -> str:
        name = spec.name
        xname, tname = spec.inputs[0].name, spec.inputs[1].name
        allowed = spec.options.get("targets", ("index",))
        is_index = target.dtype.kind in "iu" and "index" in allowed
        if not is_index and "probs" not in allowed:
            raise TypeError(
                f"{name}: {tname} must hold integer class indices, got dtype {target.dtype} "
                "(cast with .astype(int))"
            )
        if is_index:
            if target.shape != lead:
                raise ValueError(
                    f"{name}: class-index {tname} must have shape {lead} ({xname} {logits.shape} without "
                    f"axis {axis}); got {target.shape}"
                )
            return "index"
        if target.shape != logits.shape:
            raise ValueError(
                f"{name}: probability {tname} must have the shape of {xname} {logits.shape}; got {target.shape}"
            )
        return "probs"


    def fast_path(self, spec: LossSpec, params: tuple[Param, ...], *, need_value: bool, need_grad: bool,
                  with_out: bool):
        """A callable ``fast(args, kwargs)`` for the common call, or None when ``spec`` has none.

        The common call (what a classifier's training step passes): ``logits`` and class ``labels``
        positional, 2-D C-contiguous float32/float64 logits with the classes last, 1-D int64/int32
        labels of one per row, no weight, ``reduction`` "mean" or "sum", no statistics, no ``out``,
        no auxiliary value. ``fast`` returns what :class:`~fastloss._api.Loss` returns, or
        ``NotImplemented`` for any other call, which then takes :meth:`run` (which also raises every
        error: the fast path never does). It makes the same driver call as :meth:`run`, so the
        results are the same bits. At 64 x 10 the general path's conversions and checks cost several
        times the kernel.
        """
        if "index" not in spec.options.get("targets", ("index",)):
            return None
        defaults = {p.name: p.default for p in params}
        try:
            if spec.check is not None:
                spec.check(dict(defaults))
            default_kparams = spec.kernel_params(defaults)
            default_kernel = self.kernel_for(spec, defaults, True)
        except Exception:  # a declaration whose defaults need the general path
            return None
        by_name = {p.name: p for p in params}
        known = {"reduction", "weight", *(("out", "stats") if with_out else ())}
        aux = spec.options.get("aux")
        use_ignore = "ignore_index" in by_name
        name = spec.name
        flags = rowwise_cpu.NEED_GRAD if need_grad else 0
        no_weight = np.empty(0, np.float64)
        no_rows = np.empty(0, np.float64)
        no_stats = _stats.empty_partials(0)
        labels = (np.dtype(np.int64), np.dtype(np.int32))
        floats = (np.dtype(np.float32), np.dtype(np.float64))
        f32 = np.dtype(np.float32)
        f32_max = float(np.finfo(np.float32).max)
        min_cached = _buffers.MIN_BYTES
        drivers = {}  # by (mode, kernel): saves the driver lookup's key building per call
        slow = NotImplemented

        def fast(args, kwargs):
            if len(args) != 2:
                return slow
            x, y = args
            if type(x) is not np.ndarray or type(y) is not np.ndarray:
                return slow
            dtype = x.dtype
            if (x.ndim != 2 or dtype not in floats or not x.flags.c_contiguous
                    or y.ndim != 1 or y.dtype not in labels or not y.flags.c_contiguous):
                return slow
            n, nc = x.shape
            if n == 0 or nc == 0 or y.shape[0] != n:
                return slow
            reduction = "mean"
            pvals = defaults
            kparams = default_kparams
            kernel = default_kernel
            if kwargs:
                changed = None
                for key, v in kwargs.items():
                    if key in by_name:
                        if v is not defaults[key]:
                            if changed is None:
                                changed = dict(defaults)
                            changed[key] = v
                    elif key not in known:
                        return slow
                reduction = kwargs.get("reduction", "mean")
                if type(reduction) is not str or (reduction != "mean" and reduction != "sum"):
                    return slow
                if kwargs.get("weight") is not None or kwargs.get("out") is not None or kwargs.get("stats", False):
                    return slow
                if changed is not None:
                    try:
                        for p in params:  # declaration order, as the general path checks them
                            if changed[p.name] is not defaults[p.name]:
                                changed[p.name] = p.check(name, changed[p.name])
                        if spec.check is not None:
                            spec.check(changed)
                    except (TypeError, ValueError):
                        return slow  # the general path raises it, after its own earlier checks
                    if changed["axis"] not in (-1, 1) or (aux and changed.get(aux)):
                        return slow  # another class axis, or a (loss, part) value
                    pvals = changed
                    kparams = spec.kernel_params(pvals)
                    kernel = self.kernel_for(spec, pvals, True)
            ignore_index = int(pvals["ignore_index"]) if use_ignore else -1
            bad, count, _ = _check_labels(y, nc, ignore_index, use_ignore, no_weight)
            if bad >= 0 or count == 0:
                return slow  # the general path raises for the label (an all-ignored mean is NaN there)
            scale = 1.0 / count if reduction == "mean" else 1.0  # mean_scale without weights
            if y.dtype != labels[0]:
                y = y.astype(np.int64)
            if not need_grad:
                g = np.empty((0, nc), dtype)
            elif n * nc * dtype.itemsize < min_cached:
                g = np.empty((n, nc), dtype)
            else:
                g = _buffers.empty((n, nc), dtype)
            mode = _mode(n, nc)
            drv = drivers.get((mode, kernel))
            if drv is None:
                drv = drivers[mode, kernel] = self.driver(spec, mode, kernel)
            nb = rowwise_cpu.nblocks(n, nc)
            partials = np.zeros(nb, dtype=np.float64)
            none = np.empty((0, nc), dtype)
            call = (x, y, none, no_weight, g, none, no_rows, kparams, scale, ignore_index,
                    flags, partials, no_stats)
            total = _run_blocks(drv, mode, call, partials, nb)
            if not need_value:
                return g
            if reduction == "sum":
                value = dtype.type(total)
            else:
                v = total * scale
                if dtype == f32 and f32_max < abs(v) < math.inf:
                    with np.errstate(over="ignore"):  # as reduce_value: the mean overflows to inf
                        value = dtype.type(v)
                else:
                    value = dtype.type(v)
            return (value, g) if need_grad else value

        return fast


ROWWISE = register_kind(RowwiseKind())
