"""The MLP of ``numpy_training.py`` in PyTorch, with the loss from ``fastloss.torch``.

The same training loop (CPU, float32, Adam) runs with ``torch.nn.functional`` losses and with the
fastloss autograd wrappers (the loss and its gradient from one fused pass; ``backward`` only
scales the saved gradient). It prints the time per epoch of each and their final losses.

    python examples/torch_training.py            # 100 000 samples, a few seconds
    python examples/torch_training.py --quick    # tiny run (used by the test suite)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastloss.torch as flt

FEATURES = 20
OUTPUTS = 8


def make_data(n: int, seed: int = 0):
    """Inputs and 8 regression targets with heavy-tailed noise (as in ``numpy_training.py``)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    hidden = np.tanh(x @ rng.normal(size=(FEATURES, 16)))
    targets = hidden @ rng.normal(size=(16, OUTPUTS)) + rng.standard_t(df=2, size=(n, OUTPUTS))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(targets.astype(np.float32))


def train(loss_fn, x, y, *, epochs, batch, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.Tanh(), torch.nn.Linear(64, OUTPUTS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    epoch_times, last = [], None
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        t0, total = time.perf_counter(), 0.0
        for lo in range(0, len(x), batch):
            idx = order[lo:lo + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        epoch_times.append(time.perf_counter() - t0)
        last = total / len(x)
    return model, last, epoch_times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.epochs, args.batch = 4000, 2, 1000
    x, y = make_data(args.n)
    ways = {
        "torch F.huber_loss": lambda out, target: F.huber_loss(out, target, delta=1.0),
        "fastloss.torch.huber": lambda out, target: flt.huber(out, target, delta=1.0),
    }
    for rows in (8, args.batch):  # compile (or load) the serial and the parallel kernels before timing
        flt.huber(torch.zeros(rows, OUTPUTS, requires_grad=True), torch.zeros(rows, OUTPUTS)).backward()
    print(f"{args.n} samples, {FEATURES} features -> 64 tanh -> {OUTPUTS}, {args.epochs} epochs, batch {args.batch}, "
          f"{torch.get_num_threads()} torch threads")
    models = {}
    for label, loss_fn in ways.items():
        models[label], loss, epoch_t = train(loss_fn, x, y, epochs=args.epochs, batch=args.batch)
        print(f"  {label:22s} final loss {loss:.5f}   epoch {1e3 * np.median(epoch_t):7.2f} ms (median)")
    a, b = (list(m.parameters()) for m in models.values())
    worst = max(float((p - q).detach().abs().max()) for p, q in zip(a, b))
    print(f"  largest weight difference between the two runs: {worst:.1e} (float32)")


if __name__ == "__main__":
    main()
