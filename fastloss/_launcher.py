"""Run a compiled range function on several threads: the parallel path of the pointwise kind.

The pointwise kind's compiled chunk function releases the GIL (``nogil=True``) and computes any
range of chunks, so running it on several Python threads at once is all its parallel path needs.
This replaces a ``prange`` driver, whose compilation (Numba's parfor lowering: three more LLVM
modules and a second optimisation of the inlined chunk function) took 0.75-0.9 s for every loss
and dtype, as long again as the chunk function itself. Work is handed out dynamically: the range
of chunks is cut into a few pieces per thread, and the calling thread and the pool's workers take
the next piece until none is left, so a core slowed down by other load takes fewer pieces.

Guarantees the kinds rely on:

* Determinism: the function writes one float64 partial per chunk, and the caller sums them in chunk
  order, so the result does not depend on the thread count or on who computed what.
* Thread safety: any number of Python threads may call :func:`run_ranges` at once; their pieces
  share the pool, and a caller never waits on a worker for a piece it could run itself.
* Fork safety: a forked child gets a fresh pool (the parent's workers do not exist in it).
* Thread count: ``numba.get_num_threads()`` once Numba's threading layer has started (so
  ``numba.set_num_threads`` is honoured), else ``NUMBA_NUM_THREADS``; starting the layer only to
  ask would cost more than many calls.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable

import numba
from numba.np.ufunc import parallel as _numba_parallel

#: Pieces per thread: a few, so that a slow core takes fewer of them, each still large enough
#: that handing it out (a few microseconds with the GIL held) is noise.
PIECES_PER_THREAD = 4
#: Fewest chunks in a piece (8 chunks of ``CHUNK`` elements: 32 Ki elements).
MIN_PIECE_CHUNKS = 8


def num_threads() -> int:
    """Threads a parallel call may use: Numba's setting for the calling thread."""
    if getattr(_numba_parallel, "_is_initialized", False):  # private: read defensively
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


def pieces(nchunks: int, threads: int, min_piece: int = MIN_PIECE_CHUNKS) -> list[tuple[int, int]]:
    """Cut chunks ``0 .. nchunks - 1`` into contiguous ``(c0, c1)`` pieces for ``threads`` threads.

    ``min_piece`` is the fewest chunks in a piece: the default suits ``CHUNK``-sized chunks; a
    caller with larger units of work (the softmax kind's row blocks) passes less.
    """
    # a multiple of the thread count: with one piece too many, one thread runs two while the rest wait
    per_thread = min(PIECES_PER_THREAD, nchunks // (min_piece * threads))
    count = threads * per_thread if per_thread > 0 else max(1, min(threads, nchunks // min_piece))
    bounds = [nchunks * k // count for k in range(count + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(count) if bounds[k] < bounds[k + 1]]


class _Job:
    """One call's pieces, taken in order by whoever asks next (the caller and pool workers)."""

    __slots__ = ("args", "done", "error", "fn", "left", "lock", "ranges", "take")

    def __init__(self, fn: Callable, args: tuple, ranges: list[tuple[int, int]]) -> None:
        self.fn = fn
        self.args = args
        self.ranges = ranges
        self.take = itertools.count().__next__  # atomic: a C call under the GIL
        self.left = len(ranges)
        self.lock = threading.Lock()
        # held until the last piece is done: a bare lock is the cheapest latch (an Event builds a
        # Condition and a waiter lock per wait, measurable at these time scales)
        self.done = threading.Lock()
        self.done.acquire()
        self.error: BaseException | None = None

    def work(self) -> None:
        """Run pieces until none is left; the thread finishing the last one releases the caller."""
        n = len(self.ranges)
        while True:
            k = self.take()
            if k >= n:
                return
            c0, c1 = self.ranges[k]
            try:
                self.fn(*self.args, c0, c1)
            except BaseException as exc:  # re-raised by the caller
                self.error = exc
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                # drop the arrays before releasing the caller: a late worker finds no piece and
                # never reads them, and result buffers must not look referenced once the call returned
                self.fn = self.args = None
                self.done.release()


class _Pool:
    """Daemon workers taking jobs from one queue; started on demand, never more than needed."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.size = 0
        self.lock = threading.Lock()

    def grow(self, size: int) -> None:
        if self.size >= size:
            return
        with self.lock:
            while self.size < size:
                worker = threading.Thread(target=_serve, args=(self.jobs,), daemon=True,
                                          name=f"fastloss-worker-{self.size}")
                worker.start()
                self.size += 1


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        jobs.get().work()


_pool = _Pool()


def _fresh_pool_after_fork() -> None:
    global _pool
    _pool = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_pool_after_fork)


def run_ranges(fn: Callable, args: tuple, ranges: list[tuple[int, int]], threads: int) -> None:
    """Call ``fn(*args, c0, c1)`` for every piece in ``ranges``, on up to ``threads`` threads.

    ``fn`` must release the GIL and must not depend on the order in which pieces run. Returns when
    every piece has run; an exception raised by any piece is re-raised here.
    """
    helpers = min(threads, len(ranges)) - 1
    if helpers <= 0:
        for c0, c1 in ranges:
            fn(*args, c0, c1)
        return
    job = _Job(fn, args, ranges)
    pool = _pool
    pool.grow(helpers)
    for _ in range(helpers):
        pool.jobs.put(job)
    job.work()
    job.done.acquire()
    if job.error is not None:
        raise job.error
