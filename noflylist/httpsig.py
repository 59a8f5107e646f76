"""HTTP Message Signatures (RFC 9421), ed25519 only, over a Content-Digest (RFC 9530).

How the service knows which client sent a request. A client holds an Ed25519 private key;
the list's owner registers its raw public key under a client id, the ``keyid``. Every request
carries (one signature; the service accepts nothing else)::

    Content-Digest: sha-256=:<base64 of SHA-256(body)>:       whenever a body is sent, and on POST
    Signature-Input: sig1=("@method" "@path" "@query" "content-digest")
                     ;created=1796422599;keyid="acme-ops";nonce="<8 to 128 chars>";alg="ed25519"
    Signature: sig1=:<base64 of the 64-byte Ed25519 signature>:

:func:`verify_request` follows RFC 9421 section 3.2, one function a step, each failure one
:class:`SignatureRefused` whose ``reason`` is one of :data:`REASONS`:

1. read Signature-Input and Signature (RFC 8941 Dictionaries; a small strict parser of just
   the types needed, every size capped) -- "missing", "malformed";
2. read the covered components and the parameters against this service's short lists --
   "malformed";
3. the clock: ``created`` within :data:`MAX_SKEW_SECONDS`, ``expires`` not passed -- "stale";
4. the client's public key by ``keyid`` -- "unknown-client";
5. the signature base (section 2.5) -- "malformed" (a covered field is absent), "digest";
6. the signature (section 3.3.6) -- "bad-signature";
7. Content-Digest against the body (RFC 9530) -- "digest";
8. the (keyid, nonce) pair, once (:class:`ReplayCache`) -- "replayed".

Why ``@path`` and ``@query`` rather than ``@target-uri``: the service sees the request target
as sent (origin-form, RFC 9112 section 3.2.1), not the scheme or the authority the client
dialled, so those are the parts both ends agree on. Why so few components: every component
accepted is one more way for a client and a relay to disagree about bytes; the list is what a
screening request needs. The checks never read the queried name: the target is split at its
first ``?`` and copied into the base, nothing more, and no message quotes a field or target.

Standard library and :mod:`cryptography` only: the service and every client import it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeAlias, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import NoflylistError
from enclave.http_syntax import FIELD_CONTROL, TCHAR, TOKEN, VISIBLE_ASCII

__all__ = [
    "ACCEPT_SIGNATURE",
    "MAX_SKEW_SECONDS",
    "REASONS",
    "ReplayCache",
    "SignatureRefused",
    "Verified",
    "content_digest",
    "sign_request",
    "verify_request",
]

#: Every ``SignatureRefused.reason``: a fixed set, so a metrics label cannot grow.
REASONS = ("missing", "malformed", "unknown-client", "bad-signature", "stale", "replayed", "digest")
#: How far ``created`` may be from the service's clock, either way.
MAX_SKEW_SECONDS = 300
#: How long a nonce is remembered after its ``created``: a request is stale once the clock
#: passes ``created + MAX_SKEW_SECONDS``, so that would do for a steady clock; twice that
#: leaves room for the enclave's own clock being stepped back while a nonce is remembered.
REPLAY_WINDOW_SECONDS = 2 * MAX_SKEW_SECONDS
#: Nonces remembered a client: 10,000 in 10 minutes is over 16 signed requests a second.
DEFAULT_NONCES_PER_CLIENT = 10_000
#: The longest Signature-Input, Signature or Content-Digest read: ours are under 300 chars.
MAX_FIELD_CHARS = 4096
#: Members a dictionary may hold (one signature is accepted; Content-Digest holds one or two).
MAX_DICTIONARY_MEMBERS = 8
#: Items an inner list may hold: the accepted components number 8, each at most once.
MAX_INNER_LIST_ITEMS = 16
#: Parameters an item or inner list may hold: six are defined for a signature.
MAX_PARAMETERS = 8
#: A nonce's length in visible ASCII: 8 is 48 bits of base64, 128 room for any encoding.
MIN_NONCE_CHARS = 8
MAX_NONCE_CHARS = 128
#: The value of Accept-Signature on a 401 (RFC 9421 section 5.1): the components to cover,
#: ``created`` without a value (the signer supplies it) and the one algorithm. ``keyid`` and
#: ``nonce`` are required too, but in a request for a signature they would have to carry
#: values (the key to use, the nonce to include) that only the client knows.
ACCEPT_SIGNATURE = 'sig1=("@method" "@path" "@query" "content-digest");created;alg="ed25519"'

#: An Ed25519 signature and public key (RFC 8032 section 5.1.5, 5.1.6).
_SIGNATURE_BYTES = 64
_PUBLIC_KEY_BYTES = 32
#: A default nonce: 16 random bytes, 22 characters of base64url.
_DEFAULT_NONCE_BYTES = 16
_ALGORITHM = "ed25519"
_REQUIRED = ("@method", "@path", "@query")
_COMPONENTS = (
    *_REQUIRED,
    "@authority",
    "content-digest",
    "content-type",
    "content-length",
    "noflylist-nonce",
)
_PARAMETERS = ("created", "keyid", "nonce", "alg", "expires", "tag")
#: RFC 9530 section 5's algorithm keys this service reads, and hashlib's names for them.
_DIGESTS = {"sha-256": "sha256", "sha-512": "sha512"}

# RFC 8941 section 3: the pieces of the grammar this module reads.
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER = re.compile(r"-?[0-9]{1,15}(?![0-9.])")  # no decimals: nothing here uses them
_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"')
_UNESCAPE = re.compile(r'\\([\\"])')
_TOKEN_ITEM = re.compile(rf"[A-Za-z*](?:{TCHAR}|[:/])*")
_BYTES = re.compile(r":([A-Za-z0-9+/]*={0,2}):")
_BOOLEAN = re.compile(r"\?[01]")
_SF_STRING_TEXT = re.compile(r"[\x20-\x7e]+")
#: What a covered field value may not hold (HTAB is allowed inside, RFC 9110 section 5.5).
_CONTROL = re.compile(FIELD_CONTROL)


class SignatureRefused(NoflylistError):
    """A request whose signature this service does not accept, and why.

    ``reason`` is one of :data:`REASONS` (a fixed metrics label); ``str(exc)`` is one line for
    the client, naming the cause and the fix, never quoting a header value, a name or the
    query.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"SignatureRefused reason must be one of {REASONS}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    """Who signed an accepted request: the client id (its ``keyid``), when, and its nonce."""

    client_id: str
    created: int
    nonce: str


class ReplayCache:
    """Remembers each (client id, nonce) accepted, so a copied request is refused.

    A nonce is remembered for :data:`REPLAY_WINDOW_SECONDS` after its ``created``, then
    forgotten: by then :func:`verify_request` refuses the request as stale anyway. At most
    ``per_client`` nonces a client (a number, or a function of the client id: the service
    sizes it from the client's sealed budget, see :mod:`noflylist.routes`): when a client's
    memory is full, its next request is refused ("replayed") until old ones expire, so one
    client cannot grow memory without bound. Only requests whose signature verified reach
    it, so the number of clients is at most the number of registered keys. Thread-safe: the
    server calls it from the event-loop thread and from worker threads.
    """

    def __init__(
        self,
        *,
        per_client: int | Callable[[str], int] = DEFAULT_NONCES_PER_CLIENT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(per_client, int):
            if per_client < 1:
                raise ValueError("ReplayCache per_client must be at least 1 (nonces a client)")
            fixed = per_client
            per_client = lambda client_id: fixed  # noqa: E731
        self._per_client = per_client
        self._clock = clock
        self._lock = threading.Lock()
        self._nonces: dict[str, dict[str, float]] = {}  # client -> nonce -> forget at
        self._expiries: dict[str, list[tuple[float, str]]] = {}  # client -> heap of the same

    def remember(self, client_id: str, nonce: str, created: int) -> None:
        """Record the pair, or raise ``SignatureRefused("replayed")`` if it was seen."""
        forget_at = float(created + REPLAY_WINDOW_SECONDS)
        with self._lock:
            nonces = self._nonces.setdefault(client_id, {})
            expiries = self._expiries.setdefault(client_id, [])
            now = self._clock()
            while expiries and expiries[0][0] <= now:
                del nonces[heapq.heappop(expiries)[1]]
            if nonce in nonces:
                raise SignatureRefused(
                    "replayed",
                    "this signed request was already received (same keyid and nonce): "
                    "sign every request with a fresh random nonce",
                )
            if len(nonces) >= max(1, self._per_client(client_id)):
                raise SignatureRefused(
                    "replayed",
                    "too many signed requests from this client within the replay window; slow down",
                )
            nonces[nonce] = forget_at
            heapq.heappush(expiries, (forget_at, nonce))


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest field value, sha-256: ``sha-256=:BASE64:``."""
    return "sha-256=" + _serialize_bare(hashlib.sha256(body).digest())


def verify_request(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    public_keys: Mapping[str, bytes],
    replay: ReplayCache,
    now: float | None = None,
) -> Verified:
    """Check a request's signature (the module docstring lists the steps); who signed it.

    ``headers``: names in lower case, repeated fields combined with ", " (RFC 9110 5.3);
    ``target``: the raw origin-form target; ``public_keys``: client id -> raw 32-byte Ed25519
    public key. This is a boundary: whatever the request holds, the only exception is
    :class:`SignatureRefused` (anything else from inside becomes "malformed", naming only
    the exception's type).
    """
    try:
        clock = time.time() if now is None else now
        return _verify(method, target, headers, body, public_keys, replay, clock)
    except SignatureRefused:
        raise
    except Exception as exc:
        raise SignatureRefused(
            "malformed",
            f"the request's signature could not be read ({type(exc).__name__}); "
            f"sign it as Accept-Signature describes",
        ) from None


def sign_request(
    method: str,
    target: str,
    body: bytes,
    *,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int | None = None,
    nonce: str | None = None,
    label: str = "sig1",
) -> dict[str, str]:
    """The headers a client adds: Signature-Input, Signature, and Content-Digest.

    Content-Digest is sent, and covered, when there is a body or the method is POST (the
    verifier requires it then). Components: "@method" "@path" "@query" (+ "content-digest");
    parameters: created (default: now), keyid, nonce (default: 16 random bytes, base64url
    without padding), alg="ed25519". A value the format cannot carry raises
    ``SignatureRefused("malformed")``: a bug in the caller, found before anything is sent.
    """
    if created is None:
        created = int(time.time())
    if nonce is None:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(_DEFAULT_NONCE_BYTES)).decode()
        nonce = nonce.rstrip("=")
    _check_signable(method, target, key_id, created, nonce, label)
    names = list(_REQUIRED)
    fields: dict[str, str] = {}
    headers: dict[str, str] = {}
    if body or method == "POST":
        names.append("content-digest")
        fields["content-digest"] = headers["Content-Digest"] = content_digest(body)
    params = (("created", created), ("keyid", key_id), ("nonce", nonce), ("alg", _ALGORITHM))
    signature_params = _InnerList(tuple(_Item(name, ()) for name in names), params)
    values = [(name, _component_value(name, method, target, fields)) for name in names]
    signature = private_key.sign(_signature_base(values, signature_params))
    headers["Signature-Input"] = f"{label}={_serialize_inner_list(signature_params)}"
    headers["Signature"] = f"{label}={_serialize_bare(signature)}"
    return headers


# --- RFC 9421 section 3.2: verifying a signature, step by step -----------------------------


@dataclass(frozen=True)
class _Input:
    """What step 2 read from the signature's parameters."""

    components: tuple[str, ...]
    created: int
    keyid: str
    nonce: str
    expires: int | None


def _verify(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    public_keys: Mapping[str, bytes],
    replay: ReplayCache,
    now: float,
) -> Verified:
    signature_params, signature = _step1_read_fields(headers)
    signed = _step2_read_input(signature_params, needs_digest=len(body) > 0 or method == "POST")
    _step3_check_time(signed, now)
    key = _step4_client_key(signed.keyid, public_keys)
    base = _step5_signature_base(method, target, headers, signed.components, signature_params)
    _step6_check_signature(key, base, signature)
    # The digest after the signature: Content-Digest is then a covered, authenticated field,
    # so a mismatch means the body changed in transit (or the client hashed other bytes),
    # not a forgery; and a forger learns nothing of the digest check without first holding a
    # valid signature. A forged digest costs one verify, about 0.1 ms.
    _step7_check_digest(headers, body, signed.components)
    replay.remember(signed.keyid, signed.nonce, signed.created)
    return Verified(client_id=signed.keyid, created=signed.created, nonce=signed.nonce)


def _step1_read_fields(headers: Mapping[str, str]) -> tuple[_InnerList, bytes]:
    """Sections 4.1 and 4.2: one label, the same in both fields; its inner list and bytes."""
    signature_input = headers.get("signature-input", "").strip(" \t")
    signature_field = headers.get("signature", "").strip(" \t")
    if not signature_input or not signature_field:
        raise SignatureRefused(
            "missing",
            "the request is not signed: send Signature-Input and Signature (RFC 9421) "
            "as Accept-Signature describes",
        )
    inputs = _parse_dictionary(signature_input, field="Signature-Input", reason="malformed")
    signatures = _parse_dictionary(signature_field, field="Signature", reason="malformed")
    if len(inputs) != 1 or len(signatures) != 1 or inputs[0][0] != signatures[0][0]:
        raise _malformed(
            "Signature-Input and Signature must each hold exactly one signature, "
            "under the same label"
        )
    signature_params, signature = inputs[0][1], signatures[0][1]
    if not isinstance(signature_params, _InnerList):
        raise _malformed("Signature-Input's member must be an inner list of components")
    if (
        not isinstance(signature, _Item)
        or not isinstance(signature.value, bytes)
        or signature.params
    ):
        raise _malformed("Signature's member must be a byte sequence (:base64:)")
    if len(signature.value) != _SIGNATURE_BYTES:
        raise _malformed("the signature is not a 64-byte Ed25519 signature")
    return signature_params, signature.value


def _step2_read_input(signature_params: _InnerList, *, needs_digest: bool) -> _Input:
    """Sections 2.3 and 3.2 step 3: the covered components and the parameters, strictly."""
    names: list[str] = []
    for item in signature_params.items:
        name = item.value
        if not isinstance(name, str) or item.params or name not in _COMPONENTS or name in names:
            raise _malformed(
                "the signature covers a component this service does not accept; it accepts "
                + " ".join(f'"{n}"' for n in _COMPONENTS)
                + ", each at most once and without parameters"
            )
        names.append(name)
    if any(name not in names for name in _REQUIRED):
        raise _malformed('the signature must cover "@method", "@path" and "@query"')
    if needs_digest and "content-digest" not in names:
        raise _malformed(
            "a request with a body, and every POST, must send Content-Digest and cover "
            '"content-digest"'
        )
    params = dict(signature_params.params)  # the parser refuses a parameter given twice
    if any(key not in _PARAMETERS for key in params):
        raise _malformed(
            "the signature has a parameter this service does not accept; it accepts "
            + ", ".join(_PARAMETERS)
        )
    created, keyid, nonce = params.get("created"), params.get("keyid"), params.get("nonce")
    expires = params.get("expires")
    if not _is_integer(created):
        raise _malformed("the signature needs created, an integer (Unix seconds)")
    if not isinstance(keyid, str) or not keyid:
        raise _malformed("the signature needs keyid, a string (this service's name for you)")
    if (
        not isinstance(nonce, str)
        or not MIN_NONCE_CHARS <= len(nonce) <= MAX_NONCE_CHARS
        or not VISIBLE_ASCII.fullmatch(nonce)
    ):
        raise _malformed(
            f"the signature needs nonce, a fresh string of {MIN_NONCE_CHARS} to "
            f"{MAX_NONCE_CHARS} visible ASCII characters"
        )
    if "alg" in params and params["alg"] != _ALGORITHM:
        raise _malformed('this service accepts only alg="ed25519" (or no alg)')
    if expires is not None and not _is_integer(expires):
        raise _malformed("the signature's expires must be an integer (Unix seconds)")
    if "tag" in params and not isinstance(params["tag"], str):
        raise _malformed("the signature's tag must be a string")
    return _Input(
        components=tuple(names),
        created=created,
        keyid=keyid,
        nonce=nonce,
        expires=expires,
    )


def _step3_check_time(signed: _Input, now: float) -> None:
    """Section 3.2 step 7: the signature was made recently and has not expired."""
    if abs(now - signed.created) > MAX_SKEW_SECONDS:
        raise SignatureRefused(
            "stale",
            f"the signature's created time is more than {MAX_SKEW_SECONDS} seconds from the "
            f"service's clock: sign each request as it is sent, and check the client's clock",
        )
    if signed.expires is not None and signed.expires < now:
        raise SignatureRefused("stale", "the signature's expires time has passed; sign again")


def _step4_client_key(keyid: str, public_keys: Mapping[str, bytes]) -> Ed25519PublicKey:
    """Section 3.2 step 5: the key registered for ``keyid`` (which is not echoed: client text)."""
    raw = public_keys.get(keyid)
    if raw is None:
        raise SignatureRefused(
            "unknown-client",
            "this service has no client with that keyid; ask the list's owner to add your "
            "public key",
        )
    if len(raw) != _PUBLIC_KEY_BYTES:
        raise SignatureRefused(
            "unknown-client",
            "this service's key for that keyid is not a raw 32-byte Ed25519 public key; ask "
            "the list's owner to fix the client's entry",
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _step5_signature_base(
    method: str,
    target: str,
    headers: Mapping[str, str],
    components: Sequence[str],
    signature_params: _InnerList,
) -> bytes:
    """Section 3.2 step 6: the base the client signed, rebuilt from this request."""
    values = [(name, _component_value(name, method, target, headers)) for name in components]
    return _signature_base(values, signature_params)


def _step6_check_signature(key: Ed25519PublicKey, base: bytes, signature: bytes) -> None:
    """Section 3.3.6: Ed25519 (RFC 8032 section 5.1.7) over the base, no prehash."""
    try:
        key.verify(signature, base)
    except InvalidSignature:
        raise SignatureRefused(
            "bad-signature",
            "the signature does not verify under this client's public key: the request "
            "changed after signing (a relay rewrote the path, query or a covered field) or "
            "another key signed it",
        ) from None


def _step7_check_digest(headers: Mapping[str, str], body: bytes, components: Sequence[str]) -> None:
    """RFC 9530 section 2: Content-Digest holds sha-256 (and maybe sha-512) of the body."""
    if "content-digest" not in components and not body:
        return
    value = headers.get("content-digest", "").strip(" \t")
    if not value:
        raise _no_digest()
    digests: dict[str, bytes] = {}
    for algorithm, member in _parse_dictionary(value, field="Content-Digest", reason="digest"):
        if (
            algorithm not in _DIGESTS
            or not isinstance(member, _Item)
            or not isinstance(member.value, bytes)
            or member.params
        ):
            raise SignatureRefused(
                "digest",
                "Content-Digest may hold only sha-256 and sha-512, each a byte sequence (:base64:)",
            )
        digests[algorithm] = member.value
    if "sha-256" not in digests:
        raise SignatureRefused("digest", "Content-Digest must hold sha-256 (RFC 9530)")
    for algorithm, claimed in digests.items():
        if not hmac.compare_digest(claimed, hashlib.new(_DIGESTS[algorithm], body).digest()):
            raise SignatureRefused(
                "digest",
                "Content-Digest does not match the body: the body changed in transit or the "
                "client hashed other bytes",
            )


# --- RFC 9421 section 2: component values and the signature base --------------------------


def _component_value(name: str, method: str, target: str, headers: Mapping[str, str]) -> str:
    """Section 2.2 (derived components) and 2.1 (a field: its trimmed, combined value)."""
    if name == "@method":
        return method
    if name in ("@path", "@query"):
        if not target.startswith("/"):
            raise _malformed("the request target must be origin-form (/path?query)")
        path, _, query = target.partition("?")
        # Section 2.2.7: "?" and the query as sent, or "?" alone when there is none.
        return path if name == "@path" else "?" + query
    if name == "@authority":
        host = headers.get("host")
        if host is None:
            raise _malformed('the signature covers "@authority" but the request has no Host')
        return host.strip(" \t").lower()  # section 2.2.3
    value = headers.get(name)
    if value is None:
        if name == "content-digest":
            raise _no_digest()
        raise _malformed("the signature covers a header field the request does not send")
    value = value.strip(" \t")
    if _CONTROL.search(value):
        raise _malformed("a covered header field holds a control character")
    return value


def _signature_base(components: Sequence[tuple[str, str]], signature_params: _InnerList) -> bytes:
    """Section 2.5: ``"name": value`` a line, then ``"@signature-params"``; LF, none at the end.

    ``components``: each covered component's name and value, in the order covered;
    ``signature_params``: the inner list as parsed (or built), re-serialised per RFC 8941.
    """
    lines = [f'"{name}": {value}' for name, value in components]
    lines.append(f'"@signature-params": {_serialize_inner_list(signature_params)}')
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise _malformed("the signed components must be ASCII") from None


def _check_signable(
    method: str, target: str, key_id: str, created: int, nonce: str, label: str
) -> None:
    if not TOKEN.fullmatch(method):
        raise _malformed("sign_request: the method is not an HTTP token")
    if not target.startswith("/"):
        raise _malformed("sign_request: the target must be origin-form (/path?query)")
    if not _SF_STRING_TEXT.fullmatch(key_id):
        raise _malformed("sign_request: key_id must be printable ASCII")
    if not _is_integer(created):
        raise _malformed("sign_request: created must be an integer (Unix seconds)")
    if not MIN_NONCE_CHARS <= len(nonce) <= MAX_NONCE_CHARS or not VISIBLE_ASCII.fullmatch(nonce):
        raise _malformed(
            f"sign_request: nonce must be {MIN_NONCE_CHARS} to {MAX_NONCE_CHARS} visible "
            "ASCII characters"
        )
    if not _KEY.fullmatch(label):
        raise _malformed("sign_request: label must be an RFC 8941 key (a-z, 0-9, _-.*)")


def _malformed(message: str) -> SignatureRefused:
    return SignatureRefused("malformed", message)


def _no_digest() -> SignatureRefused:
    return SignatureRefused(
        "digest",
        "the request has a body or covers content-digest but sends no Content-Digest; send "
        "Content-Digest: sha-256=:<base64 of SHA-256(body)>:",
    )


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# --- RFC 8941: just the structured fields the signature and digest need -------------------


@dataclass(frozen=True)
class _Token:
    """An RFC 8941 token (kept apart from a string: they serialise differently)."""

    text: str


_Bare: TypeAlias = bool | int | str | bytes | _Token
_Params: TypeAlias = tuple[tuple[str, _Bare], ...]


@dataclass(frozen=True)
class _Item:
    value: _Bare
    params: _Params


@dataclass(frozen=True)
class _InnerList:
    items: tuple[_Item, ...]
    params: _Params


_Member: TypeAlias = _Item | _InnerList


def _parse_dictionary(text: str, *, field: str, reason: str) -> list[tuple[str, _Member]]:
    """RFC 8941 section 4.2.2, strictly: a key given twice is refused, not overwritten."""
    if len(text) > MAX_FIELD_CHARS:
        raise SignatureRefused(reason, f"{field} is longer than {MAX_FIELD_CHARS} characters")
    reader = _Reader(text, field, reason)
    reader.skip(" ")
    members: list[tuple[str, _Member]] = []
    while True:
        key = reader.key()
        if any(key == seen for seen, _ in members):
            reader.fail("a member is given twice")
        if reader.peek() == "=":
            reader.pos += 1
            member: _Member = reader.inner_list() if reader.peek() == "(" else reader.item()
        else:
            member = _Item(True, reader.parameters())
        members.append((key, member))
        if len(members) > MAX_DICTIONARY_MEMBERS:
            reader.fail(f"more than {MAX_DICTIONARY_MEMBERS} members")
        reader.skip(" \t")
        if reader.at_end():
            return members
        reader.expect(",")
        reader.skip(" \t")
        if reader.at_end():
            reader.fail("a trailing comma")


class _Reader:
    """One pass over a field value (RFC 8941 section 4.2); each method consumes or fails."""

    def __init__(self, text: str, field: str, reason: str) -> None:
        self.text = text
        self.pos = 0
        self._field = field
        self._reason = reason

    def fail(self, what: str) -> NoReturn:
        raise SignatureRefused(
            self._reason, f"{self._field} is not a valid structured field (RFC 8941): {what}"
        )

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip(self, chars: str) -> None:
        while not self.at_end() and self.text[self.pos] in chars:
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            self.fail(f"expected {char!r}")
        self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        found = pattern.match(self.text, self.pos)
        if found is None:
            self.fail(f"expected {what}")
        self.pos = found.end()
        return found

    def key(self) -> str:
        return self.match(_KEY, "a key").group()

    def inner_list(self) -> _InnerList:
        self.expect("(")
        items: list[_Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.pos += 1
                return _InnerList(tuple(items), self.parameters())
            items.append(self.item())
            if len(items) > MAX_INNER_LIST_ITEMS:
                self.fail(f"an inner list of more than {MAX_INNER_LIST_ITEMS} items")
            if self.peek() not in (" ", ")"):
                self.fail("an inner list's items must be separated by spaces")

    def item(self) -> _Item:
        return _Item(self.bare_item(), self.parameters())

    def parameters(self) -> _Params:
        params: list[tuple[str, _Bare]] = []
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            key = self.key()
            value: _Bare = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            if any(key == seen for seen, _ in params):
                self.fail("a parameter is given twice")
            params.append((key, value))
            if len(params) > MAX_PARAMETERS:
                self.fail(f"more than {MAX_PARAMETERS} parameters")
        return tuple(params)

    def bare_item(self) -> _Bare:
        first = self.peek()
        if first == '"':
            return _UNESCAPE.sub(r"\1", self.match(_STRING, "a string").group(1))
        if first == ":":
            encoded = self.match(_BYTES, "a byte sequence").group(1)
            try:
                return base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                self.fail("a byte sequence that is not base64")
        if first == "?":
            return self.match(_BOOLEAN, "a boolean").group() == "?1"
        if first == "-" or "0" <= first <= "9":
            return int(self.match(_INTEGER, "an integer of at most 15 digits").group())
        return _Token(self.match(_TOKEN_ITEM, "a string, token, integer or byte sequence").group())


def _serialize_inner_list(inner: _InnerList) -> str:
    """RFC 8941 section 4.1.1.1: ``(item item);param=value``."""
    items = " ".join(_serialize_bare(i.value) + _serialize_params(i.params) for i in inner.items)
    return f"({items}){_serialize_params(inner.params)}"


def _serialize_params(params: _Params) -> str:
    """RFC 8941 section 4.1.1.2: a true boolean is the key alone."""
    return "".join(f";{k}" if v is True else f";{k}={_serialize_bare(v)}" for k, v in params)


def _serialize_bare(value: _Bare) -> str:
    """RFC 8941 section 4.1.3: one bare item."""
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, _Token):
        return value.text
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
