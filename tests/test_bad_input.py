"""Bad input gets a clear error or the right answer, for every registered loss (issue: no silent wrong answers).

Registry-wide: a loss is covered by being declared. ``out=`` overlapping an input (at sizes below
and above a kernel block, and over several rows), every declared domain of a target, negative
weights, masked arrays; and for the pointwise kind the ``(N, 1)`` against ``(N,)`` warning and
sizes that cannot be allocated.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from adaptercases import differentiable, inputs, weight

import fastloss as fl
from fastloss._call import checked_domains

NAMES = fl.names()
#: sizes (samples) below one pointwise block of 512 elements, and spanning many blocks and rows
SCALES = [1, 40]


def scaled_inputs(name: str, scale: int, rng) -> list[np.ndarray]:
    """Valid float64 inputs with ``scale`` times as many samples as the adapter tests' small ones."""
    xs = inputs(name, rng)
    if scale == 1:
        return xs
    reps = []
    for x in xs:
        if x.ndim == 0:
            reps.append(x)
            continue
        reps.append(np.concatenate([x] * scale, axis=0))
    return reps


def _value_and_grads(loss, xs, **kw):
    value, grads = loss.value_and_grad(*xs, **kw)
    return value, grads if isinstance(grads, tuple) else (grads,)


def _shifted_pair(x: np.ndarray):
    """Two views of one buffer: ``x``'s values in ``buf[:-1]`` and a writable ``buf[1:]`` of the same shape."""
    buf = np.empty(x.size + 1, dtype=x.dtype)
    a, b = buf[:-1].reshape(x.shape), buf[1:].reshape(x.shape)
    a[...] = x
    return a, b


def _outs(loss, xs, k, o):
    """``out=`` for the call: ``o`` for input ``k``, None for the other differentiable inputs."""
    diff = differentiable(loss.__name__)
    if len(diff) == 1:
        return o
    return tuple(o if j == k else None for j in diff)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", NAMES)
def test_out_partly_overlapping_its_own_input_gives_the_right_answer(name, scale):
    loss = fl.get(name)
    rng = np.random.default_rng(1)
    xs = scaled_inputs(name, scale, rng)
    want_v, want_g = _value_and_grads(loss, [x.copy() for x in xs])
    for j, k in enumerate(differentiable(name)):
        shifted, out = _shifted_pair(xs[k])
        args = list(xs)
        args[k] = shifted
        value, grads = _value_and_grads(loss, args, out=_outs(loss, xs, k, out))
        np.testing.assert_allclose(value, want_v, rtol=1e-12, err_msg=f"{name}: value, out over input {k}")
        np.testing.assert_allclose(grads[j], want_g[j], rtol=1e-12, atol=1e-300, err_msg=f"{name}: gradient {k}")
        assert grads[j] is out


@pytest.mark.parametrize("name", NAMES)
def test_out_overlapping_another_input_or_the_weight_is_an_error(name):
    loss = fl.get(name)
    rng = np.random.default_rng(2)
    xs = inputs(name, rng)
    diff = differentiable(name)
    k = diff[0]
    for i, x in enumerate(xs):
        if i == k or x.dtype.kind != "f" or x.shape != xs[k].shape:
            continue
        args = list(xs)
        out = args[i]  # the gradient of input k written over input i
        with pytest.raises(ValueError, match="shares memory"):
            loss.grad(*args, out=_outs(loss, xs, k, out))
    w = weight(name, xs, rng)
    if w is not None and w.shape == xs[k].shape:
        with pytest.raises(ValueError, match="shares memory with weight"):
            loss.grad(*xs, weight=w, out=_outs(loss, xs, k, w))


DOMAIN_CASES = [
    (name, k, dom)
    for name in NAMES
    for k, dom in checked_domains(fl.get(name).spec, {p.name: p.default for p in fl.get(name)._params})
]


def test_the_declared_target_domains_are_found():
    found = {(name, fl.get(name).spec.inputs[k].name) for name, k, _ in DOMAIN_CASES}
    assert {("binary_cross_entropy", "target"), ("poisson_nll", "target"), ("dice", "target")} <= found


@pytest.mark.parametrize(("name", "k", "dom"), DOMAIN_CASES, ids=[f"{n}-{k}" for n, k, _ in DOMAIN_CASES])
def test_every_declared_domain_is_checked(name, k, dom):
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    xs = inputs(name, rng)
    if xs[k].dtype.kind != "f":
        pytest.skip("integer labels are checked as class indices")
    bad = dom.high + 1.0 if math.isfinite(dom.high) else dom.low - 1.0
    where = tuple(s - 1 for s in xs[k].shape)
    args = [x.copy() for x in xs]
    args[k][where] = bad
    iname = loss.spec.inputs[k].name
    for call in (loss, loss.grad, loss.value_and_grad):
        with pytest.raises(ValueError, match=rf"{iname} must be in .*{iname}\[{', '.join(map(str, where))}\]"):
            call(*args)
    args[k][where] = np.nan  # NaN propagates, as in NumPy
    assert np.isnan(loss(*args))


@pytest.mark.parametrize("name", NAMES)
def test_negative_weights_are_an_error(name):
    loss = fl.get(name)
    rng = np.random.default_rng(4)
    xs = inputs(name, rng)
    w = weight(name, xs, rng)
    if w is None:
        pytest.skip("takes no weight")
    w = w.copy()
    w.reshape(-1)[-1] = -0.5
    for call in (loss, loss.grad):
        with pytest.raises(ValueError, match="weight must be non-negative"):
            call(*xs, weight=w)


@pytest.mark.parametrize("name", NAMES)
def test_masked_arrays_are_refused(name):
    loss = fl.get(name)
    xs = inputs(name, np.random.default_rng(5))
    masked = np.ma.array(xs[0], mask=np.zeros(xs[0].shape, bool))
    with pytest.raises(TypeError, match="masked array"):
        loss(masked, *xs[1:])


@pytest.mark.parametrize("name", fl.names("pointwise"))
def test_a_column_against_a_flat_target_warns(name):
    loss = fl.get(name)
    spec = loss.spec
    if len(spec.inputs) < 2 or spec.options.get("adapt_inputs") is not None:
        pytest.skip("needs two inputs that broadcast freely")
    xs = inputs(name, np.random.default_rng(6))
    flat = [x.reshape(-1)[:5].copy() for x in xs]
    column = [flat[0].reshape(5, 1), *flat[1:]]
    with pytest.warns(UserWarning, match=r"\(5, 1\) and .* of shape \(5,\) broadcast to \(5, 5\)"):
        loss(*column)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(*flat)  # same shapes: no warning
        loss(flat[0].reshape(5, 1), *[np.broadcast_to(x.reshape(5, 1), (5, 3)) for x in flat[1:]])


def test_a_broadcast_view_too_large_for_memory_fails_at_once():
    x = np.broadcast_to(1.0, (10**12,))
    start = time.perf_counter()
    with pytest.raises(MemoryError, match="GiB"):
        fl.gaussian_nll(x, x, x)
    with pytest.raises(MemoryError):
        fl.mse(x, 0.0)
    assert time.perf_counter() - start < 5.0


def test_negative_upstream_gradients_reach_the_kernel_through_the_adapters():
    torch = pytest.importorskip("torch")
    import fastloss.torch as flt

    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.zeros(3, dtype=torch.float64)
    per = flt.mse(x, t, reduction="none")
    per.backward(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy() * np.array([1.0, -2.0, 0.5]))
