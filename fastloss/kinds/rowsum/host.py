"""Host side of the rowreduce kind: rows, targets, weights, buffers, then one fused driver call.

A rowreduce loss gives one value per row (sample) from sums over the elements of that row, taken
over one or more row-aligned arrays: the distance between two embeddings (contrastive, triplet),
their cosine (cosine embedding), the soft intersection and sizes of a mask (Dice, Jaccard,
Tversky), or the corners of a box (GIoU). Its ``LossSpec.kernel`` is a :class:`RowReduce` (see
:mod:`fastloss.kinds.rowsum.cpu` for the contract of its three stages); its
``LossSpec.options`` say:

``row_inputs``
    Names of the inputs that hold one value per row (targets such as ``1`` similar / ``0``
    dissimilar); they broadcast to the row shape. Every other input is row-aligned: all
    row-aligned inputs have the same shape.
``rows``
    ``"last"`` (default): the last axis is the row, every leading axis indexes rows (embeddings
    ``(N, D)``, a single embedding ``(D,)``, boxes ``(..., 4)``). ``"first"``: the first axis
    indexes rows and all the others form the row (segmentation masks ``(N, H, W)`` or
    ``(N, C, H, W)``, one value per sample).
``row_length``
    A required row length (``4`` for boxes), or absent.
``check_inputs``
    Optional ``check(loss_name, {input name: array})`` raising ``ValueError`` for inputs the
    kernel cannot take (degenerate boxes); runs before any kernel.
``row_check``
    Optional ``row_check(sums, *row_values, *params) -> bool`` (``True``: the row is valid): the
    device form of ``check_inputs``, written with ``math`` only over a row's sums, so that the CUDA
    driver can check rows on the device (the CPU runs ``check_inputs``; the two must agree).
``variant``
    Optional ``variant(params) -> RowReduce or None``: a kernel to use instead of ``spec.kernel``
    for these parameter values (a cheaper special case, such as the Euclidean triplet distance
    without ``pow``); it must compute the same function.
``sample_inputs``
    Optional ``sample(row_shape, rng) -> arrays`` (in input order) of valid float64 inputs, for
    tests and benchmarks when the inputs' domains cannot say what is valid (boxes).

Weights are per row (broadcast to the row shape); ``mean`` divides by the number of rows, or by
the summed weights. ``reduction="none"`` returns one loss per row, shaped like the rows. A
declaration's ``fd_safe`` returns one flag per row (rows away from kinks).

The CUDA driver (:mod:`fastloss.kinds.rowsum.cuda`) compiles the same three stages as device
functions: a group of threads per row (or a block per piece of a long row), each thread summing
``map`` over its strided elements, a shared-memory reduction of the sums, every thread running
``finish`` on the group's sums, then writing the gradients of its elements; the ``variant`` option
picks the kernel on the host.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import _buffers, _config, _launcher, _stats
from ..._call import (
    Result,
    check_domains,
    check_outs,
    check_weight,
    grad_dtype,
    mean_scale,
    reduce_value,
    writes_through,
)
from ..._spec import Discrete, LossSpec, Param
from ..._validate import as_array, check_discrete, check_weight_shape, compute_dtype
from ..base import Layouts, register_kind
from . import cpu as rowreduce_cpu

_compile_lock = threading.Lock()


@dataclass(frozen=True)
class RowReduce:
    """The kernel of a rowreduce loss: three scalar stages written with :mod:`math` only.

    ``map(j, *elements, *params) -> sums`` is applied to element ``j`` of every row and summed
    over the row; ``finish(sums, *row_values, *params) -> (loss, *coefs)`` runs once per row;
    ``grad(j, *elements, coefs, *params) -> grads`` gives, per element, the derivative of the
    row's loss with respect to each differentiable row-aligned input (``coefs`` is the whole
    tuple ``finish`` returned). Elements, row values and parameters arrive as float64.
    """

    map: Callable
    finish: Callable
    grad: Callable

    @property
    def stages(self) -> tuple[Callable, Callable, Callable]:
        return (self.map, self.finish, self.grad)


_ROW_WEIGHT_DOC = """\
weight : array_like, optional
    Non-negative per-row weights, broadcastable to the row shape (one weight per sample)."""

_ROW_REDUCTION_DOC = """\
reduction : {"mean", "sum", "none"}, default "mean"
    ``"mean"``: the mean over rows (``sum(w * l) / sum(w)`` with ``weight``); ``"sum"``: the
    (weighted) sum; ``"none"``: one loss per row (times ``weight``). Gradients are those of the
    reduced loss (of the sum for ``"none"``)."""


def row_options(**options: Any) -> dict[str, Any]:
    """``LossSpec.options`` for a rowreduce loss, with the kind's weight and reduction docs."""
    return {"weight_doc": _ROW_WEIGHT_DOC, "reduction_doc": _ROW_REDUCTION_DOC, **options}


class _Layout:
    """What the kind needs to know about a spec's inputs, computed once per loss."""

    def __init__(self, spec: LossSpec) -> None:
        if not isinstance(spec.kernel, RowReduce):
            raise TypeError(f"{spec.name}: a rowreduce kernel must be a RowReduce(map, finish, grad)")
        opts = spec.options
        self.names = [i.name for i in spec.inputs]
        row_inputs = tuple(opts.get("row_inputs", ()))
        unknown = set(row_inputs) - set(self.names)
        if unknown:
            raise ValueError(f"{spec.name}: row_inputs names unknown inputs {sorted(unknown)}")
        self.per_row = [k for k, n in enumerate(self.names) if n in row_inputs]
        self.aligned = [k for k, n in enumerate(self.names) if n not in row_inputs]
        self.diff = [k for k, i in enumerate(spec.inputs) if i.differentiable]
        if not self.aligned or any(k not in self.aligned for k in self.diff):
            raise ValueError(f"{spec.name}: differentiable inputs must be row-aligned (not row_inputs)")
        self.discrete = [(k, i.domain.values) for k, i in enumerate(spec.inputs) if isinstance(i.domain, Discrete)]
        self.rows = opts.get("rows", "last")
        if self.rows not in ("last", "first"):
            raise ValueError(f"{spec.name}: rows must be 'last' or 'first', got {self.rows!r}")
        self.row_length = opts.get("row_length")
        self.variant = opts.get("variant")
        self.check_inputs = opts.get("check_inputs")


def _mode(n: int, d: int) -> str:
    """``"ser"``, ``"par"`` (parallel over row blocks) or ``"split"`` (parallel over row pieces).

    The choice may depend on the thread count: all three give identical bits.
    """
    if n * d < _config.PARALLEL_THRESHOLD:
        return "ser"
    if d > rowreduce_cpu.SEGMENT and n < 2 * _launcher.num_threads():
        return "split"
    return "par"


class RowReduceKind:
    """Losses with one value per row from sums over the row's elements in several aligned arrays."""

    name = "rowreduce"
    #: one loss per row; rows stay whole in scoring and Dask chunks
    elementwise = False
    #: ``reduction="none"`` backward in the adapters: each row's loss depends on its own row only
    none_backward = "scale"

    def per_sample_shape(self, spec: LossSpec, params, shapes) -> tuple[int, ...]:
        """The row-aligned inputs' shape without the row axes (the first axis for masks)."""
        per_row = spec.options.get("row_inputs", ())
        x = next(s for s, i in zip(shapes, spec.inputs) if i.name not in per_row and s is not None)
        return tuple(x[:1]) if spec.options.get("rows", "last") == "first" else tuple(x[:-1])

    def none_rule(self, spec: LossSpec, params, shapes, wanted) -> str:
        return self.none_backward

    def cotangent_shape(self, spec: LossSpec, params, value_shape, grad_ndim: int) -> tuple[int, ...]:
        """The per-row cotangent followed by 1s (rows lead in both layouts)."""
        value_shape = tuple(value_shape)
        return value_shape + (1,) * (grad_ndim - len(value_shape))

    def __init__(self) -> None:
        self._drivers: dict[tuple[Any, str], Any] = {}
        self._layout = Layouts(_Layout)

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        return ()

    def driver(self, spec: LossSpec, stats: bool = False, kernel: RowReduce | None = None):
        """The compiled driver of ``spec`` (or of one of its kernel variants), for every mode.

        ``stats``: with gradient statistics (compiled only when a call asks for them).
        """
        k = spec.kernel if kernel is None else kernel
        key = (k, stats)
        drv = self._drivers.get(key)
        if drv is None:
            with _compile_lock:
                drv = self._drivers.get(key)
                if drv is None:
                    length = self._layout(spec).row_length
                    drv = self._drivers[key] = rowreduce_cpu.build(
                        k, spec.name, short=length is not None and length < rowreduce_cpu.LANES, stats=stats,
                        cache=spec.options.get("cache", True))
        return drv

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False):
        name = spec.name
        L = self._layout(spec)
        arrays = [as_array(name, n, x) for n, x in zip(L.names, inputs)]
        first = L.aligned[0]
        shape, lead, d = self._shapes(name, L, arrays)
        n = math.prod(lead)
        for k, values in L.discrete:
            check_discrete(name, L.names[k], arrays[k], values)
        check_domains(spec, params, arrays)
        if L.check_inputs is not None:
            L.check_inputs(name, dict(zip(L.names, arrays)))
        dtype = compute_dtype(arrays[first])
        xs = tuple(np.ascontiguousarray(arrays[k], dtype=dtype).reshape(n, d) for k in L.aligned)
        ys = tuple(np.ascontiguousarray(np.broadcast_to(arrays[k], lead), dtype=np.float64).reshape(n)
                   for k in L.per_row)

        denom = float(n)
        if weight is not None:
            warr = check_weight(name, weight)
            check_weight_shape(name, warr, lead)
            w = np.ascontiguousarray(np.broadcast_to(warr, lead), dtype=np.float64).reshape(n)
            if reduction == "mean":
                denom = float(np.sum(w))
        else:
            w = np.empty(0, np.float64)
        scale = mean_scale(reduction, denom)

        outs = check_outs(name, L.names, L.diff, out, arrays, weight) if need_grad else None
        if need_grad:
            gs = tuple(self._grad_buffer(o, arrays[k], dtype, n, d) for o, k in zip(outs, L.diff))
        else:
            gs = tuple(np.empty((0, d), dtype) for _ in L.diff)
        per_row = need_value and reduction == "none"
        loss_rows = np.empty(n if per_row else 0)
        stat_rows = _stats.empty_partials(rowreduce_cpu.nstats(n, d) if stats else 0)
        total = 0.0
        if n:
            mode = _mode(n, d)
            if mode == "split" and d <= rowreduce_cpu.SEGMENT:
                mode = "par"  # the split driver's statistics have one row per piece of a long row
            flags = (
                (rowreduce_cpu.NEED_GRAD if need_grad else 0)
                | (rowreduce_cpu.PER_ROW if per_row else 0)
                | (rowreduce_cpu.NEED_STATS if stats else 0)
            )
            kernel = L.variant(params) if L.variant is not None else None
            drv = self.driver(spec, stats, kernel)
            total = rowreduce_cpu.launch(drv, xs, ys, w, gs, loss_rows, spec.kernel_params(params), scale, flags,
                                         stat_rows, mode)

        value = None
        if need_value:
            value = reduce_value(reduction, total, loss_rows, scale, n, lead, grad_dtype(arrays[first]))
        grads = ()
        if need_grad:
            grads = tuple(self._finish_grad(g, arrays[k], shape, o) for g, k, o in zip(gs, L.diff, outs))
        return Result(value, grads, _stats.combine(stat_rows) if stats else None)

    @classmethod
    def _shapes(cls, name: str, L: _Layout, arrays) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """``(shape, lead, d)``: the row-aligned inputs' common shape, the shape of their rows'
        index and the row length, after checking that the per-row inputs hold one value per row.

        ``arrays`` (host or device arrays) are the inputs in declaration order."""
        first = L.aligned[0]
        shape = tuple(arrays[first].shape)
        for k in L.aligned[1:]:
            if tuple(arrays[k].shape) != shape:
                raise ValueError(
                    f"{name}: {L.names[k]} has shape {tuple(arrays[k].shape)} but {L.names[first]} has shape {shape}; "
                    "row-aligned inputs must have the same shape (the same rows, of the same length)"
                )
        lead, d = cls._row_shape(name, L, shape, L.names[first])
        for k in L.per_row:
            cls._check_row_input(name, L.names[k], arrays[k], lead)
        return shape, lead, d

    @staticmethod
    def _row_shape(name: str, L: _Layout, shape: tuple[int, ...], xname: str) -> tuple[tuple[int, ...], int]:
        if len(shape) == 0:
            raise ValueError(f"{name}: {xname} needs at least one axis (the row); got a 0-d array")
        if L.rows == "last":
            lead, d = shape[:-1], shape[-1]
        else:
            lead, d = shape[:1], math.prod(shape[1:])
        if L.row_length is not None and d != L.row_length:
            raise ValueError(f"{name}: the rows of {xname} must have length {L.row_length}; got shape {shape}")
        return lead, d

    @staticmethod
    def _check_row_input(name: str, tname: str, y: np.ndarray, lead: tuple[int, ...]) -> None:
        try:
            ok = np.broadcast_shapes(y.shape, lead) == lead
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name}: {tname} must hold one value per row, shape {lead} (or broadcastable to it); "
                f"got shape {y.shape}"
            )

    @staticmethod
    def _grad_buffer(out, own, dtype, n: int, d: int) -> np.ndarray:
        """Write straight into ``out`` when it is already the C-contiguous buffer the driver needs and
        either is its own input exactly or overlaps no input (see :func:`fastloss._call.writes_through`)."""
        if out is not None and out.dtype == dtype and out.flags.c_contiguous and writes_through(out, own):
            return out.reshape(n, d)
        return _buffers.empty((n, d), dtype)

    @staticmethod
    def _finish_grad(g: np.ndarray, x: np.ndarray, shape, out) -> np.ndarray:
        if out is not None:
            if not np.may_share_memory(g, out):
                out[...] = g.reshape(shape)
            return out
        gdtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        return g.reshape(shape).astype(gdtype, copy=False)


ROWREDUCE = register_kind(RowReduceKind())
