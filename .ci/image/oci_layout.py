"""Turn a root file system tar into a one-layer OCI image layout with a fixed digest.

CI has no container registry, so the test base (Debian's python3 from mmdebstrap) is made
locally and handed to buildah through ``skopeo copy oci:DIR ...``. Every byte of the layout
is a function of the tar and the arguments: the layer is stored uncompressed (no gzip
header or compressor version to vary), the JSON documents are written with sorted keys and
no spaces, and the creation time is the given ``SOURCE_DATE_EPOCH``. The same tar therefore
always gives the same manifest digest, which the Dockerfile's ``BASE`` can name.

Usage: ``oci_layout.py ROOTFS.tar OUT_DIR --epoch SECONDS [--arch amd64] [--name base]``;
prints the manifest digest (``sha256:…``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

#: Media types of the OCI image spec (image-spec v1.0, manifest.md and layer.md).
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER = "application/vnd.oci.image.layer.v1.tar"
#: Read the layer in pieces: a root file system is hundreds of MiB.
_CHUNK_BYTES = 1024 * 1024
#: Debian's default search path; python:3.12-slim sets the same with /usr/local first.
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _canonical(document: object) -> bytes:
    """JSON with sorted keys and no spaces: one document, one byte string."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _store_blob(blobs: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def _store_layer(blobs: Path, rootfs_tar: Path) -> tuple[str, int]:
    """Copy the tar into the blob store unchanged; return its digest and size."""
    hasher = hashlib.sha256()
    partial = blobs / "layer.partial"
    with rootfs_tar.open("rb") as source, partial.open("wb") as target:
        while chunk := source.read(_CHUNK_BYTES):
            hasher.update(chunk)
            target.write(chunk)
    digest = "sha256:" + hasher.hexdigest()
    size = partial.stat().st_size
    partial.rename(blobs / digest.removeprefix("sha256:"))
    return digest, size


def write_layout(rootfs_tar: Path, out_dir: Path, *, epoch: int, arch: str, name: str) -> str:
    """Write the layout into ``out_dir`` (replacing it) and return the manifest digest."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    blobs = out_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer_digest, layer_size = _store_layer(blobs, rootfs_tar)
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # image-spec config.md: the fields a runtime and buildah read; nothing host-specific.
    config = _canonical(
        {
            "architecture": arch,
            "os": "linux",
            "created": created,
            "config": {"Env": [f"PATH={_PATH}"], "Cmd": ["/bin/bash"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": created, "created_by": "mmdebstrap (.ci/image/make-base.sh)"}],
        }
    )
    config_digest = _store_blob(blobs, config)
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": _MANIFEST,
            "config": {"mediaType": _CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": _LAYER, "digest": layer_digest, "size": layer_size}],
        }
    )
    manifest_digest = _store_blob(blobs, manifest)
    # image-layout.md: the index names the one manifest; the ref name is what skopeo's
    # ``oci:DIR:NAME`` selects.
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
        ],
    }
    (out_dir / "index.json").write_bytes(_canonical(index))
    (out_dir / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs_tar", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH")
    parser.add_argument("--arch", default="amd64", help="OCI architecture (amd64, arm64)")
    parser.add_argument("--name", default="base", help="ref name inside the layout")
    args = parser.parse_args(argv)
    digest = write_layout(
        args.rootfs_tar, args.out_dir, epoch=args.epoch, arch=args.arch, name=args.name
    )
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
