"""What an AWS error answer says, and what to do about it: shared by the KMS and S3 clients.

:func:`read` takes an error answer's headers and body and finds the error code and message,
whichever of AWS's forms it comes in:

* JSON (KMS and the other ``awsJson1_1`` services): the code is the ``X-Amzn-ErrorType``
  header, else the body's ``code``, else its ``__type``, in that order (Smithy, "AWS JSON 1.1
  protocol", operation error serialization). A code such as
  ``com.amazon.coral.service#ExpiredTokenException:http://internal/`` is cut to the name:
  everything from the first ``:`` goes, then everything up to the first ``#``. The message is
  ``message`` or ``Message``. The body goes through :mod:`enclave.strict_json`.
* XML: S3's ``<Error><Code>..</Code><Message>..</Message></Error>``, the query services'
  ``<ErrorResponse><Error>..</Error></ErrorResponse>`` and the EC2 form
  ``<Response><Errors><Error>..</Error></Errors></Response>`` (which moto also answers for
  KMS authentication failures). No XML parser reads these bodies: a parser that knows DTDs
  can be made to expand entities (a "billion laughs" bomb) or fetch external ones, and we need
  two leaf elements. Instead the decoded body must start with one of those roots and end with
  its closing tag, must contain no ``<!`` (DOCTYPE, ENTITY, comment, CDATA) and no processing
  instruction other than the XML declaration, and the text of the first ``<Code>`` and
  ``<Message>`` inside the first ``<Error>`` is taken with plain string searches, each linear
  in the (bounded) body. Of entity references only the five predefined ones (``&lt;``,
  ``&gt;``, ``&amp;``, ``&quot;``, ``&apos;``) are unescaped; any other stays as written.

The code must look like an AWS error code (:data:`_CODE`), else it is treated as absent. The
message is cut to :data:`MESSAGE_CHARS` and made printable ASCII, so one log line stays one
line. :func:`read` never raises: an unreadable body gives no code and a ``problem`` that
names why (never the body's content), so the HTTP status is always reported.

:func:`explain` writes the one line a client raises: the call, the status, the code, AWS's
message, and for the authentication family (:data:`FIXES`) the likely cause and its fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave import strict_json

__all__ = [
    "ACCESS_DENIED",
    "ACCESS_DENIED_CODES",
    "CLOCK_SKEW",
    "FIXES",
    "KEY_PAIR_MISMATCH",
    "MAX_ERROR_BODY_BYTES",
    "MESSAGE_CHARS",
    "SESSION_EXPIRED",
    "UNKNOWN_KEY",
    "ErrorAnswer",
    "explain",
    "read",
]

#: Largest error body read. AWS's are well under 1 KiB; a bigger one is a proxy's or load
#: balancer's page, whose content would not help (the status is still reported).
MAX_ERROR_BODY_BYTES = 16 * 1024
#: AWS's message is quoted up to this many characters: enough for any AWS message we have
#: seen (an AccessDenied names two ARNs), short enough for one log line.
MESSAGE_CHARS = 300
#: An AWS error code: a name, possibly dotted (``InvalidInstanceID.Malformed``).
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
#: Root elements of AWS's XML error answers: S3, query services, EC2 (and moto).
_XML_ROOTS = ("Error", "ErrorResponse", "Response")
_XML_DECLARATION = re.compile(r"\s*<\?xml\s[^<>?]*\?>")
#: A start tag with optional attributes (``xmlns``); ``[^<>]`` keeps every search linear.
_START_TAG = "<{name}(?:\\s[^<>]*)?>"
_PREDEFINED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_ENTITY = re.compile(r"&(lt|gt|amp|quot|apos);")

# -- the causes and their fixes --------------------------------------------------------------

#: InvalidSignatureException (JSON services) and SignatureDoesNotMatch (S3, query services).
KEY_PAIR_MISMATCH = (
    "the secret access key does not match the access key id (check that "
    "AWS_SECRET_ACCESS_KEY belongs to AWS_ACCESS_KEY_ID), or the request was signed for "
    "another region or with a wrong clock"
)
#: InvalidClientTokenId, UnrecognizedClientException, and S3's InvalidAccessKeyId and
#: InvalidToken: AWS does not recognise the key id or the session token.
UNKNOWN_KEY = (
    "AWS does not know this access key id or session token: a key of another account or "
    "partition (aws-cn, aws-us-gov), a deleted or deactivated key, a session token that does "
    "not belong to the key, or temporary keys (ASIA...) sent without their AWS_SESSION_TOKEN"
)
#: ExpiredToken (S3, query services), ExpiredTokenException (JSON services), and S3's
#: TokenRefreshRequired.
SESSION_EXPIRED = (
    "the session token expired: refresh the credentials (an instance role's come anew from "
    "IMDS; an STS session must be assumed again)"
)
#: RequestTimeTooSkewed, RequestExpired, and a signature error whose message says "Signature
#: expired" or "Signature not yet current".
CLOCK_SKEW = (
    "this machine's clock is too far from AWS's (SigV4 allows 5 minutes): set the clock "
    "right (NTP or chrony on the instance)"
)
#: AccessDenied (S3, query services) and AccessDeniedException (JSON services), when the
#: client has nothing more specific to say.
ACCESS_DENIED = (
    "the caller's IAM policy, or the resource's own policy, does not allow this action to "
    "this caller"
)
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
_SIGNATURE_CODES = frozenset({"InvalidSignatureException", "SignatureDoesNotMatch"})
#: Phrases with which AWS reports a request signed too long ago or in the future as a
#: signature error (real KMS: "InvalidSignatureException: Signature expired: ...").
_CLOCK_PHRASES = ("signature expired", "signature not yet current")

#: The one table from error code to cause and fix, for KMS and S3 alike.
FIXES: Mapping[str, str] = {
    "InvalidSignatureException": KEY_PAIR_MISMATCH,
    "SignatureDoesNotMatch": KEY_PAIR_MISMATCH,
    "InvalidClientTokenId": UNKNOWN_KEY,
    "UnrecognizedClientException": UNKNOWN_KEY,
    "InvalidAccessKeyId": UNKNOWN_KEY,
    "InvalidToken": UNKNOWN_KEY,
    "ExpiredToken": SESSION_EXPIRED,
    "ExpiredTokenException": SESSION_EXPIRED,
    "TokenRefreshRequired": SESSION_EXPIRED,
    "RequestTimeTooSkewed": CLOCK_SKEW,
    "RequestExpired": CLOCK_SKEW,
    "AccessDenied": ACCESS_DENIED,
    "AccessDeniedException": ACCESS_DENIED,
}


@dataclass(frozen=True)
class ErrorAnswer:
    """What an error answer says: ``code`` (``None`` if it has no readable one), ``message``
    (printable ASCII, possibly empty) and, if the body could not be read, ``problem``: why,
    in our words."""

    code: str | None
    message: str
    problem: str | None = None


class _Unreadable(Exception):
    """Raised inside the readers; carries a fixed description, never input."""


def read(headers: Mapping[str, str], body: bytes) -> ErrorAnswer:
    """Code and message of an AWS error answer (module docstring); never raises.

    ``headers`` has lowercase names, as :class:`enclave.http_client.Response` has them.
    """
    try:
        return _read(headers, body)
    except Exception as exc:  # the boundary: whatever the bytes, the status must get out
        return ErrorAnswer(None, "", f"the error answer could not be read ({type(exc).__name__})")


def _read(headers: Mapping[str, str], body: bytes) -> ErrorAnswer:
    header_code = _code(headers.get("x-amzn-errortype", ""))
    code: str | None = None
    message = ""
    problem: str | None = None
    try:
        code, message = _read_body(body)
    except _Unreadable as exc:
        problem = str(exc)
    return ErrorAnswer(header_code or code, _printable(message), problem)


def _read_body(body: bytes) -> tuple[str | None, str]:
    stripped = body.lstrip()
    if not stripped:
        raise _Unreadable("the error answer has no body")
    if len(body) > MAX_ERROR_BODY_BYTES:
        raise _Unreadable(
            f"the error answer is {len(body)} bytes, more than the {MAX_ERROR_BODY_BYTES} "
            "an AWS error body takes; it was not read"
        )
    if stripped[:1] == b"{":
        return _read_json(body)
    if stripped[:1] == b"<":
        return _read_xml(body)
    raise _Unreadable("the error answer is neither JSON nor XML")


def _read_json(body: bytes) -> tuple[str | None, str]:
    try:
        document: Any = strict_json.loads(body, max_bytes=MAX_ERROR_BODY_BYTES)
    except strict_json.JSONError as exc:
        raise _Unreadable(f"the JSON error answer is unreadable: {exc}") from None
    if not isinstance(document, dict):
        raise _Unreadable("the JSON error answer is not an object")
    code = None
    for name in ("code", "__type"):  # Smithy's order, after the header
        value = document.get(name)
        if isinstance(value, str) and value:
            code = _code(value)
            break
    message = document.get("message", document.get("Message"))
    return code, message if isinstance(message, str) else ""


def _read_xml(body: bytes) -> tuple[str | None, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unreadable("the XML error answer is not UTF-8") from None
    declaration = _XML_DECLARATION.match(text)
    if declaration:
        text = text[declaration.end() :]
    if "<!" in text or "<?" in text:
        raise _Unreadable(
            "the XML error answer has a DOCTYPE, entity declaration, comment, CDATA section "
            "or processing instruction, which AWS never sends; it was not read"
        )
    text = text.strip()
    root = next(
        (
            name
            for name in _XML_ROOTS
            if re.match(_START_TAG.format(name=name), text) and text.endswith(f"</{name}>")
        ),
        None,
    )
    if root is None:
        raise _Unreadable("the XML error answer is truncated or not an AWS error document")
    error = text if root == "Error" else _element(text, "Error")
    if error is None:
        raise _Unreadable("the XML error answer has no <Error> element")
    code = _element(error, "Code")
    message = _element(error, "Message")
    return (
        _code(_unescape(code)) if code is not None else None,
        _unescape(message) if message is not None else "",
    )


def _element(text: str, name: str) -> str | None:
    """The content of the first ``<name>`` element in ``text``, or ``None``.

    Found with one regular-expression search for the start tag (linear: ``[^<>]``) and one
    ``str.find`` for the end tag, never a backtracking ``.*?`` over the body.
    """
    start = re.search(_START_TAG.format(name=name), text)
    if start is None:
        return None
    end = text.find(f"</{name}>", start.end())
    return None if end < 0 else text[start.end() : end]


def _unescape(text: str) -> str:
    """Leaf text of an XML element: only the five predefined entities are replaced."""
    if "<" in text:  # not a leaf: a child element where text was expected
        return ""
    return _ENTITY.sub(lambda match: _PREDEFINED_ENTITIES[match.group(1)], text.strip())


def _code(raw: str) -> str | None:
    """The bare error name of a wire code, or ``None`` if it is not one."""
    name = raw.strip().split(":", 1)[0]
    name = name.split("#", 1)[1] if "#" in name else name
    return name if _CODE.fullmatch(name) else None


def _printable(text: str) -> str:
    """At most :data:`MESSAGE_CHARS` characters of printable ASCII, on one line."""
    cut = text[:MESSAGE_CHARS]
    cleaned = "".join(
        char if " " <= char <= "~" else " " if char in "\t\r\n" else "?" for char in cut
    )
    return cleaned.strip() + ("..." if len(text) > MESSAGE_CHARS else "")


# -- the one line a client raises ------------------------------------------------------------


def explain(
    describe: str, status: int, answer: ErrorAnswer, *, access_denied: str = ACCESS_DENIED
) -> str:
    """``"<describe> failed: HTTP <status> <code>: <message>. Likely cause: <fix>"``.

    ``access_denied`` replaces :data:`ACCESS_DENIED` for the client's own advice (KMS
    Decrypt's attestation conditions, S3's bucket policy). It also serves a 403 with no
    readable code, which is nearly always a refusal.
    """
    if answer.code:
        text = f"{describe} failed: HTTP {status} {answer.code}"
    else:
        why = answer.problem or "the answer names none"
        text = f"{describe} failed: HTTP {status} with no AWS error code ({why})"
    if answer.message:
        text += f": {answer.message}"
    fix = _fix(status, answer, access_denied)
    if fix:
        text += f"{'' if text.endswith('.') else '.'} Likely cause: {fix}"
    return text


def _fix(status: int, answer: ErrorAnswer, access_denied: str) -> str | None:
    if answer.code in ACCESS_DENIED_CODES or (answer.code is None and status == 403):
        return access_denied
    if answer.code in _SIGNATURE_CODES and any(
        phrase in answer.message.lower() for phrase in _CLOCK_PHRASES
    ):
        return CLOCK_SKEW
    return FIXES.get(answer.code) if answer.code else None
