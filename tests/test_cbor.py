"""Proof for enclave/cbor.py: RFC 8949 Appendix A, differential tests against cbor2, fuzzing,
every limit, and real Nitro attestation documents.

Python says ``1 == True`` and ``Tag(1, 1) == Tag(1, True)``, and dict equality ignores order, so
plain ``==`` would hide exactly the mistakes a CBOR codec can make. Every comparison here goes
through :func:`_shape`, which keeps types and map order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import time
import tracemalloc
from collections.abc import Mapping
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.cbor import MAX_DEPTH, MAX_ITEMS, CBORError, CBORValue, Tag, decode, encode
from tests.conftest import VECTORS
from tests.support.stack import with_frames_left

# No example database: nothing is written into the working tree.
_FAST = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Generated examples per property test, sized so this file runs in well under 20 s.
ROUND_TRIPS = 500
DIFFERENTIAL = 300  # each of the three cbor2 comparisons
FUZZ_BYTES = 3000
FUZZ_MUTATIONS = 3000
FUZZ_TRAILING = 200  # trailing junk; also strict prefixes


# ---------------------------------------------------------------------------------------------
# Exact comparison


def _shape(value: Any) -> Any:
    """A type-exact, order-exact picture of a decoded value (ours or cbor2's) for comparing."""
    if value is None or isinstance(value, bool | bytes | str):
        return (type(value).__name__, value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, list | tuple):  # cbor2 turns arrays inside tags into tuples
        return ("array", tuple(_shape(v) for v in value))
    if isinstance(value, Mapping):  # cbor2 uses frozendict inside tags
        return ("map", tuple((_shape(k), _shape(v)) for k, v in value.items()))
    if isinstance(value, Tag):
        return ("tag", value.number, _shape(value.value))
    if isinstance(value, cbor2.CBORTag):
        return ("tag", value.tag, _shape(value.value))
    raise AssertionError(f"unexpected decoded type {type(value).__name__}")


def _has_tag(value: CBORValue) -> bool:
    if isinstance(value, Tag):
        return True
    if isinstance(value, list):
        return any(_has_tag(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tag(k) or _has_tag(v) for k, v in value.items())
    return False


def _to_cbor2(value: CBORValue) -> Any:
    """Our value model in cbor2's terms (only Tag differs)."""
    if isinstance(value, Tag):
        return cbor2.CBORTag(value.number, _to_cbor2(value.value))
    if isinstance(value, list):
        return [_to_cbor2(v) for v in value]
    if isinstance(value, dict):
        return {_to_cbor2(k): _to_cbor2(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# RFC 8949 Appendix A, the part inside the supported subset (hex copied from the RFC)

_BIG = b"\x01" + bytes(8)
RFC_ROUND_TRIP: list[tuple[str, CBORValue]] = [
    ("00", 0), ("01", 1), ("0a", 10), ("17", 23), ("1818", 24), ("1819", 25), ("1864", 100),
    ("1903e8", 1000), ("1a000f4240", 1000000), ("1b000000e8d4a51000", 1000000000000),
    ("1bffffffffffffffff", 18446744073709551615),
    ("c249010000000000000000", Tag(2, _BIG)),  # bignum 2**64 stays a Tag
    ("3bffffffffffffffff", -18446744073709551616),
    ("c349010000000000000000", Tag(3, _BIG)),  # bignum -2**64-1 stays a Tag
    ("20", -1), ("29", -10), ("3863", -100), ("3903e7", -1000),
    ("f4", False), ("f5", True), ("f6", None),
    ("c074323031332d30332d32315432303a30343a30305a", Tag(0, "2013-03-21T20:04:00Z")),
    ("c11a514b67b0", Tag(1, 1363896240)),
    ("d74401020304", Tag(23, b"\x01\x02\x03\x04")),
    ("d818456449455446", Tag(24, b"dIETF")),
    ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", Tag(32, "http://www.example.com")),
    ("40", b""), ("4401020304", b"\x01\x02\x03\x04"),
    ("60", ""), ("6161", "a"), ("6449455446", "IETF"), ("62225c", '"\\'),
    ("62c3bc", "\u00fc"), ("63e6b0b4", "\u6c34"), ("64f0908591", "\U00010151"),
    ("80", []), ("83010203", [1, 2, 3]), ("8301820203820405", [1, [2, 3], [4, 5]]),
    ("98190102030405060708090a0b0c0d0e0f101112131415161718181819", list(range(1, 26))),
    ("a0", {}), ("a201020304", {1: 2, 3: 4}), ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    ("a56161614161626142616361436164614461656145",
     {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
]
_NESTED: CBORValue = [1, [2, 3], [4, 5]]
RFC_DECODE_ONLY: list[tuple[str, CBORValue]] = [  # indefinite lengths: we never emit them
    ("5f42010243030405ff", b"\x01\x02\x03\x04\x05"),
    ("7f657374726561646d696e67ff", "streaming"),
    ("9fff", []),
    ("9f018202039f0405ffff", _NESTED), ("9f01820203820405ff", _NESTED),
    ("83018202039f0405ff", _NESTED), ("83019f0203ff820405", _NESTED),
    ("9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff", list(range(1, 26))),
    ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}),
    ("826161bf61626163ff", ["a", {"b": "c"}]),
    ("bf6346756ef563416d7421ff", {"Fun": True, "Amt": -2}),
]
RFC_UNSUPPORTED = [  # floats, undefined and other simple values: rejected on purpose
    "f90000", "f98000", "f93c00", "fb3ff199999999999a", "f93e00", "f97bff", "fa47c35000",
    "fa7f7fffff", "fb7e37e43c8800759c", "f90001", "f90400", "f9c400", "fbc010666666666666",
    "f97c00", "f97e00", "f9fc00", "fa7f800000", "fa7fc00000", "faff800000",
    "fb7ff0000000000000", "fb7ff8000000000000", "fbfff0000000000000",
    "f7", "f0", "f818", "f8ff", "c1fb41d452d9ec200000",
]


@pytest.mark.parametrize(("hex_", "value"), RFC_ROUND_TRIP)
def test_rfc8949_appendix_a_encodes_to_and_decodes_from_the_rfc_bytes(
    hex_: str, value: CBORValue
) -> None:
    assert encode(value).hex() == hex_
    assert _shape(decode(bytes.fromhex(hex_))) == _shape(value)


@pytest.mark.parametrize(("hex_", "value"), RFC_DECODE_ONLY)
def test_rfc8949_appendix_a_indefinite_lengths_decode(hex_: str, value: CBORValue) -> None:
    assert _shape(decode(bytes.fromhex(hex_))) == _shape(value)


@pytest.mark.parametrize("hex_", RFC_UNSUPPORTED)
def test_rfc8949_appendix_a_floats_and_simple_values_are_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="not accepted"):
        decode(bytes.fromhex(hex_))


# ---------------------------------------------------------------------------------------------
# Generated values

_INT_EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
_ints = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from(_INT_EDGES + [-1 - e for e in _INT_EDGES]),
)
# Tag numbers cbor2 leaves alone (it gives 0-5, 25, 28-30, 35-37, 52, 54, 100, 256, 258,
# 260, 261, 1004, 43000 and 55799 a meaning), spread over every argument width.
_tag_numbers = st.one_of(
    st.integers(6, 24), st.integers(1005, 42999), st.integers(2**16, 2**64 - 1)
)
_scalars = st.one_of(
    st.none(), st.booleans(), _ints, st.binary(max_size=40), st.text(max_size=20)
)
_keys = st.one_of(_scalars, st.builds(Tag, _tag_numbers, _scalars))
values: st.SearchStrategy[CBORValue] = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(_keys, inner, max_size=6),
        st.builds(Tag, _tag_numbers, inner),
    ),
    max_leaves=25,
)


@pytest.mark.slow
@settings(_FAST, max_examples=ROUND_TRIPS)
@given(values)
def test_decode_inverts_encode_on_generated_values(value: CBORValue) -> None:
    assert _shape(decode(encode(value))) == _shape(value)


@pytest.mark.slow
@settings(_FAST, max_examples=DIFFERENTIAL)
@given(values)
def test_cbor2_writes_the_same_bytes_and_reads_back_the_same_value(value: CBORValue) -> None:
    ours = encode(value)
    assert ours == cbor2.dumps(_to_cbor2(value))  # both emit shortest, insertion-ordered CBOR
    assert _shape(cbor2.loads(ours)) == _shape(value)


@pytest.mark.slow
@settings(_FAST, max_examples=DIFFERENTIAL)
@given(values)
def test_we_read_cbor2_indefinite_length_output_as_the_same_value(value: CBORValue) -> None:
    theirs = cbor2.dumps(_to_cbor2(value), indefinite_containers=True)
    assert _shape(decode(theirs)) == _shape(value)


def _hand_head(major: int, argument: int, width: int) -> bytes:
    if width == 0:
        return bytes([major << 5 | argument])
    additional = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | additional]) + argument.to_bytes(width, "big")


@st.composite
def _loose_encoding(draw: st.DrawFn, value: CBORValue) -> bytes:
    """An independent, deliberately loose encoder: random non-shortest arguments, random
    indefinite lengths, strings cut into random chunks. Every output is valid CBOR for
    ``value``; cbor2 is asked to agree on each one."""

    def head(major: int, argument: int) -> bytes:
        widths = [w for w in (0, 1, 2, 4, 8) if argument < (24 if w == 0 else 1 << (8 * w))]
        return _hand_head(major, argument, draw(st.sampled_from(widths)))

    def cut(length: int) -> list[int]:
        points = draw(st.lists(st.integers(0, length), max_size=3))
        return sorted({0, length, *points})

    if value is None or isinstance(value, bool):
        return encode(value)
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes | str):
        major = 2 if isinstance(value, bytes) else 3
        if not draw(st.booleans()):
            raw = value if isinstance(value, bytes) else value.encode()
            return head(major, len(raw)) + raw
        bounds = cut(len(value))  # text is cut between characters, so chunks stay UTF-8
        parts = [value[a:b] for a, b in itertools.pairwise(bounds)]
        raws = [p if isinstance(p, bytes) else p.encode() for p in parts]
        return bytes([major << 5 | 31]) + b"".join(head(major, len(r)) + r for r in raws) + b"\xff"
    if isinstance(value, list):
        body = b"".join(draw(_loose_encoding(v)) for v in value)
        if draw(st.booleans()):
            return b"\x9f" + body + b"\xff"
        return head(4, len(value)) + body
    if isinstance(value, dict):
        body = b"".join(draw(_loose_encoding(k)) + draw(_loose_encoding(v))
                        for k, v in value.items())
        if draw(st.booleans()):
            return b"\xbf" + body + b"\xff"
        return head(5, len(value)) + body
    assert isinstance(value, Tag)
    return head(6, value.number) + draw(_loose_encoding(value.value))


@pytest.mark.slow
@settings(_FAST, max_examples=DIFFERENTIAL)
@given(st.data())
def test_we_and_cbor2_read_loose_encodings_as_the_same_value(data: st.DataObject) -> None:
    value = data.draw(values)
    loose = data.draw(_loose_encoding(value))
    assert _shape(cbor2.loads(loose)) == _shape(value)  # the loose encoder is honest
    assert _shape(decode(loose)) == _shape(value)


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing but CBORError escapes


def _decode_or_error(data: bytes) -> CBORValue | CBORError:
    try:
        return decode(data)
    except CBORError as error:
        return error


@pytest.mark.slow
@settings(_FAST, max_examples=FUZZ_BYTES)
@given(st.binary(max_size=48))
def test_arbitrary_bytes_raise_only_cbor_error_and_accepted_ones_agree_with_cbor2(
    data: bytes,
) -> None:
    result = _decode_or_error(data)
    if isinstance(result, CBORError):
        return
    if not _has_tag(result):
        # Without tags cbor2 applies no semantics of its own, so it must agree exactly.
        assert _shape(cbor2.loads(data)) == _shape(result)


def _mutation_corpus() -> list[bytes]:
    """Valid encodings to mutate: the RFC examples and the real Nitro documents (whole, and
    their payloads), so mutations hit the structures the enclave really parses."""
    corpus = [bytes.fromhex(h) for h, _ in RFC_ROUND_TRIP + RFC_DECODE_ONLY]
    for path in sorted((VECTORS / "nitro").glob("*.cbor")):
        raw = path.read_bytes()
        corpus.append(raw)
        document = decode(raw)
        assert isinstance(document, list) and isinstance(document[2], bytes)
        corpus.append(document[2])
    return corpus


def _mutate(data: bytes, seed: int) -> bytes:
    """Up to eight random edits; bytes that set up long lengths or breaks are favoured."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        where = rng.randrange(len(out) + 1)
        action = rng.choice(["flip", "insert", "delete", "set", "cut"])
        if action == "insert":
            out.insert(where, rng.randrange(256))
        elif action == "cut":
            del out[where:]
        elif where < len(out):
            if action == "flip":
                out[where] ^= 1 << rng.randrange(8)
            elif action == "delete":
                del out[where]
            else:
                out[where] = rng.choice([0x1B, 0x3F, 0x5B, 0x5F, 0x7B, 0x9B, 0x9F, 0xBB, 0xFF])
    return bytes(out)


@pytest.mark.slow
@settings(_FAST, max_examples=FUZZ_MUTATIONS)
@given(st.sampled_from(_mutation_corpus()), st.integers(0, 2**32 - 1))
def test_mutated_valid_encodings_raise_only_cbor_error(valid: bytes, seed: int) -> None:
    result = _decode_or_error(_mutate(valid, seed))
    if not isinstance(result, CBORError):
        assert _shape(decode(encode(result))) == _shape(result)


@settings(_FAST, max_examples=FUZZ_TRAILING)
@given(values, st.binary(min_size=1, max_size=8))
def test_a_valid_item_followed_by_anything_is_rejected(value: CBORValue, junk: bytes) -> None:
    with pytest.raises(CBORError, match="trailing bytes"):
        decode(encode(value) + junk)


@pytest.mark.slow
@settings(_FAST, max_examples=FUZZ_TRAILING)
@given(st.data())
def test_every_strict_prefix_of_a_valid_encoding_is_rejected(data: st.DataObject) -> None:
    whole = data.draw(_loose_encoding(data.draw(values)))
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(CBORError):
        decode(whole[:cut])


# ---------------------------------------------------------------------------------------------
# Limits and strictness, one at a time


def _nested_arrays(levels: int) -> bytes:
    return b"\x81" * (levels - 1) + b"\x80"


def test_nesting_up_to_max_depth_decodes_and_one_level_more_is_rejected() -> None:
    assert _shape(decode(_nested_arrays(MAX_DEPTH))) == _shape(
        _nest_list(MAX_DEPTH)
    )
    with pytest.raises(CBORError, match="nesting deeper than 32"):
        decode(_nested_arrays(MAX_DEPTH + 1))
    assert decode(_nested_arrays(3), max_depth=3) == [[[]]]
    with pytest.raises(CBORError, match="nesting deeper than 2"):
        decode(_nested_arrays(3), max_depth=2)


def _nest_list(levels: int) -> list[CBORValue]:
    value: list[CBORValue] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("name", "opener"),
    [("array", b"\x81"), ("indefinite array", b"\x9f"), ("map value", b"\xa1\x00"),
     ("tag", b"\xc6")],
)
def test_hostile_nesting_a_million_deep_fails_with_cbor_error_not_recursion_error(
    name: str, opener: bytes
) -> None:
    started = time.monotonic()
    with pytest.raises(CBORError, match="nesting deeper"):
        decode(opener * 1_000_000)
    assert time.monotonic() - started < 1.0, name


def test_max_depth_outside_the_safe_range_is_refused() -> None:
    for bad in (0, -1, 10_000):
        with pytest.raises(CBORError, match="max_depth"):
            decode(b"\x00", max_depth=bad)
    with pytest.raises(CBORError, match="max_items"):
        decode(b"\x00", max_items=0)


def test_recursion_error_from_a_deep_caller_becomes_cbor_error_naming_its_type() -> None:
    deepest = _nested_arrays(MAX_DEPTH)  # allowed, and about two frames a level to decode
    assert with_frames_left(200, lambda: decode(deepest)) is not None
    with pytest.raises(CBORError, match="RecursionError near offset") as caught:
        with_frames_left(30, lambda: decode(deepest))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_unforeseen_failure_inside_the_decoder_is_a_cbor_error_without_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: object, raw: bytes, start: int) -> str:
        raise ValueError(raw.decode())  # a foreign message that quotes the input

    monkeypatch.setattr("enclave.cbor._Decoder._text", broken)
    with pytest.raises(CBORError, match=r"ValueError near offset \d+") as caught:
        decode(encode(["x", "secret text"]))
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_encoding_deeper_than_max_depth_or_a_cycle_is_refused() -> None:
    assert decode(encode(_nest_list(MAX_DEPTH))) == _nest_list(MAX_DEPTH)
    with pytest.raises(CBORError, match="nesting deeper"):
        encode(_nest_list(MAX_DEPTH + 1))
    cycle: list[CBORValue] = []
    cycle.append(cycle)
    with pytest.raises(CBORError, match="cyclic"):
        encode(cycle)


def test_item_count_cap_counts_every_item_including_keys_and_chunks() -> None:
    array = encode(list(range(99)))  # 1 array + 99 elements = 100 items
    assert len(decode(array, max_items=100)) == 99  # type: ignore[arg-type]
    with pytest.raises(CBORError, match="more data items"):
        decode(array, max_items=99)
    map_ = encode({i: i for i in range(10)})  # 1 map + 10 keys + 10 values = 21 items
    assert decode(map_, max_items=21) == {i: i for i in range(10)}
    with pytest.raises(CBORError, match="more data items"):
        decode(map_, max_items=20)
    chunked = bytes.fromhex("5f41014102ff")  # 1 string + 2 chunks = 3 items
    assert decode(chunked, max_items=3) == b"\x01\x02"
    with pytest.raises(CBORError, match="more data items"):
        decode(chunked, max_items=2)


def test_default_item_cap_rejects_an_array_of_max_items_elements() -> None:
    with pytest.raises(CBORError, match="more data items"):
        decode(encode([0] * MAX_ITEMS))
    assert len(decode(encode([0] * (MAX_ITEMS - 1)))) == MAX_ITEMS - 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "initial"),
    [("byte string", 0x5B), ("text string", 0x7B), ("array", 0x9B), ("map", 0xBB),
     ("byte string chunk", None)],
)
def test_a_claimed_2_pow_63_length_in_a_tiny_input_fails_fast_without_allocating(
    name: str, initial: int | None
) -> None:
    huge = (2**63).to_bytes(8, "big")
    data = b"\x5f\x5b" + huge + b"x\xff" if initial is None else bytes([initial]) + huge + b"x"
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(CBORError, match="truncated"):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, name
    assert time.monotonic() - started < 0.5, name


@pytest.mark.parametrize(
    "hex_", ["", "18", "1901", "1b00000000000000", "43010203"[:-2], "6261", "8201", "a101",
             "c6", "5f", "5f41", "9f01", "bf0102"],
)
def test_truncated_input_is_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="truncated"):
        decode(bytes.fromhex(hex_))


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(CBORError, match="trailing bytes"):
        decode(b"\x00\x00")
    with pytest.raises(CBORError, match="trailing bytes"):
        decode(bytes.fromhex("9fff") + b"\xff")


@pytest.mark.parametrize(
    "hex_",
    ["a2010201 03", "a2616101616102", "bf01020103ff", "a2 01 00 f5 00", "a2 f4 00 00 00",
     "a2 c66161 00 c66161 01", "a2 4100 01 5f4100ff 02"],
)
def test_duplicate_map_keys_are_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="duplicate map key"):
        decode(bytes.fromhex(hex_.replace(" ", "")))


@pytest.mark.parametrize("hex_", ["a18000", "a1a000", "a1c68000", "a1c6a00000", "bf9fff00ff"])
def test_arrays_and_maps_as_map_keys_are_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="map key that is an array or a map"):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize("hex_", ["81f93c00", "a101fa47c35000", "c6fb3ff199999999999a"])
def test_floats_inside_containers_are_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="floating-point numbers are not accepted"):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize("hex_", ["ff", "81ff", "a1ff00", "a101ff", "bf01ff", "c6ff", "82ff00"])
def test_break_where_no_indefinite_item_is_open_is_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="'break'"):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize("major", range(8))
@pytest.mark.parametrize("additional", [28, 29, 30])
def test_reserved_additional_information_28_to_30_is_rejected(
    major: int, additional: int
) -> None:
    with pytest.raises(CBORError, match="reserved"):
        decode(bytes([major << 5 | additional]) + bytes(8))


@pytest.mark.parametrize("hex_", ["1f", "3f", "df"])
def test_indefinite_length_integers_and_tags_are_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="cannot have indefinite length"):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    "hex_", ["5f6161ff", "7f4161ff", "5f5f4100ffff", "7f7f6161ffff", "5f01ff", "5f80ff"]
)
def test_indefinite_string_chunks_must_be_definite_strings_of_the_same_type(hex_: str) -> None:
    with pytest.raises(CBORError, match="chunk of an indefinite-length string"):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    "hex_",
    ["62c328", "62c080", "63eda080", "61ff", "64f4908080",  # bad byte, overlong, surrogate,
     "7f61c361bcff"],  # ... too big, and a character split across two chunks
)
def test_invalid_utf8_text_is_rejected(hex_: str) -> None:
    with pytest.raises(CBORError, match="not valid UTF-8"):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    ("hex_", "value"),
    [("1800", 0), ("190000", 0), ("1a00000017", 23), ("1b0000000000000018", 24),
     ("3800", -1), ("5800", b""), ("79000161", "a"), ("980101", [1]), ("b8010102", {1: 2}),
     ("d8060a", Tag(6, 10))],
)
def test_non_shortest_arguments_are_accepted_as_real_encoders_emit_them(
    hex_: str, value: CBORValue
) -> None:
    assert _shape(decode(bytes.fromhex(hex_))) == _shape(value)


def test_integer_range_edges_encode_and_outside_values_are_refused() -> None:
    assert encode(2**64 - 1) == bytes.fromhex("1bffffffffffffffff")
    assert encode(-(2**64)) == bytes.fromhex("3bffffffffffffffff")
    for bad in (2**64, -(2**64) - 1):
        with pytest.raises(CBORError, match="outside"):
            encode(bad)


@pytest.mark.parametrize(
    "bad",
    [1.5, (1, 2), {1}, bytearray(b"x"), object(), [1, 2.0], {"k": 1j}, "\ud800",
     Tag(-1, 0), Tag(2**64, 0), Tag(True, 0)],
)
def test_encoding_unsupported_values_raises_cbor_error(bad: Any) -> None:
    with pytest.raises(CBORError, match="cannot encode"):
        encode(bad)


def test_decode_refuses_input_that_is_not_bytes_and_accepts_bytes_like() -> None:
    with pytest.raises(CBORError, match="must be bytes"):
        decode("00")  # type: ignore[arg-type]
    assert decode(bytearray(b"\x01")) == 1  # type: ignore[arg-type]
    assert decode(memoryview(b"\x41\x07")) == b"\x07"  # type: ignore[arg-type]


def test_map_order_is_kept_both_ways() -> None:
    value: CBORValue = {"z": 1, "a": 2, 10: 3, 1: 4}
    assert encode(value).hex() == "a4617a01616102" + "0a03" + "0104"
    decoded = decode(encode(value))
    assert isinstance(decoded, dict)
    assert list(decoded) == ["z", "a", 10, 1]


def test_booleans_and_integers_keep_their_types() -> None:
    assert encode([True, 1, False, 0]).hex() == "84f501f400"
    decoded = decode(bytes.fromhex("84f501f400"))
    assert [type(v) for v in decoded] == [bool, int, bool, int]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Real Nitro attestation documents (untagged COSE_Sign1 from /dev/nsm)

_NITRO = VECTORS / "nitro"
_EXPECTED = json.loads((_NITRO / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_real_nitro_attestation_documents_decode_to_the_documented_facts(name: str) -> None:
    facts = _EXPECTED[name]
    raw = (_NITRO / name).read_bytes()
    assert len(raw) == facts["cose_sign1"]["total_len"]
    document = decode(raw)
    assert isinstance(document, list) and len(document) == 4
    protected, unprotected, payload_raw, signature = document
    assert isinstance(protected, bytes) and isinstance(payload_raw, bytes)
    assert protected.hex() == facts["cose_sign1"]["protected_hex"]
    assert _shape(decode(protected)) == _shape({1: -35})  # alg ES384
    assert _shape(unprotected) == _shape({})
    assert isinstance(signature, bytes) and len(signature) == 96
    assert len(payload_raw) == facts["cose_sign1"]["payload_len"]

    payload = decode(payload_raw)
    assert isinstance(payload, dict)
    assert list(payload) == facts["payload_keys_in_order"]  # nine keys, NSM's order
    assert payload["module_id"] == facts["module_id"]
    assert payload["digest"] == facts["digest"]
    assert payload["timestamp"] == facts["timestamp_ms"]
    pcrs = payload["pcrs"]
    assert isinstance(pcrs, dict) and list(pcrs) == list(range(16))
    for index, pcr in pcrs.items():
        assert isinstance(pcr, bytes) and len(pcr) == 48
        assert pcr.hex() == facts["pcrs_nonzero"].get(str(index), "00" * 48)
    cabundle = payload["cabundle"]
    assert isinstance(cabundle, list) and len(cabundle) == facts["cabundle_len"]
    assert isinstance(cabundle[0], bytes)
    assert hashlib.sha256(cabundle[0]).hexdigest() == facts["cabundle0_sha256_fingerprint"]
    assert isinstance(payload["certificate"], bytes)
    for field in ("public_key", "user_data", "nonce"):
        expected, actual = facts[field], payload[field]
        if expected is None:
            assert actual is None
        else:
            assert isinstance(actual, bytes) and len(actual) == expected["len"]
            if "sha256" in expected:
                assert hashlib.sha256(actual).hexdigest() == expected["sha256"]
            else:
                assert actual.hex() == expected["hex"]


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_re_encoding_a_real_nitro_document_reproduces_the_nsm_bytes(name: str) -> None:
    """The NSM writes shortest forms in a fixed key order; keeping insertion order must give
    back the same bytes (proof that nothing is reordered or widened)."""
    raw = (_NITRO / name).read_bytes()
    document = decode(raw)
    assert encode(document) == raw
    assert isinstance(document, list) and isinstance(document[2], bytes)
    assert encode(decode(document[2])) == document[2]
