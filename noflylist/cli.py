"""The ``noflylist`` command line (also ``python -m noflylist``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from noflylist import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noflylist",
        description="Screen passengers against a secret no-fly list from inside a Nitro Enclave.",
    )
    parser.add_argument("--version", action="version", version=f"noflylist {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
