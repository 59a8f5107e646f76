"""HTTP/1.1 connections: one selector thread owns every socket, a few workers answer.

Why this shape: the service must keep answering while many clients are slow, idle or
hostile (slowloris, thousands of idle keep-alive connections). A thread per connection
would let such clients exhaust threads; here they only cost a buffer each. The loop thread
alone touches sockets: it accepts, reads without blocking, frames one complete request
(head, then a body of at most ``max_body_bytes`` by ``Content-Length``), enforcing every
limit while bytes arrive. Only a complete, parsed :class:`Request` is answered: by the loop
itself when the application says it is quick (a lookup of a few microseconds: a hand-off to
a worker would cost more than the work, and under the GIL it adds up to a switch interval,
5 ms, of latency), else by one of a few worker threads (:mod:`noflylist.transport.workers`).
Either way the whole response is one byte string that the loop sends with one ``send``
(head and body together, ``TCP_NODELAY``: no delayed-ACK stall on keep-alive).

A connection has at most one request being answered, so pipelined requests are answered in
order and the work queue never holds more entries than there are connections.

Fairness. Each turn of the loop (one ``select``, then the connections it reports, then those
queued from earlier turns) answers at most ``requests_per_turn`` request of any one
connection; a connection with more requests buffered waits, unread, for its next turn behind
every other, and accepting new connections happens every turn. So a client that pipelines
requests as fast as it can delays another client by one answer a turn, not by its whole queue.
A client that sends requests but does not read the answers is stopped by the kernel: its send
buffer is ``send_buffer_bytes``, so once about that much is unread a ``send`` comes up
short, the connection waits (WRITING: its requests are neither read nor parsed) and is closed
if it takes nothing for ``send_timeout``. A keep-alive connection is closed after
``keepalive_requests`` answers. Closes are reported by reason (``on_event``).

The strict RFC 9112 parser and the response encoder are in :mod:`noflylist.transport.framing`;
a refused request is answered with the status it names, and the connection is closed. This
module adds 408 (a request too slow to arrive) and 503 (request buffers over their budget).

Every limit is a field of the :class:`~noflylist.transport.limits.Limits` the loop is made
with (its docstrings say why each has its value); the same value goes to each connection's
framer. Measured against hostile clients by ``bench/bench_hostile.py``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

from noflylist.transport.connection import (
    BUSY,
    LINGERING,
    READING,
    WRITING,
    ClientSockets,
    Connection,
)
from noflylist.transport.framing import RequestError
from noflylist.transport.limits import Limits
from noflylist.transport.workers import Application, WorkerPool, answer

__all__ = ["Application", "ConnectionLoop"]

log = logging.getLogger(__name__)


# -- the loop ------------------------------------------------------------------------------


class ConnectionLoop:
    """Accepts, frames and answers on ``listener`` until :meth:`stop`.

    Quick requests are answered on the loop thread, others by ``workers`` threads.
    ``on_event`` is called on the loop thread with a fixed outcome name (for metrics), one of
    :data:`OUTCOMES`.
    """

    #: Why the loop closed or refused a connection: over ``max_connections``, idle past
    #: ``idle_timeout``, a request not whole within ``request_timeout`` (408), an
    #: answer untaken for ``send_timeout``, ``keepalive_requests`` answered, request
    #: buffers over ``max_buffered_bytes`` (503), a bug while handling it.
    OUTCOMES = (
        "refused_over_limit", "closed_idle", "closed_slow", "closed_not_reading",
        "closed_request_limit", "shed_over_memory", "closed_internal_error",
    )  # fmt: skip

    def __init__(
        self,
        listener: socket.socket,
        app: Application,
        workers: int,
        on_event: Callable[[str], None],
        limits: Limits,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._limits = limits
        self._listener = listener
        self._listener.setblocking(False)
        self._app = app
        self._on_event = on_event
        self._selector = selectors.DefaultSelector()
        self._sockets = ClientSockets(self._selector)
        self._workers: WorkerPool[Connection] = WorkerPool(app, workers)
        self._ready: deque[Connection] = deque()
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._drain_deadline = 0.0
        self._accepting = True
        self._accept_resume = 0.0

    @property
    def open_connections(self) -> int:
        return len(self._sockets)

    def run(self) -> None:
        """Serve until :meth:`stop`; then close everything and join the workers."""
        with self._start_lock:
            if self._started or self._stopping.is_set():
                return
            self._started = True
        self._workers.start()
        try:
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            wake = self._workers.wake_reader
            self._selector.register(wake, selectors.EVENT_READ, wake)
            self._serve()
        finally:
            for connection in self._sockets.all():
                self._sockets.close(connection)
            self._workers.stop(self._drain_deadline)
            self._release()

    def stop(self, drain_timeout: float) -> None:
        """Stop accepting, let requests in progress finish within ``drain_timeout``, close."""
        with self._start_lock:
            self._drain_deadline = time.monotonic() + drain_timeout
            self._stopping.set()
            started = self._started
        if not started:  # run() will return at once; release what it would have
            self._release()
            return
        self._workers.wake()
        self._finished.wait(timeout=drain_timeout + 5.0)

    def _release(self) -> None:
        """Close the listener, the selector and the wake-up sockets; then :meth:`stop` returns."""
        self._close_listener()
        self._selector.close()
        self._workers.close()
        self._finished.set()

    # The loop thread's work.

    def _serve(self) -> None:
        sweep_interval = self._limits.sweep_interval
        next_sweep = time.monotonic() + sweep_interval
        draining = False
        while True:
            timeout = 0.0 if self._ready else max(0.0, next_sweep - time.monotonic())
            # The connections queued in earlier turns; those queued during this one wait for
            # the next, so none is served twice in a turn.
            queued = len(self._ready)
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._accept()
                elif key.data is self._workers.wake_reader:
                    self._workers.drain_wake()
                elif not key.data.closed:  # else it was closed earlier in this batch
                    self._on_event_guarded(key.data)
            self._finish_answered()
            for _ in range(queued):
                connection = self._ready.popleft()
                if not connection.closed and connection.state == READING:
                    self._serve_connection(connection)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + sweep_interval
            if self._stopping.is_set():
                if not draining:
                    draining = True
                    self._begin_drain()
                busy = any(c.state in (BUSY, WRITING) for c in self._sockets.all())
                if not busy or now >= self._drain_deadline:
                    return
            elif not self._accepting and now >= self._accept_resume:
                self._accepting = True
                self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _on_event_guarded(self, connection: Connection) -> None:
        """Handle one ready connection; a bug costs that connection, not the service."""
        try:
            if connection.state == WRITING:
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
            self._on_event("closed_internal_error")
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._sockets.close(connection)

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
                    self._accept_resume = time.monotonic() + self._limits.accept_pause
                return  # other errors (ECONNABORTED) concern one connection only
            if len(self._sockets) >= self._limits.max_connections:
                self._on_event("refused_over_limit")
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._limits.send_buffer_bytes)
            deadline = time.monotonic() + self._limits.idle_timeout
            self._sockets.add(Connection(sock, deadline, self._limits))

    def _on_readable(self, connection: Connection) -> None:
        limits = self._limits
        data = self._sockets.receive(connection, limits.recv_bytes)
        if not data:
            return  # nothing yet, or closed (a partial request is dropped)
        if connection.state == LINGERING:
            if connection.discarded(len(data), limits.linger_bytes):
                self._sockets.close(connection)
            return
        self._sockets.arrived(connection, data, limits.request_timeout)
        over_budget = self._sockets.buffered > limits.max_buffered_bytes
        if over_budget and connection.buffered > limits.max_head_bytes:
            self._on_event("shed_over_memory")
            reason = "the server is short of memory for request bodies; retry shortly"
            self._write(connection, self._app.reject(503, reason), close=True)
            return
        self._serve_connection(connection)

    def _serve_connection(self, connection: Connection) -> None:
        """Answer this turn's share of the whole requests in the buffer, in order: at most
        ``requests_per_turn``, fewer if one goes to a worker or an answer waits for the
        client to read it. Then read on, or wait for the next turn if more is buffered."""
        for _ in range(self._limits.requests_per_turn):
            try:
                request = self._sockets.take_request(connection)
            except RequestError as exc:
                self._write(connection, self._app.reject(exc.status, exc.reason), close=True)
                return
            if request is None:
                if connection.continue_due():
                    self._sockets.send_quietly(connection, b"HTTP/1.1 100 Continue\r\n\r\n")
                self._sockets.watch(connection, selectors.EVENT_READ)
                return
            if connection.answered >= self._limits.keepalive_requests and request.keep_alive:
                self._on_event("closed_request_limit")  # this answer says Connection: close
                request.keep_alive = False
            if self._stopping.is_set():
                request.keep_alive = False
            if not self._app.is_quick(request):
                connection.hand_off()
                self._sockets.watch(connection, 0)
                self._workers.submit(connection, request)
                return
            response = answer(self._app, request)
            if not self._write(connection, response, close=not request.keep_alive):
                return
        self._next_turn(connection)

    def _next_turn(self, connection: Connection) -> None:
        """After an answer: read on if nothing else is buffered, else queue the connection
        for its next turn and read no more until the buffer is worked off (so a pipelining
        client cannot grow it)."""
        if connection.buffered:
            self._sockets.watch(connection, 0)
            self._ready.append(connection)
        else:
            self._sockets.watch(connection, selectors.EVENT_READ)

    def _finish_answered(self) -> None:
        for connection, response, keep_alive in self._workers.answered():
            if not connection.closed and self._write(connection, response, close=not keep_alive):
                self._next_turn(connection)

    def _write(self, connection: Connection, response: bytes, *, close: bool) -> bool:
        """Send a whole response; True if it went out and the connection reads on."""
        connection.respond(close_after=close or self._stopping.is_set())
        sent = self._sockets.send(connection, response, self._limits.send_timeout)
        return sent and self._written(connection)

    def _on_writable(self, connection: Connection) -> None:
        send_timeout = self._limits.send_timeout
        if self._sockets.send_rest(connection, send_timeout) and self._written(connection):
            self._next_turn(connection)

    def _written(self, connection: Connection) -> bool:
        """A response is out: linger and close, or wait for the next request."""
        limits = self._limits
        if connection.written(time.monotonic(), limits.request_timeout, limits.idle_timeout):
            return True
        self._sockets.linger(connection, limits.linger_timeout)
        return False

    def _sweep(self, now: float) -> None:
        """Close connections past their deadline."""
        for connection in self._sockets.all():
            if connection.state == BUSY or now < connection.deadline:
                continue
            if connection.state == READING and connection.pending:
                self._on_event("closed_slow")
                reason = f"the request did not arrive within {self._limits.request_timeout:g} s"
                self._write(connection, self._app.reject(408, reason), close=True)
                continue
            if connection.state == READING:
                self._on_event("closed_idle")
            elif connection.state == WRITING:
                self._on_event("closed_not_reading")
            self._sockets.close(connection)

    def _begin_drain(self) -> None:
        """Stop accepting; close connections without a request at a worker or a response
        being written (a request still arriving is not served: its client may retry)."""
        self._close_listener()
        for connection in self._sockets.all():
            if connection.state in (READING, LINGERING):
                self._sockets.close(connection)

    def _close_listener(self) -> None:
        if self._listener.fileno() < 0:
            return
        if self._accepting and self._started:
            self._selector.unregister(self._listener)
        self._accepting = False
        self._listener.close()
