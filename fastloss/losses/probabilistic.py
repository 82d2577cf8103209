"""Negative log-likelihoods of count and Gaussian models."""

from __future__ import annotations

import math

import numpy as np

from .._api import family
from .._compile import scalar_kernel
from .._kernels.mathfn import exp, log
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
