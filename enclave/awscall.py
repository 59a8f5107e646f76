"""One signed AWS call over :mod:`enclave.http_client`: the step the KMS and S3 clients share.

Sign with SigV4 at the current time (so every retry carries a fresh ``X-Amz-Date``), send,
and sort transport failures into "worth another attempt" and "not".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from enclave import http_client, sigv4
from enclave.errors import NoflylistError
from enclave.retry import RetryableFailure


class AWSError(NoflylistError):
    """An AWS call failed: ``code`` is the service's error code and ``status`` the HTTP
    status (both ``None`` for transport failures). Each client raises its own subclass."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class CredentialSource(Protocol):
    """Anything that hands out current credentials (see :mod:`enclave.credentials`)."""

    def get(self) -> sigv4.Credentials: ...


def send_signed(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    service: str,
    region: str,
    credentials: CredentialSource,
    remaining: float,
    max_response_bytes: int,
    environ: Mapping[str, str],
    error: Callable[[str], NoflylistError],
) -> http_client.Response:
    """Send one signed request; any HTTP status is returned for the caller to read.

    A transport failure becomes ``error(cause)``: wrapped in :class:`RetryableFailure` when
    it is transient (refused or reset connection, timeout), raised as is otherwise (TLS
    verification, oversized answer). The read timeout never exceeds ``remaining``, the time
    left before the caller's deadline.
    """
    signed = dict(headers)
    signed.update(
        sigv4.sign(
            method,
            url,
            signed,
            body,
            service=service,
            region=region,
            credentials=credentials.get(),
            now=datetime.now(UTC),
        )
    )
    try:
        return http_client.request(
            method,
            url,
            headers=signed,
            body=body,
            read_timeout=min(http_client.READ_TIMEOUT, remaining),
            max_response_bytes=max_response_bytes,
            environ=environ,
        )
    except http_client.TransportError as exc:
        failure = error(str(exc))
        if exc.transient:
            raise RetryableFailure(failure) from exc
        raise failure from exc
