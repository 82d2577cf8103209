"""The vectorisable elementary functions of ``fastloss._kernels.mathfn`` against NumPy, over the whole range.

Errors are measured in ulps of the float64 (or float32) result against NumPy's ``longdouble``
functions (x87 extended precision: 11 more bits than float64, so the reference itself is exact to
about 1/2000 ulp). Every function is called from loops compiled with the drivers' fast-math flags,
because that is how kernels use them (inlined into code that may reassociate).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastloss import _config
from fastloss._kernels import mathfn

L = np.longdouble
EXTENDED = np.finfo(L).nmant >= 63
needs_extended = pytest.mark.skipif(
    not EXTENDED, reason="the ulp reference needs NumPy's 80-bit longdouble (x86); float64 references are too coarse"
)

#: documented bound (ulp, float64) -> see docs/numerics.md for the measured maxima
BOUND = {
    "exp": 1.0, "expm1": 1.0, "log": 1.0, "log1p": 1.0, "tanh": 1.5,
    "sigmoid": 1.5, "softplus": 1.5, "log_sigmoid": 1.5, "pow": 1.5,
}
#: exp_f32's bound in float32 ulps, after rounding its result to float32
EXP_F32_BOUND = 1.0


def _sigmoid_ref(v):
    return 1 / (1 + np.exp(-v))


def _softplus_ref(v):
    return np.logaddexp(L(0), v)


def _log_sigmoid_ref(v):
    return -np.logaddexp(L(0), -v)


REFERENCE = {
    "exp": np.exp, "expm1": np.expm1, "log": np.log, "log1p": np.log1p, "tanh": np.tanh,
    "sigmoid": _sigmoid_ref, "softplus": _softplus_ref, "log_sigmoid": _log_sigmoid_ref,
}
UNARY = list(REFERENCE)

_exp, _expm1, _log, _log1p, _tanh = mathfn.exp, mathfn.expm1, mathfn.log, mathfn.log1p, mathfn.tanh
_sigmoid, _softplus, _log_sigmoid = mathfn.sigmoid, mathfn.softplus, mathfn.log_sigmoid
_pow, _exp_f32 = mathfn.pow, mathfn.exp_f32


@numba.njit(**_config.jit_options(False))
def _apply_unary(x, out):
    # one loop for all functions: one compilation, and each row is a vectorised stream
    o0, o1, o2, o3, o4, o5, o6, o7 = out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]
    for i in range(x.size):
        v = x[i]
        o0[i] = _exp(v)
        o1[i] = _expm1(v)
        o2[i] = _log(v)
        o3[i] = _log1p(v)
        o4[i] = _tanh(v)
        o5[i] = _sigmoid(v)
        o6[i] = _softplus(v)
        o7[i] = _log_sigmoid(v)


@numba.njit(**_config.jit_options(False))
def _apply_pow(x, y, out):
    for i in range(x.size):
        out[i] = _pow(x[i], y[i])


@numba.njit(**_config.jit_options(False))
def _apply_exp_f32(x, out):
    for i in range(x.size):
        out[i] = _exp_f32(x[i])


def unary(x) -> dict[str, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty((len(UNARY), x.size))
    _apply_unary(x, out)
    return dict(zip(UNARY, out))


def ulp_error(y, ref, dtype=np.float64) -> np.ndarray:
    """``|y - ref|`` in ulps of ``ref`` at ``dtype``'s precision; 0 where ``y`` is ``ref`` correctly
    rounded (including inf, NaN and the sign of zero), inf where a non-finite or zero result is wrong."""
    info = np.finfo(dtype)
    ref = np.asarray(ref, dtype=L)
    y = np.asarray(y, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = ref.astype(dtype)
        _, e = np.frexp(np.abs(ref))
        ulp = np.ldexp(L(1), np.maximum(e.astype(np.int64) - (info.nmant + 1), info.minexp - info.nmant))
        err = (np.abs(y.astype(L) - ref) / ulp).astype(np.float64)
    exact = (y == rounded) & (np.signbit(y) == np.signbit(rounded))
    exact |= np.isnan(y) & np.isnan(rounded)
    err[exact] = 0.0
    special = ~np.isfinite(rounded) | ~np.isfinite(y) | (rounded == 0) | (y == 0)
    err[special & ~exact] = np.inf
    return err


def every_binade(rng, per_binade=48, dtype=np.float64) -> np.ndarray:
    """Random mantissas in every exponent of ``dtype`` (subnormals included), both signs."""
    nbits = 64 if dtype == np.float64 else 32
    mant = np.finfo(dtype).nmant
    itype = np.int64 if nbits == 64 else np.int32
    n_exp = 2 ** (nbits - 1 - mant) - 1  # finite exponent fields
    expo = np.repeat(np.arange(n_exp, dtype=np.int64), per_binade)
    m = rng.integers(0, 2**mant, expo.size, dtype=np.int64)
    bits = (expo << mant) | m
    x = bits.astype(itype).view(dtype)
    return np.concatenate([x, -x])


def random_bits(rng, n) -> np.ndarray:
    """Uniform over float64 bit patterns (every finite, infinite and NaN value is possible)."""
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64).view(np.float64)


def _around(*values) -> list[float]:
    out = []
    with np.errstate(over="ignore"):
        for v in values:
            out += [np.nextafter(v, -np.inf), v, np.nextafter(v, np.inf)]
    return out


TINY = float(np.finfo(np.float64).smallest_subnormal)
MIN_NORMAL = float(np.finfo(np.float64).tiny)
MAX = float(np.finfo(np.float64).max)
SPECIAL = np.array([*sorted({
    *_around(0.0, TINY, MIN_NORMAL, MAX, 1.0, 0.5, 2.0, np.sqrt(2.0), np.sqrt(0.5), np.log(2.0) / 2,
             2.0**-54, 2.0**-28, 1e-300, 1e300,
             709.782712893384,  # largest x with a finite exp(x)
             -708.3964185322641,  # exp(x) becomes subnormal
             -745.1332191019411,  # exp(x) rounds to 0 below
             -37.42994775023705,  # expm1(x) rounds to -1 below
             0.5625, 19.06154746539849,  # tanh: polynomial / exp switch, tanh rounds to 1 above
             36.7368005696771,  # softplus(x) rounds to x above
             ),
    1.0 - 2.0**-53, 0.75, 3.0, 10.0, 100.0, 700.0, 710.0, 746.0, 1000.0,
}), -0.0, np.inf, np.nan])
SPECIAL = np.concatenate([SPECIAL, -SPECIAL])


def check(name, x, y, ref, bound, dtype=np.float64):
    err = ulp_error(y, ref, dtype)
    worst = int(np.argmax(err))
    assert err[worst] <= bound, (
        f"{name}({x[worst]!r}) = {y[worst]!r}, reference {ref[worst]!r}: {err[worst]:.3f} ulp > {bound}"
    )
    return float(err[worst])


DOMAINS = {
    # dense samples where each function does its work, on top of every binade
    "exp": [(-746.0, 710.0), (-1.0, 1.0)],
    "expm1": [(-40.0, 710.0), (-2.0, 2.0), (-1e-6, 1e-6)],
    "log": [(0.5, 2.0), (0.0, 1e-300), (1.0, 1e300)],
    "log1p": [(-1.0, 2.0), (-1e-6, 1e-6), (1.0, 1e20)],
    "tanh": [(-20.0, 20.0), (-1.0, 1.0), (0.5, 0.625)],
    "sigmoid": [(-750.0, 40.0), (-2.0, 2.0)],
    "softplus": [(-750.0, 40.0), (-2.0, 2.0)],
    "log_sigmoid": [(-40.0, 750.0), (-2.0, 2.0)],
}


@needs_extended
def test_unary_every_binade_and_domain():
    rng = np.random.default_rng(20240601)
    parts = [every_binade(rng), random_bits(rng, 50_000), SPECIAL]
    parts += [rng.uniform(lo, hi, 40_000) for dom in DOMAINS.values() for lo, hi in dom]
    x = np.concatenate(parts)
    got = unary(x)
    with np.errstate(all="ignore"):
        xl = x.astype(L)
        for name in UNARY:
            check(name, x, got[name], REFERENCE[name](xl), BOUND[name])


def test_special_values_match_numpy_exactly():
    """inf, NaN and signed-zero results (overflow, underflow, poles, domain errors): exactly NumPy's."""
    got = unary(SPECIAL)
    with np.errstate(all="ignore"):
        for name, f in [("exp", np.exp), ("expm1", np.expm1), ("log", np.log), ("log1p", np.log1p), ("tanh", np.tanh)]:
            want = f(SPECIAL)
            decided = ~np.isfinite(want) | (want == 0)
            np.testing.assert_array_equal(got[name][decided], want[decided], err_msg=name)
            signed = decided & ~np.isnan(want)  # the sign of a NaN means nothing
            np.testing.assert_array_equal(np.signbit(got[name][signed]), np.signbit(want[signed]), err_msg=name)
    saturated = np.array([-np.inf, -1e300, -20.0, -0.0, 0.0, 20.0, 1e300, np.inf])
    got_sat = unary(saturated)
    np.testing.assert_array_equal(got_sat["tanh"], [-1, -1, -1, -0.0, 0, 1, 1, 1])
    np.testing.assert_array_equal(np.signbit(got_sat["tanh"]), np.signbit(saturated))
    np.testing.assert_array_equal(got_sat["expm1"][:2], [-1, -1])
    np.testing.assert_array_equal(unary(np.array([-37.5, -40.0, -700.0]))["expm1"], [-1, -1, -1])
    np.testing.assert_array_equal(got_sat["sigmoid"][[0, 1, 3, 4, 6, 7]], [0, 0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(got_sat["softplus"][[0, 1, 6, 7]], [0.0, 0.0, 1e300, np.inf])
    np.testing.assert_array_equal(got_sat["log_sigmoid"][[0, 1, 6, 7]], [-np.inf, -1e300, -0.0, -0.0])
    for name in ("sigmoid", "softplus", "log_sigmoid"):
        assert np.isnan(got[name][np.isnan(SPECIAL)]).all(), name
        assert not np.isnan(got[name][~np.isnan(SPECIAL)]).any(), name


def test_exp_gradual_underflow_and_overflow_edges():
    x = np.array([709.782712893384, np.nextafter(709.782712893384, np.inf), -745.1332191019411,
                  np.nextafter(-745.1332191019411, -np.inf), -744.4400719213812, -708.3964185322641, -740.0])
    got = unary(x)["exp"]
    assert np.isfinite(got[0]) and got[1] == np.inf
    assert got[2] == TINY and got[3] == 0.0
    np.testing.assert_array_equal(got[4:], np.exp(x[4:]))  # subnormal results, correctly rounded


@needs_extended
@pytest.mark.parametrize("dtype", [np.float32])
def test_float32_data_is_correctly_rounded(dtype):
    """On float32 inputs the float64 functions, rounded to float32, are within half a float32 ulp
    (up to the double rounding of a result already within ~1e-9 float32 ulp)."""
    rng = np.random.default_rng(7)
    x32 = np.concatenate([every_binade(rng, 64, dtype), rng.uniform(-100, 100, 50_000).astype(dtype)])
    got = unary(x32.astype(np.float64))
    with np.errstate(all="ignore"):
        xl = x32.astype(L)
        for name in UNARY:
            check(name, x32, got[name].astype(dtype), REFERENCE[name](xl), 0.5 + 1e-6, dtype)


@needs_extended
def test_exp_f32_is_float32_accurate():
    rng = np.random.default_rng(11)
    edges = np.float32([88.72283, 88.72284, -87.33654, -103.97208, -103.9721, np.inf, -np.inf, np.nan, 0])
    x32 = np.concatenate([every_binade(rng, 64, np.float32), rng.uniform(-104, 89, 200_000).astype(np.float32), edges])
    out = np.empty(x32.size)
    _apply_exp_f32(x32.astype(np.float64), out)
    with np.errstate(all="ignore"):
        check("exp_f32", x32, out.astype(np.float32), np.exp(x32.astype(L)), EXP_F32_BOUND, np.float32)


POW_SPECIAL = np.array([0.0, -0.0, TINY, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 2.5, 1e308, -1e308,
                        2.0**53, 2.0**53 + 2, 2.0**52 + 1, np.inf, -np.inf, np.nan])


def test_pow_special_cases_match_numpy():
    """C99 / NumPy special cases: zeros, infinities, NaN, negative bases with integer exponents."""
    x, y = (a.ravel() for a in np.meshgrid(POW_SPECIAL, POW_SPECIAL))
    out = np.empty(x.size)
    _apply_pow(x, y, out)
    with np.errstate(all="ignore"):
        want = np.power(x, y)
    decided = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1)
    np.testing.assert_array_equal(out[decided], want[decided])
    signed = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(out[signed]), np.signbit(want[signed]))
    if EXTENDED:
        with np.errstate(all="ignore"):
            check("pow", x, out, np.power(x.astype(L), y.astype(L)), BOUND["pow"])


@needs_extended
def test_pow_accuracy():
    rng = np.random.default_rng(5)
    n = 100_000
    xs = [np.abs(every_binade(rng, 24)), rng.uniform(0, 1, n), rng.uniform(0.5, 2.0, n),
          np.exp(rng.uniform(-700, 700, n)), -rng.uniform(0, 3, n)]
    ys = [rng.uniform(-1, 1, xs[0].size), rng.uniform(0, 5, n), rng.uniform(-1400, 1400, n),
          rng.uniform(-1, 1, n), np.round(rng.uniform(-60, 60, n))]
    for x, y in zip(xs, ys):
        out = np.empty(x.size)
        _apply_pow(x, y, out)
        with np.errstate(all="ignore"):
            check("pow", x, out, np.power(x.astype(L), y.astype(L)), BOUND["pow"])


@needs_extended
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=32))
def test_unary_any_float(values):
    x = np.array(values, dtype=np.float64)
    got = unary(x)
    with np.errstate(all="ignore"):
        for name in UNARY:
            check(name, x, got[name], REFERENCE[name](x.astype(L)), BOUND[name])


@needs_extended
@given(st.floats(), st.floats())
def test_pow_any_floats(a, b):
    out = np.empty(1)
    _apply_pow(np.array([a]), np.array([b]), out)
    with np.errstate(all="ignore"):
        ref = np.power(L(a), L(b))
    check("pow", np.array([a]), out, np.array([ref]), BOUND["pow"])


def test_loops_calling_them_are_vectorised():
    """The point of the module: no libm calls, and SIMD vector code, in the compiled loops."""
    for fn in (_apply_unary, _apply_pow, _apply_exp_f32):
        ir = fn.inspect_llvm(fn.signatures[0])
        assert "x double>" in ir, f"{fn.__name__}: loop not vectorised"
        libm = ("@exp(", "@log(", "@log1p(", "@expm1(", "@tanh(", "@pow(", "@llvm.exp.", "@llvm.pow.", "@llvm.log.")
        for name in libm:
            assert name not in ir, f"{fn.__name__} calls {name}"


@numba.njit(**_config.jit_options(False))
def _apply_softplus_sigmoid(x, out):
    for i in range(x.size):
        out[0, i], out[1, i], out[2, i] = mathfn.softplus_sigmoid(x[i])


def test_softplus_sigmoid_is_the_three_functions_bit_for_bit():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.standard_normal(20_000) * 30, np.linspace(-800, 800, 4001),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1e300, -1e300]])
    out = np.empty((3, x.size))
    _apply_softplus_sigmoid(x, out)
    ref = unary(x)
    neg = unary(-x)
    np.testing.assert_array_equal(out[0], ref["softplus"])
    np.testing.assert_array_equal(out[1], neg["softplus"])
    np.testing.assert_array_equal(out[2], ref["sigmoid"])
