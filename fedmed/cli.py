"""The ``fedmed`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fedmed",
        description="Privacy-aware federated statistics: servers hold private data, clients get aggregates.",
    )
    parser.add_argument("--version", action="version", version=f"fedmed {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="start two loopback servers, run a short analysis, print it and its plan")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run()
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
