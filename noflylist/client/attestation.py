"""Verify an AWS Nitro Enclaves attestation document, step by step as AWS describes it.

The steps follow AWS's "Verifying the root of trust" (Nitro Enclaves User Guide) and the
NSM API's ``docs/attestation_process.md`` (sections 3.1 to 3.2.4), in their order:

1. decode the COSE_Sign1 envelope, which must be signed with ES384;
2. check the payload's syntax: every field, its type and its size;
3. check the certificate chain from the document's certificate to the pinned AWS root;
4. check the COSE signature with the chain's leaf key;
5. apply the caller's checks: expected PCRs, nonce, and refusal of debug-mode enclaves.

Every failure raises :class:`AttestationError`, whose message starts with the step. The
document comes from whoever answers (a service being checked, or the host relaying
``/dev/nsm``), so :func:`verify` is a boundary: any exception no check foresaw becomes an
:class:`AttestationError` naming its type, never its message (which could quote the input).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from enclave.cbor import CBORError, CBORValue, decode, encode
from enclave.errors import NoflylistError
from enclave.nsm_limits import MAX_NONCE_BYTES, MAX_PCRS, MAX_PUBLIC_KEY_BYTES, MAX_USER_DATA_BYTES
from noflylist.client.cose import (
    ALG_ES384,
    HEADER_ALG,
    COSEError,
    Sign1,
    decode_sign1,
    verify_es384,
)

__all__ = ["AttestationDocument", "AttestationError", "verify"]

_log = logging.getLogger(__name__)
_E = TypeVar("_E", bound=x509.ExtensionType)

#: The AWS Nitro Enclaves root CA G1, shipped in this package (from AWS_NitroEnclaves_Root-G1.zip).
_ROOT_RESOURCE = "aws_nitro_root_g1.pem"
#: SHA-256 of that root's DER, as AWS publishes it; a mismatch means the package was altered.
_ROOT_SHA256 = bytes.fromhex("641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B")
#: The only protected header a Nitro document has: ``{1: -35}``, algorithm ES384 (§3.1).
_PROTECTED_ES384 = encode({HEADER_ALG: ALG_ES384})
#: attestation_process.md §3.1: the payload is ``bstr .size (1..16384)``.
_MAX_PAYLOAD_BYTES = 16384
#: The payload plus a few hundred bytes of envelope; refuse bigger input before parsing it.
_MAX_DOCUMENT_BYTES = _MAX_PAYLOAD_BYTES + 1024
#: attestation_process.md §2.2: ``cert = bytes .size (1..1024)``.
_MAX_CERT_BYTES = 1024
#: Nitro bundles hold 4 certificates; the cap bounds the signature checks a document can cause.
_MAX_CABUNDLE = 8
#: §3.2.2.2: each PCR is 32, 48 or 64 bytes (the register count and the ``public_key``,
#: ``user_data`` and ``nonce`` sizes are the NSM's limits, :mod:`enclave.nsm_limits`).
_PCR_SIZES = frozenset({32, 48, 64})
#: ``timestamp: uint .size 8``: milliseconds since the UNIX epoch.
_MAX_TIMESTAMP_MS = 2**64 - 1
#: §3.2.2.2: the only digest the NSM uses for PCRs.
_DIGEST = "SHA384"
_MANDATORY = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")
#: Every Nitro PKI certificate is signed with ECDSA P-384/SHA-384; nothing weaker is accepted.
_CERT_SIGNATURE_OID = SignatureAlgorithmOID.ECDSA_WITH_SHA384
#: Critical extensions this module enforces; RFC 5280 §4.2 says to reject any other.
_HANDLED_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
#: Document timestamps count milliseconds from here.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Register that holds the enclave image measurement; all zero in a debug-mode enclave.
_PCR_IMAGE = 0
#: Untrusted values quoted in error messages are cut to this many characters.
_PREVIEW_CHARS = 60
#: Certificate subjects are longer (a Nitro leaf's is about 100 characters) and worth reading.
_NAME_CHARS = 200
#: Exceptions ``cryptography`` raises on malformed or unsupported certificate contents.
_X509_FAILURES = (
    ValueError,
    TypeError,
    InvalidSignature,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class AttestationError(NoflylistError):
    """An attestation document failed verification; the message names the step and the fix."""


@dataclass(frozen=True)
class AttestationDocument:
    """The verified content of a Nitro attestation document (read-only)."""

    module_id: str
    digest: str
    timestamp: datetime
    pcrs: Mapping[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None


def verify(
    document: bytes,
    *,
    unsafe_root: x509.Certificate | None = None,
    now: datetime | None = None,
    expected_pcrs: Mapping[int, bytes] | None = None,
    nonce: bytes | None = None,
    unsafe_allow_debug: bool = False,
) -> AttestationDocument:
    """Verify ``document`` (raw bytes from ``/dev/nsm``) and return its content.

    ``now`` defaults to the real clock and must be timezone-aware. ``expected_pcrs`` and
    ``nonce`` are compared in constant time.

    The two ``unsafe_`` parameters weaken what a verified document proves, so each call that
    uses one logs a warning, every time. ``unsafe_root`` replaces the shipped AWS root, only
    ever for a simulator's documents, which then prove nothing about AWS hardware.
    ``unsafe_allow_debug`` accepts debug-mode enclaves (PCR0 all zero), whose memory their
    parent can read; note that a debug enclave still fills in PCR3 (IAM role) and PCR4
    (parent instance), so a document must never be trusted on PCR3/PCR4 alone.
    """
    try:
        return _verify(document, unsafe_root, now, expected_pcrs, nonce, unsafe_allow_debug)
    except AttestationError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only AttestationError leaves
        raise AttestationError(
            f"attestation document refused: {type(exc).__name__} while verifying it, a "
            "failure no step has a specific message for; fetch a fresh document"
        ) from None


def _verify(
    document: bytes,
    unsafe_root: x509.Certificate | None,
    now: datetime | None,
    expected_pcrs: Mapping[int, bytes] | None,
    nonce: bytes | None,
    unsafe_allow_debug: bool,
) -> AttestationDocument:
    if now is None:
        now = datetime.now(UTC)
    elif now.utcoffset() is None:
        raise AttestationError("verify(now=...) needs a timezone-aware datetime, e.g. in UTC")
    pinned = _pinned_root()
    root = pinned if unsafe_root is None else unsafe_root
    if root != pinned:
        _log.warning(
            "attestation: UNSAFE: trusting a caller-supplied root (unsafe_root=) instead of "
            "the AWS root: the document proves nothing about AWS hardware"
        )
    if unsafe_allow_debug:
        _log.warning(
            "attestation: UNSAFE: unsafe_allow_debug=True: a debug-mode enclave (PCR0 all "
            "zero), whose memory its parent can read, is accepted"
        )
    sign1 = _step1_decode_envelope(document)
    payload = _step2_check_payload(sign1.payload)
    chain = _step3_check_chain(payload.certificate, payload.cabundle, root, now)
    _step4_check_signature(sign1, chain[0])
    result = AttestationDocument(
        module_id=payload.module_id,
        digest=payload.digest,
        timestamp=payload.timestamp,
        pcrs=MappingProxyType(dict(payload.pcrs)),
        certificate=chain[0],
        cabundle=tuple(reversed(chain[1:])),
        public_key=payload.public_key,
        user_data=payload.user_data,
        nonce=payload.nonce,
    )
    _step5_caller_checks(result, expected_pcrs, nonce, unsafe_allow_debug)
    return result


@cache
def _pinned_root() -> x509.Certificate:
    """Load the shipped AWS root once and check it against AWS's published fingerprint."""
    pem = resources.files("noflylist.client").joinpath(_ROOT_RESOURCE).read_bytes()
    root = x509.load_pem_x509_certificate(pem)
    if not hmac.compare_digest(root.fingerprint(hashes.SHA256()), _ROOT_SHA256):
        raise AttestationError(
            f"the shipped {_ROOT_RESOURCE} does not have AWS's published SHA-256 fingerprint "
            f"{_ROOT_SHA256.hex()}; the package was altered: reinstall it"
        )
    return root


def _step1_decode_envelope(document: bytes) -> Sign1:
    """Step 1 (§3.1): a COSE_Sign1, protected header exactly ``{1: -35}``, empty unprotected."""
    if not isinstance(document, bytes) or len(document) > _MAX_DOCUMENT_BYTES:
        raise AttestationError(
            f"step 1 (COSE_Sign1): the document must be bytes of at most {_MAX_DOCUMENT_BYTES}"
        )
    try:
        sign1 = decode_sign1(document)
    except COSEError as exc:
        raise AttestationError(f"step 1 (COSE_Sign1): {exc}") from exc
    if sign1.protected != _PROTECTED_ES384:
        raise AttestationError(
            f"step 1 (COSE_Sign1): protected header is {_preview(dict(sign1.protected_header))}, "
            "not {1: -35} (ES384); an emulated NSM (e.g. QEMU's) emits unsigned documents with "
            "algorithm -1: use a real Nitro enclave"
        )
    if sign1.unprotected:
        raise AttestationError("step 1 (COSE_Sign1): the unprotected header must be empty")
    if not 1 <= len(sign1.payload) <= _MAX_PAYLOAD_BYTES:
        raise AttestationError(
            f"step 1 (COSE_Sign1): payload is {len(sign1.payload)} bytes, "
            f"allowed 1..{_MAX_PAYLOAD_BYTES}"
        )
    return sign1


def _preview(value: object, limit: int = _PREVIEW_CHARS) -> str:
    """A short ``repr`` of untrusted data for an error message: never a wall of attacker text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bytes_field(name: str, value: CBORValue, low: int, high: int) -> bytes:
    """Return ``value`` if it is a byte string of ``low..high`` bytes (step 2)."""
    if not isinstance(value, bytes):
        raise AttestationError(f"step 2 (payload): {name} must be a byte string")
    if not low <= len(value) <= high:
        raise AttestationError(
            f"step 2 (payload): {name} is {len(value)} bytes, allowed {low}..{high}"
        )
    return value


def _check_pcrs(value: CBORValue) -> dict[int, bytes]:
    """``pcrs``: a map of 1..32 entries, integer index 0..31 to 32, 48 or 64 bytes."""
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PCRS:
        raise AttestationError(f"step 2 (payload): pcrs must be a map of 1..{MAX_PCRS} entries")
    pcrs: dict[int, bytes] = {}
    for index, content in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise AttestationError(
                f"step 2 (payload): PCR index {_preview(index)} is not an integer in "
                f"0..{MAX_PCRS - 1}"
            )
        if not isinstance(content, bytes) or len(content) not in _PCR_SIZES:
            raise AttestationError(
                f"step 2 (payload): PCR{index} must be a byte string of 32, 48 or 64 bytes"
            )
        pcrs[index] = content
    return pcrs


@dataclass(frozen=True)
class _Payload:
    """The payload fields after step 2, still unverified (the chain and signature come next)."""

    module_id: str
    digest: str
    timestamp: datetime
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: list[bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None


def _optional_bytes(
    fields: dict[CBORValue, CBORValue], name: str, low: int, high: int
) -> bytes | None:
    """An optional field: absent or CBOR null (how the NSM writes it) means ``None``."""
    value = fields.get(name)
    return None if value is None else _bytes_field(name, value, low, high)


def _step2_check_payload(payload: bytes) -> _Payload:
    """Step 2 (§3.2.2): every mandatory field, no unknown field, each with its type and size."""
    try:
        fields = decode(payload)
    except CBORError as exc:
        raise AttestationError(f"step 2 (payload): not valid CBOR: {exc}") from exc
    if not isinstance(fields, dict):
        raise AttestationError("step 2 (payload): the payload must be a CBOR map")
    unknown = [key for key in fields if key not in _MANDATORY + _OPTIONAL]
    if unknown:
        raise AttestationError(f"step 2 (payload): unknown field {_preview(unknown[0])}")
    missing = [key for key in _MANDATORY if fields.get(key) is None]
    if missing:
        raise AttestationError(f"step 2 (payload): mandatory field(s) {missing} missing or null")
    module_id, digest, timestamp = fields["module_id"], fields["digest"], fields["timestamp"]
    if not isinstance(module_id, str) or not module_id:
        raise AttestationError("step 2 (payload): module_id must be non-empty text")
    if not isinstance(digest, str) or digest != _DIGEST:
        raise AttestationError(f"step 2 (payload): digest must be the text {_DIGEST!r}")
    if type(timestamp) is not int or not 0 < timestamp <= _MAX_TIMESTAMP_MS:
        raise AttestationError("step 2 (payload): timestamp must be a positive 64-bit integer")
    try:
        created = _EPOCH + timedelta(milliseconds=timestamp)
    except OverflowError:
        raise AttestationError("step 2 (payload): timestamp lies beyond the year 9999") from None
    cabundle = fields["cabundle"]
    if not isinstance(cabundle, list) or not 1 <= len(cabundle) <= _MAX_CABUNDLE:
        raise AttestationError(
            f"step 2 (payload): cabundle must be a list of 1..{_MAX_CABUNDLE} certificates"
        )
    return _Payload(
        module_id=module_id,
        digest=digest,
        timestamp=created,
        pcrs=_check_pcrs(fields["pcrs"]),
        certificate=_bytes_field("certificate", fields["certificate"], 1, _MAX_CERT_BYTES),
        cabundle=[
            _bytes_field(f"cabundle[{i}]", der, 1, _MAX_CERT_BYTES)
            for i, der in enumerate(cabundle)
        ],
        public_key=_optional_bytes(fields, "public_key", 1, MAX_PUBLIC_KEY_BYTES),
        user_data=_optional_bytes(fields, "user_data", 0, MAX_USER_DATA_BYTES),
        nonce=_optional_bytes(fields, "nonce", 0, MAX_NONCE_BYTES),
    )


def _step3_check_chain(
    leaf_der: bytes, bundle_der: list[bytes], root: x509.Certificate, now: datetime
) -> list[x509.Certificate]:
    """Step 3 (§3.2.3, §3.2.4): the chain leaf -> intermediates -> root; returns it leaf first.

    Each link is checked explicitly instead of with ``cryptography.x509.verification``:
    AWS fixes the chain's order (``cabundle`` is root first), so no path building is
    wanted, and path building would accept a bundle with unused certificates; the library's
    default web-PKI profile refuses real Nitro chains (the instance CA has no authority key
    identifier, the leaf no subject alternative name) while custom extension policies need
    cryptography 45 (we support 42) and the API is documented as not yet stable; and an
    explicit check can say which certificate failed and why.
    """
    root_der = root.public_bytes(serialization.Encoding.DER)
    if bundle_der[0] != root_der:
        raise AttestationError(
            "step 3 (certificate chain): the first cabundle certificate is not the trusted "
            "root: the document was not issued by the AWS Nitro PKI (a simulated NSM needs "
            "its own root passed as unsafe_root=)"
        )
    chain = [_load_certificate(leaf_der, "certificate")]
    for index in range(len(bundle_der) - 1, 0, -1):
        chain.append(_load_certificate(bundle_der[index], f"cabundle[{index}]"))
    chain.append(root)
    for position, cert in enumerate(chain):
        try:
            _check_validity(cert, now)
            _check_extensions(cert, None if position == 0 else position - 1)
            if position + 1 < len(chain):
                _check_issued_by(cert, chain[position + 1])
        except _X509_FAILURES as exc:
            # The type only: cryptography's message could quote the certificate's bytes.
            raise _chain_error(cert, f"cannot be checked ({type(exc).__name__})") from None
    return chain


def _load_certificate(der: bytes, label: str) -> x509.Certificate:
    """Parse one DER certificate; a serial that is not positive is refused (RFC 5280 §4.1.2.2)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except _X509_FAILURES:
        raise AttestationError(
            f"step 3 (certificate chain): {label} is not a DER-encoded X.509 certificate"
        ) from None
    if cert.serial_number <= 0:
        raise AttestationError(
            f"step 3 (certificate chain): {label} has a serial number that is not positive"
        )
    return cert


def _chain_error(cert: x509.Certificate, problem: str) -> AttestationError:
    """An error naming the certificate by its subject (public information, never secret)."""
    try:
        label = f"certificate {_preview(cert.subject.rfc4514_string(), _NAME_CHARS)}"
    except Exception:  # cryptography raises even KeyError on some mangled names; the name
        # is only a label and must not hide the failure being reported.
        label = "a certificate with an unreadable subject"
    return AttestationError(f"step 3 (certificate chain): {label} {problem}")


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    """§3.2.3.1: ``now`` lies in the validity window, both ends included (RFC 5280 §4.1.2.5)."""
    if now < cert.not_valid_before_utc:
        raise _chain_error(
            cert,
            f"is not valid before {cert.not_valid_before_utc.isoformat()} (checked at "
            f"{now.isoformat()}): check this machine's clock",
        )
    if now > cert.not_valid_after_utc:
        raise _chain_error(
            cert,
            f"expired at {cert.not_valid_after_utc.isoformat()} (checked at {now.isoformat()}); "
            "documents are valid only for about 3 hours: fetch a fresh one",
        )


def _extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _check_extensions(cert: x509.Certificate, cas_below: int | None) -> None:
    """§3.2.3.2-3: basic constraints and key usage; ``cas_below`` is ``None`` for the leaf.

    A CA must carry a critical basicConstraints with CA set (RFC 5280 §4.2.1.9) and a path
    length that allows the ``cas_below`` CA certificates between it and the leaf, and
    keyCertSign. The leaf must not be a CA and must have digitalSignature. Any other critical
    extension is one we do not enforce, so the certificate is refused (RFC 5280 §4.2).
    """
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _HANDLED_CRITICAL:
            raise _chain_error(
                cert, f"has a critical extension {extension.oid.dotted_string} we cannot check"
            )
    constraints = _extension(cert, x509.BasicConstraints)
    usage = _extension(cert, x509.KeyUsage)
    if usage is None:
        raise _chain_error(cert, "has no key usage extension")
    if cas_below is None:
        if constraints is not None and constraints.value.ca:
            raise _chain_error(cert, "signs the document but is marked as a CA")
        if not usage.value.digital_signature:
            raise _chain_error(cert, "signs the document but its key usage lacks digitalSignature")
        return
    if constraints is None or not constraints.critical or not constraints.value.ca:
        raise _chain_error(cert, "issues certificates but no critical basicConstraints says CA")
    path_length = constraints.value.path_length
    if path_length is not None and path_length < cas_below:
        raise _chain_error(cert, f"allows {path_length} CA(s) below it; the chain has {cas_below}")
    if not usage.value.key_cert_sign:
        raise _chain_error(cert, "issues certificates but its key usage lacks keyCertSign")


def _check_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """§3.2.4: ``issuer``'s name and key signed ``cert``, with ECDSA P-384/SHA-384 only."""
    if cert.signature_algorithm_oid != _CERT_SIGNATURE_OID:
        raise _chain_error(
            cert, f"is signed with {cert.signature_algorithm_oid.dotted_string}, not ECDSA-SHA384"
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise _chain_error(cert, "has a signature its issuer did not make") from None
    except ValueError:
        raise _chain_error(cert, "names an issuer other than the next certificate") from None


def _step4_check_signature(sign1: Sign1, leaf: x509.Certificate) -> None:
    """Step 4 (§3.2.1): the ES384 signature over the Sig_structure, with the leaf's P-384 key."""
    try:
        key = leaf.public_key()
    except _X509_FAILURES:
        raise AttestationError("step 4 (signature): the leaf's public key is unreadable") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("step 4 (signature): the leaf's key is not an ECDSA P-384 key")
    try:
        verify_es384(sign1, key)
    except COSEError as exc:
        raise AttestationError(f"step 4 (signature): {exc}") from exc


def _short_hex(value: bytes) -> str:
    return value.hex()[:12] + "…"


def _step5_caller_checks(
    document: AttestationDocument,
    expected_pcrs: Mapping[int, bytes] | None,
    nonce: bytes | None,
    unsafe_allow_debug: bool,
) -> None:
    """Step 5: what the relying party asked for: no debug mode, its PCRs, its nonce."""
    image = document.pcrs.get(_PCR_IMAGE)
    if image is None or not any(image):
        if not unsafe_allow_debug:
            raise AttestationError(
                "step 5 (caller checks): PCR0 is all zero or absent: a debug-mode enclave, "
                "whose memory its parent can read; run the enclave without --debug-mode "
                "(unsafe_allow_debug=True is for development only)"
            )
        _log.warning(
            "attestation: UNSAFE: accepting this debug-mode enclave's document "
            "(unsafe_allow_debug=True)"
        )
    for index, expected in sorted((expected_pcrs or {}).items()):
        if not isinstance(expected, bytes):
            raise AttestationError(
                f"verify(expected_pcrs=...): PCR{index} must be bytes, e.g. bytes.fromhex(...)"
            )
        actual = document.pcrs.get(index)
        if actual is None:
            raise AttestationError(f"step 5 (caller checks): the document has no PCR{index}")
        if not hmac.compare_digest(actual, expected):
            hint = " (debug-mode enclaves report zero PCRs)" if not any(actual) else ""
            raise AttestationError(
                f"step 5 (caller checks): PCR{index} mismatch: expected {_short_hex(expected)}, "
                f"document has {_short_hex(actual)}{hint}; rebuild the enclave image or update "
                "the expected value"
            )
    if nonce is not None:
        if not isinstance(nonce, bytes):
            raise AttestationError("verify(nonce=...) must be bytes, the nonce sent to the enclave")
        if document.nonce is None:
            raise AttestationError(
                "step 5 (caller checks): the document carries no nonce but one was expected; "
                "request a document with your nonce"
            )
        if not hmac.compare_digest(document.nonce, nonce):
            raise AttestationError(
                "step 5 (caller checks): nonce mismatch: the document answers another "
                "challenge (a replay?); request a fresh document with your nonce"
            )
