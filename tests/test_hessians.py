"""Second derivatives: ``hess``, ``grad_hess`` and ``value_grad_hess`` of the pointwise losses.

Every loss that declares ``hessian`` is checked against central finite differences of its
*reference* gradient (:mod:`fastloss.reference`, independent array code), away from its kinks;
losses whose true second derivative is zero almost everywhere return scikit-learn's convention (1)
instead, checked as such. Then what the pipeline adds: the reduction and weight scaling (the
gradient's), broadcasting, dtypes, ``out=``, thread-count independence and clear errors.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from cases import defaults, param_variants, pointwise_inputs

import fastloss as fl
from fastloss.reference import REFERENCES

HESS = [n for n in fl.names() if fl.get(n).spec.hessian is not None]
#: zero second derivative almost everywhere: the Hessian returned is 1 (scikit-learn's convention)
UNIT = {"mae", "quantile", "l1", "hinge", "margin_ranking"}


HESS_ROWWISE = [n for n in HESS if fl.get(n).spec.kind == "rowwise"]
HESS = [n for n in HESS if n not in HESS_ROWWISE]


def test_which_losses_declare_a_hessian():
    pointwise = set(fl.names("pointwise"))
    assert set(HESS) <= pointwise
    assert set(HESS) == pointwise
    assert UNIT <= set(HESS)
    assert HESS_ROWWISE == ["cross_entropy"]


def _inputs(name, rng, shape=(6, 5), params=None):
    spec = fl.get(name).spec
    return pointwise_inputs(spec, shape, rng, params)


def _reference_grads(name, xs, params):
    """The per-element gradients of the reference (of the sum), one per differentiable input."""
    return REFERENCES[name](*xs, **params).vjp(1.0)


@pytest.mark.parametrize("name", HESS)
def test_hessian_matches_finite_differences_of_the_reference_gradient(name):
    loss = fl.get(name)
    spec = loss.spec
    diff = [k for k, i in enumerate(spec.inputs) if i.differentiable]
    rng = np.random.default_rng(0)
    for params in param_variants(spec):
        xs = _inputs(name, rng, params=params)
        hs = loss.hess(*xs, reduction="sum", **params)
        hs = hs if isinstance(hs, tuple) else (hs,)
        assert len(hs) == len(diff)
        for j, (k, h) in enumerate(zip(diff, hs)):
            assert h.shape == xs[k].shape and h.dtype == np.float64
            if name in UNIT:
                np.testing.assert_array_equal(h, 1.0, err_msg=f"{name} {params}")
                continue
            step = 1e-6 * (1.0 + np.abs(xs[k]))
            up, down = list(xs), list(xs)
            up[k] = xs[k] + step
            down[k] = xs[k] - step
            fd = (_reference_grads(name, up, params)[j] - _reference_grads(name, down, params)[j]) / (2 * step)
            ok = np.ones(xs[k].shape, bool)
            if spec.fd_safe is not None:
                ok &= np.broadcast_to(spec.fd_safe(tuple(xs), params, float(step.max())), ok.shape)
            assert ok.mean() > 0.5, f"{name}: most points should be away from kinks"
            np.testing.assert_allclose(h[ok], fd[ok], rtol=1e-5, atol=1e-7, err_msg=f"{name} {params} input {k}")


@pytest.mark.parametrize("name", HESS)
def test_scaled_as_the_gradient_for_every_reduction_and_weight(name):
    loss = fl.get(name)
    rng = np.random.default_rng(1)
    xs = _inputs(name, rng)
    n = xs[0].size
    w = rng.uniform(0.2, 2.0, size=xs[0].shape)
    per = loss.hess(*xs, reduction="sum")
    per = per if isinstance(per, tuple) else (per,)
    cases = {
        ("mean", None): [h / n for h in per],
        ("sum", None): per,
        ("none", None): per,
        ("mean", "w"): [h * w / w.sum() for h in per],
        ("sum", "w"): [h * w for h in per],
    }
    for (reduction, weighted), want in cases.items():
        got = loss.hess(*xs, reduction=reduction, weight=w if weighted else None)
        got = got if isinstance(got, tuple) else (got,)
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=1e-14, atol=0, err_msg=f"{name} {reduction} {weighted}")


@pytest.mark.parametrize("name", HESS)
def test_one_fused_pass_gives_the_value_and_gradient_bit_for_bit(name):
    loss = fl.get(name)
    rng = np.random.default_rng(2)
    for dtype in (np.float64, np.float32):
        xs = [x.astype(dtype) for x in _inputs(name, rng)]
        for reduction in ("mean", "none"):
            v, g, h = loss.value_grad_hess(*xs, reduction=reduction)
            v0, g0 = loss.value_and_grad(*xs, reduction=reduction)
            np.testing.assert_array_equal(v, v0)
            for a, b in zip(g if isinstance(g, tuple) else (g,), g0 if isinstance(g0, tuple) else (g0,)):
                np.testing.assert_array_equal(a, b)
            g2, h2 = loss.grad_hess(*xs, reduction=reduction)
            for a, b in zip(g if isinstance(g, tuple) else (g,), g2 if isinstance(g2, tuple) else (g2,)):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(h if isinstance(h, tuple) else (h,), h2 if isinstance(h2, tuple) else (h2,)):
                np.testing.assert_array_equal(a, b)
                assert a.dtype == dtype
            h3 = loss.hess(*xs, reduction=reduction)
            for a, b in zip(h if isinstance(h, tuple) else (h,), h3 if isinstance(h3, tuple) else (h3,)):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", HESS)
def test_float32_follows_the_float64_hessian(name):
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    xs = _inputs(name, rng, shape=(50,))
    h64 = loss.hess(*xs, reduction="sum")
    h32 = loss.hess(*[x.astype(np.float32) for x in xs], reduction="sum")
    for a, b in zip(h64 if isinstance(h64, tuple) else (h64,), h32 if isinstance(h32, tuple) else (h32,)):
        # the float32 inputs are rounded: the Hessian at those inputs, computed in float64
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-5)


def test_bit_identical_for_any_thread_count(pointwise_path):
    rng = np.random.default_rng(4)
    x, t = rng.normal(size=300_000), rng.uniform(size=300_000)
    pointwise_path("serial")
    serial = fl.binary_cross_entropy.value_grad_hess(x, t)
    pointwise_path("parallel")
    parallel = fl.binary_cross_entropy.value_grad_hess(x, t)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_closed_forms_where_libraries_define_them():
    """scikit-learn's ``gradient_hessian`` (written out here): binomial ``p (1 - p)``, Poisson on a
    log link ``exp(x)``, Huber 1 inside / 0 outside, squared error 2 (for the full square)."""
    x = np.linspace(-30, 30, 61)
    p, q = 1.0 / (1.0 + np.exp(-x)), 1.0 / (1.0 + np.exp(x))  # q = 1 - p without cancellation
    np.testing.assert_allclose(fl.binary_cross_entropy.hess(x, np.zeros_like(x), reduction="sum"), p * q,
                               rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(fl.poisson_nll.hess(x / 10, np.ones_like(x), reduction="sum"), np.exp(x / 10),
                               rtol=1e-15)
    d = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    np.testing.assert_array_equal(fl.huber.hess(d, np.zeros(7), delta=1.0, reduction="sum"),
                                  [0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(fl.mse.hess(d, np.zeros(7), reduction="sum"), 2.0)
    # stable where the naive forms round to 0: 1 / cosh^2 and the logistic curvature at large |d|
    big = np.array([20.0, 200.0])
    np.testing.assert_allclose(fl.log_cosh.hess(big, np.zeros(2), reduction="sum"), 1 / np.cosh(big) ** 2,
                               rtol=1e-13)
    want = np.exp(-big) / (1 + np.exp(-big)) ** 2
    np.testing.assert_allclose(fl.bpr.hess(big, np.zeros(2), reduction="sum")[0], want, rtol=1e-13)


def test_nan_in_nan_out_and_array_pos_weight():
    h = fl.mse.hess(np.array([np.nan, 1.0]), np.zeros(2), reduction="sum")
    assert np.isnan(h[0]) and h[1] == 2.0
    h = fl.mae.hess(np.array([np.nan, 1.0]), np.zeros(2), reduction="sum")
    assert np.isnan(h[0]) and h[1] == 1.0
    x, t = np.array([[0.3, -1.0], [2.0, 0.1]]), np.array([[1.0, 0.0], [1.0, 1.0]])
    pw = np.array([2.0, 0.5])  # one per class, PyTorch's pos_weight
    got = fl.binary_cross_entropy.hess(x, t, pos_weight=pw, reduction="sum")
    p = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(got, p * (1 - p) * (pw * t + 1 - t), rtol=1e-13)


def test_broadcast_inputs_sum_their_second_derivatives():
    rng = np.random.default_rng(5)
    pred, target = rng.normal(size=(1, 5)), rng.normal(size=(4, 5))  # pred feeds four losses each
    h = fl.log_cosh.hess(pred, target, reduction="sum")
    assert h.shape == (1, 5)
    full = fl.log_cosh.hess(np.broadcast_to(pred, (4, 5)).copy(), target, reduction="sum")
    np.testing.assert_allclose(h, full.sum(axis=0, keepdims=True), rtol=1e-14)


def test_out_buffers():
    rng = np.random.default_rng(6)
    x, t = rng.normal(size=8), rng.normal(size=8)
    h = np.empty(8)
    assert fl.huber.hess(x, t, out=h) is h
    np.testing.assert_array_equal(h, fl.huber.hess(x, t))
    g, h2 = np.empty(8), np.empty(8)
    rg, rh = fl.huber.grad_hess(x, t, out=(g, h2))
    assert rg is g and rh is h2
    np.testing.assert_array_equal(g, fl.huber.grad(x, t))
    np.testing.assert_array_equal(h2, h)
    v, rg, rh = fl.huber.value_grad_hess(x, t, out=(None, h2))
    assert rh is h2 and v == fl.huber(x, t)
    xs = x.copy()
    assert fl.huber.hess(xs, t, out=xs) is xs  # in place: the Hessian replaces the predictions
    np.testing.assert_array_equal(xs, h)
    # multi-input: one buffer per differentiable input
    hm, hv = np.empty(8), np.empty(8)
    var = rng.uniform(0.5, 2, size=8)
    out = fl.gaussian_nll.hess(x, t, var, out=(hm, hv))
    assert out[0] is hm and out[1] is hv


def test_bad_out_and_unsupported_calls_raise_clearly():
    x, t = np.zeros(4), np.zeros(4)
    buf = np.empty(4)
    with pytest.raises(ValueError, match="overlapping"):
        fl.mse.grad_hess(x, t, out=(buf, buf))
    with pytest.raises(ValueError):
        fl.mse.hess(x, t, out=t)  # another input
    with pytest.raises(ValueError):
        fl.mse.hess(x, t, out=np.empty(5))
    with pytest.raises(TypeError, match="pair"):
        fl.mse.grad_hess(x, t, out=buf)
    with pytest.raises(TypeError, match="stats"):
        fl.mse.hess(x, t, stats=True)
    with pytest.raises(TypeError, match="hess_floor"):
        fl.mse.hess(x, t, hess_floor="0")
    with pytest.raises(ValueError, match="NaN"):
        fl.mse.hess(x, t, hess_floor=float("nan"))
    with pytest.raises(NotImplementedError, match="no second derivative"):
        fl.kl_divergence.hess(np.zeros((2, 3)), np.full((2, 3), 1 / 3))
    with pytest.raises(NotImplementedError, match="the rowreduce kind"):
        fl.dice.hess(np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("method", ["hess", "grad_hess", "value_grad_hess"])
def test_methods_are_documented_with_their_signature(method):
    f = getattr(fl.huber, method)
    params = inspect.signature(f).parameters
    assert "out" in params and "stats" not in params and params["delta"].default == 1.0
    assert "Hessian" in f.__doc__ and "out :" in f.__doc__
    assert "hess" in fl.huber.__doc__ and "Hessian (diagonal)" in fl.huber.__doc__
    assert "scikit-learn" in fl.mae.hess.__doc__
    assert defaults(fl.huber.spec) == {"delta": 1.0}


# -- cross entropy: the diagonal with respect to the logits ------------------------------------------

CE_VARIANTS = [{}, {"label_smoothing": 0.1}, {"z_loss": 0.05}, {"softcap": 2.5},
               {"label_smoothing": 0.2, "z_loss": 0.03, "softcap": 1.5}]


def _ce_case(rng, form, n=6, c=5):
    x = rng.normal(0.0, 2.0, size=(n, c))
    if form == "index":
        t = rng.integers(0, c, n)
        t[1] = -100  # an ignored row
    else:
        t = rng.dirichlet(np.ones(c), n)
    return x, t


def _ce_reference_grad(x, t, w, params):
    kw = dict(params, weight=w)
    if np.asarray(t).dtype.kind == "i":
        kw["ignore_index"] = -100
    from fastloss.reference import value_and_grad

    return value_and_grad("cross_entropy", x, t, reduction="sum", **kw)[1][0]


@pytest.mark.parametrize("form", ["index", "probs"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("params", CE_VARIANTS, ids=str)
def test_cross_entropy_hessian_matches_finite_differences(form, weighted, params):
    rng = np.random.default_rng(7)
    x, t = _ce_case(rng, form)
    w = rng.uniform(0.3, 2.0, size=x.shape[1]) if weighted else None
    h = fl.cross_entropy.hess(x, t, weight=w, reduction="sum", **params)
    assert h.shape == x.shape and h.dtype == np.float64
    fd = np.empty_like(x)
    for i, j in np.ndindex(x.shape):
        step = 1e-6 * (1.0 + abs(x[i, j]))
        up, down = x.copy(), x.copy()
        up[i, j] += step
        down[i, j] -= step
        diff = _ce_reference_grad(up, t, w, params)[i, j] - _ce_reference_grad(down, t, w, params)[i, j]
        fd[i, j] = diff / (2 * step)
    np.testing.assert_allclose(h, fd, rtol=1e-5, atol=1e-8)
    if form == "index":
        np.testing.assert_array_equal(h[1], 0.0)  # the ignored row


def test_cross_entropy_hessian_scaling_layout_and_fused_pass(monkeypatch):
    from fastloss.kinds.softmax import host as softmax_host

    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(40, 7)), rng.integers(0, 7, 40)
    w = rng.uniform(0.5, 2.0, 7)
    total = fl.cross_entropy.hess(x, y, weight=w, reduction="sum")
    np.testing.assert_allclose(fl.cross_entropy.hess(x, y, weight=w), total / w[y].sum(), rtol=1e-14)
    # p (1 - p) times the row's class weight, for plain cross entropy
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(total, w[y][:, None] * p * (1 - p), rtol=1e-13)
    # classes on another axis
    x3 = np.moveaxis(x.reshape(5, 8, 7), 2, 1)  # (5, 7, 8): classes on axis 1
    h3 = fl.cross_entropy.hess(x3, y.reshape(5, 8), axis=1, reduction="sum")
    np.testing.assert_allclose(np.moveaxis(h3, 1, 2).reshape(40, 7), fl.cross_entropy.hess(x, y, reduction="sum"),
                               rtol=1e-15)
    # the same pass: value and gradient bit for bit those of value_and_grad, float32 too
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        v, g, h = fl.cross_entropy.value_grad_hess(xd, y, label_smoothing=0.1)
        v0, g0 = fl.cross_entropy.value_and_grad(xd, y, label_smoothing=0.1)
        np.testing.assert_array_equal(v, v0)
        np.testing.assert_array_equal(g, g0)
        assert h.dtype == dtype
    # any thread count, any path: the same bits
    serial = fl.cross_entropy.hess(x, y)
    monkeypatch.setattr(softmax_host, "_mode", lambda n, nc: "par")
    np.testing.assert_array_equal(fl.cross_entropy.hess(x, y), serial)
    # out=, and errors
    hb, gb = np.empty_like(x), np.empty_like(x)
    rg, rh = fl.cross_entropy.grad_hess(x, y, out=(gb, hb))
    assert rg is gb and rh is hb
    np.testing.assert_array_equal(hb, serial)
    with pytest.raises(ValueError, match="overlapping"):
        fl.cross_entropy.grad_hess(x, y, out=(gb, gb))
    with pytest.raises(NotImplementedError, match="no second derivative"):
        fl.softmax_focal.hess(x, y)


def test_cross_entropy_hessian_is_accurate_for_confident_rows():
    """1 - p from the other classes' terms: no cancellation when p is close to 1."""
    x = np.array([[40.0, 0.0, 0.0]])
    h = fl.cross_entropy.hess(x, np.array([0]), reduction="sum")
    e = np.exp(-40.0)
    want_top = 2 * e / (1 + 2 * e) ** 2  # p (1 - p) with 1 - p = 2e / (1 + 2e)
    np.testing.assert_allclose(h[0, 0], want_top, rtol=1e-13)


def test_hess_floor_clips_the_returned_hessian_from_below():
    """Negative true Hessians (robust with alpha < 2 at large residuals, a confident focal loss, the
    variance of gaussian_nll) are returned as they are, and clipped by ``hess_floor``."""
    d = np.array([-10.0, -0.1, 0.0, 0.1, 10.0, np.nan])
    h = fl.robust.hess(d, np.zeros(6), alpha=0.0, reduction="sum")
    assert h[0] < 0 and h[2] > 0 and np.isnan(h[5])
    clipped = fl.robust.hess(d, np.zeros(6), alpha=0.0, reduction="sum", hess_floor=1e-6)
    np.testing.assert_array_equal(clipped[:5], np.maximum(h[:5], 1e-6))
    assert np.isnan(clipped[5])
    _, hf = fl.sigmoid_focal.grad_hess(np.array([-8.0]), np.array([1.0]), reduction="sum", hess_floor=0.0)
    assert fl.sigmoid_focal.hess(np.array([-8.0]), np.array([1.0]), reduction="sum")[0] < 0 and hf[0] == 0.0
    out = np.empty(6)
    assert fl.robust.hess(d, np.zeros(6), alpha=0.0, hess_floor=0.5, out=out) is out
    assert np.nanmin(out) == 0.5
    assert "hess_floor" in inspect.signature(fl.robust.value_grad_hess).parameters
    assert "hess_floor" in fl.robust.hess.__doc__
