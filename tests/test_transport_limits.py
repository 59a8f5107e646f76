"""The transport's limits are one frozen value, checked when made and passed in: the
:class:`Limits` a :class:`Server` is given is what its loop and every connection's framer
enforce, and no transport module keeps a limit of its own as a global."""

from __future__ import annotations

import dataclasses
import http.client
import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import RouteResponse, Routes
from noflylist.sources import FileSource
from noflylist.transport import connection, framing, loop, server
from noflylist.transport.framing import RequestError, RequestFramer
from noflylist.transport.limits import DEFAULT_LIMITS, Limits
from noflylist.transport.server import Server
from tests.support.fake_kms import FakeDataKeys

FIELDS = [spec.name for spec in dataclasses.fields(Limits)]
COUNTS = [spec.name for spec in dataclasses.fields(Limits) if spec.type == "int"]
SECONDS = [spec.name for spec in dataclasses.fields(Limits) if spec.type == "float"]
#: Small framing limits, consistent with each other (method < request line <= head).
SMALL = dataclasses.replace(DEFAULT_LIMITS, max_request_line=128, max_head_bytes=256,
                            max_headers=4, max_body_bytes=16, max_method=6)  # fmt: skip


# -- the value ------------------------------------------------------------------------------


def test_the_defaults_are_the_limits_the_transport_has_always_had() -> None:
    assert dataclasses.asdict(DEFAULT_LIMITS) == {
        "max_request_line": 8192, "max_headers": 64, "max_head_bytes": 65536,
        "max_body_bytes": 262144, "max_method": 16, "request_timeout": 10.0,
        "idle_timeout": 15.0, "send_timeout": 10.0, "send_buffer_bytes": 65536,
        "keepalive_requests": 1000, "linger_timeout": 2.0, "linger_bytes": 1048576,
        "max_connections": 4096, "max_buffered_bytes": 67108864, "listen_backlog": 1024,
        "recv_bytes": 65536, "requests_per_turn": 1, "sweep_interval": 0.1,
        "accept_pause": 0.5, "drain_timeout": 10.0,
    }  # fmt: skip
    assert len(COUNTS) + len(SECONDS) == len(FIELDS)


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.request_timeout = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_a_limit_that_is_not_above_zero_is_refused_naming_the_field(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"^Limits\.{name} must be .*not {value}$"):
        dataclasses.replace(DEFAULT_LIMITS, **{name: value})


@pytest.mark.parametrize("name", COUNTS)
@pytest.mark.parametrize("value", [True, 2.0, "8"], ids=["bool", "float", "str"])
def test_a_count_must_be_a_whole_number(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^Limits\.{name} must be a whole number"):
        dataclasses.replace(DEFAULT_LIMITS, **{name: value})


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, True, "1"],
                         ids=["nan", "inf", "bool", "str"])  # fmt: skip
def test_a_time_must_be_a_finite_number_of_seconds(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^Limits\.{name} must be a finite number of seconds"):
        dataclasses.replace(DEFAULT_LIMITS, **{name: value})


def test_a_whole_number_of_seconds_is_a_time() -> None:
    assert dataclasses.replace(DEFAULT_LIMITS, request_timeout=3).request_timeout == 3


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"max_method": 8192}, "max_method must be less than Limits.max_request_line"),
        ({"max_request_line": 65537}, "max_request_line must be at most Limits.max_head_bytes"),
    ],
)
def test_limits_that_contradict_each_other_are_refused(
    changes: Mapping[str, int], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(DEFAULT_LIMITS, **changes)


def test_no_transport_module_keeps_a_limit_as_a_global() -> None:
    """The names tests used to patch are gone, so no code can read a stale copy."""
    old = {framing: ["MAX_REQUEST_LINE", "MAX_HEADERS", "MAX_HEAD_BYTES", "MAX_BODY_BYTES",
                     "MAX_METHOD"],
           loop: ["REQUEST_TIMEOUT", "IDLE_TIMEOUT", "SEND_TIMEOUT", "SEND_BUFFER_BYTES",
                  "KEEPALIVE_REQUESTS", "LINGER_TIMEOUT", "LINGER_BYTES", "MAX_CONNECTIONS",
                  "MAX_BUFFERED_BYTES", "LISTEN_BACKLOG", "RECV_BYTES", "REQUESTS_PER_TURN",
                  "SWEEP_INTERVAL", "ACCEPT_PAUSE"],
           server: ["DRAIN_TIMEOUT"], connection: []}  # fmt: skip
    left = [f"{module.__name__}.{name}" for module, names in old.items() for name in names
            if hasattr(module, name)]  # fmt: skip
    assert left == []
    assert {name.lower() for names in old.values() for name in names} == set(FIELDS)


# -- the framer -----------------------------------------------------------------------------


def _refusal(limits: Limits, data: bytes) -> int | None:
    """The status the framer refuses ``data`` with, or None if it frames a request."""
    framer = RequestFramer(limits)
    framer.buffer += data
    try:
        request = framer.take_request(0.0)
    except RequestError as exc:
        return exc.status
    assert request is not None, "the request is incomplete"
    return None


def _get(target: str = "/", fields: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: t\r\n{fields}\r\n".encode()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_get("/" + "a" * 130), 414),
        (_get(fields="X-Pad: " + "p" * 240 + "\r\n"), 431),
        (_get(fields="".join(f"X-{n}: v\r\n" for n in range(4))), 431),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n" + b"b" * 17, 413),
        (b"OPTIONS / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ],
    ids=["request line", "head bytes", "header fields", "body", "method"],
)
def test_a_framer_enforces_the_limits_it_is_given_and_only_those(data: bytes, status: int) -> None:
    assert _refusal(SMALL, data) == status
    assert _refusal(DEFAULT_LIMITS, data) is None


def test_a_framer_made_without_limits_has_the_defaults() -> None:
    assert RequestFramer().limits is DEFAULT_LIMITS


# -- a server passes its limits on ------------------------------------------------------------


def _unloaded(metrics: Metrics) -> ListHolder:
    """A holder that never loads (no envelope): the health page answers all the same."""
    return ListHolder(FileSource("/nonexistent/envelope.json"), FakeDataKeys(), metrics)


@contextmanager
def _serving(limits: Limits | None = None) -> Iterator[tuple[Server, int]]:
    """A server with no list; ``None``: made without ``limits=``, so with the defaults."""
    metrics = Metrics()
    routes = Routes(_unloaded(metrics), metrics)
    if limits is None:
        made = Server(routes, metrics, port=0)
    else:
        made = Server(routes, metrics, port=0, limits=limits)
    thread = threading.Thread(target=made.serve_forever, daemon=True)
    thread.start()
    try:
        yield made, made.address[1]
    finally:
        made.shutdown(drain_timeout=2.0)
        thread.join(timeout=5.0)
        assert not thread.is_alive()


def _status(port: int, data: bytes) -> tuple[int, str, bool]:
    """The first answer's status and body, and whether it says ``Connection: close``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read().decode()
        closed = response.getheader("Connection") == "close"
        return response.status, body, closed


def test_a_server_with_small_framing_limits_answers_431_where_the_default_answers_200() -> None:
    padded = _get("/healthz", "X-Pad: " + "p" * 240 + "\r\n")
    with _serving(SMALL) as (_, port):
        status, body, closed = _status(port, padded)
        assert (status, closed) == (431, True)
        assert "larger than 256 bytes" in body or "over 256 bytes" in body
        assert _status(port, _get("/healthz"))[0] == 200
    with _serving() as (_, port):
        assert _status(port, padded)[:2] == (200, "ok\n")


def test_a_server_passes_keepalive_requests_to_its_loop() -> None:
    with _serving(dataclasses.replace(DEFAULT_LIMITS, keepalive_requests=2)) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            closes = []
            for _ in range(2):
                sock.sendall(_get("/healthz"))
                response = http.client.HTTPResponse(sock)
                response.begin()
                response.read()
                closes.append(response.getheader("Connection"))
            assert closes == [None, "close"]
            assert sock.recv(1) == b""


def test_a_server_passes_request_timeout_to_its_loop() -> None:
    with _serving(dataclasses.replace(DEFAULT_LIMITS, request_timeout=0.3)) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
            response = http.client.HTTPResponse(sock)
            response.begin()
            elapsed = time.monotonic() - started
            assert response.status == 408
            assert "within 0.3 s" in response.read().decode()
        assert 0.25 < elapsed < 2.0, elapsed


def test_shutdown_waits_for_the_drain_timeout_of_its_limits() -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck(query: object, headers: object) -> RouteResponse:
        entered.set()
        release.wait(10)
        return RouteResponse(200, "text/plain", b"late\n")

    limits = dataclasses.replace(DEFAULT_LIMITS, drain_timeout=0.3)
    metrics = Metrics()
    routes = Routes(_unloaded(metrics), metrics, extra_routes={"/stuck": stuck})
    made = Server(routes, metrics, port=0, limits=limits)
    thread = threading.Thread(target=made.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(made.address, timeout=5) as sock:
            sock.sendall(_get("/stuck"))
            assert entered.wait(5)
            started = time.monotonic()
            made.shutdown()  # no drain_timeout: the limits' 0.3 s, not 10 s
            elapsed = time.monotonic() - started
        assert 0.25 < elapsed < 2.0, elapsed
    finally:
        release.set()
        thread.join(timeout=5.0)
    assert not thread.is_alive()
