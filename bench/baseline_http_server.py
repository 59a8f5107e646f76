"""The standard library's ``http.server`` as its documentation suggests using it.

A comparison point for ``bench/why_not_http_server.py``, not something to deploy. One
``BaseHTTPRequestHandler`` answering ``GET /enclave/passenger?name=NAME`` with the demo's
text (any other GET path: 200 ``ok``, so the harness can poll it), and ``POST`` reading
``Content-Length`` bytes as a handler usually does. HTTP/1.1 keep-alive, the default error
pages and the default access log (``log_message``, to stderr). Three shapes, by flag:

* no flags: ``ThreadingHTTPServer``, a thread per connection;
* ``--pool N``: a bounded pool, ``process_request`` submitting to a
  ``concurrent.futures.ThreadPoolExecutor(N)`` (what one writes to cap the threads);
* ``--timeout S``: the handler's ``timeout`` attribute, its documented knob (a socket
  timeout per operation, not per request).

Run: ``python3 bench/baseline_http_server.py --port 8104 [--pool 8] [--timeout 10]``.
"""

from __future__ import annotations

import argparse
import socket
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

#: The standard library's default backlog is 5: a burst of 1,000 connections would then
#: measure SYN retries (1 s and more), not the server. noflylist listens with 1024 too.
BACKLOG = 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer()

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/enclave/passenger":
            name = parse_qs(parts.query).get("name", [""])[0]
            body = f"{name} is cleared to fly. Enjoy your flight!\n".encode()
        else:
            body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:  # the client asked for Connection: close
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG


class _PoolServer(HTTPServer):
    """``ThreadingMixIn`` with a bounded pool: the same per-connection work, at most
    ``workers`` connections at a time; the others wait in the executor's queue."""

    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], workers: int) -> None:
        super().__init__(address, _Handler)
        self._pool = ThreadPoolExecutor(workers)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self._pool.submit(self._process, request, client_address)

    def _process(self, request: socket.socket, client_address: object) -> None:
        # ThreadingMixIn.process_request_thread, on a pool thread.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8104)
    parser.add_argument("--pool", type=int, default=0, help="bounded pool of N threads")
    parser.add_argument("--timeout", type=float, default=None, help="handler timeout, s")
    args = parser.parse_args()
    _Handler.timeout = args.timeout
    address = ("127.0.0.1", args.port)
    server: HTTPServer
    if args.pool:
        server = _PoolServer(address, args.pool)
    else:
        server = _ThreadingServer(address, _Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
