"""Quantiles of a stream of float64 values: a mergeable histogram, and exact selection by refinement.

Every float64 maps to a 64-bit *key* that sorts like the value (flip all bits of negatives, set the
sign bit of the rest). The streaming summary keeps a histogram of the top ``TOP_BITS`` bits of the
key: sign, exponent and ``TOP_BITS - 12`` mantissa bits, i.e. buckets ``2**-8`` of a binade wide. Counts
add, so histograms of chunks (or of Dask partitions) merge exactly. A quantile read from it is
*approximate*: it lies in the right bucket, so its relative error is below ``2**-8`` (0.4 %).

The exact value of an order statistic is found by refinement passes over the values again: each pass
either collects the values of the bucket that holds the wanted rank (when it holds at most
``COLLECT_LIMIT`` values) or histograms the next ``STEP`` bits of the keys inside it. The first kind of
pass ends the search; at most ``(64 - TOP_BITS) / STEP`` passes are ever needed (e.g. when millions of
values are equal). Memory stays bounded by ``COLLECT_LIMIT`` and ``2**STEP`` counts per wanted rank.
Quantiles then follow ``numpy.quantile(method="linear")`` bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._compile import njit

TOP_BITS = 20
_TOP_SHIFT = 64 - TOP_BITS
STEP = 16
COLLECT_LIMIT = 1 << 20
#: Relative error bound of a quantile read from the histogram alone.
APPROX_REL_ERROR = 2.0 ** -(TOP_BITS - 12)
_SIGN = np.uint64(1 << 63)


@njit(nogil=True)
def hist_add(bits, hist):
    """Count the top ``TOP_BITS`` bits of the key of each value (``bits``: int64 view of float64)."""
    for i in range(bits.size):
        b = bits[i]
        if b < 0:
            hist[(~b) >> 44] += 1
        else:
            hist[(b >> 44) | 0x80000] += 1


def keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 ``values``."""
    u = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(u & _SIGN, ~u, u | _SIGN)


def key_value(key: int) -> float:
    """The float64 whose key is ``key``."""
    k = np.uint64(key)
    bits = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def linear_ranks(n: int, q: float) -> tuple[int, int, float]:
    """``(previous, next, gamma)`` of ``numpy.quantile(method="linear")`` for ``n`` values."""
    # the same float operations as numpy's "linear" get_virtual_index and _get_indexes
    virtual = (n - 1) * q
    prev = math.floor(virtual)
    gamma = virtual - prev
    if virtual >= n - 1:
        return n - 1, n - 1, gamma
    if virtual < 0:
        return 0, 0, gamma
    return prev, prev + 1, gamma


def lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp`` (monotone linear interpolation), for float64 scalars."""
    diff = b - a
    if t >= 0.5:
        return b - diff * (1 - t)
    return a + diff * t


def needed_ranks(n: int, quantiles: Sequence[float]) -> list[int]:
    ranks: set[int] = set()
    for q in quantiles:
        p, nx, _ = linear_ranks(n, q)
        ranks.update((p, nx))
    return sorted(ranks)


def from_order_stats(n: int, quantiles: Sequence[float], stat) -> dict[float, float]:
    """Quantiles from ``stat(rank) -> value`` (``nan`` for no values)."""
    out = {}
    for q in quantiles:
        if n == 0:
            out[q] = math.nan
            continue
        p, nx, g = linear_ranks(n, q)
        out[q] = lerp(stat(p), stat(nx), g)
    return out


def approx_order_stat(hist: np.ndarray, cum: np.ndarray, rank: int, lo: float, hi: float) -> float:
    """Order statistic ``rank`` estimated from the histogram (uniform spread within its bucket)."""
    b = int(np.searchsorted(cum, rank, side="right"))
    before = int(cum[b - 1]) if b else 0
    c = int(hist[b])
    first = key_value(b << _TOP_SHIFT)
    last = key_value(((b + 1) << _TOP_SHIFT) - 1)
    v = first + (rank - before + 0.5) / c * (last - first)
    return min(max(v, lo), hi)


class Selector:
    """Finds exact order statistics of a multiset described by a top-bits histogram.

    Drive it with ``while not sel.done: plan = sel.plan(); sel.resolve(combine(plan.partial(v) for v in
    chunks))``. ``plan`` objects are small and picklable, so partials can be computed on workers.
    """

    def __init__(self, hist: np.ndarray, ranks: Sequence[int], collect_limit: int = COLLECT_LIMIT):
        cum = np.cumsum(hist)
        self.collect_limit = collect_limit
        self.found: dict[int, int] = {}  # rank -> key
        # rank -> (shift, prefix, rank within the bucket, bucket population)
        self.pending: dict[int, tuple[int, int, int, int]] = {}
        for r in ranks:
            b = int(np.searchsorted(cum, r, side="right"))
            before = int(cum[b - 1]) if b else 0
            self.pending[r] = (_TOP_SHIFT, b, r - before, int(hist[b]))

    @property
    def done(self) -> bool:
        return not self.pending

    def value(self, rank: int) -> float:
        return key_value(self.found[rank])

    def plan(self) -> RefinePlan:
        groups = sorted({(s, p, pop) for s, p, _, pop in self.pending.values()})
        return RefinePlan(tuple((s, p, pop <= self.collect_limit) for s, p, pop in groups))

    def resolve(self, plan: RefinePlan, partial: list) -> None:
        results = dict(zip(((s, p) for s, p, _ in plan.groups), partial))
        modes = {(s, p): collect for s, p, collect in plan.groups}
        for r, (s, p, within, pop) in list(self.pending.items()):
            got = results[(s, p)]
            if modes[(s, p)]:
                if got.size != pop:
                    raise RuntimeError("the values changed between two passes over the data")
                self.found[r] = int(np.partition(got, within)[within])
                del self.pending[r]
                continue
            step = min(STEP, s)
            cum = np.cumsum(got)
            b = int(np.searchsorted(cum, within, side="right"))
            before = int(cum[b - 1]) if b else 0
            prefix, shift = (p << step) | b, s - step
            if shift == 0:
                self.found[r] = prefix
                del self.pending[r]
            else:
                self.pending[r] = (shift, prefix, within - before, int(got[b]))


class RefinePlan:
    """What one refinement pass computes: per group ``(shift, prefix, collect)``, collected keys or counts."""

    def __init__(self, groups: tuple[tuple[int, int, bool], ...]):
        self.groups = groups

    def empty(self) -> list:
        return [
            np.empty(0, np.uint64) if collect else np.zeros(1 << min(STEP, s), np.int64)
            for s, _, collect in self.groups
        ]

    def partial(self, values: np.ndarray) -> list:
        """This pass's result over one chunk of (finite) values."""
        k = keys(values)
        out = []
        for s, p, collect in self.groups:
            sel = k[(k >> np.uint64(s)) == np.uint64(p)]
            if collect:
                out.append(sel)
            else:
                step = min(STEP, s)
                sub = ((sel >> np.uint64(s - step)) & np.uint64((1 << step) - 1)).astype(np.intp)
                out.append(np.bincount(sub, minlength=1 << step).astype(np.int64))
        return out

    def combine(self, a: list, b: list) -> list:
        return [
            np.concatenate((x, y)) if collect else x + y
            for (_, _, collect), x, y in zip(self.groups, a, b)
        ]
