"""The image check's own tools tell identical builds from different ones, and say why.

.ci/image/check.sh trusts two small programs: ``oci_layout.py`` (turns the registry-free
base's tar into an OCI layout with a fixed digest) and ``inspect_image.py`` (compares two
builds, audits one). These tests give them small hand-made layers, and let skopeo, an
independent reader of OCI layouts, read what ``oci_layout.py`` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parent.parent / ".ci" / "image"
EPOCH = 1686355200
GOOD_ENTRYPOINT = ["/usr/local/bin/noflylist", "serve", "--attestation", "nsm",
                   "--host", "127.0.0.1", "--port", "8001"]  # fmt: skip


def _load(name: str) -> ModuleType:
    """Import a script of .ci/image (not a package) under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"ci_image_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


oci_layout = _load("oci_layout")
inspect_image = _load("inspect_image")


def make_tar(path: Path, files: dict[str, bytes], *, mode: int = 0o644, mtime: int = EPOCH) -> Path:
    """A layer tar with the given files (and their parent folders), sorted, fixed owner."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        folders = sorted({str(Path(name).parent) for name in files} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), mode, mtime
            tar.addfile(info, io.BytesIO(files[name]))
    return path


APP = {
    "opt/noflylist/noflylist/__main__.py": b"from noflylist.cli import main\n",
    "opt/noflylist/enclave/nsm.py": b"# nsm\n",
    "usr/local/bin/noflylist": b"#!/bin/sh\n",
}


def layout(tmp_path: Path, name: str, files: dict[str, bytes], **tar_options: int) -> Path:
    tar = make_tar(tmp_path / f"{name}.tar", files, **tar_options)
    out = tmp_path / name
    oci_layout.write_layout(tar, out, epoch=tar_options.get("mtime", EPOCH), arch="amd64",
                            name="test")  # fmt: skip
    return out


def test_the_same_tar_gives_the_same_digest_and_the_blobs_are_named_by_their_hash(
    tmp_path: Path,
) -> None:
    tar = make_tar(tmp_path / "rootfs.tar", APP)
    first = oci_layout.write_layout(tar, tmp_path / "a", epoch=EPOCH, arch="amd64", name="base")
    second = oci_layout.write_layout(tar, tmp_path / "b", epoch=EPOCH, arch="amd64", name="base")
    assert first == second
    for blob in (tmp_path / "a" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    later = oci_layout.write_layout(tar, tmp_path / "c", epoch=EPOCH + 1, arch="amd64", name="b")
    assert later != first  # the config's creation time is part of the digest


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo: apt-get install skopeo")
def test_skopeo_reads_the_layout_with_the_digest_the_writer_printed(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "rootfs.tar", APP)
    digest = oci_layout.write_layout(tar, tmp_path / "base", epoch=EPOCH, arch="amd64",
                                     name="base")  # fmt: skip
    shown = subprocess.run(["skopeo", "inspect", f"oci:{tmp_path / 'base'}:base"],
                           capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    facts = json.loads(shown.stdout)
    assert facts["Digest"] == digest
    assert facts["Layers"] == ["sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()]
    assert facts["Architecture"] == "amd64"
    assert facts["Created"].startswith("2023-06-10T00:00:00")


def test_identical_builds_compare_equal(tmp_path: Path) -> None:
    a = inspect_image.load(layout(tmp_path, "a", APP))
    b = inspect_image.load(layout(tmp_path, "b", APP))
    assert inspect_image.compare(a, b) == []
    assert a.config_digest == b.config_digest


def test_a_umask_difference_is_reported_as_modes_naming_the_files(tmp_path: Path) -> None:
    a = inspect_image.load(layout(tmp_path, "a", APP, mode=0o644))
    b = inspect_image.load(layout(tmp_path, "b", APP, mode=0o600))
    report = "\n".join(inspect_image.compare(a, b))
    assert "config rootfs.diff_ids[0]" in report
    assert "mode differs in 3 files" in report
    assert "opt/noflylist/enclave/nsm.py: 0o644 != 0o600" in report
    assert "mtime differs" not in report


def test_a_clock_difference_is_reported_as_created_and_mtimes(tmp_path: Path) -> None:
    a = inspect_image.load(layout(tmp_path, "a", APP))
    b = inspect_image.load(layout(tmp_path, "b", APP, mtime=EPOCH + 60))
    report = "\n".join(inspect_image.compare(a, b))
    assert 'config created: "2023-06-10T00:00:00Z" != "2023-06-10T00:01:00Z"' in report
    assert "mtime differs in 6 files" in report  # the 3 files and their 3 folders


def test_an_extra_file_and_changed_content_are_named(tmp_path: Path) -> None:
    changed = {**APP, "opt/noflylist/enclave/nsm.py": b"# changed\n", "opt/noflylist/x.py": b""}
    a = inspect_image.load(layout(tmp_path, "a", APP))
    b = inspect_image.load(layout(tmp_path, "b", changed))
    report = "\n".join(inspect_image.compare(a, b))
    assert "2 files only in the second build" in report  # x.py and its new folder
    assert "      opt/noflylist/x.py" in report
    assert "content differs in 1 files" in report


def _as_built(image: object) -> object:
    """The layout's image with the configuration the Dockerfile gives."""
    pins = ["NOFLYLIST_ENVELOPE=s3://b/e.json", "NOFLYLIST_KEY_ID=arn:k"]
    config = {"config": {"Entrypoint": GOOD_ENTRYPOINT, "Env": pins}}
    return dataclasses.replace(image, config=config)  # type: ignore[type-var]


def test_the_audit_passes_an_image_that_keeps_the_dockerfiles_promises(tmp_path: Path) -> None:
    image = _as_built(inspect_image.load(layout(tmp_path, "good", APP)))
    assert inspect_image.audit(image) == []


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ("opt/noflylist/enclave/simulator/nsm.py", "must not ship"),
        ("opt/noflylist/noflylist/__pycache__/cli.cpython-312.pyc", "must not ship"),
        ("opt/noflylist/cryptography-48.0.0.dist-info/direct_url.json", "must not ship"),
        ("opt/noflylist/envelope.json", "an envelope or a list"),
        ("opt/noflylist/list.txt", "an envelope or a list"),
        ("opt/noflylist/noflylist/data/list.txt", "an envelope or a list"),
        ("opt/noflylist/noflylist/data/fold-1-tables.txt", "is not the committed file"),
        ("etc/hosts", "outside /opt/noflylist"),
    ],
)
def test_the_audit_names_what_must_not_be_in_the_image(
    tmp_path: Path, extra: str, complaint: str
) -> None:
    image = _as_built(inspect_image.load(layout(tmp_path, "bad", {**APP, extra: b"x"})))
    problems = inspect_image.audit(image)
    assert any(extra in problem and complaint in problem for problem in problems), problems


def test_the_audit_passes_the_committed_fold_tables(tmp_path: Path) -> None:
    committed = (TOOLS.parents[1] / "noflylist" / "data" / "fold-1-tables.txt").read_bytes()
    files = {**APP, "opt/noflylist/noflylist/data/fold-1-tables.txt": committed}
    image = _as_built(inspect_image.load(layout(tmp_path, "tables", files)))
    assert inspect_image.audit(image) == []


def test_the_audit_names_a_wrong_entrypoint_a_cmd_and_a_missing_pin(tmp_path: Path) -> None:
    image = inspect_image.load(layout(tmp_path, "config", APP))  # oci_layout's Cmd, no pins
    problems = "\n".join(inspect_image.audit(image))
    assert "entrypoint is None" in problems
    assert "Cmd is ['/bin/bash']" in problems
    assert "NOFLYLIST_KEY_ID is not set" in problems
