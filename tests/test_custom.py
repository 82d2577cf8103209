"""Custom losses from ``@fl.pointwise``: the built-in contract, clear errors, registry, pickling, caching."""

from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

import fastloss as fl
from fastloss.custom import Discrete, Interval

ROOT = Path(__file__).resolve().parents[1]


@fl.pointwise
def charbonnier(pred, target, delta=1.0):
    """Pseudo-Huber loss: smooth, quadratic near zero, linear in the tails."""
    d = pred - target
    s = math.sqrt(1.0 + (d / delta) ** 2)
    return delta * delta * (s - 1.0), d / s


def charbonnier_ref(pred, target, delta=1.0):
    """Plain float64 NumPy reference: per-element values and gradients."""
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    s = np.sqrt(1.0 + (d / delta) ** 2)
    return delta**2 * (s - 1.0), d / s


def reduced(values, grads, reduction, weight=None):
    w = np.ones_like(values) if weight is None else np.broadcast_to(weight, values.shape)
    if reduction == "none":
        return values * w, grads * w
    if reduction == "sum":
        return np.sum(values * w), grads * w
    return np.sum(values * w) / np.sum(w), grads * w / np.sum(w)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(0, 2, size=(40, 7)), rng.normal(0, 2, size=(40, 7))


# -- the same contract as a built-in loss ----------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_matches_the_numpy_reference_for_every_reduction(data, reduction, delta):
    p, t = data
    want_v, want_g = reduced(*charbonnier_ref(p, t, delta), reduction)
    v = charbonnier(p, t, delta=delta, reduction=reduction)
    g = charbonnier.grad(p, t, delta=delta, reduction=reduction)
    fv, fg = charbonnier.value_and_grad(p, t, delta=delta, reduction=reduction)
    np.testing.assert_allclose(v, want_v, rtol=1e-12)
    np.testing.assert_allclose(g, want_g, rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(fv, v)
    np.testing.assert_array_equal(fg, g)


def test_weights_broadcasting_dtypes_and_out(data):
    p, t = data
    w = np.random.default_rng(1).uniform(0.1, 2.0, size=(40, 1))
    want_v, want_g = reduced(*charbonnier_ref(p, t), "mean", w)
    v, g = charbonnier.value_and_grad(p, t, weight=w)
    np.testing.assert_allclose(v, want_v, rtol=1e-12)
    np.testing.assert_allclose(g, want_g, rtol=1e-12, atol=1e-16)
    # target broadcast along rows; gradient keeps pred's shape
    row = t[0]
    _, g = charbonnier.value_and_grad(p, row, reduction="sum")
    np.testing.assert_allclose(g, charbonnier_ref(p, row)[1], rtol=1e-12)
    # float32 computed natively
    v32, g32 = charbonnier.value_and_grad(p.astype(np.float32), t.astype(np.float32))
    assert v32.dtype == np.float32 and g32.dtype == np.float32
    np.testing.assert_allclose(v32, reduced(*charbonnier_ref(p.astype(np.float32), t.astype(np.float32)), "mean")[0],
                               rtol=1e-5)
    # out= in place over the prediction, inputs otherwise untouched
    p_copy, t_copy = p.copy(), t.copy()
    want = charbonnier.grad(p, t)
    _, g = charbonnier.value_and_grad(p_copy, t_copy, out=p_copy)
    assert g is p_copy
    np.testing.assert_array_equal(g, want)
    np.testing.assert_array_equal(t_copy, t)


def test_same_driver_as_built_ins(pointwise_path):
    pointwise_path("parallel")

    @fl.pointwise
    def my_mse(pred, target):
        d = pred - target
        return d * d, 2.0 * d

    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        p = rng.normal(size=100_003).astype(dtype)
        t = rng.normal(size=100_003).astype(dtype)
        w = rng.uniform(size=100_003).astype(dtype)
        for reduction in ("mean", "sum", "none"):
            a = my_mse.value_and_grad(p, t, weight=w, reduction=reduction, stats=True)
            b = fl.mse.value_and_grad(p, t, weight=w, reduction=reduction, stats=True)
            # equal up to rounding, not bit for bit: a driver loaded from Numba's disk cache and
            # one compiled in this process may contract multiplications differently (FMA)
            np.testing.assert_allclose(a[0], b[0], rtol=4 * np.finfo(dtype).eps)
            np.testing.assert_allclose(a[1], b[1], rtol=4 * np.finfo(dtype).eps, atol=0)
            assert a[2].nonfinite == b[2].nonfinite
            np.testing.assert_allclose([a[2].norm, a[2].max_abs], [b[2].norm, b[2].max_abs], rtol=1e-14)
    # one driver template for both: the custom loss binds its kernel into the built-ins' code
    kind = fl.kinds.KINDS["pointwise"]
    ours, builtin = kind.driver(my_mse.spec), kind.driver(fl.mse.spec)
    assert ours is not builtin and ours.py_func.__code__ is builtin.py_func.__code__


def test_bit_identical_for_any_thread_count(pointwise_path):
    pointwise_path("parallel")
    rng = np.random.default_rng(3)
    p, t = rng.normal(size=300_001).astype(np.float32), rng.normal(size=300_001).astype(np.float32)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            results.append(charbonnier.value_and_grad(p, t, delta=0.5, stats=True))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (v1, g1, s1), (v2, g2, s2) = results
    assert v1.tobytes() == v2.tobytes() and s1 == s2
    np.testing.assert_array_equal(g1, g2)


def test_several_gradients_in_argument_order():
    @fl.pointwise(differentiable=("mean", "var"), domains={"var": (1e-3, math.inf)})
    def my_gaussian_nll(mean, target, var):
        d = mean - target
        return 0.5 * (math.log(var) + d * d / var), d / var, 0.5 * (1.0 / var - d * d / (var * var))

    rng = np.random.default_rng(4)
    m, y, v = rng.normal(size=30), rng.normal(size=30), rng.uniform(0.5, 2.0, size=30)
    val, (gm, gv) = my_gaussian_nll.value_and_grad(m, y, v, reduction="sum")
    np.testing.assert_allclose(val, np.sum(0.5 * (np.log(v) + (m - y) ** 2 / v)), rtol=1e-12)
    np.testing.assert_allclose(gm, (m - y) / v, rtol=1e-12)
    np.testing.assert_allclose(gv, 0.5 * (1 / v - (m - y) ** 2 / v**2), rtol=1e-12)
    # the built-in with the same definition agrees
    bv, (_, bvar) = fl.gaussian_nll.value_and_grad(m, y, v, reduction="sum")
    np.testing.assert_allclose(val, bv, rtol=1e-12)
    np.testing.assert_allclose(gv, bvar, rtol=1e-12)
    assert fl.check_grad(my_gaussian_nll, m, y, v).ok


def test_signature_docstring_and_parameters():
    sig = inspect.signature(charbonnier)
    assert list(sig.parameters)[:3] == ["pred", "target", "delta"]
    assert sig.parameters["delta"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["delta"].default == 1.0
    assert charbonnier.__doc__.startswith("Pseudo-Huber loss")
    assert "Parameters" in charbonnier.grad.__doc__
    assert charbonnier.func(3.0, 0.0) == charbonnier_ref(3.0, 0.0)  # the original function stays usable
    assert isinstance(charbonnier, fl.Loss) and isinstance(charbonnier, fl.CustomLoss)
    with pytest.raises(TypeError, match="keyword-only"):
        charbonnier(np.zeros(2), np.zeros(2), 0.5)
    with pytest.raises(TypeError, match="delta must be a float"):
        charbonnier(np.zeros(2), np.zeros(2), delta="big")


def test_domains_of_parameters_and_inputs_are_checked():
    @fl.pointwise(domains={"delta": Interval(0.0, math.inf, (False, True)), "target": Discrete((0.0, 1.0))})
    def bounded(pred, target, delta=1.0, squared=False, power=2):
        v = abs(pred - target) / delta
        if squared:
            v = v**power
        return v, 0.0

    x = np.array([0.2, 0.7])
    assert float(bounded(x, np.array([0.0, 1.0]), squared=True, reduction="sum")) == pytest.approx(0.2**2 + 0.3**2)
    with pytest.raises(ValueError, match=r"delta must be in \(0, inf\]"):
        bounded(x, np.array([0.0, 1.0]), delta=0.0)
    with pytest.raises(ValueError, match=r"target must take values in \{0, 1\}; target\[1\] = 2"):
        bounded(x, np.array([0.0, 2.0]))
    with pytest.raises(TypeError, match="squared must be a bool"):
        bounded(x, np.array([0.0, 1.0]), squared=0.5)
    with pytest.raises(TypeError, match="power must be an integer"):
        bounded(x, np.array([0.0, 1.0]), power=2.5)


# -- errors at decoration ------------------------------------------------------------------------


def test_uncompilable_function_fails_at_decoration_naming_it_with_numbas_message():
    def uses_undefined(pred, target):
        return undefined_helper(pred), 0.0  # noqa: F821

    with pytest.raises(TypeError) as info:
        fl.pointwise(uses_undefined)
    msg = str(info.value)
    assert "uses_undefined" in msg and "test_custom.py" in msg
    assert "undefined_helper" in msg and "\x1b[" not in msg  # Numba's message, without colour codes
    assert isinstance(info.value.__cause__, numba.core.errors.NumbaError)


@pytest.mark.parametrize(
    ("body", "returns"),
    [
        ("return pred - target", "float64"),
        ("return pred - target, 1.0, 2.0", "3"),
        ("return (pred - target,)", "1"),
        ("return pred - target, (1.0, 2.0)", "Tuple"),
    ],
)
def test_wrong_number_of_returned_values_fails_at_decoration(body, returns):
    ns: dict = {}
    exec(f"def bad_returns(pred, target):\n    {body}\n", ns)
    with pytest.raises(TypeError, match=r"bad_returns .* must return 2 numbers \(value, d value/d pred\)") as info:
        fl.pointwise(ns["bad_returns"])
    assert returns in str(info.value)


def test_gradient_count_follows_differentiable():
    def two(pred, other):
        return pred * other, other

    with pytest.raises(TypeError, match=r"must return 3 numbers \(value, d value/d pred, d value/d other\)"):
        fl.pointwise(two, differentiable=("pred", "other"))


@pytest.mark.parametrize(
    ("src", "match"),
    [
        ("def f(*xs):\n    return 0.0, 0.0", r"\*args"),
        ("def f(pred, weight):\n    return 0.0, 0.0", "'weight' is reserved"),
        ("def f(delta=1.0):\n    return 0.0, 0.0", "at least one array input"),
        ("def f(pred, mode='a'):\n    return 0.0, 0.0", "numeric or bool default"),
        ("def f(pred, delta=1.0, *, target):\n    return 0.0, 0.0", "follows a hyper-parameter"),
    ],
)
def test_signatures_that_cannot_describe_a_loss(src, match):
    ns: dict = {}
    exec(src, ns)
    with pytest.raises(TypeError, match=match):
        fl.pointwise(ns["f"])


def test_bad_options():
    def f(pred, target, delta=1.0):
        return pred, 1.0

    with pytest.raises(ValueError, match="differentiable"):
        fl.pointwise(f, differentiable=("nope",))
    with pytest.raises(TypeError, match="argument order"):
        fl.pointwise(f, differentiable=("target", "pred"))
    with pytest.raises(ValueError, match="not an argument"):
        fl.pointwise(f, domains={"sigma": (0.0, 1.0)})
    with pytest.raises(ValueError, match="outside its domain"):
        fl.pointwise(f, domains={"delta": (2.0, 3.0)})
    with pytest.raises(ValueError, match="identifier"):
        fl.pointwise(f, name="not a name")
    with pytest.raises(TypeError, match="Python function"):
        fl.pointwise(np.sqrt)


# -- registry, names, redefinition -----------------------------------------------------------------


def test_not_registered_unless_asked():
    assert "charbonnier" not in fl.REGISTRY

    def shifted(pred, target, shift=0.0):
        d = pred - target - shift
        return d * d, 2.0 * d

    loss = fl.pointwise(shifted, register=True)
    try:
        assert fl.get("shifted") is loss
        assert "shifted" in fl.names("pointwise")
        with pytest.raises(pickle.PicklingError, match="not reachable"):  # local: not importable elsewhere
            pickle.dumps(loss)
    finally:
        del fl.REGISTRY["shifted"]
    with pytest.raises(ValueError, match="already registered"):
        fl.pointwise(shifted, name="mse", register=True)


def test_same_names_never_share_compiled_code():
    def mse(pred, target):  # the name of a built-in
        return 3.0 * (pred - target), 3.0

    x = np.array([1.0, 2.0])
    custom = fl.pointwise(mse)
    assert float(custom(x, 0.0, reduction="sum")) == 9.0
    assert float(fl.mse(x, 0.0, reduction="sum")) == 5.0  # the built-in is untouched
    assert fl.get("mse") is fl.mse

    def mse(pred, target):
        return 4.0 * (pred - target), 4.0

    assert float(fl.pointwise(mse)(x, 0.0, reduction="sum")) == 12.0
    assert float(custom(x, 0.0, reduction="sum")) == 9.0


def test_functions_without_source_work_compiled_in_memory():
    ns: dict = {"math": math}
    exec("def cube(pred, target):\n    d = pred - target\n    return d ** 3, 3.0 * d * d\n", ns)
    cube = fl.pointwise(ns["cube"])
    lam = fl.pointwise(lambda pred, target: (abs(pred - target), 1.0), name="lam")
    anonymous = fl.pointwise(lambda pred: (pred, 1.0))
    assert cube.spec.options["cache"] is False
    assert charbonnier.spec.options["cache"] is True  # defined in this file
    x = np.array([1.0, -2.0])
    assert float(cube(x, 0.0, reduction="sum")) == -7.0
    assert float(lam(x, 0.0, reduction="sum")) == 3.0
    assert anonymous.spec.name == "lambda"
    with pytest.raises(pickle.PicklingError, match="cannot pickle custom loss 'cube'"):
        pickle.dumps(cube)
    with pytest.raises(pickle.PicklingError, match="module level"):
        pickle.dumps(lam)


def test_module_level_custom_loss_pickles_by_reference():
    assert pickle.loads(pickle.dumps(charbonnier)) is charbonnier


def test_check_grad_finds_a_wrong_gradient_and_where():
    @fl.pointwise
    def wrong(pred, target):
        d = pred - target
        return d * d, 2.0 * d + (1.0 if d > 1.5 else 0.0)

    p = np.linspace(-1.0, 2.0, 13)
    res = fl.check_grad(wrong, p, np.zeros(13))
    assert not res.ok
    assert res.input == "pred" and p[res.index] > 1.5
    assert fl.check_grad(charbonnier, p, np.zeros(13), delta=0.7).ok


# -- the disk cache ---------------------------------------------------------------------------------

MODULE = '''
import math
import fastloss as fl

SCALE = {scale}


@fl.pointwise
def scaled_cosh(pred, target):
    d = pred - target
    return SCALE * (math.cosh(d) - 1.0), SCALE * math.sinh(d)


@fl.rowwise
def row_square(scores, target, grad):
    value = 0.0
    for j in range(scores.size):
        d = scores[j] - (1.0 if j == target else 0.0)
        value += d * d
        grad[j] = 2.0 * d
    return value
'''

PROBE = """
import json, pickle, sys
import numpy as np
import fastloss as fl
from userlosses import row_square, scaled_cosh
v = scaled_cosh(np.linspace(-1, 1, 101), 0.0, reduction="sum")
drv = fl.kinds.KINDS["pointwise"].driver(scaled_cosh.spec)
r = row_square(np.eye(3), np.array([0, 1, 1]), reduction="sum")
row_drv = fl.kinds.KINDS["rowwise"].driver(row_square.spec, "ser")
again = pickle.loads(pickle.dumps(scaled_cosh))
print(json.dumps({"value": float(v), "hits": sum(drv.stats.cache_hits.values()),
                  "misses": sum(drv.stats.cache_misses.values()), "same": again is scaled_cosh,
                  "row_value": float(r), "row_hits": sum(row_drv.stats.cache_hits.values()),
                  "row_misses": sum(row_drv.stats.cache_misses.values())}))
"""


def _probe(tmp_path: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE)], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_custom_losses_in_a_module_are_cached_on_disk_and_recompiled_when_what_they_read_changes(tmp_path):
    module = tmp_path / "userlosses.py"
    module.write_text(MODULE.format(scale=1.0))
    first, second = _probe(tmp_path), _probe(tmp_path)
    assert first["misses"] == 1 and first["hits"] == 0
    assert second["hits"] == 1 and second["misses"] == 0  # loaded, not compiled
    assert first["value"] == second["value"] == pytest.approx(np.sum(np.cosh(np.linspace(-1, 1, 101)) - 1))
    assert first["same"] and second["same"]  # pickled by reference and found again in another process
    assert (first["row_misses"], first["row_hits"], second["row_misses"], second["row_hits"]) == (1, 0, 0, 1)
    assert first["row_value"] == second["row_value"] == 2.0  # row 2: (0 - 1)^2 + (1 - 0)^2
    # a module-level constant is frozen into the machine code: changing it must not reuse the cache
    module.write_text(MODULE.format(scale=2.0))
    third = _probe(tmp_path)
    assert third["misses"] == 1 and third["hits"] == 0
    assert third["row_hits"] == 1  # the rowwise loss reads nothing that changed: still cached
    assert third["value"] == pytest.approx(2.0 * first["value"], rel=1e-14)


# -- rowwise ------------------------------------------------------------------------------------


@fl.rowwise
def row_ce(logits, target, grad, smoothing=0.0):
    """Softmax cross entropy with label smoothing, one row at a time."""
    nc = logits.size
    m = logits.max()
    s = 0.0
    for j in range(nc):
        s += math.exp(logits[j] - m)
    lse = m + math.log(s)
    value = 0.0
    for j in range(nc):
        grad[j] = math.exp(logits[j] - m) / s - smoothing / nc
        value += smoothing / nc * (lse - logits[j])
    grad[target] -= 1.0 - smoothing
    return value + (1.0 - smoothing) * (lse - logits[target])


@fl.rowwise(targets="probs")
def soft_ce(logits, target, grad):
    m = logits.max()
    s = 0.0
    for j in range(logits.size):
        s += math.exp(logits[j] - m)
    lse = m + math.log(s)
    value = 0.0
    total = 0.0
    for j in range(logits.size):
        value += target[j] * (lse - logits[j])
        total += target[j]
    for j in range(logits.size):
        grad[j] = total * math.exp(logits[j] - m) / s - target[j]
    return value


def row_ce_ref(x, y, smoothing=0.0, w=None):
    """float64 NumPy reference: per-row losses and per-row gradients (unreduced, class weights applied)."""
    x = np.asarray(x, np.float64)
    nc = x.shape[1]
    lse = np.log(np.sum(np.exp(x - x.max(1, keepdims=True)), 1)) + x.max(1)
    t = np.full(x.shape, smoothing / nc)
    t[np.arange(len(y)), y] += 1.0 - smoothing
    values = np.sum(t * (lse[:, None] - x), 1)
    grads = np.exp(x - lse[:, None]) - t
    wr = np.ones(len(y)) if w is None else w[y]
    return values * wr, grads * wr[:, None]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_rowwise_matches_the_numpy_reference(reduction):
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 3, size=(30, 6)), rng.integers(0, 6, size=30)
    w = rng.uniform(0.5, 2.0, size=6)
    for kw in ({}, {"smoothing": 0.2}, {"weight": w}):
        vals, grads = row_ce_ref(x, y, kw.get("smoothing", 0.0), kw.get("weight"))
        denom = {"mean": np.sum(w[y]) if "weight" in kw else len(y), "sum": 1.0, "none": 1.0}[reduction]
        want_v = vals if reduction == "none" else np.sum(vals) / denom
        v, g = row_ce.value_and_grad(x, y, reduction=reduction, **kw)
        np.testing.assert_allclose(v, want_v, rtol=1e-12)
        np.testing.assert_allclose(g, grads / denom, rtol=1e-11, atol=1e-15)
        np.testing.assert_array_equal(row_ce(x, y, reduction=reduction, **kw), v)
    # the built-in cross entropy, through the same driver, agrees
    bv, bg = fl.cross_entropy.value_and_grad(x, y, label_smoothing=0.2)
    v, g = row_ce.value_and_grad(x, y, smoothing=0.2)
    np.testing.assert_allclose(v, bv, rtol=1e-13)
    np.testing.assert_allclose(g, bg, rtol=1e-11, atol=1e-16)


def test_rowwise_axis_ignore_index_float32_and_in_place():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 7, 5)).astype(np.float32)  # classes on axis 1
    y = rng.integers(0, 7, size=(4, 5))
    y[1, 2] = -100
    v, g = row_ce.value_and_grad(x, y, axis=1)
    assert v.dtype == np.float32 and g.dtype == np.float32 and g.shape == x.shape
    xm, ym = np.moveaxis(x, 1, -1).reshape(-1, 7), y.reshape(-1)
    keep = ym != -100
    vals, grads = row_ce_ref(xm[keep], ym[keep])
    np.testing.assert_allclose(v, np.mean(vals), rtol=1e-5)
    gm = np.moveaxis(g, 1, -1).reshape(-1, 7)
    np.testing.assert_array_equal(gm[~keep], 0.0)
    np.testing.assert_allclose(gm[keep], grads / keep.sum(), rtol=1e-4, atol=1e-7)
    x2 = rng.normal(size=(9, 4))
    y2 = rng.integers(0, 4, size=9)
    want = row_ce.grad(x2, y2)
    buf = x2.copy()
    _, g2 = row_ce.value_and_grad(buf, y2, out=buf)
    assert g2 is buf
    np.testing.assert_array_equal(g2, want)


def test_rowwise_probability_targets():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 5))
    t = rng.dirichlet(np.ones(5), size=12)
    v, g = soft_ce.value_and_grad(x, t, reduction="sum")
    bv, bg = fl.cross_entropy.value_and_grad(x, t, reduction="sum")
    np.testing.assert_allclose(v, bv, rtol=1e-12)
    np.testing.assert_allclose(g, bg, rtol=1e-11, atol=1e-15)
    with pytest.raises(TypeError, match="no class weights"):
        soft_ce(x, t, weight=np.ones(5))
    assert fl.check_grad(soft_ce, x, t).ok


def test_rowwise_labels_validated_and_signature():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"row_ce: target\[1\] = 4 is not a class index in \[0, 4\)"):
        row_ce(x, np.array([0, 4, 1]))
    sig = inspect.signature(row_ce)
    assert list(sig.parameters)[:2] == ["logits", "target"]  # the gradient buffer is not an argument
    assert {"smoothing", "ignore_index", "axis", "weight", "reduction"} <= set(sig.parameters)
    assert row_ce.__doc__.startswith("Softmax cross entropy with label smoothing")
    assert pickle.loads(pickle.dumps(row_ce)) is row_ce
    assert fl.check_grad(row_ce, np.random.default_rng(8).normal(size=(6, 5)), np.arange(6) % 5, smoothing=0.1).ok


def test_rowwise_bit_identical_for_any_thread_count():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(20_000, 12)).astype(np.float32), rng.integers(0, 12, size=20_000)
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            runs.append(row_ce.value_and_grad(x, y, stats=True))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (v1, g1, s1), (v2, g2, s2) = runs
    assert v1.tobytes() == v2.tobytes() and s1 == s2
    np.testing.assert_array_equal(g1, g2)


def test_rowwise_errors_name_the_function_at_first_call():
    @fl.rowwise
    def broken_row(logits, target, grad):
        return undefined_row_helper(logits), 0.0  # noqa: F821

    with pytest.raises(TypeError) as info:
        broken_row(np.zeros((2, 3)), np.array([0, 1]))
    assert "broken_row" in str(info.value) and "undefined_row_helper" in str(info.value)

    @fl.rowwise
    def tuple_row(logits, target, grad):
        return 1.0, 2.0

    with pytest.raises(TypeError, match=r"tuple_row .* must return the row's loss \(one number\)"):
        tuple_row(np.zeros((2, 3)), np.array([0, 1]))

    def f(logits, target):
        return 0.0

    with pytest.raises(TypeError, match=r"takes \(row, target, grad\)"):
        fl.rowwise(f)
    with pytest.raises(TypeError, match="'axis' is reserved"):
        fl.rowwise(lambda logits, target, grad, axis=0: 0.0, name="with_axis")
    with pytest.raises(ValueError, match="targets must be"):
        fl.rowwise(lambda logits, target, grad: 0.0, name="bad_targets", targets="labels")


def test_rowwise_names_are_not_reused():
    # the rowwise kind keeps compiled drivers per name: a second function under a used name is refused
    with pytest.raises(ValueError, match="already exists"):
        fl.rowwise(lambda logits, target, grad: 0.0, name="row_ce")
    with pytest.raises(ValueError, match="already exists"):
        fl.rowwise(lambda logits, target, grad: 0.0, name="cross_entropy")
