"""A relay between a client and one or more services: what the host of an enclave can do.

The host relays every byte of the enclave's traffic, so it can change any of them. This
relay (a test stand-in, ``http.server`` on loopback) forwards each request to a service and
can, by ``mode``:

* ``honest``: forward both ways unchanged;
* ``body``, ``statement``, ``signature``: flip one byte (at ``position``) of the answer's
  body, or of the decoded statement or signature header, of screening answers;
* ``rewrite``: turn "CAN NOT BOARD!" into "cleared to fly" in the body;
* ``other-name``: ask the service itself about ``other_name`` with the client's nonce, and
  answer with that genuine signed answer;
* ``replay``: answer every screening request with the first signed answer it saw;
* ``other-service``: send attestation requests to the first service and screening requests
  to the second (its own key);
* round robin: with several services and ``honest``, each request goes to the next one.

Modes that tamper with the client's request instead (the client signed it: RFC 9421, so the
service should refuse each as the signature or digest check it defeats):

* ``other-name`` (above) rewrites the query of a signed ``GET`` too;
* ``request-body``: send ``other_body`` in place of a ``POST``'s body, every header as the
  client sent it (its ``Content-Digest`` now names other bytes);
* ``request-body-redigest``: the same, with a ``Content-Digest`` of ``other_body`` put in
  place of the client's (the signature covers ``content-digest``);
* ``request-replay``: keep the first signed screening request (method, target, headers,
  body) in ``captured`` and send that copy in place of every later screening request.

These three touch only the screening routes' requests (attestation, ``/metrics`` and
``/readyz`` pass unchanged).
"""

from __future__ import annotations

import base64
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

from noflylist.answer_format import NONCE_HEADER, SIGNATURE_HEADER, STATEMENT_HEADER
from noflylist.httpsig import content_digest
from noflylist.wire import ATTESTATION_PATH, PASSENGER_PATH, SCREEN_PATH

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date",
               "server"}  # fmt: skip


class Relay:
    def __init__(self, upstreams: list[tuple[str, int]], mode: str = "honest", *,
                 position: int = 0, other_name: str = "Elmo",
                 other_body: bytes = b'{"names": ["Elmo"]}') -> None:  # fmt: skip
        self.upstreams = upstreams
        self.mode = mode
        self.position = position
        self.other_name = other_name
        self.other_body = other_body
        self.recorded: tuple[int, list[tuple[str, str]], bytes] | None = None
        #: ``request-replay``: the first signed screening request seen.
        self.captured: tuple[str, str, dict[str, str], bytes] | None = None
        self._turn = 0
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                relay._serve(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                relay._serve(self, self.rfile.read(length))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A 5 ms poll: stop() waits up to one, and most relay tests stop one.
        serve = self._httpd.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.005,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _upstream(self, path: str) -> tuple[str, int]:
        if self.mode == "other-service":
            return self.upstreams[0 if path.startswith(ATTESTATION_PATH) else 1]
        with self._lock:
            chosen = self.upstreams[self._turn % len(self.upstreams)]
            self._turn += 1
        return chosen

    def _serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = handler.path
        screening = not urlsplit(target).path.startswith(ATTESTATION_PATH)
        method = handler.command
        asks = urlsplit(target).path in (PASSENGER_PATH, SCREEN_PATH)  # the request modes' routes
        if screening and self.mode == "other-name" and "name=" in target:
            target = target.split("?")[0] + "?name=" + quote(self.other_name, safe="")
        if asks and method == "POST" and self.mode.startswith("request-body"):
            body = self.other_body
            if self.mode == "request-body-redigest":
                headers = {k: v for k, v in headers.items() if k.lower() != "content-digest"}
                headers["Content-Digest"] = content_digest(body)
        if asks and self.mode == "request-replay":
            with self._lock:
                if self.captured is None and any(k.lower() == "signature-input" for k in headers):
                    self.captured = (method, target, dict(headers), body)
                elif self.captured is not None:
                    method, target, headers, body = self.captured
        status, answer_headers, answer = _forward(self._upstream(target), method,
                                                  target, headers, body)  # fmt: skip
        signed = any(k.lower() == STATEMENT_HEADER.lower() for k, _ in answer_headers)
        if screening and signed:
            if self.mode == "replay":
                if self.recorded is None:
                    self.recorded = (status, answer_headers, answer)
                status, answer_headers, answer = self.recorded
            elif self.mode == "body":
                answer = _flip(answer, self.position)
            elif self.mode == "rewrite":
                answer = answer.replace(b"is on the no-fly list and CAN NOT BOARD!",
                                        b"is cleared to fly. Enjoy your flight!")  # fmt: skip
            elif self.mode in ("statement", "signature"):
                name = STATEMENT_HEADER if self.mode == "statement" else SIGNATURE_HEADER
                answer_headers = [
                    (k, _flip_base64(v, self.position) if k.lower() == name.lower() else v)
                    for k, v in answer_headers
                ]
        handler.send_response(status)
        for key, value in answer_headers:
            if key.lower() not in _HOP_BY_HOP:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)


def _forward(upstream: tuple[str, int], method: str, target: str, headers: dict[str, str],
             body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:  # fmt: skip
    connection = http.client.HTTPConnection(*upstream, timeout=10)
    try:
        connection.request(method, target, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def _flip(data: bytes, position: int) -> bytes:
    """Change one byte; a digit stays a digit and a-f stays a-f (the next one, cyclically).

    So a changed key id, digest or serial still parses and the refusal tested is the
    signature's or the key's, every run: a plain XOR with 1 turned a random key id's ``a`` or
    ``f`` into a non-hex byte one run in eight, and the statement's parser refused it first.
    """
    changed = bytearray(data)
    index = position % len(changed)
    byte = changed[index]
    if 0x30 <= byte <= 0x39:
        changed[index] = 0x30 + (byte - 0x30 + 1) % 10
    elif 0x61 <= byte <= 0x66:
        changed[index] = 0x61 + (byte - 0x61 + 1) % 6
    else:
        changed[index] = byte ^ 0x01
    return bytes(changed)


def _flip_base64(value: str, position: int) -> str:
    return base64.b64encode(_flip(base64.b64decode(value), position)).decode("ascii")


__all__ = ["NONCE_HEADER", "Relay"]
