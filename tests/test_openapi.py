"""docs/openapi.yaml is a valid OpenAPI 3.1 description, and it is the API the code serves.

Validated with ``openapi-spec-validator`` (the ``dev`` extra). Then checked against the live
routes: the paths and methods are those :class:`Routes` serves with the attestation route as
``serve`` wires it; every status a live request produces on a screening route is one the
description lists for it; the header names and limits are the code's constants.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from enclave.modes import AttestationMode
from noflylist import answer_format, decision, routes, wire
from noflylist.answers import AnswerKey
from noflylist.attestation_route import AttestationRoute
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


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return document


def make_routes(tmp_path: Path, *, loaded: bool) -> Routes:
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(["Big Bird"], kms, "k", serial=3))
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
