"""Presenting a run: the table (rich, or plain text), Markdown, JSON / CSV rows, the plot, targets.

JSON and CSV hold *rows* in the long format of Liger-Kernel's benchmark data: one row per
provider x loss x size x metric, with the percentiles, dtype, device and versions, so that rows
from different runs and machines can be concatenated and compared.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .machine import describe
from .peers import PROVIDERS
from .runner import BenchRun, Result
from .timing import PERCENTILES

SCHEMA = 1

#: Column order of the CSV file.
ROW_FIELDS = ("provider", "loss", "kind", "metric", "unit", "x_name", "x", "size", "dtype", "device",
              *(f"p{q}" for q in PERCENTILES), "samples", "calls_per_sample", "check", "bandwidth_GBps",
              "fastloss_version", "provider_version", "cpu", "threading_layer", "timestamp")


# -- formatting ------------------------------------------------------------------------------------


def fmt_time(s: float | None) -> str:
    """A duration in seconds as text with a unit (s, ms, µs, ns); empty when unknown."""
    if s is None or not math.isfinite(s):
        return ""
    for unit, f in (("s", 1.0), ("ms", 1e3), ("µs", 1e6)):
        if s * f >= 1.0:
            return f"{s * f:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_rate(x: float | None) -> str:
    """A rate as text with an SI prefix (T, G, M, k); empty when unknown."""
    if x is None or not math.isfinite(x):
        return ""
    for unit, f in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= f:
            return f"{x / f:.3g} {unit}/s"
    return f"{x:.3g} /s"


def _spread(r: Result) -> str:
    t = r.timing
    return f"±{(t.percentile(90) - t.percentile(10)) / (2 * t.median) * 100:.1f}%"


def _speedup(r: Result) -> str:
    s = r.speedup
    return "" if s is None or PROVIDERS[r.provider].baseline else f"{s:.2f}x"


RESULT_COLUMNS: tuple[tuple[str, Callable[[Result], str]], ...] = (
    ("loss", lambda r: r.loss),
    ("size", lambda r: r.size.label),
    ("dtype", lambda r: r.dtype),
    ("impl", lambda r: r.provider),
    ("median", lambda r: fmt_time(r.median)),
    ("p10-p90", _spread),
    ("first call", lambda r: fmt_time(r.timing.first)),
    ("elements/s", lambda r: fmt_rate(r.elements_per_s)),
    ("GB/s", lambda r: f"{r.gbps:.2f}"),
    ("% of BW", lambda r: f"{r.fraction * 100:.0f}%"),
    ("vs naive", _speedup),
    ("check", lambda r: r.check),
)

#: How to read the tables: printed under them, in every output format.
LEGEND = (
    "p10-p90: half the spread between the 10th and 90th percentile of the timed samples, relative to the "
    "median; a wide one (more than about ±10%) means the machine was busy or changed clock speed during the "
    "case: rerun, or raise --repeats / --max-time, before trusting the median.",
    "% of BW: the case's bytes read and written per second against the memory bandwidth measured just before "
    "it. Above 100% the data fit in the CPU caches (small sizes) or the bandwidth sample was low (a noisy "
    "machine): it does not mean the loss beats memory.",
    "vs naive: speed-up over the plain NumPy formulation of the same loss and gradient.",
    "targets, met = NO: this run missed the project's performance target on this machine; targets are "
    "reported, not asserted, and assume a quiet machine.",
)

COLD_COLUMNS = ("loss", "dtype", "import (cold)", "first call, empty cache", "first call, warm cache", "sizes")


def _cold_rows(bench: BenchRun) -> list[list[str]]:
    rows = []
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for c in bench.coldstart:
        by_key.setdefault((c.loss, c.dtype), {})[c.cache] = c
    for (loss, dtype), d in by_key.items():
        cold, warm = d.get("cold"), d.get("warm")
        rows.append([
            loss, dtype, fmt_time(cold.import_s) if cold else "",
            fmt_time(cold.first_call_s) if cold else "", fmt_time(warm.first_call_s) if warm else "",
            " + ".join((cold or warm).sizes),
        ])
    return rows


def bandwidth_line(bench: BenchRun) -> str:
    """One line on the measured memory bandwidth of the run."""
    bw = bench.bandwidth
    return (f"memory bandwidth: {bw.median / 1e9:.1f} GB/s median, {bw.best / 1e9:.1f} GB/s best, "
            f"p10-p90 {bw.bytes_per_call / bw.timing.percentile(90) / 1e9:.1f}-"
            f"{bw.bytes_per_call / bw.timing.percentile(10) / 1e9:.1f} GB/s ({bw.method}, "
            f"{len(bw.timing.samples)} samples taken before every case; '% of BW' uses the one before its case)")


# -- targets ---------------------------------------------------------------------------------------


def targets(bench: BenchRun) -> list[dict[str, Any]]:
    """The issues' performance targets, evaluated on what this run measured (reported, not asserted)."""
    out: list[dict[str, Any]] = []

    def add(target: str, subject: str, value: str, met: bool) -> None:
        out.append({"target": target, "subject": subject, "value": value, "met": bool(met)})

    ours = [r for r in bench.results if PROVIDERS[r.provider].ours]
    by_case = {}
    for r in bench.results:
        by_case.setdefault((r.loss, r.size, r.dtype, r.device), {})[r.provider] = r
    for r in ours:
        subject = f"{r.provider} {r.loss} {r.size.label} {r.dtype} {r.device}"
        if r.kind == "pointwise" and r.device == "cpu" and r.elements >= 10**8 and r.dtype == "float32":
            add(">= 80% of triad bandwidth (pointwise, float32, 1e8)", subject, f"{r.fraction * 100:.0f}%",
                r.fraction >= 0.8)
            if r.speedup is not None:
                add(">= 4x naive NumPy (pointwise, float32, 1e8)", subject, f"{r.speedup:.2f}x", r.speedup >= 4)
        if r.kind == "pointwise" and r.device == "cpu" and r.elements <= 1000 and r.speedup is not None:
            add("not slower than NumPy (pointwise, 1e3)", subject, f"{r.speedup:.2f}x", r.speedup >= 1)
        if r.kind == "pointwise" and r.device == "cuda":
            add(">= 75% of device copy bandwidth (pointwise, CUDA)", subject, f"{r.fraction * 100:.0f}%",
                r.fraction >= 0.75)
        if r.loss == "cross_entropy" and r.dtype == "float32" and r.device == "cpu" and r.size.shape in (
                (1024, 32000), (8192, 1000), (4, 256000)):
            add(">= 50% of memory roofline (cross_entropy, float32)", subject, f"{r.fraction * 100:.0f}%",
                r.fraction >= 0.5)
            if r.speedup is not None:
                add(">= 4x naive NumPy (cross_entropy, float32)", subject, f"{r.speedup:.2f}x", r.speedup >= 4)
            for peer in ("torch", "jax"):
                other = by_case[(r.loss, r.size, r.dtype, r.device)].get(peer)
                if other is not None:
                    add(f"faster than {peer} (cross_entropy, float32)", subject,
                        f"{other.median / r.median:.2f}x", r.median < other.median)
        if r.loss == "cross_entropy" and r.device == "cuda" and r.size.shape == (4096, 128256):
            other = by_case[(r.loss, r.size, r.dtype, r.device)].get("torch")
            if other is not None:
                add("faster than torch (cross_entropy (4096, 128256), CUDA)", subject,
                    f"{other.median / r.median:.2f}x", r.median < other.median)
    for c in bench.coldstart:
        subject = f"{c.loss} {c.dtype} (sizes {' + '.join(c.sizes)})"
        if c.cache == "cold":
            add("cold first call <= 2 s", subject, fmt_time(c.first_call_s), c.first_call_s <= 2.0)
        else:
            add("warm-cache first call <= 0.3 s", subject, fmt_time(c.first_call_s), c.first_call_s <= 0.3)
    return out


# -- tables ----------------------------------------------------------------------------------------


def _text_table(headers: Iterable[str], rows: list[list[str]]) -> str:
    headers = list(headers)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _md_table(headers: Iterable[str], rows: list[list[str]]) -> str:
    headers = list(headers)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _result_rows(bench: BenchRun) -> list[list[str]]:
    return [[f(r) for _, f in RESULT_COLUMNS] for r in bench.results]


def _target_rows(bench: BenchRun) -> list[list[str]]:
    return [[t["target"], t["subject"], t["value"], "yes" if t["met"] else "NO"] for t in targets(bench)]


def format_text(bench: BenchRun) -> str:
    """The whole report as plain text (used when rich is not installed)."""
    parts = [f"fastloss bench on {describe(bench.machine)}", bandwidth_line(bench), "",
             _text_table((c for c, _ in RESULT_COLUMNS), _result_rows(bench))]
    if bench.coldstart:
        parts += ["", "cold start (fresh process, fresh NUMBA_CACHE_DIR):",
                  _text_table(COLD_COLUMNS, _cold_rows(bench))]
    t = _target_rows(bench)
    if t:
        parts += ["", "targets (reported, not asserted):", _text_table(("target", "subject", "value", "met"), t)]
    parts += ["", "how to read this:"] + [f"  {line}" for line in LEGEND]
    parts += [""] + [f"note: {n}" for n in bench.notes] + [f"total {bench.seconds:.0f} s"]
    return "\n".join(parts)


def format_markdown(bench: BenchRun) -> str:
    """The tables as Markdown (for ``docs/benchmarks.md``)."""
    parts = [f"Machine: {describe(bench.machine)}.", "", f"Measured {bandwidth_line(bench)}.", "",
             _md_table((c for c, _ in RESULT_COLUMNS), _result_rows(bench))]
    if bench.coldstart:
        parts += ["", "Cold start (fresh process, fresh `NUMBA_CACHE_DIR`):", "",
                  _md_table(COLD_COLUMNS, _cold_rows(bench))]
    t = _target_rows(bench)
    if t:
        parts += ["", "Targets (reported, not asserted):", "", _md_table(("target", "subject", "value", "met"), t)]
    parts += ["", "How to read these tables:", ""] + [f"- {line}" for line in LEGEND]
    if bench.notes:
        parts += [""] + [f"- {n}" for n in bench.notes]
    return "\n".join(parts) + "\n"


def print_report(bench: BenchRun, file=None) -> None:
    """Print the report with rich when it is installed, as plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(format_text(bench), file=file)
        return
    # a log file gets the width of a wide terminal rather than rich's 80-column default
    console = Console(file=file, width=None if (file or sys.stdout).isatty() else 150)
    console.print(f"[bold]fastloss bench[/] on {describe(bench.machine)}")
    console.print(bandwidth_line(bench))
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in bench.results:
        groups.setdefault((r.loss, r.dtype), []).append(r)
    columns = [c for c in RESULT_COLUMNS if c[0] not in ("loss", "dtype")]
    for (loss, dtype), results in groups.items():
        table = Table(title=f"[bold]{loss}[/] {dtype} ({results[0].kind}, {results[0].device})",
                      title_justify="left", header_style="bold")
        for i, (name, _) in enumerate(columns):
            table.add_column(name, justify="left" if i < 2 or name == "check" else "right")
        previous = None
        for r in results:
            if previous is not None and r.size != previous:
                table.add_section()
            previous = r.size
            table.add_row(*(f(r) for _, f in columns), style="bold" if PROVIDERS[r.provider].ours else None)
        console.print(table)
    if bench.coldstart:
        cold = Table(title="cold start (fresh process, fresh NUMBA_CACHE_DIR)", header_style="bold")
        for c in COLD_COLUMNS:
            cold.add_column(c)
        for row in _cold_rows(bench):
            cold.add_row(*row)
        console.print(cold)
    trows = _target_rows(bench)
    if trows:
        tt = Table(title="targets (reported, not asserted)", header_style="bold")
        for c in ("target", "subject", "value", "met"):
            tt.add_column(c)
        for row in trows:
            tt.add_row(*row, style="green" if row[3] == "yes" else "red")
        console.print(tt)
    console.print("[bold]how to read this[/]")
    for line in LEGEND:
        console.print(f"  {line}", markup=False, highlight=False)
    for n in bench.notes:
        console.print(f"[dim]note: {n}[/]")
    console.print(f"[dim]total {bench.seconds:.0f} s[/]")


# -- rows, JSON, CSV -------------------------------------------------------------------------------


def rows(bench: BenchRun) -> list[dict[str, Any]]:
    """Long-format rows: one per provider x loss x size x metric."""
    m = bench.machine
    out = []
    for r in bench.results:
        t = r.timing
        pct = {f"p{q}": t.percentile(q) for q in PERCENTILES}
        inv = {f"p{q}": t.percentile(100 - q) for q in PERCENTILES}  # a rate's p10 is the time's p90
        base = {
            "provider": r.provider, "loss": r.loss, "kind": r.kind, "x_name": "elements", "x": r.elements,
            "size": r.size.label, "shape": list(r.size.shape), "dtype": r.dtype, "device": r.device,
            "samples": len(t.samples), "calls_per_sample": t.number, "check": r.check,
            "bandwidth_GBps": r.bandwidth / 1e9,
            "fastloss_version": m.get("fastloss"), "provider_version": PROVIDERS[r.provider].version(),
            "cpu": m.get("cpu"), "threading_layer": m.get("threading_layer"), "timestamp": m.get("timestamp"),
        }
        metrics = [
            ("time", "s", pct),
            ("first_call", "s", {"p50": t.first}),
            ("throughput", "GB/s", {k: r.min_bytes / v / 1e9 for k, v in inv.items()}),
            ("elements_per_s", "1/s", {k: r.elements / v for k, v in inv.items()}),
            ("fraction_of_bandwidth", "1", {k: r.min_bytes / v / r.bandwidth for k, v in inv.items()}),
        ]
        if r.speedup is not None and not PROVIDERS[r.provider].baseline:
            metrics.append(("speedup_vs_naive", "x", {k: r.baseline / v for k, v in inv.items()}))
        for metric, unit, values in metrics:
            row = {**base, "metric": metric, "unit": unit}
            row.update({f"p{q}": values.get(f"p{q}") for q in PERCENTILES})
            out.append(row)
    return out


def to_dict(bench: BenchRun) -> dict[str, Any]:
    """The run as a JSON-ready dictionary (schema, machine, settings, results)."""
    return {
        "schema": SCHEMA,
        "machine": bench.machine,
        "settings": bench.settings,
        "bandwidth": bench.bandwidth.to_dict(),
        "rows": rows(bench),
        "coldstart": [c.to_dict() for c in bench.coldstart],
        "targets": targets(bench),
        "notes": bench.notes,
        "seconds": bench.seconds,
    }


def write_json(bench: BenchRun, path: str | Path) -> None:
    """Write :func:`to_dict` of the run to ``path`` as JSON."""
    Path(path).write_text(json.dumps(to_dict(bench), indent=1) + "\n")


def write_csv(bench: BenchRun, path: str | Path) -> None:
    """Write one CSV row per result of the run to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows(bench))


# -- plot ------------------------------------------------------------------------------------------


def plot(bench: BenchRun, path: str | Path) -> None:
    """Throughput (GB/s of minimal traffic) vs size, one panel per loss, with the bandwidth line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(dict.fromkeys(r.loss for r in bench.results))
    ncols = min(3, max(1, len(losses)))
    nrows = math.ceil(len(losses) / ncols) if losses else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    bw = bench.bandwidth.median / 1e9
    providers = list(PROVIDERS)
    dtypes = list(dict.fromkeys(r.dtype for r in bench.results))
    styles = ["-", "--", ":"]
    for ax, loss in zip(axes.flat, losses):
        mine = [r for r in bench.results if r.loss == loss]
        for prov in providers:
            for j, dt in enumerate(dtypes):
                pts = sorted((r.elements, r.gbps, r.size.label) for r in mine if r.provider == prov and r.dtype == dt)
                if not pts:
                    continue
                label = prov if len(dtypes) == 1 else f"{prov} {dt}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[j % 3], marker="o", ms=4, label=label,
                        lw=2.2 if PROVIDERS[prov].ours else 1.2, color=f"C{providers.index(prov)}")
        ax.axhline(bw, color="k", ls="--", lw=1)
        ax.annotate(f"bandwidth (median) {bw:.0f} GB/s", (0.02, bw), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8)
        sizes = sorted({(r.elements, r.size.label) for r in mine})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([s[0] for s in sizes], [s[1] for s in sizes], fontsize=7, rotation=20)
        ax.minorticks_off()
        ax.set_title(f"{loss} ({mine[0].kind})", fontsize=10)
        ax.set_ylabel("GB/s (inputs read + grads written)", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(losses):]:
        ax.axis("off")
    fig.suptitle(f"fastloss value_and_grad, {bench.settings['device']} - {bench.machine.get('cpu', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
