"""The pointwise shortcut for common calls (``PointwiseKind.fast_path``) against the general path.

The shortcut handles plain calls (positional NumPy float arrays of one shape, C order, no weight,
"mean"/"sum", ``out`` absent or a matching buffer) and hands everything else to the general path,
which also raises every error. Results must be bit-identical to the general path's.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import POINTWISE, defaults, param_variants, pointwise_inputs

import fastloss as fl
from fastloss.kinds.pointwise.host import POINTWISE as KIND

PLAIN = [n for n in POINTWISE if KIND.fast_path(fl.get(n).spec, fl.get(n)._params, need_value=True,
                                                  need_grad=True, with_out=True) is not None]


def general(loss, inputs, params, reduction="mean", *, need_value=True, need_grad=True, out=None):
    """The general path, called directly."""
    checked = {p.name: p.check(loss.spec.name, params[p.name]) for p in loss.spec.params}
    value, grads = KIND.run(loss.spec, list(inputs), checked, None, reduction,
                               need_value=need_value, need_grad=need_grad, out=out)[:2]
    return value, grads


@pytest.fixture
def no_general_path(monkeypatch):
    """Make the general path fail, so that a passing call proves the shortcut handled it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(KIND, "run", refuse)


def test_the_common_losses_have_the_shortcut():
    assert {"mse", "mae", "huber", "binary_cross_entropy", "poisson_nll"} <= set(PLAIN)
    # inputs that need validation (discrete targets) or adaptation always take the general path
    assert "hinge" not in PLAIN and "gaussian_nll" not in PLAIN


CASES = [(n, dt, shape) for n in PLAIN for dt in (np.float32, np.float64) for shape in ((7,), (3, 5))]
# sizes the shortcut hands to ``run_driver`` (which may take the parallel path)
CASES += [(n, np.float32, (700_001,)) for n in ("mse", "huber", "bpr") if n in PLAIN]


@pytest.mark.parametrize(("name", "dtype", "shape"), CASES)
def test_shortcut_is_bit_identical_to_the_general_path(name, dtype, shape):
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    for params in param_variants(loss.spec):
        xs = [x.astype(dtype) for x in pointwise_inputs(loss.spec, shape, rng, params)]
        for reduction in ("mean", "sum"):
            single = len(loss.spec.differentiable) == 1
            v, g = loss.value_and_grad(*xs, reduction=reduction, **params)
            want_v, want_g = general(loss, xs, params, reduction)
            assert type(v) is type(want_v) and v.tobytes() == want_v.tobytes()
            gs = [g] if single else list(g)
            assert len(gs) == len(want_g)
            for a, b in zip(gs, want_g):
                assert a.shape == shape and a.dtype == dtype
                np.testing.assert_array_equal(a, b, strict=True)
            g_only = loss.grad(*xs, reduction=reduction, **params)
            for a, b in zip([g_only] if single else g_only, want_g):
                np.testing.assert_array_equal(a, b, strict=True)
            assert loss(*xs, reduction=reduction, **params).tobytes() == want_v.tobytes()
            bufs = [np.full(shape, np.nan, dtype) for _ in want_g]
            v2, g2 = loss.value_and_grad(*xs, reduction=reduction, out=bufs[0] if single else tuple(bufs), **params)
            assert v2.tobytes() == want_v.tobytes()
            assert all(a is b for a, b in zip([g2] if single else g2, bufs))
            for a, b in zip(bufs, want_g):
                np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("name", ["mse", "huber", "poisson_nll"])
def test_plain_calls_do_not_take_the_general_path(name, no_general_path):
    loss = fl.get(name)
    xs = [x.astype(np.float32) for x in pointwise_inputs(loss.spec, (50,), np.random.default_rng(0))]
    params = defaults(loss.spec)
    loss(*xs)
    loss.grad(*xs, reduction="sum", **params)
    loss.value_and_grad(*xs, out=np.empty_like(xs[0]))
    pred = xs[0].copy()
    _, g = loss.value_and_grad(pred, *xs[1:], out=pred)  # in place: out may alias its own input
    assert g is pred


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: fl.mse(x, y, weight=np.ones(4)),
        lambda x, y: fl.mse(x, y, reduction="none"),
        lambda x, y: fl.mse(x[::2], y[::2]),
        lambda x, y: fl.mse(x, y.astype(np.float64)),
        lambda x, y: fl.mse(x, y[:1]),
        lambda x, y: fl.mse(x, target=y),
        lambda x, y: fl.mse(list(x), y),
        lambda x, y: fl.mse.value_and_grad(x, y, stats=True),
        lambda x, y: fl.mse(x[:0], y[:0]),
    ],
)
def test_other_calls_are_handed_to_the_general_path(call, no_general_path):
    x = np.linspace(-1, 1, 4, dtype=np.float32)
    with pytest.raises(AssertionError, match="general path ran"):
        call(x, x + 1)


def test_errors_are_raised_as_by_the_general_path():
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    y = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="delta"):
        fl.huber(x, y, delta=-1.0)
    with pytest.raises(TypeError, match="delta"):
        fl.huber(x, y, delta="1")
    with pytest.raises(ValueError, match="reduction"):
        fl.huber(x, y, reduction="avg")
    with pytest.raises(TypeError, match="unexpected keyword"):
        fl.mse(x, y, bogus=1)
    with pytest.raises(ValueError, match="shares memory"):
        fl.mse.grad(x, y, out=y)  # out may alias its own input only
    with pytest.raises(ValueError, match="read-only"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        fl.mse.grad(x, y, out=ro)
    with pytest.raises(TypeError, match="dtype"):
        fl.mse.grad(x, y, out=np.empty(8, np.float64))
    with pytest.raises(ValueError, match="shape"):
        fl.mse.grad(x, y, out=np.empty(9, np.float32))


def test_a_kind_wrapped_after_construction_disables_the_shortcut():
    loss = fl._api.Loss(fl.mse.spec)
    calls = []

    class Wrapper:
        name = "pointwise"

        def extra_params(self, spec):
            return ()

        def run(self, *args, **kwargs):
            calls.append(1)
            return KIND.run(*args, **kwargs)

    loss._kind = Wrapper()
    x = np.ones(5, np.float32)
    loss.value_and_grad(x, x)
    loss(x, x)
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["mse", "huber", "gaussian_nll"])
@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_in_place_calls_stage_their_inputs_and_match_out_of_place_bit_for_bit(name, path, pointwise_path):
    pointwise_path(path)
    n = 70_000
    loss = fl.get(name)
    xs = [x.astype(np.float32) for x in pointwise_inputs(loss.spec, (n,), np.random.default_rng(5))]
    want_v, want_g = loss.value_and_grad(*xs)
    pred = xs[0].copy()
    single = len(loss.spec.differentiable) == 1
    v, g = loss.value_and_grad(pred, *xs[1:], out=pred if single else (pred, None))
    assert (g if single else g[0]) is pred
    assert v.tobytes() == want_v.tobytes()
    np.testing.assert_array_equal(pred, want_g if single else want_g[0], strict=True)
    staged = [k for k in KIND._drivers if k[0] is loss.spec.kernel and k[2]]
    assert staged, "the in-place call did not use the staging driver"
