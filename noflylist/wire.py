"""The wire format the service shares with its clients; it imports nothing of the server.

Everything a client (``noflylist check``, :mod:`noflylist.client`, a client in another
language) must agree on with the service, in one place:

* the paths of the routes (:data:`PASSENGER_PATH`, :data:`SCREEN_PATH`,
  :data:`ATTESTATION_PATH`) and the attestation route's nonce size and media types;
* the ``X-Noflylist-Attestation`` header (:data:`MODE_HEADER`): ``nsm`` or ``simulated``, a
  courtesy to honest clients; what a document proves depends only on the root it is
  verified against;
* ``user_data``, the small CBOR map bound into every attestation document the service hands
  out (:func:`encode_user_data`, :func:`decode_user_data`)::

    {"envelope_sha256": bytes(32) | null, "serial": int | null, "version": "<noflylist version>",
     "answer_key": bytes(32), "clients_sha256": bytes(32) | null}

  taken from the list in service at the moment of the request (``null`` while none is
  loaded). The serial says which list is served (a client can refuse an older one), the
  digest which envelope exactly; neither says anything about the names in it.
  ``answer_key`` is the raw Ed25519 public key (RFC 8032) of the key the service made at
  start and signs answers with; a map without it (a service before signed answers) still
  decodes, with ``answer_key`` ``None``, and a client that wants signed answers refuses it;
  ``clients_sha256`` is the SHA-256 of the client policy sealed with the list in service
  (:mod:`noflylist.clients`: who may ask, and how much), ``null`` when the list is served
  open (anyone who reaches the port may ask); a map without it (a service before client
  policies, which served every list open) decodes with ``clients_sha256`` ``None`` too;
* signed answers (:mod:`noflylist.answer_format`: the statement a signature covers, and the
  ``Noflylist-Nonce``/``Noflylist-Statement``/``Noflylist-Signature`` headers).

Only the standard library and :mod:`enclave.cbor` (which a client needs to read documents
anyway); the service imports this module, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave import cbor
from enclave.errors import NoflylistError

__all__ = [
    "ANSWER_KEY_BYTES",
    "ATTESTATION_PATH",
    "CBOR_TYPE",
    "MAX_NONCE_BYTES",
    "MIN_NONCE_BYTES",
    "MODE_HEADER",
    "PASSENGER_PATH",
    "SCREEN_PATH",
    "TEXT_TYPE",
    "ServedList",
    "UserDataError",
    "decode_user_data",
    "encode_user_data",
]

#: One name, the public demo's plain-text answer.
PASSENGER_PATH = "/enclave/passenger"
#: A manifest, ``{"names": [...]}``, a JSON answer per name.
SCREEN_PATH = "/v1/screen"
#: A fresh attestation document, ``?nonce=HEX``.
ATTESTATION_PATH = "/enclave/attestation"
#: Response header naming the kind of NSM that signed the document.
MODE_HEADER = "X-Noflylist-Attestation"
#: A nonce shorter than 8 bytes could repeat; 64 is plenty and keeps the query short.
MIN_NONCE_BYTES = 8
MAX_NONCE_BYTES = 64
#: RFC 8949 §9.5: the media type of a CBOR data item.
CBOR_TYPE = "application/cbor"
#: The document as base64 text, for terminals and ``curl``.
TEXT_TYPE = "text/plain; charset=us-ascii"
#: The largest serial an envelope may carry: JSON's exact integers (the envelope's
#: ``MAX_COUNT`` is this).
MAX_SERIAL = 2**53 - 1
#: ``envelope_sha256`` is a SHA-256 digest.
_DIGEST_BYTES = 32
#: The version string is short ("0.1.0"); anything much longer is not ours.
_MAX_VERSION_CHARS = 64
#: The map holds five entries (eleven data items); the cap bounds decoding a hostile
#: ``user_data``.
_MAX_USER_DATA_ITEMS = 11
_USER_DATA_KEYS = ("envelope_sha256", "serial", "version")
_ANSWER_KEY = "answer_key"
_CLIENTS = "clients_sha256"
_OPTIONAL_KEYS = frozenset({_ANSWER_KEY, _CLIENTS})
#: A raw Ed25519 public key (RFC 8032 section 5.1.5).
ANSWER_KEY_BYTES = 32


class UserDataError(NoflylistError):
    """``user_data`` is not the map this service writes."""


@dataclass(frozen=True)
class ServedList:
    """What the service declares it serves, as bound into ``user_data``."""

    envelope_sha256: bytes | None
    serial: int | None
    version: str
    #: The raw Ed25519 public key answers are signed with; ``None`` only when decoded from a
    #: service that signs no answers (the service always binds one).
    answer_key: bytes | None = None
    #: The SHA-256 of the sealed client policy; ``None`` when the list is served open.
    clients_sha256: bytes | None = None


def encode_user_data(served: ServedList) -> bytes:
    """The CBOR map of the module docstring, keys in that order (``answer_key`` when set)."""
    value: dict[cbor.CBORValue, cbor.CBORValue] = {
        "envelope_sha256": served.envelope_sha256,
        "serial": served.serial,
        "version": served.version,
    }
    if served.answer_key is not None:
        if len(served.answer_key) != ANSWER_KEY_BYTES:
            raise UserDataError("answer_key is not a 32-byte Ed25519 public key")
        value[_ANSWER_KEY] = served.answer_key
    if served.clients_sha256 is not None and len(served.clients_sha256) != _DIGEST_BYTES:
        raise UserDataError("clients_sha256 is not a 32-byte SHA-256 digest")
    value[_CLIENTS] = served.clients_sha256
    return cbor.encode(value)


def decode_user_data(data: bytes) -> ServedList:
    """Parse ``user_data`` strictly: exactly the keys above, each with its type and size.

    ``noflylist check`` reads it from the service it is checking, so this is a boundary: any
    exception no check foresaw becomes an :class:`UserDataError` naming its type.
    """
    try:
        return _decode_user_data(data)
    except UserDataError:
        raise
    except Exception as exc:
        raise UserDataError(
            f"user_data could not be read ({type(exc).__name__})"
        ) from None


def _decode_user_data(data: bytes) -> ServedList:
    try:
        value = cbor.decode(data, max_depth=2, max_items=_MAX_USER_DATA_ITEMS)
    except cbor.CBORError as exc:
        raise UserDataError(f"user_data is not CBOR: {exc}") from None
    if not isinstance(value, dict) or set(value) - _OPTIONAL_KEYS != set(_USER_DATA_KEYS):
        raise UserDataError(
            "user_data is not a noflylist map with exactly the keys "
            f"{', '.join(_USER_DATA_KEYS)} (and {_ANSWER_KEY}, {_CLIENTS})"
        )
    digest, serial, version = (value[key] for key in _USER_DATA_KEYS)
    if digest is not None and (not isinstance(digest, bytes) or len(digest) != _DIGEST_BYTES):
        raise UserDataError("user_data envelope_sha256 is not 32 bytes or null")
    if serial is not None and (type(serial) is not int or not 0 <= serial <= MAX_SERIAL):
        raise UserDataError(
            f"user_data serial is not an integer in 0..{MAX_SERIAL} (an envelope serial) or null"
        )
    if not isinstance(version, str) or not 0 < len(version) <= _MAX_VERSION_CHARS:
        raise UserDataError("user_data version is not short text")
    answer_key = value.get(_ANSWER_KEY)
    if answer_key is not None and (
        not isinstance(answer_key, bytes) or len(answer_key) != ANSWER_KEY_BYTES
    ):
        raise UserDataError("user_data answer_key is not a 32-byte Ed25519 public key")
    if _ANSWER_KEY in value and answer_key is None:
        raise UserDataError("user_data answer_key is null (a service always binds its key)")
    clients = value.get(_CLIENTS)
    if clients is not None and (not isinstance(clients, bytes) or len(clients) != _DIGEST_BYTES):
        raise UserDataError("user_data clients_sha256 is not 32 bytes or null")
    return ServedList(digest, serial, version, answer_key, clients)
