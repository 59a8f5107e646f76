"""``noflylist measure FILE``: the PCRs of an EIF, printed as ``nitro-cli describe-eif`` does.

FILE is an EIF, or an Enclaver release image (an OCI image layout folder, or an oci-archive or
docker-archive tar) with its EIF at ``/enclave/application.eif``, where ``enclaver build``
puts it (enclaver-io/enclaver ``enclaver/src/constants.rs``: ``RELEASE_BUNDLE_DIR`` and
``EIF_FILE_NAME``; ``enclaver/src/build.rs``: ``package_eif``).

The output is one JSON document. Its first keys are those of ``nitro-cli describe-eif``, in
its order and form (aws/aws-nitro-enclaves-cli ``src/common/json_output.rs``:
``EifDescribeInfo``, ``MetadataDescribeInfo``; ``src/lib.rs``: ``describe_eif``; printed with
``serde_json::to_string_pretty``, two-space indents): ``EifVersion``, ``Measurements`` (with
``HashAlgorithm`` as sha2's Debug form, ``Sha384 { ... }``), ``IsSigned``, ``CheckCRC``,
``ImageName``, ``ImageVersion`` and ``Metadata``. Two of nitro-cli's keys for a signed EIF
are left out: ``SigningCertificate`` (OpenSSL's rendering of the certificate) and
``SignatureCheck`` (a COSE verification); PCR8 is given. ``CheckCRC`` is always true: a CRC
mismatch is an error here, not a flag. Last comes ``Read``, ours: what was read (the file or
the image and where in it, the sections with their offsets, sizes and SHA-384s). With
``nitro_cli_only`` it is left out, so the output can be compared with nitro-cli's by ``diff``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from enclave.errors import NoflylistError
from noflylist.tools import eif, layers, oci

#: Where `enclaver build` puts the EIF and the manifest in a release image.
RELEASE_EIF = "enclave/application.eif"
RELEASE_MANIFEST = "enclave/enclaver.yaml"
#: nitro-cli prints `format!("{:?}", Sha384::new())`: sha2's Debug hides the state.
HASH_ALGORITHM = "Sha384 { ... }"


class MeasureError(NoflylistError):
    """FILE is neither an EIF nor an image with one at /enclave/application.eif."""


def measure(path: Path) -> tuple[eif.EIF, dict[str, Any]]:
    """Read the EIF at ``path`` or in the image at ``path``; return it and where it came from."""
    if path.is_file():
        with path.open("rb") as stream:
            is_eif = stream.read(4) == eif.MAGIC
        if is_eif:
            return eif.read(path), {"File": str(path)}
    if not path.exists():
        raise MeasureError(f"{path} does not exist")
    with tempfile.TemporaryDirectory(prefix="noflylist-measure-") as work:
        image = oci.open_image(path, Path(work))
        tree = layers.merge(image.layers)
        blob = tree.file_data(RELEASE_EIF)
        if blob is None:
            raise MeasureError(
                f"{path} is an image without /{RELEASE_EIF}: not an Enclaver release image "
                "(give the EIF itself, or the image `enclaver build` made)"
            )
        with blob.open() as stream:
            found = eif.read_stream(stream, blob.size, f"{path}:/{RELEASE_EIF}")
        source: dict[str, Any] = {
            "Image": str(path),
            "ManifestDigest": image.manifest_digest,
            "ImageID": image.config_digest,
            "EIF": f"/{RELEASE_EIF}",
        }
        manifest = tree.file_data(RELEASE_MANIFEST)
        if manifest is not None:
            with manifest.open() as stream:
                digest = hashlib.sha256(stream.read()).hexdigest()
            source["Manifest"] = {"Path": f"/{RELEASE_MANIFEST}", "SHA256": digest}
        return found, source


def describe(found: eif.EIF, source: dict[str, Any], *, nitro_cli_only: bool = False) -> str:
    """The describe-eif JSON text for ``found`` (and ``Read`` unless ``nitro_cli_only``)."""
    measurements = {
        "HashAlgorithm": HASH_ALGORITHM,
        "PCR0": found.measurements.pcr0,
        "PCR1": found.measurements.pcr1,
        "PCR2": found.measurements.pcr2,
    }
    if found.measurements.pcr8 is not None:
        measurements["PCR8"] = found.measurements.pcr8
    document: dict[str, Any] = {
        "EifVersion": found.version,
        "Measurements": measurements,
        "IsSigned": found.measurements.pcr8 is not None,
        "CheckCRC": True,
    }
    if found.metadata is not None:
        build = found.metadata["BuildMetadata"]
        document["ImageName"] = found.metadata["ImageName"]
        document["ImageVersion"] = found.metadata["ImageVersion"]
        metadata: dict[str, Any] = {
            "BuildTime": build["BuildTime"],
            "BuildTool": build["BuildTool"],
            "BuildToolVersion": build["BuildToolVersion"],
            "OperatingSystem": build["OperatingSystem"],
            "KernelVersion": build["KernelVersion"],
            "DockerInfo": found.metadata["DockerInfo"],
        }
        custom = found.metadata["CustomMetadata"]
        if isinstance(custom, dict):  # serde(flatten): its keys join Metadata's
            metadata.update(custom)
        elif custom is not None:
            metadata["CustomMetadata"] = custom
        document["Metadata"] = metadata
    if not nitro_cli_only:
        document["Read"] = {
            **source,
            "Size": found.size,
            "Arch": found.arch,
            "DefaultMemoryMiB": found.default_memory_bytes // (1024 * 1024),
            "DefaultCPUs": found.default_cpus,
            "CRC32": f"{found.crc32:#010x}",
            "Cmdline": found.cmdline,
            "Sections": [
                {"Type": s.kind, "Offset": s.offset, "Size": s.size, "SHA384": s.sha384}
                for s in found.sections
            ],
        }
    return json.dumps(document, indent=2, ensure_ascii=False)
