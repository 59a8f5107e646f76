"""The simulator's state files, written whole or not at all (development and tests only)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

__all__ = ["PRIVATE_FILE_MODE", "PRIVATE_FOLDER_MODE", "shared_mode", "write_atomically"]

#: Only the owner may read or write the simulator's keys and state.
PRIVATE_FILE_MODE = 0o600
#: The folders that hold them are private to their owner too.
PRIVATE_FOLDER_MODE = 0o700
#: Permission bits that let the group or others in.
_SHARED_BITS = 0o077


def shared_mode(path: Path) -> int | None:
    """``path``'s permission bits if its group or others may use it, else ``None``."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & _SHARED_BITS else None


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` next to ``path`` with ``mode``, then rename it over ``path``, so readers
    never see half a file. The temporary name carries the process and thread, so two writers
    never share one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # neither the umask nor an old file widens it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
