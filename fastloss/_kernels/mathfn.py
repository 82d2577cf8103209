"""Elementary functions that LLVM can vectorise, for use inside compiled kernels.

Numba lowers ``math.exp`` / ``np.exp`` / ``math.log`` (and friends) to calls into the C math
library, one element at a time: a loop that calls them is never vectorised (Numba >= 0.62 has no
SVML, and ``fastmath`` does not change that). The functions here are written in plain arithmetic,
comparisons and integer bit manipulation only, with selects instead of branches, so that a driver
loop calling them compiles to AVX2 / AVX-512 code. Call them from ``@njit`` code like ``math.*``.

Construction (details and measured errors in ``docs/numerics.md``; coefficients from
``tools/fit_mathfn.py``):

* ``exp``/``expm1``: ``x = k ln2 + r`` with ``k = round(x / ln2)`` (rounded by adding ``1.5 * 2^52``,
  whose low mantissa bits are then ``k``), ``r`` computed with a Cody-Waite split of ``ln2`` and its
  rounding error carried along; ``e^r = 1 + r + r^2 P(r)`` with a degree-10 minimax ``P``; ``2^k``
  built from exponent bits, applied as two factors so that ``k`` can range over ``[-1076, 1025]``
  (gradual underflow rounds once).
* ``log``/``log1p``: ``x = 2^k (1 + f)`` with ``1 + f`` in ``[sqrt(1/2), sqrt(2))`` read from the
  bits, ``log(1 + f) = 2 atanh(s)``, ``s = f / (2 + f)``, a degree-6 minimax polynomial in ``s^2``;
  ``log1p`` adds the rounding error of ``1 + x`` as a first-order correction.
* ``sigmoid``/``softplus``/``log_sigmoid``/``tanh`` use ``e^-|x|`` as a double-double, so that they do
  not inherit the rounding of ``exp`` on top of their own; ``pow`` is ``exp(y log x)`` with ``log x``
  in double-double and an exact (fma) product, so its error does not grow with ``|y log x|``.

Every float64 function is within 1.5 ulp over the whole float64 range (exp, expm1, log, log1p within
1 ulp; asserted by ``tests/test_mathfn.py``), and handles ``+-0``, subnormals, ``+-inf`` and NaN like
NumPy. Each is compiled with ``forceinline`` (LLVM ``alwaysinline``: a call left in a loop blocks
vectorisation) and the ``contract`` fast-math flag only, never ``reassoc``, which would let LLVM
fold the rounding and error-compensation steps away. Fast-math flags belong to instructions, so
they survive inlining into drivers compiled with other flags.

``exp_f32`` takes and returns float64 but is only accurate to float32 precision (within 1 float32
ulp after rounding to float32), about twice as fast as ``exp``: for kernels that *opt in* because
their data is float32 and their formula does not cancel (e.g. a softmax over float32 logits).
Pointwise losses keep the float64 functions: see ``docs/numerics.md`` for why.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import intrinsic

from .._compile import inline_helper

__all__ = [
    "exp",
    "exp_f32",
    "expm1",
    "log",
    "log1p",
    "log_sigmoid",
    "pow",
    "sigmoid",
    "softplus",
    "softplus_sigmoid",
    "tanh",
]

# only ever inlined into compiled kernels; the contract flag only (see the module docstring)
_fn = inline_helper({"contract"})

INV_LN2 = 1.4426950408889634
# ln 2 = LN2_HI + LN2_LO; LN2_HI has 32 significant bits, so k * LN2_HI is exact for |k| < 2^21
LN2_HI = 0.6931471803691238
LN2_LO = 1.9082149292705877e-10
# adding 1.5 * 2^52 rounds a float of magnitude < 2^51 to an integer held in the low mantissa bits
SHIFT = 6755399441055744.0
SHIFT_BITS = 0x4338000000000000
SQRT2 = 1.4142135623730951
MIN_NORMAL = 2.2250738585072014e-308
TWO54 = 18014398509481984.0
TINY = 5.551115123125783e-17  # 2^-54: below this, expm1(x) and log1p(x) round to x
EXP_LO = -746.0  # exp(x) rounds to 0 below -745.13; clamping keeps k in range
EXP_HI = 710.0  # exp(x) overflows above 709.78
EXPM1_LO = -40.0  # expm1(x) rounds to -1 below -37.43

# e^r = 1 + r + r^2 P(r), |r| <= ln2 / 2: max relative error of P 2.7e-18
P0 = 0.5
P1 = 0.1666666666666667
P2 = 0.041666666666666616
P3 = 0.008333333333326167
P4 = 0.0013888888888917957
P5 = 0.0001984126987472075
P6 = 2.480158724574152e-05
P7 = 2.7557255514300346e-06
P8 = 2.755734962084805e-07
P9 = 2.5105173597718098e-08
P10 = 2.0889373341260595e-09

# 2 atanh(s) = 2 s + s z Q(z), z = s^2 <= 0.0295: max relative error of Q 4.5e-16
Q0 = 0.666666666666667
Q1 = 0.3999999999989918
Q2 = 0.28571428626106177
Q3 = 0.22222211115826268
Q4 = 0.1818289036932799
Q5 = 0.1533168400243759
Q6 = 0.14616875727368706

# pow: 2 atanh(s) = 2 s + 2/3 s^3 + s^3 z (U1 + U2 z + ...), the degree-8 fit of the same tail
# (max relative error 2.1e-20) with its leading 2/3 carried in double-double
TWO_THIRDS = 0.6666666666666666
TWO_THIRDS_LO = 3.700743415417188e-17
U1 = 0.3999999999999999
U2 = 0.2857142857143538
U3 = 0.22222222219853288
U4 = 0.18181818594384558
U5 = 0.15384575079545262
U6 = 0.13335640790381648
U7 = 0.11688079288281103
U8 = 0.11882374071850559

# tanh(a) = a + a z T(z), z = a^2, a < TANH_POLY: max relative error of T 3.7e-17
TANH_POLY = 0.5625
T0 = -0.3333333333333333
T1 = 0.13333333333332392
T2 = -0.053968253967060044
T3 = 0.021869488476988514
T4 = -0.008863234022060691
T5 = 0.0035921055383807397
T6 = -0.0014556240221790832
T7 = 0.0005887539097064508
T8 = -0.000234106101602469
T9 = 8.426601220398234e-05
T10 = -2.002723874132895e-05

# exp_f32: P of degree 4 (max relative error 1.2e-7, i.e. 1.2e-8 in e^r)
PF0 = 0.4999999955285967
PF1 = 0.16666577319938145
PF2 = 0.04166685334562825
PF3 = 0.008363140379555377
PF4 = 0.0013901285063337534

# the polynomials, highest degree first (see _horner)
EXP_P = (P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0)
LOG_Q = (Q6, Q5, Q4, Q3, Q2, Q1, Q0)
POW_U = (U8, U7, U6, U5, U4, U3, U2, U1)
TANH_T = (T10, T9, T8, T7, T6, T5, T4, T3, T2, T1, T0)
EXP_F32_P = (PF4, PF3, PF2, PF1, PF0)

NAN = float("nan")
INF = float("inf")


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma``; vectorises to ``vfmadd``)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@intrinsic
def _horner(typingctx, x, coefs):
    """``(...(c[0] x + c[1]) x + ...) x + c[-1]`` for a tuple ``coefs`` of float64 constants.

    An intrinsic: the multiply-adds are emitted in that order straight into the caller (one
    ``p = p * x + c`` per coefficient, as written out by hand), so it compiles nothing of its own.
    """
    sig = types.float64(x, coefs)

    def codegen(context, builder, signature, args):
        xv = context.cast(builder, args[0], signature.args[0], types.float64)
        ctys = signature.args[1]
        p = context.cast(builder, builder.extract_value(args[1], 0), ctys[0], types.float64)
        for k in range(1, len(ctys)):
            c = context.cast(builder, builder.extract_value(args[1], k), ctys[k], types.float64)
            p = builder.fadd(builder.fmul(p, xv), c)
        return p

    return sig, codegen


@_fn
def _bits(x):
    return np.float64(x).view(np.int64)


@_fn
def _from_bits(i):
    return np.int64(i).view(np.float64)


@_fn
def _pow2(k):
    """``2.0 ** k`` for integer ``-1022 <= k <= 1023`` (exponent bits only, no rounding)."""
    return _from_bits((k + 1023) << 52)


@_fn
def _reduce(x):
    """``x = k ln2 + r + lo`` with ``|r| <= ln2/2`` (slightly more after rounding); returns ``(k, r, lo)``."""
    t = x * INV_LN2 + SHIFT
    kf = t - SHIFT
    k = _bits(t) - SHIFT_BITS
    hi = x - kf * LN2_HI  # exact: kf * LN2_HI is exact and close to x
    r = hi - kf * LN2_LO
    lo = (hi - r) - kf * LN2_LO  # what the rounding of r lost
    return k, r, lo


@_fn
def _exp_tail(r):
    """``r^2 P(r)`` with ``e^r = 1 + r + r^2 P(r)``."""
    return r * r * _horner(r, EXP_P)


@_fn
def exp(x):
    """``e^x`` for float64, within 1 ulp (gradual underflow, overflow to inf, NaN propagates)."""
    xc = x if x > EXP_LO else EXP_LO  # NaN takes EXP_LO here and is restored at the end
    xc = xc if xc < EXP_HI else EXP_HI
    k, r, lo = _reduce(xc)
    p = 1.0 + (r + (lo + _exp_tail(r)))
    # 2^k as two factors: each is a normal number for k in [-1076, 1025], p * 2^k1 is exact and
    # the second product rounds once, also into the subnormal range or to inf
    k1 = k >> 1
    y = p * _pow2(k1) * _pow2(k - k1)
    return y if x == x else x


@_fn
def expm1(x):
    """``e^x - 1`` for float64, within 1 ulp, exact ``x`` for ``|x| < 2^-54`` (including ``-0.0``)."""
    xc = x if x > EXPM1_LO else EXPM1_LO
    xc = xc if xc < EXP_HI else EXP_HI
    k, r, lo = _reduce(xc)
    t = _exp_tail(r)
    k1 = k >> 1
    s1 = _pow2(k1)
    s2 = _pow2(k - k1)
    # e^x - 1 = 2^k (a + r + lo + t) with a = 1 - 2^-k. For k >= -53 (x > -36.4), a_hi + r is
    # summed exactly (Fast2Sum: |a_hi| >= |r| or a_hi = 0), a_lo catches the rounding of
    # 1 - 2^-k for k > 53, and only the final sum rounds.
    inv = _pow2(-k1) * _pow2(k1 - k)  # 2^-k, exact (possibly subnormal)
    a_hi = 1.0 - inv
    a_lo = (1.0 - a_hi) - inv
    s = a_hi + r
    err = r - (s - a_hi)
    y = (s + (err + (a_lo + (lo + (t + r * lo))))) * s1 * s2
    # below that, e^x - 1 = -1 + (tiny), and rounding 1 + r + ... first costs nothing
    y_neg = (1.0 + (r + (lo + t))) * s1 * s2 - 1.0
    y = y if k >= -53 else y_neg
    y = y if abs(x) >= TINY else x
    return y if x == x else x


@_fn
def _split(x):
    """``(e, f)`` with ``x = 2^e (1 + f)`` and ``1 + f`` in ``[sqrt(1/2), sqrt(2))``, for finite ``x > 0``
    (subnormals included); ``f`` is exact."""
    small = x < MIN_NORMAL
    xs = x * TWO54 if small else x
    ix = _bits(xs)
    e = (ix >> 52) - (1023 + 54 if small else 1023)
    m = _from_bits((ix & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)  # in [1, 2)
    big = m > SQRT2
    m = m * 0.5 if big else m
    e = e + 1 if big else e
    return e, m - 1.0  # f exact, in [sqrt(1/2) - 1, sqrt(2) - 1)


@_fn
def _log1p_reduced(u, cu):
    """``log(u) + cu`` for finite ``u > 0``, ``cu`` a small correction (``c / u`` for ``log(u + c)``).

    The caller divides, so that a plain ``log`` (``cu = 0``) does not pay for a division by ``u``.
    """
    e, f = _split(u)
    s = f / (2.0 + f)
    z = s * s
    R = z * _horner(z, LOG_Q)
    hfsq = 0.5 * f * f
    kf = np.float64(e)
    # log(1 + f) = f - hfsq + s (hfsq + R): the large terms f - hfsq are added last
    return kf * LN2_HI - ((hfsq - (s * (hfsq + R) + (kf * LN2_LO + cu))) - f)


@_fn
def log(x):
    """Natural logarithm for float64, within 1 ulp (``log(0) = -inf``, negative -> NaN)."""
    y = _log1p_reduced(x, 0.0)
    y = -INF if x == 0.0 else y
    y = NAN if x < 0.0 else y
    return y if x < INF else x  # +inf and NaN


@_fn
def log1p(x):
    """``log(1 + x)`` for float64, within 1 ulp, exact ``x`` for ``|x| < 2^-54``."""
    u = 1.0 + x
    # (1 + x) - u exactly (u - 1 is exact here), as a first-order correction log(u + c) ~ log u + c/u
    c = x - (u - 1.0)
    y = _log1p_reduced(u, c / u)
    y = y if abs(x) >= TINY else x
    y = -INF if x == -1.0 else y
    y = NAN if x < -1.0 else y
    return y if x < INF else x


@_fn
def _log_dd(x):
    """``log(x) = hi + lo`` to about 2^-64 relative, for finite ``x > 0`` (what ``pow`` needs)."""
    e, f = _split(x)
    # s = f / (2 + f) in double-double: f - 2 s_hi is exact (Sterbenz), the fma rounds once
    s_hi = f / (2.0 + f)
    s_lo = _fma(-s_hi, f, f - 2.0 * s_hi) / (2.0 + f)
    z_hi = s_hi * s_hi
    z_lo = _fma(s_hi, s_hi, -z_hi)
    s3_hi = s_hi * z_hi
    s3_lo = _fma(s_hi, z_hi, -s3_hi) + (s_hi * z_lo + 3.0 * z_hi * s_lo)
    c3_hi = TWO_THIRDS * s3_hi
    c3_lo = _fma(TWO_THIRDS, s3_hi, -c3_hi) + (TWO_THIRDS * s3_lo + TWO_THIRDS_LO * s3_hi)
    rest = s3_hi * z_hi * _horner(z_hi, POW_U)  # below 4e-4 of the result: plain rounding is accurate enough
    kf = np.float64(e)
    a = kf * LN2_HI  # exact
    b = 2.0 * s_hi
    # Fast2Sum twice: |a| >= |b| unless a = 0, and |a + b| >= |c3_hi|
    s1 = a + b
    e1 = b - (s1 - a)
    s2 = s1 + c3_hi
    e2 = c3_hi - (s2 - s1)
    lo = (e1 + e2) + (kf * LN2_LO + 2.0 * s_lo + c3_lo + rest)
    hi = s2 + lo
    return hi, lo - (hi - s2)


@_fn
def _int_parity(y):
    """``(is_integer, is_odd)`` of a float64 from its bits (``inf`` and ``nan`` are neither)."""
    iy = _bits(y) & 0x7FFFFFFFFFFFFFFF
    e = (iy >> 52) - 1023  # |y| in [2^e, 2^(e+1))
    frac_bits = 52 - e
    shift = frac_bits if frac_bits > 0 else 0
    shift = shift if shift < 63 else 63
    frac = iy & ((np.int64(1) << shift) - 1)
    integer = (frac == 0) if e >= 0 else (iy == 0)
    integer = integer if e < 1024 else False
    odd = integer and e <= 52 and ((iy >> shift) & 1) == 1
    return integer, odd


@_fn
def pow(x, y):
    """``x ** y`` for float64 (C99 / NumPy special cases), within 1.5 ulp for every finite result.

    ``log |x|`` is carried in double-double and multiplied by ``y`` exactly (fma), so the error does
    not grow with ``|y log x|`` as it would in ``exp(y * log(x))``.
    """
    ax = abs(x)
    hi, lo = _log_dd(ax)
    p = y * hi
    pe = _fma(y, hi, -p) + y * lo
    pc = p if p > EXP_LO else EXP_LO  # NaN (ax = 0 or inf, y = 0) is fixed below
    pc = pc if pc < EXP_HI else EXP_HI
    pe = pe if pc == p else 0.0
    # exp(pc + pe): as exp(), with pe folded into the reduced argument and renormalised
    k, r, rl = _reduce(pc)
    rl = rl + pe
    rr = r + rl
    rlo = rl - (rr - r)
    q = 1.0 + (rr + (rlo * (1.0 + rr) + _exp_tail(rr)))
    k1 = k >> 1
    res = q * _pow2(k1) * _pow2(k - k1)
    integer, odd = _int_parity(y)
    # the limits the formula cannot reach: |x| = 0 or inf, and infinite y
    res = (INF if y < 0.0 else 0.0) if ax == 0.0 else res
    res = (0.0 if y < 0.0 else INF) if ax == INF else res
    res = ((INF if (ax < 1.0) == (y < 0.0) else 0.0) if ax != 1.0 else 1.0) if abs(y) == INF else res
    res = -res if (_bits(x) < 0 and odd) else res  # sign bit: (-0.0) ** 3 = -0.0
    res = NAN if (x < 0.0 and x != -INF and not integer and abs(y) != INF) else res
    res = res if (x == x and y == y) else x + y
    return 1.0 if (y == 0.0 or x == 1.0) else res


@_fn
def _exp_neg_dd(a):
    """``e^-a = hi + lo`` for ``a >= 0`` (or NaN), ``lo`` carrying what rounding ``hi`` lost.

    The building block of :func:`sigmoid` and :func:`softplus`, which would otherwise inherit
    the (up to 0.9 ulp) error of a rounded ``exp`` on top of their own roundings.
    """
    xc = EXP_LO if -a < EXP_LO else -a  # NaN stays NaN
    k, r, lo = _reduce(xc)
    t = lo + _exp_tail(r)
    w_hi = r + t  # Fast2Sum: |t| <= |r| (t ~ r^2 / 2)
    w_lo = t - (w_hi - r)
    p_hi = 1.0 + w_hi
    p_lo = (w_hi - (p_hi - 1.0)) + w_lo
    k1 = k >> 1
    s1 = _pow2(k1)
    s2 = _pow2(k - k1)
    return p_hi * s1 * s2, p_lo * s1 * s2


@_fn
def tanh(x):
    """Hyperbolic tangent for float64, within 1.5 ulp (odd, ``tanh(-0.0) = -0.0``)."""
    a = abs(x)
    z = a * a
    t_small = a + a * z * _horner(z, TANH_T)
    # above TANH_POLY: 1 - q with q = 2 e / (1 + e) < 1/2, e = e^-2a carried in double-double, so the
    # subtraction loses nothing; e^-2a is also what softplus(-2a) computes (log_cosh shares it)
    e, e_lo = _exp_neg_dd(2.0 * a)
    d = 1.0 + e
    d_err = (e - (d - 1.0)) + e_lo  # 1 + e - d (d - 1 is exact for d in [1, 2])
    q = 2.0 * e / d
    q = q + (2.0 * e_lo - q * d_err) * (1.0 - 0.5 * q)  # first order in e_lo, d_err; 1 / d = 1 - q / 2
    t = t_small if a < TANH_POLY else 1.0 - q
    t = -t if _bits(x) < 0 else t  # the sign bit, so that tanh(-0.0) = -0.0
    return t if x == x else x


@_fn
def _sigmoid_dd(x, e, e_lo):
    """``sigmoid(x)`` from ``e^-|x| = e + e_lo``."""
    d = 1.0 + e
    d_err = (e - (d - 1.0)) + e_lo  # 1 + e - d (d - 1 is exact for d in [1, 2])
    pos = x >= 0.0
    # one division for both signs (a select of two quotients would compute both)
    q = (1.0 if pos else e) / d
    # first-order corrections: (n + n_lo) / (d + d_err) = q + (n_lo - q d_err) / d, 1 / d = q or 1 - q
    inv_d = q if pos else 1.0 - q
    return q + ((0.0 if pos else e_lo) - q * d_err) * inv_d


@_fn
def _log1p_dd(e, e_lo):
    """``log(1 + e^-|x|)`` from ``e^-|x| = e + e_lo``: the common part of ``softplus(x)`` and ``softplus(-x)``."""
    u = 1.0 + e
    return _log1p_reduced(u, ((e - (u - 1.0)) + e_lo) / u)


@_fn
def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + e^-x)``, within 1.5 ulp, without overflow (``e^-|x|`` only)."""
    e, e_lo = _exp_neg_dd(abs(x))
    return _sigmoid_dd(x, e, e_lo)


@_fn
def softplus(x):
    """``log(1 + e^x) = max(x, 0) + log1p(e^-|x|)``, within 1.5 ulp, without overflow."""
    e, e_lo = _exp_neg_dd(abs(x))
    return max(x, 0.0) + _log1p_dd(e, e_lo)


@_fn
def log_sigmoid(x):
    """``log(sigmoid(x)) = -softplus(-x)``, within 1.5 ulp, without overflow (``-0.0`` where it underflows)."""
    e, e_lo = _exp_neg_dd(abs(x))
    return -(max(-x, 0.0) + _log1p_dd(e, e_lo))


@_fn
def softplus_sigmoid(x):
    """``(softplus(x), softplus(-x), sigmoid(x))`` from one ``e^-|x|`` and one ``log1p``.

    The same bits as the three separate calls, at a third of their cost to compile and to run:
    binary cross entropy on logits needs all three.
    """
    e, e_lo = _exp_neg_dd(abs(x))
    lp = _log1p_dd(e, e_lo)
    return max(x, 0.0) + lp, max(-x, 0.0) + lp, _sigmoid_dd(x, e, e_lo)


@_fn
def exp_f32(x):
    """``e^x`` to float32 precision (float64 in and out; overflow, underflow and NaN as :func:`exp`)."""
    xc = x if x > EXP_LO else EXP_LO
    xc = xc if xc < EXP_HI else EXP_HI
    t = xc * INV_LN2 + SHIFT
    kf = t - SHIFT
    k = _bits(t) - SHIFT_BITS
    r = xc - kf * LN2_HI - kf * LN2_LO
    p = 1.0 + (r + r * r * _horner(r, EXP_F32_P))
    k1 = k >> 1
    y = p * _pow2(k1) * _pow2(k - k1)
    return y if x == x else x
