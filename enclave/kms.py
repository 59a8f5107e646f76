"""AWS KMS over its JSON protocol, signed with our own SigV4, on the standard library.

Only the calls this project needs: ``Decrypt``, ``Encrypt``, ``GenerateDataKey`` and
``GenerateRandom``. Each is one POST of ``application/x-amz-json-1.1`` with
``X-Amz-Target: TrentService.<Action>`` (AWS KMS API Reference, "Making requests").

``Decrypt``, ``GenerateDataKey`` and ``GenerateRandom`` take an optional :class:`Recipient`
(an attestation document carrying a public key). KMS then leaves ``Plaintext`` out and
answers ``CiphertextForRecipient``, which only the enclave's private key can open
(see :mod:`enclave.attested_decrypt`). A ``Plaintext`` in such an answer means something between
us and KMS is not KMS: it is refused.

Every answer is read through one boundary: a success through :func:`_read_answer` (strict
JSON, then the fields), an error through :mod:`enclave.awserror` (JSON or XML, code, message
and fix). Whatever the bytes, the caller gets a result or a :class:`KMSError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from enclave import awserror, http_client, strict_json
from enclave.awscall import AWSError, CredentialSource, send_signed
from enclave.retry import RetryableFailure, RetryPolicy, call_with_retries

T = TypeVar("T")

#: KMS's JSON protocol: the target prefix and content type of every call.
_TARGET_PREFIX = "TrentService."
_CONTENT_TYPE = "application/x-amz-json-1.1"
#: KMS answers are small (a data key, a CMS blob of a few KiB); anything larger is not KMS.
MAX_RESPONSE_BYTES = 1024 * 1024
#: Error codes that say "try again later" (AWS KMS API Reference, "Common Errors").
TRANSIENT_CODES = frozenset(
    {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException"}
)
#: The only key-encryption algorithm KMS offers for a Recipient.
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"


class KMSError(AWSError):
    """A KMS call failed. ``code`` is KMS's error code (``None`` for transport failures)."""


@dataclass(frozen=True)
class Recipient:
    """Who may open the answer: an NSM attestation document whose ``public_key`` is ours."""

    attestation_document: bytes = field(repr=False)
    key_encryption_algorithm: str = RECIPIENT_ALGORITHM


@dataclass(frozen=True)
class DecryptResult:
    """``plaintext`` without a recipient; ``ciphertext_for_recipient`` with one."""

    key_id: str
    plaintext: bytes | None = field(repr=False)
    ciphertext_for_recipient: bytes | None = field(repr=False)


@dataclass(frozen=True)
class DataKey:
    """A new data key: ``ciphertext_blob`` to store, and the key itself in one of two forms."""

    key_id: str
    ciphertext_blob: bytes = field(repr=False)
    plaintext: bytes | None = field(repr=False)
    ciphertext_for_recipient: bytes | None = field(repr=False)


#: A KMS key ARN (``arn:PARTITION:kms:REGION:ACCOUNT:key/ID``); its region is where the key
#: lives, and KMS answers for a key only in its own region.
_KEY_ARN = re.compile(
    r"arn:aws(?:-cn|-us-gov)?:kms:([a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):[0-9]{12}:key/.+"
)


def key_region(key_id: str | None) -> str | None:
    """The region a key ARN names, or ``None`` for a key id, an alias or no key.

    The service sends its ``Decrypt`` to this region whatever region the instance is in, so
    the manifest's egress can name the one KMS host (``kms.<region>.amazonaws.com``) and a
    key in another region than the instance still works.
    """
    if key_id is None:
        return None
    match = _KEY_ARN.fullmatch(key_id)
    return match.group(1) if match else None


def kms_endpoint(region: str, environ: Mapping[str, str]) -> str:
    """Where KMS calls go, most specific setting first.

    ``AWS_ENDPOINT_URL_KMS`` (the AWS SDKs' service-specific override), then Enclaver's
    ``AWS_KMS_ENDPOINT`` (its KMS proxy), then ``AWS_ENDPOINT_URL`` (the SDKs' global
    override), else the regional public endpoint.
    """
    for name in ("AWS_ENDPOINT_URL_KMS", "AWS_KMS_ENDPOINT", "AWS_ENDPOINT_URL"):
        value = environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return f"https://kms.{region}.amazonaws.com"


class KMSClient:
    """A KMS client for one region. Thread-safe: it holds no per-call state.

    ``calls`` and ``errors`` count API calls and failed calls, for the service's metrics.
    """

    def __init__(
        self,
        region: str,
        credentials: CredentialSource,
        *,
        endpoint: str | None = None,
        environ: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self.region = region
        self.endpoint = endpoint or kms_endpoint(region, self._environ)
        self._credentials = credentials
        self._retry = retry or RetryPolicy()
        self.calls = 0
        self.errors = 0

    # -- the API calls -------------------------------------------------------------

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        recipient: Recipient | None = None,
    ) -> DecryptResult:
        """KMS ``Decrypt``. Pass ``key_id`` to make KMS refuse a blob of any other key."""
        request: dict[str, Any] = {"CiphertextBlob": _b64(ciphertext_blob)}
        if key_id:
            request["KeyId"] = key_id
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        _add_recipient(request, recipient)

        def read(answer: Mapping[str, Any]) -> DecryptResult:
            plaintext, for_recipient = _secret_fields(answer, "Decrypt", recipient)
            return DecryptResult(_text(answer, "KeyId", "Decrypt"), plaintext, for_recipient)

        return self._call("Decrypt", request, read)

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes:
        """KMS ``Encrypt`` (at most 4 KiB of plaintext); returns the ciphertext blob."""
        request: dict[str, Any] = {"KeyId": key_id, "Plaintext": _b64(plaintext)}
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        return self._call(
            "Encrypt", request, lambda answer: _blob(answer, "CiphertextBlob", "Encrypt")
        )

    def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str = "AES_256",
        encryption_context: Mapping[str, str] | None = None,
        recipient: Recipient | None = None,
    ) -> DataKey:
        """KMS ``GenerateDataKey``: a fresh key, in clear (or for the recipient) and wrapped."""
        request: dict[str, Any] = {"KeyId": key_id, "KeySpec": key_spec}
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        _add_recipient(request, recipient)

        def read(answer: Mapping[str, Any]) -> DataKey:
            plaintext, for_recipient = _secret_fields(answer, "GenerateDataKey", recipient)
            return DataKey(
                key_id=_text(answer, "KeyId", "GenerateDataKey"),
                ciphertext_blob=_blob(answer, "CiphertextBlob", "GenerateDataKey"),
                plaintext=plaintext,
                ciphertext_for_recipient=for_recipient,
            )

        return self._call("GenerateDataKey", request, read)

    def generate_random(
        self, number_of_bytes: int, *, recipient: Recipient | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """KMS ``GenerateRandom``: ``(plaintext, ciphertext_for_recipient)``, one of them set."""
        request: dict[str, Any] = {"NumberOfBytes": number_of_bytes}
        _add_recipient(request, recipient)
        return self._call(
            "GenerateRandom",
            request,
            lambda answer: _secret_fields(answer, "GenerateRandom", recipient),
        )

    # -- the protocol --------------------------------------------------------------

    def _call(
        self, action: str, request: Mapping[str, Any], read: Callable[[Mapping[str, Any]], T]
    ) -> T:
        """POST one action, retrying transient failures within the policy's deadline, and
        ``read`` the answer's JSON object (through :func:`_read_answer`, the one boundary)."""
        body = json.dumps(request, separators=(",", ":")).encode()
        self.calls += 1
        try:
            return call_with_retries(
                lambda remaining: self._attempt(action, body, remaining, read),
                self._retry,
                describe=f"KMS {action}",
            )
        except KMSError:
            self.errors += 1
            raise

    def _attempt(
        self,
        action: str,
        body: bytes,
        remaining: float,
        read: Callable[[Mapping[str, Any]], T],
    ) -> T:
        headers = {"Content-Type": _CONTENT_TYPE, "X-Amz-Target": _TARGET_PREFIX + action}
        response = send_signed(
            "POST",
            self.endpoint + "/",
            headers,
            body,
            service="kms",
            region=self.region,
            credentials=self._credentials,
            remaining=remaining,
            max_response_bytes=MAX_RESPONSE_BYTES,
            environ=self._environ,
            error=lambda cause: KMSError(f"KMS {action} at {self.endpoint}: {cause}"),
        )
        if response.status == 200:
            return _read_answer(action, response.body, read)
        error = _error_from(action, response, self.region)
        if error.code in TRANSIENT_CODES or response.status >= 500:
            raise RetryableFailure(error)
        raise error


# -- request and answer helpers ------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _add_recipient(request: dict[str, Any], recipient: Recipient | None) -> None:
    if recipient is not None:
        request["Recipient"] = {
            "KeyEncryptionAlgorithm": recipient.key_encryption_algorithm,
            "AttestationDocument": _b64(recipient.attestation_document),
        }


def _read_answer(action: str, body: bytes, read: Callable[[Mapping[str, Any]], T]) -> T:
    """The boundary of the answer parser: whatever the bytes, a value or a KMSError.

    The message names the cause (a :class:`~enclave.strict_json.JSONError`'s description, a
    missing field, an exception's type), never the answer's content: it may hold a key.
    """
    try:
        answer = strict_json.loads(body, max_bytes=MAX_RESPONSE_BYTES)
    except strict_json.JSONError as exc:
        raise KMSError(f"KMS {action}: the answer is not JSON we accept ({exc})") from None
    if not isinstance(answer, dict):
        raise KMSError(f"KMS {action}: the answer is not a JSON object")
    try:
        return read(answer)
    except KMSError:
        raise
    except Exception as exc:  # the boundary: nothing else leaves, whatever the answer holds
        raise KMSError(
            f"KMS {action}: the answer could not be read ({type(exc).__name__})"
        ) from None


def _text(answer: Mapping[str, Any], name: str, action: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise KMSError(f"KMS {action}: the answer lacks {name}")
    return value


def _blob(answer: Mapping[str, Any], name: str, action: str) -> bytes:
    value = _text(answer, name, action)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KMSError(f"KMS {action}: {name} in the answer is not valid base64") from None


def _secret_fields(
    answer: Mapping[str, Any], action: str, recipient: Recipient | None
) -> tuple[bytes | None, bytes | None]:
    """Pick ``Plaintext`` or ``CiphertextForRecipient``, and refuse the wrong one.

    With a recipient, real KMS never sends ``Plaintext``: an answer that has it was made by
    something that saw the key in clear, so it is refused rather than used.
    """
    if recipient is None:
        return _blob(answer, "Plaintext", action), None
    if answer.get("Plaintext"):
        raise KMSError(
            f"KMS {action} answered a Plaintext although a Recipient was sent: the answer "
            "did not come from KMS (check AWS_ENDPOINT_URL_KMS / AWS_KMS_ENDPOINT and any "
            "proxy in between); refusing it"
        )
    return None, _blob(answer, "CiphertextForRecipient", action)


def _decrypt_denied(region: str) -> str:
    """KMS Decrypt's own advice for AccessDeniedException."""
    return (
        "the key policy's kms:RecipientAttestation:PCR0 (or ImageSha384) condition does not "
        "match this enclave's measurements (a debug-mode enclave reports all-zero PCRs); the "
        "instance role lacks kms:Decrypt on the key; or the key lives in another region than "
        f"{region}"
    )


def _error_from(action: str, response: http_client.Response, region: str) -> KMSError:
    """Turn a KMS error answer (JSON, or XML from some proxies and emulators) into a KMSError
    whose one line names the code, KMS's message and, where known, the fix."""
    answer = awserror.read(response.headers, response.body)
    advice = _decrypt_denied(region) if action == "Decrypt" else awserror.ACCESS_DENIED
    text = awserror.explain(f"KMS {action}", response.status, answer, access_denied=advice)
    return KMSError(text, code=answer.code, status=response.status)
