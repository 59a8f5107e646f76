"""Read a container image from an OCI image layout or an image archive, checking every digest.

The EIF build and ``noflylist measure`` take their images as files, because CI has no registry:
an OCI image layout (a folder, as ``skopeo copy ... oci:DIR:NAME`` or buildah write it), or a
tar of one (``oci-archive``), or a ``docker save`` archive (``docker-archive``: a
``manifest.json`` naming the config and the layer tars). Facts from the OCI image spec v1.1
(image-layout.md, manifest.md, config.md, descriptor.md) and Docker's image archive format
(moby ``image/tarexport``).

Every blob read is checked against its descriptor (SHA-256 and size) and every layer against
the config's ``rootfs.diff_ids``, so an image is what its manifest digest says it is: that
digest is what a build pins. Layers are plain or gzip tars (gzip is expanded into ``workdir``
once); zstd needs a library outside the standard library and is refused with the fix.
Documents are read with :mod:`enclave.strict_json` under a size limit; every failure is an
:class:`OCIError`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from enclave import strict_json
from enclave.errors import NoflylistError

#: Largest index, manifest or config accepted; real ones are a few KiB.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
#: Most layers in one image (Docker's own limit is 127).
MAX_LAYERS = 256
#: Most members in an archive's outer tar (one per blob and a few documents).
MAX_ARCHIVE_MEMBERS = 10_000
#: Blobs are hashed and copied in pieces of this size.
_CHUNK_BYTES = 1024 * 1024
_MANIFEST = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX = "application/vnd.oci.image.index.v1+json"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class OCIError(NoflylistError):
    """The image cannot be read, or a blob is not what its digest says."""


@dataclass(frozen=True)
class Blob:
    """``size`` bytes at ``offset`` in the file ``path``: a blob, a layer, or a file in one."""

    path: Path
    offset: int
    size: int

    def open(self) -> BinaryIO:
        """A read-only, seekable view of exactly these bytes."""
        return io.BufferedReader(_Window(self.path.open("rb"), self.offset, self.size))


@dataclass(frozen=True)
class Image:
    """One image: its digests, its config, and its layers as uncompressed tars, in order."""

    source: str
    manifest_digest: str | None
    config_digest: str
    config: dict[str, Any]
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]


def open_image(path: Path, workdir: Path) -> Image:
    """Read the image at ``path`` (layout folder, oci-archive or docker-archive tar)."""
    try:
        if path.is_dir():
            return _Layout(_Folder(path), str(path), workdir).image()
        with path.open("rb") as stream:
            stream.seek(257)
            if stream.read(5) != b"ustar":
                raise OCIError(f"{path} is neither an image layout folder nor a tar archive")
        archive = _Archive(path)
        if archive.has("manifest.json") and not archive.has("index.json"):
            return _docker_archive(archive, str(path), workdir)
        return _Layout(archive, str(path), workdir).image()
    except OCIError:
        raise
    except (OSError, tarfile.TarError, ValueError, EOFError, zlib.error) as exc:
        raise OCIError(f"cannot read the image {path}: {exc}") from None


class _Folder:
    """Files of an image layout folder, by relative name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def blob(self, name: str) -> Blob:
        path = self.root / name
        if not path.is_file():
            raise OCIError(f"{self.root}: {name} is missing")
        return Blob(path, 0, path.stat().st_size)


class _Archive:
    """Files of a tar archive (oci-archive or docker-archive), by member name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        with tarfile.open(path, "r:") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise OCIError(f"{path}: more than {MAX_ARCHIVE_MEMBERS} members")
                if member.isreg():
                    self.members[member.name.removeprefix("./")] = member

    def has(self, name: str) -> bool:
        return name in self.members

    def blob(self, name: str) -> Blob:
        member = self.members.get(name)
        if member is None:
            raise OCIError(f"{self.path}: {name} is missing from the archive")
        return Blob(self.path, member.offset_data, member.size)


def _read_document(blob: Blob, what: str) -> Any:
    if blob.size > MAX_DOCUMENT_BYTES:
        raise OCIError(f"{what} is {blob.size} bytes; at most {MAX_DOCUMENT_BYTES} are accepted")
    with blob.open() as stream:
        data = stream.read()
    try:
        return strict_json.loads(data, max_bytes=MAX_DOCUMENT_BYTES)
    except strict_json.JSONError as exc:
        raise OCIError(f"{what} is not valid JSON: {exc}") from None


def _sha256(blob: Blob) -> str:
    digest = hashlib.sha256()
    with blob.open() as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _field(document: Any, key: str, kind: type, what: str) -> Any:
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, kind):
        raise OCIError(f"{what} has no {key} ({kind.__name__})")
    return value


def _digest_of(descriptor: Any, what: str) -> str:
    digest = _field(descriptor, "digest", str, what)
    if not _DIGEST.fullmatch(digest):
        raise OCIError(f"{what}: digest {digest!r} is not sha256:<64 hex digits>")
    return str(digest)


class _Layout:
    """An OCI image layout, in a folder or a tar (image-layout.md)."""

    def __init__(self, files: _Folder | _Archive, source: str, workdir: Path) -> None:
        self.files, self.source, self.workdir = files, source, workdir

    def blob(self, descriptor: Any, what: str) -> tuple[str, Blob]:
        digest = _digest_of(descriptor, what)
        size = _field(descriptor, "size", int, what)
        blob = self.files.blob("blobs/sha256/" + digest.removeprefix("sha256:"))
        if blob.size != size or _sha256(blob) != digest:
            raise OCIError(
                f"{self.source}: blob {digest} does not match its descriptor "
                "(size or SHA-256): the layout is damaged"
            )
        return digest, blob

    def image(self) -> Image:
        index = _read_document(self.files.blob("index.json"), f"{self.source}: index.json")
        entries = _field(index, "manifests", list, "index.json")
        if len(entries) != 1:
            raise OCIError(
                f"{self.source} holds {len(entries)} images; copy the one to use "
                "into a layout of its own (skopeo copy oci:DIR:NAME oci:NEW:NAME)"
            )
        if isinstance(entries[0], dict) and entries[0].get("mediaType") == _INDEX:
            raise OCIError(
                f"{self.source} holds a multi-platform index; copy one platform "
                "(skopeo copy --override-arch ARCH docker://... oci:DIR:NAME)"
            )
        digest, blob = self.blob(entries[0], "index.json's image")
        manifest = _read_document(blob, f"manifest {digest}")
        if manifest.get("mediaType", _MANIFEST[0]) not in _MANIFEST:
            raise OCIError(f"manifest {digest} has media type {manifest.get('mediaType')!r}")
        config_digest, config_blob = self.blob(
            _field(manifest, "config", dict, "manifest"), "the config"
        )
        layers = [
            self.blob(layer, f"layer {n}")[1]
            for n, layer in enumerate(_field(manifest, "layers", list, "manifest"))
        ]
        return _finish(self.source, digest, config_digest, config_blob, layers, self.workdir)


def _docker_archive(archive: _Archive, source: str, workdir: Path) -> Image:
    """A ``docker save`` archive: manifest.json names the config and the layer tars."""
    entries = _read_document(archive.blob("manifest.json"), f"{source}: manifest.json")
    if not isinstance(entries, list) or len(entries) != 1:
        raise OCIError(f"{source}: manifest.json must name exactly one image (docker save ONE)")
    config_blob = archive.blob(_field(entries[0], "Config", str, "manifest.json"))
    layer_names = _field(entries[0], "Layers", list, "manifest.json")
    if not all(isinstance(name, str) for name in layer_names):
        raise OCIError(f"{source}: manifest.json's Layers must be file names")
    layers = [archive.blob(name) for name in layer_names]
    return _finish(source, None, _sha256(config_blob), config_blob, layers, workdir)


def _finish(
    source: str,
    manifest_digest: str | None,
    config_digest: str,
    config_blob: Blob,
    layers: list[Blob],
    workdir: Path,
) -> Image:
    """Read the config, expand gzip layers, and check each layer against its diff_id."""
    config = _read_document(config_blob, f"config {config_digest}")
    diff_ids = _field(_field(config, "rootfs", dict, "the config"), "diff_ids", list, "rootfs")
    if len(layers) > MAX_LAYERS or len(diff_ids) != len(layers):
        raise OCIError(
            f"{source}: {len(layers)} layers but {len(diff_ids)} diff_ids "
            f"(at most {MAX_LAYERS} layers)"
        )
    plain = []
    for number, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        layer = _uncompressed(layer, workdir / f"layer-{number}.tar", source)
        if not isinstance(diff_id, str) or _sha256(layer) != diff_id:
            raise OCIError(f"{source}: layer {number} does not match diff_id {diff_id!r}")
        plain.append(layer)
    return Image(source, manifest_digest, config_digest, config, tuple(plain), tuple(diff_ids))


def _uncompressed(layer: Blob, target: Path, source: str) -> Blob:
    with layer.open() as stream:
        magic = stream.read(4)
        if magic.startswith(_ZSTD):
            raise OCIError(
                f"{source}: a zstd layer; copy the image with uncompressed layers "
                "(skopeo copy --dest-oci-accept-uncompressed-layers)"
            )
        if not magic.startswith(_GZIP):
            return layer
        stream.seek(0)
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(fileobj=stream) as expanded, target.open("wb") as out:
            shutil.copyfileobj(expanded, out, _CHUNK_BYTES)
    return Blob(target, 0, target.stat().st_size)


class _Window(io.RawIOBase):
    """Bytes ``[offset, offset + size)`` of an open file, as a file of their own."""

    def __init__(self, stream: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self.stream, self.start, self.size, self.position = stream, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, target: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + target)
        return self.position

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        if count == 0:
            return 0
        self.stream.seek(self.start + self.position)
        data = self.stream.read(count)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()
