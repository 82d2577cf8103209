"""LightGBM custom objectives and metrics from fastloss losses.

::

    import fastloss.lightgbm as fll

    booster = lgb.train({"objective": fll.objective("huber", delta=1.0)}, train_set,
                        feval=fll.metric("huber", delta=1.0))
    model = lgb.LGBMRegressor(objective=fll.objective("huber", delta=1.0)).fit(X, y, sample_weight=w)

The objective returns, per sample, the gradient and the Hessian of ``w_i * loss(pred_i, label_i)``
with respect to the raw score (``fastloss.<loss>.grad_hess(..., weight=w, reduction="sum")``): the
sample weights of the ``Dataset`` (``get_weight()``) or of ``fit(sample_weight=...)`` are applied
here, as LightGBM expects of a custom objective. Both signatures LightGBM 4 uses are accepted:
``f(preds, dataset)`` for ``lgb.train`` and ``f(y_true, y_pred, weight)`` for the scikit-learn
wrappers. The Hessian convention is the loss's own (see its docstring): the true second derivative,
or 1 where that is zero almost everywhere (``mae``, ``quantile``, ``hinge``), as scikit-learn's
``gradient_hessian`` does. Pointwise losses and ``cross_entropy`` (multi-class margins
``(n, classes)``, float labels read as class indices) on the CPU; LightGBM itself is not imported.
"""

from __future__ import annotations

from . import _boosting
from ._api import Loss

__all__ = ["Metric", "Objective", "metric", "objective"]

_ADAPTER = "fastloss.lightgbm"


class Objective(_boosting.Objective):
    """A custom objective for ``lgb.train`` and the scikit-learn wrappers (see :func:`objective`)."""

    adapter = _ADAPTER

    def __call__(self, a, b, weight=None):
        """``(preds, dataset)`` from ``lgb.train``, or ``(y_true, y_pred, weight)`` from a wrapper."""
        return self.grad_hess(a, b, weight)


class Metric(_boosting.Metric):
    """A custom metric for ``lgb.train(feval=...)`` and the wrappers' ``eval_metric`` (see :func:`metric`)."""

    adapter = _ADAPTER

    def __call__(self, a, b, weight=None):
        """``(name, value, is_higher_better)`` for ``(preds, dataset)`` or ``(y_true, y_pred, weight)``."""
        return self.__name__, self.mean(a, b, weight), False


def objective(loss: str | Loss, **params) -> Objective:
    """A LightGBM custom objective: the per-sample gradient and Hessian of a fastloss loss.

    Parameters
    ----------
    loss : str or Loss
        A loss name (``"huber"``) or a loss with a declared Hessian (pointwise losses, ``cross_entropy``).
    **params
        The loss's hyper-parameters, checked now, and optionally ``hess_floor`` (clip the Hessian
        from below, for losses whose second derivative can be zero or negative).

    Returns
    -------
    Objective
        ``f(preds, dataset) -> (grad, hess)`` for ``lgb.train({"objective": f}, ...)``, also usable as
        ``LGBMRegressor(objective=f)`` (``f(y_true, y_pred, weight=None)``).

    Raises
    ------
    NotImplementedError
        The loss has no Hessian yet.
    """
    return Objective(loss, params)


def metric(loss: str | Loss, **params) -> Metric:
    """A LightGBM custom metric: the (sample-weighted) mean of a fastloss loss.

    Returns
    -------
    Metric
        ``m(preds, dataset)`` for ``lgb.train(..., feval=m)``, also a wrapper's ``eval_metric``
        (``m(y_true, y_pred, weight=None)``): ``(name, value, is_higher_better=False)``.
    """
    return Metric(loss, params)
