"""enclave.strict_json: the one strict JSON reader; only JSONError escapes, never content."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.strict_json import MAX_DEPTH, MAX_NUMBER_CHARS, JSONError, loads

SECRET = "Big Bird"


def test_an_ordinary_document_reads_as_json_loads_reads_it() -> None:
    document = {"names": ["a", SECRET], "n": 7, "x": -1.5e3, "ok": True, "none": None}
    assert loads(json.dumps(document).encode(), max_bytes=1000) == document
    assert loads(json.dumps(document), max_bytes=1000) == document


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"a": 1, "a": 2}', "repeated key"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b"[Infinity]", "Infinity is not JSON"),
        (b"[-Infinity]", "-Infinity is not JSON"),
        (b"[" + b"9" * (MAX_NUMBER_CHARS + 1) + b"]", "more than"),
        (b"[1." + b"5" * MAX_NUMBER_CHARS + b"]", "more than"),
        (b"[" + b"9" * 5000 + b"]", "more than"),  # past CPython's 4300-digit int limit
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b'{"a": "\xff"}', "not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b'{"a": 1', "not JSON: Expecting"),
        (b"", "not JSON: Expecting value"),
        (b"[1] [2]", "not JSON: Extra data"),
    ],
)
def test_refusals_name_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(JSONError, match=problem):
        loads(data, max_bytes=1 << 20)


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(JSONError, match="11 bytes, more than the 10 allowed"):
        loads(b'["abcdefg"]', max_bytes=10)
    with pytest.raises(JSONError, match="more than the 10 allowed"):
        loads('["abcdéfg"]', max_bytes=10)  # str size counts UTF-8 bytes


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 200_000])
def test_deep_nesting_is_refused_at_any_depth(depth: int) -> None:
    for opening, closing in (("[", "]"), ('{"a":', "}")):
        data = (opening * depth + "1" + closing * depth).encode()
        with pytest.raises(JSONError, match="nested more than"):
            loads(data, max_bytes=len(data))


def test_nesting_up_to_the_limit_is_accepted() -> None:
    data = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    value = loads(data, max_bytes=len(data))
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []
    assert loads("[[1]]", max_bytes=10, max_depth=2) == [[1]]
    with pytest.raises(JSONError):
        loads("[[[1]]]", max_bytes=10, max_depth=2)


def test_no_message_carries_the_input() -> None:
    for data in (
        f'{{"{SECRET}": 1, "{SECRET}": 2}}',
        f'["{SECRET}" ',
        f'["{SECRET}", NaN]',
        f'{{"{SECRET}": {"9" * 40}}}',
    ):
        with pytest.raises(JSONError) as caught:
            loads(data, max_bytes=1000)
        assert SECRET not in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256) | st.text(max_size=256))
def test_any_input_gives_a_value_or_json_error(data: bytes | str) -> None:
    try:
        loads(data, max_bytes=200)
    except JSONError:
        pass
