"""A second EIF writer for the tests, written from the format's definition, not from our code.

``noflylist.tools.eif`` reads and measures EIFs; if its reader and our builder shared a
misunderstanding, a round trip through both would not show it. This writer imports nothing
of ours. It lays out the bytes as aws/aws-nitro-enclaves-image-format defines them
(``src/defs/mod.rs``: EifHeader is 548 bytes, big-endian: magic ``.eif``, version u16, flags
u16, default_mem u64, default_cpus u64, reserved u16, num_sections u16, section_offsets
[u64; 32], section_sizes [u64; 32], unused u32, eif_crc32 u32; each section starts with a
12-byte EifSectionHeader: section_type u16, flags u16, section_size u64), and its CRC is
``crc32`` (ISO-HDLC) over the whole file but the CRC field (``EifBuilder::compute_crc``).

Every field can be overridden, so tests can write the malformed files a reader must refuse,
with a correct CRC unless a test asks for a wrong one.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import cbor2

TYPE_KERNEL, TYPE_CMDLINE, TYPE_RAMDISK, TYPE_SIGNATURE, TYPE_METADATA = 1, 2, 3, 4, 5


def _u(value: int, width: int) -> bytes:
    return value.to_bytes(width, "big")


@dataclass
class Piece:
    """One section: its type, its bytes, and the flags its section header carries."""

    kind: int
    data: bytes
    flags: int = 0


def eif_bytes(
    pieces: list[Piece],
    *,
    magic: bytes = b".eif",
    version: int = 4,
    flags: int = 0,
    default_mem: int = 1 << 30,
    default_cpus: int = 2,
    reserved: int = 0,
    unused: int = 0,
    num_sections: int | None = None,
    offsets: list[int] | None = None,
    sizes: list[int] | None = None,
    crc: int | None = None,
    trailer: bytes = b"",
) -> bytes:
    """The EIF holding ``pieces`` in this order; overrides make it malformed on purpose."""
    body = bytearray()
    real_offsets, real_sizes = [], []
    for piece in pieces:
        real_offsets.append(548 + len(body))
        real_sizes.append(len(piece.data))
        body += _u(piece.kind, 2) + _u(piece.flags, 2) + _u(len(piece.data), 8) + piece.data
    table_offsets = (offsets if offsets is not None else real_offsets) + [0] * 32
    table_sizes = (sizes if sizes is not None else real_sizes) + [0] * 32
    header = (
        magic
        + _u(version, 2)
        + _u(flags, 2)
        + _u(default_mem, 8)
        + _u(default_cpus, 8)
        + _u(reserved, 2)
        + _u(len(pieces) if num_sections is None else num_sections, 2)
        + b"".join(_u(offset, 8) for offset in table_offsets[:32])
        + b"".join(_u(size, 8) for size in table_sizes[:32])
        + _u(unused, 4)
    )
    assert len(header) == 544
    checksum = binascii.crc32(bytes(body), binascii.crc32(header)) if crc is None else crc
    return header + _u(checksum, 4) + bytes(body) + trailer


def metadata_json(name: str = "app", version: str = "1.0", custom: object = None) -> bytes:
    """An EifIdentityInfo as nitro-cli serialises it (serde_json, compact, field order)."""
    custom_json = "null" if custom is None else str(custom)
    return (
        f'{{"ImageName":"{name}","ImageVersion":"{version}","BuildMetadata":{{"BuildTime":'
        '"2023-06-10T00:00:00+00:00","BuildTool":"test-writer","BuildToolVersion":"0",'
        '"OperatingSystem":"Linux","KernelVersion":"6.1"},"DockerInfo":null,'
        f'"CustomMetadata":{custom_json}}}'
    ).encode()


def signature_section(certificate_pem: bytes, cose_sign1: bytes) -> bytes:
    """serde_cbor's form of ``Vec<PcrSignature>``: Vec<u8> fields become arrays of integers."""
    return cbor2.dumps(
        [{"signing_certificate": list(certificate_pem), "signature": list(cose_sign1)}]
    )


def nitro_layout(
    kernel: bytes,
    cmdline: bytes,
    ramdisks: list[bytes],
    *,
    metadata: bytes | None = None,
    signature: bytes | None = None,
) -> list[Piece]:
    """Sections in EifBuilder's order: kernel, cmdline, metadata, ramdisks, signature."""
    pieces = [Piece(TYPE_KERNEL, kernel), Piece(TYPE_CMDLINE, cmdline)]
    if metadata is not None:
        pieces.append(Piece(TYPE_METADATA, metadata))
    pieces += [Piece(TYPE_RAMDISK, ramdisk) for ramdisk in ramdisks]
    if signature is not None:
        pieces.append(Piece(TYPE_SIGNATURE, signature))
    return pieces
