"""The host-side checks and defaults of :mod:`fastloss.linear_ce`, shared by its CPU loop
(``__init__``) and its CUDA loop (``cuda.py``)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .._validate import REDUCTIONS, native_byte_order

CHUNK_FRACTION = 1 / 8
"""Default memory budget of the chunk buffer: this fraction of the full logits ..."""
MAX_CHUNK_BYTES = 256 * 2**20
"""... but at most this many bytes ..."""
MIN_CHUNK_ROWS = 32
"""... and, for matmul efficiency, at least this many rows (fewer only when the batch is smaller)."""

NAME = "linear_cross_entropy"


def default_chunk_rows(tokens: int, vocab: int, itemsize: int) -> int:
    """Rows per chunk for ``chunk_size=None``: the chunk buffer within the memory budget.

    ``min(CHUNK_FRACTION * full logits, MAX_CHUNK_BYTES)`` bytes, but at least ``MIN_CHUNK_ROWS``
    rows, and never more rows than tokens.
    """
    row_bytes = max(vocab, 1) * itemsize
    budget = min(CHUNK_FRACTION * tokens * row_bytes, MAX_CHUNK_BYTES)
    return max(1, min(tokens, max(MIN_CHUNK_ROWS, int(budget // row_bytes))))


def check_labels(target, lead: tuple, vocab: int, ignore_index, lead_doc: str) -> tuple[np.ndarray, int]:
    """Host target as flat int64 labels, validated, and the number of non-ignored ones."""
    if target is None:
        raise TypeError(f"{NAME}: target is required, got None")
    t = native_byte_order(np.asarray(target))
    if t.dtype.kind not in "iu":
        raise TypeError(f"{NAME}: target must hold integer class indices, got dtype {t.dtype}")
    if t.shape != lead:
        raise ValueError(f"{NAME}: target must have shape {lead} ({lead_doc}); got {t.shape}")
    ignore_index = operator.index(ignore_index)
    y = t.reshape(-1).astype(np.int64, copy=False)
    kept = y != ignore_index
    bad = np.flatnonzero(kept & ((y < 0) | (y >= vocab)))
    if bad.size:
        i = int(bad[0])
        where = ", ".join(map(str, np.unravel_index(i, t.shape))) if t.ndim else ""
        raise ValueError(f"{NAME}: target[{where}] = {y[i]} is not a class index in [0, {vocab}) "
                         f"or ignore_index={ignore_index}")
    return y, int(np.count_nonzero(kept))


def check_options(reduction, label_smoothing, z_loss, softcap, chunk_size) -> int | None:
    """Validate the scalar options; the chunk size as an int (or None)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{NAME}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{NAME}: label_smoothing must lie in [0, 1], got {label_smoothing}")
    if not z_loss >= 0.0 or not math.isfinite(z_loss):
        raise ValueError(f"{NAME}: z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (softcap > 0.0 and math.isfinite(softcap)):
        raise ValueError(f"{NAME}: softcap must be None or a finite number > 0, got {softcap}")
    if chunk_size is not None:
        chunk_size = operator.index(chunk_size)
        if chunk_size < 1:
            raise ValueError(f"{NAME}: chunk_size must be a positive integer, got {chunk_size}")
    return chunk_size


def ce_options(ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None) -> dict[str, Any]:
    """Keyword arguments for ``cross_entropy`` (the z-loss and soft-cap only when used)."""
    kw: dict[str, Any] = {"ignore_index": ignore_index, "label_smoothing": label_smoothing}
    if z_loss:
        kw["z_loss"] = z_loss
    if softcap is not None:
        kw["softcap"] = softcap
    return kw
