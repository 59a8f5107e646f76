"""``noflylist eif build`` is deterministic, puts what Enclaver and nitro-cli put where they put
it, and its PCRs are the ones anyone measuring the EIF gets.

The proofs of issue 15, without Docker or a registry: two builds from two copies of the inputs
that differ in path, file mtimes, umask and time zone give the same EIF bytes; one changed
byte of our code changes PCR0 and PCR2 but not PCR1; ``measure`` agrees with the builder; GNU
cpio (an independent reader) finds the layout, owners and mtimes promised; and the
independent EIF writer, given the builder's sections, writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from noflylist.cli import main
from noflylist.tools import eif, eif_build, measure
from tests.support import eif_images as images
from tests.support import eif_writer as w

EPOCH = 1700000000
REPO = Path(__file__).resolve().parent.parent
NITRO_CMDLINE = (
    "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp "
    "i8042.dumbkbd random.trust_cpu=on\n"
)
ENTRYPOINT = ["/usr/local/bin/noflylist", "serve", "--attestation", "nsm"]
ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONPATH=/opt/noflylist"]
OUR_CODE = b"def screen(name):\n    return name in LIST\n"


def make_inputs(root: Path, code: bytes = OUR_CODE) -> eif_build.Inputs:
    """A small app image (base + our layer), an odyn image, a manifest and stand-in blobs."""
    base = images.layer_tar(
        [
            ("dir", "bin"),
            ("dir", "etc"),
            ("file", "etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            ("dir", "usr"),
            ("dir", "usr/bin"),
            ("file", "usr/bin/python3", b"\x7fELF py", 0o755),
            ("hardlink", "usr/bin/python3.11", "usr/bin/python3"),
            ("dir", "usr/sbin"),
            ("symlink", "sbin", "usr/sbin"),
            ("dir", "tmp", 0o1777),
            ("file", "etc/shadow", b"", 0o640),
            ("file", "etc/old", b"gone"),
        ],
        uid=7,
    )
    app = images.layer_tar(
        [
            ("dir", "opt"),
            ("dir", "opt/noflylist"),
            ("file", "opt/noflylist/decision.py", code),
            ("dir", "usr/local/bin"),
            ("file", "usr/local/bin/noflylist", b"#!/bin/sh\n", 0o755),
            ("whiteout", "etc/old"),
        ]
    )
    config = {"Entrypoint": ENTRYPOINT, "Cmd": [], "Env": ENV}
    images.write_layout(root / "app", [base, app], config=config, ref="noflylist")
    odyn = images.layer_tar([("file", "usr/local/bin/odyn", b"\x7fELF odyn" * 100, 0o755)])
    images.write_layout(root / "odyn", [odyn], config={"Entrypoint": ["/usr/local/bin/odyn"]})
    shutil.copy(REPO / "enclaver.yaml", root / "enclaver.yaml")
    blobs = root / "blobs"
    blobs.mkdir()
    (blobs / "bzImage").write_bytes(hashlib.sha512(b"kernel").digest() * 300)
    (blobs / "bzImage.config").write_text(
        "#\n# Automatically generated file; DO NOT EDIT.\n"
        "# Linux/x86_64 6.1.102 Kernel Configuration\n"
    )
    (blobs / "cmdline").write_text(NITRO_CMDLINE)
    (blobs / "init").write_bytes(b"\x7fELF init" * 50)
    (blobs / "nsm.ko").write_bytes(b"\x7fELF nsm" * 40)
    return eif_build.Inputs(root / "app", root / "odyn", root / "enclaver.yaml", blobs, EPOCH)


def copy_tree(source: Path, target: Path, *, umask: int, mtime: float) -> None:
    """Copy as a second checkout would: another path, umask and file times."""
    old = os.umask(umask)
    try:
        shutil.copytree(source, target, copy_function=shutil.copyfile)
    finally:
        os.umask(old)
    for path in [target, *target.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def moved(inputs: eif_build.Inputs, root: Path) -> eif_build.Inputs:
    return eif_build.Inputs(
        root / "app",
        root / "odyn",
        root / "enclaver.yaml",
        root / "blobs",
        inputs.source_date_epoch,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two builds from two copies of the inputs, and one with a byte of our code changed."""
    root = tmp_path_factory.mktemp("eif-build")
    inputs = make_inputs(root / "made")
    copy_tree(root / "made", root / "a", umask=0o022, mtime=1_000_000_000)
    copy_tree(root / "made", root / "copy-b", umask=0o077, mtime=981_173_106)
    results = {"a": eif_build.build(moved(inputs, root / "a"), root / "a.eif")}
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    try:
        results["b"] = eif_build.build(moved(inputs, root / "copy-b"), root / "b.eif")
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
    changed = bytearray(OUR_CODE)
    changed[4] ^= 0x20
    make_inputs(root / "changed", bytes(changed))
    results["changed"] = eif_build.build(moved(inputs, root / "changed"), root / "changed.eif")
    return {"root": root, **results}


def test_two_builds_from_two_copies_of_the_inputs_give_the_same_eif_bytes(built: dict) -> None:
    root = built["root"]
    assert (root / "a.eif").read_bytes() == (root / "b.eif").read_bytes()
    assert built["a"].measurements == built["b"].measurements
    assert built["a"].sha256 == hashlib.sha256((root / "a.eif").read_bytes()).hexdigest()


def test_one_changed_byte_of_our_code_moves_pcr0_and_pcr2_but_not_pcr1(built: dict) -> None:
    same, other = built["a"].measurements, built["changed"].measurements
    assert other.pcr1 == same.pcr1
    assert other.pcr0 != same.pcr0 and other.pcr2 != same.pcr2


def test_measure_agrees_with_the_builder(built: dict) -> None:
    found, _ = measure.measure(built["root"] / "a.eif")
    assert found.measurements == built["a"].measurements
    assert [s.kind for s in found.sections] == [
        "kernel",
        "cmdline",
        "metadata",
        "ramdisk",
        "ramdisk",
    ]
    assert found.cmdline == NITRO_CMDLINE.strip()


def sections(path: Path) -> dict[str, list[bytes]]:
    data, found = path.read_bytes(), eif.read(path)
    out: dict[str, list[bytes]] = {}
    for section in found.sections:
        start = section.offset + eif.SECTION_HEADER_BYTES
        out.setdefault(section.kind, []).append(data[start : start + section.size])
    return out


def test_the_independent_writer_given_the_builder_s_sections_writes_the_same_bytes(
    built: dict,
) -> None:
    parts = sections(built["root"] / "a.eif")
    pieces = w.nitro_layout(
        parts["kernel"][0], parts["cmdline"][0], parts["ramdisk"], metadata=parts["metadata"][0]
    )
    assert w.eif_bytes(pieces) == (built["root"] / "a.eif").read_bytes()


def newc_mtimes(archive: bytes) -> set[int]:
    """Every entry's c_mtime, read from the newc headers (buffer-format.rst), trailer excepted."""
    times, at = set(), 0
    while True:
        assert archive[at : at + 6] == b"070701"
        fields = [int(archive[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        name_end = at + 110 + fields[11]
        name = archive[at + 110 : name_end - 1]
        if name == b"TRAILER!!!":
            return times
        times.add(fields[5])
        data = name_end + (-name_end % 4)
        at = data + fields[6] + (-(data + fields[6]) % 4)


def cpio_listing(archive: bytes, tmp_path: Path) -> list[str]:
    listed = subprocess.run(
        ["cpio", "-t", "-v", "--numeric-uid-gid", "--quiet"],
        input=archive,
        capture_output=True,
        check=True,
    )
    return listed.stdout.decode().splitlines()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio (apt-get install cpio)")
def test_gnu_cpio_finds_nitro_cli_s_layout_with_owners_0_0_and_one_mtime(
    built: dict, tmp_path: Path
) -> None:
    parts = sections(built["root"] / "a.eif")
    boot, app = parts["ramdisk"]
    boot_list = cpio_listing(boot, tmp_path)
    assert [line.split()[-1] for line in boot_list] == ["dev", "init", "nsm.ko"]
    assert all(line.split()[0] in ("drwxr-xr-x", "-rwxr-xr-x") for line in boot_list)
    app_list = cpio_listing(app, tmp_path)
    names = [line.split(" -> ")[0].split()[-1] for line in app_list]
    assert names[0] == "rootfs" and names[-2:] == ["cmd", "env"]
    assert names[1:-2] == sorted(names[1:-2]) and all(n.startswith("rootfs/") for n in names[1:-2])
    for expected in (
        "rootfs/etc/enclaver/enclaver.yaml",
        "rootfs/usr/sbin/odyn",
        "rootfs/proc",
        "rootfs/opt/noflylist/decision.py",
    ):
        assert expected in names
    assert "rootfs/etc/old" not in names and "rootfs/sbin/odyn" not in names
    assert all(line.split()[2:4] == ["0", "0"] for line in app_list + boot_list)
    modes = {line.split(" -> ")[0].split()[-1]: line.split()[0] for line in app_list}
    assert modes["rootfs/tmp"] == "drwxr-xr-x"  # nitro-cli's 0755 wins, as in the kernel
    assert modes["rootfs/etc/shadow"] == "-rw-r-----"
    assert modes["rootfs/usr/bin/python3.11"].startswith("l")  # linuxkit: hard link -> symlink
    assert any(line.endswith("rootfs/usr/bin/python3.11 -> python3") for line in app_list)
    # One mtime: GNU cpio restores it on files (folders get the time of their last change).
    target = tmp_path / "x"
    target.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "-m", "--quiet", "--no-absolute-filenames"],
        input=app,
        cwd=target,
        check=True,
    )
    files = [p for p in target.rglob("*") if p.is_file() and not p.is_symlink()]
    assert {os.lstat(p).st_mtime for p in files} == {EPOCH}
    assert newc_mtimes(app) == newc_mtimes(boot) == {EPOCH}
    assert (target / "cmd").read_text() == "\n".join(eif_build.ODYN_COMMAND + ENTRYPOINT) + "\n"
    assert (target / "env").read_text() == "\n".join(ENV) + "\n"
    assert (target / "rootfs/etc/enclaver/enclaver.yaml").read_bytes() == (
        REPO / "enclaver.yaml"
    ).read_bytes()
    assert (target / "rootfs/usr/sbin/odyn").read_bytes() == b"\x7fELF odyn" * 100


def test_the_metadata_names_every_input_and_the_build_time_is_source_date_epoch(
    built: dict,
) -> None:
    found = eif.read(built["root"] / "a.eif")
    assert found.metadata is not None
    assert found.metadata["BuildMetadata"]["BuildTime"] == "2023-11-14T22:13:20+00:00"
    assert found.metadata["BuildMetadata"]["KernelVersion"] == "6.1.102"
    assert found.metadata["BuildMetadata"]["OperatingSystem"] == "Linux"
    described = found.metadata["CustomMetadata"]["NoflylistInputs"]
    blobs = built["root"] / "a/blobs"
    assert (
        described["Blobs"]["init.SHA384"]
        == hashlib.sha384((blobs / "init").read_bytes()).hexdigest()
    )
    assert described["App"]["ManifestDigest"].startswith("sha256:")
    assert described["SourceDateEpoch"] == EPOCH


def test_the_command_builds_prints_the_measurements_and_measure_prints_the_same(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = built["root"] / "a"
    argv = [
        "eif",
        "build",
        "--app",
        str(root / "app"),
        "--odyn",
        str(root / "odyn"),
        "--manifest",
        str(root / "enclaver.yaml"),
        "--blobs",
        str(root / "blobs"),
        "--output",
        str(tmp_path / "cli.eif"),
        "--source-date-epoch",
        str(EPOCH),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["Measurements"]["PCR0"] == built["a"].measurements.pcr0
    assert (tmp_path / "cli.eif").read_bytes() == (built["root"] / "a.eif").read_bytes()
    assert main(["measure", str(tmp_path / "cli.eif")]) == 0
    assert json.loads(capsys.readouterr().out)["Measurements"] == report["Measurements"]


def test_a_build_without_source_date_epoch_is_refused_with_the_fix(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    root = built["root"] / "a"
    argv = [
        "eif",
        "build",
        "--app",
        str(root / "app"),
        "--odyn",
        str(root / "odyn"),
        "--manifest",
        str(root / "enclaver.yaml"),
        "--output",
        str(tmp_path / "x.eif"),
    ]
    assert main(argv) == 1
    assert ".ci/image/inputs-epoch.sh" in capsys.readouterr().err


def test_a_missing_blob_or_an_odyn_image_without_odyn_is_refused(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    (inputs.blobs / "nsm.ko").unlink()
    with pytest.raises(eif_build.BuildError, match=r"nsm\.ko is missing"):
        eif_build.build(inputs, tmp_path / "x.eif")
    (inputs.blobs / "nsm.ko").write_bytes(b"nsm")
    shutil.rmtree(inputs.odyn)
    images.write_layout(inputs.odyn, [images.layer_tar([("file", "bin/other", b"")])])
    with pytest.raises(eif_build.BuildError, match="has no /usr/local/bin/odyn"):
        eif_build.build(inputs, tmp_path / "x.eif")
    assert not (tmp_path / "x.eif").exists()
