"""``fastloss.xgboost`` and ``fastloss.lightgbm``: custom objectives and metrics.

The adapters are checked on their own (both call signatures, weights, errors) and then inside real
boosters: a fastloss objective must grow the same trees as the library's built-in objective with the
same gradient and Hessian (logistic loss), from the same base margin.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import fastloss as fl
import fastloss.lightgbm as fll
import fastloss.xgboost as flx


class Data:
    """What the adapters read of an ``xgboost.DMatrix`` / ``lightgbm.Dataset``."""

    def __init__(self, labels, weights=None):
        self.labels = labels
        self.weights = np.empty(0) if weights is None else weights

    def get_label(self):
        return self.labels

    def get_weight(self):
        return self.weights


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2.0, size=n)


@pytest.mark.parametrize("module", [flx, fll])
def test_objective_is_the_weighted_per_sample_grad_hess(module):
    pred, label, w = _data()
    obj = module.objective("huber", delta=0.5)
    want = fl.huber.grad_hess(pred, label, delta=0.5, weight=w, reduction="sum")
    for got in (obj(pred, Data(label, w)), obj(label, pred, w)):  # native, then scikit-learn order
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    unweighted = fl.huber.grad_hess(pred, label, delta=0.5, reduction="sum")
    for got in (obj(pred, Data(label)), obj(label, pred)):
        np.testing.assert_array_equal(got[0], unweighted[0])
        np.testing.assert_array_equal(got[1], unweighted[1])


@pytest.mark.parametrize("module", [flx, fll])
def test_objective_hess_floor(module):
    pred, label = np.array([-8.0, 0.0, 3.0]), np.array([1.0, 1.0, 0.0])
    g, h = module.objective("sigmoid_focal", hess_floor=1e-6)(pred, Data(label))
    want = fl.sigmoid_focal.grad_hess(pred, label, reduction="sum", hess_floor=1e-6)
    np.testing.assert_array_equal(g, want[0])
    np.testing.assert_array_equal(h, want[1])
    assert h.min() >= 1e-6


def test_wrappers_see_the_weight_parameter():
    # XGBoost's wrapper passes weights only to a function with a ``sample_weight`` parameter;
    # LightGBM's passes (y_true, y_pred, weight) to a function of three parameters
    assert "sample_weight" in inspect.signature(flx.objective("mse")).parameters
    assert len(inspect.signature(fll.objective("mse")).parameters) == 3


def test_metrics_are_the_weighted_mean():
    pred, label, w = _data()
    want = float(fl.mae(pred, label, weight=w))
    assert flx.metric("mae")(pred, Data(label, w)) == ("mae", want)
    assert flx.metric("mae")(label, pred, sample_weight=w) == want
    assert fll.metric("mae")(pred, Data(label, w)) == ("mae", want, False)
    assert fll.metric("mae")(label, pred, w) == ("mae", want, False)


@pytest.mark.parametrize("module", [flx, fll])
def test_bad_losses_and_parameters_are_refused_at_once(module):
    with pytest.raises(NotImplementedError, match="no Hessian"):
        module.objective("softmax_focal")
    with pytest.raises(NotImplementedError, match="no Hessian"):
        module.objective("kl_divergence")
    with pytest.raises(ValueError, match="one differentiable input"):
        module.objective("gaussian_nll")
    with pytest.raises(ValueError, match="delta"):
        module.objective("huber", delta=-1.0)
    with pytest.raises(TypeError):
        module.objective("huber", nonsense=1.0)
    with pytest.raises(KeyError):
        module.objective("no_such_loss")


def _classification(n=400, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + rng.normal(scale=0.5, size=n) > 0.5).astype(np.float64)
    w = rng.uniform(0.5, 2.0, size=n)
    return X, y, w


def test_xgboost_grows_the_trees_of_its_own_logistic_objective():
    xgb = pytest.importorskip("xgboost")
    X, y, w = _classification()
    margin = np.zeros(len(y))
    params = {"tree_method": "hist", "max_depth": 3, "eta": 0.3, "seed": 0, "nthread": 1}
    runs = []
    for obj in (None, flx.objective("binary_cross_entropy")):
        d = xgb.DMatrix(X, label=y, weight=w, base_margin=margin)
        p = dict(params, objective="binary:logistic") if obj is None else params
        booster = xgb.train(p, d, num_boost_round=10, obj=obj)
        runs.append(booster.predict(xgb.DMatrix(X, base_margin=margin), output_margin=True))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-5)


def test_xgboost_wrapper_with_sample_weights_and_metric():
    xgb = pytest.importorskip("xgboost")
    X, y, w = _classification()
    target = X[:, 0] * 2 + y
    model = xgb.XGBRegressor(objective=flx.objective("huber", delta=1.0), n_estimators=20, max_depth=3,
                             eval_metric=flx.metric("huber", delta=1.0), n_jobs=1)
    model.fit(X, target, sample_weight=w, eval_set=[(X, target)], sample_weight_eval_set=[w], verbose=False)
    history = model.evals_result()["validation_0"]["huber"]
    assert history[-1] < 0.5 * history[0]


def test_lightgbm_grows_the_trees_of_its_own_binary_objective():
    lgb = pytest.importorskip("lightgbm")
    X, y, w = _classification()
    params = {"num_leaves": 8, "learning_rate": 0.3, "verbose": -1, "num_threads": 1, "seed": 0,
              "deterministic": True, "force_row_wise": True}
    runs = []
    for obj in ("binary", fll.objective("binary_cross_entropy")):
        train = lgb.Dataset(X, label=y, weight=w, init_score=np.zeros(len(y)))
        booster = lgb.train(dict(params, objective=obj, boost_from_average=False), train, num_boost_round=10)
        runs.append(booster.predict(X, raw_score=True))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6, atol=1e-6)


def test_lightgbm_wrapper_with_sample_weights_and_metric():
    lgb = pytest.importorskip("lightgbm")
    X, y, w = _classification()
    target = X[:, 0] * 2 + y
    model = lgb.LGBMRegressor(objective=fll.objective("huber", delta=1.0), n_estimators=20, num_leaves=8,
                              verbose=-1, n_jobs=1)
    model.fit(X, target, sample_weight=w, eval_X=(X,), eval_y=(target,), eval_sample_weight=[w],
              eval_metric=fll.metric("huber", delta=1.0))
    history = model.evals_result_["training"]["huber"]
    assert history[-1] < 0.5 * history[0]


def _multiclass(n=300, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.argmax(X[:, :3] + rng.normal(scale=0.5, size=(n, 3)), axis=1).astype(np.float64)  # floats, as stored
    return X, y


@pytest.mark.parametrize("module", [flx, fll])
def test_multiclass_objective_takes_float_labels_as_class_indices(module):
    rng = np.random.default_rng(3)
    margins, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    g, h = module.objective("cross_entropy")(margins, Data(labels.astype(np.float32)))
    want = fl.cross_entropy.grad_hess(margins, labels, reduction="sum")
    np.testing.assert_array_equal(g, want[0])
    np.testing.assert_array_equal(h, want[1])
    with pytest.raises(ValueError, match="class indices"):
        module.objective("cross_entropy")(margins, Data(np.full(50, 0.5)))


def test_multiclass_boosting_with_cross_entropy():
    xgb = pytest.importorskip("xgboost")
    lgb = pytest.importorskip("lightgbm")
    X, y = _multiclass()
    d = xgb.DMatrix(X, label=y)
    booster = xgb.train({"num_class": 3, "tree_method": "hist", "max_depth": 3, "nthread": 1}, d,
                        num_boost_round=15, obj=flx.objective("cross_entropy"))
    margins = booster.predict(d, output_margin=True)
    assert margins.shape == (300, 3)
    start = float(fl.cross_entropy(np.zeros((300, 3)), y.astype(np.int64)))
    assert float(fl.cross_entropy(margins, y.astype(np.int64))) < 0.6 * start
    model = lgb.train({"objective": fll.objective("cross_entropy"), "num_class": 3, "verbose": -1, "num_threads": 1},
                      lgb.Dataset(X, label=y), num_boost_round=15)
    raw = model.predict(X, raw_score=True)
    assert float(fl.cross_entropy(raw, y.astype(np.int64))) < 0.6 * start
