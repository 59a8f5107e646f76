"""Re-encode and edit :class:`enclave.ber.TLV` trees, to build hostile BER from valid CMS.

A decoded vector is edited node by node (a node replaced by one of another type, removed,
or duplicated) and encoded again with definite lengths, so every edit stays well-formed BER
and reaches the CMS structure checks instead of stopping in the BER decoder.
"""

from __future__ import annotations

from collections.abc import Iterator

from enclave.ber import TLV

Path = tuple[int, ...]

#: One node of each kind CMS uses, as replacements: NULL, INTEGER 0, OCTET STRING, OID,
#: empty SEQUENCE, empty SET, [0] constructed, [0] primitive.
KINDS: tuple[TLV, ...] = (
    TLV(0, False, 5, b""),
    TLV(0, False, 2, b"\x00"),
    TLV(0, False, 4, b"\x01" * 16),
    TLV(0, False, 6, b"\x2a\x03"),
    TLV(0, True, 16, None, ()),
    TLV(0, True, 17, None, ()),
    TLV(2, True, 0, None, ()),
    TLV(2, False, 0, b"\x02" * 32),
)


def encode(tlv: TLV) -> bytes:
    """DER-style encoding (definite lengths) of a tree with tag numbers up to 30."""
    content = tlv.value if tlv.value is not None else b"".join(map(encode, tlv.children))
    identifier = tlv.tag_class << 6 | (0x20 if tlv.constructed else 0) | tlv.tag_number
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([identifier]) + length + content


def paths(tlv: TLV, here: Path = ()) -> Iterator[Path]:
    """Every node's path (child indexes from the root), the root's ``()`` first."""
    yield here
    for index, child in enumerate(tlv.children):
        yield from paths(child, (*here, index))


def replace(tlv: TLV, path: Path, new: TLV | None) -> TLV:
    """The tree with the node at ``path`` replaced by ``new`` (removed if ``None``)."""
    if not path:
        if new is None:
            raise ValueError("the root cannot be removed")
        return new
    index, rest = path[0], path[1:]
    children = list(tlv.children)
    if rest:
        children[index] = replace(children[index], rest, new)
    elif new is None:
        del children[index]
    else:
        children[index] = new
    return TLV(tlv.tag_class, tlv.constructed, tlv.tag_number, None, tuple(children))


def duplicate(tlv: TLV, path: Path) -> TLV:
    """The tree with the node at ``path`` (not the root) appearing twice in a row."""
    parent = node(tlv, path[:-1])
    children = list(parent.children)
    children.insert(path[-1], children[path[-1]])
    return replace(tlv, path[:-1], TLV(parent.tag_class, True, parent.tag_number, None,
                                       tuple(children)))  # fmt: skip


def node(tlv: TLV, path: Path) -> TLV:
    for index in path:
        tlv = tlv.children[index]
    return tlv
