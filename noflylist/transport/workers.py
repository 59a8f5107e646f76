"""Answering requests: the application's contract, a call into it that never raises, and the
worker threads that answer what is not quick.

The loop thread (:mod:`noflylist.transport.loop`) alone touches client sockets. A request whose
answer is not quick is put on a queue that a few worker threads take from; each answer comes
back on a deque, and the worker wakes the loop by writing one byte to a socket pair whose
reading end the loop's selector watches. A worker never sees a socket, only a
:class:`~noflylist.transport.framing.Request` and an opaque owner (the loop's connection) that it
hands back with the answer.

The queue never holds more entries than there are connections, because the loop hands off
at most one request per connection at a time.
"""

from __future__ import annotations

import collections
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from noflylist.transport.framing import Request

__all__ = ["Application", "WorkerPool", "answer"]

#: The loop's logger: what goes wrong while answering is reported under one name.
log = logging.getLogger("noflylist.transport.loop")

#: Extra seconds a stopping pool waits for each worker past the drain deadline.
JOIN_GRACE = 0.1

_Owner = TypeVar("_Owner")


class Application(Protocol):
    """What answers requests (``noflylist.transport.server``); responses are whole byte strings."""

    def is_quick(self, request: Request) -> bool:
        """True if answering takes fixed microseconds and no I/O: the loop answers it."""
        ...

    def handle(self, request: Request) -> bytes:
        """Answer a complete request (on the loop or a worker thread); must not raise."""
        ...

    def reject(self, status: int, reason: str) -> bytes:
        """Answer a request the parser refused (the connection then closes)."""
        ...


def answer(app: Application, request: Request) -> bytes:
    """Run the application on this thread (the loop or a worker), never raising."""
    try:
        return app.handle(request)
    except Exception as exc:  # the application promises not to raise; be safe anyway
        log.error("request handler raised %s", type(exc).__name__)
        request.keep_alive = False
        return app.reject(500, "internal error")


class WorkerPool(Generic[_Owner]):
    """``workers`` threads that answer, with ``app``, the requests the loop thread hands off.

    Only the loop thread calls :meth:`submit`, :meth:`answered` and :meth:`drain_wake`; any
    thread may call :meth:`wake`.
    """

    def __init__(self, app: Application, workers: int) -> None:
        self._app = app
        self._count = workers
        self._threads: list[threading.Thread] = []
        self._work: queue.SimpleQueue[tuple[_Owner, Request] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[_Owner, bytes, bool]] = collections.deque()
        #: The loop's selector watches this; a byte on it means "answers are waiting".
        self.wake_reader, self._wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)

    def start(self) -> None:
        """Start the worker threads (daemons: one stuck past shutdown does not block exit)."""
        self._threads = [
            threading.Thread(target=self._worker, name=f"http-worker-{n}", daemon=True)
            for n in range(self._count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, owner: _Owner, request: Request) -> None:
        """Queue ``request``; its answer comes back from :meth:`answered` with ``owner``."""
        self._work.put((owner, request))

    def answered(self) -> Iterator[tuple[_Owner, bytes, bool]]:
        """Take each finished ``(owner, response, keep_alive)``, including any that finish
        while the caller works through them."""
        while self._done:
            yield self._done.popleft()

    def stop(self, deadline: float) -> None:
        """Tell every worker to exit after its current job and wait for them until
        ``deadline`` (``time.monotonic()``); a worker stuck past it is a daemon: leave it."""
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + JOIN_GRACE)

    def close(self) -> None:
        """Close the wake-up socket pair (after :meth:`stop`, or if never started)."""
        self.wake_reader.close()
        self._wake_writer.close()

    def wake(self) -> None:
        """Make the loop's selector return."""
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # the buffer is full, so a wake-up is already pending (or we are closed)

    def drain_wake(self) -> None:
        """Discard pending wake-up bytes (on the loop thread, when the selector says so)."""
        try:
            while self.wake_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            owner, request = item
            response = answer(self._app, request)
            self._done.append((owner, response, request.keep_alive))
            # An idle worker waits in get() above: it must not keep the last request and
            # answer (queried names) alive in its locals until the next job comes.
            del item, owner, request, response
            self.wake()
