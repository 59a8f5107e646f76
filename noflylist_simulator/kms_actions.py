"""The local KMS's actions, HTTP-free: what each call does to the state, and who may do it.

Every call on a key is authorised by the key's policy (:mod:`noflylist_simulator.policy`), with
KMS's condition keys, ``kms:RecipientAttestation:*`` included, then, if the policy neither
allows nor explicitly denies it, by the key's grants (:mod:`noflylist_simulator.kms_grants`).
With a ``Recipient`` (its attestation document verified by
:func:`~noflylist_simulator.kms_request.recipient_field`), the answer is
``CiphertextForRecipient``, a CMS EnvelopedData for the document's public key, never
``Plaintext`` (:func:`_secret`).

Actions: CreateKey, DescribeKey, EnableKey, DisableKey, CreateAlias, GetKeyPolicy,
PutKeyPolicy, CreateGrant, ListGrants, RevokeGrant, Encrypt, Decrypt, GenerateDataKey and
GenerateRandom. Each takes the caller's principal ARN and the request's JSON object, and
returns the answer's JSON object or raises
:class:`~noflylist_simulator.kms_errors.LocalKMSError` with KMS's error code.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

from cryptography import x509

from enclave.cms import AES256_KEY_BYTES
from noflylist_simulator import kms_blob, kms_grants, policy
from noflylist_simulator.cms_writer import encode_enveloped_data
from noflylist_simulator.kms_errors import fault
from noflylist_simulator.kms_request import (
    MAX_CIPHERTEXT_BLOB,
    MAX_PLAINTEXT,
    Recipient,
    blob_field,
    context_field,
    count_field,
    recipient_field,
    text_field,
)
from noflylist_simulator.kms_state import Key, State

__all__ = ["Service"]

#: The local KMS logs under one name, whichever of its modules speaks.
_log = logging.getLogger("noflylist_simulator.kms_server")

_SYMMETRIC = "SYMMETRIC_DEFAULT"
_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}
_ALIAS = re.compile(r"alias/[A-Za-z0-9/_-]{1,250}")


class Service:
    """KMS's actions on the state; HTTP-free, so in-process helpers share the same code."""

    def __init__(self, state: State, root: x509.Certificate) -> None:
        self._state = state
        self._root = root
        self.actions: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
            "CreateKey": self.create_key, "DescribeKey": self._describe_key,
            "EnableKey": self._enable_key, "DisableKey": self._disable_key,
            "CreateAlias": self._create_alias, "GetKeyPolicy": self._get_key_policy,
            "PutKeyPolicy": self.put_key_policy, "CreateGrant": self._create_grant,
            "ListGrants": self._list_grants, "RevokeGrant": self._revoke_grant,
            "Encrypt": self._encrypt,
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
            raise fault("ValidationException", "The local KMS makes only SYMMETRIC_DEFAULT keys.")
        key_id = str(uuid.uuid4())
        arn = f"arn:aws:kms:{self._state.region}:{self._state.account}:key/{key_id}"
        text = text_field(request, "Policy", required=False)
        text = text or json.dumps(_default_policy(principal))
        self._check_policy(text, principal, arn, request.get("BypassPolicyLockoutSafetyCheck"))
        description = request.get("Description", "")
        if not isinstance(description, str):
            raise fault("ValidationException", "Description must be a string.")
        key = Key(key_id, arn, os.urandom(AES256_KEY_BYTES), time.time(), description, True, text)
        with self._state.lock:
            self._state.keys[key_id] = key
            self._state.save()
        return {"KeyMetadata": _metadata(key, self._state.account)}

    def put_key_policy(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request, "kms:PutKeyPolicy", principal)
        if request.get("PolicyName", "default") != "default":
            raise fault("NotFoundException", "The only policy name is 'default'.")
        text = text_field(request, "Policy") or ""
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
            raise fault("MalformedPolicyDocumentException", str(exc)) from None
        context = policy.condition_context(principal_arn=principal)
        check = policy.Request("kms:PutKeyPolicy", principal, arn, context)
        if bypass is not True and not policy.evaluate(document, check).allowed:
            raise fault(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )

    def _get_key_policy(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request, "kms:GetKeyPolicy", principal)
        return {"Policy": key.policy, "PolicyName": "default"}

    def _describe_key(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request, "kms:DescribeKey", principal, need_enabled=False)
        return {"KeyMetadata": _metadata(key, self._state.account)}

    # -- grants (noflylist_simulator.kms_grants) --

    def _create_grant(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        """A grant made through a grant may list only that grant's operations, so the grant
        that allows this call must list the new grant's operations too."""
        key = self._resolve(text_field(request, "KeyId") or "")
        grant = kms_grants.new_grant(request, key.key_id)
        self._authorized(key, "kms:CreateGrant", principal, None, None,
                         grant_must_list=grant.operations, grant_call=True)  # fmt: skip
        _dry_run(request)
        with self._state.lock:
            count = sum(g.key_id == key.key_id for g in self._state.grants.values())
            if count >= kms_grants.MAX_GRANTS_PER_KEY:
                raise fault(
                    "LimitExceededException",
                    f"{key.arn} has {count} grants, KMS's quota: revoke grants no longer used.",
                )
            self._state.grants[grant.grant_id] = grant
            self._state.save()
        _log.warning("local KMS: grant %s on %s lets %s call %s", grant.grant_id, key.arn,
                     grant.grantee_principal, ", ".join(grant.operations))  # fmt: skip
        return {"GrantId": grant.grant_id, "GrantToken": secrets.token_urlsafe(48)}

    def _list_grants(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        """Every grant on the key in one page (``Truncated`` is always false)."""
        key = self._key(request, "kms:ListGrants", principal, need_enabled=False,
                        grant_call=True)  # fmt: skip
        with self._state.lock:
            grants = [g for g in self._state.grants.values() if g.key_id == key.key_id]
        entries = [kms_grants.list_entry(g, key.arn, self._state.account) for g in grants]
        return {"Grants": entries, "Truncated": False}

    def _revoke_grant(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request, "kms:RevokeGrant", principal, need_enabled=False,
                        grant_call=True)  # fmt: skip
        grant_id = text_field(request, "GrantId") or ""
        _dry_run(request)
        with self._state.lock:
            grant = self._state.grants.get(grant_id)
            if grant is None or grant.key_id != key.key_id:
                raise fault("NotFoundException", f"Grant '{grant_id}' does not exist on {key.arn}")
            del self._state.grants[grant_id]
            self._state.save()
        return {}

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
        name = text_field(request, "AliasName") or ""
        if not _ALIAS.fullmatch(name) or name.startswith("alias/aws/"):
            raise fault("ValidationException", "AliasName must look like alias/my-key.")
        key = self._key(request, "kms:CreateAlias", principal, field_name="TargetKeyId")
        with self._state.lock:
            if name in self._state.aliases:
                raise fault("AlreadyExistsException", f"An alias with the name {name} exists.")
            self._state.aliases[name] = key.key_id
            self._state.save()
        return {}

    # -- cryptographic actions --

    def _encrypt(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        plaintext, context = blob_field(request, "Plaintext", MAX_PLAINTEXT), context_field(request)
        key = self._key(request, "kms:Encrypt", principal, context=context)
        blob = kms_blob.seal(key.key_id, key.material, plaintext, context)
        return {"CiphertextBlob": _b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": _SYMMETRIC}

    def _decrypt(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        blob = blob_field(request, "CiphertextBlob", MAX_CIPHERTEXT_BLOB)
        context = context_field(request)
        blob_key_id = kms_blob.blob_key_id(blob)
        recipient = recipient_field(request, self._root)
        if request.get("KeyId") is not None:
            named = self._resolve(text_field(request, "KeyId") or "")
            if named.key_id != blob_key_id:
                raise fault(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a CMK that can perform this "
                    "operation.",
                )
        with self._state.lock:
            blob_key = self._state.keys.get(blob_key_id)
        if blob_key is None:
            raise fault("InvalidCiphertextException", "The ciphertext names no key of this KMS.")
        key = self._authorized(blob_key, "kms:Decrypt", principal, context, recipient)
        plaintext = kms_blob.unseal(key.material, blob, context)
        answer = {"KeyId": key.arn, "EncryptionAlgorithm": _SYMMETRIC}
        return answer | _secret(plaintext, recipient)

    def _generate_data_key(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        spec, count = request.get("KeySpec"), request.get("NumberOfBytes")
        if (spec is None) == (count is None):
            raise fault("ValidationException", "Specify either KeySpec or NumberOfBytes.")
        if spec is not None and spec not in _DATA_KEY_BYTES:
            raise fault("ValidationException", "KeySpec must be AES_256 or AES_128.")
        size = _DATA_KEY_BYTES[spec] if spec is not None else count_field(count)
        context, recipient = context_field(request), recipient_field(request, self._root)
        key = self._key(request, "kms:GenerateDataKey", principal, context, recipient)
        plaintext = os.urandom(size)
        blob = kms_blob.seal(key.key_id, key.material, plaintext, context)
        return {"CiphertextBlob": _b64(blob), "KeyId": key.arn} | _secret(plaintext, recipient)

    def _generate_random(self, principal: str, request: dict[str, Any]) -> dict[str, Any]:
        """Not tied to a key, so no key policy applies; real KMS asks IAM, which the
        simulator does not model: any authenticated caller may."""
        size = count_field(request.get("NumberOfBytes"))
        return _secret(os.urandom(size), recipient_field(request, self._root))

    # -- finding and authorising keys --

    def _key(
        self,
        request: Mapping[str, Any],
        action: str,
        principal: str,
        context: Mapping[str, str] | None = None,
        recipient: Recipient | None = None,
        *,
        field_name: str = "KeyId",
        need_enabled: bool = True,
        grant_call: bool = False,
    ) -> Key:
        key = self._resolve(text_field(request, field_name) or "")
        return self._authorized(
            key, action, principal, context, recipient, need_enabled, grant_call=grant_call
        )

    def _resolve(self, key_id: str) -> Key:
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
            raise fault("NotFoundException", f"Key '{key_id}' does not exist")
        return key

    def _authorized(
        self,
        key: Key,
        action: str,
        principal: str,
        context: Mapping[str, str] | None,
        recipient: Recipient | None,
        need_enabled: bool = True,
        *,
        grant_must_list: Collection[str] = (),
        grant_call: bool = False,
    ) -> Key:
        """The key policy decides; where it neither allows nor explicitly denies, a grant
        that names ``principal`` and lists the operation (and ``grant_must_list``) allows."""
        conditions = policy.condition_context(
            principal_arn=principal,
            encryption_context=context,
            pcrs=None if recipient is None else recipient.pcrs,
            grant_call=grant_call,
        )
        document = json.loads(key.policy)
        decision = policy.evaluate(document, policy.Request(action, principal, key.arn, conditions))
        if not decision.allowed and not decision.explicit_deny:
            with self._state.lock:
                grants = list(self._state.grants.values())
            wanted = [kms_grants.operation_of(action), *grant_must_list]
            grant = kms_grants.find(grants, key.key_id, principal, wanted)
            if grant is not None:
                decision = policy.Decision(True, False, f"grant {grant.grant_id} allows")
        _log.info("local KMS: %s by %s on %s: %s", action, principal, key.arn, decision.reason)
        if not decision.allowed:
            why = (
                "with an explicit deny in a resource-based policy"
                if decision.explicit_deny
                else f"because no resource-based policy allows the {action} action"
            )
            raise fault(
                "AccessDeniedException",
                f"User: {principal} is not authorized to perform: {action} on resource: "
                f"{key.arn} {why}",
            )
        if need_enabled and not key.enabled:
            raise fault("DisabledException", f"{key.arn} is disabled.")
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


def _dry_run(request: Mapping[str, Any]) -> None:
    """``DryRun``: KMS answers a call that would have succeeded with this error."""
    if request.get("DryRun") is True:
        raise fault("DryRunOperationException", "The request would have succeeded.")


def _metadata(key: Key, account: str) -> dict[str, Any]:
    return {
        "AWSAccountId": account, "KeyId": key.key_id, "Arn": key.arn,
        "CreationDate": key.created, "Enabled": key.enabled, "Description": key.description,
        "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": "Enabled" if key.enabled else "Disabled",
        "Origin": "AWS_KMS", "KeyManager": "CUSTOMER", "KeySpec": _SYMMETRIC,
        "CustomerMasterKeySpec": _SYMMETRIC, "EncryptionAlgorithms": [_SYMMETRIC],
        "MultiRegion": False,
    }  # fmt: skip


def _secret(plaintext: bytes, recipient: Recipient | None) -> dict[str, str]:
    """``Plaintext``, or, for a Recipient, ``CiphertextForRecipient`` and no Plaintext."""
    if recipient is None:
        return {"Plaintext": _b64(plaintext)}
    return {"CiphertextForRecipient": _b64(encode_enveloped_data(plaintext, recipient.public_key))}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
