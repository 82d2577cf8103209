"""CUDA arrays in, CUDA arrays out: conversion, allocation, streams and the errors users see.

Every input exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors, Numba device
arrays; PyTorch tensors that require grad are detached first) is viewed zero-copy as a Numba
device array, which is what kernels take. Results are allocated by the prediction's own framework
(CuPy's memory pool, PyTorch's caching allocator; Numba otherwise), so they come back as the
prediction's array type without a copy, and kernels are launched on the stream the prediction's
interface names (CAI v3), so they are ordered after the work that produced the inputs and before
the work that will use the results, without waiting on the host.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
from collections.abc import Sequence

import numpy as np

INSTALL_HINT = 'pip install "fastloss[cuda]" (NVIDIA\'s numba-cuda)'

_cuda = None


def load():
    """``numba.cuda``, checked: ``ImportError`` without numba-cuda, ``RuntimeError`` without a usable GPU."""
    global _cuda
    if _cuda is not None:
        return _cuda
    if not numba_cuda_installed():
        raise ImportError(f"fastloss: CUDA arrays need the numba-cuda package: {INSTALL_HINT}")
    from numba import cuda

    if not cuda.is_available():
        reason = ""
        try:
            cuda.current_context()
        except Exception as exc:  # the driver's own explanation (no driver, no device, ...)
            reason = f": {str(exc).strip()}"
        raise RuntimeError(
            f"fastloss: got CUDA arrays, but CUDA is not usable in this process{reason}. "
            "Check the NVIDIA driver and CUDA_VISIBLE_DEVICES (numba.cuda.detect() prints what Numba sees)."
        )
    _cuda = cuda
    return cuda


def numba_cuda_installed() -> bool:
    """Whether NVIDIA's numba-cuda (the maintained ``numba.cuda``) is installed."""
    return importlib.util.find_spec("numba_cuda") is not None


def simulated() -> bool:
    """Whether kernels run in the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    try:
        from numba.cuda.core import config
    except ImportError:  # an older numba-cuda layout
        from numba import config
    return bool(config.ENABLE_CUDASIM)


def _framework(x) -> str:
    module = type(x).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("cupy"):
        return "cupy"
    return "numba"


def _is_numba_array(x) -> bool:
    return bool(getattr(type(x), "__cuda_ndarray__", False))


_SCALARS = (float, int, bool, np.generic)

#: Kernels index with unsigned 64-bit integers (see fastloss.device.kernels.grid_start): sizes,
#: strides and shapes are passed as such.
U = np.uint64


def ushape(shape) -> tuple:
    return tuple(U(s) for s in shape)


class Placement:
    """Where one call runs: the prediction's framework, GPU and stream; makes views and buffers.

    Parameters
    ----------
    loss : str
        Loss name, for error messages.
    name : str
        Name of the prediction argument.
    like : array
        The prediction: its framework decides the type of the results, its interface the stream.
    """

    def __init__(self, loss: str, name: str, like) -> None:
        self.cuda = load()
        self.loss = loss
        self.framework = _framework(like)
        if self.framework == "torch" and getattr(like, "requires_grad", False):
            like = like.detach()
        self.like = like
        self.index = like.device.index if self.framework == "torch" else (
            like.device.id if self.framework == "cupy" else None)
        self._kernels = None
        #: The prediction's Numba view; its interface names the stream every kernel of the call uses.
        self.first = self.view(name, like, scalars=False)
        self.stream = self.first.stream or self.cuda.default_stream()

    @contextlib.contextmanager
    def active(self):
        """Make the prediction's GPU current (a no-op when it already is)."""
        if self.index is None or simulated() or self.cuda.get_current_device().id == self.index:
            yield self
            return
        with self.cuda.gpus[self.index]:
            yield self

    # -- inputs ----------------------------------------------------------------------------

    def view(self, name: str, x, *, scalars: bool = True):
        """A Numba device array viewing ``x`` (zero-copy); Python scalars become one-element arrays."""
        if _is_numba_array(x):
            arr = x
        elif isinstance(x, _SCALARS) and scalars:
            value = np.asarray(x)
            arr = self.full(value.item(), value.dtype)
        else:
            if _framework(x) == "torch" and getattr(x, "requires_grad", False):
                x = x.detach()
            try:
                has_interface = hasattr(x, "__cuda_array_interface__")
            except RuntimeError:
                has_interface = False
            if x is None:
                raise TypeError(f"{self.loss}: {name} is required, got None")
            if not has_interface:
                raise TypeError(
                    f"{self.loss}: {name} is on the host ({type(x).__name__}) but other inputs are CUDA arrays; "
                    "pass all inputs on the same device"
                )
            arr = self.cuda.as_cuda_array(x, sync=False)  # the kernels run on the producer's stream instead
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{self.loss}: {name} must be a real numeric array, got dtype {arr.dtype}")
        return arr

    # -- outputs ---------------------------------------------------------------------------

    def empty(self, shape: Sequence[int], dtype) -> tuple:
        """A new C-contiguous buffer: ``(array of the prediction's type, its Numba view)``."""
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if self.framework == "torch":
            import torch

            native = torch.empty(shape, dtype=_torch_dtype(dtype), device=self.like.device)
            return native, self.cuda.as_cuda_array(native, sync=False)
        if self.framework == "cupy":
            import cupy

            with cupy.cuda.Device(self.index):
                native = cupy.empty(shape, dtype=dtype)
            return native, self.cuda.as_cuda_array(native, sync=False)
        view = self.cuda.device_array(shape, dtype=dtype, stream=self.stream)
        return view, view

    def scratch(self, size: int, dtype):
        """A flat work buffer (its Numba view only); freed when the call's last reference goes."""
        if size == 0:  # stands for "not given" in kernel arguments: no memory behind it
            return self.cuda.device_array(0, dtype=np.dtype(dtype))
        return self.empty((size,), dtype)[1]

    def full(self, value, dtype):
        """A one-element device array holding ``value``, written by a kernel (no host-device copy)."""
        arr = self.scratch(1, dtype)
        self.kernels().fill[1, 1, self.stream](arr, value)
        return arr

    def scalar(self, native, view):
        """The 0-d result of the prediction's type over a one-element buffer."""
        if self.framework in ("torch", "cupy"):
            return native.reshape(())
        return device_scalar(view)

    def reshape(self, native, view, shape):
        """The C-contiguous result ``native`` (whose Numba view is ``view``) with another shape."""
        if self.framework in ("torch", "cupy"):
            return native.reshape(shape)
        return reshaped(view, shape)

    def moveaxis(self, native, view, source: int, destination: int):
        """``numpy.moveaxis`` of a result (a view of the prediction's array type)."""
        if self.framework == "torch":
            return native.movedim(source, destination)
        if self.framework == "cupy":
            import cupy

            return cupy.moveaxis(native, source, destination)
        return moveaxis(view, source, destination)

    def to_host(self, view) -> np.ndarray:
        """Copy a device array to a new host array, waiting for the call's stream."""
        host = view.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return host

    def kernels(self):
        from . import kernels

        if self._kernels is None:
            self._kernels = kernels.shared()
        return self._kernels

    def grid(self, n: int) -> tuple[int, int]:
        """``(blocks, threads)`` of a grid-stride launch over ``n`` items."""
        from . import config

        threads = config.THREADS
        return max(1, min(-(-n // threads), config.MAX_BLOCKS)), threads


_TORCH_NAMES = {"float16": "float16", "float32": "float32", "float64": "float64", "int64": "int64",
                "int32": "int32", "bool": "bool", "uint8": "uint8", "int8": "int8", "int16": "int16"}


def _torch_dtype(dtype: np.dtype):
    import torch

    return getattr(torch, _TORCH_NAMES[dtype.name])


@functools.cache
def _scalar_class(base: type) -> type:
    class DeviceScalar(base):
        """A 0-d device array that converts to a Python number (``float(loss)`` copies it to the host)."""

        def __float__(self) -> float:
            return float(self.copy_to_host())

        def __int__(self) -> int:
            return int(self.copy_to_host())

        def item(self):
            return self.copy_to_host().item()

    DeviceScalar.__qualname__ = DeviceScalar.__name__ = f"DeviceScalar{base.__name__}"
    return DeviceScalar


def device_scalar(view):
    """A 0-d :class:`DeviceScalar` over the one-element Numba array ``view``."""
    cls = _scalar_class(type(view))
    if simulated():
        return cls(view._ary.reshape(()))
    return cls(shape=(), strides=(), dtype=view.dtype, stream=view.stream, gpu_data=view.gpu_data)


# -- results ---------------------------------------------------------------------------------


def reduced_value(pl, reduction: str, per_sample, partials, n: int, dtype, scale: float, wsum, flags: int):
    """The loss on the device for ``reduction``, never waiting: the per-sample array for ``"none"``,
    else a 0-d result from the block partials: their sum, or their mean (times ``scale``, from
    :func:`~fastloss._call.mean_scale`, or over ``wsum[0]`` with ``SCALE_BY_WSUM``; NaN for the
    mean of nothing, 0 for its sum, as on the host)."""
    if reduction == "none":
        return per_sample
    from .._flags import SCALE_BY_WSUM

    tk = pl.kernels()
    native, vview = pl.empty((1,), dtype)
    if n:
        mean = reduction == "mean"
        tk.finalize[1, tk.threads, pl.stream](partials, vview, scale if mean else 1.0, wsum,
                                              flags & SCALE_BY_WSUM if mean else 0)
    else:
        tk.fill[1, 1, pl.stream](vview, math.nan if reduction == "mean" else 0.0)
    return pl.scalar(native, vview)


def device_stats(pl, rows):
    """Gradient statistics from per-block rows left on the device (reading them back waits)."""
    from .. import _stats

    return _stats.combine(*([pl.to_host(r) for r in rows] or [_stats.empty_partials(0)]))


# -- memory ranges (out= checks) -------------------------------------------------------------


def span(arr) -> tuple[int, int]:
    """``[first byte, last byte + 1)`` of a device array's elements (``(0, 0)`` when empty)."""
    if arr.size == 0:
        return 0, 0
    if simulated():
        ptr = arr._ary.__array_interface__["data"][0]
    else:
        ptr = arr.__cuda_array_interface__["data"][0]
    lo = hi = ptr
    for n, s in zip(arr.shape, arr.strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + arr.dtype.itemsize


def same_memory(a, b) -> bool:
    """Whether two device arrays are the same elements in the same layout."""
    return span(a) == span(b) and tuple(a.shape) == tuple(b.shape) and tuple(a.strides) == tuple(b.strides)


def overlap(a, b) -> bool:
    """Whether the byte ranges of two device arrays intersect."""
    (alo, ahi), (blo, bhi) = span(a), span(b)
    return alo < bhi and blo < ahi


def writes_through(out, own) -> bool:
    """Whether a kernel may write the gradient of ``own`` straight into ``out`` (device views).

    As :func:`fastloss._call.writes_through`: yes when they do not overlap or ``out`` is exactly
    ``own`` (the kernels read each element before writing its gradient); a partial overlap
    (``out`` a shifted view of the input) is computed into a private buffer and copied at the end.
    """
    return same_memory(out, own) or not overlap(out, own)


def out_checker(loss: str, pl: Placement):
    """The device form of one ``out=`` check for :func:`fastloss._call.check_outs`.

    ``check(label, out, shape, dtype, forbidden) -> (out, its Numba view)``: ``out`` must be a CUDA
    array of ``shape`` and ``dtype`` that shares no memory (byte ranges on the device) with the
    ``forbidden`` ``(name, array)`` pairs: the other inputs, the weight and the other ``out``
    entries. Overlapping its own input is allowed (see :func:`writes_through`).
    """

    def check(label: str, out, shape, dtype, forbidden) -> tuple:
        if isinstance(out, np.ndarray) or not _is_device(out):
            raise TypeError(f"{loss}: {label} must be a CUDA array like the inputs, got {type(out).__name__}")
        if _framework(out) == "torch" and getattr(out, "requires_grad", False):
            raise ValueError(f"{loss}: {label} is a tensor that requires grad; pass out.detach() to write into it")
        view = _numba_view(pl, out)
        if tuple(view.shape) != tuple(shape):
            raise ValueError(f"{loss}: {label} has shape {tuple(view.shape)}, expected {tuple(shape)}")
        if view.dtype != dtype:
            raise TypeError(f"{loss}: {label} has dtype {view.dtype}, expected {dtype}")
        for other_name, other in forbidden:
            if not _is_device(other):  # another out= entry that is not a CUDA array: refused in its turn
                continue
            if overlap(view, _numba_view(pl, other)):
                raise ValueError(f"{loss}: {label} shares memory with {other_name}; it may only alias its own input")
        return out, view

    return check


def _numba_view(pl: Placement, x):
    if _is_numba_array(x):
        return x
    if _framework(x) == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()  # its interface is refused otherwise; the memory is the same
    return pl.cuda.as_cuda_array(x, sync=False)


def _is_device(x) -> bool:
    from .detect import is_device_array

    return is_device_array(x)


def gathered(pl: Placement, v, shape):
    """A contiguous copy of ``v`` broadcast to ``shape``, by a gather kernel (no host copy)."""
    n = math.prod(shape)
    buf = pl.scratch(n, v.dtype)
    if n:
        off = len(shape) - v.ndim
        keep = tuple(0 if d >= off and v.shape[d - off] == 1 else 1 for d in range(len(shape)))
        blocks, threads = pl.grid(n)
        pl.kernels().gather(v.ndim, len(shape))[blocks, threads, pl.stream](U(n), v, buf, ushape(shape), ushape(keep))
    return buf


def c_contiguous(arr) -> bool:
    """C-contiguity that ignores the strides of extent-1 axes (as NumPy's flag does)."""
    expected = arr.dtype.itemsize
    for n, s in zip(reversed(arr.shape), reversed(arr.strides)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def flat(arr):
    """A 1-D view of a C-contiguous device array."""
    return arr if arr.ndim == 1 else reshaped(arr, (int(arr.size),))


def reshaped(arr, shape):
    """A C-contiguous device array viewed with another shape of the same size."""
    shape = tuple(int(s) for s in shape)
    if simulated():
        return type(arr)(arr._ary.reshape(shape))
    strides = []
    step = arr.dtype.itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return type(arr)(shape=shape, strides=tuple(reversed(strides)), dtype=arr.dtype, stream=arr.stream,
                     gpu_data=arr.gpu_data)


def with_shape(arr, shape):
    """``arr`` viewed with ``shape``, which only adds or drops axes of extent 1 (any layout)."""
    shape = tuple(int(s) for s in shape)
    if tuple(arr.shape) == shape:
        return arr
    kept = [(n, s) for n, s in zip(arr.shape, arr.strides) if n != 1]
    if [n for n in shape if n != 1] != [n for n, _ in kept]:
        raise ValueError(f"cannot view an array of shape {tuple(arr.shape)} as {shape} without a copy")
    strides = []
    it = iter(kept)
    for n in shape:
        strides.append(next(it)[1] if n != 1 else arr.dtype.itemsize)
    if simulated():
        view = np.lib.stride_tricks.as_strided(arr._ary, shape=shape, strides=tuple(strides))
        return type(arr)(view)
    return type(arr)(shape=shape, strides=tuple(strides), dtype=arr.dtype, stream=arr.stream, gpu_data=arr.gpu_data)


def strided(arr, shape, strides):
    """A view of ``arr``'s memory with the given shape and byte strides (the caller keeps it in bounds)."""
    shape, strides = tuple(int(s) for s in shape), tuple(int(s) for s in strides)
    if simulated():
        return type(arr)(np.lib.stride_tricks.as_strided(arr._ary, shape=shape, strides=strides))
    return type(arr)(shape=shape, strides=strides, dtype=arr.dtype, stream=arr.stream, gpu_data=arr.gpu_data)


def moveaxis(arr, source: int, destination: int):
    """``numpy.moveaxis`` for a device array (a view)."""
    source, destination = source % arr.ndim, destination % arr.ndim
    order = [d for d in range(arr.ndim) if d != source]
    order.insert(destination, source)
    return strided(arr, [arr.shape[d] for d in order], [arr.strides[d] for d in order])
