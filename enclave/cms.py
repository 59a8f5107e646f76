"""Open the CMS EnvelopedData that AWS KMS returns as ``CiphertextForRecipient``.

When the enclave calls KMS ``Decrypt`` with a ``Recipient`` (an attestation document that
carries an ephemeral RSA public key), KMS does not return the plaintext. It returns a BER
``ContentInfo`` (RFC 5652) holding an ``EnvelopedData`` that only that RSA key opens:

- one ``KeyTransRecipientInfo`` whose ``rid`` is the SHA-256 of our SubjectPublicKeyInfo,
- the content key wrapped with RSAES-OAEP, SHA-256 and MGF1-SHA-256 (RFC 8017, RFC 4055),
- the plaintext encrypted with AES-256-CBC and PKCS#7 padding (RFC 3565).

This module accepts exactly that shape and nothing else. Structural problems are reported
specifically; every failure of the cryptography itself is one opaque error (see
:data:`DECRYPTION_FAILED`) so the caller cannot be turned into a padding oracle. The host
relays KMS's answer, so the bytes are hostile: both entry points raise only
:class:`CMSError`, turning any exception no check foresaw into one that names its type.

Callers must still use each ephemeral RSA key for one ``Decrypt`` answer only: CBC content
is not authenticated, so a host that could replay altered answers against the same key and
watch what the enclave does next could learn about the plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from enclave.ber import (
    CLASS_CONTEXT,
    CLASS_UNIVERSAL,
    TAG_NULL,
    TAG_SEQUENCE,
    TAG_SET,
    TLV,
    BERError,
    decode_integer,
    decode_octet_string,
    decode_oid,
)
from enclave.ber import decode as decode_ber
from enclave.errors import NoflylistError

__all__ = [
    "DECRYPTION_FAILED",
    "CMSError",
    "EnvelopedData",
    "decrypt_enveloped_data",
    "parse_enveloped_data",
    "subject_key_identifier",
]

# Object identifiers, dotted, with where each is defined.
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"  # RFC 5652 section 6.1
OID_DATA = "1.2.840.113549.1.7.1"  # RFC 5652 section 4
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"  # RFC 8017 appendix A.2.1
OID_MGF1 = "1.2.840.113549.1.1.8"  # RFC 8017 appendix B.2.1
OID_P_SPECIFIED = "1.2.840.113549.1.1.9"  # RFC 8017 appendix A.2.1 (the OAEP label)
OID_SHA256 = "2.16.840.1.101.3.4.2.1"  # RFC 5754 section 2.2
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"  # RFC 3565 section 4.1

#: KMS plaintexts are at most 4 KiB; 1 MiB bounds memory yet leaves room for test producers.
MAX_ENVELOPED_DATA_BYTES = 1 << 20
#: Nesting of KMS's EnvelopedData is 10 levels; a little room for BER's string segments.
MAX_BER_DEPTH = 16
#: Enough items for 1 MiB of content split into 4 KiB segments (as OpenSSL streams it).
MAX_BER_ITEMS = 1024
#: EnvelopedData and KeyTransRecipientInfo versions when the rid is a subjectKeyIdentifier.
ENVELOPED_DATA_VERSION = 2  # RFC 5652 section 6.1
KEY_TRANS_VERSION = 2  # RFC 5652 section 6.2.1
#: KMS names the recipient by SHA-256 of its SubjectPublicKeyInfo: 32 bytes.
SKI_BYTES = 32
#: RSA-OAEP ciphertext is the modulus size; 1024 bytes covers keys up to RSA-8192.
MAX_ENCRYPTED_KEY_BYTES = 1024
AES256_KEY_BYTES = 32
AES_BLOCK_BYTES = 16

#: The one message for every failure of key unwrap, content decryption or unpadding.
DECRYPTION_FAILED = (
    "CMS: could not decrypt the EnvelopedData (the key unwrap or the content decryption "
    "failed: wrong private key, or corrupted or altered data); request a fresh answer from KMS"
)


class CMSError(NoflylistError):
    """The CMS EnvelopedData is malformed, not addressed to us, or does not decrypt."""


@dataclass(frozen=True)
class EnvelopedData:
    """The fields of KMS's EnvelopedData that decryption needs, already checked."""

    recipient_key_id: bytes
    encrypted_key: bytes
    iv: bytes
    encrypted_content: bytes


def subject_key_identifier(public_key: RSAPublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: how KMS names the recipient in ``rid``."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def parse_enveloped_data(ber: bytes) -> EnvelopedData:
    """Decode and check KMS's ContentInfo; return the fields, or raise :class:`CMSError`."""
    try:
        return _parse(ber)
    except CMSError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only CMSError leaves
        # Only the type is named: a foreign message could quote the input.
        raise CMSError(
            f"CMS: malformed EnvelopedData ({type(exc).__name__}, a failure this parser has "
            "no specific message for); request a fresh answer from KMS"
        ) from None


def _parse(ber: bytes) -> EnvelopedData:
    if not isinstance(ber, bytes | bytearray | memoryview):
        raise CMSError(f"CMS: input must be bytes, not {type(ber).__name__}")
    if len(ber) > MAX_ENVELOPED_DATA_BYTES:
        raise CMSError(
            f"CMS: input of {len(ber)} bytes exceeds {MAX_ENVELOPED_DATA_BYTES}; "
            "KMS answers are far smaller, so this is not one"
        )
    try:
        root = decode_ber(ber, max_depth=MAX_BER_DEPTH, max_items=MAX_BER_ITEMS)
        enveloped = _content_info(root)
        recipient, encrypted_content_info = _enveloped_data(enveloped)
        key_id, encrypted_key = _key_trans_recipient_info(recipient)
        iv, encrypted_content = _encrypted_content_info(encrypted_content_info)
    except BERError as exc:
        raise CMSError(f"CMS: malformed EnvelopedData ({exc})") from None
    return EnvelopedData(key_id, encrypted_key, iv, encrypted_content)


def decrypt_enveloped_data(ber: bytes, private_key: RSAPrivateKey) -> bytes:
    """Open KMS's ``CiphertextForRecipient`` with our ephemeral RSA key; return the plaintext.

    Steps of RFC 5652 section 6.4 for key transport: find our RecipientInfo, unwrap the
    content-encryption key with RSAES-OAEP, decrypt the content with it.
    """
    parsed = parse_enveloped_data(ber)
    ours = subject_key_identifier(private_key.public_key())
    if not hmac.compare_digest(parsed.recipient_key_id, ours):
        raise CMSError(
            "CMS: the EnvelopedData is addressed to another key (recipient subjectKeyIdentifier "
            f"{parsed.recipient_key_id.hex()}, ours {ours.hex()}); was the Recipient attestation "
            "made with this enclave's current RSA key?"
        )
    try:
        content_key = _unwrap_content_key(parsed.encrypted_key, private_key)
        return _decrypt_content(content_key, parsed.iv, parsed.encrypted_content)
    except Exception:  # every failure here, foreseen (ValueError) or not, is the one opaque
        # error, so that no failure can be told from another (no padding oracle)
        raise CMSError(DECRYPTION_FAILED) from None


# --- RFC 5652 structures, outermost first ---------------------------------------------------


def _content_info(root: TLV) -> TLV:
    """RFC 5652 section 3: ContentInfo ::= SEQUENCE { contentType, content [0] EXPLICIT }."""
    fields = _sequence(root, "ContentInfo", 2, 2)
    if decode_oid(fields[0]) != OID_ENVELOPED_DATA:
        raise CMSError("CMS: ContentInfo does not hold EnvelopedData (1.2.840.113549.1.7.3)")
    wrapper = fields[1]
    if not (wrapper.is_tag(CLASS_CONTEXT, 0) and wrapper.constructed) or len(wrapper.children) != 1:
        raise CMSError("CMS: ContentInfo.content must be [0] EXPLICIT holding one value")
    return wrapper.children[0]


def _enveloped_data(node: TLV) -> tuple[TLV, TLV]:
    """RFC 5652 section 6.1: EnvelopedData; return the one RecipientInfo and the content.

    EnvelopedData ::= SEQUENCE { version, originatorInfo [0] OPTIONAL, recipientInfos SET,
    encryptedContentInfo, unprotectedAttrs [1] OPTIONAL }. KMS sends neither option.
    """
    fields = _sequence(node, "EnvelopedData", 3, 5)
    if fields[1].is_tag(CLASS_CONTEXT, 0):
        raise CMSError("CMS: EnvelopedData has originatorInfo, which KMS never sends; refused")
    if len(fields) != 3:
        raise CMSError(
            "CMS: EnvelopedData has fields after encryptedContentInfo (unprotectedAttrs?), "
            "which KMS never sends; refused"
        )
    _expect_version(fields[0], ENVELOPED_DATA_VERSION, "EnvelopedData")
    recipient_infos = fields[1]
    if not (recipient_infos.is_tag(CLASS_UNIVERSAL, TAG_SET) and recipient_infos.constructed):
        raise CMSError("CMS: EnvelopedData.recipientInfos must be a SET")
    if len(recipient_infos.children) != 1:
        raise CMSError(
            f"CMS: expected exactly one RecipientInfo, found {len(recipient_infos.children)}; "
            "KMS addresses its answer to the one enclave key"
        )
    return recipient_infos.children[0], fields[2]


def _key_trans_recipient_info(node: TLV) -> tuple[bytes, bytes]:
    """RFC 5652 section 6.2.1: KeyTransRecipientInfo; return (rid SKI, encryptedKey).

    KeyTransRecipientInfo ::= SEQUENCE { version, rid, keyEncryptionAlgorithm, encryptedKey };
    other RecipientInfo choices are context-tagged and refused here.
    """
    fields = _sequence(node, "RecipientInfo (only KeyTransRecipientInfo is accepted)", 4, 4)
    _expect_version(fields[0], KEY_TRANS_VERSION, "KeyTransRecipientInfo")
    rid = fields[1]
    if not rid.is_tag(CLASS_CONTEXT, 0):
        raise CMSError("CMS: rid must be [0] subjectKeyIdentifier, not issuerAndSerialNumber")
    key_id = decode_octet_string(rid, tag_class=CLASS_CONTEXT, tag_number=0)
    if len(key_id) != SKI_BYTES:
        raise CMSError(f"CMS: rid must be a {SKI_BYTES}-byte SHA-256 key id, got {len(key_id)}")
    _rsaes_oaep_sha256(fields[2])
    encrypted_key = decode_octet_string(fields[3])
    if not 0 < len(encrypted_key) <= MAX_ENCRYPTED_KEY_BYTES:
        raise CMSError(
            f"CMS: encryptedKey of {len(encrypted_key)} bytes; an RSA-OAEP ciphertext "
            f"is 1 to {MAX_ENCRYPTED_KEY_BYTES} bytes"
        )
    return key_id, encrypted_key


def _rsaes_oaep_sha256(algorithm: TLV) -> None:
    """RFC 8017 appendix A.2.1 / RFC 4055 section 4.1: require OAEP with SHA-256 everywhere.

    RSAES-OAEP-params ::= SEQUENCE { hashAlgorithm [0] DEFAULT sha1, maskGenAlgorithm [1]
    DEFAULT mgf1SHA1, pSourceAlgorithm [2] DEFAULT pSpecifiedEmpty }. Absent fields mean
    SHA-1, so the hash and the mask generation function must both be present.
    """
    oid, params = _algorithm_identifier(algorithm, "keyEncryptionAlgorithm")
    if oid != OID_RSAES_OAEP:
        raise CMSError(f"CMS: key encryption algorithm {oid} refused; KMS uses RSAES-OAEP")
    if params is None:
        raise CMSError("CMS: RSAES-OAEP without parameters means SHA-1; SHA-256 is required")
    fields = _sequence(params, "RSAES-OAEP-params", 0, 3)
    explicit: dict[int, TLV] = {}
    for field in fields:
        if field.tag_class != CLASS_CONTEXT or not field.constructed or len(field.children) != 1:
            raise CMSError("CMS: RSAES-OAEP-params fields must be [0], [1], [2] EXPLICIT")
        if field.tag_number in explicit or field.tag_number > 2:
            raise CMSError("CMS: RSAES-OAEP-params has a repeated or unknown field")
        explicit[field.tag_number] = field.children[0]
    if 0 not in explicit or 1 not in explicit:
        raise CMSError(
            "CMS: RSAES-OAEP-params must name SHA-256 hash and MGF1-SHA-256 mask generation; "
            "absent means SHA-1, which is refused"
        )
    _expect_sha256(explicit[0], "OAEP hashAlgorithm")
    mgf_oid, mgf_params = _algorithm_identifier(explicit[1], "OAEP maskGenAlgorithm")
    if mgf_oid != OID_MGF1 or mgf_params is None:
        raise CMSError("CMS: OAEP maskGenAlgorithm must be MGF1 with SHA-256")
    _expect_sha256(mgf_params, "MGF1 hash")
    if 2 in explicit:
        source_oid, label = _algorithm_identifier(explicit[2], "OAEP pSourceAlgorithm")
        if source_oid != OID_P_SPECIFIED or label is None or decode_octet_string(label):
            raise CMSError("CMS: OAEP label must be empty (pSpecified with no octets)")


def _encrypted_content_info(node: TLV) -> tuple[bytes, bytes]:
    """RFC 5652 section 6.1: EncryptedContentInfo; return (IV, encryptedContent).

    EncryptedContentInfo ::= SEQUENCE { contentType, contentEncryptionAlgorithm,
    encryptedContent [0] IMPLICIT OCTET STRING OPTIONAL }. Primitive and segmented
    (constructed) forms of [0] are both BER and both accepted.
    """
    fields = _sequence(node, "EncryptedContentInfo", 3, 3)
    if decode_oid(fields[0]) != OID_DATA:
        raise CMSError("CMS: encrypted content type must be id-data (1.2.840.113549.1.7.1)")
    oid, params = _algorithm_identifier(fields[1], "contentEncryptionAlgorithm")
    if oid != OID_AES256_CBC:
        raise CMSError(f"CMS: content encryption {oid} refused; KMS uses aes-256-cbc")
    if params is None:
        raise CMSError("CMS: aes-256-cbc needs its IV parameter (RFC 3565 section 4.1)")
    iv = decode_octet_string(params)
    if len(iv) != AES_BLOCK_BYTES:
        raise CMSError(f"CMS: aes-256-cbc IV must be {AES_BLOCK_BYTES} bytes, got {len(iv)}")
    content = decode_octet_string(fields[2], tag_class=CLASS_CONTEXT, tag_number=0)
    if not content or len(content) % AES_BLOCK_BYTES:
        raise CMSError(
            f"CMS: encryptedContent of {len(content)} bytes; AES-CBC with padding gives "
            f"a positive multiple of {AES_BLOCK_BYTES}"
        )
    return iv, content


# --- the cryptography (RFC 5652 section 6.4; RFC 3565) ---------------------------------------


class _UnwrapError(Exception):
    """Internal: the unwrapped key has the wrong size. Never leaves this module."""


def _unwrap_content_key(encrypted_key: bytes, private_key: RSAPrivateKey) -> bytes:
    """RSAES-OAEP-DECRYPT with SHA-256, MGF1-SHA-256 and an empty label (RFC 8017 7.1.2)."""
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    content_key = private_key.decrypt(encrypted_key, oaep)
    if len(content_key) != AES256_KEY_BYTES:
        raise _UnwrapError
    return content_key


def _decrypt_content(content_key: bytes, iv: bytes, encrypted_content: bytes) -> bytes:
    """AES-256-CBC decryption, then PKCS#7 unpadding (RFC 5652 section 6.3)."""
    decryptor = Cipher(algorithms.AES256(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(encrypted_content) + decryptor.finalize()
    unpadder = PKCS7(AES_BLOCK_BYTES * 8).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


# --- small shared checks --------------------------------------------------------------------


def _sequence(node: TLV, name: str, low: int, high: int) -> tuple[TLV, ...]:
    """The fields of a SEQUENCE named ``name``, which must have ``low``..``high`` of them."""
    if not (node.is_tag(CLASS_UNIVERSAL, TAG_SEQUENCE) and node.constructed):
        raise CMSError(f"CMS: {name} must be a SEQUENCE")
    if not low <= len(node.children) <= high:
        raise CMSError(f"CMS: {name} has {len(node.children)} fields, expected {low} to {high}")
    return node.children


def _expect_version(node: TLV, expected: int, name: str) -> None:
    version = decode_integer(node)
    if version != expected:
        raise CMSError(
            f"CMS: {name} version {version}; KMS sends version {expected} "
            "(subjectKeyIdentifier recipient)"
        )


def _algorithm_identifier(node: TLV, name: str) -> tuple[str, TLV | None]:
    """RFC 5280 section 4.1.1.2: AlgorithmIdentifier ::= SEQUENCE { OID, params OPTIONAL }."""
    fields = _sequence(node, name, 1, 2)
    return decode_oid(fields[0]), fields[1] if len(fields) == 2 else None


def _expect_sha256(node: TLV, name: str) -> None:
    """SHA-256 AlgorithmIdentifier; params absent or NULL, both allowed (RFC 4055 2.1)."""
    oid, params = _algorithm_identifier(node, name)
    if oid != OID_SHA256:
        raise CMSError(f"CMS: {name} is {oid}; SHA-256 ({OID_SHA256}) is required")
    if params is not None and not (
        params.is_tag(CLASS_UNIVERSAL, TAG_NULL) and params.value == b""
    ):
        raise CMSError(f"CMS: {name} SHA-256 parameters must be absent or NULL")
