"""``GET /enclave/attestation?nonce=HEX``: a fresh attestation document for clients to check.

A client (``noflylist check``) sends a random nonce and gets back a document from the NSM
that binds three things it can verify against AWS's root: its nonce (the document is fresh,
not replayed), the PCRs (which code answers) and ``user_data`` (which list that code serves).
``user_data`` is the small CBOR map of :func:`noflylist.wire.encode_user_data` (the wire
format the service shares with its clients), taken from the list in service at the moment of
the request (``null`` while none is loaded).

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

from enclave.errors import NoflylistError
from enclave.modes import AttestationMode
from enclave.nsm import SecureModule
from noflylist import __version__
from noflylist.answers import AnswerKey
from noflylist.lists import ListHolder
from noflylist.routes import RouteResponse
from noflylist.wire import (
    CBOR_TYPE,
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    MODE_HEADER,
    TEXT_TYPE,
    ServedList,
    encode_user_data,
)

__all__ = ["AttestationRoute", "AttestationRouteError"]

_log = logging.getLogger(__name__)

#: The attestation modes that have an NSM to ask (``unsafe-none`` has none: no route).
ATTESTING_MODES = (AttestationMode.NSM, AttestationMode.SIMULATED)
_HEX = re.compile(r"[0-9a-fA-F]*")
_ERROR_TYPE = "text/plain; charset=utf-8"


class AttestationRouteError(NoflylistError):
    """The route was set up wrongly, or a request's nonce is refused."""


class AttestationRoute:
    """The route handler: one fresh NSM document per request, bound to the list in service."""

    def __init__(
        self,
        module: SecureModule,
        holder: ListHolder,
        *,
        mode: AttestationMode,
        answer_key: AnswerKey | None = None,
    ) -> None:
        if mode not in ATTESTING_MODES:
            raise AttestationRouteError(
                f"the attestation route needs an NSM; mode '{mode}' has none "
                f"(use one of {', '.join(ATTESTING_MODES)})"
            )
        self._module = module
        self._holder = holder
        self._mode = mode
        self._answer_key = None if answer_key is None else answer_key.public_raw

    def __call__(self, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> RouteResponse:
        """A :data:`noflylist.routes.RouteHandler`: 200 with the document, 400 for a bad
        nonce, 503 if the NSM fails. ``headers`` has lower-case names, as the server gives."""
        mode_header = {MODE_HEADER: str(self._mode)}
        try:
            nonce = _nonce(query)
        except AttestationRouteError as exc:
            return RouteResponse(400, _ERROR_TYPE, f"{exc}\n".encode(), mode_header)
        current = self._holder.current  # one read: the list may be swapped concurrently
        served = ServedList(
            envelope_sha256=None if current is None else current.envelope_sha256,
            serial=None if current is None else current.serial,
            version=__version__,
            answer_key=self._answer_key,
            clients_sha256=None if current is None or current.clients is None
            else current.clients.sha256,
        )
        try:
            document = self._module.attestation(nonce=nonce, user_data=encode_user_data(served))
        except NoflylistError as exc:
            _log.error("attestation document unavailable: %s", exc)
            reason = f"the NSM could not produce an attestation document: {exc}; retry later\n"
            return RouteResponse(503, _ERROR_TYPE, reason.encode(), mode_header)
        if _wants_text(headers):
            return RouteResponse(200, TEXT_TYPE, base64.b64encode(document) + b"\n", mode_header)
        return RouteResponse(200, CBOR_TYPE, document, mode_header)


def _nonce(query: Mapping[str, list[str]]) -> bytes:
    """Exactly one ``nonce`` of 8 to 64 bytes in hex, and no other parameter (never echoed)."""
    if set(query) - {"nonce"}:
        raise AttestationRouteError("only the query parameter nonce is accepted")
    values = query.get("nonce", [])
    if len(values) != 1:
        raise AttestationRouteError(
            "give exactly one nonce: ?nonce=<16 to 128 hex characters> (8 to 64 random bytes)"
        )
    text = values[0]
    if not _HEX.fullmatch(text) or len(text) % 2:
        raise AttestationRouteError("the nonce must be an even number of hex characters")
    if not MIN_NONCE_BYTES <= len(text) // 2 <= MAX_NONCE_BYTES:
        raise AttestationRouteError(
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
