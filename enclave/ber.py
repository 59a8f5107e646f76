"""A small, strict decoder for ASN.1 BER (ITU-T X.690), enough for CMS from AWS KMS.

KMS sends its ``CiphertextForRecipient`` as BER with indefinite lengths, which DER-only
parsers refuse, so the enclave carries this decoder. It builds a tree of :class:`TLV` nodes
from the whole input, checks every length against the bytes that are left, caps nesting
depth and the number of items, and raises only :class:`BERError` (:func:`decode` turns any
other exception into one that names its type). It never returns a half-parsed tree: either
all of the input is one well-formed value, or it raises.

Deliberately unsupported, because CMS from KMS never uses them: tag numbers above 30
(the multi-byte tag form) and length fields wider than four bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave.errors import NoflylistError

__all__ = [
    "CLASS_CONTEXT",
    "CLASS_UNIVERSAL",
    "TAG_INTEGER",
    "TAG_NULL",
    "TAG_OCTET_STRING",
    "TAG_OID",
    "TAG_SEQUENCE",
    "TAG_SET",
    "TLV",
    "BERError",
    "decode",
    "decode_integer",
    "decode_octet_string",
    "decode_oid",
]

#: Tag classes (X.690 section 8.1.2.2), the top two bits of the identifier octet.
CLASS_UNIVERSAL = 0
CLASS_APPLICATION = 1
CLASS_CONTEXT = 2
CLASS_PRIVATE = 3

#: Universal tag numbers this project reads (X.680 section 8.4).
TAG_EOC = 0
TAG_INTEGER = 2
TAG_OCTET_STRING = 4
TAG_NULL = 5
TAG_OID = 6
TAG_SEQUENCE = 16
TAG_SET = 17

#: Nesting depth cap: CMS EnvelopedData from KMS nests 10 deep; 32 leaves room, stops stack abuse.
DEFAULT_MAX_DEPTH = 32
#: The largest ``max_depth`` a caller may ask for: the decoder recurses (one frame a level),
#: and far below Python's default recursion limit of 1000 it cannot raise RecursionError.
_DEPTH_CEILING = 200
#: Item cap: bounds the work and memory of one decode however the input is shaped.
DEFAULT_MAX_ITEMS = 10_000
#: Length fields wider than 4 octets would describe values above 4 GiB, never legitimate here.
MAX_LENGTH_OCTETS = 4
#: INTEGERs here are CMS version numbers; 8 octets is far more than any of them needs.
MAX_INTEGER_OCTETS = 8
#: Object identifiers in CMS are short; 64 content octets bounds the arcs we decode.
MAX_OID_OCTETS = 64

_HIGH_TAG_FORM = 0x1F
_INDEFINITE = 0x80
_RESERVED_LENGTH = 0xFF


class BERError(NoflylistError):
    """The input is not one well-formed BER value within this decoder's limits."""


@dataclass(frozen=True)
class TLV:
    """One decoded BER value.

    A primitive value has ``value`` (its content octets) and no children; a constructed
    value has ``value=None`` and its ``children`` in order. Whether the length was definite
    or indefinite is not kept: BER gives both forms the same meaning.
    """

    tag_class: int
    constructed: bool
    tag_number: int
    value: bytes | None
    children: tuple[TLV, ...] = ()

    def is_tag(self, tag_class: int, tag_number: int) -> bool:
        """True when this value carries the given class and number (either form)."""
        return self.tag_class == tag_class and self.tag_number == tag_number


def decode(
    data: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> TLV:
    """Decode ``data`` as exactly one BER value; trailing bytes are an error.

    Both definite and indefinite lengths are accepted (X.690 section 8.1.3). ``max_depth``
    caps nesting (the outermost value is depth 1) and ``max_items`` caps the number of
    values, end-of-contents markers not included.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BERError(f"BER input must be bytes, not {type(data).__name__}")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int):
        raise BERError("max_depth must be an int")
    if not 1 <= max_depth <= _DEPTH_CEILING:
        raise BERError(f"max_depth must be between 1 and {_DEPTH_CEILING}")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise BERError("max_items must be a positive int")
    parser = _Parser(bytes(data), max_depth, max_items)
    try:
        tlv, end = parser.parse(0, len(parser.data), 1)
    except BERError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only BERError leaves
        # Only the type is named: a foreign message could quote the input.
        raise BERError(
            f"BER input could not be decoded: {type(exc).__name__}, a failure this decoder "
            "has no specific message for"
        ) from None
    if end != len(parser.data):
        raise BERError(
            f"BER: {len(parser.data) - end} trailing byte(s) after the value at offset {end}; "
            "the input must be exactly one value"
        )
    return tlv


class _Parser:
    """Walks the input once; holds the limits and the running item count."""

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def parse(self, pos: int, end: int, depth: int) -> tuple[TLV, int]:
        """Parse one value that must lie within ``data[pos:end]``; return it and its end."""
        if depth > self.max_depth:
            raise BERError(f"BER: nesting deeper than {self.max_depth} levels at offset {pos}")
        self.items += 1
        if self.items > self.max_items:
            raise BERError(f"BER: more than {self.max_items} values; input refused")
        tag_class, constructed, tag_number, pos = self._identifier(pos, end)
        if tag_class == CLASS_UNIVERSAL and tag_number == TAG_EOC:
            raise BERError(f"BER: end-of-contents marker where a value was expected ({pos - 1})")
        length, pos = self._length(pos, end)
        if length is None:
            if not constructed:
                raise BERError(f"BER: primitive value with indefinite length at offset {pos}")
            return self._indefinite(tag_class, tag_number, pos, end, depth)
        content_end = pos + length
        if constructed:
            children: list[TLV] = []
            while pos < content_end:
                child, pos = self.parse(pos, content_end, depth + 1)
                children.append(child)
            return TLV(tag_class, True, tag_number, None, tuple(children)), content_end
        return TLV(tag_class, False, tag_number, self.data[pos:content_end]), content_end

    def _indefinite(
        self, tag_class: int, tag_number: int, pos: int, end: int, depth: int
    ) -> tuple[TLV, int]:
        """Children until the end-of-contents marker 00 00 (X.690 section 8.1.5)."""
        children: list[TLV] = []
        while True:
            if end - pos < 2:
                raise BERError(f"BER: input ends before the end-of-contents marker ({pos})")
            if self.data[pos] == 0:
                if self.data[pos + 1] != 0:
                    raise BERError(f"BER: end-of-contents marker with non-zero length ({pos})")
                return TLV(tag_class, True, tag_number, None, tuple(children)), pos + 2
            child, pos = self.parse(pos, end, depth + 1)
            children.append(child)

    def _identifier(self, pos: int, end: int) -> tuple[int, bool, int, int]:
        """The identifier octet (X.690 section 8.1.2): class, form and tag number."""
        if pos >= end:
            raise BERError(f"BER: input ends where a tag was expected (offset {pos})")
        octet = self.data[pos]
        if octet & _HIGH_TAG_FORM == _HIGH_TAG_FORM:
            raise BERError(f"BER: tag numbers above 30 are not supported (offset {pos})")
        return octet >> 6, bool(octet & 0x20), octet & _HIGH_TAG_FORM, pos + 1

    def _length(self, pos: int, end: int) -> tuple[int | None, int]:
        """The length octets (X.690 section 8.1.3); None means indefinite."""
        if pos >= end:
            raise BERError(f"BER: input ends where a length was expected (offset {pos})")
        first = self.data[pos]
        pos += 1
        if first == _INDEFINITE:
            return None, pos
        if first == _RESERVED_LENGTH:
            raise BERError(f"BER: reserved length octet 0xFF at offset {pos - 1}")
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count > MAX_LENGTH_OCTETS:
                raise BERError(f"BER: length field of {count} octets is too wide ({pos - 1})")
            if end - pos < count:
                raise BERError(f"BER: input ends inside a length field (offset {pos})")
            length = int.from_bytes(self.data[pos : pos + count], "big")
            pos += count
        if length > end - pos:
            raise BERError(
                f"BER: value at offset {pos} claims {length} bytes but only {end - pos} remain"
            )
        return length, pos


def _expect_primitive(tlv: TLV, tag_number: int, what: str) -> bytes:
    if not tlv.is_tag(CLASS_UNIVERSAL, tag_number) or tlv.value is None:
        raise BERError(f"BER: expected a primitive {what}")
    return tlv.value


def decode_integer(tlv: TLV) -> int:
    """The value of a universal INTEGER (X.690 section 8.3), minimal encoding required."""
    content = _expect_primitive(tlv, TAG_INTEGER, "INTEGER")
    if not content:
        raise BERError("BER: INTEGER with no content octets")
    if len(content) > MAX_INTEGER_OCTETS:
        raise BERError(f"BER: INTEGER longer than {MAX_INTEGER_OCTETS} octets")
    if len(content) > 1 and (
        (content[0] == 0x00 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
    ):
        raise BERError("BER: INTEGER is not minimally encoded (X.690 section 8.3.2)")
    return int.from_bytes(content, "big", signed=True)


def decode_oid(tlv: TLV) -> str:
    """A universal OBJECT IDENTIFIER as dotted text (X.690 section 8.19)."""
    content = _expect_primitive(tlv, TAG_OID, "OBJECT IDENTIFIER")
    if not content or len(content) > MAX_OID_OCTETS:
        raise BERError(f"BER: OBJECT IDENTIFIER must have 1 to {MAX_OID_OCTETS} octets")
    if content[-1] & 0x80:
        raise BERError("BER: OBJECT IDENTIFIER ends inside a subidentifier")
    arcs: list[int] = []
    value = 0
    start = True
    for octet in content:
        if start and octet == 0x80:
            raise BERError("BER: OBJECT IDENTIFIER subidentifier has a leading 0x80 octet")
        value = (value << 7) | (octet & 0x7F)
        start = not octet & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def decode_octet_string(
    tlv: TLV, *, tag_class: int = CLASS_UNIVERSAL, tag_number: int = TAG_OCTET_STRING
) -> bytes:
    """The octets of an OCTET STRING, reassembling the constructed form.

    BER may split a string into segments, each itself a universal OCTET STRING, possibly
    constructed again (X.690 section 8.7.3). Pass ``tag_class``/``tag_number`` for an
    IMPLICIT tag such as CMS's ``encryptedContent [0]``; the segments stay universal.
    """
    if not tlv.is_tag(tag_class, tag_number):
        raise BERError("BER: expected an OCTET STRING")
    if tlv.value is not None:
        return tlv.value
    return b"".join(decode_octet_string(child) for child in tlv.children)
