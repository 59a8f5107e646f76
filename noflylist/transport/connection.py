"""The client sockets of the connection loop: each one's state, and the mechanics of I/O.

Mechanism only: no limit is chosen here. The loop (:mod:`noflylist.transport.loop`) decides
who is accepted, how long a write or a linger may take and when a deadline has passed;
:class:`ClientSockets` does the bookkeeping that must stay right however a connection ends:
which sockets the selector watches and for what, and how many request bytes are buffered
across all connections. Only the loop thread calls into this module.
"""

from __future__ import annotations

import selectors
import socket
import time

from noflylist.transport.framing import Request, RequestFramer
from noflylist.transport.limits import Limits

__all__ = ["BUSY", "LINGERING", "READING", "WRITING", "ClientSockets", "Connection"]

#: A connection's states. READING: waiting for (the rest of) a request. BUSY: a worker
#: answers its request; the socket is not watched. WRITING: a response waits for the client
#: to read it. LINGERING: half-closed after its last response, unread input is discarded.
READING, BUSY, WRITING, LINGERING = "reading", "busy", "writing", "lingering"


class Connection(RequestFramer):
    """One client socket and what has arrived on it; only the loop thread touches it."""

    __slots__ = (
        "answered",
        "close_after",
        "closed",
        "continue_sent",
        "deadline",
        "events",
        "lingered",
        "out",
        "pending",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, deadline: float, limits: Limits) -> None:
        super().__init__(limits)
        self.sock = sock
        self.continue_sent = False  # "100 Continue" was sent for the current head
        self.state = READING
        self.deadline = deadline  # time.monotonic() past which the loop gives up on it
        self.events = 0  # the selector events watched for (0: not registered)
        self.out = memoryview(b"")  # the unsent rest of a response, while WRITING
        self.close_after = False  # linger and close once the response is out
        self.lingered = 0  # bytes discarded while LINGERING
        self.closed = False
        self.pending = False  # bytes of the next request have arrived: its deadline runs
        self.answered = 0  # requests framed on this connection so far

    def take_request(self, now: float) -> Request | None:
        """Frame the next whole request from the buffer; ``None`` until it has all arrived."""
        request = super().take_request(now)
        if request is not None:
            self.continue_sent = False
            self.pending = bool(self.buffer)
        return request


class ClientSockets:
    """The open connections, their registrations with ``selector``, their buffered bytes."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._open: dict[int, Connection] = {}
        #: Request bytes in all connections' buffers: the loop adds what it reads and
        #: subtracts what it frames; closing and lingering give back the rest.
        self.buffered = 0

    def __len__(self) -> int:
        return len(self._open)

    def all(self) -> list[Connection]:
        """A snapshot, so the caller may close connections while going through it."""
        return list(self._open.values())

    def add(self, connection: Connection) -> None:
        """Keep a newly accepted connection and watch it for input."""
        self._open[connection.sock.fileno()] = connection
        self.watch(connection, selectors.EVENT_READ)

    def watch(self, connection: Connection, events: int) -> None:
        """Watch ``connection`` for ``events`` only (0: not at all)."""
        if connection.events == events:
            return
        if events == 0:
            self._selector.unregister(connection.sock)
        elif connection.events == 0:
            self._selector.register(connection.sock, events, connection)
        else:
            self._selector.modify(connection.sock, events, connection)
        connection.events = events

    def receive(self, connection: Connection, size: int) -> bytes:
        """Up to ``size`` bytes that have arrived; ``b""`` if none yet or if the connection is
        closed (by the client, or here after an error)."""
        try:
            data = connection.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            self.close(connection)
            return b""
        if not data:
            self.close(connection)
        return data

    def send(self, connection: Connection, response: bytes, timeout: float) -> bool:
        """Send a whole response; True if it all went out at once. Else the rest waits for
        the client to read: the connection is WRITING, watched for room to send only, and
        its deadline is ``timeout`` seconds away."""
        try:
            sent = connection.sock.send(response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(connection)
            return False
        if sent < len(response):
            connection.out = memoryview(response)[sent:]
            connection.state = WRITING
            connection.deadline = time.monotonic() + timeout
            self.watch(connection, selectors.EVENT_WRITE)
            return False
        return True

    def send_rest(self, connection: Connection, timeout: float) -> bool:
        """Send more of a response the client was slow to read; True once it is all out.
        Bytes taken move the deadline ``timeout`` seconds on: it bounds the time between
        two sends that make progress, not the whole response."""
        try:
            sent = connection.sock.send(connection.out)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.close(connection)
            return False
        connection.out = connection.out[sent:]
        if sent:
            connection.deadline = time.monotonic() + timeout
        return not connection.out

    def send_quietly(self, connection: Connection, data: bytes) -> None:
        """Best-effort small write (``100 Continue``); the client also proceeds without it."""
        try:
            connection.sock.send(data)
        except OSError:
            pass

    def linger(self, connection: Connection, timeout: float) -> None:
        """Half-close and discard input for ``timeout`` seconds, so the client reads our last
        answer instead of a reset (RFC 9112 section 9.6)."""
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(connection)
            return
        connection.state = LINGERING
        self.buffered -= len(connection.buffer)
        connection.buffer.clear()
        connection.deadline = time.monotonic() + timeout
        self.watch(connection, selectors.EVENT_READ)

    def close(self, connection: Connection) -> None:
        """Close and forget ``connection``; closing it again does nothing."""
        if connection.closed:
            return
        connection.closed = True
        self.buffered -= len(connection.buffer)
        connection.buffer.clear()
        if connection.events:
            self._selector.unregister(connection.sock)
            connection.events = 0
        self._open.pop(connection.sock.fileno(), None)
        connection.sock.close()
