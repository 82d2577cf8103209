"""What the gradient-boosting adapters share: a loss resolved once, its per-sample gradient and
Hessian (or mean value) for predictions, labels and sample weights, and both call signatures.

Boosting libraries want the derivatives of the *sum* of the per-sample losses, each multiplied by its
sample weight (a custom objective applies the weights itself): ``grad_hess(..., weight=w,
reduction="sum")``. Their metrics report the weighted mean. XGBoost and LightGBM call a custom
function either natively, ``f(predictions, data)`` with ``data.get_label()`` / ``data.get_weight()``,
or from their scikit-learn wrappers, ``f(y_true, y_pred, weight)``; one callable serves both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._api import Loss
from ._registry import REGISTRY, get


def resolve(adapter: str, loss: str | Loss, params: dict[str, Any], *, second_order: bool) -> Loss:
    """The :class:`Loss` for a name or a loss, with ``params`` checked now (not at the first round)."""
    if isinstance(loss, str):
        loss = get(loss)
    if not isinstance(loss, Loss):
        raise TypeError(f"{adapter}: expected a loss name or a fastloss Loss, got {type(loss).__name__}")
    spec = loss.spec
    if len(spec.inputs) < 2 or not spec.inputs[0].differentiable or len(spec.differentiable) != 1:
        raise ValueError(f"{adapter}: {spec.name} is not a loss of (prediction, label) with one differentiable input")
    if second_order and (spec.hessian is None or not getattr(loss._kind, "hessians", False)):
        with_hessians = sorted(n for n, other in REGISTRY.items() if other.spec.hessian is not None)
        raise NotImplementedError(f"{adapter}: {spec.name} has no Hessian yet; losses with one: "
                                  + ", ".join(with_hessians))
    loss._bind((None,) * len(spec.inputs), dict(params), with_out=False)  # raises for a bad parameter
    return loss


def _weight(w) -> np.ndarray | None:
    w = None if w is None else np.asarray(w)
    return None if w is None or w.size == 0 else w


class _Custom:
    """A loss with its parameters, called the native way or the scikit-learn wrappers' way."""

    adapter = "fastloss"

    def __init__(self, loss: str | Loss, params: dict[str, Any], *, second_order: bool):
        self.loss = resolve(self.adapter, loss, params, second_order=second_order)
        self.params = params
        self.__name__ = self.loss.spec.name

    def _args(self, a, b, weight):
        """``(predictions, labels, weights)`` from ``(predictions, data)`` or ``(y_true, y_pred, weight)``.

        Multi-class margins come as ``(n, classes)`` with one label per row, stored as floats by the
        libraries: those become the class indices a softmax loss takes (integral values only).
        """
        if hasattr(b, "get_label"):
            preds, labels, w = a, b.get_label(), b.get_weight()
        else:
            preds, labels, w = b, a, weight
        if np.ndim(preds) == 2 and np.ndim(labels) == 1:
            labels = np.asarray(labels)
            if labels.dtype.kind == "f":
                classes = labels.astype(np.int64)
                if not np.array_equal(classes, labels):
                    raise ValueError(f"{self.adapter}: multi-class labels must be class indices 0, 1, ...; "
                                     f"got {labels[classes != labels][:3]}")
                labels = classes
        return preds, labels, _weight(w)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loss.spec.name!r}, **{self.params!r})"


class Objective(_Custom):
    """The per-sample gradient and Hessian of ``w_i * loss(pred_i, label_i)``."""

    def __init__(self, loss: str | Loss, params: dict[str, Any]):
        params = dict(params)
        #: the Hessian's lower clip (``grad_hess``'s ``hess_floor``), for losses with negative curvature
        self.hess_floor = params.pop("hess_floor", None)
        super().__init__(loss, params, second_order=True)

    def grad_hess(self, a, b, weight) -> tuple[np.ndarray, np.ndarray]:
        preds, labels, w = self._args(a, b, weight)
        return self.loss.grad_hess(preds, labels, weight=w, reduction="sum", hess_floor=self.hess_floor,
                                   **self.params)


class Metric(_Custom):
    """The (sample-weighted) mean loss."""

    def __init__(self, loss: str | Loss, params: dict[str, Any]):
        super().__init__(loss, params, second_order=False)

    def mean(self, a, b, weight) -> float:
        preds, labels, w = self._args(a, b, weight)
        return float(self.loss(preds, labels, weight=w, reduction="mean", **self.params))
