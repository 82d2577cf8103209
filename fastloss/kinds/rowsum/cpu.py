"""CPU driver for rowreduce losses: one value per row from sums over several row-aligned arrays.

The driver is written once here and specialised per loss by :func:`fastloss._compile.specialise`,
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

Why the driver looks the way it does:

* A row is summed in fixed ``SEGMENT``-sized pieces: each piece's sums are accumulated in float64
  by :func:`piece_sums` in ``LANES`` accumulators folded in a fixed order, then the pieces are
  added in piece order. The stages and these sums are compiled without fast-math
  (:func:`stage_kernel`), so neither the thread count nor the driver that runs changes a bit of
  the result.
* Short rows are processed in blocks of ``SEGMENT // D`` rows: each row is read, finished and its
  gradient written while it is still in cache, so the fused driver reads every input once. A
  block sums its rows' losses into ``partials``, added in block order. Every addition whose order
  matters (pieces of a row, rows of a block, blocks) goes through the ``*_strict`` helpers,
  compiled without fast-math: the drivers themselves are compiled with reassociation, which LLVM
  could otherwise use to reorder those sums differently in each driver.
* A few long rows (fewer rows than threads, a row longer than ``SEGMENT``) go to
  :func:`rowreduce_split_driver`: the pieces of all rows are summed in parallel, the rows are
  finished in row order, then the gradient pieces are written in parallel. Same pieces, same order:
  the split and the fused drivers give identical bits, so choosing between them by thread count is
  safe. (A separate template, so that the common drivers do not compile its three loops.)
* Inner loops run over slices from index 0 (``range(lo, hi)`` indexing blocks vectorisation).
"""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.extending import overload

from ..._compile import njit
from ..._config import CHUNK
from ..._flags import NEED_GRAD, NEED_STATS, PER_ROW  # the driver's ``flags`` bits: one numbering for all
from ..._kernels.tuples import _build, chunk_stats, gather, slices

#: Piece length of the row sums (part of the numerical contract, like ``CHUNK``).
SEGMENT = CHUNK

#: Accumulators per sum in a piece (part of the numerical contract): element ``j`` goes to ``j % LANES``.
LANES = 64


def _map(*args):  # placeholders, rebound per loss by ``specialise``
    raise NotImplementedError


def _finish(*args):
    raise NotImplementedError


def _grad(*args):
    raise NotImplementedError


def _piece_sums(*args):
    raise NotImplementedError


def _short_sums(*args):
    raise NotImplementedError


def stage_kernel(func):
    """Compile a stage of a rowreduce kernel (or :func:`piece_sums`) for inlining into the drivers.

    Strict IEEE arithmetic, no fast-math flag at all: with ``reassoc``, ``arcp`` or ``contract``
    LLVM rewrites the arithmetic according to how its results are used, which differs between the
    fused and the split driver (the split driver's row pass, for example, needs only the loss of
    ``finish``, not its coefficients) and would make their results differ in the last bit. The
    loops still vectorise: the stages are per element, and :func:`piece_sums` has explicit lanes.

    ``fastmath=False`` must be explicit: Numba lets a function compiled without a ``fastmath``
    option *inherit* its caller's (``Flags.inherit_if_not_set``), so a helper left unspecified
    takes the driver's flags, or not, depending on who compiled it first.
    """
    return njit(func, cache=False, error_model="numpy", fastmath=False, forceinline=True)


def piece_sums(xc, lo, params, scratch):
    """Sums of ``_map`` over one piece (elements ``lo, lo + 1, ...`` of a row): the row-sum contract.

    Element ``j`` of the piece is added to lane ``j % LANES`` (a float64 accumulator in memory),
    then the lanes are folded pairwise in a fixed order (lane ``i + w/2`` onto lane ``i``); a piece
    shorter than ``LANES`` is summed in element order (:func:`short_sums`). No addition is ever reassociated, so the
    result is the same bits wherever this is inlined, yet the loop over lanes vectorises: its
    iterations touch different accumulators, so LLVM needs no reassociation for it (Numba leaves
    LLVM's SLP vectoriser off, so register "lanes" written out by hand would stay scalar).
    ``scratch`` is a float64 ``(K, LANES)`` array for the accumulators (allocated once per block
    of rows by the caller). Specialised per loss like the drivers and compiled by
    :func:`stage_kernel`.
    """
    m = xc[0].size
    if m < LANES:
        return _short_sums(xc, lo, params, scratch)
    zero = zeros(_map(0, *zeros(xc), *params))
    acc = scratch  # C-contiguous: a column slice would have a run-time stride and stay scalar
    acc[:] = 0.0
    # ``nl`` is LANES, but not as a constant LLVM can see: it would unroll the loop and leave it scalar
    nl = min(m, LANES)
    nfull = m // nl
    for q in range(nfull):
        base = q * nl
        xq = slices(xc, base, base + nl)
        for ln in range(nl):
            accumulate(acc, ln, _map(lo + base + ln, *gather(xq, ln), *params))
    base = nfull * nl
    xq = slices(xc, base, m)
    for ln in range(m - base):
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


def rowreduce_driver(xs, ys, w, gs, loss_rows, params, scale, flags, stats):
    """Fused row losses and gradients.

    Parameters
    ----------
    xs : tuple of (n, D) C-contiguous arrays
        The row-aligned inputs (same shape, same dtype).
    ys : tuple of (n,) float64 arrays
        The per-row inputs (targets), possibly an empty tuple.
    w : (n,) float64 or empty
        Row weights.
    gs : tuple of (n, D) arrays, or of (0, D) arrays when ``flags`` lacks ``NEED_GRAD``
        Gradient outputs, one per differentiable row-aligned input (may be that input itself).
    loss_rows : (n,) float64 or empty
        Per-row (weighted) losses, when ``flags & PER_ROW``.
    params : tuple of float
        The loss's hyper-parameters.
    scale : float
        Gradient factor of the reduction (``1/n``, ``1/sum(w)`` or ``1``).
    stats : float64 array ``(nstats(n, D), 3)``
        Gradient statistics per block (short rows) or per piece (long rows), when ``flags & NEED_STATS``.

    Returns
    -------
    float
        Sum of the (weighted) row losses, in float64.
    """
    n, d = xs[0].shape
    npieces = max(1, (d + SEGMENT - 1) // SEGMENT)
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_row = (flags & PER_ROW) != 0
    need_stats = (flags & NEED_STATS) != 0
    zero = zeros(_map(0, *zeros(xs), *params))
    rpb = 1 if npieces > 1 else max(1, SEGMENT // max(d, 1))
    nb = (n + rpb - 1) // rpb
    partials = np.empty(nb)
    for b in prange(nb):
        rlo = b * rpb
        rhi = min(rlo + rpb, n)
        scratch = np.empty((len(zero), LANES))
        acc_loss = 0.0
        for r in range(rlo, rhi):
            xr = rows(xs, r)
            tot = zero
            for p in range(npieces):
                lo = p * SEGMENT
                hi = min(lo + SEGMENT, d)
                tot = tadd_strict(tot, _piece_sums(slices(xr, lo, hi), lo, params, scratch))
            res = _finish(tot, *gather(ys, r), *params)
            wr = w[r] if weighted else 1.0
            lr = res[0] * wr
            if per_row:
                loss_rows[r] = lr
            acc_loss = add_strict(acc_loss, lr)
            if need_grad:
                s = scale * wr
                gr = rows(gs, r)
                for p in range(npieces):
                    lo = p * SEGMENT
                    hi = min(lo + SEGMENT, d)
                    xc = slices(xr, lo, hi)
                    gc = slices(gr, lo, hi)
                    for j in range(hi - lo):
                        put(gc, j, _grad(lo + j, *gather(xc, j), res, *params), s)
                    if need_stats and npieces > 1:
                        chunk_stats(gc, stats[r * npieces + p])
        partials[b] = acc_loss
        if need_stats and npieces == 1:
            chunk_stats(blocks(gs, rlo * d, rhi * d), stats[b])
    return ordered_sum(partials)


def rowreduce_split_driver(xs, ys, w, gs, loss_rows, params, scale, flags, stats):
    """The split path of :func:`rowreduce_driver` for a few long rows (same arguments, same bits).

    The pieces of all rows are summed in parallel, the rows finished in row order, then the
    gradient pieces written in parallel; ``stats`` has one row per piece.
    """
    n, d = xs[0].shape
    npieces = max(1, (d + SEGMENT - 1) // SEGMENT)
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_row = (flags & PER_ROW) != 0
    need_stats = (flags & NEED_STATS) != 0
    zero = zeros(_map(0, *zeros(xs), *params))
    ntask = n * npieces
    part = np.empty((ntask, len(zero)))
    for t in prange(ntask):
        r = t // npieces
        lo = (t - r * npieces) * SEGMENT
        hi = min(lo + SEGMENT, d)
        scratch = np.empty((len(zero), LANES))
        store(part[t], _piece_sums(slices(rows(xs, r), lo, hi), lo, params, scratch))
    sums = np.empty((n, len(zero)))
    row_loss = np.empty(n)
    for r in range(n):
        tot = zero
        for p in range(npieces):
            tot = tadd_strict(tot, load(part[r * npieces + p], zero))
        store(sums[r], tot)
        res = _finish(tot, *gather(ys, r), *params)
        lr = res[0] * (w[r] if weighted else 1.0)
        if per_row:
            loss_rows[r] = lr
        row_loss[r] = add_strict(0.0, lr)  # as a block of one row in the fused driver
    if need_grad:
        for t in prange(ntask):
            r = t // npieces
            lo = (t - r * npieces) * SEGMENT
            hi = min(lo + SEGMENT, d)
            # finished again from the stored sums: the same bits as above, no coefficient storage
            res = _finish(load(sums[r], zero), *gather(ys, r), *params)
            s = scale * (w[r] if weighted else 1.0)
            xc = slices(rows(xs, r), lo, hi)
            gc = slices(rows(gs, r), lo, hi)
            for j in range(hi - lo):
                put(gc, j, _grad(lo + j, *gather(xc, j), res, *params), s)
            if need_stats:
                chunk_stats(gc, stats[t])
    return ordered_sum(row_loss)


# -- additions whose order is part of the contract: compiled without fast-math, inlined -----------

_strict = njit(cache=False, error_model="numpy", fastmath=False, forceinline=True)  # explicit: see stage_kernel


@_strict
def add_strict(a, b):
    """``a + b``, never reassociated with the additions around it (nor ``0.0 + b`` folded)."""
    return a + b


@_strict
def tadd_strict(a, b):
    """:func:`tadd` without reassociation."""
    return tadd(a, b)


@_strict
def ordered_sum(a):
    """``a[0] + a[1] + ...`` strictly in index order (never reassociated into vector lanes)."""
    total = 0.0
    for i in range(a.size):
        total += a[i]
    return total


def nstats(n: int, d: int) -> int:
    """Rows of gradient statistics the driver writes for ``n`` rows of length ``d``."""
    npieces = max(1, -(-d // SEGMENT))
    if npieces > 1:
        return n * npieces
    rpb = max(1, SEGMENT // max(d, 1))
    return -(-n // rpb)


# -- tuple helpers, unrolled at compile time for the tuple's length ------------------------------


def rows(xs, r):
    """``(xs[0][r], xs[1][r], ...)``: row ``r`` of every array."""


def zeros(t):
    """A tuple of float64 zeros as long as ``t``."""


def tadd(a, b):
    """``(a[0] + b[0], a[1] + b[1], ...)``."""


def store(row, t):
    """``row[k] = t[k]`` for every ``k``."""


def load(row, like):
    """``(row[0], row[1], ...)``, as long as ``like``."""


def put(gs, j, g, s):
    """``gs[k][j] = g[k] * s`` for every gradient array ``k``."""


def accumulate(acc, ln, t):
    """``acc[k, ln] += t[k]`` for every ``k``."""


def fold8(acc, like):
    """Per row ``k`` of ``acc``, the pairwise sum of its first 8 lanes, as a tuple like ``like``.

    Straight-line code (lane ``i`` plus lane ``i + 4``, then again on the halves): the additions of
    a level are independent, so they run in parallel even though they stay scalar.
    """


def blocks(gs, lo, hi):
    """``(gs[0].ravel()[lo:hi], ...)``: a block of whole rows of every (C-contiguous) array, flat."""


def _unrolled(args: str, n: int, item: str, *, ret: bool = True):
    if ret:
        body = "    return (" + "".join(item.format(k=k) + ", " for k in range(n)) + ")\n"
    else:
        body = "".join(f"    {item.format(k=k)}\n" for k in range(n)) + "    return None\n"
    return _build(f"def impl({args}):\n{body}", "impl")


@overload(rows)
def _rows(xs, r):
    return _unrolled("xs, r", len(xs), "xs[{k}][r]")


@overload(zeros)
def _zeros(t):
    return _unrolled("t", len(t), "np.float64(0.0)")


@overload(tadd)
def _tadd(a, b):
    return _unrolled("a, b", len(a), "a[{k}] + b[{k}]")


@overload(store)
def _store(row, t):
    return _unrolled("row, t", len(t), "row[{k}] = t[{k}]", ret=False)


@overload(load)
def _load(row, like):
    return _unrolled("row, like", len(like), "row[{k}]")


@overload(put)
def _put(gs, j, g, s):
    return _unrolled("gs, j, g, s", len(gs), "gs[{k}][j] = g[{k}] * s", ret=False)


@overload(accumulate)
def _accumulate(acc, ln, t):
    return _unrolled("acc, ln, t", len(t), "acc[{k}, ln] += t[{k}]", ret=False)


@overload(fold8)
def _fold8(acc, like):
    lines = []
    for k in range(len(like)):
        names = [f"acc[{k}, {i}]" for i in range(8)]
        level = 0
        while len(names) > 1:
            half = len(names) // 2
            new = [f"f{k}_{level}_{i}" for i in range(half)]
            lines += [f"    {new[i]} = {names[i]} + {names[i + half]}" for i in range(half)]
            names, level = new, level + 1
        lines.append(f"    r{k} = {names[0]}")
    body = "\n".join(lines) + "\n    return (" + "".join(f"r{k}, " for k in range(len(like))) + ")\n"
    return _build(f"def impl(acc, like):\n{body}", "impl")


@overload(blocks)
def _blocks(gs, lo, hi):
    return _unrolled("gs, lo, hi", len(gs), "gs[{k}].reshape(-1)[lo:hi]")
