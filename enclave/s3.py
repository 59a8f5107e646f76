"""S3 ``GetObject`` (and ``PutObject`` for operators and tests), signed with our own SigV4.

The service fetches its envelope from ``s3://bucket/key`` and polls it cheaply with
``If-None-Match``: an unchanged object costs a ``304`` with no body.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from enclave import awserror, http_client
from enclave.awscall import AWSError, CredentialSource, send_signed
from enclave.retry import RetryableFailure, RetryPolicy, call_with_retries

#: Largest object we read: an envelope of a few million names is tens of MiB.
MAX_OBJECT_BYTES = 256 * 1024 * 1024
#: Bucket names usable as a DNS label under TLS (no dots: they break the wildcard certificate).
_VIRTUAL_HOST_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class S3Error(AWSError):
    """An S3 call failed. ``code`` is S3's error code (``NoSuchKey``, ``AccessDenied``, …)."""


@dataclass(frozen=True)
class S3Object:
    """An object's bytes and its ETag (quoted, as S3 sends it)."""

    body: bytes
    etag: str


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key, or explain what is wrong."""
    parsed = urllib.parse.urlsplit(url)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key or parsed.query:
        raise S3Error(f"not an S3 object URL: {url!r}; expected s3://BUCKET/KEY")
    return parsed.netloc, key


def object_url(bucket: str, key: str, region: str, environ: Mapping[str, str]) -> str:
    """The HTTPS URL of an object.

    With ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` set (a test server, a VPC endpoint),
    path style (``endpoint/bucket/key``), since such endpoints rarely resolve bucket
    subdomains. Otherwise virtual-hosted style, as AWS recommends, except for bucket names
    with dots, which do not match S3's wildcard certificate and so use path style.
    """
    quoted_key = urllib.parse.quote(key, safe="/~")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        endpoint = environ.get(name, "").strip().rstrip("/")
        if endpoint:
            return f"{endpoint}/{bucket}/{quoted_key}"
    if _VIRTUAL_HOST_BUCKET.match(bucket):
        return f"https://{bucket}.s3.{region}.amazonaws.com/{quoted_key}"
    return f"https://s3.{region}.amazonaws.com/{bucket}/{quoted_key}"


class S3Client:
    """S3 for one region. Thread-safe: it holds no per-call state."""

    def __init__(
        self,
        region: str,
        credentials: CredentialSource,
        *,
        environ: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.region = region
        self._credentials = credentials
        self._environ = os.environ if environ is None else environ
        self._retry = retry or RetryPolicy()

    def get_object(
        self, bucket: str, key: str, *, if_none_match: str | None = None
    ) -> S3Object | None:
        """``GetObject``; ``None`` when ``if_none_match`` matches (the object is unchanged)."""
        headers = {"If-None-Match": if_none_match} if if_none_match else {}
        response = self._request("GET", bucket, key, headers, b"")
        if response.status == 304:
            return None
        etag = response.headers.get("etag", "")
        if not etag:
            raise S3Error(f"S3 GetObject s3://{bucket}/{key}: the answer has no ETag")
        return S3Object(response.body, etag)

    def put_object(self, bucket: str, key: str, body: bytes) -> str:
        """``PutObject``; returns the new ETag."""
        response = self._request("PUT", bucket, key, {}, body)
        return response.headers.get("etag", "")

    def _request(
        self, method: str, bucket: str, key: str, headers: Mapping[str, str], body: bytes
    ) -> http_client.Response:
        url = object_url(bucket, key, self.region, self._environ)
        action = "GetObject" if method == "GET" else "PutObject"
        describe = f"S3 {action} s3://{bucket}/{key}"
        return call_with_retries(
            lambda remaining: self._attempt(
                method, url, headers, body, remaining, describe, action
            ),
            self._retry,
            describe=describe,
        )

    def _attempt(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        remaining: float,
        describe: str,
        action: str,
    ) -> http_client.Response:
        response = send_signed(
            method,
            url,
            headers,
            body,
            service="s3",
            region=self.region,
            credentials=self._credentials,
            remaining=remaining,
            max_response_bytes=MAX_OBJECT_BYTES,
            environ=self._environ,
            error=lambda cause: S3Error(f"{describe}: {cause}"),
        )
        if response.status in (200, 304):
            return response
        error = _error_from(describe, action, response)
        if response.status >= 500:
            raise RetryableFailure(error)
        raise error


def _access_denied(action: str) -> str:
    """S3's own advice for AccessDenied (and for a 403 without a readable code)."""
    return (
        f"check that the instance role may s3:{action} this object under both its own policy "
        "and the bucket policy (Deny statements, aws:SourceVpce or aws:SourceIp conditions) "
        "and, for a KMS-encrypted object, may kms:Decrypt its key; without s3:ListBucket S3 "
        "also answers AccessDenied for a key that does not exist"
    )


def _error_from(describe: str, action: str, response: http_client.Response) -> S3Error:
    """Turn S3's XML error answer into an S3Error whose one line names the code, S3's
    message and, where known, the fix (:mod:`enclave.awserror` reads the body, no XML
    parser)."""
    answer = awserror.read(response.headers, response.body)
    text = awserror.explain(describe, response.status, answer, access_denied=_access_denied(action))
    return S3Error(text, code=answer.code, status=response.status)
