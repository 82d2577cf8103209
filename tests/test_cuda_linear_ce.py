"""Fused linear cross entropy on CUDA arrays, under the Numba CUDA simulator, against the CPU.

Needs ``NUMBA_ENABLE_CUDASIM=1`` before ``numba.cuda`` is first imported: skipped in an ordinary
run, and run in a subprocess by ``tests/test_linear_ce.py::test_cuda_path_under_the_simulator``.
The simulator has neither CuPy nor CUDA PyTorch, so the matmuls go through the Numba backend of
:mod:`fastloss.device.matmul`; the PyTorch backend's operations are checked on CPU tensors in
``tests/test_linear_ce.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (run by test_linear_ce.py)", allow_module_level=True)
pytest.importorskip("numba_cuda")

from numba import cuda

import fastloss as fl
from fastloss.device import config, matmul, simulator

pytestmark = pytest.mark.cudasim


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    saved = config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, matmul.TILE
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS = 8, 4, 8
    matmul.TILE = 4  # 16 simulated threads per matmul block (tiles of 4 still cover several turns)
    simulator.configure()
    yield
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, matmul.TILE = saved


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a.copy_to_host()


def data(rng, lead=(2, 5), width=6, vocab=17, dtype=np.float64):
    h = rng.normal(size=(*lead, width)).astype(dtype)
    w = (rng.normal(size=(vocab, width)) / 2).astype(dtype)
    b = rng.normal(size=vocab).astype(dtype)
    y = rng.integers(0, vocab, lead)
    y.reshape(-1)[1] = -100
    return h, w, b, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options, with_bias", [({}, False),
                                                ({"z_loss": 0.01, "softcap": 3.0, "label_smoothing": 0.1}, True)],
                         ids=["plain", "bias-zloss-softcap-smoothing"])
def test_matches_the_cpu(reduction, options, with_bias):
    rng = np.random.default_rng(0)
    h, w, b, y = data(rng)
    bias = b if with_bias else None
    v, grads = fl.linear_cross_entropy.value_and_grad(dev(h), dev(w), dev(y), None if bias is None else dev(bias),
                                                      chunk_size=3, reduction=reduction, **options)
    want_v, want = fl.linear_cross_entropy.value_and_grad(h, w, y, bias, chunk_size=4, reduction=reduction,
                                                          **options)
    assert len(grads) == len(want) == (3 if with_bias else 2)
    np.testing.assert_allclose(np.asarray(host(v)), want_v, rtol=1e-12, atol=1e-14)
    for g, wg in zip(grads, want):
        assert tuple(g.shape) == wg.shape
        np.testing.assert_allclose(host(g), wg, rtol=1e-11, atol=1e-14)
    v_only = fl.linear_cross_entropy(dev(h), dev(w), dev(y), None if bias is None else dev(bias), chunk_size=3,
                                     reduction=reduction, **options)
    np.testing.assert_allclose(np.asarray(host(v_only)), want_v, rtol=1e-12, atol=1e-14)


def test_float32_and_a_loss_that_is_a_0d_device_array():
    rng = np.random.default_rng(1)
    h, w, _, y = data(rng, lead=(7,), dtype=np.float32)
    v, (gh, gw) = fl.linear_cross_entropy.value_and_grad(dev(h), dev(w), dev(y), chunk_size=2)
    want_v, (wh, ww) = fl.linear_cross_entropy.value_and_grad(h, w, y, chunk_size=2)
    assert v.shape == () and gh.dtype == gw.dtype == np.float32
    assert float(v) == pytest.approx(float(want_v), rel=1e-5)
    np.testing.assert_allclose(host(gh), wh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(host(gw), ww, rtol=1e-4, atol=1e-6)


def test_all_tokens_ignored():
    rng = np.random.default_rng(2)
    h, w, _, _ = data(rng)
    y = np.full((2, 5), -100)
    v, (gh, gw) = fl.linear_cross_entropy.value_and_grad(dev(h), dev(w), dev(y))
    assert np.isnan(float(v))
    assert not host(gh).any() and not host(gw).any()
    assert float(fl.linear_cross_entropy(dev(h), dev(w), dev(y), reduction="sum")) == 0.0


def test_bad_labels_and_shapes_raise():
    rng = np.random.default_rng(3)
    h, w, _, y = data(rng)
    bad = y.copy()
    bad[1, 2] = 17
    with pytest.raises(ValueError, match=r"target\[1, 2\] = 17 is not a class index in \[0, 17\)"):
        fl.linear_cross_entropy(dev(h), dev(w), dev(bad))
    with pytest.raises(ValueError, match="weight must have shape"):
        fl.linear_cross_entropy(dev(h), dev(w[:, :4]), dev(y))
    with pytest.raises(TypeError, match="on the host"):
        fl.linear_cross_entropy(dev(h), w, dev(y))
    with pytest.raises(TypeError, match="float32 but hidden is float64"):
        fl.linear_cross_entropy(dev(h), dev(w.astype(np.float32)), dev(y))
