"""Compile the CUDA kernels to PTX without a GPU: what CI checks, since the simulator does not type-check.

``numba.cuda.compile_ptx`` needs no device, but the device functions a kernel calls (the loss's
scalar kernel, the block reductions, helpers such as ``sigmoid``) are compiled for "the current
device", which numba-cuda asks the driver about. :func:`target` stands in a device of the requested
compute capability for the duration; everything is compiled from fresh dispatchers (a new
:class:`~fastloss.device.kernels.Toolkit`), never the ones calls use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

#: Compute capability CI compiles for (H100 / H200).
DEFAULT_CC = (9, 0)


@contextlib.contextmanager
def target(cc: tuple[int, int] = DEFAULT_CC) -> Iterator[None]:
    """Let device functions compile for ``cc`` although no GPU is present."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = cc
        id = 0

    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device()
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def _array(dtype, ndim: int = 1, layout: str = "C"):
    from numba.cuda import types
    from numba.cuda.np.numpy_support import from_dtype

    return types.Array(from_dtype(np.dtype(dtype)), ndim, layout)


def shared_kernels(cc: tuple[int, int] = DEFAULT_CC, threads: int = 256, ndims=(1, 2, 3)) -> dict[str, str]:
    """PTX of every shared kernel (:mod:`fastloss.device.kernels`), by name."""
    from numba import cuda
    from numba.cuda import types

    from .kernels import Toolkit

    i64, u64, f64 = types.int64, types.uint64, types.float64
    out: dict[str, str] = {}
    with target(cc):
        tk = Toolkit(threads)
        sigs = {
            "fill": (_array(np.float64), f64),
            "finalize": (_array(np.float64), _array(np.float32), f64, _array(np.float64), i64),
            "sum_values": (u64, _array(np.float32), u64, _array(np.float64)),
            "grad_stats": (u64, _array(np.float16), _array(np.float64, 2)),
            "first_not_in": (u64, _array(np.int64), types.UniTuple(f64, 3), _array(np.int64)),
            "first_outside": (u64, _array(np.float32), f64, f64, types.boolean, types.boolean, _array(np.int64)),
            "check_labels": (u64, _array(np.int32), i64, i64, types.boolean, _array(np.float64), types.boolean,
                             _array(np.int64), _array(np.float64)),
            "sum_to": (u64, _array(np.float32), _array(np.float32), types.UniTuple(u64, 3), types.UniTuple(u64, 3)),
            "clip_below": (u64, _array(np.float32), f64),
        }
        for name, sig in sigs.items():
            out[name] = cuda.compile_ptx(getattr(tk, name).py_func, sig, cc=cc)[0]
        for nd in ndims:
            shape = types.UniTuple(u64, nd)
            for src_nd in range(nd + 1):
                fn = tk.gather(src_nd, nd).py_func
                sig = (u64, _array(np.float64, src_nd, "A"), _array(np.float64), shape, shape)
                out[f"gather_{src_nd}_{nd}"] = cuda.compile_ptx(fn, sig, cc=cc)[0]
            sig = (u64, _array(np.float32), _array(np.float32, nd, "A"), shape)
            out[f"scatter_{nd}"] = cuda.compile_ptx(tk.scatter(nd).py_func, sig, cc=cc)[0]
    return out


def assemble(ptx: str, cc: tuple[int, int] = DEFAULT_CC) -> dict:
    """Assemble PTX into machine code for ``cc`` with nvJitLink (no GPU needed): what ptxas reports.

    Returns ``{"cubin_bytes", "registers", "spill_bytes", "local_bytes", "log"}``; raises
    ``RuntimeError`` with ptxas's log when the PTX does not assemble.
    """
    import re

    from cuda.bindings import nvjitlink

    options = [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"]
    handle = nvjitlink.create(len(options), options)
    try:
        data = ptx.encode()
        try:
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "fastloss.ptx")
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as exc:
            raise RuntimeError(f"ptxas rejected the PTX ({exc}):\n{_log(nvjitlink, handle, error=True)}") from None
        size = nvjitlink.get_linked_cubin_size(handle)
        log = _log(nvjitlink, handle)
    finally:
        nvjitlink.destroy(handle)
    regs = [int(r) for r in re.findall(r"[Uu]sed (\d+) registers", log)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    local = [int(r) for r in re.findall(r"(\d+) bytes lmem", log)]
    return {
        "cubin_bytes": size,
        "registers": max(regs, default=0),
        "spill_bytes": max(spills, default=0),
        "local_bytes": max(local, default=0),
        "log": log,
    }


def _log(nvjitlink, handle, error: bool = False) -> str:
    size = (nvjitlink.get_error_log_size if error else nvjitlink.get_info_log_size)(handle)
    buf = bytearray(size)
    (nvjitlink.get_error_log if error else nvjitlink.get_info_log)(handle, buf)
    return buf.decode(errors="replace").rstrip("\x00")
