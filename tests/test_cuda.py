"""The CUDA backend under the Numba CUDA simulator: every loss agrees with the CPU, every option works.

Every kind with a CUDA implementation is covered: pointwise, rowwise, rowreduce (embedding and
overlap losses) and similarity (InfoNCE, with the package's fallback matmul and a plugged one).

These tests need ``NUMBA_ENABLE_CUDASIM=1`` set before ``numba.cuda`` is first imported, so they
skip in an ordinary run; ``tests/test_cuda_ptx.py::test_simulator_suite`` runs this module in a
subprocess with the simulator enabled, so the default ``python -m pytest`` exercises it (and
``tox -e cudasim`` runs it directly). The simulator runs each CUDA thread as a Python thread
(~0.2 ms each): blocks are 8 threads, grids at most 4 blocks, arrays a few dozen elements.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (run by test_cuda_ptx.py::test_simulator_suite)",
                allow_module_level=True)
pytest.importorskip("numba_cuda")

from cases import POINTWISE, defaults, pointwise_inputs
from numba import cuda
from rowcases import default_shape
from rowcases import row_inputs as reduce_inputs

import fastloss as fl
from fastloss.device import config, matmul, simulator

pytestmark = pytest.mark.cudasim


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    """Tiny blocks (grid-stride loops still take several turns) and a fast, race-free simulator
    (see fastloss.device.simulator)."""
    saved = config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE, matmul.TILE
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE = 8, 4, 8, 4
    matmul.TILE = 4  # the Numba matmul backend's tiles: 16 simulated threads per block
    interval = simulator.configure()
    yield
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE, matmul.TILE = saved
    sys.setswitchinterval(interval)


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


def close(got, want, dtype=np.float64):
    tol = {np.dtype(np.float64): 1e-11, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-3}[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(host(got), dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=tol, atol=tol)


# -- the device layer ------------------------------------------------------------------------------


def test_simulator_is_available():
    assert fl.cuda_available()


def test_loss_is_a_0d_device_array_and_float_syncs():
    p, t = np.linspace(-1, 1, 10), np.zeros(10)
    v = fl.mse(dev(p), dev(t))
    assert v.shape == () and hasattr(v, "copy_to_host")
    assert float(v) == pytest.approx(float(fl.mse(p, t)), rel=1e-14)
    assert v.item() == pytest.approx(float(v))


def test_mixed_host_and_device_inputs_raise():
    p = np.ones(5)
    with pytest.raises(TypeError, match="target is on the host"):
        fl.mse(dev(p), p)
    with pytest.raises(TypeError, match="pred is on the host"):
        fl.mse(p, dev(p))
    with pytest.raises(TypeError, match="weight is on the host"):
        fl.mse(dev(p), dev(p), weight=np.ones(5))
    with pytest.raises(TypeError, match="out is on the host"):
        fl.mse.grad(dev(p), dev(p), out=np.empty(5))
    with pytest.raises(TypeError, match="target is on the host"):
        fl.mse(dev(p), [1.0, 2.0, 3.0, 4.0, 5.0])


def test_python_scalars_are_accepted_as_broadcast_inputs():
    p = np.linspace(-2, 2, 9)
    v, g = fl.huber.value_and_grad(dev(p), 0.5, delta=0.7, reduction="sum")
    want_v, want_g = fl.huber.value_and_grad(p, 0.5, delta=0.7, reduction="sum")
    close(v, want_v)
    close(g, want_g)


# -- every pointwise loss agrees with the CPU -------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_value_and_grad_match_cpu(name):
    loss = fl.get(name)
    rng = np.random.default_rng(0)
    params = defaults(loss.spec)
    inputs = pointwise_inputs(loss.spec, (7, 9), rng, params)
    d_inputs = [dev(x) for x in inputs]
    for reduction in ("mean", "sum", "none"):
        v, g = loss.value_and_grad(*d_inputs, reduction=reduction)
        want_v, want_g = loss.value_and_grad(*inputs, reduction=reduction)
        close(v, want_v)
        for got, want in zip(as_tuple(g), as_tuple(want_g)):
            assert got.shape == want.shape
            close(got, want)
    close(loss(*d_inputs), loss(*inputs))
    for got, want in zip(as_tuple(loss.grad(*d_inputs)), as_tuple(loss.grad(*inputs))):
        close(got, want)


@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_weighted_float32_matches_cpu(name):
    loss = fl.get(name)
    rng = np.random.default_rng(1)
    inputs = [x.astype(np.float32) for x in pointwise_inputs(loss.spec, (6, 10), rng)]
    w = rng.uniform(0.1, 2.0, size=(10,)).astype(np.float32)
    v, g = loss.value_and_grad(*[dev(x) for x in inputs], weight=dev(w))
    want_v, want_g = loss.value_and_grad(*inputs, weight=w)
    assert v.dtype == np.float32
    close(v, want_v, np.float32)
    for got, want in zip(as_tuple(g), as_tuple(want_g)):
        assert got.dtype == np.float32
        close(got, want, np.float32)


def test_float16_is_computed_in_float32_and_returned_as_float16():
    rng = np.random.default_rng(2)
    p = rng.normal(size=40).astype(np.float16)
    t = rng.uniform(size=40).astype(np.float16)
    v, g = fl.binary_cross_entropy.value_and_grad(dev(p), dev(t))
    want_v, want_g = fl.binary_cross_entropy.value_and_grad(p.astype(np.float32), t.astype(np.float32))
    assert v.dtype == np.float16 and g.dtype == np.float16
    close(v, want_v, np.float16)
    close(g, want_g, np.float16)


def test_broadcast_strided_and_adapted_inputs():
    rng = np.random.default_rng(3)
    p, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    # a transposed (non-contiguous) prediction and a broadcast row of targets
    v, g = fl.huber.value_and_grad(dev(p.T).T, dev(t[0]), reduction="sum")
    want_v, want_g = fl.huber.value_and_grad(p, t[0], reduction="sum")
    close(v, want_v)
    close(g, want_g)
    # a broadcast prediction: its gradient is summed back to its shape
    v, g = fl.mse.value_and_grad(dev(p[:, :1]), dev(t))
    want_v, want_g = fl.mse.value_and_grad(p[:, :1], t)
    assert g.shape == (6, 1)
    close(v, want_v)
    close(g, want_g)
    # gaussian_nll takes one variance per sample (its declaration's input adapter)
    var = rng.uniform(0.5, 2.0, size=6)
    v, (gm, gv) = fl.gaussian_nll.value_and_grad(dev(p), dev(t), dev(var))
    want_v, (want_gm, want_gv) = fl.gaussian_nll.value_and_grad(p, t, var)
    assert gv.shape == (6,)
    close(v, want_v)
    close(gm, want_gm)
    close(gv, want_gv)


def test_weights_broadcast_and_zero_weight_sum():
    rng = np.random.default_rng(4)
    p, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    for w in (rng.uniform(size=(5, 1)), rng.uniform(size=(4,)), np.float64(2.5)):
        dw = dev(w) if np.ndim(w) else w
        if not np.ndim(w):
            dw = dev(np.full(1, w))
            w = np.full(1, w)
        v, g = fl.mse.value_and_grad(dev(p), dev(t), weight=dw)
        want_v, want_g = fl.mse.value_and_grad(p, t, weight=w)
        close(v, want_v)
        close(g, want_g)
    v = fl.mse(dev(p), dev(t), weight=dev(np.zeros(4)))
    assert np.isnan(float(v)) and np.isnan(float(fl.mse(p, t, weight=np.zeros(4))))


def test_discrete_inputs_are_checked_on_the_device():
    p = np.linspace(-1, 1, 12).reshape(3, 4)
    y = np.where(p > 0, 1.0, -1.0)
    y[2, 1] = 0.5
    with pytest.raises(ValueError, match=r"target\[2, 1\] = 0.5"):
        fl.hinge(dev(p), dev(y))


def test_empty_inputs():
    e = dev(np.zeros(0))
    assert np.isnan(float(fl.mse(e, e)))
    assert float(fl.mse(e, e, reduction="sum")) == 0.0
    v, g = fl.mse.value_and_grad(e, e, reduction="none")
    assert v.shape == (0,) and g.shape == (0,)


# -- out=, in place, stats, determinism, custom losses ----------------------------------------------


def test_out_may_be_the_prediction_itself():
    rng = np.random.default_rng(5)
    p, t = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    want_v, want_g = fl.log_cosh.value_and_grad(p, t)
    dp = dev(p)
    v, g = fl.log_cosh.value_and_grad(dp, dev(t), out=dp)
    assert g is dp
    close(v, want_v, np.float32)
    close(dp, want_g, np.float32)


def test_out_strided_and_out_checks():
    rng = np.random.default_rng(6)
    p, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    out = dev(np.zeros((5, 6))).T
    g = fl.mse.grad(dev(p), dev(t), out=out)
    assert g is out
    close(out, fl.mse.grad(p, t))
    dp, dt = dev(p), dev(t)
    with pytest.raises(ValueError, match="shape"):
        fl.mse.grad(dp, dt, out=dev(np.zeros((5, 6))))
    with pytest.raises(TypeError, match="dtype"):
        fl.mse.grad(dp, dt, out=dev(np.zeros((6, 5), np.float32)))
    with pytest.raises(ValueError, match="shares memory with target"):
        fl.mse.grad(dp, dt, out=dt)


def test_stats_match_cpu():
    rng = np.random.default_rng(7)
    p, t = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    p[1, 2] = np.nan
    _, _, st = fl.mse.value_and_grad(dev(p), dev(t), stats=True)
    _, _, want = fl.mse.value_and_grad(p, t, stats=True)
    assert st.nonfinite == want.nonfinite == 1
    assert st.norm == pytest.approx(want.norm, rel=1e-12)
    assert st.max_abs == pytest.approx(want.max_abs, rel=1e-12)


def test_reductions_are_deterministic():
    rng = np.random.default_rng(8)
    p, t = dev(rng.normal(size=300)), dev(rng.normal(size=300))
    runs = {float(fl.log_cosh(p, t)) for _ in range(3)}
    assert len(runs) == 1


def test_custom_pointwise_loss_runs_on_the_device():
    import math

    @fl.pointwise
    def pseudo_huber(pred, target, delta=1.0):
        d = pred - target
        s = math.sqrt(1.0 + (d / delta) ** 2)
        return delta * delta * (s - 1.0), d / s

    rng = np.random.default_rng(9)
    p, t = rng.normal(size=20), rng.normal(size=20)
    v, g = pseudo_huber.value_and_grad(dev(p), dev(t), delta=0.5)
    want_v, want_g = pseudo_huber.value_and_grad(p, t, delta=0.5)
    close(v, want_v)
    close(g, want_g)


# -- rowwise losses ------------------------------------------------------------------------------------

ROWWISE = fl.names("rowwise")


def row_inputs(loss, rng, rows=5, classes=11, form="index", dtype=np.float64):
    logits = rng.normal(0.0, 2.0, size=(rows, classes)).astype(dtype)
    if form == "probs":
        return logits, rng.dirichlet(np.ones(classes), size=rows).astype(dtype)
    y = rng.integers(0, classes, size=rows)
    if loss.spec.options.get("ignore_index", False):
        y[1] = -100
    return logits, y


def forms(loss):
    return loss.spec.options.get("targets", ("index",))


@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_value_and_grad_match_cpu(name):
    loss = fl.get(name)
    rng = np.random.default_rng(10)
    for form in forms(loss):
        x, y = row_inputs(loss, rng, form=form)
        for reduction in ("mean", "sum", "none"):
            v, g = loss.value_and_grad(dev(x), dev(y), reduction=reduction)
            want_v, want_g = loss.value_and_grad(x, y, reduction=reduction)
            assert g.shape == x.shape
            close(v, want_v)
            close(g, want_g)
        close(loss(dev(x), dev(y)), loss(x, y))


@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_options_float32_match_cpu(name):
    """Class weights, the loss's own parameters moved off their defaults, float32 logits."""
    loss = fl.get(name)
    rng = np.random.default_rng(11)
    form = forms(loss)[0]
    x, y = row_inputs(loss, rng, rows=6, classes=9, form=form, dtype=np.float32)
    kw = {p.name: (p.special[0] if p.special else p.default) for p in loss.spec.params}
    if loss.spec.options.get("class_weight", True):
        kw["weight"] = rng.uniform(0.2, 2.0, size=9)
    d_kw = {**kw, "weight": dev(kw["weight"])} if "weight" in kw else kw
    v, g = loss.value_and_grad(dev(x), dev(y), **d_kw)
    want_v, want_g = loss.value_and_grad(x, y, **kw)
    assert v.dtype == g.dtype == np.float32
    close(v, want_v, np.float32)
    close(g, want_g, np.float32)


def test_cross_entropy_label_smoothing_probs_axis_and_float16():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 7, 4))  # classes on axis 1, as PyTorch's (batch, classes, ...)
    y = rng.integers(0, 7, size=(3, 4))
    w = rng.uniform(0.5, 1.5, size=7)
    v, g = fl.cross_entropy.value_and_grad(dev(x), dev(y), axis=1, label_smoothing=0.2, weight=dev(w))
    want_v, want_g = fl.cross_entropy.value_and_grad(x, y, axis=1, label_smoothing=0.2, weight=w)
    close(v, want_v)
    close(g, want_g)
    t = rng.dirichlet(np.ones(7), size=(3, 4)).transpose(0, 2, 1)
    v, g = fl.cross_entropy.value_and_grad(dev(x), dev(t), axis=1, label_smoothing=0.1, reduction="none")
    want_v, want_g = fl.cross_entropy.value_and_grad(x, t, axis=1, label_smoothing=0.1, reduction="none")
    assert v.shape == (3, 4)
    close(v, want_v)
    close(g, want_g)
    x16 = x[:, :, 0].astype(np.float16)
    v, g = fl.cross_entropy.value_and_grad(dev(x16), dev(y[:, 0]))
    want_v, want_g = fl.cross_entropy.value_and_grad(x16.astype(np.float32), y[:, 0])
    assert v.dtype == g.dtype == np.float16
    close(v, want_v, np.float16)
    close(g, want_g, np.float16)


@pytest.mark.parametrize("name", ["cross_entropy", "multiclass_hinge"])
def test_rowwise_gradient_in_place_over_the_logits(name):
    """Block mode (cross entropy) and thread mode (multiclass hinge) both write over their input."""
    loss = fl.get(name)
    rng = np.random.default_rng(13)
    x, y = row_inputs(loss, rng, rows=4, classes=37, dtype=np.float32)
    want_v, want_g = loss.value_and_grad(x, y)
    dx = dev(x)
    v, g = loss.value_and_grad(dx, dev(y), out=dx)
    assert g is dx
    close(v, want_v, np.float32)
    close(dx, want_g, np.float32)


def test_bad_labels_raise_and_never_read_out_of_bounds():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(4, 5))
    y = np.array([0, 4, 5, 1])
    with pytest.raises(ValueError, match=r"target\[2\] = 5 is not a class index in \[0, 5\)"):
        fl.cross_entropy(dev(x), dev(y))
    with pytest.raises(ValueError, match=r"target\[1\] = -3"):
        fl.cross_entropy(dev(x), dev(np.array([0, -3, 1, 1])))
    config.CHECK_LABELS = False
    try:
        v = fl.cross_entropy(dev(x), dev(y), reduction="none").copy_to_host()
    finally:
        config.CHECK_LABELS = True
    assert np.isnan(v[2]) and np.isfinite(v[[0, 1, 3]]).all()


def test_all_ignored_mean_is_nan_and_ignored_rows_have_zero_gradient():
    x = np.random.default_rng(15).normal(size=(3, 4))
    y = np.full(3, -100)
    v, g = fl.cross_entropy.value_and_grad(dev(x), dev(y))
    assert np.isnan(float(v))
    assert not host(g).any()


def test_rowwise_stats_and_determinism():
    rng = np.random.default_rng(16)
    x, y = rng.normal(size=(9, 6)), rng.integers(0, 6, size=9)
    _, _, st = fl.cross_entropy.value_and_grad(dev(x), dev(y), stats=True)
    _, _, want = fl.cross_entropy.value_and_grad(x, y, stats=True)
    assert st.norm == pytest.approx(want.norm, rel=1e-12) and st.nonfinite == 0
    runs = {float(fl.cross_entropy(dev(x), dev(y))) for _ in range(3)}
    assert len(runs) == 1


@pytest.mark.parametrize("form", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_z_loss_softcap_and_z_part_match_cpu(form, reduction):
    """Issue 9's options on the device: the same fused kernel, and the z-loss part as a second value."""
    rng = np.random.default_rng(21)
    x = rng.normal(0.0, 4.0, size=(5, 11))
    if form == "index":
        y = rng.integers(0, 11, 5)
        y[2] = -100
    else:
        y = rng.dirichlet(np.ones(11), 5)
    kw = dict(z_loss=0.02, softcap=3.0, label_smoothing=0.1, reduction=reduction, return_z_loss=True)
    (v, zpart), g = fl.cross_entropy.value_and_grad(dev(x), dev(y), **kw)
    (want_v, want_z), want_g = fl.cross_entropy.value_and_grad(x, y, **kw)
    close(v, want_v)
    close(zpart, want_z)
    close(g, want_g)
    xd = dev(x)
    _, gi = fl.cross_entropy.value_and_grad(xd, dev(y), out=xd, z_loss=0.02, softcap=3.0)
    close(gi, fl.cross_entropy.grad(x, y, z_loss=0.02, softcap=3.0))


def test_gaussian_nll_negative_variance_raises_on_the_device():
    rng = np.random.default_rng(17)
    p, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    var = np.array([0.5, -0.25, 1.0])
    with pytest.raises(ValueError, match="var has negative entries"):
        fl.gaussian_nll(p, t, var)  # the CPU's own check
    with pytest.raises(ValueError, match=r"gaussian_nll: var has negative entries; var\[1\] = -0.25"):
        fl.gaussian_nll(dev(p), dev(t), dev(var))
    full = np.abs(rng.normal(size=(3, 4)))
    full[2, 3] = -1e-9
    with pytest.raises(ValueError, match=r"var\[2, 3\]"):
        fl.gaussian_nll.grad(dev(p), dev(t), dev(full))
    # NaN is not negative (it propagates, as on the CPU); zero is allowed (clamped at eps)
    ok = np.array([0.5, np.nan, 0.0])
    v = fl.gaussian_nll(dev(p), dev(t), dev(ok), reduction="none").copy_to_host()
    want = fl.gaussian_nll(p, t, ok, reduction="none")
    np.testing.assert_array_equal(np.isnan(v), np.isnan(want))
    close(v[~np.isnan(v)], want[~np.isnan(want)])
    # without the device check nothing waits, and the offending elements are NaN, never clamped
    config.CHECK_LABELS = False
    try:
        v, (gm, gv) = fl.gaussian_nll.value_and_grad(dev(p), dev(t), dev(var), reduction="none")
    finally:
        config.CHECK_LABELS = True
    v, gm, gv = host(v), host(gm), host(gv)
    assert np.isnan(v[1]).all() and np.isnan(gm[1]).all() and np.isnan(gv[1])
    assert np.isfinite(v[[0, 2]]).all() and np.isfinite(gm[[0, 2]]).all() and np.isfinite(gv[[0, 2]]).all()


# -- rowreduce losses (embedding and overlap losses) ------------------------------------------------------

ROWREDUCE = fl.names("rowreduce")


def reduce_case(name, rng, lead=None, row=None, dtype=np.float64, params=None):
    """Valid inputs for ``name`` (row-aligned inputs cast to ``dtype``; per-row targets as they are)."""
    spec = fl.get(name).spec
    d_lead, d_row = default_shape(spec)
    inputs = reduce_inputs(spec, d_lead if lead is None else lead, d_row if row is None else row, rng, params)
    per_row = spec.options.get("row_inputs", ())
    return [x if i.name in per_row else x.astype(dtype) for i, x in zip(spec.inputs, inputs)]


def assert_matches_cpu(loss, inputs, dtype=np.float64, **kw):
    """value_and_grad on the device == on the CPU for every reduction; shapes and dtypes too."""
    d_kw = {k: dev(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    for reduction in ("mean", "sum", "none"):
        v, g = loss.value_and_grad(*[dev(x) for x in inputs], reduction=reduction, **d_kw)
        want_v, want_g = loss.value_and_grad(*inputs, reduction=reduction, **kw)
        assert v.shape == np.shape(want_v) and v.dtype == np.asarray(want_v).dtype
        close(v, want_v, dtype)
        assert len(as_tuple(g)) == len(as_tuple(want_g))
        for got, want in zip(as_tuple(g), as_tuple(want_g)):
            assert got.shape == want.shape and got.dtype == want.dtype
            close(got, want, dtype)


@pytest.mark.parametrize("name", ROWREDUCE)
def test_rowreduce_value_and_grad_match_cpu(name):
    loss = fl.get(name)
    inputs = reduce_case(name, np.random.default_rng(20))
    assert_matches_cpu(loss, inputs)
    close(loss(*[dev(x) for x in inputs]), loss(*inputs))
    for got, want in zip(as_tuple(loss.grad(*[dev(x) for x in inputs])), as_tuple(loss.grad(*inputs))):
        close(got, want)
    # every gradient written in place over its own input
    d_inputs = [dev(x) for x in inputs]
    diff = [d for d, i in zip(d_inputs, loss.spec.inputs) if i.differentiable]
    want_v, want_g = loss.value_and_grad(*inputs, reduction="sum")
    v, g = loss.value_and_grad(*d_inputs, reduction="sum", out=tuple(diff) if len(diff) > 1 else diff[0])
    assert all(a is b for a, b in zip(as_tuple(g), diff))
    close(v, want_v)
    for got, want in zip(diff, as_tuple(want_g)):
        close(got, want)


@pytest.mark.parametrize("name", ROWREDUCE)
def test_rowreduce_options_weights_float32_match_cpu(name):
    """Every parameter moved off its default (kernel variants too), row weights, float32 inputs."""
    loss = fl.get(name)
    rng = np.random.default_rng(21)
    params = {p.name: (p.special[0] if p.special else p.default) for p in loss.spec.params}
    inputs = reduce_case(name, rng, dtype=np.float32, params=params)
    lead = default_shape(loss.spec)[0]
    assert_matches_cpu(loss, inputs, np.float32, weight=rng.uniform(0.1, 2.0, size=lead), **params)


def test_rowreduce_threads_per_row_and_split_rows(monkeypatch):
    """Rows shared by 1, 2, 4 and 8 threads, and few long rows split into pieces across blocks."""
    from fastloss.kinds.rowsum import cuda as rowreduce

    rng = np.random.default_rng(22)
    assert [rowreduce.threads_per_row(d, 8) for d in (1, 4, 5, 9, 17, 100)] == [1, 1, 2, 4, 8, 8]
    for row in ((3,), (7,), (13,), (40,)):
        assert_matches_cpu(fl.contrastive, reduce_case("contrastive", rng, lead=(5,), row=row))
    monkeypatch.setattr(config, "ROW_PIECE", 16)
    monkeypatch.setattr(config, "ROW_SPLIT_BLOCKS", 4)
    for name in ("dice", "triplet_margin", "cosine_embedding"):
        lead, row = ((2,), (3, 11)) if name == "dice" else ((3,), (37,))
        inputs = reduce_case(name, rng, lead=lead, row=row)
        w = rng.uniform(0.5, 1.5, size=lead)
        assert_matches_cpu(fl.get(name), inputs, weight=w)
        _, _, st = fl.get(name).value_and_grad(*[dev(x) for x in inputs], stats=True)
        _, _, want = fl.get(name).value_and_grad(*inputs, stats=True)
        assert st.norm == pytest.approx(want.norm, rel=1e-12) and st.nonfinite == want.nonfinite == 0


def test_rowreduce_layouts_single_rows_scalars_and_broadcast_weights():
    rng = np.random.default_rng(23)
    x1, x2, y = reduce_case("contrastive", rng, lead=(4, 3), row=(5,))
    # transposed (non-contiguous) embeddings, a (4, 3) grid of rows, targets broadcast from (3,)
    a1 = np.asfortranarray(x1)
    assert_matches_cpu(fl.contrastive, [a1, x2, y[0]], weight=rng.uniform(size=(4, 1)))
    v, (g1, _) = fl.contrastive.value_and_grad(dev(x1.T).T, dev(x2), dev(y[0]))
    want_v, (want_g1, _) = fl.contrastive.value_and_grad(x1, x2, y[0])
    close(v, want_v)
    close(g1, want_g1)
    # a single pair (D,) with a Python number as its target: 0-d results as on the CPU
    v, (g1, g2) = fl.contrastive.value_and_grad(dev(x1[0, 0]), dev(x2[0, 0]), 1, reduction="none")
    want_v, (want_g1, want_g2) = fl.contrastive.value_and_grad(x1[0, 0], x2[0, 0], 1, reduction="none")
    assert v.shape == () and g1.shape == (5,)
    close(v, want_v)
    close(g2, want_g2)
    # masks with rows over all axes after the first, a weight per sample
    p, t = reduce_case("jaccard", rng, lead=(3,), row=(2, 5))
    assert_matches_cpu(fl.jaccard, [p, t], weight=rng.uniform(size=3))


def test_rowreduce_out_in_place_and_strided_out():
    rng = np.random.default_rng(24)
    x, t = reduce_case("dice", rng, lead=(3,), row=(4, 5), dtype=np.float32)
    want_v, want_g = fl.dice.value_and_grad(x, t)
    dx = dev(x)
    v, g = fl.dice.value_and_grad(dx, dev(t), out=dx)  # the gradient over the logits
    assert g is dx
    close(v, want_v, np.float32)
    close(dx, want_g, np.float32)
    # several gradients: in place for one, a strided buffer for the other, None to allocate
    a, p, n = reduce_case("triplet_margin", rng, lead=(6,), row=(5,))
    want = fl.triplet_margin.grad(a, p, n)
    da, dp, dn = dev(a), dev(p), dev(n)
    strided = dev(np.zeros((5, 6))).T
    ga, gp, gn = fl.triplet_margin.grad(da, dp, dn, out=(da, strided, None))
    assert ga is da and gp is strided
    for got, w in zip((da, strided, gn), want):
        close(got, w)
    x1, x2, y = reduce_case("contrastive", rng)
    d1, d2, dy = dev(x1), dev(x2), dev(y)
    with pytest.raises(ValueError, match="out must hold 2 gradient buffer"):
        fl.contrastive.grad(d1, d2, dy, out=dev(np.zeros_like(x1)))
    with pytest.raises(ValueError, match=r"out\[1\] shares memory with x1"):
        fl.contrastive.grad(d1, d2, dy, out=(None, d1))
    with pytest.raises(TypeError, match="dtype"):
        fl.contrastive.grad(d1, d2, dy, out=(dev(np.zeros(x1.shape, np.float32)), None))
    with pytest.raises(ValueError, match="shape"):
        fl.contrastive.grad(d1, d2, dy, out=(dev(np.zeros((2, 2))), None))


def test_rowreduce_float16_is_computed_in_float32():
    rng = np.random.default_rng(25)
    for name in ("dice", "cosine_embedding"):
        inputs = reduce_case(name, rng, dtype=np.float16)
        v, g = fl.get(name).value_and_grad(*[dev(x) for x in inputs])
        want_v, want_g = fl.get(name).value_and_grad(*inputs)
        assert v.dtype == np.float16 and all(x.dtype == np.float16 for x in as_tuple(g))
        close(v, want_v, np.float16)
        for got, want in zip(as_tuple(g), as_tuple(want_g)):
            close(got, want, np.float16)


def test_rowreduce_bad_inputs_raise_as_on_the_cpu():
    rng = np.random.default_rng(26)
    x1, x2, y = reduce_case("contrastive", rng)
    y = y.copy()
    y[3] = 0.5
    with pytest.raises(ValueError, match=r"target must take values in \{0, 1\}; target\[3\] = 0.5"):
        fl.contrastive(dev(x1), dev(x2), dev(y))
    with pytest.raises(ValueError, match=r"target\[0\] = 0.0"):
        fl.cosine_embedding(dev(x1), dev(x2), dev(np.zeros(6)))
    with pytest.raises(ValueError, match="row-aligned inputs must have the same shape"):
        fl.contrastive(dev(x1), dev(x2[:, :4]), dev(np.ones(6)))
    with pytest.raises(ValueError, match="one value per row"):
        fl.contrastive(dev(x1), dev(x2), dev(np.ones(5)))
    with pytest.raises(ValueError, match="must have length 4"):
        fl.giou(dev(x1), dev(x2))
    with pytest.raises(ValueError, match="weight of shape"):
        fl.contrastive(dev(x1), dev(x2), dev(np.ones(6)), weight=dev(np.ones(5)))


def test_degenerate_boxes_raise_the_cpus_error_before_anything_is_written():
    from fastloss.losses.overlap import _boxes_valid

    rng = np.random.default_rng(27)
    pred, target = reduce_case("giou", rng, lead=(7,))
    target = target.copy()
    target[4, 2] = target[4, 0] - 0.5  # x2 < x1
    with pytest.raises(ValueError) as cpu:
        fl.giou(pred, target)
    dp = dev(pred)
    with pytest.raises(ValueError) as gpu:
        fl.giou.value_and_grad(dp, dev(target), out=dp)
    assert str(gpu.value) == str(cpu.value) and "target_boxes[4]" in str(gpu.value)
    np.testing.assert_array_equal(dp.copy_to_host(), pred)  # the in-place gradient was not written
    # the device form agrees with the host check, row by row
    boxes = rng.uniform(-1, 1, size=(200, 2, 4))
    for b in boxes:
        host_ok = not ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any()
        assert _boxes_valid(tuple(b.reshape(-1)), 1e-7) == host_ok
    # unchecked: nothing waits, the bad row is NaN and the others are right
    config.CHECK_LABELS = False
    try:
        v, g = fl.giou.value_and_grad(dev(pred), dev(target), reduction="none")
    finally:
        config.CHECK_LABELS = True
    v, g = host(v), host(g)
    ok = np.arange(7) != 4
    assert np.isnan(v[4]) and np.isnan(g[4]).all()
    close(v[ok], fl.giou(pred[ok], target[ok], reduction="none"))
    close(g[ok], fl.giou.grad(pred[ok], target[ok], reduction="sum"))


def test_rowreduce_empty_stats_and_determinism():
    rng = np.random.default_rng(28)
    e = dev(np.zeros((0, 5)))
    assert np.isnan(float(fl.contrastive(e, e, dev(np.zeros(0)))))
    assert float(fl.contrastive(e, e, dev(np.zeros(0)), reduction="sum")) == 0.0
    v, (g1, g2) = fl.contrastive.value_and_grad(e, e, dev(np.zeros(0)), reduction="none")
    assert v.shape == (0,) and g1.shape == g2.shape == (0, 5)
    inputs = reduce_case("tversky", rng, lead=(5,), row=(3, 3))
    inputs[0][1, 0, 0] = np.nan
    _, _, st = fl.tversky.value_and_grad(*[dev(x) for x in inputs], stats=True)
    _, _, want = fl.tversky.value_and_grad(*inputs, stats=True)
    assert st.nonfinite == want.nonfinite == 9  # one NaN poisons its row
    assert st.norm == pytest.approx(want.norm, rel=1e-12)
    d_inputs = [dev(x) for x in reduce_case("cosine_embedding", rng, lead=(40,), row=(6,))]
    assert len({float(fl.cosine_embedding(*d_inputs)) for _ in range(3)}) == 1


# -- the similarity kind (InfoNCE) ----------------------------------------------------------------------------


def nce_case(rng, n=6, d=5, dtype=np.float64):
    z1 = rng.normal(size=(n, d))
    return z1.astype(dtype), (z1 + rng.normal(0.0, 0.7, size=(n, d))).astype(dtype)


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_matches_cpu(symmetric):
    rng = np.random.default_rng(30)
    z1, z2 = nce_case(rng)
    assert_matches_cpu(fl.info_nce, [z1, z2], symmetric=symmetric, temperature=0.3)
    assert_matches_cpu(fl.info_nce, [z1, z2], symmetric=symmetric, weight=rng.uniform(0.2, 2.0, size=6))
    close(fl.info_nce(dev(z1), dev(z2)), fl.info_nce(z1, z2))


def test_info_nce_float32_float16_layouts_and_out():
    rng = np.random.default_rng(31)
    z1, z2 = nce_case(rng, n=5, d=7, dtype=np.float32)
    assert_matches_cpu(fl.info_nce, [z1, z2], np.float32)
    want_v, (w1, w2) = fl.info_nce.value_and_grad(z1, z2)
    # in place over the first view, a strided buffer for the second, a transposed input
    d1 = dev(z1)
    out2 = dev(np.zeros((7, 5), np.float32)).T
    v, (g1, g2) = fl.info_nce.value_and_grad(d1, dev(z2.T).T, out=(d1, out2))
    assert g1 is d1 and g2 is out2
    close(v, want_v, np.float32)
    close(d1, w1, np.float32)
    close(out2, w2, np.float32)
    h1, h2 = nce_case(rng, n=4, d=3, dtype=np.float16)
    v, (g1, g2) = fl.info_nce.value_and_grad(dev(h1), dev(h2))
    want_v, (w1, w2) = fl.info_nce.value_and_grad(h1, h2)
    assert v.dtype == g1.dtype == g2.dtype == np.float16
    close(v, want_v, np.float16)
    close(g1, w1, np.float16)
    close(g2, w2, np.float16)


def test_info_nce_zero_rows_stats_empty_and_errors():
    rng = np.random.default_rng(32)
    z1, z2 = nce_case(rng)
    z1[2] = 0.0  # a zero embedding: below the normalisation's floor
    assert_matches_cpu(fl.info_nce, [z1, z2])
    _, _, st = fl.info_nce.value_and_grad(dev(z1), dev(z2), stats=True)
    _, _, want = fl.info_nce.value_and_grad(z1, z2, stats=True)
    assert st.norm == pytest.approx(want.norm, rel=1e-9) and st.nonfinite == 0
    e = dev(np.zeros((0, 4)))
    assert np.isnan(float(fl.info_nce(e, e)))
    v, (g1, _) = fl.info_nce.value_and_grad(e, e, reduction="none")
    assert v.shape == (0,) and g1.shape == (0, 4)
    with pytest.raises(ValueError, match=r"must be 2-D"):
        fl.info_nce(dev(z1[0]), dev(z2[0]))
    with pytest.raises(ValueError, match="both views need the same rows"):
        fl.info_nce(dev(z1), dev(z2[:5]))
    with pytest.raises(ValueError, match="weight of shape"):
        fl.info_nce(dev(z1), dev(z2), weight=dev(np.ones(5)))
    with pytest.raises(ValueError, match="out must hold 2 gradient buffers"):
        fl.info_nce.grad(dev(z1), dev(z2), out=dev(np.zeros_like(z1)))
    d1, d2 = dev(z1), dev(z2)
    with pytest.raises(ValueError, match=r"out\[0\] shares memory with z2"):
        fl.info_nce.grad(d1, d2, out=(d2, None))


def test_device_matmul_without_cupy_or_torch_matches_numpy():
    """Numba device arrays (and the simulator): the package's tiled kernel (fastloss.device.matmul)."""
    from fastloss.device import arrays as device
    from fastloss.kinds.similarity import cuda as similarity

    rng = np.random.default_rng(33)
    pl = device.Placement("test", "a", dev(np.zeros(1)))
    for m, nn, kk in ((5, 6, 7), (1, 9, 4), (3, 2, 0), (4, 0, 3)):
        for ta in (False, True):
            for tb in (False, True):
                a = rng.normal(size=(kk, m) if ta else (m, kk))
                b = rng.normal(size=(nn, kk) if tb else (kk, nn))
                da, db, c = dev(a), dev(b), dev(np.full((m, nn), np.nan))
                B = similarity.Buffer
                similarity.device_matmul(pl, B(da, da), B(db, db), B(c, c), trans_a=ta, trans_b=tb, alpha=0.5)
                close(c, 0.5 * ((a.T if ta else a) @ (b.T if tb else b)))


def test_device_matmul_is_pluggable(monkeypatch):
    """A matmul supplied through similarity.MATMUL (here: on the host) does all three products."""
    from fastloss.kinds.similarity import cuda as similarity

    calls = []

    def host_matmul(pl, a, b, c, trans_a, trans_b, alpha):
        calls.append((tuple(a.shape), trans_a, trans_b))
        A, B = a.copy_to_host(), b.copy_to_host()
        c.copy_to_device(alpha * ((A.T if trans_a else A) @ (B.T if trans_b else B)).astype(c.dtype))

    monkeypatch.setattr(similarity, "MATMUL", host_matmul)
    rng = np.random.default_rng(34)
    z1, z2 = nce_case(rng)
    v, (g1, g2) = fl.info_nce.value_and_grad(dev(z1), dev(z2))
    want_v, (w1, w2) = fl.info_nce.value_and_grad(z1, z2)
    assert [(t_a, t_b) for _, t_a, t_b in calls] == [(False, True), (False, False), (True, False)]
    close(v, want_v)
    close(g1, w1)
    close(g2, w2)


# -- array parameters and label storage (issue #20) -------------------------------------------------


def test_array_pos_weight_matches_cpu():
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 3.0, (6, 5))
    y = (rng.uniform(size=(6, 5)) < 0.4).astype(np.float64)
    for pw in (rng.uniform(0.0, 3.0, 5), rng.uniform(0.0, 3.0, (6, 1)), rng.uniform(0.0, 3.0, (6, 5))):
        for reduction in ("mean", "none"):
            want_v, want_g = fl.binary_cross_entropy.value_and_grad(x, y, pos_weight=pw, reduction=reduction)
            v, g = fl.binary_cross_entropy.value_and_grad(dev(x), dev(y), pos_weight=dev(pw), reduction=reduction)
            close(v, want_v)
            close(g, want_g)
    with pytest.raises(TypeError, match="pos_weight is on the host"):  # like any input
        fl.binary_cross_entropy(dev(x), dev(y), pos_weight=np.ones(5))
    with pytest.raises(ValueError, match="does not broadcast"):
        fl.binary_cross_entropy(dev(x), dev(y), pos_weight=dev(np.ones(4)))


def test_float16_discrete_targets_on_the_device():
    p = np.array([0.5, -2.0, 3.0, 0.1])
    t = np.array([1.0, 0.0, 1.0, -1.0])
    want = fl.hinge.value_and_grad(p, t)
    v, g = fl.hinge.value_and_grad(dev(p), dev(t.astype(np.float16)))
    close(v, want[0])
    close(g, want[1])
    with pytest.raises(ValueError, match="must take values in"):
        fl.hinge(dev(p), dev(np.array([1.0, 0.5, 1.0, 1.0], np.float16)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_large_logits_keep_their_accuracy(dtype, eps):
    """Issue #20 item 2 on the device: rows far from zero give the loss of their differences."""
    from test_large_logits import _check

    rows = [np.array([0.0, 1.0, -1.0, 2.0]) + 1e8, np.full(4, 1e30), np.full(4, -1e30)]
    if dtype == np.float64:
        rows += [np.array([0.0, 1.0, -1.0, 2.0]) + c for c in (1e10, 1e15)]
    rng = np.random.default_rng(3)
    x = np.stack(rows).astype(dtype)
    y = np.zeros(len(rows), dtype=np.int64)
    value, grad = fl.cross_entropy.value_and_grad(dev(x), dev(y), label_smoothing=eps, reduction="none")
    _check(x, y, eps, host(value), host(grad))
    # a longer row with its target far above the rest (a loss of ~1e-10)
    x = rng.standard_normal((2, 40))
    x[:, 30] += 25.0
    x[1] += 1e6
    x = x.astype(dtype)
    y = np.array([30, 30])
    value, grad = fl.cross_entropy.value_and_grad(dev(x), dev(y), label_smoothing=eps, reduction="none")
    _check(x, y, eps, host(value), host(grad))


# -- Hessians --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_hessians_match_cpu(name):
    """The declared second derivatives from the device kernel, scaled as on the CPU."""
    loss = fl.get(name)
    rng = np.random.default_rng(11)
    xs = pointwise_inputs(loss.spec, (5, 7), rng)
    w = rng.uniform(0.5, 2.0, size=(5, 7))
    for reduction, weight in (("mean", None), ("sum", w)):
        v, g, h = loss.value_grad_hess(*map(dev, xs), weight=None if weight is None else dev(weight),
                                       reduction=reduction)
        want = loss.value_grad_hess(*xs, weight=weight, reduction=reduction)
        close(v, want[0])
        for a, b in zip(as_tuple(g), as_tuple(want[1])):
            close(a, b)
        for a, b in zip(as_tuple(h), as_tuple(want[2])):
            assert hasattr(a, "copy_to_host")
            close(a, b)


def test_hessian_out_broadcast_and_floor_on_the_device():
    p, t = np.linspace(-3, 3, 12), np.zeros(12)
    h = cuda.device_array(12)
    got = fl.huber.hess(dev(p), dev(t), out=h, reduction="sum")
    assert got is h
    close(h, fl.huber.hess(p, t, reduction="sum"))
    row = np.linspace(-1, 1, 6)[None, :]  # pred broadcast against (4, 6) targets: summed second derivatives
    tt = np.random.default_rng(0).normal(size=(4, 6))
    close(fl.log_cosh.hess(dev(row), dev(tt), reduction="sum"), fl.log_cosh.hess(row, tt, reduction="sum"))
    g = cuda.device_array(12)
    with pytest.raises(ValueError, match="overlapping"):
        fl.mse.grad_hess(dev(p), dev(t), out=(g, g))
    d = np.array([-10.0, 0.0, 10.0])
    close(fl.robust.hess(dev(d), dev(np.zeros(3)), alpha=0.0, hess_floor=1e-3, reduction="sum"),
          fl.robust.hess(d, np.zeros(3), alpha=0.0, hess_floor=1e-3, reduction="sum"))
    with pytest.raises(NotImplementedError, match="CUDA"):
        fl.cross_entropy.hess(dev(np.zeros((2, 3))), dev(np.array([0, 1])))
