"""fastloss: compiled, fused loss-and-gradient kernels for NumPy arrays (and CUDA arrays).

Every loss is a callable object::

    import fastloss as fl
    loss = fl.huber(pred, target, delta=1.0)                 # the loss
    g = fl.huber.grad(pred, target, delta=1.0)               # its gradient
    loss, g = fl.huber.value_and_grad(pred, target, out=pred)  # both, one pass, in place

``fastloss.REGISTRY`` maps names to losses; each loss's declaration is ``loss.spec``.
"""

from __future__ import annotations

from . import _cache, _startup, _threading

__version__ = "0.1.0"
_cache.configure(__version__)  # before any cache=True kernel exists: kernels go to a per-user cache
_threading.configure()  # must precede the first parallel kernel
_startup.defer_blas_check()  # before Numba's first call imports SciPy for it

from . import kinds  # noqa: E402,F401  (register the kinds)
from ._api import Loss  # noqa: E402
from ._buffers import buffer_cache, empty_cache  # noqa: E402
from ._combine import Combined, CombinedResult, combine  # noqa: E402
from ._gradcheck import GradCheck, check_grad  # noqa: E402
from ._registry import REGISTRY, get, names  # noqa: E402
from ._stats import GradStats  # noqa: E402
from ._threading import threading_layer  # noqa: E402
from .custom import CustomLoss, pointwise, rowwise  # noqa: E402
from .device import cuda_available  # noqa: E402
from .linear_ce import LinearCrossEntropy, linear_cross_entropy  # noqa: E402
from .losses import *  # noqa: E402,F403
from .losses.classification import binary_cross_entropy, exponential, hinge, sigmoid_focal, squared_hinge  # noqa: E402
from .losses.embedding import contrastive, cosine_embedding, info_nce, triplet_margin  # noqa: E402
from .losses.multiclass import (  # noqa: E402
    cross_entropy,
    generalized_cross_entropy,
    kl_divergence,
    multiclass_hinge,
    poly1_cross_entropy,
    softmax_focal,
)
from .losses.overlap import dice, giou, jaccard, tversky  # noqa: E402
from .losses.probabilistic import gamma, gaussian_nll, poisson_nll, tweedie  # noqa: E402
from .losses.ranking import bpr, margin_ranking  # noqa: E402
from .losses.regression import huber, log_cosh, mae, mse, pseudo_huber, quantile, robust, smooth_l1  # noqa: E402
from .losses.regularization import l1, l2  # noqa: E402

__all__ = [
    "REGISTRY",
    "Combined",
    "CombinedResult",
    "CustomLoss",
    "GradCheck",
    "GradStats",
    "LinearCrossEntropy",
    "Loss",
    "binary_cross_entropy",
    "bpr",
    "buffer_cache",
    "check_grad",
    "combine",
    "contrastive",
    "cosine_embedding",
    "cross_entropy",
    "cuda_available",
    "dice",
    "empty_cache",
    "exponential",
    "gamma",
    "gaussian_nll",
    "generalized_cross_entropy",
    "get",
    "giou",
    "hinge",
    "huber",
    "info_nce",
    "jaccard",
    "kl_divergence",
    "l1",
    "l2",
    "linear_cross_entropy",
    "log_cosh",
    "mae",
    "margin_ranking",
    "mse",
    "multiclass_hinge",
    "names",
    "pointwise",
    "poisson_nll",
    "poly1_cross_entropy",
    "pseudo_huber",
    "quantile",
    "robust",
    "rowwise",
    "sigmoid_focal",
    "smooth_l1",
    "softmax_focal",
    "squared_hinge",
    "threading_layer",
    "triplet_margin",
    "tversky",
    "tweedie",
]
