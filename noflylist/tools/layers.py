"""Merge an image's layer tars into one file tree, as a container runtime unpacks them.

The rules are the OCI image spec's (layer.md, "Applying Changesets" and "Whiteouts"): layers
apply in order; a ``.wh.NAME`` entry deletes NAME (and what is below it) from the layers
beneath, a ``.wh..wh..opq`` entry empties its folder of what the layers beneath put there, and
neither touches entries of its own layer; an entry replaces the one at its path, except that a
folder over a folder keeps the lower folder's contents. As when containerd applies a layer, a
path whose parent is a symlink is placed where the symlink points, inside the tree (Debian's
``/sbin`` is a link to ``usr/sbin``), and parents no layer names are made as 0755 folders.

File contents are not copied: a file is a :class:`~noflylist.tools.oci.Blob`, a place in a
layer tar. A hard link stays a link to its target's path; the EIF build turns it into the
relative symlink nitro-cli's linuxkit writes. Names are checked (no absolute path, no ``..``,
no NUL, bounded length) and so are counts; every failure is a :class:`LayerError`.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
from dataclasses import dataclass

from enclave.errors import NoflylistError
from noflylist.tools.oci import Blob

#: Most entries in the merged tree; python:3.12-slim has about 5,000.
MAX_ENTRIES = 500_000
#: Longest path accepted (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Most symlinks followed while resolving one path (Linux's limit for path walks).
MAX_SYMLINK_HOPS = 40
_WHITEOUT, _OPAQUE = ".wh.", ".wh..wh..opq"
_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class LayerError(NoflylistError):
    """A layer cannot be applied: a bad name, an unknown entry type, or too many entries."""


@dataclass(frozen=True)
class Node:
    """One entry of the tree. ``mode`` holds the permission bits only (0o7777)."""

    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    target: str = ""
    data: Blob | None = None
    major: int = 0
    minor: int = 0

    @property
    def size(self) -> int:
        return self.data.size if self.data is not None else 0


_ROOT = Node("dir", 0o755)


def clean(name: str) -> str:
    """A layer member name as a tree path: relative, normalised, checked; '' is the root."""
    if "\0" in name or len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise LayerError(f"a layer entry name is too long or holds NUL: {name[:80]!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise LayerError(f"a layer entry escapes the tree: {name[:200]!r}")
    return "/".join(parts)


class Tree:
    """Paths (relative, no leading slash; '' is the root) to :class:`Node`."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"": _ROOT}

    def resolve(self, path: str, *, follow_last: bool = False) -> str:
        """``path`` with every symlink in its parents (and its last part, if asked) followed.

        Symlinks resolve inside the tree: ``/`` is the tree's root and ``..`` stops there.
        """
        hops, done = 0, list[str]()
        todo = [part for part in path.split("/") if part]
        while todo:
            part = todo.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            current = "/".join([*done, part])
            node = self.nodes.get(current)
            if node is not None and node.kind == "symlink" and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise LayerError(f"too many symlinks resolving /{path}")
                if node.target.startswith("/"):
                    done = []
                todo = [p for p in node.target.split("/") if p] + todo
                continue
            done.append(part)
        return "/".join(done)

    def remove(self, path: str) -> None:
        """Remove ``path`` and everything below it."""
        self.nodes.pop(path, None)
        prefix = path + "/"
        for name in [name for name in self.nodes if name.startswith(prefix)]:
            del self.nodes[name]

    def put(self, path: str, node: Node) -> str:
        """Place ``node`` at ``path`` (parents resolved, made if missing); return where."""
        parent, _, base = path.rpartition("/")
        if not base:
            if node.kind != "dir":
                raise LayerError(f"the root of the tree cannot be a {node.kind}")
            self.nodes[""] = node
            return ""
        parent = self.resolve(parent, follow_last=True) if parent else ""
        self._make_parents(parent)
        where = f"{parent}/{base}" if parent else base
        old = self.nodes.get(where)
        if old is not None and not (old.kind == "dir" and node.kind == "dir"):
            self.remove(where)
        self.nodes[where] = node
        if len(self.nodes) > MAX_ENTRIES:
            raise LayerError(f"more than {MAX_ENTRIES} entries in the image")
        return where

    def _make_parents(self, path: str) -> None:
        walked = ""
        for part in path.split("/") if path else []:
            walked = f"{walked}/{part}" if walked else part
            node = self.nodes.get(walked)
            if node is None:
                self.nodes[walked] = Node("dir", 0o755)
            elif node.kind != "dir":
                raise LayerError(f"/{walked} is a {node.kind}, not a folder, yet holds entries")

    def file_data(self, path: str) -> Blob | None:
        """The contents of the regular file at ``path`` (links followed), or None."""
        for _ in range(MAX_SYMLINK_HOPS):
            node = self.nodes.get(self.resolve(path, follow_last=True))
            if node is None or node.kind not in ("file", "hardlink"):
                return None
            if node.kind == "file":
                return node.data
            path = node.target
        return None


def merge(layers: tuple[Blob, ...] | list[Blob]) -> Tree:
    """Apply ``layers`` (uncompressed tars, lowest first) to an empty tree."""
    tree = Tree()
    for number, layer in enumerate(layers):
        try:
            _apply(tree, layer)
        except LayerError as exc:
            raise LayerError(f"layer {number}: {exc}") from None
        except (tarfile.TarError, OSError, ValueError, UnicodeError) as exc:
            raise LayerError(f"layer {number} is not a readable tar: {exc}") from None
    return tree


def _apply(tree: Tree, layer: Blob) -> None:
    entries: list[tuple[str, Node]] = []
    with layer.open() as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
        for member in tar:
            if len(entries) > MAX_ENTRIES:
                raise LayerError(f"more than {MAX_ENTRIES} entries")
            entries.append((clean(member.name), _node(member, layer)))
    for path, _ in entries:  # whiteouts first: they only hide what is below this layer
        folder, _, base = path.rpartition("/")
        if base == _OPAQUE:
            where = tree.resolve(folder, follow_last=True)
            prefix = f"{where}/" if where else ""
            for name in [name for name in tree.nodes if name and name.startswith(prefix)]:
                del tree.nodes[name]
        elif base.startswith(_WHITEOUT):
            hidden = base.removeprefix(_WHITEOUT)
            tree.remove(tree.resolve(f"{folder}/{hidden}" if folder else hidden))
    for path, node in entries:
        base = path.rpartition("/")[2]
        if not base.startswith(_WHITEOUT):
            tree.put(path, node)


def _node(member: tarfile.TarInfo, layer: Blob) -> Node:
    kind = _KINDS.get(member.type)
    if kind is None or member.issparse():
        raise LayerError(f"{member.name[:200]!r} has the unsupported tar type {member.type!r}")
    mode, uid, gid = stat.S_IMODE(member.mode), member.uid, member.gid
    if kind == "file":
        data = Blob(layer.path, layer.offset + member.offset_data, member.size)
        return Node(kind, mode, uid, gid, data=data)
    if kind == "symlink":
        return Node(kind, 0o777, uid, gid, target=member.linkname)
    if kind == "hardlink":
        return Node(kind, mode, uid, gid, target=clean(member.linkname))
    return Node(kind, mode, uid, gid, major=member.devmajor, minor=member.devminor)


def relative_link(path: str, target: str) -> str:
    """The relative symlink linuxkit writes for a hard link at ``path`` to ``target``."""
    return posixpath.relpath(target, posixpath.dirname(path) or ".")
