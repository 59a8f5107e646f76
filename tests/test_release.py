"""``noflylist eif package`` writes the Enclaver release image reproducibly, with the files where
``enclaver-run`` reads them, on the sleeve that enclaver.yaml pins, and its EIF measures as the
EIF that went in.

The sleeve is a stand-in written here from the OCI image spec (a one-platform image, and a
two-platform index as ``skopeo copy --multi-arch=all`` keeps the pinned one); the EIF is built
by ``noflylist eif build`` from the stand-in inputs of tests/test_eif_build.py, and one comes
from the independent writer. Independent readers check the result: Python's and GNU tar's
listings of the layer, PyYAML for the manifest values, and skopeo (inspect, copy) when it is
installed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from noflylist.cli import main
from noflylist.tools import eif_build, measure, release
from tests.support import eif_images as images
from tests.support import eif_writer as w
from tests.test_eif_build import copy_tree, make_inputs

EPOCH = 1700000000
REPO = Path(__file__).resolve().parent.parent
SLEEVE_NAME = "public.ecr.aws/s2t1d4c6/enclaver-io/enclaver-wrapper-base"
ENCLAVER_RUN = ["/usr/local/bin/enclaver-run"]
LABELS = {"org.opencontainers.image.source": "https://github.com/enclaver-io/enclaver"}


def _blob(blobs: Path, data: bytes, media: str, **extra: Any) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data), **extra}


def _sleeve_image(blobs: Path, arch: str) -> dict[str, Any]:
    """One platform's sleeve, as buildx writes it: gzip layers, a config with history."""
    layers = [
        images.layer_tar([("dir", "lib64"), ("file", "lib64/ld-linux.so.2", arch.encode() * 9)]),
        images.layer_tar(
            [
                ("dir", "usr/local/bin"),
                ("file", "usr/local/bin/enclaver-run", b"\x7fELF run " + arch.encode(), 0o755),
            ]
        ),
    ]
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ENCLAVER_RUN, "Labels": LABELS, "WorkingDir": "/"},
        "created": "2025-01-02T03:04:05Z",
        "history": [
            {"created": "2025-01-02T03:04:05Z", "created_by": f"COPY {n} # buildkit"}
            for n in range(len(layers))
        ],
        "rootfs": {"type": "layers", "diff_ids": [images.sha256(layer) for layer in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": release.OCI_MANIFEST,
        "config": _blob(blobs, json.dumps(config).encode(), release.OCI_CONFIG),
        "layers": [
            _blob(blobs, gzip.compress(layer, mtime=0), release.OCI_LAYER_GZIP) for layer in layers
        ],
    }
    return _blob(
        blobs,
        json.dumps(manifest).encode(),
        release.OCI_MANIFEST,
        platform={"architecture": arch, "os": "linux"},
    )


def write_sleeve(out: Path, *, platforms: tuple[str, ...] = ("amd64",)) -> tuple[str, str]:
    """A sleeve layout; with several platforms, the top is their index. Return (top, amd64)."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    entries = [_sleeve_image(blobs, arch) for arch in platforms]
    amd64 = next(e["digest"] for e in entries if e["platform"]["architecture"] == "amd64")
    if len(entries) == 1:
        top = {key: value for key, value in entries[0].items() if key != "platform"}
    else:
        index = {"schemaVersion": 2, "mediaType": release.OCI_INDEX, "manifests": entries}
        top = _blob(blobs, json.dumps(index).encode(), release.OCI_INDEX)
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return top["digest"], amd64


def pin_sleeve(manifest: Path, digest: str) -> None:
    """enclaver.yaml with sources.sleeve pinned to ``digest``."""
    lines = manifest.read_text().splitlines(keepends=True)
    lines = [
        f'  sleeve: "{SLEEVE_NAME}@{digest}"\n' if line.startswith("  sleeve:") else line
        for line in lines
    ]
    manifest.write_text("".join(lines))


def make(root: Path, *, platforms: tuple[str, ...] = ("amd64",)) -> release.Inputs:
    """A sleeve, an enclaver.yaml pinning it, and the EIF `eif build` makes with that manifest."""
    built = make_inputs(root)
    top, _ = write_sleeve(root / "sleeve", platforms=platforms)
    pin_sleeve(built.manifest, top)
    eif_build.build(built, root / "app.eif")
    return release.Inputs(root / "sleeve", root / "app.eif", built.manifest, EPOCH)


def files(layout: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(layout)): path.read_bytes()
        for path in sorted(layout.rglob("*"))
        if path.is_file()
    }


def manifest_of(layout: Path) -> dict[str, Any]:
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return dict(json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text()))


def blob(layout: Path, descriptor: dict[str, Any]) -> bytes:
    return (layout / "blobs/sha256" / descriptor["digest"].split(":")[1]).read_bytes()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The release image packaged twice: from the inputs, and from a copy of them that differs
    in path, file times and umask, in another time zone."""
    root = tmp_path_factory.mktemp("release")
    inputs = make(root / "made")
    first = release.package(inputs, root / "one")
    copy_tree(root / "made", root / "copy", umask=0o077, mtime=981_173_106)
    other = release.Inputs(
        root / "copy/sleeve", root / "copy/app.eif", root / "copy/enclaver.yaml", EPOCH
    )
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    try:
        second = release.package(other, root / "two")
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
    return {"root": root, "inputs": inputs, "first": first, "second": second}


def test_packaging_twice_from_two_copies_of_the_inputs_gives_byte_identical_layouts(
    packaged: dict[str, Any],
) -> None:
    root = packaged["root"]
    one, two = files(root / "one"), files(root / "two")
    assert one == two
    assert packaged["first"].manifest_digest == packaged["second"].manifest_digest
    assert packaged["first"].report == {
        **packaged["second"].report,
        "Image": {**packaged["second"].report["Image"], "Path": str(root / "one")},
        "EIF": {**packaged["second"].report["EIF"], "Path": str(root / "made/app.eif")},
    }
    # The index names the manifest the result reports, whose bytes have that digest.
    digest = packaged["first"].manifest_digest
    assert hashlib.sha256(one[f"blobs/sha256/{digest.split(':')[1]}"]).hexdigest() in digest


def test_another_source_date_epoch_gives_other_digests_so_the_comparison_can_fail(
    packaged: dict[str, Any], tmp_path: Path
) -> None:
    inputs = packaged["inputs"]
    later = release.Inputs(inputs.sleeve, inputs.eif, inputs.manifest, EPOCH + 1)
    result = release.package(later, tmp_path / "later")
    assert result.diff_id != packaged["first"].diff_id
    assert result.manifest_digest != packaged["first"].manifest_digest
    assert result.measurements == packaged["first"].measurements  # the EIF is the same


def test_measure_of_the_release_image_prints_the_pcrs_of_the_eif(
    packaged: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", str(packaged["inputs"].eif)]) == 0
    of_eif = json.loads(capsys.readouterr().out)
    assert main(["measure", str(packaged["root"] / "one")]) == 0
    of_release = json.loads(capsys.readouterr().out)
    assert of_release["Measurements"] == of_eif["Measurements"]
    assert of_release["Read"]["ManifestDigest"] == packaged["first"].manifest_digest
    assert of_release["Read"]["Manifest"]["SHA256"] == hashlib.sha256(
        packaged["inputs"].manifest.read_bytes()
    ).hexdigest()
    assert packaged["first"].measurements.pcr0 == of_eif["Measurements"]["PCR0"]


def test_the_top_layer_holds_the_eif_and_manifest_where_enclaver_run_reads_them(
    packaged: dict[str, Any],
) -> None:
    layout = packaged["root"] / "one"
    manifest = manifest_of(layout)
    data = blob(layout, manifest["layers"][-1])
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    # gzip header (RFC 1952): no FNAME or other flag, MTIME 0, OS 255.
    assert data[:4] == b"\x1f\x8b\x08\x00" and data[4:8] == bytes(4) and data[9] == 255
    plain = gzip.decompress(data)
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == packaged["first"].diff_id
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.type, m.mode) for m in members] == [
            ("enclave", tarfile.DIRTYPE, 0o755),
            ("enclave/application.eif", tarfile.REGTYPE, 0o644),
            ("enclave/enclaver.yaml", tarfile.REGTYPE, 0o644),
        ]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
            (0, 0, "", "", EPOCH)
        }
        eif_file = tar.extractfile("enclave/application.eif")
        yaml_file = tar.extractfile("enclave/enclaver.yaml")
        assert eif_file is not None and yaml_file is not None
        assert eif_file.read() == packaged["inputs"].eif.read_bytes()
        assert yaml_file.read() == packaged["inputs"].manifest.read_bytes()
    # The sleeve's layers are the base's blobs, unchanged.
    sleeve = manifest_of(packaged["inputs"].sleeve)
    assert manifest["layers"][:-1] == sleeve["layers"]
    for layer in sleeve["layers"]:
        assert blob(layout, layer) == blob(packaged["inputs"].sleeve, layer)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_gnu_tar_lists_the_layer_with_owners_0_0_and_the_epoch(packaged: dict[str, Any]) -> None:
    layout = packaged["root"] / "one"
    path = layout / "blobs/sha256" / manifest_of(layout)["layers"][-1]["digest"].split(":")[1]
    listed = subprocess.run(
        ["tar", "-tvz", "--numeric-owner", "--full-time", "--utc", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["drwxr-xr-x", "-rw-r--r--", "-rw-r--r--"]
    assert {line.split()[1] for line in listed} == {"0/0"}
    assert {" ".join(line.split()[3:5]) for line in listed} == {"2023-11-14 22:13:20"}
    assert [line.split()[-1] for line in listed] == [
        "enclave/",
        "enclave/application.eif",
        "enclave/enclaver.yaml",
    ]


def test_the_config_keeps_the_sleeve_s_entrypoint_and_labels_and_dates_ours_at_the_epoch(
    packaged: dict[str, Any],
) -> None:
    layout = packaged["root"] / "one"
    manifest = manifest_of(layout)
    config = json.loads(blob(layout, manifest["config"]))
    sleeve_config = json.loads(
        blob(packaged["inputs"].sleeve, manifest_of(packaged["inputs"].sleeve)["config"])
    )
    assert config["config"] == sleeve_config["config"]  # what Enclaver's COPY lines leave
    assert config["config"]["Entrypoint"] == ENCLAVER_RUN and config["config"]["Labels"] == LABELS
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["history"][:-1] == sleeve_config["history"]
    assert config["history"][-1]["created"] == "2023-11-14T22:13:20Z"
    assert config["rootfs"]["diff_ids"] == [
        *sleeve_config["rootfs"]["diff_ids"],
        packaged["first"].diff_id,
    ]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    pinned = release.manifest_values(packaged["inputs"].manifest.read_bytes(), "m")
    assert manifest["annotations"]["org.opencontainers.image.base.name"] == pinned["sources.sleeve"]
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "noflylist-enclave:latest"
    }


def test_a_sleeve_whose_digest_differs_from_the_pin_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    inputs = make(tmp_path)
    shutil.rmtree(inputs.sleeve)
    other, _ = write_sleeve(inputs.sleeve, platforms=("arm64", "amd64"))
    pinned = release.manifest_values(inputs.manifest.read_bytes(), "m")["sources.sleeve"]
    with pytest.raises(release.ReleaseError) as refused:
        release.package(inputs, tmp_path / "out")
    message = str(refused.value)
    assert other in message and pinned.split("@")[1] in message
    assert "skopeo copy --multi-arch=all --preserve-digests docker://" + pinned in message
    assert not (tmp_path / "out").exists()


def test_one_platform_copied_out_of_the_pinned_index_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    root = tmp_path / "made"
    inputs = make(root, platforms=("amd64", "arm64"))
    # What `skopeo copy` without --multi-arch=all keeps: the amd64 manifest alone.
    _, amd64 = write_sleeve(tmp_path / "both", platforms=("amd64", "arm64"))
    index = json.loads((tmp_path / "both/index.json").read_text())
    index_blob = blob(tmp_path / "both", index["manifests"][0])
    entry = json.loads(index_blob)["manifests"][0]
    assert entry["digest"] == amd64
    index["manifests"] = [{k: v for k, v in entry.items() if k != "platform"}]
    (tmp_path / "both/index.json").write_text(json.dumps(index))
    single = release.Inputs(tmp_path / "both", inputs.eif, inputs.manifest, EPOCH)
    with pytest.raises(release.ReleaseError, match="without --multi-arch=all keeps one platform"):
        release.package(single, tmp_path / "out")


def test_a_pinned_multi_platform_index_gives_the_release_of_the_eif_s_platform(
    tmp_path: Path,
) -> None:
    inputs = make(tmp_path, platforms=("arm64", "amd64"))
    result = release.package(inputs, tmp_path / "out")
    _, amd64 = write_sleeve(tmp_path / "again", platforms=("arm64", "amd64"))
    assert result.report["Sleeve"]["PlatformManifest"] == amd64
    found, _ = measure.measure(tmp_path / "out")
    assert found.measurements == result.measurements
    manifest = manifest_of(tmp_path / "out")
    annotations = manifest["annotations"]
    top = json.loads((inputs.sleeve / "index.json").read_text())["manifests"][0]["digest"]
    assert annotations["org.opencontainers.image.base.digest"] == top


def test_an_eif_built_with_another_manifest_is_refused(tmp_path: Path) -> None:
    inputs = make(tmp_path)
    edited = tmp_path / "edited.yaml"
    edited.write_bytes(inputs.manifest.read_bytes() + b"# edited after the build\n")
    with pytest.raises(release.ReleaseError, match=r"built with an enclaver\.yaml of SHA-256"):
        release.package(
            release.Inputs(inputs.sleeve, inputs.eif, edited, EPOCH), tmp_path / "out"
        )


def test_an_eif_from_another_writer_is_packaged_without_the_manifest_check(
    tmp_path: Path,
) -> None:
    inputs = make(tmp_path)
    kernel, cmdline, ramdisks = b"kernel" * 50, b"console=ttyS0", [b"boot" * 9, b"app" * 30]
    (tmp_path / "other.eif").write_bytes(
        w.eif_bytes(w.nitro_layout(kernel, cmdline, ramdisks, metadata=w.metadata_json()))
    )
    other = release.Inputs(inputs.sleeve, tmp_path / "other.eif", inputs.manifest, EPOCH)
    result = release.package(other, tmp_path / "out")
    assert result.report["Manifest"]["SameAsInEIF"].startswith("not checked")
    image = hashlib.sha384(kernel + cmdline + b"".join(ramdisks)).digest()
    pcr0 = hashlib.sha384(bytes(48) + image).hexdigest()  # the formula, not our reader
    assert measure.measure(tmp_path / "out")[0].measurements.pcr0 == pcr0


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (f'  sleeve: "{SLEEVE_NAME}:latest"\n', "must pin the sleeve image by digest"),
        ("", "must pin the sleeve image by digest"),
        (f"  sleeve: {{image: {SLEEVE_NAME}}}\n", "not a plain or quoted scalar"),
    ],
)
def test_a_sleeve_not_pinned_by_digest_is_refused(tmp_path: Path, line: str, words: str) -> None:
    inputs = make(tmp_path)
    text = inputs.manifest.read_text().splitlines(keepends=True)
    text = [line if old.startswith("  sleeve:") else old for old in text]
    (tmp_path / "unpinned.yaml").write_text("".join(text))
    with pytest.raises(release.ReleaseError, match=words):
        release.package(
            release.Inputs(inputs.sleeve, inputs.eif, tmp_path / "unpinned.yaml", EPOCH),
            tmp_path / "out",
        )


def test_the_manifest_reader_agrees_with_pyyaml_on_our_enclaver_yaml() -> None:
    data = (REPO / "enclaver.yaml").read_bytes()
    ours, theirs = release.manifest_values(data, "enclaver.yaml"), yaml.safe_load(data)
    assert ours["sources.sleeve"] == theirs["sources"]["sleeve"]
    assert ours["sources.odyn"] == theirs["sources"]["odyn"]
    assert ours["target"] == theirs["target"]
    assert ours["defaults.memory_mb"] == str(theirs["defaults"]["memory_mb"])
    scalars = {key for key, value in theirs.items() if not isinstance(value, dict | list)}
    nested = {
        f"{key}.{inner}"
        for key, value in theirs.items()
        if isinstance(value, dict)
        for inner, item in value.items()
        if not isinstance(item, dict | list)
    }
    assert set(ours) == scalars | nested


def test_an_output_that_exists_is_refused_and_left_alone(
    packaged: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep").write_text("mine")
    with pytest.raises(release.ReleaseError, match="exists and is not an empty folder"):
        release.package(packaged["inputs"], tmp_path / "out")
    assert (tmp_path / "out/keep").read_text() == "mine"


def test_the_command_packages_and_prints_the_eif_s_measurements(
    packaged: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = packaged["inputs"]
    argv = [
        "eif",
        "package",
        "--sleeve",
        str(inputs.sleeve),
        "--eif",
        str(inputs.eif),
        "--manifest",
        str(inputs.manifest),
        "--output",
        str(tmp_path / "cli"),
        "--source-date-epoch",
        str(EPOCH),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["Image"]["ManifestDigest"] == packaged["first"].manifest_digest
    assert files(tmp_path / "cli") == files(packaged["root"] / "one")
    assert main(["measure", str(inputs.eif)]) == 0
    assert json.loads(capsys.readouterr().out)["Measurements"] == report["Measurements"]


def test_the_command_without_source_date_epoch_is_refused_with_the_fix(
    packaged: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    inputs = packaged["inputs"]
    argv = ["eif", "package", "--sleeve", str(inputs.sleeve), "--eif", str(inputs.eif)]
    argv += ["--manifest", str(inputs.manifest), "--output", str(tmp_path / "x")]
    assert main(argv) == 1
    assert ".ci/image/inputs-epoch.sh" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


SKOPEO = shutil.which("skopeo")


@pytest.mark.skipif(SKOPEO is None, reason="needs skopeo (apt-get install skopeo)")
def test_skopeo_inspects_the_release_image_and_copies_it_keeping_its_digest(
    packaged: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = packaged["root"] / "one"
    inspected = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{layout}"], capture_output=True, check=True
        ).stdout
    )
    assert inspected["Digest"] == packaged["first"].manifest_digest
    assert inspected["Architecture"] == "amd64" and inspected["Labels"] == LABELS
    assert inspected["Layers"][-1] == packaged["first"].layer_digest
    assert inspected["Created"] == "2023-11-14T22:13:20Z"
    # A copy as to a registry keeps the gzip layer as it is, so the digest is the one pushed.
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}", f"oci:{tmp_path / 'copy'}:x"], check=True
    )
    assert manifest_of(tmp_path / "copy") == manifest_of(layout)
    archive = tmp_path / "release.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}", f"docker-archive:{archive}:noflylist:x"],
        check=True,
    )
    found, _ = measure.measure(archive)
    assert found.measurements == packaged["first"].measurements

