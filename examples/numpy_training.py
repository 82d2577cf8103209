"""Train a logistic regression and a small MLP with nothing but NumPy and fastloss.

* a logistic regression (binary cross entropy on logits + an L2 penalty) on a binary problem;
* an MLP regressor (tanh hidden layer, 8 outputs, Huber loss + L2 penalties) on targets with
  heavy-tailed noise.

Each minibatch SGD loop runs twice: with the loss and its gradient written the naive NumPy way,
and with ``fastloss`` (``fl.combine`` of the data term and the penalties, each one fused pass).
Both runs reach the same weights; the script prints the time per epoch of each, and of its
loss-and-gradient part alone.

    python examples/numpy_training.py            # 100 000 samples, a few seconds
    python examples/numpy_training.py --quick    # tiny run (used by the test suite)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastloss as fl

FEATURES = 20
OUTPUTS = 8
HUBER_DELTA = 1.0


def make_data(n: int, seed: int = 0):
    """Inputs, binary labels and 8 regression targets from a random two-layer teacher network."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    hidden = np.tanh(x @ rng.normal(size=(FEATURES, 16)))
    labels = (hidden @ rng.normal(size=16) + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
    targets = hidden @ rng.normal(size=(16, OUTPUTS)) + rng.standard_t(df=2, size=(n, OUTPUTS))
    return x, labels, targets


# -- "data loss + lam * 0.5 * sum of squared weights", value and gradients ----------------------


def naive_bce(z, y):
    """Mean binary cross entropy on logits, the NumPy way."""
    return np.mean(np.logaddexp(0.0, z) - y * z), (1.0 / (1.0 + np.exp(-z)) - y) / z.size


def naive_huber(z, y):
    """Mean Huber loss, the NumPy way."""
    d = z - y
    a = np.abs(d)
    value = np.mean(np.where(a < HUBER_DELTA, 0.5 * d * d, HUBER_DELTA * (a - 0.5 * HUBER_DELTA)))
    return value, np.clip(d, -HUBER_DELTA, HUBER_DELTA) / d.size


def naive_objective(data_loss, lam):
    def run(z, y, weights):
        value, dz = data_loss(z, y)
        value += lam * sum(0.5 * np.sum(w * w) for w in weights)
        return value, dz, [lam * w for w in weights]

    return run


def fastloss_objective(data_loss, lam, n_weights):
    """The data term and one L2 term per weight matrix, each one fused kernel call."""
    terms = {"data": (data_loss, 1.0)}
    terms.update({f"l2_{k}": (fl.l2, lam, {"reduction": "sum"}) for k in range(n_weights)})
    objective = fl.combine(terms)

    def run(z, y, weights):
        res = objective.value_and_grad(data=(z, y), **{f"l2_{k}": w for k, w in enumerate(weights)})
        return res.total, res.grads["data"], [res.grad_of(w) for w in weights]

    return run


# -- models -------------------------------------------------------------------------------------


class Logistic:
    """Binary classifier: one logit per sample."""

    def __init__(self, rng):
        self.params = [np.zeros(FEATURES), np.zeros(1)]
        self.penalised = [self.params[0]]

    def forward(self, x):
        return x @ self.params[0] + self.params[1]

    def backward(self, x, dz):
        return [x.T @ dz, dz.sum(keepdims=True)]


class MLP:
    """Regressor: tanh hidden layer, ``OUTPUTS`` outputs per sample."""

    def __init__(self, rng, hidden=64):
        self.params = [rng.normal(0, FEATURES**-0.5, size=(FEATURES, hidden)), np.zeros(hidden),
                       rng.normal(0, hidden**-0.5, size=(hidden, OUTPUTS)), np.zeros(OUTPUTS)]
        self.penalised = [self.params[0], self.params[2]]

    def forward(self, x):
        w1, b1, w2, b2 = self.params
        self.h = np.tanh(x @ w1 + b1)
        return self.h @ w2 + b2

    def backward(self, x, dz):
        w2 = self.params[2]
        dh = (dz @ w2.T) * (1.0 - self.h**2)
        return [x.T @ dh, dh.sum(axis=0), self.h.T @ dz, dz.sum(axis=0)]


def train(model, x, y, objective, *, epochs, batch, lr, seed=0):
    """Minibatch SGD; returns the last epoch's mean loss and per-epoch timings."""
    rng = np.random.default_rng(seed)
    epoch_times, loss_times, last = [], [], None
    for _ in range(epochs):
        order = rng.permutation(len(x))
        t_epoch, t_loss, total = time.perf_counter(), 0.0, 0.0
        for lo in range(0, len(x), batch):
            idx = order[lo:lo + batch]
            xb, yb = x[idx], y[idx]
            z = model.forward(xb)
            t0 = time.perf_counter()
            value, dz, dpen = objective(z, yb, model.penalised)
            t_loss += time.perf_counter() - t0
            grads = model.backward(xb, dz)
            for p, g in zip(model.params, grads):
                for w, dw in zip(model.penalised, dpen):
                    if p is w:
                        g = g + dw
                p -= lr * g  # in place: the penalised arrays stay the same objects
            total += float(value) * len(idx)
        epoch_times.append(time.perf_counter() - t_epoch)
        loss_times.append(t_loss)
        last = total / len(x)
    return last, epoch_times, loss_times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of samples")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.epochs, args.batch = 4000, 2, 1000
    x, labels, targets = make_data(args.n)
    lam = 1e-4
    print(f"{args.n} samples, {FEATURES} features, {args.epochs} epochs, batch {args.batch}")
    problems = [
        ("logistic", Logistic, labels, naive_bce, fl.binary_cross_entropy, 0.5),
        ("MLP/huber", MLP, targets, naive_huber, fl.huber, 0.5),
    ]
    for title, model_cls, y, naive_loss, fast_loss, lr in problems:
        n_pen = len(model_cls(np.random.default_rng(0)).penalised)
        ways = {"naive NumPy": naive_objective(naive_loss, lam), "fastloss": fastloss_objective(fast_loss, lam, n_pen)}
        warm = model_cls(np.random.default_rng(0))
        for rows in (8, args.batch):  # compile (or load) the serial and the parallel kernels before timing
            ways["fastloss"](warm.forward(x[:rows]), y[:rows], warm.penalised)
        models = {}
        for label, objective in ways.items():
            model = models[label] = model_cls(np.random.default_rng(0))
            loss, epoch_t, loss_t = train(model, x, y, objective, epochs=args.epochs, batch=args.batch, lr=lr)
            # medians: the first epoch also pays one-off costs
            print(f"  {title:10s} {label:12s} final loss {loss:.5f}   epoch {1e3 * np.median(epoch_t):7.2f} ms"
                  f"   loss + gradient {1e3 * np.median(loss_t):6.2f} ms per epoch")
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(models["naive NumPy"].params,
                                                                     models["fastloss"].params))
        print(f"  {title:10s} largest weight difference between the two runs: {worst:.1e}")


if __name__ == "__main__":
    main()
