"""Binary classification losses on logits / scores."""

from __future__ import annotations

import math

from .._api import family
from .._compile import inline_helper
from .._config import FASTMATH

# mathfn's pow (not ``**``): a libm call per element would keep the driver loop scalar
from .._kernels.mathfn import exp, pow, sigmoid, softplus_sigmoid
from .._spec import Discrete, Input, Interval, Param, Properties
from ._common import sigmoid_curvature, unit_curvature, unit_hessian

LOGITS = Input("pred", "Logits (unnormalised scores).", differentiable=True)
PROB_TARGET = Input("target", "Target probabilities (0/1 labels or soft labels).", Interval(0.0, 1.0))
SIGN_TARGET = Input("target", "Labels in {-1, +1} (``0`` is read as -1).", Discrete((-1.0, 0.0, 1.0)))

#: losses of a logit against a target probability
_on_logits = family("pointwise", inputs=(LOGITS, PROB_TARGET))
#: margin losses of a decision score against a label in {-1, +1}
_margin = family(
    "pointwise",
    inputs=(Input("pred", "Decision scores.", differentiable=True), SIGN_TARGET),
    params=(Param("margin", 1.0, "Margin", Interval(0.0, math.inf)),),
    semantics="Labels ``{0, 1}`` are accepted and read as ``{-1, +1}``; other values raise ``ValueError``.",
)


# pieces shared by the kernels below, inlined into them
_piece = inline_helper(set(FASTMATH))


@_piece
def _bce_terms(pred, target, pos_weight):
    # pos_weight * y * softplus(-x) + (1 - y) * softplus(x): stable for any logit
    sp, spn, p = softplus_sigmoid(pred)
    value = pos_weight * target * spn + (1.0 - target) * sp
    grad = (1.0 - target) * p - pos_weight * target * (1.0 - p)
    return value, grad


def _bce(pred, target, pos_weight):
    return _bce_terms(pred, target, pos_weight)


def _bce_pos_weights(pred, target, pos_weight):
    # pos_weight given as an array: an input of its own kernel (the scalar form keeps its own)
    return _bce_terms(pred, target, pos_weight)


def _bce_hess(pred, target, pos_weight):
    return sigmoid_curvature(pred) * (pos_weight * target + 1.0 - target)


binary_cross_entropy = _on_logits(
    "binary_cross_entropy", _bce,
    hessian=_bce_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = \sigma(x)\,(1 - \sigma(x))\,(p\, y + 1 - y)",
    hessian_note="With ``pos_weight = 1`` this is scikit-learn's ``gradient_hessian`` for ``HalfBinomialLoss``: ``p (1 - p)``.",
    params=(Param("pos_weight", 1.0, "Weight of the positive term: a scalar, or an array broadcastable to "
                  "``target`` (e.g. one weight per class, shape ``(C,)``, in multi-label training)",
                  Interval(0.0, math.inf), array=True),),
    options={"array_kernel": _bce_pos_weights, "array_hessian": _bce_hess},
    summary="Binary cross entropy on logits (sigmoid + log loss, computed stably).",
    formula=r"\ell = -\left[p_w\, y \log \sigma(x) + (1 - y) \log(1 - \sigma(x))\right]"
            r" = p_w\, y\, \operatorname{softplus}(-x) + (1 - y) \operatorname{softplus}(x)",
    gradient=r"\partial \ell / \partial x = (1 - y)\,\sigma(x) - p_w\, y\,(1 - \sigma(x))",
    reference="Cox, D. R. (1958). The regression analysis of binary sequences. JRSS B 20(2).",
    equivalents={"PyTorch": "torch.nn.functional.binary_cross_entropy_with_logits",
                 "optax": "optax.losses.sigmoid_binary_cross_entropy", "scikit-learn": "HalfBinomialLoss"},
    semantics=("Matches ``torch.nn.functional.binary_cross_entropy_with_logits``, including an array "
               "``pos_weight`` broadcast against the target (it may not enlarge the loss's shape)."),
    properties=Properties("binary / multi-label classification", "medium", "bounded in (-p_w, 1)",
                          "probabilistic classifiers, multi-label outputs", "medium (exp, log)"),
    example="""
    >>> round(float(fl.binary_cross_entropy(np.array([2.0, -1.0]), np.array([1.0, 0.0]))), 6)
    0.220095
    """,
)


@_piece
def _focal_base(pred, target):
    """``p - y``, the cross entropy, ``m = 1 - p_t`` and ``dm / dx``, accurate for any logit.

    ``1 - p`` is never formed from ``p``: once ``sigmoid(x)`` is within an ulp of 1 (x > 17) it
    cancels (1.5% error in the loss at x = 30, 0 from x = 37); ``q = sigmoid(-x)`` is computed
    directly (its ``e^-|x|`` is the one ``softplus_sigmoid`` computes). Hard labels take their
    terms as selects: the general sums would let the driver's ``reassoc`` flag form ``0 * inf``
    (NaN) at infinite logits, where the loss's limit is ``+inf``.
    """
    sp, spn, p = softplus_sigmoid(pred)
    q = sigmoid(-pred)
    pos = target == 1.0
    neg = target == 0.0
    ce = spn if pos else (sp if neg else target * spn + (1.0 - target) * sp)
    # m = p (1 - y) + q y and p - y = p (1 - y) - q y: no cancellation for y in [0, 1]
    m = q if pos else (p if neg else p * (1.0 - target) + q * target)
    r = -q if pos else (p if neg else p * (1.0 - target) - q * target)
    dm = p * q * (1.0 - 2.0 * target)
    return r, ce, m, dm


@_piece
def _focal_finish(r, target, ce, mg, dmg, alpha):
    """Value and gradient from ``r = p - y``, ``mg = m^gamma`` and ``dmg = d(m^gamma)/dx``, alpha-weighted."""
    value = ce * mg
    # ce * dmg -> 0 as |x| -> inf (dmg decays like e^-|x|, ce grows like |x|): at an infinite
    # logit dmg is 0 and ce inf, and the product is that limit, not NaN
    grad = r * mg + (ce * dmg if dmg != 0.0 else 0.0)
    if alpha >= 0.0:
        a = alpha * target + (1.0 - alpha) * (1.0 - target)
        value *= a
        grad *= a
    return value, grad


def _sigmoid_focal(pred, target, alpha, gamma):
    r, ce, m, dm = _focal_base(pred, target)
    mg = pow(m, gamma)
    # m^(gamma - 1) as m^gamma / m (m > 0 here): one pow per element instead of two
    dmg = gamma * (mg / m) * dm if (gamma != 0.0 and m > 0.0) else 0.0
    return _focal_finish(r, target, ce, mg, dmg, alpha)


def _sigmoid_focal_gamma2(pred, target, alpha, gamma):
    # gamma = 2, the default and the paper's choice: m^2 exactly, and no pow to compile or to run
    r, ce, m, dm = _focal_base(pred, target)
    return _focal_finish(r, target, ce, m * m, 2.0 * m * dm, alpha)



def _sigmoid_focal_hess(pred, target, alpha, gamma):
    # loss a ce M with M = m^gamma: hess = a (ce'' M + 2 ce' M' + ce M''), ce' = r = p - y,
    # ce'' = p q, m' = p q (1 - 2y), m'' = m' (q - p); M' and M'' are taken relative to m
    # (M m'/m, M (m'/m)^2, M m''/m), finite wherever m > 0
    r, ce, m, dm = _focal_base(pred, target)
    p = sigmoid(pred)
    q = sigmoid(-pred)
    mg = pow(m, gamma)
    d1 = 0.0
    d2 = 0.0
    if gamma != 0.0 and m > 0.0:
        u = dm / m
        d1 = gamma * mg * u
        d2 = gamma * mg * ((gamma - 1.0) * u * u + u * (q - p))
    h = p * q * mg + 2.0 * r * d1 + (ce * d2 if d2 != 0.0 else 0.0)
    if alpha >= 0.0:
        h *= alpha * target + (1.0 - alpha) * (1.0 - target)
    return h

sigmoid_focal = _on_logits(
    "sigmoid_focal", _sigmoid_focal,
    hessian=_sigmoid_focal_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = a_t \big(p (1 - p)\, m^\gamma + 2 (p - y) (m^\gamma)' + \mathrm{CE}\, (m^\gamma)''\big),\quad m = 1 - p_t",
    hessian_note=("The true second derivative, negative where a prediction is confidently wrong and the loss "
                  "bends towards linear (``gamma > 0``): pass ``hess_floor=`` (e.g. 1e-6) where a booster needs "
                  "positive Hessians."),
    options={"kernel_for": lambda params: _sigmoid_focal_gamma2 if params["gamma"] == 2.0 else _sigmoid_focal},
    params=(
        Param("alpha", 0.25, "Weight of positives (negative: no weighting)", Interval(-math.inf, 1.0), special=(-1.0,)),
        Param("gamma", 2.0, "Focusing exponent", Interval(0.0, math.inf), special=(0.0, 0.5)),
    ),
    summary="Sigmoid focal loss: binary cross entropy down-weighted on easy examples.",
    formula=r"\ell = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{BCE}(x, y),\quad p = \sigma(x),\ "
            r"p_t = p y + (1 - p)(1 - y),\ \alpha_t = \alpha y + (1 - \alpha)(1 - y)",
    gradient=r"\partial \ell / \partial x = \alpha_t\left[(p - y)(1 - p_t)^{\gamma} + \gamma\,\mathrm{BCE}\,(1 - p_t)^{\gamma - 1} p (1 - p)(1 - 2y)\right]",
    reference="Lin, T.-Y., Goyal, P., Girshick, R., He, K., Dollár, P. (2017). Focal Loss for Dense Object Detection. ICCV.",
    equivalents={"torchvision": "torchvision.ops.sigmoid_focal_loss", "optax": "optax.losses.sigmoid_focal_loss"},
    semantics=("Matches ``torchvision.ops.sigmoid_focal_loss`` (``alpha < 0`` disables the alpha weighting); note that "
               "fastloss's default reduction is ``mean`` where torchvision's is ``none``."),
    properties=Properties("binary / multi-label classification", "low (easy examples down-weighted)",
                          "vanishes on well-classified examples", "dense detection, class imbalance", "medium"),
    example="""
    >>> round(float(fl.sigmoid_focal(np.array([2.0, -1.0]), np.array([1.0, 0.0]))), 6)
    0.008722
    """,
)


def _hinge(pred, target, margin):
    y = 1.0 if target > 0.0 else -1.0
    m = margin - y * pred
    active = not (m <= 0.0)  # true for NaN, so that NaN propagates
    return (m if active else 0.0), ((-y if m == m else m) if active else 0.0)


def _margin_safe(inputs, params, h):
    import numpy as np

    y = np.where(np.asarray(inputs[1]) > 0, 1.0, -1.0)
    return np.abs(params["margin"] - y * np.asarray(inputs[0], dtype=float)) > 4 * h


def _hinge_hess(pred, target, margin):
    return unit_curvature(pred)


hinge = _margin(
    "hinge", _hinge,
    **unit_hessian(_hinge_hess),
    summary="Hinge loss of a binary classifier.",
    formula=r"\ell = \max(0, m - y x),\quad y \in \{-1, +1\}",
    gradient=r"\partial \ell / \partial x = -y \text{ if } y x < m \text{ else } 0",
    reference="Cortes, C., Vapnik, V. (1995). Support-vector networks. Machine Learning 20(3).",
    equivalents={"optax": "optax.losses.hinge_loss", "scikit-learn": "sklearn.metrics.hinge_loss"},
    properties=Properties("binary classification", "low (linear)", "constant or zero", "linear SVMs, max-margin", "low"),
    fd_safe=_margin_safe,
    example="""
    >>> float(fl.hinge(np.array([0.5, -2.0]), np.array([1, 0])))
    0.25
    """,
)


def _squared_hinge(pred, target, margin):
    y = 1.0 if target > 0.0 else -1.0
    m = margin - y * pred
    active = not (m <= 0.0)  # true for NaN, so that NaN propagates
    return (m * m if active else 0.0), (-2.0 * y * m if active else 0.0)


def _squared_hinge_hess(pred, target, margin):
    y = 1.0 if target > 0.0 else -1.0
    m = margin - y * pred
    return 2.0 if m > 0.0 else (0.0 if m <= 0.0 else m)


squared_hinge = _margin(
    "squared_hinge", _squared_hinge,
    hessian=_squared_hinge_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = 2\,[m > 0]",
    hessian_note='0 where the margin is met: the true second derivative where it exists.',
    summary="Squared hinge loss of a binary classifier (differentiable at the margin).",
    formula=r"\ell = \max(0, m - y x)^2,\quad y \in \{-1, +1\}",
    gradient=r"\partial \ell / \partial x = -2 y \max(0, m - y x)",
    reference="Lee, C.-P., Lin, C.-J. (2013). A Study on L2-Loss (Squared Hinge-Loss) Multiclass SVM. Neural Computation 25(5).",
    equivalents={"TensorFlow": "tf.keras.losses.squared_hinge", "scikit-learn": "LinearSVC(loss='squared_hinge')"},
    properties=Properties("binary classification", "medium (quadratic)", "linear in the margin violation",
                          "L2-SVMs", "low"),
    example="""
    >>> float(fl.squared_hinge(np.array([0.5, -2.0]), np.array([1, 0])))
    0.125
    """,
)


@_piece
def _exponential_terms(pred, target):
    # hard labels as selects: y e^-x + (1 - y) e^x would form 0 * inf (NaN) at an infinite logit
    a = exp(-pred)
    b = exp(pred)
    pos = target == 1.0
    neg = target == 0.0
    value = a if pos else (b if neg else target * a + (1.0 - target) * b)
    slope = -a if pos else (b if neg else (1.0 - target) * b - target * a)
    return value, slope


def _exponential(pred, target):
    return _exponential_terms(pred, target)


def _exponential_hess(pred, target):
    return _exponential_terms(pred, target)[0]  # the loss is its own second derivative


exponential = _on_logits(
    "exponential", _exponential,
    hessian=_exponential_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = y\, e^{-x} + (1 - y)\, e^{x} = \ell",
    summary="Exponential loss (AdaBoost) of a binary classifier's score.",
    formula=r"\ell(x, y) = y\, e^{-x} + (1 - y)\, e^{x},\quad y \in [0, 1]",
    gradient=r"\partial \ell / \partial x = -y\, e^{-x} + (1 - y)\, e^{x}",
    reference="Freund, Y., Schapire, R. E. (1997). A decision-theoretic generalization of on-line learning and an "
              "application to boosting. J. Computer and System Sciences 55(1).",
    equivalents={"scikit-learn": "ExponentialLoss (GradientBoostingClassifier(loss=\"exponential\"))"},
    semantics=("Labels in {0, 1} (soft labels in [0, 1] mix the two terms), as scikit-learn's ``ExponentialLoss``: "
               "``exp(-x)`` for positives, ``exp(x)`` for negatives; value, gradient and Hessian match it."),
    properties=Properties("binary classification", "high (exponential)", "exponential in the margin",
                          "boosting (AdaBoost)", "medium (exp)"),
    example="""
    >>> round(float(fl.exponential(np.array([2.0, -1.0]), np.array([1.0, 0.0]))), 6)
    0.251607
    """,
)
