"""``fl.combine``: a weighted sum of losses (multi-task objectives, regularisation terms).

::

    objective = fl.combine({
        "ce":  (fl.binary_cross_entropy, 1.0),
        "aux": (fl.mse, 0.1),
        "reg": (fl.l2, 1e-4, {"reduction": "sum"}),
    })
    res = objective.value_and_grad(ce=(logits, y), aux=(pred, t), reg=(w,))
    res.total, res.values["aux"], res.grads["ce"], res.grad_of(w)

Each term runs its own fused kernel once. The gradient of the total with respect to an input
object is the weighted sum over the terms that take that same object (by identity) as a
differentiable input; ``res.grads[term]`` and ``res.grad_of(x)`` both give it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _stats
from ._api import Loss
from ._compile import njit
from ._config import CHUNK
from ._kernels.tuples import chunk_stats
from ._stats import GradStats

#: Call keywords of :meth:`Combined.value_and_grad` that cannot be term names.
_RESERVED = ("stats",)
#: Keywords a term may not fix: each term's gradient buffer and statistics are managed here.
_TERM_FORBIDDEN = ("out", "stats")


@dataclass
class CombinedResult:
    """What :meth:`Combined.value_and_grad` returns.

    Unpacks like a loss's ``value_and_grad``: ``total, values, grads = res`` (and ``stats`` last
    when it was asked for).

    Attributes
    ----------
    total : numpy.float64
        ``sum(weight_k * value_k)``.
    values : dict
        Each term's own (unweighted) loss value.
    grads : dict
        Per term, the gradient of the *total* with respect to that term's differentiable
        input(s) (a tuple when the loss has several). Terms sharing an input object share one
        summed gradient array.
    stats : GradStats or None
        With ``stats=True``: norm, max ``|g|`` and non-finite count over all distinct gradient
        arrays of the total (global, as in global-norm clipping).
    """

    total: np.float64
    values: dict[str, Any]
    grads: dict[str, Any]
    stats: GradStats | None = None
    _by_id: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def grad_of(self, x) -> np.ndarray:
        """The gradient of the total with respect to the input object ``x``."""
        try:
            return self._by_id[id(x)]
        except KeyError:
            raise KeyError("this object is not a differentiable input of any term") from None

    def __iter__(self):
        head = (self.total, self.values, self.grads)
        return iter(head if self.stats is None else (*head, self.stats))


class Combined:
    """A weighted sum of fastloss losses; see :func:`combine`.

    ``weights`` is a plain dict that may be changed between calls (e.g. for a schedule).
    """

    def __init__(self, terms: Mapping[str, Any]):
        if not isinstance(terms, Mapping) or not terms:
            raise TypeError("combine expects a non-empty mapping {name: loss or (loss, weight[, kwargs])}")
        self.losses: dict[str, Loss] = {}
        self.weights: dict[str, float] = {}
        self.kwargs: dict[str, dict[str, Any]] = {}
        for name, term in terms.items():
            if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED:
                raise ValueError(f"combine: term name {name!r} must be an identifier other than {_RESERVED}")
            loss, weight, kwargs = _parse_term(name, term)
            self.losses[name], self.weights[name], self.kwargs[name] = loss, weight, kwargs

    def __repr__(self) -> str:
        terms = ", ".join(f"{n}={self.weights[n]:g}*{loss.spec.name}" for n, loss in self.losses.items())
        return f"<fastloss combined loss {terms}>"

    def __call__(self, args: Mapping[str, Any] | None = None, /, **term_args) -> np.float64:
        """The weighted total (no gradients). Arguments as for :meth:`value_and_grad`."""
        calls = self._calls(args, term_args)
        total = 0.0
        for name, (pos, kw) in calls.items():
            total += self._weight(name) * _scalar(name, self.losses[name](*pos, **kw))
        return np.float64(total)

    def value_and_grad(
        self, args: Mapping[str, Any] | None = None, /, *, stats: bool = False, **term_args
    ) -> CombinedResult:
        """The total, each term's value and the gradients, one fused kernel call per term.

        Parameters
        ----------
        args : mapping, optional
            ``{term name: arguments}``; the same may be given as keywords (``ce=(logits, y)``).
            A term's arguments are a tuple of positional arrays, a mapping of keyword arguments
            (arrays by input name, hyper-parameters, ``weight``, ``reduction``), or a single
            array for one-input losses such as ``l1`` / ``l2``. Call-time keywords override the
            ones fixed in :func:`combine`.
        stats : bool, default False
            Also compute :class:`~fastloss.GradStats` over all gradients of the total.

        Returns
        -------
        CombinedResult
        """
        calls = self._calls(args, term_args)
        total = 0.0
        values: dict[str, Any] = {}
        grads: dict[str, Any] = {}
        by_id: dict[int, np.ndarray] = {}
        owners: dict[int, list[str]] = {}
        term_stats: dict[str, GradStats] = {}
        for name, (pos, kw) in calls.items():
            loss, w = self.losses[name], self._weight(name)
            res = loss.value_and_grad(*pos, **kw, stats=stats)
            value, g = res[0], res[1]
            values[name] = value
            total += w * _scalar(name, value)
            if stats:
                s = res[2]
                term_stats[name] = GradStats(abs(w) * s.norm, abs(w) * s.max_abs, s.nonfinite)
            for obj, gk in zip(_differentiable_objects(loss, pos, kw), g if isinstance(g, tuple) else (g,)):
                with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf propagate, as in the kernels
                    if w != 1.0:
                        gk *= w  # our own fresh buffer
                    key = id(obj)
                    if key in by_id:
                        by_id[key] += gk
                    else:
                        by_id[key] = gk
                owners.setdefault(key, []).append(name)
        for name, (pos, kw) in calls.items():
            objs = _differentiable_objects(self.losses[name], pos, kw)
            g = tuple(by_id[id(o)] for o in objs)
            grads[name] = g[0] if len(g) == 1 else g
        summary = None
        if stats:
            # A term's own statistics (from its kernel, scaled by its weight) describe a gradient
            # array of the total exactly when that array comes from that term alone; arrays
            # summed over terms, or sharing one term's statistics, are measured again.
            alone = {
                key: names[0] for key, names in owners.items()
                if len(names) == 1 and len(_differentiable_objects(self.losses[names[0]], *calls[names[0]])) == 1
            }
            parts = [term_stats[alone[key]] if key in alone else array_stats(g) for key, g in by_id.items()]
            summary = GradStats(
                math.sqrt(sum(p.norm * p.norm for p in parts)),
                max((p.max_abs for p in parts), default=0.0),
                sum(p.nonfinite for p in parts),
            )
        return CombinedResult(np.float64(total), values, grads, summary, by_id)

    # -- helpers ---------------------------------------------------------------------------------

    def _weight(self, name: str) -> float:
        w = self.weights[name]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"combine: the weight of term {name!r} must be a finite number, got {w!r}")
        return float(w)

    def _calls(self, args, term_args) -> dict[str, tuple[tuple, dict]]:
        given = dict(args or {})
        for k, v in term_args.items():
            if k in given:
                raise TypeError(f"combine: arguments for term {k!r} given twice")
            given[k] = v
        unknown = sorted(set(given) - set(self.losses))
        if unknown:
            raise TypeError(f"combine: unknown term(s) {unknown}; terms are {list(self.losses)}")
        missing = [n for n in self.losses if n not in given]
        if missing:
            raise TypeError(f"combine: missing arguments for term(s) {missing}")
        calls = {}
        for name in self.losses:
            a = given[name]
            if isinstance(a, Mapping):
                pos, kw = (), dict(a)
            elif isinstance(a, tuple):
                pos, kw = a, {}
            else:
                pos, kw = (a,), {}
            bad = [k for k in kw if k in _TERM_FORBIDDEN]
            if bad:
                raise TypeError(f"combine: term {name!r} cannot take {bad}")
            merged = {**self.kwargs[name], **kw}
            if merged.get("reduction", "mean") == "none":
                raise ValueError(f"combine: term {name!r} uses reduction='none'; a combined loss needs scalar terms")
            aux = self.losses[name].spec.options.get("aux")
            if aux and merged.get(aux):
                raise ValueError(f"combine: term {name!r} sets {aux}=True, which makes its value a pair; "
                                 "a combined loss needs scalar terms")
            calls[name] = (pos, merged)
        return calls


def combine(terms: Mapping[str, Any]) -> Combined:
    """A multi-task loss: the weighted sum of fastloss losses, with fused gradients.

    Parameters
    ----------
    terms : mapping
        ``{name: loss}``, ``{name: (loss, weight)}`` or ``{name: (loss, weight, kwargs)}``,
        where ``kwargs`` fixes keyword arguments of that term (hyper-parameters, ``reduction``,
        ``weight``). Names are identifiers (used as keywords when calling).

    Returns
    -------
    Combined
        ``objective(...)`` returns the total; ``objective.value_and_grad(...)`` a
        :class:`CombinedResult` (total, per-term values, gradients, optional stats).

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> pred, target, w = np.array([0.5, 2.0]), np.zeros(2), np.array([1.0, -2.0])
    >>> objective = fl.combine({"fit": (fl.mse, 1.0), "reg": (fl.l2, 0.1, {"reduction": "sum"})})
    >>> total, values, grads = objective.value_and_grad(fit=(pred, target), reg=w)
    >>> float(total), float(values["fit"])
    (2.375, 2.125)
    >>> grads["reg"]
    array([ 0.1, -0.2])
    """
    return Combined(terms)


def _parse_term(name: str, term) -> tuple[Loss, float, dict[str, Any]]:
    kwargs: dict[str, Any] = {}
    if isinstance(term, Loss):
        loss, weight = term, 1.0
    elif isinstance(term, tuple) and len(term) in (2, 3) and isinstance(term[0], Loss):
        loss, weight = term[0], term[1]
        if len(term) == 3:
            if not isinstance(term[2], Mapping):
                raise TypeError(f"combine: the third item of term {name!r} must be a dict of keyword arguments")
            kwargs = dict(term[2])
    else:
        raise TypeError(f"combine: term {name!r} must be a loss, (loss, weight) or (loss, weight, kwargs): {term!r}")
    bad = [k for k in kwargs if k in _TERM_FORBIDDEN]
    if bad:
        raise TypeError(f"combine: term {name!r} cannot fix {bad}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"combine: the weight of term {name!r} must be a finite number, got {weight!r}")
    return loss, float(weight), kwargs


def _scalar(name: str, value) -> float:
    if np.ndim(value) != 0:
        raise ValueError(f"combine: term {name!r} returned an array; use reduction 'mean' or 'sum'")
    return float(value)


def _differentiable_objects(loss: Loss, pos: tuple, kw: dict) -> list:
    """The argument objects bound to ``loss``'s differentiable inputs, in gradient order."""
    objs = []
    for k, inp in enumerate(loss.spec.inputs):
        if inp.differentiable:
            objs.append(pos[k] if k < len(pos) else kw.get(inp.name))
    return objs


@njit(nogil=True)
def _chunk_rows(flat, rows):
    n = flat.size
    for c in range(rows.shape[0]):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        chunk_stats((flat[lo:hi],), rows[c])


def array_stats(g: np.ndarray) -> GradStats:
    """:class:`GradStats` of one array, folded over the same chunks as the kernels' statistics."""
    flat = np.ascontiguousarray(g).reshape(-1)
    rows = _stats.empty_partials((flat.size + CHUNK - 1) // CHUNK)
    if flat.size:
        _chunk_rows(flat, rows)
    return _stats.combine(rows)

