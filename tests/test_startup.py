"""Numba's start-up under fastloss: no SciPy import for a first call, BLAS still works after."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = r"""
import json, sys
import numpy as np
pre = sys.argv[1] == "arraymath-first"
if pre:
    import numba.np.arraymath  # imported before fastloss: fastloss must leave it alone
import fastloss as fl
fl.mse.value_and_grad(np.arange(5.0), np.zeros(5))
fl.cross_entropy(np.zeros((2, 3)), np.array([0, 2]))
linalg_after_losses = "scipy.linalg" in sys.modules
import numba
import numba.np.arraymath as am
import numba.np.linalg as la

@numba.njit
def dot(a, b):
    return np.dot(a, b)

print(json.dumps({
    "linalg_after_losses": linalg_after_losses,
    "have_blas": am._HAVE_BLAS,
    "checks_restored": am.ensure_blas is la.ensure_blas and la.ensure_blas.__module__ == "numba.np.linalg",
    "dot": float(dot(np.arange(4.0), np.arange(4.0))),
}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=600,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_calls_do_not_import_scipy_linalg_and_blas_still_works():
    pytest.importorskip("scipy.linalg")  # without SciPy there is no import to avoid
    got = _probe("fastloss-first")
    assert got["linalg_after_losses"] is False
    assert got["have_blas"] is True  # Numba's answer is the same as with its own probe
    assert got["checks_restored"] is True
    assert got["dot"] == 14.0  # np.dot in jitted code imports SciPy's BLAS when compiled, as before


def test_nothing_changes_when_numba_started_first():
    got = _probe("arraymath-first")
    assert got["checks_restored"] is True
    assert got["dot"] == 14.0


def test_blas_probe_without_scipy(monkeypatch):
    from fastloss import _startup

    monkeypatch.setattr(_startup.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="scipy"):
        _startup._scipy_installed()
