"""The operator tools' subcommands of ``noflylist``: ``measure`` (and ``eif build``).

:mod:`noflylist.cli` adds these when the tools are installed; the enclave image has no
``noflylist.tools``, so there the commands are simply absent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Handler]:
    """Add the tools' subcommands to ``commands``; return their handlers by name."""
    measure = commands.add_parser(
        "measure",
        help="print the PCRs of an EIF or of an Enclaver release image (as nitro-cli describe-eif)",
        description="Read an EIF (or the /enclave/application.eif of an Enclaver release image: "
        "an OCI layout folder, oci-archive or docker-archive tar), check it (version, sections, "
        "CRC-32) and print its measurements as `nitro-cli describe-eif` does, then what was read.",
    )
    measure.add_argument("file", type=Path, help="EIF, image layout folder or image archive")
    measure.add_argument(
        "--nitro-cli",
        action="store_true",
        help="print only the keys nitro-cli prints (to diff against its output)",
    )
    return {"measure": _measure}


def _measure(args: argparse.Namespace) -> int:
    from noflylist.tools.measure import describe, measure

    found, source = measure(args.file)
    sys.stdout.write(describe(found, source, nitro_cli_only=args.nitro_cli) + "\n")
    return 0
