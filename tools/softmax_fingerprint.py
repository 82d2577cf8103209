"""Fingerprint of every softmax-kind loss: a hash of value and gradient bits over options, dtypes and shapes.

Run under two checkouts (``PYTHONPATH=<checkout> python tools/softmax_fingerprint.py [--cuda]``) and
compare the printed lines: a refactoring of the row primitives must not change a bit. ``--cuda``
runs small shapes on the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) instead of the CPU.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

CUDA = "--cuda" in sys.argv
QUICK = "--quick" in sys.argv

import fastloss as fl  # noqa: E402

SHAPES = [(5, 40), (3, 300)] if CUDA else [(64, 1000), (4096, 1000), (8, 50000)]
if QUICK:
    SHAPES = SHAPES[:1]

# (loss, options, target form, in place)
CASES = [
    ("cross_entropy", {}, "index", False),
    ("cross_entropy", {}, "index", True),
    ("cross_entropy", {"label_smoothing": 0.1}, "index", False),
    ("cross_entropy", {"z_loss": 1e-3, "return_z_loss": True}, "index", False),
    ("cross_entropy", {"softcap": 5.0}, "index", False),
    ("cross_entropy", {"label_smoothing": 0.1, "weight": True, "ignore_index": 1}, "index", False),
    ("cross_entropy", {}, "probs", False),
    ("cross_entropy", {"label_smoothing": 0.2, "softcap": 3.0, "weight": True}, "probs", False),
    ("softmax_focal", {}, "index", False),
    ("multiclass_hinge", {}, "index", False),
    ("kl_divergence", {}, "probs", False),
    ("generalized_cross_entropy", {}, "index", False),
    ("poly1_cross_entropy", {}, "index", False),
]


def inputs(shape, dtype, form, seed):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x[0, :] += 40.0  # a row whose maximum lies far above its first elements (the one-pass shift's second pass)
    x[-1, c - 1] += 70.0
    if form == "index":
        t = rng.integers(0, c, n)
    else:
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=1, keepdims=True)
    return x, t


def main():
    if CUDA:
        from numba import cuda

        from fastloss.device import config, simulator
        config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS = 8, 4, 8  # as tests/test_cuda.py
        simulator.configure()
    total = hashlib.sha256()
    skip = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--skip=")), 0))  # resume after a case
    for name, opts, form, inplace in CASES[skip:]:
        loss = getattr(fl, name)
        for dtype in (np.float32, np.float64):
            for shape in SHAPES:
                seed = int.from_bytes(hashlib.sha256(f"{name}{shape}".encode()).digest()[:4], "little")
                x, t = inputs(shape, dtype, form, seed)
                kw = dict(opts)
                if kw.pop("weight", False):
                    kw["weight"] = np.linspace(0.5, 2.0, shape[1])
                    if CUDA:
                        kw["weight"] = cuda.to_device(kw["weight"])
                h = hashlib.sha256()
                for red in ("none", "sum"):
                    xi = x.copy()
                    if CUDA:
                        xd, td = cuda.to_device(xi), cuda.to_device(t)
                        extra = {"out": xd} if inplace else {}
                        v, g = loss.value_and_grad(xd, td, reduction=red, **kw, **extra)
                        g = g.copy_to_host()
                        v = tuple(np.asarray(a.copy_to_host() if hasattr(a, "copy_to_host") else a)
                                  for a in (v if isinstance(v, tuple) else (v,)))
                    else:
                        extra = {"out": xi} if inplace else {}
                        v, g = loss.value_and_grad(xi, t, reduction=red, **kw, **extra)
                        v = tuple(np.asarray(a) for a in (v if isinstance(v, tuple) else (v,)))
                    for a in v:
                        h.update(np.ascontiguousarray(a).tobytes())
                    h.update(np.ascontiguousarray(g).tobytes())
                line = f"{name} {opts} {form} inplace={inplace} {np.dtype(dtype).name} {shape} {h.hexdigest()[:16]}"
                print(line, flush=True)
                total.update(line.encode())
    print("TOTAL", total.hexdigest()[:16])


if __name__ == "__main__":
    main()
