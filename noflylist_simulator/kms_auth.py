"""Who sent a request to the local KMS: SigV4 checked by botocore, against stored credentials.

The signature is recomputed by botocore, independently of our own :mod:`enclave.sigv4`, so a
mistake shared by our signer and this checker cannot hide. Credentials are made here
(:func:`create_credentials`) and kept in the state file (:mod:`~noflylist_simulator.kms_state`).
botocore is a development dependency: it is imported only when a request is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from enclave.sigv4 import Credentials
from noflylist_simulator.kms_errors import fault
from noflylist_simulator.kms_state import Credential, State

__all__ = ["MAX_CLOCK_SKEW", "authenticate", "create_credentials"]

#: AWS refuses signatures dated more than five minutes from its clock.
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: Random characters after the AKIA/ASIA prefix of an access key id, as AWS's have.
_ACCESS_KEY_RANDOM_CHARS = 16
_ACCESS_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]{1,128})/([0-9]{8})/([a-z0-9-]{1,64})/"
    r"([a-z0-9-]{1,64})/aws4_request, ?SignedHeaders=([a-z0-9;-]{1,2048}), ?"
    r"Signature=([0-9a-f]{64})"
)
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)
_BAD_TOKEN = "The security token included in the request is invalid."  # noqa: S105 (a message)


def create_credentials(state: State, principal_arn: str, *, session_token: bool) -> Credentials:
    """Make credentials for ``principal_arn`` and store them, with a session token if asked
    (like an assumed role's: the access key id then starts ``ASIA``, not ``AKIA``)."""
    access_key = ("ASIA" if session_token else "AKIA") + "".join(
        secrets.choice(_ACCESS_KEY_ALPHABET) for _ in range(_ACCESS_KEY_RANDOM_CHARS)
    )
    secret = secrets.token_urlsafe(30)
    token = secrets.token_urlsafe(48) if session_token else None
    with state.lock:
        state.credentials[access_key] = Credential(secret, token, principal_arn)
        state.save()
    return Credentials(access_key, secret, token)


def authenticate(
    state: State, method: str, path: str, headers: Mapping[str, str], body: bytes, now: datetime
) -> Credential:
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
        raise fault("MissingAuthenticationTokenException", "Missing Authentication Token")
    parsed = _AUTHORIZATION.fullmatch(authorization)
    if parsed is None:
        raise fault("IncompleteSignatureException", "The Authorization header is malformed.")
    access_key, day, region, service, signed_names, signature = parsed.groups()
    with state.lock:
        credential = state.credentials.get(access_key)
    token = headers.get("x-amz-security-token")
    if credential is None or (token is None) != (credential.session_token is None):
        raise fault("UnrecognizedClientException", _BAD_TOKEN)
    # As bytes: compare_digest refuses str holding non-ASCII (headers arrive as latin-1).
    stored_token = (credential.session_token or "").encode()
    if token is not None and not hmac.compare_digest(token.encode(), stored_token):
        raise fault("UnrecognizedClientException", _BAD_TOKEN)
    names = signed_names.split(";")
    if "host" not in names or "x-amz-date" not in names or names != sorted(set(names)):
        raise fault("InvalidSignatureException", "host and x-amz-date must be signed, sorted.")
    _check_scope(headers.get("x-amz-date", ""), day, region, service, state.region, now)
    content_sha256 = headers.get("x-amz-content-sha256")
    if content_sha256 is not None and content_sha256 != hashlib.sha256(body).hexdigest():
        raise fault("InvalidSignatureException", "x-amz-content-sha256 does not match the body.")

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
        raise fault("InvalidSignatureException", _BAD_SIGNATURE)
    return credential


def _check_scope(
    amz_date: str, day: str, region: str, service: str, our_region: str, now: datetime
) -> None:
    try:
        when = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise fault("IncompleteSignatureException", "X-Amz-Date is missing or malformed.") from None
    if day != amz_date[:8]:
        raise fault("InvalidSignatureException", "The credential date is not X-Amz-Date's day.")
    if region != our_region:
        raise fault(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{region}'.",
        )
    if service != "kms":
        raise fault("InvalidSignatureException", "Credential should be scoped to service 'kms'.")
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise fault(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is more than 5 minutes from the server's "
            f"{now.strftime(_AMZ_DATE)}; check the client's clock.",
        )
