"""CPU driver for pointwise losses: value and gradient per element, in one fused pass.

The driver is written once here and specialised per loss by :func:`fastloss._compile.specialise`,
which binds ``_loss_kernel`` to the loss's scalar ``loss_grad``. The scalar kernel receives
float64 inputs (whatever the storage dtype) and returns ``(value, d value/d x0, d value/d x1, ...)``.

Why the loop looks the way it does:

* The work is split into ``CHUNK``-sized chunks. Each chunk's loss is summed in float64 and stored
  in ``partials``; the partials are then summed serially in chunk order. The result is therefore
  bit-identical for any number of threads (``prange`` reductions are not).
* Inside a chunk the loop runs over *slices* from index 0. Indexing the full array with
  ``range(lo, hi)`` makes Numba emit a negative-index wrap-around check that blocks LLVM's
  vectoriser (measured: 10 GB/s instead of ~35 GB/s).
* Reduction scaling (``1/n`` or ``w_i / sum(w)``) is folded into the gradient store, so a ``mean``
  gradient needs no second pass.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._config import CHUNK
from .tuples import chunk_stats, gather, scatter, slices

#: ``flags`` bits understood by the driver.
NEED_GRAD = 1
PER_ELEMENT = 2
NEED_STATS = 4


def _loss_kernel(*args):  # placeholder, rebound per loss by ``specialise``
    raise NotImplementedError


def pointwise_driver(xs, w, gs, loss_out, params, scale, flags, stats):
    """Fused loss/gradient over flat, contiguous arrays.

    Parameters
    ----------
    xs : tuple of 1-D arrays
        Inputs of the loss (same length, same dtype).
    w : 1-D array
        Per-element weights, or an empty array for no weights.
    gs : tuple of 1-D arrays
        Gradient outputs, one per differentiable input (ignored unless ``flags & NEED_GRAD``).
    loss_out : 1-D array
        Per-element (weighted) losses for ``reduction="none"`` (used when ``flags & PER_ELEMENT``).
    params : tuple of float
        Loss hyper-parameters, passed after the inputs to the scalar kernel.
    scale : float
        Factor applied to every gradient (``1/n``, ``1/sum(w)`` or ``1``).
    stats : float64 array of shape ``(ceil(n / CHUNK), 3)``
        Per-chunk gradient statistics (see :mod:`fastloss._stats`), when ``flags & NEED_STATS``.

    Returns
    -------
    float
        Sum over elements of ``w_i * loss_i`` (float64).
    """
    n = xs[0].size
    nchunks = (n + CHUNK - 1) // CHUNK
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_element = (flags & PER_ELEMENT) != 0
    need_stats = (flags & NEED_STATS) != 0
    partials = np.empty(nchunks, dtype=np.float64)
    for c in prange(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        xc = slices(xs, lo, hi)
        gc = slices(gs, lo, hi) if need_grad else gs
        wc = w[lo:hi] if weighted else w
        lc = loss_out[lo:hi] if per_element else loss_out
        m = hi - lo
        # Per-element losses go through a float64 scratch row that is summed in a loop of its
        # own: that sum then vectorises the same way whether or not the main loop could (an
        # in-place gradient defeats LLVM's alias check), so value-only, fused and in-place
        # calls return bit-identical losses.
        vals = np.empty(m, dtype=np.float64)
        for i in range(m):
            res = _loss_kernel(*gather(xc, i), *params)
            wi = wc[i] if weighted else 1.0
            vals[i] = res[0] * wi
            if need_grad:
                scatter(gc, i, res, scale * wi)
        acc = 0.0
        for i in range(m):
            acc += vals[i]
        if per_element:
            for i in range(m):
                lc[i] = vals[i]
        partials[c] = acc
        if need_stats:
            # A second sweep over the chunk's gradients while they are still in cache: keeps the
            # main loop free of the statistics (which would block its vectorisation).
            chunk_stats(gc, stats[c])
    total = 0.0
    for c in range(nchunks):
        total += partials[c]
    return total


def nchunks(n: int) -> int:
    """Number of reduction chunks for ``n`` elements."""
    return (n + CHUNK - 1) // CHUNK
