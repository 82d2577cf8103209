"""Softmax losses keep their accuracy for logits of any magnitude (issue #20, item 2).

The loss of a row depends only on the differences of its logits; a row ``c + [0, 1, -1, 2]`` must
give the same loss for every ``c`` where those logits are exactly representable, and four equal
logits must give ``log 4`` even at ``1e30``. The references are float64 NumPy with the exact row
maximum as the shift, on the logits as the dtype stores them.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl


def reference(x, y, eps=0.0):
    """Cross entropy (label smoothing ``eps``) and its gradient per row, float64, exact maximum shift."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    d = x - m
    e = np.exp(d)
    s = e.sum(axis=1, keepdims=True)
    n, c = x.shape
    t = np.full((n, c), eps / c)
    t[np.arange(n), y] += 1.0 - eps
    # log s = log1p(the sum without one maximal term): exact also for a loss of 1e-10
    rest = e.copy()
    rest[np.arange(n), d.argmax(axis=1)] = 0.0
    ls = np.log1p(rest.sum(axis=1, keepdims=True))
    loss = (t * (ls - d)).sum(axis=1)
    return loss, e / s - t


ROWS = [
    (c, np.array([[0.0, 1.0, -1.0, 2.0]]) + c) for c in (1e8, 1e10, 1e15)
] + [(1e30, np.full((1, 4), 1e30)), (-1e30, np.full((1, 4), -1e30))]


def _long_rows(dtype):
    """Rows of 1000 classes far from zero whose maximum (and target) lies past the first 64 classes,
    so the one-pass shift of the CPU would start from a shift well below the maximum."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 1000))
    x[:, 700] += 30.0  # the target, far above the rest: a loss of ~1e-10
    x[1] += 1e6
    x[2] -= 1e8
    x[3, :64] -= 50.0
    x[4, 900] += 20.0  # the target is not the maximum
    x[5] *= 20.0
    y = np.full(6, 700)
    return x.astype(dtype), y


def _check(x, y, eps, value, grad):
    dtype = x.dtype
    ref, gref = reference(x, y, eps)
    value = np.asarray(value, dtype=np.float64)
    # relative to the loss, and absolute near 0 (a few ulp of log s at s ~ 1): a shift below the
    # maximum costs ulp(log s) ~ 4e-15 (float64) or ~1e-7 (float32 terms) there
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(value, ref, rtol=tol, atol=1e-15)
    np.testing.assert_allclose(np.asarray(grad, dtype=np.float64), gref, rtol=0,
                               atol=1e-15 if dtype == np.float64 else 1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("case", range(len(ROWS)))
def test_shifted_rows(dtype, eps, case):
    c, row = ROWS[case]
    x = row.astype(dtype)
    if dtype == np.float32 and c in (1e10, 1e15):
        pytest.skip("c + [0, 1, -1, 2] is not representable in float32 at this magnitude")
    y = np.array([0])
    value, grad = fl.cross_entropy.value_and_grad(x, y, label_smoothing=eps, reduction="none")
    _check(x, y, eps, value, grad)


def test_equal_logits_give_log_classes():
    for dtype in (np.float32, np.float64):
        for eps in (0.0, 0.1):
            x = np.full((1, 4), 1e30, dtype=dtype)
            v = float(fl.cross_entropy(x, np.array([2]), label_smoothing=eps))
            assert v == pytest.approx(np.log(4.0), rel=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("in_place", [False, True])
def test_long_rows(dtype, eps, in_place):
    x, y = _long_rows(dtype)
    xi = x.copy()
    kw = {"out": xi} if in_place else {}
    value, grad = fl.cross_entropy.value_and_grad(xi, y, label_smoothing=eps, reduction="none", **kw)
    _check(x, y, eps, value, grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_same_bits(dtype):
    x, y = _long_rows(dtype)
    v1, g1 = fl.cross_entropy.value_and_grad(x, y, reduction="none")
    xi = x.copy()
    v2, g2 = fl.cross_entropy.value_and_grad(xi, y, reduction="none", out=xi)
    assert v1.tobytes() == v2.tobytes() and g1.tobytes() == g2.tobytes()
