"""Host side of the similarity kind: a row loss over the in-batch similarity matrix of two views.

InfoNCE with in-batch negatives (SimCLR / CLIP) scores each pair ``(z1_i, z2_i)`` against every
other pairing in the batch: with rows normalised (``u = z1 / |z1|``, ``v = z2 / |z2|``) the
similarity matrix ``S = u v^T / temperature`` holds the logits, and row ``i`` of ``S`` is a
classification whose correct class is ``i``. The kind composes existing machinery rather than
compiling a driver of its own:

* the two ``N x N x D`` products (``S``, and the gradients ``G v`` and ``G^T u``) go to BLAS
  through NumPy's ``matmul``;
* the softmax cross entropy of the rows of ``S`` (and, symmetric, of ``S^T``) is ``spec.kernel``,
  a registered rowwise loss with class-index targets (:func:`fastloss.cross_entropy`): its fused
  kernel writes each row's gradient in place over the matrix, so no third ``N x N`` buffer exists;
* the gradient through the normalisation is a few ``O(N D)`` array operations, and the two
  ``N x N`` transposes (``S^T``, and adding the columns' gradient to the rows') are cache-blocked
  loops (:mod:`fastloss.kinds.similarity.cpu`).

A similarity loss declares ``temperature`` and ``symmetric`` parameters. Weights are per pair,
``reduction="none"`` gives one loss per pair. The CUDA version (:mod:`fastloss.kinds.similarity.cuda`)
makes the same steps on the device: products through cuBLAS via the arrays' framework (PyTorch or
CuPy; a tiled kernel of the package for Numba arrays), the cross entropy through the CUDA rowwise kind.
"""

from __future__ import annotations

import math

import numpy as np

from ... import _config, _stats
from ..._call import Result, check_outs, check_weight, grad_dtype, mean_scale, reduce_value
from ..._spec import LossSpec, Param
from ..._validate import as_array, check_weight_shape, compute_dtype
from ..base import register_kind
from . import cpu as similarity_cpu

#: ``torch.nn.functional.normalize``'s floor on the norm.
NORM_EPS = 1e-12


def _normalise(z: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``z`` divided by ``max(|z|, NORM_EPS)`` (in ``dtype``), that factor, and where ``|z|`` is above it."""
    norm = np.sqrt(np.einsum("ij,ij->i", z, z, dtype=np.float64))
    big = norm > NORM_EPS
    inv = 1.0 / np.maximum(norm, NORM_EPS)
    u = (z * inv[:, None]).astype(dtype, copy=False)
    return u, inv, big


def _normalise_backward(du: np.ndarray, u: np.ndarray, inv: np.ndarray, big: np.ndarray) -> np.ndarray:
    """``dz`` from ``du`` for ``u = z / max(|z|, eps)``: ``(du - u (u . du)) / |z|`` (``du / eps`` below eps)."""
    radial = np.einsum("ij,ij->i", u, du, dtype=np.float64)
    radial = np.where(big, radial, 0.0)
    return (du - radial[:, None].astype(du.dtype) * u) * inv[:, None].astype(du.dtype)


def _stats_of(grads) -> _stats.GradStats:
    """Gradient statistics over all gradients (NumPy's fixed pairwise sums: thread-independent)."""
    ss, mx, bad = 0.0, 0.0, 0
    for g in grads:
        g64 = np.asarray(g, dtype=np.float64).reshape(-1)
        fin = np.isfinite(g64)
        ok = g64[fin]
        ss += float(np.sum(ok * ok))
        mx = max(mx, float(np.max(np.abs(ok))) if ok.size else 0.0)
        bad += int(g64.size - np.count_nonzero(fin))
    return _stats.GradStats(math.sqrt(ss), mx, bad)


class SimilarityKind:
    """Losses of the in-batch similarity matrix of two sets of embeddings (InfoNCE / CLIP)."""

    name = "similarity"
    #: one loss per pair, but each depends on every other row (in-batch negatives): never chunked
    elementwise = False
    #: ``reduction="none"`` backward in the adapters: a pair's loss depends on other rows, so the
    #: kernel reruns with the cotangent as per-pair weights
    none_backward = "weight"

    def per_sample_shape(self, spec: LossSpec, params, shapes) -> tuple[int, ...]:
        """One loss per pair: the first view's rows."""
        return tuple(shapes[0][:1])

    def none_rule(self, spec: LossSpec, params, shapes, wanted) -> str:
        return self.none_backward

    def cotangent_shape(self, spec: LossSpec, params, value_shape, grad_ndim: int) -> tuple[int, ...]:
        return tuple(value_shape)

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        return ()

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False):
        name = spec.name
        names = [i.name for i in spec.inputs]
        z1 = as_array(name, names[0], inputs[0])
        z2 = as_array(name, names[1], inputs[1])
        if z1.ndim != 2:
            raise ValueError(f"{name}: {names[0]} must be 2-D, (N, D); got shape {z1.shape}")
        if z2.shape != z1.shape:
            raise ValueError(
                f"{name}: {names[1]} has shape {z2.shape} but {names[0]} has shape {z1.shape}; "
                "both views need the same rows (pairs) and the same embedding size"
            )
        n = z1.shape[0]
        dtype = compute_dtype(z1)
        tau = float(params["temperature"])
        symmetric = bool(params["symmetric"])

        w = None
        denom = float(n)
        if weight is not None:
            warr = check_weight(name, weight)
            check_weight_shape(name, warr, (n,))
            w = np.ascontiguousarray(np.broadcast_to(warr, (n,)), dtype=np.float64)
            denom = float(np.sum(w))
        scale = mean_scale(reduction, denom)
        if need_grad and out is not None and not isinstance(out, tuple):
            raise ValueError(f"{name}: out must hold 2 gradient buffers ({', '.join(names)})")
        outs = check_outs(name, names, (0, 1), out, (z1, z2), weight) if need_grad else None

        per_pair = np.zeros(n)
        grads = (np.zeros(z1.shape, dtype), np.zeros(z2.shape, dtype))
        if n:
            u, inv1, big1 = _normalise(z1, dtype)
            v, inv2, big2 = _normalise(z2, dtype)
            s = u @ v.T
            s *= dtype.type(1.0 / tau)
            parallel = n * n >= _config.PARALLEL_THRESHOLD
            st = None
            if symmetric:
                st = np.empty_like(s)
                similarity_cpu.transpose(st, s, False, parallel)
            labels = np.arange(n)
            row_loss = spec.kernel
            if need_grad:
                # the rowwise kernel writes each row's gradient over the logits (no N x N temporary)
                lr, gr = row_loss.value_and_grad(s, labels, reduction="none", out=s)
                if symmetric:
                    lc, gc = row_loss.value_and_grad(st, labels, reduction="none", out=st)
            else:
                lr = row_loss(s, labels, reduction="none")
                if symmetric:
                    lc = row_loss(st, labels, reduction="none")
            per_pair = np.asarray(lr, dtype=np.float64)
            if symmetric:
                per_pair = 0.5 * (per_pair + np.asarray(lc, dtype=np.float64))
            if w is not None:
                per_pair = per_pair * w
            if need_grad:
                # d loss / d S: each row's (and column's) cross-entropy gradient times its pair's
                # factor; then through S = u v^T / tau
                a = np.full(n, scale) if w is None else scale * w
                a = (a * ((0.5 if symmetric else 1.0) / tau)).astype(dtype)[:, None]
                gr *= a
                if symmetric:
                    gc *= a
                    similarity_cpu.transpose(gr, gc, True, parallel)
                du = gr @ v
                dv = gr.T @ u
                grads = (_normalise_backward(du, u, inv1, big1), _normalise_backward(dv, v, inv2, big2))

        value = None
        if need_value:
            value = reduce_value(reduction, float(np.sum(per_pair)), per_pair, scale, n, (n,), grad_dtype(z1))
        result = ()
        if need_grad:
            result = tuple(self._finish_grad(g, x, o) for g, x, o in zip(grads, (z1, z2), outs))
        return Result(value, result, _stats_of(result) if stats else None)

    @staticmethod
    def _finish_grad(g: np.ndarray, x: np.ndarray, out) -> np.ndarray:
        if out is not None:
            out[...] = g
            return out
        gdtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        return g.astype(gdtype, copy=False)


SIMILARITY = register_kind(SimilarityKind())
