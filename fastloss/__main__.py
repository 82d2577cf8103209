"""The ``fastloss`` command line: ``fastloss bench``, ``fastloss score``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastloss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version and the threading layer")
    args = parser.parse_args(argv)
    if args.command == "version":
        import fastloss

        print(f"fastloss {fastloss.__version__} (threading layer: {fastloss.threading_layer()})")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
