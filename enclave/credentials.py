"""Where the service's AWS credentials and region come from.

Two sources, in this order (the AWS SDKs' default chain cut down to what an enclave host
needs):

1. the environment: ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ optional
   ``AWS_SESSION_TOKEN``), fixed for the life of the process;
2. the EC2 instance metadata service, version 2 only (session tokens; the unauthenticated
   IMDSv1 is never tried), whose temporary role credentials are refreshed before they expire.

Inside a Nitro Enclave there is no network: IMDS is reached through the parent's proxy, so
the ``*_proxy`` variables of the environment are passed to :mod:`enclave.http`.

Every failure raises :class:`CredentialsError` with a message naming the cause and the fix.
No message or log line carries a key, a secret, a session token or an IMDS token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from enclave import http, sigv4
from enclave.errors import EnclaveError

__all__ = ["REFRESH_AHEAD", "CredentialProvider", "CredentialsError", "resolve_region"]

_log = logging.getLogger(__name__)

#: Refresh temporary credentials when less than this remains. EC2 publishes a role's next
#: credentials at least five minutes before the current ones expire, so a refresh then gets
#: new keys, with time left to retry if IMDS hiccups.
REFRESH_AHEAD = timedelta(minutes=5)
#: Credentials this close to expiry are no longer handed out: a request signed now must still
#: be valid when AWS receives it, allowing for some clock skew.
EXPIRY_MARGIN = timedelta(minutes=1)
#: After a refresh fails (or brings back the same old keys) while the current credentials are
#: still valid, wait this long before asking IMDS again, so every request does not hit it.
REFRESH_RETRY_INTERVAL = timedelta(seconds=30)

#: botocore's variable for the IMDS address; the default is EC2's link-local address.
ENDPOINT_VARIABLE = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
#: IMDS is one hop away: it answers within milliseconds or, if the hop limit drops its
#: answer, never. Short timeouts turn the second case into a clear error quickly.
IMDS_CONNECT_TIMEOUT = 1.0
IMDS_READ_TIMEOUT = 2.0
#: Attempts per IMDS request: a couple of retries ride out a restart or throttling.
IMDS_ATTEMPTS = 3
#: Pause between attempts, multiplied by the attempt number.
IMDS_RETRY_PAUSE = 0.2
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
# Region names such as eu-west-1, us-gov-west-1, us-isob-east-1; they become host names.
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
# Keys, secrets and tokens end up in HTTP headers: visible ASCII only, no spaces or CR/LF.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_HOP_LIMIT_FIX = (
    "if this runs in a container, or in an enclave reaching IMDS through the parent's proxy, "
    "the instance's metadata hop limit must be 2: aws ec2 modify-instance-metadata-options "
    "--instance-id <id> --http-put-response-hop-limit 2; outside EC2, configure through "
    "the environment instead (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_REGION)"
)


class CredentialsError(EnclaveError):
    """AWS credentials or region could not be found, fetched or understood."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CredentialProvider:
    """Environment first, then EC2 IMDSv2; thread-safe; refreshes temporary credentials
    REFRESH_AHEAD (several minutes) before they expire.

    The environment is read once, here, as start-up configuration should be. Nothing is
    fetched until the first :meth:`get`. ``clock`` must return an aware UTC time; tests
    inject one to move through a credentials lifetime without waiting.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock or _utc_now
        self._lock = threading.Lock()
        self._static = _from_environment(env)
        self._current: sigv4.Credentials | None = None
        self._retry_after: datetime | None = None
        # Keep only what reaching IMDS needs, not a copy of every variable (and secret).
        self._proxy_env = _proxy_variables(env)
        self._endpoint = DEFAULT_IMDS_ENDPOINT
        if self._static is None:
            _require_imds_enabled(env)
            self._endpoint = _imds_endpoint(env)

    @property
    def source(self) -> str:
        """``"environment"`` or ``"imds"``, for a start-up log line."""
        return "environment" if self._static is not None else "imds"

    def get(self) -> sigv4.Credentials:
        """Current credentials, fetching or refreshing them from IMDS when due.

        One lock serialises refreshes: callers that arrive while one is running wait for it
        and share its result. If a refresh fails while the current credentials are still
        valid, they are returned and a warning is logged; once expired, the failure raises.
        """
        if self._static is not None:
            return self._static
        with self._lock:
            now = self._now()
            current = self._current
            if current is not None and not self._should_fetch(current, now):
                return current
            try:
                fresh = _fetch_imds_credentials(self._endpoint, self._proxy_env, now)
            except CredentialsError as exc:
                return self._after_failed_fetch(current, now, exc)
            self._current = fresh
            # Matters only if IMDS handed back keys already inside the refresh window.
            self._retry_after = now + REFRESH_RETRY_INTERVAL
            _log.info("fetched AWS credentials from IMDS, valid until %s", _stamp(fresh))
            return fresh

    def _should_fetch(self, current: sigv4.Credentials, now: datetime) -> bool:
        """Due for refresh, and not inside the pause after a refresh that failed or brought
        back keys already due; no pause once the current keys are no longer usable."""
        if not _needs_refresh(current, now):
            return False
        if not _usable(current, now):
            return True
        return self._retry_after is None or now >= self._retry_after

    def _after_failed_fetch(
        self, current: sigv4.Credentials | None, now: datetime, error: CredentialsError
    ) -> sigv4.Credentials:
        """Keep still-valid credentials (with a warning), or raise."""
        if current is None:
            raise error
        if not _usable(current, now):
            raise CredentialsError(
                f"the AWS credentials from IMDS expire at {_stamp(current)}, which is now "
                f"or too soon to use, and could not be refreshed: {error}"
            ) from None
        self._retry_after = now + REFRESH_RETRY_INTERVAL
        _log.warning(
            "could not refresh AWS credentials from IMDS (%s); keeping the current ones, "
            "valid until %s, and trying again after %s",
            error,
            _stamp(current),
            self._retry_after.isoformat(),
        )
        return current

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise CredentialsError("the clock returned a naive time; pass one that returns UTC")
        return now


def resolve_region(environ: Mapping[str, str] | None = None) -> str:
    """AWS_REGION, then AWS_DEFAULT_REGION, then IMDS placement/region.

    The region becomes part of host names (``kms.<region>.amazonaws.com``), so whatever
    the source, it must look like a region name.
    """
    env = os.environ if environ is None else environ
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        value = env.get(name, "")
        if value:
            return _checked_region(value, name)
    if _imds_disabled(env):
        raise CredentialsError(
            "no AWS region: AWS_REGION and AWS_DEFAULT_REGION are unset and "
            "AWS_EC2_METADATA_DISABLED=true turns off the instance metadata service; "
            "set AWS_REGION to the region of the KMS key"
        )
    endpoint = _imds_endpoint(env)
    proxy_env = _proxy_variables(env)
    token = _imds_token(endpoint, proxy_env)
    body = _imds_get(endpoint, _REGION_PATH, token, proxy_env, "the instance's region")
    return _checked_region(body.decode("ascii", "replace").strip(), "IMDS placement/region")


# -- environment ------------------------------------------------------------------------


def _from_environment(env: Mapping[str, str]) -> sigv4.Credentials | None:
    """Long-term or session keys from the environment, or None if none are set.

    Empty values count as unset, as in the AWS SDKs.
    """
    key_id = env.get("AWS_ACCESS_KEY_ID", "")
    secret = env.get("AWS_SECRET_ACCESS_KEY", "")
    token = env.get("AWS_SESSION_TOKEN", "")
    if not key_id and not secret:
        if token:
            raise CredentialsError(
                "AWS_SESSION_TOKEN is set but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "are not: set all three from the same STS response, or unset "
                "AWS_SESSION_TOKEN to use the instance role"
            )
        return None
    if not key_id or not secret:
        missing = "AWS_ACCESS_KEY_ID" if not key_id else "AWS_SECRET_ACCESS_KEY"
        raise CredentialsError(
            f"{missing} is not set but its partner is: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY must be set together (or both unset to use the "
            "instance role from IMDS)"
        )
    for name, value in (
        ("AWS_ACCESS_KEY_ID", key_id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_SESSION_TOKEN", token),
    ):
        if value and not _HEADER_SAFE.fullmatch(value):
            raise CredentialsError(
                f"{name} contains spaces, line breaks or non-ASCII characters; "
                "copy the value again without surrounding whitespace"
            )
    return sigv4.Credentials(
        access_key_id=key_id, secret_access_key=secret, session_token=token or None
    )


def _imds_disabled(env: Mapping[str, str]) -> bool:
    return env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true"


def _require_imds_enabled(env: Mapping[str, str]) -> None:
    if _imds_disabled(env):
        raise CredentialsError(
            "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are unset and "
            "AWS_EC2_METADATA_DISABLED=true turns off the instance metadata service; set "
            "the keys, or unset AWS_EC2_METADATA_DISABLED to use the instance role"
        )


def _imds_endpoint(env: Mapping[str, str]) -> str:
    """The IMDS base URL: plain http, a host, and nothing after it."""
    endpoint = env.get(ENDPOINT_VARIABLE, "") or DEFAULT_IMDS_ENDPOINT
    if not _is_plain_http_base(endpoint):
        raise CredentialsError(
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


def _proxy_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.lower().endswith("_proxy")}


# -- IMDSv2 ("Use IMDSv2", Amazon EC2 User Guide) ---------------------------------------


def _fetch_imds_credentials(
    endpoint: str, proxy_env: Mapping[str, str], now: datetime
) -> sigv4.Credentials:
    """The three IMDSv2 steps: a session token, the role name, the role's credentials."""
    token = _imds_token(endpoint, proxy_env)
    role = _imds_role_name(endpoint, token, proxy_env)
    document = _imds_get(
        endpoint, _ROLE_LIST_PATH + role, token, proxy_env, f"the credentials of role {role}"
    )
    credentials = _parse_credentials_document(document, role)
    if not _usable(credentials, now):
        raise CredentialsError(
            f"IMDS returned credentials that expire at {_stamp(credentials)}, but this "
            f"host's clock says {now.isoformat()}: check the clock (chrony, NTP)"
        )
    return credentials


def _imds_token(endpoint: str, proxy_env: Mapping[str, str]) -> str:
    """Step 1: PUT /latest/api/token with the TTL header returns a session token."""
    response = _imds_call(
        "PUT",
        endpoint + _TOKEN_PATH,
        {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_SECONDS)},
        proxy_env,
        "a session token",
    )
    if response.status == 403:
        raise CredentialsError(
            "IMDS refused a session token (HTTP 403): metadata access is turned off "
            "(aws ec2 modify-instance-metadata-options --http-endpoint enabled), or a proxy "
            "on the way added X-Forwarded-For, which IMDS rejects; configure it not to"
        )
    if response.status != 200:
        raise CredentialsError(
            f"IMDS at {endpoint} answered HTTP {response.status} to the session token "
            "request (PUT /latest/api/token); only IMDSv2 is used: check that "
            f"{ENDPOINT_VARIABLE} points at EC2's metadata service, and try again later"
        )
    token = response.body.decode("ascii", "replace")
    if not _HEADER_SAFE.fullmatch(token):
        raise CredentialsError(
            f"IMDS at {endpoint} returned an empty or malformed session token; check that "
            f"{ENDPOINT_VARIABLE} points at the instance metadata service"
        )
    return token


def _imds_role_name(endpoint: str, token: str, proxy_env: Mapping[str, str]) -> str:
    """Step 2: the security-credentials listing names the instance's role."""
    body = _imds_get(endpoint, _ROLE_LIST_PATH, token, proxy_env, "the IAM role list")
    lines = body.decode("ascii", "replace").splitlines()
    role = lines[0].strip() if lines else ""
    if not _ROLE_NAME.fullmatch(role):
        raise CredentialsError(
            "IMDS returned a role list whose first line is not an IAM role name; check "
            "the instance profile (aws ec2 describe-iam-instance-profile-associations)"
        )
    return role


def _imds_get(
    endpoint: str, path: str, token: str, proxy_env: Mapping[str, str], what: str
) -> bytes:
    """GET one metadata item with the session token; statuses become clear errors."""
    response = _imds_call(
        "GET", endpoint + path, {"X-aws-ec2-metadata-token": token}, proxy_env, what
    )
    if response.status == 200 and response.body:
        return response.body
    if response.status == 404 and path == _ROLE_LIST_PATH:
        raise CredentialsError(
            "no IAM role is attached to this instance (IMDS has no security credentials): "
            "attach an instance profile whose role may call kms:Decrypt: aws ec2 "
            "associate-iam-instance-profile --instance-id <id> --iam-instance-profile "
            "Name=<profile>"
        )
    if response.status == 401:
        raise CredentialsError(
            f"IMDS refused the session token (HTTP 401) when asked for {what}: the token "
            "expired, or a proxy on the way dropped the X-aws-ec2-metadata-token header; "
            "make sure the proxy forwards it"
        )
    raise CredentialsError(
        f"IMDS answered HTTP {response.status} with {len(response.body)} bytes when asked "
        f"for {what}; try again later, and check the instance's metadata options "
        "(aws ec2 describe-instances --query 'Reservations[].Instances[].MetadataOptions')"
    )


def _imds_call(
    method: str, url: str, headers: dict[str, str], proxy_env: Mapping[str, str], what: str
) -> http.Response:
    """One IMDS request with a couple of retries for transient failures.

    Any HTTP status is returned once retries are used up; only the transport failing
    every time raises, with the hop-limit hint, its usual cause.
    """
    cause = "no attempt made"
    for attempt in range(1, IMDS_ATTEMPTS + 1):
        try:
            response = http.request(
                method,
                url,
                headers=headers,
                connect_timeout=IMDS_CONNECT_TIMEOUT,
                read_timeout=IMDS_READ_TIMEOUT,
                max_response_bytes=IMDS_MAX_RESPONSE_BYTES,
                environ=proxy_env,
            )
        except http.TransportError as exc:
            cause = str(exc)
            if not exc.transient:
                break
        else:
            if response.status not in _RETRY_STATUSES or attempt == IMDS_ATTEMPTS:
                return response
            cause = f"HTTP {response.status}"
        if attempt < IMDS_ATTEMPTS:
            time.sleep(IMDS_RETRY_PAUSE * attempt)
    raise CredentialsError(
        f"could not reach the instance metadata service at {url.split('/latest', 1)[0]} "
        f"for {what} ({cause}); {_HOP_LIMIT_FIX}"
    )


# -- the credentials document -----------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _parse_credentials_document(body: bytes, role: str) -> sigv4.Credentials:
    """Strictly parse IMDS's credentials JSON; never echo a field's value in an error."""
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # "from None": a JSONDecodeError keeps the whole document, secrets included.
        raise CredentialsError(
            f"IMDS returned credentials for role {role} that are not valid JSON; "
            "try again, and report it if it persists"
        ) from None
    if not isinstance(document, dict):
        raise CredentialsError(
            f"IMDS returned credentials for role {role} that are not a JSON object"
        )
    code = document.get("Code")
    if code != "Success":
        shown = code if isinstance(code, str) and re.fullmatch(r"\w{1,64}", code) else "?"
        raise CredentialsError(
            f"IMDS could not provide credentials for role {role} (Code {shown}): the role's "
            "trust policy must let ec2.amazonaws.com assume it, and the instance profile "
            "must still exist"
        )
    fields: dict[str, str] = {}
    for name in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration"):
        value = document.get(name)
        if not isinstance(value, str) or not _HEADER_SAFE.fullmatch(value):
            raise CredentialsError(
                f"IMDS credentials for role {role} lack a usable {name} field (missing, "
                "empty or not printable ASCII); try again, and report it if it persists"
            )
        fields[name] = value
    try:
        expiration = datetime.strptime(fields["Expiration"], _EXPIRATION_FORMAT)
    except ValueError:
        raise CredentialsError(
            f"IMDS credentials for role {role} have an Expiration that is not of the form "
            "2024-01-31T12:00:00Z"
        ) from None
    return sigv4.Credentials(
        access_key_id=fields["AccessKeyId"],
        secret_access_key=fields["SecretAccessKey"],
        session_token=fields["Token"],
        expiration=expiration.replace(tzinfo=UTC),
    )


# -- expiry -----------------------------------------------------------------------------


def _needs_refresh(credentials: sigv4.Credentials, now: datetime) -> bool:
    return credentials.expiration is not None and credentials.expiration - now < REFRESH_AHEAD


def _usable(credentials: sigv4.Credentials, now: datetime) -> bool:
    return credentials.expiration is None or now + EXPIRY_MARGIN < credentials.expiration


def _stamp(credentials: sigv4.Credentials) -> str:
    expiration = credentials.expiration
    return "never" if expiration is None else expiration.isoformat()


def _checked_region(value: str, source: str) -> str:
    if not _REGION.fullmatch(value):
        shown = value if len(value) <= 32 and value.isprintable() else f"{value[:32]!r}..."
        raise CredentialsError(
            f"{source} is {shown!r}, which is not an AWS region name like eu-west-1; "
            "set AWS_REGION to the region of the KMS key"
        )
    return value
