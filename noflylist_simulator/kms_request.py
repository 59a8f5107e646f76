"""The fields of a local KMS request, checked: strict, bounded, and refused with KMS's codes.

A request is a JSON object from an authenticated but untrusted client. Each function here
reads one field, checks its type and size against the API's limits, and returns it or raises
:class:`~noflylist_simulator.kms_errors.LocalKMSError` (``ValidationException`` or
``SerializationException``, as KMS answers). The ``Recipient`` field is checked furthest: its
attestation document is verified against the simulator's root (:func:`recipient_field`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from enclave.kms import RECIPIENT_ALGORITHM
from noflylist.client import attestation
from noflylist.tools.policy import MAX_POLICY_BYTES
from noflylist_simulator.kms_errors import fault

__all__ = [
    "MAX_CIPHERTEXT_BLOB",
    "MAX_PLAINTEXT",
    "Recipient",
    "blob_field",
    "context_field",
    "count_field",
    "recipient_field",
    "text_field",
]

#: API limits (AWS KMS API Reference): Plaintext, CiphertextBlob, NumberOfBytes, document.
MAX_PLAINTEXT = 4096
MAX_CIPHERTEXT_BLOB = 6144
MAX_RANDOM_BYTES = 1024
MAX_DOCUMENT_BYTES = 262144
#: Bound on the encryption context: all keys and values together, in UTF-8.
MAX_CONTEXT_BYTES = 8192
#: Longest string field accepted: a key policy, the longest, is at most this.
MAX_TEXT_CHARS = MAX_POLICY_BYTES
#: KMS requires RSA keys of at least this size for a Recipient.
MIN_RECIPIENT_RSA_BITS = 2048


def text_field(request: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    """A non-empty string of at most :data:`MAX_TEXT_CHARS`; ``None`` if optional and absent."""
    value = request.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS:
        raise fault("ValidationException", f"{name} must be a non-empty string.")
    return value


def blob_field(request: Mapping[str, Any], name: str, limit: int) -> bytes:
    """A base64 field (the JSON protocol's form of bytes), decoded: 1 to ``limit`` bytes."""
    value = request.get(name)
    if not isinstance(value, str):
        raise fault("ValidationException", f"{name} is required (base64).")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise fault("SerializationException", f"{name} is not valid base64.") from None
    if not 1 <= len(data) <= limit:
        raise fault("ValidationException", f"{name} must be 1 to {limit} bytes long.")
    return data


def context_field(request: Mapping[str, Any]) -> dict[str, str]:
    """``EncryptionContext``: strings to strings (no empty key), empty if absent, bounded."""
    context = request.get("EncryptionContext", {})
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in context.items()
    ):
        raise fault("ValidationException", "EncryptionContext must map strings to strings.")
    try:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in context.items())
    except UnicodeEncodeError:
        raise fault("ValidationException", "EncryptionContext is not valid Unicode.") from None
    if size > MAX_CONTEXT_BYTES:
        raise fault("ValidationException", f"EncryptionContext exceeds {MAX_CONTEXT_BYTES} bytes.")
    return context


def count_field(value: object) -> int:
    """``NumberOfBytes``: an integer (not a boolean) from 1 to :data:`MAX_RANDOM_BYTES`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fault("ValidationException", "NumberOfBytes must be an integer.")
    if not 1 <= value <= MAX_RANDOM_BYTES:
        raise fault("ValidationException", f"NumberOfBytes must be 1 to {MAX_RANDOM_BYTES}.")
    return value


@dataclass(frozen=True)
class Recipient:
    """A verified Recipient: the key to encrypt the answer for, and the document's PCRs."""

    public_key: RSAPublicKey
    pcrs: Mapping[int, bytes]


def recipient_field(request: Mapping[str, Any], root: x509.Certificate) -> Recipient | None:
    """Verify a Recipient's document against the simulator's root.

    Syntax and signature failures are ValidationException: AWS documents no code for
    them, and KMS uses ValidationException for a parameter it cannot accept. Measurements
    are judged later, by the key policy, as AccessDeniedException (as in real KMS).
    Debug-mode documents are accepted here for the same reason: the policy decides.
    """
    recipient = request.get("Recipient")
    if recipient is None:
        return None
    if not isinstance(recipient, dict):
        raise fault("ValidationException", "Recipient must be an object.")
    if recipient.get("KeyEncryptionAlgorithm") != RECIPIENT_ALGORITHM:
        raise fault("ValidationException", "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256.")
    document = blob_field(recipient, "AttestationDocument", MAX_DOCUMENT_BYTES)
    try:
        verified = attestation.verify(document, unsafe_root=root, unsafe_allow_debug=True)
    except attestation.AttestationError as exc:
        raise fault("ValidationException", f"Invalid attestation document: {exc}") from None
    if verified.public_key is None:
        raise fault("ValidationException", "The attestation document has no public_key.")
    try:
        public_key = load_der_public_key(verified.public_key)
    except (ValueError, TypeError):
        public_key = None
    if not isinstance(public_key, RSAPublicKey) or public_key.key_size < MIN_RECIPIENT_RSA_BITS:
        raise fault("ValidationException", "The document's public_key must be RSA-2048+.")
    return Recipient(public_key, verified.pcrs)
