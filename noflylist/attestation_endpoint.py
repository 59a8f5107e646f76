"""``GET /enclave/attestation?nonce=HEX``: a fresh attestation document for clients to check.

A client (``noflylist check``) sends a random nonce and gets back a document from the NSM
that binds three things it can verify against AWS's root: its nonce (the document is fresh,
not replayed), the PCRs (which code answers) and ``user_data`` (which list that code serves).
``user_data`` is the small CBOR map of :func:`encode_user_data`::

    {"envelope_sha256": bytes(32) | null, "serial": int | null, "version": "<noflylist version>"}

taken from the list in service at the moment of the request (``null`` while none is loaded).

The document is sent as ``application/cbor``, or as base64 text (``text/plain``) when the
client's ``Accept`` names ``text/plain`` and not ``application/cbor``, for terminals and
``curl``. The ``X-Noflylist-Attestation`` header says ``nsm`` or ``simulated``: simulated
documents are signed by the development simulator's throwaway root and prove nothing. The
header is a courtesy to honest clients; what a document proves depends only on which root the
client verifies it against.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from enclave import cbor
from enclave.errors import EnclaveError
from enclave.nsm import SecureModule
from noflylist import __version__
from noflylist.envelope import MAX_COUNT
from noflylist.server import RouteResponse
from noflylist.service import ListHolder

__all__ = [
    "MODE_HEADER",
    "PATH",
    "AttestationEndpointError",
    "AttestationRoute",
    "ServedList",
    "decode_user_data",
    "encode_user_data",
]

_log = logging.getLogger(__name__)

#: Where the route is mounted.
PATH = "/enclave/attestation"
#: Response header naming the kind of NSM that signed the document.
MODE_HEADER = "X-Noflylist-Attestation"
#: The attestation modes that have an NSM to ask (``unsafe-none`` has none: no route).
MODES = frozenset({"nsm", "simulated"})
#: A nonce shorter than 8 bytes could repeat; 64 is plenty and keeps the query short.
MIN_NONCE_BYTES = 8
MAX_NONCE_BYTES = 64
#: ``envelope_sha256`` is a SHA-256 digest.
_DIGEST_BYTES = 32
#: The version string is short ("0.1.0"); anything much longer is not ours.
_MAX_VERSION_CHARS = 64
#: The map holds three entries; the cap bounds decoding of a hostile ``user_data``.
_MAX_USER_DATA_ITEMS = 8
_USER_DATA_KEYS = ("envelope_sha256", "serial", "version")
_HEX = re.compile(r"[0-9a-fA-F]*")
#: RFC 8949 §9.5: the media type of a CBOR data item.
CBOR_TYPE = "application/cbor"
TEXT_TYPE = "text/plain; charset=us-ascii"
_ERROR_TYPE = "text/plain; charset=utf-8"


class AttestationEndpointError(EnclaveError):
    """The route was set up wrongly, or ``user_data`` is not the map this service writes."""


@dataclass(frozen=True)
class ServedList:
    """What the service declares it serves, as bound into ``user_data``."""

    envelope_sha256: bytes | None
    serial: int | None
    version: str


def encode_user_data(served: ServedList) -> bytes:
    """The CBOR map of the module docstring, keys in that order."""
    return cbor.encode(
        {
            "envelope_sha256": served.envelope_sha256,
            "serial": served.serial,
            "version": served.version,
        }
    )


def decode_user_data(data: bytes) -> ServedList:
    """Parse ``user_data`` strictly: exactly the three keys, each with its type and size.

    ``noflylist check`` reads it from the service it is checking, so this is a boundary: any
    exception no check foresaw becomes an :class:`AttestationEndpointError` naming its type.
    """
    try:
        return _decode_user_data(data)
    except AttestationEndpointError:
        raise
    except Exception as exc:
        raise AttestationEndpointError(
            f"user_data could not be read ({type(exc).__name__})"
        ) from None


def _decode_user_data(data: bytes) -> ServedList:
    try:
        value = cbor.decode(data, max_depth=2, max_items=_MAX_USER_DATA_ITEMS)
    except cbor.CBORError as exc:
        raise AttestationEndpointError(f"user_data is not CBOR: {exc}") from None
    if not isinstance(value, dict) or set(value) != set(_USER_DATA_KEYS):
        raise AttestationEndpointError(
            f"user_data is not a noflylist map with exactly the keys {', '.join(_USER_DATA_KEYS)}"
        )
    digest, serial, version = (value[key] for key in _USER_DATA_KEYS)
    if digest is not None and (not isinstance(digest, bytes) or len(digest) != _DIGEST_BYTES):
        raise AttestationEndpointError("user_data envelope_sha256 is not 32 bytes or null")
    if serial is not None and (type(serial) is not int or not 0 <= serial <= MAX_COUNT):
        raise AttestationEndpointError(
            f"user_data serial is not an integer in 0..{MAX_COUNT} (an envelope serial) or null"
        )
    if not isinstance(version, str) or not 0 < len(version) <= _MAX_VERSION_CHARS:
        raise AttestationEndpointError("user_data version is not short text")
    return ServedList(digest, serial, version)


class AttestationRoute:
    """The route handler: one fresh NSM document per request, bound to the list in service."""

    def __init__(self, module: SecureModule, holder: ListHolder, *, mode: str) -> None:
        if mode not in MODES:
            raise AttestationEndpointError(
                f"the attestation route needs an NSM; mode {mode!r} has none "
                f"(use one of {', '.join(sorted(MODES))})"
            )
        self._module = module
        self._holder = holder
        self._mode = mode

    def __call__(self, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> RouteResponse:
        """A :data:`noflylist.server.RouteHandler`: 200 with the document, 400 for a bad
        nonce, 503 if the NSM fails. ``headers`` has lower-case names, as the server gives."""
        mode_header = {MODE_HEADER: self._mode}
        try:
            nonce = _nonce(query)
        except AttestationEndpointError as exc:
            return RouteResponse(400, _ERROR_TYPE, f"{exc}\n".encode(), mode_header)
        current = self._holder.current  # one read: the list may be swapped concurrently
        served = ServedList(
            envelope_sha256=None if current is None else current.envelope_sha256,
            serial=None if current is None else current.serial,
            version=__version__,
        )
        try:
            document = self._module.attestation(nonce=nonce, user_data=encode_user_data(served))
        except EnclaveError as exc:
            _log.error("attestation document unavailable: %s", exc)
            reason = f"the NSM could not produce an attestation document: {exc}; retry later\n"
            return RouteResponse(503, _ERROR_TYPE, reason.encode(), mode_header)
        if _wants_text(headers):
            return RouteResponse(200, TEXT_TYPE, base64.b64encode(document) + b"\n", mode_header)
        return RouteResponse(200, CBOR_TYPE, document, mode_header)


def _nonce(query: Mapping[str, list[str]]) -> bytes:
    """Exactly one ``nonce`` of 8 to 64 bytes in hex, and no other parameter (never echoed)."""
    if set(query) - {"nonce"}:
        raise AttestationEndpointError("only the query parameter nonce is accepted")
    values = query.get("nonce", [])
    if len(values) != 1:
        raise AttestationEndpointError(
            "give exactly one nonce: ?nonce=<16 to 128 hex characters> (8 to 64 random bytes)"
        )
    text = values[0]
    if not _HEX.fullmatch(text) or len(text) % 2:
        raise AttestationEndpointError("the nonce must be an even number of hex characters")
    if not MIN_NONCE_BYTES <= len(text) // 2 <= MAX_NONCE_BYTES:
        raise AttestationEndpointError(
            f"the nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes "
            f"({2 * MIN_NONCE_BYTES} to {2 * MAX_NONCE_BYTES} hex characters)"
        )
    return bytes.fromhex(text)


def _wants_text(headers: Mapping[str, str]) -> bool:
    """Base64 text if ``Accept`` lists ``text/plain`` and not ``application/cbor`` (q > 0)."""
    accept = next((v for k, v in headers.items() if k.lower() == "accept"), "")
    accepted = set()
    for item in accept.split(","):
        media, *parameters = (part.strip().lower() for part in item.split(";"))
        if not any(_refused(parameter) for parameter in parameters):
            accepted.add(media)
    return "text/plain" in accepted and CBOR_TYPE not in accepted


def _refused(parameter: str) -> bool:
    """``q=0`` (RFC 9110 §12.4.2) means "not acceptable"."""
    name, _, value = parameter.partition("=")
    if name.strip() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False
