"""XGBoost custom objectives and metrics from fastloss losses.

::

    import fastloss.xgboost as flx

    booster = xgb.train(params, dtrain, obj=flx.objective("huber", delta=1.0),
                        custom_metric=flx.metric("huber", delta=1.0))
    model = xgb.XGBRegressor(objective=flx.objective("huber", delta=1.0)).fit(X, y)

The objective returns, per sample, the gradient and the Hessian of ``w_i * loss(pred_i, label_i)``
with respect to the raw margin (``fastloss.<loss>.grad_hess(..., weight=w, reduction="sum")``): the
sample weights of the ``DMatrix`` (``get_weight()``) or of the scikit-learn wrapper's ``fit`` are
applied here, as XGBoost expects of a custom objective. The Hessian convention is the loss's own (see
its docstring): the true second derivative, or 1 where that is zero almost everywhere (``mae``,
``quantile``, ``hinge``), as scikit-learn's ``gradient_hessian`` does. Pointwise losses and
``cross_entropy`` (multi-class margins ``(n, classes)``, float labels read as class indices) on the CPU;
XGBoost itself is not imported (anything with ``get_label()`` / ``get_weight()`` works).
"""

from __future__ import annotations

from . import _boosting
from ._api import Loss

__all__ = ["Metric", "Objective", "metric", "objective"]

_ADAPTER = "fastloss.xgboost"


class Objective(_boosting.Objective):
    """A custom objective for ``xgb.train(obj=...)`` and the scikit-learn wrappers (see :func:`objective`)."""

    adapter = _ADAPTER

    def __call__(self, a, b, sample_weight=None):
        """``(predt, dtrain)`` from ``xgb.train``, or ``(y_true, y_pred, sample_weight)`` from a wrapper."""
        return self.grad_hess(a, b, sample_weight)


class Metric(_boosting.Metric):
    """A custom metric for ``xgb.train(custom_metric=...)`` and the wrappers' ``eval_metric`` (see :func:`metric`)."""

    adapter = _ADAPTER

    def __call__(self, a, b, sample_weight=None):
        """``(predt, dtrain) -> (name, value)`` natively; ``(y_true, y_pred, sample_weight) -> value`` in a wrapper."""
        value = self.mean(a, b, sample_weight)
        return (self.__name__, value) if hasattr(b, "get_label") else value


def objective(loss: str | Loss, **params) -> Objective:
    """An XGBoost custom objective: the per-sample gradient and Hessian of a fastloss loss.

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
        ``obj(predt, dtrain) -> (grad, hess)`` for ``xgb.train(..., obj=obj)``, also usable as
        ``XGBRegressor(objective=obj)`` (``obj(y_true, y_pred, sample_weight=None)``).

    Raises
    ------
    NotImplementedError
        The loss has no Hessian yet.
    """
    return Objective(loss, params)


def metric(loss: str | Loss, **params) -> Metric:
    """An XGBoost custom metric: the (sample-weighted) mean of a fastloss loss.

    Returns
    -------
    Metric
        ``m(predt, dtrain) -> (name, value)`` for ``xgb.train(..., custom_metric=m)``, also usable as a
        wrapper's ``eval_metric`` (``m(y_true, y_pred, sample_weight=None) -> value``). Lower is better.
    """
    return Metric(loss, params)
