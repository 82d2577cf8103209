"""``fastloss.jax``: ``jax.custom_vjp`` wrappers on CPU (grad, jit, vmap) that keep the fused kernel."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import adaptercases as ac  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import fastloss as fl  # noqa: E402
import fastloss.jax as flj  # noqa: E402
from fastloss import _adapters as fastloss_adapters  # noqa: E402
from fastloss._call import signed_weights  # noqa: E402


@pytest.fixture(autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def closed_over(name, xs, w, reduction):
    """The loss as a function of its differentiable inputs only (targets and weight fixed)."""
    f = getattr(flj, name)
    diff = ac.differentiable(name)
    fixed = [jnp.asarray(x) for x in xs]
    wj = None if w is None else jnp.asarray(w)

    def fn(*d):
        args = list(fixed)
        for k, t in zip(diff, d):
            args[k] = t
        return f(*args, weight=wj, reduction=reduction)

    return fn, tuple(jnp.asarray(xs[k]) for k in diff)


def test_every_registered_loss_has_a_wrapper():
    assert set(ac.NAMES) <= set(fl.names()) and len(ac.NAMES) > 20
    for name in fl.names():  # custom losses registered by earlier tests too
        f = getattr(flj, name)
        assert f.__wrapped__ is fl.get(name) and f.__name__ == name


@pytest.mark.parametrize("name", ac.NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_of_every_registered_loss_is_the_fused_gradient(name, reduction):
    loss = fl.get(name)
    rng = np.random.default_rng(0)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    fn, args = closed_over(name, xs, w, reduction)
    value, grads = jax.value_and_grad(lambda *a: 1.5 * fn(*a), argnums=tuple(range(len(args))))(*args)
    want_v, want_g = loss.value_and_grad(*xs, weight=w, reduction=reduction)
    np.testing.assert_allclose(value, 1.5 * want_v, rtol=1e-15)
    for got, want in zip(grads, ac.as_tuple(want_g)):
        np.testing.assert_allclose(got, 1.5 * want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ac.NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_check_grads_every_registered_loss(name, reduction):
    """jax.test_util.check_grads in reverse mode (float64): the VJP against finite differences along a
    random direction with a random cotangent, so under "none" cross-sample terms count too. Weighted
    with the loss's own weight semantics."""
    rng = np.random.default_rng(1)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    fn, args = closed_over(name, xs, w, reduction)
    check_grads(fn, args, order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ac.NAMES)
def test_reduction_none_vjp_matches_the_torch_free_reference(name):
    """The VJP of the per-sample losses against fastloss's gradient of sum_i c_i w_i l_i (per-sample
    weights), or, for rowwise losses (per-class weights), each row's gradient times its cotangent;
    under jit as well."""
    loss = fl.get(name)
    rng = np.random.default_rng(2)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    fn, args = closed_over(name, xs, w, "none")
    values, vjp = jax.vjp(jax.jit(fn), *args)
    np.testing.assert_array_equal(values, loss(*xs, weight=w, reduction="none"))
    c = rng.normal(size=values.shape)
    got = vjp(jnp.asarray(c))
    if loss.spec.kind == "rowwise":
        want = [g * c[..., None] for g in ac.as_tuple(loss.grad(*xs, weight=w, reduction="sum"))]
    else:
        cw = c if w is None else c * np.broadcast_to(w, c.shape)
        with signed_weights():  # the cotangents are signed, as the adapter's own rerun
            want = ac.as_tuple(loss.grad(*xs, weight=cw, reduction="sum"))
    for g, want_g in zip(got, want):
        np.testing.assert_allclose(g, want_g, rtol=1e-13, atol=1e-15)


def test_gaussian_nll_per_sample_variance_under_none():
    rng = np.random.default_rng(8)
    m, y, var = rng.normal(size=(3, 4)), jnp.asarray(rng.normal(size=(3, 4))), rng.uniform(0.5, 2, size=3)
    f = lambda a, b: flj.gaussian_nll(a, y, b, reduction="none")
    assert f(jnp.asarray(m), jnp.asarray(var)).shape == (3, 4)
    check_grads(f, (jnp.asarray(m), jnp.asarray(var)), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_z_loss_and_softcap(reduction):
    rng = np.random.default_rng(9)
    y = jnp.asarray(rng.integers(0, 5, size=4))
    w = jnp.asarray(rng.uniform(0.5, 2, size=5))

    def f(x):
        return flj.cross_entropy(x, y, weight=w, z_loss=0.05, softcap=3.0, reduction=reduction)

    check_grads(f, (jnp.asarray(3 * rng.normal(size=(4, 5))),), order=1, modes=("rev",), eps=1e-6, atol=1e-6,
                rtol=1e-6)


def test_against_a_plain_jax_loss_under_jit():
    rng = np.random.default_rng(1)
    p, t = jnp.asarray(rng.normal(size=(16, 4))), jnp.asarray(rng.normal(size=(16, 4)))

    def ref(p):
        d = p - t
        return jnp.mean(jnp.where(jnp.abs(d) < 0.5, 0.5 * d**2, 0.5 * (jnp.abs(d) - 0.25)))

    ours = jax.jit(jax.value_and_grad(lambda p: flj.huber(p, t, delta=0.5)))(p)
    theirs = jax.value_and_grad(ref)(p)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-13)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-13, atol=1e-16)


def test_reduction_none_with_cotangent_broadcasting_and_weights():
    rng = np.random.default_rng(2)
    p, t = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(3,)))
    w = jnp.asarray(rng.uniform(size=(5, 1)))
    c = jnp.asarray(rng.normal(size=(5, 3)))
    g = jax.grad(lambda p: jnp.sum(c * flj.log_cosh(p, t, weight=w, reduction="none")))(p)
    np.testing.assert_allclose(g, c * w * np.tanh(np.asarray(p - t)), rtol=1e-13)
    # the gradient of a target that broadcast is not asked for; a weighted mean is
    g = jax.grad(lambda p: flj.mse(p, t, weight=w))(p)
    np.testing.assert_allclose(g, fl.mse.grad(np.asarray(p), np.asarray(t), weight=np.asarray(w)), rtol=1e-15)


def test_rowwise_reduction_none_scales_each_row():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 6, 5)))  # classes on axis 1
    y = jnp.asarray(rng.integers(0, 6, size=(3, 5)))
    c = jnp.asarray(rng.normal(size=(3, 5)))
    values = flj.cross_entropy(x, y, axis=1, reduction="none")
    g = jax.grad(lambda x: jnp.sum(c * flj.cross_entropy(x, y, axis=1, reduction="none")))(x)

    def ref(x):
        logp = jax.nn.log_softmax(x, axis=1)
        return -jnp.take_along_axis(logp, y[:, None, :], axis=1)[:, 0, :]

    np.testing.assert_allclose(values, ref(x), rtol=1e-12)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(c * ref(x)))(x), rtol=1e-10, atol=1e-15)


def test_float32_default_and_integer_labels():
    jax.config.update("jax_enable_x64", False)
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(6, 5)), dtype=jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, size=6), dtype=jnp.int32)
    v, g = jax.value_and_grad(lambda x: flj.cross_entropy(x, labels))(logits)
    want_v, want_g = fl.cross_entropy.value_and_grad(np.asarray(logits), np.asarray(labels))
    assert v.dtype == jnp.float32 and g.dtype == jnp.float32
    np.testing.assert_allclose(v, want_v, rtol=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-7)


def test_vmap_gives_per_example_losses_and_gradients():
    rng = np.random.default_rng(4)
    p, t = jnp.asarray(rng.normal(size=(4, 6))), jnp.asarray(rng.normal(size=(4, 6)))
    values = jax.vmap(lambda a, b: flj.mse(a, b))(p, t)
    grads = jax.vmap(jax.grad(lambda a, b: flj.mse(a, b)))(p, t)
    np.testing.assert_allclose(values, np.mean(np.asarray(p - t) ** 2, axis=1), rtol=1e-14)
    np.testing.assert_allclose(grads, 2 * np.asarray(p - t) / 6, rtol=1e-14)


def test_custom_loss_and_jax_check_grads():
    @fl.pointwise
    def pseudo_huber(pred, target, delta=1.0):
        d = pred - target
        s = math.sqrt(1.0 + (d / delta) ** 2)
        return delta * delta * (s - 1.0), d / s

    f = flj.wrap(pseudo_huber)
    t = jnp.asarray(np.random.default_rng(5).normal(size=8))
    p = jnp.asarray(np.random.default_rng(6).normal(size=8))
    check_grads(lambda x: f(x, t, delta=0.7), (p,), order=1, modes=("rev",))
    check_grads(lambda x: f(x, t, reduction="none"), (p,), order=1, modes=("rev",))


def test_clear_errors():
    x = jnp.zeros((3, 4))
    with pytest.raises(TypeError, match="does not take out="):
        flj.mse(x, x, out=x)
    with pytest.raises(ValueError, match="delta must be in"):
        flj.huber(x, x, delta=0.0)
    with pytest.raises(TypeError, match="expects a fastloss Loss"):
        flj.wrap(len)
    with pytest.raises(AttributeError):
        flj.not_a_loss
    with pytest.raises(TypeError, match="return_z_loss=True returns a tuple"):
        fastloss_adapters.check_params("fastloss.jax", "cross_entropy", {"return_z_loss": True})
    if "return_z_loss" in inspect.signature(fl.cross_entropy).parameters:  # once cross_entropy has it
        with pytest.raises(TypeError, match="return_z_loss=True"):
            flj.cross_entropy(x, jnp.zeros(3, dtype=jnp.int32), return_z_loss=True)
