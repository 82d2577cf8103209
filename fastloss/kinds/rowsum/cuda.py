"""The rowreduce kind on CUDA arrays: the declaration's three stages, compiled for the device.

A rowreduce loss is a :class:`~fastloss.kinds.rowsum.host.RowReduce` of three scalar ``math``-only stages
(the contract is in :mod:`fastloss.kinds.rowsum.cpu`)::

    map(j, *elements, *params)         -> (s_0, ..., s_K-1)     summed over the row
    finish(sums, *row_values, *params) -> (loss, c_1, ..., c_M)  once per row
    grad(j, *elements, coefs, *params) -> (g_0, ..., g_G-1)      per element

The CUDA driver compiles the same three functions with ``cuda.jit(device=True)`` and calls them
from kernels generated for the loss's arity (row-aligned inputs, per-row inputs, sums, gradients,
parameters); one driver for the kind, nothing here names a loss. Elements are read in their storage
dtype, rounded to the compute dtype (float32 for float16/float32 inputs, as the CPU casts them) and
handed to the stages as float64, as on the CPU; sums accumulate in float64.

``fused`` (the usual path)
    A group of ``tpr`` threads shares one row (``tpr`` a power of two: one thread for boxes of 4,
    a warp for 128-wide embeddings, the whole block for long rows; see :func:`threads_per_row`),
    a block holds ``THREADS / tpr`` rows, and rows are handed out grid-stride. Each thread sums
    ``map`` over its strided elements, the group folds its ``K`` sums in a fixed shared-memory tree,
    every thread of the group runs ``finish`` on the same sums (the same bits), then writes the
    gradients of its elements, scaled for the reduction and the row's weight. The group's first
    thread adds the row's loss to its own running total; the block folds those into one partial.
``split`` (few long rows)
    When one block per row would leave the GPU mostly idle (fewer than ``config.ROW_SPLIT_BLOCKS``
    blocks) and rows span several ``config.ROW_PIECE``-element pieces, one block sums each
    (row, piece), one thread per row adds its pieces in piece order and finishes the row, and one
    block per (row, piece) writes the gradients (finishing the row again from its stored sums).

Every order of addition is fixed by the shape and ``config`` (``THREADS``, ``MAX_BLOCKS``,
``ROW_PIECE``, ``ROW_SPLIT_BLOCKS``): deterministic, no float atomics; the block partials go to the
shared ordered :func:`~fastloss.device.kernels.finalize`. The gradient store is the last read of
its element by the same thread, so ``out=`` may be the input itself.

Checks (:mod:`fastloss.device.checks`: queued on the device, read back with one wait per call, and
only for calls that need checking). Discrete inputs (pair targets), declared domains (Dice's mask
in [0, 1]) and negative weights, with the host's messages. A declaration's ``check_inputs`` is a
host function; its device form is the option ``row_check(sums, *row_values, *params) -> bool``
(``True``: the row is valid). With ``config.CHECK_LABELS`` a check pass runs first (sums and
``row_check`` only, nothing written) and records its first failing row with the other checks: on
failure the inputs are copied to the host and ``check_inputs`` raises the CPU's own ``ValueError``.
Without it nothing waits, and a failing row gets a NaN loss and NaN gradients. A declaration with
``check_inputs`` but no ``row_check`` runs ``check_inputs`` on a host copy of the inputs (when
``CHECK_LABELS`` is on); one with only a ``row_check`` raises an error naming the failing row.

``out=`` follows :func:`fastloss._call.check_outs`; one that overlaps its own input without being it
is computed into a private buffer (other threads may still read the rows it would overwrite).

:func:`launch` runs a :class:`RowReduce` on prepared device arrays; the similarity kind uses it
for the normalisation of its embeddings and that normalisation's gradient.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from numba import cuda, float32, float64, int64, uint64

from ..._call import check_domain, check_outs, check_weight, checked_domains, grad_dtype, mean_scale
from ..._flags import CHECK_ROWS, NEED_GRAD, PER_ROW, SCALE_BY_WSUM
from ..._validate import check_weight_shape, compute_dtype
from ...device import arrays as device
from ...device import config, kernels
from ...device.arrays import U, reduced_value
from ...device.checks import Checks
from .. import base as _kinds
from ..pointwise.cuda import _gathered, operand, result, sum_weights
from .host import ROWREDUCE, RowReduce

#: Elements per thread the fused kernel aims at when it picks the threads per row.
ROW_ITEMS = 4

_F64 = np.dtype(np.float64)
_SCALARS = (float, int, bool, np.generic)


# -- generated kernels ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arity:
    """What a generated kernel's signature depends on."""

    aligned: int  # row-aligned inputs
    rows: int  # per-row inputs
    sums: int  # K, the length of map's tuple
    grads: int  # G, the length of grad's tuple
    params: int
    check: bool  # a row_check stage


def _ind(lines, n: int) -> str:
    return "\n".join(" " * n + line for line in lines)


class _Source:
    """Pieces of the generated kernels' source for one :class:`Arity`."""

    def __init__(self, a: Arity) -> None:
        self.a = a
        self.xs = "".join(f"x{k}, " for k in range(a.aligned))
        self.ys = "".join(f"y{k}, b{k}, " for k in range(a.rows))
        self.gs = "".join(f"g{k}, " for k in range(a.grads))
        self.ps = "".join(f"p{k}, " for k in range(a.params))
        self.pargs = "".join(f", p{k}" for k in range(a.params))
        self.yargs = "".join(f", yv{k}" for k in range(a.rows))
        self.elems = ", ".join(f"float64(REAL(x{k}[r, j]))" for k in range(a.aligned))
        self.j = "int64(j)"  # the stages see a signed element index, whatever the loop uses

    def zero(self):
        return [f"a{k} = 0.0" for k in range(self.a.sums)]

    def accumulate(self):
        call = f"m = _map({self.j}, {self.elems}{self.pargs})"
        return [call, *(f"a{k} += float64(m[{k}])" for k in range(self.a.sums))]

    def fold(self, width: str, index: str):
        """The sums ``a0, a1, ...`` of each group of ``width`` threads folded in a fixed tree order
        into ``buf[k, t]`` of the group's first thread (``index``: the thread's place in its group)."""
        to_shared = [f"buf[{k}, t] = a{k}" for k in range(self.a.sums)]
        tree = [f"        buf[{k}, t] += buf[{k}, t + half]" for k in range(self.a.sums)]
        return [*to_shared, "cuda.syncthreads()", f"half = {width} >> uint64(1)", "while half > uint64(0):",
                f"    if {index} < half:", *tree, "    cuda.syncthreads()", "    half >>= uint64(1)"]

    def row_values(self):
        return [f"yv{k} = float64(y{k}[r * b{k}])" for k in range(self.a.rows)]

    def check(self, sums: str, record: str | None):
        """``ok``: whether the row passes ``row_check``; ``record``: the condition under which a
        failing row is recorded in ``bad`` (None: not recorded)."""
        if not self.a.check:
            return ["ok = True"]
        lines = ["ok = True", "if check_rows:", f"    ok = _check({sums}{self.yargs}{self.pargs})"]
        if record is not None:
            lines += [f"    if not ok{record}:", "        cuda.atomic.min(bad, 0, int64(r))"]
        return lines

    def grads(self, stride: str):
        store = [f"g{k}[r, j] = gv[{k}] * sw" for k in range(self.a.grads)]
        nan = [f"g{k}[r, j] = math.nan" for k in range(self.a.grads)]
        return (["while j < hi:", "    if ok:", f"        gv = _grad({self.j}, {self.elems}, res{self.pargs})"]
                + ["        " + s for s in store] + ["    else:"] + ["        " + s for s in nan]
                + [f"    j += {stride}"])


_SCALE = '''
    s = scale
    if flags & SCALE_BY_WSUM:  # weighted mean: the weight sum was reduced on the device
        ws = wsum[0]
        s = 1.0 / ws if ws != 0.0 else math.inf'''

#: the loop over tasks (row r, piece [lo, hi) of it), one block per task
_TASKS = '''
    ntask = n * npieces
    q = uint64(cuda.blockIdx.x)
    while q < ntask:
        r = q // npieces
        lo = (q - r * npieces) * piece
        hi = min(lo + piece, d)'''

_BLOCK_TOTAL = '''
    total = block_sum(acc)
    if t == uint64(0):
        partials[cuda.blockIdx.x] = total'''


def fused_source(a: Arity) -> str:
    src = _Source(a)
    finish = f"res = _finish(sums{src.yargs}{src.pargs})"
    row = ([*src.row_values(), finish, *src.check("sums", " and lane == uint64(0)")]
           + ["wr = float64(w[r * bw]) if weighted else 1.0",
              "lr = float64(res[0]) * wr if ok else math.nan",
              "if lane == uint64(0):", "    acc += lr", "    if per_row:", "        loss_rows[r] = lr",
              "if need_grad:", "    sw = s * wr", "    j = lane", "    hi = d"]
           + ["    " + line for line in src.grads("tpr")])
    return f'''
def fused(n, d, shift, {src.xs}{src.ys}w, bw, {src.gs}loss_rows, {src.ps}scale, wsum, flags, partials, bad):
    """Rows r < n of length d, tpr = 2**shift threads per row; see the module docstring.

    Indices are unsigned 64-bit (no wrap-around code; n, d, shift and the b's come as uint64)."""
    buf = cuda.shared.array(({a.sums}, THREADS), float64)
    t = uint64(cuda.threadIdx.x)
    tpr = uint64(1) << shift
    lane = t & (tpr - uint64(1))
    group = t >> shift
    lead = t - lane{_SCALE}
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_row = (flags & PER_ROW) != 0
    check_rows = (flags & CHECK_ROWS) != 0
    acc = 0.0
    rpb = uint64(THREADS) >> shift
    base = uint64(cuda.blockIdx.x) * rpb
    step = uint64(cuda.gridDim.x) * rpb
    while base < n:  # the same trip count in every thread of the block (syncthreads inside)
        r = base + group
        active = r < n
{_ind(src.zero(), 8)}
        if active:
            j = lane
            while j < d:
{_ind(src.accumulate(), 16)}
                j += tpr
{_ind(src.fold("tpr", "lane"), 8)}
        sums = ({", ".join(f"buf[{k}, lead]" for k in range(a.sums))},)
        cuda.syncthreads()
        if active:
{_ind(row, 12)}
        base += step{_BLOCK_TOTAL}
'''


def piece_sums_source(a: Arity) -> str:
    src = _Source(a)
    store = [f"part[q, {k}] = buf[{k}, 0]" for k in range(a.sums)]
    return f'''
def piece_sums(n, d, npieces, piece, {src.xs}{src.ps}part):
    """part[q] = the K sums of task q = (row, piece), one block per task (uint64 indices)."""
    buf = cuda.shared.array(({a.sums}, THREADS), float64)
    t = uint64(cuda.threadIdx.x){_TASKS}
{_ind(src.zero(), 8)}
        j = lo + t
        while j < hi:
{_ind(src.accumulate(), 12)}
            j += uint64(THREADS)
{_ind(src.fold("uint64(THREADS)", "t"), 8)}
        if t == uint64(0):
{_ind(store, 12)}
        cuda.syncthreads()
        q += uint64(cuda.gridDim.x)
'''


def piece_rows_source(a: Arity) -> str:
    src = _Source(a)
    add = [f"a{k} += part[r * npieces + p, {k}]" for k in range(a.sums)]
    keep = [f"sums[r, {k}] = a{k}" for k in range(a.sums)]
    tot = ", ".join(f"a{k}" for k in range(a.sums))
    row = [*keep, f"tot = ({tot},)", *src.row_values(), f"res = _finish(tot{src.yargs}{src.pargs})",
           *src.check("tot", ""),
           "wr = float64(w[r * bw]) if weighted else 1.0", "lr = float64(res[0]) * wr if ok else math.nan",
           "acc += lr", "if per_row:", "    loss_rows[r] = lr"]
    return f'''
def piece_rows(n, npieces, part, {src.ys}w, bw, sums, loss_rows, {src.ps}flags, partials, bad):
    """One thread per row: its pieces' sums added in piece order, the row finished."""
    t = uint64(cuda.threadIdx.x)
    weighted = w.size > 0
    per_row = (flags & PER_ROW) != 0
    check_rows = (flags & CHECK_ROWS) != 0
    acc = 0.0
    r = uint64(cuda.blockIdx.x) * uint64(THREADS) + t
    step = uint64(cuda.gridDim.x) * uint64(THREADS)
    while r < n:
{_ind(src.zero(), 8)}
        for p in range(npieces):
{_ind(add, 12)}
{_ind(row, 8)}
        r += step{_BLOCK_TOTAL}
'''


def piece_grads_source(a: Arity) -> str:
    src = _Source(a)
    tot = ", ".join(f"sums[r, {k}]" for k in range(a.sums))
    row = [f"tot = ({tot},)", *src.row_values(), f"res = _finish(tot{src.yargs}{src.pargs})",
           *src.check("tot", None), "wr = float64(w[r * bw]) if weighted else 1.0", "sw = s * wr", "j = lo + t",
           *src.grads("uint64(THREADS)")]
    return f'''
def piece_grads(n, d, npieces, piece, {src.xs}{src.ys}w, bw, {src.gs}sums, {src.ps}scale, wsum, flags, bad):
    """One block per task (row, piece): the row finished again from its sums, its gradients written."""
    t = uint64(cuda.threadIdx.x){_SCALE}
    weighted = w.size > 0
    check_rows = (flags & CHECK_ROWS) != 0{_TASKS}
{_ind(row, 8)}
        q += uint64(cuda.gridDim.x)
'''


SOURCES = {"fused": fused_source, "piece_sums": piece_sums_source, "piece_rows": piece_rows_source,
           "piece_grads": piece_grads_source}


def launch_bounds(threads: int) -> tuple[int, int]:
    """As the rowwise kernels: a register budget for ``config.ROW_SM_THREADS`` resident threads per SM
    (``finish`` inlines all of a loss's per-row math into the kernel)."""
    return threads, max(1, config.ROW_SM_THREADS // threads)


class _Compiler:
    """Device functions of the stages and the generated kernels, memoised (or fresh, for PTX)."""

    def __init__(self, fresh: bool = False) -> None:
        self.fresh = fresh
        self._device: dict[int, tuple] = {}
        self._kernels: dict[tuple, object] = {}
        self._lock = threading.RLock()

    def device_function(self, func):
        func = getattr(func, "py_func", func)
        hit = self._device.get(id(func))
        if hit is None:
            hit = self._device[id(func)] = (func, cuda.jit(device=True)(func))  # keeps func alive: ids stay unique
        return hit[1]

    def python_kernel(self, which: str, kernel: RowReduce, check, a: Arity, real: str, threads: int):
        """The generated kernel ``which`` as a Python function over a toolkit's globals (to jit or for PTX)."""
        tk = kernels.Toolkit(threads) if self.fresh else kernels.toolkit(threads)
        extra = {
            "_map": self.device_function(kernel.map),
            "_finish": self.device_function(kernel.finish),
            "_grad": self.device_function(kernel.grad),
            "REAL": float32 if real == "float32" else float64,
            "NEED_GRAD": NEED_GRAD, "PER_ROW": PER_ROW, "CHECK_ROWS": CHECK_ROWS, "SCALE_BY_WSUM": SCALE_BY_WSUM,
            "float64": float64, "int64": int64, "uint64": uint64, "math": math,
        }
        if check is not None:
            extra["_check"] = self.device_function(check)
        return tk.define(SOURCES[which](a), which, f"<fastloss cuda rowreduce {which} {a} {real}>", extra=extra)

    def kernel(self, which: str, kernel: RowReduce, check, a: Arity, real: str, threads: int):
        key = (which, kernel.stages, check, a, real, threads)
        kern = self._kernels.get(key)
        if kern is None:
            with self._lock:
                kern = self._kernels.get(key)
                if kern is None:
                    fn = self.python_kernel(which, kernel, check, a, real, threads)
                    opts = {} if device.simulated() else {"launch_bounds": launch_bounds(threads)}
                    kern = self._kernels[key] = cuda.jit(fn, **opts)
        return kern


_COMPILER = _Compiler()


_SUM_COUNTS: dict[tuple, tuple] = {}


def count_sums(kernel: RowReduce, n_aligned: int, n_params: int) -> int:
    """``K``, the number of sums ``kernel.map`` returns (from a call on the host, else from its type)."""
    fn = getattr(kernel.map, "py_func", kernel.map)
    key = (id(fn), n_aligned, n_params)
    hit = _SUM_COUNTS.get(key)
    if hit is not None:
        return hit[1]
    try:
        with np.errstate(all="ignore"):
            k = len(fn(0, *([0.5] * n_aligned), *([0.5] * n_params)))
    except Exception:  # a map that only runs compiled: ask Numba for its return type
        from numba import njit
        from numba.core import types

        disp = njit(fn)
        disp.compile((types.int64,) + (types.float64,) * (n_aligned + n_params))
        k = len(disp.nopython_signatures[0].return_type)
    _SUM_COUNTS[key] = (fn, k)  # keeps fn alive: its id stays unique
    return k


def threads_per_row(d: int, threads: int) -> int:
    """Threads sharing a row in the fused kernel: a power of two near ``d / ROW_ITEMS``, at most ``threads``."""
    want = max(1, -(-d // ROW_ITEMS))
    p = 1
    while p < want and p < threads:
        p *= 2
    return p


# -- running a RowReduce on device arrays --------------------------------------------------------


def launch(pl, kernel: RowReduce, xs, ys, w, bw: int, gs, loss_rows, kparams, scale: float, wsum, flags: int,
           *, check=None, bad=None):
    """Run ``kernel`` over rows: returns the device array of per-block partial sums of the row losses.

    Parameters
    ----------
    pl : device.Placement
    kernel : RowReduce
    xs : list of (n, d) C-contiguous device arrays
        The row-aligned inputs.
    ys : list of (flat device array, stride multiplier)
        The per-row inputs (``b = 0`` repeats one value), read as float64.
    w, bw : flat device array (empty for none) and its stride multiplier
        Row weights.
    gs : list of (n, d) C-contiguous device arrays, or of (0, d) arrays without ``NEED_GRAD``
        One per value ``kernel.grad`` returns; each may be the row-aligned input it belongs to.
    loss_rows : flat (n,) device array, or empty without ``PER_ROW``
    kparams : tuple of float
    scale, wsum : float and a one-element float64 device array
        The gradient's factor (or ``1 / wsum[0]`` with ``SCALE_BY_WSUM``).
    flags : int
        ``NEED_GRAD | PER_ROW | CHECK_ROWS | SCALE_BY_WSUM``.
    check : callable, optional
        ``row_check(sums, *row_values, *params) -> bool``, with ``bad`` a one-element int64 array
        that receives the first failing row (an integer atomic; the row gets NaN loss and gradients).
    """
    n, d = (int(s) for s in xs[0].shape)
    tk = pl.kernels()
    threads = tk.threads
    real = compute_dtype(xs[0]).name
    a = Arity(len(xs), len(ys), count_sums(kernel, len(xs), len(kparams)), len(gs), len(kparams), check is not None)
    if bad is None:
        bad = pl.scratch(0, np.int64)
    yargs = []
    for y, b in ys:
        yargs += [y, U(b)]
    tpr = threads_per_row(d, threads)
    rpb = threads // tpr
    piece = max(1, int(config.ROW_PIECE))
    npieces = -(-d // piece)
    fused_blocks = -(-n // rpb)
    if npieces > 1 and fused_blocks < config.ROW_SPLIT_BLOCKS:
        return _split(pl, kernel, check, a, real, threads, n, d, npieces, piece, xs, yargs, w, U(bw), gs,
                      loss_rows, kparams, scale, wsum, flags, bad)
    blocks = max(1, min(fused_blocks, config.MAX_BLOCKS))
    partials = pl.scratch(blocks, _F64)
    if n:
        kern = _COMPILER.kernel("fused", kernel, check, a, real, threads)
        kern[blocks, threads, pl.stream](U(n), U(d), U(tpr.bit_length() - 1), *xs, *yargs, w, U(bw), *gs, loss_rows,
                                         *kparams, scale, wsum, flags, partials, bad)
    return partials


def _split(pl, kernel, check, a, real, threads, n, d, npieces, piece, xs, yargs, w, bw, gs, loss_rows, kparams,
           scale, wsum, flags, bad):
    ntask = n * npieces
    tblocks = max(1, min(ntask, config.MAX_BLOCKS))
    part = pl.empty((ntask, a.sums), _F64)[1]
    sums = pl.empty((n, a.sums), _F64)[1]
    rblocks = max(1, min(-(-n // threads), config.MAX_BLOCKS))
    partials = pl.scratch(rblocks, _F64)
    s = pl.stream
    un, ud, unp, upc = U(n), U(d), U(npieces), U(piece)
    _COMPILER.kernel("piece_sums", kernel, check, a, real, threads)[tblocks, threads, s](
        un, ud, unp, upc, *xs, *kparams, part)
    _COMPILER.kernel("piece_rows", kernel, check, a, real, threads)[rblocks, threads, s](
        un, unp, part, *yargs, w, bw, sums, loss_rows, *kparams, flags, partials, bad)
    if flags & NEED_GRAD:
        _COMPILER.kernel("piece_grads", kernel, check, a, real, threads)[tblocks, threads, s](
            un, ud, unp, upc, *xs, *yargs, w, bw, *gs, sums, *kparams, scale, wsum, flags, bad)
    return partials


# -- the kind --------------------------------------------------------------------------------------


class CudaRowReduce(_kinds.CudaKind):
    """The rowreduce kind for CUDA arrays (same contract as :class:`fastloss.kinds.rowsum.host.RowReduceKind`)."""

    name = "rowreduce"

    def ptx(self, loss, dtype: np.dtype, cc: tuple[int, int], threads: int, labels=None) -> dict[str, str]:
        """PTX of the kernels of ``loss`` (and of its default parameters' variant) for inputs of ``dtype``."""
        from numba.cuda import types as nbt
        from numba.cuda.np.numpy_support import from_dtype

        spec = loss.spec
        L = ROWREDUCE._layout(spec)
        real = compute_dtype(np.empty(0, dtype)).name
        defaults = {p.name: p.default for p in spec.params}
        kparams = spec.kernel_params(defaults)
        check = spec.options.get("row_check")
        found = {"": spec.kernel}
        if L.variant is not None and L.variant(defaults) is not None:
            found["_variant"] = L.variant(defaults)
        comp = _Compiler(fresh=True)

        def arr(dt, nd=1):
            return nbt.Array(from_dtype(np.dtype(dt)), nd, "C")

        i64, u64, f64 = nbt.int64, nbt.uint64, nbt.float64
        xs = [arr(dtype, 2)] * len(L.aligned)
        ys = [arr(dtype), u64] * len(L.per_row)
        gs = [arr(dtype, 2)] * len(L.diff)
        ps = [f64] * len(kparams)
        w = [arr(np.float32), u64]
        out: dict[str, str] = {}
        for suffix, kernel in found.items():
            a = Arity(len(L.aligned), len(L.per_row), count_sums(kernel, len(L.aligned), len(kparams)),
                      len(L.diff), len(kparams), check is not None)
            sigs = {
                "fused": (u64, u64, u64, *xs, *ys, *w, *gs, arr(dtype), *ps, f64, arr(np.float64), i64,
                          arr(np.float64), arr(np.int64)),
                "piece_sums": (u64, u64, u64, u64, *xs, *ps, arr(np.float64, 2)),
                "piece_rows": (u64, u64, arr(np.float64, 2), *ys, *w, arr(np.float64, 2), arr(dtype), *ps, i64,
                               arr(np.float64), arr(np.int64)),
                "piece_grads": (u64, u64, u64, u64, *xs, *ys, *w, *gs, arr(np.float64, 2), *ps, f64,
                                arr(np.float64), i64, arr(np.int64)),
            }
            if L.row_length is not None and L.row_length <= config.ROW_PIECE:
                sigs = {"fused": sigs["fused"]}  # rows this short never split: the other kernels never run
            for which, sig in sigs.items():
                fn = comp.python_kernel(which, kernel, check, a, real, threads)
                code = cuda.compile_ptx(fn, sig, cc=cc, launch_bounds=launch_bounds(threads))[0]
                out[f"rowreduce_{which}{suffix}"] = code
        return out

    # -- a call ----------------------------------------------------------------------------------

    def _run(self, pl, spec, inputs, params, weight, reduction, need_value, need_grad, out, stats):
        name = spec.name
        L = ROWREDUCE._layout(spec)
        views = [pl.first]
        for nm, x in zip(L.names[1:], inputs[1:]):
            v = pl.view(nm, x)
            if isinstance(x, _SCALARS):  # a number: 0-d, as np.asarray gives the CPU kind
                v = device.with_shape(v, ())
            views.append(v)
        shape, lead, d = ROWREDUCE._shapes(name, L, views)
        n = math.prod(lead)
        x0 = views[L.aligned[0]]
        out_dtype = grad_dtype(x0)

        # -- shapes and buffers (host checks) ------------------------------------------------------
        wview = None
        if weight is not None:
            wview = pl.view("weight", weight)
            if isinstance(weight, _SCALARS):
                wview = device.with_shape(wview, ())
            check_weight_shape(name, wview, lead)
        outs = [None] * len(L.diff)
        if need_grad:
            outs = check_outs(name, L.names, L.diff, out, views, wview, check=device.out_checker(name, pl))

        # rows: (n, d) C-contiguous views, copying only inputs that are not
        xs = [self._rows(pl, views[k], shape, n, d) for k in L.aligned]
        ys = [operand(pl, views[k], lead) for k in L.per_row]
        kernel = L.variant(params) if L.variant is not None else None
        kernel = spec.kernel if kernel is None else kernel
        kparams = tuple(float(p) for p in spec.kernel_params(params))
        check = spec.options.get("row_check")

        # -- values, in the host's order (queued; one wait, when any) ------------------------------
        checks = Checks(pl, name)
        for k, values in L.discrete:
            checks.discrete(L.names[k], views[k], values)
        for k, dom in checked_domains(spec, params):
            if isinstance(inputs[k], _SCALARS):  # a number: checked here, nothing to wait for
                check_domain(name, L.names[k], np.asarray(inputs[k]), dom)
            else:
                checks.domain(L.names[k], views[k], dom)
        if checks.on and n and (L.check_inputs is not None or check is not None):
            self._check_rows(checks, spec, L, views, kernel, check, xs, ys, kparams, lead)
        if isinstance(weight, _SCALARS):
            check_weight(name, weight)
        else:
            checks.weight(wview)
        checks.raise_first()

        flags = 0
        scale = mean_scale(reduction, float(n))
        wsum = pl.scratch(1, _F64)
        if wview is not None:
            w, bw = operand(pl, wview, lead)
            if reduction == "mean":
                sum_weights(pl, w, bw, n, wsum)  # the weighted mean's denominator stays on the device
                flags |= SCALE_BY_WSUM
        else:
            w, bw = pl.scratch(0, _F64), 0

        # gradient buffers: out= itself when the kernel can write it, else ours
        gbufs = []  # (native or None, (n, d) view, written straight into out=)
        for j, k in enumerate(L.diff):
            x = views[k]
            gdtype = grad_dtype(x)
            o = outs[j]
            if o is not None and device.c_contiguous(o[1]) and device.writes_through(o[1], x):
                gbufs.append((None, device.reshaped(o[1], (n, d)), True))
            elif need_grad:
                native, view = pl.empty(shape, gdtype)
                gbufs.append((native, device.reshaped(view, (n, d)), False))
            else:
                gbufs.append((None, device.reshaped(pl.scratch(0, gdtype), (0, d)), False))
        per_row = need_value and reduction == "none"
        loss_native = None
        if per_row:
            loss_native, lview = pl.empty(lead, out_dtype)
            loss_rows = device.flat(lview) if len(lead) else device.reshaped(lview, (1,))
        else:
            loss_rows = pl.scratch(0, out_dtype)
        flags |= (NEED_GRAD if need_grad else 0) | (PER_ROW if per_row else 0) | (CHECK_ROWS if check else 0)
        partials = None
        if n:
            bad = pl.scratch(1, np.int64) if check is not None else None  # failing rows: NaN, not read back
            partials = launch(pl, kernel, xs, ys, w, bw, [g for _, g, _ in gbufs], loss_rows, kparams, scale, wsum,
                              flags, check=check, bad=bad)

        value = (reduced_value(pl, reduction, loss_native, partials, n, out_dtype, scale, wsum, flags)
                 if need_value else None)
        flat = [(native, device.reshaped(g, (n * d,)), direct) for native, g, direct in gbufs] if need_grad else []
        diff = [views[k] for k in L.diff]
        return result(pl, value, flat, shape, diff, diff, outs, stats)

    @staticmethod
    def _rows(pl, v, shape, n: int, d: int):
        """``v`` as an (n, d) C-contiguous device array (a view when it is one already)."""
        if not device.c_contiguous(v):
            v = _gathered(pl, v, shape)
        return device.reshaped(v, (n, d))

    @staticmethod
    def _check_rows(checks, spec, L, views, kernel, check, xs, ys, kparams, lead) -> None:
        """Queue the declaration's input check, before anything is written (see the module docstring)."""
        pl = checks.pl

        def report(r: int) -> None:
            if L.check_inputs is not None:  # the CPU's own error, from host copies of the inputs
                L.check_inputs(spec.name, {nm: pl.to_host(v) for nm, v in zip(L.names, views)})
            where = ", ".join(str(int(i)) for i in np.unravel_index(r, lead)) if lead else ""
            raise ValueError(f"{spec.name}: row [{where}] of the inputs is invalid (the declaration's row_check)")

        if check is None:  # no device form: the host check on host copies (this waits)
            L.check_inputs(spec.name, {nm: pl.to_host(v) for nm, v in zip(L.names, views)})
            return
        bad = checks.slot(report)
        d = int(xs[0].shape[1])
        gs = [device.reshaped(pl.scratch(0, np.float64), (0, d)) for _ in L.diff]
        launch(pl, kernel, xs, ys, pl.scratch(0, _F64), 0, gs, pl.scratch(0, _F64), kparams, 1.0,
               pl.scratch(1, _F64), CHECK_ROWS, check=check, bad=bad)


ROWREDUCE_CUDA = _kinds.register_cuda_kind(CudaRowReduce())
