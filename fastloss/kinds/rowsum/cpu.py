"""CPU driver of the rowsum kind: one value per row from sums over several row-aligned arrays.

The driver is written once here, :func:`rowsum_tasks`, and specialised per loss by :func:`build`,
which binds the placeholders ``_map``, ``_finish`` and ``_grad`` to the three stages of the loss's
:class:`~fastloss.kinds.rowsum.host.RowReduce` declaration. The stages are scalar functions written with
:mod:`math` (and :mod:`fastloss._kernels.mathfn`) only, so that a CUDA driver can compile the same
functions as device functions::

    map(j, *elements, *params)         -> (s_0, ..., s_K-1)     summed over the row
    finish(sums, *row_values, *params) -> (loss, c_1, ..., c_M)  once per row
    grad(j, *elements, coefs, *params) -> (g_0, ..., g_G-1)      per element

``j`` is the element's index in its row, ``elements`` the float64 values at ``j`` of every
row-aligned input, ``row_values`` the float64 per-row inputs (targets), ``coefs`` the whole tuple
``finish`` returned, and ``g_k`` the derivative of the row's loss with respect to the ``k``-th
differentiable row-aligned input at ``j``. The driver folds the reduction and the row weight into
the gradient as it stores it (``scale * w_r * g_k``).

The numerical contract (what makes every path and thread count give the same bits):

* A row is summed in fixed ``SEGMENT``-sized pieces: each piece's sums are accumulated in float64
  by :func:`piece_sums` in ``LANES`` accumulators folded in a fixed order, then the pieces are
  added in piece order.
* Short rows are processed in blocks of ``SEGMENT // D`` rows: each row is read, finished and its
  gradient written while it is still in cache, so the driver reads every input once. A block sums
  its rows' losses, and the blocks' sums are added in block order.

How it is compiled, with compile time as a constraint (a cold first call compiles all of this):

* One function serves every path: :func:`rowsum_tasks` computes a range of *tasks* (blocks of
  rows, or pieces of long rows) on the calling thread and releases the GIL. Serial calls run all
  tasks in one call; parallel calls hand ranges of tasks to :mod:`fastloss._launcher`'s threads,
  each task writing its loss to a float64 partial that :func:`launch` adds in task order. There is
  no ``prange`` driver: Numba's parfor lowering cost as much again as the function it wraps, and the
  split path of a few long rows (pieces summed in parallel, then rows finished, then gradient
  pieces written in parallel) is two ranges of calls of the same function (``SPLIT`` flags).
* The driver is compiled strictly (no fast-math flag at all), and so are the stages: with
  ``reassoc``, ``contract`` or ``nsz`` LLVM may rewrite additions according to how their results
  are used, which differs between paths, and the row sums would change in the last bit. Strict
  arithmetic needs no fast-math to vectorise here: the element loops are independent per element
  and :func:`piece_sums` has explicit lanes. Only the gradient statistics (a sum of squares that
  vectorises by reassociation) are compiled with fast-math, as a helper of their own, and only into
  drivers built for ``stats=True``.
* Being strict, the driver can take the helpers it owns (:func:`piece_sums`, :func:`short_sums`)
  inlined at Numba's IR level rather than as functions compiled separately, and its tuple helpers
  are intrinsics that emit their few instructions directly (as ``@overload`` functions each was a
  small function typed, compiled and optimised on its own: ~0.9 s of dice's first call).
* Inputs arrive read-only (:func:`launch` makes read-only views), so writable and read-only arrays
  share one compilation.
* Inner loops run over slices from index 0 (``range(lo, hi)`` indexing blocks vectorisation).
"""

from __future__ import annotations

import operator
import types as pytypes

import numba
import numpy as np
from numba.core import cgutils, types
from numba.core.typing import signature
from numba.extending import intrinsic, overload
from numba.np.arrayobj import load_item, store_item

from ... import _config, _launcher
from ..._compile import inline_helper, njit, source_hash
from ..._config import CHUNK

# the driver's ``flags`` bits: one numbering for all
from ..._flags import NEED_GRAD, NEED_STATS, NSUMS, PER_ROW, SPLIT, SUMS_ONLY
from ..._kernels.tuples import _build, _item_pointer, chunk_stats, gather, no_stats, scaled_store, slices

#: Piece length of the row sums (part of the numerical contract, like ``CHUNK``).
SEGMENT = CHUNK

#: Accumulators per sum in a piece (part of the numerical contract): element ``j`` goes to ``j % LANES``.
LANES = 64

#: Fewest elements in a range of tasks handed to a thread: waking one costs tens of microseconds.
MIN_PIECE_ELEMENTS = 32768


def _map(*args):  # placeholders, rebound per loss by ``build``
    raise NotImplementedError


def _finish(*args):
    raise NotImplementedError


def _grad(*args):
    raise NotImplementedError


def _piece_sums(*args):
    raise NotImplementedError


def _short_sums(*args):
    raise NotImplementedError


def _piece_stats(gc, row):
    raise NotImplementedError


def _block_stats(gs, lo, hi, row):
    raise NotImplementedError


def rowsum_tasks(xs, ys, w, gs, loss_rows, params, scale, flags, stats, part, partials, t0, t1):
    """Fused row losses and gradients of tasks ``t0`` to ``t1 - 1``, in order, on the calling thread.

    Parameters
    ----------
    xs : tuple of (n, D) C-contiguous read-only arrays
        The row-aligned inputs (same shape, same dtype).
    ys : tuple of (n,) float64 arrays
        The per-row inputs (targets), possibly an empty tuple.
    w : (n,) float64 or empty
        Row weights.
    gs : tuple of (n, D) arrays, or of (0, D) arrays when ``flags`` lacks ``NEED_GRAD``
        Gradient outputs, one per differentiable row-aligned input (may be that input's memory).
    loss_rows : (n,) float64 or empty
        Per-row (weighted) losses, when ``flags & PER_ROW``.
    params : tuple of float
        The loss's hyper-parameters.
    scale : float
        Gradient factor of the reduction (``1/n``, ``1/sum(w)`` or ``1``).
    flags : int
        ``NEED_GRAD | PER_ROW | NEED_STATS``, with ``SPLIT`` (and ``SUMS_ONLY``) for the split path.
    stats : float64 array ``(nstats(n, D), 3)``
        Gradient statistics per block (short rows) or per piece (long rows), when ``flags & NEED_STATS``.
    part : float64 array ``(n * npieces, K)``
        The split path's piece sums (written by ``SUMS_ONLY`` calls, read by the others).
    partials : float64 array
        Receives each block's loss at its index (each row's, on the split path); empty for none.
    t0, t1 : int
        The tasks: blocks of ``SEGMENT // D`` rows (one row when rows are longer than ``SEGMENT``),
        or with ``SPLIT`` the pieces of the rows, ``t = r * npieces + p``.

    Returns
    -------
    float
        Sum of the (weighted) row losses of these tasks, added in task order to ``0.0``.
    """
    n = xs[0].shape[0]
    d = xs[0].shape[1]
    npieces = (d + SEGMENT - 1) // SEGMENT
    if npieces < 1:
        npieces = 1
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_row = (flags & PER_ROW) != 0
    need_stats = (flags & NEED_STATS) != 0
    split = (flags & SPLIT) != 0
    sums_only = (flags & SUMS_ONLY) != 0
    keep_partials = partials.size > 0
    zero = zeros(_map(0, *zeros(xs), *params))
    if (flags & NSUMS) != 0:
        return float(len(zero))
    rpb = 1
    if npieces == 1:
        rpb = SEGMENT // d if d > 0 else SEGMENT
    # the lanes of piece_sums (C-contiguous: a column slice would have a run-time stride and stay scalar)
    scratch = np.empty((len(zero), LANES))
    total = 0.0
    for t in range(t0, t1):
        if split:
            rlo = t // npieces
            rhi = rlo + 1
            plo = t - rlo * npieces
            phi = plo + 1
        else:
            rlo = t * rpb
            rhi = rlo + rpb
            if rhi > n:
                rhi = n
            plo = 0
            phi = npieces
        acc_loss = 0.0
        for r in range(rlo, rhi):
            xr = rows(xs, r)
            tot = zero
            if split and not sums_only:
                # this row's sums from the first phase: its pieces added in piece order, as below
                for p in range(npieces):
                    tot = tadd(tot, load(part[r * npieces + p], zero))
            else:
                for p in range(plo, phi):
                    lo = p * SEGMENT
                    hi = lo + SEGMENT
                    if hi > d:
                        hi = d
                    tot = tadd(tot, _piece_sums(slices(xr, lo, hi), lo, params, scratch))
                if sums_only:
                    # 0.0 + s is s but for the sign of a zero sum, which the row's 0.0 + ... drops anyway
                    store(part[t], tot)
                    continue
            res = _finish(tot, *gather(ys, r), *params)
            wr = w[r] if weighted else 1.0
            if plo == 0:  # a row's loss counts once (on the split path every piece finishes its row)
                lr = res[0] * wr
                if per_row:
                    loss_rows[r] = lr
                acc_loss += lr
            if need_grad:
                s = scale * wr
                gr = rows(gs, r)
                for p in range(plo, phi):
                    lo = p * SEGMENT
                    hi = lo + SEGMENT
                    if hi > d:
                        hi = d
                    xc = slices(xr, lo, hi)
                    gc = slices(gr, lo, hi)
                    for j in range(hi - lo):
                        put(gc, j, _grad(lo + j, *gather(xc, j), res, *params), s)
                    if need_stats and npieces > 1:
                        _piece_stats(gc, stats[r * npieces + p])
        if sums_only or plo != 0:
            continue
        if keep_partials:
            partials[rlo if split else t] = acc_loss
        total += acc_loss
        if need_stats and npieces == 1 and need_grad:
            _block_stats(gs, rlo * d, rhi * d, stats[t])
    return total


def piece_sums(xc, lo, params, scratch):
    """Sums of ``_map`` over one piece (elements ``lo, lo + 1, ...`` of a row): the row-sum contract.

    Element ``j`` of the piece is added to lane ``j % LANES`` (a float64 accumulator in memory),
    then the lanes are folded pairwise in a fixed order (lane ``i + w/2`` onto lane ``i``); a piece
    shorter than ``LANES`` is summed in element order (:func:`short_sums`). No addition is ever
    reassociated, so the result is the same bits wherever this runs, yet the loop over lanes
    vectorises: its iterations touch different accumulators, so LLVM needs no reassociation for it
    (Numba leaves LLVM's SLP vectoriser off, so register "lanes" written out by hand would stay
    scalar). ``scratch`` is a float64 ``(K, LANES)`` array for the accumulators. Inlined into the
    driver at Numba's IR level (see :func:`build`).
    """
    m = xc[0].size
    if m < LANES:
        return _short_sums(xc, lo, params, scratch)
    zero = zeros(_map(0, *zeros(xc), *params))
    acc = scratch
    acc[:] = 0.0
    # ``nl`` is LANES, but not as a constant LLVM can see: it would unroll the loop and leave it scalar
    nl = m if m < LANES else LANES
    # the last group of lanes may be partial: one loop nest, so that ``_map`` is inlined (and
    # vectorised) once rather than again for a remainder loop
    for base in range(0, m, nl):
        cnt = m - base
        if cnt > nl:
            cnt = nl
        xq = slices(xc, base, base + cnt)
        for ln in range(cnt):
            accumulate(acc, ln, _map(lo + base + ln, *gather(xq, ln), *params))
    # fold lane i + width/2 onto lane i, down to 8 lanes (vectorised loops), then a tree of 8
    width = nl
    while width > 8:
        width //= 2
        for k in range(acc.shape[0]):
            row = acc[k]
            for ln in range(width):
                row[ln] += row[ln + width]
    return fold8(acc, zero)


def short_sums(xc, lo, params, scratch):
    """:func:`piece_sums` of a piece shorter than ``LANES``: the terms added in element order.

    Also the whole of ``piece_sums`` for losses whose rows always are that short (boxes), which
    then do not compile the lanes.
    """
    tot = zeros(_map(0, *zeros(xc), *params))
    for j in range(xc[0].size):
        tot = tadd(tot, _map(lo + j, *gather(xc, j), *params))
    return tot


# -- compilation ---------------------------------------------------------------------------------

#: The stages: strict (see the module docstring), always inlined by LLVM, no wrappers (never called
#: from Python; each wrapper would be code compiled for nothing).
stage_kernel = inline_helper(False)

#: The gradient statistics' helpers (``stats=True`` drivers only): with the drivers' usual fast-math,
#: as the statistics have always been computed (the sum of squares vectorises by reassociation).
_stats_helper = inline_helper(set(_config.FASTMATH))


def piece_stats(gc, row):
    """Statistics of one piece of a row's gradients (rows longer than ``SEGMENT``)."""
    chunk_stats(gc, row)


def block_stats(gs, lo, hi, row):
    """Statistics of a block of whole rows' gradients, elements ``lo`` to ``hi - 1`` of the flat arrays."""
    chunk_stats(blocks(gs, lo, hi), row)


def _rebind(func, glb: dict):
    """``func`` with the globals ``glb`` (the placeholders bound to a loss's stages)."""
    new = pytypes.FunctionType(func.__code__, glb, func.__name__, func.__defaults__)
    new.__qualname__ = func.__qualname__
    return new


def build(kernel, name: str, *, short: bool, stats: bool, cache: bool = True):
    """The compiled :func:`rowsum_tasks` of a loss's kernel (a ``RowReduce``).

    ``short``: the rows are always shorter than ``LANES`` (boxes): the lanes are not compiled.
    ``stats``: with gradient statistics (else they are no-ops and their code is not compiled).
    """
    glb = dict(rowsum_tasks.__globals__)
    glb.update(_map=stage_kernel(kernel.map), _finish=stage_kernel(kernel.finish), _grad=stage_kernel(kernel.grad))
    # inlined at Numba's IR level: typed within the driver, optimised once with it, not compiled alone
    glb["_short_sums"] = numba.njit(inline="always")(_rebind(short_sums, glb))
    glb["_piece_sums"] = glb["_short_sums"] if short else numba.njit(inline="always")(_rebind(piece_sums, glb))
    if stats:
        glb.update(_piece_stats=_stats_helper(piece_stats), _block_stats=_stats_helper(block_stats))
    else:
        glb.update(_piece_stats=no_stats, _block_stats=no_block_stats)
    # the identity of the machine code: the stages and everything this module compiles around them
    tag = source_hash(*kernel.stages, rowsum_tasks, piece_sums, short_sums, piece_stats, block_stats, build)
    qualname = f"rowsum_tasks__{name}__{'short' if short else 'lanes'}_{'stats' if stats else 'plain'}_{tag}"
    func = pytypes.FunctionType(rowsum_tasks.__code__, glb, qualname, rowsum_tasks.__defaults__)
    func.__qualname__ = qualname
    func.__module__ = rowsum_tasks.__module__
    return njit(func, cache=cache, error_model="numpy", fastmath=False, nogil=True, no_cfunc_wrapper=True)


# -- launching -----------------------------------------------------------------------------------

_NO_PART = np.empty((0, 0))
_NO_PARTIALS = np.empty(0)
_nsums: dict = {}


def npieces(d: int) -> int:
    return max(1, -(-d // SEGMENT))


def ntasks(n: int, d: int) -> int:
    """Tasks (blocks of rows, or single rows longer than ``SEGMENT``) of ``n`` rows of length ``d``."""
    if npieces(d) > 1:
        return n
    rpb = max(1, SEGMENT // max(d, 1))
    return -(-n // rpb)


def nstats(n: int, d: int) -> int:
    """Rows of gradient statistics the driver writes for ``n`` rows of length ``d``."""
    np_ = npieces(d)
    return n * np_ if np_ > 1 else ntasks(n, d)


def task_ranges(count: int, task_elements: int, threads: int) -> list[tuple[int, int]]:
    """Cut tasks ``0 .. count - 1`` into contiguous ranges for ``threads`` threads.

    A few ranges per thread (a core slowed by other load takes fewer), each of at least
    ``MIN_PIECE_ELEMENTS`` elements. Like :func:`fastloss._launcher.pieces`, whose minimum is
    counted in pointwise chunks; a task here is anything from a block of rows to a whole long row.
    """
    least = max(1, -(-MIN_PIECE_ELEMENTS // max(task_elements, 1)))
    per_thread = min(_launcher.PIECES_PER_THREAD, count // (least * threads))
    pieces = threads * per_thread if per_thread > 0 else max(1, min(threads, count // least))
    bounds = [count * k // pieces for k in range(pieces + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(pieces) if bounds[k] < bounds[k + 1]]


def _readonly(a: np.ndarray) -> np.ndarray:
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def _ordered_sum(partials: np.ndarray) -> float:
    """``0.0 + p[0] + p[1] + ...`` in index order (no partial is -0.0: each is itself a sum from 0.0)."""
    return float(np.add.accumulate(partials, out=partials)[-1]) if partials.size else 0.0


def launch(drv, xs, ys, w, gs, loss_rows, params, scale, flags, stats, mode: str) -> float:
    """Run a built driver over all rows; the float64 sum of the (weighted) row losses.

    ``mode``: ``"ser"`` (one call on this thread), ``"par"`` (ranges of row blocks on the
    launcher's threads) or ``"split"`` (a few rows longer than ``SEGMENT``: their pieces summed in
    parallel, then each piece finished and its gradient written in parallel). All give the same bits.
    """
    xs = tuple(_readonly(x) for x in xs)
    ys = tuple(_readonly(y) for y in ys)
    args = (xs, ys, _readonly(w), gs, loss_rows, params, scale)
    n, d = xs[0].shape
    if mode == "ser":
        return drv(*args, flags, stats, _NO_PART, _NO_PARTIALS, 0, ntasks(n, d))
    threads = _launcher.num_threads()
    if mode == "split" and npieces(d) > 1:
        nsums = _nsums.get(drv)
        if nsums is None:
            nsums = _nsums[drv] = int(drv(*args, NSUMS, stats, _NO_PART, _NO_PARTIALS, 0, 0))
        count = n * npieces(d)
        ranges = task_ranges(count, SEGMENT, threads)
        part = np.empty((count, nsums))
        _launcher.run_ranges(drv, (*args, flags | SPLIT | SUMS_ONLY, stats, part, _NO_PARTIALS), ranges, threads)
        partials = np.empty(n)
        _launcher.run_ranges(drv, (*args, flags | SPLIT, stats, part, partials), ranges, threads)
        return _ordered_sum(partials)
    count = ntasks(n, d)
    ranges = task_ranges(count, -(-n * d // count), threads)
    partials = np.empty(count)
    _launcher.run_ranges(drv, (*args, flags, stats, _NO_PART, partials), ranges, threads)
    return _ordered_sum(partials)


# -- tuple helpers: intrinsics unrolled at compile time for the tuple's length --------------------


def _f64(context, builder, value, ty):
    return context.cast(builder, value, ty, types.float64)


def _intp(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


@intrinsic
def rows(typingctx, xs, r):
    """``(xs[0][r], xs[1][r], ...)``: row ``r`` of every 2-D array."""
    views = [typingctx.resolve_function_type(operator.getitem, (a, types.intp), {}).return_type
             for a in xs]
    sig = types.Tuple(views)(xs, r)

    def codegen(context, builder, sig, args):
        tup, idx = args
        idx = _intp(context, builder, idx, sig.args[1])
        vals = []
        for k, (aryty, viewty) in enumerate(zip(sig.args[0], sig.return_type)):
            getitem = context.get_function(operator.getitem, signature(viewty, aryty, types.intp))
            vals.append(getitem(builder, (builder.extract_value(tup, k), idx)))  # a new reference
        return context.make_tuple(builder, sig.return_type, vals)

    return sig, codegen


@intrinsic
def zeros(typingctx, t):
    """A tuple of float64 zeros as long as ``t``."""
    sig = types.UniTuple(types.float64, len(t))(t)

    def codegen(context, builder, sig, args):
        zero = context.get_constant(types.float64, 0.0)
        return context.make_tuple(builder, sig.return_type, [zero] * len(sig.return_type))

    return sig, codegen


@intrinsic
def tadd(typingctx, a, b):
    """``(a[0] + b[0], a[1] + b[1], ...)`` in float64."""
    sig = types.UniTuple(types.float64, len(a))(a, b)

    def codegen(context, builder, sig, args):
        ta, tb = sig.args
        vals = [builder.fadd(_f64(context, builder, builder.extract_value(args[0], k), ta[k]),
                             _f64(context, builder, builder.extract_value(args[1], k), tb[k]))
                for k in range(len(ta))]
        return context.make_tuple(builder, sig.return_type, vals)

    return sig, codegen


@intrinsic
def store(typingctx, row, t):
    """``row[k] = t[k]`` for every ``k`` (``row``: a 1-D array)."""
    sig = types.none(row, t)

    def codegen(context, builder, sig, args):
        aryty, tty = sig.args
        for k in range(len(tty)):
            ptr = _item_pointer(context, builder, aryty, args[0], context.get_constant(types.intp, k))
            v = context.cast(builder, builder.extract_value(args[1], k), tty[k], aryty.dtype)
            store_item(context, builder, aryty, v, ptr)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def load(typingctx, row, like):
    """``(row[0], row[1], ...)`` in float64, as long as ``like``."""
    sig = types.UniTuple(types.float64, len(like))(row, like)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        vals = []
        for k in range(len(sig.args[1])):
            ptr = _item_pointer(context, builder, aryty, args[0], context.get_constant(types.intp, k))
            vals.append(_f64(context, builder, load_item(context, builder, aryty, ptr), aryty.dtype))
        return context.make_tuple(builder, sig.return_type, vals)

    return sig, codegen


@intrinsic
def put(typingctx, gs, j, g, s):
    """``gs[k][j] = g[k] * s`` (in float64, stored as the array's dtype) for every gradient array ``k``."""
    return types.none(gs, j, g, s), scaled_store(0)


def _acc_pointer(context, builder, aryty, acc, k, ln):
    ary = context.make_array(aryty)(context, builder, acc)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, k), ln],
                                    wraparound=False)


@intrinsic
def accumulate(typingctx, acc, ln, t):
    """``acc[k, ln] += t[k]`` for every ``k`` (``acc``: a 2-D C-contiguous float64 array)."""
    sig = types.none(acc, ln, t)

    def codegen(context, builder, sig, args):
        aryty, lnty, tty = sig.args
        ln = _intp(context, builder, args[1], lnty)
        for k in range(len(tty)):
            ptr = _acc_pointer(context, builder, aryty, args[0], k, ln)
            old = load_item(context, builder, aryty, ptr)
            store_item(context, builder, aryty,
                       builder.fadd(old, _f64(context, builder, builder.extract_value(args[2], k), tty[k])), ptr)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fold8(typingctx, acc, like):
    """Per row ``k`` of ``acc``, the pairwise sum of its first 8 lanes, as a tuple as long as ``like``.

    Straight-line code (lane ``i`` plus lane ``i + 4``, then again on the halves): the additions of
    a level are independent, so they run in parallel even though they stay scalar.
    """
    sig = types.UniTuple(types.float64, len(like))(acc, like)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        out = []
        for k in range(len(sig.args[1])):
            lanes = [load_item(context, builder, aryty,
                               _acc_pointer(context, builder, aryty, args[0], k, context.get_constant(types.intp, i)))
                     for i in range(8)]
            while len(lanes) > 1:
                half = len(lanes) // 2
                lanes = [builder.fadd(lanes[i], lanes[i + half]) for i in range(half)]
            out.append(lanes[0])
        return context.make_tuple(builder, sig.return_type, out)

    return sig, codegen


@intrinsic
def no_block_stats(typingctx, gs, lo, hi, row):
    """Do nothing: stands in for :func:`block_stats` in drivers compiled without statistics."""
    sig = types.none(gs, lo, hi, row)

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return sig, codegen


def blocks(gs, lo, hi):
    """``(gs[0].ravel()[lo:hi], ...)``: a block of whole rows of every (C-contiguous) array, flat."""


@overload(blocks)
def _blocks(gs, lo, hi):  # statistics only: compiled into ``stats=True`` drivers alone
    body = "    return (" + "".join(f"gs[{k}].reshape(-1)[lo:hi], " for k in range(len(gs))) + ")\n"
    return _build(f"def impl(gs, lo, hi):\n{body}", "impl")
