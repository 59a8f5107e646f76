"""``noflylist eif package``: the EIF as an Enclaver release image, byte for byte reproducible.

``enclaver build`` ends by wrapping the EIF in a "release image": the sleeve image (Enclaver's
``enclaver-wrapper-base``, whose entrypoint ``/usr/local/bin/enclaver-run`` starts the enclave)
plus ``/enclave/enclaver.yaml`` and ``/enclave/application.eif``, copied in owned 0:0
(enclaver-io/enclaver ``enclaver/src/build.rs`` ``package_eif``, ``constants.rs``
``RELEASE_BUNDLE_DIR``; ``images.rs`` ``append_layer`` turns that into a Dockerfile of
``COPY --chown=0:0`` lines over ``FROM <sleeve>``, with no ENTRYPOINT, so the sleeve's
entrypoint, command and labels stay as they are). ``enclaver-run`` reads exactly those two
paths (``enclaver/src/run.rs``). Docker stamps that image with the build time; this module
writes the same image as an OCI image layout (OCI image spec v1.1: image-layout.md,
manifest.md, config.md, layer.md) from files only, with nothing of the machine or the moment
in it:

* the base is an OCI layout of the sleeve image copied by digest, and that digest must be the
  one ``enclaver.yaml`` pins in ``sources.sleeve``: the layout's own index names it. A pinned
  multi-platform index (``skopeo copy --multi-arch=all``) is accepted, and the platform of the
  EIF's architecture is taken from it; a layout whose top digest is another is refused;
* the base's layer blobs are copied unchanged (their digests checked), so the release image
  shares them, as a ``FROM`` does;
* one new top layer (Docker writes one per ``COPY``; the files, their places, owners and modes
  are what ``enclaver-run`` sees either way): ``enclave/`` 0755, then
  ``enclave/application.eif`` and ``enclave/enclaver.yaml`` 0644 (Docker's ``COPY`` keeps the
  source files' modes, and nitro-cli and an editor write 0644), owners 0:0 with empty names,
  mtime ``SOURCE_DATE_EPOCH``, in that fixed order, PAX tar;
* that layer is gzip, written here with fixed header fields (no file name, mtime 0, OS 255,
  level 6): uncompressed, containers/image (skopeo, podman) would compress it on the first
  copy to a registry or another layout, giving a digest nobody can predict; gzip layers are
  copied as they are, so the digest written here is the one pushed. Its bytes depend on the
  deflate implementation (zlib's output has been stable across its releases; zlib-ng's
  differs), which is reported; the layer's diff_id, and the EIF in it, do not;
* the config is the base's, with ``created`` and a history entry at ``SOURCE_DATE_EPOCH`` and
  the new diff_id appended (a base without history gets none); the manifest lists the base's
  layers then ours, and names the base (``org.opencontainers.image.base.name``/``.digest``,
  annotations.md); ``index.json`` names it ``target`` from ``enclaver.yaml``.

The same base, EIF, manifest and epoch give the same bytes in every file of the layout.
Every failure is a :class:`ReleaseError` naming the cause and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from enclave import strict_json
from enclave.errors import NoflylistError
from noflylist.tools import eif
from noflylist.tools.measure import RELEASE_EIF, RELEASE_MANIFEST

#: Largest enclaver.yaml read; ours is 4 KiB.
MAX_MANIFEST_BYTES = 1024 * 1024
#: Largest index, manifest or config of the base accepted; real ones are a few KiB.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
#: Most layers in the base (Docker's own limit is 127); the sleeve has a handful.
MAX_BASE_LAYERS = 127
#: Most entries in a multi-platform index (two platforms and their attestations).
MAX_INDEX_ENTRIES = 64
#: zlib's default level, which Docker and containers/image also use for gzip layers.
GZIP_LEVEL = 6
#: gzip header (RFC 1952 section 2.3): deflate, no flags, MTIME 0, XFL 0 (level 6), OS 255.
GZIP_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"
#: Modes of what the layer adds, as Docker's COPY gives them for files written 0644.
DIR_MODE, FILE_MODE = 0o755, 0o644
#: Blobs are hashed and copied in pieces of this size.
CHUNK_BYTES = 1024 * 1024
#: Written as the history entry's created_by, so `docker history` says what made the layer.
CREATED_BY = "noflylist eif package: COPY --chown=0:0 enclaver.yaml application.eif /enclave/"
#: The EIF's architecture (eif.EIF.arch) -> the OCI platform architecture of its sleeve.
PLATFORMS = {"x86_64": "amd64", "aarch64": "arm64"}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Layer media types a release image may carry: what `noflylist measure` and Docker read.
BASE_LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar", OCI_LAYER_GZIP)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PINNED = re.compile(r"(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})")
#: OCI ref.name (annotations.md): components of alphanumerics joined by - . _ : @ + or --.
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


class ReleaseError(NoflylistError):
    """The release image cannot be made from these inputs; the message says why and the fix."""


@dataclass(frozen=True)
class Inputs:
    """What goes into the release image; nothing else does."""

    sleeve: Path
    eif: Path
    manifest: Path
    source_date_epoch: int


@dataclass(frozen=True)
class Result:
    """What was written: the image's digests, the EIF's PCRs, and the inputs' digests."""

    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str
    measurements: eif.Measurements
    report: dict[str, Any]
    seconds: float


def package(inputs: Inputs, output: Path) -> Result:
    """Write the release image of ``inputs`` as an OCI image layout folder ``output``.

    ``output`` must not exist (or be an empty folder); it is written beside itself and renamed
    into place, so a failure leaves nothing half-written.
    """
    started = time.monotonic()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ReleaseError(f"{output} exists and is not an empty folder: remove it or name another")
    manifest_bytes = _read_small(inputs.manifest, "the Enclaver manifest")
    values = manifest_values(manifest_bytes, str(inputs.manifest))
    pinned = _pinned_sleeve(values, inputs.manifest)
    target = values.get("target", "")
    if not _REF_NAME.fullmatch(target):
        raise ReleaseError(
            f"{inputs.manifest}: target {target[:80]!r} is not an image name (e.g. "
            '"noflylist-enclave:latest"); the release image is named for it'
        )
    found = eif.read(inputs.eif)
    manifest_check = _manifest_in_eif(found, manifest_bytes, inputs)
    arch = PLATFORMS.get(found.arch)
    if arch is None:
        raise ReleaseError(f"{inputs.eif} is for {found.arch}; a sleeve exists for x86_64, aarch64")
    base = _Base(inputs.sleeve)
    platform_digest, base_manifest = base.platform_manifest(pinned, arch)
    config_descriptor = _descriptor(base_manifest, "config", dict, f"manifest {platform_digest}")
    base_config = base.document(config_descriptor, "the sleeve's config")
    if base_config.get("architecture") != arch or base_config.get("os") != "linux":
        raise ReleaseError(
            f"the sleeve {platform_digest} is for {base_config.get('os')}/"
            f"{base_config.get('architecture')}, the EIF for linux/{arch}"
        )
    base_layers = _descriptor(base_manifest, "layers", list, f"manifest {platform_digest}")
    diff_ids = _descriptor(
        _descriptor(base_config, "rootfs", dict, "the sleeve's config"), "diff_ids", list, "rootfs"
    )
    if len(base_layers) > MAX_BASE_LAYERS or len(diff_ids) != len(base_layers):
        raise ReleaseError(
            f"the sleeve {platform_digest} has {len(base_layers)} layers and {len(diff_ids)} "
            f"diff_ids (at most {MAX_BASE_LAYERS} layers): it is not an image to build on"
        )
    epoch = inputs.source_date_epoch
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        blobs = partial / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for number, layer in enumerate(base_layers):
            media = layer.get("mediaType") if isinstance(layer, dict) else None
            if media not in BASE_LAYER_TYPES:
                raise ReleaseError(
                    f"the sleeve's layer {number} is {media!r}; copy the sleeve with gzip or "
                    "plain layers (skopeo copy --multi-arch=all --preserve-digests ...)"
                )
            base.copy_blob(layer, f"layer {number}", blobs)
        layer_descriptor, diff_id, eif_digest = _write_layer(
            blobs, inputs.eif, found.size, manifest_bytes, epoch
        )
        config = _config(base_config, diff_id, epoch)
        config_out = _write_blob(blobs, _json(config), OCI_CONFIG)
        image_manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_out,
            "layers": [*base_layers, layer_descriptor],
            "annotations": {
                "org.opencontainers.image.base.digest": pinned[1],
                "org.opencontainers.image.base.name": f"{pinned[0]}@{pinned[1]}",
            },
        }
        manifest_out = _write_blob(blobs, _json(image_manifest), OCI_MANIFEST)
        entry = {**manifest_out, "annotations": {"org.opencontainers.image.ref.name": target}}
        (partial / "index.json").write_bytes(_json({"schemaVersion": 2, "manifests": [entry]}))
        (partial / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
        if output.exists():
            output.rmdir()
        os.replace(partial, output)
    except OSError as exc:
        raise ReleaseError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    report = {
        "Image": {
            "Path": str(output),
            "Name": target,
            "ManifestDigest": manifest_out["digest"],
            "ImageID": config_out["digest"],
            "Layer": {**layer_descriptor, "DiffID": diff_id},
        },
        "Sleeve": {
            "Pinned": f"{pinned[0]}@{pinned[1]}",
            "PlatformManifest": platform_digest,
            "Entrypoint": (base_config.get("config") or {}).get("Entrypoint"),
        },
        "EIF": {"Path": str(inputs.eif), "Size": found.size, "SHA256": eif_digest},
        "Manifest": manifest_check,
        "SourceDateEpoch": epoch,
        "Deflate": f"zlib {zlib.ZLIB_RUNTIME_VERSION}, level {GZIP_LEVEL}",
    }
    return Result(
        str(manifest_out["digest"]),
        str(config_out["digest"]),
        str(layer_descriptor["digest"]),
        diff_id,
        found.measurements,
        report,
        time.monotonic() - started,
    )


# -- enclaver.yaml ---------------------------------------------------------------------------


def manifest_values(data: bytes, name: str) -> dict[str, str]:
    """The scalars of an Enclaver manifest at the top level and one level down, by dotted key.

    Not a YAML parser: just enough of YAML's block style to read ``target`` and
    ``sources.sleeve`` from a file like ours (``key: value``, quoted or plain, comments,
    sequences skipped), refusing what it does not understand (tabs, flow collections,
    anchors, escapes, a repeated key) rather than guessing.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReleaseError(f"{name} is not UTF-8 text") from None
    values: dict[str, str] = {}
    parent: str | None = None
    child_indent: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if body.startswith("\t"):
            raise ReleaseError(f"{name} line {number}: a tab in the indentation (YAML refuses it)")
        if not body.strip() or body.startswith("#"):
            continue
        if indent == 0:
            parent, child_indent = None, None
            key, value = _key_value(body, name, number)
            if key is None:
                continue
            if value is None:
                parent = key
            else:
                _put(values, key, value, name, number)
        elif parent is not None and not body.startswith("-"):
            if child_indent is None:
                child_indent = indent
            if indent != child_indent:
                continue  # deeper than the keys read here
            key, value = _key_value(body, name, number)
            if key is not None and value is not None:
                _put(values, f"{parent}.{key}", value, name, number)
    return values


def _key_value(body: str, name: str, number: int) -> tuple[str | None, str | None]:
    """``key: scalar`` -> (key, scalar); ``key:`` -> (key, None); a list item -> (None, None)."""
    if body.startswith("-"):
        return None, None
    key, colon, rest = body.partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z0-9_]+", key):
        raise ReleaseError(f"{name} line {number}: expected `key: value`")
    rest = rest.strip()
    if not rest or rest.startswith("#"):
        return key, None
    if rest[0] in "{[&*!|>":
        raise ReleaseError(f"{name} line {number}: {key}'s value is not a plain or quoted scalar")
    if rest[0] in "\"'":
        end = rest.find(rest[0], 1)
        tail = rest[end + 1 :].strip() if end > 0 else "x"
        if end < 0 or (tail and not tail.startswith("#")) or "\\" in rest[1:end]:
            raise ReleaseError(f"{name} line {number}: {key}'s quoted value is not one we read")
        return key, rest[1:end]
    return key, rest.split(" #", 1)[0].strip()


def _put(values: dict[str, str], key: str, value: str, name: str, number: int) -> None:
    if key in values:
        raise ReleaseError(f"{name} line {number}: {key} is given twice")
    values[key] = value


def _pinned_sleeve(values: dict[str, str], path: Path) -> tuple[str, str]:
    """``sources.sleeve`` as (name, sha256 digest); a sleeve not pinned by digest is refused."""
    sleeve = values.get("sources.sleeve")
    match = _PINNED.fullmatch(sleeve or "")
    if match is None:
        raise ReleaseError(
            f"{path}: sources.sleeve must pin the sleeve image by digest "
            "(NAME@sha256:<64 hex digits>); without a pin, which sleeve a release holds "
            "depends on when it was built"
        )
    return match["name"], match["digest"]


def _manifest_in_eif(found: eif.EIF, manifest: bytes, inputs: Inputs) -> dict[str, Any]:
    """Compare the manifest with the one the EIF was built with, when its metadata says."""
    digest = hashlib.sha256(manifest).hexdigest()
    custom = (found.metadata or {}).get("CustomMetadata")
    built = custom.get("NoflylistInputs") if isinstance(custom, dict) else None
    inside = built.get("Manifest", {}).get("SHA256") if isinstance(built, dict) else None
    if inside is None:
        return {"SHA256": digest, "SameAsInEIF": "not checked: the EIF's metadata names none"}
    if inside != digest:
        raise ReleaseError(
            f"{inputs.eif} was built with an enclaver.yaml of SHA-256 {inside}, not "
            f"{inputs.manifest} ({digest}): enclaver-run would apply another manifest than "
            "odyn enforces inside; package with the manifest the EIF was built from"
        )
    return {"SHA256": digest, "SameAsInEIF": True}


# -- the base --------------------------------------------------------------------------------


class _Base:
    """The sleeve's OCI image layout folder, every blob read checked against its descriptor."""

    def __init__(self, root: Path) -> None:
        if not (root / "index.json").is_file():
            raise ReleaseError(
                f"{root} is not an OCI image layout (no index.json): copy the pinned sleeve "
                "with skopeo copy --multi-arch=all --preserve-digests docker://NAME@sha256:... "
                f"oci:{root}"
            )
        self.root = root

    def damaged(self, what: str, digest: str) -> ReleaseError:
        return ReleaseError(f"{self.root}: {what} is not the blob {digest}: the layout is damaged")

    def blob_path(self, descriptor: Any, what: str) -> tuple[str, int, Path]:
        digest = _descriptor(descriptor, "digest", str, what)
        size = _descriptor(descriptor, "size", int, what)
        if not _DIGEST.fullmatch(digest):
            raise ReleaseError(f"{self.root}: {what}'s digest {digest[:80]!r} is not sha256:<hex>")
        path = self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.is_file():
            raise ReleaseError(f"{self.root}: {what}'s blob {digest} is missing")
        return digest, size, path

    def document(self, descriptor: Any, what: str) -> Any:
        digest, size, path = self.blob_path(descriptor, what)
        if size > MAX_DOCUMENT_BYTES:
            raise ReleaseError(f"{self.root}: {what} is {size} bytes, at most {MAX_DOCUMENT_BYTES}")
        data = path.read_bytes()
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise self.damaged(what, digest)
        return _parse(data, f"{self.root}: {what}")

    def copy_blob(self, descriptor: Any, what: str, blobs: Path) -> None:
        digest, size, path = self.blob_path(descriptor, what)
        target = blobs / digest.removeprefix("sha256:")
        hasher, copied = hashlib.sha256(), 0
        with path.open("rb") as source, target.open("wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                hasher.update(chunk)
                copied += len(chunk)
                out.write(chunk)
        if copied != size or "sha256:" + hasher.hexdigest() != digest:
            raise self.damaged(what, digest)

    def platform_manifest(self, pinned: tuple[str, str], arch: str) -> tuple[str, Any]:
        """The manifest for linux/``arch``, from a layout whose top digest is the pinned one."""
        data = (self.root / "index.json").read_bytes()
        index = _parse(data, f"{self.root}/index.json")
        entries = _descriptor(index, "manifests", list, "index.json")
        if len(entries) != 1:
            raise ReleaseError(
                f"{self.root} holds {len(entries)} images; copy only the pinned sleeve into a "
                "layout of its own"
            )
        top = entries[0]
        digest = _descriptor(top, "digest", str, "index.json's image")
        media = top.get("mediaType") if isinstance(top, dict) else None
        if digest != pinned[1]:
            hint = (
                " (a copy without --multi-arch=all keeps one platform's manifest, whose digest "
                "is not the pinned index's)"
                if media == OCI_MANIFEST
                else ""
            )
            raise ReleaseError(
                f"the sleeve layout {self.root} is {digest}, but enclaver.yaml pins "
                f"sources.sleeve to {pinned[1]}{hint}: copy the pinned image "
                f"(skopeo copy --multi-arch=all --preserve-digests docker://{pinned[0]}@"
                f"{pinned[1]} oci:{self.root}), or re-pin odyn and sleeve together "
                "(docs/deploy.md)"
            )
        document = self.document(top, f"the pinned {digest}")
        kind = document.get("mediaType", media) if isinstance(document, dict) else None
        if kind == OCI_MANIFEST:
            return digest, document
        if kind != OCI_INDEX:
            raise ReleaseError(
                f"{self.root}: the pinned {digest} is {kind!r}, neither an OCI manifest nor an "
                "OCI index; copy it with skopeo copy --multi-arch=all --preserve-digests"
            )
        choices = _descriptor(document, "manifests", list, f"index {digest}")
        if len(choices) > MAX_INDEX_ENTRIES:
            raise ReleaseError(f"{self.root}: index {digest} lists over {MAX_INDEX_ENTRIES} images")
        matching = [
            entry
            for entry in choices
            if isinstance(entry, dict)
            and entry.get("mediaType") == OCI_MANIFEST
            and isinstance(entry.get("platform"), dict)
            and entry["platform"].get("os") == "linux"
            and entry["platform"].get("architecture") == arch
        ]
        if len(matching) != 1:
            raise ReleaseError(
                f"{self.root}: the pinned index {digest} has {len(matching)} manifests for "
                f"linux/{arch}, the EIF's platform; exactly one is needed"
            )
        chosen = _descriptor(matching[0], "digest", str, f"index {digest}'s linux/{arch}")
        manifest = self.document(matching[0], f"manifest {chosen} (linux/{arch})")
        if not isinstance(manifest, dict) or manifest.get("mediaType") != OCI_MANIFEST:
            raise ReleaseError(f"{self.root}: {chosen} is not an OCI image manifest")
        return chosen, manifest


# -- writing ---------------------------------------------------------------------------------


class _HashingGzip(io.RawIOBase):
    """A write-only stream: hashes what it is given (the diff_id) and writes it as gzip.

    gzip by hand (RFC 1952) rather than :mod:`gzip`, so that every header field is fixed here
    and the trailer's CRC-32 and size come from the same bytes that were hashed.
    """

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self.out, self.plain, self.packed = out, hashlib.sha256(), hashlib.sha256()
        self.crc, self.length, self.written = 0, 0, 0
        self.deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 8, 0)
        self._emit(GZIP_HEADER)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.plain.update(data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        self._emit(self.deflate.compress(data))
        return len(data)

    def finish(self) -> None:
        self._emit(self.deflate.flush())
        self._emit(struct.pack("<II", self.crc, self.length & 0xFFFFFFFF))

    def _emit(self, data: bytes) -> None:
        self.packed.update(data)
        self.written += len(data)
        self.out.write(data)


def _write_layer(
    blobs: Path, eif_path: Path, eif_size: int, manifest: bytes, epoch: int
) -> tuple[dict[str, Any], str, str]:
    """The top layer; return its descriptor, its diff_id and the SHA-256 of the EIF copied."""
    scratch = blobs / "layer.partial"
    eif_hash = hashlib.sha256()
    with scratch.open("wb") as out:
        sink = _HashingGzip(out)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_entry("enclave", tarfile.DIRTYPE, DIR_MODE, 0, epoch))
            with eif_path.open("rb") as source:
                hashed = _HashingReader(source, eif_hash)
                info = _entry(RELEASE_EIF, tarfile.REGTYPE, FILE_MODE, eif_size, epoch)
                tar.addfile(info, hashed)
            if hashed.count != eif_size:
                raise ReleaseError(f"{eif_path} changed while it was being packaged")
            info = _entry(RELEASE_MANIFEST, tarfile.REGTYPE, FILE_MODE, len(manifest), epoch)
            tar.addfile(info, io.BytesIO(manifest))
        sink.finish()
    digest = "sha256:" + sink.packed.hexdigest()
    scratch.rename(blobs / digest.removeprefix("sha256:"))
    descriptor = {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": sink.written}
    return descriptor, "sha256:" + sink.plain.hexdigest(), eif_hash.hexdigest()


class _HashingReader(io.RawIOBase):
    """Reads from ``source``, hashing and counting what passes."""

    def __init__(self, source: BinaryIO, digest: Any) -> None:
        super().__init__()
        self.source, self.digest, self.count = source, digest, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


def _entry(name: str, kind: bytes, mode: int, size: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _config(base: dict[str, Any], diff_id: str, epoch: int) -> dict[str, Any]:
    """The base's config with our layer, its creation time and history at the epoch."""
    when = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = dict(base)
    config["created"] = when
    rootfs = dict(base["rootfs"])
    rootfs["diff_ids"] = [*rootfs["diff_ids"], diff_id]
    config["rootfs"] = rootfs
    history = base.get("history")
    if isinstance(history, list):
        config["history"] = [*history, {"created": when, "created_by": CREATED_BY}]
    return config


def _write_blob(blobs: Path, data: bytes, media: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}


def _json(document: Any) -> bytes:
    """One fixed serialisation: compact, keys in the order given, UTF-8."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _parse(data: bytes, what: str) -> Any:
    try:
        return strict_json.loads(data, max_bytes=MAX_DOCUMENT_BYTES)
    except strict_json.JSONError as exc:
        raise ReleaseError(f"{what} is not valid JSON: {exc}") from None


def _descriptor(document: Any, key: str, kind: type, what: str) -> Any:
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ReleaseError(f"{what} has no {key} ({kind.__name__})")
    return value


def _read_small(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ReleaseError(f"{what} {path} is larger than {MAX_MANIFEST_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
