"""A small IMDSv2-compatible instance metadata server for tests (a thread on loopback).

It answers the way EC2's metadata service does when the instance requires session tokens
(``HttpTokens=required``): PUT ``/latest/api/token`` with a TTL header returns a token, and
every GET must carry a token it issued, or gets 401. It serves the role list, the role's
credentials document and the placement region / availability zone.

Knobs (plain attributes, set them between requests) let a test reproduce what goes wrong on
real instances: no role attached, a credentials document with an error ``Code``, a token the
service no longer accepts, a service that answers slowly or never (the symptom of a metadata
hop limit of 1 behind a container or proxy), transient 5xx answers, or a service that is down.
Every request is recorded so a test can count fetches.

``tests/test_credentials.py`` first points botocore's own IMDS client at this server: if
botocore accepts it, the server is faithful enough to test our client against.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/latest/api/token"
ROLE_LIST_PATH = "/latest/meta-data/iam/security-credentials/"
REGION_PATH = "/latest/meta-data/placement/region"
ZONE_PATH = "/latest/meta-data/placement/availability-zone"

#: IMDS accepts token lifetimes from one second to six hours and answers 400 otherwise.
MAX_TOKEN_TTL = 21600
#: A request told to "never answer" is released after this long, so no thread outlives a test.
STALL_LIMIT = 10.0
#: Largest request body we read (IMDS requests have none).
MAX_REQUEST_BODY = 4096
#: How often the server loop checks for stop(); also bounds how long stopping takes.
POLL_INTERVAL = 0.02

_NOT_FOUND = (
    b'<?xml version="1.0" encoding="iso-8859-1"?>\n<html><head><title>404 - Not Found'
    b"</title></head><body><h1>404 - Not Found</h1></body></html>\n"
)


@dataclass(frozen=True)
class Issued:
    """One set of credentials the server handed out (tests compare against these)."""

    access_key_id: str
    secret_access_key: str
    token: str
    expiration: datetime


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    token: str | None
    forwarded_for: str | None
    via: str | None


class FakeImds:
    """The server's state and knobs. Create it with :func:`running_imds`."""

    def __init__(self) -> None:
        self.role: str | None = "noflylist-enclave"
        self.expiration = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=6)
        self.rotate = False  # new keys on every credentials fetch
        self.code = "Success"  # anything else: an error document without keys, as EC2 sends
        self.credentials_body: bytes | None = None  # raw override of the credentials document
        self.refuse_tokens = False  # every GET gets 401, as with an expired token
        self.delay = 0.0  # seconds to wait before each answer
        self.stall = False  # never answer (until STALL_LIMIT or stop())
        self.fail_next = 0  # answer this many GETs with 503 first
        # Force the token PUT's status, e.g. 403 as when a proxy added X-Forwarded-For.
        self.token_status: int | None = None
        self.region = "eu-west-1"
        self.availability_zone = "eu-west-1b"
        self.issued: list[Issued] = []
        self.seen: list[Seen] = []
        self._generation = 1
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- what tests read ---------------------------------------------------------------

    def count(self, method: str, path: str) -> int:
        """How many requests with this method and path arrived."""
        with self._lock:
            return sum(1 for s in self.seen if s.method == method and s.path == path)

    def credential_fetches(self) -> int:
        """How many credentials documents were asked for (any role name)."""
        with self._lock:
            return sum(
                1
                for s in self.seen
                if s.method == "GET"
                and s.path.startswith(ROLE_LIST_PATH)
                and s.path != ROLE_LIST_PATH
            )

    # -- lifecycle --------------------------------------------------------------------

    def start(self, port: int = 0) -> None:
        """Listen on ``port`` of loopback (0: a free one). Given the port of a server that
        was stopped, or one chosen before, this is IMDS coming up late, at the same URL."""
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        server.imds = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(
            target=server.serve_forever, args=(POLL_INTERVAL,), name="fake-imds", daemon=True
        ).start()

    def stop(self) -> None:
        """Stop answering; the port is closed, so connections are refused ("IMDS is down")."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- request handling (called from handler threads) --------------------------------

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _wait_before_answer(self) -> bool:
        """Apply the delay/stall knobs; False when the request must get no answer at all."""
        if self.stall:
            self._released.wait(STALL_LIMIT)
            return False
        if self.delay:
            time.sleep(self.delay)
        return True

    def _issue_token(self, ttl_header: str | None, forwarded_for: str | None) -> tuple[int, str]:
        if self.token_status is not None:
            return self.token_status, ""
        if forwarded_for is not None:
            # IMDS refuses token requests that passed through a proxy which says so.
            return 403, ""
        if ttl_header is None or not ttl_header.isdigit():
            return 400, ""
        ttl = int(ttl_header)
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return 400, ""
        token = secrets.token_urlsafe(40)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return 200, token

    def _token_ok(self, token: str | None) -> bool:
        if token is None or self.refuse_tokens:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def _credentials_document(self) -> bytes:
        if self.credentials_body is not None:
            return self.credentials_body
        updated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.code != "Success":
            return json.dumps(
                {
                    "Code": self.code,
                    "Message": "Instance profile role cannot be assumed",
                    "LastUpdated": updated,
                },
                indent=2,
            ).encode()
        with self._lock:
            generation = self._generation
            if self.rotate:
                self._generation += 1
        issued = Issued(
            access_key_id=f"ASIAFAKEIMDS{generation:08d}",
            secret_access_key=f"fake/imds/secret/{generation:04d}/" + "x" * 20,
            token=f"FwoFAKEimdsSESSIONtoken{generation:04d}" + "A" * 40,
            expiration=self.expiration,
        )
        with self._lock:
            self.issued.append(issued)
        return json.dumps(
            {
                "Code": "Success",
                "LastUpdated": updated,
                "Type": "AWS-HMAC",
                "AccessKeyId": issued.access_key_id,
                "SecretAccessKey": issued.secret_access_key,
                "Token": issued.token,
                "Expiration": issued.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            indent=2,
        ).encode()

    def _answer_get(self, path: str) -> tuple[int, bytes]:
        with self._lock:
            failing = self.fail_next > 0
            if failing:
                self.fail_next -= 1
        if failing:
            return 503, b""
        # IMDS treats a trailing slash on a leaf the same as none; botocore asks for the zone
        # with one.
        leaf = path.rstrip("/")
        if path == ROLE_LIST_PATH:
            return (404, _NOT_FOUND) if self.role is None else (200, self.role.encode())
        if self.role is not None and leaf == ROLE_LIST_PATH + self.role:
            return 200, self._credentials_document()
        if leaf == REGION_PATH:
            return 200, self.region.encode()
        if leaf == ZONE_PATH:
            return 200, self.availability_zone.encode()
        return 404, _NOT_FOUND


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    @property
    def _imds(self) -> FakeImds:
        imds: FakeImds = self.server.imds  # type: ignore[attr-defined]
        return imds

    def _read_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, MAX_REQUEST_BODY))

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _seen(self) -> Seen:
        return Seen(
            method=self.command,
            path=self.path,
            token=self.headers.get("X-aws-ec2-metadata-token"),
            forwarded_for=self.headers.get("X-Forwarded-For"),
            via=self.headers.get("Via"),
        )

    def do_PUT(self) -> None:
        self._read_body()
        seen = self._seen()
        self._imds._record(seen)
        if not self._imds._wait_before_answer():
            self.close_connection = True
            return
        if self.path != TOKEN_PATH:
            self._send(405, b"")
            return
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        status, token = self._imds._issue_token(ttl, seen.forwarded_for)
        extra = {"X-aws-ec2-metadata-token-ttl-seconds": ttl or ""} if status == 200 else None
        self._send(status, token.encode(), extra)

    def do_GET(self) -> None:
        seen = self._seen()
        self._imds._record(seen)
        if not self._imds._wait_before_answer():
            self.close_connection = True
            return
        if not self._imds._token_ok(seen.token):
            self._send(401, b"")
            return
        status, body = self._imds._answer_get(self.path)
        self._send(status, body)


@contextmanager
def running_imds() -> Iterator[FakeImds]:
    """Start a fake IMDS on a free loopback port for the duration of the block."""
    imds = FakeImds()
    imds.start()
    try:
        yield imds
    finally:
        imds.stop()
