"""Run-time guarantees: determinism across thread counts, thread and fork safety, compiled-kernel cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from cases import POINTWISE, in_threads, pointwise_inputs

import fastloss as fl

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


DIGEST = """
import hashlib, numpy as np, fastloss as fl
from cases import pointwise_inputs
fl._config.POINTWISE_PARALLEL_FROM = 0  # the parallel path for every size (it is the one with threads)
out = {}
for name in fl.names("pointwise"):
    loss = fl.get(name)
    inputs = pointwise_inputs(loss.spec, (300_001,), np.random.default_rng(7))
    v, g = loss.value_and_grad(*[x.astype(np.float32) for x in inputs])
    g = g if isinstance(g, tuple) else (g,)
    out[name] = [float(v).hex()] + [hashlib.sha1(x.tobytes()).hexdigest() for x in g]
print(__import__("json").dumps(out))
"""


def test_results_are_bit_identical_for_any_thread_count():
    runs = []
    for threads in ("1", "2", "3"):
        res = run_python(DIGEST, {"NUMBA_NUM_THREADS": threads})
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert set(runs[0]) == set(POINTWISE)
    assert runs[0] == runs[1] == runs[2]


def test_threading_layer_is_safe():
    numba.get_num_threads()  # starts Numba's parallel backend (the row-wise kinds' prange drivers use it)
    assert fl.threading_layer() in ("tbb", "workqueue")  # never OpenMP: it breaks forked children


def test_eight_python_threads_at_once_give_the_serial_answers(pointwise_path):
    pointwise_path("parallel")  # every call hands pieces to the shared pool of workers
    rng = np.random.default_rng(3)
    n = 4 * 65536
    jobs = []
    for k, name in enumerate(POINTWISE * 2):
        loss = fl.get(name)
        inputs = pointwise_inputs(loss.spec, (n + k,), rng)
        jobs.append((loss, inputs, loss.value_and_grad(*inputs)))
    results: dict[int, tuple] = {}

    def worker(tid):
        for j in range(tid, len(jobs), 8):
            loss, inputs, _ = jobs[j]
            for _ in range(3):
                results[j] = loss.value_and_grad(*inputs)

    in_threads(worker)
    for j, (_, _, (want_v, want_g)) in enumerate(jobs):
        got_v, got_g = results[j]
        assert got_v == want_v
        as_tuple = lambda g: g if isinstance(g, tuple) else (g,)
        for a, b in zip(as_tuple(got_g), as_tuple(want_g)):
            np.testing.assert_array_equal(a, b)


def _child(q):
    x = np.linspace(-3, 3, 3 * 65536)
    q.put(float(fl.huber(x, 0.5)))
    q.put(float(fl.cross_entropy(x.reshape(-1, 64), np.arange(3 * 1024) % 64)))


def test_forked_children_can_call_kernels(pointwise_path):
    pointwise_path("parallel")  # the children inherit this
    x = np.linspace(-3, 3, 3 * 65536)
    # the parent has started the pointwise kind's worker pool and Numba's parallel backend (the
    # row-wise prange driver) before forking
    want = [float(fl.huber(x, 0.5)), float(fl.cross_entropy(x.reshape(-1, 64), np.arange(3 * 1024) % 64))]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(q,)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in range(2 * len(procs))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(got) == sorted(want * 2)


CACHE_PROBE = """
import time, warnings
t0 = time.perf_counter()
import numpy as np, fastloss as fl
t1 = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    v = fl.huber(np.linspace(-2, 2, 100_000), 0.0)
t2 = time.perf_counter()
drv = fl.kinds.KINDS["pointwise"].driver(fl.huber.spec)
print(__import__("json").dumps({"value": float(v), "hits": sum(drv.stats.cache_hits.values()),
      "misses": sum(drv.stats.cache_misses.values()), "warned": [str(w.message) for w in caught],
      "import_s": t1 - t0, "first_call_s": t2 - t1}))
"""


def test_second_process_loads_kernels_from_the_disk_cache(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = run_python(CACHE_PROBE, env)
    assert first.returncode == 0, first.stderr
    second = run_python(CACHE_PROBE, env)
    assert second.returncode == 0, second.stderr
    a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (first, second))
    assert a["misses"] >= 1 and a["hits"] == 0
    assert b["hits"] >= 1 and b["misses"] == 0
    assert a["value"] == b["value"]
    assert any((tmp_path / "cache").rglob("*.nbi"))


def test_unusable_cache_dir_does_not_break_import_or_results(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    res = run_python(CACHE_PROBE, {"NUMBA_CACHE_DIR": str(blocker / "cache")})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["value"] == float(fl.huber(np.linspace(-2, 2, 100_000), 0.0))


def test_functions_that_cannot_be_cached_compile_in_memory_with_a_warning(monkeypatch):
    from fastloss import _compile

    monkeypatch.setattr(_compile, "_cache_warned", False)
    ns: dict = {}
    exec(compile("def plus_one(x):\n    return x + 1.0\n", "<generated>", "exec"), ns)  # no source file
    with pytest.warns(RuntimeWarning, match="cannot be cached on disk"):
        jitted = _compile.njit(ns["plus_one"])
    assert jitted(1.0) == 2.0
