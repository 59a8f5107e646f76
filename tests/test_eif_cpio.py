"""The newc writer's archives are read by GNU cpio (an independent reader) as written, and it
refuses what newc cannot hold instead of writing a corrupt ramdisk."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from noflylist.tools import oci
from noflylist.tools.cpio import CpioError, CpioWriter

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio")


def archive(tmp_path: Path) -> bytes:
    (tmp_path / "source").write_bytes(b"from a file" * 1000)
    out = io.BytesIO()
    cpio = CpioWriter(out, mtime=1234567890)
    cpio.add("d", "dir", 0o750)
    cpio.add("d/f", "file", 0o4755, data=b"abc")
    cpio.add("d/big", "file", 0o600, data=oci.Blob(tmp_path / "source", 5, 10995))
    cpio.add("d/l", "symlink", 0o777, target="../elsewhere")
    cpio.add("d/p", "fifo", 0o644)
    cpio.add("d/c", "char", 0o600, major=5, minor=1)
    size = cpio.close()
    assert size == len(out.getvalue()) and size % 4 == 0
    return out.getvalue()


def test_gnu_cpio_lists_every_entry_type_with_its_mode_owner_and_target(tmp_path: Path) -> None:
    listed = subprocess.run(
        ["cpio", "-t", "-v", "--numeric-uid-gid", "--quiet"],
        input=archive(tmp_path),
        capture_output=True,
        check=True,
    )
    lines = listed.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == [
        "drwxr-x---",
        "-rwsr-xr-x",
        "-rw-------",
        "lrwxrwxrwx",
        "prw-r--r--",
        "crw-------",
    ]
    assert all(line.split()[2:4] == ["0", "0"] for line in lines)
    assert lines[3].endswith("d/l -> ../elsewhere")
    assert "5," in lines[5] and lines[5].split()[5] == "1"


def test_gnu_cpio_extracts_the_contents_as_written(tmp_path: Path) -> None:
    data = archive(tmp_path)
    target = tmp_path / "x"
    target.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames", "--nonmatching", "d/c"],
        input=data,
        cwd=target,
        check=True,
    )
    assert (target / "d/f").read_bytes() == b"abc"
    assert (target / "d/big").read_bytes() == (b"from a file" * 1000)[5:11000]
    assert (target / "d/l").readlink() == Path("../elsewhere")


def test_what_newc_cannot_hold_is_refused(tmp_path: Path) -> None:
    cpio = CpioWriter(io.BytesIO(), mtime=0)
    with pytest.raises(CpioError, match="relative and without NUL"):
        cpio.add("/etc/passwd", "file", 0o644, data=b"")
    with pytest.raises(CpioError, match="relative and without NUL"):
        cpio.add("a\0b", "file", 0o644, data=b"")
    with pytest.raises(CpioError, match="cannot be written"):
        cpio.add("a", "file", 0o100644, data=b"")
    with pytest.raises(CpioError, match="cannot be written"):
        cpio.add("a", "socket", 0o644)
    with pytest.raises(CpioError, match="8 hex digits"):
        cpio.add("huge", "file", 0o644, data=oci.Blob(tmp_path / "none", 0, 1 << 32))
    with pytest.raises(CpioError, match="32-bit"):
        CpioWriter(io.BytesIO(), mtime=1 << 32)
