"""``fl.check_grad``: compare a loss's gradients with 4th-order central finite differences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._api import Loss
from .kinds.pointwise.host import sum_to_shape

#: Keywords of :func:`check_grad` itself; everything else goes to the loss.
_OWN = ("fd_step", "rtol", "max_points", "seed")


@dataclass(frozen=True)
class GradCheck:
    """Result of :func:`check_grad`.

    ``max_rel_error`` is the worst ``(|analytic - numeric| - noise) / max(|analytic|, |numeric|)``
    over the checked entries, where ``noise`` bounds the rounding error of the finite difference
    (``15 eps max|f| / h``), so that entries that agree up to rounding count as exact; ``input``,
    ``index``, ``analytic`` and ``numeric`` say where it occurs. ``ok`` compares it with ``rtol``.
    """

    max_rel_error: float
    input: str | None
    index: tuple[int, ...] | None
    analytic: float
    numeric: float
    checked: int
    skipped: int
    rtol: float

    @property
    def ok(self) -> bool:
        """Whether ``max_rel_error <= rtol``."""
        return bool(self.max_rel_error <= self.rtol)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        where = f"{self.input}{list(self.index)}" if self.input is not None else "-"
        return (
            f"{'ok' if self.ok else 'FAILED'}: worst relative error {self.max_rel_error:.3g} at {where} "
            f"(analytic {self.analytic:.10g}, numeric {self.numeric:.10g}); "
            f"{self.checked} entries checked, {self.skipped} skipped near kinks"
        )


def check_grad(
    loss: Loss,
    *inputs,
    fd_step: float = 1e-3,
    rtol: float = 1e-6,
    max_points: int = 256,
    seed: int = 0,
    **kwargs,
) -> GradCheck:
    """Check ``loss``'s gradients against 4th-order central finite differences.

    Every differentiable input is checked, on all its entries or on ``max_points`` of them
    chosen at random. Inputs are promoted to float64 first (a float32 finite difference says
    little). Entries the loss declares unsafe for finite differences (near a kink, see
    ``LossSpec.fd_safe``) are skipped.

    Parameters
    ----------
    loss : Loss
        Any fastloss loss, built-in or custom.
    *inputs : array_like
        The loss's array inputs, as for calling it.
    fd_step : float, default 1e-3
        Relative step: entry ``x`` is moved by ``fd_step * max(1, |x|)``. The 4th-order
        difference ``(-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h`` has an error of order
        ``h**4``, so relative errors near 1e-10 are typical for smooth losses.
    rtol : float, default 1e-6
        Threshold for ``result.ok``.
    max_points : int, default 256
        Entries checked per differentiable input at most.
    seed : int, default 0
        Seed choosing the entries when there are more than ``max_points``.
    **kwargs
        Hyper-parameters, ``weight`` and ``reduction`` for the loss (``fd_step``, ``rtol``,
        ``max_points`` and ``seed`` are this function's own).

    Returns
    -------
    GradCheck
        ``max_rel_error``, where it occurs (``input``, ``index``), the ``analytic`` and
        ``numeric`` derivatives there, counts, and ``ok``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> rng = np.random.default_rng(0)
    >>> fl.check_grad(fl.log_cosh, rng.normal(size=50), rng.normal(size=50)).ok
    True
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"check_grad expects a fastloss Loss, got {type(loss).__name__}")
    spec = loss.spec
    names = [i.name for i in spec.inputs]
    if len(inputs) > len(names):
        raise TypeError(f"{spec.name} takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
    args = list(inputs) + [kwargs.pop(n) if n in kwargs else None for n in names[len(inputs):]]
    args = [None if a is None else _as_float64(a, inp.differentiable) for a, inp in zip(args, spec.inputs)]
    diff = [k for k, inp in enumerate(spec.inputs) if inp.differentiable and args[k] is not None]

    def f(xs) -> float:
        v = loss(*xs, **kwargs)
        return float(np.sum(v, dtype=np.float64))  # reduction="none": the gradient is that of the sum

    grads = loss.grad(*args, **kwargs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    grad_of = dict(zip([k for k, inp in enumerate(spec.inputs) if inp.differentiable], grads))
    safe = _safe_masks(loss, args, kwargs, diff, fd_step)

    rng = np.random.default_rng(seed)
    rows = []  # (input k, flat index, analytic, numeric)
    skipped = 0
    for k in diff:
        x = args[k]
        flat_ok = safe[k].reshape(-1) if k in safe else np.ones(x.size, bool)
        candidates = np.flatnonzero(flat_ok)
        skipped += x.size - candidates.size
        if candidates.size > max_points:
            candidates = np.sort(rng.choice(candidates, size=max_points, replace=False))
        g = np.asarray(grad_of[k], dtype=np.float64).reshape(-1)
        for i in candidates:
            rows.append((k, int(i), float(g[i]), *_derivative(f, args, k, int(i), fd_step)))

    if not rows:
        return GradCheck(0.0, None, None, 0.0, 0.0, 0, skipped, rtol)
    a, n, noise = (np.array([r[c] for r in rows]) for c in (2, 3, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.maximum(np.abs(a - n) - noise, 0.0) / np.maximum(np.abs(a), np.abs(n))
    err = np.where(np.isnan(err), np.inf, err)  # a NaN gradient is the worst possible answer
    err = np.where((a == n) & np.isfinite(a), 0.0, err)
    j = int(np.argmax(err))
    k, i = rows[j][0], rows[j][1]
    index = tuple(int(v) for v in np.unravel_index(i, args[k].shape)) if args[k].ndim else ()
    return GradCheck(float(err[j]), names[k], index, float(a[j]), float(n[j]), len(rows), skipped, rtol)


def _as_float64(x, differentiable: bool):
    arr = np.asarray(x)
    if differentiable or arr.dtype.kind == "f":
        return np.array(arr, dtype=np.float64)  # a copy: the check perturbs it
    return arr


def _derivative(f, args: list, k: int, i: int, step: float) -> tuple[float, float]:
    """The 4th-order central difference along entry ``i`` of input ``k``, and its rounding noise."""
    x = args[k]
    flat = x.reshape(-1)  # a view: x is our own contiguous copy
    x0 = flat[i]
    h = step * max(1.0, abs(x0))
    values = []
    for m in (2, 1, -1, -2):
        flat[i] = x0 + m * h
        values.append(f(args))
    flat[i] = x0
    fp2, fp1, fm1, fm2 = values
    # each value is exact to about eps |f|; the weights (1, 8, 8, 1) / 12h multiply that by 1.5 / h
    noise = 15.0 * np.finfo(np.float64).eps * max(abs(v) for v in values) / h
    return (-fp2 + 8.0 * fp1 - 8.0 * fm1 + fm2) / (12.0 * h), noise


def _safe_masks(loss: Loss, args: list, kwargs: dict, diff: list[int], step: float) -> dict[int, np.ndarray]:
    """Per differentiable input: entries where the declaration says finite differences are meaningful."""
    spec = loss.spec
    if spec.fd_safe is None:
        return {}
    params = {p.name: kwargs.get(p.name, p.default) for p in loss._params}
    largest = max((float(np.max(np.abs(args[k]), initial=0.0)) for k in diff), default=0.0)
    mask = np.asarray(spec.fd_safe(tuple(args), params, 2.0 * step * max(1.0, largest)))
    out = {}
    for k in diff:
        shape = args[k].shape
        if mask.shape == shape:
            out[k] = mask
        else:  # broadcast: an entry is safe when every loss element it feeds is
            unsafe = sum_to_shape(np.broadcast_to(~mask, np.broadcast_shapes(mask.shape, shape)).astype(float), shape)
            out[k] = unsafe == 0
    return out
