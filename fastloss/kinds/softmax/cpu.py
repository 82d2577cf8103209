"""CPU driver for rowwise losses: one value per sample from a reduction over the class axis.

The driver is written once here and specialised per loss by :func:`fastloss._compile.specialise`,
which binds ``_row_kernel`` to the loss's compiled block kernel (see :func:`row_kernel`).

The kernel contract (what a rowwise ``LossSpec.kernel`` is)::

    kernel(x, y, t, w, g, scale, loss, *params) -> None

``x``
    A block of logits rows, C-contiguous ``(rows, classes)``, float32 or float64. Read only,
    except that ``g`` may be ``x`` itself (in-place gradient): read from ``x`` everything you need
    before the first write to ``g``.
``y``
    int64 class index of each row (ignored rows arrive as class 0 and are zeroed afterwards), or an
    empty array when the targets are probabilities.
``t``
    The probability-target rows ``(rows, classes)``, or an empty ``(0, classes)`` array.
``w``
    float64 per-class weights ``(classes,)``, or an empty array (no weights).
``g``
    The gradient rows to write, or an empty ``(0, classes)`` array when only the loss is wanted.
``scale``
    The factor that folds the reduction into the gradient (``1/n``, ``1/sum(w[y])`` or ``1``):
    the kernel writes ``scale * d loss_r / d x_r``.
``loss``
    float64 ``(rows,)``: the kernel writes each row's loss (class weights included). A loss that
    declares an auxiliary part (``LossSpec.options["aux"]``, e.g. cross entropy's z-loss) gets
    ``(2 * rows,)`` when the caller asked for that part, and writes it to ``loss[rows + r]``.
``params``
    The loss's hyper-parameters as floats.

Kernels do per-row scalar math with :mod:`math` and leave every pass over the class axis to the
row primitives of :mod:`fastloss.kinds.softmax.primitives` (imported as ``R``); plain loops are allowed too
(they just do not run in parallel inside a row). Helper functions the kernel calls from its own
module are compiled with it.

Why the driver looks the way it does:

* Rows are processed in blocks of ``max(1, ROW_BLOCK // classes)`` rows: many short rows share one
  kernel call (so a 10-class problem runs its exponentials over full SIMD vectors), long rows get a
  block each. Block losses are summed in float64 into ``partials``, then added in block order by
  :func:`block_total`: bit-identical for any number of threads.
* The driver computes any range of blocks and releases the GIL, so the parallel path is the same
  compiled function run on pieces of the block range by :mod:`fastloss._launcher`'s threads. A
  ``prange`` twin cost a second compilation (Numba's parfor lowering and a second optimisation of
  the inlined kernel: ~40% of a cold cross-entropy call) for every loss and dtype.
* For fewer rows than threads with a long class axis, the kernel is compiled a second time with
  the split twins of the primitives (parallel over pieces of each row) and called from a serial
  loop over rows. The serial primitives add long rows piece by piece in the same order, so the two
  compilations give identical bits.
* Reduction scaling is folded into the gradient store; ``mean`` costs no extra pass.
"""

from __future__ import annotations

import types

import numpy as np

from ..._compile import njit
from ..._config import FASTMATH, ROW_BLOCK, jit_options
from ..._flags import NEED_AUX, NEED_GRAD, NEED_STATS, PER_ROW  # the driver's ``flags`` bits: one numbering for all
from ..._kernels.tuples import chunk_stats
from . import primitives as rowops


def _row_kernel(*args):  # placeholders, rebound per loss by ``specialise``
    raise NotImplementedError


def _hess_kernel(*args):
    raise NotImplementedError


#: Whether this specialisation writes the Hessian diagonal (a compile-time constant: drivers
#: compiled without it contain no Hessian code)
_HESS = False


def rowwise_driver(x, y, t, w, g, h, loss_rows, params, scale, ignore_index, flags, partials, stats, b0, b1):
    """Fused row losses and gradients of row blocks ``b0`` to ``b1 - 1`` of ``(n, classes)`` C-contiguous arrays.

    Parameters
    ----------
    x : (n, classes) array
        Logits.
    y : (n,) int64 or empty
        Class indices (validated: each in ``[0, classes)`` or equal to ``ignore_index``), or empty
        for probability targets.
    t : (n, classes) or (0, classes)
        Probability targets, or empty.
    w : (classes,) float64 or empty
        Class weights.
    g : (n, classes) or (0, classes)
        Gradient output (may be ``x``), or empty when ``flags`` lacks ``NEED_GRAD``.
    h : (n, classes) or (0, classes)
        Output of the Hessian diagonal, scaled as the gradient (drivers specialised with ``_HESS``:
        ``_hess_kernel(x, y, t, w, h, scale, *params)`` writes it, before the row kernel may
        overwrite ``x`` with the gradient); empty otherwise.
    loss_rows : (n,) float64 or empty
        Per-row losses for ``reduction="none"`` (when ``flags & PER_ROW``); ``(2 n,)`` with
        ``NEED_AUX``, the auxiliary parts after the losses.
    params : tuple of float
        The kernel's hyper-parameters.
    scale : float
        Gradient factor of the reduction.
    ignore_index : int
        Rows whose class index equals it get zero loss and zero gradient.
    partials : float64 array of ``nblocks(n, classes)``
        Per-block sums; twice as long with ``NEED_AUX``, the auxiliary parts' sums after them.
    stats : float64 array ``(nblocks(n, classes), 3)``
        Per-block gradient statistics (when ``flags & NEED_STATS``).
    b0, b1 : int
        The blocks to compute; several threads may run disjoint ranges of one call at once.
    """
    n, nc = x.shape
    rpb = max(1, ROW_BLOCK // nc)
    nb = (n + rpb - 1) // rpb
    has_index = y.size > 0
    has_probs = t.shape[0] > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_row = (flags & PER_ROW) != 0
    need_stats = (flags & NEED_STATS) != 0
    need_aux = (flags & NEED_AUX) != 0
    for b in range(b0, b1):
        lo = b * rpb
        hi = min(lo + rpb, n)
        nr = hi - lo
        gb = g[lo:hi] if need_grad else g
        tb = t[lo:hi] if has_probs else t
        yb = y[lo:hi] if has_index else y
        nignored = 0
        yk = np.zeros(nr if has_index else 0, dtype=np.int64)
        for i in range(yk.size):
            if yb[i] == ignore_index:
                nignored += 1
            else:
                yk[i] = yb[i]
        lb = np.empty(2 * nr if need_aux else nr)
        if _HESS:
            _hess_kernel(x[lo:hi], yk, tb, w, h[lo:hi], scale, *params)
        _row_kernel(x[lo:hi], yk, tb, w, gb, scale, lb, *params)
        if nignored:
            for i in range(nr):
                if yb[i] == ignore_index:
                    lb[i] = 0.0
                    if need_aux:
                        lb[nr + i] = 0.0
                    if need_grad:
                        for j in range(nc):  # loops, not slice assignments: those compile a
                            gb[i, j] = 0.0  # shape check whose error message costs seconds
                    if _HESS:
                        for j in range(nc):
                            h[lo + i, j] = 0.0
        acc = 0.0
        for i in range(nr):
            acc += lb[i]
        partials[b] = acc
        if per_row:
            for i in range(nr):
                loss_rows[lo + i] = lb[i]
        if need_aux:
            acc = 0.0
            for i in range(nr):
                acc += lb[nr + i]
            partials[nb + b] = acc
            if per_row:
                for i in range(nr):
                    loss_rows[n + lo + i] = lb[nr + i]
        if need_stats:
            chunk_stats((gb.reshape(-1),), stats[b])


@njit(**jit_options(False))
def block_total(partials, nb):
    """The float64 sum of the first ``nb`` block partials, in block order.

    The loop and its compile options are those of the sum that ended the former ``prange`` driver
    (with ``reassoc`` LLVM may vectorise it), so totals keep their bits.
    """
    total = 0.0
    for b in range(nb):
        total += partials[b]
    return total


def nblocks(n: int, nc: int) -> int:
    """Number of row blocks (and reduction partials) for ``n`` rows of ``nc`` classes."""
    rpb = max(1, ROW_BLOCK // max(nc, 1))
    return (n + rpb - 1) // rpb


def row_kernel(func, *, split: bool = False):
    """Compile a rowwise kernel and the helpers it calls from its own module.

    With ``split=True`` the row primitives it uses (``R.<name>`` with ``R`` the
    :mod:`~fastloss.kinds.softmax.primitives` module, or the primitives imported by name) are bound to
    their parallel split twins instead.
    """
    twins = {id(pair[0]): pair[1] for pair in rowops.PRIMITIVES.values()}
    compiled: dict[int, object] = {}

    def build(f):
        key = id(f)
        if key not in compiled:
            glb = dict(f.__globals__)
            for name in f.__code__.co_names:
                v = glb.get(name)
                if v is rowops:
                    glb[name] = rowops.SPLIT if split else rowops
                elif split and id(v) in twins:
                    glb[name] = twins[id(v)]
                elif isinstance(v, types.FunctionType) and v.__module__ == f.__module__ and v is not f:
                    glb[name] = build(v)
            g = types.FunctionType(f.__code__, glb, f.__name__, f.__defaults__, f.__closure__)
            g.__qualname__ = f.__qualname__
            g.__module__ = f.__module__
            compiled[key] = njit(g, cache=False, error_model="numpy", fastmath=set(FASTMATH), no_cfunc_wrapper=True,
                                 no_cpython_wrapper=True)
        return compiled[key]

    return build(func)

