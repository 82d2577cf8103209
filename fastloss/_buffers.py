"""A cache of large result buffers, reused once the caller has let go of them.

Why: a fresh NumPy array of many megabytes is a fresh mapping from the operating system, and the
OS zeroes every page of it when a kernel first writes there. For a memory-bound loss that costs as
much as the kernel itself: ``mse.value_and_grad`` on 1e8 float32 elements spends about a quarter
of its time in page faults of the new gradient, which a buffer passed as ``out=`` avoids. This
cache gives the same to callers who do not pass ``out=``, as a training loop that drops each
step's gradient before the next step does (PyTorch's CUDA caching allocator does the same for
device memory).

How it stays safe: every gradient handed out is a *view* of a buffer that the cache owns, so each
array the caller derives from it (views, slices, reshapes, ``torch.from_numpy``) holds a reference
to that buffer. A buffer is reused only when the cache holds the only reference left: then no
array anywhere can see the memory. Anything else (an array still alive, a view of it, a
memoryview) keeps the buffer busy and the next call gets another one.

What it costs: up to :func:`buffer_cache` bytes (default the smaller of 2 GiB and a quarter of the
physical memory) stay reserved between calls; :func:`empty_cache` hands the idle ones back.
Buffers smaller than :data:`MIN_BYTES` are never cached: the C library's allocator already
recycles those without going to the OS.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

#: Requests smaller than this (4 MiB, where NumPy starts asking for huge pages) bypass the cache.
MIN_BYTES = 4 << 20

_ENV = "FASTLOSS_BUFFER_CACHE"
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_bytes(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1048576"`` or ``"0"`` as a byte count."""
    s = text.strip().upper().removesuffix("B").removesuffix("I")  # accept 512M, 512MB, 512MiB
    unit = s[-1:] if s[-1:] in _SUFFIXES and not s[-1:].isdigit() else ""
    number = s[: len(s) - len(unit)].strip()
    try:
        value = float(number) * _SUFFIXES[unit]
    except ValueError:
        raise ValueError(f"{_ENV}={text!r}: expected a byte count such as 0, 536870912, 512M or 2G") from None
    if not value >= 0:
        raise ValueError(f"{_ENV}={text!r}: the byte count must be >= 0")
    if value == float("inf"):  # int() of it would raise a bare OverflowError at import
        raise ValueError(f"{_ENV}={text!r}: the byte count must be finite (e.g. 64G for a large cache)")
    return int(value)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _default_limit() -> int:
    text = os.environ.get(_ENV)
    if text is not None:
        return _parse_bytes(text)
    limit = 2 << 30
    phys = _physical_memory()
    return min(limit, phys // 4) if phys else limit


class _Entry:
    __slots__ = ("buf",)

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf


def _refs(entry: _Entry) -> int:
    return sys.getrefcount(entry.buf)


class _Cache:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.entries: list[_Entry] = []  # least recently used first
        self.reserved = 0
        self.hits = 0
        self.misses = 0
        # What an idle buffer's reference count reads as through `_refs` (the entry's reference
        # plus the call's own): measured on a probe, through the same code, because the count a
        # call adds differs between Python versions.
        self.idle_refs = _refs(_Entry(np.empty(1)))

    def idle(self, entry: _Entry) -> bool:
        return _refs(entry) <= self.idle_refs

    def take(self, nbytes: int) -> np.ndarray | None:
        """An idle cached buffer of exactly ``nbytes``, or None. Call with the lock held."""
        for i, entry in enumerate(self.entries):
            if entry.buf.nbytes == nbytes and self.idle(entry):
                self.entries.append(self.entries.pop(i))
                return entry.buf
        return None

    def trim(self, nbytes: int) -> bool:
        """Drop idle buffers, oldest first, until ``nbytes`` more fit; whether they do.

        Call with the lock held.
        """
        keep = []
        for entry in self.entries:
            if self.reserved + nbytes > self.limit and self.idle(entry):
                self.reserved -= entry.buf.nbytes
            else:
                keep.append(entry)
        self.entries = keep
        return self.reserved + nbytes <= self.limit

    def clear_idle(self) -> int:
        with self.lock:
            before = self.reserved
            self.entries = [e for e in self.entries if not self.idle(e)]
            self.reserved = sum(e.buf.nbytes for e in self.entries)
            return before - self.reserved

    def info(self) -> dict:
        with self.lock:
            return {
                "limit": self.limit,
                "reserved": self.reserved,
                "idle": sum(e.buf.nbytes for e in self.entries if self.idle(e)),
                "buffers": len(self.entries),
                "hits": self.hits,
                "misses": self.misses,
            }


_cache = _Cache(_default_limit())


def _after_fork_in_child() -> None:
    # a thread of the parent may have held the lock at the fork: the child gets a fresh one
    _cache.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, like :func:`numpy.empty`, from the cache when large.

    The caller must write every element: a reused buffer holds an earlier result.
    """
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    nbytes = dtype.itemsize
    for s in shape:
        nbytes *= s
    cache = _cache
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    with cache.lock:
        if cache.reserved > cache.limit:  # the limit was lowered while buffers were busy
            cache.trim(0)
        if nbytes > cache.limit:
            return np.empty(shape, dtype)
        buf = cache.take(nbytes)
        if buf is None:
            cache.misses += 1
            buf = np.empty(nbytes, np.uint8)
            if cache.trim(nbytes):
                cache.entries.append(_Entry(buf))
                cache.reserved += nbytes
        else:
            cache.hits += 1
        # made under the lock: from here on the view keeps ``buf`` busy
        return buf.view(dtype).reshape(shape)


def buffer_cache(max_bytes: int | None = None) -> dict:
    """Read or set the size of the cache of large result buffers.

    fastloss reuses the memory of a large gradient (4 MiB or more) once every array that could
    see it is gone, so that a loop which drops each step's gradient does not pay the operating
    system for fresh zeroed pages on every call (at 1e8 float32 elements that is a quarter of the
    time of ``mse.value_and_grad``). Arrays you still hold are never reused. Passing ``out=``
    bypasses the cache.

    Parameters
    ----------
    max_bytes : int, optional
        New limit on the bytes the cache may keep reserved; ``0`` turns caching off (and frees the
        idle buffers). Without it, nothing changes. The default limit is the smaller of 2 GiB and
        a quarter of the physical memory, or the ``FASTLOSS_BUFFER_CACHE`` environment variable
        (a byte count such as ``0``, ``512M`` or ``4G``) when set at import.

    Returns
    -------
    dict
        ``limit`` (bytes), ``reserved`` (bytes held, busy or idle), ``idle`` (bytes held that no
        array uses), ``buffers`` (count), ``hits`` and ``misses`` (requests served from the cache
        and from NumPy, counting only requests large enough to be cached).

    Examples
    --------
    >>> import fastloss as fl
    >>> info = fl.buffer_cache()
    >>> sorted(info)
    ['buffers', 'hits', 'idle', 'limit', 'misses', 'reserved']
    >>> old = fl.buffer_cache()["limit"]
    >>> fl.buffer_cache(0)["limit"]          # no caching from here on
    0
    >>> _ = fl.buffer_cache(old)             # back to the previous limit
    """
    cache = _cache
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise TypeError(f"buffer_cache: max_bytes must be an integer byte count, got {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise ValueError(f"buffer_cache: max_bytes must be >= 0, got {max_bytes}")
        with cache.lock:
            cache.limit = int(max_bytes)
            cache.trim(0)
    return cache.info()


def empty_cache() -> int:
    """Hand the idle cached buffers back to the system; returns the bytes released.

    Buffers still in use (some array can see them) stay. Like ``torch.cuda.empty_cache()``.
    """
    return _cache.clear_idle()
