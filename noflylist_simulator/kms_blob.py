"""The local KMS's ciphertext blob, with the encryption context bound into its AES-GCM tag.

The blob is the simulator's own format (real KMS blobs are opaque too)::

    offset  size    field
    0       1       version, 0x01
    1       36      key id: the key's UUID as lower-case ASCII
    37      12      AES-GCM nonce, random
    49      n + 16  AES-256-GCM ciphertext of the n-byte plaintext, then the tag

The associated data is bytes 0 to 36 followed by :func:`canonical_context`, so a blob opens
only under the key it names and with the encryption context it was sealed with.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from noflylist_simulator.kms_errors import fault

__all__ = ["BLOB_VERSION", "blob_key_id", "canonical_context", "seal", "unseal"]

#: The blob format above.
BLOB_VERSION = 1
_KEY_ID_CHARS = 36
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + _KEY_ID_CHARS


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The context as pairs sorted by key, each part preceded by its 4-byte length, so no two
    contexts encode alike and the order a client sends them in does not matter."""
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = len(pairs).to_bytes(4, "big")
    for key, value in pairs:
        out += len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value
    return out


def seal(key_id: str, material: bytes, plaintext: bytes, context: Mapping[str, str]) -> bytes:
    """A new blob of ``plaintext`` under the key ``key_id`` (a UUID) of AES-256 ``material``."""
    header = bytes([BLOB_VERSION]) + key_id.encode("ascii")
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + nonce + sealed


def blob_key_id(blob: bytes) -> str:
    """The key id a blob names, after checking its version and length."""
    if len(blob) < _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES or blob[0] != BLOB_VERSION:
        raise fault("InvalidCiphertextException", "The ciphertext is not a local KMS blob.")
    key_id = blob[1:_HEADER_BYTES].decode("ascii", errors="replace")
    try:
        if str(uuid.UUID(key_id)) == key_id:
            return key_id
    except ValueError:
        pass
    raise fault("InvalidCiphertextException", "The ciphertext names no valid key id.")


def unseal(material: bytes, blob: bytes, context: Mapping[str, str]) -> bytes:
    """Open a blob that :func:`blob_key_id` accepted, with the material of the key it names."""
    nonce = blob[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
    sealed = blob[_HEADER_BYTES + _NONCE_BYTES :]
    try:
        aad = blob[:_HEADER_BYTES] + canonical_context(context)
        return AESGCM(material).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise fault(
            "InvalidCiphertextException",
            "The ciphertext is corrupted or the encryption context differs from the one it "
            "was encrypted with.",
        ) from None
