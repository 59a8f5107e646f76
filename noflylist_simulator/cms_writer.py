"""Write CMS EnvelopedData the way AWS KMS writes ``CiphertextForRecipient`` (test/dev only).

A simulated KMS uses this to answer ``Decrypt`` with a ``Recipient`` so the enclave's real
CMS code path (``enclave.cms``) runs in tests and local development. It is never part of
the production image. The layout matches KMS's byte for byte apart from the random parts:
BER with indefinite lengths on the outer structures, a definite-length RecipientInfo, the
rid as ``[0]`` SHA-256 subjectKeyIdentifier, RSAES-OAEP with SHA-256 / MGF1-SHA-256 and
NULL hash parameters, AES-256-CBC with a fresh random key and IV.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from enclave.cms import (
    AES256_KEY_BYTES,
    AES_BLOCK_BYTES,
    ENVELOPED_DATA_VERSION,
    KEY_TRANS_VERSION,
    OID_AES256_CBC,
    OID_DATA,
    OID_ENVELOPED_DATA,
    OID_MGF1,
    OID_RSAES_OAEP,
    OID_SHA256,
    subject_key_identifier,
)

__all__ = ["encode_enveloped_data"]

# Identifier octets (X.690 section 8.1.2).
_INTEGER = 0x02
_OCTET_STRING = 0x04
_NULL = 0x05
_OID = 0x06
_SEQUENCE = 0x30
_SET = 0x31
_CONTEXT_0_PRIMITIVE = 0x80
_CONTEXT_0_CONSTRUCTED = 0xA0
_CONTEXT_1_CONSTRUCTED = 0xA1
_END_OF_CONTENTS = b"\x00\x00"


def encode_enveloped_data(
    plaintext: bytes, recipient_public_key: RSAPublicKey, *, chunk_size: int | None = None
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient_public_key`` as KMS's ContentInfo (RFC 5652).

    With ``chunk_size`` the encryptedContent ``[0]`` is constructed from OCTET STRING
    segments of that many bytes (as streaming producers write it); without, it is primitive.
    A ``chunk_size`` below 1 is a programming error and raises ``ValueError``.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    content_key = os.urandom(AES256_KEY_BYTES)
    iv = os.urandom(AES_BLOCK_BYTES)
    padder = PKCS7(AES_BLOCK_BYTES * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES256(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    encrypted_key = recipient_public_key.encrypt(content_key, oaep)

    recipient_info = _definite(
        _SEQUENCE,
        _integer(KEY_TRANS_VERSION),
        _definite(_CONTEXT_0_PRIMITIVE, subject_key_identifier(recipient_public_key)),
        _rsaes_oaep_sha256(),
        _definite(_OCTET_STRING, encrypted_key),
    )
    if chunk_size is None:
        content = _definite(_CONTEXT_0_PRIMITIVE, ciphertext)
    else:
        chunks = range(0, len(ciphertext), chunk_size)
        content = _indefinite(
            _CONTEXT_0_CONSTRUCTED,
            *(_definite(_OCTET_STRING, ciphertext[i : i + chunk_size]) for i in chunks),
        )
    encrypted_content_info = _indefinite(
        _SEQUENCE,
        _oid(OID_DATA),
        _definite(_SEQUENCE, _oid(OID_AES256_CBC), _definite(_OCTET_STRING, iv)),
        content,
    )
    enveloped_data = _indefinite(
        _SEQUENCE,
        _integer(ENVELOPED_DATA_VERSION),
        _definite(_SET, recipient_info),
        encrypted_content_info,
    )
    return _indefinite(
        _SEQUENCE,
        _oid(OID_ENVELOPED_DATA),
        _indefinite(_CONTEXT_0_CONSTRUCTED, enveloped_data),
    )


def _rsaes_oaep_sha256() -> bytes:
    """RSAES-OAEP AlgorithmIdentifier with SHA-256 and MGF1-SHA-256 (RFC 4055 section 4.1)."""
    sha256 = _definite(_SEQUENCE, _oid(OID_SHA256), _definite(_NULL, b""))
    params = _definite(
        _SEQUENCE,
        _definite(_CONTEXT_0_CONSTRUCTED, sha256),
        _definite(_CONTEXT_1_CONSTRUCTED, _definite(_SEQUENCE, _oid(OID_MGF1), sha256)),
    )
    return _definite(_SEQUENCE, _oid(OID_RSAES_OAEP), params)


def _definite(identifier: int, *parts: bytes) -> bytes:
    """One value with a minimal definite length (X.690 section 8.1.3.3 and 8.1.3.5)."""
    content = b"".join(parts)
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([identifier]) + length + content


def _indefinite(identifier: int, *parts: bytes) -> bytes:
    """One constructed value with indefinite length, closed by 00 00 (X.690 8.1.3.6)."""
    return bytes([identifier, 0x80]) + b"".join(parts) + _END_OF_CONTENTS


def _integer(value: int) -> bytes:
    """A small non-negative INTEGER (CMS version numbers)."""
    return _definite(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from dotted text (X.690 section 8.19)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    content = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        septets = [arc & 0x7F]
        arc >>= 7
        while arc:
            septets.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content += bytes(reversed(septets))
    return _definite(_OID, bytes(content))
