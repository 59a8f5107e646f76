"""Compare two builds of the enclave image, and audit what one contains.

Both commands read OCI image layouts with uncompressed layers, as
``skopeo copy --dest-oci-accept-uncompressed-layers containers-storage:… oci:DIR:TAG`` writes
them (build-twice.sh does that).

``compare A B`` prints each build's manifest digest, image ID (the config's digest) and layer
digests, and exits 0 only if all agree. When they do not, it says why in terms a person can act
on: which configuration fields differ (with both values) and, for each differing layer, which
files differ and in what (mode, owner, mtime, size, content, link target).

``audit A`` checks the image against the Dockerfile's promises: the application layer holds
only /opt/noflylist and the launcher, no simulator, tests, bytecode or envelope; the
entrypoint starts ``noflylist serve --attestation nsm`` on 127.0.0.1:8001; the envelope
location and key are set; the config has no history and no Cmd.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Read layer members in pieces; a base layer holds files of tens of MiB.
_CHUNK_BYTES = 1024 * 1024
#: Name at most this many files for each kind of difference: enough to see the pattern.
EXAMPLES_SHOWN = 5
#: The only paths the application layer may add (the Dockerfile's one COPY).
_APP_PREFIXES = ("opt/noflylist/", "usr/local/bin/noflylist")
_APP_PARENTS = {"opt", "opt/noflylist", "usr", "usr/local", "usr/local/bin"}
#: Paths that must never be in the application layer, whatever the .dockerignore says:
#: the simulator, the client library and the tools, tests, bytecode, and pip's record of an
#: install from a path.
_FORBIDDEN = ("noflylist_simulator", "/enclave/simulator", "/noflylist/client/",
              "/noflylist/tools/", "/tests/", "/bench/", "__pycache__", ".pyc",
              "direct_url.json")  # fmt: skip
#: The one data file the service reads, shipped byte for byte as committed: the fold-1 tables
#: (public Unicode and ICAO data, see noflylist/matchkey.py). Any other text or JSON file in
#: the application layer could be an envelope or a list.
_SHIPPED_DATA = {
    "opt/noflylist/noflylist/data/fold-1-tables.txt":
        Path(__file__).resolve().parents[2] / "noflylist" / "data" / "fold-1-tables.txt",
}  # fmt: skip
_ENTRYPOINT = [
    "/usr/local/bin/noflylist",
    "serve",
    "--attestation",
    "nsm",
    "--host",
    "127.0.0.1",
    "--port",
    "8001",
]


class InspectError(Exception):
    """The layout cannot be read (missing blob, not an OCI layout)."""


@dataclass(frozen=True)
class Image:
    """One image of an OCI layout: its documents and where its layers are."""

    manifest_digest: str
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layers: list[Path]


def load(layout: Path) -> Image:
    """Read the single image of an OCI layout written by skopeo."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        entry = index["manifests"][0]
        manifest = json.loads(_blob(layout, entry["digest"]).read_bytes())
        config_digest = manifest["config"]["digest"]
        config = json.loads(_blob(layout, config_digest).read_bytes())
        layers = [_blob(layout, layer["digest"]) for layer in manifest["layers"]]
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise InspectError(f"{layout} is not a readable OCI layout: {exc}") from None
    for layer in manifest["layers"]:
        if not layer["mediaType"].endswith(".tar"):
            raise InspectError(
                f"{layout}: layer {layer['digest']} is {layer['mediaType']}; export with "
                "--dest-oci-accept-uncompressed-layers so layers can be compared file by file"
            )
    return Image(entry["digest"], manifest, config_digest, config, layers)


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


# -- compare --------------------------------------------------------------------------------


def _flatten(value: object, path: str = "") -> dict[str, object]:
    """``{"config": {"Env": [..]}}`` -> ``{"config.Env[0]": ..}``: fields a person can name."""
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key in sorted(value):
            flat.update(_flatten(value[key], f"{path}.{key}" if path else str(key)))
        return flat
    if isinstance(value, list):
        flat = {}
        for number, item in enumerate(value):
            flat.update(_flatten(item, f"{path}[{number}]"))
        return flat
    return {path: value}


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """One line per configuration field whose value differs between the two builds."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    missing = object()
    lines = []
    for field in sorted(set(flat_a) | set(flat_b)):
        left, right = flat_a.get(field, missing), flat_b.get(field, missing)
        if left != right:
            shown = ["(absent)" if side is missing else json.dumps(side) for side in (left, right)]
            lines.append(f"  config {field}: {shown[0]} != {shown[1]}")
    return lines


def _members(layer: Path) -> dict[str, dict[str, object]]:
    """Every entry of a layer tar with the attributes that make up its bytes."""
    entries: dict[str, dict[str, object]] = {}
    with tarfile.open(layer, "r:") as tar:
        for member in tar:
            facts: dict[str, object] = {
                "type": member.type.decode("ascii", "replace"),
                "mode": oct(member.mode),
                "owner": f"{member.uid}:{member.gid}",
                "mtime": int(member.mtime),
                "size": member.size,
                "link": member.linkname,
                "pax": sorted(member.pax_headers.items()),
            }
            if member.isfile():
                stream = tar.extractfile(member)
                digest = hashlib.sha256()
                if stream is not None:
                    while chunk := stream.read(_CHUNK_BYTES):
                        digest.update(chunk)
                facts["content"] = digest.hexdigest()[:16]
            entries[member.name] = facts
    return entries


def layer_differences(a: Path, b: Path) -> list[str]:
    """The files that differ between two layers, grouped by the attribute that differs.

    Grouping keeps the report short when one cause (an unclamped mtime, a umask) touches every
    file, and still shows a cause that touches only a few.
    """
    left, right = _members(a), _members(b)
    only_first = sorted(set(left) - set(right))
    only_second = sorted(set(right) - set(left))
    by_attribute: dict[str, list[str]] = {}
    for name in sorted(set(left) & set(right)):
        for key in sorted(set(left[name]) | set(right[name])):
            if left[name].get(key) != right[name].get(key):
                by_attribute.setdefault(key, []).append(
                    f"{name}: {left[name].get(key)} != {right[name].get(key)}"
                )
    lines = []
    for label, names in (("only in the first build", only_first),
                         ("only in the second build", only_second)):
        if names:
            lines.append(f"    {len(names)} files {label}, e.g.:")
            lines.extend(f"      {name}" for name in names[:EXAMPLES_SHOWN])
    for key, examples in by_attribute.items():
        lines.append(f"    {key} differs in {len(examples)} files, e.g.:")
        lines.extend(f"      {example}" for example in examples[:EXAMPLES_SHOWN])
    return lines


def compare(a: Image, b: Image) -> list[str]:
    """Every difference between two builds, empty when they are identical."""
    lines = config_differences(a.config, b.config)
    digests_a = [layer["digest"] for layer in a.manifest["layers"]]
    digests_b = [layer["digest"] for layer in b.manifest["layers"]]
    if len(digests_a) != len(digests_b):
        lines.append(f"  layer count: {len(digests_a)} != {len(digests_b)}")
    for number, (da, db) in enumerate(zip(digests_a, digests_b, strict=False)):
        if da != db:
            lines.append(f"  layer {number}: {da} != {db}; files that differ:")
            lines.extend(layer_differences(a.layers[number], b.layers[number]))
    if a.manifest_digest != b.manifest_digest and not lines:
        lines.extend(config_differences(a.manifest, b.manifest))
    return lines


def _describe(label: str, image: Image) -> None:
    print(f"{label}: image ID {image.config_digest}")
    print(f"{label}: manifest {image.manifest_digest}")
    for layer in image.manifest["layers"]:
        print(f"{label}: layer    {layer['digest']} ({layer['size']} bytes)")


# -- audit ----------------------------------------------------------------------------------


def audit(image: Image) -> list[str]:
    """Every way the image breaks the Dockerfile's promises, empty when it keeps them."""
    problems = []
    members = _members(image.layers[-1])
    names = list(members)
    for name in names:
        if name in _APP_PARENTS:
            continue
        if name in _SHIPPED_DATA:
            committed = hashlib.sha256(_SHIPPED_DATA[name].read_bytes()).hexdigest()[:16]
            if members[name]["content"] != committed:
                problems.append(f"the application layer's {name} is not the committed file")
            continue
        if not name.startswith(_APP_PREFIXES):
            problems.append(f"the application layer adds {name}, outside /opt/noflylist")
        if any(part in "/" + name for part in _FORBIDDEN):
            problems.append(f"the application layer holds {name}, which must not ship")
        elif name.endswith((".json", ".txt")) and ".dist-info/" not in name:
            # Only wheel metadata (cryptography's SBOMs, entry points) may be JSON or text;
            # anything else could be an envelope or a list.
            problems.append(f"the application layer holds {name}: an envelope or a list?")
    for package in ("opt/noflylist/noflylist/__main__.py", "opt/noflylist/enclave/nsm.py"):
        if package not in names:
            problems.append(f"the application layer lacks {package}")
    config = image.config.get("config", {})
    if config.get("Entrypoint") != _ENTRYPOINT:
        problems.append(f"entrypoint is {config.get('Entrypoint')}; expected {_ENTRYPOINT}")
    if config.get("Cmd"):
        problems.append(f"Cmd is {config['Cmd']}; Enclaver would append it to the entrypoint")
    env = dict(item.partition("=")[::2] for item in config.get("Env", []))
    for variable in ("NOFLYLIST_ENVELOPE", "NOFLYLIST_KEY_ID"):
        if not env.get(variable):
            problems.append(f"{variable} is not set in the image")
    if image.config.get("history"):
        problems.append("the config carries build history (build with --omit-history)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compare_parser = commands.add_parser("compare", help="compare two builds")
    compare_parser.add_argument("first", type=Path)
    compare_parser.add_argument("second", type=Path)
    audit_parser = commands.add_parser("audit", help="check what one build contains")
    audit_parser.add_argument("layout", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "audit":
            problems = audit(load(args.layout))
            for problem in problems:
                print(f"audit: {problem}")
            return 1 if problems else 0
        first, second = load(args.first), load(args.second)
    except InspectError as exc:
        print(f"inspect_image: {exc}", file=sys.stderr)
        return 2
    _describe("first ", first)
    _describe("second", second)
    differences = compare(first, second)
    if differences:
        print("the two builds differ:")
        print("\n".join(differences))
        return 1
    print("the two builds are identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
