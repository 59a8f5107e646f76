"""Every limit of the HTTP transport, in one frozen value that is passed in.

:class:`~noflylist.transport.server.Server` takes a :class:`Limits` (default
:data:`DEFAULT_LIMITS`) and hands it to the loop, each connection and each connection's
framer: no limit is a module global that code reads, or a test patches, behind the reader's
back. A test that needs a short timeout passes
``dataclasses.replace(DEFAULT_LIMITS, request_timeout=1.0)``. Each field says why it has
its value; the framing limits decide which status a client gets (414, 431, 413), the others
what a slow, idle or hostile client can hold (measured by ``bench/bench_hostile.py``).

The limits of what a route accepts (names in a manifest, query parameters) are the routes'
own, in :mod:`noflylist.routes`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The transport's sizes, counts and timeouts (seconds); checked when made."""

    # -- the request framer (RFC 9112) -------------------------------------------------------
    #: Longest request line (method, target, version): room for a 256-character name encoded
    #: as 4-byte UTF-8 percent escapes (3 KiB), far from the 100 KB floods that probe servers.
    max_request_line: int = 8 * 1024
    #: Most header fields in one request: real clients send about ten.
    max_headers: int = 64
    #: Largest request head (request line and fields), so one connection's buffer stays small.
    max_head_bytes: int = 64 * 1024
    #: Largest request body: a 1000-name manifest is well under 100 KiB of JSON.
    max_body_bytes: int = 256 * 1024
    #: Longest method token: real methods are at most 7 letters; more means "not HTTP".
    max_method: int = 16

    # -- one connection -----------------------------------------------------------------------
    #: A request must arrive whole within this many seconds of its first byte (slowloris).
    request_timeout: float = 10.0
    #: A keep-alive connection with no request in progress is closed after this many seconds.
    idle_timeout: float = 15.0
    #: A connection whose answer waits this many seconds with no byte of it taken by the
    #: client is closed (nginx's ``send_timeout``: the time between two sends, not for the
    #: whole answer, so a slow reader of a large answer is not cut off while one that stopped
    #: reading is).
    send_timeout: float = 10.0
    #: Kernel send buffer of each connection (``SO_SNDBUF``; Linux reserves twice this): the
    #: bound on answers queued for a client that does not read them. Without it the kernel
    #: grows the buffer to 4 MiB, which a pipelining client that never reads fills with 16,000
    #: answers (measured: 0.9 MiB a connection after 10 s of flood, ``send`` never short, so
    #: nothing stopped or closed it). 64 KiB holds the largest answers in one or two sends.
    send_buffer_bytes: int = 64 * 1024
    #: Requests answered on one keep-alive connection before it is closed (nginx's default
    #: ``keepalive_requests``): no client holds one connection, its buffers and its turn
    #: forever; a real client reconnects in one round trip every thousand answers.
    keepalive_requests: int = 1000
    #: After an error response the connection is half-closed and unread input discarded for
    #: this long, so the client reads the error instead of a reset (RFC 9112 section 9.6).
    linger_timeout: float = 2.0
    #: At most this much unread input is discarded while lingering.
    linger_bytes: int = 1024 * 1024

    # -- all connections ----------------------------------------------------------------------
    #: Open connections beyond this are closed as soon as they are accepted (fd exhaustion).
    max_connections: int = 4096
    #: Request bytes buffered across all connections. Past this, a connection holding more
    #: than a head's worth gets 503 and is closed: uploads are shed first, GETs keep working,
    #: and memory stays bounded (4096 connections x 384 KiB each would otherwise be 1.5 GiB).
    max_buffered_bytes: int = 64 * 1024 * 1024
    #: Listen backlog: bursts of new connections wait in the kernel, not in Python.
    listen_backlog: int = 1024
    #: Bytes read per ``recv``: a whole head or a large body slice in one system call.
    recv_bytes: int = 64 * 1024
    #: Requests of one connection answered in a turn of the loop before every other
    #: connection with work gets its turn: one, so a turn with 50 pipelining clients is 50
    #: answers (about 2 ms), not the 800 to 1,600 (20 to 90 ms) that 16 in a row gave, which
    #: a new client's request waited behind (measured by ``bench/bench_hostile.py``).
    requests_per_turn: int = 1
    #: How often deadlines are checked; a deadline may be overrun by at most this much.
    sweep_interval: float = 0.1
    #: After ``accept`` fails for lack of file descriptors, stop accepting this long.
    accept_pause: float = 0.5
    #: How long ``shutdown`` waits for requests in progress (well under a SIGKILL grace
    #: period).
    drain_timeout: float = 10.0

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int":
                if type(value) is not int or value < 1:
                    raise ValueError(f"Limits.{spec.name} must be a whole number of at least 1, "
                                     f"not {value!r}")  # fmt: skip
            elif (type(value) not in (int, float) or not math.isfinite(value)
                  or value <= 0):  # fmt: skip
                raise ValueError(f"Limits.{spec.name} must be a finite number of seconds "
                                 f"above 0, not {value!r}")  # fmt: skip
        if self.max_method >= self.max_request_line:
            raise ValueError("Limits.max_method must be less than Limits.max_request_line "
                             "(the method is part of the request line)")  # fmt: skip
        if self.max_request_line > self.max_head_bytes:
            raise ValueError("Limits.max_request_line must be at most Limits.max_head_bytes "
                             "(the request line is part of the head)")  # fmt: skip


#: The limits the service runs with.
DEFAULT_LIMITS = Limits()
