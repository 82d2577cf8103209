"""Gradient statistics computed in the same pass as the gradient (``value_and_grad(..., stats=True)``).

Kernels write one row ``(sum of squares, max |g|, count of non-finite)`` per reduction chunk into a
float64 array of shape ``(nchunks, 3)``; :func:`combine` folds the rows in chunk order, so the
statistics, like the loss, do not depend on the thread count. Non-finite entries are counted and
left out of the norm and the maximum, so one NaN does not hide the scale of the rest.
For losses with several gradients the statistics are global over all of them
(as in global-norm gradient clipping).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class GradStats(NamedTuple):
    """Statistics of the gradient returned alongside it."""

    norm: float  #: L2 norm over the finite entries
    max_abs: float  #: largest finite ``|g|`` (0 for an empty gradient)
    nonfinite: int  #: number of NaN or infinite entries


def empty_partials(nchunks: int) -> np.ndarray:
    return np.zeros((nchunks, 3), dtype=np.float64)


def combine(*partials: np.ndarray) -> GradStats:
    """Fold per-chunk rows (NumPy's fixed pairwise order: the same for any thread count)."""
    rows = np.concatenate(partials) if len(partials) > 1 else partials[0]
    if rows.shape[0] == 0:
        return GradStats(0.0, 0.0, 0)
    return GradStats(math.sqrt(float(rows[:, 0].sum())), float(rows[:, 1].max()), int(rows[:, 2].sum()))
