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
from noflylist.transport.limits import DEFAULT_LIMITS, Limits
from noflylist.transport.loop import ConnectionLoop
from noflylist.transport.workers import Application

__all__ = ["DEFAULT_WORKERS", "Server"]


class Server:
    """The HTTP server. Binds at construction (``port=0`` picks a free port); ``address`` is
    the bound ``(host, port)``; ``routes`` answers every request; ``limits`` bound every
    connection (:mod:`noflylist.transport.limits`).

    ``serve_forever`` runs the connection loop on the calling thread; ``shutdown`` (from any
    thread, e.g. on SIGTERM) stops accepting, lets requests in progress finish within
    ``drain_timeout`` seconds (``limits.drain_timeout`` unless given), closes the rest and
    returns when ``serve_forever`` has.
    """

    def __init__(
        self,
        routes: Application,
        metrics: Metrics,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        workers: int = DEFAULT_WORKERS,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if not MIN_WORKERS <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be {MIN_WORKERS} to {MAX_WORKERS}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server(
            (host, port), family=family, backlog=limits.listen_backlog
        )
        self.address: tuple[str, int] = listener.getsockname()[:2]
        self._limits = limits
        self._loop = ConnectionLoop(listener, routes, workers, self._count_event, limits)
        self._metrics = metrics
        metrics.gauges["noflylist_http_open_connections"] = (
            "Client connections open now.",
            lambda: float(self._loop.open_connections),
        )

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`."""
        self._loop.run()

    def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, finish requests in progress (at most ``drain_timeout`` s, by default
        ``limits.drain_timeout``), close."""
        self._loop.stop(self._limits.drain_timeout if drain_timeout is None else drain_timeout)

    def _count_event(self, outcome: str) -> None:
        """Connections the loop closed or refused, by why: one of the fixed names in
        :data:`ConnectionLoop.OUTCOMES` (so a metric label never comes from a request)."""
        self._metrics.count("noflylist_http_connections_closed_total", outcome)
