"""The fastloss benchmark: how much faster, and how close to the memory limit, on this machine.

``fastloss bench`` (or ``python -m fastloss.bench``) measures, in one run:

* the machine's memory bandwidth (a parallel Numba triad; a device copy on CUDA);
* for every loss x size x dtype x implementation, ``value_and_grad`` of the mean loss: the first
  call (compilation included) and the median and spread of warm calls, elements/s, effective
  GB/s of the minimal traffic (inputs read + gradients written), the fraction of the measured
  bandwidth, and the speedup over a naive NumPy implementation (:mod:`fastloss.bench.naive`);
* cold-start figures: ``import fastloss`` and the first call with an empty and a warm cache.

Peers (PyTorch, JAX, scikit-learn, CuPy) run when installed. Modules: :mod:`~.cases` (inputs,
per kind), :mod:`~.naive`, :mod:`~.peers`, :mod:`~.timing`, :mod:`~.coldstart`,
:mod:`~.runner`, :mod:`~.report`, :mod:`~.cli`. Programmatic use::

    from fastloss.bench import run, report
    bench = run(losses=["mse"], sizes=["1e6"], coldstart_losses=[])
    report.print_report(bench)
"""

from __future__ import annotations

from . import report
from .runner import BenchRun, Result, run

__all__ = ["BenchRun", "Result", "report", "run"]
