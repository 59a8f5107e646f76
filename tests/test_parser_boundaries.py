"""The smaller parsers of untrusted bytes raise only their own error, whatever the input.

``user_data`` (read by ``noflylist check`` from the service it checks), the JSON body of
``POST /v1/screen`` and the ``nitro-cli describe-eif`` file of ``noflylist policy``: each is
given deep nesting, huge numbers, wrong types at each position, truncations and garbage
after a valid document, and must answer with its own error, naming the cause and quoting
nothing of the input.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest

from noflylist import routes, wire
from noflylist.envelope import MAX_COUNT
from noflylist.tools import policy
from noflylist.transport import framing
from noflylist.wire import ServedList, UserDataError, decode_user_data

#: Put into hostile inputs; no error message may quote it.
MARKER = "Oscar-the-marker"
DIGEST = b"\x07" * 32
USER_DATA = cbor2.dumps({"envelope_sha256": DIGEST, "serial": 3, "version": "0.1.0"})


def _no_chain(error: BaseException) -> None:
    """No foreign exception is chained, so no traceback shows one's message either."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# -- user_data ---------------------------------------------------------------------------------


def _user_data_refusal(data: object) -> str:
    with pytest.raises(UserDataError) as caught:
        decode_user_data(data)  # type: ignore[arg-type]
    _no_chain(caught.value)
    assert MARKER not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (MARKER, "must be bytes"),
        (None, "must be bytes"),
        (2**62, "must be bytes"),
        (b"\x81" * 100_000, "nesting deeper"),
        (b"\xa3" + b"\x9f" * 50_000, "nesting deeper"),
        (cbor2.dumps({"envelope_sha256": None, "serial": MAX_COUNT + 1, "version": "1"}),
         "serial is not an integer in 0..9007199254740991"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 2**64 - 1, "version": "1"}), "serial"),
        (cbor2.dumps({"envelope_sha256": None, "serial": cbor2.CBORTag(2, b"\x01" * 40),
                      "version": "1"}), "nesting deeper"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 1, "version": MARKER * 10}), "version"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 1, "version": "1", MARKER: 1,
                      MARKER + "2": 2, MARKER + "3": 3}), "more data items"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 1, "version": "1", MARKER: 1}),
         "exactly the keys"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 1, MARKER: 1}), "exactly the keys"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 1, "version": "1",
                      "answer_key": b"\x01" * 31}), "answer_key is not a 32-byte"),
        (cbor2.dumps({"envelope_sha256": None, "serial": 1, "version": "1",
                      "answer_key": None}), "answer_key is null"),
    ],
    ids=["text", "None", "an int", "deep arrays", "deep indefinite arrays", "serial 2**53",
         "serial 2**64-1", "bignum serial", "long version", "extra keys", "extra key",
         "other key", "short answer key", "null answer key"],
)  # fmt: skip
def test_hostile_user_data_raises_user_data_error_naming_the_cause(
    data: object, words: str
) -> None:
    assert words in _user_data_refusal(data)


def test_every_truncation_and_any_garbage_tail_of_user_data_is_refused() -> None:
    assert decode_user_data(USER_DATA) == ServedList(DIGEST, 3, "0.1.0")
    for end in range(len(USER_DATA)):
        _user_data_refusal(USER_DATA[:end])
    for tail in (b"\x00", b"\xff", b"\xa0", USER_DATA):
        assert "trailing bytes" in _user_data_refusal(USER_DATA + tail)


WRONG_VALUES: list[object] = [
    None, True, -1, 0, MAX_COUNT, b"", b"\x00" * 31, DIGEST, "", "x", "v" * 65, [], {},
    [DIGEST], {"serial": 1}, cbor2.CBORTag(18, DIGEST),
]  # fmt: skip


@pytest.mark.parametrize("key", ["envelope_sha256", "serial", "version"])
def test_any_value_under_any_user_data_key_is_read_with_its_type_or_refused(key: str) -> None:
    for value in WRONG_VALUES:
        fields: dict[str, Any] = {"envelope_sha256": DIGEST, "serial": 3, "version": "0.1.0"}
        fields[key] = value
        data = cbor2.dumps(fields)
        try:
            served = decode_user_data(data)
        except UserDataError:
            served = None
        if served is None:
            _user_data_refusal(data)
            continue
        assert served.envelope_sha256 is None or len(served.envelope_sha256) == 32
        assert served.serial is None or (type(served.serial) is int and served.serial >= 0)
        assert isinstance(served.version, str) and 0 < len(served.version) <= 64


def test_an_unforeseen_failure_reading_user_data_names_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(digest: object, serial: object, version: object) -> ServedList:
        raise TypeError(MARKER)

    monkeypatch.setattr(wire, "ServedList", broken)
    assert "could not be read (TypeError)" in _user_data_refusal(USER_DATA)


# -- the JSON body of POST /v1/screen ----------------------------------------------------------


def _manifest_refusal(body: bytes) -> str:
    headers = {"content-type": "application/json"}
    request = framing.Request("POST", "/v1/screen", False, headers, body, True, 0.0)
    with pytest.raises(routes.RequestRejected) as caught:
        routes._parse_manifest(request)
    assert caught.value.status == 400
    _no_chain(caught.value)
    assert MARKER not in str(caught.value)
    return str(caught.value)


MANIFEST = json.dumps({"names": [MARKER, "Kermit"]}).encode()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 2"),
        (b'{"names": [["Kermit"]]}', "nested more than 2"),
        (b'{"names": [' + b"9" * 5000 + b"]}", "more than 32 characters"),
        (b'{"names": [1e400]}', "names[0] is not a string"),
        (b'{"names": ["a"], "names": ["' + MARKER.encode() + b'"]}', "repeated key"),
        (b'{"names": [-Infinity]}', "-Infinity is not JSON"),
        (MANIFEST + b" x", "Extra data"),
        (MANIFEST + b"\xff", "not UTF-8"),
        (MANIFEST.decode().encode("utf-32"), "not UTF-8"),
        (b"\xef\xbb\xbf" + MANIFEST, "byte-order mark"),
    ],
    ids=["deep", "a list of lists", "5000 digits", "1e400", "repeated key", "-Infinity",
         "garbage tail", "tail not UTF-8", "UTF-32", "byte-order mark"],
)  # fmt: skip
def test_hostile_manifests_are_400_naming_the_cause_not_the_body(body: bytes, words: str) -> None:
    assert words in _manifest_refusal(body)


def test_every_truncation_of_a_manifest_is_400() -> None:
    request = framing.Request(
        "POST", "/v1/screen", False, {"content-type": "application/json"}, MANIFEST, True, 0.0
    )
    assert routes._parse_manifest(request) == [MARKER, "Kermit"]
    for end in range(len(MANIFEST)):
        _manifest_refusal(MANIFEST[:end])


# -- nitro-cli describe-eif --------------------------------------------------------------------

PCR0 = "ab" * 48
DESCRIBE_EIF = json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": PCR0},
                           "ImageName": MARKER}).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        (DESCRIBE_EIF[:-1] + b', "EifVersion": ' + b"4" * 5000 + b"}", "more than 32 characters"),
        (DESCRIBE_EIF[:-1] + b', "Measurements": {}}', "repeated key"),
        (DESCRIBE_EIF + b"\x00", "Extra data"),
        (DESCRIBE_EIF.decode().encode("utf-16"), "not UTF-8"),
        (DESCRIBE_EIF[: len(DESCRIBE_EIF) // 2], "not JSON"),
        ('{"Measurements": {"PCR0": "\ud800"}}', "Measurements.PCR0"),
    ],
    ids=["deep", "5000 digits", "repeated key", "garbage tail", "UTF-16", "truncated",
         "lone surrogate"],
)  # fmt: skip
def test_hostile_describe_eif_files_raise_policy_error_naming_the_flag(
    text: bytes | str, words: str
) -> None:
    assert policy.measurements_from_describe_eif(DESCRIBE_EIF) == {0: bytes.fromhex(PCR0)}
    with pytest.raises(policy.PolicyError) as caught:
        policy.measurements_from_describe_eif(text)
    message = str(caught.value)
    assert message.startswith("--from-describe-eif") and words in message
    assert MARKER not in message
    _no_chain(caught.value)


def test_an_unforeseen_failure_reading_describe_eif_names_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(text: str, label: str) -> bytes:
        raise IndexError(MARKER)

    monkeypatch.setattr(policy, "_pcr_value", broken)
    with pytest.raises(policy.PolicyError, match=r"unreadable \(IndexError\)") as caught:
        policy.measurements_from_describe_eif(DESCRIBE_EIF)
    assert MARKER not in str(caught.value)
    _no_chain(caught.value)
