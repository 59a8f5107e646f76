"""Grants in the local KMS: the CreateGrant request's fields, and which grant allows a call.

A grant lets its grantee principal call the operations it lists on one key, without the key
policy naming that principal (AWS KMS Developer Guide, "Grants in AWS KMS"). That is why a
key policy that lets its admin ``kms:CreateGrant`` lets the admin give ``Decrypt`` to anyone,
and why :mod:`noflylist.tools.policy` denies it to everyone. The simulator models grants so that
tests can show both: the grant made and used, and the grant refused.

What is modelled, and how :mod:`~noflylist_simulator.kms_actions` uses it:

* a call that the key policy neither allows nor explicitly denies is allowed when a grant on
  the key names the caller, exactly, as grantee and lists the operation (:func:`find`). An
  explicit Deny in the key policy wins over every grant: "No AWS principal has any
  permissions to a KMS key unless that permission is provided explicitly and never denied"
  (AWS KMS Developer Guide, "KMS key access and permissions");
* a grantee that may call CreateGrant only through a grant may create grants for some or all
  of that grant's operations, no others ("Granting CreateGrant permission");
* grants take effect at once (real KMS: "a brief delay, usually less than five minutes"), so
  ``GrantTokens`` are accepted and ignored.

Not modelled, and refused rather than ignored (ignoring would make a grant wider than it was
asked to be): ``Constraints``; RetireGrant is not implemented.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from noflylist_simulator.kms_errors import fault
from noflylist_simulator.kms_state import Grant

__all__ = ["MAX_GRANTS_PER_KEY", "find", "list_entry", "new_grant", "operation_of"]

#: AWS KMS quota "Grants per KMS key": past it, CreateGrant is LimitExceededException.
MAX_GRANTS_PER_KEY = 50_000
#: Operations a grant may list for a symmetric encryption key (the only kind the simulator
#: makes); KMS's API accepts others (Sign, GenerateMac...) only for other kinds of key.
SYMMETRIC_GRANT_OPERATIONS = frozenset(
    {
        "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "ReEncryptFrom",
        "ReEncryptTo", "CreateGrant", "RetireGrant", "DescribeKey",
    }
)  # fmt: skip
#: KMS API: ``PrincipalIdType`` (1 to 256 characters) and ``GrantNameType`` (1 to 256).
_PRINCIPAL = re.compile(r"[\w+=,.@:/-]{1,256}", re.ASCII)
_NAME = re.compile(r"[a-zA-Z0-9:/_-]{1,256}")
#: Bytes of randomness in a grant id (KMS's are 64 hexadecimal characters).
_GRANT_ID_BYTES = 32


def new_grant(request: Mapping[str, Any], key_id: str) -> Grant:
    """The grant a CreateGrant ``request`` asks for on ``key_id``, its fields checked."""
    if request.get("Constraints") is not None:
        raise fault(
            "ValidationException",
            "The local KMS does not model grant Constraints; create the grant without them.",
        )
    grantee = _principal(request, "GranteePrincipal")
    retiring = _principal(request, "RetiringPrincipal") if "RetiringPrincipal" in request else None
    operations = request.get("Operations")
    if (
        not isinstance(operations, list)
        or not operations
        or not all(isinstance(o, str) and o in SYMMETRIC_GRANT_OPERATIONS for o in operations)
    ):
        allowed = ", ".join(sorted(SYMMETRIC_GRANT_OPERATIONS))
        raise fault(
            "ValidationException",
            f"Operations must be a non-empty list of operations of a symmetric key: {allowed}.",
        )
    name = request.get("Name", "")
    if name and not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise fault("ValidationException", "Name must be 1 to 256 of [a-zA-Z0-9:/_-].")
    return Grant(
        grant_id=secrets.token_hex(_GRANT_ID_BYTES),
        key_id=key_id,
        grantee_principal=grantee,
        operations=tuple(dict.fromkeys(operations)),
        retiring_principal=retiring,
        name=name,
        created=time.time(),
    )


def operation_of(action: str) -> str:
    """KMS's operation name for a policy action: ``kms:Decrypt`` -> ``Decrypt``."""
    return action.removeprefix("kms:")


def find(
    grants: Iterable[Grant], key_id: str, principal: str, operations: Iterable[str]
) -> Grant | None:
    """A grant on ``key_id`` whose grantee is ``principal`` and that lists every one of
    ``operations``, or None. Only the grantee: a grant's retiring principal gains no use."""
    wanted = set(operations)
    for grant in grants:
        if (
            grant.key_id == key_id
            and grant.grantee_principal == principal
            and wanted <= set(grant.operations)
        ):
            return grant
    return None


def list_entry(grant: Grant, key_arn: str, account: str) -> dict[str, Any]:
    """The grant as ListGrants answers it (KMS API Reference, ``GrantListEntry``)."""
    entry: dict[str, Any] = {
        "KeyId": key_arn, "GrantId": grant.grant_id, "Name": grant.name,
        "CreationDate": grant.created, "GranteePrincipal": grant.grantee_principal,
        "IssuingAccount": f"arn:aws:iam::{account}:root", "Operations": list(grant.operations),
    }  # fmt: skip
    if grant.retiring_principal is not None:
        entry["RetiringPrincipal"] = grant.retiring_principal
    return entry


def _principal(request: Mapping[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not _PRINCIPAL.fullmatch(value):
        raise fault("ValidationException", f"{name} must be a principal of 1 to 256 characters.")
    return value
