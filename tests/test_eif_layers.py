"""Layers merge as a container runtime unpacks them (OCI image spec, layer.md), and image
files are read only when every digest matches.

The merge decides which bytes enter ramdisk_1, hence PCR0 and PCR2: a whiteout that did not
hide, or a file placed beside a symlinked folder instead of inside it, would put into the
enclave something other than what `docker run` of the same image shows.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from noflylist.tools import layers, oci
from tests.support import eif_images as images


def merged(tmp_path: Path, *layer_entries: list[tuple[object, ...]]) -> layers.Tree:
    blobs = []
    for number, entries in enumerate(layer_entries):
        path = tmp_path / f"layer{number}.tar"
        path.write_bytes(images.layer_tar(entries))
        blobs.append(oci.Blob(path, 0, path.stat().st_size))
    return layers.merge(blobs)


def content(tree: layers.Tree, path: str) -> bytes | None:
    blob = tree.file_data(path)
    if blob is None:
        return None
    with blob.open() as stream:
        return stream.read()


def test_an_upper_layer_replaces_a_file_and_a_whiteout_hides_a_lower_one(tmp_path: Path) -> None:
    tree = merged(
        tmp_path,
        [("dir", "etc"), ("file", "etc/a", b"old"), ("file", "etc/b", b"b"), ("dir", "etc/d"),
         ("file", "etc/d/x", b"x")],
        [("file", "etc/a", b"new", 0o600), ("whiteout", "etc/b"), ("whiteout", "etc/d")],
    )  # fmt: skip
    assert content(tree, "etc/a") == b"new" and tree.nodes["etc/a"].mode == 0o600
    assert "etc/b" not in tree.nodes and "etc/d" not in tree.nodes and "etc/d/x" not in tree.nodes


def test_a_whiteout_does_not_hide_an_entry_of_its_own_layer(tmp_path: Path) -> None:
    tree = merged(tmp_path, [("file", "a", b"1")], [("file", "a", b"2"), ("whiteout", "a")])
    assert content(tree, "a") == b"2"


def test_an_opaque_folder_keeps_only_what_its_own_layer_puts_there(tmp_path: Path) -> None:
    tree = merged(
        tmp_path,
        [("dir", "opt"), ("file", "opt/old", b"o"), ("dir", "opt/sub"), ("file", "opt/sub/s", b"")],
        [("dir", "opt", 0o700), ("opaque", "opt"), ("file", "opt/new", b"n")],
    )
    assert sorted(name for name in tree.nodes if name.startswith("opt")) == ["opt", "opt/new"]
    assert tree.nodes["opt"].mode == 0o700


def test_a_folder_over_a_folder_keeps_the_lower_contents_and_a_file_over_it_does_not(
    tmp_path: Path,
) -> None:
    tree = merged(
        tmp_path,
        [("dir", "a"), ("file", "a/x", b"x"), ("dir", "b"), ("file", "b/y", b"y")],
        [("dir", "a", 0o750), ("file", "b", b"now a file")],
    )
    assert content(tree, "a/x") == b"x" and tree.nodes["a"].mode == 0o750
    assert content(tree, "b") == b"now a file" and "b/y" not in tree.nodes


def test_an_entry_under_a_symlinked_folder_lands_where_the_link_points(tmp_path: Path) -> None:
    tree = merged(
        tmp_path,
        [("dir", "usr"), ("dir", "usr/sbin"), ("symlink", "sbin", "usr/sbin")],
        [("file", "sbin/odyn", b"odyn", 0o755)],
    )
    assert "sbin/odyn" not in tree.nodes and content(tree, "usr/sbin/odyn") == b"odyn"
    assert content(tree, "sbin/odyn") == b"odyn"  # through the link, as a reader sees it
    assert tree.resolve("sbin/odyn") == "usr/sbin/odyn"


def test_symlinks_resolve_inside_the_tree_and_loops_are_refused(tmp_path: Path) -> None:
    tree = merged(
        tmp_path,
        [("dir", "a"), ("symlink", "a/up", "../../../etc"), ("symlink", "abs", "/a"),
         ("symlink", "loop", "loop")],
    )  # fmt: skip
    assert tree.resolve("a/up/passwd") == "etc/passwd"
    assert tree.resolve("abs/up", follow_last=True) == "etc"
    with pytest.raises(layers.LayerError, match="too many symlinks"):
        tree.resolve("loop/x")


def test_parents_no_layer_names_are_made_as_0755_folders(tmp_path: Path) -> None:
    tree = merged(tmp_path, [("file", "opt/app/run", b"#!", 0o755)])
    assert tree.nodes["opt"] == layers.Node("dir", 0o755)
    assert tree.nodes["opt/app"].kind == "dir"


def test_a_hard_link_reads_its_target_and_becomes_linuxkit_s_relative_symlink(
    tmp_path: Path,
) -> None:
    tree = merged(
        tmp_path,
        [("dir", "usr/bin"), ("file", "usr/bin/perl", b"perl"), ("dir", "usr/lib"),
         ("hardlink", "usr/lib/perl5.36", "usr/bin/perl")],
    )  # fmt: skip
    assert content(tree, "usr/lib/perl5.36") == b"perl"
    assert tree.nodes["usr/lib/perl5.36"].target == "usr/bin/perl"
    assert layers.relative_link("usr/lib/perl5.36", "usr/bin/perl") == "../bin/perl"
    assert layers.relative_link("top", "usr/bin/perl") == "usr/bin/perl"


@pytest.mark.parametrize("name", ["/etc/passwd", "../evil", "a/../../b", "a\0b", "x" * 5000])
def test_a_layer_entry_name_that_escapes_or_is_malformed_is_refused(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(layers.LayerError):
        layers.clean(name)


def test_a_layer_that_is_not_a_tar_is_a_layer_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x01" * 1024)
    with pytest.raises(layers.LayerError, match="layer 0 is not a readable tar"):
        layers.merge([oci.Blob(tmp_path / "junk", 0, 1024)])


def test_a_file_where_a_folder_is_needed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(layers.LayerError, match="is a file, not a folder"):
        merged(tmp_path, [("file", "a", b"")], [("file", "a/b", b"")])


# -- image files ---------------------------------------------------------------------------------


def test_gzip_layers_are_expanded_and_checked_against_their_diff_ids(tmp_path: Path) -> None:
    layer = images.layer_tar([("file", "hello", b"world")])
    images.write_layout(tmp_path / "img", [layer], compress=True, config={"Cmd": ["x"]})
    image = oci.open_image(tmp_path / "img", tmp_path / "work")
    assert image.config["config"] == {"Cmd": ["x"]}
    tree = layers.merge(image.layers)
    assert content(tree, "hello") == b"world"


def test_a_layer_that_does_not_match_its_diff_id_is_refused(tmp_path: Path) -> None:
    layer = images.layer_tar([("file", "a", b"1")])
    images.write_layout(tmp_path / "img", [layer], diff_ids=[images.sha256(layer + b"\0")])
    with pytest.raises(oci.OCIError, match="layer 0 does not match diff_id"):
        oci.open_image(tmp_path / "img", tmp_path / "work")


def test_a_layout_of_several_images_or_a_multi_platform_index_is_refused(tmp_path: Path) -> None:
    images.write_layout(tmp_path / "img", [images.layer_tar([("file", "a", b"1")])])
    index = json.loads((tmp_path / "img/index.json").read_text())
    index["manifests"].append(index["manifests"][0])
    (tmp_path / "img/index.json").write_text(json.dumps(index))
    with pytest.raises(oci.OCIError, match="holds 2 images"):
        oci.open_image(tmp_path / "img", tmp_path / "work")
    index["manifests"] = [{**index["manifests"][0], "mediaType": oci._INDEX}]
    (tmp_path / "img/index.json").write_text(json.dumps(index))
    with pytest.raises(oci.OCIError, match="multi-platform index"):
        oci.open_image(tmp_path / "img", tmp_path / "work")


def test_a_zstd_layer_is_refused_with_the_fix(tmp_path: Path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("needs zstd")
    raw = images.layer_tar([("file", "a", b"1")])
    packed = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True)
    images.write_layout(tmp_path / "img", [raw], stored=[packed.stdout])
    with pytest.raises(oci.OCIError, match="zstd layer; copy the image with uncompressed"):
        oci.open_image(tmp_path / "img", tmp_path / "work")


def test_a_docker_archive_with_a_gzip_layer_is_read(tmp_path: Path) -> None:
    layer = images.layer_tar([("file", "x", b"y")])
    config = {"rootfs": {"type": "layers", "diff_ids": [images.sha256(layer)]}}
    manifest = [{"Config": "config.json", "Layers": ["l/layer.tar"]}]
    members = {
        "config.json": json.dumps(config).encode(),
        "l/layer.tar": gzip.compress(layer),
        "manifest.json": json.dumps(manifest).encode(),
    }
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    image = oci.open_image(tmp_path / "a.tar", tmp_path / "work")
    assert image.manifest_digest is None
    assert content(layers.merge(image.layers), "x") == b"y"
