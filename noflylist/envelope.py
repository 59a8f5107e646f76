"""Envelopes: the encrypted list (or, v3, its keyed table) and its KMS-encrypted data key.

Three formats:

* **v2, ours** (the default for new envelopes)::

    {"format": "noflylist-envelope-v2", "key_id": "arn:aws:kms:…", "serial": 7,
     "created": "2026-11-26T14:00:00Z", "entries": 15,
     "encryption_context": {"app": "noflylist"},
     "data_key_ciphertext": "<base64 KMS blob>",
     "nonce": "<base64, 12 bytes>", "ciphertext": "<base64 AES-256-GCM>"}

  The list is UTF-8, one name a line (names may contain commas), encrypted with
  AES-256-GCM under the KMS data key. The associated data is the canonical JSON of every
  field but ``nonce`` and ``ciphertext``, so nobody can change the serial, the entry count
  or the key id without failing authentication. ``serial`` only grows: the service refuses
  an envelope older than the one it serves (no rollback to an older list).

  An optional ``clients`` field (v2 and v3) holds the base64 of the client policy
  (:mod:`noflylist.clients`: who may ask, and how much), in canonical form. It is part of
  the associated data like every header field, so nobody can add a client or raise a
  budget without the data key; it is read while parsing and put in service only once the
  decryption has authenticated it. An envelope without it is served open.

* **v3, a sealed, prebuilt table** (``seal --format v3``): a first line, one JSON header
  line, then the raw AES-256-GCM ciphertext (binary: no base64, no JSON around the bulk)::

    noflylist-envelope-v3
    {"format": "noflylist-envelope-v3", "key_id": …, "serial": 7, "created": …,
     "entries": 15, "stored_keys": 23, "skipped_empty": 0,
     "rule": "fold-1; unicode 15.0.0; tables …", "encryption_context": {"app": "noflylist"},
     "data_key_ciphertext": "<base64 KMS blob>", "nonce": "<base64, 12 bytes>"}
    <ciphertext of the table's key and slots, tag appended>

  The sealer keyed the names and placed their fingerprints (:func:`noflylist.table.
  build_parts`); the enclave decrypts the table straight into the buffer it serves from,
  checks its structure (:meth:`noflylist.table.ScreeningTable.from_sealed`) and never sees a
  listed name in clear. ``rule`` is the :func:`noflylist.matchkey.rule_identity` it was keyed
  under; a service under another rule (or another Unicode version) refuses it and says how to
  reseal. ``entries`` counts distinct names, ``stored_keys`` the fingerprints. The associated
  data is, as in v2, the canonical JSON of every header field but ``nonce``.

* **fernet, the public demo's** (read for compatibility; ``seal --format fernet`` writes
  it)::

    {"data-key-ciphertext-base64": "<base64 KMS blob>",
     "aes-ciphertext-base64": "<Fernet token>"}

  The KMS data key, base64-encoded, is the Fernet key; the token holds the names
  comma-separated. It has no serial, key id or entry count.

Every malformed envelope gives one :class:`EnvelopeError` naming what is wrong, never a
traceback, never any plaintext. Whoever can write where the envelope is kept (the bucket's
writers, or a file on the host) chooses these bytes, so :func:`parse`, :func:`decrypt` and
the names it yields are each a boundary: any other exception from inside becomes an
:class:`EnvelopeError` naming its type (see :func:`_unexpected`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave import strict_json
from enclave.errors import NoflylistError
from noflylist import matchkey
from noflylist.clients import ClientPolicy, ClientPolicyError, parse_policy
from noflylist.table import ScreeningError, ScreeningTable
from noflylist.wire import MAX_SERIAL

FORMAT_V2 = "noflylist-envelope-v2"
FORMAT_V3 = "noflylist-envelope-v3"
#: A v3 envelope's first line: it tells the binary framing from a JSON document.
V3_MAGIC = FORMAT_V3.encode("ascii") + b"\n"
#: Longest v3 header line (the JSON between the first line and the ciphertext).
MAX_V3_HEADER_BYTES = 64 * 1024
FORMAT_FERNET = "fernet"
#: Upper bound on an envelope document: 2 million names of ~20 bytes, base64-encoded, is
#: about 55 MiB; anything much larger is not an envelope of ours.
MAX_ENVELOPE_BYTES = 128 * 1024 * 1024
#: Deepest JSON nesting of an envelope: v2's object holds one more, ``encryption_context``.
MAX_JSON_DEPTH = 2
#: Largest ``serial`` and ``entries``: both are exported as /metrics gauges, which are
#: floats, exact up to 2**53; JSON readers in JavaScript have the same limit. The serial is
#: also bound into ``user_data``, so the bound is the wire format's.
MAX_COUNT = MAX_SERIAL
#: KMS data keys for AES-256 (and Fernet's signing + encryption halves) are 32 bytes.
DATA_KEY_BYTES = 32
#: AES-GCM's standard nonce length.
NONCE_BYTES = 12
#: AES-GCM's tag, appended to the ciphertext.
_GCM_TAG_BYTES = 16
#: The encryption context new envelopes bind their data key to; a key policy may require it.
DEFAULT_ENCRYPTION_CONTEXT: Mapping[str, str] = MappingProxyType({"app": "noflylist"})
_FERNET_FIELDS = frozenset({"data-key-ciphertext-base64", "aes-ciphertext-base64"})
_V2_FIELDS = frozenset(
    {
        "format",
        "key_id",
        "serial",
        "created",
        "entries",
        "encryption_context",
        "data_key_ciphertext",
        "nonce",
        "ciphertext",
    }
)
_V3_FIELDS = (_V2_FIELDS - {"ciphertext"}) | {"stored_keys", "skipped_empty", "rule"}
#: Fields v2 and v3 may carry: ``clients``, the base64 of the sealed client policy
#: (:mod:`noflylist.clients`, canonical bytes); without it the list is served open.
_OPTIONAL_FIELDS = frozenset({"clients"})


class EnvelopeError(NoflylistError):
    """The envelope is malformed, or it does not decrypt. The message says which part."""


class DataKeyDecryptor(Protocol):
    """What opens the data key: :class:`enclave.attested_decrypt.Decryptor` in the service."""

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes: ...


@dataclass(frozen=True)
class Envelope:
    """A parsed, not yet decrypted envelope. ``serial`` is 0 for the fernet format."""

    format: str
    data_key_ciphertext: bytes = field(repr=False)
    #: v3's is a view of the document (tens of MiB at millions of names: not copied).
    ciphertext: bytes | memoryview = field(repr=False)
    key_id: str | None = None
    serial: int = 0
    created: str | None = None
    entries: int | None = None
    encryption_context: Mapping[str, str] = field(default_factory=dict)
    nonce: bytes = b""
    associated_data: bytes = field(default=b"", repr=False)
    #: v3 only: the table's counts and the match rule it was keyed under.
    stored_keys: int = 0
    skipped_empty: int = 0
    rule: str | None = None
    #: v2 and v3: the sealed client policy, or ``None`` (served open). Authenticated only
    #: once :func:`decrypt` or :func:`decrypt_table` has checked the tag.
    clients: ClientPolicy | None = None


# -- reading ---------------------------------------------------------------------------


def parse(document: bytes | bytearray) -> Envelope:
    """Parse and check an envelope document of either format, without decrypting it."""
    try:
        return _parse(document)
    except EnvelopeError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only EnvelopeError leaves
        raise _unexpected(exc, "parsing the envelope") from None


def _unexpected(exc: Exception, step: str) -> EnvelopeError:
    """The error for a failure no check above foresaw. It names the exception's type only:
    its message could quote the envelope (or, once decrypted, a listed name)."""
    return EnvelopeError(
        f"envelope refused: {type(exc).__name__} while {step}, a failure this reader has no "
        "specific message for; seal the list again, and report this"
    )


def _parse(document: bytes | bytearray) -> Envelope:
    if len(document) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(
            f"envelope is {len(document)} bytes, more than the {MAX_ENVELOPE_BYTES} allowed"
        )
    if document.startswith(V3_MAGIC):
        return _parse_v3(document)
    try:
        value = strict_json.loads(
            document, max_bytes=MAX_ENVELOPE_BYTES, max_depth=MAX_JSON_DEPTH
        )
    except strict_json.JSONError as exc:
        raise EnvelopeError(f"envelope is not JSON this service reads: {exc}") from None
    if not isinstance(value, dict):
        raise EnvelopeError("envelope is not a JSON object")
    if "format" in value:
        return _parse_v2(value)
    if _FERNET_FIELDS <= value.keys():
        return _parse_fernet(value)
    raise EnvelopeError(
        "envelope has neither a 'format' field (v2) nor the public demo's "
        "'data-key-ciphertext-base64' and 'aes-ciphertext-base64' fields"
    )


def _parse_v2(value: dict[str, Any]) -> Envelope:
    if value["format"] != FORMAT_V2:
        raise EnvelopeError(f"unknown envelope format tag; expected {FORMAT_V2!r}")
    missing = sorted(_V2_FIELDS - value.keys())
    if missing:
        raise EnvelopeError(f"envelope lacks field(s): {', '.join(missing)}")
    extra = value.keys() - _V2_FIELDS - _OPTIONAL_FIELDS
    if extra:  # counted, not named: a field name is the writer's text
        raise EnvelopeError(
            f"envelope has {len(extra)} unknown field(s); a v2 envelope has exactly "
            f"{', '.join(sorted(_V2_FIELDS))} (and optionally clients)"
        )
    common = _common_fields(value)  # checked in the order v2 always checked them
    header = {k: v for k, v in value.items() if k not in ("nonce", "ciphertext")}
    return Envelope(
        format=FORMAT_V2,
        ciphertext=_b64_field(value, "ciphertext"),
        associated_data=canonical_header(header),
        **common,
    )


def _common_fields(value: dict[str, Any]) -> dict[str, Any]:
    """The checked fields v2 and v3 share, as :class:`Envelope`'s keyword arguments."""
    serial, entries = value["serial"], value["entries"]
    if not is_count(serial):
        raise EnvelopeError(f"envelope field 'serial' must be an integer in 0..{MAX_COUNT}")
    if not is_count(entries):
        raise EnvelopeError(f"envelope field 'entries' must be an integer in 0..{MAX_COUNT}")
    for name in ("key_id", "created"):
        if not _is_text(value[name]) or not value[name]:
            raise EnvelopeError(f"envelope field {name!r} must be a non-empty Unicode string")
    context = value["encryption_context"]
    if not isinstance(context, dict) or not all(
        _is_text(k) and _is_text(v) for k, v in context.items()
    ):
        raise EnvelopeError("envelope field 'encryption_context' must map strings to strings")
    nonce = _b64_field(value, "nonce")
    if len(nonce) != NONCE_BYTES:
        raise EnvelopeError(f"envelope field 'nonce' must be {NONCE_BYTES} bytes")
    return {
        "data_key_ciphertext": _b64_field(value, "data_key_ciphertext"),
        "key_id": value["key_id"],
        "serial": serial,
        "created": value["created"],
        "entries": entries,
        "encryption_context": MappingProxyType(dict(context)),
        "nonce": nonce,
        "clients": _clients(value),
    }


def _clients(value: Mapping[str, Any]) -> ClientPolicy | None:
    """The optional sealed client policy: base64 of its canonical bytes."""
    if "clients" not in value:
        return None
    try:
        return parse_policy(_b64_field(value, "clients"), require_canonical=True)
    except ClientPolicyError as exc:  # names the part, never a value
        raise EnvelopeError(f"envelope field 'clients' refused: {exc}") from None


def _parse_v3(document: bytes | bytearray) -> Envelope:
    view = memoryview(document)[len(V3_MAGIC) :]
    end = view[: MAX_V3_HEADER_BYTES + 1].tobytes().find(b"\n")
    if end < 0:
        raise EnvelopeError(
            f"envelope v3 has no header line ending within {MAX_V3_HEADER_BYTES} bytes of "
            "its first line"
        )
    try:
        value = strict_json.loads(
            view[:end].tobytes(), max_bytes=MAX_V3_HEADER_BYTES, max_depth=MAX_JSON_DEPTH
        )
    except strict_json.JSONError as exc:
        raise EnvelopeError(f"envelope v3's header is not JSON this service reads: {exc}") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT_V3:
        raise EnvelopeError(f"envelope v3's header is not an object with format {FORMAT_V3!r}")
    missing = sorted(_V3_FIELDS - value.keys())
    if missing:
        raise EnvelopeError(f"envelope v3 lacks header field(s): {', '.join(missing)}")
    extra = value.keys() - _V3_FIELDS - _OPTIONAL_FIELDS
    if extra:
        raise EnvelopeError(
            f"envelope v3 has {len(extra)} unknown header field(s); it has exactly "
            f"{', '.join(sorted(_V3_FIELDS))} (and optionally clients)"
        )
    for name in ("stored_keys", "skipped_empty"):
        if not is_count(value[name]):
            raise EnvelopeError(f"envelope field {name!r} must be an integer in 0..{MAX_COUNT}")
    if not _is_text(value["rule"]) or not value["rule"]:
        raise EnvelopeError("envelope field 'rule' must be a non-empty Unicode string")
    ciphertext = view[end + 1 :]
    if not ciphertext:
        raise EnvelopeError("envelope v3 has no ciphertext after its header line")
    header = {k: v for k, v in value.items() if k != "nonce"}
    return Envelope(
        format=FORMAT_V3,
        ciphertext=ciphertext,
        associated_data=canonical_header(header),
        stored_keys=value["stored_keys"],
        skipped_empty=value["skipped_empty"],
        rule=value["rule"],
        **_common_fields(value),
    )


def _parse_fernet(value: dict[str, Any]) -> Envelope:
    token = value["aes-ciphertext-base64"]
    if not isinstance(token, str) or not token:
        raise EnvelopeError("envelope field 'aes-ciphertext-base64' must be a non-empty string")
    return Envelope(
        format=FORMAT_FERNET,
        data_key_ciphertext=_b64_field(value, "data-key-ciphertext-base64"),
        ciphertext=token.encode("ascii", "replace"),
    )


def decrypt(
    envelope: Envelope, decryptor: DataKeyDecryptor, *, pinned_key_id: str | None = None
) -> Iterator[str]:
    """Open the data key with ``decryptor`` (KMS), decrypt the list, yield its names.

    ``pinned_key_id`` (the service's ``--key-id``) is sent to KMS instead of the key id the
    envelope names, so KMS refuses a data key of any other key. Without it, whoever can
    replace the envelope could seal a list of their own (an empty one clears everybody)
    under a KMS key they control.

    The names come out one at a time so the caller can build its table without a list of
    every name; nothing here keeps them.
    """
    if envelope.format == FORMAT_V3:
        raise EnvelopeError(f"a {FORMAT_V3} envelope holds a table, not names: decrypt_table()")
    # The decryptor is ours (KMS): its errors, KMSError among them, pass through unchanged.
    data_key = decryptor.decrypt(
        envelope.data_key_ciphertext,
        key_id=pinned_key_id or envelope.key_id,
        encryption_context=envelope.encryption_context or None,
    )
    try:
        names = _open(envelope, data_key)
    except EnvelopeError:
        raise
    except Exception as exc:  # the boundary, as in parse()
        raise _unexpected(exc, "decrypting the envelope") from None
    return _guarded(names)


def decrypt_table(
    envelope: Envelope,
    decryptor: DataKeyDecryptor,
    *,
    rule: str,
    pinned_key_id: str | None = None,
) -> ScreeningTable:
    """Open a v3 envelope's data key with ``decryptor`` (KMS) and serve its sealed table.

    ``rule`` is this service's match rule: a table keyed under another
    (:func:`noflylist.matchkey.rule_identity`: the rule, the Unicode version, the fold
    tables) is refused, after the header is authenticated, with how to reseal.
    ``pinned_key_id`` as in :func:`decrypt`.
    """
    if envelope.format != FORMAT_V3:
        raise EnvelopeError(f"decrypt_table opens {FORMAT_V3} envelopes; use decrypt()")
    data_key = decryptor.decrypt(
        envelope.data_key_ciphertext,
        key_id=pinned_key_id or envelope.key_id,
        encryption_context=envelope.encryption_context or None,
    )
    try:
        return _open_table(envelope, data_key, rule)
    except EnvelopeError:
        raise
    except Exception as exc:  # the boundary, as in parse()
        raise _unexpected(exc, "opening the sealed table") from None


def _open_table(envelope: Envelope, data_key: bytes, rule: str) -> ScreeningTable:
    if len(data_key) != DATA_KEY_BYTES:
        raise EnvelopeError(f"the data key is {len(data_key)} bytes; expected {DATA_KEY_BYTES}")
    # The buffer the table is served from. When the document is a bytearray (a file's is),
    # the table is decrypted in place, over its own ciphertext, which is the document's
    # tail: at millions of names the load then holds one copy of the table, not two.
    # (OpenSSL's GCM decrypts in place; the tag, after the plaintext's end, is not
    # overwritten.) Otherwise into a buffer of its own.
    ciphertext = envelope.ciphertext
    size = max(0, len(ciphertext) - _GCM_TAG_BYTES)
    if (
        isinstance(ciphertext, memoryview)
        and isinstance(ciphertext.obj, bytearray)
        and not ciphertext.readonly
    ):
        buffer, start = ciphertext.obj, len(ciphertext.obj) - len(ciphertext)
    else:
        buffer, start = bytearray(size), 0
    try:
        with memoryview(buffer) as whole:
            AESGCM(data_key).decrypt_into(
                envelope.nonce, ciphertext, envelope.associated_data,
                whole[start : start + size],
            )  # fmt: skip
    except (InvalidTag, ValueError):
        buffer[start : start + size] = bytes(size)
        raise EnvelopeError(
            "envelope authentication failed: its table or header was changed, or it was "
            "sealed under another data key"
        ) from None
    try:
        matchkey.check_rule(str(envelope.rule), rule)
        return ScreeningTable.from_sealed(
            buffer,
            start=start,
            end=start + size,
            rule=rule,
            entries=envelope.entries or 0,
            stored_keys=envelope.stored_keys,
            skipped_empty=envelope.skipped_empty,
        )
    except (matchkey.MatchRuleError, ScreeningError) as exc:
        buffer[start : start + size] = bytes(size)  # the table's key: not left in memory
        raise EnvelopeError(f"envelope refused: {exc}") from None


def _open(envelope: Envelope, data_key: bytes) -> Iterator[str]:
    if len(data_key) != DATA_KEY_BYTES:
        raise EnvelopeError(f"the data key is {len(data_key)} bytes; expected {DATA_KEY_BYTES}")
    if envelope.format == FORMAT_FERNET:
        return _fernet_names(envelope, data_key)
    # Decrypted into a buffer of our own, so the list's only plaintext copy can be wiped.
    plaintext = bytearray(max(0, len(envelope.ciphertext) - _GCM_TAG_BYTES))
    try:
        AESGCM(data_key).decrypt_into(
            envelope.nonce, envelope.ciphertext, envelope.associated_data, plaintext
        )
    except (InvalidTag, ValueError):  # ValueError: shorter than a tag
        raise EnvelopeError(
            "envelope authentication failed: its list or header was changed, or it was "
            "sealed under another data key"
        ) from None
    return _counted(_lines_then_wipe(plaintext), envelope.entries)


def _guarded(names: Iterator[str]) -> Iterator[str]:
    """The boundary of the names :func:`decrypt` returns, which are read after it returns.

    Closing this generator closes ``names``, so v2's buffer is still wiped when the reader
    stops early."""
    try:
        yield from names
    except EnvelopeError:
        raise
    except Exception as exc:
        raise _unexpected(exc, "reading the decrypted list") from None


def _fernet_names(envelope: Envelope, data_key: bytes) -> Iterator[str]:
    """The public demo's format. ``Fernet`` returns the list as immutable ``bytes``, so unlike
    v2's buffer it cannot be zeroed after reading: one more reason to prefer v2."""
    try:
        plaintext = Fernet(base64.b64encode(data_key)).decrypt(bytes(envelope.ciphertext))
        text = plaintext.decode("utf-8")
    except (InvalidToken, UnicodeDecodeError):
        raise EnvelopeError(
            "envelope authentication failed: the Fernet token does not open with its data key"
        ) from None
    return _pieces(text, ",")


def _lines_then_wipe(plaintext: bytearray) -> Iterator[str]:
    """The non-blank lines of the decrypted list, one at a time; then zero the buffer.

    Each line is decoded straight from the buffer (no copy of the whole text is made), and
    the buffer is overwritten once the lines are read or the reader stops, so the list does
    not stay in freed memory. (Python's ``str`` objects cannot be wiped; each name's lives
    only until the next name is read.)
    """
    try:
        with memoryview(plaintext) as view:
            start = 0
            while start <= len(plaintext):
                end = plaintext.find(b"\n", start)
                if end < 0:
                    end = len(plaintext)
                try:
                    line = str(view[start:end], "utf-8")
                except UnicodeDecodeError:
                    raise EnvelopeError("envelope list is not UTF-8") from None
                if line.strip():
                    yield line
                start = end + 1
    finally:
        plaintext[:] = bytes(len(plaintext))


def _pieces(text: str, separator: str) -> Iterator[str]:
    """The non-blank pieces of ``text`` between separators, made one at a time.

    ``str.split`` would make them all at once: at two million names, two million live
    strings that Python's allocator keeps resident after the load has freed them.
    """
    start = 0
    while start <= len(text):
        end = text.find(separator, start)
        if end < 0:
            end = len(text)
        piece = text[start:end]
        if piece.strip():
            yield piece
        start = end + 1


def _counted(names: Iterator[str], expected: int | None) -> Iterator[str]:
    """Pass ``names`` through; at the end, refuse a count other than the header's.

    The count is known only after the last name, so the caller has already consumed the
    names when this raises: it must treat the whole load as failed (the service does).
    """
    count = 0
    for name in names:
        count += 1
        yield name
    if expected is not None and count != expected:
        raise EnvelopeError(
            f"envelope says {expected} entries but its list has {count} non-empty lines"
        )


# -- helpers ---------------------------------------------------------------------------






def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _is_text(value: object) -> bool:
    """A string that is valid Unicode. JSON's ``\\ud800`` escapes make lone surrogates, which
    no UTF-8 log line or KMS request can carry."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True




def _b64_field(value: Mapping[str, Any], name: str) -> bytes:
    text = value[name]
    if not isinstance(text, str) or not text:
        raise EnvelopeError(f"envelope field {name!r} must be a non-empty base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"envelope field {name!r} is not valid base64") from None


def canonical_header(value: Mapping[str, Any]) -> bytes:
    """One byte string per header: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
