"""Cache-blocked transposes for the similarity kind (the ``N x N`` matrix and its transpose).

NumPy's ``np.ascontiguousarray(s.T)`` and ``g += h.T`` walk one of the two matrices by columns;
at ``N = 2048`` they run at ~2 GB/s, slower than the BLAS products around them. These loops work
on ``BLOCK x BLOCK`` tiles that stay in cache. They only move or add elements, so their results
do not depend on the thread count.

Compile time: both operations are one compiled function (``add`` chooses), serial and releasing
the GIL; parallel calls run ranges of its tile rows on :mod:`fastloss._launcher`'s threads. (Two
functions, each with a ``prange`` twin, compiled up to four functions where this compiles one.)
"""

from __future__ import annotations

from ... import _launcher
from ..._compile import njit
from ..._config import jit_options

#: Tile side: two float64 tiles of 64 x 64 fit in a 64 KB L1/L2 working set.
BLOCK = 64


def _transpose_tiles(dst, src, add, b0, b1):
    """``dst = src.T`` (``add``: ``dst += src.T``) on tile rows ``b0`` to ``b1 - 1`` of ``dst``.

    Square C-contiguous matrices, ``src`` is not ``dst``.
    """
    n = src.shape[0]
    for bi in range(b0, b1):
        i0 = bi * BLOCK
        i1 = i0 + BLOCK
        if i1 > n:
            i1 = n
        for j0 in range(0, n, BLOCK):
            j1 = j0 + BLOCK
            if j1 > n:
                j1 = n
            for i in range(i0, i1):
                row = dst[i]
                if add:
                    for j in range(j0, j1):
                        row[j] += src[j, i]
                else:
                    for j in range(j0, j1):
                        row[j] = src[j, i]


transpose_tiles = njit(_transpose_tiles, **jit_options(False))


def transpose(dst, src, add: bool, parallel: bool) -> None:
    """``dst[:] = src.T`` or ``dst += src.T``, on the launcher's threads when ``parallel``."""
    nb = (src.shape[0] + BLOCK - 1) // BLOCK
    threads = _launcher.num_threads() if parallel else 1
    if threads == 1:
        transpose_tiles(dst, src, add, 0, nb)
        return
    ranges = _launcher.pieces(nb, threads)  # a tile row is >= BLOCK * BLOCK elements: pieces of 8+ are plenty
    _launcher.run_ranges(transpose_tiles, (dst, src, add), ranges, threads)
