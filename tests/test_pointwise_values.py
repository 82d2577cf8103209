"""Every pointwise loss agrees with its plain float64 NumPy reference, for every reduction and option."""

from __future__ import annotations

import numpy as np
import pytest
from cases import POINTWISE, defaults, param_variants, pointwise_inputs

import fastloss as fl
from fastloss.reference import value_and_grad


def reduced_reference(name, inputs, params, reduction, weight=None):
    """Reference value and gradients of the reduced loss (gradients shaped like the broadcast)."""
    shape = np.broadcast_shapes(*(np.shape(x) for x in inputs))
    full = [np.broadcast_to(np.asarray(x, dtype=np.float64), shape) for x in inputs]
    return value_and_grad(name, *full, reduction=reduction, sample_weight=weight, **params)


def as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", POINTWISE)
def test_value_grad_and_fused_match_reference(name, reduction):
    loss = fl.get(name)
    rng = np.random.default_rng(0)
    for params in param_variants(loss.spec):
        inputs = pointwise_inputs(loss.spec, (23, 7), rng, params)
        want_v, want_g = reduced_reference(name, inputs, params, reduction)
        v = loss(*inputs, reduction=reduction, **params)
        g = as_tuple(loss.grad(*inputs, reduction=reduction, **params))
        fv, fg = loss.value_and_grad(*inputs, reduction=reduction, **params)
        fg = as_tuple(fg)
        assert len(g) == len(loss.spec.differentiable) == len(want_g)
        np.testing.assert_allclose(v, want_v, rtol=1e-12, atol=1e-14, err_msg=f"{name} {params}")
        np.testing.assert_allclose(fv, want_v, rtol=1e-12, atol=1e-14)
        for got, gf, want in zip(g, fg, want_g):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14, err_msg=f"{name} grad {params}")
            np.testing.assert_array_equal(got, gf)  # grad and value_and_grad run the same pass


@pytest.mark.parametrize("name", POINTWISE)
def test_weighted_reductions(name):
    loss = fl.get(name)
    rng = np.random.default_rng(1)
    params = defaults(loss.spec)
    inputs = pointwise_inputs(loss.spec, (40, 3), rng)
    for weight in (rng.uniform(0.1, 2.0, size=(40, 3)), rng.uniform(0.1, 2.0, size=(40, 1)), np.float64(3.0)):
        for reduction in ("mean", "sum", "none"):
            want_v, want_g = reduced_reference(name, inputs, params, reduction, weight)
            v, g = loss.value_and_grad(*inputs, weight=weight, reduction=reduction)
            np.testing.assert_allclose(v, want_v, rtol=1e-12, atol=1e-14)
            for got, want in zip(as_tuple(g), want_g):
                np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("name", POINTWISE)
def test_float32_close_to_float64_reference(name):
    loss = fl.get(name)
    rng = np.random.default_rng(2)
    inputs = pointwise_inputs(loss.spec, (1000,), rng)
    inputs32 = [x.astype(np.float32) for x in inputs]
    want_v, want_g = reduced_reference(name, [x.astype(np.float64) for x in inputs32], defaults(loss.spec), "sum")
    v, g = loss.value_and_grad(*inputs32, reduction="sum")
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, want_v, rtol=2e-6)
    for got, want in zip(as_tuple(g), want_g):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", POINTWISE)
def test_parallel_path_matches_the_reference(name, pointwise_path):
    """Calls on the parallel path (pieces of the chunk range on several threads): same answers."""
    pointwise_path("parallel")
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    n = 2 * 65536 + 123
    inputs = pointwise_inputs(loss.spec, (n,), rng)
    v, g = loss.value_and_grad(*inputs)
    want_v, want_g = reduced_reference(name, inputs, defaults(loss.spec), "mean")
    np.testing.assert_allclose(v, want_v, rtol=1e-12)
    for got, want in zip(as_tuple(g), want_g):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-16)


def test_mean_of_5e7_float32_values_is_accurate():
    rng = np.random.default_rng(4)
    pred = rng.standard_normal(50_000_000, dtype=np.float32)
    target = np.float32(0.25)
    exact = np.mean((pred.astype(np.float64) - 0.25) ** 2)
    got = fl.mse(pred, target)
    assert abs(float(got) - exact) / exact < 1e-6


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_paths_give_the_same_bits(name, dtype, pointwise_path):
    """The kind picks a path by size and measured speed, so both must return exactly the same results."""
    loss = fl.get(name)
    rng = np.random.default_rng(11)
    n = 37 * 4096 + 1001  # many chunks, a ragged last one
    inputs = pointwise_inputs(loss.spec, (n,), rng)
    # chunk sums of very different sizes: the order in which they are added shows in the last bits
    inputs[0] = inputs[0] * np.repeat(10.0 ** rng.integers(-3, 1, n // 4096 + 1), 4096)[:n]
    inputs = [x.astype(dtype) for x in inputs]
    weight = rng.uniform(0.0, 2.0, n).astype(dtype)
    with_nan = [x.copy() for x in inputs]
    with_nan[0][::977] = np.nan  # a non-finite gradient here and there, for the statistics
    results = {}
    for path in ("serial", "parallel"):
        pointwise_path(path)
        results[path] = [loss.value_and_grad(*inputs, reduction=r, weight=w, stats=True)
                         for r in ("mean", "sum", "none") for w in (None, weight)]
        results[path].append(loss.value_and_grad(*with_nan, reduction="sum", stats=True))
    assert np.isfinite(results["serial"][0][0])  # (a NaN value would hide any difference)
    for (v1, g1, s1), (v2, g2, s2) in zip(results["serial"], results["parallel"]):
        assert np.asarray(v1).tobytes() == np.asarray(v2).tobytes()
        for a, b in zip(as_tuple(g1), as_tuple(g2)):
            assert a.tobytes() == b.tobytes()
        assert s1.nonfinite == s2.nonfinite and np.array([s1.norm, s1.max_abs]).tobytes() == np.array(
            [s2.norm, s2.max_abs]).tobytes()
