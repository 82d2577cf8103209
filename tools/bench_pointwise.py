"""Short throughput check of fused pointwise ``value_and_grad`` against an in-run memory roofline.

Usage: ``python tools/bench_pointwise.py [n] [loss ...]`` (float32, best of ``REPEATS`` runs, default 5).
Traffic is counted as 3 arrays (pred and target read, gradient written); the roofline is a Numba
parallel triad ``a = b + s * c`` (also 3 arrays) measured in the same process. The main columns
are for ``out=`` a preallocated buffer; ``alloc`` is the same call returning a new gradient array
(the difference is the kernel zeroing the new pages), ``in place`` the call with ``out=pred``.
The last column is the CPU time per element of one thread on in-cache data (32768 elements, the
serial driver): a measure of the kernel's compute cost that other processes on a shared machine do
not distort.
"""

from __future__ import annotations

import os
import sys
import time

import numba
import numpy as np

import fastloss as fl

LOSSES = ["binary_cross_entropy", "log_cosh", "sigmoid_focal", "poisson_nll", "hinge", "huber", "mse"]


@numba.njit(parallel=True, fastmath=True)
def _triad(a, b, c, s):
    for i in numba.prange(a.size):
        a[i] = b[i] + s * c[i]


def best(fn, repeats: int, clock=time.perf_counter, inner: int = 1) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(inner):
            fn()
        times.append((clock() - t0) / inner)
    return min(times)


def main() -> None:
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 10_000_000
    names = sys.argv[2:] or LOSSES
    repeats = int(os.environ.get("REPEATS", "5"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    y_prob = (rng.random(n) < 0.5).astype(np.float32)
    y_count = rng.poisson(2.0, n).astype(np.float32)
    y_real = rng.standard_normal(n, dtype=np.float32)
    y_sign = 2 * y_prob - 1
    g = np.empty_like(x)
    nbytes = 3 * x.nbytes
    a = np.empty_like(x)
    triad = nbytes / best(lambda: _triad(a, x, y_real, np.float32(0.5)), repeats) / 1e9
    print(f"n={n:.0e} float32, threads={numba.get_num_threads()}, triad {triad:.1f} GB/s")
    for name in names:
        loss = fl.get(name)
        target = {"binary_cross_entropy": y_prob, "sigmoid_focal": y_prob, "poisson_nll": y_count,
                  "hinge": y_sign, "squared_hinge": y_sign}.get(name, y_real)
        t = best(lambda loss=loss, target=target: loss.value_and_grad(x, target, out=g), repeats)
        t_alloc = best(lambda loss=loss, target=target: loss.value_and_grad(x, target), repeats)
        p = x.copy()
        t_inplace = best(lambda loss=loss, target=target, p=p: loss.value_and_grad(p, target, out=p), repeats)
        del p
        gbs = nbytes / t / 1e9
        m = 32768
        xs, ts, gs = x[:m], target[:m], g[:m]
        cpu = best(lambda loss=loss, xs=xs, ts=ts, gs=gs: loss.value_and_grad(xs, ts, out=gs), repeats,
                   time.process_time, 20)
        print(f"{name:22s} {t * 1e3:8.2f} ms {gbs:6.1f} GB/s {n / t / 1e9:6.2f} Gelem/s {gbs / triad:6.0%} of triad"
              f" | alloc {t_alloc * 1e3:8.2f} ms, in place {t_inplace * 1e3:8.2f} ms"
              f" | {cpu / m * 1e9:6.2f} ns/elem cpu")


if __name__ == "__main__":
    main()
