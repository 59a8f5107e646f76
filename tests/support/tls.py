"""A throwaway test CA and a local HTTP(S) echo server that can be told to misbehave.

The CA and the server certificate are made fresh with ``cryptography`` for each use, so no
private key is ever committed. Certificates follow RFC 5280 closely enough for Python 3.13's
``VERIFY_X509_STRICT`` (key identifiers, critical basic constraints, key usage).

The server answers by path:

* ``/hang``: reads the request and never answers (until the server stops).
* ``/huge?bytes=N[&chunked=1]``: answers ``N`` bytes, with Content-Length or chunked.
* ``/short?bytes=N``: declares ``N`` bytes, sends half, closes.
* ``/trickle?bytes=N``: declares ``N`` bytes and sends one every ``TRICKLE_INTERVAL`` s.
* ``/status/NNN``: answers status ``NNN`` with the echo body.
* ``/repeat-header``: echo, plus ``X-Repeated`` sent twice (``one`` then ``two``).
* anything else: 200 with a JSON echo of method, path, headers (in order) and body.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.service_client import free_port

HANG_LIMIT = 20.0  # seconds a /hang request is held at most, so a stuck test cannot stall CI
SOCKET_TIMEOUT = 10.0  # seconds the server waits on any one client read or write
TRICKLE_INTERVAL = 0.05  # seconds between the bytes of a /trickle body
JOIN_TIMEOUT = 5.0  # seconds to wait for the server thread when stopping


@dataclass(frozen=True)
class Pki:
    """PEM files of one test CA and of a server certificate it issued."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(
    directory: Path,
    *,
    ca_name: str = "noflylist throwaway test CA",
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
) -> Pki:
    """Write a new CA and a server certificate for the given names into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else ip_addresses[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(_pem_key(key))
    return pki


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so chunked answers are allowed
    timeout = SOCKET_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures without a line per request."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        size = int(query.get("bytes", "0"))
        if url.path == "/hang":
            self.server.stopping.wait(HANG_LIMIT)
            self.close_connection = True
        elif url.path == "/huge":
            self._send_bytes(size, chunked=query.get("chunked") == "1")
        elif url.path == "/short":
            self._send_head(200, {"Content-Length": str(size)})
            self.wfile.write(b"x" * (size // 2))
            self.close_connection = True
        elif url.path == "/trickle":
            self._send_head(200, {"Content-Length": str(size)})
            for _ in range(size):
                if self.server.stopping.wait(TRICKLE_INTERVAL):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        else:
            status = int(url.path[len("/status/"):]) if url.path.startswith("/status/") else 200
            echo = json.dumps({
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": base64.b64encode(body).decode("ascii"),
            }).encode()
            extra = [("X-Repeated", "one"), ("X-Repeated", "two")]
            self.send_response(status)
            for name, value in extra if url.path == "/repeat-header" else []:
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(echo)))
            self.end_headers()
            self.wfile.write(echo)

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_bytes(self, size: int, *, chunked: bool) -> None:
        block = b"y" * 65536
        self._send_head(200, {"Transfer-Encoding": "chunked"} if chunked
                        else {"Content-Length": str(size)})
        sent = 0
        try:
            while sent < size and not self.server.stopping.is_set():
                part = block[: size - sent]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                sent += len(part)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up, as a client refusing a huge body should
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the TLS handshake in the worker thread, so a stuck client blocks no one else."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(SOCKET_TIMEOUT)
        with self.tls.wrap_socket(request, server_side=True) as tls_socket:
            super().finish_request(tls_socket, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Print nothing: errors such as a client rejecting our certificate are expected."""


@dataclass
class EchoServer:
    """A running server: where it listens."""

    host: str
    port: int
    scheme: str

    def url(self, path: str = "/echo", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"


@contextmanager
def serve(tls: ssl.SSLContext | None = None, *, bind: str = "127.0.0.1",
          host: str = "localhost") -> Iterator[EchoServer]:
    """Run the echo server on a free port of ``bind`` (loopback) until the block ends.

    ``host`` is the name put in :meth:`EchoServer.url`; with TLS it must be in the certificate.
    """
    server = _Server((bind, 0), tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.005},
                              name="echo-server", daemon=True)
    thread.start()
    try:
        yield EchoServer(host, server.server_address[1], "https" if tls else "http")
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(JOIN_TIMEOUT)


def closed_port() -> int:
    """A loopback port that nothing listens on right now (connections to it are refused)."""
    return free_port()
