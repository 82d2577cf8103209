"""The training-loop examples run (in their quick mode) and both ways of training agree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--quick"], capture_output=True,
                         text=True, env=env, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout


def weight_differences(out: str) -> list[float]:
    return [float(m) for m in re.findall(r"largest weight difference between the two runs: (\S+)", out)]


def test_numpy_training_loop():
    out = run_example("numpy_training.py")
    assert out.count("naive NumPy") == 2 and out.count("fastloss") == 2
    assert re.search(r"epoch +\d+\.\d+ ms", out)
    diffs = weight_differences(out)
    assert len(diffs) == 2 and max(diffs) < 1e-12  # float64: the same training run, up to rounding


def test_torch_training_loop():
    pytest.importorskip("torch")
    out = run_example("torch_training.py")
    assert "F.huber_loss" in out and "fastloss.torch.huber" in out
    diffs = weight_differences(out)
    assert len(diffs) == 1 and diffs[0] < 1e-4  # float32 and Adam: equal up to rounding
