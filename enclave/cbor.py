"""A small, strict CBOR codec (RFC 8949) for NSM attestation documents and COSE.

Only the subset that the Nitro Secure Module and COSE_Sign1 use is supported: unsigned and
negative integers with up to 64-bit arguments, byte and text strings, arrays, maps, tags, and
the simple values ``false``, ``true`` and ``null``. Floats, ``undefined`` and every other simple
value are rejected: the NSM never sends them, so seeing one means the input is not what we
expect. Bignums (tags 2 and 3) are not converted; they stay :class:`Tag` values.

Decoding treats its input as hostile. It is bounded in nesting depth and in the total number of
data items, checks every claimed length against the bytes that are left *before* using it,
rejects the reserved additional-information values 28-30, rejects duplicate and unhashable map
keys, and raises only :class:`CBORError` (:func:`decode` turns any other exception into one
that names its type). It never returns a partial result, and one call must consume the whole
input (trailing bytes are an error).

Two leniencies are deliberate, because real encoders produce them and neither changes the
meaning of the data: non-shortest argument encodings (e.g. ``0x1800`` for 0) are accepted, and
so are indefinite-length strings, arrays and maps (RFC 8949 section 3.2). Callers that need
exact bytes (COSE signatures) must verify over the bytes they received, never a re-encoding.

Encoding always writes definite lengths and shortest arguments (RFC 8949 section 4.2.1,
"preferred serialization" for integers and lengths) and keeps map insertion order: NSM and COSE
structures are order-sensitive, so maps are never sorted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from enclave.errors import NoflylistError

#: Default nesting cap. NSM documents and COSE_Sign1 nest at most four deep; 32 leaves room
#: while keeping the recursive decoder (about two Python frames a level) far below Python's
#: default recursion limit of 1000.
MAX_DEPTH = 32

#: Default cap on the total number of data items in one input. An attestation document holds
#: fewer than 100; the cap bounds the work a hostile input can cause.
MAX_ITEMS = 10_000

#: The largest ``max_depth`` a caller may ask for: beyond it the recursive decoder could reach
#: Python's recursion limit and raise RecursionError instead of CBORError.
_DEPTH_CEILING = 200

# Major types, RFC 8949 section 3.1.
_UNSIGNED, _NEGATIVE, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)

# Additional information values, RFC 8949 section 3.
_AI_ONE_BYTE = 24  # 24..27: the argument follows in 1, 2, 4 or 8 bytes
_AI_INDEFINITE = 31
_BREAK = 0xFF

# Simple values, RFC 8949 section 3.3.
_FALSE, _TRUE, _NULL, _UNDEFINED = 20, 21, 22, 23

_UINT64_LIMIT = 1 << 64


class CBORError(NoflylistError):
    """The bytes are not CBOR this codec accepts, or a value cannot be encoded."""


@dataclass(frozen=True)
class Tag:
    """A tagged data item (major type 6): a tag number and the item it applies to.

    No tag is interpreted: COSE and the NSM use none on the wire we read, and interpreting
    tags (dates, bignums) would widen what an attacker can make us parse.
    """

    number: int
    value: CBORValue


CBORValue: TypeAlias = (
    bool | int | bytes | str | list["CBORValue"] | dict["CBORValue", "CBORValue"] | Tag | None
)


# ---------------------------------------------------------------------------------------------
# Encoding


def encode(value: CBORValue) -> bytes:
    """Encode one value as CBOR.

    Definite lengths, shortest argument forms; maps keep insertion order (NSM and COSE
    documents are order-sensitive: never sort). Nesting deeper than :data:`MAX_DEPTH` is
    refused, so whatever this returns :func:`decode` accepts with its default depth cap, and a
    cyclic structure fails cleanly instead of exhausting the stack.
    """
    out = bytearray()
    _encode_into(out, value, 1)
    return bytes(out)


def _head(major: int, argument: int) -> bytes:
    """The initial byte plus the shortest argument encoding (RFC 8949 sections 3 and 4.2.1)."""
    if argument < _AI_ONE_BYTE:
        return bytes([major << 5 | argument])
    for additional, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * width):
            return bytes([major << 5 | additional]) + argument.to_bytes(width, "big")
    raise CBORError("CBOR argument does not fit in 64 bits")  # callers check ranges first


def _encode_into(out: bytearray, value: CBORValue, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CBORError(
            f"cannot encode: nesting deeper than {MAX_DEPTH} levels (or a cyclic structure)"
        )
    if value is None:
        out.append(_SIMPLE << 5 | _NULL)
    elif isinstance(value, bool):  # before int: bool is a subclass of int
        out.append(_SIMPLE << 5 | (_TRUE if value else _FALSE))
    elif isinstance(value, int):
        if 0 <= value < _UINT64_LIMIT:
            out += _head(_UNSIGNED, value)
        elif -_UINT64_LIMIT <= value < 0:
            out += _head(_NEGATIVE, -1 - value)
        else:
            raise CBORError(
                "cannot encode an integer outside [-2**64, 2**64-1]; "
                "encode it as a bignum Tag(2 or 3, bytes) if it is really needed"
            )
    elif isinstance(value, bytes):
        out += _head(_BYTES, len(value))
        out += value
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise CBORError(
                "cannot encode text that is not valid Unicode (it holds a lone surrogate)"
            ) from None
        out += _head(_TEXT, len(raw))
        out += raw
    elif isinstance(value, list):
        out += _head(_ARRAY, len(value))
        for element in value:
            _encode_into(out, element, depth + 1)
    elif isinstance(value, dict):
        out += _head(_MAP, len(value))
        for key, element in value.items():
            _encode_into(out, key, depth + 1)
            _encode_into(out, element, depth + 1)
    elif isinstance(value, Tag):
        number = value.number
        if isinstance(number, bool) or not isinstance(number, int):
            raise CBORError("cannot encode a Tag whose number is not an int")
        if not 0 <= number < _UINT64_LIMIT:
            raise CBORError("cannot encode a Tag number outside [0, 2**64-1]")
        out += _head(_TAG, number)
        _encode_into(out, value.value, depth + 1)
    else:
        raise CBORError(
            f"cannot encode a value of type {type(value).__name__}: supported are None, bool, "
            "int, bytes, str, list, dict and Tag (floats are deliberately unsupported)"
        )


# ---------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> CBORValue:
    """Decode exactly one item that spans all of `data` (trailing bytes are an error).

    ``max_depth`` caps nesting (the top-level item is at depth 1); ``max_items`` caps the total
    number of data items, counting map keys, tag contents and string chunks.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CBORError(f"CBOR input must be bytes, not {type(data).__name__}")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int):
        raise CBORError("max_depth must be an int")
    if not 1 <= max_depth <= _DEPTH_CEILING:
        raise CBORError(f"max_depth must be between 1 and {_DEPTH_CEILING}")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise CBORError("max_items must be a positive int")
    decoder = _Decoder(bytes(data), max_depth, max_items)
    try:
        value = decoder.item(1)
    except CBORError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only CBORError leaves
        # Only the type is named: a foreign message could quote the input.
        raise CBORError(
            f"CBOR input could not be decoded: {type(exc).__name__} near offset "
            f"{decoder.pos}, a failure this decoder has no specific message for"
        ) from None
    if decoder.pos != len(decoder.data):
        raise CBORError(
            f"trailing bytes after the CBOR item: it ends at offset {decoder.pos} of "
            f"{len(decoder.data)}; the input must hold exactly one item"
        )
    return value


class _Decoder:
    """Cursor over the input with the remaining budgets; one instance per :func:`decode`."""

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items

    # -- low-level reads --------------------------------------------------------------------

    def _remaining(self) -> int:
        return len(self.data) - self.pos

    def _take(self, count: int) -> bytes:
        """The next ``count`` bytes; the length is checked before anything is sliced."""
        if count > self._remaining():
            raise CBORError(
                f"truncated CBOR: {count} bytes claimed at offset {self.pos}, "
                f"only {self._remaining()} left"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def _count_item(self) -> None:
        self.items_left -= 1
        if self.items_left < 0:
            raise CBORError(
                "CBOR input holds more data items than allowed; "
                "raise max_items only if such documents are expected"
            )

    def _initial_byte(self) -> tuple[int, int]:
        """Read an initial byte: (major type, additional information), RFC 8949 section 3."""
        initial = self._take(1)[0]
        return initial >> 5, initial & 0x1F

    def _argument(self, additional: int) -> int:
        """The argument for additional info 0..27 (RFC 8949 section 3); 28..31 are not here.

        Non-shortest forms are accepted on purpose: see the module docstring.
        """
        if additional < _AI_ONE_BYTE:
            return additional
        if additional <= 27:
            return int.from_bytes(self._take(1 << (additional - _AI_ONE_BYTE)), "big")
        raise CBORError(
            f"malformed CBOR at offset {self.pos - 1}: additional information "
            f"{additional} is reserved (RFC 8949 section 3)"
        )

    # -- data items -------------------------------------------------------------------------

    def item(self, depth: int) -> CBORValue:
        """Decode one data item starting at the cursor (RFC 8949 section 3)."""
        if depth > self.max_depth:
            raise CBORError(
                f"CBOR nesting deeper than {self.max_depth} levels at offset {self.pos}; "
                "raise max_depth only if such documents are expected"
            )
        self._count_item()
        start = self.pos
        major, additional = self._initial_byte()
        if major == _SIMPLE:
            return self._simple(additional, start)
        if additional == _AI_INDEFINITE:
            return self._indefinite(major, depth, start)
        argument = self._argument(additional)
        if major == _UNSIGNED:
            return argument
        if major == _NEGATIVE:
            return -1 - argument
        if major == _BYTES:
            return self._take(argument)
        if major == _TEXT:
            return self._text(self._take(argument), start)
        if major == _ARRAY:
            return self._array(argument, depth)
        if major == _MAP:
            return self._map(argument, depth)
        return Tag(argument, self.item(depth + 1))  # major type 6

    def _simple(self, additional: int, start: int) -> CBORValue:
        """Major type 7 (RFC 8949 section 3.3): only false, true and null are accepted."""
        if additional == _FALSE:
            return False
        if additional == _TRUE:
            return True
        if additional == _NULL:
            return None
        if additional == _AI_INDEFINITE:
            raise CBORError(
                f"malformed CBOR at offset {start}: a 'break' (0xff) where no "
                "indefinite-length item is open"
            )
        if 25 <= additional <= 27:
            kind = "floating-point numbers are"
        elif additional == _UNDEFINED:
            kind = "'undefined' is"
        elif 28 <= additional <= 30:
            kind = "reserved additional information (28-30) is"
        else:
            kind = "simple values other than false/true/null are"
        raise CBORError(
            f"unsupported CBOR at offset {start}: {kind} not accepted; "
            "the NSM and COSE documents this codec reads never contain them"
        )

    def _text(self, raw: bytes, start: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CBORError(
                f"malformed CBOR at offset {start}: text string is not valid UTF-8"
            ) from None

    def _array(self, count: int, depth: int) -> list[CBORValue]:
        # Every element takes at least one byte: refuse impossible counts before looping.
        if count > self._remaining():
            raise CBORError(
                f"truncated CBOR: array claims {count} elements at offset {self.pos}, "
                f"only {self._remaining()} bytes left"
            )
        return [self.item(depth + 1) for _ in range(count)]

    def _map(self, count: int, depth: int) -> dict[CBORValue, CBORValue]:
        # Every key and every value takes at least one byte.
        if count > self._remaining() // 2:
            raise CBORError(
                f"truncated CBOR: map claims {count} pairs at offset {self.pos}, "
                f"only {self._remaining()} bytes left"
            )
        result: dict[CBORValue, CBORValue] = {}
        for _ in range(count):
            self._map_entry(result, depth)
        return result

    def _map_entry(self, result: dict[CBORValue, CBORValue], depth: int) -> None:
        """Decode one key/value pair into ``result``, refusing unhashable or repeated keys."""
        start = self.pos
        key = self.item(depth + 1)
        try:
            hash(key)
        except TypeError:
            raise CBORError(
                f"unsupported CBOR at offset {start}: a map key that is an array or a map "
                "(or a tag holding one) cannot be represented"
            ) from None
        if key in result:
            # Python also treats 1 and true (0 and false) as equal keys; refusing them too is
            # safer than silently merging two distinct CBOR keys.
            raise CBORError(
                f"invalid CBOR at offset {start}: duplicate map key "
                "(RFC 8949 section 5.6; keys Python treats as equal, like 1 and true, count)"
            )
        result[key] = self.item(depth + 1)

    def _indefinite(self, major: int, depth: int, start: int) -> CBORValue:
        """Indefinite-length strings, arrays and maps (RFC 8949 section 3.2)."""
        if major in (_BYTES, _TEXT):
            return self._chunked_string(major, start)
        if major == _ARRAY:
            elements: list[CBORValue] = []
            while not self._at_break():
                elements.append(self.item(depth + 1))
            return elements
        if major == _MAP:
            result: dict[CBORValue, CBORValue] = {}
            while not self._at_break():
                self._map_entry(result, depth)
            return result
        raise CBORError(
            f"malformed CBOR at offset {start}: major type {major} cannot have "
            "indefinite length (RFC 8949 section 3.2)"
        )

    def _at_break(self) -> bool:
        """True (and the break consumed) if the next byte ends an indefinite-length item."""
        if self._remaining() < 1:
            raise CBORError("truncated CBOR: an indefinite-length item has no 'break' (0xff)")
        if self.data[self.pos] == _BREAK:
            self.pos += 1
            return True
        return False

    def _chunked_string(self, major: int, start: int) -> bytes | str:
        """Chunks must be definite-length strings of the same major type (section 3.2.3)."""
        chunks: list[bytes] = []
        pieces: list[str] = []
        while not self._at_break():
            self._count_item()
            chunk_start = self.pos
            chunk_major, additional = self._initial_byte()
            if chunk_major != major or additional == _AI_INDEFINITE:
                raise CBORError(
                    f"malformed CBOR at offset {chunk_start}: a chunk of an indefinite-length "
                    "string must be a definite-length string of the same type"
                )
            raw = self._take(self._argument(additional))
            if major == _TEXT:
                pieces.append(self._text(raw, chunk_start))  # each chunk is valid UTF-8
            else:
                chunks.append(raw)
        if major == _TEXT:
            return "".join(pieces)
        return b"".join(chunks)
