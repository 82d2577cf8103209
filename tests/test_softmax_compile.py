"""How the softmax kind compiles: one compilation per loss and dtype, the same bits however it was obtained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import fastloss as fl
from fastloss import _launcher
from fastloss.kinds.softmax import host as _rowwise

ROOT = Path(__file__).resolve().parents[1]

# Small and row-parallel sizes, the plain and the general cross-entropy kernels, read-only logits:
# every way a driver is chosen, compiled or loaded. (multiclass_hinge: the quickest kernel to compile.)
_PROBE = textwrap.dedent("""
    import hashlib, json, numpy as np, fastloss as fl
    from fastloss.kinds.softmax import host as _rowwise
    h = hashlib.sha256()
    rng = np.random.default_rng(3)
    for n, c in ((64, 1000), (4096, 40)):
        x = rng.normal(0, 3, size=(n, c)).astype(np.float32)
        y = rng.integers(0, c, n)
        xr = x.copy()
        xr.flags.writeable = False
        for v, g in (fl.cross_entropy.value_and_grad(x, y), fl.cross_entropy.value_and_grad(xr, y),
                     fl.cross_entropy.value_and_grad(x, y, label_smoothing=0.1),
                     fl.multiclass_hinge.value_and_grad(x, y)):
            h.update(np.asarray(v).tobytes())
            h.update(g.tobytes())
    drv = _rowwise.ROWWISE.driver(fl.cross_entropy.spec, "ser", fl.cross_entropy.spec.options["kernel_for"](
        {"label_smoothing": 0.0, "softcap": None}, True))
    print(json.dumps({"digest": h.hexdigest(), "hits": sum(drv.stats.cache_hits.values()),
                      "misses": sum(drv.stats.cache_misses.values()), "overloads": len(drv.overloads)}))
""")


def _probe(cache: Path, threads: int) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "NUMBA_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_drivers_loaded_from_the_disk_cache_give_the_bits_of_a_fresh_compilation(tmp_path):
    # A driver loaded from the cache once called a separately compiled helper bound, at load time,
    # to another compilation: its bits differed from a fresh compilation's. Compare both, on 1 and 2 threads.
    fresh = _probe(tmp_path / "cache", 1)
    loaded = _probe(tmp_path / "cache", 2)
    assert fresh["misses"] == 1 and fresh["hits"] == 0
    assert loaded["misses"] == 0 and loaded["hits"] == 1
    # writable and read-only logits, small and row-parallel sizes: one compilation of the driver
    assert fresh["overloads"] == 1 and loaded["overloads"] == 1
    assert loaded["digest"] == fresh["digest"]
    assert _probe(tmp_path / "other", 2)["digest"] == fresh["digest"]  # fresh on 2 threads too


def test_read_only_and_writable_logits_share_one_compilation():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 7))
    y = rng.integers(0, 7, 50)
    v, g = fl.multiclass_hinge.value_and_grad(x, y)
    xr = x.copy()
    xr.flags.writeable = False
    vr, gr = fl.multiclass_hinge.value_and_grad(xr, y)
    assert v == vr
    np.testing.assert_array_equal(g, gr)
    drv = _rowwise.ROWWISE.driver(fl.multiclass_hinge.spec, "ser")
    assert drv is _rowwise.ROWWISE.driver(fl.multiclass_hinge.spec, "par")  # one compiled function
    assert len([sig for sig in drv.overloads if str(sig[0].dtype) == "float64"]) == 1


def test_pieces_of_large_units_may_be_single_units():
    assert _launcher.pieces(2, 2, min_piece=1) == [(0, 1), (1, 2)]
    assert _launcher.pieces(2, 2) == [(0, 2)]
