"""The signed-answer format, ``noflylist-answer-1``: what a signature over an answer covers.

A client that sends ``Noflylist-Nonce: <hex>`` with a screening request (either route) gets,
beside the usual answer, two headers::

    Noflylist-Statement: <base64 of the statement bytes>
    Noflylist-Signature: <base64 of the 64-byte Ed25519 signature over those bytes>

signed by the answer key that the service made at start and binds into every attestation
document (``user_data``'s ``answer_key``, :mod:`noflylist.wire`). The statement is ASCII
text, one ``field value`` a line, each line ending in LF, the fields always in this order::

    noflylist-answer-1
    key-id 21fe31dfa154a261          first 8 bytes of SHA-256(raw public key), hex
    route /enclave/passenger         or /v1/screen
    nonce 0123456789abcdef           the request's nonce (8 to 64 bytes), lowercase hex
    question-sha256 <64 hex> | -     /enclave/passenger: SHA-256 of the name's UTF-8 bytes,
                                     after percent-decoding; /v1/screen: of the request body
                                     bytes; ``-`` when no name could be read
    status 200                       the HTTP status of the answer
    verdict listed                   one line a name, in the request's order: listed, cleared,
    verdict refused: <reason>        unavailable or "refused: " and the reason; one line for
                                     an answer to the request as a whole (400, 503)
    time 1796422599123               the service's clock, Unix milliseconds
    serial 7 | -                     the list in service (``-`` while none is loaded)
    envelope-sha256 <64 hex> | -     the envelope it came from
    body-sha256 <64 hex>             SHA-256 of the answer's body bytes

A client verifies, in this order: the signature under the attested key (and that the
statement's ``key-id`` is that key's); the first line; ``route``, ``nonce`` and
``question-sha256`` are its own request's; ``body-sha256`` is the body it got; then it reads
the verdicts and the serial. ``docs/answers.md`` gives a test vector.

Why text lines rather than CBOR or JSON: a client in any language can build and compare it
with string functions, and a human can read a statement off a log. Why SHA-256 of the name
rather than the name: the statement is the same size for every name, and a log of
statements does not read out the names asked. A request without a nonce gets neither header
and the same bytes as before signed answers existed.

Only the standard library and :mod:`noflylist.wire` (the nonce's size, the serial's range):
the service and every client import this module, and it imports nothing of the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from enclave.errors import NoflylistError
from noflylist.wire import MAX_NONCE_BYTES, MAX_SERIAL, MIN_NONCE_BYTES

__all__ = [
    "FORMAT",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "STATEMENT_HEADER",
    "AnswerFormatError",
    "Statement",
    "decode_signature",
    "decode_statement_header",
    "encode_header",
    "encode_statement",
    "key_id",
    "parse_nonce",
    "parse_statement",
    "question_sha256",
]

#: The first line of every statement; a new layout gets a new version.
FORMAT = "noflylist-answer-1"
#: Request header: the client's fresh nonce, hex.
NONCE_HEADER = "Noflylist-Nonce"
#: Response headers: the statement and the signature, base64 (RFC 4648 section 4, padded).
STATEMENT_HEADER = "Noflylist-Statement"
SIGNATURE_HEADER = "Noflylist-Signature"
#: An Ed25519 signature (RFC 8032 section 5.1.6).
SIGNATURE_BYTES = 64
#: At most one verdict a name of the largest manifest (the batch route's 1,000 names).
MAX_VERDICTS = 1000
#: A reason is one short line of printable ASCII (the decision's reasons are under 100).
MAX_REASON_CHARS = 200
#: Bounds the whole statement before any parsing: 1,000 verdicts of the longest reason.
MAX_STATEMENT_BYTES = 1024 + MAX_VERDICTS * (len("verdict refused: \n") + MAX_REASON_CHARS)
#: Unix milliseconds up to the year 9999: 14 digits.
_MAX_TIME_MS = 253402300799999
_ROUTES = ("/enclave/passenger", "/v1/screen")
_PLAIN_VERDICTS = ("listed", "cleared", "unavailable")
_REFUSED = "refused: "
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,15}")
_REASON = re.compile(rf"[\x20-\x7e]{{1,{MAX_REASON_CHARS}}}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class AnswerFormatError(NoflylistError):
    """Bytes that are not a ``noflylist-answer-1`` statement, nonce or signature."""


@dataclass(frozen=True)
class Statement:
    """One signed answer's statement, field by field (see the module docstring)."""

    key_id: str
    route: str
    nonce: bytes
    question_sha256: bytes | None
    status: int
    verdicts: tuple[str, ...]
    time_ms: int
    serial: int | None
    envelope_sha256: bytes | None
    body_sha256: bytes


def key_id(public_key: bytes) -> str:
    """The ``key-id`` of a raw Ed25519 public key: its SHA-256's first 8 bytes, hex."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def question_sha256(question: bytes) -> bytes:
    """SHA-256 of the name's UTF-8 bytes (single route) or of the request body (batch)."""
    return hashlib.sha256(question).digest()


def parse_nonce(value: str) -> bytes:
    """The ``Noflylist-Nonce`` header's bytes: 8 to 64 bytes as hex (either case)."""
    if not MIN_NONCE_BYTES * 2 <= len(value) <= MAX_NONCE_BYTES * 2 or len(value) % 2:
        raise AnswerFormatError(
            f"{NONCE_HEADER} must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes as hex"
        )
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AnswerFormatError(f"{NONCE_HEADER} is not hex") from None


def encode_statement(statement: Statement) -> bytes:
    """The statement's bytes; refuses a value the format cannot carry (a bug in the caller)."""
    _check(statement)
    lines = [
        FORMAT,
        f"key-id {statement.key_id}",
        f"route {statement.route}",
        f"nonce {statement.nonce.hex()}",
        f"question-sha256 {_hex_or_dash(statement.question_sha256)}",
        f"status {statement.status}",
        *(f"verdict {verdict}" for verdict in statement.verdicts),
        f"time {statement.time_ms}",
        f"serial {'-' if statement.serial is None else statement.serial}",
        f"envelope-sha256 {_hex_or_dash(statement.envelope_sha256)}",
        f"body-sha256 {statement.body_sha256.hex()}",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def parse_statement(data: bytes) -> Statement:
    """Parse a statement strictly: every field, in order, in its one spelling.

    A client reads it from the network, so this is a boundary: any failure, whatever the
    bytes, is an :class:`AnswerFormatError` naming the field, never the content.
    """
    try:
        return _parse(data)
    except AnswerFormatError:
        raise
    except Exception as exc:
        raise AnswerFormatError(f"the statement could not be read ({type(exc).__name__})") from None


def decode_signature(value: str) -> bytes:
    """The ``Noflylist-Signature`` header's 64 bytes."""
    raw = _base64(value, SIGNATURE_HEADER, limit=128)
    if len(raw) != SIGNATURE_BYTES:
        raise AnswerFormatError(f"{SIGNATURE_HEADER} is not a 64-byte Ed25519 signature")
    return raw


def decode_statement_header(value: str) -> bytes:
    """The ``Noflylist-Statement`` header's bytes (not yet parsed)."""
    return _base64(value, STATEMENT_HEADER, limit=(MAX_STATEMENT_BYTES + 2) // 3 * 4)


def encode_header(raw: bytes) -> str:
    """Base64 for a response header (the statement or the signature)."""
    return base64.b64encode(raw).decode("ascii")


def _base64(value: str, header: str, *, limit: int) -> bytes:
    if len(value) > limit or not _BASE64.fullmatch(value):
        raise AnswerFormatError(f"{header} is not base64 of the expected size")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AnswerFormatError(f"{header} is not base64 of the expected size") from None


def _hex_or_dash(digest: bytes | None) -> str:
    return "-" if digest is None else digest.hex()


def _check(s: Statement) -> None:
    if not _HEX16.fullmatch(s.key_id):
        raise AnswerFormatError("key-id is not 16 lowercase hex digits")
    if s.route not in _ROUTES:
        raise AnswerFormatError("route is not a screening route")
    if not MIN_NONCE_BYTES <= len(s.nonce) <= MAX_NONCE_BYTES:
        raise AnswerFormatError("nonce is not 8 to 64 bytes")
    for digest in (s.question_sha256, s.envelope_sha256, s.body_sha256):
        if digest is not None and len(digest) != 32:
            raise AnswerFormatError("a digest is not 32 bytes")
    if not 100 <= s.status <= 599:
        raise AnswerFormatError("status is not an HTTP status")
    if not 1 <= len(s.verdicts) <= MAX_VERDICTS:
        raise AnswerFormatError(f"a statement holds 1 to {MAX_VERDICTS} verdicts")
    for verdict in s.verdicts:
        _check_verdict(verdict)
    if not 0 <= s.time_ms <= _MAX_TIME_MS:
        raise AnswerFormatError("time is not Unix milliseconds")
    if s.serial is not None and not 0 <= s.serial <= MAX_SERIAL:
        raise AnswerFormatError("serial is not an envelope serial")


def _check_verdict(verdict: str) -> None:
    if verdict in _PLAIN_VERDICTS:
        return
    if verdict.startswith(_REFUSED) and _REASON.fullmatch(verdict[len(_REFUSED) :]):
        return
    raise AnswerFormatError(
        "a verdict is listed, cleared, unavailable or 'refused: ' and a short ASCII reason"
    )


def _parse(data: bytes) -> Statement:
    if not isinstance(data, bytes) or len(data) > MAX_STATEMENT_BYTES:
        raise AnswerFormatError(f"a statement is bytes of at most {MAX_STATEMENT_BYTES}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise AnswerFormatError("the statement is not ASCII") from None
    if not text.endswith("\n") or "\r" in text:
        raise AnswerFormatError("the statement's lines do not all end in LF")
    lines = text[:-1].split("\n")
    if lines[0] != FORMAT:
        raise AnswerFormatError(f"the statement is not {FORMAT} (another version or format)")
    fields = iter(lines[1:])
    key = _field(fields, "key-id")
    route = _field(fields, "route")
    nonce = _field(fields, "nonce")
    question = _field(fields, "question-sha256")
    status = _field(fields, "status")
    verdicts: list[str] = []
    line = next(fields, "")
    while line.startswith("verdict "):
        verdicts.append(line[len("verdict ") :])
        if len(verdicts) > MAX_VERDICTS:
            raise AnswerFormatError(f"a statement holds 1 to {MAX_VERDICTS} verdicts")
        line = next(fields, "")
    time_ms = _value(line, "time")
    serial = _field(fields, "serial")
    envelope = _field(fields, "envelope-sha256")
    body = _field(fields, "body-sha256")
    if next(fields, None) is not None:
        raise AnswerFormatError("the statement has lines after body-sha256")
    if not _HEX16.fullmatch(key):
        raise AnswerFormatError("key-id is not 16 lowercase hex digits")
    if len(nonce) % 2 or not re.fullmatch(r"[0-9a-f]*", nonce):
        raise AnswerFormatError("nonce is not lowercase hex")
    statement = Statement(
        key_id=key,
        route=route,
        nonce=bytes.fromhex(nonce),
        question_sha256=_digest_or_dash(question, "question-sha256"),
        status=_decimal(status, "status"),
        verdicts=tuple(verdicts),
        time_ms=_decimal(time_ms, "time"),
        serial=None if serial == "-" else _decimal(serial, "serial"),
        envelope_sha256=_digest_or_dash(envelope, "envelope-sha256"),
        body_sha256=_digest(body, "body-sha256"),
    )
    _check(statement)
    return statement


def _field(fields: Iterator[str], name: str) -> str:
    return _value(next(fields, ""), name)


def _value(line: str, name: str) -> str:
    prefix = name + " "
    if not line.startswith(prefix) or len(line) == len(prefix):
        raise AnswerFormatError(f"the statement's field {name} is missing or out of order")
    return line[len(prefix) :]


def _decimal(text: str, name: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise AnswerFormatError(f"{name} is not a decimal number in its one spelling")
    return int(text)


def _digest(text: str, name: str) -> bytes:
    if not _HEX64.fullmatch(text):
        raise AnswerFormatError(f"{name} is not a SHA-256 digest in lowercase hex")
    return bytes.fromhex(text)


def _digest_or_dash(text: str, name: str) -> bytes | None:
    return None if text == "-" else _digest(text, name)
