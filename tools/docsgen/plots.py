"""Each loss and its gradient, computed with fastloss itself and plotted with matplotlib (Agg).

* pointwise losses: against their first differentiable input (the residual when the target is 0,
  the logit or score for classification), one curve per representative value of the other inputs
  (each label of a discrete target, both ends of a bounded one);
* rowwise losses: against the logit of the true class in a small 5-class example, the other
  logits fixed.

The recipes read only the declaration (inputs, domains, target forms), so new losses of these
kinds are plotted without changes here; a loss whose kind has no recipe, or whose inputs a recipe
cannot fill, gets no plot. Run as a script to write every plot::

    python tools/docsgen/plots.py OUTDIR
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field

import numpy as np

#: Points per curve.
POINTS = 601
#: The x range of an unbounded input.
SPAN = 4.0
#: The rowwise example: the logits of the other classes, and the target distribution used when a
#: loss takes only probability targets (class 0 is the true class).
OTHER_LOGITS = (1.0, 0.5, -0.5, -1.0)
PROB_TARGET = (0.6, 0.1, 0.1, 0.1, 0.1)


class NotPlottable(Exception):
    """The recipe of the loss's kind cannot fill its inputs."""


@dataclass
class Curves:
    """What a plot shows: the loss and its gradient over ``x``, one series per fixed setting."""

    x: np.ndarray
    xlabel: str
    grad_label: str
    series: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)


def _grid(domain) -> np.ndarray:
    lo, hi = domain.low, domain.high
    if math.isinf(lo) and math.isinf(hi):
        lo, hi = -SPAN, SPAN
    elif math.isinf(hi):
        hi = lo + 2 * SPAN
    elif math.isinf(lo):
        lo = hi - 2 * SPAN
    pad = 1e-3 * (hi - lo)
    return np.linspace(lo if domain.closed[0] else lo + pad, hi if domain.closed[1] else hi - pad, POINTS)


def _settings(domain) -> list[float]:
    """Representative values of a fixed (non-plotted) input."""
    if hasattr(domain, "values"):  # Discrete
        return list(domain.values)
    lo, hi = domain.low, domain.high
    if math.isinf(lo) and math.isinf(hi):
        return [0.0]
    if not math.isinf(lo) and not math.isinf(hi) and domain.closed == (True, True):
        return [lo, hi]
    return [1.0] if domain.contains(1.0) else [lo + 1.0 if not math.isinf(lo) else hi - 1.0]


def _defaults(loss) -> dict:
    return {p.name: p.default for p in loss._params}


def pointwise_curves(loss) -> Curves:
    spec = loss.spec
    domains = spec.input_domains(_defaults(loss))
    k = next(i for i, inp in enumerate(spec.inputs) if inp.differentiable)
    varied = spec.inputs[k]
    if hasattr(domains[varied.name], "values"):
        raise NotPlottable(f"{spec.name}: {varied.name} is discrete")
    x = _grid(domains[varied.name])
    fixed = [(i, inp, _settings(domains[inp.name])) for i, inp in enumerate(spec.inputs) if i != k]
    multi = next((f for f in fixed if len(f[2]) > 1), None)
    held = ", ".join(f"{inp.name} = {vals[0]:g}" for _, inp, vals in fixed if len(vals) == 1)
    curves = Curves(x, f"{varied.name} ({held})" if held else varied.name, f"d loss / d {varied.name}")
    for v in multi[2] if multi else [None]:
        inputs = [x] * len(spec.inputs)
        for i, _inp, vals in fixed:
            inputs[i] = np.full_like(x, v if multi and i == multi[0] else vals[0])
        value, grads = loss.value_and_grad(*inputs, reduction="none")
        g = grads if len(spec.differentiable) == 1 else grads[0]
        value, g = np.asarray(value, float), np.asarray(g, float)
        same = next((j for j, (_, v2, g2) in enumerate(curves.series)
                     if np.array_equal(v2, value, equal_nan=True) and np.array_equal(g2, g, equal_nan=True)), None)
        if same is not None:  # e.g. a label 0 read as -1: one curve, both labels
            label, v2, g2 = curves.series[same]
            curves.series[same] = (f"{label}, {v:g}", v2, g2)
            continue
        curves.series.append((f"{multi[1].name} = {v:g}" if multi else "", value, g))
    return curves


def rowwise_curves(loss) -> Curves:
    spec = loss.spec
    required = [inp for inp in spec.inputs if not inp.optional]
    if len(required) != 2 or not spec.inputs[0].differentiable:
        raise NotPlottable(f"{spec.name}: not a (logits, target) loss")
    x = np.linspace(-1.5 * SPAN, 1.5 * SPAN, POINTS)
    logits = np.empty((POINTS, 1 + len(OTHER_LOGITS)))
    logits[:, 0] = x
    logits[:, 1:] = OTHER_LOGITS
    if "index" in spec.options.get("targets", ("index",)):
        target = np.zeros(POINTS, dtype=np.int64)
        label = "target class 0"
    else:
        target = np.tile(np.asarray(PROB_TARGET), (POINTS, 1))
        label = "target probabilities " + ", ".join(f"{p:g}" for p in PROB_TARGET)
    value, grad = loss.value_and_grad(logits, target, reduction="none")
    xname = spec.inputs[0].name
    others = ", ".join(f"{v:g}" for v in OTHER_LOGITS)
    curves = Curves(x, f"{xname}[0] (true class; classes 1-4: {others})", f"d loss / d {xname}[0]")
    curves.series.append((label, np.asarray(value, float), np.asarray(grad, float)[:, 0]))
    return curves


#: Plot recipes by kind.
RECIPES = {"pointwise": pointwise_curves, "rowwise": rowwise_curves}


def curves(loss) -> Curves | None:
    """The curves of ``loss``, or ``None`` when its kind has no recipe or the recipe does not apply."""
    recipe = RECIPES.get(loss.spec.kind)
    if recipe is None:
        return None
    try:
        return recipe(loss)
    except NotPlottable:
        return None


def render(loss) -> bytes | None:
    """A PNG of ``loss`` (left) and its gradient (right), or ``None`` (see :func:`curves`)."""
    c = curves(loss)
    if c is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 2.9), dpi=96)
    FigureCanvasAgg(fig)
    ax_value, ax_grad = fig.subplots(1, 2)
    # fixed margins: a layout engine would double the time of each plot
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.91, wspace=0.17)
    for label, value, grad in c.series:
        ax_value.plot(c.x, value, label=label or None, linewidth=1.6)
        ax_grad.plot(c.x, grad, label=label or None, linewidth=1.6)
    params = ", ".join(f"{p.name}={p.default!r}" for p in loss.spec.params)
    ax_value.set_title(f"{loss.spec.name}({params})" if params else loss.spec.name, fontsize=10)
    ax_grad.set_title(c.grad_label, fontsize=10)
    for ax in (ax_value, ax_grad):
        ax.set_xlabel(c.xlabel, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.axhline(0.0, color="0.5", linewidth=0.6)
        ax.tick_params(labelsize=8)
    if any(label for label, _, _ in c.series):
        ax_value.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/docsgen/plots.py OUTDIR", file=sys.stderr)
        return 2
    from pathlib import Path

    import fastloss

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, loss in fastloss.REGISTRY.items():
        png = render(loss)
        if png is None:
            print(f"{name}: no plot recipe for the {loss.spec.kind} kind")
            continue
        (out / f"{name}.png").write_bytes(png)
        print(f"{out / name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
