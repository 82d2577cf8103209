"""CPU driver for pointwise losses: value and gradient per element, in one fused pass.

One template lives here, :func:`pointwise_chunks`, specialised per loss by
:func:`fastloss._compile.specialise`, and it serves both paths:

* It computes a range of ``CHUNK``-sized chunks in order; the serial path (small inputs) calls it
  directly for all of them. ``_loss_kernel`` is bound to the loss's scalar
  ``loss_grad``, which receives float64 inputs (whatever the storage dtype) and returns
  ``(value, d value/d x0, d value/d x1, ...)``; ``_chunk_stats`` to the gradient statistics sweep
  or to a no-op, ``_stage_buffers`` / ``_stage_block`` to input staging for in-place calls or to
  no-ops (statistics and staging are compiled only for calls that need them).
* The parallel path (:mod:`fastloss._launcher`) calls the *same* compiled function on pieces of
  the chunk range from several threads (it releases the GIL), with a ``partials`` row that receives
  each chunk's sum; the caller adds the partials in chunk order. The element loop is therefore
  typed, optimised and vectorised once per loss and dtype, and nothing else is compiled for
  parallel calls (a ``prange`` driver around it cost another 0.75-0.9 s of compilation).

Why the loop looks the way it does:

* The work is split into ``CHUNK``-sized chunks. Each chunk's loss is summed in float64 and stored
  in ``partials``; the partials are then summed serially in chunk order. The result is therefore
  bit-identical for any number of threads.
* Inside a chunk the loop runs over *slices* from index 0. Indexing the full array with
  ``range(lo, hi)`` makes Numba emit a negative-index wrap-around check that blocks LLVM's
  vectoriser (measured: 10 GB/s instead of ~35 GB/s).
* Reduction scaling (``1/n`` or ``w_i / sum(w)``) is folded into the gradient store, so a ``mean``
  gradient needs no second pass.
"""

from __future__ import annotations

import numpy as np

from ..._config import CHUNK
from ..._flags import NEED_GRAD, NEED_STATS, PER_ELEMENT  # the driver's ``flags`` bits: one numbering for all
from ..._kernels.tuples import gather, scatter, slices, store_each

#: Elements per block of a chunk: the float64 row of a block's losses (4 KiB) stays in L1.
#: Part of the numerical contract like ``CHUNK`` (a chunk's loss is the sum of its block sums).
BLOCK = 512


def _loss_kernel(*args):  # placeholders, rebound per loss by ``specialise``
    raise NotImplementedError


def _hess_kernel(*args):
    raise NotImplementedError


#: Whether this specialisation writes the Hessian diagonal (a compile-time constant: drivers
#: compiled without it contain no Hessian code, and their loops keep their machine code)
_HESS = False


def _chunk_stats(gs, row):
    raise NotImplementedError


def _stage_buffers(xs, size):
    raise NotImplementedError


def _stage_block(stage, xc, m):
    raise NotImplementedError


def pointwise_chunks(xs, w, gs, hs, loss_out, params, scale, flags, stats, partials, c0, c1):
    """Fused loss/gradient of chunks ``c0`` to ``c1 - 1``, in order, on the calling thread.

    The serial path calls this directly for all chunks; the parallel path for pieces of the chunk
    range, from several threads at once.

    Parameters
    ----------
    xs : tuple of 1-D arrays
        Inputs of the loss (same length, same dtype).
    w : 1-D array
        Per-element weights, or an empty array for no weights.
    gs : tuple of 1-D arrays
        Gradient outputs, one per differentiable input (ignored unless ``flags & NEED_GRAD``).
    hs : tuple of 1-D arrays
        Outputs of the Hessian diagonal, one per differentiable input, scaled as the gradients
        (written by drivers specialised with ``_HESS``; ``_hess_kernel`` gives the second
        derivatives, one number per differentiable input).
    loss_out : 1-D array
        Per-element (weighted) losses for ``reduction="none"`` (used when ``flags & PER_ELEMENT``).
    params : tuple of float
        Loss hyper-parameters, passed after the inputs to the scalar kernel.
    scale : float
        Factor applied to every gradient (``1/n``, ``1/sum(w)`` or ``1``).
    flags : int
        ``NEED_GRAD | PER_ELEMENT | NEED_STATS``.
    stats : float64 array of shape ``(ceil(n / CHUNK), 3)``
        Per-chunk gradient statistics (see :mod:`fastloss._stats`), when ``flags & NEED_STATS``.
    partials : float64 array
        Receives each chunk's sum at its chunk index (parallel calls); empty for none.
    c0, c1 : int
        The chunks to compute.

    Returns
    -------
    float
        The chunks' float64 sums of ``w_i * loss_i``, added in chunk order (to ``0.0``).
    """
    n = xs[0].size
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_element = (flags & PER_ELEMENT) != 0
    need_stats = (flags & NEED_STATS) != 0
    keep_partials = partials.size > 0
    # Per-element losses go through a float64 scratch row that is summed in a loop of its own:
    # that sum then vectorises the same way whether or not the main loop does (an in-place
    # gradient defeats LLVM's alias check; a value-only loop may be vectorised differently), so
    # value-only, fused and in-place calls return bit-identical losses. The row holds one block
    # of BLOCK elements, small enough to stay in L1 (a whole chunk's row spilled to L2 and cost
    # 20% of the memory bandwidth).
    nb = BLOCK if n > BLOCK else n
    vals = np.empty(nb, dtype=np.float64)
    # In-place calls (a gradient buffer that is also an input) are compiled with staging: each
    # block's inputs are copied to a small scratch first, so that the gradient stores cannot
    # alias the loads, LLVM's runtime alias check passes and the loop stays vectorised (it fell
    # back to scalar code: 2.3x slower at 1e8). Other calls bind no-ops here.
    stage = _stage_buffers(xs, nb)
    total = 0.0
    for c in range(c0, c1):
        lo = c * CHUNK
        hi = lo + CHUNK
        if hi > n:
            hi = n
        acc = 0.0
        for b in range(lo, hi, BLOCK):
            e = b + BLOCK
            if e > hi:
                e = hi
            m = e - b
            xc = _stage_block(stage, slices(xs, b, e), m)
            gc = slices(gs, b, e) if need_grad else gs
            hc = slices(hs, b, e) if _HESS else hs
            wc = w[b:e] if weighted else w
            for i in range(m):
                res = _loss_kernel(*gather(xc, i), *params)
                wi = wc[i] if weighted else 1.0
                vals[i] = res[0] * wi
                if need_grad:
                    scatter(gc, i, res, scale * wi)
                if _HESS:
                    store_each(hc, i, _hess_kernel(*gather(xc, i), *params), scale * wi)
            part = 0.0
            for i in range(m):
                part += vals[i]
            acc += part
            if per_element:
                lc = loss_out[b:e]
                for i in range(m):
                    lc[i] = vals[i]
        if need_stats:
            # A second sweep over the chunk's gradients while they are still in cache: keeps the
            # main loop free of the statistics (which would block its vectorisation).
            _chunk_stats(slices(gs, lo, hi), stats[c])
        if keep_partials:
            partials[c] = acc
        total += acc
    return total


def nchunks(n: int) -> int:
    """Number of reduction chunks for ``n`` elements."""
    return (n + CHUNK - 1) // CHUNK
