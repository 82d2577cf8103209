"""Kernels shared by the CUDA kinds: ordered block reductions, the final sum, copies and checks.

Everything here is written once as plain Python and compiled per block size by :func:`build`,
which binds the placeholder ``THREADS`` (shared-memory arrays need a compile-time size) in a
globals dict that all the functions of one build share, so kernels call the device functions of
their own build.

Determinism: a reduction never uses float atomics. Each thread sums its grid-stride slice in
float64, :func:`block_sum` folds a block in a fixed tree order through shared memory (no warp
shuffles, so the simulator runs the same code), one partial per block goes to global memory, and
:func:`finalize` (one block) adds the partials in the same fixed way. The result depends on the
element count and the launch shape only.
"""

from __future__ import annotations

import math
import types

from numba import cuda, float64, int64, uint64

from .._flags import SCALE_BY_WSUM  # finalize's flag: divide by wsum[0] (weighted mean), not times ``scale``
from . import config

THREADS = 256  # placeholder, rebound by ``build``


# -- device functions --------------------------------------------------------------------------


def grid_start():
    """First index of this thread in a grid-stride loop.

    Indices are unsigned 64-bit: arrays may exceed 2**31 elements, and unsigned indices spare
    every array access Numba's negative-index wrap-around. Kernels therefore take sizes,
    strides and shapes as ``uint64`` (mixing signed and unsigned would promote to float).
    """
    return uint64(cuda.blockIdx.x) * uint64(THREADS) + uint64(cuda.threadIdx.x)


def grid_step():
    return uint64(cuda.gridDim.x) * uint64(THREADS)


def block_fold(v, largest):
    """``v`` folded over the block in a fixed tree order (float64 shared memory): the sum, or the
    largest value when ``largest`` (NaN-free inputs)."""
    buf = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    buf[t] = v
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            buf[t] = max(buf[t], buf[t + half]) if largest else buf[t] + buf[t + half]
        cuda.syncthreads()
        half //= 2
    total = buf[0]
    cuda.syncthreads()  # every thread has read buf[0] before the buffer is used again
    return total


def block_sum(v):
    """Sum of ``v`` over the block, in a fixed tree order."""
    return block_fold(v, False)


def block_max(v):
    """Largest ``v`` over the block (NaN-free inputs)."""
    return block_fold(v, True)


# -- kernels -----------------------------------------------------------------------------------


def fill(a, value):
    """``a[0] = value`` (one thread): puts a host scalar on the device without a blocking copy."""
    if cuda.threadIdx.x == 0 and cuda.blockIdx.x == 0:
        a[0] = value


def finalize(partials, out, scale, wsum, flags):
    """One block: ``out[0] = sum(partials) * scale`` (or ``/ wsum[0]``), summed in a fixed order."""
    t = cuda.threadIdx.x
    acc = 0.0
    for j in range(t, partials.size, THREADS):
        acc += partials[j]
    total = block_sum(acc)
    if t == 0:
        s = scale
        if flags & SCALE_BY_WSUM:
            ws = wsum[0]
            s = 1.0 / ws if ws != 0.0 else math.inf
        out[0] = total * s


def clip_below(n, a, low):
    """``a[i] = max(a[i], low)`` for ``i < n``, NaN kept (a Hessian's ``hess_floor``)."""
    i = grid_start()
    step = grid_step()
    while i < n:
        if a[i] < low:
            a[i] = low
        i += step


def sum_values(n, x, b, partials):
    """Per-block float64 sums of ``x[i * b]`` for ``i < n`` (``b = 0`` repeats a single value)."""
    acc = 0.0
    i = grid_start()
    step = grid_step()
    while i < n:
        acc += float64(x[i * b])
        i += step
    total = block_sum(acc)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


def grad_stats(n, g, rows):
    """Per-block ``(sum of squares, max |g|, non-finite count)`` of a gradient (see fastloss._stats)."""
    ss = 0.0
    mx = 0.0
    bad = 0.0
    i = grid_start()
    step = grid_step()
    while i < n:
        v = float64(g[i])
        if math.isfinite(v):
            ss += v * v
            mx = max(mx, abs(v))
        else:
            bad += 1.0
        i += step
    ss = block_sum(ss)
    mx = block_max(mx)
    bad = block_sum(bad)
    if cuda.threadIdx.x == 0:
        rows[cuda.blockIdx.x, 0] = ss
        rows[cuda.blockIdx.x, 1] = mx
        rows[cuda.blockIdx.x, 2] = bad


def first_not_in(n, x, allowed, bad):
    """``bad[0] = min(bad[0], first i with x[i] not in allowed)`` (an integer atomic: order-free)."""
    i = grid_start()
    step = grid_step()
    while i < n:
        v = float64(x[i])
        ok = False
        for a in allowed:
            if v == a:
                ok = True
        if not ok:
            cuda.atomic.min(bad, 0, int64(i))
        i += step


def first_outside(n, x, low, high, low_closed, high_closed, bad):
    """``bad[0] = min(bad[0], first i with x[i] outside the interval)`` (NaN is inside, as on the
    host; an integer atomic, so the answer does not depend on the order threads find elements in)."""
    i = grid_start()
    step = grid_step()
    while i < n:
        v = float64(x[i])
        if v < low or v > high or (v == low and not low_closed) or (v == high and not high_closed):
            cuda.atomic.min(bad, 0, int64(i))
        i += step


def check_labels(n, y, nc, ignore_index, use_ignore, w, weighted, bad, partials):
    """Class labels: ``bad[0] = min(bad[0], first invalid i)`` and per-block sums of the mean's
    denominator (``w[y_i]`` when ``weighted``, else 1, over valid labels other than ``ignore_index``)."""
    acc = 0.0
    i = grid_start()
    step = grid_step()
    while i < n:
        v = int64(y[i])
        if not (use_ignore and v == ignore_index):
            if v < 0 or v >= nc:
                cuda.atomic.min(bad, 0, int64(i))
            else:
                acc += w[v] if weighted else 1.0
        i += step
    total = block_sum(acc)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


def sum_to(m, src, out, full, target):
    """``out`` (``target`` shape, flat) = ``src`` (``full`` shape, flat) summed over broadcast axes.

    One thread per output element adds its terms in index order (float64), so the result is
    deterministic; ``full`` and ``target`` are tuples of the same length (``target`` padded with 1s).
    """
    j = grid_start()
    step = grid_step()
    ndim = len(full)
    count = uint64(1)
    for d in range(ndim):
        if target[d] == 1 and full[d] != 1:
            count *= full[d]
    while j < m:
        acc = 0.0
        for k in range(count):
            r = j
            q = k
            flat = uint64(0)
            stride = uint64(1)
            for e in range(ndim):
                d = ndim - 1 - e
                if target[d] == 1 and full[d] != 1:
                    idx = q % full[d]
                    q //= full[d]
                else:
                    idx = r % target[d]
                    r //= target[d]
                flat += idx * stride
                stride *= full[d]
            acc += float64(src[flat])
        out[j] = acc
        j += step


# -- generated per number of dimensions --------------------------------------------------------


def _per_index_source(signature: str, ndim: int, statement: str) -> str:
    """A grid-stride kernel ``def signature:`` running ``statement`` for every ``i < n``, with
    ``i0, ..., i{ndim-1}`` the multi-index of ``i`` in ``shape``."""
    lines = [f"def {signature}:", "    i = grid_start()", "    step = grid_step()", "    while i < n:", "        r = i"]
    for d in reversed(range(ndim)):
        lines += [f"        i{d} = r % shape[{d}]", f"        r //= shape[{d}]"]
    lines += [f"        {statement}", "        i += step"]
    return "\n".join(lines) + "\n"


def _gather_source(src_ndim: int, ndim: int) -> str:
    """``dst[i] = src[multi-index of i in shape]``, ``src`` broadcast from the trailing axes."""
    idx = ", ".join(f"i{d} * keep[{d}]" for d in range(ndim - src_ndim, ndim))
    return _per_index_source("gather(n, src, dst, shape, keep)", ndim, f"dst[i] = src[{idx or '()'}]")


def _scatter_source(ndim: int) -> str:
    """``dst[multi-index of i] = src[i]`` into a strided ``dst``."""
    idx = ", ".join(f"i{d}" for d in range(ndim))
    return _per_index_source("scatter(n, src, dst, shape)", ndim, f"dst[{idx or '()'}] = src[i]")


DEVICE_FUNCTIONS = (grid_start, grid_step, block_fold, block_sum, block_max)
KERNELS = (fill, finalize, sum_values, grad_stats, first_not_in, first_outside, check_labels, sum_to,
           clip_below)


class Toolkit:
    """The shared kernels compiled for one block size (attributes named like the functions).

    ``globals`` is the namespace all its functions share; the kinds define their own kernels in
    it (:meth:`define`, :meth:`bind`) so that they call the device functions of the same build.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1 or threads & (threads - 1):
            raise ValueError(f"fastloss: CUDA block size must be a power of two, got {threads}")
        self.threads = threads
        self.globals = dict(globals())
        self.globals["THREADS"] = threads
        for f in DEVICE_FUNCTIONS:
            self.globals[f.__name__] = cuda.jit(device=True)(self.bind(f))
        for f in KERNELS:
            setattr(self, f.__name__, cuda.jit(self.bind(f)))
        self._generated: dict[tuple, object] = {}

    def bind(self, func, name: str | None = None) -> types.FunctionType:
        """``func``'s code over this toolkit's globals (so its placeholders are bound)."""
        name = name or func.__name__
        bound = types.FunctionType(func.__code__, self.globals, name, func.__defaults__)
        bound.__qualname__ = f"{name}__t{self.threads}"
        return bound

    def define(self, source: str, name: str, filename: str, extra: dict | None = None) -> types.FunctionType:
        """Execute generated ``source``; the function it defines, over this toolkit's globals.

        With ``extra`` the function gets its own copy of the globals with those names added
        (e.g. the loss's scalar kernel), so that kernels of different losses do not collide.
        """
        glb = self.globals if extra is None else {**self.globals, **extra}
        ns: dict = {}
        exec(compile(source, filename, "exec"), glb, ns)  # our own generated code only
        fn = ns[name]
        bound = types.FunctionType(fn.__code__, glb, name, fn.__defaults__)
        bound.__qualname__ = f"{name}__t{self.threads}"
        return bound

    def gather(self, src_ndim: int, ndim: int):
        key = ("gather", src_ndim, ndim)
        if key not in self._generated:
            fn = self.define(_gather_source(src_ndim, ndim), "gather", f"<fastloss gather {src_ndim}->{ndim}>")
            self._generated[key] = cuda.jit(fn)
        return self._generated[key]

    def scatter(self, ndim: int):
        key = ("scatter", ndim)
        if key not in self._generated:
            fn = self.define(_scatter_source(ndim), "scatter", f"<fastloss scatter {ndim}>")
            self._generated[key] = cuda.jit(fn)
        return self._generated[key]


_TOOLKITS: dict[int, Toolkit] = {}


def toolkit(threads: int) -> Toolkit:
    """The toolkit for blocks of ``threads`` (compiled lazily, kept for the process)."""
    tk = _TOOLKITS.get(threads)
    if tk is None:
        tk = _TOOLKITS[threads] = Toolkit(threads)
    return tk


def shared() -> Toolkit:
    """The toolkit for the current ``config.THREADS``."""
    return toolkit(config.THREADS)
