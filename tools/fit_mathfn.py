"""Derive the polynomial coefficients used by :mod:`fastloss._kernels.mathfn` (run once; needs mpmath).

Each approximation is a minimax (Remez exchange) fit in 60-digit arithmetic, with the relative error
as the criterion, printed as double-precision literals with the fit's max relative error.
``python tools/fit_mathfn.py`` reproduces the constants in ``mathfn.py``.
"""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 60
TANH_POLY = 0.5625  # tanh uses the polynomial below this |x| and 1 - 2 / (e^{2|x|} + 1) above


def remez(f, a, b, degree, iters=40, grid=4000):
    """Coefficients c_0..c_degree minimising max |(f(t) - sum c_j t^j) / f(t)| on [a, b]."""
    n = degree + 2
    nodes = [(a + b) / 2 + (b - a) / 2 * mp.cos(mp.pi * (n - 1 - i) / (n - 1)) for i in range(n)]
    coeffs, err = None, None
    for _ in range(iters):
        rows = [[t**j for j in range(degree + 1)] + [(-1) ** i * f(t)] for i, t in enumerate(nodes)]
        sol = mp.lu_solve(mp.matrix(rows), mp.matrix([f(t) for t in nodes]))
        coeffs = [sol[j] for j in range(degree + 1)]

        def e(t, coeffs=coeffs):
            return (f(t) - mp.polyval(coeffs[::-1], t)) / f(t)

        ts = [a + (b - a) * i / grid for i in range(grid + 1)]
        es = [e(t) for t in ts]
        # one extremum per sign-alternating run (the exchange step), endpoints included
        ext = []
        run = [0]
        for i in range(1, len(ts)):
            if mp.sign(es[i]) == mp.sign(es[run[0]]):
                run.append(i)
            else:
                ext.append(max(run, key=lambda k: abs(es[k])))
                run = [i]
        ext.append(max(run, key=lambda k: abs(es[k])))
        while len(ext) > n:  # drop the smallest at either end
            ext.pop(0 if abs(es[ext[0]]) < abs(es[ext[-1]]) else -1)
        if len(ext) < n:
            break
        nodes = [ts[k] for k in ext]
        new_err = max(abs(es[k]) for k in ext)
        if err is not None and abs(new_err - err) < err * mp.mpf("1e-6"):
            err = new_err
            break
        err = new_err
    return coeffs, err


def show(name, coeffs, err, first=0):
    print(f"# {name}: max relative error {float(err):.3e} (2^{float(mp.log(err, 2)):.1f})")
    for j, c in enumerate(coeffs):
        print(f"{name}{j + first} = {float(c)!r}")


def expo_tail(r):
    """(e^r - 1 - r) / r^2, so that e^r = 1 + r + r^2 P(r) and expm1(r) = r + r^2 P(r)."""
    if abs(r) < mp.mpf("1e-20"):
        return mp.mpf(1) / 2 + r / 6
    return (mp.exp(r) - 1 - r) / r**2


def expm1_over(r):
    """(e^r - 1) / r, so that e^r = 1 + r Q(r) (the float32 softmax exponential of rowops)."""
    if abs(r) < mp.mpf("1e-30"):
        return 1 + r / 2
    return mp.expm1(r) / r


def atanh_tail(z):
    """(2 atanh(s) - 2 s) / s^3 with z = s^2, so that log1p(f) = 2 s + s z Q(z), s = f / (2 + f)."""
    if z < mp.mpf("1e-30"):
        return mp.mpf(2) / 3 + 2 * z / 5
    s = mp.sqrt(z)
    return (2 * mp.atanh(s) - 2 * s) / s**3


def tanh_tail(z):
    """(tanh(a) - a) / a^3 with z = a^2, so that tanh(a) = a + a z T(z)."""
    if z < mp.mpf("1e-30"):
        return -mp.mpf(1) / 3 + 2 * z / 15
    a = mp.sqrt(z)
    return (mp.tanh(a) - a) / (a * z)


def main() -> None:
    half_ln2 = mp.log(2) / 2 * (1 + mp.mpf(2) ** -40)  # |r| after rounding k, with slack
    smax = (mp.sqrt(2) - 1) / (mp.sqrt(2) + 1) * (1 + mp.mpf(2) ** -40)
    show("EXP_P", *remez(expo_tail, -half_ln2, half_ln2, 10))
    show("LOG_Q", *remez(atanh_tail, mp.mpf(0), smax**2, 6))
    show("POW_Q", *remez(atanh_tail, mp.mpf(0), smax**2, 8))  # pow needs log to ~2^-64
    show("TANH_T", *remez(tanh_tail, mp.mpf(0), mp.mpf(TANH_POLY) ** 2, 10))
    show("EXPF_P", *remez(expo_tail, -half_ln2, half_ln2, 4))
    show("EXP_NEG_F32_Q (rowops; round to float32)", *remez(expm1_over, -half_ln2, half_ln2, 5))
    ln2 = mp.log(2)
    hi = mp.floor(ln2 * 2**32) / 2**32  # 32 significant bits: k * LN2_HI is exact for |k| < 2^21
    print(f"LN2_HI = {float(hi)!r}\nLN2_LO = {float(ln2 - hi)!r}")
    two_thirds = mp.mpf(2) / 3
    print(f"TWO_THIRDS = {float(two_thirds)!r}\nTWO_THIRDS_LO = {float(two_thirds - mp.mpf(float(two_thirds)))!r}")


if __name__ == "__main__":
    main()
