"""Short throughput check of fused ``cross_entropy.value_and_grad`` (float32) against an in-run roofline.

Usage: ``python tools/bench_rowwise.py [shape ...]`` with shapes like ``1024x32000`` (default: the four
shapes of the rowwise issue). Every case runs once per round, ``REPEATS`` rounds (default 10), and
keeps its best time.

Traffic is counted as one read of the logits and one write of the gradient; the roofline is a
Numba parallel triad ``a = b + s * c`` (GB/s over its three arrays) measured in the same process.
Compared, side by side: a naive NumPy implementation, ``torch.nn.functional.cross_entropy``
forward + backward and ``jax.jit(jax.value_and_grad(...))`` when those are installed.
"""

from __future__ import annotations

import os
import sys
import time

import numba
import numpy as np

import fastloss as fl

SHAPES = [(1024, 32000), (8192, 1000), (4, 256000), (1_000_000, 10)]


@numba.njit(parallel=True, fastmath=True)
def _triad(a, b, c, s):
    for i in numba.prange(a.size):
        a[i] = b[i] + s * c[i]


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def triad_case(rng):
    """Memory roofline: ``a = b + s * c`` over three 100 MB float32 arrays, all threads."""
    a = np.empty(25_000_000, np.float32)
    b = rng.standard_normal(a.size, dtype=np.float32)
    c = rng.standard_normal(a.size, dtype=np.float32)
    return lambda: _triad(a, b, c, np.float32(0.5)), 3 * a.nbytes


def numpy_ce(x, y):
    """What one writes without fastloss: log-softmax, gather, mean, softmax minus one-hot."""
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(x.shape[0])
    loss = np.mean(np.log(s[:, 0]) + m[:, 0] - x[rows, y])
    g = e / s
    g[rows, y] -= 1.0
    g /= x.shape[0]
    return loss, g


def torch_runner(x, y):
    try:
        import torch
    except ImportError:
        return None
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)

    def run():
        xr = xt.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(xr, yt)
        loss.backward()
        return loss, xr.grad

    return run


def jax_runner(x, y):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    def ce(logits, labels):
        lp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=-1))

    f = jax.jit(jax.value_and_grad(ce))
    xj = jax.device_put(x)
    yj = jax.device_put(y.astype(np.int32))

    def run():
        v, g = f(xj, yj)
        g.block_until_ready()
        return v, g

    return run


def main() -> None:
    shapes = [tuple(int(float(d)) for d in a.split("x")) for a in sys.argv[1:]] or SHAPES
    rounds = int(os.environ.get("REPEATS", "10"))
    rng = np.random.default_rng(0)
    # every case is a (name, function) run once per round, all cases round after round, and each keeps
    # its best time: on a shared machine that finds the quiet moments for every case alike
    triad_fn, triad_bytes = triad_case(rng)
    cases = {"triad": triad_fn}
    data = {}
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32) * 2
        y = rng.integers(0, shape[1], shape[0])
        g = np.empty_like(x)
        xi = x.copy()
        data[shape] = x
        cases[shape, "fastloss"] = lambda x=x, y=y, g=g: fl.cross_entropy.value_and_grad(x, y, out=g)
        cases[shape, "in-place"] = lambda xi=xi, y=y: fl.cross_entropy.value_and_grad(xi, y, out=xi)
        cases[shape, "numpy"] = lambda x=x, y=y: numpy_ce(x, y)
        for peer, make in (("torch", torch_runner), ("jax", jax_runner)):
            runner = make(x, y)
            if runner is not None:
                cases[shape, peer] = runner
    for fn in cases.values():  # compile, warm caches and first-touch pages
        fn()
    times = {key: float("inf") for key in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            times[key] = min(times[key], once(fn))
    triad = triad_bytes / times["triad"] / 1e9
    print(f"float32 cross_entropy.value_and_grad, threads={numba.get_num_threads()}, "
          f"layer={fl.threading_layer()}, triad {triad:.1f} GB/s, best of {rounds} interleaved rounds")
    head = f"{'shape':>14s} {'fastloss':>9s} {'GB/s':>6s} {'triad':>6s} {'in-place':>9s} {'numpy':>9s} {'x':>5s}"
    head += f" {'torch':>9s} {'x':>5s} {'jax':>9s} {'x':>5s}"
    print(head)
    for shape in shapes:
        t = times[shape, "fastloss"]
        gbs = 2 * data[shape].nbytes / t / 1e9
        row = f"{'x'.join(map(str, shape)):>14s} {t * 1e3:7.2f}ms {gbs:6.1f} {gbs / triad:6.0%}"
        row += f" {times[shape, 'in-place'] * 1e3:7.2f}ms"
        for peer in ("numpy", "torch", "jax"):
            if (shape, peer) in times:
                tp = times[shape, peer]
                row += f" {tp * 1e3:7.2f}ms {tp / t:5.1f}"
            else:
                row += f" {'-':>9s} {'-':>5s}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
