"""Regression losses on residuals ``pred - target``."""

from __future__ import annotations

import math

from .._api import family
from .._compile import inline_helper
from .._config import FASTMATH
from .._kernels.mathfn import exp, expm1, log1p, softplus, tanh
from .._spec import Input, Interval, Param, Properties
from ._common import sigmoid_curvature, sign, unit_curvature, unit_hessian

PRED = Input("pred", "Predictions.", differentiable=True)
TARGET = Input("target", "Targets, broadcastable to ``pred``.")
LN2 = math.log(2.0)
#: the regression losses: ``pred`` against ``target``, per element
_residual = family("pointwise", inputs=(PRED, TARGET))


def _away_from(*kinks):
    """``fd_safe`` for kinks of the residual at ``+-k`` (parameter names) and at 0."""

    def safe(inputs, params, h):
        import numpy as np

        d = np.asarray(inputs[0], dtype=float) - np.asarray(inputs[1], dtype=float)
        ok = np.abs(d) > 4 * h
        for k in kinks:
            ok &= np.abs(np.abs(d) - params[k]) > 4 * h
        return ok

    return safe


def _mse(pred, target):
    d = pred - target
    return d * d, 2.0 * d


def _mse_hess(pred, target):
    d = pred - target
    return 2.0 if d == d else d


mse = _residual(
    "mse", _mse,
    hessian=_mse_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = 2",
    summary="Mean squared error.",
    formula=r"\ell(x, y) = (x - y)^2",
    gradient=r"\partial \ell / \partial x = 2 (x - y)",
    reference="Gauss, C. F. (1809). Theoria motus corporum coelestium (method of least squares).",
    equivalents={"PyTorch": "torch.nn.functional.mse_loss", "optax": "optax.losses.squared_error",
                 "scikit-learn": "HalfSquaredError (half of this loss)"},
    semantics="Matches ``torch.nn.functional.mse_loss`` for every reduction.",
    properties=Properties("regression", "high (quadratic)", "linear in the residual, unbounded",
                          "Gaussian noise, mean regression", "low"),
    example="""
    >>> pred, target = np.array([0.5, 2.0, -1.0]), np.zeros(3)
    >>> float(fl.mse(pred, target))
    1.75
    >>> fl.mse.grad(pred, target)
    array([ 0.33333333,  1.33333333, -0.66666667])
    """,
)


def _mae(pred, target):
    d = pred - target
    return abs(d), sign(d)


def _mae_hess(pred, target):
    return unit_curvature(pred - target)


mae = _residual(
    "mae", _mae,
    **unit_hessian(_mae_hess),
    summary="Mean absolute error (L1 loss).",
    formula=r"\ell(x, y) = |x - y|",
    gradient=r"\partial \ell / \partial x = \operatorname{sign}(x - y)\quad(0 \text{ at } x = y)",
    reference="Laplace, P.-S. (1774). Mémoire sur la probabilité des causes par les événements.",
    equivalents={"PyTorch": "torch.nn.functional.l1_loss", "scikit-learn": "AbsoluteError"},
    semantics="Matches ``torch.nn.functional.l1_loss``, including the zero subgradient at 0.",
    properties=Properties("regression", "low", "constant magnitude (sign)", "median regression, robust fits", "low"),
    fd_safe=_away_from(),
    example="""
    >>> round(float(fl.mae(np.array([0.5, 2.0, -1.0]), np.zeros(3))), 6)
    1.166667
    """,
)


def _huber(pred, target, delta):
    # branch-free: g = clip(d, -delta, delta) is the gradient (NaN stays NaN), and g (d - g/2) is
    # 0.5 d^2 inside and delta (|d| - delta/2) outside, bit for bit; two selects in all
    d = pred - target
    g = -delta if d < -delta else d
    g = delta if g > delta else g
    return g * (d - 0.5 * g), g


def _huber_hess(pred, target, delta):
    a = abs(pred - target)
    return 1.0 if a <= delta else (0.0 if a > delta else a)


huber = _residual(
    "huber", _huber,
    hessian=_huber_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = [|d| \le \delta]",
    hessian_note="1 inside the quadratic zone (``|d| <= delta``), 0 outside: the true second derivative where it exists, as scikit-learn's ``gradient_hessian`` for ``HuberLoss`` gives.",
    params=(Param("delta", 1.0, "Threshold between the quadratic and linear regimes", Interval(0.0, math.inf, (False, False))),),
    summary="Huber loss: quadratic near zero, linear beyond ``delta``.",
    formula=r"\ell = \begin{cases} \tfrac12 d^2 & |d| < \delta \\ \delta (|d| - \tfrac12 \delta) & \text{otherwise} \end{cases},\quad d = x - y",
    gradient=r"\partial \ell / \partial x = \operatorname{clip}(d, -\delta, \delta)",
    reference="Huber, P. J. (1964). Robust Estimation of a Location Parameter. Ann. Math. Statist. 35(1).",
    equivalents={"PyTorch": "torch.nn.functional.huber_loss", "optax": "optax.losses.huber_loss",
                 "scikit-learn": "HuberLoss"},
    semantics="Matches ``torch.nn.functional.huber_loss(input, target, delta=delta)``.",
    properties=Properties("regression", "low (linear tails)", "bounded by delta", "regression with outliers", "low"),
    fd_safe=_away_from("delta"),
    example="""
    >>> round(float(fl.huber(np.array([0.5, 2.0, -1.0]), np.zeros(3), delta=1.0)), 6)
    0.708333
    """,
)


def _smooth_l1(pred, target, beta):
    d = pred - target
    a = abs(d)
    inside = a < beta
    value = 0.5 * d * d / beta if inside else a - 0.5 * beta
    grad = d / beta if inside else sign(d)
    return value, grad


def _smooth_l1_hess(pred, target, beta):
    a = abs(pred - target)
    return 1.0 / beta if a < beta else (0.0 if a >= beta else a)


smooth_l1 = _residual(
    "smooth_l1", _smooth_l1,
    hessian=_smooth_l1_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = [|d| < \beta] / \beta",
    hessian_note='0 outside the quadratic zone: the true second derivative where it exists.',
    params=(Param("beta", 1.0, "Width of the quadratic region (0 gives the L1 loss)", Interval(0.0, math.inf, (True, False)),
                  special=(0.0,)),),
    summary="Smooth L1 loss: Huber loss divided by ``beta``.",
    formula=r"\ell = \begin{cases} \tfrac{1}{2\beta} d^2 & |d| < \beta \\ |d| - \tfrac12 \beta & \text{otherwise} \end{cases}",
    gradient=r"\partial \ell / \partial x = \operatorname{clip}(d / \beta, -1, 1)",
    reference="Girshick, R. (2015). Fast R-CNN. ICCV.",
    equivalents={"PyTorch": "torch.nn.functional.smooth_l1_loss"},
    semantics="Matches ``torch.nn.functional.smooth_l1_loss(input, target, beta=beta)``, including ``beta=0``.",
    properties=Properties("regression", "low", "bounded by 1", "bounding-box regression", "low"),
    fd_safe=_away_from("beta"),
    example="""
    >>> float(fl.smooth_l1(np.array([0.5, 2.0]), np.zeros(2), beta=1.0))
    0.8125
    """,
)


#: Below this |d| log_cosh uses its small-residual form (both are within 3 ulp around it).
LOG_COSH_SMALL = 0.75


def _log_cosh(pred, target):
    d = pred - target
    a = abs(d)
    # log(cosh d) = |d| + log1p(exp(-2|d|)) - log 2: no overflow for large |d|; softplus(-2|d|) is
    # that log1p(exp(-2|d|)), and shares its exp(-2|d|) with tanh
    large = a + softplus(-2.0 * a) - LN2
    # For small |d| the three terms above cancel to ~d^2/2, leaving only the rounding of log 2
    # (122% error at d = 1e-8). There log cosh d = -log(1 - tanh^2 d) / 2 from the gradient's
    # tanh: t^2 is accurate relative to itself and log1p adds nothing that cancels while
    # t^2 < 0.42 (|d| < 0.75); measured within 3 ulp of the exact value. It costs one log1p
    # (log1p(u^2 / (2 + 2u)) with u = expm1(|d|) is as accurate but costs an expm1 more).
    t = tanh(d)
    small = -0.5 * log1p(-(t * t))
    return (small if a < LOG_COSH_SMALL else large), t


def _log_cosh_hess(pred, target):
    # 1 - tanh^2 d = 1 / cosh^2 d = 4 e / (1 + e)^2 with e = exp(-2|d|): accurate where tanh^2 rounds to 1
    return 4.0 * sigmoid_curvature(2.0 * (pred - target))


log_cosh = _residual(
    "log_cosh", _log_cosh,
    hessian=_log_cosh_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = 1 - \tanh^2(x - y)",
    summary="Log-cosh loss: smooth, quadratic near zero and linear in the tails.",
    formula=r"\ell = \log\cosh(x - y)",
    gradient=r"\partial \ell / \partial x = \tanh(x - y)",
    reference="Chen, P., Chen, G., Zhang, S. (2019). Log Hyperbolic Cosine Loss Improves Variational Auto-Encoder. ICLR OpenReview.",
    equivalents={"optax": "optax.losses.log_cosh", "TensorFlow": "tf.keras.losses.log_cosh"},
    semantics="Matches ``optax.losses.log_cosh``; stable for any residual.",
    properties=Properties("regression", "low", "smooth, bounded by 1", "smooth robust regression", "medium (exp)"),
    example="""
    >>> round(float(fl.log_cosh(np.array([0.0, 1.0]), np.zeros(2))), 6)
    0.21689
    """,
)


# the contract flag only: with the kernels' ``reassoc``, LLVM factors ``t/2 - p/2`` back into ``(t - p)/2``
_exact = inline_helper({"contract"})


@_exact
def _scaled_residual(target, pred):
    """``(s (target - pred), s)`` with ``s = 1``, or ``1/2`` where ``target - pred`` overflows.

    The difference of finite inputs of opposite signs near the float64 limit (1e308 and -1e308)
    overflows although a loss that is a fraction of it does not; the difference of the halves
    does not (halving is exact for the large input; a bit lost by a subnormal one is far below
    the result's ulp).
    """
    d = target - pred
    s = 0.5 if abs(d) == math.inf else 1.0
    return target * s - pred * s, s


def _quantile(pred, target, q):
    d, s = _scaled_residual(target, pred)
    above = d > 0.0
    grad = -q if above else 1.0 - q
    # divided back by s: overflows only where the true value does
    return (q * d if above else (q - 1.0) * d) / s, (grad if d == d else d)  # NaN residual -> NaN gradient


def _quantile_hess(pred, target, q):
    return unit_curvature(pred - target)


quantile = _residual(
    "quantile", _quantile,
    **unit_hessian(_quantile_hess),
    params=(Param("q", 0.5, "Quantile level", Interval(0.0, 1.0, (False, False))),),
    summary="Quantile (pinball) loss.",
    formula=r"\ell = \max\bigl(q (y - x), (q - 1)(y - x)\bigr)",
    gradient=r"\partial \ell / \partial x = -q \text{ if } y > x \text{ else } 1 - q",
    reference="Koenker, R., Bassett, G. (1978). Regression Quantiles. Econometrica 46(1).",
    equivalents={"scikit-learn": "PinballLoss (sklearn.metrics.mean_pinball_loss)"},
    semantics="Matches scikit-learn's ``PinballLoss`` (gradient ``1 - q`` where ``y == x``).",
    properties=Properties("regression", "low", "constant (two levels)", "prediction intervals, quantile regression", "low"),
    fd_safe=_away_from(),
    example="""
    >>> float(fl.quantile(np.array([0.0, 2.0]), np.array([1.0, 1.0]), q=0.9))
    0.5
    """,
)


def _robust(pred, target, alpha, scale):
    x = pred - target
    inv_c2 = 1.0 / (scale * scale)
    z = x * x * inv_c2
    dz = x * inv_c2
    # The cases (alpha = 2: L2, 0: Cauchy, -inf: Welsch, otherwise the general form) as selects
    # over shared calls, each with the same argument as in its own case: no early returns (the
    # driver loop vectorises) and one log1p, exp and expm1 per element instead of one per case.
    welsch = math.isinf(alpha)
    b = abs(alpha - 2.0)
    t = log1p(z / b)  # for alpha = 0, b = 2 and this is Cauchy's log1p(z / 2)
    e = exp(-0.5 * z if welsch else (0.5 * alpha - 1.0) * t)
    m = expm1(-0.5 * z if welsch else 0.5 * alpha * t)
    # expm1 keeps the general value accurate for alpha near 0, where the plain formula cancels
    value = -m if welsch else b / alpha * m
    grad = dz * e
    value = t if alpha == 0.0 else value
    grad = dz / (0.5 * z + 1.0) if alpha == 0.0 else grad
    value = 0.5 * z if alpha == 2.0 else value
    grad = dz if alpha == 2.0 else grad
    return value, grad



def _robust_hess(pred, target, alpha, scale):
    # d/dx [x/c^2 (z/b + 1)^(alpha/2 - 1)] = (z/b + 1)^(alpha/2 - 1) / c^2 (1 + (alpha - 2) z / (z + b))
    x = pred - target
    inv_c2 = 1.0 / (scale * scale)
    z = x * x * inv_c2
    welsch = math.isinf(alpha)
    b = abs(alpha - 2.0)
    e = exp(-0.5 * z if welsch else (0.5 * alpha - 1.0) * log1p(z / b))
    k = 1.0 - z if welsch else 1.0 + (alpha - 2.0) * z / (z + b)
    h = inv_c2 * e * k
    return (inv_c2 if x == x else x) if alpha == 2.0 else h

robust = _residual(
    "robust", _robust,
    hessian=_robust_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = \frac{1}{c^2} \Big(\frac{z}{|\alpha - 2|} + 1\Big)^{\alpha/2 - 1} \Big(1 + \frac{(\alpha - 2)\, z}{z + |\alpha - 2|}\Big),\quad z = (x - y)^2 / c^2",
    hessian_note=("The true second derivative, negative for large residuals when ``alpha < 2`` (the loss is "
                  "concave there): pass ``hess_floor=`` where a booster needs positive Hessians."),
    params=(
        Param("alpha", 1.0, "Shape: 2 is L2, 1 pseudo-Huber, 0 Cauchy, -2 Geman-McClure, -inf Welsch",
              Interval(-math.inf, math.inf, (True, False)), special=(2.0, 0.0, -math.inf, -2.0, 1e-7, 2.0 - 1e-7)),
        Param("scale", 1.0, "Scale c of the quadratic bowl near zero", Interval(0.0, math.inf, (False, False))),
    ),
    summary="Barron's general and adaptive robust loss.",
    formula=r"\ell = \frac{|\alpha - 2|}{\alpha}\left[\left(\frac{(d/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2} - 1\right]"
            r"\ \text{with limits } \tfrac12 (d/c)^2\ (\alpha{=}2),\ \log(\tfrac12 (d/c)^2 + 1)\ (\alpha{=}0),"
            r"\ 1 - e^{-\frac12 (d/c)^2}\ (\alpha{=}-\infty)",
    gradient=r"\partial \ell / \partial x = \frac{d}{c^2}\left(\frac{(d/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2 - 1}",
    reference="Barron, J. T. (2019). A General and Adaptive Robust Loss Function. CVPR.",
    equivalents={"reference code": "google-research/robust_loss (general.lossfun)"},
    semantics="Matches Barron's ``lossfun(x, alpha, scale)`` including its limits alpha = 2, 0 and -inf.",
    properties=Properties("regression", "tunable: from high (alpha=2) to none (alpha<=0)",
                          "bounded for alpha<=1, redescending for alpha<0", "robust fitting with unknown noise", "medium"),
    example="""
    >>> round(float(fl.robust(np.array([3.0]), np.zeros(1), alpha=0.0)), 6)
    1.704748
    """,
)


@inline_helper(set(FASTMATH))
def _pseudo_huber_root(u):
    """``sqrt(1 + u^2)``, without the overflow of ``u^2`` past 1e154 (where it is ``|u|`` in any case)."""
    a = abs(u)
    return math.sqrt(1.0 + u * u) if a < 1e150 else a


def _pseudo_huber(pred, target, delta):
    # delta^2 (sqrt(1 + u^2) - 1) as delta^2 u^2 / (sqrt(1 + u^2) + 1): no cancellation for small u
    u = (pred - target) / delta
    r = _pseudo_huber_root(u)
    return delta * delta * u * (u / (r + 1.0)), delta * u / r


def _pseudo_huber_hess(pred, target, delta):
    r = _pseudo_huber_root((pred - target) / delta)
    return 1.0 / (r * r * r)


pseudo_huber = _residual(
    "pseudo_huber", _pseudo_huber,
    hessian=_pseudo_huber_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = \big(1 + (d / \delta)^2\big)^{-3/2}",
    params=(Param("delta", 1.0, "Scale of the residual where the loss turns from quadratic to linear",
                  Interval(0.0, math.inf, (False, False))),),
    summary="Pseudo-Huber loss: a smooth Huber loss, quadratic near zero and linear in the tails.",
    formula=r"\ell = \delta^2 \left(\sqrt{1 + (d / \delta)^2} - 1\right),\quad d = x - y",
    gradient=r"\partial \ell / \partial x = d \big/ \sqrt{1 + (d / \delta)^2}",
    reference="Charbonnier, P., Blanc-Féraud, L., Aubert, G., Barlaud, M. (1997). Deterministic edge-preserving "
              "regularization in computed imaging. IEEE Trans. Image Processing 6(2).",
    equivalents={"XGBoost": "reg:pseudohubererror (huber_slope = delta)"},
    semantics="Value, gradient and Hessian of XGBoost's ``reg:pseudohubererror`` with ``huber_slope=delta``.",
    properties=Properties("regression", "low (linear tails)", "bounded by delta, smooth", "robust regression, boosting",
                          "low"),
    example="""
    >>> round(float(fl.pseudo_huber(np.array([0.5, 2.0, -1.0]), np.zeros(3))), 6)
    0.589439
    """,
)
