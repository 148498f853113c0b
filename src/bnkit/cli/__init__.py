"""The ``bnkit`` command line: a thin shell over the library.

Exit codes: 0 success, 1 a check failed (e.g. an error-severity finding), 2 bnkit could not run
(a usage error, or a failure reported in one line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bnkit.cli import _explain, _inspect, _policies, _study
from bnkit.errors import BNKitError

__all__ = ["main"]

_COMMANDS = (_explain, _policies, _inspect, _study)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bnkit",
        description="BatchNorm that behaves exactly as you mean it to, and tells you what it did.",
    )
    from bnkit import __version__

    parser.add_argument("--version", action="version", version=f"bnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except BNKitError as err:
        print(f"bnkit {args.command}: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    return code
