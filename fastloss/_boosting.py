"""What the gradient-boosting adapters share: a loss resolved once, and its per-sample gradient and
Hessian (or mean value) for labels, predictions and sample weights.

Boosting libraries want the derivatives of the *sum* of the per-sample losses, each multiplied by its
sample weight (a custom objective applies the weights itself): ``grad_hess(..., weight=w,
reduction="sum")``. Their metrics report the weighted mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._api import Loss
from ._registry import get


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
        raise NotImplementedError(
            f"{adapter}: {spec.name} has no Hessian yet; losses with one: "
            + ", ".join(n for n in sorted(_with_hessians()))
        )
    loss._bind((None,) * len(spec.inputs), dict(params), with_out=False)  # raises for a bad parameter
    return loss


def _with_hessians() -> list[str]:
    from ._registry import REGISTRY

    return [n for n, loss in REGISTRY.items() if loss.spec.hessian is not None]


def _weight(w) -> np.ndarray | None:
    w = None if w is None else np.asarray(w)
    return None if w is None or w.size == 0 else w


def grad_hess(loss: Loss, params: dict[str, Any], preds, labels, weight) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradient and Hessian of ``weight_i * loss(preds_i, labels_i)``."""
    return loss.grad_hess(preds, labels, weight=_weight(weight), reduction="sum", **params)


def mean_value(loss: Loss, params: dict[str, Any], preds, labels, weight) -> float:
    """The (weighted) mean loss."""
    return float(loss(preds, labels, weight=_weight(weight), reduction="mean", **params))
