"""Multiclass losses on logits: one value per sample from a reduction over the class axis.

Kernels follow the rowwise contract of :mod:`fastloss.kinds.softmax.cpu`: they receive a block
of rows and write each row's loss (and, when ``g`` is not empty, ``scale`` times its gradient).
Passes over the class axis go through the row primitives ``R``; what is written here is the
per-row scalar math, with the vectorisable ``exp``/``log`` of :mod:`fastloss._kernels.mathfn` so
that the per-row loops of a block of short rows vectorise too. Remember that ``g`` may be ``x``:
every read of ``x`` comes first.

Softmax losses of a class-index target are functions of ``L = log p_y = x_y - logsumexp(x)``:
with ``loss = w_y psi(L)`` and ``dL/dx_j = [j = y] - p_j`` the gradient is
``w_y psi'(L) ([j = y] - p_j)``, written by :func:`_target_grad` from ``g = exp(x - m)``.
"""

from __future__ import annotations

import math

import numpy as np

from .._api import family
from .._kernels.mathfn import exp, expm1, log, tanh
from .._spec import Discrete, Input, Interval, Param, Properties
from ..kinds.softmax import primitives as R

LOGITS = Input("logits", "Unnormalised class scores; the classes lie along ``axis``.", differentiable=True)
TARGET = Input(
    "target",
    "Class indices (integers, the shape of ``logits`` without the class axis) or class probabilities "
    "(floats, the shape of ``logits``).",
    Interval(0.0, math.inf),
)
INDEX_TARGET = Input("target", "Class indices (integers, the shape of ``logits`` without the class axis).",
                     Interval(0.0, math.inf))
PROB_TARGET = Input("target", "Target class probabilities (the shape of ``logits``; zeros allowed).",
                    Interval(0.0, 1.0))


def _weight_doc(divides: str, soft: bool) -> str:
    soft_doc = ("\n    With probability targets or label smoothing, the term of class ``j`` is weighted by\n"
                "    ``weight[j]``.") if soft else ""
    return (
        "weight : array_like, optional\n"
        "    One weight per class, shape ``(classes,)`` (PyTorch's ``weight``): a sample with class index\n"
        f"    ``y`` counts ``weight[y]`` times.{soft_doc} {divides}"
    )


_REDUCTION_DOC = """\
reduction : {"mean", "sum", "none"}, default "mean"
    ``"mean"``: the sum of the per-sample losses divided by the summed class weights of the
    non-ignored targets (their count without ``weight``; the number of samples for probability
    targets), as PyTorch; a batch whose targets are all ignored has a NaN mean. ``"sum"``: the sum;
    ``"none"``: per-sample losses, shaped like ``logits`` without the class axis. Gradients are
    those of the reduced loss."""

_ROWS_REDUCTION_DOC = """\
reduction : {"mean", "sum", "none"}, default "mean"
    ``"mean"``: the sum of the per-sample losses divided by the number of samples; ``"sum"``: the
    sum; ``"none"``: per-sample losses, shaped like ``logits`` without the class axis. Gradients are
    those of the reduced loss."""


def _options(targets=("index",), ignore_index=True, class_weight=True, mean="weight"):
    weight_doc = None
    if class_weight:
        weight_doc = _weight_doc(
            "The weighted mean divides by the summed weights of the non-ignored targets."
            if mean == "weight" else "The mean still divides by the number of samples.",
            soft="probs" in targets,
        )
    return {
        "targets": targets,
        "ignore_index": ignore_index,
        "class_weight": class_weight,
        "mean": mean,
        "weight_doc": weight_doc,
        "reduction_doc": _REDUCTION_DOC if mean == "weight" else _ROWS_REDUCTION_DOC,
    }


#: losses of logits with the classes along ``axis``: one value per sample
_rowwise = family("rowwise")
#: losses of the class-index target's log-probability ``L = log p_y`` (see the module docstring)
_of_log_p = family("rowwise", inputs=(LOGITS, INDEX_TARGET), options=_options())

#: the example of a loss of logits and class indices: two samples of three classes
_INDEX_EXAMPLE = """
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    >>> round(float(fl.{name}(logits, np.array([0, 2]))), 6)
    {value}
    """


# -- shared pieces of the softmax kernels -------------------------------------------------------


def _log_p_target(x, y, w, g):
    """``log p_y``, the row sums ``s``, the class weight ``w_y`` and the shift ``m`` per row;
    ``g <- exp(x - m)`` when ``g`` is not empty.

    ``m`` is the row maximum or, on the CPU, a close estimate of it that lets most rows be read
    once (``R.softmax_pass``): all the kernels need is ``lse = m + log s``.
    """
    nr = x.shape[0]
    xy, m, s = R.softmax_pass(x, y, g)
    logp = np.empty(nr)
    for r in range(nr):
        # <= 0 in exact arithmetic; rounding of the sum must not make 1 - p_y negative
        logp[r] = min(xy[r] - log(s[r]), 0.0)  # xy: x_y - m (see R.softmax_pass)
    wy = np.ones(nr)
    if w.size:  # a loop of its own: a conditional load would keep the loops above scalar
        for r in range(nr):
            wy[r] = w[y[r]]
    return logp, s, wy, m


def _target_grad(g, y, s, wy, scale, dpsi):
    """``g <- scale w_y psi'(L) ([j = y] - p_j)`` from ``g = exp(x - m)`` and the row sums ``s``."""
    nr = g.shape[0]
    c = np.empty(nr)
    b = np.empty(nr)
    for r in range(nr):
        k = scale * wy[r] * dpsi[r]
        c[r] = -k / s[r]
        b[r] = k
    R.scale_rows(g, c)
    R.add_at(g, y, b)


# -- cross entropy ------------------------------------------------------------------------------


def _plain_cross_entropy(x, y, t, w, g, scale, loss, label_smoothing, z_loss, softcap):
    # class-index targets, no label smoothing, no soft-capping: one exp pass, the gradient written
    # over exp(x - m). A kernel of its own (see ``kernel_for``): it compiles in a fraction of the
    # time of the general one, which is only built when a call needs it.
    nr = x.shape[0]
    logp, s, wy, m = _log_p_target(x, y, w, g)
    aux = loss.size > nr
    c = np.empty(nr)
    b = np.empty(nr)
    for r in range(nr):
        zr = z_loss * wy[r]
        zt = 0.0
        dz = 0.0
        if zr != 0.0:  # (an infinite lse must not turn a zero coefficient into NaN)
            lse = m[r] + log(s[r])
            zt = zr * lse * lse
            dz = 2.0 * zr * lse
        loss[r] = -wy[r] * logp[r] + zt
        if aux:
            loss[nr + r] = zt
        c[r] = scale * (wy[r] + dz) / s[r]
        b[r] = -scale * wy[r]
    if g.shape[0]:
        R.scale_rows(g, c)
        R.add_at(g, y, b)


def _cross_entropy(x, y, t, w, g, scale, loss, label_smoothing, z_loss, softcap):
    if y.size and label_smoothing == 0.0 and softcap == 0.0:
        _plain_cross_entropy(x, y, t, w, g, scale, loss, label_smoothing, z_loss, softcap)
        return
    _smoothed_cross_entropy(x, y, t, w, g, scale, loss, label_smoothing, z_loss, softcap)


def _cross_entropy_kernel(params, index_targets):
    plain = index_targets and params["label_smoothing"] == 0.0 and not params["softcap"]
    return _plain_cross_entropy if plain else _cross_entropy


def _softcapped(v, cap):
    """``(cap tanh(v / cap), 1 - tanh^2(v / cap))``, or ``(v, 1)`` when ``cap`` is 0 (no capping)."""
    if cap == 0.0:
        return v, 1.0
    th = tanh(v / cap)
    return cap * th, 1.0 - th * th


def _cross_entropy_hess(x, y, t, w, h, scale, eps, z_loss, cap):
    # Diagonal of the Hessian with respect to the logits. In the (capped) logits c the gradient is
    # G_j = (W + 2 z w_y lse) p_j - w_j t'_j with W = sum_k w_k t'_k, so d G_j / d c_j =
    # (W + 2 z w_y lse) p_j (1 - p_j) + 2 z w_y p_j^2; through the cap c = cap tanh(x / cap) the
    # chain rule adds G_j c''_j to the curvature times c'_j^2. 1 - p_j is the sum of the other
    # terms (prefix and suffix sums), which does not cancel when p_j is close to 1.
    nr, nc = x.shape
    wsum = 0.0
    for j in range(w.size):
        wsum += w[j]
    if not w.size:
        wsum = float(nc)
    c = np.empty(nc)
    a = np.empty(nc)
    e = np.empty(nc)
    rest = np.empty(nc)
    for r in range(nr):
        m = -np.inf
        for j in range(nc):
            cj, aj = _softcapped(np.float64(x[r, j]), cap)
            c[j] = cj
            a[j] = aj
            m = max(m, cj)
        s = 0.0
        for j in range(nc):
            e[j] = exp(c[j] - m)
            rest[j] = s  # the terms before j
            s += e[j]
        after = 0.0
        for j in range(nc - 1, -1, -1):
            rest[j] += after
            after += e[j]
        lse = m + log(s)
        if y.size:
            wy = w[y[r]] if w.size else 1.0
            big = (1.0 - eps) * wy + eps / nc * wsum
        else:
            wy = 1.0
            big = 0.0
            for j in range(nc):
                big += (w[j] if w.size else 1.0) * ((1.0 - eps) * t[r, j] + eps / nc)
        zr = z_loss * wy
        coef = big + 2.0 * zr * lse if zr != 0.0 else big
        for j in range(nc):
            p = e[j] / s
            hc = coef * p * (rest[j] / s) + 2.0 * zr * p * p
            if cap != 0.0:
                tj = (1.0 - eps) * ((1.0 if j == y[r] else 0.0) if y.size else t[r, j]) + eps / nc
                gj = coef * p - (w[j] if w.size else 1.0) * tj
                hc = hc * a[j] * a[j] - 2.0 * gj * (c[j] / cap) * a[j] / cap
            h[r, j] = scale * hc


def _smoothed_cross_entropy(x, y, t, w, g, scale, loss, eps, z_loss, cap):
    # Label smoothing, probability targets and/or soft-capping. With t' = (1 - eps) t + eps / C
    # (t one-hot for class indices) the loss is sum_j w_j t'_j (lse - c_j) and its gradient with
    # respect to the (capped) logits c is (sum_k w_k t'_k) p_j - w_j t'_j. Sums are taken of c - m
    # to keep lse - c small. Capped logits c = cap tanh(x / cap) are never stored: the cap_*
    # primitives cap each logit as they read it, and multiply the gradient by the cap's derivative.
    nr, nc = x.shape
    wtot = 0.0
    for j in range(w.size):
        wtot += w[j]
    if not w.size:
        wtot = float(nc)
    none = t[:0]
    capped = cap > 0.0
    mx = R.row_max(x)
    m = np.empty(nr)  # fresh vectors (not the primitives' results) are written: see fastloss.kinds.softmax.cuda
    for r in range(nr):  # tanh is increasing: the maximum of the capped row is the capped maximum
        m[r] = _softcapped(mx[r], cap)[0]
    zero = np.zeros(nr)
    sx = zero
    if eps > 0.0:  # sum_j w_j (c_j - m)
        sx = R.cap_dot(x, none, w, m, cap) if capped else R.dot(x, none, w, m)
    xy = np.zeros(nr)  # c_y
    dy = np.ones(nr)  # d c_y / d x_y
    stx = zero
    swt = zero
    if y.size:
        xg = R.gather(x, y)
        for r in range(nr):
            xy[r], dy[r] = _softcapped(xg[r], cap)
        xy = R.shifted(xy, m)  # c_y - m, kept apart from the sums below (see R.shifted)
    else:
        stx = R.cap_dot(x, t, w, m, cap) if capped else R.dot(x, t, w, m)  # sum_j w_j t_j (c_j - m)
        swt = R.dot(t, none, w, zero)  # sum_j w_j t_j
    if capped:
        s = R.cap_exp_sum(x, m, cap)
    else:
        s = R.exp_sum(x, m, g)  # g <- exp(x - m)
    aux = loss.size > nr
    c = np.empty(nr)
    b = np.empty(nr)
    for r in range(nr):
        ls = log(s[r])  # lse - m
        if y.size:
            wy = w[y[r]] if w.size else 1.0
            a = (1.0 - eps) * wy + eps * wtot / nc
            ce = (1.0 - eps) * wy * (ls - xy[r]) + eps / nc * (wtot * ls - sx[r])
            b[r] = -scale * (1.0 - eps) * wy * dy[r]
        else:
            wy = 1.0  # probability targets: the mean is over samples, the z-loss unweighted
            a = (1.0 - eps) * swt[r] + eps * wtot / nc
            ce = a * ls - ((1.0 - eps) * stx[r] + eps / nc * sx[r])
        zr = z_loss * wy
        zt = 0.0
        dz = 0.0
        if zr != 0.0:
            lse = m[r] + ls
            zt = zr * lse * lse
            dz = 2.0 * zr * lse
        loss[r] = ce + zt
        if aux:
            loss[nr + r] = zt
        c[r] = scale * (a + dz) / s[r]
    if g.shape[0]:
        at = 0.0 if y.size else -scale * (1.0 - eps)
        if capped:
            R.cap_scale_add(g, x, m, c, at, t, -scale * eps / nc, w, cap)
        else:
            R.scale_add(g, c, at, t, -scale * eps / nc, w)
        if y.size:
            R.add_at(g, y, b)


cross_entropy = _rowwise(
    "cross_entropy", _cross_entropy,
    hessian=_cross_entropy_hess,
    hessian_formula=r"\partial^2 \ell_i / \partial c_{ij}^2 = \Big(\sum_k w_k t'_{ik} + 2 \zeta w_{y_i} \operatorname{lse}(c_i)\Big) p_{ij} (1 - p_{ij}) + 2 \zeta w_{y_i} p_{ij}^2,\quad p_i = \operatorname{softmax}(c_i)",
    hessian_note=("The diagonal with respect to the logits, ``p (1 - p)`` times the row's target weight for plain "
                  "cross entropy (scikit-learn's ``HalfMultinomialLoss`` gives the same); with ``softcap`` the "
                  "chain rule through ``softcap * tanh(x / softcap)`` is included. Ignored rows get 0."),
    inputs=(LOGITS, TARGET),
    params=(
        Param("label_smoothing", 0.0, "Weight of the uniform distribution mixed into the target",
              Interval(0.0, 1.0), special=(1.0,)),
        Param("z_loss", 0.0, "Coefficient of PaLM's z-loss ``z_loss * logsumexp(logits)**2`` added to each "
              "sample's loss (weighted by ``weight[y]`` like the sample; gradient included)",
              Interval(0.0, math.inf), special=(0.05,)),
        Param("softcap", None, "Logit soft-capping: the softmax sees ``softcap * tanh(logits / softcap)`` "
              "(Gemma 2); ``None``: no capping", Interval(0.0, math.inf, (False, False)), special=(2.5,),
              optional=True),
        Param("return_z_loss", False, "Also return the z-loss part of the value, reduced like the loss: "
              "the value becomes a ``(loss, z_loss_part)`` pair (JAX's ``has_aux`` layout)", type=bool),
    ),
    prepare=lambda p: (p["label_smoothing"], p["z_loss"], p["softcap"] or 0.0),
    summary="Softmax cross entropy of logits and class indices or class probabilities.",
    formula=r"\ell_i = \sum_j w_j\, t'_{ij} \left(\log \sum_k e^{c_{ik}} - c_{ij}\right)"
            r" + \zeta\, w_{y_i} \Big(\log \sum_k e^{c_{ik}}\Big)^2,\quad "
            r"t'_{ij} = (1 - \varepsilon)\, t_{ij} + \varepsilon / C"
            "\n"
            r"\text{(class index } y_i\text{: } t_{ij} = [j = y_i]\text{, the } (1 - \varepsilon) \text{ term weighted by } w_{y_i}"
            r"\text{; probabilities: } w_{y_i} = 1)"
            "\n"
            r"c_{ij} = s \tanh(x_{ij} / s) \text{ with } \texttt{softcap} = s\text{, else } c_{ij} = x_{ij}"
            r"\text{;}\ \zeta = \texttt{z\_loss}",
    gradient=r"\partial \ell_i / \partial x_{ij} = \Big[\Big(\sum_k w_k t'_{ik} + 2 \zeta w_{y_i} \operatorname{lse}(c_i)\Big)"
             r" \operatorname{softmax}(c_i)_j - w_j t'_{ij}\Big]\, \frac{\partial c_{ij}}{\partial x_{ij}},\quad"
             r" \frac{\partial c_{ij}}{\partial x_{ij}} = 1 - \tanh^2(x_{ij} / s)",
    reference="Shannon, C. E. (1948). A Mathematical Theory of Communication; label smoothing: Szegedy, C. et al. "
              "(2016). Rethinking the Inception Architecture for Computer Vision. CVPR; z-loss: Chowdhery, A. et al. "
              "(2022). PaLM: Scaling Language Modeling with Pathways, sec. 5; soft-capping: Gemma Team (2024). "
              "Gemma 2: Improving Open Language Models at a Practical Size.",
    equivalents={"PyTorch": "torch.nn.functional.cross_entropy",
                 "optax": "optax.losses.softmax_cross_entropy_with_integer_labels / softmax_cross_entropy"},
    semantics=("Matches ``torch.nn.functional.cross_entropy`` for class-index and probability targets, "
               "``weight``, ``ignore_index`` (index targets only), ``label_smoothing`` and their combinations: "
               "with class indices the weighted mean divides by the summed weights of the non-ignored "
               "targets (all ignored: NaN), with probabilities by the number of samples. The class axis is "
               "``axis`` (PyTorch: dimension 1), so ``(batch, seq, vocab)`` logits need no transpose. "
               "``value_and_grad(logits, y, out=logits)`` writes the gradient over the logits "
               "(Liger-Kernel style) with no logits-sized temporary. ``z_loss`` and ``softcap`` are not in "
               "PyTorch's function: they equal ``softcap * tanh(logits / softcap)`` fed to it, plus "
               "``z_loss * logsumexp**2`` per sample, weighted and averaged like the sample's cross entropy "
               "(without class weights: the mean over the non-ignored tokens, as in PaLM and Liger-Kernel). "
               "Both run in the same fused pass; the capped logits are never stored. With "
               "``return_z_loss=True`` the value is ``(loss, z_loss_part)`` (``value_and_grad`` returns "
               "``((loss, z_loss_part), grad)``), the part computed in the same pass, for logging."),
    properties=Properties("multiclass classification", "medium (log-loss grows linearly in the logit margin)",
                          "bounded: softmax minus target", "classifiers, language models", "medium (one exp per logit)"),
    example="""
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    >>> round(float(fl.cross_entropy(logits, np.array([0, 2]))), 6)
    0.896378
    >>> loss, g = fl.cross_entropy.value_and_grad(logits, np.array([0, -100]))
    >>> round(float(loss), 6), g[1].tolist()
    (0.241311, [0.0, 0.0, 0.0])
    """,
    options={**_options(targets=("index", "probs")), "aux": "return_z_loss", "kernel_for": _cross_entropy_kernel},
)


# -- softmax focal ------------------------------------------------------------------------------


def _softmax_focal(x, y, t, w, g, scale, loss, gamma):
    # psi(L) = -(1 - e^L)^gamma L,  psi'(L) = gamma (1 - p)^(gamma - 1) p L - (1 - p)^gamma
    nr = x.shape[0]
    logp, s, wy, _ = _log_p_target(x, y, w, g)
    d = np.empty(nr)
    for r in range(nr):
        lp = logp[r]
        p = exp(lp)
        u = -expm1(lp)  # 1 - p without cancellation near p = 1
        ug = u ** gamma
        loss[r] = -wy[r] * ug * lp
        # u -> 0: gamma u^(gamma-1) p L ~ -gamma u^gamma -> 0 (also for gamma < 1)
        d[r] = (gamma * u ** (gamma - 1.0) * p * lp if u > 0.0 else 0.0) - ug
    if g.shape[0]:
        _target_grad(g, y, s, wy, scale, d)


softmax_focal = _of_log_p(
    "softmax_focal", _softmax_focal,
    params=(Param("gamma", 2.0, "Focusing exponent (0: cross entropy)", Interval(0.0, math.inf), special=(0.0, 0.5)),),
    summary="Softmax focal loss: cross entropy down-weighted on well-classified samples.",
    formula=r"\ell_i = -w_{y_i} (1 - p_{i y_i})^{\gamma} \log p_{i y_i},\quad p_i = \operatorname{softmax}(x_i)",
    gradient=r"\partial \ell_i / \partial x_{ij} = w_{y_i} \left[\gamma (1 - p_y)^{\gamma - 1} p_y \log p_y"
             r" - (1 - p_y)^{\gamma}\right] \left([j = y_i] - p_{ij}\right)",
    reference="Lin, T.-Y., Goyal, P., Girshick, R., He, K., Dollár, P. (2017). Focal Loss for Dense Object Detection. ICCV.",
    equivalents={"PyTorch (composition)": "F.nll_loss((1 - logp.exp()) ** gamma * logp, target, weight=weight, "
                                          "ignore_index=ignore_index) with logp = F.log_softmax(logits, dim)"},
    semantics=("Equals the PyTorch composition above, including its weighted mean (divided by the summed class "
               "weights of the non-ignored targets); ``gamma=0`` is cross entropy."),
    properties=Properties("multiclass classification", "low (easy samples down-weighted)",
                          "vanishes on well-classified samples", "dense detection, class imbalance", "medium"),
    example=_INDEX_EXAMPLE.format(name="softmax_focal", value="0.487298"),
)


# -- multiclass hinge ---------------------------------------------------------------------------


def _hinge_sums(x, base, p):
    """``(sum_j h_j^p, sum_j h'_j)`` over a slice, ``h_j = max(0, base + x_j)``, ``h'`` its p-th power's
    derivative over ``p`` (1 or 0 for p = 1, ``h`` for p = 2).

    ``not v <= 0`` rather than ``v > 0`` keeps a NaN score in the loss.
    """
    acc = 0.0
    dsum = 0.0
    for j in range(x.size):
        v = base + np.float64(x[j])
        h = v if not v <= 0.0 else 0.0
        acc += h if p == 1.0 else h * h
        dsum += (1.0 if v > 0.0 else 0.0) if p == 1.0 else h
    return acc, dsum


def _hinge_grad(x, g, base, p, k):
    """``g_j = k p h_j^(p-1)`` (a pass of its own, free of sums: in place or not, the same bits)."""
    for j in range(x.size):
        v = base + np.float64(x[j])
        h = v if not v <= 0.0 else 0.0
        g[j] = (k if v > 0.0 else h) if p == 1.0 else 2.0 * k * h


def _multiclass_hinge(x, y, t, w, g, scale, loss, margin, p):
    # loss_i = w_y / C sum_{j != y} max(0, margin - x_y + x_j)^p; the classes before and after y
    # are two slices, so that the excluded term never enters the sums
    nr, nc = x.shape
    for r in range(nr):
        yr = y[r]
        xr = x[r]
        xy = np.float64(xr[yr])  # read before g (maybe x) is written
        wy = w[yr] if w.size else 1.0
        base = margin - xy
        a1, d1 = _hinge_sums(xr[:yr], base, p)
        a2, d2 = _hinge_sums(xr[yr + 1:], base, p)
        loss[r] = wy * (a1 + a2) / nc
        if g.shape[0]:
            k = scale * wy / nc
            gr = g[r]
            _hinge_grad(xr[:yr], gr[:yr], base, p, k)
            _hinge_grad(xr[yr + 1:], gr[yr + 1:], base, p, k)
            gr[yr] = -(d1 + d2) * k * p


def _hinge_safe(inputs, params, h):
    x, y = np.asarray(inputs[0], dtype=float), np.asarray(inputs[1])
    xy = np.take_along_axis(x, y[..., None], axis=-1)
    return np.all(np.abs(params["margin"] - xy + x) > 4 * h, axis=-1)


multiclass_hinge = _rowwise(
    "multiclass_hinge", _multiclass_hinge,
    inputs=(Input("scores", "Class scores; the classes lie along ``axis``.", differentiable=True), INDEX_TARGET),
    params=(
        Param("margin", 1.0, "Margin", Interval(-math.inf, math.inf)),
        Param("p", 1, "Exponent of the margin violations", Discrete((1.0, 2.0)), type=int),
    ),
    summary="Multiclass hinge loss (one-vs-rest margins summed over classes, as ``multi_margin_loss``).",
    formula=r"\ell_i = \frac{w_{y_i}}{C} \sum_{j \ne y_i} \max(0,\ m - x_{i y_i} + x_{ij})^p",
    gradient=r"\partial \ell_i / \partial x_{ij} = \frac{w_{y_i}}{C}\, p \max(0,\ m - x_{iy_i} + x_{ij})^{p-1}"
             r"\ (j \ne y_i),\quad \partial \ell_i / \partial x_{iy_i} = -\sum_{j \ne y_i} \partial \ell_i / \partial x_{ij}",
    reference="Weston, J., Watkins, C. (1999). Support Vector Machines for Multi-Class Pattern Recognition. ESANN.",
    equivalents={"PyTorch": "torch.nn.functional.multi_margin_loss"},
    semantics=("Matches ``torch.nn.functional.multi_margin_loss`` (``p`` in {1, 2}, ``weight`` multiplies sample "
               "``i``'s terms by ``weight[y_i]`` and the mean divides by the number of samples). At a margin "
               "violation of exactly 0 the gradient is 0, as in PyTorch."),
    properties=Properties("multiclass classification", "low (linear)", "constant or zero (p = 1)",
                          "multiclass SVMs, max-margin training", "low"),
    fd_safe=_hinge_safe,
    example="""
    >>> scores = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    >>> round(float(fl.multiclass_hinge(scores, np.array([0, 2]))), 6)
    0.5
    """,
    options=_options(ignore_index=False, mean="rows"),
)


# -- KL divergence ------------------------------------------------------------------------------


def _kl_divergence(x, y, t, w, g, scale, loss):
    # KL(t || softmax(x)) = sum_j t_j log t_j - sum_j t_j (x_j - m) + (lse - m) sum_j t_j
    nr = x.shape[0]
    m = R.row_max(x)
    stx = R.dot(x, t, w, m)
    st = R.row_sum(t)
    tlt = R.xlogx(t)
    s = R.exp_sum(x, m, g)
    c = np.empty(nr)
    for r in range(nr):
        loss[r] = tlt[r] - stx[r] + log(s[r]) * st[r]
        c[r] = scale * st[r] / s[r]
    if g.shape[0]:
        R.scale_add(g, c, -scale, t, 0.0, w)


kl_divergence = _rowwise(
    "kl_divergence", _kl_divergence,
    inputs=(LOGITS, PROB_TARGET),
    summary="Kullback-Leibler divergence KL(target || softmax(logits)) per sample.",
    formula=r"\ell_i = \sum_j t_{ij} \left(\log t_{ij} - \log \operatorname{softmax}(x_i)_j\right),\quad 0 \log 0 = 0",
    gradient=r"\partial \ell_i / \partial x_{ij} = \Big(\sum_k t_{ik}\Big) \operatorname{softmax}(x_i)_j - t_{ij}",
    reference="Kullback, S., Leibler, R. A. (1951). On Information and Sufficiency. Ann. Math. Statist. 22(1); "
              "distillation: Hinton, G., Vinyals, O., Dean, J. (2015). Distilling the Knowledge in a Neural Network.",
    equivalents={"PyTorch": "torch.nn.functional.kl_div(F.log_softmax(logits, dim), target, reduction='batchmean')",
                 "optax": "optax.losses.kl_divergence(jax.nn.log_softmax(logits), target)"},
    semantics=("``reduction='mean'`` is PyTorch's ``'batchmean'`` for 2-D logits: the sum divided by the number of "
               "samples (for more leading dimensions fastloss divides by all samples, PyTorch by the first "
               "dimension only). Targets may contain zeros; no class weights."),
    properties=Properties("distribution matching", "medium", "bounded: softmax minus target",
                          "knowledge distillation, soft labels", "medium (one exp per logit, one log per target)"),
    example="""
    >>> logits = np.array([[2.0, 0.5, -1.0]])
    >>> round(float(fl.kl_divergence(logits, np.array([[0.5, 0.5, 0.0]]))), 6)
    0.298164
    """,
    options=_options(targets=("probs",), ignore_index=False, class_weight=False, mean="rows"),
)


# -- generalised cross entropy ------------------------------------------------------------------


def _generalized_cross_entropy(x, y, t, w, g, scale, loss, q):
    # psi(L) = (1 - e^(q L)) / q,  psi'(L) = -e^(q L) = -p_y^q
    nr = x.shape[0]
    logp, s, wy, _ = _log_p_target(x, y, w, g)
    d = np.empty(nr)
    for r in range(nr):
        loss[r] = -wy[r] * expm1(q * logp[r]) / q
        d[r] = -exp(q * logp[r])
    if g.shape[0]:
        _target_grad(g, y, s, wy, scale, d)


generalized_cross_entropy = _of_log_p(
    "generalized_cross_entropy", _generalized_cross_entropy,
    params=(Param("q", 0.7, "Box-Cox exponent: q -> 0 is cross entropy, q = 1 is MAE on probabilities",
                  Interval(0.0, 1.0, (False, True)), special=(1.0,)),),
    summary="Generalised cross entropy (the L_q loss on the target probability), robust to noisy labels.",
    formula=r"\ell_i = w_{y_i}\, \frac{1 - p_{i y_i}^{\,q}}{q},\quad p_i = \operatorname{softmax}(x_i)",
    gradient=r"\partial \ell_i / \partial x_{ij} = w_{y_i}\, p_{iy_i}^{\,q} \left(p_{ij} - [j = y_i]\right)",
    reference="Zhang, Z., Sabuncu, M. R. (2018). Generalized Cross Entropy Loss for Training Deep Neural Networks "
              "with Noisy Labels. NeurIPS.",
    equivalents={"PyTorch (composition)": "((1 - F.softmax(logits, dim).gather(dim, target[..., None]) ** q) / q).mean()"},
    semantics=("Class weights multiply sample ``i`` by ``weight[y_i]`` and the weighted mean divides by their sum, "
               "as in cross entropy."),
    properties=Properties("multiclass classification", "low (bounded by 1/q)", "bounded, small on confident mistakes",
                          "training with noisy labels", "medium"),
    example=_INDEX_EXAMPLE.format(name="generalized_cross_entropy", value="0.584187"),
)


# -- poly-1 cross entropy -----------------------------------------------------------------------


def _poly1_cross_entropy(x, y, t, w, g, scale, loss, epsilon):
    # psi(L) = -L + epsilon (1 - e^L),  psi'(L) = -1 - epsilon p_y
    nr = x.shape[0]
    logp, s, wy, _ = _log_p_target(x, y, w, g)
    d = np.empty(nr)
    for r in range(nr):
        loss[r] = wy[r] * (-logp[r] - epsilon * expm1(logp[r]))
        d[r] = -1.0 - epsilon * exp(logp[r])
    if g.shape[0]:
        _target_grad(g, y, s, wy, scale, d)


poly1_cross_entropy = _of_log_p(
    "poly1_cross_entropy", _poly1_cross_entropy,
    params=(Param("epsilon", 1.0, "Coefficient of the first polynomial term (0: cross entropy)",
                  Interval(-1.0, math.inf), special=(0.0, -1.0)),),
    summary="Poly-1 loss: cross entropy plus epsilon times (1 - p_target).",
    formula=r"\ell_i = w_{y_i} \left(-\log p_{iy_i} + \epsilon\,(1 - p_{iy_i})\right)",
    gradient=r"\partial \ell_i / \partial x_{ij} = w_{y_i} (1 + \epsilon\, p_{iy_i}) \left(p_{ij} - [j = y_i]\right)",
    reference="Leng, Z. et al. (2022). PolyLoss: A Polynomial Expansion Perspective of Classification Loss "
              "Functions. ICLR.",
    equivalents={"PyTorch (composition)": "F.cross_entropy(logits, target, reduction='none') + "
                                          "epsilon * (1 - F.softmax(logits, dim).gather(dim, target[..., None]))"},
    semantics=("Class weights multiply sample ``i``'s whole loss by ``weight[y_i]``; the weighted mean divides by "
               "their sum, as in cross entropy."),
    properties=Properties("multiclass classification", "medium", "bounded: (1 + eps p_y)(softmax minus target)",
                          "image classification, detection", "medium"),
    example=_INDEX_EXAMPLE.format(name="poly1_cross_entropy", value="1.397609"),
)
