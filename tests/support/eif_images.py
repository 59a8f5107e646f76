"""Small container images for the EIF tests: layer tars and OCI image layouts, made here.

Written from the OCI image spec (image-layout.md, manifest.md, config.md), not from
``noflylist.tools.oci``, which reads them; skopeo, an independent reader, converts them into
the other archive forms in the tests. Every entry has a fixed owner and mtime unless a test
asks for others.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

EPOCH = 1686355200
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def layer_tar(entries: list[tuple[Any, ...]], *, mtime: int = EPOCH, uid: int = 0) -> bytes:
    """A layer tar. Entries: ``("file", name, data[, mode])``, ``("dir", name[, mode])``,
    ``("symlink", name, target)``, ``("hardlink", name, target)``, ``("whiteout", name)``
    (writes ``.wh.`` + the base name) and ``("opaque", folder)``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = mtime, uid, uid
            data = b""
            if kind == "file":
                data = rest[0]
                info.mode = rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, rest[0], 0o777
            elif kind == "hardlink":
                info.type, info.linkname, info.mode = tarfile.LNKTYPE, rest[0], 0o644
            elif kind == "whiteout":
                folder, _, base = name.rpartition("/")
                info.name = f"{folder}/.wh.{base}" if folder else f".wh.{base}"
            elif kind == "opaque":
                info.name = f"{name}/.wh..wh..opq"
            else:
                raise ValueError(kind)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(
    out: Path,
    layers: list[bytes],
    *,
    config: dict[str, Any] | None = None,
    compress: bool = False,
    ref: str = "image",
    architecture: str = "amd64",
    diff_ids: list[str] | None = None,
    stored: list[bytes] | None = None,
) -> str:
    """Write an OCI image layout of ``layers`` to ``out``; return its manifest digest.

    ``diff_ids`` and ``stored`` (the layer blobs as stored) replace the right ones, for
    layouts that are consistent in every digest but one a test chose.
    """
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors = []
    for number, layer in enumerate(layers):
        blob = gzip.compress(layer, mtime=0) if compress else layer
        if stored is not None:
            blob = stored[number]
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descriptors.append({"mediaType": media, **_blob(blobs, blob)})
    document = {
        "architecture": architecture,
        "os": "linux",
        "config": config if config is not None else {},
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids
            or ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers],
        },
    }
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_blob(blobs, json.dumps(document, sort_keys=True).encode()),
    }
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config_descriptor,
            "layers": descriptors,
        },
        sort_keys=True,
    ).encode()
    entry = {
        "mediaType": MANIFEST,
        **_blob(blobs, manifest),
        "annotations": {"org.opencontainers.image.ref.name": ref},
    }
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return str(entry["digest"])
