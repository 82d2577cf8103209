"""Forward + backward of ``fastloss.torch.cross_entropy`` against ``torch.nn.functional.cross_entropy``.

At small batches both are dominated by per-call overhead (autograd, dispatch), not by arithmetic;
this script finds where fastloss's fused kernel starts to pay, which sets
``fastloss.torch``'s ``SMALL_CROSS_ENTROPY`` threshold. Rounds are interleaved (fastloss, PyTorch,
fastloss, ...) and the best round of each is kept, so a noisy machine slows both alike.

Run: ``python bench/torch_small.py [--fused-only] [--threads 1] [--dtype float32] [--rounds 7]``
(``--fused-only``: fastloss's kernel at every size, to find the crossover; without it, what
``fastloss.torch.cross_entropy`` does, PyTorch's function included below the threshold).
"""

from __future__ import annotations

import argparse
import json
import time


def _per_call(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def main(argv=None) -> list[dict]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import fastloss.torch as flt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and fastloss threads")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--fused-only", action="store_true",
                    help="force fastloss's own kernel at every size (the threshold set to 0)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.fused_only:
        flt.SMALL_CROSS_ENTROPY = 0
    dtype = getattr(torch, args.dtype)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'N x C':>12} {'fastloss':>11} {'PyTorch':>11} {'ratio':>7}")
    for n, c in [(16, 10), (64, 10), (256, 10), (16384, 10), (64, 100), (256, 100), (1024, 100), (2048, 100),
                 (4096, 100), (16384, 32), (512, 256), (32, 1000), (128, 1000), (256, 1000), (1024, 1000),
                 (4096, 1000)]:
        x = torch.from_numpy(rng.standard_normal((n, c))).to(dtype).requires_grad_()
        y = torch.from_numpy(rng.integers(0, c, n))

        def ours(x=x, y=y):
            flt.cross_entropy(x, y).backward()

        def theirs(x=x, y=y):
            F.cross_entropy(x, y).backward()

        # calls per round: about 20 ms of work each
        t1 = _per_call(theirs, 20)
        calls = max(20, int(0.02 / max(t1, 1e-7)))
        best = {"fastloss": np.inf, "torch": np.inf}
        for fn in (ours, theirs):  # warm-up (and compile)
            _per_call(fn, calls)
        for _ in range(args.rounds):
            best["fastloss"] = min(best["fastloss"], _per_call(ours, calls))
            best["torch"] = min(best["torch"], _per_call(theirs, calls))
        ratio = best["fastloss"] / best["torch"]
        rows.append({"n": n, "c": c, "dtype": args.dtype, "threads": args.threads,
                     "fastloss_s": best["fastloss"], "torch_s": best["torch"], "ratio": ratio})
        print(f"{f'{n} x {c}':>12} {best['fastloss'] * 1e6:9.1f}us {best['torch'] * 1e6:9.1f}us {ratio:7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
