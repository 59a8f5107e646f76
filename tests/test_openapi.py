"""docs/openapi.yaml is a valid OpenAPI 3.1 description, and it is the API the code serves.

Validated with ``openapi-spec-validator`` (the ``dev`` extra). Then checked against the live
routes: the paths and methods are those :class:`Routes` serves with the attestation route as
``serve`` wires it; every status a live request produces on a screening route is one the
description lists for it, on an open list and on one sealed with a client policy (401 for a
request it does not sign, 429 over budget); the header names and limits are the code's
constants, and the signature headers a client sends are the ones it describes.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from openapi_spec_validator import validate

from enclave.modes import AttestationMode
from noflylist import answer_format, decision, httpsig, routes, wire
from noflylist.answers import AnswerKey
from noflylist.attestation_route import AttestationRoute
from noflylist.clients import ClientPolicy, parse_policy
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import Routes
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.transport.framing import Request
from noflylist_simulator.ca import load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import FakeDataKeys

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
NONCE = {"noflylist-nonce": "00" * 16}
CLIENT_KEY = Ed25519PrivateKey.generate()
#: Three names a minute: a manifest of three spends the minute, and the next name waits.
CLIENT = {"id": "acme-checkin", "names_per_minute": 3, "names_per_day": 1000,
          "public_key": base64.b64encode(CLIENT_KEY.public_key().public_bytes(
              Encoding.Raw, PublicFormat.Raw)).decode()}  # fmt: skip


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return document


def make_routes(tmp_path: Path, *, loaded: bool, clients: ClientPolicy | None = None) -> Routes:
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(["Big Bird"], kms, "k", serial=3, clients=clients))
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    if loaded:
        holder.reload(only_if_changed=False)
    key = AnswerKey()
    attestation = AttestationRoute(SimulatedNSM(load_or_create(tmp_path / "ca")), holder,
                                   mode=AttestationMode.SIMULATED, answer_key=key)  # fmt: skip
    return Routes(holder, Metrics(), extra_routes={wire.ATTESTATION_PATH: attestation},
                  answer_key=key)  # fmt: skip


def status_of(routes: Routes, method: str, target: str, headers: dict[str, str] | None = None,
              body: bytes = b"") -> tuple[int, bytes]:  # fmt: skip
    raw = routes.handle(Request(method, target, False, headers or {}, body, True, time.monotonic()))
    return int(raw.split(b" ", 2)[1]), raw


def test_the_description_is_valid_openapi_3_1(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_its_paths_and_methods_are_the_routes_serve_answers(spec, tmp_path):
    routes = make_routes(tmp_path, loaded=True)
    index = status_of(routes, "GET", "/")[1].decode()
    served = {"/", "/enclave/passenger", "/v1/screen", "/healthz", "/readyz", "/metrics",
              wire.ATTESTATION_PATH}  # fmt: skip
    for path in served - {"/"}:
        assert path in index  # GET / lists every endpoint
    assert set(spec["paths"]) == served
    for path, operations in spec["paths"].items():
        (method,) = operations
        code, _ = status_of(routes, method.upper(), path)
        assert code != 405, f"{path} does not answer {method}"
        other = "POST" if method == "get" else "GET"
        assert status_of(routes, other, path)[0] == 405
        assert "405" in operations[method]["responses"]
    assert status_of(routes, "GET", "/no/such/path")[0] == 404


def listed_statuses(spec: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(code) for code in spec["paths"][path][method]["responses"] if code != "default"}


def test_every_status_a_screening_route_gives_is_described_and_signed(spec, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    loaded = make_routes(tmp_path / "a", loaded=True)
    empty = make_routes(tmp_path / "b", loaded=False)
    single = [
        (loaded, "/enclave/passenger?name=Big%20Bird", 200),
        (loaded, "/enclave/passenger?name=Elmo", 200),
        (loaded, "/enclave/passenger?name=%07", 400),
        (loaded, "/enclave/passenger", 400),
        (empty, "/enclave/passenger?name=Elmo", 503),
    ]
    for routes_, target, expected in single:
        code, raw = status_of(routes_, "GET", target, NONCE)
        assert code == expected and code in listed_statuses(spec, "/enclave/passenger", "get")
        assert b"Noflylist-Signature: " in raw
    json_type = {"content-type": "application/json", **NONCE}
    many = [
        (loaded, json_type, b'{"names": ["Elmo", "Big Bird"]}', 200),
        (loaded, json_type, b'{"names": []}', 400),
        (loaded, json_type, json.dumps({"names": ["a"] * 1001}).encode(), 413),
        (loaded, NONCE, b'{"names": ["Elmo"]}', 415),
        (empty, json_type, b'{"names": ["Elmo"]}', 503),
    ]
    for routes_, headers, body, expected in many:
        code, raw = status_of(routes_, "POST", "/v1/screen", headers, body)
        assert code == expected and code in listed_statuses(spec, "/v1/screen", "post")
        assert b"Noflylist-Signature: " in raw


def signed(method: str, target: str, body: bytes = b"") -> dict[str, str]:
    """The request headers, lower-cased as the framer gives them, of a request CLIENT signs."""
    headers = httpsig.sign_request(method, target, body, key_id=CLIENT["id"],
                                   private_key=CLIENT_KEY)  # fmt: skip
    return {name.lower(): value for name, value in headers.items()}


def response_headers(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in head)}


def described_headers(spec: dict[str, Any], path: str, method: str, status: int) -> set[str]:
    response = spec["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return {name.lower() for name in response.get("headers", {})}


def test_a_policy_bound_list_gives_401_unsigned_and_429_over_budget_as_described(spec, tmp_path):
    policy = parse_policy(json.dumps({"clients": [CLIENT]}).encode())
    bound = make_routes(tmp_path, loaded=True, clients=policy)
    passenger, screen = "/enclave/passenger?name=Elmo", "/v1/screen"
    three = b'{"names": ["Elmo", "Big Bird", "Zoe"]}'
    four = b'{"names": ["a", "b", "c", "d"]}'
    json_type = {"content-type": "application/json", **NONCE}
    cases = [
        # (method, target, headers, body, status, whether a 429 says Retry-After)
        ("GET", passenger, NONCE, b"", 401, None),
        ("POST", screen, json_type, three, 401, None),
        ("POST", screen, {**json_type, **signed("POST", screen, three)}, three, 200, None),
        ("GET", passenger, {**NONCE, **signed("GET", passenger)}, b"", 429, True),
        ("POST", screen, {**json_type, **signed("POST", screen, three)}, three, 429, True),
        # More names than a minute's budget: waiting never helps, so no Retry-After.
        ("POST", screen, {**json_type, **signed("POST", screen, four)}, four, 429, False),
    ]
    for method, target, headers, body, expected, retry in cases:
        code, raw = status_of(bound, method, target, headers, body)
        path, operation = target.partition("?")[0], method.lower()
        assert code == expected and code in listed_statuses(spec, path, operation), raw
        assert b"Noflylist-Signature: " in raw
        sent = response_headers(raw)
        described = described_headers(spec, path, operation, code)
        assert {"noflylist-statement", "noflylist-signature"} <= described
        if code == 401:
            assert raw.split(b"\r\n\r\n", 1)[1].startswith(b"signature refused (missing): ")
            assert sent["accept-signature"] == httpsig.ACCEPT_SIGNATURE
            assert "accept-signature" in described
        if code == 429:
            assert sent["noflylist-budget"] == "names_per_minute"
            assert {"noflylist-budget", "retry-after"} <= described
            assert ("retry-after" in sent) is retry


def test_the_signature_headers_a_client_sends_are_the_ones_described(spec):
    components = spec["components"]
    for path, method in (("/enclave/passenger", "get"), ("/v1/screen", "post")):
        parameters = [components["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
                      for p in spec["paths"][path][method]["parameters"]]  # fmt: skip
        in_header = {p["name"] for p in parameters if p["in"] == "header"}
        assert {"Signature-Input", "Signature", "Content-Digest"} <= in_header
        target = "/enclave/passenger?name=Elmo" if method == "get" else path
        sent = httpsig.sign_request(method.upper(), target, b"{}", key_id=CLIENT["id"],
                                    private_key=CLIENT_KEY)  # fmt: skip
        assert set(sent) <= in_header
    accept = components["headers"]["AcceptSignature"]["schema"]["const"]
    assert accept == httpsig.ACCEPT_SIGNATURE
    described = components["parameters"]["SignatureInput"]["description"]
    assert f"{httpsig.MAX_SKEW_SECONDS} s" in described
    assert f"{httpsig.MIN_NONCE_CHARS} to {httpsig.MAX_NONCE_CHARS}" in described
    assert set(components["headers"]["Budget"]["schema"]["enum"]) == {
        "names_per_minute", "names_per_day"}  # fmt: skip
    for reason in httpsig.REASONS:
        assert reason in components["responses"]["SignatureRefused"]["description"]


def test_header_names_and_limits_are_the_code_s(spec):
    nonce = spec["components"]["parameters"]["Nonce"]
    assert nonce["name"] == answer_format.NONCE_HEADER
    assert nonce["schema"]["minLength"] == 2 * wire.MIN_NONCE_BYTES
    assert nonce["schema"]["maxLength"] == 2 * wire.MAX_NONCE_BYTES
    signed = spec["paths"]["/enclave/passenger"]["get"]["responses"]["200"]["headers"]
    assert set(signed) == {answer_format.STATEMENT_HEADER, answer_format.SIGNATURE_HEADER}
    names = spec["paths"]["/v1/screen"]["post"]["requestBody"]["content"]["application/json"]
    array = names["schema"]["properties"]["names"]
    assert array["maxItems"] == routes.MAX_BATCH_NAMES
    assert array["items"]["maxLength"] == decision.MAX_NAME_CHARS
    query = spec["paths"]["/enclave/passenger"]["get"]["parameters"][0]
    assert query["schema"]["maxLength"] == decision.MAX_NAME_CHARS
    attestation = spec["paths"][wire.ATTESTATION_PATH]["get"]
    assert wire.MODE_HEADER in attestation["responses"]["200"]["headers"]
    pattern = attestation["parameters"][0]["schema"]["pattern"]
    assert pattern == f"^[0-9a-fA-F]{{{2 * wire.MIN_NONCE_BYTES},{2 * wire.MAX_NONCE_BYTES}}}$"
