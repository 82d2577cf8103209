"""Peak extra memory and time of ``linear_cross_entropy.value_and_grad`` vs materialised logits.

    python bench/linear_ce_memory.py                   # (2048 tokens, 1024 hidden, 32000 vocab) float32
    python bench/linear_ce_memory.py --tokens 256 --repeat 1 --chunk 64

Two ways to the same loss and gradients (``grad_hidden``, ``grad_weight``):

* ``chunked``:      ``fl.linear_cross_entropy.value_and_grad`` (never holds the full logits);
* ``materialised``: ``logits = hidden @ weight.T``, ``fl.cross_entropy.value_and_grad(logits, y,
  out=logits)`` (the fused in-place kernel), then ``logits @ weight`` and ``logits.T @ hidden``.

"Extra" memory is what a call needs beyond its inputs and its two outputs (``grad_hidden`` and
``grad_weight``, which either way must exist): the peak of the NumPy allocations traced by
``tracemalloc`` minus the outputs, as a fraction of the full logits (tokens x vocab x itemsize).
The growth of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) is shown
too, outputs included (the allocator may reuse resident pages for them, so they cannot be
subtracted exactly). Time is the best of ``--repeat`` runs (the machine may be shared: the minimum
is the least disturbed run).

On a shared, oversubscribed machine OpenBLAS's threads can lose a scheduler time slice at each of
their synchronisations; ``grad_hidden = dlogits @ weight`` contracts over the vocabulary and
synchronises once per K panel, so its cost grows with the number of chunks. Run also with
``OPENBLAS_NUM_THREADS=1`` to separate that artefact from the method.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numba
import numpy as np

import fastloss as fl


def materialised(h, w, y):
    logits = h @ w.T
    loss, g = fl.cross_entropy.value_and_grad(logits, y, out=logits)
    return loss, (g @ w, g.T @ h)


def chunked(h, w, y, chunk):
    return fl.linear_cross_entropy.value_and_grad(h, w, y, chunk_size=chunk)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(fn, outputs_bytes: int) -> dict[str, float]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    traced = tracemalloc.get_traced_memory()[1] - base - outputs_bytes
    tracemalloc.stop()
    del result
    rss = float("nan")
    if _reset_peak_rss():
        before = _status("VmRSS")
        result = fn()
        rss = _status("VmHWM") - before
        del result
    return {"traced": traced, "rss": rss}


def best_times(fns: dict, repeat: int) -> dict[str, float]:
    """Best time of each function, the runs interleaved so that both see the same machine load."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunk", type=int, default=None, help="chunk_size (default: the automatic choice)")
    a = p.parse_args()

    rng = np.random.default_rng(0)
    h = rng.standard_normal((a.tokens, a.hidden), dtype=np.float32).astype(a.dtype)
    w = (rng.standard_normal((a.vocab, a.hidden), dtype=np.float32) / np.sqrt(a.hidden)).astype(a.dtype)
    y = rng.integers(0, a.vocab, a.tokens)
    itemsize = h.dtype.itemsize
    logits_bytes = a.tokens * a.vocab * itemsize
    outputs_bytes = h.nbytes + w.nbytes
    chunk = a.chunk or fl.linear_ce.default_chunk_rows(a.tokens, a.vocab, itemsize)

    small = (h[:40], w[:50], y[:40] % 50)  # compile the kernels before anything is measured
    chunked(*small, 16)
    materialised(*small)
    (l1, (gh1, gw1)), (l2, (gh2, gw2)) = chunked(h, w, y, a.chunk), materialised(h, w, y)
    agree = (abs(float(l1) - float(l2)) <= 1e-5 * abs(float(l2))
             and np.allclose(gh1, gh2, rtol=1e-3, atol=1e-7) and np.allclose(gw1, gw2, rtol=1e-3, atol=1e-7))
    del gh1, gw1, gh2, gw2

    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"numba threads {numba.get_num_threads()}")
    print(f"shape: tokens={a.tokens} hidden={a.hidden} vocab={a.vocab} {a.dtype}; chunk_size={chunk}; "
          f"full logits {logits_bytes / 2**20:.1f} MiB; outputs {outputs_bytes / 2**20:.1f} MiB; "
          f"results agree: {agree}")
    fns = {"chunked": lambda: chunked(h, w, y, a.chunk), "materialised": lambda: materialised(h, w, y)}
    mems = {name: measure(fn, outputs_bytes) for name, fn in fns.items()}
    times = best_times(fns, a.repeat)
    rows = {name: (mems[name], times[name]) for name in fns}
    for name, (mem, t) in rows.items():
        frac = mem["traced"] / logits_bytes
        print(f"{name:>13}: extra traced {mem['traced'] / 2**20:8.1f} MiB ({frac:6.1%} of logits), "
              f"peak RSS growth {mem['rss'] / 2**20:8.1f} MiB (outputs included), best time {t:.3f} s")
    ratio = rows["chunked"][1] / rows["materialised"][1]
    print(f"time chunked / materialised: {ratio:.2f}x (target <= 1.3x); "
          f"extra memory target <= 15% of logits")


if __name__ == "__main__":
    main()
