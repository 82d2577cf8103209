"""Arity-generic helpers for drivers that take a tuple of input arrays and a tuple of gradients.

A loss may have two inputs and one gradient (``mse``), three inputs and two gradients
(``gaussian_nll``), and so on. Rather than writing one driver per arity, drivers work on tuples
of arrays and these overloads unroll the per-element gather / scatter at compile time.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload


def _build(src: str, name: str, **namespace):
    ns = {"np": np, **namespace}
    exec(src, ns)  # generated at compile time for one tuple length; never user input
    return ns[name]


def gather(xs, i):
    """``(float64(xs[0][i]), float64(xs[1][i]), ...)``."""


def slices(xs, lo, hi):
    """``(xs[0][lo:hi], xs[1][lo:hi], ...)``."""


def scatter(gs, i, res, scale):
    """``gs[k][i] = res[k + 1] * scale`` for every gradient array ``k``."""


def chunk_stats(gs, row):
    """Write ``(sum of squares, max |g|, non-finite count)`` over all arrays of ``gs`` into ``row``."""


@overload(gather, inline="always")
def _gather(xs, i):
    body = "".join(f"np.float64(xs[{k}][i]), " for k in range(len(xs)))
    return _build(f"def impl(xs, i):\n    return ({body})\n", "impl")


@overload(slices, inline="always")
def _slices(xs, lo, hi):
    body = "".join(f"xs[{k}][lo:hi], " for k in range(len(xs)))
    return _build(f"def impl(xs, lo, hi):\n    return ({body})\n", "impl")


@overload(scatter, inline="always")
def _scatter(gs, i, res, scale):
    lines = "".join(f"    gs[{k}][i] = res[{k + 1}] * scale\n" for k in range(len(gs)))
    return _build(f"def impl(gs, i, res, scale):\n{lines}    return None\n", "impl")


@overload(chunk_stats)
def _chunk_stats(gs, row):
    lines = "    s = 0.0\n    m = 0.0\n    b = 0.0\n"
    for k in range(len(gs)):
        lines += (
            f"    g = gs[{k}]\n"
            "    for i in range(g.size):\n"
            "        v = np.float64(g[i])\n"
            "        if np.isfinite(v):\n"
            "            s += v * v\n"
            "            m = max(m, abs(v))\n"
            "        else:\n"
            "            b += 1.0\n"
        )
    lines += "    row[0] = s\n    row[1] = m\n    row[2] = b\n"
    return _build(f"def impl(gs, row):\n{lines}    return None\n", "impl")
