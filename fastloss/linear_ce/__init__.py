"""Fused linear cross entropy: the loss of ``hidden @ weight.T (+ bias)`` without the full logits.

In a language model the logits ``(tokens, vocabulary)`` are the biggest buffer of a training step
(8192 x 128256 float32 is 4.2 GB), yet every consumer of them is row-local. So, as Liger-Kernel's
fused linear cross entropy and Apple's Cut Cross-Entropy do on GPUs, the tokens are processed in
chunks: for each chunk of rows ``c``::

    buf        = hidden[c] @ weight.T (+ bias)          # one BLAS matmul into a reused buffer
    loss, buf  = cross_entropy.value_and_grad(buf, target[c], reduction="sum", out=buf)
    grad_hidden[c]  = buf @ weight                       # d loss / d hidden, rows c
    grad_weight    += buf.T @ hidden[c]                  # accumulated over the chunks
    grad_bias      += buf.sum(0)

The softmax gradient overwrites the chunk's logits in place (the fused rowwise kernel), so the
extra memory is one chunk buffer, whatever the number of tokens. The reduction is applied outside
the kernel: "mean" divides by the number of non-ignored tokens of the *whole* batch (counted before
the loop), as a single ``cross_entropy`` over the materialised logits would, and the factor is
folded into the (small) ``grad_hidden`` rows and into the BLAS ``alpha`` of the ``grad_weight``
update, never into a pass over a logits-sized buffer.

``grad_weight`` is accumulated in place with BLAS ``gemm`` (``beta = 1``) from SciPy when it is
importable; without SciPy the update goes through a temporary of at most the chunk buffer's size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import native_byte_order
from .checks import (
    CHUNK_FRACTION,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_ROWS,
    NAME,
    ce_options,
    check_labels,
    check_options,
    default_chunk_rows,
)

__all__ = ["CHUNK_FRACTION", "MAX_CHUNK_BYTES", "MIN_CHUNK_ROWS", "LinearCrossEntropy", "check_labels",
           "check_options", "default_chunk_rows", "linear_cross_entropy"]

_UNLOADED: Any = object()
#: SciPy's in-place ``C = alpha A B + C`` per dtype (NumPy's matmul cannot accumulate); loaded on
#: first use so that ``import fastloss`` does not pay for importing SciPy; None without SciPy.
_GEMM: dict[np.dtype, Any] | None = _UNLOADED


def _gemm() -> dict[np.dtype, Any] | None:
    global _GEMM
    if _GEMM is _UNLOADED:
        try:
            from scipy.linalg import blas

            _GEMM = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}
        except ImportError:  # pragma: no cover - exercised by the tests through monkeypatching _GEMM
            _GEMM = None
    return _GEMM


class LinearCrossEntropy:
    """Cross entropy of ``hidden @ weight.T (+ bias)`` computed chunk by chunk over the tokens.

    Call it for the loss; ``.grad`` returns ``(grad_hidden, grad_weight[, grad_bias])`` and
    ``.value_and_grad`` returns ``(loss, (grad_hidden, grad_weight[, grad_bias]))``. All three take
    the same arguments (see ``__call__``).

    Notes
    -----
    Equivalent to ``cross_entropy(hidden @ weight.T + bias, target, ...)`` with
    ``torch.nn.functional.cross_entropy`` semantics, but the peak extra memory is one
    ``(chunk_size, V)`` buffer instead of the ``(tokens, V)`` logits and their gradient. The
    outputs ``grad_hidden`` and ``grad_weight`` are new arrays of the shapes of ``hidden`` and
    ``weight``. Inputs are never modified. CUDA arrays (CuPy, PyTorch, Numba; all of one kind)
    run the same chunk loop on the device (:mod:`fastloss.linear_ce.cuda`): matmuls through cuBLAS
    via CuPy or PyTorch (a tiled Numba kernel for Numba device arrays), the fused CUDA
    cross-entropy kernel in place on each chunk, results of the inputs' type.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((6, 4)).astype(np.float32)
    >>> w = rng.standard_normal((10, 4)).astype(np.float32)
    >>> y = np.array([1, 2, 3, -100, 9, 0])
    >>> loss, (gh, gw) = fl.linear_cross_entropy.value_and_grad(h, w, y, chunk_size=4)
    >>> bool(np.isclose(loss, fl.cross_entropy(h @ w.T, y)))
    True
    >>> gh.shape, gw.shape
    ((6, 4), (10, 4))
    """

    __name__ = __qualname__ = NAME
    __module__ = "fastloss"

    def __call__(self, hidden, weight, target, bias=None, *, ignore_index: int = -100,
                 label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                 reduction: str = "mean", chunk_size: int | None = None):
        """The loss: a scalar, or per-token losses for ``reduction="none"``.

        Parameters
        ----------
        hidden : array_like, shape (..., H)
            Final hidden states, float32 or float64; the leading dimensions are the tokens.
        weight : array_like, shape (V, H)
            The output projection (PyTorch's ``nn.Linear(H, V).weight``, the ``lm_head``); same dtype
            as ``hidden``.
        target : array_like of int, shape (...)
            Class index per token (``hidden``'s shape without the last axis), in ``[0, V)`` or equal
            to ``ignore_index``.
        bias : array_like, shape (V,), optional
            Output bias. When given, its gradient is returned too.
        ignore_index : int, default -100
            Tokens whose target equals it are left out of the loss, the mean and the gradients.
        label_smoothing : float in [0, 1], default 0.0
            As ``cross_entropy``.
        z_loss : float >= 0, default 0.0
            PaLM's z-loss coefficient: ``z_loss * logsumexp(logits)**2`` added per non-ignored token
            (see ``cross_entropy``).
        softcap : float > 0, optional
            Logit soft-capping: the softmax sees ``softcap * tanh(logits / softcap)`` (see
            ``cross_entropy``).
        reduction : {"mean", "sum", "none"}, default "mean"
            ``"mean"`` divides the summed token losses by the number of non-ignored tokens of the whole
            batch (NaN when all are ignored, as PyTorch; the gradients are then zero). ``"none"``
            returns per-token losses (``target``'s shape); its gradients are those of their sum.
        chunk_size : int, optional
            Tokens per chunk. Default :func:`default_chunk_rows`: a chunk buffer of at most
            ``CHUNK_FRACTION`` (1/8) of the full logits and ``MAX_CHUNK_BYTES`` (256 MiB), and at
            least ``MIN_CHUNK_ROWS`` (32) rows. The result does not depend on it beyond rounding.

        Returns
        -------
        numpy scalar or ndarray
            The reduced loss in ``hidden``'s dtype, or the per-token losses (``target``'s shape).
        """
        return _run(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap,
                    reduction, chunk_size, need_grad=False)[0]

    def grad(self, hidden, weight, target, bias=None, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
             reduction: str = "mean", chunk_size: int | None = None) -> tuple[Any, ...]:
        """``(grad_hidden, grad_weight[, grad_bias])``: the gradients of the (reduced) loss."""
        return _run(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap,
                    reduction, chunk_size, need_grad=True)[1]

    def value_and_grad(self, hidden, weight, target, bias=None, *, ignore_index: int = -100,
                       label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                       reduction: str = "mean", chunk_size: int | None = None) -> tuple[Any, tuple[Any, ...]]:
        """``(loss, (grad_hidden, grad_weight[, grad_bias]))`` from one chunked pass."""
        return _run(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap,
                    reduction, chunk_size, need_grad=True)

    def __repr__(self) -> str:
        return "<fastloss linear_cross_entropy>"


linear_cross_entropy = LinearCrossEntropy()
"""Cross entropy of ``hidden @ weight.T (+ bias)`` without the full logits (see :class:`LinearCrossEntropy`)."""


# -- host side ----------------------------------------------------------------------------------


def _run(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap, reduction,
         chunk_size, *, need_grad):
    from ..device import is_device_array

    if any(a is not None and not isinstance(a, np.ndarray) and is_device_array(a)
           for a in (hidden, weight, target, bias)):
        _check_same_device(hidden, weight, target, bias)
        from . import cuda as cuda_linear_ce

        return cuda_linear_ce.run(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap,
                                  reduction, chunk_size, need_grad=need_grad)
    h, w, b, y, opts = _validate(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss,
                                 softcap, reduction, chunk_size)
    return _chunk_loop(h, w, b, y, opts, need_grad=need_grad)


def _check_same_device(hidden, weight, target, bias) -> None:
    from ..device import is_device_array

    named = {"hidden": hidden, "weight": weight, "target": target, "bias": bias}
    host = [name for name, a in named.items() if a is not None and not is_device_array(a)]
    if host:
        raise TypeError(f"{NAME}: {', '.join(host)} on the host but other inputs are CUDA arrays; "
                        "pass all inputs on the same device")


def _float_array(name: str, x, dtype: np.dtype | None = None) -> np.ndarray:
    if x is None:
        raise TypeError(f"{NAME}: {name} is required, got None")
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        raise TypeError(f"{NAME}: {name} is a CUDA array but another input is on the host; "
                        "pass all inputs on the same device")
    a = native_byte_order(np.asarray(x))  # big-endian data (from files) is valid input
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{NAME}: {name} must be float32 or float64, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        # a silent cast would copy a possibly vocabulary-sized matrix: make the caller choose
        raise TypeError(f"{NAME}: {name} is {a.dtype} but hidden is {dtype}; pass both in one dtype")
    return a


def _validate(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap, reduction,
              chunk_size):
    """Arrays as ``(tokens, H)``, ``(V, H)``, ``(V,)`` or None, int64 ``(tokens,)``, and the options."""
    h = _float_array("hidden", hidden)
    if h.ndim == 0:
        raise ValueError(f"{NAME}: hidden must have shape (..., H); got a 0-d array")
    w = _float_array("weight", weight, h.dtype)
    if w.ndim != 2 or w.shape[1] != h.shape[-1] or w.shape[0] == 0:
        raise ValueError(f"{NAME}: weight must have shape (V, H) = (V, {h.shape[-1]}) with V >= 1 "
                         f"(hidden is {h.shape}); got {w.shape}")
    vocab = w.shape[0]
    b = None
    if bias is not None:
        b = _float_array("bias", bias, h.dtype)
        if b.shape != (vocab,):
            raise ValueError(f"{NAME}: bias must have shape (V,) = ({vocab},); got {b.shape}")
        b = np.ascontiguousarray(b)
    lead = h.shape[:-1]
    y, count = check_labels(target, lead, vocab, ignore_index, f"hidden {h.shape} without its last axis")
    chunk_size = check_options(reduction, label_smoothing, z_loss, softcap, chunk_size)
    h2 = np.ascontiguousarray(h.reshape(-1, h.shape[-1]))
    opts = {
        "lead": lead,
        "count": count,
        "reduction": reduction,
        "chunk_size": chunk_size,
        "ce": ce_options(ignore_index, label_smoothing, z_loss, softcap),
    }
    return h2, np.ascontiguousarray(w), b, y, opts


def _accumulate(gw: np.ndarray, dl: np.ndarray, h: np.ndarray, alpha: float, first: bool) -> None:
    """``gw += alpha * dl.T @ h`` without a ``gw``-sized temporary."""
    if first:  # nothing to add to yet: write straight into gw
        np.matmul(dl.T, h, out=gw)
        if alpha != 1.0:
            gw *= alpha
        return
    gemm = _gemm()
    if gemm is not None:
        # Fortran view: gw.T (H, V) += alpha * h.T (H, m) @ dl (m, V); all F-contiguous, no copies
        gemm[gw.dtype](alpha, h.T, dl.T, beta=1.0, c=gw.T, trans_b=1, overwrite_c=1)
        return
    vocab, width = gw.shape
    tile = max(1, min(vocab, dl.size // max(width, 1)))  # the temporary is at most dl's size
    tmp = np.empty((tile, width), gw.dtype)
    for v0 in range(0, vocab, tile):
        v1 = min(v0 + tile, vocab)
        part = tmp[: v1 - v0]
        np.matmul(dl[:, v0:v1].T, h, out=part)
        if alpha != 1.0:
            part *= alpha
        gw[v0:v1] += part


def _chunk_loop(h, w, b, y, opts, *, need_grad):
    from ..losses.multiclass import cross_entropy

    n, width = h.shape
    vocab = w.shape[0]
    dtype = h.dtype
    reduction = opts["reduction"]
    count = opts["count"]
    # "mean" over the whole batch; with no token kept the gradients are zero and the mean NaN
    scale = 1.0 / count if reduction == "mean" and count else 1.0
    per_row = reduction == "none"
    rows = opts["chunk_size"] or default_chunk_rows(n, vocab, dtype.itemsize)
    rows = min(rows, max(n, 1))
    ce_reduction = "none" if per_row else "sum"
    kw = opts["ce"]

    losses = np.zeros(n, dtype) if per_row else None
    total = 0.0
    if need_grad:
        gh = np.empty_like(h)
        gw = np.zeros_like(w)
        gb = np.zeros(vocab, dtype) if b is not None else None
        bsum = np.empty(vocab, dtype) if b is not None else None
    skip = count == 0  # every token ignored: nothing to compute
    buf = np.empty((rows, vocab), dtype) if n and not skip else None
    for lo in range(0, 0 if skip else n, rows):
        hi = min(lo + rows, n)
        hc = h[lo:hi]
        lg = buf[: hi - lo]
        np.matmul(hc, w.T, out=lg)
        if b is not None:
            lg += b
        if need_grad:
            value, dl = cross_entropy.value_and_grad(lg, y[lo:hi], reduction=ce_reduction, out=lg, **kw)
            np.matmul(dl, w, out=gh[lo:hi])
            if scale != 1.0:
                gh[lo:hi] *= scale
            _accumulate(gw, dl, hc, scale, first=lo == 0)
            if b is not None:
                np.add.reduce(dl, axis=0, out=bsum)
                if scale != 1.0:
                    bsum *= scale
                gb += bsum
        else:
            value = cross_entropy(lg, y[lo:hi], reduction=ce_reduction, **kw)
        if per_row:
            losses[lo:hi] = value
        else:
            total += float(value)

    if per_row:
        result = losses.reshape(opts["lead"])
    elif reduction == "sum":
        result = dtype.type(total)
    else:
        result = dtype.type(total / count) if count else dtype.type(np.nan)
    if not need_grad:
        return result, None
    if skip:
        gh[...] = 0.0
    grads = (gh.reshape(*opts["lead"], width), gw) + ((gb,) if b is not None else ())
    return result, grads
