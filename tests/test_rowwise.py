"""Rowwise losses: values and gradients against float64 references, PyTorch and finite differences;
targets, class weights, ignore_index, label smoothing, leading dims and axes, in-place gradients,
bad labels, extreme logits, and bit-identical results across threads and code paths."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastloss as fl
from fastloss.kinds.softmax import host as _rowwise
from fastloss.reference import REFERENCES, value_and_grad

ROWWISE = fl.names("rowwise")
SOFTMAX = [n for n in ROWWISE if n != "multiclass_hinge"]
IGNORE = -100


def opts(name):
    return fl.get(name).spec.options


def defaults(name):
    return {p.name: p.default for p in fl.get(name).spec.params}


def param_variants(name):
    """Defaults, every declared special value, and one value moved inside the domain."""
    spec = fl.get(name).spec
    out = [defaults(name)]
    for p in spec.params:
        out += [{**defaults(name), p.name: v} for v in p.special]
        if p.type is float and p.default is not None:
            v = p.default * 0.6 + 0.1
            if p.domain is None or p.domain.contains(v):
                out.append({**defaults(name), p.name: v})
    if name == "multiclass_hinge":
        out.append({"margin": 0.7, "p": 2})
    return out


def make(rng, n, c, form, ignore=False, scale=2.0):
    x = rng.normal(0.0, scale, size=(n, c))
    if form == "index":
        t = rng.integers(0, c, n)
        if ignore:
            t[1::3] = IGNORE
    else:
        t = rng.dirichlet(np.ones(c), n)
        t[0, 0] = 0.0  # zeros in target probabilities are allowed
        t[0] /= t[0].sum()
    return x, t


def combos(name):
    """(form, weighted, ignore) combinations the loss accepts."""
    o = opts(name)
    for form in o["targets"]:
        for weighted in (False, True) if o["class_weight"] else (False,):
            for ignore in (False, True) if (o["ignore_index"] and form == "index") else (False,):
                yield form, weighted, ignore


def expected(name, x, t, w, ignore, params, reduction):
    kw = dict(params)
    if opts(name)["class_weight"]:
        kw["weight"] = w
    if opts(name)["ignore_index"]:
        kw["ignore_index"] = IGNORE if ignore else None
    with np.errstate(invalid="ignore", divide="ignore"):  # the mean of a batch with every target ignored
        v, (g,) = value_and_grad(name, x, t, reduction=reduction, **kw)
    return v, g


def call_kwargs(name, ignore, params):
    kw = dict(params)
    if ignore:
        kw["ignore_index"] = IGNORE
    return kw


def test_every_rowwise_loss_has_a_reference():
    assert set(ROWWISE) <= set(REFERENCES)
    assert {"cross_entropy", "softmax_focal", "multiclass_hinge", "kl_divergence",
            "generalized_cross_entropy", "poly1_cross_entropy"} <= set(ROWWISE)


# -- values and gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROWWISE)
def test_values_and_gradients_match_the_reference(name):
    rng = np.random.default_rng(0)
    for form, weighted, ignore in combos(name):
        x, t = make(rng, 9, 6, form, ignore)
        w = rng.uniform(0.2, 2.0, 6) if weighted else None
        for params in param_variants(name):
            kw = call_kwargs(name, ignore, params)
            for reduction in ("mean", "sum", "none"):
                v, g = fl.get(name).value_and_grad(x, t, weight=w, reduction=reduction, **kw)
                rv, rg = expected(name, x, t, w, ignore, params, reduction)
                what = f"{name} {form} weighted={weighted} ignore={ignore} {params} {reduction}"
                np.testing.assert_allclose(v, rv, rtol=1e-12, atol=1e-14, err_msg=what)
                np.testing.assert_allclose(g, rg, rtol=1e-11, atol=1e-14, err_msg=what)
                # the loss alone is the loss of the fused call, to the bit
                np.testing.assert_array_equal(fl.get(name)(x, t, weight=w, reduction=reduction, **kw), v)


@pytest.mark.parametrize("name", ROWWISE)
def test_row_lengths_around_the_vector_bounds(name):
    """Rows on each side of the kernels' length bounds (``SHORT_ROW``, ``SHORT_EXP``, ``VECTOR_CHUNK``:
    plain or interleaved maxima, a flat exponential pass or one per row, a padded tail or none)."""
    from fastloss.kinds.softmax import primitives as P

    bounds = sorted({P.SHORT_ROW, P.SHORT_EXP, P.VECTOR_CHUNK, 2 * P.VECTOR_CHUNK})
    rng = np.random.default_rng(4)
    for c in sorted({max(2, b + d) for b in bounds for d in (-1, 0, 1)}):
        for form, weighted, ignore in combos(name):
            x, t = make(rng, 7, c, form, ignore, scale=4.0)
            w = rng.uniform(0.2, 2.0, c) if weighted else None
            kw = call_kwargs(name, ignore, defaults(name))
            v, g = fl.get(name).value_and_grad(x, t, weight=w, reduction="none", **kw)
            rv, rg = expected(name, x, t, w, ignore, defaults(name), "none")
            what = f"{name} C={c} {form} weighted={weighted} ignore={ignore}"
            np.testing.assert_allclose(v, rv, rtol=1e-12, atol=1e-14, err_msg=what)
            np.testing.assert_allclose(g, rg, rtol=1e-11, atol=1e-14, err_msg=what)


@pytest.mark.parametrize("name", ROWWISE)
def test_float32_matches_the_float64_reference(name):
    rng = np.random.default_rng(1)
    for form, weighted, ignore in combos(name):
        x, t = make(rng, 50, 37, form, ignore)
        x[:25, :10] -= 100.0  # short rows: a block spanning more than one shift allows (row-wise shifts)
        w = rng.uniform(0.2, 2.0, 37) if weighted else None
        kw = call_kwargs(name, ignore, defaults(name))
        t32 = t.astype(np.float32) if form == "probs" else t
        t = t32.astype(np.float64) if form == "probs" else t
        x32 = x.astype(np.float32)
        for reduction in ("mean", "none"):
            for cols in (slice(None), slice(0, 10)):  # long rows, and short rows of 10 classes
                xs = np.ascontiguousarray(x32[:, cols])
                ts = t if form == "index" else np.ascontiguousarray(t32[:, cols] / t32[:, cols].sum(1, keepdims=True))
                if form == "index":
                    ts = np.where(ts == IGNORE, IGNORE, ts % xs.shape[1])
                ws = None if w is None else w[cols]
                v, g = fl.get(name).value_and_grad(xs, ts, weight=ws, reduction=reduction, **kw)
                assert g.dtype == np.float32 and np.asarray(v).dtype == np.float32
                rv, rg = expected(name, xs.astype(np.float64), ts if form == "index" else ts.astype(np.float64),
                                  ws, ignore, defaults(name), reduction)
                np.testing.assert_allclose(v, rv, rtol=2e-6, atol=1e-6)
                np.testing.assert_allclose(g, rg, rtol=2e-5, atol=2e-7 * np.abs(rg).max())


H = 1e-4


def fd_gradient(f, x):
    """4th-order central difference of the scalar function ``f`` at ``x``."""
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        vals = []
        for step in (2, 1, -1, -2):
            xs = x.copy()
            xs[idx] += step * H
            vals.append(float(f(xs)))
        grad[idx] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * H)
    return grad


@pytest.mark.parametrize("name", ROWWISE)
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(2)
    loss = fl.get(name)
    for form, weighted, ignore in combos(name):
        x, t = make(rng, 4, 5, form, ignore, scale=1.0)
        w = rng.uniform(0.2, 2.0, 5) if weighted else None
        for params in param_variants(name):
            kw = call_kwargs(name, ignore, params)
            for reduction in ("mean", "sum"):
                g = loss.grad(x, t, weight=w, reduction=reduction, **kw)
                fd = fd_gradient(lambda xs: loss(xs, t, weight=w, reduction=reduction, **kw), x)
                mask = np.ones(x.shape[0], bool)
                if loss.spec.fd_safe is not None:
                    mask = loss.spec.fd_safe((x, t), params, H)
                np.testing.assert_allclose(g[mask], fd[mask], rtol=1e-6, atol=1e-8,
                                           err_msg=f"{name} {form} {weighted} {ignore} {params} {reduction}")


def test_hinge_kink_rows_are_left_out_of_the_difference_check_only_at_kinks():
    x = np.array([[1.0, 0.0, 0.5], [3.0, 0.0, 0.0]])
    y = np.array([0, 0])
    safe = fl.multiclass_hinge.spec.fd_safe((x, y), {"margin": 1.0, "p": 1}, H)
    assert safe.tolist() == [False, True]  # 1 - 1 + 0 = 0 is a kink in row 0


# -- PyTorch ------------------------------------------------------------------------------------


def _torch_value_and_grad(fn, x):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    out = fn(xt)
    out.sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("form", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(weighted, smoothing, form, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    # torch layout (N, C, d1): classes on axis 1
    x = rng.normal(0, 3, size=(4, 6, 3))
    if form == "index":
        t = rng.integers(0, 6, size=(4, 3))
        t[0, 1] = t[2, 2] = IGNORE
    else:
        t = np.moveaxis(rng.dirichlet(np.ones(6), size=(4, 3)), -1, 1)
    w = rng.uniform(0.2, 2.0, 6) if weighted else None
    tv, tg = _torch_value_and_grad(
        lambda xt: F.cross_entropy(xt, torch.tensor(t), weight=None if w is None else torch.tensor(w),
                                   ignore_index=IGNORE, label_smoothing=smoothing, reduction=reduction), x)
    v, g = fl.cross_entropy.value_and_grad(x, t, weight=w, ignore_index=IGNORE, label_smoothing=smoothing,
                                           reduction=reduction, axis=1)
    np.testing.assert_allclose(v, tv, rtol=1e-12, atol=1e-14)
    if reduction != "none":  # torch's gradient of out.sum(): the same as ours for the reduced losses
        np.testing.assert_allclose(g, tg, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_hinge_matches_torch_multi_margin_loss(p, weighted):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, size=(7, 5))
    y = rng.integers(0, 5, 7)
    w = rng.uniform(0.2, 2.0, 5) if weighted else None
    for margin in (1.0, 0.3):
        for reduction in ("mean", "sum", "none"):
            tv, tg = _torch_value_and_grad(
                lambda xt: torch.nn.functional.multi_margin_loss(
                    xt, torch.tensor(y), p=p, margin=margin, reduction=reduction,
                    weight=None if w is None else torch.tensor(w)), x)
            v, g = fl.multiclass_hinge.value_and_grad(x, y, p=p, margin=margin, weight=w, reduction=reduction)
            np.testing.assert_allclose(v, tv, rtol=1e-12, atol=1e-15)
            if reduction != "none":
                np.testing.assert_allclose(g, tg, rtol=1e-12, atol=1e-15)


def test_kl_divergence_matches_torch_batchmean():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, size=(6, 8))
    t = rng.dirichlet(np.ones(8) * 0.3, 6)
    t[1, :3] = 0.0
    t[1] /= t[1].sum()
    tv, tg = _torch_value_and_grad(lambda xt: F.kl_div(F.log_softmax(xt, 1), torch.tensor(t), reduction="batchmean"), x)
    v, g = fl.kl_divergence.value_and_grad(x, t)
    np.testing.assert_allclose(v, tv, rtol=1e-12)
    np.testing.assert_allclose(g, tg, rtol=1e-11, atol=1e-15)
    tv, _ = _torch_value_and_grad(
        lambda xt: F.kl_div(F.log_softmax(xt, 1), torch.tensor(t), reduction="none").sum(1), x)
    np.testing.assert_allclose(fl.kl_divergence(x, t, reduction="none"), tv, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal_matches_the_torch_composition(gamma):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    x = rng.normal(0, 2, size=(8, 5))
    y = rng.integers(0, 5, 8)
    y[3] = IGNORE
    w = rng.uniform(0.2, 2.0, 5)

    def focal(xt):
        lp = F.log_softmax(xt, 1)
        return F.nll_loss((1 - lp.exp()) ** gamma * lp, torch.tensor(y), weight=torch.tensor(w), ignore_index=IGNORE)

    tv, tg = _torch_value_and_grad(focal, x)
    v, g = fl.softmax_focal.value_and_grad(x, y, gamma=gamma, weight=w, ignore_index=IGNORE)
    np.testing.assert_allclose(v, tv, rtol=1e-12)
    np.testing.assert_allclose(g, tg, rtol=1e-10, atol=1e-15)


def test_gce_and_poly1_match_their_torch_compositions():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    x = rng.normal(0, 2, size=(8, 5))
    y = rng.integers(0, 5, 8)

    def p_target(xt):
        return F.softmax(xt, 1).gather(1, torch.tensor(y)[:, None])[:, 0]

    tv, tg = _torch_value_and_grad(lambda xt: ((1 - p_target(xt) ** 0.4) / 0.4).mean(), x)
    v, g = fl.generalized_cross_entropy.value_and_grad(x, y, q=0.4)
    np.testing.assert_allclose(v, tv, rtol=1e-12)
    np.testing.assert_allclose(g, tg, rtol=1e-10, atol=1e-15)
    tv, tg = _torch_value_and_grad(
        lambda xt: (F.cross_entropy(xt, torch.tensor(y), reduction="none") + 2.0 * (1 - p_target(xt))).mean(), x)
    v, g = fl.poly1_cross_entropy.value_and_grad(x, y, epsilon=2.0)
    np.testing.assert_allclose(v, tv, rtol=1e-12)
    np.testing.assert_allclose(g, tg, rtol=1e-10, atol=1e-15)


# -- extreme logits, NaN, ignored samples, empty batches -----------------------------------------


@pytest.mark.parametrize("name", SOFTMAX)
@pytest.mark.parametrize("c", [10, 40])  # short rows (one flat pass per block) and long rows
def test_extreme_float32_logits_stay_finite_and_exact(name, c):
    rng = np.random.default_rng(8)
    form = opts(name)["targets"][0]
    x, t = make(rng, 6, c, form)
    x[:3] = rng.choice([-1e4, 1e4], size=(3, c))
    x[3] = 1e4
    x[4] = -1e4
    x32 = x.astype(np.float32)
    t32 = t.astype(np.float32) if form == "probs" else t
    v, g = fl.get(name).value_and_grad(x32, t32, reduction="none")
    assert np.isfinite(v).all() and np.isfinite(g).all()
    rv, rg = expected(name, x32.astype(np.float64), t32.astype(np.float64) if form == "probs" else t,
                      None, False, defaults(name), "none")
    np.testing.assert_allclose(v, rv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g, rg, rtol=1e-5, atol=1e-6)
    # softmax gradients sum to zero in every row (the target probabilities sum to one)
    np.testing.assert_allclose(g.astype(np.float64).sum(axis=1), 0.0, atol=1e-5)


def test_nan_logits_poison_only_their_row():
    x = np.random.default_rng(9).normal(size=(4, 5))
    x[2, 3] = np.nan
    y = np.array([0, 1, 2, 3])
    for name in ("cross_entropy", "softmax_focal", "multiclass_hinge", "poly1_cross_entropy"):
        v, g = fl.get(name).value_and_grad(x, y, reduction="none")
        assert np.isnan(v[2]) and np.isfinite(np.delete(v, 2)).all(), name
        assert np.isnan(g[2]).any() and np.isfinite(np.delete(g, 2, axis=0)).all(), name
        assert np.isnan(fl.get(name)(x, y))


@pytest.mark.parametrize("name", [n for n in ROWWISE if opts(n)["ignore_index"]])
def test_all_ignored_batch_has_nan_mean_and_zero_gradient(name):
    x = np.random.default_rng(10).normal(size=(3, 4))
    y = np.full(3, IGNORE)
    v, g = fl.get(name).value_and_grad(x, y, weight=np.ones(4))
    assert np.isnan(v) and np.all(g == 0.0)
    v, g = fl.get(name).value_and_grad(x, y, reduction="sum")
    assert v == 0.0 and np.all(g == 0.0)
    assert np.all(fl.get(name)(x, y, reduction="none") == 0.0)


def test_ignore_index_may_be_any_integer_and_ignored_rows_cost_nothing():
    x = np.random.default_rng(11).normal(size=(4, 3))
    y = np.array([0, 2, 1, 2])
    v = fl.cross_entropy(x, y, ignore_index=2, reduction="none")
    assert v[1] == v[3] == 0.0 and v[0] > 0 and v[2] > 0
    assert fl.cross_entropy(x, y, ignore_index=2) == pytest.approx((v[0] + v[2]) / 2, rel=1e-15)
    y[1] = -1
    v, g = fl.cross_entropy.value_and_grad(x, y, ignore_index=-1, reduction="sum")
    assert np.all(g[1] == 0.0)


@pytest.mark.parametrize("name", ROWWISE)
def test_empty_batch(name):
    form = opts(name)["targets"][0]
    x = np.empty((0, 5))
    t = np.empty(0, np.int64) if form == "index" else np.empty((0, 5))
    loss = fl.get(name)
    assert np.isnan(loss(x, t))
    assert loss(x, t, reduction="sum") == 0.0
    assert loss(x, t, reduction="none").shape == (0,)
    assert loss.grad(x, t).shape == (0, 5)


# -- layouts: leading dimensions, axis, out= and in place -----------------------------------------


def _rows(x, t, axis, form):
    xr = np.moveaxis(x, axis, -1)
    c = xr.shape[-1]
    tr = t.reshape(-1) if form == "index" else np.moveaxis(t, axis, -1).reshape(-1, c)
    return xr.reshape(-1, c), tr


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence", "multiclass_hinge"])
@pytest.mark.parametrize("shape, axis", [((2, 3, 5), -1), ((4, 5, 3), 1), ((5, 2, 3), 0), ((2, 3, 4, 5), 1), ((7,), 0)])
def test_leading_dims_and_axis(name, shape, axis):
    rng = np.random.default_rng(12)
    form = opts(name)["targets"][0]
    x = rng.normal(size=shape)
    c = shape[axis]
    lead = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    t = rng.integers(0, c, size=lead) if form == "index" else np.moveaxis(rng.dirichlet(np.ones(c), lead), -1, axis)
    v, g = fl.get(name).value_and_grad(x, t, axis=axis, reduction="none")
    assert v.shape == lead and g.shape == shape
    xr, tr = _rows(x, t, axis, form)
    rv, rg = expected(name, xr, tr, None, False, defaults(name), "none")
    np.testing.assert_allclose(v.reshape(-1), rv, rtol=1e-12)
    np.testing.assert_allclose(np.moveaxis(g, axis, -1).reshape(xr.shape), rg, rtol=1e-12, atol=1e-15)
    mean, gm = fl.get(name).value_and_grad(x, t, axis=axis)
    np.testing.assert_allclose(mean, rv.sum() / rv.size, rtol=1e-12)
    # out= on any layout, and in place
    out = np.empty_like(x)
    assert fl.get(name).grad(x, t, axis=axis, out=out) is out
    np.testing.assert_array_equal(out, gm)
    xi = x.copy()
    vi, gi = fl.get(name).value_and_grad(xi, t, axis=axis, out=xi)
    assert gi is xi and vi == mean
    np.testing.assert_array_equal(xi, gm)


@pytest.mark.parametrize("name", ROWWISE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_gradient_is_bit_identical(name, dtype):
    rng = np.random.default_rng(13)
    for form, weighted, ignore in combos(name):
        for n, c in ((40, 9), (3, 300)):  # short rows (flat block pass) and long rows
            x, t = make(rng, n, c, form, ignore)
            x = x.astype(dtype)
            t = t.astype(dtype) if form == "probs" else t
            w = rng.uniform(0.2, 2.0, c) if weighted else None
            kw = call_kwargs(name, ignore, defaults(name))
            v0 = fl.get(name)(x, t, weight=w, **kw)
            v1, g1 = fl.get(name).value_and_grad(x, t, weight=w, **kw)
            xi = x.copy()
            v2, g2 = fl.get(name).value_and_grad(xi, t, weight=w, out=xi, **kw)
            assert g2 is xi
            assert v0 == v1 == v2, (name, form, weighted, n, c)
            np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("name", ROWWISE)
@pytest.mark.parametrize("c", [10, 300])
def test_a_rows_results_do_not_depend_on_the_other_rows(name, c):
    # batches are cut into blocks of rows differently depending on their size and offset: a sample's
    # loss and gradient must come out to the same bits wherever it sits and whatever surrounds it
    rng = np.random.default_rng(22)
    form = opts(name)["targets"][-1]
    x, t = make(rng, 60, c, form)
    x[::5] *= 30.0  # rows of very different ranges in the same block
    x = x.astype(np.float32)
    t = t.astype(np.float32) if form == "probs" else t
    g = fl.get(name).grad(x, t, reduction="sum")
    per = fl.get(name)(x, t, reduction="none")
    order = rng.permutation(60)[:23]
    gs = fl.get(name).grad(x[order], t[order], reduction="sum")
    np.testing.assert_array_equal(fl.get(name)(x[order], t[order], reduction="none"), per[order])
    np.testing.assert_array_equal(gs, g[order])


def test_in_place_needs_no_logits_sized_temporary():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(256, 4096)).astype(np.float32)
    y = rng.integers(0, 4096, 256)
    fl.cross_entropy.value_and_grad(x.copy(), y, out=None)  # compile outside the measurement
    tracemalloc.start()
    try:
        fl.cross_entropy.value_and_grad(x, y, out=x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 16, peak


def test_float16_and_integer_logits():
    rng = np.random.default_rng(15)
    x = rng.normal(size=(6, 4))
    y = rng.integers(0, 4, 6)
    v16, g16 = fl.cross_entropy.value_and_grad(x.astype(np.float16), y)
    g32 = fl.cross_entropy.grad(x.astype(np.float16).astype(np.float32), y)
    assert g16.dtype == np.float16 and np.asarray(v16).dtype == np.float16
    np.testing.assert_allclose(g16, g32, rtol=1e-3, atol=1e-4)
    xi = x.astype(np.float16)
    assert fl.cross_entropy.grad(xi, y, out=xi) is xi
    np.testing.assert_array_equal(xi, g16)
    vi, gi = fl.cross_entropy.value_and_grad(np.round(x * 3).astype(np.int32), y)
    assert gi.dtype == np.float64 and np.asarray(vi).dtype == np.float64


def test_out_checks():
    x = np.zeros((3, 4))
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="shape"):
        fl.cross_entropy.grad(x, y, out=np.empty((4, 3)))
    with pytest.raises(TypeError, match="dtype"):
        fl.cross_entropy.grad(x, y, out=np.empty((3, 4), np.float32))
    t = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="shares memory with target"):
        fl.cross_entropy.grad(x, t, out=t)


def test_out_overlapping_the_logits_without_being_them():
    rng = np.random.default_rng(16)
    base = rng.normal(size=(5, 4))
    y = np.array([0, 1, 2])
    x = base[:3]
    want = fl.cross_entropy.grad(x.copy(), y)
    out = base[1:4]  # overlaps x shifted by one row
    fl.cross_entropy.grad(x, y, out=out)
    np.testing.assert_array_equal(base[1:4], want)


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence"])
def test_stats_describe_the_returned_gradient(name):
    rng = np.random.default_rng(17)
    form = opts(name)["targets"][-1]
    x, t = make(rng, 30, 7, form)
    _, g, s = fl.get(name).value_and_grad(x, t, stats=True)
    assert s.norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    assert s.max_abs == np.abs(g).max() and s.nonfinite == 0
    x[3, 2] = np.inf
    _, g, s = fl.get(name).value_and_grad(x, t, stats=True)
    assert s.nonfinite == np.count_nonzero(~np.isfinite(g)) > 0


@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    c=st.integers(1, 60),
    axis_pos=st.integers(0, 2),
    name=st.sampled_from(["cross_entropy", "kl_divergence", "softmax_focal"]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_matches_the_reference(lead, c, axis_pos, name, seed):
    rng = np.random.default_rng(seed)
    form = opts(name)["targets"][-1]
    axis = min(axis_pos, len(lead))
    shape = (*lead[:axis], c, *lead[axis:])
    x = rng.normal(0, 3, size=shape)
    lead_t = tuple(lead)
    t = rng.integers(0, c, size=lead_t) if form == "index" else np.moveaxis(rng.dirichlet(np.ones(c), lead_t), -1, axis)
    v, g = fl.get(name).value_and_grad(x, t, axis=axis, reduction="sum")
    xr, tr = _rows(x, t, axis, form)
    rv, rg = expected(name, xr, tr, None, False, defaults(name), "sum")
    np.testing.assert_allclose(v, rv, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(np.moveaxis(g, axis, -1).reshape(xr.shape), rg, rtol=1e-10, atol=1e-13)


# -- bad input ----------------------------------------------------------------------------------


def test_bad_labels_name_the_first_bad_index_and_value():
    x = np.zeros((5, 4))
    with pytest.raises(ValueError, match=r"target\[3\] = 7 is not a class index in \[0, 4\) or ignore_index=-100"):
        fl.cross_entropy(x, np.array([0, 1, 2, 7, 9]))
    with pytest.raises(ValueError, match=r"target\[1\] = -1 is not"):
        fl.cross_entropy(x, np.array([0, -1, 2, 3, -100]))
    with pytest.raises(ValueError, match=r"target\[1, 0\] = 4"):
        fl.cross_entropy(np.zeros((2, 3, 4)), np.array([[0, 1, 2], [4, 0, 0]]))
    with pytest.raises(ValueError, match=r"target\[0\] = -100 is not a class index in \[0, 4\)$"):
        fl.multiclass_hinge(x, np.array([-100, 0, 0, 0, 0]))  # no ignore_index for this loss
    with pytest.raises(ValueError, match=r"= 255"):
        fl.cross_entropy(x, np.array([0, 1, 255, 3, 0], np.uint8))
    with pytest.raises(ValueError, match="is not a class index"):
        fl.cross_entropy(x, np.array([0, 0, 0, 0, 2**40]))


def test_bad_labels_raise_before_anything_is_written():
    x = np.random.default_rng(18).normal(size=(5, 4))
    keep = x.copy()
    with pytest.raises(ValueError):
        fl.cross_entropy.value_and_grad(x, np.array([0, 1, 2, 4, 0]), out=x)
    np.testing.assert_array_equal(x, keep)


def test_target_shapes_and_dtypes():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"class-index target must have shape \(3,\)"):
        fl.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"probability target must have the shape of logits \(3, 4\)"):
        fl.cross_entropy(x, np.full((3, 5), 0.2))
    with pytest.raises(ValueError, match="probability target"):
        fl.kl_divergence(x, np.full((4, 3), 0.25))
    with pytest.raises(TypeError, match="integer class indices"):
        fl.softmax_focal(x, np.array([0.0, 1.0, 2.0]))
    # integer one-hot rows are read as probabilities by a loss that only takes probabilities
    assert fl.kl_divergence(x, np.eye(4, dtype=int)[:3]) == pytest.approx(np.log(4))


def test_bad_weights_axes_and_options():
    x = np.zeros((3, 4))
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"one weight per class, shape \(4,\)"):
        fl.cross_entropy(x, y, weight=np.ones(3))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fl.cross_entropy(x, y, weight=np.ones((3, 4)))
    with pytest.raises(TypeError, match="takes no class weights"):
        fl.kl_divergence(x, np.full((3, 4), 0.25), weight=np.ones(4))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fl.cross_entropy(x, y, axis=2)
    with pytest.raises(ValueError, match="needs a class axis"):
        fl.cross_entropy(np.float64(1.0), np.int64(0))
    with pytest.raises(ValueError, match=r"class axis .* is empty"):
        fl.cross_entropy(np.zeros((3, 0)), y)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fl.multiclass_hinge(x, y, ignore_index=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        fl.cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="p must be in"):
        fl.multiclass_hinge(x, y, p=3)
    with pytest.raises(ValueError, match="q must be in"):
        fl.generalized_cross_entropy(x, y, q=0.0)


def test_signatures_show_the_rowwise_options():
    import inspect

    sig = inspect.signature(fl.cross_entropy.value_and_grad)
    for p in ("label_smoothing", "ignore_index", "axis", "weight", "reduction", "out", "stats"):
        assert p in sig.parameters
    assert "ignore_index" not in inspect.signature(fl.kl_divergence).parameters
    assert "One weight per class" in fl.cross_entropy.__doc__
    assert "One weight per class" not in fl.kl_divergence.__doc__


# -- determinism: code paths, threads ------------------------------------------------------------


@pytest.mark.parametrize("name, form, kw", [
    ("cross_entropy", "index", {}),
    ("cross_entropy", "index", {"weight": True, "label_smoothing": 0.1, "ignore_index": IGNORE}),
    ("cross_entropy", "probs", {"weight": True, "label_smoothing": 0.1}),
    ("kl_divergence", "probs", {}),
])
def test_split_rows_and_serial_paths_give_identical_bits(name, form, kw, monkeypatch):
    from fastloss.kinds.softmax import primitives as rowops

    rng = np.random.default_rng(19)
    c = 2 * rowops.SEGMENT + 123
    x, t = make(rng, 4, c, form, ignore="ignore_index" in kw)
    x = x.astype(np.float32)
    t = t.astype(np.float32) if form == "probs" else t
    if kw.get("weight"):
        kw = {**kw, "weight": rng.uniform(0.5, 2.0, c)}
    results = {}
    for mode in ("ser", "par", "split"):
        monkeypatch.setattr(_rowwise, "_mode", lambda n, nc, mode=mode: mode)
        v, g, s = fl.get(name).value_and_grad(x, t, stats=True, **kw)
        results[mode] = (v, g, s, fl.get(name)(x, t, reduction="none", **kw))
    if "ignore_index" in kw:
        assert np.all(results["split"][1][1] == 0.0)  # the ignored row
    for mode in ("par", "split"):
        assert results[mode][0] == results["ser"][0], mode
        np.testing.assert_array_equal(results[mode][1], results["ser"][1])
        assert results[mode][2] == results["ser"][2]
        np.testing.assert_array_equal(results[mode][3], results["ser"][3])


_DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, fastloss as fl
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for n, c in ((1, 70000), (3, 40000), (700, 33), (5000, 10), (64, 5000)):
        x = rng.normal(0, 3, size=(n, c)).astype(np.float32)
        y = rng.integers(0, c, n)
        y[::7] = -100
        t = rng.dirichlet(np.ones(c), n).astype(np.float32)
        for v, g in (fl.cross_entropy.value_and_grad(x, y, label_smoothing=0.1),
                     fl.kl_divergence.value_and_grad(x, t)):
            h.update(np.asarray(v).tobytes()); h.update(g.tobytes())
    print(h.hexdigest())
""")


def test_results_do_not_depend_on_the_number_of_threads():
    digests = set()
    for threads in ("1", "2", "3"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], env=env, capture_output=True,
                             text=True, timeout=600, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_concurrent_calls_from_python_threads():
    rng = np.random.default_rng(20)
    xs = [rng.normal(size=(300, 257)).astype(np.float32) for _ in range(4)]
    ys = [rng.integers(0, 257, 300) for _ in range(4)]
    want = [fl.cross_entropy.value_and_grad(x, y) for x, y in zip(xs, ys)]
    got = [None] * 4

    def work(i):
        for _ in range(5):
            got[i] = fl.cross_entropy.value_and_grad(xs[i], ys[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for (v, g), (wv, wg) in zip(got, want):
        assert v == wv
        np.testing.assert_array_equal(g, wg)


_CACHE_PROBE = textwrap.dedent("""
    import json, numpy as np, fastloss as fl
    from fastloss.kinds.softmax import host as _rowwise
    x = np.linspace(-3, 3, 24).reshape(4, 6)
    v = fl.multiclass_hinge(x, np.array([0, 1, 2, 3]))  # the quickest rowwise kernel to compile
    drv = _rowwise.ROWWISE.driver(fl.multiclass_hinge.spec, "ser")  # the one the call compiled
    print(json.dumps({"value": float(v), "hits": sum(drv.stats.cache_hits.values()),
                      "misses": sum(drv.stats.cache_misses.values())}))
""")


def test_a_second_process_loads_the_rowwise_driver_from_the_disk_cache(tmp_path):
    import json

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [json.loads(subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True,
                                      text=True, timeout=600, check=True).stdout.strip().splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["misses"] == 1 and runs[0]["hits"] == 0
    assert runs[1]["misses"] == 0 and runs[1]["hits"] == 1
    assert runs[0]["value"] == runs[1]["value"]


def test_float32_exponential_against_numpy():
    import numba

    from fastloss.kinds.softmax.primitives import exp_shifted_f32

    @numba.njit
    def apply(d):
        out = np.empty_like(d)
        for i in range(d.size):
            out[i] = exp_shifted_f32(d[i])
        return out

    rng = np.random.default_rng(21)
    d = np.concatenate([-rng.uniform(0, 87.3, 200_000), -np.geomspace(1e-30, 87.3, 20_000),
                        [0.0, -0.0, -87.3365, -87.34, -100.0, -1e30]]).astype(np.float32)
    got = apply(d).astype(np.float64)
    want = np.exp(d.astype(np.float64))
    normal = want >= np.finfo(np.float32).tiny
    ulp = np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[normal] - want[normal]) / ulp) <= 1.0
    # below the smallest normal float32: gradual underflow, then exactly 0 below -87.68
    tiny = float(np.finfo(np.float32).tiny)
    assert np.all(np.abs(got[~normal] - want[~normal]) < 1e-5 * tiny)
    special = apply(np.array([-np.inf, np.nan, 0.0, -87.7, -88.0, -1e30, -87.5], np.float32))
    assert special[0] == 0.0 and np.isnan(special[1]) and special[2] == 1.0
    assert np.all(special[3:6] == 0.0) and 0.0 < special[6] < tiny


def test_cross_entropy_common_case_has_a_kernel_of_its_own():
    from fastloss.kinds.softmax import host as _rowwise
    from fastloss.losses import multiclass

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 5))
    y = np.array([0, 1, 4, 2, -100, 3])
    spec = fl.cross_entropy.spec
    pick = _rowwise.ROWWISE.kernel_for
    assert pick(spec, {"label_smoothing": 0.0, "softcap": None}, True) is multiclass._plain_cross_entropy
    assert pick(spec, {"label_smoothing": 0.1, "softcap": None}, True) is spec.kernel
    assert pick(spec, {"label_smoothing": 0.0, "softcap": 30.0}, True) is spec.kernel
    assert pick(spec, {"label_smoothing": 0.0, "softcap": None}, False) is spec.kernel
    # both kernels give the reference's answer for their calls (z-loss included in the plain one)
    for kw in ({}, {"z_loss": 1e-3}, {"label_smoothing": 0.2}):
        want, (grad,) = value_and_grad("cross_entropy", x, y, reduction="sum", ignore_index=-100, **kw)
        got, g = fl.cross_entropy.value_and_grad(x, y, reduction="sum", **kw)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_allclose(g, grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pass_softmax_shift_agrees_in_place_and_with_the_reference(dtype):
    """Rows whose maximum lies beyond the first 64 classes by various spreads: the one-pass shift
    (kept, rejected by the sum, or decided by a sum-only pass in place) gives the reference's answer,
    and writing the gradient over the logits gives the same bits as writing it elsewhere."""
    rng = np.random.default_rng(11)
    nc = 300
    spreads = [0.0, 5.0, 40.0, 57.0, 58.5, 60.0, 62.0, 63.5, 64.5, 70.0, 200.0, 1e4]
    x = rng.standard_normal((len(spreads) + 3, nc))
    for r, d in enumerate(spreads):
        x[r, 100 + r] = x[r, :64].max() + d
    x[len(spreads), :64] = -np.inf  # masked first chunk: exact maximum
    x[len(spreads) + 1, :] = -30.0  # flat row
    x[len(spreads) + 2, 200:] = -np.inf
    x = x.astype(dtype)
    y = rng.integers(0, 64, x.shape[0])
    y[len(spreads)] = 150
    # plain float64 softmax cross entropy (exp(-inf) = 0 terms included)
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    p = np.exp(x64 - m)
    lse = (m + np.log(p.sum(axis=1, keepdims=True)))[:, 0]
    loss = lse - x64[np.arange(len(y)), y]
    grad = p / p.sum(axis=1, keepdims=True)
    grad[np.arange(len(y)), y] -= 1.0
    got, g = fl.cross_entropy.value_and_grad(x, y, reduction="sum")
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, loss.sum(), rtol=tol)
    np.testing.assert_allclose(g, grad, rtol=tol * 10, atol=tol * 1e-2)
    per_row = fl.cross_entropy(x, y, reduction="none")
    np.testing.assert_allclose(per_row, loss, rtol=tol * 10, atol=tol * 1e-3)
    inplace = x.copy()
    got2, g2 = fl.cross_entropy.value_and_grad(inplace, y, reduction="sum", out=inplace)
    assert g2 is inplace
    assert got2 == got
    np.testing.assert_array_equal(g2, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pass_softmax_nan_and_inf_rows(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 128)).astype(dtype)
    x[0, 100] = np.nan
    x[1, 10] = np.nan  # in the first chunk
    x[2, 100] = np.inf
    y = np.array([0, 0, 0, 0])
    per_row, g = fl.cross_entropy.value_and_grad(x, y, reduction="none")
    assert np.isnan(per_row[:3]).all() and np.isnan(g[:3]).all(axis=1).all()
    assert np.isfinite(per_row[3]) and np.isfinite(g[3]).all()
    inplace = x.copy()
    per_row2, _ = fl.cross_entropy.value_and_grad(inplace, y, reduction="none", out=inplace)
    np.testing.assert_array_equal(per_row2, per_row)
    np.testing.assert_array_equal(inplace, g)


@pytest.mark.parametrize("name", ROWWISE)
@pytest.mark.parametrize("c", [5, 100])  # below and above the one-pass softmax's first chunk
def test_read_only_inputs_give_the_same_answer(name, c):
    """Read-only logits and targets (memory maps, JAX buffers) compile and give the same bits."""
    rng = np.random.default_rng(41)
    for form, _, _ in combos(name):
        x, t = make(rng, 9, c, form)
        for dtype in (np.float32, np.float64):
            xd = x.astype(dtype)
            v0, g0 = fl.get(name).value_and_grad(xd, t)
            xr, tr = xd.copy(), t.copy()
            xr.flags.writeable = False
            tr.flags.writeable = False
            v1, g1 = fl.get(name).value_and_grad(xr, tr)
            # read-only arrays are their own Numba type, so their own compiled driver: it may have been
            # compiled in this process while the other was loaded from the disk cache, and the two may
            # contract a multiply-add differently (a last-bit difference, noticed before and left open)
            eps = float(np.finfo(dtype).eps)
            assert v1 == pytest.approx(v0, rel=4 * eps, abs=0)
            np.testing.assert_allclose(g1, g0, rtol=4 * eps, atol=0)


def test_tiny_gradient_factors_are_not_rounded_away_in_float32():
    """A row kept on its one-pass shift may have a sum near e^63: with tiny class weights its gradient
    factor ``w_y / s`` is below float32's range while the gradient itself is not."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 200)).astype(np.float32)
    x[:, 64:] += x[:, :64].max(axis=1, keepdims=True) + 56.0  # kept shift: the sum is ~136 e^56 < e^63
    y = np.array([100, 3, 150, 7])
    w = np.full(200, 1e-20)
    _, g = fl.cross_entropy.value_and_grad(x, y, weight=w, reduction="sum")
    x64 = x.astype(np.float64)
    p = np.exp(x64 - x64.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(4), y] -= 1.0
    want = 1e-20 * p
    big = np.abs(want) > 1e-30  # well inside float32's normal range
    assert big.sum() > 100
    np.testing.assert_allclose(g[big], want[big], rtol=1e-5)
