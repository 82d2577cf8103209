"""The ``flags`` bits of every compiled driver and kernel, CPU and CUDA: one numbering.

A kind's ``run`` tells its driver what to produce with one integer; the bits mean the same on
either device, so that a plan of a call is the same whichever launcher runs it. Names that differ
between kinds (``PER_ELEMENT`` for the pointwise kind, ``PER_ROW`` for the row kinds) are one bit:
"write one loss per sample". Bits a device does not use are never set there.
"""

from __future__ import annotations

#: Write the gradients (scaled for the reduction and the weights).
NEED_GRAD = 1
#: Write one loss per sample (``reduction="none"``): per element, or per row.
PER_SAMPLE = 2
PER_ELEMENT = PER_SAMPLE
PER_ROW = PER_SAMPLE
#: Compute gradient statistics in the same pass (CPU drivers; the CUDA kinds run a kernel after).
NEED_STATS = 4
#: Also reduce the loss's auxiliary part (e.g. cross entropy's ``z_loss`` term) next to the loss.
NEED_AUX = 8
#: CUDA: the mean's denominator (summed weights) was reduced on the device into a one-element
#: array; scale by its inverse instead of the host's ``scale`` (which never waits for the device).
SCALE_BY_WSUM = 16
SCALE_BY_DENOM = SCALE_BY_WSUM
#: CUDA rowreduce: evaluate the declaration's ``row_check`` per row (failing rows get NaN).
CHECK_ROWS = 32
#: CPU rowsum: tasks are pieces of rows (``t = r * npieces + p``), not blocks of rows.
SPLIT = 64
#: CPU rowsum, with ``SPLIT``: only sum each piece into ``part[t]`` (the first phase of the split path).
SUMS_ONLY = 128
#: CPU rowsum: return the number of sums ``map`` gives (the width of ``part``) and do nothing else.
NSUMS = 256
