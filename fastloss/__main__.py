"""The ``fastloss`` command line: ``fastloss bench``, ``fastloss score``, ``fastloss cache``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastloss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version and the threading layer")
    from .bench.cli import add_arguments as add_bench_arguments  # light: imports nothing heavy

    add_bench_arguments(sub.add_parser("bench", help="benchmark the losses against naive NumPy and peers"))
    from . import _cli_score

    _cli_score.add_parser(sub)
    cache = sub.add_parser("cache", help="the on-disk cache of compiled kernels")
    cache.add_argument("action", choices=["info", "clear"],
                       help="info: its path, number of files and size; clear: delete fastloss's cached kernels")
    args = parser.parse_args(argv)
    if args.command == "version":
        import fastloss

        print(f"fastloss {fastloss.__version__} (threading layer: {fastloss.threading_layer()})")
        return 0
    if args.command == "bench":
        from .bench.cli import run_from_args

        return run_from_args(args)
    if args.command == "score":
        return _cli_score.run(args)
    if args.command == "cache":
        return _cache_command(args.action)
    return 2


def _cache_command(action: str) -> int:
    from . import _cache

    if action == "info":
        got = _cache.info()
    else:
        got = _cache.clear()
        print(f"removed {got['files']} files ({got['bytes'] / 2**20:.1f} MiB) from {got['path']}")
        return 0
    print(f"path:  {got['path']}")
    print(f"files: {got['files']}")
    print(f"size:  {got['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
