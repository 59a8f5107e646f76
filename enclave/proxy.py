"""Which forward proxy a request goes through: ``https_proxy``, ``http_proxy`` and ``no_proxy``.

Inside an enclave the only way out is the HTTP proxy that the runtime (Enclaver) names in
``https_proxy``/``http_proxy``; ``no_proxy`` lists hosts reached directly (Enclaver sets
``localhost,127.0.0.1``). This module only reads those settings; speaking to the proxy
(``CONNECT``, absolute-form requests) is :mod:`enclave.http_client`'s job.

A proxy URL may carry ``user:password@``; it becomes a ready ``Proxy-Authorization`` value and
is never shown: :class:`Proxy` prints as ``host:port (from variable)``, and errors name the
variable, never its value.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from enclave.errors import NoflylistError

__all__ = ["Proxy", "ProxyError", "bracket_ipv6", "parse_proxy", "proxy_setting"]

_DEFAULT_PROXY_PORT = 80  # a proxy URL is http:// (checked), so no port means HTTP's default
_PORT = re.compile(r"[0-9]{1,5}")  # a port in a no_proxy entry; larger numbers match no target


class ProxyError(NoflylistError):
    """A proxy setting in the environment cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Proxy:
    """A forward proxy from ``https_proxy``/``http_proxy``; ``str()`` and ``repr()`` never show
    credentials."""

    variable: str  # the environment variable it came from, for error messages
    host: str
    port: int
    authorization: str | None = field(repr=False)  # a ready ``Proxy-Authorization`` value

    def __str__(self) -> str:
        return f"{bracket_ipv6(self.host)}:{self.port} (from {self.variable})"


def bracket_ipv6(host: str) -> str:
    """``host`` as written before ``:port`` in URLs and ``CONNECT``: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def proxy_setting(
    scheme: str, host: str, port: int, environ: Mapping[str, str]
) -> tuple[str, str] | None:
    """The variable and proxy URL (as configured) for a ``scheme://host:port`` URL, or None.

    ``https_proxy`` serves https:// URLs and ``http_proxy`` serves http:// URLs; each is read
    in lower case first, then upper case, and an empty value counts as unset. ``no_proxy``
    (either case) is a comma list of: ``*`` (no proxy at all); a domain, with or without a
    leading ``.`` or ``*.``, matching itself and its subdomains; an IPv4 or IPv6 address
    (brackets optional) or CIDR range; any of these followed by ``:port`` to match that port
    only. ``host`` is lowercase, without IPv6 brackets.
    """
    found = _getenv(environ, f"{scheme}_proxy")
    no_proxy = _getenv(environ, "no_proxy")
    if found is None or (no_proxy is not None and _bypassed(host, port, no_proxy[1])):
        return None
    return found


def parse_proxy(value: str, variable: str) -> Proxy:
    """Parse a proxy setting such as ``http://user:pass@127.0.0.1:9000`` or ``host:port``."""
    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        port = parts.port
    except ValueError:
        # from None: the ValueError may quote the value, credentials included.
        raise ProxyError(
            f"{variable} cannot be parsed; give http://[user:password@]host:port"
        ) from None
    if parts.scheme.lower() != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ProxyError(
            f"{variable} must be http://[user:password@]host:port (the proxy is spoken to in "
            f"plain HTTP; https://, socks and paths are not supported)"
        )
    authorization = None
    if parts.username is not None:
        # RFC 7617 §2: Basic credentials are base64("user:password"); URLs percent-encode them.
        userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")
    return Proxy(variable, parts.hostname, port or _DEFAULT_PROXY_PORT, authorization)


def _getenv(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) for ``name`` in lower case, else upper case; empty means unset."""
    for key in (name, name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether an entry of ``no_proxy`` matches the host (and port, if the entry names one)."""
    host = host.rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        entry_host, entry_port = _split_no_proxy_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if entry_host and _host_matches(host, entry_host):
            return True
    return False


def _split_no_proxy_entry(entry: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or bare ``v6``; "" if malformed."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket:
            return "", None
        if not rest:
            return host, None
        colon, port = rest[:1], rest[1:]
    elif entry.count(":") == 1:
        host, colon, port = entry.partition(":")
    else:
        return entry, None  # a name, an IPv4 address, a bare IPv6 address or a CIDR range
    return (host, int(port)) if colon == ":" and _PORT.fullmatch(port) else ("", None)


def _host_matches(host: str, entry: str) -> bool:
    """Whether one ``no_proxy`` host entry (lowercase, port removed) covers ``host``."""
    address = _ip(host)
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
        return address is not None and address in network
    entry_address = _ip(entry)
    if address is not None or entry_address is not None:
        return address == entry_address  # addresses match addresses only, exactly
    domain = entry.removeprefix("*").strip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address, or None if it is not one."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
