"""Fused linear cross entropy on CUDA arrays: the chunk loop of :mod:`fastloss.linear_ce` on the device.

The same algorithm as on the host, per chunk of tokens: one matmul into a reused ``(chunk, V)``
buffer, the fused cross-entropy kernel (the CUDA rowwise kind, the same declaration as on the
CPU) writing the softmax gradient in place over it, then ``d_hidden[chunk] = dlogits @ weight`` and
``d_weight += dlogits.T @ hidden[chunk]`` accumulated in place (``beta = 1``). The matmuls go to
cuBLAS through the inputs' framework (:mod:`fastloss.device.matmul`: PyTorch or CuPy), or to a
tiled Numba kernel for Numba device arrays. Results are of the inputs' type; the loss is a 0-d
device array.

The labels are copied to the host once (``tokens`` integers) to be validated and counted: the
"mean" factor scales the matmuls' ``alpha``, which is a host number.
"""

from __future__ import annotations

import math

import numpy as np

from ..device import arrays as device
from ..device import matmul
from . import checks as host


def run(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size, *,
        need_grad: bool):
    """``(loss, gradients or None)`` of :func:`fastloss.linear_cross_entropy` for CUDA arrays."""
    name = host.NAME
    pl = device.Placement(name, "hidden", hidden)
    with pl.active():
        fw = pl.framework
        arrays = {"hidden": hidden, "weight": weight, "bias": bias}
        for key, a in arrays.items():
            if a is not None and device._framework(a) != fw:
                raise TypeError(f"{name}: {key} is a {device._framework(a)} array but hidden is a {fw} array; "
                                "pass hidden, weight and bias as arrays of one framework")
        if fw == "torch":
            arrays = {k: (a.detach() if a is not None else None) for k, a in arrays.items()}
        views = {k: (pl.view(k, a, scalars=False) if a is not None else None) for k, a in arrays.items()}
        hv, wv, bv = views["hidden"], views["weight"], views["bias"]
        for key, v in views.items():
            if v is not None and v.dtype not in (np.float32, np.float64):
                raise TypeError(f"{name}: {key} must be float32 or float64, got dtype {v.dtype}")
            if v is not None and v.dtype != hv.dtype:
                raise TypeError(f"{name}: {key} is {v.dtype} but hidden is {hv.dtype}; pass both in one dtype")
        hshape = tuple(hv.shape)
        if not hshape:
            raise ValueError(f"{name}: hidden must have shape (..., H); got a 0-d array")
        if wv.ndim != 2 or wv.shape[1] != hshape[-1] or wv.shape[0] == 0:
            raise ValueError(f"{name}: weight must have shape (V, H) = (V, {hshape[-1]}) with V >= 1 "
                             f"(hidden is {hshape}); got {tuple(wv.shape)}")
        vocab, width = int(wv.shape[0]), int(wv.shape[1])
        if bv is not None and tuple(bv.shape) != (vocab,):
            raise ValueError(f"{name}: bias must have shape (V,) = ({vocab},); got {tuple(bv.shape)}")
        tview = pl.view("target", target, scalars=False)
        lead = hshape[:-1]
        _, count = host.check_labels(pl.to_host(tview), lead, vocab, ignore_index,
                                     f"hidden {hshape} without its last axis")
        chunk_size = host.check_options(reduction, label_smoothing, z_loss, softcap, chunk_size)
        n = math.prod(lead)
        dtype = np.dtype(hv.dtype)
        ops = matmul.backend(fw, pl)
        if fw == "numba":
            h2 = _rows(hv, (n, width), name)
            w2, b2 = wv, bv
            y2 = _rows(tview, (n,), name)
        else:
            h2 = arrays["hidden"].reshape(n, width)
            w2, b2 = arrays["weight"], arrays["bias"]
            y2 = target.reshape(n)
        return _chunk_loop(ops, h2, w2, b2, y2, lead, count, dtype, reduction, chunk_size,
                           host.ce_options(ignore_index, label_smoothing, z_loss, softcap), need_grad)


def _rows(view, shape, name):
    if tuple(view.shape) == tuple(shape):
        return view
    if not device.c_contiguous(view):
        raise ValueError(f"{name}: Numba device arrays with leading dimensions must be C-contiguous "
                         "(or pass a CuPy array / PyTorch tensor)")
    return device.reshaped(view, shape)


def _chunk_loop(ops, h, w, b, y, lead, count, dtype, reduction, chunk_size, kw, need_grad):
    from ..losses.multiclass import cross_entropy

    n, width = h.shape
    vocab = w.shape[0]
    scale = 1.0 / count if reduction == "mean" and count else 1.0
    per_row = reduction == "none"
    rows = chunk_size or host.default_chunk_rows(n, vocab, dtype.itemsize)
    rows = min(rows, max(n, 1))
    ce_reduction = "none" if per_row else "sum"
    skip = count == 0  # every token ignored (or none): zero gradients, NaN mean

    losses = ops.zeros((n,), dtype) if per_row else None
    gh = gw = gb = None
    if need_grad:
        gh = ops.zeros((n, width), dtype) if skip else ops.empty((n, width), dtype)
        gw = ops.zeros((vocab, width), dtype) if skip else ops.empty((vocab, width), dtype)
        if b is not None:
            gb = ops.zeros((vocab,), dtype) if skip else ops.empty((vocab,), dtype)
    values = []
    buf = ops.empty((rows, vocab), dtype) if n and not skip else None
    wt = ops.transpose(w)
    for lo in range(0, 0 if skip else n, rows):
        hi = min(lo + rows, n)
        hc = h[lo:hi]
        lg = buf[: hi - lo]
        ops.gemm(hc, wt, lg)
        if b is not None:
            ops.add_row(lg, b)
        if need_grad:
            value, dl = cross_entropy.value_and_grad(lg, y[lo:hi], reduction=ce_reduction, out=lg, **kw)
            first = lo == 0
            ops.gemm(dl, w, gh[lo:hi], alpha=scale)
            ops.gemm(ops.transpose(dl), hc, gw, alpha=scale, beta=0.0 if first else 1.0)
            if b is not None:
                ops.colsum(dl, gb, scale, 0.0 if first else 1.0)
        else:
            value = cross_entropy(lg, y[lo:hi], reduction=ce_reduction, **kw)
        if per_row:
            ops.put(losses[lo:hi], value)
        else:
            values.append(value)

    if per_row:
        result = ops.reshape(losses, lead)
    elif values:
        result = ops.total(values, scale)
    else:
        result = ops.scalar(math.nan if reduction == "mean" else 0.0, dtype)
    if not need_grad:
        return result, None
    grads = (ops.reshape(gh, (*lead, width)), gw) + ((gb,) if b is not None else ())
    return result, grads
