"""fastloss: compiled, fused loss-and-gradient kernels for NumPy arrays (and CUDA arrays).

Every loss is a callable object::

    import fastloss as fl
    loss = fl.huber(pred, target, delta=1.0)                 # the loss
    g = fl.huber.grad(pred, target, delta=1.0)               # its gradient
    loss, g = fl.huber.value_and_grad(pred, target, out=pred)  # both, one pass, in place

``fastloss.REGISTRY`` maps names to losses; each loss's declaration is ``loss.spec``.
"""

from __future__ import annotations

from . import _threading

_threading.configure()  # must precede the first parallel kernel

from . import _pointwise  # noqa: E402,F401  (registers the pointwise kind)
from ._api import Loss  # noqa: E402
from ._registry import REGISTRY, get, names  # noqa: E402
from ._threading import threading_layer  # noqa: E402
from .losses import *  # noqa: E402,F403
from .losses.classification import binary_cross_entropy, hinge, sigmoid_focal, squared_hinge  # noqa: E402
from .losses.probabilistic import gaussian_nll, poisson_nll  # noqa: E402
from .losses.regression import huber, log_cosh, mae, mse, quantile, robust, smooth_l1  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "Loss",
    "binary_cross_entropy",
    "gaussian_nll",
    "get",
    "hinge",
    "huber",
    "log_cosh",
    "mae",
    "mse",
    "names",
    "poisson_nll",
    "quantile",
    "robust",
    "sigmoid_focal",
    "smooth_l1",
    "squared_hinge",
    "threading_layer",
]
