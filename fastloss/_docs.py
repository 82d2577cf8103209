"""numpydoc docstrings generated from a loss declaration."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from ._spec import LossSpec, Param

_REDUCTION_DOC = """\
reduction : {"mean", "sum", "none"}, default "mean"
    ``"mean"``: the (weighted) mean, ``sum(w * l) / sum(w)`` when ``weight`` is given;
    ``"sum"``: the (weighted) sum; ``"none"``: per-element losses (times ``weight``).
    Gradients are those of the reduced loss (of the sum for ``"none"``)."""

_WEIGHT_DOC = """\
weight : array_like, optional
    Non-negative weights broadcastable to the loss shape."""

_OUT_DOC = """\
out : ndarray or tuple of ndarray, optional
    Buffer(s) receiving the gradient(s): same shape and dtype as the input they belong to. May be
    that input itself (in-place), never another input.
stats : bool, default False
    Also return gradient statistics (L2 norm, max ``|g|``, count of non-finite entries)."""


#: the line every declared example starts with: declarations leave it out, docstrings and docs show it
EXAMPLE_IMPORTS = ">>> import numpy as np, fastloss as fl"


def example_text(spec: LossSpec) -> str:
    """The declaration's example as docstrings and docs show it (empty when it declares none)."""
    body = textwrap.dedent(spec.example).strip()
    return f"{EXAMPLE_IMPORTS}\n{body}" if body else ""


def _param_block(p: Param) -> str:
    dom = f" In {p.domain}" if p.domain is not None else ""
    if p.optional:
        dom = f" Otherwise in {p.domain}" if p.domain is not None else ""
    kind = f"{p.type.__name__} or None" if p.optional else p.type.__name__
    if p.array:
        kind += " or array_like"
    doc = p.doc if p.doc.endswith(".") else p.doc + "."
    return f"{p.name} : {kind}, default {p.default!r}\n    {doc}{dom}{'.' if dom else ''}"


_HESS_METHODS = ("hess", "grad_hess", "value_grad_hess")
_HESS_FLOOR_DOC = """hess_floor : float, optional
    Clip the returned Hessian from below (``np.maximum(hess, hess_floor)``, after weights and
    reduction scaling; NaN stays NaN), for boosters that need positive Hessians where the true
    second derivative is zero or negative."""
_HESS_OUT_DOC = """out : ndarray or tuple, optional
    Buffer(s) for the Hessian diagonal: the input's shape and dtype, writable, sharing memory with no
    other input or the weight (it may be its own input)."""
_GRAD_HESS_OUT_DOC = """out : (gradient buffer(s), Hessian buffer(s)), optional
    A pair: buffers for the gradient (as ``value_and_grad``'s ``out=``) and for the Hessian diagonal
    (the input's shape and dtype); ``None`` in either place allocates. The two must not overlap."""


def render_docstring(spec: LossSpec, params: Sequence[Param], method: str) -> str:
    """The numpydoc docstring of ``spec``'s ``__call__`` (``method="value"``), ``grad``, ``value_and_grad``,
    ``hess``, ``grad_hess`` or ``value_grad_hess``."""
    diff = [i.name for i in spec.differentiable]
    wrt_list = ", ".join(f"``{d}``" for d in diff)
    lead = {
        "value": spec.summary,
        "grad": f"Gradient of :func:`{spec.name}` with respect to {wrt_list}.",
        "value_and_grad": f":func:`{spec.name}` and its gradient(s), computed in one fused pass.",
        "hess": f"Diagonal of the Hessian of :func:`{spec.name}` with respect to {wrt_list}.",
        "grad_hess": f"Gradient(s) and Hessian diagonal(s) of :func:`{spec.name}`, computed in one fused pass.",
        "value_grad_hess": f":func:`{spec.name}`, its gradient(s) and Hessian diagonal(s), computed in one fused pass.",
    }[method]
    parts = [lead, ""]
    if method == "value":  # help(fl.<name>) is where a newcomer looks: name the other two entry points
        wrt = ", ".join(f"``{d}``" for d in diff) or "its inputs"
        parts += [textwrap.fill(
            f"``{spec.name}.grad(...)`` returns the gradient with respect to {wrt} and "
            f"``{spec.name}.value_and_grad(...)`` the loss and the gradient from one fused pass; both take the "
            "arguments below, plus ``out=`` (write the gradient into a buffer of the input's shape and dtype, "
            "which may be that input itself, for an in-place update) and ``stats=True`` (also return its "
            "norm, max and count of non-finite entries).", 96, break_long_words=False, break_on_hyphens=False),
            "",
        ]
        if spec.hessian is not None:
            parts += [textwrap.fill(
                f"``{spec.name}.hess(...)``, ``{spec.name}.grad_hess(...)`` and ``{spec.name}.value_grad_hess(...)`` "
                "add the diagonal of the Hessian, scaled as the gradient is (for gradient boosting).",
                96, break_long_words=False, break_on_hyphens=False), ""]
    if spec.formula:
        parts += [".. math::", "", textwrap.indent(spec.formula.strip(), "    "), ""]
    if spec.gradient:
        parts += ["Gradient:", "", ".. math::", "", textwrap.indent(spec.gradient.strip(), "    "), ""]
    if spec.hessian_formula and (method in _HESS_METHODS or method == "value"):
        parts += ["Hessian (diagonal):", "", ".. math::", "", textwrap.indent(spec.hessian_formula.strip(), "    "), ""]
    if spec.hessian_note and method in _HESS_METHODS:
        parts += [textwrap.fill(spec.hessian_note, 96, break_long_words=False, break_on_hyphens=False), ""]
    parts += ["Parameters", "----------"]
    for inp in spec.inputs:
        opt = ", optional" if inp.optional else ""
        parts += [f"{inp.name} : array_like{opt}", f"    {inp.doc} Domain: {inp.domain}."]
    parts += [_param_block(p) for p in params]
    # kinds may describe weights and reductions their own way (rowwise: per-class weights)
    parts += [d for d in (spec.options.get("weight_doc", _WEIGHT_DOC),
                          spec.options.get("reduction_doc", _REDUCTION_DOC)) if d]
    if method in _HESS_METHODS:
        parts.append(_HESS_FLOOR_DOC)
        parts.append(_HESS_OUT_DOC if method == "hess" else _GRAD_HESS_OUT_DOC)
    elif method != "value":
        parts.append(_OUT_DOC)
    parts += ["", "Returns", "-------"]
    grad_desc = "gradient" if len(diff) == 1 else "tuple of gradients (" + ", ".join(diff) + ")"
    loss_ret = (
        "loss : scalar or ndarray\n"
        "    The reduced loss (a NumPy scalar), or per-element losses for ``reduction=\"none\"``."
    )
    grad_ret = f"grad : ndarray or tuple\n    The {grad_desc}, shaped like the input(s)."
    hess_desc = "Hessian diagonal" if len(diff) == 1 else "tuple of Hessian diagonals (" + ", ".join(diff) + ")"
    hess_ret = (f"hess : ndarray or tuple\n    The {hess_desc}, shaped like the input(s) and scaled as the "
                "gradient: ``d^2 L / d x_i^2`` of the reduced loss ``L`` (of the sum for ``reduction=\"none\"``).")
    parts.append({"value": loss_ret, "grad": grad_ret, "value_and_grad": loss_ret + "\n" + grad_ret,
                  "hess": hess_ret, "grad_hess": grad_ret + "\n" + hess_ret,
                  "value_grad_hess": loss_ret + "\n" + grad_ret + "\n" + hess_ret}[method])
    notes = []
    if spec.equivalents:
        notes.append("Equivalents: " + "; ".join(f"{k}: ``{v}``" for k, v in spec.equivalents.items()) + ".")
    if spec.semantics:
        notes.append(spec.semantics)
    if notes:
        parts += ["", "Notes", "-----", *notes]
    if spec.reference:
        parts += ["", "References", "----------", f".. [1] {spec.reference}"]
    if spec.example and method == "value":
        parts += ["", "Examples", "--------", example_text(spec)]
    return "\n".join(parts)
