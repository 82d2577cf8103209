"""Valid data in unusual storage gives the same result as native arrays, for every loss (issue #20).

Labels and targets often come from files: big-endian (``'>i8'``, ``'>f8'``: FITS, HDF5, network
formats) or float16. Every non-differentiable input of every loss (discrete labels, class indices,
targets), and the weights, are given in those dtypes holding the same values as a native array;
values and gradients must be the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import pointwise_inputs
from rowcases import default_shape, row_inputs

import fastloss as fl
from fastloss._spec import Discrete

STORAGE = ("float16", ">f8", ">i8", ">f4", ">i4", "<f2", ">f2")


def valid_inputs(name: str, rng) -> list[np.ndarray]:
    spec = fl.get(name).spec
    if spec.kind == "pointwise":
        return pointwise_inputs(spec, (3, 5), rng)
    if spec.kind == "rowwise":
        x = rng.normal(0.0, 2.0, (6, 5))
        forms = spec.options["targets"]
        t = rng.integers(0, 5, 6) if "index" in forms else rng.dirichlet(np.ones(5), 6)
        return [x, t]
    lead, row = default_shape(spec)
    return row_inputs(spec, lead, row, rng)


def _as(x: np.ndarray, dtype: str) -> np.ndarray | None:
    """``x`` stored as ``dtype``, or None where ``dtype`` cannot hold its values exactly."""
    y = x.astype(dtype)
    return y if np.array_equal(y.astype(x.dtype), x) else None


def _both(loss, inputs, **kw):
    v, g = loss.value_and_grad(*inputs, reduction="none", **kw)
    return v, (g if isinstance(g, tuple) else (g,))


@pytest.mark.parametrize("name", fl.names())
def test_labels_and_targets_in_any_storage_give_the_same_result(name):
    loss = fl.get(name)
    spec = loss.spec
    rng = np.random.default_rng(3)
    inputs = valid_inputs(name, rng)
    labels = [k for k, i in enumerate(spec.inputs) if not i.differentiable and inputs[k] is not None]
    assert labels or name in ("mse", "l2") or spec.kind in ("similarity",) or all(
        i.differentiable for i in spec.inputs)
    tried = 0
    for k in labels:
        base = inputs[k]
        if base.dtype.kind == "f" and not isinstance(spec.inputs[k].domain, Discrete):
            base = base.astype(np.float16).astype(base.dtype)  # values that every storage holds
        native = list(inputs)
        native[k] = base
        want_v, want_g = _both(loss, native)
        for dtype in STORAGE:
            y = _as(base, dtype)
            if y is None:
                continue
            given = list(inputs)
            given[k] = y
            if base.dtype.kind in "iu" and y.dtype.kind == "f":
                # float class indices are refused whatever the float dtype: the same as float64
                with pytest.raises((TypeError, ValueError)) as f64:
                    loss(*[*inputs[:k], y.astype(np.float64), *inputs[k + 1:]])
                with pytest.raises(type(f64.value)):
                    loss(*given)
                continue
            v, g = _both(loss, given)
            np.testing.assert_array_equal(v, want_v, err_msg=f"{name} {spec.inputs[k].name} as {dtype}")
            for a, b in zip(g, want_g):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {spec.inputs[k].name} as {dtype}")
            tried += 1
    if labels:
        assert tried


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "contrastive", "cosine_embedding", "margin_ranking"])
def test_float16_discrete_targets_are_checked(name):
    loss = fl.get(name)
    rng = np.random.default_rng(0)
    inputs = valid_inputs(name, rng)
    k = next(k for k, i in enumerate(loss.spec.inputs) if isinstance(i.domain, Discrete))
    bad = inputs[k].astype(np.float16)
    bad.reshape(-1)[1] = 0.5
    for dtype in (np.float16, ">f2", ">f8"):
        with pytest.raises(ValueError, match=r"must take values in .*= 0\.5"):
            loss(*[*inputs[:k], bad.astype(dtype), *inputs[k + 1:]])


def test_big_endian_predictions_and_weights():
    rng = np.random.default_rng(1)
    p, t, w = rng.normal(size=50), rng.normal(size=50), rng.uniform(size=50)
    want = fl.huber.value_and_grad(p, t, weight=w)
    got = fl.huber.value_and_grad(p.astype(">f8"), t.astype(">f8"), weight=w.astype(">f8"))
    assert got[0] == want[0] and np.array_equal(got[1], want[1]) and got[1].dtype.isnative
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    want = fl.cross_entropy.value_and_grad(x, y, weight=np.arange(1.0, 5.0))
    got = fl.cross_entropy.value_and_grad(x.astype(">f8"), y.astype(">i8"), weight=np.arange(1.0, 5.0).astype(">f8"))
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    h, W = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    want = fl.linear_cross_entropy(h, W, y)
    assert fl.linear_cross_entropy(h.astype(">f8"), W.astype(">f8"), y.astype(">i4")) == want
