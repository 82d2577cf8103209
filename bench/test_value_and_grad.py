"""``value_and_grad`` of every registered loss: fastloss against the naive NumPy baseline (and peers).

Benchmarks of one loss, size and dtype share a group, so ``--benchmark-only`` prints them side by
side; ``extra_info`` holds the element count and the minimal traffic (bytes) to turn times into
elements/s and GB/s.
"""

from __future__ import annotations

import math

import pytest

import fastloss as fl
from fastloss.bench.cases import make_case
from fastloss.bench.peers import PROVIDERS


def test_value_and_grad(benchmark, loss_size, dtype, provider):
    name, size = loss_size
    case = make_case(fl.get(name).spec, size, dtype)
    peer = PROVIDERS[provider]
    reason = peer.unavailable("cpu")
    if reason is not None:
        pytest.skip(reason)
    if not peer.supports(case):
        pytest.skip(f"{provider} has no {name}")
    prepared = peer.prepare(case, "cpu")
    prepared.run()  # compile / trace outside the timing
    benchmark.group = f"{name} {case.size.label} {dtype}"  # the case's own size (boxes come in rows of 4)
    benchmark.extra_info.update(elements=case.elements, min_bytes=case.min_bytes)
    value, grads = prepared.to_host(benchmark(prepared.run))
    assert math.isfinite(value)
    assert [g.shape for g in grads] == [shape for shape, _ in case.grad_shapes]
