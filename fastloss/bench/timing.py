"""Timers and the in-run memory roofline (a Numba triad on the CPU, a device copy on CUDA)."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Percentiles stored for every timing.
PERCENTILES = (10, 25, 50, 75, 90)


@dataclass
class Timing:
    """Wall-clock times of one implementation on one case, in seconds.

    ``first`` is the first call (compilation, tracing and caches included). ``samples`` are the
    per-call times after warm-up; each sample averages ``number`` back-to-back calls, so that
    microsecond calls are not dominated by the timer.
    """

    first: float
    samples: list[float] = field(default_factory=list)
    number: int = 1

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) if self.samples else math.nan

    @property
    def median(self) -> float:
        return self.percentile(50)

    def percentiles(self) -> dict[str, float]:
        return {f"p{q}": self.percentile(q) for q in PERCENTILES}


def measure(
    fn: Callable[[], object],
    sync: Callable[[], None] = lambda: None,
    *,
    repeats: int = 7,
    min_repeats: int = 3,
    warmup: int = 1,
    warmup_time: float = 0.1,
    max_time: float = 1.0,
    min_sample_time: float = 2e-3,
) -> tuple[Timing, object]:
    """Time ``fn``: first call, warm-up, then up to ``repeats`` samples.

    Warm-up runs at least ``warmup`` calls and goes on (up to 50 calls) until ``warmup_time``
    seconds have passed: thread pools (OpenMP's above all, on a loaded machine) take several calls
    to reach their steady state. Sampling stops after ``min_repeats`` samples once ``max_time``
    seconds have been spent, so a slow implementation at a large size costs a bounded time.
    Returns the timing and the result of the first call (used to check that every implementation
    computes the same thing).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of a sample is noise, not the implementation's cost
    try:
        t0 = time.perf_counter()
        result = fn()
        sync()
        first = time.perf_counter() - t0
        start = time.perf_counter()
        one = first
        done = 0
        while done < warmup or (done < 50 and time.perf_counter() - start < warmup_time):
            t0 = time.perf_counter()
            fn()
            sync()
            one = time.perf_counter() - t0
            done += 1
        number = max(1, math.ceil(min_sample_time / one)) if one > 0 else 1000
        timing = Timing(first=first, number=number)
        while len(timing.samples) < repeats:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            timing.samples.append((time.perf_counter() - t0) / number)
            if len(timing.samples) >= min_repeats and time.perf_counter() - start > max_time:
                break
        return timing, result
    finally:
        if gc_was_enabled:
            gc.enable()


@dataclass
class Bandwidth:
    """A measured memory bandwidth in bytes/s (median and spread over repeats)."""

    method: str
    bytes_per_call: int
    timing: Timing

    @property
    def median(self) -> float:
        return self.bytes_per_call / self.timing.median

    @property
    def best(self) -> float:
        return self.bytes_per_call / min(self.timing.samples)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "bytes_per_call": self.bytes_per_call,
            "GBps_median": self.median / 1e9,
            "GBps_best": self.best / 1e9,
            "GBps_p10": self.bytes_per_call / self.timing.percentile(90) / 1e9,
            "GBps_p90": self.bytes_per_call / self.timing.percentile(10) / 1e9,
            "repeats": len(self.timing.samples),
        }


class BandwidthProbe:
    """A bandwidth test kept ready for the whole run and measured again before every case.

    On a shared machine the bandwidth available to us drifts with other load; the fraction of
    bandwidth of a case is therefore taken against the probe measured just before that case, and
    the run's bandwidth is the median over all probes.
    """

    def __init__(self, method: str, bytes_per_call: int, fn: Callable[[], object],
                 sync: Callable[[], None] = lambda: None):
        self.method, self.bytes_per_call, self.fn, self.sync = method, bytes_per_call, fn, sync
        self.samples: list[float] = []

    def measure(self, repeats: int = 5) -> Bandwidth:
        timing, _ = measure(self.fn, self.sync, repeats=repeats, min_repeats=repeats, warmup=1, warmup_time=0.0,
                            max_time=0.0, min_sample_time=0.0)
        self.samples += timing.samples
        return Bandwidth(self.method, self.bytes_per_call, timing)

    def overall(self) -> Bandwidth:
        """All samples of the run together."""
        return Bandwidth(self.method, self.bytes_per_call, Timing(first=math.nan, samples=list(self.samples)))


_triad_kernel = None


def _triad():
    """A parallel STREAM-like triad ``a = b + s * c``, compiled (and cached) on first use."""
    global _triad_kernel
    if _triad_kernel is None:
        from numba import prange

        from .._compile import njit
        from .._config import jit_options

        def triad(a, b, c, s):
            for i in prange(a.size):
                a[i] = b[i] + s * c[i]

        _triad_kernel = njit(triad, **jit_options(parallel=True))
    return _triad_kernel


def cpu_probe(n: int = 20_000_000) -> BandwidthProbe:
    """Triad on float64 arrays of ``n`` elements (far beyond the caches), counting three arrays.

    It runs through the same Numba threading layer and thread count as the loss kernels, so that
    ``loss GB/s / triad GB/s`` is the fraction of what this machine can stream.
    """
    from .. import _threading

    kernel = _triad()
    a, b, c = np.empty(n), np.full(n, 1.0), np.full(n, 2.0)

    def triad():
        with _threading.guard():
            kernel(a, b, c, 3.0)

    return BandwidthProbe("numba parallel triad a = b + s*c (float64, 3 arrays counted)", 3 * a.nbytes, triad)


def cuda_probe(nbytes: int = 1 << 30) -> BandwidthProbe:
    """Device-to-device copy, counting one read and one write (CuPy, PyTorch or Numba arrays)."""
    from .peers import cuda_array_library

    n = nbytes // 4
    lib = cuda_array_library()
    if lib == "cupy":
        import cupy as cp

        a = cp.ones(n, dtype=cp.float32)
        b = cp.empty_like(a)

        def copy():
            b[...] = a

        sync = cp.cuda.Device().synchronize
    elif lib == "torch":
        import torch

        a = torch.ones(n, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)

        def copy():
            b.copy_(a)

        sync = torch.cuda.synchronize
    else:
        from numba import cuda

        a = cuda.to_device(np.ones(n, dtype=np.float32))
        b = cuda.device_array_like(a)

        def copy():
            b.copy_to_device(a)

        sync = cuda.synchronize
    return BandwidthProbe(f"{lib} device-to-device copy (read + write counted)", 2 * n * 4, copy, sync)
