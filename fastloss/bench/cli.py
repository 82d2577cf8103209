"""``fastloss bench`` / ``python -m fastloss.bench``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  fastloss bench                                   # main losses, a few sizes, every installed peer
  fastloss bench --quick                           # smoke run (a few seconds)
  fastloss bench --losses mse,huber --sizes 1e3,1e6,1e8 --json out.json --plot out.png
  fastloss bench --losses cross_entropy --sizes 1024x32000,4x256000 --peers torch,jax
  fastloss bench --losses all --dtype float32,float64 --csv rows.csv
"""


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (shared by both entry points)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--losses", type=_list, default=None, metavar="A,B",
                        help="losses to run, or 'all' (default: mse, huber, binary_cross_entropy, cross_entropy)")
    parser.add_argument("--sizes", type=_list, default=None, metavar="S,S",
                        help="sizes: element counts for pointwise losses (1e6), NxC for row-wise (8192x1000); "
                             "default: each kind's own")
    parser.add_argument("--dtype", type=_list, default=["float32"], metavar="D,D",
                        help="float32 and/or float64 (default: float32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--peers", type=_list, default=None, metavar="P,P",
                        help="optional peers: torch, jax, sklearn, or 'none' (default: every installed one); "
                             "fastloss and the naive NumPy/CuPy baseline always run")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per measurement (default: 7)")
    parser.add_argument("--max-time", type=float, default=1.0, metavar="S",
                        help="stop sampling after S seconds once 3 samples exist (default: 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastloss and the peers (default: all cores)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure torch, jax and sklearn in this process instead of one child process each "
                             "(their thread pools then compete with Numba's)")
    parser.add_argument("--coldstart", type=_list, default=None, metavar="A,B",
                        help="losses for the cold-start figures (default: the first loss of each kind)")
    parser.add_argument("--no-coldstart", action="store_true", help="skip the cold-start figures")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="write machine info and long-format rows as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write long-format rows as CSV")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of GB/s vs size (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")


def run_from_args(args: argparse.Namespace) -> int:
    from . import report
    from .runner import run

    for dt in args.dtype:
        if dt not in ("float32", "float64"):
            print(f"fastloss bench: unsupported dtype {dt!r} (float32 or float64)", file=sys.stderr)
            return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastloss bench: --plot needs matplotlib (pip install 'fastloss[bench]')", file=sys.stderr)
            return 2
    try:
        bench = run(
            losses=args.losses, sizes=args.sizes, dtypes=args.dtype, device=args.device, peers=args.peers,
            repeats=args.repeats, max_time=args.max_time, quick=args.quick, threads=args.threads,
            coldstart_losses=[] if args.no_coldstart else args.coldstart, progress=not args.no_progress,
            isolate=not args.no_isolate,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        print(f"fastloss bench: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    report.print_report(bench)
    if args.json:
        report.write_json(bench, args.json)
    if args.csv:
        report.write_csv(bench, args.csv)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.format_markdown(bench))
    if args.plot:
        report.plot(bench, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastloss.bench", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
