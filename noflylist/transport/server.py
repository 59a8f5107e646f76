"""The socket façade: the listener, the connection loop and its workers, started and stopped.

:class:`Server` binds, hands every whole request to the routes it is given (an
:class:`~noflylist.transport.workers.Application`: ``is_quick``, ``handle``, ``reject``; in the
service, :class:`noflylist.routes.Routes`), reports the loop's connection counts as metrics
and drains on :meth:`Server.shutdown`. It imports nothing of the routes or the decision.
"""

from __future__ import annotations

import socket

from noflylist.config import DEFAULT_WORKERS, MAX_WORKERS, MIN_WORKERS
from noflylist.metrics import Metrics
from noflylist.transport import loop as connections
from noflylist.transport.loop import ConnectionLoop
from noflylist.transport.workers import Application

__all__ = ["DEFAULT_WORKERS", "DRAIN_TIMEOUT", "Server"]

#: How long ``shutdown`` waits for requests in progress (well under a SIGKILL grace period).
DRAIN_TIMEOUT = 10.0


class Server:
    """The HTTP server. Binds at construction (``port=0`` picks a free port); ``address`` is
    the bound ``(host, port)``; ``routes`` answers every request.

    ``serve_forever`` runs the connection loop on the calling thread; ``shutdown`` (from any
    thread, e.g. on SIGTERM) stops accepting, lets requests in progress finish within
    ``drain_timeout`` seconds, closes the rest and returns when ``serve_forever`` has.
    """

    def __init__(
        self,
        routes: Application,
        metrics: Metrics,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if not MIN_WORKERS <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be {MIN_WORKERS} to {MAX_WORKERS}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server(
            (host, port), family=family, backlog=connections.LISTEN_BACKLOG
        )
        self.address: tuple[str, int] = listener.getsockname()[:2]
        self._loop = ConnectionLoop(listener, routes, workers, self._count_event)
        self._metrics = metrics
        metrics.gauges["noflylist_http_open_connections"] = (
            "Client connections open now.",
            lambda: float(self._loop.open_connections),
        )

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`."""
        self._loop.run()

    def shutdown(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop accepting, finish requests in progress (at most ``drain_timeout`` s), close."""
        self._loop.stop(drain_timeout)

    def _count_event(self, outcome: str) -> None:
        """Connections the loop closed or refused, by why: one of the fixed names in
        :data:`ConnectionLoop.OUTCOMES` (so a metric label never comes from a request)."""
        self._metrics.count("noflylist_http_connections_closed_total", outcome)
