"""Bad input on CUDA arrays gets the host's answer or the host's error (tests/test_bad_input.py, on the simulator).

A representative loss of each kind with a CUDA side: ``out=`` that partly overlaps its own input
(the right answer), ``out=`` over another input (an error), negative weights and declared target
domains (the host's messages, found on the device), the ``(N, 1)`` against ``(N,)`` warning; and
that a call with nothing to check never waits for the device.

Needs ``NUMBA_ENABLE_CUDASIM=1`` before ``numba.cuda`` is imported, like tests/test_cuda.py;
``tests/test_cuda_ptx.py::test_simulator_suite`` runs both in a subprocess.
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

from numba import cuda

import fastloss as fl
from fastloss._call import signed_weights
from fastloss.device import arrays, config, matmul, simulator

pytestmark = pytest.mark.cudasim


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    """Tiny blocks and a fast, race-free simulator, as in tests/test_cuda.py."""
    saved = config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE, matmul.TILE
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE = 8, 4, 8, 4
    matmul.TILE = 4
    interval = simulator.configure()
    yield
    config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE, matmul.TILE = saved
    sys.setswitchinterval(interval)


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def shifted_pair(x: np.ndarray):
    """Two device views of one buffer: ``x``'s values in ``buf[:-1]`` and ``buf[1:]``, both of ``x``'s shape.

    Built from a 2-D buffer whose rows are ``x`` flattened plus one element, so that both views are
    C-contiguous: ``out`` starts one element after the input, like ``buf[1:]`` for ``buf[:-1]``."""
    n = x.size
    buf = cuda.to_device(np.concatenate([x.reshape(-1), [0.0]]).astype(x.dtype))
    a = arrays.reshaped(buf[:n], x.shape)
    b = arrays.reshaped(buf[1:], x.shape)
    return a, b


def rng_inputs(name: str, rng):
    """Valid float64 inputs of a representative loss of each kind."""
    if name == "mse":
        return [rng.normal(size=(6, 7)), rng.normal(size=(6, 7))]
    if name == "binary_cross_entropy":
        return [rng.uniform(0.05, 0.95, size=(5, 6)), rng.uniform(0, 1, size=(5, 6))]
    if name == "dice":
        return [rng.normal(size=(4, 9)), rng.uniform(0, 1, size=(4, 9))]
    if name == "cross_entropy":
        return [rng.normal(size=(6, 5)), rng.integers(0, 5, size=6)]
    if name == "info_nce":
        return [rng.normal(size=(5, 4)), rng.normal(size=(5, 4))]
    raise KeyError(name)


KINDS = ["mse", "binary_cross_entropy", "dice", "cross_entropy", "info_nce"]


@pytest.mark.parametrize("name", KINDS)
def test_out_partly_overlapping_its_own_input_gives_the_right_answer(name):
    loss = fl.get(name)
    xs = rng_inputs(name, np.random.default_rng(1))
    want_v, want_g = loss.value_and_grad(*xs)
    want_g = want_g if isinstance(want_g, tuple) else (want_g,)
    shifted, out = shifted_pair(xs[0])
    args = [shifted, *[dev(x) for x in xs[1:]]]
    outs = (out, None) if name == "info_nce" else out
    value, grads = loss.value_and_grad(*args, out=outs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert grads[0] is out
    np.testing.assert_allclose(float(value), want_v, rtol=1e-11)
    np.testing.assert_allclose(host(out), want_g[0], rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("name", KINDS)
def test_out_over_another_input_or_the_weight_is_an_error(name):
    loss = fl.get(name)
    rng = np.random.default_rng(2)
    xs = rng_inputs(name, rng)
    ds = [dev(x) for x in xs]
    if xs[1].shape == xs[0].shape and xs[1].dtype.kind == "f":
        outs = (ds[1], None) if name == "info_nce" else ds[1]
        with pytest.raises(ValueError, match=f"shares memory with {loss.spec.inputs[1].name}"):
            loss.grad(*ds, out=outs)
    if name in ("mse", "binary_cross_entropy"):
        w = dev(rng.uniform(size=xs[0].shape))
        with pytest.raises(ValueError, match="shares memory with weight"):
            loss.grad(*ds, weight=w, out=w)


WEIGHTS = {"mse": (6, 7), "binary_cross_entropy": (5, 6), "dice": (4,), "cross_entropy": (5,), "info_nce": (5,)}


@pytest.mark.parametrize("name", KINDS)
def test_negative_weights_are_an_error_with_the_hosts_message(name):
    loss = fl.get(name)
    rng = np.random.default_rng(4)
    xs = rng_inputs(name, rng)
    w = rng.uniform(size=WEIGHTS[name])
    w.reshape(-1)[-1] = -0.5
    with pytest.raises(ValueError) as on_host:
        loss(*xs, weight=w)
    for call in (loss, loss.grad):
        with pytest.raises(ValueError, match="weight must be non-negative") as on_device:
            call(*[dev(x) for x in xs], weight=dev(w))
        assert str(on_device.value) == str(on_host.value)
    # NaN passes, as on the host; negative weights pass where the adapters need them
    w.reshape(-1)[-1] = np.nan
    assert np.isnan(float(loss(*[dev(x) for x in xs], weight=dev(w))))
    w.reshape(-1)[-1] = -0.5
    with signed_weights():
        want = loss(*xs, weight=w)
        np.testing.assert_allclose(float(loss(*[dev(x) for x in xs], weight=dev(w))), want, rtol=1e-11)


DOMAINS = [("binary_cross_entropy", 1, (4, 5), 2.0), ("dice", 1, (3, 8), -0.25), ("poisson_nll", 1, (0, 3), -1.0)]


@pytest.mark.parametrize(("name", "k", "where", "bad"), DOMAINS, ids=[d[0] for d in DOMAINS])
def test_declared_domains_are_checked_on_the_device_with_the_hosts_message(name, k, where, bad):
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    if name == "poisson_nll":
        xs = [rng.normal(size=(2, 5)), rng.poisson(2.0, size=(2, 5)).astype(np.float64)]
    else:
        xs = rng_inputs(name, rng)
    xs[k][where] = bad
    with pytest.raises(ValueError) as on_host:
        loss(*xs)
    for call in (loss, loss.grad, loss.value_and_grad):
        with pytest.raises(ValueError, match="must be in") as on_device:
            call(*[dev(x) for x in xs])
        assert str(on_device.value) == str(on_host.value)
    xs[k][where] = np.nan  # NaN propagates, as on the host
    assert np.isnan(float(loss(*[dev(x) for x in xs])))


def test_probability_targets_of_cross_entropy_are_checked():
    rng = np.random.default_rng(5)
    x, t = rng.normal(size=(4, 3)), rng.uniform(size=(4, 3))
    t[2, 1] = -0.5
    with pytest.raises(ValueError) as on_host:
        fl.cross_entropy(x, t)
    with pytest.raises(ValueError, match=r"target\[2, 1\]") as on_device:
        fl.cross_entropy(dev(x), dev(t))
    assert str(on_device.value) == str(on_host.value)


def test_a_column_against_a_flat_target_warns():
    p = np.linspace(-1, 1, 5)
    with pytest.warns(UserWarning, match=r"\(5, 1\) and .* of shape \(5,\) broadcast to \(5, 5\)"):
        fl.mse(dev(p.reshape(5, 1)), dev(p))


def test_calls_with_nothing_to_check_never_wait(monkeypatch):
    """Only value checks read back from the device: calls without any never do."""
    waits = []
    original = arrays.Placement.to_host

    def counting(self, view):
        waits.append(view.size)
        return original(self, view)

    monkeypatch.setattr(arrays.Placement, "to_host", counting)
    rng = np.random.default_rng(6)
    p, t = dev(rng.normal(size=20)), dev(rng.normal(size=20))
    fl.mse.value_and_grad(p, t)
    z1, z2 = dev(rng.normal(size=(5, 4))), dev(rng.normal(size=(5, 4)))
    fl.info_nce.value_and_grad(z1, z2)  # its own labels 0 .. N-1 are trusted
    with signed_weights():
        fl.mse.grad(p, t, weight=dev(-np.ones(20)), reduction="none")
    assert waits == []
    fl.mse(p, t, weight=dev(np.ones(20)))  # a weight to check: one wait
    assert len(waits) == 1
    y = dev(rng.uniform(0, 1, size=20))
    fl.binary_cross_entropy(dev(rng.uniform(0.1, 0.9, size=20)), y, weight=dev(np.ones(20)))
    assert len(waits) == 2  # the target's domain and the weights: still one wait
