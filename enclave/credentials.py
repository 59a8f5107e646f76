"""Where the service's AWS credentials and region come from.

Two sources, in this order (the AWS SDKs' default chain cut down to what an enclave host
needs):

1. the environment: ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ optional
   ``AWS_SESSION_TOKEN``), fixed for the life of the process;
2. the EC2 instance metadata service, version 2 only (:mod:`enclave.imds`), whose temporary
   role credentials are refreshed before they expire.

This module holds the policy: which source wins, when to refresh, what to do when a refresh
fails, and how patient to be with IMDS (the ``IMDS_*`` limits below, passed to the client at
each fetch). :mod:`enclave.imds` holds the protocol.

Every failure raises :class:`CredentialsError` with a message naming the cause and the fix
(IMDS failures keep :mod:`enclave.imds`'s message). No message or log line carries a key, a
secret, a session token or an IMDS token.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from enclave import imds, sigv4
from enclave.errors import NoflylistError
from enclave.http_syntax import VISIBLE_ASCII

# Defined and used in enclave.imds; importable from here as before.
from enclave.imds import DEFAULT_IMDS_ENDPOINT as DEFAULT_IMDS_ENDPOINT

__all__ = [
    "REFRESH_AHEAD",
    "CredentialProvider",
    "CredentialsError",
    "region_from_environment",
    "region_from_imds",
    "resolve_region",
]

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

# How patient to be with IMDS. Read at each fetch (see _imds_client), so a test that
# shortens them here is obeyed.
#: IMDS is one hop away: it answers within milliseconds or, if the hop limit drops its
#: answer, never. Short timeouts turn the second case into a clear error quickly.
IMDS_CONNECT_TIMEOUT = 1.0
IMDS_READ_TIMEOUT = 2.0
#: Attempts per IMDS request: a couple of retries ride out a restart or throttling.
IMDS_ATTEMPTS = 3
#: Pause between attempts, multiplied by the attempt number.
IMDS_RETRY_PAUSE = 0.2

# Region names such as eu-west-1, us-gov-west-1, us-isob-east-1; they become host names.
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")


class CredentialsError(NoflylistError):
    """AWS credentials or region could not be found, fetched or understood."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CredentialProvider:
    """Environment first, then EC2 IMDSv2; thread-safe; refreshes temporary credentials
    REFRESH_AHEAD (several minutes) before they expire.

    The environment is read once, here, as start-up configuration should be. Nothing is
    fetched until the first :meth:`get`. There is no refresh thread: a refresh happens in
    the thread that calls :meth:`get` (in ``serve``, the loader's, inside a load that it
    supervises), so a failure reaches a caller that counts and reports it. ``clock`` must
    return an aware UTC time; tests inject one to move through a credentials lifetime
    without waiting.
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
        self._proxy_env = imds.proxy_variables(env)
        self._endpoint = DEFAULT_IMDS_ENDPOINT
        if self._static is None:
            _require_imds_enabled(env)
            with _imds_failures_as_credentials_errors():
                self._endpoint = imds.endpoint_from_environment(env)

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
    the source, it must look like a region name. A long-running service calls the two
    halves apart (:func:`region_from_environment` at start, :func:`region_from_imds` in its
    retried start-up path); a one-shot command such as ``seal`` calls this.
    """
    return region_from_environment(environ) or region_from_imds(environ)


def region_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """AWS_REGION, then AWS_DEFAULT_REGION; ``None`` when both are unset and IMDS is to be
    asked.

    Raises only for what no retry can fix, naming the variable: a value that is not a
    region name, no region with AWS_EC2_METADATA_DISABLED=true, or a malformed
    AWS_EC2_METADATA_SERVICE_ENDPOINT. Asks nobody, so it is safe to call at start-up.
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
    with _imds_failures_as_credentials_errors():
        imds.endpoint_from_environment(env)
    return None


def region_from_imds(environ: Mapping[str, str] | None = None) -> str:
    """The instance's region from IMDS placement/region (IMDSv2).

    Every failure is one a later attempt may not meet (IMDS not reachable yet, a refused
    token, an answer that is not a region name), so callers that can wait retry it.
    """
    env = os.environ if environ is None else environ
    try:
        with _imds_failures_as_credentials_errors():
            endpoint = imds.endpoint_from_environment(env)
            region = _imds_client(endpoint, imds.proxy_variables(env)).region()
        return _checked_region(region, "IMDS placement/region")
    except CredentialsError as exc:
        raise CredentialsError(
            "no AWS region yet: AWS_REGION is unset, and asking the instance metadata "
            f"service failed: {exc}"
        ) from None


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
        if value and not VISIBLE_ASCII.fullmatch(value):
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


# -- IMDS -------------------------------------------------------------------------------


@contextmanager
def _imds_failures_as_credentials_errors() -> Iterator[None]:
    """Callers of this module see one error type; the IMDS message already names the fix."""
    try:
        yield
    except imds.ImdsError as exc:
        # "from None": the message is the same, and nothing else is worth keeping.
        raise CredentialsError(str(exc)) from None


def _imds_client(endpoint: str, proxy_env: Mapping[str, str]) -> imds.ImdsClient:
    """An IMDS client with this module's limits as they are now."""
    return imds.ImdsClient(
        endpoint=endpoint,
        proxy_env=proxy_env,
        connect_timeout=IMDS_CONNECT_TIMEOUT,
        read_timeout=IMDS_READ_TIMEOUT,
        attempts=IMDS_ATTEMPTS,
        retry_pause=IMDS_RETRY_PAUSE,
    )


def _fetch_imds_credentials(
    endpoint: str, proxy_env: Mapping[str, str], now: datetime
) -> sigv4.Credentials:
    """The role's credentials from IMDS, refused if this host's clock says they are spent."""
    with _imds_failures_as_credentials_errors():
        credentials = _imds_client(endpoint, proxy_env).role_credentials()
    if not _usable(credentials, now):
        raise CredentialsError(
            f"IMDS returned credentials that expire at {_stamp(credentials)}, but this "
            f"host's clock says {now.isoformat()}: check the clock (chrony, NTP)"
        )
    return credentials


# -- expiry and region ------------------------------------------------------------------


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
