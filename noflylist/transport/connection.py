"""The client sockets of the connection loop: each one's state, and the mechanics of I/O.

Mechanism only: no limit is chosen here. The loop (:mod:`noflylist.transport.loop`) decides
who is accepted, how long a write or a linger may take and when a deadline has passed, and
commands the change. :class:`Connection` is one connection's state machine (READING, BUSY,
WRITING, LINGERING, closed; its deadline, its framer and buffer, its answer in progress):
every change of that state is one of its methods, so this file is the one to read to know
what a connection can go through. :class:`ClientSockets` does the bookkeeping that must
stay right however a connection ends: which sockets the selector watches and for what, and
how many request bytes are buffered across all connections. Only the loop thread calls into
this module.
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


class Connection:
    """One client socket, its framer and where it stands; only the loop thread touches it.

    This class owns a connection's state: every change to it is one of the methods below,
    which the loop (:mod:`noflylist.transport.loop`) and :class:`ClientSockets` call; they
    read its fields but never assign them.
    """

    __slots__ = (
        "answered",
        "close_after",
        "closed",
        "continue_sent",
        "deadline",
        "events",
        "framer",
        "lingered",
        "out",
        "pending",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, deadline: float, limits: Limits) -> None:
        self.sock = sock
        self.framer = RequestFramer(limits)  # the bytes that have arrived, framed into requests
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

    @property
    def buffered(self) -> int:
        """Request bytes that have arrived and are not yet framed."""
        return len(self.framer.buffer)

    # While READING.

    def arrived(self, data: bytes, now: float, request_timeout: float) -> None:
        """Keep bytes a client sent; the first of a request starts its deadline."""
        if not self.pending:
            self.pending = True
            self.deadline = now + request_timeout
        self.framer.buffer += data

    def take_request(self, now: float) -> Request | None:
        """Frame the next whole request from the buffer; ``None`` until it has all arrived.
        Raises only :class:`~noflylist.transport.framing.RequestError` (the framer's one
        boundary)."""
        request = self.framer.take_request(now)
        if request is not None:
            self.continue_sent = False
            self.pending = bool(self.framer.buffer)
            self.answered += 1
        return request

    def continue_due(self) -> bool:
        """True once for a head that asked for ``100 Continue`` while its body is awaited:
        the caller sends it now."""
        head = self.framer.head
        if head is None or not head.expect_continue or self.continue_sent:
            return False
        self.continue_sent = True
        return True

    def hand_off(self) -> None:
        """A worker answers the request just taken: BUSY until its response is written."""
        self.state = BUSY

    # Writing a response.

    def respond(self, *, close_after: bool) -> None:
        """A response is about to be sent; ``close_after``: linger and close once it is out."""
        self.close_after = close_after

    def wait_to_send(self, rest: memoryview, deadline: float) -> None:
        """The client has not taken all of a response: WRITING until ``rest`` is out."""
        self.out = rest
        self.state = WRITING
        self.deadline = deadline

    def sent(self, count: int, deadline: float) -> bool:
        """``count`` more bytes of the rest went out; any progress moves the deadline to
        ``deadline``. True once the rest is all out."""
        self.out = self.out[count:]
        if count:
            self.deadline = deadline
        return not self.out

    def written(self, now: float, request_timeout: float, idle_timeout: float) -> bool:
        """A response is out. True if the connection reads on (READING again, with the
        deadline of a request already arriving, else of an idle one); False if it must now
        linger and close."""
        self.out = memoryview(b"")
        if self.close_after:
            return False
        self.state = READING
        self.deadline = now + (request_timeout if self.pending else idle_timeout)
        return True

    def watched(self, events: int) -> None:
        """The selector now watches the socket for ``events`` (0: not at all)."""
        self.events = events

    # Ending.

    def linger(self, deadline: float) -> int:
        """LINGERING until ``deadline``: input is discarded from now on. Returns the request
        bytes dropped from the buffer."""
        self.state = LINGERING
        self.deadline = deadline
        return self._drop_input()

    def discarded(self, count: int, limit: int) -> bool:
        """``count`` more bytes arrived while LINGERING; True once more than ``limit`` have."""
        self.lingered += count
        return self.lingered > limit

    def mark_closed(self) -> int:
        """Closed: nothing more happens on it. Returns the request bytes dropped."""
        self.closed = True
        return self._drop_input()

    def _drop_input(self) -> int:
        dropped = len(self.framer.buffer)
        self.framer.buffer.clear()
        return dropped


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
        connection.watched(events)

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

    def arrived(self, connection: Connection, data: bytes, request_timeout: float) -> None:
        """Keep ``data`` in ``connection``'s buffer, and count it in :attr:`buffered`."""
        connection.arrived(data, time.monotonic(), request_timeout)
        self.buffered += len(data)

    def take_request(self, connection: Connection) -> Request | None:
        """Frame ``connection``'s next whole request (see :meth:`Connection.take_request`);
        the bytes it framed, or that a refusal consumed, leave :attr:`buffered`."""
        before = connection.buffered
        try:
            return connection.take_request(time.monotonic())
        finally:
            self.buffered -= before - connection.buffered

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
            connection.wait_to_send(memoryview(response)[sent:], time.monotonic() + timeout)
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
        return connection.sent(sent, time.monotonic() + timeout)

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
        self.buffered -= connection.linger(time.monotonic() + timeout)
        self.watch(connection, selectors.EVENT_READ)

    def close(self, connection: Connection) -> None:
        """Close and forget ``connection``; closing it again does nothing."""
        if connection.closed:
            return
        self.buffered -= connection.mark_closed()
        if connection.events:
            self._selector.unregister(connection.sock)
            connection.watched(0)
        self._open.pop(connection.sock.fileno(), None)
        connection.sock.close()
