"""AWS Signature Version 4 (header form), written out as the spec's steps.

The enclave talks to KMS, S3 and STS without an SDK, so it signs its own requests. The steps
follow the AWS IAM User Guide, "Create a signed AWS API request" (the SigV4 reference):

* Step 1, canonical request:      :func:`_canonical_request` (and the helpers it names)
* Step 2 and 3, string to sign:   :func:`_string_to_sign`
* Step 4, signing key, signature: :func:`_derive_signing_key`, :func:`_signature`
* Step 5, add to the request:     :func:`_authorization`

Inputs are checked before anything is signed. A request this module cannot sign so that AWS
computes the same canonical form (a CR or LF in a header value, a ``+`` in the query, a URL with
a fragment or user info, an S3 path that is not already percent-encoded) raises
:class:`SigV4Error` instead of being signed on a guess.

Only ``hashlib``, ``hmac`` and ``urllib.parse.urlsplit`` from the standard library are used.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from enclave.errors import NoflylistError
from enclave.http_syntax import DEFAULT_PORTS, TOKEN, VISIBLE_ASCII

__all__ = ["Credentials", "SigV4Error", "sign"]

_ALGORITHM = "AWS4-HMAC-SHA256"
_TERMINATOR = "aws4_request"
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

#: Derived signing keys kept; a handful of (day, region, service, secret) scopes are live at once,
#: and assumed-role secrets rotate hourly, so old entries must age out.
_SIGNING_KEY_CACHE_SIZE = 8
#: Longest region or service name accepted; real ones are under 30 characters.
_MAX_SCOPE_PART = 64
#: Longest access key id accepted; AWS documents at most 128 characters.
_MAX_ACCESS_KEY_ID = 128

#: Headers the signer itself sets; a caller passing one would produce two conflicting values.
_SIGNER_HEADERS = frozenset(
    {"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
)
#: Headers sent but not signed, as the AWS SDKs do: hop-by-hop headers (RFC 9110 section 7.6.1)
#: and ones proxies or HTTP libraries add, drop or rewrite in transit, which would break the
#: signature of an otherwise valid request.
_UNSIGNED_HEADERS = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

#: RFC 3986 section 2.3 unreserved characters: the only bytes UriEncode leaves as they are.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, space and tab; no CR, LF, NUL
_SPACE_RUN = re.compile(r"[ \t]+")
_METHOD = re.compile(r"[A-Z]+")
_SCOPE_PART = re.compile(r"[a-z0-9-]+")
_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9]+")
_HOSTNAME = re.compile(r"[a-z0-9._-]+")
_IPV6 = re.compile(r"[0-9a-f:.]+")
_URL_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # controls and lone surrogates


class SigV4Error(NoflylistError):
    """A request or credential that cannot be signed as given; the message says what to fix."""


@dataclass(frozen=True)
class Credentials:
    """AWS credentials. ``repr`` leaves out the secret and the session token."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: datetime | None = None  # timezone-aware UTC; None for long-term keys


@dataclass(frozen=True)
class _Steps:
    """Every intermediate of one signing, so tests can compare each with the published suite."""

    canonical_request: str
    string_to_sign: str
    headers: dict[str, str]


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    service: str,
    region: str,
    credentials: Credentials,
    now: datetime,
) -> dict[str, str]:
    """Return the headers to add: Authorization, X-Amz-Date, X-Amz-Security-Token (when there
    is a token) and x-amz-content-sha256 (for service "s3").

    ``url`` is the URL the request goes to. Its host (lowercased, port kept unless it is the
    scheme's default) is signed as ``host``; the HTTP client must send that same Host value,
    as ``http.client`` does for a lowercase host. For service ``"s3"`` the path must already be
    percent-encoded as sent, e.g. ``"/" + bucket + "/" + urllib.parse.quote(key, safe="/~")``,
    and is signed as it is; for other services the path is normalised and encoded once more, as
    AWS expects. Query names and values are percent-decoded and re-encoded canonically.

    ``headers`` are the other headers that will be sent; all are signed except hop-by-hop ones
    and User-Agent. Pass each header once (repeats joined with ``,``) and do not pass the
    headers this function returns. ``now`` must be timezone-aware.
    """
    return _sign_steps(
        method,
        url,
        headers,
        body,
        service=service,
        region=region,
        credentials=credentials,
        now=now,
    ).headers


def _sign_steps(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    service: str,
    region: str,
    credentials: Credentials,
    now: datetime,
) -> _Steps:
    """Check the inputs, then run the spec's steps in order; :func:`sign` returns the headers."""
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise SigV4Error("HTTP method must be an uppercase name such as 'GET' or 'POST'")
    if not isinstance(body, bytes):
        raise SigV4Error("body must be bytes; encode text before signing so the hash is exact")
    _check_scope_part("service", service)
    _check_scope_part("region", region)
    when = _utc(now)
    _check_credentials(credentials, when)
    host, path, query = _split_url(url)

    amz_date = when.strftime(_AMZ_DATE_FORMAT)
    scope = f"{amz_date[:8]}/{region}/{service}/{_TERMINATOR}"
    payload_hash = hashlib.sha256(body).hexdigest()
    added = {"X-Amz-Date": amz_date}
    if credentials.session_token is not None:
        added["X-Amz-Security-Token"] = credentials.session_token
    if service == "s3":
        # S3 requires the payload hash as a header too, and checks the body against it.
        added["x-amz-content-sha256"] = payload_hash

    to_sign = _headers_to_sign(headers, host, added)
    canonical_request, signed_headers = _canonical_request(
        method, _canonical_uri(path, service), _canonical_query(query), to_sign, payload_hash
    )
    string_to_sign = _string_to_sign(amz_date, scope, canonical_request)
    key = _SIGNING_KEYS.get(credentials.secret_access_key, amz_date[:8], region, service)
    added["Authorization"] = _authorization(
        credentials.access_key_id, scope, signed_headers, _signature(key, string_to_sign)
    )
    return _Steps(canonical_request, string_to_sign, added)


# --- Input checks -----------------------------------------------------------------------------


def _check_scope_part(name: str, value: str) -> None:
    if not isinstance(value, str) or not (
        len(value) <= _MAX_SCOPE_PART and _SCOPE_PART.fullmatch(value)
    ):
        raise SigV4Error(
            f"{name} must be {_MAX_SCOPE_PART} or fewer lowercase letters, digits and '-', "
            "as in 'kms' or 'eu-west-1'"
        )


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise SigV4Error("now must be a datetime, e.g. datetime.now(UTC)")
    if now.tzinfo is None or now.utcoffset() is None:
        raise SigV4Error("now must be timezone-aware (e.g. datetime.now(UTC)); it was naive")
    return now.astimezone(UTC)


def _check_credentials(credentials: Credentials, now: datetime) -> None:
    """Refuse credentials AWS would refuse, before they are used; messages carry no secrets."""
    if not isinstance(credentials, Credentials) or not all(
        isinstance(part, str) or part is None
        for part in (credentials.access_key_id, credentials.secret_access_key,
                     credentials.session_token)
    ):
        raise SigV4Error("credentials must be an enclave.sigv4.Credentials of strings")
    key_id = credentials.access_key_id
    if not (len(key_id) <= _MAX_ACCESS_KEY_ID and _ACCESS_KEY_ID.fullmatch(key_id)):
        raise SigV4Error("access key id must be letters and digits, as AWS issues them")
    secret = credentials.secret_access_key
    if not secret or not secret.isprintable():
        raise SigV4Error("secret access key is empty or not printable text; check its source")
    token = credentials.session_token
    if token is not None and not VISIBLE_ASCII.fullmatch(token):
        raise SigV4Error("session token must be non-empty visible ASCII; pass None for none")
    expiration = credentials.expiration
    if expiration is not None:
        if expiration.tzinfo is None or expiration.utcoffset() is None:
            raise SigV4Error("credentials expiration must be timezone-aware")
        if now >= expiration:
            raise SigV4Error(
                f"credentials expired at {expiration.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}; "
                "fetch fresh ones before signing"
            )


def _split_url(url: str) -> tuple[str, str, str]:
    """Return the ``host`` header value, the path and the query of ``url``.

    ``urlsplit`` silently drops tabs and newlines, so they are refused before it runs.
    """
    if not isinstance(url, str) or _URL_FORBIDDEN.search(url) or url != url.strip():
        raise SigV4Error("URL has control characters or surrounding spaces; pass the exact URL")
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise SigV4Error("URL scheme must be https (or http for a local test endpoint)")
    if "#" in url:
        raise SigV4Error("URL has a fragment ('#...'), which is never sent; remove it")
    if "@" in parts.netloc:
        raise SigV4Error("URL carries user info ('user@host'); AWS takes credentials only signed")
    hostname = parts.hostname or ""
    ipv6 = parts.netloc.startswith("[")
    if not (_IPV6 if ipv6 else _HOSTNAME).fullmatch(hostname):
        raise SigV4Error("URL host must be an ASCII DNS name or IP literal (IDNA-encode it)")
    try:
        port = parts.port
    except ValueError:
        raise SigV4Error("URL port is not a number between 0 and 65535") from None
    host = f"[{hostname}]" if ipv6 else hostname
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return host, parts.path, parts.query


# --- Step 1: create a canonical request ------------------------------------------------------


def _uri_encode(data: bytes, *, keep_slash: bool) -> str:
    """SigV4 UriEncode: every byte but the unreserved ones becomes ``%XX`` (uppercase hex)."""
    return "".join(
        chr(b) if b in _UNRESERVED or (keep_slash and b == 0x2F) else f"%{b:02X}" for b in data
    )


def _percent_decode(text: str, what: str) -> bytes:
    """Decode ``%XX`` escapes strictly: a ``%`` without two hex digits is refused, not guessed."""
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25:  # '%'
            if len(raw) - i < 3 or not {raw[i + 1], raw[i + 2]} <= _HEX_DIGITS:
                raise SigV4Error(f"{what} has a '%' not followed by two hex digits; use %25")
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _remove_dot_segments(path: str) -> str:
    """Resolve ``.`` and ``..`` (RFC 3986 section 5.2.4) and drop empty segments, as AWS
    services other than S3 do; a trailing slash survives unless nothing is left."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    trailing = "/" if path.endswith("/") and kept else ""
    return "/" + "/".join(kept) + trailing


def _canonical_uri(path: str, service: str) -> str:
    """Step 1, CanonicalURI. S3 signs its path as sent (encoded once, never normalised); every
    other service normalises the path and URI-encodes it again (so "encoded twice")."""
    if not path:
        return "/"
    if service == "s3":
        if _uri_encode(_percent_decode(path, "URL path"), keep_slash=True) != path:
            raise SigV4Error(
                "S3 path must be percent-encoded exactly once, as sent: encode the key with "
                "urllib.parse.quote(key, safe='/~')"
            )
        return path
    return _uri_encode(_remove_dot_segments(path).encode("utf-8"), keep_slash=True)


def _canonical_query(query: str) -> str:
    """Step 1, CanonicalQueryString: each name and value decoded and UriEncoded, sorted by name
    then by value (so repeated names keep a defined order); a name without ``=`` gets ``=``."""
    if not query:
        return ""
    if "+" in query:
        raise SigV4Error("URL query has '+', which servers read as a space or a plus; use %20/%2B")
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        if not item:
            raise SigV4Error("URL query has an empty parameter ('&&' or a '&' at an end)")
        name, _, value = item.partition("=")
        pairs.append(
            (
                _uri_encode(_percent_decode(name, "URL query"), keep_slash=False),
                _uri_encode(_percent_decode(value, "URL query"), keep_slash=False),
            )
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _headers_to_sign(
    headers: Mapping[str, str], host: str, added: Mapping[str, str]
) -> dict[str, str]:
    """Lowercased name to trimmed value for every header to sign, ``host`` and ``added``
    included. Values lose surrounding spaces and runs of spaces fold to one (Step 1)."""
    out: dict[str, str] = {"host": host}
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not TOKEN.fullmatch(name):
            raise SigV4Error("a header name is not an HTTP token (letters, digits, '-', ...)")
        lower = name.lower()
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            raise SigV4Error(
                f"header {lower!r} must be visible ASCII, spaces and tabs; CR/LF would let it "
                "forge other headers"
            )
        if lower in _SIGNER_HEADERS:
            raise SigV4Error(f"header {lower!r} is set by sign(); leave it out of headers")
        if lower in seen:
            raise SigV4Error(f"header {lower!r} given twice; join the values with ','")
        seen.add(lower)
        if lower == "host":
            if value.strip() != host:
                raise SigV4Error("Host header differs from the URL's host; leave Host out")
        elif lower not in _UNSIGNED_HEADERS:
            out[lower] = _SPACE_RUN.sub(" ", value).strip()
    for name, value in added.items():
        out[name.lower()] = value
    return out


def _canonical_request(
    method: str, uri: str, query: str, to_sign: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """Step 1: the canonical request, and the SignedHeaders list it commits to."""
    names = sorted(to_sign)
    canonical_headers = "".join(f"{name}:{to_sign[name]}\n" for name in names)
    signed_headers = ";".join(names)
    request = "\n".join((method, uri, query, canonical_headers, signed_headers, payload_hash))
    return request, signed_headers


# --- Steps 2 and 3: hash the canonical request, create the string to sign -------------------


def _string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    """Steps 2 and 3: algorithm, request time, credential scope, hex SHA-256 of the request."""
    hashed = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return "\n".join((_ALGORITHM, amz_date, scope, hashed))


# --- Step 4: calculate the signature ---------------------------------------------------------


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Step 4, signing key: HMAC chain over date, region, service and the terminator."""
    k_date = _hmac(f"AWS4{secret}".encode(), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, _TERMINATOR)


def _signature(signing_key: bytes, string_to_sign: str) -> str:
    """Step 4, signature: lowercase hex HMAC-SHA256 of the string to sign."""
    return hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class _SigningKeyCache:
    """Signing keys per (day, region, service, secret), least recently used dropped first.

    The spec's key depends only on those four, so like the AWS SDKs we derive it once and
    reuse it: the long-term secret enters HMAC once a day per scope instead of on every
    request. Entries are indexed by the SHA-256 of the secret, not the secret, so the cache
    holds no second copy of it, and it is bounded because assumed-role credentials rotate
    hourly and a long-running enclave must not collect one key per rotation. Thread-safe,
    since the service may sign from several threads.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[tuple[bytes, str, str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, secret: str, date: str, region: str, service: str) -> bytes:
        ident = (hashlib.sha256(secret.encode()).digest(), date, region, service)
        with self._lock:
            key = self._keys.get(ident)
            if key is not None:
                self._keys.move_to_end(ident)
                return key
        key = _derive_signing_key(secret, date, region, service)
        with self._lock:
            self._keys[ident] = key
            self._keys.move_to_end(ident)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
        return key

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


_SIGNING_KEYS = _SigningKeyCache(_SIGNING_KEY_CACHE_SIZE)


# --- Step 5: add the signature to the request ------------------------------------------------


def _authorization(access_key_id: str, scope: str, signed_headers: str, signature: str) -> str:
    """Step 5: the Authorization header value."""
    return (
        f"{_ALGORITHM} Credential={access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
