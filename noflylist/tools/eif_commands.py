"""The operator tools' subcommands of ``noflylist``: ``measure`` (and ``eif build``).

:mod:`noflylist.cli` adds these when the tools are installed; the enclave image has no
``noflylist.tools``, so there the commands are simply absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noflylist.cli import Handler


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
    eif = commands.add_parser(
        "eif",
        help="build the enclave's EIF deterministically (operator tool)",
        description="EIF tools. `eif build` makes the EIF that `enclaver build` would, from "
        "files only and with every mtime at SOURCE_DATE_EPOCH: the same inputs give the same "
        "bytes and PCRs.",
    )
    actions = eif.add_subparsers(dest="eif_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build the EIF from the app image, odyn, the manifest and nitro-cli's blobs",
        description="Print the measurements (as nitro-cli build-enclave does), the SHA-384 of "
        "each boot blob and the digest of every other input.",
    )
    build.add_argument("--app", type=Path, required=True, help="app image: OCI layout or archive")
    build.add_argument(
        "--odyn", type=Path, required=True, help="odyn image (OCI layout or archive) or odyn itself"
    )
    build.add_argument("--manifest", type=Path, required=True, help="the Enclaver manifest")
    build.add_argument(
        "--blobs",
        type=Path,
        default=Path("/usr/share/nitro_enclaves/blobs"),
        help="folder of nitro-cli's bzImage (or Image), cmdline, init and nsm.ko "
        "(default /usr/share/nitro_enclaves/blobs)",
    )
    build.add_argument("--output", type=Path, required=True, help="the EIF to write")
    build.add_argument(
        "--source-date-epoch",
        type=int,
        default=None,
        help="mtime of every file in the ramdisks and the build time [SOURCE_DATE_EPOCH]",
    )
    build.add_argument("--image-name", default="noflylist", help="ImageName in the metadata")
    return {"measure": _measure, "eif": _eif_build}


def _measure(args: argparse.Namespace) -> int:
    from noflylist.tools.measure import describe, measure

    found, source = measure(args.file)
    sys.stdout.write(describe(found, source, nitro_cli_only=args.nitro_cli) + "\n")
    return 0


def _eif_build(args: argparse.Namespace) -> int:
    import json
    import os

    from noflylist.tools.eif_build import BuildError, Inputs, build
    from noflylist.tools.measure import HASH_ALGORITHM

    epoch = args.source_date_epoch
    if epoch is None:
        text = os.environ.get("SOURCE_DATE_EPOCH", "")
        if not text.isascii() or not text.isdigit():
            raise BuildError(
                "set --source-date-epoch or SOURCE_DATE_EPOCH (seconds; the time of the last "
                "commit that changed the image's inputs: .ci/image/inputs-epoch.sh)"
            )
        epoch = int(text)
    inputs = Inputs(args.app, args.odyn, args.manifest, args.blobs, epoch, args.image_name)
    result = build(inputs, args.output)
    report = {
        "Measurements": {
            "HashAlgorithm": HASH_ALGORITHM,
            "PCR0": result.measurements.pcr0,
            "PCR1": result.measurements.pcr1,
            "PCR2": result.measurements.pcr2,
        },
        "Output": {"Path": str(args.output), "Size": result.size, "SHA256": result.sha256},
        "Inputs": result.inputs,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    print(
        f"noflylist eif build: wrote {args.output} ({result.size} bytes) in {result.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0
