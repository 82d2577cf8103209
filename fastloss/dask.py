"""Losses over ``dask.array`` inputs, and scoring jobs on a Dask cluster (``pip install "fastloss[dask]"``).

::

    import dask.array as da
    import fastloss.dask as fld

    v = fld.value("huber", pred, target, delta=0.5)          # lazy 0-d dask array; v.compute()
    ps = fld.per_sample("cross_entropy", logits, labels)     # lazy (N,) float64 dask array
    s = fld.summarize("mse", pred, target)                   # fastloss.scoring.Summary (computes)

Every block of rows is scored by the fused kernels in a Dask task; partial results are exact
(:mod:`fastloss._exact`) and combined by a tree reduction, so a result does not depend on the
chunking or on which worker did what: ``value`` equals the in-memory loss up to its own float64
rounding, and ``summarize`` gives the same summary, bit for bit, as :func:`fastloss.scoring.score`
on the same data. Inputs are split by rows only: the other axes of each input are gathered into one
block (``(N, C)`` logits are rechunked to ``(rows, C)``). The default scheduler runs the graphs; with a
``distributed.Client`` active they run on its cluster. Loss objects travel to workers by name.

:class:`DaskRunner` runs a :class:`fastloss.scoring.ScoringJob` (what ``fastloss score --scheduler``
does): its row ranges become tasks on the cluster, a bounded number in flight, results consumed in
order. The workers must be able to read the input files at the same paths.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import _exact, _quantiles
from ._api import Loss
from .kinds import KINDS
from .scoring import DEFAULT_QUANTILES, Accumulator, ScoreError, ScoringJob, Summary, resolve_loss

__all__ = ["DaskRunner", "per_sample", "summarize", "value"]


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ImportError('fastloss.dask needs dask: pip install "fastloss[dask]"') from None
    return dask, da


# -- aligning inputs by rows ---------------------------------------------------------------------


def _align(arrays: Sequence, weight=None):
    """Dask arrays chunked identically along axis 0 (and not at all along the others)."""
    _, da = _dask()
    xs = [None if a is None else da.asarray(a) for a in arrays]
    w = None if weight is None else da.asarray(weight)
    present = [x for x in [*xs, w] if x is not None]
    for x in present:
        if x.ndim == 0:
            raise ScoreError("every input needs a first (row) axis")
        if math.isnan(x.shape[0]):
            raise ScoreError("inputs need known row counts (call .compute_chunk_sizes() first)")
    n = present[0].shape[0]
    for x in present[1:]:
        if x.shape[0] != n:
            raise ScoreError(f"length mismatch: {n} rows and {x.shape[0]} rows")
    rows = present[0].chunks[0]

    def rechunk(x):
        if x is None:
            return None
        return x.rechunk({0: rows, **{i: -1 for i in range(1, x.ndim)}})

    return [rechunk(x) for x in xs], rechunk(w), rows


def _row_blocks(x) -> list:
    return list(x.to_delayed().reshape(-1)) if x is not None else None


def _tree(parts: list, combine, split_every: int):
    """Combine delayed ``parts`` level by level, ``split_every`` at a time (a tree reduction)."""
    dask, _ = _dask()
    split_every = max(2, int(split_every))
    while len(parts) > 1:
        parts = [
            dask.delayed(combine, pure=True)(*parts[i : i + split_every])
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


# -- loss values ---------------------------------------------------------------------------------


def _mean_denominator(loss: Loss, arrays: list, weight, params: dict) -> float:
    """What ``reduction="mean"`` divides by, for one block (summed exactly across blocks)."""
    spec = loss.spec
    if KINDS[spec.kind].elementwise:
        shape = np.broadcast_shapes(*(a.shape for a in arrays if a is not None))
        if weight is None:
            return np.full(1, float(np.prod(shape)))
        return np.broadcast_to(np.asarray(weight, dtype=np.float64), shape).reshape(-1)
    # row-wise kinds: one term per row; class-index targets skip ignore_index and, when the loss's
    # declaration says its mean divides by the class weights (options["mean"] == "weight"), carry them
    pred, target = arrays[0], arrays[1]
    if target is not None and target.ndim == pred.ndim - 1 and target.dtype.kind in "iub":
        keep = np.ones(target.shape, bool)
        ignore = params.get("ignore_index", _default(loss, "ignore_index"))
        if ignore is not None:
            keep = target != ignore
        if weight is None or spec.options.get("mean", "weight") != "weight":
            return np.full(1, float(np.count_nonzero(keep)))
        return np.asarray(weight, dtype=np.float64)[target[keep]].reshape(-1)
    return np.full(1, float(np.prod(pred.shape[:-1])))


def _default(loss: Loss, name: str):
    for p in getattr(loss, "_params", ()):
        if p.name == name:
            return p.default
    return None


def _block_value(loss: Loss, params: dict, reduction: str, weight, *arrays):
    """Exact partial sums of one row block: ``(sum digits, denominator digits)``."""
    arrays = list(arrays)
    while arrays and arrays[-1] is None:
        arrays.pop()
    kw = dict(params)
    if weight is not None:
        kw["weight"] = weight
    per = np.asarray(loss(*arrays, reduction="none", **kw))
    sums = np.zeros((2, _exact.NDIG), np.int64)
    vals = per.reshape(-1).astype(np.float64)
    finite = np.isfinite(vals)
    # non-finite terms make the result non-finite, as in the in-memory loss
    nonfinite = math.fsum(vals[~finite]) if not finite.all() else 0.0
    _exact.add_values(_exact.as_bits(vals[finite]), sums[0])
    if reduction == "mean":
        den = _mean_denominator(loss, arrays, weight, params)
        _exact.add_values(_exact.as_bits(den), sums[1])
    _exact.normalize(sums)
    return sums, nonfinite, per.dtype


def _combine_values(*parts):
    sums = sum(p[0] for p in parts)
    _exact.normalize(sums)
    return sums, sum(p[1] for p in parts), parts[0][2]


def _finish_value(part, reduction: str):
    sums, nonfinite, dtype = part
    out_dtype = dtype if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
    if nonfinite != 0.0 or math.isnan(nonfinite):
        return out_dtype.type(nonfinite)
    if reduction == "sum":
        return out_dtype.type(_exact.to_float(sums[0]))
    return out_dtype.type(_exact.ratio(_exact.to_int(sums[0]), _exact.to_int(sums[1])))


def value(
    loss: str | Loss,
    *arrays,
    weight=None,
    reduction: str = "mean",
    split_every: int = 8,
    **params,
):
    """The loss of dask (or NumPy) arrays as a lazy 0-d dask array (``"mean"`` or ``"sum"``).

    Same semantics as calling the loss in memory (``weight`` as the loss takes it: per element for
    pointwise losses, per class for class-index targets), computed per row block with the fused
    kernels and combined exactly by a tree reduction. ``reduction="none"`` returns the lazy
    element-wise losses instead.
    """
    dask, da = _dask()
    loss = resolve_loss(loss)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{loss.spec.name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    # pointwise weights with a row axis are split with the rows; others (class weights, weights that
    # broadcast along the rows) go whole to every block
    n = np.shape(arrays[0])[0] if np.ndim(arrays[0]) else -1
    row_weight = (weight is not None and KINDS[loss.spec.kind].elementwise and np.ndim(weight) >= 1
                  and np.ndim(weight) >= max(np.ndim(a) for a in arrays if a is not None)
                  and np.shape(weight)[0] == n)
    xs, w, rows = _align(arrays, weight if row_weight else None)
    if weight is not None and not row_weight:
        w_const = np.asarray(weight)  # e.g. class weights: the same for every block
    else:
        w_const = None
    if reduction == "none":
        return _per_element(loss, xs, w, w_const, params)
    blocks = [_row_blocks(x) for x in xs]
    wblocks = _row_blocks(w)
    parts = []
    for i in range(len(rows)):
        wb = wblocks[i] if wblocks is not None else w_const
        args = [None if b is None else b[i] for b in blocks]
        parts.append(dask.delayed(_block_value, pure=True)(loss, params, reduction, wb, *args))
    total = _tree(parts, _combine_values, split_every)
    result = dask.delayed(_finish_value, pure=True)(total, reduction)
    dtype = _result_dtype(xs[0].dtype)
    return da.from_delayed(result, shape=(), dtype=dtype)


def _result_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return np.dtype(np.float16)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _per_element(loss: Loss, xs: list, w, w_const, params: dict):
    _, da = _dask()
    letters = "jklmnopqrstuvwxyz"
    pairs: list = []
    present = [x for x in xs if x is not None]
    for x in present:
        pairs += [x, "i" + letters[: x.ndim - 1]]
    out_ndim = max(x.ndim for x in present) if KINDS[loss.spec.kind].elementwise else present[0].ndim - 1
    if w is not None:
        pairs += [w, "i" + letters[: w.ndim - 1]]
    out_index = "i" + letters[: out_ndim - 1]
    n_in = len(present)

    def block(*bs):
        kw = dict(params)
        if w is not None:
            kw["weight"] = bs[n_in]
        elif w_const is not None:
            kw["weight"] = w_const
        return np.asarray(loss(*bs[:n_in], reduction="none", **kw))

    return da.blockwise(block, out_index, *pairs, dtype=_result_dtype(present[0].dtype), concatenate=True)


# -- per-sample losses and summaries --------------------------------------------------------------


def _row_starts(rows: Sequence[int]) -> list[int]:
    return [0, *np.cumsum(rows[:-1], dtype=np.int64).tolist()] if rows else []


def _block_job(loss: Loss, params: dict, per_class, arrays: list, weight) -> ScoringJob:
    return ScoringJob(loss, arrays, weight=weight, params=params, per_class=per_class)


def _block_losses(loss: Loss, params: dict, start: int, *arrays) -> np.ndarray:
    job = _block_job(loss, params, False, list(arrays), None)
    return job.score_arrays(*job.read(0, job.rows), start)[0]


def per_sample(loss: str | Loss, *arrays, **params):
    """Per-sample float64 losses as a lazy dask array of shape ``(N,)`` (see :mod:`fastloss.scoring`)."""
    dask, da = _dask()
    loss = resolve_loss(loss)
    xs, _, rows = _align(arrays)
    blocks = [_row_blocks(x) for x in xs]
    starts = _row_starts(rows)
    score_block = dask.delayed(_block_losses, pure=True)
    parts = [
        da.from_delayed(
            score_block(loss, params, starts[i], *[None if b is None else b[i] for b in blocks]),
            shape=(rows[i],), dtype=np.float64,
        )
        for i in range(len(rows))
    ]
    return da.concatenate(parts) if len(parts) > 1 else parts[0]


def _block_accumulate(loss: Loss, params: dict, per_class, start: int, weight, *arrays) -> Accumulator:
    job = _block_job(loss, params, per_class, list(arrays), weight)
    acc = job.new_accumulator()
    arrays_, w = job.read(0, job.rows)
    losses, ignored, classes = job.score_arrays(arrays_, w, start)
    acc.update(losses, weight=w, ignored=ignored, classes=classes)
    return acc


def _merge(*accs: Accumulator) -> Accumulator:
    out = accs[0]
    for a in accs[1:]:
        out.merge(a)
    return out


def _block_refine(loss: Loss, params: dict, plan, start: int, *arrays) -> list:
    job = _block_job(loss, params, False, list(arrays), None)
    losses = job.score_arrays(*job.read(0, job.rows), start)[0]
    return plan.partial(losses[np.isfinite(losses)])


def accumulate(
    loss: str | Loss,
    *arrays,
    weight=None,
    per_class: bool | str = "auto",
    split_every: int = 8,
    params: Mapping[str, Any] | None = None,
):
    """The summary state of the per-sample losses, as a lazy ``dask.delayed`` :class:`Accumulator`."""
    dask, _ = _dask()
    loss = resolve_loss(loss)
    params = dict(params or {})
    xs, w, rows = _align(arrays, weight)
    blocks = [_row_blocks(x) for x in xs]
    wblocks = _row_blocks(w)
    starts = _row_starts(rows)
    parts = [
        dask.delayed(_block_accumulate, pure=True)(
            loss, params, per_class, starts[i], None if wblocks is None else wblocks[i],
            *[None if b is None else b[i] for b in blocks],
        )
        for i in range(len(rows))
    ]
    if not parts:
        raise ScoreError("no rows to score")
    return _tree(parts, _merge, split_every), (xs, blocks, starts)


def summarize(
    loss: str | Loss,
    *arrays,
    weight=None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    exact_quantiles: bool = True,
    per_class: bool | str = "auto",
    split_every: int = 8,
    **params,
) -> Summary:
    """Summarise the per-sample losses of dask arrays (computes; see :func:`fastloss.scoring.score`).

    Equal, bit for bit, to :func:`fastloss.scoring.score` on the same data. Exact quantiles take a
    few more passes, each a Dask computation that re-scores the blocks (persist the inputs first
    to avoid recomputing them).
    """
    dask, _ = _dask()
    loss = resolve_loss(loss)
    quantiles = tuple(float(q) for q in quantiles)
    delayed_acc, (xs, blocks, starts) = accumulate(
        loss, *arrays, weight=weight, per_class=per_class, split_every=split_every, params=params
    )
    acc = delayed_acc.compute()
    # a tiny local job gives the class labels and the summary's assembly
    probe = _block_job(loss, params, per_class, [None if x is None else x[:1].compute() for x in xs],
                       None if weight is None else np.ones(1))
    order_stat = None
    if exact_quantiles and acc.count and quantiles:
        sel = _quantiles.Selector(acc.hist, _quantiles.needed_ranks(acc.count, quantiles))
        while not sel.done:
            plan = sel.plan()
            parts = [
                dask.delayed(_block_refine, pure=True)(loss, params, plan, starts[i],
                                                       *[None if b is None else b[i] for b in blocks])
                for i in range(len(starts))
            ]
            partial = _tree(parts, _plan_combiner(plan), split_every).compute()
            sel.resolve(plan, partial)
        order_stat = sel.value
    return probe.summary(acc, quantiles, order_stat)


class _plan_combiner:
    def __init__(self, plan):
        self.plan = plan

    def __call__(self, *parts):
        out = parts[0]
        for p in parts[1:]:
            out = self.plan.combine(out, p)
        return out


# -- running a scoring job on a cluster -------------------------------------------------------


class DaskRunner:
    """Runs a :class:`~fastloss.scoring.ScoringJob`'s row ranges as tasks on a ``distributed`` cluster.

    At most ``window`` tasks are in flight (default: twice the cluster's threads), and results are
    yielded in row order, so the client's memory stays bounded while workers stream the inputs.
    The job (its loss by name, its sources as paths) is sent to the workers once.
    """

    def __init__(self, client, window: int | None = None, own_client: bool = False):
        self.client = client
        self.window = window
        self._own = own_client

    @classmethod
    def connect(cls, address: str, timeout: float = 10.0) -> DaskRunner:
        """A runner on the Dask cluster whose scheduler listens at ``address`` (``tcp://host:port``)."""
        try:
            from distributed import Client
        except ImportError:
            raise ImportError('--scheduler needs dask.distributed: pip install "fastloss[dask]"') from None
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None
        return cls(client, own_client=True)

    def _window(self) -> int:
        if self.window:
            return self.window
        threads = sum(self.client.nthreads().values()) or 1
        return 2 * threads

    def map(self, job: ScoringJob, method: str, arg_tuples: Iterable[tuple]) -> Iterator:
        """``job.<method>(*args)`` for each tuple of ``arg_tuples`` on the cluster, results in order."""
        [job_future] = self.client.scatter([job], broadcast=True, hash=False)
        pending: collections.deque = collections.deque()
        window = self._window()
        try:
            for args in arg_tuples:
                pending.append((args, self.client.submit(_call, job_future, method, *args, pure=False)))
                if len(pending) >= window:
                    yield self._result(*pending.popleft())
            while pending:
                yield self._result(*pending.popleft())
        finally:
            for _, f in pending:
                f.cancel()
            job_future.release()

    def _result(self, args: tuple, future):
        """The task's result; the cluster losing it (workers gone, task cancelled) is one RuntimeError.

        Errors of the job itself (a bad label, ...) come through unchanged.
        """
        try:
            return future.result()
        except Exception as exc:
            if not _is_cluster_failure(exc):
                raise
            where = f"rows {args[0]}-{args[1]}" if len(args) >= 2 else "a task"
            try:  # the first sentence: KilledWorker's message goes on with advice and a link
                detail = " ".join(str(exc).split()).split(". ")[0][:300]
            except Exception:
                detail = ""
            detail = detail or "no detail"
            raise RuntimeError(f"the Dask cluster lost {where} ({type(exc).__name__}: {detail}); "
                               "no output was written") from None

    def close(self) -> None:
        """Close the client if this runner opened it."""
        if self._own:
            self.client.close()


def _is_cluster_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the cluster failed to run a task, rather than the task failing."""
    import concurrent.futures

    try:
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - distributed is what made the future
        CommClosedError = KilledWorker = ()
    return isinstance(exc, (concurrent.futures.CancelledError, KilledWorker, CommClosedError, TimeoutError))


def _call(job: ScoringJob, method: str, *args):
    return getattr(job, method)(*args)
