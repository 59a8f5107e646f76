"""HTTP(S) the way an enclave must do it: through the egress proxy, TLS always verified.

Inside an enclave the only way out is the HTTP proxy named in ``https_proxy``/``http_proxy``
(which proxy, if any, serves a URL is :mod:`enclave.proxy`'s concern). HTTPS goes through a
``CONNECT`` tunnel, so the proxy sees only the host name and encrypted bytes; plain ``http://``
(the instance metadata service) is sent to the proxy in absolute-form.

Design choices a reviewer should know:

* TLS verification cannot be turned off. The CA bundle is the system store, or the PEM file
  named by ``AWS_CA_BUNDLE`` (the same variable the AWS SDKs read) for a private CA.
* Every request opens a new connection and closes it: the service calls KMS and IMDS a handful
  of times at start-up, so pooling would add state without saving anything.
* We open the socket, the ``CONNECT`` tunnel and the TLS layer ourselves and hand the finished
  socket to :mod:`http.client`. That keeps connect and read timeouts separate and lets a
  refused ``CONNECT`` report the proxy's status code instead of a generic ``OSError``.
* Every wait has a timeout and every response is bounded (the body by ``max_response_bytes``
  and ``TRANSFER_DEADLINE``; the head by http.client's own caps of 100 header lines of at most
  64 KiB, each read within ``read_timeout``). All failures are one error type,
  :class:`TransportError`, whose ``transient`` flag tells the caller whether a retry can help.
  Messages name the host (never a body, a query string or proxy credentials) and the fix.
* Host names are resolved by :func:`socket.create_connection`, which no timeout bounds. In an
  enclave the proxy is an IP address and every other name is resolved by the proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from enclave.errors import NoflylistError
from enclave.http_syntax import DEFAULT_PORTS, TOKEN
from enclave.proxy import Proxy, ProxyError, bracket_ipv6, parse_proxy, proxy_setting

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_RESPONSE_BYTES",
    "READ_TIMEOUT",
    "TRANSFER_DEADLINE",
    "Response",
    "TransportError",
    "proxy_for",
    "request",
]

CONNECT_TIMEOUT = 5.0  # seconds to open TCP; the proxy is local to the enclave, slower means broken
READ_TIMEOUT = 30.0  # seconds to wait for any one read; KMS and IMDS answer in well under a second
MAX_RESPONSE_BYTES = 1 << 20  # largest body accepted (1 MiB); KMS and IMDS answers are a few KiB
TRANSFER_DEADLINE = 120.0  # seconds for a whole body, so a peer trickling bytes cannot hold us
_CHUNK_BYTES = 64 * 1024  # body read size: one read is never larger than this
_MAX_PROXY_LINE = 8 * 1024  # longest line accepted in a proxy's answer to CONNECT
_MAX_PROXY_HEADERS = 64  # most header lines accepted in a proxy's answer to CONNECT
_MAX_REASON_CHARS = 80  # a proxy's reason phrase is quoted in errors, cut to this length
_RETRY_HINT = "retry later"  # the fix an error names when its cause suggests none better

# Headers this module writes itself; a caller setting them could desynchronise the framing.
_RESERVED_HEADERS = frozenset({"connection", "proxy-authorization", "transfer-encoding"})
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: (.*))?")


class TransportError(NoflylistError):
    """A request did not produce an HTTP response (or produced one we refuse to read).

    ``transient`` is True when a retry may succeed (connection refused or reset, timeouts, a
    proxy's 5xx) and False when it will not until something is changed (TLS verification
    failure, response too large, bad URL or proxy setting, proxy refused ``CONNECT`` with 4xx).
    """

    transient: bool

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Response:
    """An HTTP response of any status; the caller interprets error statuses (AWS errors).

    ``repr`` leaves out the body: it may be IMDS credentials or a KMS plaintext.
    """

    status: int
    headers: Mapping[str, str]  # names lowercased; repeated headers joined with ", "
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class _Target:
    """The parts of a request URL this module uses."""

    scheme: str
    host: str  # lowercase, without IPv6 brackets
    port: int
    path: str  # origin-form request target: path plus query, never empty

    @property
    def authority(self) -> str:
        """``host:port`` as written in ``CONNECT`` and absolute URLs (IPv6 in brackets)."""
        return f"{bracket_ipv6(self.host)}:{self.port}"

    @property
    def host_header(self) -> str:
        """The ``Host`` header value: the port is left out when it is the scheme's default."""
        if self.port == DEFAULT_PORTS[self.scheme]:
            return bracket_ipv6(self.host)
        return self.authority


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    environ: Mapping[str, str] | None = None,
) -> Response:
    """Send one request on a new connection and return the response, whatever its status.

    Any HTTP status is returned, not raised (callers interpret AWS errors). ``environ``
    defaults to :data:`os.environ`; it is read for proxies and ``AWS_CA_BUNDLE``. Raises
    :class:`TransportError` when no complete, acceptable response arrives.
    """
    env = os.environ if environ is None else environ
    target = _parse_url(url)
    sent_headers = _request_headers(method, target, headers or {}, body)
    proxy = _proxy(target, env)
    context, trust = _tls_context(env) if target.scheme == "https" else (None, "")

    sock = _open(target, proxy, context, trust, connect_timeout, read_timeout)
    conn = http.client.HTTPConnection(target.host, target.port)
    # http.client opens a socket only when ``sock`` is None; ours is already connected,
    # tunnelled and TLS-wrapped as this request needs.
    conn.sock = sock
    try:
        if proxy is not None and target.scheme == "http":
            # RFC 9112 §3.2.2: a request to a proxy uses absolute-form.
            path = f"http://{target.authority}{target.path}"
            if proxy.authorization is not None:
                sent_headers["Proxy-Authorization"] = proxy.authorization
        else:
            path = target.path
        with _translated(f"request to {target.authority} failed"):
            conn.request(method, path, body=body or None, headers=sent_headers)
            response = conn.getresponse()
            return Response(
                status=response.status,
                headers=_merge_headers(response.getheaders()),
                body=_read_body(response, target, max_response_bytes),
            )
    finally:
        conn.close()


#: The variables that name where AWS calls go; checked at start by :func:`check_settings`.
ENDPOINT_VARIABLES = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_KMS_ENDPOINT", "AWS_ENDPOINT_URL_S3",
)  # fmt: skip


def check_settings(environ: Mapping[str, str]) -> None:
    """Refuse, at start, settings that no retry can fix: a malformed endpoint URL or proxy
    variable, or an ``AWS_CA_BUNDLE`` that cannot be loaded.

    Each would otherwise fail every request later, one retried load after another, while the
    cause is a typo that only the operator can mend. The message names the variable.
    """
    for name in ENDPOINT_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                _parse_url(value)
            except TransportError as exc:
                raise TransportError(f"{name}: {exc}", transient=False) from None
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        value = environ.get(variable, "").strip()
        if value:
            try:
                parse_proxy(value, variable)
            except ProxyError as exc:
                raise TransportError(str(exc), transient=False) from None
    if environ.get("AWS_CA_BUNDLE"):
        _tls_context(environ)


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy URL (as configured, possibly with credentials) to use for ``url``, or None.

    The rules (``https_proxy``, ``http_proxy``, ``no_proxy``) are those of
    :func:`enclave.proxy.proxy_setting`; ``url`` is checked as :func:`request` checks it.
    """
    target = _parse_url(url)
    setting = proxy_setting(target.scheme, target.host, target.port, environ)
    return None if setting is None else setting[1]


def _proxy(target: _Target, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy this request goes through, or None; a bad setting is a :class:`TransportError`."""
    setting = proxy_setting(target.scheme, target.host, target.port, environ)
    if setting is None:
        return None
    variable, value = setting
    try:
        return parse_proxy(value, variable)
    except ProxyError as exc:
        # Not transient: the setting must be fixed. The message names the variable only.
        raise TransportError(str(exc), transient=False) from None


def _parse_url(url: str) -> _Target:
    """Check that ``url`` is an absolute http(s) URL this module can send, and split it."""
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        raise TransportError(
            "URL contains spaces, control or non-ASCII characters; percent-encode them "
            "(and give host names in their ASCII form)",
            transient=False,
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TransportError(f"URL cannot be parsed ({exc}); check it", transient=False) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise TransportError(
            f"unsupported URL scheme {scheme!r}: only http:// and https:// URLs can be requested",
            transient=False,
        )
    if parts.username is not None or parts.password is not None:
        raise TransportError(
            "URL carries user:password@; send credentials in a header instead", transient=False
        )
    if not parts.hostname or port == 0:
        raise TransportError("URL has no host or port 0; give scheme://host[:port]/path",
                             transient=False)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], path)


def _request_headers(
    method: str, target: _Target, headers: Mapping[str, str], body: bytes
) -> dict[str, str]:
    """The caller's headers, checked, plus ``Host`` (unless given) and ``Connection: close``."""
    if not TOKEN.fullmatch(method):
        raise TransportError("HTTP method is not a token (RFC 9110 §9.1)", transient=False)
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        # Values may be secrets (Authorization, session tokens): errors show the name only.
        if not TOKEN.fullmatch(name) or lower in seen:
            raise TransportError(f"header name {name!r} is not a token or is repeated",
                                 transient=False)
        if not value.isascii() or any(ch in value for ch in "\r\n\0"):
            raise TransportError(f"header {name} has CR, LF, NUL or non-ASCII characters",
                                 transient=False)
        if lower in _RESERVED_HEADERS or (lower == "content-length"
                                          and value.strip() != str(len(body))):
            raise TransportError(f"header {name} is set by this module itself; do not pass it",
                                 transient=False)
        seen.add(lower)
    sent = {} if "host" in seen else {"Host": target.host_header}
    sent.update(headers)
    sent["Connection"] = "close"  # one request per connection
    return sent


def _tls_context(environ: Mapping[str, str]) -> tuple[ssl.SSLContext, str]:
    """A client context that always verifies chain and host name, and which CAs it trusts."""
    cafile = environ.get("AWS_CA_BUNDLE") or None
    try:
        # With cafile, only that bundle is trusted, as the AWS SDKs do.
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"AWS_CA_BUNDLE={cafile} cannot be loaded ({exc}); point it at a readable PEM "
            f"file of CA certificates, or unset it to use the system CAs",
            transient=False,
        ) from None
    # Already the defaults; restated so a reader sees them without looking them up.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    return context, "the system CAs" if cafile is None else f"AWS_CA_BUNDLE={cafile}"


def _open(
    target: _Target,
    proxy: Proxy | None,
    context: ssl.SSLContext | None,
    trust: str,
    connect_timeout: float,
    read_timeout: float,
) -> socket.socket:
    """A socket ready for the request: connected, tunnelled if proxied https, TLS if https."""
    if proxy is None:
        peer, hint = (target.host, target.port), _RETRY_HINT
        doing = f"cannot connect to {target.authority}"
    else:
        peer = (proxy.host, proxy.port)
        doing = f"cannot connect to proxy {proxy} for {target.authority}"
        hint = f"check {proxy.variable} and that the enclave's egress proxy is running"
    with _translated(doing, hint):
        sock = socket.create_connection(peer, timeout=connect_timeout)
    try:
        sock.settimeout(read_timeout)
        if proxy is not None and context is not None:
            with _translated(f"proxy {proxy} failed opening a tunnel to {target.authority}"):
                _open_tunnel(sock, target, proxy)
        if context is None:
            return sock
        with _translated(f"TLS with {target.authority} (trusting {trust}) failed"):
            return context.wrap_socket(sock, server_hostname=target.host)
    except BaseException:
        sock.close()
        raise


def _open_tunnel(sock: socket.socket, target: _Target, proxy: Proxy) -> None:
    """Ask the proxy for a tunnel to the target; return once it answered 2xx.

    RFC 9110 §9.3.6: ``CONNECT`` takes the authority-form ``host:port``, and any 2xx answer
    means the connection is now a raw tunnel.
    """
    lines = [f"CONNECT {target.authority} HTTP/1.1", f"Host: {target.authority}"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    status, reason = _read_connect_answer(sock, proxy)
    if 200 <= status < 300:
        return
    said = f"{status} {reason}".strip()
    if status == 407:
        raise TransportError(
            f"proxy {proxy} wants credentials for CONNECT to {target.authority} ({said}); "
            f"put user:password@ in {proxy.variable}",
            transient=False,
        )
    if 500 <= status < 600:
        raise TransportError(
            f"proxy {proxy} could not open a tunnel to {target.authority} ({said}); the host "
            f"may be down or unreachable from the parent instance, retry later",
            transient=True,
        )
    raise TransportError(
        f"proxy {proxy} refused CONNECT to {target.authority} ({said}); check "
        f"{proxy.variable} and that {target.host} is on the enclave's egress allow list",
        transient=False,
    )


def _read_connect_answer(sock: socket.socket, proxy: Proxy) -> tuple[int, str]:
    """Read the proxy's status line and header lines (ignored); return status and reason."""
    # Unbuffered, so no byte of the TLS stream that follows the answer is consumed here.
    with sock.makefile("rb", buffering=0) as answer:
        status_line = _read_proxy_line(answer, proxy)
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise TransportError(
                f"proxy {proxy} did not answer CONNECT in HTTP/1.x; check {proxy.variable} "
                f"names an HTTP proxy",
                transient=False,
            )
        for _ in range(_MAX_PROXY_HEADERS):
            if not _read_proxy_line(answer, proxy):
                reason = (match.group(2) or b"").decode("latin-1")[:_MAX_REASON_CHARS]
                # The reason phrase is the proxy's text: keep it printable in our messages.
                return int(match.group(1)), "".join(c if c.isprintable() else "?"
                                                    for c in reason)
    raise TransportError(
        f"proxy {proxy} sent over {_MAX_PROXY_HEADERS} header lines in answer to CONNECT",
        transient=False,
    )


def _read_proxy_line(answer: socket.SocketIO, proxy: Proxy) -> bytes:
    """One CRLF-terminated line of at most ``_MAX_PROXY_LINE`` bytes, without its ending."""
    line: bytes = answer.readline(_MAX_PROXY_LINE + 1)
    if line.endswith(b"\n"):
        return line.rstrip(b"\r\n")
    if len(line) > _MAX_PROXY_LINE:
        raise TransportError(f"proxy {proxy} sent a line over {_MAX_PROXY_LINE} bytes "
                             f"in answer to CONNECT", transient=False)
    raise TransportError(f"proxy {proxy} closed the connection while answering CONNECT; "
                         f"retry later", transient=True)


def _merge_headers(pairs: list[tuple[str, str]]) -> Mapping[str, str]:
    """Lowercase header names; join repeated headers with ", " (RFC 9110 §5.3)."""
    merged: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return MappingProxyType(merged)


def _read_body(response: http.client.HTTPResponse, target: _Target, limit: int) -> bytes:
    """Read the whole body in chunks, refusing it as soon as it is known to exceed ``limit``."""
    too_large = TransportError(
        f"response from {target.authority} is larger than {limit} bytes; raise "
        f"max_response_bytes if an answer this large is expected",
        transient=False,
    )
    # ``length`` is the declared Content-Length still unread (None if chunked or absent).
    if response.length is not None and response.length > limit:
        raise too_large
    deadline = time.monotonic() + TRANSFER_DEADLINE
    chunks: list[bytes] = []
    total = 0
    # read1 returns after a single socket read, so the deadline is checked at least every
    # read_timeout seconds even when the peer sends one byte at a time.
    while chunk := response.read1(_CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise too_large
        if time.monotonic() > deadline:
            raise TransportError(
                f"response from {target.authority} took over {TRANSFER_DEADLINE:.0f} s to "
                f"arrive; retry later",
                transient=True,
            )
        chunks.append(chunk)
    if response.length:  # read1 reports a peer closing early as end of body: catch it here
        raise TransportError(
            f"response from {target.authority} ended {response.length} bytes short of its "
            f"Content-Length; retry",
            transient=True,
        )
    return b"".join(chunks)


def _classify(exc: OSError | http.client.HTTPException) -> tuple[str, bool, str | None]:
    """Cause in words, whether a retry may help, and a specific fix (None: use the default)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"certificate not trusted ({exc.verify_message})",
            False,
            "set AWS_CA_BUNDLE to a PEM file with your CA if you use a private CA, and check "
            "the host name in the URL matches the certificate",
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "peer closed the connection during TLS", True, None
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})", False, "check the URL points at a TLS service"
    if isinstance(exc, TimeoutError):
        return "timed out", True, "retry later, or raise the timeout if the peer is slow"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", True, None
    if isinstance(exc, ConnectionError):  # includes http.client.RemoteDisconnected
        return "connection reset or closed early", True, None
    if isinstance(exc, socket.gaierror):
        return f"host name did not resolve ({exc.strerror})", True, "check the host name"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or type(exc).__name__})", True, None
    if isinstance(exc, http.client.IncompleteRead):
        return "response ended early", True, None
    if isinstance(exc, http.client.LineTooLong):
        return "response header line too long", False, "check the URL points at the right service"
    return (f"malformed HTTP response ({type(exc).__name__})", False,
            "check the URL points at an HTTP service")


@contextlib.contextmanager
def _translated(doing: str, hint: str = _RETRY_HINT) -> Iterator[None]:
    """Turn socket, TLS and http.client errors into :class:`TransportError`.

    The message is ``doing: cause; fix``, where the fix is specific to the cause when there is
    one, else ``hint``.
    """
    try:
        yield
    except (OSError, http.client.HTTPException) as exc:
        cause, transient, specific_hint = _classify(exc)
        raise TransportError(f"{doing}: {cause}; {specific_hint or hint}",
                             transient=transient) from exc
