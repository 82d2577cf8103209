"""The memory-bandwidth reference of the benchmark: a parallel Numba triad (3 arrays of traffic)."""

from __future__ import annotations

import numpy as np

from fastloss import _threading
from fastloss.bench.timing import _triad


def test_triad(benchmark, request):
    n = 1_000_000 if request.config.getoption("benchmark_disable") else 50_000_000
    kernel = _triad()
    a, b, c = np.empty(n), np.full(n, 1.0), np.full(n, 2.0)
    kernel(a, b, c, 3.0)
    benchmark.extra_info.update(elements=n, min_bytes=3 * a.nbytes)
    with _threading.guard():
        benchmark(kernel, a, b, c, 3.0)
    assert a[0] == 7.0 and a[-1] == 7.0
