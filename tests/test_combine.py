"""``fl.combine``: weighted multi-task totals, per-term values, summed gradients; ``l1`` / ``l2`` terms."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fastloss as fl


def softmax_ce_ref(logits, y):
    """float64 NumPy reference of mean softmax cross entropy and its gradient."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    value = -np.mean(np.log(p[np.arange(n), y]))
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    return value, g / n


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return {
        "logits": rng.normal(size=(16, 5)),
        "labels": rng.integers(0, 5, size=16),
        "pred": rng.normal(size=(16, 3)),
        "target": rng.normal(size=(16, 3)),
        "w": rng.normal(size=(5, 3)),
    }


def test_total_values_and_gradients_match_numpy(batch):
    b = batch
    objective = fl.combine({
        "ce": (fl.cross_entropy, 1.0),
        "aux": (fl.mse, 0.1),
        "reg": (fl.l2, 1e-2, {"reduction": "sum"}),
        "sparse": (fl.l1, 1e-3, {"reduction": "sum"}),
    })
    res = objective.value_and_grad(ce=(b["logits"], b["labels"]), aux=(b["pred"], b["target"]),
                                   reg=b["w"], sparse=(b["w"],))
    ce_v, ce_g = softmax_ce_ref(b["logits"], b["labels"])
    d = b["pred"] - b["target"]
    mse_v, mse_g = np.mean(d**2), 2 * d / d.size
    l2_v, l1_v = 0.5 * np.sum(b["w"] ** 2), np.sum(np.abs(b["w"]))
    np.testing.assert_allclose(res.values["ce"], ce_v, rtol=1e-12)
    np.testing.assert_allclose(res.values["aux"], mse_v, rtol=1e-12)
    np.testing.assert_allclose(res.values["reg"], l2_v, rtol=1e-12)
    np.testing.assert_allclose(res.values["sparse"], l1_v, rtol=1e-12)
    np.testing.assert_allclose(res.total, ce_v + 0.1 * mse_v + 1e-2 * l2_v + 1e-3 * l1_v, rtol=1e-12)
    assert isinstance(res.total, np.float64)
    np.testing.assert_allclose(res.grads["ce"], ce_g, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(res.grads["aux"], 0.1 * mse_g, rtol=1e-12)
    # two terms take the same array object: one summed gradient, shared by both entries
    want_w = 1e-2 * b["w"] + 1e-3 * np.sign(b["w"])
    np.testing.assert_allclose(res.grads["reg"], want_w, rtol=1e-12)
    assert res.grads["reg"] is res.grads["sparse"] is res.grad_of(b["w"])
    assert res.grad_of(b["logits"]) is res.grads["ce"]
    assert float(objective(ce=(b["logits"], b["labels"]), aux=(b["pred"], b["target"]),
                           reg=b["w"], sparse=b["w"])) == pytest.approx(float(res.total), rel=1e-15)
    # unpacks like value_and_grad
    total, values, grads = res
    assert total == res.total and values is res.values and grads is res.grads


def test_shared_prediction_between_two_terms_sums_gradients(batch):
    p, t = batch["pred"], batch["target"]
    objective = fl.combine({"fit": (fl.mse, 2.0), "robust": (fl.huber, 0.5, {"delta": 0.3})})
    res = objective.value_and_grad({"fit": (p, t), "robust": {"pred": p, "target": t}})
    d = p - t
    want = 2.0 * 2 * d / d.size + 0.5 * np.clip(d, -0.3, 0.3) / d.size
    np.testing.assert_allclose(res.grad_of(p), want, rtol=1e-12)
    assert res.grads["fit"] is res.grads["robust"]
    # an equal copy is another input: its gradient is not summed with p's
    res2 = objective.value_and_grad(fit=(p, t), robust=(p.copy(), t))
    np.testing.assert_allclose(res2.grads["fit"], 2.0 * 2 * d / d.size, rtol=1e-12)


def test_multi_gradient_term_and_call_time_keywords():
    rng = np.random.default_rng(1)
    m, y, var = rng.normal(size=20), rng.normal(size=20), rng.uniform(0.5, 2, size=20)
    objective = fl.combine({"nll": (fl.gaussian_nll, 0.5), "reg": fl.l2})
    res = objective.value_and_grad(nll=(m, y, var), reg={"x": m, "reduction": "sum"})
    gm, gv = fl.gaussian_nll.grad(m, y, var)
    assert isinstance(res.grads["nll"], tuple) and len(res.grads["nll"]) == 2
    np.testing.assert_allclose(res.grads["nll"][0], 0.5 * gm + m, rtol=1e-12)  # m is shared with reg
    np.testing.assert_allclose(res.grads["nll"][1], 0.5 * gv, rtol=1e-12)
    np.testing.assert_allclose(res.values["reg"], 0.5 * np.sum(m**2), rtol=1e-12)


def test_weights_can_change_between_calls(batch):
    p, t = batch["pred"], batch["target"]
    objective = fl.combine({"fit": (fl.mse, 1.0)})
    g1 = objective.value_and_grad(fit=(p, t)).grads["fit"].copy()
    objective.weights["fit"] = 0.25
    np.testing.assert_allclose(objective.value_and_grad(fit=(p, t)).grads["fit"], 0.25 * g1, rtol=1e-15)
    objective.weights["fit"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        objective(fit=(p, t))


def test_inputs_are_not_modified(batch):
    p, t = batch["pred"], batch["target"]
    p0, t0 = p.copy(), t.copy()
    fl.combine({"a": (fl.mse, 3.0), "b": (fl.l2, 0.5)}).value_and_grad(a=(p, t), b=p)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(t, t0)


def test_float32_terms(batch):
    p, t = batch["pred"].astype(np.float32), batch["target"].astype(np.float32)
    res = fl.combine({"fit": (fl.mse, 0.5), "reg": (fl.l2, 0.1)}).value_and_grad(fit=(p, t), reg=p)
    assert res.grad_of(p).dtype == np.float32 and res.values["fit"].dtype == np.float32
    want = 0.5 * 2 * (p - t) / p.size + 0.1 * p / p.size
    np.testing.assert_allclose(res.grad_of(p), want, rtol=1e-5)


def test_custom_loss_in_a_combination(batch):
    @fl.pointwise
    def cubic(pred, target):
        d = pred - target
        return abs(d) ** 3, 3.0 * d * abs(d)

    p, t = batch["pred"], batch["target"]
    res = fl.combine({"c": (cubic, 2.0, {"reduction": "sum"})}).value_and_grad(c=(p, t))
    np.testing.assert_allclose(res.grads["c"], 2.0 * 3 * (p - t) * np.abs(p - t), rtol=1e-12)


@pytest.mark.parametrize(
    ("terms", "match"),
    [
        ({}, "non-empty"),
        ({"a": fl.mse.grad}, "must be a loss"),
        ({"a": (fl.mse, "heavy")}, "finite number"),
        ({"a": (fl.mse, 1.0, {"out": None})}, "cannot fix"),
        ({"stats": fl.mse}, "identifier other than"),
        ({"a b": fl.mse}, "identifier"),
    ],
)
def test_bad_declarations(terms, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fl.combine(terms)


def test_bad_calls(batch):
    p, t = batch["pred"], batch["target"]
    objective = fl.combine({"fit": fl.mse, "reg": fl.l2})
    with pytest.raises(TypeError, match=r"missing arguments for term\(s\) \['reg'\]"):
        objective.value_and_grad(fit=(p, t))
    with pytest.raises(TypeError, match="unknown term"):
        objective.value_and_grad(fit=(p, t), reg=p, extra=p)
    with pytest.raises(TypeError, match="given twice"):
        objective.value_and_grad({"fit": (p, t)}, fit=(p, t), reg=p)
    with pytest.raises(ValueError, match="reduction='none'"):
        objective.value_and_grad(fit={"pred": p, "target": t, "reduction": "none"}, reg=p)
    with pytest.raises(TypeError, match="cannot take"):
        objective.value_and_grad(fit={"pred": p, "target": t, "out": p}, reg=p)
    with pytest.raises(KeyError, match="not a differentiable input"):
        objective.value_and_grad(fit=(p, t), reg=p).grad_of(t)


def test_regularisers_match_their_definitions():
    x = np.array([[0.5, -2.0, 0.0], [3.0, -0.25, 1.0]])
    np.testing.assert_allclose(fl.l1(x, reduction="sum"), np.sum(np.abs(x)))
    np.testing.assert_allclose(fl.l2(x, reduction="sum"), 0.5 * np.sum(x**2))
    np.testing.assert_allclose(fl.l2(x), 0.5 * np.mean(x**2))
    np.testing.assert_array_equal(fl.l1.grad(x, reduction="sum"), np.sign(x))  # 0 at 0
    np.testing.assert_array_equal(fl.l2.grad(x, reduction="sum"), x)
    assert fl.check_grad(fl.l2, x, reduction="sum").ok
    assert fl.check_grad(fl.l1, x).skipped == 1  # the kink at 0


def test_docstring_examples_run():
    for obj in (fl.combine, fl.check_grad):
        test = doctest.DocTestParser().get_doctest(obj.__doc__, {}, obj.__name__, None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert test.examples and runner.failures == 0
