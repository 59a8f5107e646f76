"""``noflylist eif build``: the enclave's EIF, made deterministically from pinned inputs.

``enclaver build`` makes the same EIF in three steps whose output changes on every run: it
adds a layer to the app image (Docker ``COPY`` of the manifest, through a fresh temporary
folder, and of odyn, with build-time mtimes), has ``nitro-cli build-enclave`` turn that image
into ramdisks with linuxkit (which keeps every mtime), and writes the build time into the
metadata. This module does all three with the standard library, with nothing of the build
machine in the output: the same inputs give the same EIF bytes, hence the same PCRs.

Inputs, each a file (CI has no registry): the app image (an OCI layout or archive, as the
reproducible image build exports it), the odyn image (or odyn itself), the Enclaver manifest,
and nitro-cli's boot blobs (``bzImage`` or ``Image``, ``cmdline``, ``init``, ``nsm.ko``, as in
``/usr/share/nitro_enclaves/blobs``), plus ``SOURCE_DATE_EPOCH``.

The layout is Enclaver's and nitro-cli's (sources: enclaver-io/enclaver ``enclaver/src/
build.rs`` ``amend_source_image`` and ``constants.rs``; aws/aws-nitro-enclaves-cli
``enclave_build/src/yaml_generator.rs``, ``docker.rs`` ``extract_image``/``write_config``,
``src/lib.rs`` ``build_from_docker``):

* the amended image: the app image's layers merged, plus ``/etc/enclaver/enclaver.yaml``
  (the manifest's bytes) and ``/sbin/odyn`` (from ``/usr/local/bin/odyn`` of the odyn image),
  owned 0:0, and the entrypoint ``/sbin/odyn --config-dir /etc/enclaver -- ENTRYPOINT CMD``
  (an ENTRYPOINT set over a base resets CMD, so nitro-cli runs that);
* ramdisk 0: ``dev/`` (0755), ``init`` and ``nsm.ko`` (0755);
* ramdisk 1: ``rootfs/`` holding the amended image, its ``dev run sys var proc tmp`` folders
  made 0755 (nitro-cli lists them after the image, and the kernel applies the later mode),
  then ``cmd`` (the entrypoint, one argument a line) and ``env`` (the image's Env, one a
  line), 0644; hard links become relative symlinks, as linuxkit writes them;
* cmdline: the blob's, stripped; metadata: nitro-cli's EifIdentityInfo with the build time at
  ``SOURCE_DATE_EPOCH`` and the digests of every input in CustomMetadata.

Every cpio entry is owned 0:0 with mtime ``SOURCE_DATE_EPOCH``, in one fixed order: the bytes
of each path sort it. Not reproduced from linuxkit: its rewritten ``/etc/hosts`` and
``/etc/resolv.conf`` and its ``/etc/mtab`` link (the service names no host in /etc/hosts).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclave.errors import NoflylistError
from noflylist import __version__
from noflylist.tools import eif_write, layers, oci
from noflylist.tools.cpio import CpioWriter
from noflylist.tools.eif import Measurements

ODYN_IN_IMAGE = "usr/local/bin/odyn"
ODYN_PATH = "sbin/odyn"
MANIFEST_PATH = "etc/enclaver/enclaver.yaml"
ODYN_COMMAND = ["/sbin/odyn", "--config-dir", "/etc/enclaver", "--"]
#: Folders nitro-cli's customer ramdisk lists after the image (yaml_generator.rs).
NITRO_FOLDERS = ("dev", "run", "sys", "var", "proc", "tmp")
KERNELS = {"x86_64": "bzImage", "aarch64": "Image"}
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
BUILD_TOOL = "noflylist eif build"
#: Largest file read whole (manifest, cmdline, kernel config, a plain odyn); odyn is ~10 MiB.
MAX_SMALL_FILE_BYTES = 64 * 1024 * 1024


class BuildError(NoflylistError):
    """An input is missing or not what the build needs."""


@dataclass(frozen=True)
class Inputs:
    """What goes into the EIF; nothing else does."""

    app: Path
    odyn: Path
    manifest: Path
    blobs: Path
    source_date_epoch: int
    image_name: str = "noflylist"


@dataclass(frozen=True)
class Result:
    """The measurements, the EIF's size and SHA-256, the inputs' digests, the time taken."""

    measurements: Measurements
    size: int
    sha256: str
    inputs: dict[str, Any]
    seconds: float


def _read_small(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_SMALL_FILE_BYTES:
            raise BuildError(f"{what} {path} is larger than {MAX_SMALL_FILE_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _sha384_file(path: Path) -> str:
    digest = hashlib.sha384()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _odyn(path: Path, work: Path) -> tuple[oci.Blob | bytes, int, dict[str, Any]]:
    """odyn's bytes and mode, from its image (``/usr/local/bin/odyn``) or as a file."""
    if path.is_file() and not _is_tar(path):
        data = _read_small(path, "odyn")
        return data, 0o755, {"File": path.name, "SHA384": hashlib.sha384(data).hexdigest()}
    image = oci.open_image(path, work / "odyn")
    tree = layers.merge(image.layers)
    blob = tree.file_data(ODYN_IN_IMAGE)
    if blob is None:
        raise BuildError(f"the odyn image {path} has no /{ODYN_IN_IMAGE}")
    mode = tree.nodes[tree.resolve(ODYN_IN_IMAGE, follow_last=True)].mode
    return blob, mode, {"ManifestDigest": image.manifest_digest, "ImageID": image.config_digest}


def _is_tar(path: Path) -> bool:
    with path.open("rb") as stream:
        stream.seek(257)
        return stream.read(5) == b"ustar"


def _lines(values: list[str], what: str) -> bytes:
    """nitro-cli's cmd and env files: each value and a newline (docker.rs write_config)."""
    if any("\n" in value or "\0" in value for value in values):
        raise BuildError(
            f"an image {what} value holds a newline or NUL; nitro's init reads one per line"
        )
    return "".join(f"{value}\n" for value in values).encode()


def _strings(config: dict[str, Any], key: str) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BuildError(f"the app image's config {key} must be a list of strings")
    return value


def _ramdisk_0(path: Path, blobs: Path, epoch: int) -> None:
    with path.open("wb") as out:
        cpio = CpioWriter(out, mtime=epoch)
        cpio.add("dev", "dir", 0o755)
        for name in ("init", "nsm.ko"):
            blob = blobs / name
            cpio.add(name, "file", 0o755, data=oci.Blob(blob, 0, blob.stat().st_size))
        cpio.close()


def _ramdisk_1(path: Path, tree: layers.Tree, cmd: bytes, env: bytes, epoch: int) -> None:
    for folder in NITRO_FOLDERS:
        old = tree.nodes.get(folder)
        if old is not None and old.kind != "dir":
            raise BuildError(f"the image's /{folder} is a {old.kind}; nitro's init needs a folder")
        tree.nodes[folder] = layers.Node("dir", 0o755)
    with path.open("wb") as out:
        cpio = CpioWriter(out, mtime=epoch)
        cpio.add("rootfs", "dir", tree.nodes[""].mode)
        names = sorted(
            (name for name in tree.nodes if name),
            key=lambda n: n.encode("utf-8", "surrogateescape"),
        )
        for name in names:
            node, where = tree.nodes[name], f"rootfs/{name}"
            if node.kind == "hardlink":
                cpio.add(where, "symlink", 0o777, target=layers.relative_link(name, node.target))
            else:
                cpio.add(
                    where,
                    node.kind,
                    node.mode,
                    data=node.data,
                    target=node.target,
                    major=node.major,
                    minor=node.minor,
                )
        cpio.add("cmd", "file", 0o644, data=cmd)
        cpio.add("env", "file", 0o644, data=env)
        cpio.close()


def _kernel_info(config: Path) -> tuple[str, str]:
    """OS and kernel version from line 3 of the kernel config, as generate_build_info does."""
    if not config.is_file():
        return "Unknown", "Unknown"
    lines = _read_small(config, "the kernel config").decode("utf-8", "replace").splitlines()
    words = lines[2].replace("/", " ").replace("-", " ").split(" ") if len(lines) > 2 else []
    return (words[1] if len(words) > 1 else "Unknown", words[3] if len(words) > 3 else "Unknown")


def build(inputs: Inputs, output: Path) -> Result:
    """Build the EIF at ``output`` (replaced atomically) from ``inputs``."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="noflylist-eif-") as scratch:
        work = Path(scratch)
        app = oci.open_image(inputs.app, work / "app")
        arch = ARCHES.get(str(app.config.get("architecture")))
        if arch is None:
            raise BuildError(
                f"the app image is for {app.config.get('architecture')!r}; an EIF "
                "is amd64 (x86_64) or arm64 (aarch64)"
            )
        kernel = inputs.blobs / KERNELS[arch]
        blob_files = {
            name: inputs.blobs / name for name in (KERNELS[arch], "cmdline", "init", "nsm.ko")
        }
        for name, path in blob_files.items():
            if not path.is_file():
                raise BuildError(f"the boot blob {name} is missing from {inputs.blobs}")
        tree = layers.merge(app.layers)
        manifest = _read_small(inputs.manifest, "the Enclaver manifest")
        odyn, odyn_mode, odyn_source = _odyn(inputs.odyn, work)
        tree.put(
            MANIFEST_PATH, layers.Node("file", 0o644, data=_stored(work, "manifest", manifest))
        )
        odyn_data = odyn if isinstance(odyn, oci.Blob) else _stored(work, "odyn", odyn)
        tree.put(ODYN_PATH, layers.Node("file", odyn_mode, data=odyn_data))
        settings = app.config.get("config") or {}
        command = ODYN_COMMAND + _strings(settings, "Entrypoint") + _strings(settings, "Cmd")
        env = _strings(settings, "Env")
        ramdisks = [work / "ramdisk-0.cpio", work / "ramdisk-1.cpio"]
        _ramdisk_0(ramdisks[0], inputs.blobs, inputs.source_date_epoch)
        _ramdisk_1(
            ramdisks[1],
            tree,
            _lines(command, "Entrypoint/Cmd"),
            _lines(env, "Env"),
            inputs.source_date_epoch,
        )
        try:
            cmdline = _read_small(blob_files["cmdline"], "the cmdline blob").decode("ascii").strip()
        except UnicodeDecodeError:
            raise BuildError("the cmdline blob is not ASCII") from None
        blob_digests = {name: _sha384_file(path) for name, path in blob_files.items()}
        described = {
            "App": {"ManifestDigest": app.manifest_digest, "ImageID": app.config_digest},
            "Odyn": odyn_source,
            "Manifest": {"SHA256": hashlib.sha256(manifest).hexdigest()},
            "Blobs": {f"{name}.SHA384": digest for name, digest in blob_digests.items()},
            "SourceDateEpoch": inputs.source_date_epoch,
        }
        metadata = _metadata(inputs, app, arch, command, env, described)
        partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
        try:
            with partial.open("w+b") as out:
                measured, _ = eif_write.write(
                    out,
                    kernel=kernel,
                    cmdline=cmdline,
                    ramdisks=ramdisks,
                    metadata=metadata,
                    arch=arch,
                )
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    digest = hashlib.sha256()
    with output.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    seconds = time.monotonic() - started
    return Result(measured, output.stat().st_size, digest.hexdigest(), described, seconds)


def _stored(work: Path, name: str, data: bytes) -> oci.Blob:
    path = work / f"added-{name}"
    path.write_bytes(data)
    return oci.Blob(path, 0, len(data))


def _metadata(
    inputs: Inputs,
    app: oci.Image,
    arch: str,
    command: list[str],
    env: list[str],
    described: dict[str, Any],
) -> bytes:
    """nitro-cli's EifIdentityInfo (serde_json, compact, its field order), made deterministic."""
    os_name, kernel_version = _kernel_info(inputs.blobs / f"{KERNELS[arch]}.config")
    when = datetime.fromtimestamp(inputs.source_date_epoch, UTC).isoformat()
    document = {
        "ImageName": inputs.image_name,
        "ImageVersion": app.config_digest.removeprefix("sha256:"),
        "BuildMetadata": {
            "BuildTime": when,
            "BuildTool": BUILD_TOOL,
            "BuildToolVersion": __version__,
            "OperatingSystem": os_name,
            "KernelVersion": kernel_version,
        },
        "DockerInfo": {
            "Id": app.config_digest,
            "Architecture": app.config.get("architecture"),
            "Os": app.config.get("os"),
            "Config": {"Entrypoint": command, "Cmd": None, "Env": env},
        },
        "CustomMetadata": {"NoflylistInputs": described},
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
