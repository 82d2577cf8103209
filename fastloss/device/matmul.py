"""Dense linear algebra on CUDA arrays for the losses that need it (fused linear cross entropy).

fastloss compiles loss kernels, not matrix products: on a GPU the products belong to cuBLAS, reached
through the framework the arrays came from. :func:`backend` picks, by the type of the arrays:

``torch``
    ``Tensor.addmm_`` (cuBLAS ``gemm``, accumulating in place with ``beta``).
``cupy``
    ``cupy.matmul`` (cuBLAS); an accumulating product goes through a temporary of at most
    ``TILE_ELEMENTS`` elements, a band of the output at a time.
``numba``
    Numba device arrays (and the CUDA simulator, where neither framework exists): a shared-memory
    tiled ``gemm`` kernel of this module, float64 accumulation, any strides. Correct everywhere and
    adequate for moderate sizes; for speed pass CuPy arrays or PyTorch tensors.

Every backend offers the same few operations on arrays of its own type, so that the callers
(:mod:`fastloss.linear_ce.cuda`) are written once.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64

from . import arrays as device

#: Side of the square tiles of the Numba ``gemm`` kernel (threads per block: its square).
TILE = 16
#: Largest temporary of the CuPy backend's accumulating product, in elements.
TILE_ELEMENTS = 1 << 24

_KERNELS: dict = {}


def backend(framework: str, pl: device.Placement):
    """The operations for arrays of ``framework`` (``"torch"``, ``"cupy"`` or ``"numba"``)."""
    return {"torch": _Torch, "cupy": _CuPy, "numba": _Numba}[framework](pl)


class _Framework:
    """A backend over the arrays of the placement's framework (``pl.empty`` allocates them)."""

    def __init__(self, pl: device.Placement) -> None:
        self.pl = pl

    def empty(self, shape, dtype):
        return self.pl.empty(shape, dtype)[0]


class _Torch(_Framework):
    def __init__(self, pl: device.Placement) -> None:
        import torch

        super().__init__(pl)
        self.torch = torch

    def zeros(self, shape, dtype):
        return self.empty(shape, dtype).zero_()

    def transpose(self, a):
        return a.t()

    def gemm(self, a, b, c, alpha: float = 1.0, beta: float = 0.0) -> None:
        """``c <- alpha a @ b + beta c`` (``beta = 0`` ignores what ``c`` held, NaN included)."""
        c.addmm_(a, b, beta=beta, alpha=alpha)

    def add_row(self, a, v) -> None:
        a.add_(v)

    def colsum(self, a, out, alpha: float, beta: float) -> None:
        """``out <- alpha a.sum(0) + beta out``."""
        s = a.sum(0)
        if beta == 0.0:
            out.copy_(s).mul_(alpha)
        else:
            out.mul_(beta).add_(s, alpha=alpha)

    def put(self, dst, src) -> None:
        dst.copy_(src)

    def total(self, values, scale: float):
        """``scale * sum(values)`` of 0-d arrays, added in float64 on the device."""
        vals = list(values)
        return (self.torch.stack(vals).double().sum() * scale).to(vals[0].dtype)

    def scalar(self, value: float, dtype):
        return self.empty((), dtype).fill_(value)

    def reshape(self, a, shape):
        return a.reshape(shape)


class _CuPy(_Framework):
    def __init__(self, pl: device.Placement) -> None:
        import cupy

        super().__init__(pl)
        self.cp = cupy

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        a.fill(0)
        return a

    def transpose(self, a):
        return a.T

    def gemm(self, a, b, c, alpha: float = 1.0, beta: float = 0.0) -> None:
        cp = self.cp
        if beta == 0.0:
            cp.matmul(a, b, out=c)
            if alpha != 1.0:
                c *= alpha
            return
        rows = max(1, min(c.shape[0], TILE_ELEMENTS // max(c.shape[1], 1)))
        tmp = cp.empty((rows, c.shape[1]), c.dtype)
        for r0 in range(0, c.shape[0], rows):
            r1 = min(r0 + rows, c.shape[0])
            part = tmp[: r1 - r0]
            cp.matmul(a[r0:r1], b, out=part)
            if alpha != 1.0:
                part *= alpha
            if beta != 1.0:
                c[r0:r1] *= beta
            c[r0:r1] += part

    def add_row(self, a, v) -> None:
        a += v

    def colsum(self, a, out, alpha: float, beta: float) -> None:
        s = a.sum(axis=0)
        if beta == 0.0:
            out[...] = s * alpha
        else:
            out *= beta
            out += alpha * s

    def put(self, dst, src) -> None:
        dst[...] = src

    def total(self, values, scale: float):
        vals = list(values)
        return (self.cp.stack(vals).astype(self.cp.float64).sum() * scale).astype(vals[0].dtype)

    def scalar(self, value: float, dtype):
        a = self.empty((), dtype)
        a.fill(value)
        return a

    def reshape(self, a, shape):
        return a.reshape(shape)


class _Numba:
    def __init__(self, pl: device.Placement) -> None:
        self.pl = pl
        self.k = _numba_kernels()

    def empty(self, shape, dtype):
        return self.pl.empty(shape, dtype)[1]

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        self.k["fill"][_grid(a.size), 256, self.pl.stream](device.flat(a), 0.0)
        return a

    def transpose(self, a):
        return device.strided(a, a.shape[::-1], a.strides[::-1])

    def gemm(self, a, b, c, alpha: float = 1.0, beta: float = 0.0) -> None:
        m, n = c.shape
        grid = (-(-n // TILE), -(-m // TILE))
        self.k["gemm"][grid, (TILE, TILE), self.pl.stream](a, b, c, alpha, beta)

    def add_row(self, a, v) -> None:
        self.k["add_row"][_grid(a.size), 256, self.pl.stream](a, v)

    def colsum(self, a, out, alpha: float, beta: float) -> None:
        self.k["colsum"][_grid(a.shape[1]), 256, self.pl.stream](a, out, alpha, beta)

    def put(self, dst, src) -> None:
        n = int(dst.size)
        if n:
            self.k["copy"][_grid(n), 256, self.pl.stream](device.flat(dst), device.flat(src))

    def total(self, values, scale: float):
        vals = list(values)
        acc = self.pl.scratch(len(vals), np.float64)
        for i, v in enumerate(vals):
            self.k["copy"][1, 1, self.pl.stream](acc[i:i + 1], device.reshaped(v, (1,)))
        dtype = vals[0].dtype
        out = self.pl.empty((1,), dtype)[1]
        self.k["sum_scaled"][1, 1, self.pl.stream](acc, out, scale)
        return device.device_scalar(out)

    def scalar(self, value: float, dtype):
        out = self.pl.empty((1,), dtype)[1]
        self.k["fill"][1, 1, self.pl.stream](out, value)
        return device.device_scalar(out)

    def reshape(self, a, shape):
        return device.reshaped(a, shape)


def _grid(n: int) -> int:
    return max(1, min(-(-int(n) // 256), 4096))


def _numba_kernels() -> dict:
    """The Numba backend's kernels, compiled on first use."""
    if not _KERNELS:
        _KERNELS.update({f.__name__.lstrip("_"): cuda.jit(f) for f in (_gemm, _add_row, _colsum, _fill, _copy,
                                                                      _sum_scaled)})
    return _KERNELS


# the kernels are module-level functions so that the CUDA simulator can swap ``cuda`` in their globals


def _gemm(a, b, c, alpha, beta):
    # c[i, j] <- alpha sum_k a[i, k] b[k, j] + beta c[i, j], one TILE x TILE block of c per thread
    # block, tiles of a and b staged through shared memory, float64 accumulation
    sa = cuda.shared.array((TILE, TILE), float64)
    sb = cuda.shared.array((TILE, TILE), float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty
    j = cuda.blockIdx.x * TILE + tx
    m = a.shape[0]
    kk = a.shape[1]
    n = b.shape[1]
    acc = 0.0
    for k0 in range(0, kk, TILE):
        sa[ty, tx] = float64(a[i, k0 + tx]) if i < m and k0 + tx < kk else 0.0
        sb[ty, tx] = float64(b[k0 + ty, j]) if k0 + ty < kk and j < n else 0.0
        cuda.syncthreads()
        for k in range(TILE):
            acc += sa[ty, k] * sb[k, tx]
        cuda.syncthreads()
    if i < m and j < n:
        c[i, j] = alpha * acc + (beta * float64(c[i, j]) if beta != 0.0 else 0.0)


def _add_row(a, v):
    i = cuda.grid(1)
    n = a.shape[1]
    while i < a.size:
        r = i // n
        j = i - r * n
        a[r, j] += v[j]
        i += cuda.gridsize(1)


def _colsum(a, out, alpha, beta):
    j = cuda.grid(1)
    while j < a.shape[1]:
        s = 0.0
        for r in range(a.shape[0]):
            s += float64(a[r, j])
        out[j] = alpha * s + (beta * float64(out[j]) if beta != 0.0 else 0.0)
        j += cuda.gridsize(1)


def _fill(a, value):
    i = cuda.grid(1)
    while i < a.size:
        a[i] = value
        i += cuda.gridsize(1)


def _copy(dst, src):
    i = cuda.grid(1)
    while i < dst.size:
        dst[i] = src[i]
        i += cuda.gridsize(1)


def _sum_scaled(values, out, scale):
    s = 0.0
    for i in range(values.size):  # one thread: the chunks' sums added in order
        s += values[i]
    out[0] = s * scale
