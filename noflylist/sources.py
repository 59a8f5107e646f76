"""Where the envelope comes from: a file, ``s3://bucket/key`` or ``https://…``.

Each fetch returns the envelope's bytes with a *version* (S3's ETag, the web server's ETag
or Last-Modified, a file's digest). The caller polls with the version of the list *in
service*, so an unchanged envelope costs a ``304`` (or a digest comparison), while a new
envelope that failed to load is fetched and tried again at the next poll, not skipped as
"seen". Sources keep no state of their own.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from enclave import http_client
from enclave.awscall import CredentialSource
from enclave.errors import NoflylistError
from enclave.s3 import S3Client, parse_s3_url
from noflylist.envelope import MAX_ENVELOPE_BYTES

_MODIFIED = "modified:"


class SourceError(NoflylistError):
    """The envelope could not be fetched; the message names the source and the cause."""


@dataclass(frozen=True)
class Fetched:
    """An envelope's bytes and the source's version of them (opaque, compared for equality)."""

    #: A file's is a bytearray: a v3 envelope's table is decrypted in place, in it.
    data: bytes | bytearray = field(repr=False)
    version: str


class Source(Protocol):
    """An envelope location. ``description`` is safe to log (it is a location, not data)."""

    description: str
    #: Whether polling makes sense (a remote source that changes without a restart).
    pollable: bool

    def fetch(self, *, unless_version: str | None = None) -> Fetched | None:
        """The envelope, or ``None`` when its version is still ``unless_version``."""
        ...


class FileSource:
    """A local file. Re-read on SIGHUP; unchanged content is detected by its digest."""

    pollable = False

    def __init__(self, path: str) -> None:
        self.description = path
        self._path = Path(path)

    def fetch(self, *, unless_version: str | None = None) -> Fetched | None:
        try:
            with self._path.open("rb") as handle:
                data = _read_into_buffer(handle, MAX_ENVELOPE_BYTES)
        except OSError as exc:
            raise SourceError(f"cannot read envelope file {self._path}: {exc.strerror}") from None
        if data is None:
            raise SourceError(
                f"envelope file {self._path} is larger than {MAX_ENVELOPE_BYTES} bytes"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest == unless_version:
            return None
        return Fetched(data, digest)


def _read_into_buffer(handle: io.BufferedReader, limit: int) -> bytearray | None:
    """The file's bytes in one bytearray of its size (no second copy: at millions of names
    a v3 table is decrypted in place in it), or None if it is larger than ``limit``. A file
    that changes while it is read gives what was read (its digest differs, and a torn
    envelope fails its authentication)."""
    size = os.fstat(handle.fileno()).st_size
    if size > limit:
        return None
    data = bytearray(size)
    got = 0
    with memoryview(data) as view:
        while got < size:
            count = handle.readinto(view[got:])
            if not count:
                break
            got += count
    del data[got:]
    return data


class S3Source:
    """An S3 object, polled with ``If-None-Match: <last ETag>``."""

    pollable = True

    def __init__(self, url: str, client: S3Client) -> None:
        self.description = url
        self._bucket, self._key = parse_s3_url(url)
        self._client = client

    def fetch(self, *, unless_version: str | None = None) -> Fetched | None:
        found = self._client.get_object(self._bucket, self._key, if_none_match=unless_version)
        if found is None:
            return None
        return Fetched(found.body, found.etag)


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

    def fetch(self, *, unless_version: str | None = None) -> Fetched | None:
        # The version is the ETag, or "modified:" + Last-Modified where there is no ETag.
        headers = {}
        if unless_version and unless_version.startswith(_MODIFIED):
            headers["If-Modified-Since"] = unless_version.removeprefix(_MODIFIED)
        elif unless_version:
            headers["If-None-Match"] = unless_version
        try:
            response = http_client.request(
                "GET",
                self._url,
                headers=headers,
                max_response_bytes=MAX_ENVELOPE_BYTES,
                environ=self._environ,
            )
        except http_client.TransportError as exc:
            raise SourceError(f"cannot fetch envelope from {self.description}: {exc}") from None
        if response.status == 304 and unless_version:
            return None
        if response.status != 200:
            raise SourceError(
                f"cannot fetch envelope from {self.description}: HTTP {response.status}"
            )
        if "etag" in response.headers:
            version = response.headers["etag"]
        elif "last-modified" in response.headers:
            version = _MODIFIED + response.headers["last-modified"]
        else:  # no validator: compare content, so an unchanged envelope is still skipped
            version = "sha256:" + hashlib.sha256(response.body).hexdigest()
        return Fetched(response.body, version)


def check_location(location: str) -> None:
    """Refuse a malformed envelope location now, naming what is wrong.

    ``serve`` calls this at start, before it knows the AWS region an ``s3://`` source
    needs: a location that no retry can fix must stop the service at once, not fail every
    attempt of the first load.
    """
    if location.startswith("s3://"):
        parse_s3_url(location)
    elif location.startswith("https://"):
        parsed = urllib.parse.urlsplit(location)
        if not parsed.hostname:
            raise SourceError(f"envelope URL must be https://HOST/PATH, got {location!r}")
    elif "://" in location:
        raise SourceError(
            f"unsupported envelope location {location!r}: use a file path, s3://BUCKET/KEY "
            "or https://HOST/PATH"
        )


def open_source(
    location: str,
    *,
    region: str | None,
    credentials: CredentialSource | None,
    environ: Mapping[str, str] | None = None,
) -> Source:
    """The source for ``location``: ``s3://…``, ``https://…`` or a file path."""
    check_location(location)
    if location.startswith("s3://"):
        if region is None or credentials is None:
            raise SourceError("an s3:// envelope needs AWS credentials and a region")
        client = S3Client(region, credentials, environ=environ)
        return S3Source(location, client)
    if location.startswith("https://"):
        return HTTPSSource(location, environ)
    return FileSource(location)
