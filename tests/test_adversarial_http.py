"""The HTTP service against hostile input and hostile clients, over real loopback sockets.

Two parts:

* a **bad input battery**: every request here is wrong in one way (a missing or malformed
  name, oversized lines and heads, control characters, unknown methods, TLS on the plain
  port, broken JSON); each test asserts the status, the content type, that the answer never
  quotes the offending name, and that the service then still answers a normal request;
* **hostile clients**: 50 clients sending their request head one byte a second and 1000
  idle connections, while a normal client must keep getting answers within 100 ms.

Everything is bounded: every socket has a timeout, every loop a count or a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from noflylist import matchkey
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import Routes
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.transport.limits import DEFAULT_LIMITS, Limits
from noflylist.transport.server import Server
from tests.support.fake_kms import FakeDataKeys

LISTED = ("Big Bird", "Oscar the Grouch", "Cookie Monster")
TEXT = "text/plain; charset=utf-8"
#: A marker put into bad names: no error answer may echo it back.
MARKER = "Zebulonquux"
#: Seconds any one exchange with the server may take before the test fails.
EXCHANGE_TIMEOUT = 5.0
#: What a normal client must get while hostile clients are connected (the issue's target).
NORMAL_LATENCY_LIMIT = 0.100
SLOW_CLIENTS = 50
IDLE_CLIENTS = 1000
#: Normal requests timed while the hostile clients are connected.
NORMAL_REQUESTS = 60


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after this answer


def start_server(
    tmp_path: Path, limits: Limits = DEFAULT_LIMITS, **routes_options: Any
) -> tuple[Server, threading.Thread]:
    """A loaded service on a free loopback port (FakeDataKeys stands in for KMS);
    ``routes_options`` go to :class:`Routes`."""
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(LISTED, kms, "k", serial=1))
    metrics = Metrics()
    # exact: the battery echoes arbitrary names (``<script>``), which fold-1 refuses
    # (tests/test_matchkey.py); here the transport is under test.
    holder = ListHolder(FileSource(str(path)), kms, metrics, match_rule=matchkey.EXACT)
    holder.reload(only_if_changed=False)
    routes = Routes(holder, metrics, **routes_options)
    server = Server(routes, metrics, host="127.0.0.1", port=0, limits=limits)
    thread = threading.Thread(target=server.serve_forever, name="server-under-test", daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    quiet = logging.getLogger("test.access.quiet")
    quiet.setLevel(logging.WARNING)  # the battery sends thousands of lines otherwise
    server, thread = start_server(tmp_path_factory.mktemp("adversarial"), access_log=quiet)
    yield server.address
    server.shutdown(drain_timeout=1.0)
    thread.join(timeout=5)


def read_answer(sock: socket.socket, *, head_only: bool = False) -> Answer:
    """Read one response (head, then Content-Length bytes unless it answers a HEAD);
    bounded by the socket timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a whole head arrived: {data[:200]!r}")
        data += chunk
        assert len(data) < 1 << 20, "a response head larger than 1 MiB"
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body, extra = rest[:length], rest[length:]
    assert not extra, f"bytes after the response body: {extra[:80]!r}"
    closed = headers.get("connection", "").lower() == "close"
    return Answer(status, headers, body, closed)


def exchange(address: tuple[str, int], request: bytes) -> Answer:
    """Send ``request`` on a new connection and read one answer.

    The server may answer and stop reading before a large request is sent in full; that is
    allowed, so a failed send is ignored and the answer is read anyway.
    """
    with socket.create_connection(address, timeout=EXCHANGE_TIMEOUT) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_answer(sock)


def get(target: str, *, version: str = "HTTP/1.1", headers: str = "Host: t\r\n") -> bytes:
    return f"GET {target} {version}\r\n{headers}\r\n".encode("latin-1")


def post(body: bytes, content_type: str = "application/json", path: str = "/v1/screen") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def assert_still_serving(address: tuple[str, int]) -> None:
    """A normal client gets both answers, right, on a fresh connection."""
    listed = exchange(address, get("/enclave/passenger?name=big+bird"))
    assert listed.status == 200
    assert listed.body == b"big bird is on the no-fly list and CAN NOT BOARD!\n"
    cleared = exchange(address, get("/enclave/passenger?name=Kermit"))
    assert cleared.status == 200
    assert cleared.body == b"Kermit is cleared to fly. Enjoy your flight!\n"


def assert_refused(answer: Answer, status: int) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == TEXT
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.body.endswith(b"\n") and len(answer.body) < 400
    assert MARKER.encode() not in answer.body and MARKER.lower().encode() not in answer.body


# -- the name parameter ----------------------------------------------------------------------

NAME_CASES = {
    "missing": ("/enclave/passenger", 400),
    "missing-with-other-parameter": (f"/enclave/passenger?nom={MARKER}", 400),
    "empty": ("/enclave/passenger?name=", 400),
    "whitespace-only": ("/enclave/passenger?name=%20%09+%E3%80%80", 400),
    "repeated": (f"/enclave/passenger?name={MARKER}&name=bert", 400),
    "ten-kilobytes": (f"/enclave/passenger?name={MARKER}{'A' * 10240}", 414),
    "percent-ZZ": (f"/enclave/passenger?name={MARKER}%ZZ", 400),
    "percent-truncated": (f"/enclave/passenger?name={MARKER}%C", 400),
    "invalid-utf8": (f"/enclave/passenger?name={MARKER}%C3%28", 400),
    "overlong-utf8": (f"/enclave/passenger?name={MARKER}%C0%AF", 400),
    "encoded-surrogate": (f"/enclave/passenger?name={MARKER}%ED%A0%80", 400),
    "nul": (f"/enclave/passenger?name={MARKER}%00", 400),
    "control-01": (f"/enclave/passenger?name={MARKER}%01", 400),
    "escape": (f"/enclave/passenger?name={MARKER}%1B%5B31m", 400),
    "delete": (f"/enclave/passenger?name={MARKER}%7F", 400),
    "c1-next-line": (f"/enclave/passenger?name={MARKER}%C2%85", 400),
    "line-feed": (f"/enclave/passenger?name={MARKER}%0Aevil", 400),
    "zero-width-space": (f"/enclave/passenger?name=Big%E2%80%8B{MARKER}", 400),
    "bidi-override": (f"/enclave/passenger?name=%E2%80%AE{MARKER}", 400),
    "private-use": (f"/enclave/passenger?name={MARKER}%EE%80%80", 400),
    "unassigned": (f"/enclave/passenger?name={MARKER}%F0%B0%80%80%F3%A0%80%80", 400),
    "257-characters": (f"/enclave/passenger?name={MARKER}{'e' * 257}", 400),
    "too-many-parameters": ("/enclave/passenger?" + "&".join(f"p{i}=1" for i in range(40)), 400),
}


@pytest.mark.parametrize("target,status", NAME_CASES.values(), ids=NAME_CASES.keys())
def test_bad_names_are_refused_without_echo_and_service_goes_on(
    address: tuple[str, int], target: str, status: int
) -> None:
    assert_refused(exchange(address, get(target)), status)
    assert_still_serving(address)


def test_one_megabyte_name_is_refused_as_too_long_a_request_line(address: tuple[str, int]) -> None:
    answer = exchange(address, get(f"/enclave/passenger?name={MARKER}{'A' * 1_000_000}"))
    assert_refused(answer, 414)
    assert answer.closed
    assert_still_serving(address)


def test_script_tag_comes_back_as_inert_plain_text(address: tuple[str, int]) -> None:
    answer = exchange(address, get("/enclave/passenger?name=%3Cscript%3Ealert(1)%3C/script%3E"))
    assert answer.status == 200
    assert answer.headers["content-type"] == TEXT
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.body == b"<script>alert(1)</script> is cleared to fly. Enjoy your flight!\n"
    assert_still_serving(address)


def test_raw_control_bytes_in_the_request_line_are_refused(address: tuple[str, int]) -> None:
    for raw in (b"\x00", b"\x7f", b"\x1b", b"\xc3\xa9"):
        request = b"GET /enclave/passenger?name=" + MARKER.encode() + raw + b" HTTP/1.1\r\n"
        assert_refused(exchange(address, request + b"Host: t\r\n\r\n"), 400)
    assert_still_serving(address)


# -- request framing ---------------------------------------------------------------------------

FRAMING_CASES = {
    "request-line-100KB": (get("/enclave/passenger?name=" + "A" * 100_000), 414),
    "200-headers": (
        get("/healthz", headers="Host: t\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(200))),
        431,
    ),
    "one-100KB-header": (get("/healthz", headers=f"Host: t\r\nX-Big: {'v' * 100_000}\r\n"), 431),
    "no-version": (b"GET /enclave/passenger?name=bert\r\n\r\n", 400),
    # An HTTP/0.9 client sends its one line and waits: 400 at once, not 408 at the deadline.
    "http-0.9-line-alone": (b"GET /enclave/passenger?name=bert\r\n", 400),
    "bad-version-line-alone": (b"GET /healthz HTTQ/1.1\r\n", 400),
    "http-2.0-version": (get("/healthz", version="HTTP/2.0"), 505),
    "http-2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "garbage-version": (get("/healthz", version="HTTQ/1.1"), 400),
    "http-1.1-without-host": (get("/healthz", headers=""), 400),
    "absolute-form-target": (get("http://evil.example/healthz"), 400),
    "bare-lf": (b"GET /healthz HTTP/1.1\nHost: t\n\n", 400),
    "folded-header": (get("/healthz", headers="Host: t\r\nX-A: 1\r\n  folded\r\n"), 400),
    "space-before-colon": (get("/healthz", headers="Host : t\r\n"), 400),
    "two-hosts": (get("/healthz", headers="Host: a\r\nHost: b\r\n"), 400),
    "control-in-header-value": (get("/healthz", headers="Host: t\r\nX-A: a\x01b\r\n"), 400),
    "transfer-encoding": (
        b"POST /v1/screen HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "two-content-lengths": (
        b"POST /v1/screen HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    "negative-content-length": (
        b"POST /v1/screen HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        400,
    ),
    "huge-content-length": (
        b"POST /v1/screen HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999\r\n\r\n",
        413,
    ),
    "expect-something-else": (get("/healthz", headers="Host: t\r\nExpect: 200-ok\r\n"), 417),
    "tls-client-hello": (bytes.fromhex("16030100c4010000c00303") + bytes(180), 400),
    "binary-garbage": (bytes(range(256)) * 4, 400),
    "method-too-long": (b"A" * 40 + b" / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "unknown-method": (b"BREW /enclave/passenger?name=bert HTTP/1.1\r\nHost: t\r\n\r\n", 501),
}


@pytest.mark.parametrize("request_bytes,status", FRAMING_CASES.values(), ids=FRAMING_CASES.keys())
def test_malformed_requests_are_refused_and_service_goes_on(
    address: tuple[str, int], request_bytes: bytes, status: int
) -> None:
    answer = exchange(address, request_bytes)
    assert_refused(answer, status)
    if status not in (501,):  # a framing error leaves the stream unusable: it must close
        assert answer.closed
    assert_still_serving(address)


#: Heads with a bare CR (RFC 9112 section 2.2: invalid) that never end in CRLF CRLF, so only
#: the early check can refuse them; before it, each waited for request_timeout, then got 408.
BARE_CR_CASES = {
    "cr-ends-the-request-line": b"GET /healthz HTTP/1.1\rHost: t\r",
    "cr-inside-the-request-line": b"GET /healthz\rHTTP/1.1",
    "cr-ends-a-header-line": b"GET /healthz HTTP/1.1\r\nHost: t\rX-A: b\r\n",
    "cr-inside-a-header-value": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\rb",
    "cr-cr-lf": b"GET /healthz HTTP/1.1\r\nHost: t\r\r\n",
}


@pytest.mark.parametrize("head", BARE_CR_CASES.values(), ids=BARE_CR_CASES.keys())
def test_a_bare_cr_in_a_head_is_refused_with_400_at_once(
    address: tuple[str, int], head: bytes
) -> None:
    started = time.monotonic()
    answer = exchange(address, head)
    elapsed = time.monotonic() - started
    assert_refused(answer, 400)
    assert answer.closed and b"bare CR" in answer.body
    assert elapsed < 1.0 < DEFAULT_LIMITS.request_timeout, f"answered after {elapsed:.2f} s"
    assert_still_serving(address)


def test_a_crlf_split_between_two_sends_is_not_taken_for_a_bare_cr(
    address: tuple[str, int],
) -> None:
    """A CR that is the last byte received so far cannot be judged yet: the LF may follow."""
    with socket.create_connection(address, timeout=EXCHANGE_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (b"GET /healthz HTTP/1.1\r", b"\nHost: t\r", b"\n\r", b"\n"):
            sock.sendall(piece)
            time.sleep(0.05)  # separate segments, so the server reads each alone
        answer = read_answer(sock)
    assert (answer.status, answer.body) == (200, b"ok\n")


def test_http_1_0_is_answered_and_closed_unless_keep_alive_is_asked(
    address: tuple[str, int],
) -> None:
    answer = exchange(address, get("/enclave/passenger?name=Big%20Bird", version="HTTP/1.0"))
    assert answer.status == 200 and answer.closed
    assert answer.body == b"Big Bird is on the no-fly list and CAN NOT BOARD!\n"
    with socket.create_connection(address, timeout=EXCHANGE_TIMEOUT) as sock:
        for _ in range(2):
            sock.sendall(get("/healthz", version="HTTP/1.0", headers="Connection: keep-alive\r\n"))
            answer = read_answer(sock)
            assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
    assert_still_serving(address)


# -- methods on every path -------------------------------------------------------------------

PATHS = {"/": "GET", "/healthz": "GET", "/readyz": "GET", "/metrics": "GET",
         "/enclave/passenger?name=bert": "GET", "/v1/screen": "POST"}  # fmt: skip
METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH")


WRONG_METHODS = [(m, p) for p in PATHS for m in METHODS if m != PATHS[p]]


@pytest.mark.parametrize("method,path", WRONG_METHODS)
def test_every_other_method_on_every_path_is_405_with_allow(
    address: tuple[str, int], method: str, path: str
) -> None:
    request = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode()
    answer = exchange(address, request)
    assert_refused(answer, 405)
    assert answer.headers["allow"] == PATHS[path]


@pytest.mark.parametrize("method", (*METHODS, "HEAD"))
def test_any_method_on_an_unknown_path_is_404(address: tuple[str, int], method: str) -> None:
    request = f"{method} /enclave/{MARKER} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    with socket.create_connection(address, timeout=EXCHANGE_TIMEOUT) as sock:
        sock.sendall(request)
        answer = read_answer(sock, head_only=method == "HEAD")
    assert answer.status == 404 and answer.headers["content-type"] == TEXT
    if method != "HEAD":
        assert_refused(answer, 404)
    assert_still_serving(address)


def test_head_answer_has_no_body_so_the_next_answer_on_the_connection_stays_framed(
    address: tuple[str, int],
) -> None:
    """RFC 9110 section 9.3.2: a response to HEAD carries no content. A body after a HEAD
    answer is read by the client as the start of the next response."""
    with socket.create_connection(address, timeout=EXCHANGE_TIMEOUT) as sock:
        sock.sendall(get("/enclave/passenger?name=bert").replace(b"GET", b"HEAD", 1))
        sock.sendall(get("/healthz"))
        data = b""
        deadline = time.monotonic() + EXCHANGE_TIMEOUT
        while data.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_answer, _, after = data.partition(b"\r\n\r\n")
    assert head_answer.startswith(b"HTTP/1.1 405 ")
    assert after.startswith(b"HTTP/1.1 200 "), f"bytes between the two answers: {after[:60]!r}"


# -- the JSON endpoint -----------------------------------------------------------------------

JSON_CASES = {
    "not-json": (f"names: {MARKER}".encode(), TEXT, 400),
    "truncated": (f'{{"names": ["{MARKER}"'.encode(), TEXT, 400),
    "array-not-object": (f'["{MARKER}"]'.encode(), TEXT, 400),
    "empty-object": (b"{}", TEXT, 400),
    "extra-key": (f'{{"names": ["{MARKER}"], "x": 1}}'.encode(), TEXT, 400),
    "names-not-list": (f'{{"names": "{MARKER}"}}'.encode(), TEXT, 400),
    "names-empty": (b'{"names": []}', TEXT, 400),
    "name-not-string": (b'{"names": [1, null, true]}', TEXT, 400),
    "name-empty": (b'{"names": ["  "]}', TEXT, 400),
    "name-control": (f'{{"names": ["{MARKER}\\u0000"]}}'.encode(), TEXT, 400),
    "name-lone-surrogate": (f'{{"names": ["{MARKER}\\ud800"]}}'.encode(), TEXT, 400),
    "name-10KB": (json.dumps({"names": [MARKER + "B" * 10240]}).encode(), TEXT, 400),
    "repeated-key": (f'{{"names": ["{MARKER}"], "names": ["b"]}}'.encode(), TEXT, 400),
    "nan": (b'{"names": [NaN]}', TEXT, 400),
    "huge-number": (b'{"names": [' + b"9" * 100_000 + b"]}", TEXT, 400),
    "deep-nesting": (b'{"names": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", TEXT, 400),
    "invalid-utf8": (b'{"names": ["\xff\xfe' + MARKER.encode() + b'"]}', TEXT, 400),
    "utf16-bom": ('{"names": ["bert"]}'.encode("utf-16"), TEXT, 400),
    "1001-names": (json.dumps({"names": ["bert"] * 1001}).encode(), TEXT, 413),
    "one-megabyte": (json.dumps({"names": [MARKER + "C" * 1_000_000]}).encode(), TEXT, 413),
    "300KB-under-1000-names": (json.dumps({"names": ["D" * 300] * 999}).encode(), TEXT, 413),
}


@pytest.mark.parametrize("body,content_type,status", JSON_CASES.values(), ids=JSON_CASES.keys())
def test_malformed_and_oversized_json_is_refused_and_service_goes_on(
    address: tuple[str, int], body: bytes, content_type: str, status: int
) -> None:
    assert_refused(exchange(address, post(body)), status)
    assert_still_serving(address)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded",
                     "application/json; charset=latin-1", ""],
)  # fmt: skip
def test_json_endpoint_wants_json_content_type(address: tuple[str, int], content_type: str) -> None:
    assert_refused(exchange(address, post(b'{"names": ["bert"]}', content_type)), 415)
    assert_still_serving(address)


def test_json_endpoint_answers_well_formed_manifests(address: tuple[str, int]) -> None:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "Cookie") + "\u3000" + "".join(
        chr(ord(c) + 0xFEE0) for c in "Monster"
    )  # NFKC makes this "Cookie Monster"
    names = ["Big Bird", "<script>", "Kermit", fullwidth]
    answer = exchange(address, post(json.dumps({"names": names}).encode()))
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    results = json.loads(answer.body)["results"]
    assert [(r["name"], r["listed"]) for r in results] == list(
        zip(names, [True, False, False, True], strict=True)
    )


# -- hostile clients -------------------------------------------------------------------------


def _raise_open_files_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if ceiling < wanted:
        pytest.fail(f"this test needs {wanted} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def _normal_request(address: tuple[str, int], keep_alive: socket.socket | None) -> float:
    """One screening request, on ``keep_alive`` or a new connection; returns its seconds."""
    start = time.perf_counter()
    if keep_alive is None:
        answer = exchange(address, get("/enclave/passenger?name=Cookie+Monster"))
    else:
        keep_alive.sendall(get("/enclave/passenger?name=Cookie+Monster"))
        answer = read_answer(keep_alive)
    elapsed = time.perf_counter() - start
    assert answer.status == 200
    assert answer.body == b"Cookie Monster is on the no-fly list and CAN NOT BOARD!\n"
    return elapsed


@pytest.mark.slow
def test_normal_client_is_answered_within_100ms_among_slowloris_and_idle_clients(
    tmp_path: Path,
) -> None:
    """50 clients drip their request head one byte a second, 1000 connections sit idle; a
    normal client must still get every answer within 100 ms, and the slow clients must be
    answered 408 and dropped once the request deadline passes."""
    _raise_open_files_limit(2 * (SLOW_CLIENTS + IDLE_CLIENTS) + 256)
    # Shortened so the whole test stays bounded (about 4 s); the mechanism is the same.
    limits = dataclasses.replace(DEFAULT_LIMITS, request_timeout=2.5)
    quiet = logging.getLogger("test.access.hostile")
    quiet.setLevel(logging.WARNING)
    server, thread = start_server(tmp_path, limits, access_log=quiet)
    slow: list[socket.socket] = []
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(socket.create_connection(server.address, timeout=EXCHANGE_TIMEOUT))
        for _ in range(SLOW_CLIENTS):
            slow.append(socket.create_connection(server.address, timeout=EXCHANGE_TIMEOUT))
        head = get("/enclave/passenger?name=bert")
        stop = threading.Event()

        def drip() -> None:
            """One more byte of the head on every slow connection, once a second."""
            for position in range(len(head)):
                for sock in slow:
                    try:
                        sock.send(head[position : position + 1])
                    except OSError:
                        pass  # dropped by the server: expected once the deadline passes
                if stop.wait(1.0):
                    return

        dripper = threading.Thread(target=drip, name="slowloris", daemon=True)
        dripper.start()
        latencies = []
        with socket.create_connection(server.address, timeout=EXCHANGE_TIMEOUT) as keep_alive:
            window_end = time.monotonic() + 2.0  # before the slow clients' deadline
            for n in range(NORMAL_REQUESTS):
                latencies.append(_normal_request(server.address, keep_alive if n % 2 else None))
                time.sleep(max(0.0, min(0.02, window_end - time.monotonic())))
        assert server._loop.open_connections >= IDLE_CLIENTS + SLOW_CLIENTS
        stop.set()
        dripper.join(timeout=5)
        slowest = max(latencies)
        print(f"normal client among hostile ones: slowest {slowest * 1000:.1f} ms, median "
              f"{statistics.median(latencies) * 1000:.2f} ms over {len(latencies)} requests")
        assert slowest < NORMAL_LATENCY_LIMIT, (
            f"slowest normal answer {slowest * 1000:.1f} ms (median "
            f"{statistics.median(latencies) * 1000:.1f} ms) with {SLOW_CLIENTS} slow and "
            f"{IDLE_CLIENTS} idle clients connected"
        )
        for sock in slow:
            sock.settimeout(limits.request_timeout + 2.0)
            assert read_answer(sock).status == 408
        _normal_request(server.address, None)
    finally:
        for sock in slow + idle:
            sock.close()
        server.shutdown(drain_timeout=1.0)
        thread.join(timeout=5)


#: Connections of the pipelining flood in the fairness test.
FLOOD_CONNECTIONS = 5
#: Requests each flooding connection sends at once: far more than it can be answered in the
#: time the test takes, so every one always has whole requests waiting.
FLOOD_REQUESTS = 4000


class _Paths(logging.Handler):
    """The path of every access log line, in the order the loop answered."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.paths.append(str(record.args[1]))  # type: ignore[index]


def _flood(address: tuple[str, int], stop: threading.Event) -> list[socket.socket]:
    """FLOOD_CONNECTIONS connections that pipeline FLOOD_REQUESTS screening requests each and
    read (and drop) their answers, so none stalls on a full send buffer: the server always
    has whole requests of every one to answer."""
    burst = get("/enclave/passenger?name=bert") * FLOOD_REQUESTS
    socks = [socket.create_connection(address, timeout=EXCHANGE_TIMEOUT)
             for _ in range(FLOOD_CONNECTIONS)]  # fmt: skip

    def pump(sock: socket.socket) -> None:
        sock.setblocking(False)
        pending = memoryview(burst)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while not stop.is_set():
                for _, events in selector.select(0.1):
                    try:
                        if events & selectors.EVENT_READ and not sock.recv(1 << 16):
                            return
                        if events & selectors.EVENT_WRITE and pending:
                            pending = pending[sock.send(pending):]
                            if not pending:
                                selector.modify(sock, selectors.EVENT_READ)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        return

    for sock in socks:
        threading.Thread(target=pump, args=(sock,), name="flood", daemon=True).start()
    return socks


@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_a_pipelining_flood_delays_another_clients_answer_by_one_answer_a_turn(
    tmp_path: Path,
) -> None:
    """Five connections pipeline thousands of requests each. A request from another client
    on a new connection, once it is in the server's receive buffer, is answered within three
    turns of the loop (the rest of the current one, the one that accepts it, the one that
    reads it), and a turn answers at most one request of each flooding connection: so at most
    3 x 5 flood answers come between. (Sixteen answers a connection a turn, as before, put
    hundreds there.) Counted from the access log, which the loop writes as it answers."""
    limits = dataclasses.replace(DEFAULT_LIMITS, keepalive_requests=10**6)
    access_log = logging.getLogger("test.access.flood")
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    order = _Paths()
    access_log.addHandler(order)
    server, thread = start_server(tmp_path, limits, access_log=access_log)
    stop = threading.Event()
    flood: list[socket.socket] = []
    try:
        flood = _flood(server.address, stop)
        between = []
        for _ in range(20):
            deadline = time.monotonic() + EXCHANGE_TIMEOUT
            start = len(order.paths)
            while len(order.paths) < start + 200 and time.monotonic() < deadline:
                time.sleep(0.005)  # the flood is being answered
            with socket.create_connection(server.address, timeout=EXCHANGE_TIMEOUT) as sock:
                sock.sendall(get("/healthz"))
                sent_at = len(order.paths)
                answer = read_answer(sock)
            assert (answer.status, answer.body) == (200, b"ok\n")
            # The log may be read after the answer (threads): then no flood answer came between.
            answered_at = order.paths.index("/healthz")
            between.append(max(0, answered_at - sent_at))
            order.paths[answered_at] = "/healthz (counted)"
        flood_answers = order.paths.count("/enclave/passenger")
        assert flood_answers > 20 * 200  # the flood was answered all along
        assert max(between) <= 3 * FLOOD_CONNECTIONS, (
            f"flood answers between a normal request and its answer: {sorted(between)}"
        )
    finally:
        stop.set()
        for sock in flood:
            sock.close()
        server.shutdown(drain_timeout=1.0)
        thread.join(timeout=5)
        access_log.removeHandler(order)


def test_connections_over_the_limit_are_closed_and_service_recovers(tmp_path: Path) -> None:
    """Past max_connections a new connection is closed at once (no fd exhaustion); once the
    hoarded connections go, normal clients are served again."""
    limits = dataclasses.replace(DEFAULT_LIMITS, max_connections=20)
    quiet = logging.getLogger("test.access.limit")
    quiet.setLevel(logging.WARNING)
    server, thread = start_server(tmp_path, limits, access_log=quiet)
    hoard = [socket.create_connection(server.address, timeout=EXCHANGE_TIMEOUT) for _ in range(20)]
    try:
        deadline = time.monotonic() + EXCHANGE_TIMEOUT
        while server._loop.open_connections < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(server.address, timeout=EXCHANGE_TIMEOUT) as extra:
            extra.sendall(get("/healthz"))
            try:
                assert extra.recv(100) == b""
            except ConnectionResetError:
                pass  # closed with our request unread: also a refusal
    finally:
        for sock in hoard:
            sock.close()
    deadline = time.monotonic() + EXCHANGE_TIMEOUT
    while server._loop.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert_still_serving(server.address)
        assert 'noflylist_http_connections_closed_total{outcome="refused_over_limit"} 1' in (
            exchange(server.address, get("/metrics")).body.decode()
        )
    finally:
        server.shutdown(drain_timeout=1.0)
        thread.join(timeout=5)
