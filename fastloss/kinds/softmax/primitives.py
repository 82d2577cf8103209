"""Row primitives: the passes over the class axis that rowwise loss kernels are written with.

A rowwise kernel (see :mod:`fastloss.kinds.softmax.cpu`) works on a *block* of rows, a
C-contiguous ``(rows, classes)`` array, and leaves every pass over the class axis to the primitives
below; what remains in the kernel is per-row scalar math. Softmax cross entropy, for example, is::

    xy = R.gather(x, y)            # target logits, read before g (which may be x) is written
    m = R.row_max(x)
    s = R.exp_sum(x, m, g)         # g <- exp(x - m), s = row sums
    ...                            # per row: lse = m + log s, loss, gradient coefficients
    R.scale_rows(g, c)             # g <- c * exp(x - m) = c * s * softmax(x)
    R.add_at(g, y, b)              # g[r, y_r] += b_r

Why primitives rather than loops in every kernel:

* Each is written once to run at memory speed: plain loops over contiguous slices from index 0
  (LLVM vectorises them, with the vectorisable ``exp``/``log`` of :mod:`.mathfn`), a separate
  single-array loop when the gradient overwrites its own input (LLVM's runtime alias check would
  otherwise fall back to scalar code), and for short rows a flat pass over the whole block, so
  that a 10-class problem still runs the exponential over full SIMD vectors.
* The driver rebinds them. For a few rows with a huge class axis, :data:`SPLIT` holds twins that
  cut each row into ``SEGMENT``-sized pieces processed in parallel and combine the pieces' results
  in piece order, so the same kernel uses every core inside a row and stays deterministic.
  A device driver can bind block-cooperative versions the same way.

Each primitive over the class axis is declared once, in :data:`TABLE`: what it does with one
element of a row and how the elements' results combine. Its forms are generated from that entry
(with ``exec`` under this file's name, so tracebacks and the cache tags of
:func:`fastloss._compile.specialise` see a real module; the source is kept in :data:`GENERATED`):
the serial piece over a slice of a row, the block form over the rows of a block, the split twin,
and on CUDA (:mod:`fastloss.kinds.softmax.cuda`) the block-cooperative and one-thread forms. Full
generation of the CPU piece was impractical for six of the ten: their loops are specialised for
LLVM's vectoriser (per given input, per aliasing, padded tails, interleaved maxima) and their
operation order is frozen by bit-identity, so they stay hand-written next to their entry, and
``row_max`` and ``exp_sum`` keep hand-written block forms for short rows: at most three forms per
primitive where there were five (see the comment above :data:`TABLE`).

Conventions: an empty ``t`` or ``w`` (``size == 0``) reads as all ones; ``g`` may be ``x`` itself,
so a kernel reads everything it needs from ``x`` before its first primitive that writes ``g``;
reductions return float64 vectors with one entry per row.
"""

from __future__ import annotations

import ast
import textwrap
import types
from typing import NamedTuple

import numpy as np
from numba import prange  # noqa: F401  (used by the generated split twins)
from numba.core import types as nbtypes
from numba.extending import overload

from ..._compile import njit
from ..._config import FASTMATH
from ..._kernels.mathfn import exp, log, tanh

#: Exponential loops run over a multiple of this many elements, so that LLVM's vector loop covers
#: them completely (with a plain loop, the scalar remainder of every 1000-class row costs as much
#: as the rest of the row); tails go through a padded chunk of this length.
VECTOR_CHUNK = 64

#: Rows shorter than this take the exponential as one flat pass over the whole block instead of
#: row by row: a row shorter than one vector chunk would go through a padded chunk of its own and
#: waste up to half of its lanes (rows of 32-63 float32 classes ran 2-3x slower per element than 31
#: or 64 when this bound was 32). The flat pass adds each row's terms in another order than the
#: padded chunk: moving the bound from 32 to 64 kept float32 results bit for bit and changed float64
#: rows of 32-63 classes in the last bits only.
SHORT_EXP = VECTOR_CHUNK

#: Rows shorter than this use a plain running maximum instead of eight interleaved ones.
SHORT_ROW = 16

#: Piece length of the split (intra-row parallel) twins.
SEGMENT = 16384

#: :func:`softmax_pass` keeps its one-pass estimate of a row's shift while the row's sum of
#: exponentials stays below this (e^63): every term is then below e^63 (a term clamped at e^64 is
#: caught even after rounding to float32), and the gradient factors ``c / s`` stay far from float32's
#: subnormal range.
SHIFT_SUM_LIMIT = float(np.exp(63.0))

# Primitives are only ever called from compiled kernels: no CPython or C wrapper to compile (the
# wrappers were ~17% of a cold cross-entropy compile). Call them from Python through an njit function.
_opts = {"error_model": "numpy", "fastmath": set(FASTMATH), "no_cfunc_wrapper": True, "no_cpython_wrapper": True}
_prim = njit(cache=False, **_opts)
# no reassociation where piece results are added: their order is part of the numerical contract
_exact = njit(cache=False, error_model="numpy", fastmath=False, no_cfunc_wrapper=True,
               no_cpython_wrapper=True)
_split = njit(cache=False, parallel=True, **_opts)


# -- the exponential of a shifted logit, at the precision of the data ----------------------------
#
# Every exponential here is exp(x - m) with m the row maximum, or an element of the row close below
# it (softmax_pass), so its argument is at most a few dozen (or NaN).
# For float64 data that is mathfn.exp. For float32 data a float32-lane version: mathfn's float32
# variant computes in float64 lanes (8 per AVX-512 vector), this one in float32 lanes (16), which
# doubles the throughput of the pass that bounds softmax speed. It is written to be short, as it
# is most of a softmax's instructions: no selects. Arguments are clamped at -88, where k = -127
# makes the exponent bits of 2^k zero, so the result is exactly 0 below -87.68 without a compare
# (and -inf gives 0); between -87.68 and -87.34 results are subnormal, computed by gradual
# underflow. NaN passes through the clamp (max keeps a NaN first operand) and the arithmetic.
# Arguments above 64 are clamped to 64 (e^64): :func:`softmax_pass` shifts by an estimate of the
# row maximum and recognises a row that needs the exact one by a sum of at least SHIFT_SUM_LIMIT.

_F32 = np.float32
_CLAMP = _F32(-88.0)
_CLAMP_HI = _F32(64.0)
_LOG2E = _F32(1.4426950408889634)
_MAGIC = _F32(12582912.0)  # 1.5 * 2^23: adding it rounds |t| < 2^22 to an integer in the low bits
_MAGIC_BITS = np.int32(np.array([_MAGIC]).view(np.int32)[0])
_LN2_HI = _F32(0.693359375)  # exact in 9 bits: k * _LN2_HI is exact
_LN2_LO = _F32(-2.12194440e-4)
# e^r = 1 + r Q(r) on |r| <= ln2/2, Q the degree-5 minimax of (e^r - 1) / r (relative error 1.1e-8
# before rounding the coefficients to float32; tools/fit_mathfn.py): within 0.9 float32 ulp overall
_Q0 = _F32(1.0000000106279598)
_Q1 = _F32(0.4999999812479965)
_Q2 = _F32(0.16666506219583688)
_Q3 = _F32(0.04166713620771784)
_Q4 = _F32(0.008369068561409499)
_Q5 = _F32(0.0013888872861970822)


@njit(cache=False, error_model="numpy", fastmath={"contract"})  # never reassoc: it folds the rounding trick
def exp_shifted_f32(d):
    """``e^d`` in float32 for float32 ``d <= 64`` (0 below -87.68, e^64 above 64, NaN propagates), within 1 ulp."""
    dc = min(max(d, _CLAMP), _CLAMP_HI)
    t = dc * _LOG2E + _MAGIC
    kf = t - _MAGIC
    k = _F32(t).view(np.int32) - _MAGIC_BITS
    r = dc - kf * _LN2_HI
    r = r - kf * _LN2_LO
    p = _Q5
    p = p * r + _Q4
    p = p * r + _Q3
    p = p * r + _Q2
    p = p * r + _Q1
    p = p * r + _Q0
    y = p * r + _F32(1.0)
    return y * np.int32((k + 127) << 23).view(np.float32)  # 2^k, k in [-127, 92]; 2^-127 reads as 0


def shift(v, m):
    """``v - m`` in the precision of the element ``v`` (``m``, a row maximum or another element of
    the row, is exact in it)."""


def exp_shift(v, m):
    """``exp(v - m)`` for an element ``v`` of a row shifted by ``m`` (float64 ``m``)."""


@overload(shift, inline="always")
def _shift(v, m):
    if v == nbtypes.float32:
        return lambda v, m: v - _F32(m)
    return lambda v, m: np.float64(v) - m


@overload(exp_shift, inline="always")
def _exp_shift(v, m):
    if v == nbtypes.float32:
        return lambda v, m: exp_shifted_f32(v - _F32(m))
    return lambda v, m: exp(np.float64(v) - m)


@_prim
def _no_row(a):
    # an empty 1-D C-contiguous view (``a[0:0, 0]`` would be strided and slow down the loops)
    return a.reshape(-1)[:0]


@_prim
def _same(a, b):
    return a.size > 0 and a.ctypes.data == b.ctypes.data


@_exact
def _add(a, b):
    return a + b


@_exact
def _sub(a, b):
    # a - b rounded once, as written: a kernel compiled with reassociation may otherwise fold a
    # difference of two large logits into a sum at their magnitude (x_y - (m + log s) loses every
    # digit of a loss near 1 once |m| is near 1e16)
    return a - b


@_prim
def _keeps_shift(s, dy):
    """Whether a row shifted by an estimate ``m`` of its maximum (sum ``s`` of ``exp(x - m)``, target
    ``dy = x_y - m`` above the shift) keeps the accuracy of the exact maximum.

    The shift is exact for ``lse = m + log s`` in any case; what it can cost is the loss
    ``log s - dy``: with the target above the shift both terms carry the shift's excess, and their
    difference loses the digits of ``log s`` that the excess occupies (a confident row with its
    target 30 above the shift: ~4e-15 absolute in float64, ~1e-7 with float32 terms, on a loss of
    1e-10). Kept while that costs at most one bit (``dy <= log(s) / 2``, so the loss is at least half
    of ``log s``) and the sum is in range (``SHIFT_SUM_LIMIT``; NaN fails).
    """
    return s < SHIFT_SUM_LIMIT and (dy <= 0.0 or 2.0 * dy <= log(s))


# -- single-row loops ---------------------------------------------------------------------------


@_prim
def _max1(x):
    # eight independent running maxima: a dependency chain of one compare per element would run
    # at one element per cycle; these vectorise. NaN needs no care: exp(NaN - m) makes the row NaN.
    n = x.size
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    n8 = n - n % 8
    for j in range(0, n8, 8):
        m0 = max(m0, x[j])
        m1 = max(m1, x[j + 1])
        m2 = max(m2, x[j + 2])
        m3 = max(m3, x[j + 3])
        m4 = max(m4, x[j + 4])
        m5 = max(m5, x[j + 5])
        m6 = max(m6, x[j + 6])
        m7 = max(m7, x[j + 7])
    for j in range(n8, n):
        m0 = max(m0, x[j])
    return np.float64(max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7))))


@_prim
def _exp_sum1(x, m, e, pad):
    """``sum_j exp(x_j - m)``, storing the terms in ``e`` unless it is empty (``e`` may be ``x``).

    The main loops run over a multiple of ``VECTOR_CHUNK`` elements, which LLVM's vector loop then
    covers completely (its scalar remainder never runs); the tail goes through ``pad`` (scratch of
    length ``VECTOR_CHUNK``) filled with ``-inf``, whose exponential is 0.
    """
    n = x.size
    nv = n - n % VECTOR_CHUNK
    s = 0.0
    if e.size == 0:
        for j in range(nv):
            s += exp_shift(x[j], m)
    elif _same(x, e):  # one array: LLVM's alias check would send two aliasing ones to scalar code
        for j in range(nv):
            v = exp_shift(e[j], m)
            e[j] = v
            s += v
    else:
        for j in range(nv):
            v = exp_shift(x[j], m)
            e[j] = v
            s += v
    if nv < n:
        nt = n - nv
        for k in range(nt):  # element loops: a slice assignment compiles its shape check
            pad[k] = x[nv + k]
        for k in range(nt, VECTOR_CHUNK):
            pad[k] = -np.inf
        t = 0.0
        for k in range(VECTOR_CHUNK):
            v = exp_shift(pad[k], m)
            pad[k] = v
            t += v
        s = _add(s, t)
        if e.size:
            for k in range(n - nv):
                e[nv + k] = pad[k]
    return s


@_prim
def _shift_exp_sum1(x, xy, e, pad):
    """``(m, sum_j exp(x_j - m))`` of a row of at least ``VECTOR_CHUNK`` elements (target logit
    ``xy``), in one pass when it can.

    ``m`` is the maximum of the first ``VECTOR_CHUNK`` elements: a valid shift for a stable
    log-sum-exp as long as no element exceeds it by much and the target does not lie far above it,
    which the sum tells (:func:`_keeps_shift`; NaN and infinities fail too). Otherwise the row takes
    its exact maximum and a second pass. ``e`` (storing the terms, unless empty) must not be ``x``:
    the second pass re-reads ``x``; see :func:`_in_place_shift` for that case.
    """
    m = _max1(x[:VECTOR_CHUNK])
    if abs(m) < np.inf:
        s = _exp_sum1(x, m, e, pad)
        if _keeps_shift(s, _sub(xy, m)):
            return m, s
    m = _max1(x)
    return m, _exp_sum1(x, m, e, pad)


@_prim
def _in_place_shift(x, mx, xy, pad):
    """The shift :func:`_shift_exp_sum1` takes for row ``x`` (maximum ``mx``, target logit ``xy``),
    found without writing it.

    So that a gradient written over its logits has the same bits as one written elsewhere. The
    maximum settles almost every row: a spread under ``63 - log(n) - 1`` keeps the sum below the
    limit (and with the target at or below the shift, nothing else matters), one over 64 puts a term
    at e^64 or more; only the rows in between and those with the target above the shift take a
    sum-only pass, which decides as :func:`_keeps_shift` does.
    """
    m = _max1(x[:VECTOR_CHUNK])
    if not abs(m) < np.inf:
        return mx
    d = mx - m
    dy = _sub(xy, m)
    if d <= 62.0 - np.log(x.size) and dy <= 0.0:
        return m
    if d > 64.0 or d != d:
        return mx
    return m if _keeps_shift(_exp_sum1(x, m, pad[:0], pad), dy) else mx  # (pad: a writable type, as e must be)



@_prim
def _dot1(x, t, w, m):
    # sum_j t_j w_j (x_j - m); empty t or w read as ones
    s = 0.0
    if t.size and w.size:
        for j in range(x.size):
            s += np.float64(t[j]) * w[j] * (np.float64(x[j]) - m)
    elif t.size:
        for j in range(x.size):
            s += np.float64(t[j]) * (np.float64(x[j]) - m)
    elif w.size:
        for j in range(x.size):
            s += w[j] * (np.float64(x[j]) - m)
    else:
        for j in range(x.size):
            s += np.float64(x[j]) - m
    return s



@_prim
def _scale1(g, c):
    # in the precision of g: a float32 row multiplied in float64 lanes runs at half the speed; but
    # not a factor that float32 would round into its subnormal range
    cg = g.dtype.type(c)
    if abs(c) >= 1e-30 or c == 0.0:
        for j in range(g.size):
            g[j] = g[j] * cg
    else:
        for j in range(g.size):
            g[j] = g.dtype.type(np.float64(g[j]) * c)


@_prim
def _scale_add1(g, c, a, t, b, w):
    # g_j <- c g_j + (a t_j + b) w_j; empty t contributes a t_j = 0, empty w reads as ones
    if t.size and w.size:
        for j in range(g.size):
            g[j] = c * g[j] + (a * t[j] + b) * w[j]
    elif t.size:
        for j in range(g.size):
            g[j] = c * g[j] + (a * t[j] + b)
    elif w.size:
        for j in range(g.size):
            g[j] = c * g[j] + b * w[j]
    else:
        for j in range(g.size):
            g[j] = c * g[j] + b


# -- soft-capped logits: c = cap tanh(x / cap), computed on the fly ------------------------------
#
# A kernel with logit soft-capping never stores the capped logits (that would be a logits-sized
# buffer when only the loss is wanted, and the gradient needs tanh' of every logit anyway): these
# loops cap each element as they read it, in float64.




@_prim
def _cap_scale_add1(g, x, m, c, a, t, b, w, cap):
    # g_j <- (c exp(c_j - m) + (a t_j + b) w_j) (1 - tanh^2(x_j / cap)); g may be x
    has_t = t.size > 0
    has_w = w.size > 0
    if _same(g, x):  # one array, as in _exp_sum1: an aliasing pair would be sent to scalar code
        for j in range(g.size):
            th = tanh(np.float64(g[j]) / cap)
            u = b
            if has_t:
                u += a * np.float64(t[j])
            if has_w:
                u *= w[j]
            g[j] = (c * exp(cap * th - m) + u) * (1.0 - th * th)
    else:
        for j in range(g.size):
            th = tanh(np.float64(x[j]) / cap)
            u = b
            if has_t:
                u += a * np.float64(t[j])
            if has_w:
                u *= w[j]
            g[j] = (c * exp(cap * th - m) + u) * (1.0 - th * th)


# -- block primitives (rows of a C-contiguous 2-D block) -----------------------------------------
#
# Reductions over a row longer than SEGMENT add up per-piece results in piece order, exactly as the
# split twins do, so a row's result does not depend on whether its pieces ran in parallel (and the
# driver may choose between the two by the number of threads without changing a bit).


@_prim
def row_max(x):
    """Maximum of each row (float64); kernels use it only as the shift of a stable log-sum-exp.

    Like every primitive, a row's result depends on that row alone, never on the other rows of its
    block (so per-sample losses do not change with how a batch is cut into blocks or chunks).
    """
    nr, nc = x.shape
    m = np.empty(nr)
    if nc < SHORT_ROW:
        for r in range(nr):
            xr = x[r]
            mr = xr[0]
            for j in range(1, nc):
                mr = max(mr, xr[j])
            m[r] = mr
        return m
    for r in range(nr):
        m[r] = _max1(x[r])
    return m


@_prim
def _exp_sum_pieces(x, m, e, pad):
    nc = x.size
    s = 0.0
    for lo in range(0, nc, SEGMENT):
        hi = min(lo + SEGMENT, nc)
        s = _add(s, _exp_sum1(x[lo:hi], m, e[lo:hi] if e.size else e, pad))
    return s


@_prim
def _exp_flat(flat):
    """``flat_k <- exp(flat_k)`` for arguments ``<= 0``, over a multiple of ``VECTOR_CHUNK`` and then
    the tail through a padded chunk (padding exp(0) = 1, discarded). Element by element: a row's
    terms do not depend on where the row sits in the block."""
    n = flat.size
    nv = n - n % VECTOR_CHUNK
    for k in range(nv):
        flat[k] = exp_shift(flat[k], 0.0)
    if nv < n:
        pad = np.zeros(VECTOR_CHUNK, flat.dtype)
        for k in range(n - nv):
            pad[k] = flat[nv + k]
        for k in range(VECTOR_CHUNK):
            pad[k] = exp_shift(pad[k], 0.0)
        for k in range(n - nv):
            flat[nv + k] = pad[k]


@_prim
def exp_sum(x, m, e):
    """``s_r = sum_j exp(x_rj - m_r)``; also stores ``e_rj = exp(x_rj - m_r)`` when ``e`` is not empty.

    ``e`` may be ``x`` (in-place gradient). Rows shorter than ``SHORT_EXP`` are shifted row by row,
    exponentiated in one flat pass over the block and then summed row by row.
    """
    nr, nc = x.shape
    s = np.empty(nr)
    if nc >= SHORT_EXP:
        pad = np.empty(VECTOR_CHUNK, x.dtype)
        for r in range(nr):
            s[r] = _exp_sum_pieces(x[r], m[r], e[r] if e.size else _no_row(e), pad)
        return s
    buf = e if e.size else np.empty_like(x)
    for r in range(nr):
        xr = x[r]
        br = buf[r]
        mr = m[r]
        for j in range(nc):
            br[j] = shift(xr[j], mr)
    _exp_flat(buf.reshape(-1))
    for r in range(nr):
        s[r] = _row_sum1(buf[r])  # noqa: F821  (generated from TABLE below)
    return s


@_prim
def gather(x, y):
    """``x[r, y_r]`` for every row, as float64."""
    out = np.empty(x.shape[0])
    for r in range(x.shape[0]):
        out[r] = x[r, y[r]]
    return out


@_prim
def _shifted_gather(x, y, m):
    out = np.empty(x.shape[0])
    for r in range(x.shape[0]):
        out[r] = _sub(np.float64(x[r, y[r]]), m[r])
    return out


@_prim
def shifted(v, m):
    """``v_r - m_r`` per row, rounded once: a kernel's difference of two large per-row values (a
    target logit and the shift) that its compiler must not reassociate (see :func:`softmax_pass`)."""
    out = np.empty(v.size)
    for r in range(v.size):
        out[r] = _sub(v[r], m[r])
    return out


@_prim
def softmax_pass(x, y, e):
    """``(x[r, y_r] - m_r, m_r, s_r)`` per row, ``s_r = sum_j exp(x_rj - m_r)``; ``e <- exp(x - m)`` unless empty.

    The pass of a softmax over class-index rows, in one read of each row where possible: ``m_r`` is
    a *shift*, not always the row maximum (``max_j x_rj - 64 < m_r <= max_j x_rj``), which is all a
    stable log-sum-exp needs (``lse = m + log s``). Estimating it from the row's first elements saves
    the separate pass that finds the maximum, a pass that waits on memory for every row (see
    :func:`_shift_exp_sum1`). ``e`` may be ``x`` (in place): the row's maximum is then found first
    and the same shift chosen (:func:`_in_place_shift`), so both give the same bits. Short rows, and
    rows long enough for the split twins (which find the exact maximum in parallel pieces), take
    the exact maximum: a row's result never depends on the thread count. Target logits are read
    after each row's maximum or pass, while the row is in cache, and before it is overwritten.

    The target logit comes back shifted, ``x_y - m`` rounded once (exact for the logits of one row
    within a factor 2 of each other): then a kernel's ``log p_y = (x_y - m) - log s`` never passes
    through ``lse`` at the logits' magnitude, whatever its compiler reassociates, and four equal
    logits of 1e30 give ``log 4``.
    """
    nr, nc = x.shape
    if nc < VECTOR_CHUNK or nc >= 2 * SEGMENT:
        m = row_max(x)
        xy = _shifted_gather(x, y, m)  # after the maximum, which brought the block into cache; before e is written
        return xy, m, exp_sum(x, m, e)
    xy = np.empty(nr)
    m = np.empty(nr)
    s = np.empty(nr)
    pad = np.empty(VECTOR_CHUNK, x.dtype)
    if _same(x, e):
        for r in range(nr):
            xr = x[r]
            xr_y = np.float64(xr[y[r]])
            mr = _in_place_shift(xr, _max1(xr), xr_y, pad)
            xy[r] = _sub(xr_y, mr)
            m[r] = mr
            s[r] = _exp_sum1(xr, mr, e[r], pad)  # e[r], not xr: x may be typed read-only (it is e here)
        return xy, m, s
    for r in range(nr):
        xr_y = np.float64(x[r, y[r]])
        mr, s[r] = _shift_exp_sum1(x[r], xr_y, e[r] if e.size else _no_row(e), pad)
        m[r] = mr
        xy[r] = _sub(xr_y, mr)
    return xy, m, s







@_prim
def add_at(g, y, b):
    """``g[r, y_r] += b_r``."""
    for r in range(g.shape[0]):
        g[r, y[r]] += b[r]







# -- the table: each primitive over the class axis, written once -----------------------------------
#
# An entry says what a primitive computes for one element ``j`` of a row (``element``, in a
# notation both targets compile: ``f64``, ``exp``, ``log`` and ``tanh`` are bound per target), how
# the elements' results combine (``"sum"``: float64 running sum; ``"max"``; ``"map"``: the element
# stores into its row and nothing is returned) and the role of each argument:
#
# ``rows``      a (rows, classes) block read element by element (``x[j]``: its element in the row)
# ``rows?``     the same, or an empty block meaning "not given" (``has_<name>`` tells which)
# ``out``       a (rows, classes) block the element stores into (``map``: the first argument)
# ``out?``      the same, or empty: nothing stored
# ``classes?``  a per-class float64 vector (``w[j]``), or empty
# ``each``      a per-row float64 vector: the element sees the row's entry as a scalar
# ``scalar``    a float the element sees as is
# ``+pad``      (CPU only) scratch of VECTOR_CHUNK elements of the row's dtype, for the piece
#
# From an entry the module builds, by source generation (``_generate``):
#
# * the serial piece ``_<name>1(...)`` over a 1-D slice of a row, unless the entry names a
#   hand-written one (``piece``). Those exist where the CPU needs more than a loop over the element:
#   loops specialised per given input and per aliasing (LLVM's runtime alias check and in-loop
#   branches send a loop to scalar code), padded vector tails, eight interleaved maxima, a guard
#   against float32 subnormal factors. Their operation order is part of the numerical contract
#   (results are bit-identical to the kernels they replaced), which is also why ``dot``'s piece
#   multiplies its factors in another order than its element (``t w (x - m)`` vs ``((x - m) t) w``):
#   the device has always taken the element's order, the CPU the piece's.
# * the block form ``<name>(...)`` over every row of a block, unless the entry says ``block=False``
#   (``row_max`` and ``exp_sum`` have hand-written ones with a strategy for short rows):
#   reductions add up the pieces of a row (``SEGMENT`` elements each) in piece order, maps run the
#   piece over whole rows;
# * the split twin ``_<name>_split(...)``: one ``prange`` over every (row, piece), the pieces'
#   results then combined in piece order, so a row's bits do not depend on the split;
# * on CUDA (:mod:`fastloss.kinds.softmax.cuda`), the block-cooperative ``_b_<name>`` and the
#   one-thread ``_s_<name>`` from the element (``x[j]`` becomes ``x[0, j]`` of a one-row block).
#
# So each primitive is written at most three times where there used to be five forms: its element
# (always), a CPU piece (where vectorisation needs one) and a CPU block form (row_max, exp_sum).


class Primitive(NamedTuple):
    """One row primitive over the class axis (see the comment above :data:`TABLE`)."""

    args: str
    combine: str
    element: str
    doc: str
    piece: str | None = None
    block: bool = True


_OPTIONAL_T = """
if has_t:
    v *= f64(t[j])
if has_w:
    v *= w[j]"""

_OPTIONAL_U = """
u = b
if has_t:
    u += a * f64(t[j])
if has_w:
    u *= w[j]"""

#: The row primitives over the class axis, by the name kernels call them by (``R.<name>``).
TABLE = {
    "row_max": Primitive(
        "x:rows", "max", "v = f64(x[j])",
        "Maximum of each row (float64); kernels use it only as the shift of a stable log-sum-exp.",
        piece="_max1", block=False),
    "exp_sum": Primitive(
        "x:rows m:each e:out? +pad", "sum",
        "v = exp(REAL(x[j]) - REAL(m))\nif has_e:\n    e[j] = v",
        "``s_r = sum_j exp(x_rj - m_r)``; also stores ``e_rj = exp(x_rj - m_r)`` when ``e`` is not empty.",
        piece="_exp_sum1", block=False),
    "dot": Primitive(
        "x:rows t:rows? w:classes? m:each", "sum", "v = f64(x[j]) - m" + _OPTIONAL_T,
        "``sum_j t_rj w_j (x_rj - m_r)`` per row (empty ``t`` or ``w``: ones).",
        piece="_dot1"),
    "row_sum": Primitive(
        "t:rows", "sum", "v = f64(t[j])",
        "``sum_j t_rj`` per row."),
    "xlogx": Primitive(
        "t:rows", "sum", "u = f64(t[j])\nv = u * log(u) if u != 0.0 else 0.0",
        "``sum_j t_rj log t_rj`` per row, with ``0 log 0 = 0`` (negative entries give NaN)."),
    "scale_rows": Primitive(
        "g:out c:each", "map", "g[j] = g[j] * c",
        "``g_rj <- c_r g_rj``.",
        piece="_scale1"),
    "scale_add": Primitive(
        "g:out c:each a:scalar t:rows? b:scalar w:classes?", "map", _OPTIONAL_U[1:] + "\ng[j] = c * g[j] + u",
        "``g_rj <- c_r g_rj + (a t_rj + b) w_j`` (empty ``t``: the ``a`` term vanishes; empty ``w``: ones).",
        piece="_scale_add1"),
    # soft-capped logits: c = cap tanh(x / cap), computed on the fly. A kernel with logit soft-capping
    # never stores the capped logits (that would be a logits-sized buffer when only the loss is wanted,
    # and the gradient needs tanh' of every logit anyway): these cap each element as they read it.
    "cap_exp_sum": Primitive(
        "x:rows m:each cap:scalar", "sum", "v = exp(cap * tanh(f64(x[j]) / cap) - m)",
        "``s_r = sum_j exp(c_rj - m_r)`` with ``c = cap tanh(x / cap)`` (``m``: the capped row maximum).\n\n"
        "    Reads ``x`` only: soft-capped kernels never hold the capped logits (see :func:`cap_scale_add`)."),
    "cap_dot": Primitive(
        "x:rows t:rows? w:classes? m:each cap:scalar", "sum", "v = cap * tanh(f64(x[j]) / cap) - m" + _OPTIONAL_T,
        "``sum_j t_rj w_j (c_rj - m_r)`` per row with ``c = cap tanh(x / cap)`` (empty ``t`` or ``w``: ones)."),
    "cap_scale_add": Primitive(
        "g:out x:rows m:each c:each a:scalar t:rows? b:scalar w:classes? cap:scalar", "map",
        "th = tanh(f64(x[j]) / cap)\n" + _OPTIONAL_U[1:] + "\ng[j] = (c * exp(cap * th - m) + u) * (1.0 - th * th)",
        "``g_rj <- (c_r exp(c_rj - m_r) + (a t_rj + b) w_j) (1 - tanh^2(x_rj / cap))``, ``c = cap tanh(x / cap)``.\n\n"
        "    The soft-capped counterpart of ``exp_sum`` + ``scale_add``: the gradient with respect to the\n"
        "    capped logits times the derivative of the cap, element by element (``g`` may be ``x``).",
        piece="_cap_scale_add1"),
}


def roles(entry: Primitive) -> list[tuple[str, str]]:
    """``(name, role)`` of the entry's arguments, in order (``+pad`` excluded)."""
    return [tuple(a.split(":")) for a in entry.args.split() if not a.startswith("+")]


def _indent(text: str, n: int) -> str:
    return textwrap.indent(text, " " * n)


def piece_source(name: str, entry: Primitive) -> str:
    """The serial piece ``_<name>1`` over 1-D slices of rows, from the entry's element."""
    args = roles(entry)
    pre = [f"has_{a} = {a}.size > 0" for a, role in args if role.endswith("?")]
    first = args[0][0]
    loop = f"for j in range({first}.size):\n" + _indent(entry.element, 4)
    if entry.combine == "sum":
        body = ["s = 0.0", loop + "\n    s += v", "return s"]
    elif entry.combine == "max":
        body = ["s = -np.inf", loop + "\n    s = max(s, v)", "return s"]
    else:
        body = [loop]
    sig = ", ".join(a for a, _ in args)
    return f"def _{name}1({sig}):\n" + _indent("\n".join(pre + body), 4) + "\n"


def _piece_args(entry: Primitive, row: str, span: str | None) -> str:
    """The piece call's arguments for row ``row`` and class range ``span`` (``None``: the whole row)."""
    out = []
    for a, role in roles(entry):
        if role in ("rows", "out"):
            out.append(f"{a}[{row}, {span}]" if span else f"{a}[{row}]")
        elif role in ("rows?", "out?"):
            out.append(f"{a}[{row}, {span}] if {a}.size else _no_row({a})" if span
                       else f"{a}[{row}] if {a}.size else _no_row({a})")
        elif role == "classes?":
            out.append(f"{a}[{span}] if {a}.size else {a}" if span else a)
        elif role == "each":
            out.append(f"{a}[{row}]")
        else:
            out.append(a)
    if "+pad" in entry.args:
        out.append("pad")
    return ", ".join(out)


def block_source(name: str, entry: Primitive) -> str:
    """The block form ``<name>`` over every row of a block."""
    args = roles(entry)
    sig = ", ".join(a for a, _ in args)
    first = args[0][0]
    piece = entry.piece or f"_{name}1"
    if entry.combine == "map":
        body = f"for r in range({first}.shape[0]):\n    {piece}({_piece_args(entry, 'r', None)})"
    else:
        body = (f"nr, nc = {first}.shape\n"
                "out = np.empty(nr)\n"
                "for r in range(nr):\n"
                "    s = 0.0\n"
                "    for lo in range(0, nc, SEGMENT):\n"
                "        hi = min(lo + SEGMENT, nc)\n"
                f"        s = _add(s, {piece}({_piece_args(entry, 'r', 'lo:hi')}))\n"
                "    out[r] = s\n"
                "return out")
    return f'def {name}({sig}):\n    """{entry.doc}"""\n' + _indent(body, 4) + "\n"


def split_source(name: str, entry: Primitive) -> str:
    """The split twin ``_<name>_split``: every (row, piece) in parallel, pieces combined in order."""
    args = roles(entry)
    sig = ", ".join(a for a, _ in args)
    first = args[0][0]
    piece = entry.piece or f"_{name}1"
    call = f"{piece}({_piece_args(entry, 'r', 'lo:hi')})"
    pad = f"    pad = np.empty(VECTOR_CHUNK, {first}.dtype)\n" if "+pad" in entry.args else ""
    head = (f"nr, nc = {first}.shape\n"
            "ns = _pieces(nc)\n")
    loop = ("for k in prange(nr * ns):\n"
            "    r = k // ns\n"
            "    lo = (k - r * ns) * SEGMENT\n"
            "    hi = min(lo + SEGMENT, nc)\n" + pad)
    if entry.combine == "map":
        body = head + loop + f"    {call}"
    else:
        combine = ("m = np.empty(nr)\nfor r in range(nr):\n    m[r] = _max1(part[r * ns:(r + 1) * ns])\nreturn m"
                   if entry.combine == "max" else "return _combine(part, nr, ns)")
        body = head + "part = np.empty(nr * ns)\n" + loop + f"    part[k] = {call}\n" + combine
    return f"def _{name}_split({sig}):\n" + _indent(body, 4) + "\n"


#: The source of every generated function, by name (print ``"\n".join(GENERATED.values())`` to read it).
GENERATED: dict[str, str] = {}

_next_line = [0]


def define(source: str, namespace: dict, filename: str):
    """Execute generated ``source`` in ``namespace`` under ``filename`` (the generating module's own
    file); the function it defines.

    Line numbers start past the end of that file, so that nothing (tracebacks, the source hash of
    :func:`fastloss._compile.source_hash`, which then hashes the bytecode and constants) reads an
    unrelated line of the real file as the generated function's source.
    """
    tree = ast.parse(source)
    _next_line[0] += source.count("\n") + 10
    ast.increment_lineno(tree, 100_000 + _next_line[0])
    before = set(namespace)
    exec(compile(tree, filename, "exec"), namespace)  # our own generated code only
    (fname,) = (k for k in namespace if k not in before)
    GENERATED[fname] = source
    return namespace[fname]


def _generate() -> None:
    glb = globals()
    glb["f64"] = np.float64  # the element notation's conversion on the CPU (exp, log, tanh: mathfn's)
    for name, entry in TABLE.items():
        if entry.piece is None:
            define(piece_source(name, entry), glb, __file__)
            glb[f"_{name}1"] = _prim(glb[f"_{name}1"])
        if entry.block:
            define(block_source(name, entry), glb, __file__)
            glb[name] = _prim(glb[name])
        define(split_source(name, entry), glb, __file__)
        glb[f"_{name}_split"] = _split(glb[f"_{name}_split"])


# -- split twins: one row at a time, its pieces in parallel --------------------------------------


@_prim
def _pieces(n):
    return (n + SEGMENT - 1) // SEGMENT


@_prim
def _combine(part, nr, ns):
    # per-row sums of the pieces, in piece order (as the serial primitives add them)
    out = np.empty(nr)
    for r in range(nr):
        s = 0.0
        for k in range(ns):
            s = _add(s, part[r * ns + k])
        out[r] = s
    return out


_generate()


@_prim
def _softmax_pass_split(x, y, e):
    # rows this long take the exact passes in the serial primitive too: the same bits
    m = _row_max_split(x)  # noqa: F821  (generated)
    xy = _shifted_gather(x, y, m)
    return xy, m, _exp_sum_split(x, m, e)  # noqa: F821


#: The primitives a kernel may call (``R.<name>``), and their split twins.
PRIMITIVES = {name: (globals()[name], globals()[f"_{name}_split"]) for name in TABLE}
PRIMITIVES.update({
    "softmax_pass": (softmax_pass, _softmax_pass_split),
    "gather": (gather, gather),
    "shifted": (shifted, shifted),
    "add_at": (add_at, add_at),
})

#: A stand-in for this module with every primitive replaced by its split twin.
SPLIT = types.ModuleType(__name__ + ".split")
SPLIT.__dict__.update({name: pair[1] for name, pair in PRIMITIVES.items()})

