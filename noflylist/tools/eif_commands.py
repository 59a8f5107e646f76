"""The operator tools' subcommands of ``noflylist``: ``measure``, ``eif build``, ``eif package``.

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
        "bytes and PCRs. `eif package` wraps it in the release image `enclaver run` runs.",
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
    _add_epoch(build, "mtime of every file in the ramdisks and the build time")
    build.add_argument("--image-name", default="noflylist", help="ImageName in the metadata")
    pack = actions.add_parser(
        "package",
        help="wrap the EIF in an Enclaver release image (OCI layout), reproducibly",
        description="Write the release image `enclaver build` would (the sleeve, then "
        "/enclave/enclaver.yaml and /enclave/application.eif, owned 0:0) as an OCI image "
        "layout, with every time at SOURCE_DATE_EPOCH: the same inputs give the same bytes and "
        "digests. The sleeve must be the image enclaver.yaml pins in sources.sleeve.",
    )
    pack.add_argument(
        "--sleeve",
        type=Path,
        required=True,
        help="the pinned sleeve image as an OCI layout folder (skopeo copy --multi-arch=all "
        "--preserve-digests docker://NAME@sha256:... oci:DIR)",
    )
    pack.add_argument("--eif", type=Path, required=True, help="the EIF (noflylist eif build)")
    pack.add_argument(
        "--manifest", type=Path, required=True, help="the Enclaver manifest the EIF was built with"
    )
    pack.add_argument("--output", type=Path, required=True, help="the layout folder to write")
    _add_epoch(pack, "mtime of the files added and the image's creation time")
    return {"measure": _measure, "eif": _eif}


def _add_epoch(parser: argparse.ArgumentParser, what: str) -> None:
    """``--source-date-epoch``, for both actions; unset, :func:`_epoch` reads the variable."""
    parser.add_argument(
        "--source-date-epoch", type=int, default=None, help=f"{what} [SOURCE_DATE_EPOCH]"
    )


def _measure(args: argparse.Namespace) -> int:
    from noflylist.tools.measure import describe, measure

    found, source = measure(args.file)
    sys.stdout.write(describe(found, source, nitro_cli_only=args.nitro_cli) + "\n")
    return 0


def _eif(args: argparse.Namespace) -> int:
    return _eif_package(args) if args.eif_command == "package" else _eif_build(args)


def _epoch(args: argparse.Namespace) -> int:
    """--source-date-epoch, or SOURCE_DATE_EPOCH; neither is a refusal naming both."""
    import os

    from noflylist.tools.eif_build import BuildError

    if args.source_date_epoch is not None:
        return int(args.source_date_epoch)
    text = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not text.isascii() or not text.isdigit():
        raise BuildError(
            "set --source-date-epoch or SOURCE_DATE_EPOCH (seconds; the time of the last "
            "commit that changed the image's inputs: .ci/image/inputs-epoch.sh)"
        )
    return int(text)


def _eif_build(args: argparse.Namespace) -> int:
    import json

    from noflylist.tools.eif_build import Inputs, build
    from noflylist.tools.measure import HASH_ALGORITHM

    epoch = _epoch(args)
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


def _eif_package(args: argparse.Namespace) -> int:
    import json

    from noflylist.tools.measure import HASH_ALGORITHM
    from noflylist.tools.release import Inputs, package

    result = package(Inputs(args.sleeve, args.eif, args.manifest, _epoch(args)), args.output)
    measurements = {
        "HashAlgorithm": HASH_ALGORITHM,
        "PCR0": result.measurements.pcr0,
        "PCR1": result.measurements.pcr1,
        "PCR2": result.measurements.pcr2,
    }
    if result.measurements.pcr8 is not None:
        measurements["PCR8"] = result.measurements.pcr8
    sys.stdout.write(json.dumps({"Measurements": measurements, **result.report}, indent=2) + "\n")
    print(
        f"noflylist eif package: wrote {args.output} ({result.manifest_digest}) "
        f"in {result.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0
