"""The calling contract shared by every loss: dtypes, layouts, out=, bad input, NaN, empty arrays."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
from cases import POINTWISE, pointwise_inputs

import fastloss as fl


def make(name, shape=(6, 5), seed=0):
    loss = fl.get(name)
    return loss, pointwise_inputs(loss.spec, shape, np.random.default_rng(seed))


def first_grad(g):
    return g[0] if isinstance(g, tuple) else g


# -- signature and docs -------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
def test_signature_and_docstring_come_from_the_declaration(name):
    loss = fl.get(name)
    sig = inspect.signature(loss)
    spec = loss.spec
    assert list(sig.parameters)[: len(spec.inputs)] == [i.name for i in spec.inputs]
    for p in spec.params:
        assert sig.parameters[p.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert sig.parameters[p.name].default == p.default
    assert "out" in inspect.signature(loss.value_and_grad).parameters
    for text in (loss.__doc__, loss.grad.__doc__, loss.value_and_grad.__doc__):
        assert ".. math::" in text and "Parameters" in text and "Returns" in text
    assert spec.reference in loss.__doc__
    assert spec.properties is not None and spec.example.strip().startswith(">>>")
    assert pickle.loads(pickle.dumps(loss)) is loss


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError, match="keyword-only"):
        fl.huber(np.zeros(3), np.zeros(3), 1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fl.huber(np.zeros(3), np.zeros(3), detla=1.0)
    with pytest.raises(TypeError, match="missing required argument 'target'"):
        fl.huber(np.zeros(3))


# -- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.bool_])
def test_gradient_has_prediction_dtype_and_shape(name, dtype):
    loss, inputs = make(name)
    pred = inputs[0].astype(dtype)
    if dtype in (np.int32, np.bool_) and loss.spec.domains is not None:
        pred = np.abs(pred) + 1  # stay in the domain after truncation
    v, g = loss.value_and_grad(pred, *inputs[1:])
    want_dtype = pred.dtype if pred.dtype.kind == "f" else np.float64
    assert first_grad(g).dtype == want_dtype and first_grad(g).shape == pred.shape
    _, ref_g = loss.value_and_grad(pred.astype(np.float32 if dtype == np.float16 else np.float64), *inputs[1:])
    rtol = {np.float16: 1e-3, np.float32: 1e-6}.get(dtype, 1e-12)
    np.testing.assert_allclose(first_grad(g), first_grad(ref_g), rtol=rtol, atol=1e-7)
    assert np.ndim(v) == 0


def test_loss_scalar_dtype_follows_prediction():
    x = np.linspace(-1, 1, 10)
    assert fl.mse(x.astype(np.float32), 0.0).dtype == np.float32
    assert fl.mse(x, 0.0).dtype == np.float64
    assert fl.mse(x.astype(np.float32), 0.0, reduction="none").dtype == np.float32


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([1 + 2j, 3j]), np.array([None, 1.0], dtype=object)])
def test_non_numeric_inputs_raise_type_error(bad):
    with pytest.raises(TypeError, match="real numeric"):
        fl.mse(bad, np.zeros(2))
    with pytest.raises(TypeError, match="real numeric"):
        fl.mse(np.zeros(2), bad)


# -- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
def test_any_memory_layout_gives_the_same_answer(name):
    loss, inputs = make(name, shape=(8, 6))
    v0, g0 = loss.value_and_grad(*inputs)
    fortran = [np.asfortranarray(x) for x in inputs]
    v1, g1 = loss.value_and_grad(*fortran)
    big = [np.repeat(np.repeat(x, 2, axis=0), 3, axis=1) for x in inputs]
    strided = [x[::2, ::3] for x in big]
    v2, g2 = loss.value_and_grad(*strided)
    readonly = [x.copy() for x in inputs]
    for x in readonly:
        x.flags.writeable = False
    v3, g3 = loss.value_and_grad(*readonly)
    for v, g in ((v1, g1), (v2, g2), (v3, g3)):
        assert v == v0
        for a, b in zip(g if isinstance(g, tuple) else (g,), g0 if isinstance(g0, tuple) else (g0,)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", POINTWISE)
def test_inputs_are_never_modified(name):
    loss, inputs = make(name)
    copies = [x.copy() for x in inputs]
    loss.value_and_grad(*inputs)
    loss.grad(*inputs, reduction="none")
    loss(*inputs)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)


# -- out= ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
def test_out_receives_the_gradient_without_a_copy(name):
    loss, inputs = make(name)
    want = loss.grad(*inputs)
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    outs = tuple(np.empty_like(inputs[k]) for k in diff)
    got = loss.grad(*inputs, out=outs if len(outs) > 1 else outs[0])
    for o, g, w in zip(outs, got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g is o
        np.testing.assert_array_equal(o, w)


@pytest.mark.parametrize("name", POINTWISE)
def test_out_may_be_the_prediction_itself(name):
    loss, inputs = make(name)
    want_v, want_g = loss.value_and_grad(*inputs)
    pred = inputs[0].copy()
    args = [pred, *inputs[1:]]
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    out = pred if len(diff) == 1 else (pred, None)
    v, g = loss.value_and_grad(*args, out=out)
    assert first_grad(g) is pred
    assert v == want_v
    np.testing.assert_array_equal(pred, first_grad(want_g))


def test_out_in_place_on_a_non_contiguous_view():
    base = np.linspace(-2, 2, 40).reshape(8, 5)
    view = base[::2]
    expected = fl.huber.grad(view.copy(), 0.5)
    got = fl.huber.grad(view, 0.5, out=view)
    assert got is view
    np.testing.assert_array_equal(base[::2], expected)
    np.testing.assert_array_equal(base[1::2], np.linspace(-2, 2, 40).reshape(8, 5)[1::2])


def test_bad_out_buffers_raise_before_computing():
    x, t = np.linspace(-1, 1, 6), np.zeros(6)
    with pytest.raises(ValueError, match="shape"):
        fl.mse.grad(x, t, out=np.empty(5))
    with pytest.raises(TypeError, match="dtype"):
        fl.mse.grad(x, t, out=np.empty(6, np.float32))
    ro = np.empty(6)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fl.mse.grad(x, t, out=ro)
    with pytest.raises(ValueError, match="shares memory with target"):
        fl.mse.grad(x, t, out=t)
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        fl.mse.grad(x, t, out=[0.0] * 6)
    with pytest.raises(ValueError, match="2 gradient buffer"):
        fl.gaussian_nll.grad(x, t, np.ones(6), out=np.empty(6))
    var = np.ones(6)
    with pytest.raises(ValueError, match="shares memory with var"):
        fl.gaussian_nll.grad(x, t, var, out=(var, None))


# -- bad arguments -------------------------------------------------------------------------------


def test_shapes_that_do_not_broadcast_raise():
    with pytest.raises(ValueError, match=r"shapes do not broadcast: pred\(3,\), target\(4,\)"):
        fl.mse(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="weight"):
        fl.mse(np.zeros(3), np.zeros(3), weight=np.ones(4))
    with pytest.raises(ValueError, match="weight"):
        fl.mse(np.zeros(3), np.zeros(3), weight=np.ones((2, 3)))  # would enlarge the loss


@pytest.mark.parametrize("reduction", ["avg", None, "MEAN", 1])
def test_unknown_reduction_raises(reduction):
    with pytest.raises(ValueError, match="reduction"):
        fl.mse(np.zeros(3), np.zeros(3), reduction=reduction)


@pytest.mark.parametrize(
    "name, params",
    [("huber", {"delta": 0.0}), ("huber", {"delta": -1.0}), ("quantile", {"q": 1.5}), ("quantile", {"q": 0.0}),
     ("smooth_l1", {"beta": -0.1}), ("robust", {"scale": 0.0}), ("robust", {"alpha": np.inf}),
     ("sigmoid_focal", {"gamma": -1.0}), ("poisson_nll", {"eps": 0.0}), ("huber", {"delta": np.nan})],
)
def test_parameters_outside_their_range_raise(name, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        fl.get(name)(np.zeros(3), np.ones(3), **params)


def test_parameters_of_the_wrong_type_raise():
    with pytest.raises(TypeError, match="delta"):
        fl.huber(np.zeros(3), np.zeros(3), delta="1")
    with pytest.raises(TypeError, match="log_input"):
        fl.poisson_nll(np.zeros(3), np.zeros(3), log_input=0.5)


def test_invalid_discrete_targets_name_the_first_bad_element():
    with pytest.raises(ValueError, match=r"target\[1, 0\] = 2"):
        fl.hinge(np.zeros((2, 2)), np.array([[1, 0], [2, 1]]))
    fl.hinge(np.zeros(3), np.array([-1, 1, 0]))  # {-1, 0, +1} are all accepted


def test_negative_variance_raises():
    with pytest.raises(ValueError, match="var has negative entries"):
        fl.gaussian_nll(np.zeros(3), np.zeros(3), np.array([1.0, -1.0, 1.0]))


def test_gaussian_var_may_omit_the_last_dimension_like_pytorch():
    pred = np.random.default_rng(0).normal(size=(4, 3))
    var = np.array([0.5, 1.0, 2.0, 4.0])
    v, (gp, gv) = fl.gaussian_nll.value_and_grad(pred, 0.0, var)
    v2, (gp2, gv2) = fl.gaussian_nll.value_and_grad(pred, 0.0, var[:, None])
    assert v == v2 and gv.shape == (4,)
    np.testing.assert_array_equal(gp, gp2)
    np.testing.assert_array_equal(gv, gv2[:, 0])


def test_cuda_like_inputs_mixed_with_host_arrays_raise():
    class FakeDevice:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (3,), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="same device"):
        fl.mse(np.zeros(3, np.float32), FakeDevice())


# -- NaN, Inf, empty -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINTWISE)
def test_nan_propagates_to_its_own_position(name):
    loss, inputs = make(name, shape=(10,))
    inputs[0] = inputs[0].copy()
    inputs[0][3] = np.nan
    per = loss(*inputs, reduction="none")
    g = first_grad(loss.grad(*inputs))
    assert np.isnan(per[3]) and np.isnan(g[3])
    assert np.isfinite(np.delete(per, 3)).all() and np.isfinite(np.delete(g, 3)).all()
    assert np.isnan(loss(*inputs))


def test_infinities_follow_numpy():
    assert fl.mse(np.array([np.inf, 0.0]), 0.0) == np.inf
    assert fl.mae.grad(np.array([np.inf, -np.inf]), 0.0, reduction="sum").tolist() == [1.0, -1.0]
    # stable forms: huge logits give finite BCE and gradients
    v, g = fl.binary_cross_entropy.value_and_grad(np.array([1e308, -1e308]), np.array([1.0, 0.0]))
    assert v == 0.0 and np.all(g == 0.0)


@pytest.mark.parametrize("name", POINTWISE)
def test_empty_inputs_behave_like_numpy(name):
    loss = fl.get(name)
    empty = [np.empty((0, 3)) for _ in loss.spec.inputs]
    assert np.isnan(loss(*empty))
    assert loss(*empty, reduction="sum") == 0.0
    assert loss(*empty, reduction="none").shape == (0, 3)
    assert first_grad(loss.grad(*empty)).shape == (0, 3)
