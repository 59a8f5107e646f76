"""Where the envelope comes from: a file, ``s3://bucket/key`` or ``https://…``.

Each source fetches the envelope's bytes and remembers what it last saw, so that a poll
of an unchanged envelope is cheap: a ``304`` from S3 or the web server (conditional
request with ``If-None-Match`` / ``If-Modified-Since``), or an unchanged digest for a file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from enclave import http
from enclave.errors import EnclaveError
from enclave.kms import CredentialSource
from enclave.s3 import S3Client, parse_s3_url
from noflylist.envelope import MAX_ENVELOPE_BYTES


class SourceError(EnclaveError):
    """The envelope could not be fetched; the message names the source and the cause."""


class Source(Protocol):
    """An envelope location. ``description`` is safe to log (it is a location, not data)."""

    description: str
    #: Whether polling makes sense (a remote source that changes without a restart).
    pollable: bool

    def fetch(self, *, only_if_changed: bool) -> bytes | None:
        """The envelope's bytes, or ``None`` if ``only_if_changed`` and nothing changed."""
        ...


class FileSource:
    """A local file. Re-read on SIGHUP; unchanged content is detected by its digest."""

    pollable = False

    def __init__(self, path: str) -> None:
        self.description = path
        self._path = Path(path)
        self._last_digest: bytes | None = None

    def fetch(self, *, only_if_changed: bool) -> bytes | None:
        try:
            with self._path.open("rb") as handle:
                data = handle.read(MAX_ENVELOPE_BYTES + 1)
        except OSError as exc:
            raise SourceError(f"cannot read envelope file {self._path}: {exc.strerror}") from None
        if len(data) > MAX_ENVELOPE_BYTES:
            raise SourceError(
                f"envelope file {self._path} is larger than {MAX_ENVELOPE_BYTES} bytes"
            )
        digest = hashlib.sha256(data).digest()
        if only_if_changed and digest == self._last_digest:
            return None
        self._last_digest = digest
        return data


class S3Source:
    """An S3 object, polled with ``If-None-Match: <last ETag>``."""

    pollable = True

    def __init__(self, url: str, client: S3Client) -> None:
        self.description = url
        self._bucket, self._key = parse_s3_url(url)
        self._client = client
        self._etag: str | None = None

    def fetch(self, *, only_if_changed: bool) -> bytes | None:
        etag = self._etag if only_if_changed else None
        found = self._client.get_object(self._bucket, self._key, if_none_match=etag)
        if found is None:
            return None
        self._etag = found.etag
        return found.body


class HTTPSSource:
    """An HTTPS URL, polled with ``If-None-Match`` / ``If-Modified-Since``."""

    pollable = True

    def __init__(self, url: str, environ: Mapping[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise SourceError(f"envelope URL must be https://HOST/PATH, got {url!r}")
        # Logged as the location only: a query string may carry a presigned credential.
        self.description = f"https://{parsed.netloc}{parsed.path}"
        self._url = url
        self._environ = os.environ if environ is None else environ
        self._validators: dict[str, str] = {}

    def fetch(self, *, only_if_changed: bool) -> bytes | None:
        headers = {}
        if only_if_changed:
            if "etag" in self._validators:
                headers["If-None-Match"] = self._validators["etag"]
            if "last-modified" in self._validators:
                headers["If-Modified-Since"] = self._validators["last-modified"]
        try:
            response = http.request(
                "GET",
                self._url,
                headers=headers,
                max_response_bytes=MAX_ENVELOPE_BYTES,
                environ=self._environ,
            )
        except http.TransportError as exc:
            raise SourceError(f"cannot fetch envelope from {self.description}: {exc}") from None
        if response.status == 304 and only_if_changed:
            return None
        if response.status != 200:
            raise SourceError(
                f"cannot fetch envelope from {self.description}: HTTP {response.status}"
            )
        self._validators = {
            name: response.headers[name]
            for name in ("etag", "last-modified")
            if name in response.headers
        }
        return response.body


def open_source(
    location: str,
    *,
    region: str | None,
    credentials: CredentialSource | None,
    environ: Mapping[str, str] | None = None,
) -> Source:
    """The source for ``location``: ``s3://…``, ``https://…`` or a file path."""
    if location.startswith("s3://"):
        if region is None or credentials is None:
            raise SourceError("an s3:// envelope needs AWS credentials and a region")
        client = S3Client(region, credentials, environ=environ)
        return S3Source(location, client)
    if location.startswith("https://"):
        return HTTPSSource(location, environ)
    if "://" in location:
        raise SourceError(
            f"unsupported envelope location {location!r}: use a file path, s3://BUCKET/KEY "
            "or https://HOST/PATH"
        )
    return FileSource(location)
