"""The rowwise shortcut for common calls (``RowwiseKind.fast_path``) against the general path.

The shortcut handles a classifier's plain call (2-D C-order float logits, 1-D int64/int32 labels,
no weight, "mean"/"sum", no ``out``) and hands everything else to the general path, which also
raises every error. Results must be bit-identical to the general path's.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import param_variants

import fastloss as fl
from fastloss.kinds.softmax.host import ROWWISE as KIND

ROWWISE = fl.names("rowwise")
PLAIN = [n for n in ROWWISE if KIND.fast_path(fl.get(n).spec, fl.get(n)._params, need_value=True,
                                                need_grad=True, with_out=True) is not None]


def general(loss, inputs, params, reduction="mean", *, need_value=True, need_grad=True):
    """The general path, called directly (parameters checked as ``Loss._bind`` checks them)."""
    checked = {p.name: p.check(loss.spec.name, params.get(p.name, p.default)) for p in loss._params}
    value, grads = KIND.run(loss.spec, list(inputs), checked, None, reduction,
                               need_value=need_value, need_grad=need_grad, out=None)[:2]
    return value, grads


def labels(rng, n, nc, dtype, ignore=False):
    y = rng.integers(0, nc, n).astype(dtype)
    if ignore:
        y[::3] = -100  # ignored rows: left out of the loss, the mean and the gradient
    return y


@pytest.fixture
def no_general_path(monkeypatch):
    """Make the general path fail, so that a passing call proves the shortcut handled it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(KIND, "run", refuse)


def test_the_index_target_losses_have_the_shortcut():
    assert {"cross_entropy", "softmax_focal", "multiclass_hinge"} <= set(PLAIN)
    assert "kl_divergence" not in PLAIN  # probability targets only


# (rows, classes): serial, row-parallel (from PARALLEL_THRESHOLD elements) and split rows
SHAPES = [(7, 5), (64, 10), (300, 300), (1, 40_000)]
CASES = [(n, dt, shape) for n in PLAIN for dt in (np.float32, np.float64) for shape in SHAPES]


@pytest.mark.parametrize(("name", "dtype", "shape"), CASES)
def test_shortcut_is_bit_identical_to_the_general_path(name, dtype, shape):
    loss = fl.get(name)
    rng = np.random.default_rng(4)
    n, nc = shape
    x = (rng.normal(size=shape) * 3).astype(dtype)
    for params in param_variants(loss.spec):
        for ydt in (np.int64, np.int32):
            ignore = "ignore_index" in {p.name for p in loss._params} and n > 1
            y = labels(rng, n, nc, ydt, ignore)
            for reduction in ("mean", "sum"):
                want_v, (want_g,) = general(loss, (x, y), params, reduction)
                v, g = loss.value_and_grad(x, y, reduction=reduction, **params)
                assert type(v) is type(want_v) and v.tobytes() == want_v.tobytes()
                np.testing.assert_array_equal(g, want_g, strict=True)
                np.testing.assert_array_equal(loss.grad(x, y, reduction=reduction, **params), want_g, strict=True)
                assert loss(x, y, reduction=reduction, **params).tobytes() == want_v.tobytes()


@pytest.mark.parametrize("name", ["cross_entropy", "softmax_focal", "multiclass_hinge"])
def test_plain_calls_do_not_take_the_general_path(name, no_general_path):
    loss = fl.get(name)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = labels(rng, 50, 6, np.int64)
    loss(x, y)
    loss.grad(x, y, reduction="sum")
    loss.value_and_grad(x, y.astype(np.int32), axis=1)
    if name == "cross_entropy":
        loss.value_and_grad(x, y, label_smoothing=0.1, z_loss=1e-4, softcap=5.0, return_z_loss=False)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: fl.cross_entropy(x, y, weight=np.ones(4)),
        lambda x, y: fl.cross_entropy(x, y, reduction="none"),
        lambda x, y: fl.cross_entropy(x, y, return_z_loss=True),
        lambda x, y: fl.cross_entropy(x.T.copy(), y, axis=0),
        lambda x, y: fl.cross_entropy(x[:, ::2], y),
        lambda x, y: fl.cross_entropy(x[::2], y[::2]),
        lambda x, y: fl.cross_entropy(x.astype(np.float16), y),
        lambda x, y: fl.cross_entropy(x[None], y[None]),
        lambda x, y: fl.cross_entropy(x, y.astype(np.uint8)),
        lambda x, y: fl.cross_entropy(x, np.full_like(y, -100)),  # all ignored: a NaN mean
        lambda x, y: fl.cross_entropy(x, np.full(x.shape, 0.25)),  # probabilities
        lambda x, y: fl.cross_entropy(x, target=y),
        lambda x, y: fl.cross_entropy(list(x), y),
        lambda x, y: fl.cross_entropy(x[:0], y[:0]),
        lambda x, y: fl.cross_entropy.value_and_grad(x, y, stats=True),
        lambda x, y: fl.cross_entropy.value_and_grad(x, y, out=np.empty_like(x)),
    ],
)
def test_other_calls_are_handed_to_the_general_path(call, no_general_path):
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    with pytest.raises(AssertionError, match="general path ran"):
        call(x, np.array([0, 1, 2, 3]))


def test_errors_are_raised_as_by_the_general_path():
    x = np.zeros((3, 4), np.float32)
    for y in (np.array([0, 4, 1]), np.array([0, -1, 1], np.int32)):
        with pytest.raises(ValueError, match=r"target\[1\] = -?\d is not a class index in \[0, 4\)"):
            fl.cross_entropy.value_and_grad(x, y)
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="label_smoothing"):
        fl.cross_entropy(x, y, label_smoothing=2.0)
    with pytest.raises(TypeError, match="label_smoothing"):
        fl.cross_entropy(x, y, label_smoothing="0.1")
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fl.cross_entropy(x, y, axis=2)
    with pytest.raises(ValueError, match="reduction"):
        fl.cross_entropy(x, y, reduction="avg")
    with pytest.raises(TypeError, match="unexpected keyword"):
        fl.cross_entropy(x, y, bogus=1)
    with pytest.raises(ValueError, match="shape"):
        fl.cross_entropy(x, y[:2])
