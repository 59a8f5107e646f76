"""Envelopes: both formats open, every malformed or tampered envelope gives one clear error,
and no error message carries a listed name."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.kms import KMSError
from noflylist import envelope
from noflylist.envelope import EnvelopeError
from noflylist.tools import seal
from tests.support.fake_kms import KEY_ARN, FakeDataKeys

NAMES = ["bigbird", "Oscar, the Grouch", "zoë", "两个头的怪物"]


def sealed(kms: FakeDataKeys) -> dict[str, Any]:
    document = seal.seal_v2(NAMES, kms, "alias/noflylist", serial=3)
    value: dict[str, Any] = json.loads(document)
    return value


def open_document(value: dict[str, Any], kms: FakeDataKeys) -> list[str]:
    parsed = envelope.parse(json.dumps(value).encode())
    return list(envelope.decrypt(parsed, kms))


def test_v2_round_trip_keeps_names_with_commas_and_unicode() -> None:
    kms = FakeDataKeys()
    value = sealed(kms)
    assert value["format"] == "noflylist-envelope-v2"
    assert value["key_id"] == KEY_ARN
    assert value["entries"] == 4 and value["serial"] == 3
    assert value["encryption_context"] == {"app": "noflylist"}
    assert open_document(value, kms) == NAMES


def test_v2_envelope_holds_no_plaintext_name() -> None:
    kms = FakeDataKeys()
    document = seal.seal_v2(NAMES, kms, "k", serial=1)
    for name in NAMES:
        assert name.encode() not in document
        assert name.encode("unicode_escape") not in document


@pytest.mark.parametrize(
    "field, value",
    [("serial", 99), ("entries", 5), ("created", "2030-01-01T00:00:00Z")],
)
def test_v2_header_is_authenticated(field: str, value: object) -> None:
    kms = FakeDataKeys()
    document = sealed(kms)
    document[field] = value
    with pytest.raises(EnvelopeError, match="authentication failed") as caught:
        open_document(document, kms)
    _assert_no_names(str(caught.value))


def test_v2_key_id_is_passed_to_kms_which_refuses_another_key() -> None:
    kms = FakeDataKeys()
    document = sealed(kms)
    document["key_id"] = KEY_ARN + "x"
    with pytest.raises(KMSError, match="IncorrectKeyException"):
        open_document(document, kms)


def test_v2_changed_ciphertext_fails_authentication() -> None:
    kms = FakeDataKeys()
    document = sealed(kms)
    raw = bytearray(base64.b64decode(document["ciphertext"]))
    raw[5] ^= 1
    document["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(EnvelopeError, match="authentication failed"):
        open_document(document, kms)


def test_v2_entry_count_must_match_the_list() -> None:
    kms = FakeDataKeys()
    document = seal.seal_v2(NAMES, kms, "k", serial=1)
    parsed = envelope.parse(document)
    lying = envelope.Envelope(**{**parsed.__dict__, "entries": len(NAMES) + 1})
    names = envelope.decrypt(lying, kms)
    # The names stream out one at a time (no list of them is made); the count is checked
    # once the last one has been read.
    read = [next(names) for _ in NAMES]
    assert read == NAMES
    with pytest.raises(EnvelopeError, match=f"says {len(NAMES) + 1} entries .* {len(NAMES)} "):
        next(names)


def _resealed_body(kms: FakeDataKeys, body: bytes) -> envelope.Envelope:
    """A genuine envelope whose authenticated list is ``body`` (bytes no sealer of ours
    writes), sealed under the same data key, nonce and header."""
    parsed = envelope.parse(seal.seal_v2(NAMES, kms, "k", serial=1))
    data_key = kms.decrypt(parsed.data_key_ciphertext, encryption_context=parsed.encryption_context)
    ciphertext = AESGCM(data_key).encrypt(parsed.nonce, body, parsed.associated_data)
    return envelope.Envelope(**{**parsed.__dict__, "ciphertext": ciphertext, "entries": None})


def test_v2_list_that_is_not_utf8_is_refused_without_echoing_it() -> None:
    kms = FakeDataKeys()
    broken = _resealed_body(kms, b"bigbird\nOscar \xff\xfe Grouch\n")
    with pytest.raises(EnvelopeError, match="not UTF-8") as caught:
        list(envelope.decrypt(broken, kms))
    assert "Oscar" not in str(caught.value) and "bigbird" not in str(caught.value)


def test_v2_blank_lines_and_a_missing_final_newline_are_fine() -> None:
    kms = FakeDataKeys()
    body = "\n\nbigbird\n \t\n\u3000\nzoë".encode()
    assert list(envelope.decrypt(_resealed_body(kms, body), kms)) == ["bigbird", "zoë"]


def _capture_buffer(monkeypatch: pytest.MonkeyPatch) -> list[bytearray]:
    buffers: list[bytearray] = []
    real = envelope._lines_then_wipe

    def capturing(plaintext: bytearray) -> Iterator[str]:
        buffers.append(plaintext)
        return real(plaintext)

    monkeypatch.setattr(envelope, "_lines_then_wipe", capturing)
    return buffers


def test_v2_decrypted_list_is_zeroed_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    buffers = _capture_buffer(monkeypatch)
    kms = FakeDataKeys()
    names = envelope.decrypt(envelope.parse(seal.seal_v2(NAMES, kms, "k", serial=1)), kms)
    assert next(names) == NAMES[0]
    assert b"Grouch" in buffers[0]  # still being read
    assert list(names) == NAMES[1:]
    assert len(buffers[0]) > 0 and buffers[0] == bytes(len(buffers[0]))


def test_v2_decrypted_list_is_zeroed_when_the_reader_stops_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buffers = _capture_buffer(monkeypatch)
    kms = FakeDataKeys()
    names = envelope.decrypt(envelope.parse(seal.seal_v2(NAMES, kms, "k", serial=1)), kms)
    assert next(names) == NAMES[0]
    names.close()  # what happens when the table build fails or the generator is dropped
    assert buffers[0] == bytes(len(buffers[0]))


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d.pop("nonce"), "lacks field"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.update(format="noflylist-envelope-v9"), "unknown envelope format"),
        (lambda d: d.update(serial=-1), "'serial' must be"),
        (lambda d: d.update(serial=True), "'serial' must be"),
        (lambda d: d.update(serial="7"), "'serial' must be"),
        (lambda d: d.update(entries=None), "'entries' must be"),
        (lambda d: d.update(key_id=""), "'key_id' must be"),
        (lambda d: d.update(encryption_context={"a": 1}), "encryption_context"),
        (lambda d: d.update(nonce="AAAA"), "'nonce' must be 12 bytes"),
        (lambda d: d.update(ciphertext="not base64!"), "not valid base64"),
        (lambda d: d.update(data_key_ciphertext=""), "non-empty base64"),
    ],
)
def test_malformed_v2_envelopes_name_the_problem(mutate: Any, words: str) -> None:
    document = sealed(FakeDataKeys())
    mutate(document)
    with pytest.raises(EnvelopeError, match=words) as caught:
        envelope.parse(json.dumps(document).encode())
    _assert_no_names(str(caught.value))


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"names": []}', "neither a 'format' field"),
        (b'{"data-key-ciphertext-base64": "AAAA"}', "neither"),
    ],
)
def test_documents_that_are_no_envelope(raw: bytes, words: str) -> None:
    with pytest.raises(EnvelopeError, match=words):
        envelope.parse(raw)


def test_oversized_envelope_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "MAX_ENVELOPE_BYTES", 100)
    with pytest.raises(EnvelopeError, match="more than the 100 allowed"):
        envelope.parse(b" " * 101)


def public_demo_envelope(kms: FakeDataKeys, names: list[str]) -> bytes:
    """Made the way the public demo's sealing script does it, not with our code."""
    key = kms.generate_data_key("k")
    assert key.plaintext is not None
    token = Fernet(base64.b64encode(key.plaintext)).encrypt(",".join(names).encode("utf-8"))
    return json.dumps(
        {
            "data-key-ciphertext-base64": base64.b64encode(key.ciphertext_blob).decode(),
            "aes-ciphertext-base64": token.decode(),
        }
    ).encode()


def test_public_demo_fernet_envelope_opens() -> None:
    kms = FakeDataKeys()
    names = ["bigbird", "oscarthegrouch", "bert"]
    parsed = envelope.parse(public_demo_envelope(kms, names))
    assert parsed.format == "fernet" and parsed.serial == 0 and parsed.key_id is None
    assert list(envelope.decrypt(parsed, kms)) == names


def test_our_fernet_seal_is_what_the_public_demo_reads() -> None:
    kms = FakeDataKeys()
    document = json.loads(seal.seal_fernet(["bigbird", "bert"], kms, "k"))
    assert set(document) == {"data-key-ciphertext-base64", "aes-ciphertext-base64"}
    # The public demo's reader: base64 of the KMS plaintext is the Fernet key.
    plaintext_key = kms.decrypt(base64.b64decode(document["data-key-ciphertext-base64"]))
    token = document["aes-ciphertext-base64"].encode()
    assert Fernet(base64.b64encode(plaintext_key)).decrypt(token) == b"bigbird,bert"


def test_fernet_seal_refuses_names_with_commas() -> None:
    with pytest.raises(EnvelopeError, match="use --format v2"):
        seal.seal_fernet(["Oscar, the Grouch"], FakeDataKeys(), "k")


def test_fernet_token_under_another_key_fails_cleanly() -> None:
    kms = FakeDataKeys()
    document = json.loads(public_demo_envelope(kms, ["bert"]))
    other = json.loads(public_demo_envelope(kms, ["ernie"]))
    document["aes-ciphertext-base64"] = other["aes-ciphertext-base64"]
    parsed = envelope.parse(json.dumps(document).encode())
    with pytest.raises(EnvelopeError, match="does not open") as caught:
        list(envelope.decrypt(parsed, kms))
    _assert_no_names(str(caught.value))


def test_sealing_refuses_empty_or_multi_line_names() -> None:
    for bad in (["ok", "  "], ["two\nlines"]):
        with pytest.raises(EnvelopeError, match="one non-empty line"):
            seal.seal_v2(bad, FakeDataKeys(), "k", serial=1)


def _assert_no_names(text: str) -> None:
    for name in (*NAMES, "bert", "ernie"):
        assert name not in text


# -- hostile documents: whoever can write the envelope's place chooses these bytes ------------

#: Put into hostile documents; no error message may quote it.
MARKER = "Elmo-the-marker"


def _refusal(document: bytes) -> str:
    """``parse``'s refusal of ``document``: an EnvelopeError that quotes none of it and
    chains no foreign exception (whose message or traceback could)."""
    with pytest.raises(EnvelopeError) as caught:
        envelope.parse(document)
    error = caught.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    _assert_no_names(str(error))
    assert MARKER not in str(error)
    return str(error)


def _v2_with(kms: FakeDataKeys, field: str, raw: bytes) -> bytes:
    """A sealed v2 document whose ``field`` is the raw JSON text ``raw``."""
    document = sealed(kms)
    document[field] = "@@"
    return json.dumps(document).encode().replace(b'"@@"', raw)


DEEP = 300_000


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda kms: b"[" * DEEP + b"]" * DEEP, "nested more than 2"),
        (lambda kms: b'{"a":' * DEEP + b"1" + b"}" * DEEP, "nested more than 2"),
        (lambda kms: _v2_with(kms, "encryption_context", b'{"a":' * DEEP + b'""' + b"}" * DEEP),
         "nested more than 2"),
        (lambda kms: _v2_with(kms, "encryption_context", b'{"app": {"x": "y"}}'),
         "nested more than 2"),
        (lambda kms: _v2_with(kms, "serial", b"9" * 5000), "more than 32 characters"),
        (lambda kms: _v2_with(kms, "serial", b"9" * 33), "more than 32 characters"),
        (lambda kms: _v2_with(kms, "serial", str(envelope.MAX_COUNT + 1).encode()),
         "'serial' must be an integer in 0..9007199254740991"),
        (lambda kms: _v2_with(kms, "entries", str(2**60).encode()), "'entries' must be"),
        (lambda kms: _v2_with(kms, "serial", b"1e400"), "'serial' must be"),
        (lambda kms: _v2_with(kms, "serial", b"3.0"), "'serial' must be"),
        (lambda kms: _v2_with(kms, "serial", b"NaN"), "NaN is not JSON"),
        (lambda kms: _v2_with(kms, "serial", b'3, "serial": 4'), "repeated key"),
        (lambda kms: _v2_with(kms, "key_id", b'"\\ud800"'), "'key_id' must be"),
        (lambda kms: _v2_with(kms, "created", b'"2026\\udfff"'), "'created' must be"),
        (lambda kms: _v2_with(kms, "encryption_context", b'{"app": "\\ud800"}'),
         "encryption_context"),
        (lambda kms: _v2_with(kms, "encryption_context", b'{"\\udc00": "x"}'),
         "encryption_context"),
        (lambda kms: seal.seal_v2(NAMES, kms, "k", serial=3).decode().encode("utf-16"),
         "not UTF-8"),
        (lambda kms: b"\xef\xbb\xbf" + seal.seal_v2(NAMES, kms, "k", serial=3),
         "byte-order mark"),
    ],
    ids=["deep arrays", "deep objects", "deep encryption_context", "nested context value",
         "serial of 5000 digits", "serial of 33 digits", "serial 2**53", "entries 2**60",
         "serial 1e400", "serial 3.0", "serial NaN", "serial twice", "key_id lone surrogate",
         "created lone surrogate", "context value lone surrogate", "context key lone surrogate",
         "UTF-16", "byte-order mark"],
)  # fmt: skip
def test_hostile_v2_documents_raise_envelope_error_naming_the_cause(make: Any, words: str) -> None:
    assert words in _refusal(make(FakeDataKeys()))


def test_an_unknown_field_is_counted_not_named() -> None:
    document = sealed(FakeDataKeys())
    document[MARKER] = 1
    assert "1 unknown field(s)" in _refusal(json.dumps(document).encode())


def _fernet_document(kms: FakeDataKeys) -> bytes:
    return public_demo_envelope(kms, ["bert", "ernie"])


@pytest.mark.parametrize("which", ["v2", "fernet"])
def test_every_truncation_of_either_format_raises_envelope_error(which: str) -> None:
    kms = FakeDataKeys()
    document = (seal.seal_v2(NAMES, kms, "k", serial=3) if which == "v2"
                else _fernet_document(kms)).rstrip()  # fmt: skip
    assert envelope.parse(document).format in ("noflylist-envelope-v2", "fernet")
    for end in range(len(document)):
        _refusal(document[:end])


@pytest.mark.parametrize("which", ["v2", "fernet"])
@pytest.mark.parametrize(
    "tail", [b"x", b"{}", b"[]", b"0", b"\x00", b"\xff", b",", b"}", b'"' + MARKER.encode()]
)
def test_a_valid_document_followed_by_garbage_raises_envelope_error(
    which: str, tail: bytes
) -> None:
    kms = FakeDataKeys()
    document = (seal.seal_v2(NAMES, kms, "k", serial=3) if which == "v2"
                else _fernet_document(kms))  # fmt: skip
    _refusal(document + tail)


#: One value of every JSON type, and the awkward ones: each goes into every field in turn.
WRONG_VALUES: list[object] = [
    None, True, False, 0, -1, 1.5, 2**53, "", "x", "AAAA", "\ud800", [], {}, [MARKER],
    {MARKER: MARKER}, {MARKER: 1},
]  # fmt: skip


def _refused_or_unopenable(data: bytes, kms: FakeDataKeys) -> None:
    try:
        parsed = envelope.parse(data)
    except EnvelopeError:
        parsed = None
    if parsed is None:
        _refusal(data)  # again, outside the except block, to inspect the error's context
        return
    with pytest.raises((EnvelopeError, KMSError)) as caught:
        list(envelope.decrypt(parsed, kms))
    assert MARKER not in str(caught.value)
    _assert_no_names(str(caught.value))


@pytest.mark.parametrize("field", sorted(envelope._V2_FIELDS))
def test_any_value_in_any_v2_field_is_refused_or_fails_authentication(field: str) -> None:
    """Changing one field of a sealed envelope must never give names: parse refuses the
    value, or KMS or AES-GCM refuses the changed envelope."""
    kms = FakeDataKeys()
    for value in WRONG_VALUES:
        document = sealed(kms)
        document[field] = value
        _refused_or_unopenable(json.dumps(document).encode(), kms)


@pytest.mark.parametrize("field", ["data-key-ciphertext-base64", "aes-ciphertext-base64"])
def test_any_value_in_any_fernet_field_is_refused_or_fails_authentication(field: str) -> None:
    kms = FakeDataKeys()
    for value in WRONG_VALUES:
        document = json.loads(_fernet_document(kms))
        document[field] = value
        _refused_or_unopenable(json.dumps(document).encode(), kms)


def test_the_largest_serial_round_trips_and_sealing_refuses_a_larger_one() -> None:
    kms = FakeDataKeys()
    document = seal.seal_v2(NAMES, kms, "k", serial=envelope.MAX_COUNT)
    assert envelope.parse(document).serial == 2**53 - 1
    for bad in (envelope.MAX_COUNT + 1, -1):
        with pytest.raises(EnvelopeError, match=r"serial must be an integer in 0\.\."):
            seal.seal_v2(NAMES, kms, "k", serial=bad)


def test_a_failure_no_check_foresaw_in_parse_is_an_envelope_error_naming_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(value: dict[str, Any]) -> envelope.Envelope:
        raise KeyError(MARKER)  # as a bug in a field check would

    monkeypatch.setattr(envelope, "_parse_v2", broken)
    message = _refusal(seal.seal_v2(NAMES, FakeDataKeys(), "k", serial=3))
    assert "KeyError while parsing the envelope" in message


def test_a_failure_no_check_foresaw_while_reading_names_is_an_envelope_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(plaintext: bytearray) -> Iterator[str]:
        yield "first"
        raise UnicodeError(NAMES[0])  # a foreign message quoting a listed name

    monkeypatch.setattr(envelope, "_lines_then_wipe", broken)
    kms = FakeDataKeys()
    names = envelope.decrypt(envelope.parse(seal.seal_v2(NAMES, kms, "k", serial=1)), kms)
    assert next(names) == "first"
    with pytest.raises(EnvelopeError, match="UnicodeError while reading the") as caught:
        next(names)
    _assert_no_names(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_decryptors_own_errors_pass_through_unchanged() -> None:
    refusal = KMSError("AccessDeniedException", code="AccessDeniedException")

    class Refusing:
        def decrypt(self, ciphertext_blob: bytes, **_: object) -> bytes:
            raise refusal

    parsed = envelope.parse(seal.seal_v2(NAMES, FakeDataKeys(), "k", serial=1))
    with pytest.raises(KMSError) as caught:
        envelope.decrypt(parsed, Refusing())
    assert caught.value is refusal


def test_a_data_key_that_is_not_bytes_is_an_envelope_error() -> None:
    class Odd:
        def decrypt(self, ciphertext_blob: bytes, **_: object) -> str:
            return "k" * 32

    parsed = envelope.parse(seal.seal_v2(NAMES, FakeDataKeys(), "k", serial=1))
    with pytest.raises(EnvelopeError, match="TypeError while decrypting the envelope"):
        envelope.decrypt(parsed, Odd())  # type: ignore[arg-type]
