"""HTTP/1.1 connections: one selector thread owns every socket, a few workers answer.

Why this shape: the service must keep answering while many clients are slow, idle or
hostile (slowloris, thousands of idle keep-alive connections). A thread per connection
would let such clients exhaust threads; here they only cost a buffer each. The loop thread
alone touches sockets: it accepts, reads without blocking, frames one complete request
(head, then a body of at most :data:`MAX_BODY_BYTES` by ``Content-Length``), enforcing every
limit below while bytes arrive. Only a complete, parsed :class:`Request` is answered:
by the loop itself when the application says it is quick (a lookup of a few microseconds,
cheaper than a hand-off between threads), else by one of a few worker threads. Either way
the whole response is one byte string that the loop sends with one ``send`` (head and body
together, ``TCP_NODELAY``: no delayed-ACK stall on keep-alive).

A connection has at most one request being answered, so pipelined requests are answered in
order and the work queue never holds more entries than there are connections.

The parser is strict (RFC 9112): origin-form targets (``/path?query``) only, CRLF line ends
only, no obs-fold, no space before a header's colon, no control bytes, one ``Content-Length``
of digits, no ``Transfer-Encoding``, ``Host`` required in HTTP/1.1. Anything else is refused
with a status and the connection is closed, so no two parsers can disagree about where a
request ends. It raises only :class:`RequestError`, and a request is either complete and
checked or not dispatched. The status tells the client which limit it hit: 414 (request
line), 431 (head), 413 (body), 408 (too slow), 505 (version), 501 (chunked), 417 (Expect).

Every limit is a module constant, read where it is applied (so tests can shorten them).
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import errno
import http
import logging
import queue
import re
import selectors
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from enclave.errors import EnclaveError

log = logging.getLogger(__name__)

#: Longest request line (method, target, version): room for a 256-character name encoded
#: as 4-byte UTF-8 percent escapes (3 KiB), far from the 100 KB floods that probe servers.
MAX_REQUEST_LINE = 8 * 1024
#: Most header fields in one request: real clients send about ten.
MAX_HEADERS = 64
#: Largest request head (request line and fields), so one connection's buffer stays small.
MAX_HEAD_BYTES = 64 * 1024
#: Largest request body: a 1000-name manifest is well under 100 KiB of JSON.
MAX_BODY_BYTES = 256 * 1024
#: Longest method token: real methods are at most 7 letters; more means "not HTTP".
MAX_METHOD = 16
#: A request must arrive whole within this many seconds of its first byte (slowloris).
REQUEST_TIMEOUT = 10.0
#: A keep-alive connection with no request in progress is closed after this many seconds.
IDLE_TIMEOUT = 15.0
#: A client that does not read its response within this many seconds is dropped.
WRITE_TIMEOUT = 10.0
#: After an error response the connection is half-closed and unread input discarded for
#: this long, so the client reads the error instead of a reset (RFC 9112 section 9.6).
LINGER_TIMEOUT = 2.0
#: At most this much unread input is discarded while lingering.
LINGER_BYTES = 1024 * 1024
#: Open connections beyond this are closed as soon as they are accepted (fd exhaustion).
MAX_CONNECTIONS = 4096
#: Request bytes buffered across all connections. Past this, a connection holding more than
#: a head's worth gets 503 and is closed: uploads are shed first, GETs keep working, and
#: memory stays bounded (4096 connections x 384 KiB each would otherwise be 1.5 GiB).
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
#: Listen backlog: bursts of new connections wait in the kernel, not in Python.
LISTEN_BACKLOG = 1024
#: Bytes read per ``recv``: a whole head or a large body slice in one system call.
RECV_BYTES = 64 * 1024
#: Pipelined requests answered in a row on one connection before others get a turn.
PIPELINE_BATCH = 16
#: How often deadlines are checked; a deadline may be overrun by at most this much.
SWEEP_INTERVAL = 0.1
#: After ``accept`` fails for lack of file descriptors, stop accepting this long.
ACCEPT_PAUSE = 0.5

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_PREFIX = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_BAD_FIELD_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_LEADING_CRLFS = re.compile(rb"(?:\r\n)*")
#: Fields that must not repeat: two values would let two parsers frame differently.
_SINGLE_FIELDS = frozenset({"content-length", "host", "content-type", "expect"})

_READING, _BUSY, _WRITING, _LINGERING = "reading", "busy", "writing", "lingering"


class RequestError(EnclaveError):
    """A request the parser refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Request:
    """One complete, checked request. Header names are lower case."""

    method: str
    target: str
    http10: bool
    headers: Mapping[str, str]
    body: bytes
    keep_alive: bool
    #: ``time.monotonic()`` when the request was complete: the start of its latency.
    received: float


class Application(Protocol):
    """What answers requests (``noflylist.server``); responses are whole byte strings."""

    def is_quick(self, request: Request) -> bool:
        """True if answering takes fixed microseconds and no I/O: the loop answers it."""
        ...

    def handle(self, request: Request) -> bytes:
        """Answer a complete request (on the loop or a worker thread); must not raise."""
        ...

    def reject(self, status: int, reason: str) -> bytes:
        """Answer a request the parser refused (the connection then closes)."""
        ...


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
    target: str
    http10: bool
    headers: dict[str, str]
    content_length: int
    keep_alive: bool
    expect_continue: bool


def _check_incomplete_head(buffer: bytearray, searched: int) -> None:
    """Refuse early what can never become a valid head, so nobody waits for a deadline."""
    prefix = bytes(buffer[: MAX_METHOD + 1])
    method_end = _TOKEN_PREFIX.match(prefix).end()  # type: ignore[union-attr]
    if method_end < len(prefix) and prefix[method_end] != 0x20:
        if prefix[:1] == b"\x16":
            raise RequestError(400, "this port speaks plain HTTP, not TLS: use http://")
        raise RequestError(400, "the request does not start with an HTTP method")
    if method_end > MAX_METHOD:
        raise RequestError(400, "the request does not start with an HTTP method")
    if _BARE_LF.search(buffer, max(0, searched - 1)):
        raise RequestError(400, "header lines must end with CRLF, not a bare LF")
    if len(buffer) > MAX_REQUEST_LINE and buffer.find(b"\r\n", 0, MAX_REQUEST_LINE + 2) < 0:
        raise RequestError(414, f"the request line is longer than {MAX_REQUEST_LINE} bytes")
    if len(buffer) > MAX_HEAD_BYTES:
        raise RequestError(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")


def _parse_request_line(line: bytes) -> tuple[str, str, bool]:
    """RFC 9112 section 3: method SP request-target SP HTTP-version."""
    if len(line) > MAX_REQUEST_LINE:
        raise RequestError(414, f"the request line is longer than {MAX_REQUEST_LINE} bytes")
    parts = line.split(b" ")
    if len(parts) == 2:
        raise RequestError(400, "the request line has no HTTP version (HTTP/0.9 is not served)")
    if len(parts) != 3:
        raise RequestError(400, "the request line must be METHOD SP TARGET SP VERSION")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or len(method) > MAX_METHOD:
        raise RequestError(400, "the request method is not a token")
    if not _TARGET.fullmatch(target):
        raise RequestError(400, "the request target must be a path (/...) of visible ASCII")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if _VERSION.fullmatch(version):
            raise RequestError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        raise RequestError(400, "the request line has a malformed HTTP version")
    return method.decode("ascii"), target.decode("ascii"), version == b"HTTP/1.0"


def _parse_fields(lines: list[bytes]) -> dict[str, str]:
    """RFC 9112 section 5: name ":" OWS value OWS, one a line, no folding."""
    if len(lines) > MAX_HEADERS:
        raise RequestError(431, f"the request has more than {MAX_HEADERS} header fields")
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


def _parse_head(head: bytes) -> _Head:
    """Parse and check a whole head (without its final empty line)."""
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise RequestError(400, "header lines must end with CRLF")
    method, target, http10 = _parse_request_line(lines[0])
    fields = _parse_fields(lines[1:])
    if not http10 and "host" not in fields:
        raise RequestError(400, "an HTTP/1.1 request needs a Host header field")
    if "transfer-encoding" in fields:
        raise RequestError(501, "Transfer-Encoding is not supported; send Content-Length")
    length_text = fields.get("content-length", "0").encode("latin-1")
    if not _DIGITS.fullmatch(length_text):
        raise RequestError(400, "Content-Length must be a decimal number")
    content_length = int(length_text)
    if content_length > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    tokens = {token.strip().lower() for token in fields.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
    expect = fields.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise RequestError(417, "only 'Expect: 100-continue' is supported")
    expect_continue = expect is not None and not http10 and content_length > 0
    return _Head(method, target, http10, fields, content_length, keep_alive, expect_continue)


# -- connections -------------------------------------------------------------------------


class _Connection:
    """One client socket and what has arrived on it; only the loop thread touches it."""

    __slots__ = (
        "buffer",
        "close_after",
        "closed",
        "continue_sent",
        "deadline",
        "events",
        "head",
        "head_bytes",
        "lingered",
        "out",
        "pending",
        "searched",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.searched = 0  # bytes of buffer already searched for the end of the head
        self.head: _Head | None = None
        self.head_bytes = 0
        self.continue_sent = False
        self.state = _READING
        self.deadline = now + IDLE_TIMEOUT
        self.events = 0
        self.out = memoryview(b"")
        self.close_after = False
        self.lingered = 0
        self.closed = False
        self.pending = False  # bytes of the next request have arrived: its deadline runs

    def take_request(self, now: float) -> Request | None:
        """Frame the next whole request from the buffer; ``None`` until it has all arrived."""
        buffer = self.buffer
        if self.head is None:
            # RFC 9112 section 2.2: ignore empty lines before the request line.
            blank = _LEADING_CRLFS.match(buffer).end()  # type: ignore[union-attr]
            if blank:
                del buffer[:blank]
                self.searched = 0
            end = buffer.find(b"\r\n\r\n", max(0, self.searched - 3))
            if end < 0:
                _check_incomplete_head(buffer, self.searched)
                self.searched = len(buffer)
                return None
            if end > MAX_HEAD_BYTES:
                first_line = buffer.find(b"\r\n")
                if first_line > MAX_REQUEST_LINE:
                    raise RequestError(414, f"the request line is over {MAX_REQUEST_LINE} bytes")
                raise RequestError(431, f"the request head is over {MAX_HEAD_BYTES} bytes")
            self.head = _parse_head(bytes(buffer[:end]))
            self.head_bytes = end + 4
        head = self.head
        total = self.head_bytes + head.content_length
        if len(buffer) < total:
            return None
        body = bytes(buffer[self.head_bytes : total])
        del buffer[:total]
        self.head, self.searched, self.continue_sent = None, 0, False
        self.pending = bool(buffer)
        return Request(
            head.method, head.target, head.http10, head.headers, body, head.keep_alive, now
        )


# -- the loop ------------------------------------------------------------------------------


class ConnectionLoop:
    """Accepts, frames and answers on ``listener`` until :meth:`stop`.

    Quick requests (the application says which: fixed microseconds of work, no I/O) are
    answered on the loop thread itself: a hand-off to a worker would cost more than the
    work, and under the GIL it adds up to a switch interval (5 ms) of latency. Others go to
    ``workers`` threads. ``on_event`` is called on the loop thread with a fixed outcome
    name (for metrics): ``refused_over_limit``, ``closed_idle``, ``closed_slow`` (408),
    ``closed_not_reading``, ``shed_over_memory`` (503).
    """

    def __init__(
        self,
        listener: socket.socket,
        app: Application,
        workers: int,
        on_event: Callable[[str], None],
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._listener = listener
        self._listener.setblocking(False)
        self._app = app
        self._on_event = on_event
        self._worker_count = workers
        self._selector = selectors.DefaultSelector()
        self._connections: dict[int, _Connection] = {}
        self._work: queue.SimpleQueue[tuple[_Connection, Request] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[_Connection, bytes, bool]] = collections.deque()
        self._ready: collections.deque[_Connection] = collections.deque()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._drain_deadline = 0.0
        self._accepting = True
        self._accept_resume = 0.0
        self._buffered = 0  # bytes in all connections' buffers (see MAX_BUFFERED_BYTES)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def run(self) -> None:
        """Serve until :meth:`stop`; then close everything and join the workers."""
        with self._start_lock:
            if self._started or self._stopping.is_set():
                return
            self._started = True
        workers = [
            threading.Thread(target=self._worker, name=f"http-worker-{n}", daemon=True)
            for n in range(self._worker_count)
        ]
        for thread in workers:
            thread.start()
        try:
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            self._selector.register(self._wake_reader, selectors.EVENT_READ, self._wake_reader)
            self._serve()
        finally:
            for connection in list(self._connections.values()):
                self._close(connection)
            for _ in workers:
                self._work.put(None)
            for thread in workers:
                # A worker stuck past the drain deadline is a daemon thread: leave it.
                thread.join(timeout=max(0.0, self._drain_deadline - time.monotonic()) + 0.1)
            self._close_listener()
            self._selector.close()
            self._wake_reader.close()
            self._wake_writer.close()
            self._finished.set()

    def stop(self, drain_timeout: float) -> None:
        """Stop accepting, let requests in progress finish within ``drain_timeout``, close."""
        with self._start_lock:
            self._drain_deadline = time.monotonic() + drain_timeout
            self._stopping.set()
            started = self._started
        if not started:  # run() will return at once; release what it would have
            self._close_listener()
            self._selector.close()
            self._wake_reader.close()
            self._wake_writer.close()
            self._finished.set()
            return
        self._wake()
        self._finished.wait(timeout=drain_timeout + 5.0)

    # The loop thread's work.

    def _serve(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        draining = False
        while True:
            timeout = 0.0 if self._ready else max(0.0, next_sweep - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._accept()
                elif key.data is self._wake_reader:
                    self._drain_wake()
                elif not key.data.closed:  # else it was closed earlier in this batch
                    self._on_event_guarded(key.data)
            self._finish_answered()
            for _ in range(len(self._ready)):
                connection = self._ready.popleft()
                if not connection.closed and connection.state == _READING:
                    self._serve_connection(connection)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + SWEEP_INTERVAL
            if self._stopping.is_set():
                if not draining:
                    draining = True
                    self._begin_drain()
                busy = any(c.state in (_BUSY, _WRITING) for c in self._connections.values())
                if not busy or now >= self._drain_deadline:
                    return
            elif not self._accepting and now >= self._accept_resume:
                self._accepting = True
                self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _on_event_guarded(self, connection: _Connection) -> None:
        """Handle one ready connection; a bug costs that connection, not the service."""
        try:
            if connection.state == _WRITING:
                # By state, not by event mask: selectors reports a hang-up as both.
                self._on_writable(connection)
            else:
                self._on_readable(connection)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "closing a connection after %s at %s:%s (a bug; please report it)",
                type(exc).__name__, where.filename, where.lineno,
            )
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._close(connection)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept connections: %s; pausing", exc.strerror)
                    self._selector.unregister(self._listener)
                    self._accepting = False
                    self._accept_resume = time.monotonic() + ACCEPT_PAUSE
                return  # other errors (ECONNABORTED) concern one connection only
            if len(self._connections) >= MAX_CONNECTIONS:
                self._on_event("refused_over_limit")
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, time.monotonic())
            self._connections[sock.fileno()] = connection
            self._watch(connection, selectors.EVENT_READ)

    def _on_readable(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if connection.state == _LINGERING:
            connection.lingered += len(data)
            if not data or connection.lingered > LINGER_BYTES:
                self._close(connection)
            return
        if not data:
            self._close(connection)  # the client closed; a partial request is dropped
            return
        if not connection.pending:
            connection.pending = True
            connection.deadline = time.monotonic() + REQUEST_TIMEOUT
        connection.buffer += data
        self._buffered += len(data)
        if self._buffered > MAX_BUFFERED_BYTES and len(connection.buffer) > MAX_HEAD_BYTES:
            self._on_event("shed_over_memory")
            reason = "the server is short of memory for request bodies; retry shortly"
            self._write(connection, self._app.reject(503, reason), close=True)
            return
        self._serve_connection(connection)

    def _serve_connection(self, connection: _Connection) -> None:
        """Answer the whole requests in the buffer, in order, until one goes to a worker,
        a response waits for the client to read, or :data:`PIPELINE_BATCH` were answered
        (then other connections get a turn first)."""
        for _ in range(PIPELINE_BATCH):
            before = len(connection.buffer)
            try:
                request = connection.take_request(time.monotonic())
            except RequestError as exc:
                self._buffered -= before - len(connection.buffer)
                self._write(connection, self._app.reject(exc.status, exc.reason), close=True)
                return
            self._buffered -= before - len(connection.buffer)
            if request is None:
                head = connection.head
                if head is not None and head.expect_continue and not connection.continue_sent:
                    connection.continue_sent = True
                    self._send_quietly(connection, b"HTTP/1.1 100 Continue\r\n\r\n")
                self._watch(connection, selectors.EVENT_READ)
                return
            if self._stopping.is_set():
                request.keep_alive = False
            if not self._app.is_quick(request):
                connection.state = _BUSY
                self._watch(connection, 0)
                self._work.put((connection, request))
                return
            response = self._answer(request)
            if not self._write(connection, response, close=not request.keep_alive):
                return
        # Read no more until the buffer is worked off, so a pipelining client cannot grow it.
        self._watch(connection, 0)
        self._ready.append(connection)

    def _answer(self, request: Request) -> bytes:
        """Run the application on this thread (a loop or a worker), never raising."""
        try:
            return self._app.handle(request)
        except Exception as exc:  # the application promises not to raise; be safe anyway
            log.error("request handler raised %s", type(exc).__name__)
            request.keep_alive = False
            return self._app.reject(500, "internal error")

    def _finish_answered(self) -> None:
        while self._done:
            connection, response, keep_alive = self._done.popleft()
            if not connection.closed and self._write(connection, response, close=not keep_alive):
                self._serve_connection(connection)

    def _write(self, connection: _Connection, response: bytes, *, close: bool) -> bool:
        """Send a whole response; True if it went out and the connection reads on."""
        connection.close_after = close or self._stopping.is_set()
        try:
            sent = connection.sock.send(response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(connection)
            return False
        if sent < len(response):
            connection.out = memoryview(response)[sent:]
            connection.state = _WRITING
            connection.deadline = time.monotonic() + WRITE_TIMEOUT
            self._watch(connection, selectors.EVENT_WRITE)
            return False
        return self._written(connection)

    def _on_writable(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.out = connection.out[sent:]
        if not connection.out and self._written(connection):
            self._serve_connection(connection)

    def _written(self, connection: _Connection) -> bool:
        """A response is out: linger and close, or wait for the next request."""
        connection.out = memoryview(b"")
        if connection.close_after:
            self._linger(connection)
            return False
        connection.state = _READING
        connection.deadline = time.monotonic() + (
            REQUEST_TIMEOUT if connection.pending else IDLE_TIMEOUT
        )
        return True

    def _linger(self, connection: _Connection) -> None:
        """Half-close and discard input for a while, so the client reads our last answer."""
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        connection.state = _LINGERING
        self._buffered -= len(connection.buffer)
        connection.buffer.clear()
        connection.deadline = time.monotonic() + LINGER_TIMEOUT
        self._watch(connection, selectors.EVENT_READ)

    def _sweep(self, now: float) -> None:
        """Close connections past their deadline."""
        for connection in list(self._connections.values()):
            if connection.state == _BUSY or now < connection.deadline:
                continue
            if connection.state == _READING and connection.pending:
                self._on_event("closed_slow")
                reason = f"the request did not arrive within {REQUEST_TIMEOUT:g} s"
                self._write(connection, self._app.reject(408, reason), close=True)
                continue
            if connection.state == _READING:
                self._on_event("closed_idle")
            elif connection.state == _WRITING:
                self._on_event("closed_not_reading")
            self._close(connection)

    def _begin_drain(self) -> None:
        """Stop accepting; close connections without a request at a worker or a response
        being written (a request still arriving is not served: its client may retry)."""
        self._close_listener()
        for connection in list(self._connections.values()):
            if connection.state in (_READING, _LINGERING):
                self._close(connection)

    def _watch(self, connection: _Connection, events: int) -> None:
        if connection.events == events:
            return
        if events == 0:
            self._selector.unregister(connection.sock)
        elif connection.events == 0:
            self._selector.register(connection.sock, events, connection)
        else:
            self._selector.modify(connection.sock, events, connection)
        connection.events = events

    def _send_quietly(self, connection: _Connection, data: bytes) -> None:
        """Best-effort small write (``100 Continue``); the client also proceeds without it."""
        try:
            connection.sock.send(data)
        except OSError:
            pass

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._buffered -= len(connection.buffer)
        connection.buffer.clear()
        if connection.events:
            self._selector.unregister(connection.sock)
            connection.events = 0
        self._connections.pop(connection.sock.fileno(), None)
        connection.sock.close()

    def _close_listener(self) -> None:
        if self._listener.fileno() < 0:
            return
        if self._accepting and self._started:
            self._selector.unregister(self._listener)
        self._accepting = False
        self._listener.close()

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # the buffer is full, so a wake-up is already pending (or we are closed)

    def _drain_wake(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # Worker threads.

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            connection, request = item
            response = self._answer(request)
            self._done.append((connection, response, request.keep_alive))
            # An idle worker waits in get() above: it must not keep the last request and
            # answer (queried names) alive in its locals until the next job comes.
            del item, connection, request, response
            self._wake()
