"""Tunables shared by every kernel driver.

These are read when a driver is compiled or called; change them before the first call.
``CHUNK`` is part of the numerical contract: reductions sum fixed-size chunks in a fixed order,
so changing it changes the last bits of a reduced loss (but never makes it depend on threads).
"""

from __future__ import annotations

#: Elements per reduction chunk. Each chunk is summed in float64, then the chunk partials are
#: summed serially in index order, which makes results independent of the thread count.
CHUNK = 4096

#: Elements per row block of the rowwise driver: rows are handed to threads ``ROW_BLOCK // classes``
#: at a time (at least one), and each block's losses are summed in float64 into one partial. Blocks
#: of 128 KB of float32 logits stay in L2 between a kernel's passes over them, and amortise the
#: per-block work (a dozen per-row vectors) better than CHUNK-sized ones: 8192 x 1000 float32
#: runs ~15% faster than with 4096. Like CHUNK, part of the numerical contract of the reductions.
ROW_BLOCK = 32768

#: Below this many elements a serial kernel is used: starting a parallel region costs
#: microseconds, more than the whole computation on small inputs.
PARALLEL_THRESHOLD = 65536

#: The pointwise kind hands pieces of a parallel call to a pool of Python threads
#: (:mod:`fastloss._launcher`); waking a worker costs tens of microseconds, so whether a call is
#: worth it depends on the loss: below ``POINTWISE_SERIAL_BELOW`` elements a call is always
#: serial, from ``POINTWISE_PARALLEL_FROM`` always parallel, and in between parallel when the
#: loss's measured serial speed predicts at least ``POINTWISE_PARALLEL_MIN_SECONDS`` of work
#: (exp/log losses from ~40 000 elements, memory-bound ones not before the upper bound).
#: Results are the same bits either way (tested), so the choice only affects speed.
POINTWISE_SERIAL_BELOW = 32768
POINTWISE_PARALLEL_FROM = 524288
POINTWISE_PARALLEL_MIN_SECONDS = 150e-6

#: LLVM fast-math flags. Deliberately not ``fastmath=True``: that implies "no NaN / no Inf",
#: which would break NaN propagation and ``isnan`` checks inside kernels.
FASTMATH = frozenset({"reassoc", "contract", "arcp", "nsz"})


def jit_options(parallel: bool) -> dict:
    """Numba options used for every CPU driver."""
    return {
        "parallel": parallel,
        "fastmath": set(FASTMATH),
        "error_model": "numpy",
        "nogil": True,
        # drivers are called from Python or from other drivers, never through a C function
        # pointer: skipping the C wrapper saves compile time (each wrapper is codegen'd separately)
        "no_cfunc_wrapper": True,
    }
