"""Batch scoring: per-sample losses and an exact summary, streamed over data of any size.

::

    from fastloss.scoring import score

    summary = score("huber", pred, target, delta=0.5)             # in-memory arrays
    out = np.empty(len(pred))                                      # or a sink with .write(start, values)
    summary = score("mse", pred_memmap, target_memmap, out=out, chunk_size=1 << 20)
    summary.mean, summary.quantiles[0.99], summary.to_dict()

**Rows.** The first axis of every input indexes the samples. A sample's loss is the loss with
``reduction="none"``: for row-wise kinds (``cross_entropy`` on ``(N, C)`` logits) that is one value
per row; for pointwise losses on ``(N, ...)`` arrays it is the *mean over the row's elements*
(so the mean over samples of equally long rows is the elementwise mean). Per-sample losses are
float64; rows whose target is the loss's ``ignore_index`` get ``nan`` and are counted as
``ignored``, not as non-finite.

**Weights.** ``weight`` holds one sample weight per row. Per-sample losses are unweighted; the
summary adds ``weight_sum``, ``weighted_sum`` (of ``w_i * loss_i``, products rounded to float64)
and ``weighted_mean``.

**Guarantees.** The summary does not depend on the chunk size, on the order in which chunks are
combined, or on the number of threads or Dask workers:

* ``rows``, ``count``, ``ignored``, ``nonfinite``, per-class counts: exact integers.
* ``sum``, ``weight_sum``, ``weighted_sum``: the *correctly rounded* sum of the float64 values
  (exact accumulation, :mod:`fastloss._exact`), hence equal to ``math.fsum`` of the per-sample
  losses and bit-identical between a chunked and an in-memory run.
* ``mean``, ``weighted_mean``, per-class means: the exact sum divided by the exact count (weight
  sum) with a single rounding.
* ``min``, ``max``: exact.
* ``quantiles``: ``numpy.quantile(method="linear")`` of the finite per-sample losses, bit for bit,
  when ``quantiles_exact`` is true (found by bounded-memory refinement passes, see
  :mod:`fastloss._quantiles`); otherwise read from a histogram, each order statistic within a
  relative ``2**-8`` of the exact one.

``sum``, ``mean``, ``min``, ``max`` and the quantiles cover the finite losses of non-ignored rows
(``count`` of them); NaN and infinite losses are counted in ``nonfinite`` and left out, so one bad
row does not hide the scale of the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _exact, _quantiles
from ._api import Loss
from ._compile import njit
from ._spec import Discrete, Interval
from .kinds import KINDS

__all__ = [
    "DEFAULT_QUANTILES",
    "Accumulator",
    "LocalRunner",
    "ScoreError",
    "ScoringJob",
    "Summary",
    "per_sample",
    "score",
]

DEFAULT_QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
"""Quantile levels of the per-sample losses that a summary reports unless told otherwise."""
#: Per-class statistics are kept automatically up to this many classes.
MAX_CLASSES = 65536
#: Default chunk: about this many bytes of input rows.
CHUNK_BYTES = 32 << 20


class ScoreError(ValueError):
    """Bad input to a scoring job (the message is one line, meant for the user)."""


# -- losses and parameters ---------------------------------------------------------------------


def resolve_loss(loss: str | Loss) -> Loss:
    """The loss object for a registered name (or the object itself)."""
    if isinstance(loss, Loss):
        return loss
    from ._registry import REGISTRY

    if loss not in REGISTRY:
        raise ScoreError(f"unknown loss {loss!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[loss]


def loss_params(loss: Loss) -> dict:
    """``{name: Param}`` of the loss's keyword hyper-parameters (including its kind's options)."""
    return {p.name: p for p in getattr(loss, "_params", ())}


def parse_param(loss: Loss, text: str) -> tuple[str, Any]:
    """Parse ``name=value`` for ``loss`` using the parameter's declared type."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    params = loss_params(loss)
    if not sep or not name:
        raise ScoreError(f"bad --param {text!r}: expected name=value")
    if name not in params:
        known = ", ".join(params) or "none"
        raise ScoreError(f"{loss.spec.name} has no parameter {name!r} (parameters: {known})")
    p = params[name]
    try:
        if p.array and "," in raw:  # an array parameter as a list, e.g. one pos_weight per class
            value = [float(v) for v in raw.split(",")]
        elif p.type is bool:
            low = raw.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            value: Any = low in ("1", "true", "yes")
        elif p.type is int:
            value = int(raw)
        else:
            value = float(raw)
    except ValueError:
        raise ScoreError(f"bad --param {text!r}: {name} must be of type {p.type.__name__}") from None
    try:
        checked = p.check(loss.spec.name, value)
    except (TypeError, ValueError) as exc:
        raise ScoreError(str(exc)) from None
    # a list, not an array: it goes into the summary's JSON as given
    return name, checked.tolist() if isinstance(checked, np.ndarray) else checked


# -- row sources ------------------------------------------------------------------------------
# Anything with ``shape``, ``dtype`` and either ``read(lo, hi)`` or slicing along axis 0 is a source:
# NumPy arrays and memory maps, and the file readers of :mod:`fastloss._scoring_io`.


def read_rows(x, lo: int, hi: int) -> np.ndarray:
    """Rows ``[lo, hi)`` of a source, as a NumPy array in native byte order."""
    a = x.read(lo, hi) if hasattr(x, "read") else np.asarray(x[lo:hi])
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _as_source(x):
    if hasattr(x, "read") and hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


# -- per-row kernels ---------------------------------------------------------------------------


@njit(nogil=True, error_model="numpy")
def _row_means(a2, out):
    # sequential per row: the value of a row never depends on the chunk it arrived in
    n, d = a2.shape
    for r in range(n):
        s = 0.0
        for j in range(d):
            s += a2[r, j]
        out[r] = s / d


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


# -- the accumulated state ---------------------------------------------------------------------


class Accumulator:
    """The mergeable state of a summary: exact counts and sums, min/max, a histogram, per-class sums.

    ``a.merge(b)`` gives the same state as one accumulator that saw both inputs, whatever their
    split and order (everything in it is exact).
    """

    def __init__(self, n_classes: int = 0, weighted: bool = False):
        self.rows = 0
        self.ignored = 0
        self.nonfinite = 0
        self.count = 0
        self.weighted = weighted
        nsum = 3 if weighted else 1  # loss sum, then weighted sum and weight sum
        self.sums = np.zeros((nsum, _exact.NDIG), np.int64)
        self.min = math.inf
        self.max = -math.inf
        self.hist = np.zeros(1 << _quantiles.TOP_BITS, np.int64)
        self.class_counts = np.zeros(n_classes, np.int64)
        self.class_sums = np.zeros((n_classes, _exact.NDIG), np.int64)
        self._pending = 0

    @property
    def n_classes(self) -> int:
        return self.class_counts.shape[0]

    def update(self, losses: np.ndarray, *, weight=None, ignored=None, classes=None) -> None:
        """Add per-sample float64 ``losses`` (``ignored``: bool mask; ``classes``: int, -1 for none)."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        n = losses.shape[0]
        self.rows += n
        finite = np.isfinite(losses)
        if ignored is not None:
            n_ignored = int(np.count_nonzero(ignored))
            self.ignored += n_ignored
            finite &= ~ignored
        else:
            n_ignored = 0
        m = int(np.count_nonzero(finite))
        self.nonfinite += n - n_ignored - m
        if self.weighted and weight is None:
            raise ValueError("this accumulator needs sample weights")
        for lo in range(0, n, _exact.NORMALIZE_EVERY):
            hi = min(lo + _exact.NORMALIZE_EVERY, n)
            f = finite[lo:hi]
            all_finite = bool(f.all())
            vals = losses[lo:hi] if all_finite else losses[lo:hi][f]
            if self._pending + vals.size > _exact.NORMALIZE_EVERY:
                self._normalize()
            self._pending += vals.size
            self.count += vals.size
            if vals.size == 0:
                continue
            bits = _exact.as_bits(vals)
            _exact.add_values(bits, self.sums[0])
            _quantiles.hist_add(bits, self.hist)
            self.min = min(self.min, float(vals.min()))
            self.max = max(self.max, float(vals.max()))
            if self.weighted:
                w = np.asarray(weight[lo:hi], dtype=np.float64)
                w = w if all_finite else w[f]
                _exact.add_values(_exact.as_bits(w * vals), self.sums[1])
                _exact.add_values(_exact.as_bits(w), self.sums[2])
            if classes is not None and self.n_classes:
                c = np.asarray(classes[lo:hi], dtype=np.intp)
                c = c if all_finite else c[f]
                _exact.add_grouped(bits, c, self.class_sums, self.class_counts)

    def _normalize(self) -> None:
        _exact.normalize(self.sums)
        if self.n_classes:
            _exact.normalize(self.class_sums)
        self._pending = 0

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s state to this one (in place) and return ``self``."""
        if other.weighted != self.weighted or other.n_classes != self.n_classes:
            raise ValueError("cannot merge accumulators of different jobs")
        self._normalize()
        other._normalize()
        for name in ("rows", "ignored", "nonfinite", "count"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sums += other.sums
        self.hist += other.hist
        self.class_counts += other.class_counts
        self.class_sums += other.class_sums
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self._normalize()
        return self

    # compact pickles: Dask ships partial states between processes
    def __getstate__(self):
        self._normalize()
        state = dict(self.__dict__)
        nz = np.flatnonzero(self.hist)
        state["hist"] = (self.hist.shape[0], nz, self.hist[nz])
        used = np.flatnonzero(self.class_counts)
        state["class_sums"] = (self.class_sums.shape[0], used, self.class_sums[used])
        return state

    def __setstate__(self, state):
        size, nz, counts = state["hist"]
        hist = np.zeros(size, np.int64)
        hist[nz] = counts
        k, used, rows = state["class_sums"]
        cs = np.zeros((k, _exact.NDIG), np.int64)
        cs[used] = rows
        state["hist"], state["class_sums"] = hist, cs
        self.__dict__.update(state)


# -- the summary -------------------------------------------------------------------------------


@dataclass
class Summary:
    """Summary statistics of per-sample losses (see the module docstring for the guarantees)."""

    rows: int
    count: int
    ignored: int
    nonfinite: int
    sum: float
    mean: float
    min: float
    max: float
    quantiles: dict[float, float]
    quantiles_exact: bool
    weight_sum: float | None = None
    weighted_sum: float | None = None
    weighted_mean: float | None = None
    #: ``{class label: (count, mean)}`` for classification losses with known classes.
    per_class: dict[str, tuple[int, float]] | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN and infinities become ``None``, ``"inf"`` and ``"-inf"``)."""
        d: dict[str, Any] = {
            "rows": self.rows,
            "count": self.count,
            "ignored": self.ignored,
            "nonfinite": self.nonfinite,
            "sum": _json_float(self.sum),
            "mean": _json_float(self.mean),
            "min": _json_float(self.min),
            "max": _json_float(self.max),
            "quantiles": {repr(float(q)): _json_float(v) for q, v in self.quantiles.items()},
            "quantiles_exact": self.quantiles_exact,
        }
        if not self.quantiles_exact:
            d["quantile_rel_error"] = _quantiles.APPROX_REL_ERROR
        if self.weight_sum is not None:
            d["weight_sum"] = _json_float(self.weight_sum)
            d["weighted_sum"] = _json_float(self.weighted_sum)
            d["weighted_mean"] = _json_float(self.weighted_mean)
        if self.per_class is not None:
            d["per_class"] = {k: {"count": c, "mean": _json_float(m)} for k, (c, m) in self.per_class.items()}
        return d


def _json_float(x: float | None):
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


# -- a scoring job -----------------------------------------------------------------------------


class ScoringJob:
    """A loss, its inputs (row sources), sample weights and parameters, validated once.

    Picklable when its sources are (NumPy arrays, the file readers of the CLI): Dask workers run
    :meth:`score_range` and :meth:`refine_range` on row ranges.
    """

    def __init__(
        self,
        loss: str | Loss,
        inputs: Sequence,
        weight=None,
        params: Mapping[str, Any] | None = None,
        per_class: bool | str = "auto",
        labels: Sequence[str] | None = None,
    ):
        self.loss = resolve_loss(loss)
        spec = self.loss.spec
        self.params = dict(params or {})
        known = loss_params(self.loss)
        for name in self.params:
            if name not in known:
                raise ScoreError(f"{spec.name} has no parameter {name!r} (parameters: {', '.join(known) or 'none'})")
        aux = spec.options.get("aux")
        if aux and self.params.get(aux):
            raise ScoreError(f"{spec.name}: {aux}=True makes the value a pair; scoring writes one loss per sample")
        if len(inputs) > len(spec.inputs):
            raise ScoreError(f"{spec.name} takes {len(spec.inputs)} inputs ({', '.join(i.name for i in spec.inputs)})")
        inputs = list(inputs) + [None] * (len(spec.inputs) - len(inputs))
        self.names = [i.name for i in spec.inputs]
        if labels is not None:  # how error messages name the inputs (e.g. "--pred (p.npy)")
            self.names = [lab or n for lab, n in zip(list(labels) + [None] * len(self.names), self.names)]
        for inp, x in zip(spec.inputs, inputs):
            if x is None and not inp.optional:
                raise ScoreError(f"{spec.name} needs the input {inp.name!r}")
        self.weight_name = "weight" if labels is None or len(labels) <= len(spec.inputs) else labels[len(spec.inputs)]
        self.sources = [None if x is None else _as_source(x) for x in inputs]
        self.weight = None if weight is None else _as_source(weight)

        named = [(n, s) for n, s in zip(self.names, self.sources) if s is not None]
        if self.weight is not None:
            named.append((self.weight_name, self.weight))
        self.n_rows = -1
        for name, src in named:
            shape = _shape(src)
            dt = np.dtype(src.dtype)
            if dt.kind not in "biuf":
                raise ScoreError(f"{name}: unsupported dtype {dt} (expected bool, integer or floating point)")
            if len(shape) == 0:
                raise ScoreError(f"{name}: a scalar has no rows; pass one row per sample")
            if shape[0] > 0 and math.prod(shape[1:]) == 0:  # e.g. a corrupt header claiming (10**12, 0)
                raise ScoreError(f"{name}: shape {shape}: its {shape[0]:,} rows hold no values; nothing to score")
            if self.n_rows < 0:
                self.n_rows, first = shape[0], name
            elif shape[0] != self.n_rows:
                raise ScoreError(f"length mismatch: {first} has {self.n_rows} rows, {name} has {shape[0]}")
        if self.weight is not None and len(_shape(self.weight)) != 1:
            raise ScoreError(
                f"{self.weight_name}: expected one weight per row, shape ({self.n_rows},), got {_shape(self.weight)}"
            )

        self._resolve_classes(per_class)
        self._resolve_intervals()
        # a first small chunk validates parameters, shapes and labels before any output is made
        self.score_arrays(*self.read(0, min(self.n_rows, 16)), 0)

    def _resolve_intervals(self) -> None:
        """The inputs whose declared domain is an interval short of the real line (e.g. a target in [0, 1])."""
        known = loss_params(self.loss)
        full = {n: p.default for n, p in known.items()}
        full.update(self.params)
        domains = self.loss.spec.input_domains(full)
        self.intervals: list[tuple[int, Interval]] = []
        for k, (inp, src) in enumerate(zip(self.loss.spec.inputs, self.sources)):
            dom = domains.get(inp.name)
            if src is None or not isinstance(dom, Interval) or (k == 1 and self.index_target):
                continue  # class-index targets are checked against the number of classes instead
            if dom.low == -math.inf and dom.high == math.inf and dom.closed == (True, True):
                continue
            self.intervals.append((k, dom))

    # -- what the loss and the target tell us ---------------------------------------------------

    def _resolve_classes(self, per_class: bool | str) -> None:
        spec = self.loss.spec
        known = loss_params(self.loss)
        full = {n: p.default for n, p in known.items()}
        full.update(self.params)
        pred, target = [*self.sources, None, None][:2]
        self.index_target = False
        self.n_index = 0
        self.ignore_index = None
        self.discrete: list[tuple[int, tuple[float, ...]]] = []
        self.class_values: np.ndarray | None = None
        if pred is not None and target is not None:
            pshape, tshape = _shape(pred), _shape(target)
            tkind = np.dtype(target.dtype).kind
            if not KINDS[spec.kind].elementwise and len(tshape) == len(pshape) - 1 and tkind in "iub":
                # class-index targets of a row-wise loss: labels in [0, C), or ignore_index
                self.index_target = True
                self.n_index = pshape[-1]
                if "ignore_index" in known:
                    self.ignore_index = int(full["ignore_index"])
                self.class_values = np.arange(self.n_index, dtype=np.float64)
        domains = spec.input_domains(full)
        spec_names = [i.name for i in spec.inputs]
        for k, (name, src) in enumerate(zip(spec_names, self.sources)):
            if src is not None and isinstance(domains.get(name), Discrete):
                self.discrete.append((k, tuple(domains[name].values)))
        if self.class_values is None and target is not None and KINDS[spec.kind].elementwise:
            tshape = _shape(target)
            dom = domains.get(spec_names[1])
            classification = spec.properties is not None and "classification" in spec.properties.problem
            if len(tshape) == 1 or (len(tshape) == 2 and tshape[1] == 1):
                if isinstance(dom, Discrete):
                    self.class_values = np.array(sorted(dom.values), dtype=np.float64)
                elif (classification and isinstance(dom, Interval) and math.isfinite(dom.low)
                      and math.isfinite(dom.high) and dom.low == int(dom.low) and dom.high == int(dom.high)
                      and dom.high - dom.low <= 255):
                    self.class_values = np.arange(dom.low, dom.high + 1, dtype=np.float64)
        if per_class is True and self.class_values is None:
            raise ScoreError(f"{spec.name}: per-class statistics need class labels as targets")
        if per_class is False or (per_class == "auto" and self.class_values is not None
                                  and self.class_values.size > MAX_CLASSES):
            self.class_values = None

    @property
    def n_classes(self) -> int:
        return 0 if self.class_values is None else int(self.class_values.size)

    def class_label(self, k: int) -> str:
        """How class ``k`` is named in the summary: its index, or its target value."""
        return str(k) if self.index_target else f"{self.class_values[k]:g}"

    # -- reading and scoring --------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return self.n_rows

    def ranges(self, chunk_size: int | None = None) -> list[tuple[int, int]]:
        """The ``(lo, hi)`` row ranges of the chunks.

        ``chunk_size`` rows each (by default :meth:`default_chunk_rows`).
        """
        step = int(chunk_size) if chunk_size is not None else self.default_chunk_rows()
        if step < 1:
            raise ScoreError(f"chunk size must be positive, got {chunk_size}")
        return [(lo, min(lo + step, self.n_rows)) for lo in range(0, self.n_rows, step)]

    def default_chunk_rows(self) -> int:
        """Rows per chunk such that a chunk of inputs takes about ``CHUNK_BYTES``."""
        per_row = 24  # the per-sample loss and its bookkeeping
        for src in [*self.sources, self.weight]:
            if src is not None:
                shape = _shape(src)
                per_row += np.dtype(src.dtype).itemsize * int(np.prod(shape[1:], dtype=np.int64))
        return max(1, CHUNK_BYTES // per_row)

    def read(self, lo: int, hi: int) -> tuple[list, np.ndarray | None]:
        """Rows ``[lo, hi)`` of every input and of the weights (``None`` without weights)."""
        arrays = [None if s is None else read_rows(s, lo, hi) for s in self.sources]
        w = None if self.weight is None else read_rows(self.weight, lo, hi)
        return arrays, w

    def score_arrays(self, arrays: list, weight: np.ndarray | None, lo: int):
        """Per-sample float64 losses of rows starting at global row ``lo``: ``(losses, ignored, classes)``."""
        spec = self.loss.spec
        n = next(a.shape[0] for a in arrays if a is not None)
        ignored = None
        if self.index_target:
            t = arrays[1]
            bad = (t < 0) | (t >= self.n_index)
            if self.ignore_index is not None:
                is_ignored = t == self.ignore_index
                bad &= ~is_ignored
                ignored = is_ignored if is_ignored.any() else None
            if bad.any():
                i = _first(bad)
                extra = f" or ignore_index={self.ignore_index}" if self.ignore_index is not None else ""
                raise ScoreError(
                    f"{self.names[1]}: label {t[i].item()} at row {lo + i} is out of range [0, {self.n_index}){extra}"
                )
        for k, allowed in self.discrete:
            a = arrays[k]
            ok = np.isin(a, np.asarray(allowed))
            if not ok.all():
                flat = int(np.argmin(ok.reshape(-1)))
                row = lo + np.unravel_index(flat, a.shape)[0]
                allowed_s = ", ".join(f"{v:g}" for v in allowed)
                raise ScoreError(
                    f"{self.names[k]}: value {a.reshape(-1)[flat].item()!r} at row {row} is not in {{{allowed_s}}}"
                )
        for k, dom in self.intervals:
            a = arrays[k]
            ok = (a >= dom.low) if dom.closed[0] else (a > dom.low)
            ok &= (a <= dom.high) if dom.closed[1] else (a < dom.high)
            bad = ~ok & ~np.isnan(a)  # NaN is not out of the domain: it is reported as a non-finite loss
            if bad.any():
                flat = int(np.argmax(bad.reshape(-1)))
                row = lo + np.unravel_index(flat, a.shape)[0]
                raise ScoreError(f"{self.names[k]}: value {a.reshape(-1)[flat].item()!r} at row {row} is outside "
                                 f"{self.loss.spec.name}'s domain {dom}")
        if weight is not None:
            fin = np.isfinite(weight)
            if not fin.all():
                i = _first(~fin)
                raise ScoreError(f"{self.weight_name}: non-finite value {weight[i].item()} at row {lo + i}")
            neg = weight < 0
            if neg.any():
                i = _first(neg)
                raise ScoreError(f"{self.weight_name}: negative weight {weight[i].item()} at row {lo + i} "
                                 "(sample weights must be >= 0)")
        kwargs = dict(self.params)
        call_inputs = list(arrays)
        while call_inputs and call_inputs[-1] is None:
            call_inputs.pop()
        try:
            out = self.loss(*call_inputs, reduction="none", **kwargs)
        except (ValueError, TypeError) as exc:
            raise ScoreError(self._in_file_terms(exc, arrays)) from None
        out = np.asarray(out)
        if out.ndim == 0 or out.shape[0] != n:
            raise ScoreError(
                f"{spec.name}: per-sample losses of shape {out.shape} for {n} rows; pass one row per sample"
            )
        if out.ndim == 1:
            losses = out.astype(np.float64)  # always a copy: chunk buffers may be reused
        elif KINDS[spec.kind].elementwise:
            losses = np.empty(n, np.float64)
            _row_means(np.ascontiguousarray(out.reshape(n, -1)), losses)
        else:
            raise ScoreError(
                f"{spec.name}: per-sample losses of shape {out.shape}; pass one row per sample "
                f"(e.g. reshape (batch, seq, classes) logits to (batch * seq, classes))"
            )
        if ignored is not None:
            losses[ignored] = np.nan
        classes = None
        if self.class_values is not None:
            t = arrays[1].reshape(n)
            if self.index_target:
                classes = t.astype(np.intp)
                if ignored is not None:
                    classes[ignored] = -1
            else:
                idx = np.searchsorted(self.class_values, t)
                idx_c = np.minimum(idx, self.class_values.size - 1)
                classes = np.where(self.class_values[idx_c] == t, idx_c, -1).astype(np.intp)
        return losses, ignored, classes

    def _in_file_terms(self, exc: Exception, arrays: list) -> str:
        """The loss's error about a chunk, told with the inputs' own names and full shapes.

        The loss sees a chunk (the first one is a 16-row probe): its message quotes chunk shapes such
        as ``(16, 10)``, which the user never made. Each is replaced by the whole input's shape, and
        the inputs are listed with their files.
        """
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        listed = []
        for name, src, a in zip(self.names, self.sources, arrays):
            if src is None or a is None:
                continue
            full = _shape(src)
            if a.shape != full:
                msg = msg.replace(str(tuple(a.shape)), str(full))
            listed.append(f"{name} {full}")
        return f"{msg} (inputs: {', '.join(listed)})" if listed else msg

    def new_accumulator(self) -> Accumulator:
        """An empty :class:`Accumulator` for this job's classes and weighting."""
        return Accumulator(self.n_classes, weighted=self.weight is not None)

    def update(self, acc: Accumulator, lo: int, hi: int) -> np.ndarray:
        """Score rows ``[lo, hi)`` into ``acc``; return their per-sample losses."""
        arrays, w = self.read(lo, hi)
        losses, ignored, classes = self.score_arrays(arrays, w, lo)
        acc.update(losses, weight=w, ignored=ignored, classes=classes)
        return losses

    def score_range(self, lo: int, hi: int, keep: bool = True) -> tuple[Accumulator, np.ndarray | None]:
        """A fresh accumulator for rows ``[lo, hi)`` and (when ``keep``) their per-sample losses."""
        acc = self.new_accumulator()
        losses = self.update(acc, lo, hi)
        return acc, (losses if keep else None)

    def values_range(self, lo: int, hi: int) -> np.ndarray:
        """The finite losses of the non-ignored rows in ``[lo, hi)`` (what quantiles are taken of)."""
        losses, _, _ = self.score_arrays(*self.read(lo, hi), lo)
        return losses[np.isfinite(losses)]

    def refine_range(self, lo: int, hi: int, plan: _quantiles.RefinePlan) -> list:
        """One refinement pass of the exact quantiles (``plan``) over the losses of rows ``[lo, hi)``."""
        return plan.partial(self.values_range(lo, hi))

    def summary(self, acc: Accumulator, quantiles: Sequence[float], order_stat: Callable | None = None) -> Summary:
        """The summary of ``acc``; ``order_stat(rank)`` gives exact order statistics when known."""
        exact = order_stat is not None
        if order_stat is None:
            cum = np.cumsum(acc.hist)
            order_stat = lambda r: _quantiles.approx_order_stat(acc.hist, cum, r, acc.min, acc.max)
        qs = _quantiles.from_order_stats(acc.count, quantiles, order_stat)
        n = acc.count
        s = Summary(
            rows=acc.rows,
            count=n,
            ignored=acc.ignored,
            nonfinite=acc.nonfinite,
            sum=_exact.to_float(acc.sums[0]),
            mean=_exact.mean(acc.sums[0], n) if n else math.nan,
            min=acc.min if n else math.nan,
            max=acc.max if n else math.nan,
            quantiles=qs,
            quantiles_exact=exact or n == 0,
        )
        if acc.weighted:
            wl, ws = _exact.to_int(acc.sums[1]), _exact.to_int(acc.sums[2])
            s.weighted_sum = _exact.to_float(acc.sums[1])
            s.weight_sum = _exact.to_float(acc.sums[2])
            s.weighted_mean = _exact.ratio(wl, ws) if n else math.nan
        if acc.n_classes:
            counts = acc.class_counts
            s.per_class = {
                self.class_label(k): (int(counts[k]), _exact.mean(acc.class_sums[k], int(counts[k])))
                for k in np.flatnonzero(counts)
            }
        return s


# -- running a job -----------------------------------------------------------------------------


class LocalRunner:
    """Runs a job's tasks in this process, in order.

    A runner's ``map(job, method, arg_tuples)`` yields ``getattr(job, method)(*args)`` for each
    tuple, in order; :class:`fastloss.dask.DaskRunner` does the same on a Dask cluster.
    """

    def map(self, job: ScoringJob, method: str, arg_tuples: Iterable[tuple]) -> Iterator:
        """``job.<method>(*args)`` for each tuple of ``arg_tuples``, in order, in this process."""
        fn = getattr(job, method)
        for args in arg_tuples:
            yield fn(*args)


def _check_out(out, n: int):
    if out is None or hasattr(out, "write"):
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array or have a write(start, values) method, got {type(out).__name__}")
    if out.shape != (n,):
        raise ValueError(f"out must have shape ({n},), got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def _write(out, lo: int, losses: np.ndarray) -> None:
    if hasattr(out, "write"):
        out.write(lo, losses)
    else:
        out[lo : lo + losses.shape[0]] = losses


def _reader(out):
    if out is None:
        return None
    if isinstance(out, np.ndarray):
        return out
    return out.reader() if hasattr(out, "reader") else None


def _all_in_memory(job: ScoringJob) -> bool:
    return all(s is None or (isinstance(s, np.ndarray) and not isinstance(s, np.memmap)) for s in job.sources)


def run(
    job: ScoringJob,
    *,
    chunk_size: int | None = None,
    out=None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    exact_quantiles: bool | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    runner=None,
) -> Summary:
    """Run ``job``: stream its rows in chunks, write per-sample losses to ``out``, summarise.

    ``runner`` (default: this process) maps tasks over row ranges, e.g.
    :class:`fastloss.dask.DaskRunner` for a Dask cluster. See :func:`score` for the other arguments.
    """
    quantiles = tuple(float(q) for q in quantiles)
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ScoreError(f"quantiles must be in [0, 1], got {q}")
    out = _check_out(out, job.rows)
    ranges = job.ranges(chunk_size)
    total = job.rows
    if progress:
        progress("score", 0, total)
    acc = job.new_accumulator()
    if runner is None:
        for lo, hi in ranges:
            losses = job.update(acc, lo, hi)
            if out is not None:
                _write(out, lo, losses)
            if progress:
                progress("score", hi, total)
    else:
        keep = out is not None
        results = runner.map(job, "score_range", [(lo, hi, keep) for lo, hi in ranges])
        for (lo, hi), (part, losses) in zip(ranges, results):
            acc.merge(part)
            if out is not None:
                _write(out, lo, losses)
            if progress:
                progress("score", hi, total)

    source = _reader(out)
    if exact_quantiles is None:
        exact_quantiles = source is not None or _all_in_memory(job)
    order_stat = None
    if exact_quantiles and acc.count and quantiles:
        sel = _quantiles.Selector(acc.hist, _quantiles.needed_ranks(acc.count, quantiles))
        passes = 0
        while not sel.done:
            passes += 1
            stage = f"quantiles (pass {passes})"
            plan = sel.plan()
            partial = plan.empty()
            if source is not None:  # re-read the per-sample output: no re-scoring
                results: Iterable = (
                    plan.partial(_finite(read_rows(source, lo, hi))) for lo, hi in ranges
                )
            else:
                results = (runner or LocalRunner()).map(job, "refine_range", [(lo, hi, plan) for lo, hi in ranges])
            for (_, hi), part in zip(ranges, results):
                partial = plan.combine(partial, part)
                if progress:
                    progress(stage, hi, total)
            sel.resolve(plan, partial)
        order_stat = sel.value
    return job.summary(acc, quantiles, order_stat)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return values[np.isfinite(values)]


def score(
    loss: str | Loss,
    *inputs,
    weight=None,
    params: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
    out=None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    exact_quantiles: bool | None = None,
    per_class: bool | str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    runner=None,
    **kwparams,
) -> Summary:
    """Score ``inputs`` with ``loss`` row by row and summarise the per-sample losses.

    Parameters
    ----------
    loss : str or Loss
        A registered loss name (``"mse"``, ``"cross_entropy"``, ...) or a loss object.
    *inputs : array-like or row source
        The loss's inputs in order (e.g. ``pred, target``); the first axis indexes samples. NumPy
        arrays, memory maps (read chunk by chunk) or objects with ``shape``, ``dtype`` and
        ``read(lo, hi)``.
    weight : array-like, optional
        One sample weight per row (adds ``weight_sum``, ``weighted_sum``, ``weighted_mean``).
    params, **kwparams
        The loss's hyper-parameters (e.g. ``delta=0.5``, ``ignore_index=0``).
    chunk_size : int, optional
        Rows per chunk (default: about 32 MiB of input). Results do not depend on it.
    out : ndarray of shape (N,) or sink, optional
        Receives the float64 per-sample losses (``nan`` for ignored rows); a sink is any object with
        ``write(start, values)`` (and optionally ``reader()`` returning a row source of what it wrote).
    quantiles : sequence of float
        Quantile levels in [0, 1].
    exact_quantiles : bool, optional
        Exact quantiles (``numpy.quantile`` bit for bit) by refinement passes over the per-sample
        losses: re-read from ``out`` when it is readable, otherwise re-scored from the inputs. Default:
        exact when ``out`` is readable or every input is an in-memory array; otherwise approximate.
    per_class : bool or "auto"
        Per-class count and mean for classification targets ("auto": when the classes are known and
        at most ``MAX_CLASSES``).
    progress : callable, optional
        ``progress(stage, rows_done, rows_total)``, called after each chunk.
    runner : optional
        Where chunks run (default: here, in order); see :class:`fastloss.dask.DaskRunner`.

    Returns
    -------
    Summary
    """
    merged = dict(params or {})
    merged.update(kwparams)
    job = ScoringJob(loss, inputs, weight=weight, params=merged, per_class=per_class)
    return run(
        job, chunk_size=chunk_size, out=out, quantiles=quantiles, exact_quantiles=exact_quantiles,
        progress=progress, runner=runner,
    )


def per_sample(loss: str | Loss, *inputs, chunk_size: int | None = None, **params) -> np.ndarray:
    """The float64 per-sample losses as one array (``nan`` for ignored rows); see :func:`score`."""
    job = ScoringJob(loss, inputs, params=params, per_class=False)
    out = np.empty(job.rows, np.float64)
    for lo, hi in job.ranges(chunk_size):
        out[lo:hi] = job.score_arrays(*job.read(lo, hi), lo)[0]
    return out
