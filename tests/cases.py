"""Test data generated from the declarations: inputs in each loss's domain, parameters in range."""

from __future__ import annotations

import math
import threading

import numpy as np

import fastloss as fl
from fastloss._spec import Discrete, Interval


def sample(domain, shape, rng: np.random.Generator) -> np.ndarray:
    """Values spread over ``domain`` (finite, away from open ends)."""
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


def defaults(spec) -> dict:
    return {p.name: p.default for p in spec.params}


def param_variants(spec) -> list[dict]:
    """The defaults, plus one variant per parameter moved inside its domain (and limit cases)."""
    out = [defaults(spec)]
    for p in spec.params:
        out += [{**defaults(spec), p.name: v} for v in p.special]
    for p in spec.params:
        if p.type is not float or not isinstance(p.domain, Interval):
            continue
        v = p.default * 1.7 + 0.3 if p.default is not None else 1.0
        if p.domain.contains(v):
            out.append({**defaults(spec), p.name: v})
    return out


def pointwise_inputs(spec, shape, rng, params=None) -> list[np.ndarray]:
    domains = spec.input_domains(params or defaults(spec))
    return [sample(domains[inp.name], shape, rng) for inp in spec.inputs]


def fd_gradient(loss, inputs, k, params, h=1e-4):
    """d sum(loss) / d inputs[k] by (-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)) / 12h, element by element."""
    x = inputs[k]
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        vals = []
        for step in (2, 1, -1, -2):
            xs = list(inputs)
            xk = x.copy()
            xk[idx] += step * h
            xs[k] = xk
            vals.append(float(loss(*xs, reduction="sum", **params)))
        grad[idx] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)
    return grad


POINTWISE = [name for name in fl.names("pointwise")]


def in_threads(body, count: int = 8, timeout: float = 300.0) -> None:
    """Run ``body(k)`` for ``k < count`` on as many threads, released together; re-raise the first error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(k):
        try:
            barrier.wait()
            body(k)
        except BaseException as exc:  # surfaced by the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
