"""HTTP/1.1 framing: the strict request parser and the response encoder, over bytes only.

No sockets, threads or clocks here (the ``Date`` field aside): :class:`RequestFramer` takes
the bytes a client has sent so far and yields whole, checked :class:`Request` objects, and
:func:`encode_response` makes one response a single byte string. The connection loop
(:mod:`noflylist.transport.loop`) feeds the one and sends the other.

The parser is strict (RFC 9112): origin-form targets (``/path?query``) only, CRLF line ends
only, no obs-fold, no space before a header's colon, no control bytes, one ``Content-Length``
of digits, no ``Transfer-Encoding``, ``Host`` required in HTTP/1.1. Anything else is refused
with a status and the connection is closed, so no two parsers can disagree about where a
request ends. A head that can never become valid (a bare CR or LF, a line that is not a
request line) is refused as soon as its bytes arrive, not when a deadline passes. The one
entry point, :meth:`RequestFramer.take_request`, raises only :class:`RequestError`, whatever
the bytes (any other exception from inside becomes one that names its class, never the
input), and a request is either complete and checked or not dispatched. The status tells the
client which limit it hit: 414 (request line), 431 (head), 413 (body), 505 (version), 501
(chunked), 417 (Expect); the loop adds 408 (too slow) and 503 (out of buffer memory).

Every limit is a field of the :class:`~noflylist.transport.limits.Limits` the framer is made
with (:data:`~noflylist.transport.limits.DEFAULT_LIMITS` unless a caller passes its own).
"""

from __future__ import annotations

import email.utils
import http
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from enclave import http_syntax
from enclave.errors import NoflylistError
from noflylist.transport.limits import DEFAULT_LIMITS, Limits

__all__ = ["Request", "RequestError", "RequestFramer", "encode_response"]

_TOKEN = http_syntax.TOKEN_BYTES
_TOKEN_PREFIX = re.compile(http_syntax.TCHAR.encode("ascii") + b"*")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_BAD_FIELD_BYTE = re.compile(http_syntax.FIELD_CONTROL.encode("ascii"))
_BARE_LF = re.compile(rb"(?<!\r)\n")
#: A CR followed by anything but LF (a CR that is the last byte so far cannot be judged yet).
_BARE_CR = re.compile(rb"\r[^\n]")
_LEADING_CRLFS = re.compile(rb"(?:\r\n)*")
#: Fields that must not repeat: two values would let two parsers frame differently.
_SINGLE_FIELDS = frozenset({"content-length", "host", "content-type", "expect"})


class RequestError(NoflylistError):
    """A request the parser refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Request:
    """One complete, checked request. Header names are lower case.

    ``repr`` leaves out the target and the body, which carry queried names, and the headers.
    """

    method: str
    target: str = field(repr=False)
    http10: bool
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    keep_alive: bool
    #: ``time.monotonic()`` when the request was complete: the start of its latency.
    received: float


# -- responses ---------------------------------------------------------------------------

_date_cache: tuple[int, str] = (0, "")
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _http_date() -> str:
    """The ``Date`` field value (RFC 9110 section 6.6.1), formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def encode_response(
    status: int,
    content_type: str,
    body: bytes,
    *,
    keep_alive: bool,
    http10: bool = False,
    headers: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """A whole response as one byte string, with the headers every response carries.

    ``headers`` must already be checked (token names, visible ASCII values). ``head_only``
    (the answer to a HEAD request) leaves the body out: RFC 9112 section 6.3 says such a
    response ends after its header fields, whatever Content-Length says.
    """
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Date: {_http_date()}",
        "Server: noflylist",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    encoded = "\r\n".join(lines).encode("latin-1")
    return encoded if head_only else encoded + body


# -- request heads (RFC 9112) --------------------------------------------------------------


@dataclass(slots=True)
class _Head:
    method: str
    target: str = field(repr=False)  # its query carries a queried name
    http10: bool
    headers: dict[str, str] = field(repr=False)
    content_length: int
    keep_alive: bool
    expect_continue: bool


def _check_incomplete_head(buffer: bytearray, searched: int, limits: Limits) -> None:
    """Refuse early what can never become a valid head, so nobody waits for a deadline."""
    if buffer == b"\r":
        return  # perhaps the first half of an empty line before the request line (skipped)
    max_method, max_request_line = limits.max_method, limits.max_request_line
    prefix = bytes(buffer[: max_method + 1])
    method_end = _TOKEN_PREFIX.match(prefix).end()  # type: ignore[union-attr]
    if method_end < len(prefix) and prefix[method_end] != 0x20:
        if prefix[:1] == b"\x16":
            raise RequestError(400, "this port speaks plain HTTP, not TLS: use http://")
        raise RequestError(400, "the request does not start with an HTTP method")
    if method_end > max_method:
        raise RequestError(400, "the request does not start with an HTTP method")
    if _BARE_LF.search(buffer, max(0, searched - 1)):
        raise RequestError(400, "header lines must end with CRLF, not a bare LF")
    # RFC 9112 section 2.2: a bare CR is invalid; refuse it now (a client that ends its
    # lines with CR alone would otherwise wait for the request deadline, then get 408).
    if _BARE_CR.search(buffer, max(0, searched - 1)):
        raise RequestError(400, "header lines must end with CRLF, not a bare CR")
    # No LF is bare (checked above for the new bytes, by earlier calls for the rest), so the
    # first LF ends the request line: a one-byte search, far quicker than for b"\r\n".
    line_end = buffer.find(b"\n", 0, max_request_line + 2) - 1
    if line_end >= 0:
        # A whole request line can be judged now; an HTTP/0.9 client ("GET /x" CRLF) sends
        # no more and would otherwise wait for the request deadline. Judge it once (not if it
        # was whole when last searched): a client trickling its fields must not make every
        # recv parse an 8 KiB line again.
        if line_end + 2 > searched:
            _parse_request_line(bytes(buffer[:line_end]), limits)
    elif len(buffer) > max_request_line:
        raise RequestError(414, f"the request line is longer than {max_request_line} bytes")
    if len(buffer) > limits.max_head_bytes:
        raise RequestError(431, f"the request head is larger than {limits.max_head_bytes} bytes")


def _parse_request_line(line: bytes, limits: Limits) -> tuple[str, str, bool]:
    """RFC 9112 section 3: method SP request-target SP HTTP-version."""
    if len(line) > limits.max_request_line:
        raise RequestError(
            414, f"the request line is longer than {limits.max_request_line} bytes"
        )
    parts = line.split(b" ")
    if len(parts) == 2:
        raise RequestError(400, "the request line has no HTTP version (HTTP/0.9 is not served)")
    if len(parts) != 3:
        raise RequestError(400, "the request line must be METHOD SP TARGET SP VERSION")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or len(method) > limits.max_method:
        raise RequestError(400, "the request method is not a token")
    if not _TARGET.fullmatch(target):
        raise RequestError(400, "the request target must be a path (/...) of visible ASCII")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if _VERSION.fullmatch(version):
            raise RequestError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        raise RequestError(400, "the request line has a malformed HTTP version")
    return method.decode("ascii"), target.decode("ascii"), version == b"HTTP/1.0"


def _parse_fields(lines: list[bytes], limits: Limits) -> dict[str, str]:
    """RFC 9112 section 5: name ":" OWS value OWS, one a line, no folding."""
    if len(lines) > limits.max_headers:
        raise RequestError(431, f"the request has more than {limits.max_headers} header fields")
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise RequestError(400, "a header line is not NAME: VALUE (or is folded)")
        value = value.strip(b" \t")
        if _BAD_FIELD_BYTE.search(value):
            raise RequestError(400, "a header value contains a control character")
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        if key in fields:
            if key in _SINGLE_FIELDS:
                raise RequestError(400, f"the {key} header field appears more than once")
            text = f"{fields[key]}, {text}"  # RFC 9110 section 5.3: combine with commas
        fields[key] = text
    return fields


def _parse_head(head: bytes, limits: Limits) -> _Head:
    """Parse and check a whole head (without its final empty line)."""
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise RequestError(400, "header lines must end with CRLF")
    method, target, http10 = _parse_request_line(lines[0], limits)
    fields = _parse_fields(lines[1:], limits)
    if not http10 and "host" not in fields:
        raise RequestError(400, "an HTTP/1.1 request needs a Host header field")
    if "transfer-encoding" in fields:
        raise RequestError(501, "Transfer-Encoding is not supported; send Content-Length")
    length_text = fields.get("content-length", "0").encode("latin-1")
    if not _DIGITS.fullmatch(length_text):
        raise RequestError(400, "Content-Length must be a decimal number")
    content_length = int(length_text)
    if content_length > limits.max_body_bytes:
        raise RequestError(413, f"the request body is larger than {limits.max_body_bytes} bytes")
    tokens = {token.strip().lower() for token in fields.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
    expect = fields.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise RequestError(417, "only 'Expect: 100-continue' is supported")
    expect_continue = expect is not None and not http10 and content_length > 0
    return _Head(method, target, http10, fields, content_length, keep_alive, expect_continue)


# -- framing: whole requests out of a byte stream (RFC 9112 section 6) ---------------------


class RequestFramer:
    """The bytes one client has sent and the head parsed from them, if any.

    The caller appends to ``buffer`` and calls :meth:`take_request`. ``head`` is set once a
    whole head has arrived and parsed, until its body has arrived too (so a caller can answer
    ``Expect: 100-continue`` by looking at ``head.expect_continue``). ``limits`` are checked
    while the bytes arrive.
    """

    __slots__ = ("buffer", "head", "head_bytes", "limits", "searched")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.buffer = bytearray()
        self.searched = 0  # bytes of buffer already searched for the end of the head
        self.head: _Head | None = None
        self.head_bytes = 0

    def take_request(self, now: float) -> Request | None:
        """Frame the next whole request from the buffer; ``None`` until it has all arrived.

        ``now`` becomes the request's ``received`` time. Raises :class:`RequestError` for a
        request that is refused, and only that: this is the parser's one boundary, so any
        other exception from inside (a bug) is refused too, as 400, naming its class but not
        its message, which could quote the request. The buffer is then in no state to frame
        more.
        """
        try:
            return self._take_request(now)
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(
                400, f"the request could not be parsed ({type(exc).__name__} in the parser)"
            ) from None

    def _take_request(self, now: float) -> Request | None:
        buffer = self.buffer
        if self.head is None:
            # RFC 9112 section 2.2: ignore empty lines before the request line.
            blank = _LEADING_CRLFS.match(buffer).end()  # type: ignore[union-attr]
            if blank:
                del buffer[:blank]
                self.searched = 0
            end = buffer.find(b"\r\n\r\n", max(0, self.searched - 3))
            if end < 0:
                _check_incomplete_head(buffer, self.searched, self.limits)
                self.searched = len(buffer)
                return None
            limits = self.limits
            if end > limits.max_head_bytes:
                first_line = buffer.find(b"\r\n")
                if first_line > limits.max_request_line:
                    raise RequestError(
                        414, f"the request line is over {limits.max_request_line} bytes"
                    )
                raise RequestError(431, f"the request head is over {limits.max_head_bytes} bytes")
            self.head = _parse_head(bytes(buffer[:end]), limits)
            self.head_bytes = end + 4
        head = self.head
        total = self.head_bytes + head.content_length
        if len(buffer) < total:
            return None
        body = bytes(buffer[self.head_bytes : total])
        del buffer[:total]
        self.head, self.searched = None, 0
        return Request(
            head.method, head.target, head.http10, head.headers, body, head.keep_alive, now
        )
