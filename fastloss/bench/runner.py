"""The benchmark run: bandwidth, then every loss x size x dtype x implementation, then cold start."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import peers as peer_module
from .cases import Case, Size, make_case, sizes_for
from .coldstart import ColdStart, coldstart
from .machine import machine_info
from .peers import ALWAYS, PEERS, PROVIDERS, Provider
from .timing import Bandwidth, Timing, cpu_probe, cuda_probe, measure

#: Losses of a default run (those registered): the main pointwise losses and cross entropy.
DEFAULT_LOSSES = ("mse", "huber", "binary_cross_entropy", "cross_entropy")


@dataclass
class Result:
    """One implementation on one case."""

    loss: str
    kind: str
    size: Size
    dtype: str
    device: str
    provider: str
    timing: Timing
    min_bytes: int
    bandwidth: float  # bytes/s, measured just before this case
    check: str = "ref"
    baseline: float | None = None  # median seconds of the naive implementation on the same case

    @property
    def elements(self) -> int:
        return self.size.elements

    @property
    def median(self) -> float:
        return self.timing.median

    @property
    def gbps(self) -> float:
        """Effective GB/s of the minimal traffic at the median time."""
        return self.min_bytes / self.median / 1e9

    @property
    def elements_per_s(self) -> float:
        return self.elements / self.median

    @property
    def fraction(self) -> float:
        """Effective bandwidth over the bandwidth measured in the same run."""
        return self.gbps * 1e9 / self.bandwidth

    @property
    def speedup(self) -> float | None:
        return None if self.baseline is None else self.baseline / self.median


@dataclass
class BenchRun:
    """Everything one ``fastloss bench`` run measured, with the machine and the settings."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    bandwidth: Bandwidth
    results: list[Result] = field(default_factory=list)
    coldstart: list[ColdStart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Progress:
    """A rich progress bar on a terminal, one line per step otherwise (or nothing)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                pass
            else:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                                     "{task.total}"), TimeElapsedColumn(), transient=True)
                self._bar.start()
                self._task = self._bar.add_task("fastloss bench", total=total)

    def step(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)
        elif self.enabled:
            print(f"[{self.done + 1}/{self.total}] {text}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def resolve_losses(losses: Iterable[str] | None) -> list[str]:
    """Names to run: the default set, ``"all"``, or names checked against the registry."""
    from .. import REGISTRY, get

    if losses is None:
        return [n for n in DEFAULT_LOSSES if n in REGISTRY]
    names = list(losses)
    if names == ["all"]:
        return list(REGISTRY)
    for n in names:
        get(n)  # raises KeyError listing what exists
    return names


def resolve_providers(peers: Iterable[str] | None, device: str, notes: list[str]) -> list[Provider]:
    """fastloss and the naive baselines, plus the requested peers (all known ones by default)."""
    wanted = list(PEERS) if peers is None else [p for p in peers if p not in ("none", "")]
    unknown = [p for p in wanted if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
    chosen = []
    for name in dict.fromkeys([*ALWAYS, *wanted]):
        provider = PROVIDERS[name]
        reason = provider.unavailable(device)
        if reason is None:
            chosen.append(provider)
        elif device in provider.devices or name in wanted:
            notes.append(f"skipped {name}: {reason}")
    return chosen


def compare(result: tuple, reference: tuple, dtype: np.dtype) -> str:
    """``"ok"`` when value and gradients agree with the reference implementation's."""
    tol = 1e-3 if np.dtype(dtype).itemsize <= 4 else 1e-8
    value, grads = result
    rvalue, rgrads = reference
    if len(grads) != len(rgrads):
        return f"MISMATCH: {len(grads)} gradients, expected {len(rgrads)}"
    verr = abs(value - rvalue) / max(abs(rvalue), np.finfo(dtype).tiny)
    if not verr <= tol:
        return f"MISMATCH: value rel. err {verr:.1e}"
    for g, r in zip(grads, rgrads):
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        gerr = float(np.max(np.abs(g.astype(r.dtype, copy=False) - r))) / scale if scale > 0 else 0.0
        if g.shape != r.shape or not gerr <= tol:
            return f"MISMATCH: gradient rel. err {gerr:.1e}"
    return "ok"


def run(
    losses: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
    dtypes: Sequence[str] = ("float32",),
    device: str = "cpu",
    peers: Sequence[str] | None = None,
    repeats: int = 7,
    max_time: float = 1.0,
    quick: bool = False,
    coldstart_losses: Sequence[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    isolate: bool = True,
) -> BenchRun:
    """Run the benchmark and return everything measured (see :mod:`fastloss.bench`).

    Parameters
    ----------
    losses
        Loss names, ``["all"]``, or ``None`` for :data:`DEFAULT_LOSSES`.
    sizes
        Size tokens (``"1e6"`` for pointwise, ``"8192x1000"`` for row-wise); ``None``: each kind's
        defaults. A kind that understands none of the tokens is skipped with a note.
    dtypes, device
        ``float32``/``float64``; ``"cpu"`` or ``"cuda"``.
    peers
        Optional peers (``torch``, ``jax``, ``sklearn``); ``None``: every installed one.
        fastloss and the naive baseline always run.
    repeats, max_time
        Timed samples per implementation and case, and the time after which sampling stops
        early (once three samples exist).
    quick
        Small sizes, few repeats, a small bandwidth test and one cold-start loss: a smoke run.
    coldstart_losses
        Losses whose cold-start figures are measured (``[]`` for none; ``None``: the first loss of
        each kind in the run, or only the first loss when ``quick``).
    threads
        Threads for fastloss and the peers (default: all cores).
    isolate
        Measure peers with their own thread pools (PyTorch, JAX, scikit-learn) in child processes,
        away from Numba's threads (see ``Provider.isolate``). ``False``: all in this process.
    """
    import numba

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if threads is not None:
        numba.set_num_threads(threads)
    peer_module.THREADS = threads
    if quick:
        repeats, max_time = min(repeats, 3), min(max_time, 0.2)
    t_start = time.perf_counter()
    load_start = _loadavg()
    from .. import get

    names = resolve_losses(losses)
    notes: list[str] = []
    providers = resolve_providers(peers, device, notes)
    if not any(p.ours for p in providers):
        raise RuntimeError(f"fastloss cannot run on {device}: {PROVIDERS['fastloss'].unavailable(device)}")

    plan: list[tuple[str, Size, str]] = []
    for name in names:
        kind = get(name).spec.kind
        kind_sizes = sizes_for(kind, sizes, quick)
        if not kind_sizes:
            notes.append(f"skipped {name}: none of the sizes {', '.join(sizes or [])} applies to {kind} losses")
        plan += [(name, s, dt) for s in kind_sizes for dt in dtypes]

    if device == "cuda":
        probe = cuda_probe(nbytes=(1 << 26) if quick else (1 << 30))
    else:
        probe = cpu_probe(n=10_000_000 if quick else 20_000_000)
    probe_repeats = 3 if quick else 5

    settings = {
        "losses": names, "sizes": list(sizes) if sizes else None, "dtypes": list(dtypes), "device": device,
        "providers": [p.name for p in providers], "repeats": repeats, "max_time": max_time, "quick": quick,
    }
    bench = BenchRun(machine={}, settings=settings, bandwidth=probe.measure(probe_repeats), notes=notes)
    bar = _Progress(len(plan) * len(providers), progress)
    for note in notes:
        bar.note(note)
    here = [p for p in providers if not (isolate and p.isolate)]
    away = [p for p in providers if isolate and p.isolate]
    per_case: list[list[Result]] = []
    try:
        for name, size, dt in plan:
            case = make_case(get(name).spec, size, dt)
            bandwidth = probe.measure(probe_repeats).median  # the bandwidth available right now
            per_case.append(_run_case(case, here, device, bandwidth, repeats, max_time, bar))
            del case
        bench.bandwidth = probe.overall()
        del probe
        for provider in away:
            _run_child(provider, plan, per_case, device, repeats, max_time, bar, notes)
    finally:
        bar.close()
    order = {p.name: i for i, p in enumerate(providers)}
    for results in per_case:
        base = [r.median for r in results if PROVIDERS[r.provider].baseline]
        for r in results:
            r.baseline = base[0] if base and math.isfinite(base[0]) else None
        bench.results += sorted(results, key=lambda r: order[r.provider])

    if coldstart_losses is None:  # the first loss of each kind: a cold start compiles mostly the kind's driver
        first_of_kind = {get(n).spec.kind: n for n in reversed(names)}
        coldstart_losses = names[:1] if quick else [n for n in names if n in first_of_kind.values()]
    for name in coldstart_losses:
        for dt in dtypes:
            bar.note(f"cold start: {name} {dt}")
            bench.coldstart += coldstart(name, dt, get(name).spec.kind)

    bench.machine = machine_info(device)  # after the runs: the threading layer is known by then
    # other processes' load explains noisy numbers on a shared machine: keep it with the results
    bench.machine["loadavg_1min"] = {"start": load_start, "end": _loadavg()}
    bench.seconds = time.perf_counter() - t_start
    return bench


def _run_case(case: Case, providers: list[Provider], device: str, bandwidth: float, repeats: int,
              max_time: float, bar: _Progress) -> list[Result]:
    results: list[Result] = []
    reference = None
    for provider in providers:
        bar.step(f"{case.loss} {case.size.label} {case.dtype.name} {provider.name}")
        if not provider.supports(case):
            bar.advance()
            continue
        prepared = provider.prepare(case, device)
        timing, first = measure(prepared.run, prepared.sync, repeats=repeats, max_time=max_time)
        host = prepared.to_host(first)
        del first, prepared
        if reference is None:
            reference, check = host, "ref"
        else:
            check = compare(host, reference, case.dtype)
        del host
        results.append(Result(case.loss, case.kind, case.size, case.dtype.name, device, provider.name, timing,
                              case.min_bytes, bandwidth, check))
        bar.advance()
    return results


def _run_child(provider: Provider, plan: list[tuple[str, Size, str]], per_case: list[list[Result]], device: str,
               repeats: int, max_time: float, bar: _Progress, notes: list[str]) -> None:
    """Measure ``provider`` on every case of ``plan`` in a child process (``fastloss.bench._child``)."""
    job = {"provider": provider.name, "device": device, "threads": peer_module.threads(), "repeats": repeats,
           "max_time": max_time, "cases": [{"loss": n, "shape": list(s.shape), "dtype": dt} for n, s, dt in plan]}
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastloss.bench._child"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        for line in proc.stdout:
            msg = json.loads(line)
            if msg["event"] == "step":
                bar.step(msg["text"])
                continue
            bar.advance()
            if msg["event"] == "result":
                ref = per_case[msg["index"]][0]  # fastloss's row: the same case (and its adapted size)
                timing = Timing(first=msg["first"], samples=msg["samples"], number=msg["number"])
                per_case[msg["index"]].append(Result(ref.loss, ref.kind, ref.size, ref.dtype, device, provider.name,
                                                     timing, msg["min_bytes"], ref.bandwidth, msg["check"]))
        if proc.wait() != 0:
            err.seek(0)
            tail = err.read().strip().splitlines()[-3:]
            notes.append(f"{provider.name} child process failed (exit {proc.returncode}): {' | '.join(tail)}")
