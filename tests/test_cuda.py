"""The CUDA backend under the Numba CUDA simulator: every loss agrees with the CPU, every option works.

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

import fastloss as fl
from fastloss._cuda import config, simulator

pytestmark = pytest.mark.cudasim


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    """Tiny blocks (grid-stride loops still take several turns) and a fast, race-free simulator
    (see fastloss._cuda.simulator)."""
    saved = config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS = 8, 4, 8
    interval = simulator.configure()
    yield
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS = saved
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
