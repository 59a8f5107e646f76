"""KMS key-policy evaluation for the local KMS (development and tests only).

A key policy is the one resource-based policy of a KMS key. With no IAM policies in the
simulator, IAM's evaluation logic (IAM User Guide, "Policy evaluation logic") reduces to three
steps, applied in :func:`evaluate`:

1. a matching ``Deny`` statement denies, whatever else the policy says (explicit deny);
2. otherwise a matching ``Allow`` statement allows;
3. otherwise the request is denied (implicit deny).

Grants are the key's other allow: where step 3 would deny, the actions look for a grant
(:mod:`~noflylist_simulator.kms_grants`), so an explicit Deny (step 1) wins over grants too.

A statement matches when its ``Principal``, ``Action`` (or ``NotAction``), ``Resource`` and every
``Condition`` match the request. What this module does not understand (an operator, a condition
key, ``NotPrincipal``...) fails closed: such a statement never allows, and always denies. The
reason is logged, so a policy author learns why.

Supported, as KMS key policies use them:

* ``Principal``: ``"*"`` or ``{"AWS": arn | [arns]}``, compared exactly. An account principal
  (``arn:aws:iam::111122223333:root``) delegates to IAM in real KMS; the simulator has no IAM,
  so it matches only credentials whose principal ARN is exactly that;
* ``Action``/``NotAction``: ``kms:Decrypt``-style names with ``*`` and ``?`` wildcards, case
  insensitive; ``Resource``: ``"*"`` or key ARN patterns;
* ``Condition`` operators ``StringEquals``, ``StringNotEquals``, ``StringEqualsIgnoreCase``,
  ``Null`` and ``Bool``, the string ones also with the ``ForAnyValue:`` prefix. A list of
  values matches if any value matches;
* condition keys (names are case insensitive, as in IAM) from :func:`condition_context`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave.errors import NoflylistError
from enclave.nsm_limits import MAX_PCRS
from noflylist.tools.policy import MAX_POLICY_BYTES

__all__ = ["Decision", "PolicyError", "Request", "condition_context", "evaluate", "parse"]

_log = logging.getLogger(__name__)

#: Statements accepted in one policy; real key policies have a handful.
MAX_STATEMENTS = 64

_EFFECTS = frozenset({"Allow", "Deny"})
_PCR_KEY = re.compile(r"kms:recipientattestation:pcr(0|[1-9][0-9]?)")
_CONTEXT_PREFIX = "kms:encryptioncontext:"
_IMAGE_KEY = "kms:recipientattestation:imagesha384"
_GRANT_FOR_AWS_KEY = "kms:grantisforawsresource"
_PLAIN_KEYS = frozenset({"aws:principalarn", "aws:securetransport", _GRANT_FOR_AWS_KEY})
#: Operators that compare strings, with whether they ignore case and whether they negate.
_STRING_OPERATORS = {
    "StringEquals": (False, False),
    "StringEqualsIgnoreCase": (True, False),
    "StringNotEquals": (False, True),
}
_ANY_VALUE = "ForAnyValue:"


class PolicyError(NoflylistError):
    """A policy document is not a key policy this simulator can store; the message says why."""


@dataclass(frozen=True)
class Request:
    """What is being asked: ``action`` (``kms:Decrypt``) by ``principal_arn`` on the key
    ``resource_arn``, with the condition keys from :func:`condition_context`."""

    action: str
    principal_arn: str
    resource_arn: str
    context: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Decision:
    """The outcome and, for the server's log, which statement decided it and why."""

    allowed: bool
    explicit_deny: bool
    reason: str


def condition_context(
    *,
    principal_arn: str,
    encryption_context: Mapping[str, str] | None = None,
    pcrs: Mapping[int, bytes] | None = None,
    grant_call: bool = False,
) -> dict[str, tuple[str, ...]]:
    """The condition keys of one request, names lower-cased, each with its value(s).

    ``pcrs`` is the verified attestation document's registers, or None when the request has
    no Recipient: then every ``kms:RecipientAttestation:*`` key is absent, so a ``Null``
    condition can require attestation. Encryption context keys that differ only in case
    yield a key with several values, which string operators refuse to compare (fail closed).
    The simulator speaks plain HTTP on loopback, so ``aws:SecureTransport`` is ``false``.
    ``grant_call`` marks CreateGrant, ListGrants and RevokeGrant, which carry
    ``kms:GrantIsForAWSResource``: ``false``, since no AWS service calls the simulator, so
    AWS's "Allow attachment of persistent resources" statement never lets a person call them.
    """
    context: dict[str, tuple[str, ...]] = {
        "aws:principalarn": (principal_arn,),
        "aws:securetransport": ("false",),
    }
    if grant_call:
        context[_GRANT_FOR_AWS_KEY] = ("false",)
    for key, value in (encryption_context or {}).items():
        name = _CONTEXT_PREFIX + key.lower()
        context[name] = (*context.get(name, ()), value)
    if pcrs is not None:
        for index, register in pcrs.items():
            context[f"kms:recipientattestation:pcr{index}"] = (register.hex(),)
        if 0 in pcrs:
            context[_IMAGE_KEY] = (pcrs[0].hex(),)
    return context


def parse(text: str) -> dict[str, Any]:
    """Check that ``text`` is a key policy document KMS would store, and return it parsed.

    This is the syntax check of ``PutKeyPolicy``/``CreateKey`` (KMS answers
    ``MalformedPolicyDocumentException``). Unknown operators and keys pass it: like IAM, the
    simulator judges them when a request is evaluated, and there they fail closed.
    """
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise PolicyError(f"the policy is larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise PolicyError("the policy is not valid JSON") from None
    if not isinstance(document, dict):
        raise PolicyError("the policy must be a JSON object")
    statements = _statements(document)
    if statements is None or not statements or len(statements) > MAX_STATEMENTS:
        raise PolicyError(
            f"the policy needs a Statement: one object or a list of 1 to {MAX_STATEMENTS}"
        )
    for number, statement in enumerate(statements, 1):
        problem = _statement_problem(statement)
        if problem:
            raise PolicyError(f"statement {number}: {problem}")
    return document


def evaluate(policy: Mapping[str, Any], request: Request) -> Decision:
    """Decide ``request`` under ``policy`` (steps 1 to 3 of the module docstring)."""
    statements = _statements(policy)
    if statements is None:
        return Decision(False, True, "the policy has no readable Statement (fail closed)")
    allowed_by, misses = None, []
    for number, statement in enumerate(statements, 1):
        label = _label(statement, number)
        if not isinstance(statement, dict) or _statement_problem(statement):
            _log.warning("key policy %s is malformed; treating it as a Deny (fail closed)", label)
            return Decision(False, True, f"{label} is malformed (fail closed)")
        matched, why = _statement_matches(statement, request)
        if statement["Effect"] == "Deny" and matched is not False:
            why = f"{label} denies" + (f" ({why}, fail closed)" if matched is None else "")
            return Decision(False, True, why)
        if statement["Effect"] == "Allow" and matched is True and allowed_by is None:
            allowed_by = label
        elif statement["Effect"] == "Allow":
            misses.append(f"{label}: {why}")
    if allowed_by is not None:
        return Decision(True, False, f"{allowed_by} allows")
    return Decision(False, False, "no statement allows it (" + "; ".join(misses) + ")")


# -- statements -------------------------------------------------------------------------------


def _statements(policy: Mapping[str, Any]) -> list[Any] | None:
    statement = policy.get("Statement")
    if isinstance(statement, dict):
        return [statement]
    return statement if isinstance(statement, list) else None


def _label(statement: object, number: int) -> str:
    sid = statement.get("Sid") if isinstance(statement, dict) else None
    return f"statement {number}" + (f" ({sid!r})" if isinstance(sid, str) and sid else "")


def _statement_problem(statement: object) -> str:
    """What makes ``statement`` unacceptable as a key policy statement, or ``""``."""
    if not isinstance(statement, dict):
        return "a statement must be a JSON object"
    if statement.get("Effect") not in _EFFECTS:
        return "Effect must be Allow or Deny"
    if ("Principal" in statement) == ("NotPrincipal" in statement):
        return "a key policy statement needs a Principal (or NotPrincipal)"
    if ("Action" in statement) == ("NotAction" in statement):
        return "a statement needs exactly one of Action and NotAction"
    if ("Resource" in statement) == ("NotResource" in statement):
        return "a statement needs exactly one of Resource and NotResource"
    condition = statement.get("Condition", {})
    if not isinstance(condition, dict) or not all(isinstance(v, dict) for v in condition.values()):
        return "Condition must map operators to objects of condition keys"
    return ""


def _statement_matches(statement: dict[str, Any], request: Request) -> tuple[bool | None, str]:
    """True, False, or None when the statement cannot be evaluated (the reason is logged)."""
    for element in ("NotPrincipal", "NotResource"):
        if element in statement:
            return _unknown(f"{element} is not supported by the simulator")
    if not _principal_matches(statement["Principal"], request.principal_arn):
        return False, "principal does not match"
    if "Action" in statement:
        action_matches = _any_pattern(statement["Action"], request.action, ignore_case=True)
    else:
        not_action = _any_pattern(statement["NotAction"], request.action, ignore_case=True)
        action_matches = None if not_action is None else not not_action
    if action_matches is None:
        return _unknown("Action/NotAction must be a string or a list of strings")
    if not action_matches:
        return False, "action does not match"
    resource = _any_pattern(statement["Resource"], request.resource_arn, ignore_case=False)
    if resource is None:
        return _unknown("Resource must be a string or a list of strings")
    if not resource:
        return False, "resource does not match"
    return _conditions_match(statement.get("Condition", {}), request.context)


def _principal_matches(principal: object, principal_arn: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    arns = principal.get("AWS", [])
    arns = [arns] if isinstance(arns, str) else arns
    return isinstance(arns, list) and ("*" in arns or principal_arn in arns)


def _any_pattern(patterns: object, value: str, *, ignore_case: bool) -> bool | None:
    """Whether any IAM wildcard pattern (``*`` and ``?``) matches ``value``; None if malformed."""
    listed = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        return None
    flags = re.IGNORECASE if ignore_case else 0
    for pattern in listed:
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        if re.fullmatch(regex, value, flags | re.DOTALL):
            return True
    return False


# -- conditions -------------------------------------------------------------------------------


def _conditions_match(
    condition: Mapping[str, Any], context: Mapping[str, tuple[str, ...]]
) -> tuple[bool | None, str]:
    """Every operator and every key under it must match (IAM ANDs them)."""
    unknown = ""
    for operator, tests in condition.items():
        for key, expected in tests.items():
            result, why = _condition_matches(operator, key, expected, context)
            if result is False:
                return False, f"{why} is not met"
            if result is None:
                unknown = why
    return (None, unknown) if unknown else (True, "conditions match")


def _condition_matches(
    operator: str, key: str, expected: object, context: Mapping[str, tuple[str, ...]]
) -> tuple[bool | None, str]:
    name = key.lower() if isinstance(key, str) else ""
    if not _known_key(name):
        return _unknown(f"unknown condition key {key!r}")
    values = _policy_values(expected)
    if values is None:
        return _unknown(f"{operator} {key}: values must be strings or booleans")
    actual = context.get(name)
    any_value = operator.startswith(_ANY_VALUE)
    base = operator.removeprefix(_ANY_VALUE)
    if base in _STRING_OPERATORS:
        ignore_case, negated = _STRING_OPERATORS[base]
        if actual is not None and len(actual) > 1 and not any_value:
            return _unknown(f"{key} has several values in this request; use ForAnyValue:")
        if actual is None:
            # IAM: a missing key fails positive operators and satisfies negated ones,
            # except under ForAnyValue, where an empty set matches nothing.
            result = negated and not any_value
        else:
            fold = str.casefold if ignore_case else str
            wanted = {fold(v) for v in values}
            hits = [fold(v) in wanted for v in actual]
            result = not any(hits) if negated else any(hits)
        return result, f"{operator} {key}"
    if any_value:
        return _unknown(f"{_ANY_VALUE} is not supported with {base}")
    if base == "Null":
        flags = {v.lower() for v in values}
        if not flags <= {"true", "false"}:
            return _unknown(f"Null {key}: values must be true or false")
        return ("true" if actual is None else "false") in flags, f"Null {key}"
    if base == "Bool":
        present = {v.lower() for v in actual or ()}
        return bool(present & {v.lower() for v in values}), f"Bool {key}"
    return _unknown(f"unsupported condition operator {operator!r}")


def _known_key(name: str) -> bool:
    if name in _PLAIN_KEYS or name == _IMAGE_KEY:
        return True
    if name.startswith(_CONTEXT_PREFIX):
        return len(name) > len(_CONTEXT_PREFIX)
    match = _PCR_KEY.fullmatch(name)
    return match is not None and int(match.group(1)) < MAX_PCRS


def _policy_values(expected: object) -> list[str] | None:
    """A condition's value(s) as strings (IAM accepts JSON booleans too); None if malformed."""
    listed = expected if isinstance(expected, list) else [expected]
    values = []
    for value in listed:
        if isinstance(value, bool):
            values.append("true" if value else "false")
        elif isinstance(value, str):
            values.append(value)
        else:
            return None
    return values if values else None


def _unknown(reason: str) -> tuple[None, str]:
    _log.warning("key policy: %s; the statement fails closed", reason)
    return None, reason
