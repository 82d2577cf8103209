"""Cold-start figures: ``import fastloss`` and the first call, with an empty and a warm cache.

Each figure comes from a fresh Python process whose ``NUMBA_CACHE_DIR`` is a new, empty
directory: the first process compiles every kernel the call needs and writes it to that cache
("cold"); a second process with the same directory loads the machine code instead ("warm").
A first call is measured at each of the kind's quick sizes, a small and a large input, so that
every driver a call of either size needs is compiled or loaded (for the row kinds a serial and a
``prange`` driver; the pointwise kind has one driver for both, whose large calls also start the
pool of worker threads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from .cases import Size, factory

# Runs in the child process: the imports are part of what is measured.
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import fastloss
t_import = time.perf_counter() - t0
from fastloss.bench.cases import Size, make_case
name, dtype, shapes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
loss = fastloss.get(name)
firsts = []
for shape in shapes:
    case = make_case(loss.spec, Size(tuple(shape)), dtype)
    t0 = time.perf_counter()
    loss.value_and_grad(*case.inputs, **case.params)
    firsts.append(time.perf_counter() - t0)
print(json.dumps({"import": t_import, "first_calls": firsts}))
"""


@dataclass
class ColdStart:
    """Seconds for one loss and dtype; ``cache`` is ``"cold"`` (empty) or ``"warm"``."""

    loss: str
    dtype: str
    cache: str
    import_s: float
    sizes: list[str]
    first_calls_s: list[float]

    @property
    def first_call_s(self) -> float:
        """All first calls together: what a user waits for before both drivers are ready."""
        return sum(self.first_calls_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "first_call_s": self.first_call_s}


def _child(name: str, dtype: str, sizes: list[Size], cache_dir: str, timeout: float) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    shapes = json.dumps([list(s.shape) for s in sizes])
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, name, dtype, shapes],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child for {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def coldstart(name: str, dtype: str, kind: str, timeout: float = 300.0) -> list[ColdStart]:
    """The cold and the warm figures of one loss and dtype (two child processes)."""
    sizes = list(factory(kind).quick_sizes)
    out = []
    with tempfile.TemporaryDirectory(prefix="fastloss-coldstart-") as cache_dir:
        for cache in ("cold", "warm"):
            res = _child(name, dtype, sizes, cache_dir, timeout)
            out.append(ColdStart(name, dtype, cache, res["import"], [s.label for s in sizes], res["first_calls"]))
    return out
