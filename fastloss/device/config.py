"""Tunables of the CUDA backend, read when a call launches its kernels.

``THREADS`` and ``MAX_BLOCKS`` fix the order in which a reduction adds its terms (each thread sums
a grid-stride slice, blocks reduce in a fixed tree, block partials are summed by one block in
index order), so a loss depends on the input size and these two numbers only: not on the GPU
model, the run, or the stream. Changing them changes the last bits of a reduced loss.
"""

from __future__ import annotations

#: Threads per block (a power of two, at least 32). The block reductions use shared memory of
#: ``THREADS`` float64 values.
THREADS = 256

#: Upper bound on the blocks of a grid-stride kernel. Beyond ``MAX_BLOCKS * THREADS`` elements each
#: thread handles several, and the per-block partials stay few enough for one block to sum them.
MAX_BLOCKS = 4096

#: Threads per block of the row-wise kernels (one block per row; a power of two, at least 32).
ROW_THREADS = 256

#: Resident threads per SM the row kernels are compiled for (a register budget: 65536 / this
#: = 64 registers per thread; ptxas spills the rest of the cold per-row code to local memory).
ROW_SM_THREADS = 1024

#: Check the values of a call's arrays on the device and raise ``ValueError`` on the host, with the
#: CPU's rules and messages: class labels and other discrete inputs, declared target domains,
#: negative weights, lower bounds, rows (see :mod:`fastloss.device.checks`). A call's checks are
#: read back together, which waits once for the kernels queued before them; calls with nothing to
#: check never wait. With ``False`` nothing waits: row kernels still never index with an invalid
#: label (its row gets a NaN loss and a NaN gradient), values below a declared lower bound (pointwise
#: ``lower_bounds``) and rows failing a ``row_check`` (rowreduce) get NaN, and weights, targets and
#: other discrete inputs are used as given.
CHECK_LABELS = True

#: Row reductions (the rowreduce kind): elements per piece when rows are split across blocks, and
#: the number of blocks below which long rows are split (few rows would leave most SMs idle with
#: one block per row). Both fix the order of a row's sums, like ``THREADS``.
ROW_PIECE = 8192
ROW_SPLIT_BLOCKS = 256

#: Side of the square thread tiles of the similarity kind's matrix kernels (transposes and the
#: fallback matrix product; a block is ``TILE x TILE`` threads).
TILE = 16
