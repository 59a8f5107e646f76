"""Write an unsigned EIF exactly as nitro-cli's EifBuilder lays one out.

The format and the measurement are those of :mod:`noflylist.tools.eif` (which reads what this
writes, and checks it). Sections go in EifBuilder's order (``src/utils/mod.rs`` of
aws/aws-nitro-enclaves-image-format: kernel, cmdline, metadata, then the ramdisks), with its
defaults for memory and CPUs, which no PCR covers. The header is written last, once the CRC
is known; the bytes of every section pass once, in pieces, through the CRC and the hashes.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from noflylist.tools.eif import (
    CHUNK_BYTES,
    CMDLINE,
    CRC_OFFSET,
    DEFAULT_CPUS,
    DEFAULT_MEMORY_BYTES,
    FLAG_ARM64,
    HEADER,
    HEADER_BYTES,
    KERNEL,
    MAGIC,
    MAX_CMDLINE_BYTES,
    MAX_SECTIONS,
    METADATA,
    RAMDISK,
    SECTION_HEADER,
    SECTION_HEADER_BYTES,
    VERSION,
    EIFError,
    Measurements,
    extend,
)


def write(
    out: BinaryIO,
    *,
    kernel: Path,
    cmdline: str,
    ramdisks: list[Path],
    metadata: bytes,
    arch: str = "x86_64",
) -> tuple[Measurements, int]:
    """Write an unsigned EIF to ``out`` (seekable) as EifBuilder lays it out.

    Sections in nitro-cli's order (kernel, cmdline, metadata, ramdisks); returns the
    measurements and the CRC-32. The header goes last, once the CRC is known.
    """
    if not ramdisks:
        raise EIFError("an EIF needs at least one ramdisk")
    if arch not in ("x86_64", "aarch64"):
        raise EIFError(f"architecture {arch!r}: an EIF is x86_64 or aarch64")
    line = cmdline.encode("ascii")
    if len(line) > MAX_CMDLINE_BYTES or b"\0" in line:
        raise EIFError("the cmdline must be ASCII without NUL, at most 4096 bytes")
    parts: list[tuple[int, Path | bytes]] = [(KERNEL, kernel), (CMDLINE, line)]
    parts += [(METADATA, metadata)] + [(RAMDISK, ramdisk) for ramdisk in ramdisks]
    sizes = [len(part) if isinstance(part, bytes) else part.stat().st_size for _, part in parts]
    offsets, at = [], HEADER_BYTES
    for size in sizes:
        offsets.append(at)
        at += SECTION_HEADER_BYTES + size
    pad = [0] * (MAX_SECTIONS - len(parts))
    header = HEADER.pack(
        MAGIC,
        VERSION,
        FLAG_ARM64 if arch == "aarch64" else 0,
        DEFAULT_MEMORY_BYTES,
        DEFAULT_CPUS,
        0,
        len(parts),
        *offsets,
        *pad,
        *sizes,
        *pad,
        0,
        0,
    )
    crc = zlib.crc32(header[:CRC_OFFSET])
    image, boot, app = hashlib.sha384(), hashlib.sha384(), hashlib.sha384()
    out.seek(HEADER_BYTES)
    seen_ramdisk = False
    for (kind, part), size in zip(parts, sizes, strict=True):
        head = SECTION_HEADER.pack(kind, 0, size)
        out.write(head)
        crc = zlib.crc32(head, crc)
        targets = {KERNEL: [image, boot], CMDLINE: [image, boot], METADATA: []}.get(kind)
        if targets is None:
            targets = [image, app if seen_ramdisk else boot]
            seen_ramdisk = True
        for chunk in _chunks(part):
            out.write(chunk)
            crc = zlib.crc32(chunk, crc)
            for target in targets:
                target.update(chunk)
    out.seek(0)
    out.write(header[:CRC_OFFSET] + struct.pack(">I", crc))
    out.seek(0, 2)
    measured = Measurements(extend(image.digest()), extend(boot.digest()), extend(app.digest()))
    return measured, crc


def _chunks(part: Path | bytes) -> Iterator[bytes]:
    if isinstance(part, bytes):
        yield part
        return
    with part.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk
