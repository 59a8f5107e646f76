"""The Enclave Image Format (EIF): read one strictly, measure it, write one.

An EIF is what ``nitro-cli run-enclave`` boots: a 548-byte header, then sections, each a
12-byte section header and its bytes. Everything is big-endian. The facts below come from
aws/aws-nitro-enclaves-image-format (``src/defs/mod.rs``: the structures; ``src/utils/mod.rs``:
``EifBuilder``, ``get_pcrs``; ``src/utils/eif_reader.rs``: ``EifReader``) and are cross-checked
against QEMU's independent reader (``hw/core/eif.c``, ``read_eif_file``):

* header: magic ``.eif``, version (u16; 4 since the metadata section), flags (u16; bit 0 set
  for aarch64), default memory and CPUs (u64 each), reserved (u16), the number of sections
  (u16, at most 32), 32 section offsets and 32 section sizes (u64 each), unused (u32), and a
  CRC-32 (ISO-HDLC, zlib's) of every byte of the file except the CRC field itself;
* section header: type (u16: 1 kernel, 2 cmdline, 3 ramdisk, 4 signature, 5 metadata),
  flags (u16), size (u64); nitro-cli writes kernel, cmdline, metadata, ramdisks, signature;
* measurements: each PCR is one extend of a zero register, ``SHA-384(0^48 || SHA-384(data))``,
  where PCR0's data is kernel, cmdline and all ramdisks in file order, PCR1's kernel, cmdline
  and the first ramdisk, PCR2's the other ramdisks, PCR8's the DER form of the signing
  certificate. Headers, metadata and signature are not measured.

:func:`read` is stricter than either reader: the header's section table must describe the
sections exactly as they lie in the file (nitro-cli reads the file in order, QEMU follows the
table; when they agree, both boot and measure the same bytes), with nothing after them; each
field nitro-cli writes as zero must be zero; the CRC must match. Anything else is one
:class:`EIFError` that says what is wrong. Sections are hashed in pieces, so a file of any
size is read in bounded memory; only the small sections (cmdline, metadata, signature) are
held, each under a named limit.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from enclave import ber, cbor, strict_json
from enclave.errors import NoflylistError
from enclave.nsm_limits import PCR_BYTES

MAGIC = b".eif"
#: The version nitro-cli writes today; 2 added the CRC, 3 the signature, 4 the metadata.
VERSION = 4
#: Versions read: every one that has a CRC to check.
READABLE_VERSIONS = (2, 3, 4)
HEADER_BYTES = 548
SECTION_HEADER_BYTES = 12
MAX_SECTIONS = 32
FLAG_ARM64 = 0x1
KERNEL, CMDLINE, RAMDISK, SIGNATURE, METADATA = 1, 2, 3, 4, 5
SECTION_NAMES = {
    KERNEL: "kernel",
    CMDLINE: "cmdline",
    RAMDISK: "ramdisk",
    SIGNATURE: "signature",
    METADATA: "metadata",
}
#: nitro-cli's defaults for an image built without options (EifBuilder::new).
DEFAULT_MEMORY_BYTES = 1024 * 1024 * 1024
DEFAULT_CPUS = 2

#: Largest EIF read: far above any enclave's memory (nitro-cli wants 4x the EIF in RAM).
MAX_EIF_BYTES = 64 * 1024**3
#: Largest cmdline: Linux's COMMAND_LINE_SIZE is 2048 on x86 and 4096 on arm64.
MAX_CMDLINE_BYTES = 4096
#: Largest metadata section; nitro-cli's holds `docker inspect`, a few KiB.
MAX_METADATA_BYTES = 1024 * 1024
#: Largest signature section: one certificate and one COSE_Sign1, a few KiB as CBOR.
MAX_SIGNATURE_BYTES = 256 * 1024
#: Sections are hashed in pieces of this size.
CHUNK_BYTES = 1024 * 1024

#: EifHeader: magic, version, flags, default_mem, default_cpus, reserved, num_sections,
#: section_offsets[32], section_sizes[32], unused, eif_crc32 (the last field, so the CRC
#: covers the header up to CRC_OFFSET).
HEADER = struct.Struct(">4sHHQQHH32Q32QII")
#: EifSectionHeader: section_type, flags, section_size.
SECTION_HEADER = struct.Struct(">HHQ")
CRC_OFFSET = HEADER_BYTES - 4
#: A register before its first extend: all zero, SHA-384's size.
_ZERO_PCR = bytes(PCR_BYTES)
_METADATA_KEYS = ("ImageName", "ImageVersion", "BuildMetadata", "DockerInfo", "CustomMetadata")
_BUILD_KEYS = ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion")


class EIFError(NoflylistError):
    """The file is not an EIF this reader accepts (corrupt, truncated, or unknown layout)."""


def extend(digest: bytes) -> str:
    """The hex value of a zeroed SHA-384 PCR after one extend with ``digest``."""
    return hashlib.sha384(_ZERO_PCR + digest).hexdigest()


@dataclass(frozen=True)
class Section:
    """One section as found: its type name, where its header starts, its size and SHA-384."""

    kind: str
    offset: int
    size: int
    sha384: str


@dataclass(frozen=True)
class Measurements:
    """PCR0, PCR1, PCR2 (hex) and PCR8 (hex, only for a signed EIF)."""

    pcr0: str
    pcr1: str
    pcr2: str
    pcr8: str | None = None


@dataclass(frozen=True)
class EIF:
    """What :func:`read` found in an EIF; every field was checked."""

    version: int
    arch: str
    default_memory_bytes: int
    default_cpus: int
    size: int
    crc32: int
    sections: tuple[Section, ...]
    cmdline: str
    metadata: dict[str, Any] | None
    certificate_der: bytes | None
    measurements: Measurements


def read(path: Path) -> EIF:
    """Read and check the EIF at ``path``; any failure is an :class:`EIFError`."""
    try:
        with path.open("rb") as stream:
            size = path.stat().st_size
            return read_stream(stream, size, str(path))
    except OSError as exc:
        raise EIFError(f"cannot read the EIF {path}: {exc.strerror or exc}") from None


def read_stream(stream: BinaryIO, size: int, name: str) -> EIF:
    """Read an EIF of ``size`` bytes from ``stream`` (positioned at its start)."""
    try:
        return _Reader(stream, size, name).read()
    except EIFError:
        raise
    except (OSError, ValueError, OverflowError, struct.error) as exc:
        raise EIFError(f"{name}: cannot read it as an EIF: {exc}") from None


class _Reader:
    """One pass over the file: header, then each section, hashing as it goes."""

    def __init__(self, stream: BinaryIO, size: int, name: str) -> None:
        self.stream, self.size, self.name = stream, size, name
        self.crc = 0
        self.image, self.boot, self.app = hashlib.sha384(), hashlib.sha384(), hashlib.sha384()
        self.next_offset = HEADER_BYTES  # where the next section must start
        self.ramdisks = 0

    def fail(self, problem: str) -> EIFError:
        return EIFError(f"{self.name} is not a valid EIF: {problem}")

    def take(self, count: int, what: str) -> bytes:
        data = self.stream.read(count)
        if len(data) != count:
            raise self.fail(f"the file ends inside the {what} (truncated?)")
        return data

    def read(self) -> EIF:
        if self.size > MAX_EIF_BYTES:
            raise self.fail(f"{self.size} bytes is more than the {MAX_EIF_BYTES} accepted")
        if self.size < HEADER_BYTES:
            raise self.fail(f"{self.size} bytes is shorter than the {HEADER_BYTES}-byte header")
        header = self.take(HEADER_BYTES, "header")
        self.crc = zlib.crc32(header[:CRC_OFFSET])
        fields = HEADER.unpack(header)
        magic, version, flags, memory, cpus, reserved, count = fields[:7]
        offsets, sizes = fields[7:39], fields[39:71]
        unused, crc = fields[71], fields[72]
        if magic != MAGIC:
            raise self.fail(f"the magic is {magic!r}, not {MAGIC!r}")
        if version not in READABLE_VERSIONS:
            raise self.fail(f"version {version}; this reader knows {READABLE_VERSIONS}")
        if flags & ~FLAG_ARM64:
            raise self.fail(f"unknown header flags {flags:#06x} (only bit 0, aarch64, is defined)")
        if reserved or unused:
            raise self.fail("the header's reserved or unused field is not zero")
        if not 1 <= count <= MAX_SECTIONS:
            raise self.fail(f"{count} sections; an EIF has 1 to {MAX_SECTIONS}")
        if any(offsets[count:]) or any(sizes[count:]):
            raise self.fail(f"the section table has entries beyond its {count} sections")
        sections = [self.section(index, offsets[index], sizes[index]) for index in range(count)]
        end = offsets[count - 1] + SECTION_HEADER_BYTES + sizes[count - 1]
        if end != self.size or self.stream.read(1):
            raise self.fail(f"{self.size - end} bytes follow the last section")
        if crc != self.crc:
            raise self.fail(
                f"CRC-32 mismatch: the header says {crc:#010x}, the bytes give "
                f"{self.crc:#010x} (corrupt or modified file)"
            )
        return self.finish(version, flags, memory, cpus, sections)

    def section(self, index: int, offset: int, size: int) -> tuple[Section, bytes | None]:
        """Check and hash one section; return it, and its bytes if it is a small one."""
        if offset != self.next_offset:
            raise self.fail(
                f"section {index} is at offset {self.next_offset}, the table says {offset}"
            )
        head = self.take(SECTION_HEADER_BYTES, f"header of section {index}")
        self.crc = zlib.crc32(head, self.crc)
        kind, flags, length = SECTION_HEADER.unpack(head)
        if kind not in SECTION_NAMES:
            raise self.fail(f"section {index} has the unknown type {kind}")
        name = SECTION_NAMES[kind]
        if flags:
            raise self.fail(f"the {name} section (section {index}) has flags {flags:#06x}")
        if length != size:
            raise self.fail(
                f"the {name} section (section {index}) is {length} bytes, the "
                f"header's table says {size}"
            )
        if offset + SECTION_HEADER_BYTES + length > self.size:
            raise self.fail(f"the {name} section (section {index}) runs past the end (truncated?)")
        self.next_offset = offset + SECTION_HEADER_BYTES + length
        limit = {
            CMDLINE: MAX_CMDLINE_BYTES,
            METADATA: MAX_METADATA_BYTES,
            SIGNATURE: MAX_SIGNATURE_BYTES,
        }.get(kind)
        if limit is not None and length > limit:
            raise self.fail(f"the {name} section is {length} bytes; at most {limit} are accepted")
        digest = hashlib.sha384()
        kept = bytearray() if limit is not None else None
        targets = self.targets(kind)
        left = length
        while left:
            chunk = self.take(min(left, CHUNK_BYTES), f"{name} section")
            left -= len(chunk)
            self.crc = zlib.crc32(chunk, self.crc)
            digest.update(chunk)
            for target in targets:
                target.update(chunk)
            if kept is not None:
                kept += chunk
        found = Section(name, offset, length, digest.hexdigest())
        return found, bytes(kept) if kept is not None else None

    def targets(self, kind: int) -> list[Any]:
        """The PCR hashes a section of this type feeds (EifReader::from_eif)."""
        if kind in (KERNEL, CMDLINE):
            return [self.image, self.boot]
        if kind == RAMDISK:
            self.ramdisks += 1
            return [self.image, self.boot if self.ramdisks == 1 else self.app]
        return []

    def finish(
        self,
        version: int,
        flags: int,
        memory: int,
        cpus: int,
        found: list[tuple[Section, bytes | None]],
    ) -> EIF:
        kinds = [section.kind for section, _ in found]
        for name, least, most in (
            ("kernel", 1, 1),
            ("cmdline", 1, 1),
            ("ramdisk", 1, MAX_SECTIONS),
            ("metadata", 0, 1),
            ("signature", 0, 1),
        ):
            if not least <= kinds.count(name) <= most:
                raise self.fail(
                    f"{kinds.count(name)} {name} sections; an EIF has "
                    f"{least if least == most else f'{least} to {most}'}"
                )
        if kinds.index("ramdisk") < max(kinds.index("kernel"), kinds.index("cmdline")):
            raise self.fail("a ramdisk comes before the kernel or cmdline section")
        small = {section.kind: data for section, data in found if data is not None}
        try:
            cmdline = small["cmdline"].decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("the cmdline is not ASCII") from None
        metadata = _metadata(small["metadata"], self.fail) if "metadata" in small else None
        certificate = _certificate(small["signature"], self.fail) if "signature" in small else None
        measurements = Measurements(
            extend(self.image.digest()),
            extend(self.boot.digest()),
            extend(self.app.digest()),
            extend(hashlib.sha384(certificate).digest()) if certificate is not None else None,
        )
        return EIF(
            version,
            "aarch64" if flags & FLAG_ARM64 else "x86_64",
            memory,
            cpus,
            self.size,
            self.crc,
            tuple(section for section, _ in found),
            cmdline,
            metadata,
            certificate,
            measurements,
        )


def _metadata(data: bytes, fail: Any) -> dict[str, Any]:
    """The metadata section: nitro-cli's EifIdentityInfo as JSON, with all its fields."""
    try:
        document = strict_json.loads(data, max_bytes=MAX_METADATA_BYTES)
    except strict_json.JSONError as exc:
        raise fail(f"the metadata section is not JSON: {exc}") from None
    if not isinstance(document, dict) or sorted(document) != sorted(_METADATA_KEYS):
        raise fail(f"the metadata section must be an object with exactly {_METADATA_KEYS}")
    build = document["BuildMetadata"]
    if not isinstance(build, dict) or sorted(build) != sorted(_BUILD_KEYS):
        raise fail(f"the metadata's BuildMetadata must be an object with exactly {_BUILD_KEYS}")
    texts = [document["ImageName"], document["ImageVersion"], *build.values()]
    if not all(isinstance(text, str) for text in texts):
        raise fail("the metadata's names, versions and build fields must be strings")
    return document


def _certificate(data: bytes, fail: Any) -> bytes:
    """The DER signing certificate of the first PCR signature (what PCR8 measures).

    The section is serde_cbor's encoding of ``Vec<PcrSignature>``: an array of maps with
    ``signing_certificate`` (PEM) and ``signature`` (a COSE_Sign1), each a ``Vec<u8>``, which
    serde_cbor writes as an array of small integers (QEMU's reader requires that form too).
    """
    try:
        document = cbor.decode(data, max_items=2 * MAX_SIGNATURE_BYTES)
    except cbor.CBORError as exc:
        raise fail(f"the signature section is not CBOR: {exc}") from None
    if not isinstance(document, list) or not document or not isinstance(document[0], dict):
        raise fail("the signature section must be a non-empty array of PCR signatures")
    first = document[0]
    if sorted(str(key) for key in first) != ["signature", "signing_certificate"]:
        raise fail("a PCR signature must have exactly signing_certificate and signature")
    values = first["signing_certificate"]
    if not isinstance(values, list) or not all(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255
        for value in values
    ):
        raise fail("the signing certificate must be an array of bytes (serde_cbor's Vec<u8>)")
    pem = bytes(value for value in values if isinstance(value, int))
    lines = pem.strip().split(b"\n")
    if (
        len(lines) < 3
        or lines[0] != b"-----BEGIN CERTIFICATE-----"
        or lines[-1] != (b"-----END CERTIFICATE-----")
    ):
        raise fail("the signing certificate is not one PEM CERTIFICATE block")
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
        certificate = ber.decode(der)
    except (ValueError, ber.BERError) as exc:
        raise fail(f"the signing certificate's PEM does not hold DER: {exc}") from None
    if not certificate.constructed or len(certificate.children) != 3:
        raise fail("the signing certificate is not an X.509 Certificate SEQUENCE")
    return der
