"""The similarity kind (InfoNCE) on CUDA arrays: the host kind's steps, each on the device.

The same composition as :mod:`fastloss.kinds.similarity.host`, with every step on the GPU and nothing read
back (apart from the cross entropy's label check, see below):

1. Rows normalised (``u = z / max(|z|, eps)``) by the CUDA rowreduce driver
   (:func:`fastloss.kinds.rowsum.cuda.launch`) running :data:`NORMALISE`, a three-stage
   ``RowReduce`` like a loss's: norms summed in float64 per row, deterministic.
2. ``S = u v^T / temperature`` and later ``G v``, ``G^T u``: the three ``N x N x D`` products go
   through :func:`device_matmul` (below).
3. The softmax cross entropy of the rows of ``S`` (and of ``S^T`` for the symmetric loss; a tiled
   transpose) is ``spec.kernel`` (:func:`fastloss.cross_entropy`) on the device: the CUDA rowwise
   kind, writing each row's gradient in place over the matrix. Its labels are ``0 .. N-1``, built on
   the device, so they are not checked (:func:`fastloss.device.checks.trusted`): nothing waits. Only
   a call with ``weight=`` waits once, for the check that no weight is negative.
4. The per-pair losses, their weights and the reduction: one grid-stride kernel and the shared
   ordered :func:`~fastloss.device.kernels.finalize`.
5. ``d loss / d S``: row ``i`` scaled by its pair's factor plus, symmetric, column ``i``'s gradient
   transposed (one tiled kernel, in place).
6. The gradient through the normalisation, ``(du - u (u . du)) / |z|``, by the rowreduce driver
   running :data:`BACKWARD`, written into ``out=`` when it is contiguous.

Device matmul (decided for this backend). :func:`device_matmul` computes ``c = alpha op(a) op(b)``
on the call's stream. It uses :data:`MATMUL` when set (a function ``(placement, a, b, c, trans_a,
trans_b, alpha)`` on 2-D C-contiguous Numba device arrays: the plug for other libraries and for the
tests), else the package's dense backend for the arrays' framework (:mod:`fastloss.device.matmul`, as
the fused linear cross entropy): cuBLAS through PyTorch for PyTorch tensors, through CuPy for CuPy
arrays, and for Numba device arrays (and the simulator) a shared-memory tiled kernel with float64
accumulation, deterministic. That fallback is correct everywhere but far from cuBLAS speed, so there
is no "install CuPy" error: pass CuPy arrays or PyTorch tensors for speed on large batches. cuBLAS
products are deterministic for a given GPU model and library version.
"""

from __future__ import annotations

import math
import threading
import types
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import cuda, float64, int64

from ..._call import check_outs, check_weight, grad_dtype, mean_scale
from ..._flags import NEED_GRAD, SCALE_BY_WSUM
from ..._validate import check_weight_shape, compute_dtype
from ...device import arrays as device
from ...device import config, kernels, matmul
from ...device.arrays import U, reduced_value
from ...device.checks import Checks, trusted
from .. import base as _kinds
from ..pointwise.cuda import operand, result, sum_weights
from ..rowsum.cuda import CudaRowReduce, launch
from ..rowsum.host import RowReduce
from .host import NORM_EPS

_F64 = np.dtype(np.float64)
_SCALARS = (float, int, bool, np.generic)

#: A device matmul ``(placement, a, b, c, trans_a, trans_b, alpha)`` used instead of the automatic
#: choice (see the module docstring); ``None``: automatic.
MATMUL: Callable | None = None


# -- the normalisation, as RowReduce stages run by the CUDA rowreduce driver ----------------------


def _norm_map(j, z):
    return (z * z,)


def _norm_finish(sums):
    norm = math.sqrt(sums[0])
    m = NORM_EPS if norm < NORM_EPS else norm  # torch.nn.functional.normalize's floor; NaN propagates
    return (0.0, 1.0 / m)


def _norm_grad(j, z, coefs):
    return (z * coefs[1],)


#: ``u = z / max(|z|, eps)`` per row (the driver's "gradient" output is ``u``).
NORMALISE = RowReduce(_norm_map, _norm_finish, _norm_grad)


def _back_map(j, z, du):
    return (z * z, z * du)


def _back_finish(sums):
    norm = math.sqrt(sums[0])
    m = NORM_EPS if norm < NORM_EPS else norm
    inv = 1.0 / m
    radial = sums[1] * inv if norm > NORM_EPS else 0.0  # u . du; no radial part below the floor
    return (0.0, inv, radial * inv)


def _back_grad(j, z, du, coefs):
    return ((du - coefs[2] * z) * coefs[1],)


#: ``dz = (du - u (u . du)) / max(|z|, eps)`` per row, from ``z`` and ``du`` (``u . du`` dropped below eps).
BACKWARD = RowReduce(_back_map, _back_finish, _back_grad)


# -- matrix kernels (TILE x TILE thread blocks; THREADS-sized 1-D ones for vectors) ----------------

TILE = 16  # placeholders, rebound per build
PADDED = 17  # TILE + 1: a padded row of a transposed tile hits every shared-memory bank once


def transpose(n, src, dst):
    """``dst = src^T`` for (n, n) matrices, through shared-memory tiles (coalesced reads and writes)."""
    tile = cuda.shared.array((TILE, PADDED), float64)
    tx = int64(cuda.threadIdx.x)
    ty = int64(cuda.threadIdx.y)
    nt = (n + TILE - 1) // TILE
    q = int64(cuda.blockIdx.x)
    while q < nt * nt:
        bi = q // nt
        bj = q - bi * nt
        i = bi * TILE + ty
        j = bj * TILE + tx
        if i < n and j < n:
            tile[ty, tx] = float64(src[i, j])
        cuda.syncthreads()
        i2 = bj * TILE + ty
        j2 = bi * TILE + tx
        if i2 < n and j2 < n:
            dst[i2, j2] = tile[tx, ty]
        cuda.syncthreads()
        q += int64(cuda.gridDim.x)


def scale_grads(n, gr, gc, w, bw, scale, wsum, flags, c):
    """``gr[i, j] = gr[i, j] a_i + gc[j, i] a_j`` (the second term when ``gc`` is not empty),
    ``a_i = s w_i c``: d loss / d S from the row and column cross-entropy gradients."""
    tile = cuda.shared.array((TILE, PADDED), float64)
    tx = int64(cuda.threadIdx.x)
    ty = int64(cuda.threadIdx.y)
    s = scale
    if flags & SCALE_BY_WSUM:
        ws = wsum[0]
        s = 1.0 / ws if ws != 0.0 else math.inf
    sc = s * c
    weighted = w.size > 0
    sym = gc.shape[0] > 0
    nt = (n + TILE - 1) // TILE
    q = int64(cuda.blockIdx.x)
    while q < nt * nt:
        bi = q // nt
        bj = q - bi * nt
        if sym:
            k = bj * TILE + ty
            col = bi * TILE + tx
            if k < n and col < n:
                ak = sc * float64(w[k * bw]) if weighted else sc
                tile[ty, tx] = float64(gc[k, col]) * ak
            cuda.syncthreads()
        i = bi * TILE + ty
        j = bj * TILE + tx
        if i < n and j < n:
            ai = sc * float64(w[i * bw]) if weighted else sc
            v = float64(gr[i, j]) * ai
            if sym:
                v += tile[tx, ty]  # gc[j, i] a_j, loaded by the thread across the diagonal
            gr[i, j] = v
        cuda.syncthreads()
        q += int64(cuda.gridDim.x)


def iota(n, out):
    """``out[i] = i`` (the class labels 0 .. N-1 of the similarity rows)."""
    i = grid_start()  # noqa: F821  (bound per build, as in fastloss.device.kernels)
    step = grid_step()  # noqa: F821
    while i < n:
        out[i] = i
        i += step


def pair_losses(n, lr, lc, w, bw, per_pair, partials):
    """Per pair ``(lr_i [+ lc_i] / 2) w_i`` (into ``per_pair`` when given) and per-block float64 sums."""
    weighted = w.size > 0
    sym = lc.size > 0
    write = per_pair.size > 0
    acc = 0.0
    i = grid_start()  # noqa: F821
    step = grid_step()  # noqa: F821
    while i < n:
        v = float64(lr[i])
        if sym:
            v = 0.5 * (v + float64(lc[i]))
        if weighted:
            v *= float64(w[i * bw])
        if write:
            per_pair[i] = v
        acc += v
        i += step
    total = block_sum(acc)  # noqa: F821
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


_TILED = (transpose, scale_grads)
_VECTOR = (iota, pair_losses)


class _Build:
    """The matrix kernels for one (block size, tile): Python functions (``py``) and their kernels."""

    def __init__(self, threads: int, tile: int, fresh: bool = False) -> None:
        if tile < 1 or tile & (tile - 1):
            raise ValueError(f"fastloss: config.TILE must be a power of two, got {tile}")
        tk = kernels.Toolkit(threads) if fresh else kernels.toolkit(threads)
        glb = {**tk.globals, "TILE": tile, "PADDED": tile + 1, "SCALE_BY_WSUM": SCALE_BY_WSUM, "int64": int64,
               "float64": float64}
        self.py = {}
        for f in _TILED + _VECTOR:
            fn = types.FunctionType(f.__code__, glb, f.__name__, f.__defaults__)
            fn.__qualname__ = f"{f.__name__}__t{threads}x{tile}"
            self.py[f.__name__] = fn
        self._jitted: dict[str, object] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self.py:
            raise AttributeError(name)
        kern = self._jitted.get(name)
        if kern is None:
            with self._lock:
                kern = self._jitted.get(name)
                if kern is None:
                    kern = self._jitted[name] = cuda.jit(self.py[name])
        return kern


_BUILDS: dict[tuple[int, int], _Build] = {}


def build(threads: int | None = None, tile: int | None = None) -> _Build:
    key = (threads or config.THREADS, tile or config.TILE)
    b = _BUILDS.get(key)
    if b is None:
        b = _BUILDS[key] = _Build(*key)
    return b


def _tiles(n_tiles: int) -> tuple[int, tuple[int, int]]:
    return max(1, min(n_tiles, config.MAX_BLOCKS)), (config.TILE, config.TILE)


# -- the device matmul -------------------------------------------------------------------------------


class Buffer(NamedTuple):
    """A device buffer of the call: the framework's array (``native``) and its Numba ``view``."""

    native: object
    view: object


def device_matmul(pl, a: Buffer, b: Buffer, c: Buffer, *, trans_a: bool = False, trans_b: bool = False,
                  alpha: float = 1.0) -> None:
    """``c = alpha op(a) op(b)`` on the call's stream (``op``: transposed when asked)."""
    if c.view.size == 0:
        return
    if MATMUL is not None:
        MATMUL(pl, a.view, b.view, c.view, trans_a, trans_b, alpha)
        return
    be = matmul.backend(pl.framework, pl)
    x = be.transpose(a.native) if trans_a else a.native
    y = be.transpose(b.native) if trans_b else b.native
    be.gemm(x, y, c.native, alpha=alpha, beta=0.0)


# -- the kind ------------------------------------------------------------------------------------------


class CudaSimilarity(_kinds.CudaKind):
    """The similarity kind for CUDA arrays (same contract as :class:`fastloss.kinds.similarity.host.SimilarityKind`)."""

    name = "similarity"

    def ptx(self, loss, dtype: np.dtype, cc: tuple[int, int], threads: int, labels=None) -> dict[str, str]:
        """PTX of the kind's own kernels for embeddings of ``dtype`` (the cross entropy's are
        ``spec.kernel``'s, compiled with that loss)."""
        from numba.cuda import types as nbt
        from numba.cuda.np.numpy_support import from_dtype

        from ..rowsum.cuda import Arity, _Compiler, count_sums
        from ..rowsum.cuda import launch_bounds as row_bounds

        real = compute_dtype(np.empty(0, dtype))

        def arr(dt, nd=1):
            return nbt.Array(from_dtype(np.dtype(dt)), nd, "C")

        i64, u64, f64 = nbt.int64, nbt.uint64, nbt.float64
        b = _Build(threads, 16, fresh=True)
        mat, vec = arr(real, 2), arr(real)
        sigs = {
            "transpose": (i64, mat, mat),
            "scale_grads": (i64, mat, mat, arr(np.float32), i64, f64, arr(np.float64), i64, f64),
            "iota": (u64, arr(np.int64)),
            "pair_losses": (u64, vec, vec, arr(np.float32), u64, arr(dtype), arr(np.float64)),
        }
        out = {f"similarity_{name}": cuda.compile_ptx(b.py[name], sig, cc=cc)[0] for name, sig in sigs.items()}
        comp = _Compiler(fresh=True)
        x, g = arr(dtype, 2), arr(real, 2)
        for label, kernel, xs, gs in (("normalise", NORMALISE, [x], [g]), ("backward", BACKWARD, [x, g], [x])):
            a = Arity(len(xs), 0, count_sums(kernel, len(xs), 0), 1, 0, False)
            fused = (u64, u64, u64, *xs, arr(np.float64), u64, *gs, arr(np.float64), f64, arr(np.float64), i64,
                     arr(np.float64), arr(np.int64))
            fn = comp.python_kernel("fused", kernel, None, a, real.name, threads)
            out[f"similarity_{label}"] = cuda.compile_ptx(fn, fused, cc=cc, launch_bounds=row_bounds(threads))[0]
        return out

    # -- a call ----------------------------------------------------------------------------------------

    def _run(self, pl, spec, inputs, params, weight, reduction, need_value, need_grad, out, stats):
        name = spec.name
        names = [i.name for i in spec.inputs]
        z1 = pl.first
        z2 = pl.view(names[1], inputs[1], scalars=False)
        if z1.ndim != 2:
            raise ValueError(f"{name}: {names[0]} must be 2-D, (N, D); got shape {tuple(z1.shape)}")
        if tuple(z2.shape) != tuple(z1.shape):
            raise ValueError(
                f"{name}: {names[1]} has shape {tuple(z2.shape)} but {names[0]} has shape {tuple(z1.shape)}; "
                "both views need the same rows (pairs) and the same embedding size"
            )
        shape = tuple(int(s) for s in z1.shape)
        n, dim = shape
        real = compute_dtype(z1)
        tau = float(params["temperature"])
        symmetric = bool(params["symmetric"])
        out_dtype = z1.dtype if z1.dtype.kind == "f" else _F64

        wview = None
        if weight is not None:
            wview = pl.view("weight", weight)
            if isinstance(weight, _SCALARS):
                wview = device.with_shape(wview, ())
            check_weight_shape(name, wview, (n,))
        if need_grad and out is not None and not isinstance(out, tuple):
            raise ValueError(f"{name}: out must hold 2 gradient buffers ({', '.join(names)})")
        outs = [None, None]
        if need_grad:
            outs = check_outs(name, names, (0, 1), out, (z1, z2), wview, check=device.out_checker(name, pl))
        if isinstance(weight, _SCALARS):
            check_weight(name, weight)
        else:
            checks = Checks(pl, name)
            checks.weight(wview)
            checks.raise_first()  # waits only when there is a weight to check

        wflag = 0
        scale = mean_scale(reduction, float(n))
        wsum = pl.scratch(1, _F64)
        if wview is not None:
            w, bw = operand(pl, wview, (n,))
            if reduction == "mean":
                sum_weights(pl, w, bw, n, wsum)  # the weighted mean's denominator stays on the device
                wflag = SCALE_BY_WSUM
        else:
            w, bw = pl.scratch(0, _F64), 0

        # gradient buffers: out= when contiguous and not a shifted view of its own input (the
        # normalisation's backward pass reads whole rows of z while it writes), else ours
        gbufs = []
        for z, o in zip((z1, z2), outs):
            gdtype = grad_dtype(z)
            if o is not None and device.c_contiguous(o[1]) and device.writes_through(o[1], z):
                gbufs.append((None, device.reshaped(o[1], shape), True))
            elif need_grad:
                native, view = pl.empty(shape, gdtype)
                gbufs.append((native, view, False))
            else:
                gbufs.append((None, None, False))
        per_native = None
        if need_value and reduction == "none":
            per_native, pview = pl.empty((n,), out_dtype)
        else:
            pview = pl.scratch(0, out_dtype)

        partials = pl.scratch(pl.grid(n)[0], _F64)
        if n:
            self._compute(pl, spec, shape, real, tau, symmetric, (z1, z2), w, bw, scale, wsum, wflag, need_grad,
                          gbufs, pview, partials)

        value = (reduced_value(pl, reduction, per_native, partials, n, out_dtype, scale, wsum, wflag)
                 if need_value else None)
        flat = [(native, device.reshaped(g, (n * dim,)), direct) for native, g, direct in gbufs] if need_grad else []
        return result(pl, value, flat, shape, (z1, z2), (z1, z2), outs, stats)

    @staticmethod
    def _compute(pl, spec, shape, real, tau, symmetric, zs, w, bw, scale, wsum, wflag, need_grad, gbufs, pview,
                 partials) -> None:
        n, dim = shape
        tk = pl.kernels()
        mb = build(tk.threads)
        nowt = pl.scratch(0, _F64)
        one = pl.scratch(1, _F64)
        zs = [CudaRowReduce._rows(pl, z, shape, n, dim) for z in zs]
        us = []
        for z in zs:  # 1. normalised rows
            u = Buffer(*pl.empty(shape, real))
            launch(pl, NORMALISE, [z], [], nowt, 0, [u.view], pl.scratch(0, _F64), (), 1.0, one, NEED_GRAD)
            us.append(u)
        # 2. similarities, and their transpose for the columns' cross entropy
        s_native, s = pl.empty((n, n), real)
        device_matmul(pl, us[0], us[1], Buffer(s_native, s), trans_b=True, alpha=1.0 / tau)
        nt = -(-n // config.TILE)
        tblocks, tthreads = _tiles(nt * nt)
        st_native = st = None
        if symmetric:
            st_native, st = pl.empty((n, n), real)
            mb.transpose[tblocks, tthreads, pl.stream](n, s, st)
        labels_native, labels = pl.empty((n,), np.int64)
        vblocks, vthreads = pl.grid(n)
        mb.iota[vblocks, vthreads, pl.stream](U(n), labels)
        # 3. the rows' (and columns') softmax cross entropy, gradients in place over the matrices
        ce = spec.kernel
        with trusted():  # our own labels 0 .. N-1: checking them would only wait for the device
            if need_grad:
                lr = ce.value_and_grad(s_native, labels_native, reduction="none", out=s_native)[0]
                lc = (ce.value_and_grad(st_native, labels_native, reduction="none", out=st_native)[0]
                      if symmetric else None)
            else:
                lr = ce(s_native, labels_native, reduction="none")
                lc = ce(st_native, labels_native, reduction="none") if symmetric else None
        lr = pl.view("row losses", lr)
        lc = pl.view("column losses", lc) if symmetric else pl.scratch(0, lr.dtype)
        # 4. per-pair losses and the reduction's partial sums
        mb.pair_losses[vblocks, vthreads, pl.stream](U(n), lr, lc, w, U(bw), pview, partials)
        if not need_grad:
            return
        # 5. d loss / d S, in place over the rows' gradient
        c = (0.5 if symmetric else 1.0) / tau
        gc = st if symmetric else device.reshaped(pl.scratch(0, real), (0, 0))
        mb.scale_grads[tblocks, tthreads, pl.stream](n, s, gc, w, bw, scale, wsum, wflag, c)
        # 6. through S = u v^T / tau (tau is in the factors above) and the normalisation
        du = Buffer(*pl.empty(shape, real))
        dv = Buffer(*pl.empty(shape, real))
        device_matmul(pl, Buffer(s_native, s), us[1], du)
        device_matmul(pl, Buffer(s_native, s), us[0], dv, trans_a=True)
        for z, d, (_, g, _) in zip(zs, (du, dv), gbufs):
            launch(pl, BACKWARD, [z, d.view], [], nowt, 0, [device.reshaped(g, shape)], pl.scratch(0, _F64), (),
                   1.0, one, NEED_GRAD)


SIMILARITY_CUDA = _kinds.register_cuda_kind(CudaSimilarity())
