"""What the benchmark ran on: stored with every result so that numbers stay comparable."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any

from .peers import dist_version

#: Environment variables that change performance; recorded when set.
_ENV = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "OMP_NUM_THREADS",
        "OPENBLAS_CORETYPE", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")

#: Distributions whose versions are recorded when installed (read from metadata: nothing imported).
_DISTS = ("numpy", "numba", "llvmlite", "tbb", "torch", "jax", "jaxlib", "scikit-learn", "cupy",
          "cupy-cuda12x", "cupy-cuda13x", "numba-cuda", "rich", "matplotlib")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpu() -> dict[str, Any] | None:
    try:
        from numba import cuda

        if not cuda.is_available():
            return None
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        return {"name": name, "compute_capability": list(dev.compute_capability)}
    except Exception:  # any CUDA driver problem just means "no GPU info"
        return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU, cores, threads, threading layer, versions and relevant environment variables."""
    import numba

    import fastloss

    info: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": fastloss.threading_layer(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "fastloss": fastloss.__version__,
        "versions": {d: v for d in _DISTS if (v := dist_version(d)) is not None},
        "env": {k: os.environ[k] for k in _ENV if k in os.environ},
    }
    if device == "cuda":
        info["gpu"] = _gpu()
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for tables and docs."""
    v = info["versions"]
    parts = [
        f"{info['cpu']}, {info['cores']} cores ({info['numba_threads']} Numba threads, {info['threading_layer']})",
        f"Python {info['python']}, NumPy {v.get('numpy', '?')}, Numba {v.get('numba', '?')}",
    ]
    peers = ", ".join(f"{k} {v[k]}" for k in ("torch", "jax", "scikit-learn", "cupy") if k in v)
    if peers:
        parts.append(peers)
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']['name']}")
    load = info.get("loadavg_1min")
    if load and load.get("start") is not None:
        parts.append(f"load average {load['start']:.1f} at start, {load['end']:.1f} at end")
    return "; ".join(parts)
