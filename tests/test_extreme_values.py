"""Pointwise losses at extreme arguments against exact references (issue #20).

References are computed in :mod:`decimal` at 800 digits from the definitions (no cancellation can
reach float64 precision there), so they are exact to well below a float64 ulp.
"""

from __future__ import annotations

import decimal
import math
from decimal import Decimal

import numpy as np
import pytest

import fastloss as fl

CTX = decimal.Context(prec=800)


def D(x: float) -> Decimal:
    return Decimal(float(x))  # exact


def _sigmoid(x: Decimal) -> Decimal:
    return 1 / (1 + (-x).exp())


def _softplus(x: Decimal) -> Decimal:
    return (1 + x.exp()).ln()


def log_cosh_ref(d: float) -> float:
    with decimal.localcontext(CTX):
        x = abs(D(d))
        return float(x + ((1 + (-2 * x).exp()) / 2).ln())  # log cosh x, without overflowing e^x


def focal_ref(x: float, y: float, alpha: float, gamma: float) -> tuple[float, float]:
    """torchvision's sigmoid_focal_loss and its derivative, exactly."""
    with decimal.localcontext(CTX):
        return _focal_ref(x, y, alpha, gamma)


def _focal_ref(x, y, alpha, gamma):
    xd, yd, a, g = D(x), D(y), D(alpha), D(gamma)
    p = _sigmoid(xd)
    q = _sigmoid(-xd)
    ce = yd * _softplus(-xd) + (1 - yd) * _softplus(xd)
    m = p * (1 - yd) + q * yd
    at = a * yd + (1 - a) * (1 - yd) if alpha >= 0 else Decimal(1)
    mg = m**g if m > 0 else Decimal(0)
    dmg = g * m ** (g - 1) * p * q * (1 - 2 * yd) if (m > 0 and g != 0) else Decimal(0)
    return float(at * ce * mg), float(at * ((p - yd) * mg + ce * dmg))


def ulps(got: float, want: float) -> float:
    return abs(got - want) / math.ulp(want) if want != 0.0 else abs(got) / 5e-324


@pytest.mark.parametrize("d", [0.0, 5e-324, 1e-300, 1e-160, 1e-20, 1e-12, 1e-8, 1e-6, 1e-4, 1e-2, 0.1, 0.5,
                               0.9, 1.0, 1.5, 1.99, 2.0, 2.01, 3.0, 10.0, 20.0, 40.0, 300.0, 800.0, 1e300])
def test_log_cosh_is_accurate_for_every_residual(d):
    for s in (1.0, -1.0):
        got = float(fl.log_cosh(np.array([s * d]), np.zeros(1), reduction="sum"))
        want = log_cosh_ref(d)
        if d < 1e-160:  # d^2 / 2 is subnormal or zero: only absolute accuracy is possible
            assert abs(got - want) <= 5e-324, (d, got, want)
        else:
            assert ulps(got, want) <= 4, (d, got, want)


def test_log_cosh_small_residuals_issue_20():
    # relative error was 9e-5 at 1e-6 and 122% at 1e-8; d^2/2 - d^4/12 is exact to 1e-25 there
    for d in (1e-6, 1e-8):
        got = float(fl.log_cosh(np.array([d]), np.zeros(1)))
        want = d * d / 2 - d**4 / 12
        assert abs(got - want) <= 1e-15 * want


@pytest.mark.parametrize("gamma", [2.0, 0.5, 1.0, 0.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("x", [-800.0, -40.0, -30.0, -17.0, -3.0, -0.5, 0.0, 1e-9, 0.5, 3.0, 17.0, 30.0, 37.0, 40.0,
                               100.0, 700.0])
def test_sigmoid_focal_is_accurate_for_large_logits(x, alpha, gamma):
    for y in (0.0, 1.0, 0.3):
        want_v, want_g = focal_ref(x, y, alpha, gamma)
        v, g = fl.sigmoid_focal.value_and_grad(np.array([x]), np.array([y]), alpha=alpha, gamma=gamma,
                                               reduction="sum")
        v, g = float(v), float(g[0])
        # a few ulp, or at gradual underflow an absolute error of a few smallest subnormals
        assert ulps(v, want_v) <= 8 or abs(v - want_v) < 1e-320, (x, y, v, want_v)
        assert ulps(g, want_g) <= 8 or abs(g - want_g) < 1e-320, (x, y, g, want_g)


def test_sigmoid_focal_issue_20_cases():
    v = float(fl.sigmoid_focal(np.array([30.0]), np.array([1.0])))
    want, _ = focal_ref(30.0, 1.0, 0.25, 2.0)
    assert abs(v - want) <= 1e-14 * want  # was 1.5% off
    # the limit at an infinite logit on the wrong side is +inf (was NaN), its slope alpha_t
    for x, y, slope in ((math.inf, 0.0, 0.75), (-math.inf, 1.0, -0.25)):
        for gamma in (2.0, 1.5):
            v, g = fl.sigmoid_focal.value_and_grad(np.array([x]), np.array([y]), gamma=gamma, reduction="sum")
            assert v == math.inf and g[0] == slope, (x, y, gamma, v, g)
    # on the right side both vanish
    v, g = fl.sigmoid_focal.value_and_grad(np.array([math.inf, -math.inf]), np.array([1.0, 0.0]), reduction="sum")
    assert v == 0.0 and np.all(g == 0.0)


def test_sigmoid_focal_matches_torch_float64():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 4, 200), [-30.0, -20.0, 20.0, 25.0]])
    y = np.concatenate([rng.uniform(0, 1, 100), rng.integers(0, 2, 100).astype(float), [0.0, 1.0, 1.0, 0.0]])
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y)
    p = torch.sigmoid(xt)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(xt, yt, reduction="none")
    pt = p * yt + (1 - p) * (1 - yt)
    loss = (0.25 * yt + 0.75 * (1 - yt)) * ce * (1 - pt) ** 2
    loss.sum().backward()
    v, g = fl.sigmoid_focal.value_and_grad(x, y, reduction="sum")
    # torchvision's formula is itself inexact where 1 - p_t cancels: compare where it is not tiny
    np.testing.assert_allclose(v, loss.sum().item(), rtol=1e-12)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("q", [0.5, 0.1, 0.9])
def test_quantile_does_not_overflow_near_the_float64_limit(q):
    big = 1e308
    for p, t in ((big, -big), (-big, big), (1.7e308, -1.7e308)):
        v, g = fl.quantile.value_and_grad(np.array([p]), np.array([t]), q=q, reduction="sum")
        d = Decimal(t) - Decimal(p)  # exact
        with decimal.localcontext(CTX):
            want = float(max(D(q) * d, (D(q) - 1) * d))
        assert float(v) == want, (p, t, q, v, want)  # inf only where the exact value overflows
        assert g[0] == (-q if t > p else 1.0 - q)
    # ordinary residuals are unchanged, infinite ones stay infinite
    v = fl.quantile(np.array([0.0, 2.0, math.inf]), np.array([1.0, 1.0, 0.0]), q=q, reduction="none")
    assert v[0] == q and v[1] == 1.0 - q and v[2] == math.inf
