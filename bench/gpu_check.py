#!/usr/bin/env python
"""Check fastloss's CUDA backend against the CPU on an NVIDIA GPU, then benchmark the main losses.

::

    python bench/gpu_check.py                 # full sizes (sized for an H100/H200)
    python bench/gpu_check.py --quick         # smaller sizes, fewer repetitions
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --simulate   # tiny sizes in the Numba CUDA
                                              # simulator (CI runs this: timings mean nothing there)

1. Every registered loss, float64 and float32, reductions ``mean`` and ``none``: value and
   gradients on the device against the CPU kernels (rowwise losses also with a long class axis,
   class weights and, where declared, probability targets and ``ignore_index``; rowreduce losses
   with many short rows and with a few long rows (the split path), row weights; InfoNCE with
   weights and one-sided).
2. The device-to-device copy bandwidth (``cuMemcpyDtoD``, read + write), measured in this run.
3. ``value_and_grad`` of the main losses in float32: time, GB/s (pointwise: inputs read + gradient
   written; cross entropy: logits read + gradient written, in place as ``out=logits``; Dice: logits
   and mask read + gradient written, in place), that as a fraction of the copy bandwidth, and the
   speed-up over naive CuPy and over PyTorch (forward + backward) when they are installed; InfoNCE
   (N x N similarities, matmuls through CuPy / PyTorch) by time and speed-up over PyTorch only.
4. Fused linear cross entropy (``hidden @ weight.T`` never materialised) against PyTorch's
   materialise-then-``F.cross_entropy`` forward + backward and Liger-Kernel's
   ``LigerFusedLinearCrossEntropyLoss`` when installed: time and peak extra device memory
   (PyTorch's allocator, so with PyTorch tensors; time only otherwise).

Arrays are CuPy arrays when CuPy finds a GPU, else PyTorch CUDA tensors, else Numba device
arrays. Exits with status 1 if a check fails. ``--json PATH`` also writes the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# -- arrays on the device --------------------------------------------------------------------------


class Backend:
    """Makes device arrays, copies them back and synchronises, with the best library installed."""

    def __init__(self) -> None:
        from numba import cuda

        self.cuda = cuda
        self.name = "numba"
        if not SIMULATED:
            try:
                import cupy

                if cupy.cuda.runtime.getDeviceCount() > 0:
                    self.name, self.cupy = "cupy", cupy
            except Exception:  # not installed, or no device for it
                pass
            if self.name == "numba":
                try:
                    import torch

                    if torch.cuda.is_available():
                        self.name, self.torch = "torch", torch
                except ImportError:
                    pass

    def put(self, a: np.ndarray):
        if self.name == "cupy":
            return self.cupy.asarray(a)
        if self.name == "torch":
            return self.torch.from_numpy(np.ascontiguousarray(a)).cuda()
        return self.cuda.to_device(np.ascontiguousarray(a))

    @staticmethod
    def get(x) -> np.ndarray:
        if hasattr(x, "copy_to_host"):
            return x.copy_to_host()
        if hasattr(x, "get"):
            return x.get()
        if hasattr(x, "detach"):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def sync(self) -> None:
        self.cuda.synchronize()


def device_description(cuda) -> str:
    if SIMULATED:
        return "Numba CUDA simulator (no GPU)"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    total = cuda.current_context().get_memory_info()[1]
    cc = dev.compute_capability
    return f"{name}, compute capability {cc[0]}.{cc[1]}, {total / 2**30:.0f} GiB"


# -- 1. correctness against the CPU ------------------------------------------------------------------


def sample(domain, shape, rng):
    """Values inside a declared input domain."""
    from fastloss._spec import Discrete

    if isinstance(domain, Discrete):
        return rng.choice(np.asarray(domain.values, dtype=np.float64), size=shape)
    lo, hi = domain.low, domain.high
    if math.isinf(lo) and math.isinf(hi):
        return rng.normal(0.0, 2.0, size=shape)
    if math.isinf(hi):
        return lo + 0.05 + rng.exponential(2.0, size=shape)
    if math.isinf(lo):
        return hi - 0.05 - rng.exponential(2.0, size=shape)
    return rng.uniform(lo + 0.01 * (hi - lo), hi - 0.01 * (hi - lo), size=shape)


def _row_inputs(spec, lead, row, rng):
    """Valid inputs of a rowreduce loss: rows ``lead + row``, per-row inputs ``lead``."""
    sampler = spec.options.get("sample_inputs")
    if sampler is not None:
        return [np.asarray(a, dtype=np.float64) for a in sampler(lead, rng)]
    domains = spec.input_domains({p.name: p.default for p in spec.params})
    per_row = spec.options.get("row_inputs", ())
    return [sample(domains[i.name], lead if i.name in per_row else lead + row, rng) for i in spec.inputs]


def _reduce_shapes(spec, tiny: bool):
    """``(lead, row)`` shapes: many short rows, and (full size) a few long rows that take the split path."""
    length = spec.options.get("row_length")
    if length:
        return [((7,), (length,))] if tiny else [((1 << 18,), (length,))]
    if spec.options.get("rows", "last") == "first":
        return [((3,), (2, 5))] if tiny else [((257,), (1, 32, 32)), ((3,), (2, 512, 512))]
    return [((5,), (7,))] if tiny else [((4097,), (129,)), ((3,), (100000,))]


def cases(loss, rng, tiny: bool):
    """``(label, inputs, keyword arguments)`` worth checking for one loss."""
    spec = loss.spec
    if spec.kind == "rowreduce":
        for lead, row in _reduce_shapes(spec, tiny):
            inputs = _row_inputs(spec, lead, row, rng)
            label = "x".join(str(s) for s in lead + row)
            yield label, inputs, {}
            yield f"{label} weighted", inputs, {"weight": rng.uniform(0.1, 2.0, size=lead)}
        return
    if spec.kind == "similarity":
        n, d = (6, 5) if tiny else (1024, 128)
        z1 = rng.normal(size=(n, d))
        z2 = z1 + rng.normal(0.0, 0.7, size=(n, d))
        yield f"{n}x{d}", [z1, z2], {}
        yield f"{n}x{d} weighted", [z1, z2], {"weight": rng.uniform(0.1, 2.0, size=n)}
        yield f"{n}x{d} one-sided", [z1, z2], {"symmetric": False, "temperature": 0.5}
        return
    if spec.kind == "pointwise":
        shape = (6, 5) if tiny else (257, 129)
        inputs = [sample(d, shape, rng) for d in spec.input_domains({p.name: p.default for p in spec.params}).values()]
        yield "", inputs, {}
        yield "weighted", inputs, {"weight": rng.uniform(0.1, 2.0, size=shape[-1])}
        return
    opts = spec.options
    shapes = [(5, 7)] if tiny else [(65, 33), (9, 5000)]
    for rows, classes in shapes:
        x = rng.normal(0.0, 3.0, size=(rows, classes))
        if "index" in opts.get("targets", ("index",)):
            y = rng.integers(0, classes, size=rows)
            if opts.get("ignore_index", False):
                y[rows // 2] = -100
            yield f"{rows}x{classes}", [x, y], {}
            if opts.get("class_weight", True):
                yield f"{rows}x{classes} weighted", [x, y], {"weight": rng.uniform(0.2, 2.0, size=classes)}
        if "probs" in opts.get("targets", ("index",)):
            t = rng.dirichlet(np.ones(classes), size=rows)
            yield f"{rows}x{classes} probs", [x, t], {}


def check_all(be: Backend, tiny: bool) -> list[dict]:
    import fastloss as fl
    from fastloss.kinds import CUDA_MODULES as KIND_MODULES

    rng = np.random.default_rng(0)
    rows = []
    for name in fl.names():
        loss = fl.get(name)
        if loss.spec.kind not in KIND_MODULES:
            rows.append({"loss": name, "case": f"{loss.spec.kind} kind: no CUDA driver", "dtype": "-",
                         "max_rel_err": None, "ok": None})
            continue
        for label, inputs, kw in cases(loss, rng, tiny):
            for dtype in (np.float64, np.float32):
                worst = 0.0
                host = [x.astype(dtype) if x.dtype.kind == "f" else x for x in inputs]
                dev_inputs = [be.put(x) for x in host]
                dev_kw = {k: be.put(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
                for reduction in ("mean", "none"):
                    v, g = loss.value_and_grad(*dev_inputs, reduction=reduction, **dev_kw)
                    want_v, want_g = loss.value_and_grad(*host, reduction=reduction, **kw)
                    pairs = [(v, want_v), *zip(_tuple(g), _tuple(want_g))]
                    for got, want in pairs:
                        worst = max(worst, _relerr(be.get(got), np.asarray(want)))
                tol = 1e-9 if dtype == np.float64 else 2e-4
                rows.append({"loss": name, "case": label, "dtype": np.dtype(dtype).name, "max_rel_err": worst,
                             "ok": bool(worst <= tol)})
    return rows


def _tuple(g):
    return g if isinstance(g, tuple) else (g,)


def _relerr(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    both_nan = np.isnan(got) & np.isnan(want)
    scale = max(float(np.max(np.abs(want[~both_nan]), initial=0.0)), 1e-30)
    diff = np.abs(got - want)[~both_nan]
    return float(np.max(diff, initial=0.0)) / scale


# -- 2. copy bandwidth and 3. benchmarks ---------------------------------------------------------------


def timed(fn, sync, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs (device synchronised around each), after a warm-up."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(be: Backend, nbytes: int, reps: int) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    cuda = be.cuda
    src = cuda.device_array(nbytes // 4, dtype=np.float32)
    dst = cuda.device_array(nbytes // 4, dtype=np.float32)
    t = timed(lambda: dst.copy_to_device(src), be.sync, reps)
    return 2 * src.nbytes / t / 1e9


def bench_pointwise(be: Backend, name: str, n: int, reps: int) -> dict:
    import fastloss as fl

    loss = fl.get(name)
    rng = np.random.default_rng(1)
    p = rng.standard_normal(n, dtype=np.float32)
    t = (rng.random(n, dtype=np.float32) if name == "binary_cross_entropy"
         else rng.standard_normal(n, dtype=np.float32))
    dp, dt = be.put(p), be.put(t)
    seconds = timed(lambda: loss.value_and_grad(dp, dt), be.sync, reps)
    row = {"loss": name, "shape": f"({n},)", "seconds": seconds, "bytes": 3 * 4 * n}
    row["vs_cupy"] = _peer_speedup(seconds, lambda: _naive_cupy(name, p, t, be, reps))
    row["vs_torch"] = _peer_speedup(seconds, lambda: _torch_pointwise(name, p, t, reps))
    return row


def bench_cross_entropy(be: Backend, rows: int, classes: int, reps: int) -> dict:
    import fastloss as fl

    rng = np.random.default_rng(2)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    y = rng.integers(0, classes, size=rows)
    dx, dy = be.put(x), be.put(y)
    seconds = timed(lambda: fl.cross_entropy.value_and_grad(dx, dy, out=dx), be.sync, reps)
    row = {"loss": "cross_entropy", "shape": f"({rows}, {classes})", "seconds": seconds,
           "bytes": 2 * 4 * rows * classes}
    row["vs_cupy"] = _peer_speedup(seconds, lambda: _naive_cupy("cross_entropy", x, y, be, reps))
    row["vs_torch"] = _peer_speedup(seconds, lambda: _torch_cross_entropy(x, y, reps))
    if not SIMULATED:  # the value agrees with PyTorch's where it is installed (a sanity check at scale)
        row["torch_rel_diff"] = _torch_ce_diff(be, x, y)
    return row


def bench_dice(be: Backend, shape: tuple[int, ...], reps: int) -> dict:
    import fastloss as fl

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape, dtype=np.float32)
    t = (rng.random(shape, dtype=np.float32) > 0.7).astype(np.float32)
    dx, dt = be.put(x), be.put(t)
    seconds = timed(lambda: fl.dice.value_and_grad(dx, dt, out=dx), be.sync, reps)
    row = {"loss": "dice", "shape": str(shape), "seconds": seconds, "bytes": 3 * 4 * x.size}
    row["vs_cupy"] = None
    row["vs_torch"] = _peer_speedup(seconds, lambda: _torch_dice(x, t, reps))
    return row


def bench_info_nce(be: Backend, n: int, d: int, reps: int) -> dict:
    import fastloss as fl

    rng = np.random.default_rng(4)
    z1 = rng.standard_normal((n, d), dtype=np.float32)
    z2 = z1 + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    d1, d2 = be.put(z1), be.put(z2)
    seconds = timed(lambda: fl.info_nce.value_and_grad(d1, d2), be.sync, reps)
    row = {"loss": "info_nce", "shape": f"({n}, {d})", "seconds": seconds, "bytes": None, "vs_cupy": None}
    row["vs_torch"] = _peer_speedup(seconds, lambda: _torch_info_nce(z1, z2, reps))
    return row


def bench_linear_ce(be: Backend, tokens: int, hidden: int, vocab: int, reps: int) -> list[dict]:
    """fastloss.linear_cross_entropy vs materialised PyTorch CE and Liger-Kernel: seconds, peak extra bytes."""
    import fastloss as fl

    rng = np.random.default_rng(5)
    h = rng.standard_normal((tokens, hidden), dtype=np.float32)
    w = (rng.standard_normal((vocab, hidden), dtype=np.float32) / math.sqrt(hidden)).astype(np.float32)
    y = rng.integers(0, vocab, size=tokens)
    y[::17] = -100
    torch = _cuda_torch()
    shape = f"({tokens}, {hidden}) x ({vocab}, {hidden})"
    rows = []
    if torch is not None:  # all three on PyTorch tensors: one allocator measures every peak
        th, tw, ty = (torch.from_numpy(a).cuda() for a in (h, w, y))

        def ours():
            return fl.linear_cross_entropy.value_and_grad(th, tw, ty)

        rows.append({"impl": "fastloss", "shape": shape, "seconds": timed(ours, torch.cuda.synchronize, reps),
                     "peak_bytes": _torch_peak(torch, ours)})
        th.requires_grad_(True)
        tw.requires_grad_(True)

        def materialised():
            loss = torch.nn.functional.cross_entropy(th @ tw.T, ty)
            return torch.autograd.grad(loss, (th, tw))

        rows.append({"impl": "torch (materialised)", "shape": shape,
                     "seconds": timed(materialised, torch.cuda.synchronize, reps),
                     "peak_bytes": _torch_peak(torch, materialised)})
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            LigerFusedLinearCrossEntropyLoss = None
        if LigerFusedLinearCrossEntropyLoss is not None:
            liger = LigerFusedLinearCrossEntropyLoss()

            def fused():
                return torch.autograd.grad(liger(tw, th, ty), (th, tw))

            rows.append({"impl": "liger-kernel", "shape": shape, "seconds": timed(fused, torch.cuda.synchronize, reps),
                         "peak_bytes": _torch_peak(torch, fused)})
        got = float(fl.linear_cross_entropy(th.detach(), tw.detach(), ty))
        want = float(torch.nn.functional.cross_entropy(th.detach() @ tw.detach().T, ty))
        rows[0]["torch_rel_diff"] = abs(got - want) / abs(want)
    else:
        dh, dw, dy = be.put(h), be.put(w), be.put(y)
        rows.append({"impl": "fastloss", "shape": shape, "peak_bytes": None,
                     "seconds": timed(lambda: fl.linear_cross_entropy.value_and_grad(dh, dw, dy), be.sync, reps)})
    logits_bytes = 4 * tokens * vocab
    for r in rows:
        r["peak_fraction_of_logits"] = None if r["peak_bytes"] is None else r["peak_bytes"] / logits_bytes
    return rows


def _cuda_torch():
    if SIMULATED:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_peak(torch, fn) -> int:
    """Peak device memory ``fn()`` allocates beyond what was allocated before it (PyTorch's allocator)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def _torch_dice(x, t, reps):
    import torch

    if not torch.cuda.is_available():
        return None
    xt = torch.from_numpy(x).cuda().requires_grad_(True)
    tt = torch.from_numpy(t).cuda()

    def run():
        p = torch.sigmoid(xt).flatten(1)
        tf = tt.flatten(1)
        loss = (1.0 - (2.0 * (p * tf).sum(1) + 1.0) / (p.sum(1) + tf.sum(1) + 1.0)).mean()
        return torch.autograd.grad(loss, xt)

    return timed(run, torch.cuda.synchronize, reps)


def _torch_info_nce(z1, z2, reps):
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        return None
    a = torch.from_numpy(z1).cuda().requires_grad_(True)
    b = torch.from_numpy(z2).cuda().requires_grad_(True)
    labels = torch.arange(z1.shape[0], device="cuda")

    def run():
        s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
        loss = 0.5 * (F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels))
        return torch.autograd.grad(loss, (a, b))

    return timed(run, torch.cuda.synchronize, reps)


def _peer_speedup(seconds: float, run_peer) -> float | None:
    if SIMULATED:
        return None
    try:
        peer = run_peer()
    except ImportError:
        return None
    return None if peer is None else peer / seconds


def _naive_cupy(name, a, b, be, reps):
    """The benchmark's naive peer (the loss's reference, mean reduction) run with ``xp=cupy``."""
    import cupy as cp

    from fastloss.bench.naive import NAIVE

    x, y = cp.asarray(a), cp.asarray(b)
    peer = NAIVE[name]
    return timed(lambda: peer(x, y, xp=cp), cp.cuda.Device().synchronize, reps)


def _torch_pointwise(name, p, t, reps):
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        return None
    x = torch.from_numpy(p).cuda().requires_grad_(True)
    y = torch.from_numpy(t).cuda()
    f = {"mse": F.mse_loss, "huber": F.huber_loss, "binary_cross_entropy": F.binary_cross_entropy_with_logits}[name]

    def run():
        return torch.autograd.grad(f(x, y), x)

    return timed(run, torch.cuda.synchronize, reps)


def _torch_cross_entropy(x, y, reps):
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        return None
    xt = torch.from_numpy(x).cuda().requires_grad_(True)
    yt = torch.from_numpy(y).cuda()

    def run():
        return torch.autograd.grad(F.cross_entropy(xt, yt), xt)

    return timed(run, torch.cuda.synchronize, reps)


def _torch_ce_diff(be, x, y):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    import fastloss as fl

    want = float(F.cross_entropy(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()))
    got = float(fl.cross_entropy(be.put(x), be.put(y)))
    return abs(got - want) / abs(want)


# -- report ----------------------------------------------------------------------------------------------


def _speedup(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    parser.add_argument("--simulate", action="store_true",
                        help="tiny sizes for the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1 must be set)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.simulate and not SIMULATED:
        parser.error("--simulate needs NUMBA_ENABLE_CUDASIM=1 in the environment (set before Python starts)")
    tiny = SIMULATED

    import fastloss as fl

    if not fl.cuda_available():
        print("fastloss.cuda_available() is False: no usable GPU, or numba-cuda is not installed "
              '(pip install "fastloss[cuda]").')
        return 1
    if tiny:
        from fastloss.device import config, matmul, simulator

        config.THREADS, config.MAX_BLOCKS, config.ROW_THREADS, config.TILE = 8, 2, 8, 4
        matmul.TILE = 4
        simulator.configure()  # fast syncthreads, race-free shared arrays
    be = Backend()
    print(f"fastloss {fl.__version__} | {device_description(be.cuda)} | arrays: {be.name} | "
          f"Python {platform.python_version()}")

    checks = check_all(be, tiny)
    done = [c for c in checks if c["ok"] is not None]
    failed = [c for c in done if not c["ok"]]
    skipped = sorted({c["loss"] for c in checks if c["ok"] is None})

    def worst(dtype):
        return max(c["max_rel_err"] for c in done if c["dtype"] == dtype)

    print(f"\n1. CPU agreement: {len(done) - len(failed)}/{len(done)} cases within tolerance "
          f"(worst relative error: float64 {worst('float64'):.1e}, float32 {worst('float32'):.1e})")
    for c in failed:
        print(f"   FAILED {c['loss']} {c['case']} {c['dtype']}: max relative error {c['max_rel_err']:.3e}")
    if skipped:
        print(f"   not on CUDA yet (their kind has no CUDA driver): {', '.join(skipped)}")

    if tiny:
        n, ce, mask, nce, copy_bytes, reps = 64, (4, 33), (3, 1, 4, 4), (6, 5), 1 << 12, 1
        lce_shape = (6, 5, 11)
    elif args.quick:
        n, ce, mask, nce, copy_bytes, reps = 1 << 26, (1024, 32000), (16, 1, 256, 256), (2048, 256), 1 << 28, 5
        lce_shape = (2048, 1024, 32000)
    else:
        n, ce, mask, nce, copy_bytes, reps = 1 << 28, (4096, 128256), (64, 1, 512, 512), (8192, 512), 1 << 30, 10
        lce_shape = (8192, 4096, 128256)
    copy = copy_bandwidth(be, copy_bytes, reps)
    print(f"\n2. Device-to-device copy: {copy:.0f} GB/s (read + write)")

    results = [bench_pointwise(be, name, n, reps) for name in ("mse", "huber", "binary_cross_entropy")]
    results.append(bench_cross_entropy(be, *ce, reps))
    results.append(bench_dice(be, mask, reps))
    results.append(bench_info_nce(be, *nce, reps))
    print("\n3. value_and_grad, float32" + ("  (simulator: the timings mean nothing)" if tiny else ""))
    header = f"{'loss':<22}{'shape':>18}{'ms':>10}{'GB/s':>9}{'% copy':>8}{'vs CuPy':>9}{'vs torch':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        if r["bytes"] is None:  # not bandwidth-bound (matrix products): time and speed-up only
            r["gbps"] = r["fraction_of_copy"] = None
            rate = f"{'-':>9}{'-':>8}"
        else:
            r["gbps"] = r["bytes"] / r["seconds"] / 1e9
            r["fraction_of_copy"] = r["gbps"] / copy
            rate = f"{r['gbps']:>9.0f}{r['fraction_of_copy'] * 100:>7.0f}%"
        print(f"{r['loss']:<22}{r['shape']:>18}{r['seconds'] * 1e3:>10.3f}{rate}"
              f"{_speedup(r['vs_cupy']):>9}{_speedup(r['vs_torch']):>10}")
    ce_row = next(r for r in results if r["loss"] == "cross_entropy")
    if ce_row.get("torch_rel_diff") is not None:
        print(f"cross entropy vs PyTorch: relative difference of the loss {ce_row['torch_rel_diff']:.1e}")

    lce = bench_linear_ce(be, *lce_shape, reps)
    print(f"\n4. linear_cross_entropy.value_and_grad, float32, tokens x hidden x vocab = {lce_shape}"
          + ("  (simulator)" if tiny else ""))
    header = f"{'implementation':<24}{'ms':>10}{'peak extra MiB':>16}{'% of logits':>13}"
    print(header)
    print("-" * len(header))
    for r in lce:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        frac = "-" if r["peak_fraction_of_logits"] is None else f"{r['peak_fraction_of_logits'] * 100:.0f}%"
        print(f"{r['impl']:<24}{r['seconds'] * 1e3:>10.3f}{peak:>16}{frac:>13}")
    if lce[0].get("torch_rel_diff") is not None:
        print(f"linear cross entropy vs materialised PyTorch: relative difference of the loss "
              f"{lce[0]['torch_rel_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_description(be.cuda), "arrays": be.name, "copy_gbps": copy,
                       "checks": checks, "benchmarks": results, "linear_cross_entropy": lce}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
