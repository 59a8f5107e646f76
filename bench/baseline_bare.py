"""A reference point, not a baseline: the least a Python HTTP server can do per request.

A bare ``http.server`` handler answering every GET with a fixed text, HTTP/1.1 keep-alive,
Nagle off (so no delayed-ACK stall), nothing else. Whatever noflylist does beyond this
(parsing, validation, normalisation, the table, metrics, the access log) is what its
features cost. Run: ``python3 bench/baseline_bare.py --port 8103``.
"""

from __future__ import annotations

import argparse
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"x is cleared to fly. Enjoy your flight!\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        if self.close_connection:  # the client asked for Connection: close
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: The standard library's default backlog is 5: a burst of new connections then waits
    #: for SYN retries (1 s and more), which would measure the backlog, not the handler.
    request_queue_size = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8103)
    args = parser.parse_args()
    _Server(("127.0.0.1", args.port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
