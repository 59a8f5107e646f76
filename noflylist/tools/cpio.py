"""A deterministic writer of "newc" cpio archives, the format Linux unpacks into its initramfs.

Format (Linux ``Documentation/driver-api/early-userspace/buffer-format.rst``; the kernel's own
``usr/gen_init_cpio.c`` writes it the same way): each entry is the magic ``070701``, thirteen
8-digit hexadecimal fields (inode, mode, uid, gid, nlink, mtime, filesize, devmajor,
devminor, rdevmajor, rdevminor, namesize including its NUL, check = 0), the name and a NUL,
zeros up to a multiple of 4, the data, zeros up to a multiple of 4. The entry named
``TRAILER!!!`` ends the archive. Archives may be concatenated; an EIF's ramdisks are, in the
enclave's memory.

Nothing of the machine that writes an archive enters it: every entry has owner 0:0 and the
one mtime given (``SOURCE_DATE_EPOCH``), inodes are numbered in the order of writing from 1,
and the caller fixes that order. The same entries in the same order give the same bytes.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

from enclave.errors import NoflylistError
from noflylist.tools.oci import Blob

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
#: newc's size fields have 8 hex digits: no entry may be 4 GiB or more.
MAX_FIELD = 0xFFFFFFFF
_TYPES = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}
_CHUNK_BYTES = 1024 * 1024


class CpioError(NoflylistError):
    """An entry cannot be written in newc (too large, or a bad name or type)."""


class CpioWriter:
    """Writes entries to ``out`` in the order they are added; :meth:`close` adds the trailer."""

    def __init__(self, out: BinaryIO, *, mtime: int) -> None:
        if not 0 <= mtime <= MAX_FIELD:
            raise CpioError(f"mtime {mtime} does not fit newc's 32-bit field")
        self.out, self.mtime, self.inode, self.written = out, mtime, 0, 0

    def add(
        self,
        name: str,
        kind: str,
        mode: int,
        *,
        data: Blob | bytes | None = None,
        target: str = "",
        major: int = 0,
        minor: int = 0,
    ) -> None:
        """Add one entry; ``mode`` is the permission bits (0o7777), the type comes from ``kind``."""
        if kind not in _TYPES or mode & ~0o7777:
            raise CpioError(f"{name!r}: type {kind!r} with mode {mode:o} cannot be written")
        if not name or name.startswith("/") or "\0" in name:
            raise CpioError(f"{name!r}: a cpio name must be relative and without NUL")
        if kind == "symlink":
            data = target.encode("utf-8", "surrogateescape")
        payload = data if data is not None else b""
        size = payload.size if isinstance(payload, Blob) else len(payload)
        self.inode += 1
        self._header(name, _TYPES[kind] | mode, 2 if kind == "dir" else 1, size, major, minor)
        if isinstance(payload, Blob):
            with payload.open() as stream:
                left = size
                while left:
                    chunk = stream.read(min(left, _CHUNK_BYTES))
                    if not chunk:
                        raise CpioError(f"{name!r}: its source ended early")
                    self._write(chunk)
                    left -= len(chunk)
        else:
            self._write(payload)
        self._pad()

    def close(self) -> int:
        """Write the trailer; return the archive's size (a multiple of 4)."""
        self.inode = 0
        self._header(TRAILER, 0, 1, 0, 0, 0)
        self._pad()
        return self.written

    def _header(self, name: str, mode: int, links: int, size: int, major: int, minor: int) -> None:
        encoded = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (
            self.inode,
            mode,
            0,
            0,
            links,
            self.mtime,
            size,
            0,
            0,
            major,
            minor,
            len(encoded),
            0,
        )
        if max(fields) > MAX_FIELD or min(fields) < 0:
            raise CpioError(f"{name!r}: a field does not fit newc's 8 hex digits (size {size})")
        self._write(MAGIC + b"".join(b"%08X" % field for field in fields) + encoded)
        self._pad()

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _pad(self) -> None:
        self._write(b"\0" * (-self.written % 4))
