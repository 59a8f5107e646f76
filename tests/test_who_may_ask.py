"""Who may ask, and how much (issue 20), the service's side, over a real loopback Server.

A list sealed with a client policy is answered only to requests signed (RFC 9421, with
:func:`noflylist.httpsig.sign_request`, as a client does) by one of its clients: every other
request gets 401 with ``Accept-Signature`` and a one-line reason, counted by reason in
``/metrics``, and never a look-up. Each client's names are charged to its budgets before any
is looked up; over budget the whole request gets 429 with ``Retry-After`` and
``Noflylist-Budget``. The host in the middle (:mod:`tests.support.relay`) can rewrite a signed
request's query or body, or send a captured one again: each is refused. A list sealed without
a policy is served open, says so in ``/readyz``, ``/metrics`` and ``user_data``, and may be
bounded by one global budget. No metric, readiness text, refusal or log record carries a name.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave import cbor
from enclave.cbor import CBORValue
from enclave.modes import AttestationMode
from noflylist import routes as routes_module
from noflylist.answer_format import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    STATEMENT_HEADER,
    Statement,
    parse_statement,
)
from noflylist.answers import AnswerKey, refused
from noflylist.attestation_route import AttestationRoute
from noflylist.client.attestation import verify
from noflylist.clients import Budgets, ClientPolicy, parse_policy
from noflylist.decision import answer, decide
from noflylist.httpsig import ACCEPT_SIGNATURE, REASONS, sign_request
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import Routes
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.transport.server import Server
from noflylist.wire import (
    ATTESTATION_PATH,
    PASSENGER_PATH,
    SCREEN_PATH,
    ServedList,
    UserDataError,
    decode_user_data,
    encode_user_data,
)
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import FakeDataKeys
from tests.support.relay import Relay

PCR0 = hashlib.sha384(b"the who-may-ask enclave under test").digest()
LISTED = ["Cookie Monster", "Big Bird"]
#: A name nobody lists: what the refusals below must never echo.
ASKED = "Zebulon Quaxley"
NONCE = bytes(range(16))
#: The fake clock's start (the budgets' clock is monotonic: any origin does).
CLOCK_START = 1_000_000.0


def _key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


#: The clients' private keys; only their public halves are in the policy.
KEYS = {"acme": _key(), "bravo": _key(), "carol": _key()}
#: (names a minute, names a day): acme's minute and carol's day are small enough to exhaust.
BUDGETS = {"acme": (5, 1000), "bravo": (1000, 100_000), "carol": (100, 3)}
_ENTRIES = [
    {"id": client_id, "public_key": base64.b64encode(_raw(KEYS[client_id])).decode(),
     "names_per_minute": minute, "names_per_day": day}
    for client_id, (minute, day) in BUDGETS.items()
]  # fmt: skip
POLICY = parse_policy(json.dumps({"clients": _ENTRIES}).encode())


class Clock:
    def __init__(self) -> None:
        self.now = CLOCK_START

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class _Answer:
    """One response, read whole: its status, headers (also as sent, in order) and body."""

    status: int
    headers: http.client.HTTPMessage
    pairs: list[tuple[str, str]]
    body: bytes


class _Service:
    """A loopback Server with the attestation route (simulated NSM) and the answer key."""

    def __init__(
        self, holder: ListHolder, module: SimulatedNSM, *, max_names_per_minute: int | None = None
    ) -> None:
        self.metrics = Metrics()
        self.key = AnswerKey()
        self.clock = Clock()
        route = AttestationRoute(
            module, holder, mode=AttestationMode.SIMULATED, answer_key=self.key
        )
        self.routes = Routes(
            holder, self.metrics, extra_routes={ATTESTATION_PATH: route}, answer_key=self.key,
            max_names_per_minute=max_names_per_minute, budgets=Budgets(clock=self.clock),
        )  # fmt: skip
        self.server = Server(self.routes, self.metrics, port=0, workers=2)
        self.host, self.port = self.server.address
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def send(
        self,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        method: str = "GET",
        *,
        port: int | None = None,
    ) -> _Answer:
        connection = http.client.HTTPConnection(self.host, port or self.port, timeout=10)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return _Answer(
                response.status, response.headers, response.getheaders(), response.read()
            )
        finally:
            connection.close()

    def text(self, target: str) -> str:
        response = self.send(target)
        assert response.status == 200
        return response.body.decode()

    def stop(self) -> None:
        self.server.shutdown(drain_timeout=2)
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCA:
    return load_or_create(tmp_path_factory.mktemp("who-may-ask-ca"))


def _holder(tmp_path: Path, clients: ClientPolicy | None, serial: int = 7,
            kms: FakeDataKeys | None = None) -> ListHolder:  # fmt: skip
    """A holder serving LISTED from ``tmp_path/envelope.json``, sealed with ``clients``."""
    kms = kms or FakeDataKeys()
    path = _seal_into(tmp_path, kms, clients, serial)
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    assert holder.reload(only_if_changed=False)
    return holder


def _seal_into(tmp_path: Path, kms: FakeDataKeys, clients: ClientPolicy | None,
               serial: int) -> Path:  # fmt: skip
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(LISTED, kms, "k", serial=serial, clients=clients))
    return path


@pytest.fixture()
def service(ca: SimulatedCA, tmp_path: Path) -> Iterator[_Service]:
    """A service whose list is sealed with POLICY."""
    started = _Service(_holder(tmp_path, POLICY), SimulatedNSM(ca, pcr0=PCR0))
    yield started
    started.stop()


@pytest.fixture()
def open_service(ca: SimulatedCA, tmp_path: Path) -> Iterator[_Service]:
    """A service whose list is sealed without a policy: open, without a global budget."""
    started = _Service(_holder(tmp_path, None), SimulatedNSM(ca, pcr0=PCR0))
    yield started
    started.stop()


def passenger(name: str) -> str:
    return f"{PASSENGER_PATH}?name={quote(name)}"


def manifest(*names: str) -> bytes:
    return json.dumps({"names": list(names)}).encode()


def signed_get(name: str, client: str = "bravo", *, key: Ed25519PrivateKey | None = None,
               **params: Any) -> tuple[str, dict[str, str]]:  # fmt: skip
    """The target and headers of a passenger request ``client`` signed (with ``key``)."""
    target = passenger(name)
    return target, sign_request("GET", target, b"", key_id=client,
                                private_key=key or KEYS[client], **params)  # fmt: skip


def signed_post(body: bytes, client: str = "bravo", **params: Any) -> dict[str, str]:
    headers = sign_request("POST", SCREEN_PATH, body, key_id=client,
                           private_key=KEYS[client], **params)  # fmt: skip
    return {**headers, "Content-Type": "application/json"}


def ask(service: _Service, name: str, client: str = "bravo", **headers: str) -> _Answer:
    target, signature = signed_get(name, client)
    return service.send(target, {**signature, **headers})


def ask_many(service: _Service, names: list[str], client: str = "bravo", **headers: str) -> _Answer:
    body = manifest(*names)
    return service.send(SCREEN_PATH, {**signed_post(body, client), **headers}, body, "POST")


def metric(page: str, line: str) -> float | None:
    """The value of the metric ``line`` (name and labels) in ``page``, or ``None``."""
    for row in page.splitlines():
        if row.startswith(line + " "):
            return float(row[len(line) + 1 :])
    return None


def names_total(page: str, client: str, outcome: str) -> float | None:
    return metric(page, f'noflylist_client_names_total{{client="{client}",outcome="{outcome}"}}')


def budget_left(page: str, client: str, budget: str) -> float | None:
    return metric(page, f'noflylist_client_budget_left{{client="{client}",budget="{budget}"}}')


def statement_of(response: _Answer, public_key: bytes) -> Statement:
    data = base64.b64decode(response.headers[STATEMENT_HEADER], validate=True)
    signature = base64.b64decode(response.headers[SIGNATURE_HEADER], validate=True)
    Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    statement = parse_statement(data)
    assert statement.body_sha256 == hashlib.sha256(response.body).digest()
    return statement


def assert_refused_401(service: _Service, response: _Answer, reason: str, *names: str) -> None:
    """401, Accept-Signature, one line naming the reason, counted; no name in the answer."""
    assert response.status == 401
    assert response.headers["Accept-Signature"] == ACCEPT_SIGNATURE
    body = response.body.decode()
    assert body.startswith(f"signature refused ({reason}): ") and body.endswith("\n")
    assert body.count("\n") == 1
    page = service.text("/metrics")
    assert metric(page, f'noflylist_signature_refused_total{{outcome="{reason}"}}') == 1
    others = [r for r in REASONS if r != reason]
    assert not any(f'noflylist_signature_refused_total{{outcome="{r}"}}' in page for r in others)
    for name in (ASKED, *LISTED, *names):
        assert name not in body and quote(name) not in body
        assert all(name not in value for _, value in response.pairs)


# -- signed requests are answered as before ---------------------------------------------------


@pytest.mark.parametrize(("name", "listed"), [("Cookie Monster", True), (ASKED, False)])
def test_a_correctly_signed_single_name_gets_the_usual_plain_text_answer(
    service: _Service, name: str, listed: bool
) -> None:
    response = ask(service, name)
    assert response.status == 200
    assert response.body == answer(name, listed).encode()
    assert response.headers["Content-Type"].startswith("text/plain")


def test_a_correctly_signed_manifest_gets_the_usual_json_answer(service: _Service) -> None:
    response = ask_many(service, [ASKED, "big BIRD", "Cookie Monster"])
    assert response.status == 200
    assert json.loads(response.body) == {
        "results": [{"name": ASKED, "listed": False}, {"name": "big BIRD", "listed": True},
                    {"name": "Cookie Monster", "listed": True}],
        "serial": 7,
    }  # fmt: skip


def test_every_client_of_the_policy_may_ask_with_its_own_key(service: _Service) -> None:
    for client in KEYS:
        assert ask(service, "Big Bird", client).status == 200


def test_a_signed_post_with_an_empty_body_signs_and_is_refused_for_its_body_not_its_signature(
    service: _Service,
) -> None:
    response = service.send(SCREEN_PATH, signed_post(b""), b"", "POST")
    assert response.status == 400  # the manifest's refusal: the signature was accepted
    assert b"signature" not in response.body


# -- one refusal a reason ---------------------------------------------------------------------


def _request_for(reason: str, route: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    """The requests (method, target, headers, body) whose last is refused for ``reason``."""
    body = manifest(ASKED, "Big Bird")

    def signed(client: str = "bravo", *, key: Ed25519PrivateKey | None = None,
               **params: Any) -> tuple[str, str, dict[str, str], bytes]:  # fmt: skip
        private = key or KEYS[client]
        if route == "passenger":
            target = passenger(ASKED)
            return "GET", target, sign_request("GET", target, b"", key_id=client,
                                               private_key=private, **params), b""  # fmt: skip
        headers = sign_request("POST", SCREEN_PATH, body, key_id=client, private_key=private,
                               **params)  # fmt: skip
        return "POST", SCREEN_PATH, {**headers, "Content-Type": "application/json"}, body

    if reason == "missing":
        method, target, headers, sent = signed()
        unsigned = {k: v for k, v in headers.items() if k.startswith("Content")}
        return [(method, target, unsigned, sent)]
    if reason == "malformed":
        method, target, headers, sent = signed()
        return [(method, target, {**headers, "Signature": "sig1=:AAAA:"}, sent)]
    if reason == "unknown-client":
        return [signed("mallory", key=_key())]
    if reason == "bad-signature":
        return [signed("bravo", key=KEYS["acme"])]  # another client's key under bravo's id
    if reason == "stale":
        return [signed(created=int(time.time()) - 301)]
    if reason == "replayed":
        once = signed()
        return [once, once]
    assert reason == "digest"
    # The body changed after signing, the Content-Digest (covered, so signed) left as it was.
    if route == "passenger":  # a GET may carry a body too: then it is signed and digested
        target = passenger(ASKED)
        headers = sign_request("GET", target, b"one body", key_id="bravo",
                               private_key=KEYS["bravo"])  # fmt: skip
        return [("GET", target, headers, b"another body")]
    method, target, headers, sent = signed()
    return [(method, target, headers, manifest(ASKED, "Elmo"))]


@pytest.mark.parametrize("route", ["passenger", "screen"])
@pytest.mark.parametrize("reason", REASONS)
def test_each_refused_signature_gets_401_with_accept_signature_and_its_reason_counted(
    service: _Service, reason: str, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    *before, refused_request = _request_for(reason, route)
    for method, target, headers, body in before:
        assert service.send(target, headers, body or None, method).status == 200
    looked_up = _count_decide(monkeypatch)
    method, target, headers, body = refused_request
    response = service.send(target, headers, body or None, method)
    assert_refused_401(service, response, reason)
    assert looked_up() == 0


def _count_decide(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Wrap the routes' look-up; the returned function says how often it was called."""
    calls: list[str] = []
    real = decide

    def counting(table: Any, name: str, *args: Any) -> Any:
        calls.append(name)
        return real(table, name, *args)

    monkeypatch.setattr(routes_module, "decide", counting)
    return lambda: len(calls)


def test_the_signature_is_checked_before_the_query_or_the_body_is_read(
    service: _Service,
) -> None:
    """An unsigned request with a malformed query, or a body of the wrong type, is refused
    for its signature: nothing of what it asks is parsed first."""
    bad_query = service.send(f"{PASSENGER_PATH}?name=%zz")
    assert bad_query.status == 401 and b"(missing)" in bad_query.body
    wrong_type = service.send(SCREEN_PATH, {"Content-Type": "text/plain"}, b"not json", "POST")
    assert wrong_type.status == 401 and b"(missing)" in wrong_type.body


def test_a_signed_request_refused_for_its_query_is_refused_for_the_query(
    service: _Service,
) -> None:
    target = f"{PASSENGER_PATH}?name=a&name=b"
    headers = sign_request("GET", target, b"", key_id="bravo", private_key=KEYS["bravo"])
    response = service.send(target, headers)
    assert response.status == 400 and b"more than once" in response.body


def test_forged_requests_under_a_clients_id_do_not_spend_its_budget(service: _Service) -> None:
    for _ in range(10):
        target, headers = signed_get(ASKED, "acme", key=_key())
        assert service.send(target, headers).status == 401
    assert [ask(service, ASKED, "acme").status for _ in range(5)] == [200] * 5
    page = service.text("/metrics")
    assert names_total(page, "acme", "refused") == 0
    assert metric(page, 'noflylist_signature_refused_total{outcome="bad-signature"}') == 10


# -- the host in the middle -------------------------------------------------------------------


@pytest.fixture()
def relay_for(service: _Service) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def make(mode: str, **options: Any) -> Relay:
        relay = Relay([(service.host, service.port)], mode, **options)
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop()


def _via(service: _Service, relay: Relay, target: str, headers: dict[str, str],
         body: bytes | None = None, method: str = "GET") -> _Answer:  # fmt: skip
    return service.send(target, headers, body, method, port=urlsplit(relay.url).port)


def test_an_honest_relay_passes_signed_requests_on_both_routes(
    service: _Service, relay_for: Callable[..., Relay]
) -> None:
    relay = relay_for("honest")
    target, headers = signed_get("Big Bird")
    response = _via(service, relay, target, headers)
    assert response.status == 200 and response.body == answer("Big Bird", True).encode()
    body = manifest(ASKED)
    response = _via(service, relay, SCREEN_PATH, signed_post(body), body, "POST")
    assert response.status == 200
    assert json.loads(response.body)["results"] == [{"name": ASKED, "listed": False}]


def test_a_relay_that_asks_another_name_with_the_signature_is_refused_bad_signature(
    service: _Service, relay_for: Callable[..., Relay]
) -> None:
    relay = relay_for("other-name", other_name="Cookie Monster")
    target, headers = signed_get(ASKED)
    response = _via(service, relay, target, headers)
    assert_refused_401(service, response, "bad-signature")


def test_a_relay_that_rewrites_a_signed_body_is_refused_digest(
    service: _Service, relay_for: Callable[..., Relay], monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = relay_for("request-body", other_body=manifest("Cookie Monster"))
    looked_up = _count_decide(monkeypatch)
    body = manifest(ASKED)
    response = _via(service, relay, SCREEN_PATH, signed_post(body), body, "POST")
    assert_refused_401(service, response, "digest", "Cookie Monster")
    assert looked_up() == 0


def test_a_relay_that_rewrites_the_body_and_its_digest_is_refused_bad_signature(
    service: _Service, relay_for: Callable[..., Relay]
) -> None:
    relay = relay_for("request-body-redigest", other_body=manifest("Cookie Monster"))
    body = manifest(ASKED)
    response = _via(service, relay, SCREEN_PATH, signed_post(body), body, "POST")
    assert_refused_401(service, response, "bad-signature", "Cookie Monster")


@pytest.mark.parametrize("route", ["passenger", "screen"])
def test_a_relay_that_replays_a_captured_signed_request_is_refused_replayed(
    service: _Service, relay_for: Callable[..., Relay], route: str
) -> None:
    relay = relay_for("request-replay")
    for attempt in range(2):  # two requests the client signed, each with its own nonce
        if route == "passenger":
            target, headers = signed_get(ASKED)
            response = _via(service, relay, target, headers)
        else:
            body = manifest(ASKED)
            response = _via(service, relay, SCREEN_PATH, signed_post(body), body, "POST")
        if attempt == 0:
            assert response.status == 200
    assert relay.captured is not None
    assert_refused_401(service, response, "replayed")


# -- budgets ----------------------------------------------------------------------------------


def test_a_client_gets_its_minute_of_names_then_429_with_retry_after_and_the_budget(
    service: _Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [ask(service, ASKED, "acme").status for _ in range(5)] == [200] * 5
    looked_up = _count_decide(monkeypatch)
    response = ask(service, ASKED, "acme")
    assert response.status == 429
    assert looked_up() == 0
    assert response.headers["Noflylist-Budget"] == "names_per_minute"
    # 5 names a minute refill one name every 12 s: the fake clock has not moved.
    assert int(response.headers["Retry-After"]) == 12
    body = response.body.decode()
    assert body.startswith("over budget: names_per_minute") and body.count("\n") == 1
    assert ASKED not in body and "Accept-Signature" not in response.headers
    assert ask(service, ASKED, "bravo").status == 200  # another client's budget is its own
    service.clock.now += 11
    assert ask(service, ASKED, "acme").status == 429
    service.clock.now += 1  # Retry-After was the truth
    assert ask(service, ASKED, "acme").status == 200
    page = service.text("/metrics")
    assert metric(page, 'noflylist_budget_refused_total{outcome="names_per_minute"}') == 2
    assert names_total(page, "acme", "answered") == 6
    assert names_total(page, "acme", "refused") == 2
    assert budget_left(page, "acme", "names_per_minute") == 0
    assert budget_left(page, "acme", "names_per_day") == 994
    assert names_total(page, "bravo", "answered") == 1


def test_a_manifest_larger_than_the_budget_left_is_refused_whole_and_none_of_it_answered(
    service: _Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [ask(service, ASKED, "acme").status for _ in range(3)] == [200] * 3
    looked_up = _count_decide(monkeypatch)
    response = ask_many(service, [ASKED, "Big Bird", "Cookie Monster"], "acme")
    assert response.status == 429 and looked_up() == 0
    assert response.headers["Noflylist-Budget"] == "names_per_minute"
    assert int(response.headers["Retry-After"]) >= 1
    for name in (ASKED, *LISTED):
        assert name not in response.body.decode()
    page = service.text("/metrics")
    assert names_total(page, "acme", "answered") == 3
    assert names_total(page, "acme", "refused") == 3
    assert budget_left(page, "acme", "names_per_minute") == 2
    # What is left is still there: a manifest of two is answered, both names looked up.
    response = ask_many(service, ["Big Bird", ASKED], "acme")
    assert response.status == 200 and looked_up() == 2
    page = service.text("/metrics")
    assert names_total(page, "acme", "answered") == 5


def test_a_manifest_no_minute_could_hold_is_refused_without_retry_after(
    service: _Service,
) -> None:
    response = ask_many(service, [ASKED] * 6, "acme")
    assert response.status == 429
    assert response.headers["Noflylist-Budget"] == "names_per_minute"
    assert "Retry-After" not in response.headers  # waiting would not help: split it
    assert b"split it" in response.body


def test_a_clients_day_budget_gives_429_names_per_day_until_its_slot_leaves_the_day(
    service: _Service,
) -> None:
    assert [ask(service, ASKED, "carol").status for _ in range(3)] == [200] * 3
    response = ask(service, ASKED, "carol")
    assert response.status == 429 and response.headers["Noflylist-Budget"] == "names_per_day"
    wait = int(response.headers["Retry-After"])
    # The names count until 24 h after the end of the ten-minute slot they were charged in.
    assert 86_400 <= wait <= 86_400 + 600
    service.clock.now += wait - 1
    assert ask(service, ASKED, "carol").status == 429
    service.clock.now += 1
    assert ask(service, ASKED, "carol").status == 200
    page = service.text("/metrics")
    assert metric(page, 'noflylist_budget_refused_total{outcome="names_per_day"}') == 2


def test_a_refused_signature_is_never_charged_and_a_429_never_burns_the_budget_further(
    service: _Service,
) -> None:
    assert [ask(service, ASKED, "acme").status for _ in range(5)] == [200] * 5
    for _ in range(3):
        assert ask(service, ASKED, "acme").status == 429
    service.clock.now += 12  # one name refilled: the three 429s took nothing
    assert ask(service, ASKED, "acme").status == 200


# -- the open list ----------------------------------------------------------------------------


def test_an_open_list_says_so_and_answers_unsigned_requests(open_service: _Service) -> None:
    readyz = open_service.text("/readyz")
    assert "who may ask: anyone" in readyz and "no budget" in readyz
    page = open_service.text("/metrics")
    assert metric(page, "noflylist_open_queries") == 1.0
    assert "noflylist_open_queries 1.0" in page
    response = open_service.send(passenger("Big Bird"))
    assert response.status == 200 and response.body == answer("Big Bird", True).encode()
    response = open_service.send(SCREEN_PATH, {"Content-Type": "application/json"},
                                 manifest(ASKED), "POST")  # fmt: skip
    assert response.status == 200


def test_a_policy_bound_list_says_who_may_ask_and_is_not_open(service: _Service) -> None:
    readyz = service.text("/readyz")
    assert (
        f"who may ask: 3 client(s) of the sealed policy {POLICY.sha256.hex()[:16]}, "
        "signed requests only"
    ) in readyz
    assert "anyone" not in readyz
    page = service.text("/metrics")
    assert "noflylist_open_queries 0.0" in page
    for client in KEYS:
        assert f'noflylist_client_names_total{{client="{client}",outcome="answered"}} 0' in page


def test_an_open_list_with_a_global_budget_refuses_the_fourth_name_in_a_minute(
    ca: SimulatedCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounded = _Service(_holder(tmp_path, None), SimulatedNSM(ca, pcr0=PCR0),
                       max_names_per_minute=3)  # fmt: skip
    try:
        assert "a global budget of 3 names a minute" in bounded.text("/readyz")
        statuses = [bounded.send(passenger(name)).status for name in ("a", "b")]
        # A manifest and a signed request (its signature is not checked) share the budget.
        statuses.append(bounded.send(*signed_get(ASKED, "nobody", key=_key())).status)
        assert statuses == [200, 200, 200]
        looked_up = _count_decide(monkeypatch)
        response = bounded.send(passenger(ASKED))
        assert response.status == 429 and looked_up() == 0
        assert response.headers["Noflylist-Budget"] == "names_per_minute"
        assert int(response.headers["Retry-After"]) == 20
        response = bounded.send(SCREEN_PATH, {"Content-Type": "application/json"},
                                manifest(ASKED), "POST")  # fmt: skip
        assert response.status == 429
        page = bounded.text("/metrics")
        assert names_total(page, "(open)", "answered") == 3
        assert names_total(page, "(open)", "refused") == 2
        assert metric(page, "noflylist_open_queries") == 1.0
    finally:
        bounded.stop()


def test_a_refresh_to_a_policy_bound_list_closes_it_at_once(
    ca: SimulatedCA, tmp_path: Path
) -> None:
    kms = FakeDataKeys()
    holder = _holder(tmp_path, None, serial=1, kms=kms)
    running = _Service(holder, SimulatedNSM(ca, pcr0=PCR0))
    try:
        assert running.send(passenger(ASKED)).status == 200
        assert "noflylist_open_queries 1.0" in running.text("/metrics")
        _seal_into(tmp_path, kms, POLICY, serial=2)
        assert holder.reload(only_if_changed=False)
        response = running.send(passenger(ASKED))
        assert response.status == 401 and b"(missing)" in response.body
        assert ask(running, ASKED).status == 200
        assert "noflylist_open_queries 0.0" in running.text("/metrics")
        assert "who may ask: 3 client(s)" in running.text("/readyz")
    finally:
        running.stop()


# -- user_data ----------------------------------------------------------------------------------


def _user_data(service: _Service, ca: SimulatedCA) -> ServedList:
    nonce = b"\x42" * 16
    response = service.send(f"{ATTESTATION_PATH}?nonce={nonce.hex()}")
    assert response.status == 200
    document = verify(response.body, unsafe_root=ca.root, nonce=nonce,
                      expected_pcrs={0: PCR0})  # fmt: skip
    assert document.user_data is not None
    return decode_user_data(document.user_data)


def test_the_attestation_binds_the_sealed_policys_digest(
    service: _Service, ca: SimulatedCA
) -> None:
    served = _user_data(service, ca)
    assert served.clients_sha256 == POLICY.sha256
    assert served.clients_sha256 == hashlib.sha256(POLICY.canonical).digest()
    assert served.serial == 7 and served.answer_key == service.key.public_raw


def test_the_attestation_of_an_open_list_binds_null(
    open_service: _Service, ca: SimulatedCA
) -> None:
    assert _user_data(open_service, ca).clients_sha256 is None


def test_user_data_without_clients_sha256_decodes_as_an_open_list_of_an_older_service() -> None:
    older = cbor.encode({"envelope_sha256": bytes(32), "serial": 3, "version": "0.1.0",
                         "answer_key": bytes(range(32))})  # fmt: skip
    served = decode_user_data(older)
    assert served.clients_sha256 is None and served.serial == 3
    assert served.answer_key == bytes(range(32))


def test_user_data_refuses_a_clients_digest_that_is_not_32_bytes() -> None:
    for bad in (bytes(31), bytes(33), "00" * 32, 7):
        value: dict[CBORValue, CBORValue] = {
            "envelope_sha256": bytes(32), "serial": 3, "version": "0.1.0",
            "answer_key": bytes(32), "clients_sha256": bad,
        }  # fmt: skip
        with pytest.raises(UserDataError, match="clients_sha256"):
            decode_user_data(cbor.encode(value))
    with pytest.raises(UserDataError, match="clients_sha256"):
        encode_user_data(ServedList(bytes(32), 3, "0.1.0", bytes(32), bytes(31)))
    digest = hashlib.sha256(b"policy").digest()
    served = ServedList(bytes(32), 3, "0.1.0", bytes(32), digest)
    assert decode_user_data(encode_user_data(served)) == served


# -- signed answers, with signed requests ---------------------------------------------------


def test_a_signed_request_with_a_nonce_gets_a_signed_statement(service: _Service) -> None:
    public = service.key.public_raw
    response = ask(service, "Cookie Monster", **{NONCE_HEADER: NONCE.hex()})
    assert response.status == 200 and response.body == answer("Cookie Monster", True).encode()
    statement = statement_of(response, public)
    assert statement.route == PASSENGER_PATH and statement.nonce == NONCE
    assert statement.verdicts == ("listed",) and statement.status == 200
    assert statement.question_sha256 == hashlib.sha256(b"Cookie Monster").digest()
    response = ask_many(service, [ASKED, "Big Bird"], **{NONCE_HEADER: NONCE.hex()})
    statement = statement_of(response, public)
    assert statement.route == SCREEN_PATH and statement.verdicts == ("cleared", "listed")
    assert statement.question_sha256 == hashlib.sha256(manifest(ASKED, "Big Bird")).digest()


@pytest.mark.parametrize("route", [PASSENGER_PATH, SCREEN_PATH])
def test_a_401_is_a_signed_refusal_when_the_nonce_is_sent(service: _Service, route: str) -> None:
    if route == PASSENGER_PATH:
        response = service.send(passenger(ASKED), {NONCE_HEADER: NONCE.hex()})
    else:
        response = service.send(SCREEN_PATH, {NONCE_HEADER: NONCE.hex(),
                                              "Content-Type": "application/json"},
                                manifest(ASKED), "POST")  # fmt: skip
    assert response.status == 401
    statement = statement_of(response, service.key.public_raw)
    assert statement.status == 401 and statement.route == route and statement.nonce == NONCE
    assert statement.verdicts == (refused(response.body.decode()),)
    assert statement.verdicts[0].startswith("refused: signature refused (missing)")
    assert statement.serial == 7


def test_a_429_is_a_signed_refusal_when_the_nonce_is_sent(service: _Service) -> None:
    for _ in range(5):
        assert ask(service, ASKED, "acme").status == 200
    response = ask(service, ASKED, "acme", **{NONCE_HEADER: NONCE.hex()})
    assert response.status == 429
    statement = statement_of(response, service.key.public_raw)
    assert statement.status == 429
    assert statement.verdicts[0].startswith("refused: over budget: names_per_minute")


# -- secrets ----------------------------------------------------------------------------------


def test_no_metric_readiness_text_refusal_or_log_record_carries_a_name(
    service: _Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    names = [ASKED, *LISTED]
    answers = [
        service.send(passenger(ASKED)),  # 401 missing
        service.send(*signed_get("Cookie Monster", "mallory", key=_key())),  # unknown-client
        service.send(*signed_get("Big Bird", "bravo", key=KEYS["carol"])),  # bad-signature
        ask_many(service, [ASKED] * 6, "acme"),  # 429, whole
    ]
    for _ in range(5):
        assert ask(service, "Cookie Monster", "acme").status == 200
    answers.append(ask(service, "Big Bird", "acme"))  # 429
    # 429: more names than carol's whole day, signed (the statement is not searched)
    answers.append(ask_many(service, [*names, ASKED], "carol", **{NONCE_HEADER: NONCE.hex()}))
    assert [r.status for r in answers] == [401, 401, 401, 429, 429, 429]
    texts = [r.body.decode() for r in answers]
    texts += [value for r in answers for key, value in r.pairs
              if key not in (STATEMENT_HEADER, SIGNATURE_HEADER)]  # fmt: skip
    texts += [service.text("/metrics"), service.text("/readyz")]
    records = [record.getMessage() for record in caplog.records]
    assert any(r.startswith("GET /enclave/passenger 401") for r in records)  # the access log
    assert any(r.startswith("POST /v1/screen 429") for r in records)
    for text in texts + records:
        assert "mallory" not in text  # nor the keyid a stranger sent
        for name in names:
            for form in (name, quote(name), name.lower(), name.upper(), json.dumps(name)):
                assert form not in text, (form, text)
