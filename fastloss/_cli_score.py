"""``fastloss score``: per-sample losses and a summary of stored predictions, streamed in chunks.

Kept apart from :mod:`fastloss.__main__` so that ``fastloss --help`` stays fast: NumPy, Numba and the
losses are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

DESCRIPTION = """\
Score stored predictions with a fastloss loss, chunk by chunk (memory bounded by the chunk size).
Inputs: PATH.npy, PATH.npz:MEMBER, PATH.parquet:COLUMN (list columns hold logits rows).
Writes per-sample losses (.npy or .parquet, float64, NaN for ignored rows) and a JSON summary
(printed when --summary is not given). Outputs appear only when the run completes, both or neither;
an existing file is replaced only with --overwrite (and keeps its permissions). Rows with a non-finite
loss (NaN inputs) are reported on stderr and left out of the summary; --strict makes them an error.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("score", help="score stored predictions (per-sample losses and a summary)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("loss", help="loss name (see fastloss.names())")
    p.add_argument("--pred", required=True, metavar="PATH", help="predictions / logits (the loss's first input)")
    p.add_argument("--target", required=True, metavar="PATH", help="targets / labels (the loss's second input)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                   help="another input of the loss by name (e.g. var=var.npy for gaussian_nll)")
    p.add_argument("--weight", metavar="PATH", help="one sample weight per row")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="loss hyper-parameter (repeatable; an array one as a list, e.g. pos_weight=1,2.5,4)")
    p.add_argument("--per-sample", metavar="OUT", help="write per-sample losses to OUT (.npy or .parquet)")
    p.add_argument("--summary", metavar="OUT.json", help="write the JSON summary to OUT.json")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 1, no output) when a row's loss is not finite (e.g. NaN inputs)")
    p.add_argument("--chunk-size", type=int, metavar="N", help="rows per chunk (default: ~32 MiB of input)")
    p.add_argument("--quantiles", default=None, metavar="Q,Q,...",
                   help="quantile levels (default 0.01,0.1,0.5,0.9,0.99)")
    p.add_argument("--exact-quantiles", action=argparse.BooleanOptionalAction, default=None,
                   help="exact quantiles by extra passes (default: exact when --per-sample is written)")
    p.add_argument("--per-class", action=argparse.BooleanOptionalAction, default=None,
                   help="per-class means for class-label targets (default: when the classes are known)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster (tcp://host:port); default: here, streaming")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with rows/s on stderr (default: when stderr is a terminal)")

    def error(message: str):  # one line, no usage dump
        print(f"fastloss score: error: {message}", file=sys.stderr)
        sys.exit(2)

    p.error = error  # type: ignore[method-assign]
    return p


class _Progress:
    """A progress bar with rows/s: rich when installed, else one rewritten stderr line."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._rich = None
        self._task = None
        self._stage = None
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._closed = False
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
        except ImportError:
            return
        self._rich = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self._rich.start()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._t0 = stage, now
            if self._rich is not None:
                self._task = self._rich.add_task(stage, total=max(total, 1), rate="")
            elif self._last:
                sys.stderr.write("\n")
        rate = done / max(now - self._t0, 1e-9)
        rate_s = f"{rate / 1e6:,.2f} M rows/s" if rate >= 1e6 else f"{rate:,.0f} rows/s"
        if self._rich is not None:
            self._rich.update(self._task, completed=done, rate=rate_s)
        elif now - self._last > 0.2 or done >= total:
            self._last = now
            pct = 100.0 * done / total if total else 100.0
            sys.stderr.write(f"\r{stage}: {done:,}/{total:,} rows ({pct:5.1f}%) {rate_s}   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled and self._last:
            sys.stderr.write("\n")


class _Terminated(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = " ".join(str(msg).split())
    return msg or type(exc).__name__


def run(args: argparse.Namespace) -> int:
    """Run ``fastloss score``; return the exit status (0, 1 for bad input, 130 when interrupted)."""
    sinks: list = []
    progress = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        progress = _Progress(sys.stderr.isatty() if args.progress is None else args.progress)
        summary = _score(args, sinks, progress)
        progress.close()
        _commit(sinks)
        if args.summary is None:
            try:
                print(summary, flush=True)
            except BrokenPipeError:  # e.g. piped into head: not an error of ours
                sys.stdout = None  # type: ignore[assignment]
        return 0
    except (KeyboardInterrupt, _Terminated) as exc:
        _abort(sinks, progress)
        print("fastloss score: interrupted; no output written", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except (ValueError, TypeError, KeyError, OSError, ImportError, RuntimeError, MemoryError) as exc:
        _abort(sinks, progress)
        print(f"fastloss score: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except BaseException:  # anything else still leaves no temporaries behind
        _abort(sinks, progress)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _commit(sinks: list) -> None:
    """Rename every output into place with SIGINT/SIGTERM held off, so that a run ends all or nothing."""
    stop = {signal.SIGINT, signal.SIGTERM}
    try:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    except (AttributeError, ValueError):  # no pthread_sigmask, or not the main thread
        held = None
    handlers = {}
    try:
        from ._scoring_io import commit_all

        commit_all(sinks)
        sinks.clear()
        if held is not None:  # a signal that arrived meanwhile is dropped: the run is complete
            handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stop}
    finally:
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _abort(sinks: list, progress) -> None:
    if progress is not None:
        progress.close()
    for s in sinks:
        s.abort()
    sinks.clear()


def _score(args: argparse.Namespace, sinks: list, progress: _Progress) -> str:
    import json

    from . import _scoring_io as io
    from . import scoring

    loss = scoring.resolve_loss(args.loss)
    spec = loss.spec
    params = dict(scoring.parse_param(loss, t) for t in args.param)
    names = [i.name for i in spec.inputs]
    paths: dict[str, str] = {}
    if len(names) < 2:
        raise scoring.ScoreError(f"{spec.name} takes {len(names)} input(s); --pred/--target need two")
    paths[names[0]], paths[names[1]] = args.pred, args.target
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or name not in names[2:]:
            extra = ", ".join(names[2:]) or "none"
            raise scoring.ScoreError(f"bad --input {item!r}: expected NAME=PATH with NAME one of: {extra}")
        paths[name] = path
    labels = {names[0]: "--pred", names[1]: "--target"}
    inputs = [io.open_input(paths[n], labels.get(n, n)) if n in paths else None for n in names]
    weight = io.open_input(args.weight, "--weight") if args.weight else None
    opened = {labels.get(n, f"--input {n}"): src.path for n, src in zip(names, inputs) if src is not None}
    if weight is not None:
        opened["--weight"] = weight.path
    outputs = {opt: path for opt, path in (("--per-sample", args.per_sample), ("--summary", args.summary)) if path}
    io.check_outputs(outputs, opened, overwrite=args.overwrite)
    quantiles = scoring.DEFAULT_QUANTILES
    if args.quantiles:
        try:
            quantiles = tuple(float(q) for q in args.quantiles.split(","))
        except ValueError:
            raise scoring.ScoreError(f"bad --quantiles {args.quantiles!r}: expected numbers like 0.5,0.9") from None
    if args.chunk_size is not None and args.chunk_size < 1:
        raise scoring.ScoreError(f"--chunk-size must be positive, got {args.chunk_size}")
    per_class = "auto" if args.per_class is None else args.per_class

    runner = None
    if args.scheduler:
        from .dask import DaskRunner

        runner = DaskRunner.connect(args.scheduler)
    try:
        labels = [getattr(src, "label", None) if src is not None else None for src in inputs]
        labels.append(getattr(weight, "label", None))
        job = scoring.ScoringJob(loss, inputs, weight=weight, params=params, per_class=per_class, labels=labels)
        out = None
        if args.per_sample:
            out = io.open_output(args.per_sample, job.rows)
            sinks.append(out)
        summary_sink = None
        if args.summary:
            summary_sink = io.JsonSink(args.summary)
            sinks.append(summary_sink)
        summary = scoring.run(
            job, chunk_size=args.chunk_size, out=out, quantiles=quantiles,
            exact_quantiles=args.exact_quantiles if args.exact_quantiles is not None else (out is not None),
            progress=progress, runner=runner,
        )
    finally:
        if runner is not None:
            runner.close()
    if summary.nonfinite:
        msg = (f"{summary.nonfinite:,} of {summary.rows:,} rows have a non-finite loss (NaN or infinite inputs?); "
               "the summary's sum, mean and quantiles leave them out")
        if args.strict:
            raise scoring.ScoreError(f"{msg} (--strict)")
        progress.close()
        print(f"fastloss score: warning: {msg}", file=sys.stderr)
    result = {"loss": spec.name, "params": params, **summary.to_dict()}
    text = json.dumps(result, indent=2, allow_nan=False)
    if summary_sink is not None:
        summary_sink.write_json(result)
    return text
