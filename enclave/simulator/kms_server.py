"""A LOCAL KMS for development and tests: AWS KMS's JSON protocol on loopback, with Recipient.

No public KMS emulator answers ``Recipient`` (attested decryption), so the simulator has its
own. It is faithful where the enclave's security depends on it, and small everywhere else:

* every request carries a SigV4 signature, checked by botocore (independent of our
  :mod:`enclave.sigv4`) with credentials kept in the state folder (:func:`_authenticate`);
* every call on a key is authorised by the key's policy (:mod:`enclave.simulator.policy`),
  with KMS's condition keys, ``kms:RecipientAttestation:*`` included;
* a ``Recipient``'s attestation document is verified against the simulator's root, and the
  answer is ``CiphertextForRecipient``, a CMS EnvelopedData for the document's public key,
  never ``Plaintext`` (:meth:`_Service._recipient`);
* the encryption context is bound into each ciphertext blob's AES-GCM tag.

Actions: CreateKey, EnableKey, DisableKey, CreateAlias, GetKeyPolicy,
PutKeyPolicy, Encrypt, Decrypt, GenerateDataKey and GenerateRandom. Errors are HTTP 400 with
``{"__type": code, "message": text}``, as KMS sends them.

The ciphertext blob is the simulator's own format (real KMS blobs are opaque too)::

    offset  size    field
    0       1       version, 0x01
    1       36      key id: the key's UUID as lower-case ASCII
    37      12      AES-GCM nonce, random
    49      n + 16  AES-256-GCM ciphertext of the n-byte plaintext, then the tag

The associated data is bytes 0 to 36 followed by :func:`_canonical_context`.

Key material and credentials are kept IN CLEAR in the state folder (a file of mode 0600):
this is a development tool that protects nothing. Never give it a real secret.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_der_public_key

from enclave import attestation
from enclave.errors import EnclaveError
from enclave.sigv4 import Credentials
from enclave.simulator import policy
from enclave.simulator.cms_writer import encode_enveloped_data

__all__ = ["LocalKMS", "LocalKMSError", "main"]

_log = logging.getLogger(__name__)

#: A Recipient's document may be 256 KiB of base64 (API limit), plus the rest of a request.
MAX_REQUEST_BYTES = 512 * 1024
#: Seconds any one socket read or write may take, so a stalled client cannot hold a thread.
SOCKET_TIMEOUT = 10.0
#: AWS refuses signatures dated more than five minutes from its clock.
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: API limits (AWS KMS API Reference): Plaintext, CiphertextBlob, NumberOfBytes, document.
MAX_PLAINTEXT = 4096
MAX_CIPHERTEXT_BLOB = 6144
MAX_RANDOM_BYTES = 1024
MAX_DOCUMENT_BYTES = 262144
#: Bound on the encryption context: all keys and values together, in UTF-8.
MAX_CONTEXT_BYTES = 8192
#: Longest string field accepted (a key policy is at most 32 KiB).
MAX_TEXT_CHARS = 32 * 1024
#: KMS requires RSA keys of at least this size for a Recipient.
MIN_RECIPIENT_RSA_BITS = 2048
#: KMS's symmetric keys are AES-256.
KEY_BYTES = 32
#: The blob format above.
BLOB_VERSION = 1
_KEY_ID_CHARS = 36
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + _KEY_ID_CHARS
#: The state file (keys, aliases, credentials); only its owner may read it.
STATE_FILE = "kms-state.json"
STATE_FILE_MODE = 0o600
_STATE_FORMAT = 1

_TARGET_PREFIX = "TrentService."
_JSON_TYPE = "application/x-amz-json-1.1"
_RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
_SYMMETRIC = "SYMMETRIC_DEFAULT"
_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]{1,128})/([0-9]{8})/([a-z0-9-]{1,64})/"
    r"([a-z0-9-]{1,64})/aws4_request, ?SignedHeaders=([a-z0-9;-]{1,2048}), ?"
    r"Signature=([0-9a-f]{64})"
)
_ALIAS = re.compile(r"alias/[A-Za-z0-9/_-]{1,250}")
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)
_BAD_TOKEN = "The security token included in the request is invalid."  # noqa: S105 (a message)
_WARNING = (
    "LOCAL KMS (simulator): keys and credentials are stored in clear in %s and documents are "
    "trusted from a throwaway root; for development and tests only"
)


class LocalKMSError(EnclaveError):
    """A request the local KMS refuses (``code`` is KMS's error code), or unusable state."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def _fault(code: str, message: str) -> LocalKMSError:
    return LocalKMSError(message, code=code)


# -- state ------------------------------------------------------------------------------------


@dataclass
class _Key:
    key_id: str
    arn: str
    material: bytes = field(repr=False)
    created: float
    description: str
    enabled: bool
    policy: str


@dataclass(frozen=True)
class _Credential:
    secret: str = field(repr=False)
    session_token: str | None = field(repr=False)
    principal_arn: str


class _State:
    """Keys, aliases and credentials in one JSON file, rewritten after every change.

    The file is the simulator's own, trusted like its folder: it is checked for an owner-only
    mode, its format and its region and account, not field by field.
    """

    def __init__(self, folder: Path, region: str, account: str) -> None:
        self.folder, self.region, self.account = folder, region, account
        self.path = folder / STATE_FILE
        self.lock = threading.Lock()
        self.keys: dict[str, _Key] = {}
        self.aliases: dict[str, str] = {}
        self.credentials: dict[str, _Credential] = {}
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise LocalKMSError(f"{self.path} may be read by others (mode {mode:o}): chmod 600 it")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data["format"] != _STATE_FORMAT:
                raise ValueError(f"format {data['format']!r}")
            where = (data["region"], data["account"])
            for key_id, k in data["keys"].items():
                material = base64.b64decode(k.pop("material"), validate=True)
                self.keys[key_id] = _Key(material=material, **k)
            self.aliases = dict(data["aliases"])
            self.credentials = {a: _Credential(**c) for a, c in data["credentials"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise LocalKMSError(
                f"the local KMS state {self.path} is unreadable ({exc.__class__.__name__}): "
                "restore it, or delete it to start over"
            ) from None
        if where != (self.region, self.account):
            raise LocalKMSError(
                f"{self.path} holds keys of region {where[0]}, account {where[1]}: start with "
                "those, or use another state folder"
            )

    def save(self) -> None:
        """Rewrite the file; call with ``lock`` held."""
        keys = {
            key_id: asdict(k) | {"material": base64.b64encode(k.material).decode()}
            for key_id, k in self.keys.items()
        }
        data = {
            "format": _STATE_FORMAT, "region": self.region, "account": self.account,
            "keys": keys, "aliases": self.aliases,
            "credentials": {a: asdict(c) for a, c in self.credentials.items()},
        }  # fmt: skip
        _write_private(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


def _write_private(path: Path, data: bytes) -> None:
    """Write next to ``path`` with mode 0600, then rename over it: readers never see half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, STATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), STATE_FILE_MODE)  # neither umask nor an old file widens it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


# -- authentication: SigV4, checked by botocore -----------------------------------------------


def _authenticate(
    state: _State, method: str, path: str, headers: Mapping[str, str], body: bytes, now: datetime
) -> _Credential:
    """Check the request's SigV4 signature the way AWS does, and return whose it is.

    botocore recomputes the signature from the headers the request says it signed, the stored
    secret and the request's own ``X-Amz-Date``: we set botocore's ``timestamp`` to that date
    and run its steps (canonical request, string to sign, signature) instead of ``add_auth``,
    whose only other work is reading the clock. The date must be within five minutes of ours.
    """
    from botocore.auth import SigV4Auth  # development dependency: imported only when serving
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotocoreCredentials

    authorization = headers.get("authorization")
    if authorization is None:
        raise _fault("MissingAuthenticationTokenException", "Missing Authentication Token")
    parsed = _AUTHORIZATION.fullmatch(authorization)
    if parsed is None:
        raise _fault("IncompleteSignatureException", "The Authorization header is malformed.")
    access_key, day, region, service, signed_names, signature = parsed.groups()
    with state.lock:
        credential = state.credentials.get(access_key)
    token = headers.get("x-amz-security-token")
    if credential is None or (token is None) != (credential.session_token is None):
        raise _fault("UnrecognizedClientException", _BAD_TOKEN)
    if token is not None and not hmac.compare_digest(token, credential.session_token or ""):
        raise _fault("UnrecognizedClientException", _BAD_TOKEN)
    names = signed_names.split(";")
    if "host" not in names or "x-amz-date" not in names or names != sorted(set(names)):
        raise _fault("InvalidSignatureException", "host and x-amz-date must be signed, sorted.")
    _check_scope(headers.get("x-amz-date", ""), day, region, service, state.region, now)
    content_sha256 = headers.get("x-amz-content-sha256")
    if content_sha256 is not None and content_sha256 != hashlib.sha256(body).hexdigest():
        raise _fault("InvalidSignatureException", "x-amz-content-sha256 does not match the body.")

    signed = {name: headers.get(name, "") for name in names}
    request = AWSRequest(method=method, url=f"http://{signed['host']}{path}", headers=signed,
                         data=body)  # fmt: skip
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(
        BotocoreCredentials(access_key, credential.secret, credential.session_token),
        service, state.region,
    )  # fmt: skip
    expected_names = signer.signed_headers(signer.headers_to_sign(request))
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if expected_names != signed_names or not hmac.compare_digest(expected, signature):
        raise _fault("InvalidSignatureException", _BAD_SIGNATURE)
    return credential


def _check_scope(
    amz_date: str, day: str, region: str, service: str, our_region: str, now: datetime
) -> None:
    try:
        when = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise _fault(
            "IncompleteSignatureException", "X-Amz-Date is missing or malformed."
        ) from None
    if day != amz_date[:8]:
        raise _fault("InvalidSignatureException", "The credential date is not X-Amz-Date's day.")
    if region != our_region:
        raise _fault(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{region}'.",
        )
    if service != "kms":
        raise _fault("InvalidSignatureException", "Credential should be scoped to service 'kms'.")
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise _fault(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is more than 5 minutes from the server's "
            f"{now.strftime(_AMZ_DATE)}; check the client's clock.",
        )


# -- the ciphertext blob ----------------------------------------------------------------------


def _canonical_context(context: Mapping[str, str]) -> bytes:
    """The context as pairs sorted by key, each part preceded by its 4-byte length, so no two
    contexts encode alike and the order a client sends them in does not matter."""
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = len(pairs).to_bytes(4, "big")
    for key, value in pairs:
        out += len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value
    return out


def _seal(key: _Key, plaintext: bytes, context: Mapping[str, str]) -> bytes:
    header = bytes([BLOB_VERSION]) + key.key_id.encode("ascii")
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key.material).encrypt(nonce, plaintext, header + _canonical_context(context))
    return header + nonce + sealed


def _blob_key_id(blob: bytes) -> str:
    """The key id a blob names, after checking its version and length."""
    if len(blob) < _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES or blob[0] != BLOB_VERSION:
        raise _fault("InvalidCiphertextException", "The ciphertext is not a local KMS blob.")
    key_id = blob[1:_HEADER_BYTES].decode("ascii", errors="replace")
    try:
        if str(uuid.UUID(key_id)) == key_id:
            return key_id
    except ValueError:
        pass
    raise _fault("InvalidCiphertextException", "The ciphertext names no valid key id.")


def _unseal(key: _Key, blob: bytes, context: Mapping[str, str]) -> bytes:
    nonce = blob[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
    sealed = blob[_HEADER_BYTES + _NONCE_BYTES :]
    try:
        aad = blob[:_HEADER_BYTES] + _canonical_context(context)
        return AESGCM(key.material).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise _fault(
            "InvalidCiphertextException",
            "The ciphertext is corrupted or the encryption context differs from the one it "
            "was encrypted with.",
        ) from None


# -- request fields ---------------------------------------------------------------------------


def _text(request: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = request.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS:
        raise _fault("ValidationException", f"{name} must be a non-empty string.")
    return value


def _blob(request: Mapping[str, Any], name: str, limit: int) -> bytes:
    value = request.get(name)
    if not isinstance(value, str):
        raise _fault("ValidationException", f"{name} is required (base64).")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _fault("SerializationException", f"{name} is not valid base64.") from None
    if not 1 <= len(data) <= limit:
        raise _fault("ValidationException", f"{name} must be 1 to {limit} bytes long.")
    return data


def _context(request: Mapping[str, Any]) -> dict[str, str]:
    context = request.get("EncryptionContext", {})
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in context.items()
    ):
        raise _fault("ValidationException", "EncryptionContext must map strings to strings.")
    try:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in context.items())
    except UnicodeEncodeError:
        raise _fault("ValidationException", "EncryptionContext is not valid Unicode.") from None
    if size > MAX_CONTEXT_BYTES:
        raise _fault("ValidationException", f"EncryptionContext exceeds {MAX_CONTEXT_BYTES} bytes.")
    return context


@dataclass(frozen=True)
class _Recipient:
    public_key: RSAPublicKey
    pcrs: Mapping[int, bytes]


# -- the service ------------------------------------------------------------------------------


class _Service:
    """KMS's actions on the state; HTTP-free, so in-process helpers share the same code."""

    def __init__(self, state: _State, root: x509.Certificate) -> None:
        self._state = state
        self._root = root
        self.actions: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
            "CreateKey": self.create_key,
            "EnableKey": self._enable_key, "DisableKey": self._disable_key,
            "CreateAlias": self._create_alias, "GetKeyPolicy": self._get_key_policy,
            "PutKeyPolicy": self.put_key_policy, "Encrypt": self._encrypt,
            "Decrypt": self._decrypt, "GenerateDataKey": self._generate_data_key,
            "GenerateRandom": self._generate_random,
        }  # fmt: skip

    # -- keys and policies --

    def create_key(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        """Only symmetric encryption keys. Without a Policy, the default one allows the
        creating principal ``kms:*`` (KMS's default allows the account, i.e. its IAM)."""
        if (
            request.get("KeySpec", _SYMMETRIC) != _SYMMETRIC
            or request.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
        ):
            raise _fault("ValidationException", "The local KMS makes only SYMMETRIC_DEFAULT keys.")
        key_id = str(uuid.uuid4())
        arn = f"arn:aws:kms:{self._state.region}:{self._state.account}:key/{key_id}"
        text = _text(request, "Policy", required=False) or json.dumps(_default_policy(principal))
        self._check_policy(text, principal, arn, request.get("BypassPolicyLockoutSafetyCheck"))
        description = request.get("Description", "")
        if not isinstance(description, str):
            raise _fault("ValidationException", "Description must be a string.")
        key = _Key(key_id, arn, os.urandom(KEY_BYTES), time.time(), description, True, text)
        with self._state.lock:
            self._state.keys[key_id] = key
            self._state.save()
        return {"KeyMetadata": _metadata(key, self._state.account)}

    def put_key_policy(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request, "kms:PutKeyPolicy", principal)
        if request.get("PolicyName", "default") != "default":
            raise _fault("NotFoundException", "The only policy name is 'default'.")
        text = _text(request, "Policy") or ""
        self._check_policy(text, principal, key.arn, request.get("BypassPolicyLockoutSafetyCheck"))
        with self._state.lock:
            key.policy = text
            self._state.save()
        return {}

    def _check_policy(self, text: str, principal: str, arn: str, bypass: object) -> None:
        """KMS's syntax check, then its lockout safety check: unless bypassed, the new policy
        must still let the caller change it (AWS KMS Developer Guide, "Key policies")."""
        try:
            document = policy.parse(text)
        except policy.PolicyError as exc:
            raise _fault("MalformedPolicyDocumentException", str(exc)) from None
        context = policy.condition_context(principal_arn=principal)
        check = policy.Request("kms:PutKeyPolicy", principal, arn, context)
        if bypass is not True and not policy.evaluate(document, check).allowed:
            raise _fault(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )

    def _get_key_policy(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request, "kms:GetKeyPolicy", principal)
        return {"Policy": key.policy, "PolicyName": "default"}

    def _enable_key(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        return self._set_enabled(principal, request, "kms:EnableKey", enabled=True)

    def _disable_key(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        return self._set_enabled(principal, request, "kms:DisableKey", enabled=False)

    def _set_enabled(
        self, principal: str, request: dict[str, Any], action: str, *, enabled: bool
    ) -> dict[str, Any]:
        key = self._key(request, action, principal, need_enabled=False)
        with self._state.lock:
            key.enabled = enabled
            self._state.save()
        return {}

    def _create_alias(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        name = _text(request, "AliasName") or ""
        if not _ALIAS.fullmatch(name) or name.startswith("alias/aws/"):
            raise _fault("ValidationException", "AliasName must look like alias/my-key.")
        key = self._key(request, "kms:CreateAlias", principal, field_name="TargetKeyId")
        with self._state.lock:
            if name in self._state.aliases:
                raise _fault("AlreadyExistsException", f"An alias with the name {name} exists.")
            self._state.aliases[name] = key.key_id
            self._state.save()
        return {}

    # -- cryptographic actions --

    def _encrypt(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        plaintext, context = _blob(request, "Plaintext", MAX_PLAINTEXT), _context(request)
        key = self._key(request, "kms:Encrypt", principal, context=context)
        blob = _seal(key, plaintext, context)
        return {"CiphertextBlob": _b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": _SYMMETRIC}

    def _decrypt(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        blob, context = _blob(request, "CiphertextBlob", MAX_CIPHERTEXT_BLOB), _context(request)
        blob_key_id = _blob_key_id(blob)
        recipient = self._recipient(request)
        if request.get("KeyId") is not None:
            named = self._resolve(_text(request, "KeyId") or "")
            if named.key_id != blob_key_id:
                raise _fault(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a CMK that can perform this "
                    "operation.",
                )
        with self._state.lock:
            blob_key = self._state.keys.get(blob_key_id)
        if blob_key is None:
            raise _fault("InvalidCiphertextException", "The ciphertext names no key of this KMS.")
        key = self._authorized(blob_key, "kms:Decrypt", principal, context, recipient)
        plaintext = _unseal(key, blob, context)
        answer = {"KeyId": key.arn, "EncryptionAlgorithm": _SYMMETRIC}
        return answer | _secret(plaintext, recipient)

    def _generate_data_key(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        spec, count = request.get("KeySpec"), request.get("NumberOfBytes")
        if (spec is None) == (count is None):
            raise _fault("ValidationException", "Specify either KeySpec or NumberOfBytes.")
        if spec is not None and spec not in _DATA_KEY_BYTES:
            raise _fault("ValidationException", "KeySpec must be AES_256 or AES_128.")
        size = _DATA_KEY_BYTES[spec] if spec is not None else _count(count)
        context, recipient = _context(request), self._recipient(request)
        key = self._key(request, "kms:GenerateDataKey", principal, context, recipient)
        plaintext = os.urandom(size)
        blob = _seal(key, plaintext, context)
        return {"CiphertextBlob": _b64(blob), "KeyId": key.arn} | _secret(plaintext, recipient)

    def _generate_random(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        """Not tied to a key, so no key policy applies; real KMS asks IAM, which the
        simulator does not model: any authenticated caller may."""
        size = _count(request.get("NumberOfBytes"))
        return _secret(os.urandom(size), self._recipient(request))

    def _recipient(self, request: Mapping[str, Any]) -> _Recipient | None:
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
            raise _fault("ValidationException", "Recipient must be an object.")
        if recipient.get("KeyEncryptionAlgorithm") != _RECIPIENT_ALGORITHM:
            raise _fault(
                "ValidationException", "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256."
            )
        document = _blob(recipient, "AttestationDocument", MAX_DOCUMENT_BYTES)
        try:
            verified = attestation.verify(document, root=self._root, allow_debug=True)
        except attestation.AttestationError as exc:
            raise _fault("ValidationException", f"Invalid attestation document: {exc}") from None
        if verified.public_key is None:
            raise _fault("ValidationException", "The attestation document has no public_key.")
        try:
            public_key = load_der_public_key(verified.public_key)
        except (ValueError, TypeError):
            public_key = None
        if not isinstance(public_key, RSAPublicKey) or public_key.key_size < MIN_RECIPIENT_RSA_BITS:
            raise _fault("ValidationException", "The document's public_key must be RSA-2048+.")
        return _Recipient(public_key, verified.pcrs)

    # -- finding and authorising keys --

    def _key(
        self,
        request: Mapping[str, Any],
        action: str,
        principal: str,
        context: Mapping[str, str] | None = None,
        recipient: _Recipient | None = None,
        *,
        field_name: str = "KeyId",
        need_enabled: bool = True,
    ) -> _Key:
        key = self._resolve(_text(request, field_name) or "")
        return self._authorized(key, action, principal, context, recipient, need_enabled)

    def _resolve(self, key_id: str) -> _Key:
        """A key by id, key ARN, alias name or alias ARN, of this region and account only."""
        prefix = f"arn:aws:kms:{self._state.region}:{self._state.account}:"
        name = key_id
        if key_id.startswith(prefix):
            name = key_id.removeprefix(prefix)
            name = name.removeprefix("key/") if name.startswith("key/") else name
        with self._state.lock:
            name = self._state.aliases.get(name, name)
            key = self._state.keys.get(name)
        if key is None:
            raise _fault("NotFoundException", f"Key '{key_id}' does not exist")
        return key

    def _authorized(
        self,
        key: _Key,
        action: str,
        principal: str,
        context: Mapping[str, str] | None,
        recipient: _Recipient | None,
        need_enabled: bool = True,
    ) -> _Key:
        conditions = policy.condition_context(
            principal_arn=principal,
            encryption_context=context,
            pcrs=None if recipient is None else recipient.pcrs,
        )
        document = json.loads(key.policy)
        decision = policy.evaluate(document, policy.Request(action, principal, key.arn, conditions))
        _log.info("local KMS: %s by %s on %s: %s", action, principal, key.arn, decision.reason)
        if not decision.allowed:
            why = (
                "with an explicit deny in a resource-based policy"
                if decision.explicit_deny
                else f"because no resource-based policy allows the {action} action"
            )
            raise _fault(
                "AccessDeniedException",
                f"User: {principal} is not authorized to perform: {action} on resource: "
                f"{key.arn} {why}",
            )
        if need_enabled and not key.enabled:
            raise _fault("DisabledException", f"{key.arn} is disabled.")
        return key


def _default_policy(principal: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable the creating principal",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def _metadata(key: _Key, account: str) -> dict[str, Any]:
    return {
        "AWSAccountId": account, "KeyId": key.key_id, "Arn": key.arn,
        "CreationDate": key.created, "Enabled": key.enabled, "Description": key.description,
        "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": "Enabled" if key.enabled else "Disabled",
        "Origin": "AWS_KMS", "KeyManager": "CUSTOMER", "KeySpec": _SYMMETRIC,
        "CustomerMasterKeySpec": _SYMMETRIC, "EncryptionAlgorithms": [_SYMMETRIC],
        "MultiRegion": False,
    }  # fmt: skip


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fault("ValidationException", "NumberOfBytes must be an integer.")
    if not 1 <= value <= MAX_RANDOM_BYTES:
        raise _fault("ValidationException", f"NumberOfBytes must be 1 to {MAX_RANDOM_BYTES}.")
    return value


def _secret(plaintext: bytes, recipient: _Recipient | None) -> dict[str, str]:
    """``Plaintext``, or, for a Recipient, ``CiphertextForRecipient`` and no Plaintext."""
    if recipient is None:
        return {"Plaintext": _b64(plaintext)}
    return {"CiphertextForRecipient": _b64(encode_enveloped_data(plaintext, recipient.public_key))}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- HTTP -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    server: _Server

    def do_POST(self) -> None:
        status, answer = self.server.local_kms._answer(self)
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", _JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("local KMS: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    local_kms: LocalKMS


class LocalKMS:
    """The local KMS on ``127.0.0.1``: ``start()`` returns its URL, ``stop()`` ends it."""

    def __init__(
        self,
        state: Path,
        *,
        simulator_root: x509.Certificate,
        region: str = "us-east-1",
        account: str = "111122223333",
        port: int = 0,
    ) -> None:
        self.region, self.account = region, account
        self._state = _State(Path(state), region, account)
        self._service = _Service(self._state, simulator_root)
        self._port = port
        self._server: _Server | None = None

    # -- lifecycle --

    def start(self) -> str:
        """Listen on loopback and serve in a daemon thread; return the endpoint URL."""
        try:
            import botocore.auth  # noqa: F401  (fail now, not at the first request)
        except ImportError:
            raise LocalKMSError(
                "the local KMS checks signatures with botocore: pip install -e '.[dev]'"
            ) from None
        _log.warning(_WARNING, self._state.folder)
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.local_kms = self
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="local-kms", daemon=True).start()  # fmt: skip
        self._server = server
        return self.url

    @property
    def url(self) -> str:
        if self._server is None:
            raise LocalKMSError("the local KMS is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalKMS:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- in-process administration (the demo, tests) --

    def create_credentials(
        self, principal_arn: str | None = None, *, session_token: bool = False
    ) -> Credentials:
        """Make and store credentials for ``principal_arn`` (default: a ``noflylist-dev``
        user of this account), with a session token if asked, like an assumed role's."""
        principal_arn = principal_arn or f"arn:aws:iam::{self.account}:user/noflylist-dev"
        access_key = ("ASIA" if session_token else "AKIA") + "".join(
            secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)
        )
        secret = secrets.token_urlsafe(30)
        token = secrets.token_urlsafe(48) if session_token else None
        with self._state.lock:
            self._state.credentials[access_key] = _Credential(secret, token, principal_arn)
            self._state.save()
        return Credentials(access_key, secret, token)

    def create_key(self, principal_arn: str, *, policy_document: str | None = None) -> str:
        """CreateKey as ``principal_arn`` without HTTP; returns the key ARN."""
        request = {} if policy_document is None else {"Policy": policy_document}
        metadata = self._service.create_key(principal_arn, request)["KeyMetadata"]
        return str(metadata["Arn"])

    def put_key_policy(self, key_id: str, policy_document: str, *, principal_arn: str) -> None:
        """PutKeyPolicy as ``principal_arn`` without HTTP (the current policy must allow it)."""
        self._service.put_key_policy(principal_arn, {"KeyId": key_id, "Policy": policy_document})

    # -- one request --

    def _answer(self, handler: _Handler) -> tuple[int, dict[str, Any]]:
        """Read, authenticate and run one request; (status, JSON answer)."""
        try:
            body = _read_body(handler)
            headers = {name.lower(): value for name, value in handler.headers.items()}
            credential = _authenticate(
                self._state, handler.command, handler.path, headers, body, datetime.now(UTC)
            )
            action = headers.get("x-amz-target", "").removeprefix(_TARGET_PREFIX)
            run = self._service.actions.get(action)
            if run is None or not headers.get("x-amz-target", "").startswith(_TARGET_PREFIX):
                raise _fault("UnknownOperationException", "The operation is not supported.")
            try:
                request = json.loads(body or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise _fault("SerializationException", "The body is not valid JSON.") from None
            if not isinstance(request, dict):
                raise _fault("SerializationException", "The body must be a JSON object.")
            return 200, run(credential.principal_arn, request)
        except LocalKMSError as exc:
            if exc.code is None:  # unusable state, not a refusal
                _log.error("local KMS: %s", exc)
                return 500, {"__type": "KMSInternalException", "message": str(exc)}
            _log.info("local KMS: refused: %s: %s", exc.code, exc)
            return 400, {"__type": exc.code, "message": str(exc)}
        except Exception:
            _log.exception("local KMS: internal error")
            return 500, {"__type": "KMSInternalException", "message": "internal error"}


def _read_body(handler: _Handler) -> bytes:
    if handler.path.split("?")[0] != "/":
        raise _fault("UnknownOperationException", "KMS answers POST / only.")
    length = handler.headers.get("Content-Length", "")
    if not length.isdigit() or handler.headers.get("Transfer-Encoding"):
        raise _fault("SerializationException", "Send the body with a Content-Length.")
    if int(length) > MAX_REQUEST_BYTES:
        handler.close_connection = True
        raise _fault("ValidationException", f"The request is larger than {MAX_REQUEST_BYTES}.")
    return handler.rfile.read(int(length))


# -- running alone ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m enclave.simulator.kms_server --state DIR [--port N]``: print the URL, serve."""
    from enclave.simulator.ca import load_or_create

    parser = argparse.ArgumentParser(description="The simulator's local KMS (development only).")
    parser.add_argument("--state", type=Path, required=True, help="folder for keys and the CA")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account", default="111122223333")
    parser.add_argument("--new-credentials", metavar="PRINCIPAL_ARN",
                        help="create credentials for this principal and print them")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = load_or_create(args.state).root
    kms = LocalKMS(args.state, simulator_root=root, region=args.region, account=args.account,
                   port=args.port)  # fmt: skip
    with kms:
        if args.new_credentials:
            made = kms.create_credentials(args.new_credentials)
            print(f"AWS_ACCESS_KEY_ID={made.access_key_id}")
            print(f"AWS_SECRET_ACCESS_KEY={made.secret_access_key}")
        print(kms.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
