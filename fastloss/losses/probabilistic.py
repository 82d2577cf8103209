"""Negative log-likelihoods of count and Gaussian models."""

from __future__ import annotations

import math

import numpy as np

from .._api import family
from .._compile import inline_helper, scalar_kernel
from .._config import FASTMATH
from .._kernels.mathfn import exp, expm1, log, pow
from .._spec import Input, Interval, Param, Properties

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: negative log-likelihoods of an observation under a predicted distribution, per element
_nll = family("pointwise")


def _poisson_nll(pred, target, log_input, full, eps):
    # no early returns: a vectorised loop computes every arm of a branch and selects (LLVM does
    # not unswitch a loop this large on the parameters), so each arm is kept to one exp or log;
    # the CPU drivers compile the specialisations below instead, which have one arm
    if log_input != 0.0:
        e = exp(pred)
        value = e - target * pred
        grad = e - target
    else:
        value = pred - target * log(pred + eps)
        grad = 1.0 - target / (pred + eps)
    if full != 0.0:
        # Stirling approximation of log(target!), as in PyTorch (only where target > 1)
        lt = log(target)  # one log: log(2 pi target) = log(2 pi) + log(target)
        stirling = target * lt - target + (HALF_LOG_2PI + 0.5 * lt)
        value += stirling if target > 1.0 else 0.0
    return value, grad


_poisson_any = scalar_kernel(_poisson_nll)


def _poisson_fixed(log_input: bool, full: bool):
    """``_poisson_nll`` with ``log_input`` and ``full`` fixed: LLVM drops the arms not taken.

    The arguments stay those of ``_poisson_nll`` (the kind passes every parameter); the fixed
    values are frozen into the compiled kernel, so the vectorised loop computes one exp (or one
    log) per element instead of an exp and two logs.
    """
    li = 1.0 if log_input else 0.0
    fu = 1.0 if full else 0.0

    def poisson_nll_fixed(pred, target, log_input, full, eps):
        return _poisson_any(pred, target, li, fu, eps)

    return poisson_nll_fixed


_POISSON_FIXED = {(li, fu): _poisson_fixed(li, fu) for li in (False, True) for fu in (False, True)}

def _poisson_nll_hess(pred, target, log_input, full, eps):
    if log_input != 0.0:
        return exp(pred)
    q = pred + eps
    return target / (q * q)


poisson_nll = _nll(
    "poisson_nll", _poisson_nll,
    hessian=_poisson_nll_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = e^{x} \text{ (log input)},\quad y / (x + \epsilon)^2 \text{ otherwise}",
    hessian_note="With ``log_input=True`` this is the Hessian of scikit-learn's ``HalfPoissonLoss`` (``exp(x)``).",
    inputs=(
        Input("pred", "Predicted rate (log-rate when ``log_input``).", differentiable=True),
        Input("target", "Observed counts.", Interval(0.0, math.inf)),
    ),
    params=(
        Param("log_input", True, "Whether ``pred`` is the log of the rate", type=bool, special=(False,)),
        Param("full", False, "Add the Stirling term of log(target!)", type=bool, special=(True,)),
        Param("eps", 1e-8, "Added to the rate before the log when ``log_input`` is False",
              Interval(0.0, math.inf, (False, False))),
    ),
    domains=lambda params: {} if params["log_input"] else {"pred": Interval(0.0, math.inf, (False, False))},
    options={"kernel_for": lambda params: _POISSON_FIXED[bool(params["log_input"]), bool(params["full"])]},
    summary="Poisson negative log-likelihood.",
    formula=r"\ell = e^{x} - y x \ \ (\text{log input}),\qquad \ell = x - y \log(x + \epsilon)\ \ (\text{rate input})",
    gradient=r"\partial \ell / \partial x = e^{x} - y \ \ (\text{log input}),\qquad 1 - y / (x + \epsilon)",
    reference="McCullagh, P., Nelder, J. A. (1989). Generalized Linear Models, 2nd ed. Chapman & Hall.",
    equivalents={"PyTorch": "torch.nn.functional.poisson_nll_loss", "scikit-learn": "HalfPoissonLoss"},
    semantics="Matches ``torch.nn.functional.poisson_nll_loss`` including ``full`` (Stirling term where target > 1).",
    properties=Properties("count regression", "medium", "exponential in the log-rate", "event counts, rates", "medium (exp)"),
    example="""
    >>> round(float(fl.poisson_nll(np.array([0.0, 1.0]), np.array([1.0, 2.0]))), 6)
    0.859141
    """,
)


def _gaussian_nll(pred, target, var, full, eps):
    v = max(var, eps)
    d = pred - target
    inv = 1.0 / v
    value = 0.5 * (log(v) + d * d * inv)
    if full != 0.0:
        value += HALF_LOG_2PI
    return value, d * inv, 0.5 * inv * (1.0 - d * d * inv)


def _gaussian_var_shape(arrays):
    """PyTorch accepts ``var`` without the last dimension (one variance per sample)."""
    pred, target, var = arrays
    if var.ndim == pred.ndim - 1 and var.shape == pred.shape[:-1] and pred.ndim > 0:
        var = var[..., np.newaxis]
    if var.size and np.nanmin(var) < 0:
        raise ValueError("gaussian_nll: var has negative entries")
    return [pred, target, var]


def _gaussian_nll_hess(pred, target, var, full, eps):
    v = max(var, eps)
    d = pred - target
    inv = 1.0 / v
    return inv, inv * inv * (d * d * inv - 0.5)


gaussian_nll = _nll(
    "gaussian_nll", _gaussian_nll,
    hessian=_gaussian_nll_hess,
    hessian_formula=r"\partial^2 \ell / \partial \mu^2 = 1 / v,\quad \partial^2 \ell / \partial v^2 = (d^2 / v - \tfrac12) / v^2,\quad v = \max(\mathrm{var}, \epsilon)",
    hessian_note='The second derivative with respect to the variance is negative where ``d^2 < v / 2``: it is returned as it is.',
    inputs=(
        Input("pred", "Predicted means.", differentiable=True),
        Input("target", "Observations."),
        Input("var", "Predicted variances (non-negative; clamped below at ``eps``).",
              Interval(0.0, math.inf, (False, False)), differentiable=True),
    ),
    params=(
        Param("full", False, "Add the constant 0.5 log(2 pi)", type=bool, special=(True,)),
        Param("eps", 1e-6, "Lower clamp of ``var`` for stability", Interval(0.0, math.inf, (False, False))),
    ),
    summary="Gaussian negative log-likelihood with predicted variance (gradients for mean and variance).",
    formula=r"\ell = \tfrac12\left(\log v + \frac{(x - y)^2}{v}\right),\quad v = \max(\sigma^2, \epsilon)",
    gradient=r"\partial \ell / \partial x = \frac{x - y}{v},\qquad \partial \ell / \partial \sigma^2 = \tfrac12\left(\frac1v - \frac{(x - y)^2}{v^2}\right)",
    reference="Nix, D. A., Weigend, A. S. (1994). Estimating the mean and variance of the target probability distribution. ICNN.",
    equivalents={"PyTorch": "torch.nn.functional.gaussian_nll_loss"},
    semantics=("Matches ``torch.nn.functional.gaussian_nll_loss``: ``var`` may omit the last dimension, negative "
               "variances raise, and the clamp at ``eps`` passes the gradient through as PyTorch does."),
    properties=Properties("regression with uncertainty", "medium (down-weighted by variance)",
                          "scaled by 1/variance", "heteroscedastic regression", "medium (log)"),
    # the adapter's check sees host arrays only; the CUDA kind checks lower_bounds on the device
    options={"adapt_inputs": _gaussian_var_shape, "lower_bounds": {"var": 0.0}},
    # below eps the clamp makes the loss flat in var while PyTorch (and we) pass the gradient through
    fd_safe=lambda inputs, params, h: np.asarray(inputs[2]) > params["eps"] + 4 * h,
    example="""
    >>> loss, (g_mean, g_var) = fl.gaussian_nll.value_and_grad(np.array([1.0]), np.array([0.0]), np.array([2.0]))
    >>> round(float(loss), 6), float(g_mean[0]), float(g_var[0])
    (0.596574, 0.5, 0.125)
    """,
)


@inline_helper(set(FASTMATH))
def _gamma_deviance(v):
    """``e^v - 1 - v``, accurate for small ``|v|`` (series) where the difference cancels."""
    small = abs(v) < 1e-3
    series = v * v * (0.5 + v * (1.0 / 6.0 + v * (1.0 / 24.0 + v * (1.0 / 120.0))))
    return series if small else expm1(v) - v


def _gamma(pred, target):
    # half the gamma deviance on a log link, y e^-x + x - log y - 1, in terms of v = log y - x
    v = log(target) - pred
    return _gamma_deviance(v), -expm1(v)


def _gamma_hess(pred, target):
    return exp(log(target) - pred)


LOG_LINK = Input("pred", "Raw predictions on the log scale (the predicted mean is ``exp(pred)``).", differentiable=True)

gamma = _nll(
    "gamma", _gamma,
    hessian=_gamma_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = y\, e^{-x}",
    inputs=(LOG_LINK, Input("target", "Observed positive values.", Interval(0.0, math.inf, (False, True)))),
    summary="Half the gamma deviance, on a log link.",
    formula=r"\ell(x, y) = y\, e^{-x} + x - \log y - 1",
    gradient=r"\partial \ell / \partial x = 1 - y\, e^{-x}",
    reference="McCullagh, P., Nelder, J. A. (1989). Generalized Linear Models, 2nd ed. Chapman & Hall.",
    equivalents={"scikit-learn": "HalfGammaLoss (plus its constant, so the minimum is 0)", "XGBoost": "reg:gamma",
                 "LightGBM": "gamma"},
    semantics=("scikit-learn's ``HalfGammaLoss`` plus its ``constant_to_optimal_zero`` (``-log y - 1``): half the "
               "gamma deviance, 0 at ``exp(x) = y``; the gradient and Hessian are scikit-learn's."),
    properties=Properties("positive regression", "medium", "bounded above by 1", "claim sizes, durations, costs",
                          "medium (exp, log)"),
    example="""
    >>> round(float(fl.gamma(np.array([0.0, 1.0]), np.array([1.0, 2.0]))), 6)
    0.021306
    """,
)


def _tweedie(pred, target, power):
    # half the Tweedie deviance on a log link: exp(x (2-p)) / (2-p) - y exp(x (1-p)) / (1-p) plus
    # the constant y^(2-p) / ((1-p)(2-p)); p = 1 (Poisson) and p = 2 (gamma) have their own limits
    e1 = exp((1.0 - power) * pred)
    e2 = exp((2.0 - power) * pred)
    grad = e2 - target * e1
    ylog = target * log(target) if target > 0.0 else 0.0 * target  # 0 log 0 = 0 (NaN stays NaN)
    poisson = e2 - target * pred + ylog - target
    gamma = _gamma_deviance(log(target) - pred)
    general = e2 / (2.0 - power) - target * e1 / (1.0 - power) + pow(target, 2.0 - power) / (
        (1.0 - power) * (2.0 - power))
    value = poisson if power == 1.0 else (gamma if power == 2.0 else general)
    return value, grad


def _tweedie_hess(pred, target, power):
    return (2.0 - power) * exp((2.0 - power) * pred) - (1.0 - power) * target * exp((1.0 - power) * pred)


tweedie = _nll(
    "tweedie", _tweedie,
    hessian=_tweedie_hess,
    hessian_formula=r"\partial^2 \ell / \partial x^2 = (2 - p)\, e^{(2 - p) x} - (1 - p)\, y\, e^{(1 - p) x}",
    inputs=(LOG_LINK, Input("target", "Observed non-negative values (positive for ``power=2``).",
                            Interval(0.0, math.inf))),
    params=(Param("power", 1.5, "Tweedie power: 1 Poisson, in between compound Poisson-gamma, 2 gamma",
                  Interval(1.0, 2.0), special=(1.0, 2.0)),),
    domains=lambda params: {"target": Interval(0.0, math.inf, (False, True))} if params["power"] == 2.0 else {},
    summary="Half the Tweedie deviance with power in [1, 2], on a log link.",
    formula=(r"\ell = \frac{e^{(2-p)x}}{2-p} - y \frac{e^{(1-p)x}}{1-p} + \frac{y^{2-p}}{(1-p)(2-p)}"
             r"\quad (p = 1\text{: } e^x - y x + y \log y - y;\ p = 2\text{: } y e^{-x} + x - \log y - 1)"),
    gradient=r"\partial \ell / \partial x = e^{(2-p)x} - y\, e^{(1-p)x}",
    reference="Jørgensen, B. (1987). Exponential dispersion models. J. Royal Statistical Society B 49(2).",
    equivalents={"scikit-learn": "HalfTweedieLoss (plus its constant, so the minimum is 0)",
                 "XGBoost": "reg:tweedie (tweedie_variance_power = power)", "LightGBM": "tweedie"},
    semantics=("scikit-learn's ``HalfTweedieLoss(power)`` on a log link plus its ``constant_to_optimal_zero``: half "
               "the Tweedie deviance, 0 at ``exp(x) = y``; the gradient and Hessian are XGBoost's ``reg:tweedie`` "
               "and scikit-learn's."),
    properties=Properties("non-negative regression", "medium", "exponential in the log-mean",
                          "insurance claims, zero-inflated totals", "medium (exp, pow)"),
    example="""
    >>> round(float(fl.tweedie(np.array([0.0, 1.0]), np.array([0.0, 2.0]), power=1.5)), 6)
    1.033355
    """,
)
