"""A client for the EC2 instance metadata service, version 2 only.

Every request carries a session token from ``PUT /latest/api/token``; the unauthenticated
IMDSv1 is never tried. The client reads three things: the instance role's name, that role's
temporary credentials, and the instance's region. When to fetch, and which source of
credentials wins, is :mod:`enclave.credentials`'s business; so are the timeouts and retry
counts, which it passes in with each :class:`ImdsClient`.

Inside a Nitro Enclave there is no network: IMDS is reached through the parent's proxy, so
the ``*_proxy`` variables of the environment are passed to :mod:`enclave.http_client`.

Every failure raises :class:`ImdsError` with a message naming the cause and the fix. No
message carries a key, a secret, a session token or an IMDS token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from enclave import http_client, sigv4, strict_json
from enclave.errors import NoflylistError
from enclave.http_syntax import VISIBLE_ASCII

__all__ = [
    "DEFAULT_IMDS_ENDPOINT",
    "ENDPOINT_VARIABLE",
    "ImdsClient",
    "ImdsError",
    "endpoint_from_environment",
    "parse_credentials_document",
    "proxy_variables",
]

#: botocore's variable for the IMDS address; the default is EC2's link-local address.
ENDPOINT_VARIABLE = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
#: Lifetime we ask for the IMDS session token: one fetch needs seconds, and a short-lived
#: token is worth less to anyone who sees it.
IMDS_TOKEN_TTL_SECONDS = 60
#: A credentials document is about 2 KiB; anything much larger is not IMDS talking.
IMDS_MAX_RESPONSE_BYTES = 64 * 1024

# IMDS paths ("Use IMDSv2" and "Retrieve security credentials from instance metadata",
# Amazon EC2 User Guide).
_TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a password
_ROLE_LIST_PATH = "/latest/meta-data/iam/security-credentials/"
_REGION_PATH = "/latest/meta-data/placement/region"
#: Statuses worth another attempt: throttling and IMDS-side failures.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# IAM role names: letters, digits and +=,.@_- up to 64 characters (IAM quotas page).
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_HOP_LIMIT_FIX = (
    "if this runs in a container, or in an enclave reaching IMDS through the parent's proxy, "
    "the instance's metadata hop limit must be 2: aws ec2 modify-instance-metadata-options "
    "--instance-id <id> --http-put-response-hop-limit 2; outside EC2, configure through "
    "the environment instead (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_REGION)"
)


class ImdsError(NoflylistError):
    """IMDS could not be reached, refused us, or answered something we do not accept."""


# -- where IMDS is ----------------------------------------------------------------------


def endpoint_from_environment(env: Mapping[str, str]) -> str:
    """The IMDS base URL: plain http, a host, and nothing after it."""
    endpoint = env.get(ENDPOINT_VARIABLE, "") or DEFAULT_IMDS_ENDPOINT
    if not _is_plain_http_base(endpoint):
        raise ImdsError(
            f"{ENDPOINT_VARIABLE} must be an http:// URL with only a host and port, such "
            f"as {DEFAULT_IMDS_ENDPOINT}; unset it to use the EC2 default"
        )
    return endpoint.rstrip("/")


def _is_plain_http_base(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and bool(parts.hostname)
        and port != 0
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and parts.username is None
    )


def proxy_variables(env: Mapping[str, str]) -> dict[str, str]:
    """Only the ``*_proxy`` variables: what reaching IMDS needs, not every secret in ``env``."""
    return {k: v for k, v in env.items() if k.lower().endswith("_proxy")}


# -- IMDSv2 ("Use IMDSv2", Amazon EC2 User Guide) ---------------------------------------


@dataclass(frozen=True)
class ImdsClient:
    """Where IMDS is, how to reach it, and how patient to be with each request.

    ``endpoint`` comes from :func:`endpoint_from_environment`, ``proxy_env`` from
    :func:`proxy_variables`. Each request gets ``attempts`` tries, pausing
    ``retry_pause`` times the attempt number between them.
    """

    endpoint: str
    proxy_env: Mapping[str, str] = field(repr=False)  # a proxy URL may carry a password
    connect_timeout: float
    read_timeout: float
    attempts: int
    retry_pause: float

    def role_credentials(self) -> sigv4.Credentials:
        """The three IMDSv2 steps: a session token, the role name, the role's credentials.

        Whether the credentials are still usable by this host's clock is for the caller
        to judge.
        """
        token = self._token()
        role = self._role_name(token)
        document = self._get(_ROLE_LIST_PATH + role, token, f"the credentials of role {role}")
        return parse_credentials_document(document, role)

    def region(self) -> str:
        """The instance's region as IMDS states it, unchecked (the caller checks it)."""
        token = self._token()
        body = self._get(_REGION_PATH, token, "the instance's region")
        return body.decode("ascii", "replace").strip()

    def _token(self) -> str:
        """Step 1: PUT /latest/api/token with the TTL header returns a session token."""
        response = self._call(
            "PUT",
            _TOKEN_PATH,
            {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_SECONDS)},
            "a session token",
        )
        if response.status == 403:
            raise ImdsError(
                "IMDS refused a session token (HTTP 403): metadata access is turned off "
                "(aws ec2 modify-instance-metadata-options --http-endpoint enabled), or a "
                "proxy on the way added X-Forwarded-For, which IMDS rejects; configure it not to"
            )
        if response.status != 200:
            raise ImdsError(
                f"IMDS at {self.endpoint} answered HTTP {response.status} to the session token "
                "request (PUT /latest/api/token); only IMDSv2 is used: check that "
                f"{ENDPOINT_VARIABLE} points at EC2's metadata service, and try again later"
            )
        token = response.body.decode("ascii", "replace")
        if not VISIBLE_ASCII.fullmatch(token):
            raise ImdsError(
                f"IMDS at {self.endpoint} returned an empty or malformed session token; check "
                f"that {ENDPOINT_VARIABLE} points at the instance metadata service"
            )
        return token

    def _role_name(self, token: str) -> str:
        """Step 2: the security-credentials listing names the instance's role."""
        body = self._get(_ROLE_LIST_PATH, token, "the IAM role list")
        lines = body.decode("ascii", "replace").splitlines()
        role = lines[0].strip() if lines else ""
        if not _ROLE_NAME.fullmatch(role):
            raise ImdsError(
                "IMDS returned a role list whose first line is not an IAM role name; check "
                "the instance profile (aws ec2 describe-iam-instance-profile-associations)"
            )
        return role

    def _get(self, path: str, token: str, what: str) -> bytes:
        """GET one metadata item with the session token; statuses become clear errors."""
        response = self._call("GET", path, {"X-aws-ec2-metadata-token": token}, what)
        if response.status == 200 and response.body:
            return response.body
        if response.status == 404 and path == _ROLE_LIST_PATH:
            raise ImdsError(
                "no IAM role is attached to this instance (IMDS has no security credentials): "
                "attach an instance profile whose role may call kms:Decrypt: aws ec2 "
                "associate-iam-instance-profile --instance-id <id> --iam-instance-profile "
                "Name=<profile>"
            )
        if response.status == 401:
            raise ImdsError(
                f"IMDS refused the session token (HTTP 401) when asked for {what}: the token "
                "expired, or a proxy on the way dropped the X-aws-ec2-metadata-token header; "
                "make sure the proxy forwards it"
            )
        raise ImdsError(
            f"IMDS answered HTTP {response.status} with {len(response.body)} bytes when asked "
            f"for {what}; try again later, and check the instance's metadata options "
            "(aws ec2 describe-instances --query 'Reservations[].Instances[].MetadataOptions')"
        )

    def _call(
        self, method: str, path: str, headers: dict[str, str], what: str
    ) -> http_client.Response:
        """One IMDS request with a couple of retries for transient failures.

        Any HTTP status is returned once retries are used up; only the transport failing
        every time raises, with the hop-limit hint, its usual cause. (Not
        :func:`enclave.retry.call_with_retries`: that one sleeps with jitter, raises rather
        than hands back the last status, and appends its own summary to the message.)
        """
        cause = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            try:
                response = http_client.request(
                    method,
                    self.endpoint + path,
                    headers=headers,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_response_bytes=IMDS_MAX_RESPONSE_BYTES,
                    environ=self.proxy_env,
                )
            except http_client.TransportError as exc:
                cause = str(exc)
                if not exc.transient:
                    break
            else:
                if response.status not in _RETRY_STATUSES or attempt == self.attempts:
                    return response
                cause = f"HTTP {response.status}"
            if attempt < self.attempts:
                time.sleep(self.retry_pause * attempt)
        raise ImdsError(
            f"could not reach the instance metadata service at {self.endpoint} "
            f"for {what} ({cause}); {_HOP_LIMIT_FIX}"
        )


# -- the credentials document -----------------------------------------------------------


def parse_credentials_document(body: bytes, role: str) -> sigv4.Credentials:
    """Strictly parse IMDS's credentials JSON; never echo a field's value in an error.

    The answer comes through the parent's proxy, which could change it, so this is a
    boundary: any exception no check foresaw becomes an :class:`ImdsError` naming its type
    only (a foreign message could quote the document, secrets included).
    """
    try:
        return _parse_credentials_document(body, role)
    except ImdsError:
        raise
    except Exception as exc:
        raise ImdsError(
            f"IMDS returned credentials for role {role} that could not be read "
            f"({type(exc).__name__}); try again, and report it if it persists"
        ) from None


def _parse_credentials_document(body: bytes, role: str) -> sigv4.Credentials:
    try:
        document = strict_json.loads(body, max_bytes=IMDS_MAX_RESPONSE_BYTES)
    except strict_json.JSONError as exc:
        # JSONError's message is ours and never quotes the document (whose secrets it holds).
        raise ImdsError(
            f"IMDS returned credentials for role {role} that are not valid JSON ({exc}); "
            "try again, and report it if it persists"
        ) from None
    if not isinstance(document, dict):
        raise ImdsError(f"IMDS returned credentials for role {role} that are not a JSON object")
    code = document.get("Code")
    if code != "Success":
        shown = code if isinstance(code, str) and re.fullmatch(r"\w{1,64}", code) else "?"
        raise ImdsError(
            f"IMDS could not provide credentials for role {role} (Code {shown}): the role's "
            "trust policy must let ec2.amazonaws.com assume it, and the instance profile "
            "must still exist"
        )
    fields: dict[str, str] = {}
    for name in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration"):
        value = document.get(name)
        if not isinstance(value, str) or not VISIBLE_ASCII.fullmatch(value):
            raise ImdsError(
                f"IMDS credentials for role {role} lack a usable {name} field (missing, "
                "empty or not printable ASCII); try again, and report it if it persists"
            )
        fields[name] = value
    try:
        expiration = datetime.strptime(fields["Expiration"], _EXPIRATION_FORMAT)
    except ValueError:
        raise ImdsError(
            f"IMDS credentials for role {role} have an Expiration that is not of the form "
            "2024-01-31T12:00:00Z"
        ) from None
    return sigv4.Credentials(
        access_key_id=fields["AccessKeyId"],
        secret_access_key=fields["SecretAccessKey"],
        session_token=fields["Token"],
        expiration=expiration.replace(tzinfo=UTC),
    )
