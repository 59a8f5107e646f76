"""The list in service while KMS, IMDS and S3 misbehave on purpose.

The service under test is the real chain: :class:`ListHolder` fetching through
:class:`S3Source` or :class:`FileSource`, decrypting through :class:`AttestedDecryptor` (fresh
RSA key, simulated NSM attestation document, KMS ``Decrypt`` with a ``Recipient``, CMS opened
with the private key) and our SigV4-signing :class:`KMSClient` and :class:`S3Client`, with
credentials from the environment or from a fake IMDSv2. Only the peers are fakes, local
servers on loopback that answer from a fault script:

* :class:`FaultyKMS` speaks KMS's JSON protocol; it checks the attestation document against
  the simulator's root and answers ``CiphertextForRecipient`` for the document's key, unless
  the script says to throttle, fail, stall, deny, send a ``Plaintext`` or malformed JSON;
* :class:`FaultyS3` serves the envelope with an ETag, honours ``If-None-Match``, and can
  answer 404/403/503 or flap between two versions of the object;
* IMDS is :mod:`tests.support.imds` (down, refusing tokens, issuing expiring credentials).

What must hold: what is transient is retried; what is not fails closed at once with a log
line that names the cause; a failed refresh keeps the old list in service; and nothing is
ever answered "cleared" without a list.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from enclave import credentials, http_client
from enclave.attested_decrypt import AttestedDecryptor
from enclave.awscall import CredentialSource
from enclave.credentials import CredentialProvider
from enclave.errors import NoflylistError
from enclave.kms import KMSClient, KMSError
from enclave.modes import AttestationMode
from enclave.retry import RetryPolicy
from enclave.s3 import S3Client
from enclave.sigv4 import Credentials
from noflylist.client import attestation
from noflylist.lists import LOADS, ListHolder, refresh_loop
from noflylist.metrics import Metrics
from noflylist.sources import FileSource, S3Source, Source
from noflylist.tools import seal
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.cms_writer import encode_enveloped_data
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import KEY_ARN, FakeDataKeys
from tests.support.imds import FakeImds, running_imds
from tests.support.screening import screen

REGION = "eu-west-1"
STATIC = Credentials("AKIDFAULTTEST", "fault/test/secret/key/example/0000000000")
#: Retries fast enough for tests; the same code paths as the defaults.
FAST = RetryPolicy(deadline=3.0, base_delay=0.01, max_delay=0.05)
#: The client's read timeout in these tests (a right answer takes a few ms, but CI machines
#: are shared); the "stall" fault waits longer than this.
READ_TIMEOUT = 0.8
STALL = 1.5
BUCKET, KEY = "noflylist-test", "lists/envelope.json"
OLD_LIST = ("Big Bird", "Oscar the Grouch")
NEW_LIST = ("Count von Count", "Elmo")
SERVICE_LOG = "noflylist.lists"


# -- a loopback server answering through a function ------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, str], bytes]


class _Loopback:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose answers come from ``answer(seen)``."""

    def __init__(self, answer: Callable[[Seen], Reply]) -> None:
        self.seen: list[Seen] = []
        self.released = threading.Event()  # ends every stall when the test is over
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
                seen = Seen(self.command, self.path,
                            {k.lower(): v for k, v in self.headers.items()}, body)  # fmt: skip
                owner.seen.append(seen)
                status, headers, reply = answer(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = _any

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.005},
                         daemon=True).start()  # fmt: skip

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def stall(self) -> None:
        self.released.wait(STALL)


# -- KMS -------------------------------------------------------------------------------------

_JSON = {"Content-Type": "application/x-amz-json-1.1"}
_ACCESS_KEY = re.compile(r"Credential=([A-Z0-9]+)/")


def _kms_error(code: str, message: str, status: int = 400) -> Reply:
    return status, _JSON, json.dumps({"__type": code, "message": message}).encode()


#: Fault name -> what the fake KMS answers instead of the right answer.
KMS_FAULTS: dict[str, Callable[[], Reply]] = {
    "throttling": lambda: _kms_error("ThrottlingException", "Rate exceeded"),
    "internal-error": lambda: _kms_error("KMSInternalException", "internal", 500),
    "html-500": lambda: (500, {"Content-Type": "text/html"}, b"<html>Bad gateway</html>"),
    "empty-503": lambda: (503, {}, b""),
    "access-denied": lambda: _kms_error(
        "AccessDeniedException", "User is not authorized to perform: kms:Decrypt"
    ),
    "plaintext-instead": lambda: (200, _JSON, json.dumps(
        {"KeyId": KEY_ARN, "Plaintext": base64.b64encode(bytes(32)).decode()}).encode()),
    "malformed-json": lambda: (200, _JSON, b'{"KeyId": "' + KEY_ARN.encode() + b'", "Cipher'),
    "not-an-object": lambda: (200, _JSON, b'["CiphertextForRecipient"]'),
}  # fmt: skip
TRANSIENT = ("throttling", "internal-error", "html-500", "empty-503", "stall")
PERMANENT = {
    "access-denied": "AccessDeniedException",
    "plaintext-instead": "answered a Plaintext although a Recipient was sent",
    "malformed-json": "the answer is not JSON",
    "not-an-object": "not a JSON object",
    "for-another-key": "",  # a CMS error: its wording is cms.py's, the type is what matters
}


@functools.cache
def _other_key() -> rsa.RSAPrivateKey:
    """Someone else's key pair, made once (key generation is slow on a busy machine)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FaultyKMS:
    """KMS ``Decrypt`` on loopback with a fault script.

    ``script`` holds fault names for the next requests, in order ("ok" answers normally);
    an empty script answers normally. Requests signed with an access key id in
    ``expired_keys`` get ``ExpiredTokenException``, as KMS answers expired credentials.
    """

    def __init__(self, root: SimulatedCA, keys: FakeDataKeys) -> None:
        self.script: list[str] = []
        self.expired_keys: set[str] = set()
        self._root = root
        self._keys = keys
        self._server = _Loopback(self._answer)
        self.url = self._server.url

    @property
    def calls(self) -> int:
        return len(self._server.seen)

    def access_keys(self) -> list[str]:
        return [_ACCESS_KEY.findall(s.headers.get("authorization", ""))[0]
                for s in self._server.seen]  # fmt: skip

    def stop(self) -> None:
        self._server.stop()

    def _answer(self, seen: Seen) -> Reply:
        fault = self.script.pop(0) if self.script else "ok"
        if fault == "stall":
            self._server.stall()  # the client has given up by now; answer anyway
            fault = "ok"
        if fault in KMS_FAULTS:
            return KMS_FAULTS[fault]()
        key = _ACCESS_KEY.findall(seen.headers.get("authorization", ""))
        if not key or key[0] in self.expired_keys:
            return _kms_error("ExpiredTokenException", "The security token included in the "
                              "request is expired")  # fmt: skip
        request = json.loads(seen.body)
        try:
            data_key = self._keys.decrypt(
                base64.b64decode(request["CiphertextBlob"]),
                key_id=request.get("KeyId"),
                encryption_context=request.get("EncryptionContext"),
            )
        except KMSError as exc:
            return _kms_error(str(exc), "refused")
        document = base64.b64decode(request["Recipient"]["AttestationDocument"])
        public_key = attestation.verify(document, unsafe_root=self._root.root).public_key
        assert public_key is not None
        recipient_key = load_der_public_key(public_key)
        if fault == "for-another-key":
            recipient_key = _other_key().public_key()
        assert isinstance(recipient_key, rsa.RSAPublicKey)
        blob = encode_enveloped_data(data_key, recipient_key)
        answer = {"KeyId": KEY_ARN, "CiphertextForRecipient": base64.b64encode(blob).decode()}
        return 200, _JSON, json.dumps(answer).encode()


# -- S3 --------------------------------------------------------------------------------------


@dataclass
class FaultyS3:
    """One S3 object at ``/BUCKET/KEY``. ``versions`` are served in turn (one per GET) when
    more than one is set: an object flapping between two versions during a rollout.
    ``status`` forces an error answer (404 NoSuchKey, 403 AccessDenied, 503 SlowDown)."""

    versions: list[bytes] = field(default_factory=list)
    status: int | None = None
    fail_next: int = 0  # answer this many GETs with 503 first
    gets: int = 0

    def __post_init__(self) -> None:
        self._server = _Loopback(self._answer)
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()

    @staticmethod
    def etag(body: bytes) -> str:
        import hashlib

        return f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'

    def _answer(self, seen: Seen) -> Reply:
        assert seen.path == f"/{BUCKET}/{KEY}", seen.path
        assert seen.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
        self.gets += 1
        if self.fail_next:
            self.fail_next -= 1
            return 503, {}, b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message>"
        if self.status is not None:
            code = {404: "NoSuchKey", 403: "AccessDenied"}.get(self.status, "InternalError")
            return self.status, {"Content-Type": "application/xml"}, (
                f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>nope</Message>"
                "</Error>").encode()  # fmt: skip
        body = self.versions[(self.gets - 1) % len(self.versions)]
        etag = self.etag(body)
        if seen.headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        return 200, {"ETag": etag, "Content-Type": "application/json"}, body


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "READ_TIMEOUT", READ_TIMEOUT)
    monkeypatch.setattr(credentials, "IMDS_CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(credentials, "IMDS_READ_TIMEOUT", 0.3)
    monkeypatch.setattr(credentials, "IMDS_RETRY_PAUSE", 0.01)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCA:
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def nsm(ca: SimulatedCA) -> SimulatedNSM:
    return SimulatedNSM(ca, pcr0=bytes(range(48)))


@pytest.fixture
def keys() -> FakeDataKeys:
    return FakeDataKeys()


@pytest.fixture
def kms(ca: SimulatedCA, keys: FakeDataKeys) -> Iterator[FaultyKMS]:
    server = FaultyKMS(ca, keys)
    yield server
    server.stop()


@pytest.fixture
def s3() -> Iterator[FaultyS3]:
    server = FaultyS3()
    yield server
    server.stop()


class _Static:
    def get(self) -> Credentials:
        return STATIC


def holder_for(
    source: Source, kms: FaultyKMS, nsm: SimulatedNSM, provider: CredentialSource | None = None
) -> ListHolder:
    """The service's list holder with the production decryptor, against the fake KMS."""
    client = KMSClient(REGION, provider or _Static(), environ={"AWS_ENDPOINT_URL_KMS": kms.url},
                       retry=FAST)  # fmt: skip
    decryptor = AttestedDecryptor(client, nsm, mode=AttestationMode.SIMULATED)
    return ListHolder(source, decryptor, Metrics())


def sealed(keys: FakeDataKeys, names: tuple[str, ...], serial: int) -> bytes:
    return seal.seal_v2(names, keys, KEY_ARN, serial=serial)


def file_source(tmp_path: Path, document: bytes) -> FileSource:
    path = tmp_path / "envelope.json"
    path.write_bytes(document)
    return FileSource(str(path))


def s3_source(s3: FaultyS3) -> S3Source:
    client = S3Client(REGION, _Static(), environ={"AWS_ENDPOINT_URL_S3": s3.url}, retry=FAST)
    return S3Source(f"s3://{BUCKET}/{KEY}", client)


def serves(holder: ListHolder, names: tuple[str, ...], not_names: tuple[str, ...]) -> bool:
    return all(screen(holder, n) is True for n in names) and all(
        screen(holder, n) is False for n in not_names
    )


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == SERVICE_LOG and r.levelno >= logging.ERROR]  # fmt: skip


# -- KMS faults ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", TRANSIENT)
def test_transient_kms_faults_are_retried_and_the_list_loads(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, fault: str
) -> None:
    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm)
    kms.script = [fault, fault, "ok"]
    assert holder.reload(only_if_changed=False) is True
    assert kms.calls == 3
    assert serves(holder, OLD_LIST, NEW_LIST)


@pytest.mark.parametrize("fault", PERMANENT)
def test_kms_refusals_fail_closed_at_once_with_a_log_line_naming_the_cause(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm)
    kms.script = [fault]
    with caplog.at_level(logging.INFO), pytest.raises(NoflylistError) as raised:
        holder.reload(only_if_changed=False)
    assert kms.calls == 1, "a refusal must not be retried"
    assert holder.current is None and screen(holder, OLD_LIST[0]) is None
    (line,) = error_lines(caplog)
    assert str(raised.value) in line and "no list in service" in line
    assert PERMANENT[fault] in line
    assert holder._metrics.events(LOADS, "failed") == 1


def test_kms_throttling_past_the_deadline_fails_closed_saying_how_long_it_tried(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm)
    kms.script = ["throttling"] * 1000
    started = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(KMSError, match="ThrottlingException"):
        holder.reload(only_if_changed=False)
    assert time.monotonic() - started < FAST.deadline + 1.0
    assert 2 <= kms.calls <= FAST.max_attempts
    (line,) = error_lines(caplog)
    assert "still failing after" in line and "no list in service" in line
    assert screen(holder, OLD_LIST[0]) is None


@pytest.mark.slow
@pytest.mark.parametrize("fault", [*PERMANENT, "throttling-forever"])
def test_kms_failing_during_a_refresh_keeps_the_old_list_in_service(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    source = file_source(tmp_path, sealed(keys, OLD_LIST, 1))
    holder = holder_for(source, kms, nsm)
    holder.reload(only_if_changed=False)
    (tmp_path / "envelope.json").write_bytes(sealed(keys, NEW_LIST, 2))
    kms.script = ["throttling"] * 1000 if fault == "throttling-forever" else [fault]
    with caplog.at_level(logging.INFO), pytest.raises(NoflylistError):
        holder.reload(only_if_changed=True)
    assert holder.current is not None and holder.current.serial == 1
    assert serves(holder, OLD_LIST, NEW_LIST)
    (line,) = error_lines(caplog)
    assert "keeping the list in service" in line


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_refresh_that_failed_is_tried_again_at_the_next_poll_not_skipped_as_unchanged(
    tmp_path: Path, s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM,
    where: str,
) -> None:  # fmt: skip
    """A new list that failed to decrypt (KMS throttled past the deadline, say) must come
    into service at the next poll once KMS recovers. A source that remembers the new
    ETag or digest at fetch time instead answers "unchanged" from then on, and the old
    list stays in service until the object changes again or someone sends SIGHUP."""
    path = tmp_path / "envelope.json"
    path.write_bytes(sealed(keys, OLD_LIST, 1))
    s3.versions = [sealed(keys, OLD_LIST, 1)]
    source = FileSource(str(path)) if where == "file" else s3_source(s3)
    holder = holder_for(source, kms, nsm)
    holder.reload(only_if_changed=False)
    path.write_bytes(sealed(keys, NEW_LIST, 2))
    s3.versions = [sealed(keys, NEW_LIST, 2)]
    kms.script = ["access-denied"]
    with pytest.raises(KMSError):
        holder.reload(only_if_changed=True)
    assert serves(holder, OLD_LIST, NEW_LIST)
    # KMS has recovered; the next poll is an ordinary one.
    assert holder.reload(only_if_changed=True) is True, "the new list was skipped as unchanged"
    assert serves(holder, NEW_LIST, OLD_LIST)


def test_http_answers_503_never_cleared_while_no_list_could_be_loaded(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM
) -> None:
    from noflylist.routes import Routes
    from noflylist.transport.server import Server

    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm)
    kms.script = ["access-denied"]
    with pytest.raises(KMSError):
        holder.reload(only_if_changed=False)
    server = Server(Routes(holder, holder._metrics), holder._metrics, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connection = HTTPConnection(*server.address, timeout=5)
        for target in ("/enclave/passenger?name=Kermit", "/enclave/passenger?name=Big+Bird"):
            connection.request("GET", target)
            answer = connection.getresponse()
            body = answer.read()
            assert answer.status == 503 and answer.getheader("Retry-After")
            assert b"cleared" not in body and b"CAN NOT" not in body
        connection.request("POST", "/v1/screen", body=b'{"names": ["Kermit"]}',
                           headers={"Content-Type": "application/json"})  # fmt: skip
        answer = connection.getresponse()
        assert answer.status == 503 and b"listed" not in answer.read()
        connection.request("GET", "/readyz")
        answer = connection.getresponse()
        assert answer.status == 503 and b"AccessDeniedException" in answer.read()
    finally:
        server.shutdown(drain_timeout=1.0)
        thread.join(timeout=5)


# -- IMDS faults -----------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with running_imds() as server:
        yield server


def imds_provider(imds: FakeImds, clock: _Clock | None = None) -> CredentialProvider:
    return CredentialProvider({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}, clock=clock)


def test_imds_down_at_start_fails_closed_naming_the_metadata_service_and_the_fix(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, imds: FakeImds,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    provider = imds_provider(imds)
    imds.stop()
    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm, provider)
    with caplog.at_level(logging.INFO), pytest.raises(credentials.CredentialsError):
        holder.reload(only_if_changed=False)
    assert kms.calls == 0 and screen(holder, OLD_LIST[0]) is None
    (line,) = error_lines(caplog)
    assert "could not reach the instance metadata service" in line and "hop limit" in line


def test_imds_refusing_tokens_fails_closed_naming_the_header_a_proxy_may_drop(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, imds: FakeImds,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    imds.refuse_tokens = True
    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm,
                        imds_provider(imds))  # fmt: skip
    with caplog.at_level(logging.INFO), pytest.raises(credentials.CredentialsError):
        holder.reload(only_if_changed=False)
    assert kms.calls == 0 and screen(holder, OLD_LIST[0]) is None
    (line,) = error_lines(caplog)
    assert "HTTP 401" in line and "X-aws-ec2-metadata-token" in line


def test_credentials_expiring_mid_run_are_refreshed_then_fail_closed_once_imds_is_gone(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, imds: FakeImds,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    clock = _Clock()
    imds.rotate = True
    imds.expiration = clock.now + timedelta(hours=1)
    path = tmp_path / "envelope.json"
    path.write_bytes(sealed(keys, OLD_LIST, 1))
    holder = holder_for(FileSource(str(path)), kms, nsm, imds_provider(imds, clock))
    holder.reload(only_if_changed=False)
    first_key = kms.access_keys()[-1]

    # Close to expiry: the provider fetches new keys before the next call, and KMS, which
    # no longer accepts the old ones, is asked with the new ones.
    clock.now = imds.expiration - timedelta(minutes=2)
    imds.expiration = clock.now + timedelta(hours=1)
    path.write_bytes(sealed(keys, NEW_LIST, 2))
    kms.expired_keys = {first_key}
    assert holder.reload(only_if_changed=True) is True
    assert kms.access_keys()[-1] == imds.issued[-1].access_key_id != first_key
    assert serves(holder, NEW_LIST, OLD_LIST)

    # The keys expire while IMDS is down: the refresh fails closed, the list stays.
    imds.stop()
    clock.now = imds.expiration + timedelta(minutes=1)
    path.write_bytes(sealed(keys, OLD_LIST + NEW_LIST, 3))
    calls = kms.calls
    with caplog.at_level(logging.INFO), pytest.raises(credentials.CredentialsError):
        holder.reload(only_if_changed=True)
    assert kms.calls == calls, "no KMS call with expired credentials"
    assert holder.current is not None and holder.current.serial == 2
    assert serves(holder, NEW_LIST, OLD_LIST)
    (line,) = error_lines(caplog)
    assert "could not be refreshed" in line and "keeping the list in service" in line


def test_a_credential_refresh_in_the_loop_meeting_a_hostile_answer_or_a_bug_is_a_failed_load(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM, imds: FakeImds,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Credentials have no loop of their own: they are refreshed inside the KMS call a load
    makes, in the refresh loop's thread. A credentials document nested 30,000 deep, then a
    foreign exception from inside the refresh (injected: a bug), are each one failed load,
    counted and shown without their content; the loop goes on, and the next refresh loads
    the next list."""
    clock = _Clock()
    imds.rotate = True
    imds.expiration = clock.now + timedelta(hours=1)
    path = tmp_path / "envelope.json"
    path.write_bytes(sealed(keys, OLD_LIST, 1))
    holder = holder_for(FileSource(str(path)), kms, nsm, imds_provider(imds, clock))
    holder.reload(only_if_changed=False)
    stop, wake = threading.Event(), threading.Event()
    loop = threading.Thread(target=refresh_loop, args=(holder, 60.0, stop, wake), daemon=True)
    loop.start()

    def wake_and_wait(attempts: int) -> None:
        wake.set()
        deadline = time.monotonic() + 20.0
        while sum(holder._metrics.events(LOADS, o) for o in ("loaded", "failed")) < attempts:
            assert time.monotonic() < deadline and loop.is_alive(), "the refresh loop stopped"
            time.sleep(0.01)

    try:
        # The keys have expired: the next KMS call must refresh them first.
        clock.now = imds.expiration + timedelta(minutes=1)
        imds.expiration = clock.now + timedelta(hours=1)  # what a good answer would say
        imds.credentials_body = b"[" * 30_000 + b"]" * 30_000  # under IMDS's size bound
        path.write_bytes(sealed(keys, NEW_LIST, 2))
        calls = kms.calls
        wake_and_wait(2)
        assert holder._metrics.events(LOADS, "failed") == 1 and loop.is_alive()
        assert kms.calls == calls, "no KMS call without usable credentials"
        assert serves(holder, OLD_LIST, NEW_LIST)
        status = holder.status
        assert status.outcome == "failed" and status.failures_in_a_row == 1
        assert status.error is not None and "[[[" not in status.error

        imds.credentials_body = None
        real_fetch = credentials._fetch_imds_credentials

        def fetch_once(*args: object, **kwargs: object) -> Credentials:
            monkeypatch.setattr(credentials, "_fetch_imds_credentials", real_fetch)
            raise RuntimeError(f"cannot refresh for {OLD_LIST[1]}")

        monkeypatch.setattr(credentials, "_fetch_imds_credentials", fetch_once)
        wake_and_wait(3)
        assert holder._metrics.events(LOADS, "failed") == 2 and loop.is_alive()
        assert kms.calls == calls and serves(holder, OLD_LIST, NEW_LIST)
        status = holder.status
        assert status.failures_in_a_row == 2 and status.error is not None
        assert "unexpected RuntimeError at " in status.error and OLD_LIST[1] not in status.error

        wake_and_wait(4)  # IMDS answers properly again
        assert holder._metrics.events(LOADS, "loaded") == 2
        assert serves(holder, NEW_LIST, OLD_LIST)
        assert kms.access_keys()[-1] == imds.issued[-1].access_key_id
        assert holder.status.failures_in_a_row == 0
    finally:
        stop.set()
        wake.set()
        loop.join(timeout=5)
    assert not loop.is_alive()


def test_kms_refusing_expired_credentials_fails_closed_with_its_code(
    tmp_path: Path, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    kms.expired_keys = {STATIC.access_key_id}
    holder = holder_for(file_source(tmp_path, sealed(keys, OLD_LIST, 1)), kms, nsm)
    with caplog.at_level(logging.INFO), pytest.raises(KMSError, match="ExpiredTokenException"):
        holder.reload(only_if_changed=False)
    assert kms.calls == 1 and screen(holder, OLD_LIST[0]) is None


# -- S3 faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,words",
    [(404, "HTTP 404 NoSuchKey"), (403, "may s3:GetObject")],
    ids=["not-found", "access-denied"],
)
def test_s3_refusals_at_start_fail_closed_naming_the_object_and_the_fix(
    s3: FaultyS3, kms: FaultyKMS, nsm: SimulatedNSM, status: int, words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    s3.status = status
    holder = holder_for(s3_source(s3), kms, nsm)
    with caplog.at_level(logging.INFO), pytest.raises(NoflylistError):
        holder.reload(only_if_changed=False)
    assert s3.gets == 1 and kms.calls == 0 and screen(holder, OLD_LIST[0]) is None
    (line,) = error_lines(caplog)
    assert f"s3://{BUCKET}/{KEY}" in line and words in line


def test_s3_slowdown_is_retried_then_the_list_loads(
    s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM
) -> None:
    s3.versions = [sealed(keys, OLD_LIST, 1)]
    s3.fail_next = 2
    holder = holder_for(s3_source(s3), kms, nsm)
    assert holder.reload(only_if_changed=False) is True
    assert s3.gets == 3 and serves(holder, OLD_LIST, NEW_LIST)


def test_s3_failing_during_refresh_keeps_the_old_list(
    s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM
) -> None:
    s3.versions = [sealed(keys, OLD_LIST, 1)]
    holder = holder_for(s3_source(s3), kms, nsm)
    holder.reload(only_if_changed=False)
    for status in (404, 403, 500):
        s3.status = status
        with pytest.raises(NoflylistError):
            holder.reload(only_if_changed=True)
        assert serves(holder, OLD_LIST, NEW_LIST)
    assert holder._metrics.events(LOADS, "failed") == 3


def test_s3_etag_flapping_during_a_refresh_neither_rolls_back_nor_decrypts_again(
    s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    old, new = sealed(keys, OLD_LIST, 1), sealed(keys, NEW_LIST, 2)
    s3.versions = [old]
    holder = holder_for(s3_source(s3), kms, nsm)
    holder.reload(only_if_changed=False)
    # The rollout is half visible: GETs alternate between the new and the old object.
    s3.versions = [new, old]
    s3.gets = 0
    outcomes: list[bool | str] = []
    with caplog.at_level(logging.INFO):
        for _ in range(6):
            try:
                outcomes.append(holder.reload(only_if_changed=True))
            except NoflylistError as exc:
                outcomes.append(type(exc).__name__)
            assert holder.current is not None and holder.current.serial == 2
    assert outcomes[0] is True and outcomes.count(True) == 1
    assert set(outcomes[1:]) == {"RollbackError", False}
    assert serves(holder, NEW_LIST, OLD_LIST)
    assert kms.calls == 2, "only the first load and the one real change reach KMS"
    assert holder._metrics.events(LOADS, "refused") == outcomes.count("RollbackError")


def test_unchanged_s3_object_costs_one_conditional_get_and_no_kms_call(
    s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM
) -> None:
    s3.versions = [sealed(keys, OLD_LIST, 1)]
    holder = holder_for(s3_source(s3), kms, nsm)
    holder.reload(only_if_changed=False)
    for _ in range(3):
        assert holder.reload(only_if_changed=True) is False
    assert s3.gets == 4 and kms.calls == 1


# -- the refresh loop under a storm ----------------------------------------------------------


@pytest.mark.slow
def test_refresh_loop_through_a_storm_of_faults_never_stops_answering_correctly(
    s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM
) -> None:
    """While the loop polls every 20 ms through S3 and KMS faults and a list change, a
    screener asks all the time: every answer comes from the old or the new list, complete,
    never "not loaded" and never a mix."""
    s3.versions = [sealed(keys, OLD_LIST, 1)]
    holder = holder_for(s3_source(s3), kms, nsm)
    holder.reload(only_if_changed=False)
    stop, wake = threading.Event(), threading.Event()
    loop = threading.Thread(target=refresh_loop, args=(holder, 0.02, stop, wake), daemon=True)
    wrong: list[str] = []
    answers = 0

    def screener() -> None:
        nonlocal answers
        while not stop.is_set():
            current = holder.current
            if current is None:
                wrong.append("no list")
                continue
            old = [current.table.contains(n) for n in OLD_LIST]
            new = [current.table.contains(n) for n in NEW_LIST]
            if (old, new) not in (([True, True], [False, False]), ([False, False], [True, True])):
                wrong.append(f"serial {current.serial}: {old} {new}")
            answers += 1

    asker = threading.Thread(target=screener, daemon=True)
    loop.start()
    asker.start()
    try:
        s3.fail_next = 3
        kms.script = ["throttling", "access-denied", "malformed-json"]
        time.sleep(0.3)
        s3.versions = [sealed(keys, NEW_LIST, 2)]  # a real change, through more KMS faults
        kms.script = ["access-denied", "html-500", "plaintext-instead"]
        deadline = time.monotonic() + 5.0
        while (holder.current is None or holder.current.serial != 2) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.02)
        s3.status = 503  # then S3 fails for good: the new list stays
        time.sleep(0.3)
    finally:
        stop.set()
        wake.set()
        loop.join(timeout=5)
        asker.join(timeout=5)
    assert not wrong, wrong[:5]
    assert answers > 100
    assert holder.current is not None and holder.current.serial == 2
    assert holder._metrics.events(LOADS, "failed") >= 3


def test_refresh_loop_polls_through_hostile_envelopes_then_serves_the_next_list(
    s3: FaultyS3, kms: FaultyKMS, keys: FakeDataKeys, nsm: SimulatedNSM
) -> None:
    """Polling every 20 ms, the loop meets envelopes that broke the first release's parser
    with foreign exceptions (deep nesting: RecursionError; a huge serial: ValueError) and
    plain broken ones: it keeps the old list, counts them, and serves the next valid one."""
    valid = json.loads(sealed(keys, NEW_LIST, 2))
    huge_serial = json.dumps(dict(valid, serial="SERIAL")).replace('"SERIAL"', "9" * 5000)
    hostile = [b"[" * 100_000, huge_serial.encode(), b"not JSON", sealed(keys, NEW_LIST, 2)[:99]]
    s3.versions = [sealed(keys, OLD_LIST, 1)]
    holder = holder_for(s3_source(s3), kms, nsm)
    holder.reload(only_if_changed=False)
    stop, wake = threading.Event(), threading.Event()
    loop = threading.Thread(target=refresh_loop, args=(holder, 0.02, stop, wake), daemon=True)
    loop.start()

    def wait_until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10.0
        while not condition():
            assert time.monotonic() < deadline and loop.is_alive(), "the refresh loop stopped"
            time.sleep(0.01)

    try:
        for body in hostile:
            failed, gets = holder._metrics.events(LOADS, "failed"), s3.gets
            s3.versions = [body]
            # Two GETs after the change: at least one whole attempt has seen this body.
            wait_until(lambda g=gets, f=failed: s3.gets >= g + 2
                       and holder._metrics.events(LOADS, "failed") >= f + 2)  # fmt: skip
            assert serves(holder, OLD_LIST, NEW_LIST)
        s3.versions = [sealed(keys, NEW_LIST, 2)]
        wait_until(lambda: holder.current is not None and holder.current.serial == 2)
        assert serves(holder, NEW_LIST, OLD_LIST)
    finally:
        stop.set()
        wake.set()
        loop.join(timeout=5)
    assert not loop.is_alive()
    assert holder.status.outcome in ("loaded", "unchanged") and holder.last_error is None
