"""``noflylist measure`` prints an EIF's PCRs as nitro-cli describe-eif does, from an EIF or
from the EIF inside an Enclaver release image in any of the three forms images travel in.

The EIFs come from the independent writer (tests/support/eif_writer.py); the image archives
other than the layout folder are made by skopeo, an independent tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from noflylist.cli import main
from noflylist.tools import measure, oci
from tests.support import eif_images as images
from tests.support import eif_writer as w

KERNEL, CMDLINE = b"kernel" * 100, b"console=ttyS0"
RAMDISKS = [b"boot" * 64, b"app" * 99]
MANIFEST_YAML = b"version: v1\nname: test\n"


def pcr(data: bytes) -> str:
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(data).digest()).hexdigest()


PCR0 = pcr(KERNEL + CMDLINE + b"".join(RAMDISKS))
PCR1 = pcr(KERNEL + CMDLINE + RAMDISKS[0])
PCR2 = pcr(RAMDISKS[1])


def sample_eif(custom: str | None = None) -> bytes:
    metadata = w.metadata_json("noflylist", "sha256:abc", custom)
    return w.eif_bytes(w.nitro_layout(KERNEL, CMDLINE, RAMDISKS, metadata=metadata))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["measure", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_measure_prints_the_keys_of_nitro_cli_describe_eif_in_its_order_and_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "app.eif").write_bytes(sample_eif('{"Commit":"0cd523b"}'))
    status, out, _ = run(capsys, str(tmp_path / "app.eif"), "--nitro-cli")
    assert status == 0
    # serde_json::to_string_pretty of EifDescribeInfo (aws-nitro-enclaves-cli json_output.rs)
    assert (
        out
        == f"""{{
  "EifVersion": 4,
  "Measurements": {{
    "HashAlgorithm": "Sha384 {{ ... }}",
    "PCR0": "{PCR0}",
    "PCR1": "{PCR1}",
    "PCR2": "{PCR2}"
  }},
  "IsSigned": false,
  "CheckCRC": true,
  "ImageName": "noflylist",
  "ImageVersion": "sha256:abc",
  "Metadata": {{
    "BuildTime": "2023-06-10T00:00:00+00:00",
    "BuildTool": "test-writer",
    "BuildToolVersion": "0",
    "OperatingSystem": "Linux",
    "KernelVersion": "6.1",
    "DockerInfo": null,
    "Commit": "0cd523b"
  }}
}}
"""
    )


def test_measure_also_says_what_it_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "app.eif").write_bytes(sample_eif())
    status, out, _ = run(capsys, str(tmp_path / "app.eif"))
    read = json.loads(out)["Read"]
    assert status == 0 and read["File"] == str(tmp_path / "app.eif")
    metadata_size = len(w.metadata_json("noflylist", "sha256:abc"))
    assert [(s["Type"], s["Size"]) for s in read["Sections"]] == [
        ("kernel", len(KERNEL)),
        ("cmdline", len(CMDLINE)),
        ("metadata", metadata_size),
        ("ramdisk", len(RAMDISKS[0])),
        ("ramdisk", len(RAMDISKS[1])),
    ]
    assert read["Sections"][0]["SHA384"] == hashlib.sha384(KERNEL).hexdigest()
    assert read["Cmdline"] == CMDLINE.decode() and read["Arch"] == "x86_64"
    assert read["Size"] == len(sample_eif()) and read["DefaultMemoryMiB"] == 1024


def test_measure_of_a_signed_eif_adds_pcr8_and_is_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_eif import self_signed_pem

    pem, der = self_signed_pem()
    pieces = w.nitro_layout(KERNEL, CMDLINE, RAMDISKS, signature=w.signature_section(pem, b"s"))
    (tmp_path / "signed.eif").write_bytes(w.eif_bytes(pieces, version=3))
    status, out, _ = run(capsys, str(tmp_path / "signed.eif"))
    document = json.loads(out)
    assert status == 0 and document["IsSigned"] is True and document["EifVersion"] == 3
    assert list(document["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2", "PCR8"]
    assert document["Measurements"]["PCR8"] == pcr(der)
    assert "Metadata" not in document and "ImageName" not in document


def test_a_corrupt_eif_is_one_line_on_stderr_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(sample_eif())
    data[-1] ^= 1
    (tmp_path / "bad.eif").write_bytes(bytes(data))
    status, out, err = run(capsys, str(tmp_path / "bad.eif"))
    assert (status, out) == (1, "")
    assert err.startswith("noflylist measure: ") and "CRC-32 mismatch" in err
    assert err.count("\n") == 1
    (tmp_path / "short.eif").write_bytes(sample_eif()[:600])
    assert run(capsys, str(tmp_path / "short.eif"))[2].count("truncated") == 1


def release_layout(path: Path, eif_data: bytes, *, compress: bool = False) -> str:
    sleeve = images.layer_tar(
        [
            ("dir", "usr"),
            ("dir", "usr/local"),
            ("dir", "usr/local/bin"),
            ("file", "usr/local/bin/enclaver-run", b"\x7fELF", 0o755),
        ]
    )
    bundle = images.layer_tar(
        [
            ("dir", "enclave"),
            ("file", "enclave/enclaver.yaml", MANIFEST_YAML),
            ("file", "enclave/application.eif", eif_data),
        ]
    )
    config = {"Entrypoint": ["/usr/local/bin/enclaver-run"]}
    return images.write_layout(path, [sleeve, bundle], config=config, compress=compress)


def test_measure_reads_the_eif_in_an_enclaver_release_image_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = release_layout(tmp_path / "release", sample_eif())
    status, out, _ = run(capsys, str(tmp_path / "release"))
    document = json.loads(out)
    assert status == 0 and document["Measurements"]["PCR0"] == PCR0
    assert document["Read"]["ManifestDigest"] == digest
    assert document["Read"]["EIF"] == "/enclave/application.eif"
    assert document["Read"]["Manifest"]["SHA256"] == hashlib.sha256(MANIFEST_YAML).hexdigest()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (apt-get install skopeo)")
@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_measure_reads_a_release_image_archive_that_skopeo_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], transport: str
) -> None:
    release_layout(tmp_path / "release", sample_eif(), compress=True)
    archive = tmp_path / "release.tar"
    target = f"{transport}:{archive}" + (":noflylist:test" if transport == "docker-archive" else "")
    source = "oci:" + str(tmp_path / "release") + ":image"
    subprocess.run(["skopeo", "copy", "--quiet", source, target], check=True)
    status, out, _ = run(capsys, str(archive))
    assert status == 0
    assert json.loads(out)["Measurements"] == {
        "HashAlgorithm": "Sha384 { ... }",
        "PCR0": PCR0,
        "PCR1": PCR1,
        "PCR2": PCR2,
    }


def test_measure_refuses_an_image_without_an_eif_and_names_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images.write_layout(tmp_path / "app", [images.layer_tar([("file", "etc/hosts", b"x")])])
    status, _, err = run(capsys, str(tmp_path / "app"))
    assert status == 1 and "without /enclave/application.eif" in err


def test_measure_finds_no_eif_that_a_later_layer_whited_out(tmp_path: Path) -> None:
    layers = [
        images.layer_tar([("file", "enclave/application.eif", sample_eif())]),
        images.layer_tar([("whiteout", "enclave/application.eif")]),
    ]
    images.write_layout(tmp_path / "gone", layers)
    with pytest.raises(measure.MeasureError, match="not an Enclaver release image"):
        measure.measure(tmp_path / "gone")


def test_measure_of_an_image_whose_blob_was_altered_is_refused(tmp_path: Path) -> None:
    release_layout(tmp_path / "release", sample_eif())
    blobs = sorted((tmp_path / "release/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = blobs[-1]
    data = bytearray(biggest.read_bytes())
    data[-600] ^= 1
    biggest.write_bytes(bytes(data))
    with pytest.raises(oci.OCIError, match="does not match its descriptor"):
        measure.measure(tmp_path / "release")


def test_measure_of_a_missing_or_foreign_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(measure.MeasureError, match="does not exist"):
        measure.measure(tmp_path / "none")
    (tmp_path / "text").write_bytes(b"hello" * 200)
    with pytest.raises(oci.OCIError, match="neither an image layout folder nor a tar"):
        measure.measure(tmp_path / "text")


def test_the_cli_without_the_tools_package_as_in_the_enclave_image_still_runs(
    tmp_path: Path,
) -> None:
    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "enclave", tmp_path / "enclave")
    shutil.copytree(
        repo / "noflylist",
        tmp_path / "noflylist",
        ignore=shutil.ignore_patterns("tools", "__pycache__"),
    )
    # -S: no site processing, so no editable install's finder can supply the missing tools
    # package from the checkout; the installed wheels (cryptography) come by PYTHONPATH.
    packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sorted(packages)]),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-S", "-P", "-m", "noflylist", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "serve" in done.stdout and "measure" not in done.stdout
