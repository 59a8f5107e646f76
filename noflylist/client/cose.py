"""COSE_Sign1 (RFC 9052) with ES384 (RFC 9053), the envelope of a Nitro attestation document.

Only what the Nitro Security Module emits is supported: a single signer, an attached
payload, and ECDSA over P-384 with SHA-384. Anything else is refused, not half-handled.
Every failure raises :class:`COSEError`; no other exception escapes for any input bytes:
:func:`decode_sign1` and :func:`verify_es384` turn any exception no check foresaw into one
(see :func:`_unexpected`). Messages name header labels only when they are integers (the
registered ones are), never text or bytes taken from the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave.cbor import CBORError, CBORValue, Tag, decode, encode
from enclave.errors import NoflylistError

__all__ = [
    "ALG_ES384",
    "HEADER_ALG",
    "P384_SCALAR_BYTES",
    "COSEError",
    "Sign1",
    "decode_sign1",
    "encode_sign1",
    "sig_structure",
    "verify_es384",
]

#: CBOR tag that marks a COSE_Sign1 (RFC 9052 §2, Table 1); the NSM omits it.
_TAG_SIGN1 = 18
#: Header label of the algorithm parameter (RFC 9052 §3.1, Table 2).
HEADER_ALG = 1
#: Algorithm identifier of ECDSA with SHA-384 (RFC 9053 §2.1, Table 1).
ALG_ES384 = -35
#: Bytes of each of r and s for P-384 (RFC 9053 §2.1: padded to the key size, 384 bits).
P384_SCALAR_BYTES = 48
#: Context string of a single-signer Sig_structure (RFC 9052 §4.4).
_CONTEXT_SIGNATURE1 = "Signature1"


class COSEError(NoflylistError):
    """A COSE_Sign1 structure is malformed, unsupported, or its signature does not verify."""


def _unexpected(exc: Exception, step: str) -> COSEError:
    """The boundary's error: the exception's type only, as its message could quote input."""
    return COSEError(
        f"COSE_Sign1 refused: {type(exc).__name__} while {step}, a failure this module has no "
        "specific message for"
    )


def _check_header_map(value: CBORValue, bucket: str) -> Mapping[CBORValue, CBORValue]:
    """Return ``value`` as a read-only header map; labels are int or text (RFC 9052 §3)."""
    if not isinstance(value, dict):
        raise COSEError(f"COSE_Sign1 {bucket} header is not a map; it must be a CBOR map")
    for label in value:
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise COSEError(
                f"COSE_Sign1 {bucket} header has a label that is neither integer nor text "
                "(RFC 9052 §3 allows only those)"
            )
    return MappingProxyType(dict(value))


def _decode_protected(protected: bytes) -> Mapping[CBORValue, CBORValue]:
    """Decode the serialized protected bucket; a zero-length string means no headers (§3)."""
    if protected == b"":
        return MappingProxyType({})
    try:
        value = decode(protected)
    except CBORError as exc:
        raise COSEError(f"COSE_Sign1 protected header is not valid CBOR: {exc}") from exc
    return _check_header_map(value, "protected")


@dataclass(frozen=True)
class Sign1:
    """A decoded COSE_Sign1 message (RFC 9052 §4.2) with an attached payload.

    ``protected`` keeps the exact serialized bytes because the signature covers them, not
    their decoded meaning; ``protected_header`` is the decoded map, checked on construction.
    """

    protected: bytes
    unprotected: Mapping[CBORValue, CBORValue]
    payload: bytes
    signature: bytes
    protected_header: Mapping[CBORValue, CBORValue] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("protected", "payload", "signature"):
            if not isinstance(getattr(self, name), bytes):
                raise COSEError(f"COSE_Sign1 {name} must be a byte string")
        if not isinstance(self.unprotected, Mapping):
            raise COSEError("COSE_Sign1 unprotected header is not a map; it must be a CBOR map")
        protected_header = _decode_protected(self.protected)
        unprotected = _check_header_map(dict(self.unprotected), "unprotected")
        # RFC 9052 §3: a label must not appear in both buckets.
        shared = set(protected_header) & set(unprotected)
        if shared:
            raise COSEError(
                f"COSE_Sign1 has {len(shared)} header label(s) in both the protected and "
                "unprotected buckets; RFC 9052 §3 forbids this"
            )
        object.__setattr__(self, "unprotected", unprotected)
        object.__setattr__(self, "protected_header", protected_header)


def decode_sign1(data: bytes) -> Sign1:
    """Parse a COSE_Sign1 message, tagged with 18 or untagged (real Nitro documents are untagged).

    RFC 9052 §4.2: ``[protected: bstr, unprotected: map, payload: bstr / nil, signature: bstr]``.
    A detached (nil) payload is refused: nothing here supplies one from elsewhere.
    """
    try:
        return _decode_sign1(data)
    except COSEError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only COSEError leaves
        raise _unexpected(exc, "decoding") from None


def _decode_sign1(data: bytes) -> Sign1:
    try:
        item = decode(data)
    except CBORError as exc:
        raise COSEError(f"COSE_Sign1 is not valid CBOR: {exc}") from exc
    if isinstance(item, Tag):
        if item.number != _TAG_SIGN1:
            raise COSEError(
                f"COSE message carries CBOR tag {item.number}; only COSE_Sign1 (tag 18) "
                "or an untagged COSE_Sign1 is accepted"
            )
        item = item.value
    if not isinstance(item, list) or len(item) != 4:
        raise COSEError("COSE_Sign1 must be a CBOR array of 4 items (RFC 9052 §4.2)")
    protected, unprotected, payload, signature = item
    if payload is None:
        raise COSEError(
            "COSE_Sign1 has a detached (nil) payload; only attached payloads are supported"
        )
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise COSEError("COSE_Sign1 protected header and payload must be byte strings")
    if not isinstance(signature, bytes):
        raise COSEError("COSE_Sign1 signature must be a byte string")
    if not isinstance(unprotected, dict):
        raise COSEError("COSE_Sign1 unprotected header is not a map; it must be a CBOR map")
    return Sign1(protected, unprotected, payload, signature)


def encode_sign1(
    protected: bytes,
    unprotected: dict[CBORValue, CBORValue],
    payload: bytes,
    signature: bytes,
    *,
    tagged: bool = False,
) -> bytes:
    """Serialize a COSE_Sign1 message; the same checks as decoding apply to the parts."""
    message = Sign1(protected, unprotected, payload, signature)
    array: list[CBORValue] = [
        message.protected,
        dict(message.unprotected),
        message.payload,
        message.signature,
    ]
    try:
        return encode(Tag(_TAG_SIGN1, array) if tagged else array)
    except CBORError as exc:
        raise COSEError(f"COSE_Sign1 cannot be encoded: {exc}") from exc


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Build the bytes a COSE_Sign1 signature covers (RFC 9052 §4.4).

    ``["Signature1", body_protected, external_aad, payload]``: the protected bucket goes in
    exactly as serialized, and the unprotected bucket is not covered at all.
    """
    try:
        return encode([_CONTEXT_SIGNATURE1, protected, external_aad, payload])
    except CBORError as exc:
        raise COSEError(f"Sig_structure cannot be encoded: {exc}") from exc


def _der_signature(raw: bytes) -> bytes:
    """Turn COSE's fixed-width ``r || s`` (RFC 9053 §2.1) into the DER form OpenSSL verifies."""
    if len(raw) != 2 * P384_SCALAR_BYTES:
        raise COSEError(
            f"ES384 signature is {len(raw)} bytes; RFC 9053 §2.1 requires r||s of "
            f"{2 * P384_SCALAR_BYTES} bytes"
        )
    r = int.from_bytes(raw[:P384_SCALAR_BYTES], "big")
    s = int.from_bytes(raw[P384_SCALAR_BYTES:], "big")
    return encode_dss_signature(r, s)


def verify_es384(sign1: Sign1, public_key: ec.EllipticCurvePublicKey) -> None:
    """Check ``sign1``'s ES384 signature with ``public_key``; return only if it is valid.

    The protected header must name ES384 and the key must be on P-384: RFC 9053 §2.1 lets a
    verifier pair SHA-384 with other curves, we do not, so a weaker key cannot stand in.
    """
    try:
        _verify_es384(sign1, public_key)
    except COSEError:
        raise
    except Exception as exc:  # the boundary, as in decode_sign1
        raise _unexpected(exc, "verifying the signature") from None


def _verify_es384(sign1: Sign1, public_key: ec.EllipticCurvePublicKey) -> None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP384R1
    ):
        raise COSEError("ES384 needs a P-384 (secp384r1) public key; this key is another type")
    alg = sign1.protected_header.get(HEADER_ALG)
    if type(alg) is not int or alg != ALG_ES384:
        named = f"algorithm {alg}" if type(alg) is int else "no integer algorithm"
        raise COSEError(
            f"COSE_Sign1 protected header names {named}; only ES384 ({ALG_ES384}) "
            "is supported"
        )
    signature = _der_signature(sign1.signature)
    message = sig_structure(sign1.protected, sign1.payload)
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise COSEError(
            "COSE_Sign1 ES384 signature does not verify with the given key: the message was "
            "altered or signed by another key"
        ) from None
