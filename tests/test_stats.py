"""``stats=True``: gradient L2 norm, max |g| and non-finite count from the same pass as the gradient."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from cases import POINTWISE, pointwise_inputs

import fastloss as fl


def numpy_stats(*grads):
    """float64 NumPy reference: statistics over the finite entries, non-finite ones counted."""
    flat = np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])
    finite = flat[np.isfinite(flat)]
    return np.sqrt(np.sum(finite**2)), (np.max(np.abs(finite)) if finite.size else 0.0), flat.size - finite.size


def assert_stats(stats, *grads):
    norm, max_abs, nonfinite = numpy_stats(*grads)
    assert isinstance(stats, fl.GradStats)
    np.testing.assert_allclose(stats.norm, norm, rtol=1e-12)
    assert stats.max_abs == max_abs  # the maximum is exact
    assert stats.nonfinite == nonfinite


def as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_stats_match_numpy_and_leave_the_gradient_unchanged(name):
    loss = fl.get(name)
    inputs = pointwise_inputs(loss.spec, (70, 9), np.random.default_rng(0))
    for reduction in ("mean", "sum", "none"):
        v, g, s = loss.value_and_grad(*inputs, reduction=reduction, stats=True)
        v0, g0 = loss.value_and_grad(*inputs, reduction=reduction)
        np.testing.assert_array_equal(v, v0)
        for a, b in zip(as_tuple(g), as_tuple(g0)):
            np.testing.assert_array_equal(a, b)
        assert_stats(s, *as_tuple(g))  # several gradients: global statistics over all of them
    g, s = loss.grad(*inputs, stats=True)
    assert_stats(s, *as_tuple(g))


def test_weights_and_float32():
    rng = np.random.default_rng(1)
    p, t = rng.normal(size=(300, 7)).astype(np.float32), rng.normal(size=(300, 7)).astype(np.float32)
    w = rng.uniform(0, 3, size=(300, 1)).astype(np.float32)
    _, g, s = fl.huber.value_and_grad(p, t, weight=w, delta=0.5, stats=True)
    assert g.dtype == np.float32
    assert_stats(s, g)  # of the weighted, mean-scaled gradient that was returned


def test_nonfinite_entries_are_counted_and_left_out():
    p = np.array([1.0, np.nan, -3.0, np.inf, 0.5, 2.0])
    _, g, s = fl.mse.value_and_grad(p, np.zeros(6), reduction="sum", stats=True)
    assert s.nonfinite == 2
    assert s.max_abs == 6.0
    np.testing.assert_allclose(s.norm, np.sqrt(2.0**2 + 6.0**2 + 1.0**2 + 4.0**2))
    assert_stats(s, g)


def test_empty_gradient():
    _, _, s = fl.mse.value_and_grad(np.zeros(0), np.zeros(0), stats=True)
    assert s == fl.GradStats(0.0, 0.0, 0)


def test_stats_across_chunks_and_threads_are_bit_identical(pointwise_path):
    pointwise_path("parallel")
    rng = np.random.default_rng(2)
    n = 3 * 65536 + 17  # many chunks, a ragged last one
    m, y, var = rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2.0, size=n)
    m[::1001] = np.nan
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            runs.append(fl.gaussian_nll.value_and_grad(m, y, var, stats=True))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (v1, g1, s1), (v2, g2, s2) = runs
    assert s1 == s2  # exactly, float for float
    np.testing.assert_array_equal(v1, v2)  # NaN (the NaN means) compares equal here
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    assert s1.nonfinite == 2 * len(range(0, n, 1001))  # NaN mean: NaN in both gradients
    assert_stats(s1, *g1)


def test_rowwise_stats():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(64, 10)), rng.integers(0, 10, size=64)
    labels[3] = -100  # ignored row: zero gradient
    _, g, s = fl.cross_entropy.value_and_grad(logits, labels, stats=True)
    assert_stats(s, g)


def test_combined_stats_aggregate_over_the_total_gradient():
    rng = np.random.default_rng(4)
    p, t = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    logits, labels = rng.normal(size=(50, 6)), rng.integers(0, 6, size=50)
    m, y, var = rng.normal(size=30), rng.normal(size=30), rng.uniform(0.5, 2.0, size=30)
    p[0, 0] = np.inf
    objective = fl.combine({
        "ce": (fl.cross_entropy, 1.0),      # alone on its input: kernel statistics, scaled
        "fit": (fl.mse, 0.3),               # shares p with reg: measured on the sum
        "reg": (fl.l2, -2.0),
        "nll": (fl.gaussian_nll, 0.7),      # two gradients from one term
    })
    *_, grads, stats = objective.value_and_grad(
        ce=(logits, labels), fit=(p, t), reg=p, nll=(m, y, var), stats=True
    )
    distinct = [grads["ce"], grads["fit"], *grads["nll"]]
    norm, max_abs, nonfinite = numpy_stats(*distinct)
    np.testing.assert_allclose(stats.norm, norm, rtol=1e-12)
    np.testing.assert_allclose(stats.max_abs, max_abs, rtol=1e-15)
    assert stats.nonfinite == nonfinite == 1
    assert objective.value_and_grad(ce=(logits, labels), fit=(p, t), reg=p, nll=(m, y, var)).stats is None
