"""Gradients agree with a 4th-order central finite difference of the loss itself (not of the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from cases import POINTWISE, fd_gradient, param_variants, pointwise_inputs
from hypothesis import given
from hypothesis import strategies as st

import fastloss as fl

H = 1e-4


@pytest.mark.parametrize("name", POINTWISE)
def test_gradient_matches_finite_differences(name):
    loss = fl.get(name)
    rng = np.random.default_rng(10)
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    for params in param_variants(loss.spec):
        inputs = pointwise_inputs(loss.spec, (12,), rng, params)
        grads = loss.grad(*inputs, reduction="sum", **params)
        grads = grads if isinstance(grads, tuple) else (grads,)
        safe = np.ones(12, bool) if loss.spec.fd_safe is None else loss.spec.fd_safe(inputs, params, 2 * H)
        for k, g in zip(diff, grads):
            want = fd_gradient(loss, inputs, k, params, H)
            np.testing.assert_allclose(g[safe], want[safe], rtol=1e-6, atol=1e-7, err_msg=f"{name} {params} input {k}")


@given(
    st.sampled_from(POINTWISE),
    st.lists(st.integers(1, 4), min_size=0, max_size=3),
    st.integers(0, 2**32 - 1),
)
def test_gradient_shape_follows_each_input_under_broadcasting(name, shape, seed):
    """Inputs of different (broadcastable) shapes: each gradient is the broadcast gradient summed back."""
    loss = fl.get(name)
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    full = pointwise_inputs(loss.spec, shape, rng)
    # shrink some axes of some inputs to 1 so that they broadcast
    small = []
    for x in full:
        keep = tuple(slice(None) if rng.random() < 0.5 else slice(0, 1) for _ in shape)
        small.append(np.ascontiguousarray(x[keep]) if shape else x)
    shape = np.broadcast_shapes(*(x.shape for x in small))
    v, g = loss.value_and_grad(*small, reduction="sum")
    grads = g if isinstance(g, tuple) else (g,)
    ref_v, ref_g = loss.value_and_grad(*[np.broadcast_to(x, shape).copy() for x in small], reduction="sum")
    ref_g = ref_g if isinstance(ref_g, tuple) else (ref_g,)
    np.testing.assert_allclose(v, ref_v, rtol=1e-12)
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    for k, got, full_g in zip(diff, grads, ref_g):
        assert got.shape == small[k].shape
        axes = tuple(i for i, s in enumerate(small[k].shape) if s == 1 and shape[i] != 1)
        np.testing.assert_allclose(got, full_g.sum(axis=axes, keepdims=True), rtol=1e-10, atol=1e-12)
