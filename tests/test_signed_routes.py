"""Screening answers signed by the key the attestation binds (issue 3/5, the service's side).

Through a real :class:`Server` on loopback: a request with ``Noflylist-Nonce`` gets a
``noflylist-answer-1`` statement and an Ed25519 signature over it, on both screening routes
and for every answer a route gives (200, 400, 413, 415, 503); the public key is the one in
the ``user_data`` of a fresh attestation document from the same service (simulated NSM,
verified against the simulator's root), and the signature is checked with ``cryptography``
and with the ``openssl pkeyutl`` command line. A request without the header is answered as
before, byte for byte; a malformed nonce is refused, unsigned.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.modes import AttestationMode
from noflylist.answer_format import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    STATEMENT_HEADER,
    Statement,
    key_id,
    parse_statement,
)
from noflylist.answers import AnswerKey, refused
from noflylist.attestation_route import AttestationRoute
from noflylist.client.attestation import verify
from noflylist.decision import answer
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import Routes
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.transport.framing import Request
from noflylist.transport.server import Server
from noflylist.wire import ATTESTATION_PATH, PASSENGER_PATH, SCREEN_PATH, decode_user_data
from noflylist_simulator.ca import load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import FakeDataKeys

PCR0 = hashlib.sha384(b"the signed-answers enclave under test").digest()
NONCE = bytes(range(16))
LISTED = ["Big Bird", "Cookie Monster"]


class _Service:
    """A loopback Server with the attestation route, signing with a fresh AnswerKey."""

    def __init__(self, holder: ListHolder, module: SimulatedNSM, *, sign: bool = True) -> None:
        self.metrics = Metrics()
        self.key = AnswerKey() if sign else None
        route = AttestationRoute(
            module, holder, mode=AttestationMode.SIMULATED, answer_key=self.key
        )
        self.routes = Routes(
            holder, self.metrics, extra_routes={ATTESTATION_PATH: route}, answer_key=self.key
        )
        self.server = Server(self.routes, self.metrics, port=0, workers=2)
        self.host, self.port = self.server.address
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def get(
        self,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        method: str = "GET",
    ) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        connection.close()
        return response

    def stop(self) -> None:
        self.server.shutdown(drain_timeout=2)
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_or_create(tmp_path_factory.mktemp("signed-ca"))


@pytest.fixture()
def envelope(tmp_path: Path) -> tuple[ListHolder, Path]:
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(LISTED, kms, "k", serial=7))
    return ListHolder(FileSource(str(path)), kms, Metrics()), path


@pytest.fixture()
def service(ca, envelope) -> Iterator[_Service]:  # type: ignore[no-untyped-def]
    holder, _ = envelope
    holder.reload(only_if_changed=False)
    started = _Service(holder, SimulatedNSM(ca, pcr0=PCR0))
    yield started
    started.stop()


def attested_key(service: _Service, ca) -> bytes:  # type: ignore[no-untyped-def]
    """The answer key as a client learns it: from a fresh document's user_data."""
    nonce = b"\x42" * 16
    response = service.get(f"{ATTESTATION_PATH}?nonce={nonce.hex()}")
    assert response.status == 200
    document = verify(response.body, unsafe_root=ca.root, nonce=nonce,  # type: ignore[attr-defined]
                      expected_pcrs={0: PCR0})  # fmt: skip
    assert document.user_data is not None
    served = decode_user_data(document.user_data)
    assert served.answer_key is not None
    return served.answer_key


def signed(response: http.client.HTTPResponse, public_key: bytes) -> Statement:
    """Verify the signature under ``public_key`` and return the parsed statement."""
    data = base64.b64decode(response.headers[STATEMENT_HEADER], validate=True)
    signature = base64.b64decode(response.headers[SIGNATURE_HEADER], validate=True)
    Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    statement = parse_statement(data)
    assert statement.key_id == key_id(public_key)
    assert statement.body_sha256 == hashlib.sha256(response.body).digest()  # type: ignore[attr-defined]
    return statement


def query(name: str) -> str:
    from urllib.parse import quote

    return f"{PASSENGER_PATH}?name={quote(name)}"


# -- the single-name route ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "verdict"), [("Big Bird", "listed"), ("Elmo", "cleared"),
                                               ("  COOKIE monster ", "listed")])  # fmt: skip
def test_a_nonce_gets_an_answer_signed_by_the_attested_key_with_every_field_bound(
    service, ca, envelope, name, verdict
):
    public = attested_key(service, ca)
    assert public == service.key.public_raw
    before = time.time_ns() // 1_000_000
    response = service.get(query(name), {NONCE_HEADER: NONCE.hex()})
    assert response.status == 200
    assert response.body == answer(name, verdict == "listed").encode()
    statement = signed(response, public)
    assert statement.route == PASSENGER_PATH and statement.nonce == NONCE
    assert statement.question_sha256 == hashlib.sha256(name.encode()).digest()
    assert statement.status == 200 and statement.verdicts == (verdict,)
    assert statement.serial == 7
    assert statement.envelope_sha256 == hashlib.sha256(envelope[1].read_bytes()).digest()
    assert before - 5 <= statement.time_ms <= time.time_ns() // 1_000_000 + 5


def test_the_openssl_command_line_verifies_a_signed_answer_and_refuses_a_changed_one(
    service, ca, tmp_path
):
    public = attested_key(service, ca)
    response = service.get(query("Big Bird"), {NONCE_HEADER: NONCE.hex()})
    data = base64.b64decode(response.headers[STATEMENT_HEADER])
    (tmp_path / "statement").write_bytes(data)
    (tmp_path / "changed").write_bytes(data.replace(b"verdict listed", b"verdict cleared"))
    (tmp_path / "sig").write_bytes(base64.b64decode(response.headers[SIGNATURE_HEADER]))
    pem = Ed25519PublicKey.from_public_bytes(public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)

    def openssl(statement: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "key.pem"),
             "-rawin", "-in", str(tmp_path / statement), "-sigfile", str(tmp_path / "sig")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    good = openssl("statement")
    assert good.returncode == 0 and "Signature Verified Successfully" in good.stdout
    bad = openssl("changed")
    assert bad.returncode != 0 and "Signature Verification Failure" in bad.stdout


def test_without_a_nonce_the_answer_is_byte_for_byte_the_unsigned_one(ca, envelope):
    holder, _ = envelope
    holder.reload(only_if_changed=False)
    module = SimulatedNSM(ca, pcr0=PCR0)
    signing = Routes(holder, Metrics(), answer_key=AnswerKey())
    plain = Routes(holder, Metrics())
    for target, method, body, headers in [
        (query("Big Bird"), "GET", b"", {}),
        (query("Elmo"), "GET", b"", {}),
        (query(""), "GET", b"", {}),
        (SCREEN_PATH, "POST", b'{"names": ["Elmo", "Big Bird"]}',
         {"content-type": "application/json"}),
    ]:  # fmt: skip
        def ask(routes: Routes, method=method, target=target, headers=headers, body=body):  # type: ignore[no-untyped-def]
            request = Request(method, target, False, headers, body, True, time.monotonic())
            raw = routes.handle(request)
            return re.sub(rb"Date: [^\r]*\r\n", b"", raw)

        assert ask(signing) == ask(plain)
        assert b"Noflylist-" not in ask(signing)
    assert signing.is_quick(Request("GET", query("x"), False, {}, b"", True, 0.0))
    del module


def test_a_service_without_a_key_ignores_the_nonce_and_signs_nothing(ca, envelope):
    holder, _ = envelope
    holder.reload(only_if_changed=False)
    unsigned = _Service(holder, SimulatedNSM(ca, pcr0=PCR0), sign=False)
    try:
        response = unsigned.get(query("Big Bird"), {NONCE_HEADER: NONCE.hex()})
        assert response.status == 200 and STATEMENT_HEADER not in response.headers
        doc = unsigned.get(f"{ATTESTATION_PATH}?nonce={NONCE.hex()}")
        user_data = verify(doc.body, unsafe_root=ca.root, nonce=NONCE).user_data  # type: ignore[attr-defined]
        assert user_data is not None and decode_user_data(user_data).answer_key is None
    finally:
        unsigned.stop()


@pytest.mark.parametrize(
    "nonce",
    ["", "00", "0" * 15, "0" * 17, "zz" * 8, "0" * 130, "00 11 22 33 44 55 66 77", "0x" + "0" * 16],
)
def test_a_malformed_nonce_is_refused_with_400_unsigned_naming_the_header(service, nonce):
    response = service.get(query("Big Bird"), {NONCE_HEADER: nonce})
    assert response.status == 400 and STATEMENT_HEADER not in response.headers
    assert NONCE_HEADER in response.body.decode() and "Big Bird" not in response.body.decode()


def test_refusals_are_signed_with_their_reason(service, ca):
    public = attested_key(service, ca)
    response = service.get(query("\u0007Big Bird"), {NONCE_HEADER: NONCE.hex()})
    assert response.status == 400
    statement = signed(response, public)
    reason = response.body.decode().strip()
    assert statement.verdicts == (refused(reason),) and statement.verdicts[0] != "refused: ?"
    assert statement.question_sha256 == hashlib.sha256("\u0007Big Bird".encode()).digest()

    missing = service.get(PASSENGER_PATH, {NONCE_HEADER: NONCE.hex()})
    assert missing.status == 400
    statement = signed(missing, public)
    assert statement.question_sha256 is None
    assert statement.verdicts == ("refused: the query parameter 'name' is missing",)


def test_before_a_list_is_loaded_the_503_is_signed_unavailable(ca, envelope):
    holder, _ = envelope  # never loaded
    unloaded = _Service(holder, SimulatedNSM(ca, pcr0=PCR0))
    try:
        public = attested_key(unloaded, ca)
        for response in (
            unloaded.get(query("Big Bird"), {NONCE_HEADER: NONCE.hex()}),
            unloaded.get(SCREEN_PATH, {NONCE_HEADER: NONCE.hex(),
                                       "Content-Type": "application/json"},
                         b'{"names": ["Elmo"]}', "POST"),
        ):
            assert response.status == 503
            statement = signed(response, public)
            assert statement.verdicts == ("unavailable",)
            assert statement.serial is None and statement.envelope_sha256 is None
    finally:
        unloaded.stop()


# -- the batch route ---------------------------------------------------------------------------


def test_a_signed_manifest_has_one_verdict_a_name_in_order_and_binds_the_body(service, ca):
    public = attested_key(service, ca)
    body = json.dumps({"names": ["Elmo", "Big Bird", "Grover", "cookie MONSTER"]}).encode()
    headers = {NONCE_HEADER: NONCE.hex(), "Content-Type": "application/json"}
    response = service.get(SCREEN_PATH, headers, body, "POST")
    assert response.status == 200
    statement = signed(response, public)
    assert statement.route == SCREEN_PATH
    assert statement.question_sha256 == hashlib.sha256(body).digest()
    assert statement.verdicts == ("cleared", "listed", "cleared", "listed")
    results = json.loads(response.body)["results"]
    assert [r["listed"] for r in results] == [v == "listed" for v in statement.verdicts]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"names": ["Elmo", "\\u0000"]}', "application/json", 400),
        (b'{"names": "Elmo"}', "application/json", 400),
        (b"not json", "application/json", 400),
        (b'{"names": ["Elmo"]}', "text/plain", 415),
        (json.dumps({"names": ["x"] * 1001}).encode(), "application/json", 413),
    ],
)
def test_a_refused_manifest_is_signed_with_one_verdict_for_the_whole_request(
    service, ca, body, content_type, status
):
    public = attested_key(service, ca)
    response = service.get(SCREEN_PATH, {NONCE_HEADER: NONCE.hex(), "Content-Type": content_type},
                           body, "POST")  # fmt: skip
    assert response.status == status
    statement = signed(response, public)
    assert statement.status == status and len(statement.verdicts) == 1
    assert statement.verdicts[0].startswith("refused: ")
    assert statement.question_sha256 == hashlib.sha256(body).digest()


# -- freshness, keys, metrics ------------------------------------------------------------------


def test_two_nonces_give_two_statements_and_a_signature_holds_only_for_its_own(service, ca):
    public = attested_key(service, ca)
    first = service.get(query("Big Bird"), {NONCE_HEADER: NONCE.hex()})
    other = bytes(reversed(NONCE))
    second = service.get(query("Big Bird"), {NONCE_HEADER: other.hex()})
    assert signed(first, public).nonce == NONCE and signed(second, public).nonce == other
    swapped = base64.b64decode(second.headers[STATEMENT_HEADER])
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(public).verify(
            base64.b64decode(first.headers[SIGNATURE_HEADER]), swapped
        )


def test_every_service_makes_its_own_key_and_never_shows_the_private_half():
    keys = [AnswerKey() for _ in range(3)]
    assert len({key.public_raw for key in keys}) == 3
    assert all(len(key.public_raw) == 32 and len(key.key_id) == 16 for key in keys)
    assert repr(keys[0]) == f"AnswerKey(key_id={keys[0].key_id})"
    assert not any(name for name in dir(keys[0]) if "private" in name and not name.startswith("_"))


def test_signed_answers_are_counted_by_route(service):
    service.get(query("Big Bird"), {NONCE_HEADER: NONCE.hex()})
    service.get(query("Big Bird"), {NONCE_HEADER: NONCE.hex()})
    service.get(query("Big Bird"))
    service.get(SCREEN_PATH, {NONCE_HEADER: NONCE.hex(), "Content-Type": "application/json"},
                b'{"names": ["Elmo"]}', "POST")  # fmt: skip
    page = service.metrics.render()
    assert 'noflylist_answers_signed_total{outcome="passenger"} 2' in page
    assert 'noflylist_answers_signed_total{outcome="screen"} 1' in page
