"""The HTTP layer over real loopback sockets: the demo's answers, strict refusals that never
echo a name, fail-closed 503, the batch endpoint, limits (414/431/413/408), keep-alive,
pipelining, slow and idle clients, metrics and logs without names, and draining shutdown.

Responses are parsed with ``http.client`` (an independent HTTP parser); queries are encoded
with ``urllib.parse`` (an independent encoder).
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import logging
import re
import secrets
import socket
import ssl
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist import matchkey
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import RouteResponse, Routes
from noflylist.sources import FileSource, SourceError
from noflylist.table import normalize
from noflylist.tools import seal
from noflylist.transport import framing
from noflylist.transport.limits import DEFAULT_LIMITS, Limits
from noflylist.transport.server import Server
from tests.support.fake_kms import FakeDataKeys


def full_width(text: str) -> str:
    """ASCII letters as their full-width forms (U+FF01 to U+FF5E), as CJK keyboards type them."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


LISTED = ["Big Bird", "Cookie Monster", full_width("Ernie")]
SERIAL = 7
#: Stands for a queried name in refusal tests: it must never come back in a response.
MARKER = "Zelda"
SECURITY_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def listed_text(name: str) -> str:
    return f"{name} is on the no-fly list and CAN NOT BOARD!\n"  # the public demo's words


def cleared_text(name: str) -> str:
    return f"{name} is cleared to fly. Enjoy your flight!\n"


@dataclass
class Rig:
    server: Server
    holder: ListHolder
    metrics: Metrics
    path: Path
    kms: FakeDataKeys
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.address[1]

    def load(self, names: list[str] = LISTED, serial: int = SERIAL) -> None:
        self.path.write_bytes(seal.seal_v2(names, self.kms, "k", serial=serial))
        self.holder.reload(only_if_changed=False)


@contextmanager
def running(
    *,
    load: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    match_rule: str = matchkey.EXACT,
    **routes_options: Any,
) -> Iterator[Rig]:
    """A server on a free loopback port, its list from an envelope file (not yet written);
    ``routes_options`` go to :class:`Routes`.

    The list is keyed under ``exact`` unless ``match_rule`` says otherwise: these tests send
    arbitrary names (digits, ``<script>``) to test the transport and its echo, which fold-1
    would refuse (tests/test_matchkey.py tests fold-1, over HTTP too)."""
    kms, metrics = FakeDataKeys(), Metrics()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "envelope.json"
        holder = ListHolder(FileSource(str(path)), kms, metrics, match_rule=match_rule)
        server = Server(Routes(holder, metrics, **routes_options), metrics, port=0, limits=limits)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        rig = Rig(server, holder, metrics, path, kms, thread)
        if load:
            rig.load()
        try:
            yield rig
        finally:
            server.shutdown(drain_timeout=2.0)
            thread.join(timeout=5.0)
            assert not thread.is_alive()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with running() as started:
        yield started


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def _reply(response: http.client.HTTPResponse) -> Reply:
    body = response.read()
    pairs = response.getheaders()
    return Reply(response.status, {k.lower(): v for k, v in pairs}, body, pairs)


def request(
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        return _reply(conn.getresponse())
    finally:
        conn.close()


def passenger(port: int, name: str, quote_via: Any = urllib.parse.quote_plus) -> Reply:
    query = urllib.parse.urlencode({"name": name}, quote_via=quote_via)
    return request(port, "GET", f"/enclave/passenger?{query}")


def screen(port: int, document: Any, content_type: str = "application/json") -> Reply:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return request(port, "POST", "/v1/screen", body, {"Content-Type": content_type})


class _Unclosable(io.BytesIO):
    def close(self) -> None:
        pass  # http.client closes its file after a "Connection: close" response


class _BytesSocket:
    """Lets http.client parse responses from bytes (several, in order, from one buffer)."""

    def __init__(self, data: bytes) -> None:
        self.file = _Unclosable(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.file


def parse_responses(data: bytes) -> list[Reply]:
    source = _BytesSocket(data)
    replies = []
    while source.file.tell() < len(data):
        response = http.client.HTTPResponse(source)  # type: ignore[arg-type]
        response.begin()
        replies.append(_reply(response))
    return replies


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes; return what came back and whether the server closed (bounded wait)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return bytes(received), False
            except ConnectionResetError:
                return bytes(received), True
            if not chunk:
                return bytes(received), True
            received += chunk
        return bytes(received), False


def check_security_headers(reply: Reply, *, head: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers.get(name) == value
    assert reply.headers["server"] == "noflylist"  # fixed, no version banner
    assert "date" in reply.headers
    if not head:  # a response to HEAD has no body, whatever Content-Length says
        assert int(reply.headers["content-length"]) == len(reply.body)


# -- answers -------------------------------------------------------------------------------


def test_the_demo_answers_byte_for_byte(rig: Rig) -> None:
    assert passenger(rig.port, "Big Bird").body == listed_text("Big Bird").encode()
    # Listed after normalisation, answered with the name exactly as the caller wrote it.
    for quote_via in (urllib.parse.quote_plus, urllib.parse.quote):
        reply = passenger(rig.port, "  COOKIE monster ", quote_via)
        assert reply.body == b"  COOKIE monster  is on the no-fly list and CAN NOT BOARD!\n"
    reply = passenger(rig.port, "foo")
    assert reply.status == 200
    assert reply.body == b"foo is cleared to fly. Enjoy your flight!\n"
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"


def test_full_width_names_match_and_are_echoed_in_utf8(rig: Rig) -> None:
    name = full_width("Big") + "\u3000" + full_width("Bird")  # with an ideographic space
    assert passenger(rig.port, name).body == listed_text(name).encode("utf-8")
    assert passenger(rig.port, "ernie").text == listed_text("ernie")
    assert passenger(rig.port, full_width("Foo")).text == cleared_text(full_width("Foo"))


def test_a_name_of_exactly_256_characters_is_screened(rig: Rig) -> None:
    name = MARKER + "é" * (256 - len(MARKER))
    assert passenger(rig.port, name).text == cleared_text(name)


ALLOWED = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn"))
_LISTED_FORMS = {normalize(name) for name in LISTED}


@settings(max_examples=200, deadline=None)
@given(
    name=st.one_of(
        st.sampled_from(["Big Bird", "bIgBiRd", " cookie\u00a0monster", full_width("ERNIE")]),
        st.text(ALLOWED, min_size=1, max_size=40),
    ),
    plus_for_space=st.booleans(),
)
def test_any_acceptable_name_round_trips_through_a_standard_encoder(
    rig: Rig, name: str, plus_for_space: bool
) -> None:
    quote_via = urllib.parse.quote_plus if plus_for_space else urllib.parse.quote
    reply = passenger(rig.port, name, quote_via)
    if not normalize(name):
        assert reply.status == 400
        return
    expected = listed_text(name) if normalize(name) in _LISTED_FORMS else cleared_text(name)
    assert (reply.status, reply.text) == (200, expected)


BAD_QUERIES = {
    "no query": "",
    "no name": "other=1",
    "empty": "name=",
    "whitespace only": "name=+%20+",
    "ideographic spaces only": "name=%E3%80%80%E3%80%80",
    "repeated": f"name={MARKER}&name={MARKER}",
    "bad percent": f"name={MARKER}%ZZ",
    "truncated percent": f"name={MARKER}%4",
    "bad percent in another key": f"name={MARKER}&x%G1=1",
    "invalid UTF-8": f"name={MARKER}%C3%28",
    "encoded surrogate": f"name={MARKER}%ED%A0%80",
    "NUL (Cc)": f"name={MARKER}%00",
    "tab (Cc)": f"name={MARKER}%09x",
    "newline (Cc)": f"name={MARKER}%0Ax",
    "DEL (Cc)": f"name={MARKER}%7F",
    "C1 NEL (Cc)": f"name={MARKER}%C2%85",
    "soft hyphen (Cf)": f"name={MARKER}%C2%AD",
    "zero-width space (Cf)": f"name=Big%E2%80%8BBird{MARKER}",
    "bidi override (Cf)": f"name={MARKER}%E2%80%AE",
    "byte order mark (Cf)": f"name=%EF%BB%BF{MARKER}",
    "private use (Co)": f"name={MARKER}%EE%80%80",
    "unassigned (Cn)": f"name={MARKER}%F4%8F%BF%BF",
    "257 characters": f"name={MARKER}{'a' * (257 - len(MARKER))}",
    "too many parameters": f"name={MARKER}" + "&x=1" * 40,
}


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_names_get_400_with_a_reason_that_does_not_echo_them(rig: Rig, query: str) -> None:
    reply = request(rig.port, "GET", f"/enclave/passenger?{query}")
    assert reply.status == 400
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.text.endswith("\n") and reply.text.count("\n") == 1 and len(reply.text) > 10
    assert MARKER.lower() not in reply.text.lower() and "bird" not in reply.text.lower()
    assert "cleared" not in reply.text
    check_security_headers(reply)


def test_refusals_say_which_character_class_and_where(rig: Rig) -> None:
    reply = request(rig.port, "GET", "/enclave/passenger?name=ab%E2%80%AE")
    assert "category Cf" in reply.text and "position 2" in reply.text


# -- before and after the list is loaded ---------------------------------------------------


def test_nothing_is_screened_before_a_list_is_loaded_then_everything_is() -> None:
    with running(load=False) as rig:
        with pytest.raises(SourceError):
            rig.holder.reload(only_if_changed=False)
        for reply in (passenger(rig.port, "foo"), screen(rig.port, {"names": ["foo"]})):
            assert reply.status == 503
            assert "cleared" not in reply.text and "foo" not in reply.text
            assert reply.headers["retry-after"] == "5"
            check_security_headers(reply)
        ready = request(rig.port, "GET", "/readyz")
        assert ready.status == 503
        assert "cannot read envelope file" in ready.text
        assert request(rig.port, "GET", "/healthz").status == 200  # alive, just not ready

        rig.load()
        assert passenger(rig.port, "foo").text == cleared_text("foo")
        assert screen(rig.port, {"names": ["foo"]}).status == 200
        ready = request(rig.port, "GET", "/readyz")
        assert ready.status == 200
        first, *details = ready.text.splitlines()
        assert first == f"ready: list serial {SERIAL}"
        assert re.fullmatch(r"list: \d+ entries, loaded \S+Z \(\d+ s ago\)", details[0])
        assert re.fullmatch(r"last load: loaded at \S+Z", details[1]) and len(details) == 3
        # Sealed without clients: the list is open, and /readyz says so (issue 6/6).
        assert details[2] == "who may ask: anyone (open list, sealed without clients), no budget"


# -- the batch endpoint --------------------------------------------------------------------


def test_a_manifest_is_screened_in_one_call_in_order(rig: Rig) -> None:
    names = ["foo", "Big Bird", "  COOKIE monster ", full_width("ERNIE"), "Oscar"]
    reply = screen(rig.port, {"names": names})
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {
        "results": [
            {"name": "foo", "listed": False},
            {"name": "Big Bird", "listed": True},
            {"name": "  COOKIE monster ", "listed": True},
            {"name": full_width("ERNIE"), "listed": True},
            {"name": "Oscar", "listed": False},
        ],
        "serial": SERIAL,
    }
    assert screen(rig.port, {"names": ["x"] * 1000}).status == 200  # the largest manifest


BAD_MANIFESTS: dict[str, tuple[bytes, str, int, str]] = {
    "not JSON": (b"names: Big Bird", "application/json", 400, "not JSON"),
    "text/plain": (b'{"names": ["foo"]}', "text/plain", 415, "application/json"),
    "latin-1 charset": (b'{"names": ["foo"]}', "application/json; charset=latin-1", 415, ""),
    "not UTF-8": (b'{"names": ["Zelda\xff"]}', "application/json", 400, "UTF-8"),
    "a list, not an object": (b'["Zelda"]', "application/json", 400, "object"),
    "unknown field": (b'{"names": ["Zelda"], "x": 1}', "application/json", 400, "object"),
    "repeated key": (b'{"names": ["Zelda"], "names": ["a"]}', "application/json", 400, ""),
    "empty list": (b'{"names": []}', "application/json", 400, "non-empty"),
    "a string, not a list": (b'{"names": "Zelda"}', "application/json", 400, "list"),
    "NaN": (b'{"names": [NaN]}', "application/json", 400, "NaN"),
    "deeply nested": (b"[" * 100_000, "application/json", 400, ""),
    "huge number": (b'{"names": [' + b"9" * 5000 + b"]}", "application/json", 400, ""),
    "not a string": (b'{"names": ["Zelda", 3]}', "application/json", 400, "names[1]"),
    "control character": (b'{"names": ["a", "b", "c", "Zelda\\u0007"]}', "application/json",
                          400, "names[3]"),
    "lone surrogate": (b'{"names": ["Zelda\\ud800"]}', "application/json", 400, "surrogate"),
    "whitespace only": (b'{"names": ["Zelda", " \\t "]}', "application/json", 400, "names[1]"),
    "1001 names": (json.dumps({"names": ["Zelda"] * 1001}).encode(), "application/json",
                   413, "1000"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_bad_manifests_are_refused_naming_the_index_not_the_value(
    rig: Rig, case: tuple[bytes, str, int, str]
) -> None:
    body, content_type, status, reason = case
    reply = screen(rig.port, body, content_type)
    assert reply.status == status
    assert reason in reply.text
    assert MARKER.lower() not in reply.text.lower()
    check_security_headers(reply)


def _upload_head(length: int) -> bytes:
    return (
        "POST /v1/screen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _padded_manifest(length: int) -> bytes:
    document = b'{"names": ["Big Bird"]}'
    return document + b" " * (length - len(document))  # JSON allows trailing whitespace


def test_a_body_over_256_kib_gets_413_and_the_connection_closes(rig: Rig) -> None:
    data, closed = exchange(rig.port, _upload_head(256 * 1024 + 1))
    [reply] = parse_responses(data)
    assert reply.status == 413 and closed
    assert reply.headers["connection"] == "close"
    limit = _padded_manifest(256 * 1024)
    assert screen(rig.port, limit).status == 200  # the limit itself is allowed


def test_expect_100_continue_gets_an_interim_response(rig: Rig) -> None:
    body = b'{"names": ["Big Bird"]}'
    head = (
        "POST /v1/screen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 200 and json.loads(reply.read())["results"][0]["listed"]


# -- pages, methods, headers ---------------------------------------------------------------


def test_index_health_and_metrics_pages(rig: Rig) -> None:
    index = request(rig.port, "GET", "/")
    assert index.status == 200
    for endpoint in ("/enclave/passenger", "/v1/screen", "/healthz", "/readyz", "/metrics"):
        assert endpoint in index.text
    assert request(rig.port, "GET", "/healthz").body == b"ok\n"
    metrics = request(rig.port, "GET", "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "noflylist_http_requests_total" in metrics.text
    assert "noflylist_list_serial 7.0" in metrics.text


METHOD_CASES = [
    ("DELETE", "/enclave/passenger", 405, "GET"),
    ("POST", "/enclave/passenger?name=foo", 405, "GET"),
    ("PUT", "/healthz", 405, "GET"),
    ("OPTIONS", "/", 405, "GET"),
    ("TRACE", "/", 405, "GET"),
    ("HEAD", "/healthz", 405, "GET"),
    ("GET", "/v1/screen", 405, "POST"),
    ("PATCH", "/v1/screen", 405, "POST"),
    ("BREW", "/", 501, None),
    ("GET", "/nope", 404, None),
    ("GET", "/enclave/passenger/", 404, None),
    ("GET", "/Enclave/Passenger?name=foo", 404, None),
    ("GET", "/enclave%2Fpassenger?name=foo", 404, None),
]


@pytest.mark.parametrize(("method", "target", "status", "allow"), METHOD_CASES)
def test_unknown_paths_get_404_wrong_methods_405_with_allow_unknown_methods_501(
    rig: Rig, method: str, target: str, status: int, allow: str | None
) -> None:
    reply = request(rig.port, method, target)
    assert reply.status == status
    assert reply.headers.get("allow") == allow
    check_security_headers(reply, head=method == "HEAD")
    assert request(rig.port, "GET", "/healthz").status == 200


def test_a_head_request_is_followed_cleanly_on_the_same_connection(rig: Rig) -> None:
    data, _ = exchange(
        rig.port,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 405 ")
    assert data.count(b"HTTP/1.1 ") == 2 and data.endswith(b"\r\n\r\nok\n")


def test_every_response_carries_the_security_headers_and_no_version_banner(rig: Rig) -> None:
    replies = [
        passenger(rig.port, "foo"),
        request(rig.port, "GET", "/"),
        request(rig.port, "GET", "/metrics"),
        request(rig.port, "GET", "/readyz"),
        screen(rig.port, {"names": ["foo"]}),
        request(rig.port, "GET", "/nope"),
    ]
    for raw in (b"\x00\x01\x02\r\n\r\n", b"GET /healthz\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
        replies += parse_responses(exchange(rig.port, raw)[0])
    assert len(replies) == 9
    for reply in replies:
        check_security_headers(reply)
        assert [name for name, _ in reply.raw_headers].count("Content-Length") == 1


# -- connections ---------------------------------------------------------------------------


def test_one_keep_alive_connection_answers_100_requests_without_stalls(rig: Rig) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", rig.port, timeout=5)
    conn.connect()
    sock = conn.sock
    local = sock.getsockname()
    times = []
    for n in range(100):
        started = time.perf_counter()
        conn.request("GET", f"/enclave/passenger?name=foo{n}")
        reply = _reply(conn.getresponse())
        times.append(time.perf_counter() - started)
        assert reply.text == cleared_text(f"foo{n}")
        assert conn.sock is sock  # http.client would have reconnected if the server closed
    assert sock.getsockname() == local
    conn.close()
    # A head/body split would stall on delayed ACKs (about 40 ms a request).
    assert statistics.median(times) < 0.005


def test_pipelined_requests_are_answered_in_order(rig: Rig) -> None:
    body = b'{"names": ["Big Bird"]}'
    data, closed = exchange(
        rig.port,
        b"GET /enclave/passenger?name=foo HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /v1/screen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"GET /enclave/passenger?name=Big+Bird HTTP/1.1\r\nHost: x\r\n\r\n" * 40
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    replies = parse_responses(data)
    assert closed and len(replies) == 43
    assert replies[0].text == cleared_text("foo")
    assert json.loads(replies[1].body)["results"] == [{"name": "Big Bird", "listed": True}]
    assert all(reply.text == listed_text("Big Bird") for reply in replies[2:42])
    assert replies[42].body == b"ok\n"


def test_http10_closes_unless_keep_alive_is_asked_for(rig: Rig) -> None:
    data, closed = exchange(rig.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    [reply] = parse_responses(data)
    assert (reply.status, reply.headers["connection"], closed) == (200, "close", True)

    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.getheader("Connection") == "keep-alive"
            assert response.read() == b"ok\n"


MALFORMED = {
    "no version": (b"GET /healthz\r\n\r\n", 400),
    "HTTP/2.0": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "absolute form": (b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    "bare LF": (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),
    "bare LF, incomplete": (b"GET /healthz HTTP/1.1\nHost: x\n", 400),
    "space before colon": (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "folded header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    "NUL in a value": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "two Content-Lengths": (
        b"POST /v1/screen HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1"
        b"\r\n\r\n{",
        400,
    ),
    "negative Content-Length": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    "Expect: other": (b"POST / HTTP/1.1\r\nHost: x\r\nExpect: x\r\nContent-Length: 1\r\n\r\n", 417),
    "binary garbage": (bytes(range(256)), 400),
    "lower-case junk": (b"hello there, server\r\n\r\n", 400),
    "method too long": (b"A" * 40 + b" / HTTP/1.1\r\n", 400),
    "request line 100 KB": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "200 header fields": (
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(200))
        + b"\r\n",
        431,
    ),
    "one 100 KB header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n",
                          431),
}


@pytest.mark.parametrize(("data", "status"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_an_error_and_close_and_the_server_goes_on(
    rig: Rig, data: bytes, status: int
) -> None:
    received, closed = exchange(rig.port, data)
    [reply] = parse_responses(received)
    assert reply.status == status and closed
    assert reply.headers["connection"] == "close"
    assert b"Traceback" not in received
    check_security_headers(reply)
    assert passenger(rig.port, "foo").status == 200


class _ErrorRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_LINE_PIECES = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"get", b" ", b"  ", b"/", b"/healthz", b"/enclave/passenger",
     b"/v1/screen", b"?name=", b"foo", b"%", b"%ZZ", b"%C3%28", b"+", b"&", b"*", b"http://x/",
     b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"\n", b"\r", b":", b"Host: x", b"Content-Length: ",
     b"0", b"5", b"-1", b"99999999999999999999", b"Transfer-Encoding: chunked",
     b"Content-Type: application/json", b"Connection: close", b"Connection: keep-alive",
     b"Expect: 100-continue", b"\x00", b"\x16\x03\x01", b"\xff", b"\t"]
)
#: A head: lines of pieces joined by CRLF and ended by an empty line, then maybe a body.
_HEADS = st.tuples(
    st.lists(st.lists(_LINE_PIECES, max_size=8).map(b"".join), min_size=1, max_size=6),
    st.sampled_from([b"", b"{}", b'{"names": ["a"]}', b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]),
).map(lambda parts: b"\r\n".join(parts[0]) + b"\r\n\r\n" + parts[1])
_FUZZ_STATUSES = {200, 400, 404, 405, 408, 413, 414, 415, 417, 431, 501, 505}


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(_HEADS, st.binary(max_size=300)))
@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_arbitrary_bytes_get_well_formed_answers_or_none_and_never_crash_the_server(
    rig: Rig, data: bytes
) -> None:
    errors = _ErrorRecorder()
    logging.getLogger().addHandler(errors)
    try:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the server sees the end: no waiting for a deadline
            received = bytearray()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (chunk := sock.recv(65536)):
                received += chunk
    finally:
        logging.getLogger().removeHandler(errors)
    assert errors.records == []  # e.g. no "closing a connection after IndexError"
    replies = parse_responses(bytes(received).replace(b"HTTP/1.1 100 Continue\r\n\r\n", b""))
    for reply in replies:
        assert reply.status in _FUZZ_STATUSES
        check_security_headers(reply)
        assert b"Traceback" not in reply.body


def test_a_bug_inside_the_request_parser_is_answered_400_naming_its_class_not_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The framer's boundary reaches the client: an answer, not a connection cut off."""

    def broken(head: bytes, limits: Limits) -> None:
        raise KeyError(head.decode())

    monkeypatch.setattr(framing, "_parse_head", broken)
    with running() as rig:
        received, closed = exchange(rig.port, b"GET /enclave/passenger?name=Big+Bird HTTP/1.1"
                                              b"\r\nHost: x\r\n\r\n")  # fmt: skip
        [reply] = parse_responses(received)
        assert reply.status == 400 and closed
        assert "KeyError" in reply.text and "Bird" not in reply.text
        monkeypatch.undo()
        assert passenger(rig.port, "foo").status == 200


def test_tls_on_the_plain_port_gets_400_at_once_and_the_server_goes_on(rig: Rig) -> None:
    # A real ClientHello from OpenSSL, the bytes an https:// client sends first.
    context = ssl.create_default_context()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    started = time.monotonic()
    received, closed = exchange(rig.port, hello)
    assert time.monotonic() - started < 1.0  # no waiting for a deadline
    [reply] = parse_responses(received)
    assert reply.status == 400 and closed and "TLS" in reply.text
    assert passenger(rig.port, "foo").status == 200


def test_a_client_ending_its_lines_with_a_bare_cr_gets_400_long_before_the_request_timeout() -> (
    None
):
    """RFC 9112 section 2.2: a bare CR is invalid. A client that ends its lines with CR alone
    never sends CRLF CRLF, so before the early check it waited request_timeout (10 s) for a
    408. Here each piece arrives alone and ends in its CR, which can only be judged when the
    next piece comes (the LF could follow): through the real loop, with the real timeout,
    the second piece is answered 400 at once, counted as a refusal, not a slow client."""
    assert DEFAULT_LIMITS.request_timeout >= 10.0  # the real one: nothing is shortened here
    with running() as rig:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.monotonic()
            for piece in (b"GET /enclave/passenger?name=Big+Bird HTTP/1.1\r", b"Host: x\r"):
                sock.sendall(piece)
                time.sleep(0.05)  # separate segments, so the server reads each alone
            received = bytearray()
            while chunk := sock.recv(65536):  # until the server closes; bounded by timeout
                received += chunk
            elapsed = time.monotonic() - started
        [reply] = parse_responses(bytes(received))
        assert reply.status == 400 and reply.headers["connection"] == "close"
        assert "bare CR" in reply.text and "Bird" not in reply.text
        check_security_headers(reply)
        assert elapsed < 1.0, f"answered after {elapsed:.2f} s"
        assert 'route="malformed",status="400"} 1' in request(rig.port, "GET", "/metrics").text
        assert rig.metrics.events("noflylist_http_connections_closed_total", "closed_slow") == 0
        assert passenger(rig.port, "foo").status == 200


def _timed_get(port: int) -> float:
    started = time.monotonic()
    assert request(port, "GET", "/healthz").status == 200
    return time.monotonic() - started


@pytest.mark.slow
def test_slow_clients_are_cut_off_at_the_request_deadline_while_others_are_served() -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with running(limits=dataclasses.replace(DEFAULT_LIMITS, request_timeout=1.0)) as rig:
        slow = [socket.create_connection(("127.0.0.1", rig.port), timeout=5) for _ in range(50)]
        started = time.monotonic()
        latencies = []
        for step in range(len(head)):  # one byte every 0.2 s, for up to 7 s
            for sock in slow:
                try:
                    sock.send(head[step : step + 1])
                except OSError:
                    pass  # cut off already
            latencies.append(_timed_get(rig.port))
            if time.monotonic() - started > 2.0:
                break
            time.sleep(0.2)
        for sock in slow:
            data = sock.recv(4096)
            assert data.startswith(b"HTTP/1.1 408 ")
            while data:
                data = sock.recv(4096)
            sock.close()
        assert max(latencies) < 0.1
        assert rig.metrics.events("noflylist_http_connections_closed_total", "closed_slow") == 50


@pytest.mark.slow
def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    with running(limits=dataclasses.replace(DEFAULT_LIMITS, idle_timeout=0.5)) as rig:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.read() == b"ok\n"
            idle_since = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server, without a response
            assert 0.4 < time.monotonic() - idle_since < 2.0
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as silent:
            assert silent.recv(1) == b""
        assert rig.metrics.events("noflylist_http_connections_closed_total", "closed_idle") == 2


class _AnswerLog(logging.Handler):
    """Keeps the path and the time of every access log line: the order the loop answered in."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.answers.append((str(record.args[1]), record.created))  # type: ignore[index]

    def count(self, path: str) -> int:
        return sum(1 for answered, _ in self.answers if answered == path)


def _answer_log(name: str) -> tuple[logging.Logger, _AnswerLog]:
    logger = logging.getLogger(f"test.access.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = _AnswerLog()
    logger.addHandler(handler)
    return logger, handler


def _wait_until_stalled(log: _AnswerLog, path: str, quiet: float = 0.5) -> int:
    """Wait until no answer on ``path`` was logged for ``quiet`` seconds; how many were."""
    deadline = time.monotonic() + 10.0
    count = log.count(path)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        if log.count(path) == count:
            return count
        count = log.count(path)
    raise AssertionError(f"answers on {path} never stopped ({count} so far)")


@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_a_client_that_does_not_read_is_no_longer_served_and_is_closed_after_the_send_timeout() -> (
    None
):
    """A client pipelines 2000 requests and reads nothing: once the answers it has not taken
    fill the small send buffer, its requests are no longer parsed (no more answers are
    logged), another client is answered meanwhile, and send_timeout after the last answer
    it took nothing of, it is closed and counted as closed_not_reading."""
    limits = dataclasses.replace(DEFAULT_LIMITS, send_timeout=1.0, send_buffer_bytes=4096,
                                 keepalive_requests=10**6)  # fmt: skip
    access_log, log = _answer_log("not-reading")
    requests = 2000
    with running(limits=limits, access_log=access_log) as rig:
        flood = socket.socket()
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        flood.settimeout(5)
        flood.connect(("127.0.0.1", rig.port))
        try:
            flood.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
            answered = _wait_until_stalled(log, "/healthz")
            stalled_at = log.answers[-1][1]
            assert 0 < answered < requests  # stopped: the rest wait, unparsed
            assert passenger(rig.port, "foo").status == 200  # others are served meanwhile
            assert log.count("/healthz") == answered
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not rig.metrics.events(
                "noflylist_http_connections_closed_total", "closed_not_reading"
            ):
                time.sleep(0.02)
            closed_after = time.time() - stalled_at
            assert rig.metrics.events(
                "noflylist_http_connections_closed_total", "closed_not_reading"
            ) == 1
            # The deadline runs from the last send that made progress; the sweep checks it
            # every sweep_interval (0.1 s), and this loop polls every 0.02 s.
            assert 0.9 < closed_after < 2.0, closed_after
            assert log.count("/healthz") == answered  # nothing more was answered before it
            assert "noflylist_http_open_connections 1" in request(rig.port, "GET", "/metrics").text
        finally:
            flood.close()


@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_a_slow_reader_of_a_large_answer_is_not_cut_off_while_it_keeps_taking_bytes() -> None:
    """send_timeout bounds the time between two sends that make progress, not the whole
    answer (nginx's send_timeout): a client that takes a 150 KiB answer 8 KiB at a time,
    one read every 0.1 s (about 2 s in all), with a 0.5 s send timeout, gets all of it."""
    limits = dataclasses.replace(DEFAULT_LIMITS, send_timeout=0.5, send_buffer_bytes=4096)
    names = [f"Passenger Number {n:04d} " + "x" * 100 for n in range(1000)]
    with running(limits=limits) as rig:
        body = json.dumps({"names": names}).encode()
        head = (f"POST /v1/screen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.settimeout(5)
        reader.connect(("127.0.0.1", rig.port))
        with reader:
            reader.sendall(head + body)
            started = time.monotonic()
            received = b""
            while b"\r\n\r\n" not in received or len(received) < _answer_length(received):
                time.sleep(0.1)
                chunk = reader.recv(8192)
                assert chunk, f"closed after {len(received)} bytes"
                received += chunk
            assert time.monotonic() - started > 1.0  # longer than the send timeout, in all
        [reply] = parse_responses(received)
        results = json.loads(reply.body)["results"]
        assert reply.status == 200 and [r["name"] for r in results] == names
        assert not rig.metrics.events("noflylist_http_connections_closed_total",
                                      "closed_not_reading")  # fmt: skip


def _answer_length(data: bytes) -> int:
    """Bytes of the whole response whose head starts ``data``."""
    head, _, _ = data.partition(b"\r\n\r\n")
    [length] = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")]  # fmt: skip
    return len(head) + 4 + length


def test_a_keep_alive_connection_is_closed_after_keepalive_requests_answers() -> None:
    """The keepalive_requests-th answer says Connection: close and the connection closes,
    whether the requests come one at a time or pipelined; each close is counted."""
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with running(limits=dataclasses.replace(DEFAULT_LIMITS, keepalive_requests=5)) as rig:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
            for number in range(1, 6):
                sock.sendall(one)
                response = http.client.HTTPResponse(sock)
                response.begin()
                assert response.read() == b"ok\n"
                closes = response.getheader("Connection") == "close"
                assert closes == (number == 5), number
            assert sock.recv(1) == b""
        received, closed = exchange(rig.port, one * 8)
        replies = parse_responses(received)
        assert closed and [reply.status for reply in replies] == [200] * 5
        assert replies[-1].headers["connection"] == "close"
        assert "connection" not in replies[0].headers
        assert rig.metrics.events(
            "noflylist_http_connections_closed_total", "closed_request_limit"
        ) == 2


def test_300_idle_connections_do_not_delay_a_normal_client(rig: Rig) -> None:
    idle = [socket.create_connection(("127.0.0.1", rig.port), timeout=5) for _ in range(300)]
    try:
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\n")  # and one with half a request
        time.sleep(0.2)
        assert "noflylist_http_open_connections 30" in request(rig.port, "GET", "/metrics").text
        assert max(_timed_get(rig.port) for _ in range(20)) < 0.1
    finally:
        for sock in idle:
            sock.close()


def test_connections_over_the_cap_are_closed_at_once() -> None:
    with running(limits=dataclasses.replace(DEFAULT_LIMITS, max_connections=8)) as rig:
        held = [socket.create_connection(("127.0.0.1", rig.port), timeout=5) for _ in range(8)]
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as ninth:
            assert ninth.recv(1) == b""  # accepted and closed at once
        assert rig.metrics.events(
            "noflylist_http_connections_closed_total", "refused_over_limit"
        ) == 1
        held.pop().close()
        time.sleep(0.1)
        assert request(rig.port, "GET", "/healthz").status == 200
        for sock in held:
            sock.close()


def test_uploads_are_shed_with_503_when_buffered_bytes_pass_the_budget() -> None:
    length = 120 * 1024
    body = _padded_manifest(length)
    with running(limits=dataclasses.replace(DEFAULT_LIMITS, max_buffered_bytes=150 * 1024)) as rig:
        first = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
        first.sendall(_upload_head(length) + body[: 100 * 1024])
        time.sleep(0.2)
        received, closed = exchange(rig.port, _upload_head(length) + body[: 100 * 1024])
        [shed] = parse_responses(received)
        assert (shed.status, closed) == (503, True)
        assert passenger(rig.port, "foo").status == 200  # small requests are not shed
        first.sendall(body[100 * 1024 :])  # the first upload fits the budget: it completes
        response = http.client.HTTPResponse(first)
        response.begin()
        assert response.status == 200 and json.loads(response.read())["results"][0]["listed"]
        first.close()
        # The shed and the finished uploads gave their bytes back: a new one fits.
        assert screen(rig.port, body).status == 200
        assert rig.metrics.events("noflylist_http_connections_closed_total",
                                  "shed_over_memory") == 1


# -- secrets: metrics and logs -------------------------------------------------------------


def test_metrics_count_by_route_and_no_name_reaches_metrics_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    names = [f"Secret{secrets.token_hex(4)}" for _ in range(30)]
    with running() as rig:
        rig.load(LISTED + names[:10], serial=SERIAL + 1)
        for name in names:
            assert passenger(rig.port, name).status == 200
        assert passenger(rig.port, names[0] + "\u202e").status == 400
        assert request(rig.port, "GET", f"/{names[1]}?name={names[2]}").status == 404
        assert request(rig.port, "DELETE", f"/enclave/passenger?name={names[3]}").status == 405
        assert screen(rig.port, {"names": names}).status == 200
        assert screen(rig.port, {"names": [names[4], 5]}).status == 400
        exchange(rig.port, f"GET /?name={names[5]} HTTP/9.9\r\n\r\n".encode())
        exchange(rig.port, f"{names[6]} /\r\n\r\n".encode())
        text = request(rig.port, "GET", "/metrics").text
    assert 'noflylist_http_requests_total{route="passenger",status="200"} 30' in text
    assert 'noflylist_http_requests_total{route="passenger",status="400"} 1' in text
    assert 'noflylist_http_requests_total{route="passenger",status="405"} 1' in text
    assert 'noflylist_http_requests_total{route="screen",status="200"} 1' in text
    assert 'noflylist_http_requests_total{route="screen",status="400"} 1' in text
    assert 'noflylist_http_requests_total{route="other",status="404"} 1' in text
    assert 'noflylist_http_requests_total{route="malformed",status="505"} 1' in text
    assert 'noflylist_http_requests_total{route="malformed",status="400"} 1' in text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET /enclave/passenger 200" in logged  # the access log is on and captured
    for name in names:
        assert name.lower() not in text.lower()
        assert name.lower() not in logged.lower()


def test_access_log_in_json_is_one_object_a_line_without_the_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    access = logging.getLogger("tests.server.access")
    with running(access_log=access, log_format="json") as rig:
        passenger(rig.port, "Big Bird")
        request(rig.port, "GET", "/nope?name=Big+Bird")
        exchange(rig.port, b"GET /healthz\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.server.access"]
    entries = [json.loads(line) for line in lines]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("GET", "/enclave/passenger", 200),
        ("GET", "-", 404),
        ("-", "-", 400),
    ]
    assert entries[0]["bytes"] == len(listed_text("Big Bird"))
    assert all(isinstance(e["duration_ms"], float) and "\n" not in line
               for e, line in zip(entries, lines, strict=True))



def test_a_request_and_its_head_have_no_name_in_their_repr() -> None:
    framer = framing.RequestFramer()
    framer.buffer += (
        f"POST /v1/screen?name={MARKER} HTTP/1.1\r\nHost: x\r\nX-Name: {MARKER}\r\n"
        "Content-Length: 20\r\n\r\n"
    ).encode()
    assert framer.take_request(0.0) is None and framer.head is not None
    head_repr = repr(framer.head)
    framer.buffer += f'{{"names": ["{MARKER}"]}}'.encode()
    request = framer.take_request(0.0)
    assert request is not None and MARKER.encode() in request.body
    assert "POST" in repr(request) and "POST" in head_repr
    assert MARKER not in repr(request) and MARKER not in head_repr

# -- extra routes and shutdown -------------------------------------------------------------


def test_an_extra_route_gets_the_parsed_query_and_headers() -> None:
    seen: list[tuple[dict[str, list[str]], dict[str, str]]] = []

    def attestation(query: Mapping[str, list[str]], headers: Mapping[str, str]) -> RouteResponse:
        seen.append((dict(query), dict(headers)))
        return RouteResponse(200, "application/cbor", b"\xa0", {"X-Nonce-Count": "2"})

    def broken(query: Mapping[str, list[str]], headers: Mapping[str, str]) -> RouteResponse:
        return RouteResponse(200, "text/plain", b"", {"Content-Length": "99"})

    routes = {"/enclave/attestation": attestation, "/broken": broken}
    with running(extra_routes=routes) as rig:
        reply = request(rig.port, "GET", "/enclave/attestation?nonce=a%20b&nonce=c+d",
                        headers={"X-Test": "yes"})
        assert (reply.status, reply.body, reply.headers["x-nonce-count"]) == (200, b"\xa0", "2")
        check_security_headers(reply)
        assert seen[0][0] == {"nonce": ["a b", "c d"]} and seen[0][1]["x-test"] == "yes"
        assert request(rig.port, "GET", "/enclave/attestation?nonce=%ZZ").status == 400
        assert request(rig.port, "POST", "/enclave/attestation").headers["allow"] == "GET"
        assert request(rig.port, "GET", "/broken").status == 500
        assert "/enclave/attestation" in request(rig.port, "GET", "/").text
    with pytest.raises(ValueError, match="new path"):
        Routes(rig.holder, rig.metrics, extra_routes={"/healthz": attestation})


def test_shutdown_drains_a_request_in_progress_and_closes_idle_connections() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(query: Mapping[str, list[str]], headers: Mapping[str, str]) -> RouteResponse:
        entered.set()
        release.wait(timeout=5)
        return RouteResponse(200, "text/plain", b"done\n")

    with running(extra_routes={"/slow": slow}) as rig:
        idle = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
        replies: list[Reply] = []
        client = threading.Thread(target=lambda: replies.append(request(rig.port, "GET", "/slow")))
        client.start()
        assert entered.wait(timeout=5)
        stopper = threading.Thread(target=rig.server.shutdown, kwargs={"drain_timeout": 5.0})
        stopper.start()
        time.sleep(0.3)
        assert idle.recv(1) == b""  # idle connection closed at once
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", rig.port), timeout=1)
        assert stopper.is_alive()  # still waiting for the request in progress
        release.set()
        client.join(timeout=5)
        stopper.join(timeout=5)
        assert not stopper.is_alive()
        assert [(r.status, r.body) for r in replies] == [(200, b"done\n")]
        rig.thread.join(timeout=5)
        assert not rig.thread.is_alive()
        idle.close()


def test_shutdown_gives_up_on_a_stuck_request_after_the_drain_timeout() -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck(query: Mapping[str, list[str]], headers: Mapping[str, str]) -> RouteResponse:
        entered.set()
        release.wait(timeout=10)
        return RouteResponse(200, "text/plain", b"late\n")

    with running(extra_routes={"/stuck": stuck}) as rig:
        sock = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
        sock.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(timeout=5)
        started = time.monotonic()
        rig.server.shutdown(drain_timeout=0.5)
        assert 0.4 < time.monotonic() - started < 2.5
        assert sock.recv(100) == b""  # closed without an answer
        release.set()
        sock.close()
