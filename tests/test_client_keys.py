"""The client side of "who may ask, and how much" (issue 20): keys, signed requests, refusals.

* The client library signs each screening request (both routes, not the attestation) over
  the method, the target exactly as it crossed the wire (read back by a recording relay) and
  the body: the requests verify under :func:`noflylist.httpsig.verify_request` and under the
  independent ``http_message_signatures`` package, and a changed name does not.
* ``noflylist client-key new`` writes a 0600 PKCS8 key that loads and a public entry that
  :func:`noflylist.clients.parse_policy` accepts with that key; it never overwrites a file
  and refuses an id the policy would refuse.
* :func:`load_client_key` refuses a key file others can read, and keys that are not Ed25519.
* End to end, a real Server serving a list sealed with a policy: the registered client gets
  answers (library and ``check``), an unsigned client gets a 401 :class:`AccessRefused` with
  the service's reason and the fix, an unregistered key gets "unknown-client", and a client
  over budget gets a 429 naming the budget and Retry-After, never the name.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms

from noflylist import cli
from noflylist.client.client import (
    AccessRefused,
    Cleared,
    Client,
    ClientError,
    Listed,
    Refused,
    load_client_key,
)
from noflylist.clients import ClientPolicy, parse_policy
from noflylist.httpsig import ReplayCache, SignatureRefused, verify_request
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.tools import client_key as client_key_tool
from noflylist.tools import seal
from noflylist.wire import ATTESTATION_PATH, PASSENGER_PATH, SCREEN_PATH
from noflylist_simulator.ca import load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import FakeDataKeys
from tests.test_signed_routes import LISTED, PCR0, _Service

CLIENT_ID = "acme-checkin"
#: A client with a budget of one name a minute, to reach the 429s.
TINY_ID = "tiny"
#: A name that needs percent-encoding: a space, non-ASCII letters, an apostrophe.
AWKWARD_NAME = "Zoë O'Brien-Núñez"
#: Every character a query's syntax gives a meaning to: & + / ? # % = (the service refuses
#: the name, in a signed answer, after the signature is accepted).
SYNTAX_NAME = "A&B+C/D?E#F%G=H"


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _new_key(folder: Path, client_id: str, *extra: str) -> tuple[int, str]:
    """``noflylist client-key new``; its exit status and stderr (stdout must stay empty)."""
    import contextlib
    import io

    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = cli.main(["client-key", "new", "--id", client_id, "--out", str(folder), *extra])
    assert out.getvalue() == ""
    return status, err.getvalue()


def _entry(folder: Path, client_id: str) -> dict[str, object]:
    value: dict[str, object] = json.loads((folder / f"{client_id}.public.json").read_text())
    return value


# -- a real service serving a list sealed with a client policy ---------------------------------


@dataclass
class _Setup:
    service: _Service
    policy: ClientPolicy
    keys: Path  # the folder client-key new wrote the clients' files in
    ca_folder: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Setup]:
    """Two clients made by ``client-key new`` (one on a budget of 1 name a minute), their
    entries pasted into a policy as the owner would, sealed with the list, served."""
    folder = tmp_path_factory.mktemp("client-keys")
    ca_folder = tmp_path_factory.mktemp("client-keys-ca")
    assert _new_key(folder, CLIENT_ID)[0] == 0
    assert _new_key(folder, TINY_ID, "--names-per-minute", "1")[0] == 0
    document = {"clients": [_entry(folder, CLIENT_ID), _entry(folder, TINY_ID)]}
    policy = parse_policy(json.dumps(document, indent=2).encode())
    kms = FakeDataKeys()
    envelope = folder / "envelope.json"
    envelope.write_bytes(seal.seal_v2(LISTED, kms, "k", serial=7, clients=policy))
    holder = ListHolder(FileSource(str(envelope)), kms, Metrics())
    holder.reload(only_if_changed=False)
    assert holder.current is not None and holder.current.clients == policy
    service = _Service(holder, SimulatedNSM(load_or_create(ca_folder), pcr0=PCR0))
    yield _Setup(service, policy, folder, ca_folder)
    service.stop()


def _client(setup: _Setup, url: str | None = None, **options: object) -> Client:
    url = url or f"http://{setup.service.host}:{setup.service.port}"
    root = load_or_create(setup.ca_folder).root
    return Client(url, {0: PCR0}, unsafe_root=root, **options)  # type: ignore[arg-type]


def _registered(setup: _Setup, client_id: str = CLIENT_ID, url: str | None = None) -> Client:
    key = load_client_key(setup.keys / f"{client_id}.key")
    return _client(setup, url, client_id=client_id, client_key=key)


@dataclass(frozen=True)
class _Sent:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case, as the service reads them
    body: bytes


class _Recorder:
    """A relay that forwards every request unchanged and keeps what crossed the wire: the
    method, the raw request target, the headers and the body."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import http.client

        self.sent: list[_Sent] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._relay(b"")

            def do_POST(self) -> None:
                self._relay(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def _relay(self, body: bytes) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.sent.append(_Sent(self.command, self.path, headers, body))
                connection = http.client.HTTPConnection(*upstream, timeout=10)
                forwarded = {k: v for k, v in headers.items() if k not in ("connection", "host")}
                connection.request(self.command, self.path, body=body or None, headers=forwarded)
                response = connection.getresponse()
                answer = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                connection.close()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def screening(self) -> list[_Sent]:
        return [s for s in self.sent if not s.target.startswith(ATTESTATION_PATH)]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture()
def recorder(setup: _Setup) -> Iterator[_Recorder]:
    started = _Recorder((setup.service.host, setup.service.port))
    yield started
    started.stop()


@pytest.fixture()
def recorded(setup: _Setup, recorder: _Recorder) -> list[_Sent]:
    """A registered client's three screening requests, through the recorder: two names that
    need percent-encoding, and a manifest (POST with a body)."""
    client = _registered(setup, url=recorder.url)
    assert client.screen(AWKWARD_NAME) == Cleared(7)
    symbols = client.screen(SYNTAX_NAME)  # answered (signed), so the signature was accepted
    assert isinstance(symbols, Refused) and "symbol" in symbols.reason
    assert client.screen_many([AWKWARD_NAME, "cookie monster"]) == [Cleared(7), Listed(7)]
    attestations = [s for s in recorder.sent if s.target.startswith(ATTESTATION_PATH)]
    assert attestations and all("signature-input" not in s.headers for s in attestations)
    sent = recorder.screening()
    assert [(s.method, s.target.partition("?")[0]) for s in sent] == [
        ("GET", PASSENGER_PATH), ("GET", PASSENGER_PATH), ("POST", SCREEN_PATH),
    ]  # fmt: skip
    return sent


# -- (a) the client's signatures verify under noflylist.httpsig -------------------------------


def test_each_screening_request_is_signed_over_the_bytes_sent_and_verifies(setup, recorded):
    awkward, syntax, manifest = recorded
    assert awkward.target == f"{PASSENGER_PATH}?name={quote(AWKWARD_NAME, safe='')}"
    assert syntax.target == f"{PASSENGER_PATH}?name=A%26B%2BC%2FD%3FE%23F%25G%3DH"
    assert json.loads(manifest.body) == {"names": [AWKWARD_NAME, "cookie monster"]}
    replay = ReplayCache()
    for sent in recorded:
        verified = verify_request(sent.method, sent.target, sent.headers, sent.body,
                                  public_keys=setup.policy.public_keys, replay=replay)  # fmt: skip
        assert verified.client_id == CLIENT_ID
    assert "content-digest" in manifest.headers and "content-digest" not in awkward.headers
    assert len({s.headers["signature"] for s in recorded}) == 3
    with pytest.raises(SignatureRefused) as again:  # each request has its own nonce, once
        verify_request(syntax.method, syntax.target, syntax.headers, syntax.body,
                       public_keys=setup.policy.public_keys, replay=replay)  # fmt: skip
    assert again.value.reason == "replayed"


def test_the_signature_covers_the_name_and_the_body(setup, recorded):
    awkward, _, manifest = recorded
    keys = setup.policy.public_keys
    other_name = f"{PASSENGER_PATH}?name={quote('Elmo', safe='')}"
    with pytest.raises(SignatureRefused) as renamed:
        verify_request("GET", other_name, awkward.headers, b"", public_keys=keys,
                       replay=ReplayCache())  # fmt: skip
    assert renamed.value.reason == "bad-signature"
    with pytest.raises(SignatureRefused) as rebodied:
        verify_request("POST", SCREEN_PATH, manifest.headers, b'{"names": ["Elmo"]}',
                       public_keys=keys, replay=ReplayCache())  # fmt: skip
    assert rebodied.value.reason == "digest"


# -- (b) ... and under the independent http_message_signatures ---------------------------------


def test_the_clients_signed_requests_verify_under_http_message_signatures(setup, recorded):
    key = load_client_key(setup.keys / f"{CLIENT_ID}.key")
    verifier = HTTPMessageVerifier(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(public_keys={CLIENT_ID: key.public_key()}, private_keys={}),
    )
    for sent in recorded:
        prepared = requests.Request(
            sent.method, "http://screening.example" + sent.target, data=sent.body or None,
            headers={k: v for k, v in sent.headers.items() if k != "content-length"},
        ).prepare()  # fmt: skip
        assert prepared.path_url == sent.target  # the oracle reads the bytes that were sent
        required = ("@method", "@path", "@query", *(("content-digest",) if sent.body else ()))
        (result,) = verifier.verify(prepared, require_components=required, body=sent.body)
        assert result.parameters["keyid"] == CLIENT_ID
        assert result.parameters["alg"] == "ed25519"


# -- (c) client-key new ------------------------------------------------------------------------


def test_client_key_new_writes_a_0600_key_that_loads_and_an_entry_the_policy_accepts(tmp_path):
    status, err = _new_key(tmp_path, "gate-7", "--names-per-minute", "60",
                           "--names-per-day", "5000")  # fmt: skip
    assert status == 0, err
    key_path, public_path = tmp_path / "gate-7.key", tmp_path / "gate-7.public.json"
    assert stat.S_IMODE(key_path.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(key_path.stat().st_mode) & 0o600 == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8
    key = load_client_key(key_path)
    entry = json.loads(public_path.read_text())
    assert list(entry) == ["id", "public_key", "names_per_minute", "names_per_day"]
    (client,) = parse_policy(json.dumps({"clients": [entry]}).encode()).clients
    assert (client.id, client.names_per_minute, client.names_per_day) == ("gate-7", 60, 5000)
    assert client.public_key == _raw(key)
    assert str(key_path) in err and str(public_path) in err and "never send" in err
    assert entry["public_key"] in err  # what to send is shown ...
    assert "PRIVATE KEY" not in err  # ... and the private key never is


def test_client_key_new_asks_for_600_and_100000_by_default(tmp_path):
    assert _new_key(tmp_path, "defaults")[0] == 0
    entry = _entry(tmp_path, "defaults")
    assert (entry["names_per_minute"], entry["names_per_day"]) == (600, 100_000)


def test_client_key_new_creates_the_key_0600_exclusively_not_chmod_after(tmp_path, monkeypatch):
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(client_key_tool.os, "open", spy)
    assert _new_key(tmp_path, "spied")[0] == 0
    (flags, mode) = next((f, m) for p, f, m in opened if p.endswith("spied.key"))
    assert flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600


def test_client_key_new_never_overwrites_and_leaves_no_half_pair(tmp_path):
    assert _new_key(tmp_path, "once")[0] == 0
    before = (tmp_path / "once.key").read_bytes(), (tmp_path / "once.public.json").read_bytes()
    status, err = _new_key(tmp_path, "once")
    assert status == 1 and "already exists" in err and "not overwritten" in err
    after = (tmp_path / "once.key").read_bytes(), (tmp_path / "once.public.json").read_bytes()
    assert after == before
    (tmp_path / "half.public.json").write_text("the owner's copy\n")  # only the public file
    status, err = _new_key(tmp_path, "half")
    assert status == 1 and "half.public.json already exists" in err
    assert not (tmp_path / "half.key").exists()  # the key it began is removed, not left alone
    assert (tmp_path / "half.public.json").read_text() == "the owner's copy\n"


@pytest.mark.parametrize("bad_id", ["../escape", "a b", "", "x" * 65, "élan", "a/b"])
def test_client_key_new_refuses_an_id_the_policy_would_refuse(tmp_path, bad_id):
    status, err = _new_key(tmp_path, bad_id)
    assert status == 1 and "--id must be 1 to 64 of A-Z a-z 0-9 . _ -" in err
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "escape.key").exists()


@pytest.mark.parametrize(("flag", "value"), [("--names-per-minute", "0"),
                                             ("--names-per-day", "1000000001")])  # fmt: skip
def test_client_key_new_refuses_a_budget_the_policy_would_refuse(tmp_path, flag, value):
    status, err = _new_key(tmp_path, "budget", flag, value)
    assert status == 1 and f"{flag} must be an integer in 1..1000000000" in err
    assert list(tmp_path.iterdir()) == []


def test_client_key_new_refuses_an_out_that_is_not_a_directory(tmp_path):
    status, err = _new_key(tmp_path / "missing", "nowhere")
    assert status == 1 and "is not a directory" in err and "mkdir" in err


# -- (d) load_client_key -----------------------------------------------------------------------


def _write_key(path: Path, pem: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(pem)
    path.chmod(mode)
    return path


def _pem(key: object, encryption: object = None) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        Encoding.PEM, PrivateFormat.PKCS8, encryption or NoEncryption()
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_client_key_refuses_a_file_group_or_others_can_read(tmp_path, mode):
    path = _write_key(tmp_path / "open.key", _pem(Ed25519PrivateKey.generate()), mode)
    with pytest.raises(ClientError) as refused:
        load_client_key(path)
    message = str(refused.value)
    assert f"{mode:04o}" in message and "too open" in message and f"chmod 600 {path}" in message


def test_load_client_key_reads_a_0600_or_0400_ed25519_key(tmp_path):
    key = Ed25519PrivateKey.generate()
    for mode in (0o600, 0o400):
        path = _write_key(tmp_path / f"ok-{mode:o}.key", _pem(key), mode)
        assert _raw(load_client_key(path)) == _raw(key)


@pytest.mark.parametrize(
    ("make", "kind"),
    [(lambda: rsa.generate_private_key(65537, 2048), "RSA-2048"),
     (lambda: ec.generate_private_key(ec.SECP256R1()), "EC (secp256r1)")],
)  # fmt: skip
def test_load_client_key_refuses_a_key_that_is_not_ed25519(tmp_path, make, kind):
    path = _write_key(tmp_path / "other.key", _pem(make()))
    with pytest.raises(ClientError) as refused:
        load_client_key(path)
    message = str(refused.value)
    assert kind in message and "not Ed25519" in message and "client-key new" in message


@pytest.mark.parametrize(
    ("pem", "says"),
    [(b"not a key\n", "not a PEM private key"),
     (_pem(Ed25519PrivateKey.generate(), BestAvailableEncryption(b"pw")), "is encrypted"),
     (b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 20_000, "larger than")],
)  # fmt: skip
def test_load_client_key_refuses_what_is_not_one_unencrypted_key(tmp_path, pem, says):
    with pytest.raises(ClientError, match=says):
        load_client_key(_write_key(tmp_path / "bad.key", pem))


def test_load_client_key_names_a_missing_file(tmp_path):
    with pytest.raises(ClientError, match="cannot open it"):
        load_client_key(tmp_path / "absent.key")


def test_client_takes_an_id_and_a_key_together_or_neither(setup):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ClientError, match="client_key is missing"):
        _client(setup, client_id=CLIENT_ID)
    with pytest.raises(ClientError, match="client_id is missing"):
        _client(setup, client_key=key)
    with pytest.raises(ClientError, match="client_id must be 1 to 64"):
        _client(setup, client_id="has space", client_key=key)
    with pytest.raises(ClientError, match="must be an Ed25519 private key"):
        _client(setup, client_id=CLIENT_ID, client_key=ec.generate_private_key(ec.SECP256R1()))


# -- (e) end to end ----------------------------------------------------------------------------


def test_a_registered_client_gets_verified_answers_on_both_routes(setup):
    client = _registered(setup)
    assert client.screen("Big Bird") == Listed(7)
    assert client.screen(AWKWARD_NAME) == Cleared(7)
    assert client.screen_many(["Elmo", "cookie MONSTER"]) == [Cleared(7), Listed(7)]


def test_an_unsigned_client_is_refused_401_with_the_reason_and_the_fix(setup):
    client = _client(setup)
    for ask in (lambda: client.screen("Big Bird"), lambda: client.screen_many(["Big Bird"])):
        with pytest.raises(AccessRefused) as refused:
            ask()
        exc = refused.value
        assert exc.status == 401 and exc.reason.startswith("signature refused (missing)")
        message = str(exc)
        assert "(401)" in message and "the request is not signed" in message
        assert "noflylist client-key new" in message and "--client-key" in message
        assert "Big Bird" not in message


def test_a_key_the_policy_does_not_name_is_refused_as_an_unknown_client(setup):
    stranger = _client(setup, client_id="stranger", client_key=Ed25519PrivateKey.generate())
    with pytest.raises(AccessRefused) as refused:
        stranger.screen("Big Bird")
    assert refused.value.status == 401
    assert "signature refused (unknown-client)" in str(refused.value)
    assert "to client stranger" in str(refused.value) and "Big Bird" not in str(refused.value)
    # A registered id with another key: the signature, not the id, is what counts.
    impostor = _client(setup, client_id=CLIENT_ID, client_key=Ed25519PrivateKey.generate())
    with pytest.raises(AccessRefused, match=r"signature refused \(bad-signature\)"):
        impostor.screen("Big Bird")


def test_a_client_over_budget_gets_a_429_naming_the_budget_and_retry_after(setup):
    tiny = _registered(setup, TINY_ID)  # one name a minute
    assert tiny.screen("Elmo") == Cleared(7)
    with pytest.raises(AccessRefused) as refused:
        tiny.screen("Big Bird")
    exc = refused.value
    assert (exc.status, exc.budget) == (429, "names_per_minute")
    assert exc.retry_after is not None and 1 <= exc.retry_after <= 60
    message = str(exc)
    assert f"retry after {exc.retry_after} s" in message and "names_per_minute" in message
    assert "Big Bird" not in message
    with pytest.raises(AccessRefused) as too_many:  # two names against a budget of one
        tiny.screen_many(["Elmo", "Big Bird"])
    assert too_many.value.retry_after is None and "waiting does not help" in str(too_many.value)


def _check(setup: _Setup, *extra: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    url = f"http://{setup.service.host}:{setup.service.port}"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["check", url, "Big Bird", "--unsafe-root",
                           str(setup.ca_folder / "root.pem"), "--expect-pcr",
                           f"0={PCR0.hex()}", *extra])  # fmt: skip
    return status, out.getvalue(), err.getvalue()


def test_check_signs_its_query_with_client_key_and_client_id(setup):
    key = str(setup.keys / f"{CLIENT_ID}.key")
    status, out, err = _check(setup, "--client-id", CLIENT_ID, "--client-key", key)
    assert status == 0, err
    assert "answer: Big Bird is on the no-fly list and CAN NOT BOARD!" in out
    # user_data names the sealed policy: the client sees which one it is under.
    assert f"  who may ask: the clients of the sealed policy {setup.policy.sha256.hex()}" in out
    status, out, err = _check(setup)
    assert status == 1 and "answer:" not in out
    assert "(401)" in err and "signature refused (missing)" in err and "no answer is printed" in err


def test_check_takes_client_id_and_client_key_together(setup):
    with pytest.raises(SystemExit) as usage:
        _check(setup, "--client-id", CLIENT_ID)
    assert usage.value.code == 2


def test_check_refuses_a_client_key_others_can_read(setup, tmp_path):
    path = _write_key(tmp_path / "open.key", _pem(Ed25519PrivateKey.generate()), 0o644)
    status, out, err = _check(setup, "--client-id", CLIENT_ID, "--client-key", str(path))
    assert status == 1 and "--client-key: " in err and "chmod 600" in err and out == ""
