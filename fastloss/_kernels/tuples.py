"""Arity-generic helpers for drivers that take a tuple of input arrays and a tuple of gradients.

A loss may have two inputs and one gradient (``mse``), three inputs and two gradients
(``gaussian_nll``), and so on. Rather than writing one driver per arity, drivers work on tuples
of arrays and these helpers unroll the per-element gather / scatter at compile time.

``gather``, ``slices``, ``scatter`` and ``no_stats`` are Numba *intrinsics*: they emit their LLVM IR
directly. As ``@overload`` functions each of them was a small function of its own that Numba typed,
compiled to machine code and then inlined (about 0.2 s of every loss's first compilation, for code
that vanishes after inlining). The IR is what the overloads produced: an element load converted
to float64, a slice view, a float64 product stored with the array's dtype.
"""

from __future__ import annotations

import operator

import numpy as np
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.core.typing import signature
from numba.extending import intrinsic, overload
from numba.np.arrayobj import load_item, store_item


def _build(src: str, name: str, **namespace):
    ns = {"np": np, **namespace}
    exec(src, ns)  # generated at compile time for one tuple length; never user input
    return ns[name]


def _item_pointer(context, builder, aryty, value, idx):
    """Pointer to element ``idx`` (an intp, known non-negative: no wrap-around) of a 1-D array."""
    ary = context.make_array(aryty)(context, builder, value)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)


@intrinsic
def gather(typingctx, xs, i):
    """``(float64(xs[0][i]), float64(xs[1][i]), ...)`` for ``0 <= i < len(xs[k])``.

    No wrap-around check for a negative ``i`` (``xs[k][i]`` has one, which keeps LLVM from
    vectorising a loop unless it can prove ``i >= 0``).
    """
    sig = types.UniTuple(types.float64, len(xs))(xs, i)

    def codegen(context, builder, sig, args):
        tup, idx = args
        idx = context.cast(builder, idx, sig.args[1], types.intp)
        vals = []
        for k, aryty in enumerate(sig.args[0]):
            ptr = _item_pointer(context, builder, aryty, builder.extract_value(tup, k), idx)
            v = load_item(context, builder, aryty, ptr)
            vals.append(context.cast(builder, v, aryty.dtype, types.float64))
        return context.make_tuple(builder, sig.return_type, vals)

    return sig, codegen


@intrinsic
def slices(typingctx, xs, lo, hi):
    """``(xs[0][lo:hi], xs[1][lo:hi], ...)``."""
    views = [typingctx.resolve_function_type(operator.getitem, (a, types.slice2_type), {}).return_type for a in xs]
    sig = types.Tuple(views)(xs, lo, hi)

    def codegen(context, builder, sig, args):
        tup, start, stop = args
        sli = context.make_helper(builder, types.slice2_type)
        sli.start = context.cast(builder, start, sig.args[1], types.intp)
        sli.stop = context.cast(builder, stop, sig.args[2], types.intp)
        sli.step = context.get_constant(types.intp, 1)
        sli = sli._getvalue()
        vals = []
        for k, (aryty, viewty) in enumerate(zip(sig.args[0], sig.return_type)):
            getitem = context.get_function(operator.getitem, signature(viewty, aryty, types.slice2_type))
            # returns a new reference (Numba's getitem increfs the view), as an intrinsic must
            vals.append(getitem(builder, (builder.extract_value(tup, k), sli)))
        return context.make_tuple(builder, sig.return_type, vals)

    return sig, codegen


def scaled_store(first: int | None):
    """The codegen of an intrinsic ``(gs, i, vals, scale)`` that stores ``gs[k][i] = vals[first + k] * scale``
    (in float64, stored as the array's dtype) for every array ``k`` of the tuple ``gs``; with ``first``
    None, ``vals`` is one number, stored into the one array of ``gs``."""

    def codegen(context, builder, sig, args):
        tup, idx, vtup, sc = args
        idx = context.cast(builder, idx, sig.args[1], types.intp)
        sc = context.cast(builder, sc, sig.args[3], types.float64)
        for k, aryty in enumerate(sig.args[0]):
            if first is None:  # one number, not a tuple
                r = context.cast(builder, vtup, sig.args[2], types.float64)
            else:
                r = context.cast(builder, builder.extract_value(vtup, first + k), sig.args[2].types[first + k],
                                 types.float64)
            v = context.cast(builder, builder.fmul(r, sc), types.float64, aryty.dtype)
            ptr = _item_pointer(context, builder, aryty, builder.extract_value(tup, k), idx)
            store_item(context, builder, aryty, v, ptr)
        return context.get_dummy_value()

    return codegen


@intrinsic
def store_each(typingctx, gs, i, vals, scale):
    """``gs[k][i] = vals[k] * scale`` for every ``k``; ``vals`` is a tuple, or one number for one array."""
    if isinstance(vals, types.BaseTuple):
        return types.none(gs, i, vals, scale), scaled_store(0)
    return types.none(gs, i, vals, scale), scaled_store(None)


@intrinsic
def scatter(typingctx, gs, i, res, scale):
    """``gs[k][i] = res[k + 1] * scale`` (in float64, stored as the array's dtype) for every ``k``."""
    return types.none(gs, i, res, scale), scaled_store(1)


@intrinsic
def no_stats(typingctx, gs, row):
    """Do nothing: stands in for :func:`chunk_stats` in drivers compiled without statistics."""
    sig = types.none(gs, row)

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def no_stage(typingctx, xs, size):
    """Stand-in for :func:`stage_buffers` in drivers that never stage: returns ``xs`` itself."""
    sig = xs(xs, size)

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[0])

    return sig, codegen


@intrinsic
def no_stage_block(typingctx, stage, xc, m):
    """Stand-in for :func:`stage_block` in drivers that never stage: returns ``xc`` itself."""
    sig = xc(stage, xc, m)

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[1])

    return sig, codegen


def stage_buffers(xs, size):
    """``(np.empty(size, xs[0].dtype), np.empty(size, xs[1].dtype), ...)``."""


def stage_block(stage, xc, m):
    """Copy ``xc[k][:m]`` into ``stage[k]`` for every ``k``; return ``stage``."""


@overload(stage_buffers)
def _stage_buffers(xs, size):
    body = "".join(f"np.empty(size, xs[{k}].dtype), " for k in range(len(xs)))
    return _build(f"def impl(xs, size):\n    return ({body})\n", "impl")


@overload(stage_block)
def _stage_block(stage, xc, m):
    lines = "".join(
        f"    d = stage[{k}]\n    s = xc[{k}]\n    for i in range(m):\n        d[i] = s[i]\n" for k in range(len(xc))
    )
    return _build(f"def impl(stage, xc, m):\n{lines}    return stage\n", "impl")


def chunk_stats(gs, row):
    """Write ``(sum of squares, max |g|, non-finite count)`` over all arrays of ``gs`` into ``row``."""


@overload(chunk_stats)
def _chunk_stats(gs, row):
    lines = "    s = 0.0\n    m = 0.0\n    b = 0.0\n"
    for k in range(len(gs)):
        lines += (
            f"    g = gs[{k}]\n"
            "    for i in range(g.size):\n"
            "        v = np.float64(g[i])\n"
            "        if np.isfinite(v):\n"
            "            s += v * v\n"
            "            m = max(m, abs(v))\n"
            "        else:\n"
            "            b += 1.0\n"
        )
    lines += "    row[0] = s\n    row[1] = m\n    row[2] = b\n"
    return _build(f"def impl(gs, row):\n{lines}    return None\n", "impl")
