"""The HTTP framer's one boundary: whatever bytes arrive, in whatever pieces, only
``RequestError`` leaves ``RequestFramer.take_request``, and how the bytes are split never
changes what is framed.

Streams are random bytes, and sequences of HTTP pieces (methods, targets, versions, field
lines, every kind of line end, lengths that agree with the body or do not, TLS and control
bytes) that reach deep into the parser; each is fed whole and in random pieces, with the
real limits and with tiny ones (so the 414/431/413 paths are reached too). Then internal
failures are injected to show the boundary turns them into a 400 that names the cause's
class and never the input.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist.transport import framing as http_framing
from noflylist.transport.connection import Connection
from noflylist.transport.framing import RequestError, RequestFramer
from noflylist.transport.limits import DEFAULT_LIMITS

#: Inputs a property gets (CI default; raise with FUZZ_EXAMPLES, as tests/test_fuzz.py does).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

PIECES = [
    b"GET", b"POST", b"HEAD", b"BREW", b"G\xc3\x89T", b" ", b"  ", b"\t",
    b"/", b"/healthz", b"/enclave/passenger?name=big+bird", b"*", b"http://x/",
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTQ/1.1",
    b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"\r\r\n", b"\n\r",
    b"Host: t", b"Host:", b"host : t", b"Content-Length: 0", b"Content-Length: 5",
    b"Content-Length: 05", b"Content-Length: -1", b"Content-Length: 1e3",
    b"Content-Length: " + b"9" * 30, b"Content-Length: \xc2\xb2", b"Transfer-Encoding: chunked",
    b"Expect: 100-continue", b"Expect: 200-ok", b"Connection: close",
    b"Connection: keep-alive", b"Content-Type: application/json", b"X-A: a\x01b",
    b"X-\xff: v", b":", b"hello", b"\x00", b"\x7f", b"\x16\x03\x01\x00\xc4", b"\xff\xfe",
    b"PRI * HTTP/2.0", b"%", b"\xe2\x80\xae",
]  # fmt: skip


def _request(method: str, target: str, fields: list[str], body: bytes) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\n" + "".join(f"{f}\r\n" for f in fields)
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


well_formed = st.builds(
    _request,
    st.sampled_from(["GET", "POST", "HEAD", "DELETE"]),
    st.sampled_from(["/", "/healthz", "/enclave/passenger?name=Big+Bird", "/v1/screen"]),
    st.lists(
        st.sampled_from(["X-A: 1", "Accept: */*", "Connection: close", "Content-Type: a/b"]),
        max_size=3,
    ),
    st.binary(max_size=12),
)
streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=6)), max_size=60).map(
        b"".join
    ),
    st.lists(st.one_of(well_formed, st.sampled_from(PIECES)), max_size=6).map(b"".join),
)

#: Limits small enough for short streams to pass them.
TINY_LIMITS = dataclasses.replace(DEFAULT_LIMITS, max_request_line=24, max_head_bytes=48,
                                  max_headers=2, max_body_bytes=4, max_method=4)  # fmt: skip


Framed = tuple[list[tuple[object, ...]], int | None]


def _frame(chunks: list[bytes], framer: RequestFramer) -> Framed:
    """Feed ``chunks`` one at a time, framing after each as the connection loop does; the
    whole requests framed, and the status of the refusal that ended the stream, if any."""
    requests: list[tuple[object, ...]] = []
    for chunk in chunks:
        framer.buffer += chunk
        while True:
            try:
                request = framer.take_request(0.0)
            except RequestError as exc:
                assert 400 <= exc.status <= 599 and exc.reason
                return requests, exc.status
            if request is None:
                break
            assert len(request.body) == int(request.headers.get("content-length", "0"))
            requests.append((request.method, request.target, request.http10,
                             dict(request.headers), request.body, request.keep_alive))  # fmt: skip
    return requests, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=EXAMPLES, deadline=None)
@given(streams, st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_only_request_error_escapes_and_splitting_the_bytes_changes_nothing(
    data: bytes, cuts: list[int], tiny: bool
) -> None:
    """Any other exception fails this test by escaping it. Framed whole or in pieces (each
    piece also a byte at a time when short), the same requests come out, and a stream is
    refused either way or neither (the status may differ: the early check can meet one
    fault before the whole-head parse meets another)."""
    limits = TINY_LIMITS if tiny else DEFAULT_LIMITS
    whole = _frame([data], RequestFramer(limits))
    pieces = _frame(_split(data, cuts), RequestFramer(limits))
    bytewise = _frame([data[i : i + 1] for i in range(min(len(data), 120))],
                      RequestFramer(limits))  # fmt: skip
    assert pieces[0] == whole[0]
    assert (pieces[1] is None) == (whole[1] is None)
    if len(data) <= 120:
        assert bytewise[0] == whole[0] and (bytewise[1] is None) == (whole[1] is None)


def test_a_leading_empty_line_split_after_its_cr_is_skipped_not_refused() -> None:
    """RFC 9112 section 2.2: empty lines before the request line are ignored, however the
    CRLF arrives (found by the property above)."""
    assert _frame([b"\r", b"\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"], RequestFramer())[1] is None


@pytest.mark.parametrize("exception", [KeyError, ValueError, IndexError, RecursionError,
                                       MemoryError, UnicodeDecodeError])  # fmt: skip
@pytest.mark.parametrize("where,data", [
    ("_check_incomplete_head", b"GET /enclave/passenger?name=Big+Bird HTTP/1.1\r\n"),
    ("_parse_head", b"GET /enclave/passenger?name=Big+Bird HTTP/1.1\r\nHost: t\r\n\r\n"),
])  # fmt: skip
def test_any_other_failure_inside_the_framer_becomes_a_400_naming_its_class_not_the_input(
    monkeypatch: pytest.MonkeyPatch, exception: type[Exception], where: str, data: bytes
) -> None:
    """A bug inside the parser must not reach the loop as a foreign exception (it would be
    logged as a crash and the client cut off without an answer), nor quote the request."""

    def fail(*args: object) -> None:
        if exception is UnicodeDecodeError:
            raise UnicodeDecodeError("ascii", b"Big Bird", 0, 1, "Big Bird")
        raise exception("Big Bird")

    monkeypatch.setattr(http_framing, where, fail)
    with socket.socket() as unconnected:  # the loop frames through its Connection
        framer, connection = RequestFramer(), Connection(unconnected, 0.0, DEFAULT_LIMITS)
        framer.buffer += data
        connection.arrived(data, 0.0, 10.0)
        for take_request in (framer.take_request, connection.take_request):
            with pytest.raises(RequestError) as raised:
                take_request(0.0)
            assert raised.value.status == 400
            assert exception.__name__ in raised.value.reason
            assert "Big" not in raised.value.reason and "Bird" not in raised.value.reason
            assert raised.value.__cause__ is None and raised.value.__suppress_context__
