"""pytest-benchmark suites over the registry.

``pytest bench/ --benchmark-only``       full run, sized for a 2-core machine (a few minutes);
``pytest bench/ --benchmark-disable -q`` CI smoke run: every benchmark function once, small sizes.
``--quick`` uses the small sizes with timing on; ``--peers torch,jax,sklearn`` adds installed peers;
``--dtype float32,float64`` adds float64 (default: float32).
"""

from __future__ import annotations

import fastloss as fl
from fastloss.bench.cases import sizes_for


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="small sizes only")
    parser.addoption("--peers", default="", help="comma-separated optional peers (torch, jax, sklearn)")
    parser.addoption("--dtype", default="float32", help="comma-separated dtypes (float32, float64)")


def small(config) -> bool:
    """Small sizes for ``--quick`` and for the smoke run, where nothing is timed."""
    return config.getoption("--quick") or config.getoption("benchmark_disable")


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "loss_size" in metafunc.fixturenames:
        quick = small(config)
        params = [(name, size) for name in fl.names() for size in sizes_for(fl.get(name).spec.kind, None, quick)]
        metafunc.parametrize("loss_size", params, ids=[f"{n}-{s.label}" for n, s in params])
    if "provider" in metafunc.fixturenames:
        peers = [p for p in config.getoption("--peers").split(",") if p]
        metafunc.parametrize("provider", ["fastloss", "fastloss-out", "numpy", *peers])
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", [d for d in config.getoption("--dtype").split(",") if d])
