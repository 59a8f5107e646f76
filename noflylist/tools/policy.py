"""A least-privilege KMS key policy for the no-fly list's key, as pure functions.

:func:`key_policy` returns the *whole* key policy: give its JSON to ``aws kms put-key-policy
--policy-name default`` as it is. Every statement has a fixed ``Sid``, so generating the policy
again for a new image and putting it replaces the statements instead of adding to them.

What the policy says, statement by statement:

1. ``KeyAdministration``: the admin role manages the key (describe, enable, disable, tag,
   rotate, schedule deletion, list and revoke grants), from an explicit list of actions
   (:data:`ADMIN_ACTIONS`), with no wildcard, no cryptographic operation, no ``CreateGrant``;
2. ``PutKeyPolicyHolderIsTrustedWithWhoMayDecrypt`` (left out when ``frozen``): the admin role
   may replace this policy. That is the trust that remains: whoever may ``PutKeyPolicy`` can
   write a policy that lets anyone decrypt, so the Sid says so;
3. ``EnclaveDecryptWithAttestedImage``: the enclave's instance role may ``kms:Decrypt`` only
   with a signed attestation document whose PCRs equal the given measurements
   (``kms:RecipientAttestation:PCR<n>``, AWS KMS Developer Guide, "Condition keys for Nitro
   Enclaves"); several values for one PCR mean any of them (rolling deploys);
4. ``DenyEnclaveDecryptWithoutAttestation``: an explicit Deny for the enclave role when the
   request carries no attestation (``kms:RecipientAttestation:ImageSha384`` is absent), so the
   instance role's credentials alone, stolen from the parent instance, decrypt nothing;
5. ``OperatorSeal`` (optional): the operator role may ``kms:GenerateDataKey`` and
   ``kms:Encrypt``, which ``noflylist seal`` needs, and nothing else;
6. ``DenyDecryptToAdministrationAndOperator``: an explicit Deny of ``kms:Decrypt`` for the
   admin and operator roles, so "they cannot decrypt" is written down, not merely implied;
7. ``DenyEveryoneGrantsReEncryptAndReplicasSoOnlyThisPolicyDecides``: an explicit Deny, to
   every principal (``{"AWS": "*"}``), of the three ways around statements 3 and 4
   (:data:`DENIED_TO_EVERYONE`): a grant (``kms:CreateGrant``) lets its grantee decrypt with
   no condition at all, ``kms:ReEncryptFrom`` decrypts inside KMS and hands the plaintext's
   new ciphertext to a key of the caller's choosing, and a replica (``kms:ReplicateKey``, for
   a multi-Region key) shares the key material under a policy its creator writes. "No
   principal has any permissions to a KMS key unless that permission is provided explicitly
   and never denied" (AWS KMS Developer Guide, "KMS key access and permissions"), so this
   Deny also overrides any grant that is already on the key or that a later edit allows.
   There is no ``kms:GrantIsForAWSResource`` exception: no AWS service uses this key.

AWS's own key-administrator statement ("Allows key administrators to administer the KMS
key") gives ``kms:Create*``, which includes ``kms:CreateGrant``, and warns that "key
administrators have permission to change the key policy and create grants, [so] they can
give themselves and others AWS KMS permissions not specified in this policy". With it, the
explicit Deny of statement 6 covers only the admin and operator: the admin could grant
``Decrypt`` to any other principal with no attestation. Statements 1 and 7 close that.

``frozen=True`` leaves ``kms:PutKeyPolicy`` out entirely: nobody may ever change the policy
(there is no account-principal statement to fall back on). KMS's lockout safety check refuses
such a policy unless the request sets ``BypassPolicyLockoutSafetyCheck`` (AWS KMS API
Reference, PutKeyPolicy and CreateKey: without it, "the key policy must allow the principal
that is making the PutKeyPolicy request to make a subsequent PutKeyPolicy request"). A new
image then needs a new key and a resealed list. ``docs/deploy.md`` says how to apply it.

Deliberately absent: the usual statement that delegates to the account's IAM policies
(``arn:aws:iam::ACCOUNT:root``), so no IAM policy can widen this one; ``Principal: "*"`` in
any Allow; and the alias actions (``CreateAlias``, ``UpdateAlias``, ``DeleteAlias``): the
image pins the key's ARN, so aliases serve nothing, and moving one is a way to make the
operator seal to another key. ``Resource`` is ``"*"`` because a key policy applies only to
its own key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from enclave import strict_json
from enclave.errors import NoflylistError
from enclave.nsm_limits import MAX_PCRS, PCR_BYTES

__all__ = [
    "MAX_POLICY_BYTES",
    "SHA384_HEX_CHARS",
    "PolicyError",
    "key_policy",
    "measurements_from_describe_eif",
    "measurements_from_eif",
    "parse_pcr",
]

#: Nitro PCRs are SHA-384 digests: 48 bytes, 96 hexadecimal characters.
SHA384_HEX_CHARS = 2 * PCR_BYTES
#: Indices accepted for ``kms:RecipientAttestation:PCR<n>``: those of the NSM's PCR bank.
MAX_PCR_INDEX = MAX_PCRS - 1
#: PCR0 is the enclave image: the policy is meaningless without it.
IMAGE_PCR = 0
#: KMS refuses key policies larger than 32 KiB (AWS KMS quotas, "Key policy document size").
MAX_POLICY_BYTES = 32 * 1024
#: ``nitro-cli describe-eif`` prints a few KiB; a bigger file is not its output.
MAX_DESCRIBE_EIF_BYTES = 1024 * 1024
#: Untrusted or mistyped values quoted back in errors are cut to this many characters.
_PREVIEW_CHARS = 80

#: Everything that manages the key and nothing that uses it or widens who may, each action
#: named (no wildcard picks up actions KMS adds later). Decided one by one from AWS's list
#: (AWS KMS Developer Guide, "AWS KMS permissions"); what is left out, and why:
#: ``CreateGrant`` (a grant decrypts without attestation), ``ReEncrypt*`` (decrypts inside KMS
#: into a key of the caller's choosing), ``Decrypt``/``Encrypt``/``GenerateDataKey*`` (the
#: admin uses no data), ``*Alias`` (see the module docstring), ``ReplicateKey`` and
#: ``UpdatePrimaryRegion`` (multi-Region keys only; a replica takes a policy of its creator's
#: choosing), ``ImportKeyMaterial``/``GetParametersForImport``/``DeleteImportedKeyMaterial``
#: (keys without AWS-made material only), and ``PutKeyPolicy``, which is its own statement so
#: that its Sid can say what it trusts and ``frozen`` can leave it out.
ADMIN_ACTIONS = (
    "kms:DescribeKey",  # read-only: the key's metadata and state
    "kms:GetKeyPolicy",  # read-only: auditors and the admin check what is in force
    "kms:ListKeyPolicies",  # read-only: the policy's name ("default")
    "kms:ListResourceTags",  # read-only
    "kms:ListGrants",  # read-only: find grants made before this policy...
    "kms:RevokeGrant",  # ...and revoke them; revoking only narrows who may use the key
    "kms:EnableKey",  # availability only: a disabled key decrypts nothing for anyone
    "kms:DisableKey",  # the kill switch: stop every decryption at once
    "kms:EnableKeyRotation",  # rotation keeps old material for old ciphertexts, same ARN;
    "kms:DisableKeyRotation",  # nobody gains access to anything by it
    "kms:GetKeyRotationStatus",
    "kms:ListKeyRotations",
    "kms:RotateKeyOnDemand",
    "kms:UpdateKeyDescription",  # a label
    "kms:TagResource",  # tags decide access only through conditions on them, and this
    "kms:UntagResource",  # policy has none and lets no IAM policy allow anything
    "kms:ScheduleKeyDeletion",  # destroys, never discloses (7 to 30 days' notice, logged)
    "kms:CancelKeyDeletion",
)
#: Replacing the key policy: left out entirely when the policy is frozen.
PUT_KEY_POLICY = "kms:PutKeyPolicy"
#: Denied to every principal: each is a way to use the key that statements 3 and 4 do not see.
DENIED_TO_EVERYONE = ("kms:CreateGrant", "kms:ReEncrypt*", "kms:ReplicateKey")
#: The Sid of the one statement that allows ``kms:PutKeyPolicy``: it names the trust it gives.
POLICY_CHANGE_SID = "PutKeyPolicyHolderIsTrustedWithWhoMayDecrypt"
#: The Sid of the Deny of :data:`DENIED_TO_EVERYONE`: it names what the Deny is for.
NO_BYPASS_SID = "DenyEveryoneGrantsReEncryptAndReplicasSoOnlyThisPolicyDecides"
#: ``Id`` of the policy; the frozen one says so, for whoever reads ``get-key-policy``.
POLICY_ID = "noflylist-key-policy"
FROZEN_POLICY_ID = "noflylist-key-policy-frozen-no-PutKeyPolicy"
#: What ``noflylist seal`` calls: a fresh data key, or a small secret encrypted directly.
OPERATOR_ACTIONS = ("kms:GenerateDataKey", "kms:Encrypt")
#: The only operation the enclave performs with the key.
DECRYPT = "kms:Decrypt"
#: Present exactly when a request carries a signed Nitro attestation document.
_ATTESTED_IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"
_PCR_KEY = "kms:RecipientAttestation:PCR{}"

_ACCOUNT = re.compile(r"[0-9]{12}")
#: ``arn:<partition>:iam::<account>:role/<optional path/><name>``; names and paths use the
#: characters IAM allows (IAM User Guide, "IAM identifiers"), names 1 to 64 of them.
_ROLE_ARN = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):iam::([0-9]{12}):role/(?:[\x21-\x7e]{0,510}/)?[\w+=,.@-]{1,64}",
    re.ASCII,
)
_HEX = re.compile(r"[0-9a-fA-F]+")


class PolicyError(NoflylistError):
    """An input to the key policy is invalid; the message names the flag and what to give."""


def parse_pcr(text: str, flag: str) -> tuple[int, bytes]:
    """Parse ``N=HEX`` (a PCR index 0..31 and 96 hex characters) given to ``flag``."""
    index_text, separator, value = text.partition("=")
    if not separator or not index_text.isdigit() or not index_text.isascii():
        raise PolicyError(
            f"{flag}: expected N=HEX (e.g. 0=<96 hex characters>), got {_preview(text)}"
        )
    index = int(index_text)
    if index > MAX_PCR_INDEX:
        raise PolicyError(f"{flag}: PCR index {index} is out of range 0..{MAX_PCR_INDEX}")
    return index, _pcr_value(value, f"{flag} {index}=")


def key_policy(
    *,
    account: str,
    admin_role: str,
    enclave_role: str,
    pcrs: Mapping[int, Sequence[bytes]],
    operator_role: str | None = None,
    frozen: bool = False,
) -> dict[str, object]:
    """Return the key policy (a JSON-ready dict) described in the module docstring.

    ``pcrs`` maps a PCR index to the measurements accepted for it (any one of them); PCR0 is
    required. All roles must be IAM role ARNs in ``account``; the enclave role must differ
    from the others, since they may not decrypt and it may. ``frozen`` leaves
    ``kms:PutKeyPolicy`` out, so that nobody can ever change the policy (KMS then takes it
    only with ``BypassPolicyLockoutSafetyCheck``). Errors name the command-line flag.
    """
    _check_account(account)
    admin = _check_role(admin_role, "--admin-role", account)
    enclave = _check_role(enclave_role, "--enclave-role", account)
    operator = (
        None if operator_role is None else _check_role(operator_role, "--operator-role", account)
    )
    if enclave in (admin, operator):
        raise PolicyError(
            "--enclave-role must differ from --admin-role and --operator-role: the enclave's "
            "role may decrypt and theirs may not"
        )
    measurements = _condition_values(pcrs)
    statements: list[dict[str, object]] = [
        _statement("KeyAdministration", "Allow", [admin], list(ADMIN_ACTIONS))
    ]
    if not frozen:
        statements.append(_statement(POLICY_CHANGE_SID, "Allow", [admin], PUT_KEY_POLICY))
    statements += [
        _statement(
            "EnclaveDecryptWithAttestedImage",
            "Allow",
            [enclave],
            DECRYPT,
            {"StringEqualsIgnoreCase": measurements},
        ),
        _statement(
            "DenyEnclaveDecryptWithoutAttestation",
            "Deny",
            [enclave],
            DECRYPT,
            {"Null": {_ATTESTED_IMAGE_KEY: "true"}},
        ),
    ]
    if operator is not None:
        statements.append(_statement("OperatorSeal", "Allow", [operator], list(OPERATOR_ACTIONS)))
    no_decrypt = [admin] if operator in (None, admin) else [admin, operator]
    statements.append(
        _statement("DenyDecryptToAdministrationAndOperator", "Deny", no_decrypt, DECRYPT)
    )
    statements.append(_statement(NO_BYPASS_SID, "Deny", ["*"], list(DENIED_TO_EVERYONE)))
    policy: dict[str, object] = {
        "Version": "2012-10-17",
        "Id": FROZEN_POLICY_ID if frozen else POLICY_ID,
        "Statement": statements,
    }
    size = len(json.dumps(policy).encode())
    if size > MAX_POLICY_BYTES:
        raise PolicyError(
            f"--pcr: the policy would be {size} bytes; KMS takes at most {MAX_POLICY_BYTES}: "
            "drop measurements of images no longer deployed"
        )
    return policy


def measurements_from_describe_eif(text: str | bytes) -> dict[int, bytes]:
    """PCR0 (and PCR8 when present) from ``nitro-cli describe-eif``/``build-enclave`` output.

    The shape is ``{"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": hex,
    "PCR1": hex, "PCR2": hex, ["PCR8": hex]}, ...}`` (Nitro Enclaves User Guide,
    "nitro-cli describe-eif"); Enclaver prints the same ``Measurements`` object. PCR1 and PCR2
    (kernel and boot ramfs, application) are implied by PCR0, which hashes the whole image.
    The file is input like any other: only :class:`PolicyError` leaves, whatever it holds.
    """
    try:
        return _measurements(text)
    except PolicyError:
        raise
    except Exception as exc:  # the boundary: the file is input, only PolicyError leaves
        raise PolicyError(
            f"--from-describe-eif: unreadable ({type(exc).__name__}); give the output of "
            "nitro-cli describe-eif"
        ) from None


def measurements_from_eif(path: Path, flag: str) -> dict[int, bytes]:
    """PCR0, PCR1 and PCR2 (and PCR8 when signed) of an EIF or Enclaver release image.

    Read by :func:`noflylist.tools.measure.measure`, as ``noflylist measure`` prints them, so
    the values pinned are those of the very file that is deployed, not of a copied text. All
    three are taken: PCR0 alone fixes the image, and PCR1 (kernel, cmdline, boot ramdisk:
    the boot blob set) and PCR2 (the application) are what a reader compares one by one, so
    naming them costs nothing and says which part moved. Any failure to read the file is a
    :class:`PolicyError` naming ``flag`` (the command-line option that gave ``path``).
    """
    from noflylist.tools.measure import measure

    try:
        found, _ = measure(path)
    except (NoflylistError, OSError) as exc:
        raise PolicyError(f"{flag}: {exc}") from None
    texts = {0: found.measurements.pcr0, 1: found.measurements.pcr1, 2: found.measurements.pcr2}
    if found.measurements.pcr8 is not None:
        texts[8] = found.measurements.pcr8
    return {index: _pcr_value(text, f"{flag} {path}: PCR{index}") for index, text in texts.items()}


def _measurements(text: str | bytes) -> dict[int, bytes]:
    flag = "--from-describe-eif"
    if len(text) > MAX_DESCRIBE_EIF_BYTES:
        raise PolicyError(f"{flag}: the file exceeds {MAX_DESCRIBE_EIF_BYTES} bytes")
    try:
        document = strict_json.loads(text, max_bytes=MAX_DESCRIBE_EIF_BYTES)
    except strict_json.JSONError as exc:
        raise PolicyError(
            f"{flag}: not JSON we read ({exc}); give the output of nitro-cli describe-eif"
        ) from None
    measurements = document.get("Measurements") if isinstance(document, dict) else None
    if not isinstance(measurements, dict):
        raise PolicyError(
            f'{flag}: no "Measurements" object; give the output of nitro-cli describe-eif'
        )
    algorithm = measurements.get("HashAlgorithm", "Sha384")
    if not isinstance(algorithm, str) or not algorithm.startswith("Sha384"):
        raise PolicyError(f"{flag}: HashAlgorithm {_preview(algorithm)} is not Sha384")
    found: dict[int, bytes] = {}
    for index in (IMAGE_PCR, 8):
        value = measurements.get(f"PCR{index}")
        if value is None and index != IMAGE_PCR:
            continue
        if not isinstance(value, str):
            raise PolicyError(f"{flag}: Measurements.PCR{index} is missing or not a string")
        found[index] = _pcr_value(value, f"{flag} Measurements.PCR{index}")
    return found


def _statement(
    sid: str,
    effect: str,
    principals: list[str],
    action: str | list[str],
    condition: dict[str, dict[str, object]] | None = None,
) -> dict[str, object]:
    statement: dict[str, object] = {
        "Sid": sid,
        "Effect": effect,
        "Principal": {"AWS": principals[0] if len(principals) == 1 else principals},
        "Action": action,
        "Resource": "*",
    }
    if condition is not None:
        statement["Condition"] = condition
    return statement


def _condition_values(pcrs: Mapping[int, Sequence[bytes]]) -> dict[str, object]:
    """``{"kms:RecipientAttestation:PCR<n>": hex | [hex, ...]}``, PCR0 first, lowercase hex."""
    if not pcrs.get(IMAGE_PCR):
        raise PolicyError(
            "--pcr: PCR0 (the enclave image) is required: give --pcr 0=<96 hex characters>, "
            "--from-eif or --from-describe-eif"
        )
    values: dict[str, object] = {}
    for index in sorted(pcrs):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_PCR_INDEX:
            raise PolicyError(
                f"--pcr: PCR index {_preview(index)} is out of range 0..{MAX_PCR_INDEX}"
            )
        unique: list[str] = []
        for value in pcrs[index]:
            if not isinstance(value, bytes) or len(value) * 2 != SHA384_HEX_CHARS:
                raise PolicyError(
                    f"--pcr: each PCR{index} value must be {PCR_BYTES} bytes (SHA-384)"
                )
            if not any(value):
                raise PolicyError(_zero_refusal(f"--pcr {index}="))
            if value.hex() not in unique:
                unique.append(value.hex())
        if not unique:
            raise PolicyError(f"--pcr: PCR{index} was given no value")
        values[_PCR_KEY.format(index)] = unique[0] if len(unique) == 1 else unique
    return values


def _pcr_value(text: str, label: str) -> bytes:
    if len(text) != SHA384_HEX_CHARS or not _HEX.fullmatch(text):
        raise PolicyError(
            f"{label}: expected {SHA384_HEX_CHARS} hexadecimal characters (a SHA-384 PCR), "
            f"got {len(text)} characters"
        )
    value = bytes.fromhex(text)
    if not any(value):
        raise PolicyError(_zero_refusal(label))
    return value


def _zero_refusal(label: str) -> str:
    return (
        f"{label}: an all-zero PCR is what every debug-mode enclave reports (its parent can "
        "read its memory); pinning it would admit them all: use the production image's value"
    )


def _check_account(account: str) -> None:
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise PolicyError(f"--account: expected a 12-digit AWS account id, got {_preview(account)}")


def _check_role(arn: str, flag: str, account: str) -> str:
    match = _ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise PolicyError(
            f"{flag}: expected an IAM role ARN (arn:aws:iam::<account>:role/<name>), got "
            f"{_preview(arn)}"
        )
    if match.group(2) != account:
        raise PolicyError(
            f"{flag}: the role belongs to account {match.group(2)}, not --account {account}; "
            "this policy does not grant access across accounts"
        )
    return arn


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"
