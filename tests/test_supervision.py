"""A hostile envelope, or an exception of a type nobody planned for, never stops list updates.

Whoever can write the envelope's place can put anything there. The running service (the
real :class:`noflylist.service.Service`: simulated NSM attestation, our KMS and S3 clients
against the fakes of :mod:`tests.test_faults`, an HTTPS site with a test CA) is handed each
kind of hostile envelope in turn, then a valid one with a higher serial and one more name.
What must hold, for a file, an S3 object and an HTTPS URL alike:

* the service never stops: its loader runs on and ``/readyz`` stays 200 with the old list;
* every bad envelope fails closed, is counted (``failed``, or ``refused`` for an older
  serial), and is the last load shown by ``/readyz`` and ``/metrics``;
* then the valid envelope is served, with its new name listed.

Some kinds broke the parser of the first release with a foreign exception (deep nesting:
``RecursionError``; a serial of thousands of digits: ``ValueError``); two more inject one
(a source raising ``RuntimeError``, a decryptor raising ``RecursionError``, each quoting a
listed name), so the test proves the supervision whatever the parser raises today.

Each attempt is driven by :meth:`Service.reload` (what SIGHUP does) with polling off, so
every attempt is counted exactly; polling through hostile envelopes is
:func:`tests.test_faults.test_refresh_loop_polls_through_hostile_envelopes_then_serves_the_next_list`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from enclave.attested_decrypt import AttestedDecryptor
from enclave.modes import AttestationMode
from noflylist.config import ServeConfig
from noflylist.lists import LOADS, OUTCOMES
from noflylist.service import Service
from noflylist.sources import Fetched
from noflylist.tools import seal
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support import tls
from tests.support.fake_kms import KEY_ARN, FakeDataKeys
from tests.support.service_client import ask, wait_ready
from tests.test_faults import BUCKET, KEY, REGION, FaultyKMS, FaultyS3

OLD_LIST = ("Big Bird", "Oscar the Grouch")
NEW_NAME = "Count von Count"
#: What the injected exceptions' messages quote, as a foreign exception may quote its input.
QUOTED = OLD_LIST[1]
IN_SERVICE = 2  # the serial of the list in service while the hostile envelopes come
LISTED = "is on the no-fly list and CAN NOT BOARD!"
CLEARED = "is cleared to fly"
#: How long one load attempt may take on a busy machine (a KMS call, an RSA key pair).
ATTEMPT_TIMEOUT = 20.0


def sealed(keys: FakeDataKeys, names: tuple[str, ...], serial: int) -> bytes:
    return seal.seal_v2(names, keys, KEY_ARN, serial=serial)


def hostile_envelopes(keys: FakeDataKeys) -> dict[str, tuple[bytes, str]]:
    """Kind -> (envelope, expected outcome). Every one but "older-serial" would otherwise be
    newer than the list in service."""
    valid = sealed(keys, OLD_LIST, IN_SERVICE + 1)
    fields = json.loads(valid)
    huge = dict(fields, serial="SERIAL")
    wrong_types = dict(fields, serial=str(IN_SERVICE + 1), entries=[2], nonce=12)
    ciphertext = bytearray(base64.b64decode(fields["ciphertext"]))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    tampered = dict(fields, ciphertext=base64.b64encode(bytes(ciphertext)).decode())
    return {
        "not-json": (b"\x00\x01 this is not an envelope", "failed"),
        "deep-nesting": (b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "failed"),
        "huge-serial": (json.dumps(huge).replace('"SERIAL"', "9" * 5000).encode(), "failed"),
        "wrong-field-types": (json.dumps(wrong_types).encode(), "failed"),
        "truncated": (valid[: len(valid) // 2], "failed"),
        "valid-prefix-plus-garbage": (valid + b"\n}garbage", "failed"),
        "older-serial": (sealed(keys, (*OLD_LIST, NEW_NAME), IN_SERVICE - 1), "refused"),
        "bad-ciphertext": (json.dumps(tampered).encode(), "failed"),
        # Valid envelopes, with a foreign exception injected on the way (see inject()).
        "source-raises-RuntimeError": (valid, "failed"),
        "decryptor-raises-RecursionError": (valid, "failed"),
    }


# -- an HTTPS site serving one envelope ------------------------------------------------------


class EnvelopeSite:
    """``/envelope.json`` over TLS (a test CA), with an ETag honoured by If-None-Match, as a
    web server or a CDN serves a file. ``body`` is what it serves now."""

    def __init__(self, pki: tls.Pki) -> None:
        self.body = b""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = owner.body
                etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
                unchanged = self.headers.get("If-None-Match") == etag
                self.send_response(304 if unchanged else 200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0" if unchanged else str(len(body)))
                self.end_headers()
                if not unchanged:
                    self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = pki.server_context().wrap_socket(
            self._httpd.socket, server_side=True
        )
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}/envelope.json"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.005},
                         daemon=True).start()  # fmt: skip

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- the running service ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCA:
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def nsm(ca: SimulatedCA) -> SimulatedNSM:
    return SimulatedNSM(ca, pcr0=bytes(range(48)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls.Pki:
    return tls.make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Running:
    service: Service
    base: str
    publish: Callable[[bytes], None]
    runner: threading.Thread

    def attempts(self) -> int:
        return sum(self.service.metrics.events(LOADS, outcome) for outcome in OUTCOMES)

    def attempt(self) -> None:
        """One forced load (SIGHUP's path), waited for until it has ended."""
        before = self.attempts()
        self.service.reload()
        deadline = time.monotonic() + ATTEMPT_TIMEOUT
        while self.attempts() == before:
            assert time.monotonic() < deadline, "the load attempt never ended"
            time.sleep(0.01)
        assert self.attempts() == before + 1


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def counter(metrics: str, outcome: str) -> int:
    """``noflylist_list_loads_total{outcome=…}`` as served (0 if not served yet)."""
    found = re.findall(rf'^{LOADS}{{outcome="{outcome}"}} (\d+)$', metrics, re.M)
    return int(found[0]) if found else 0


def gauge(metrics: str, name: str) -> float:
    (value,) = re.findall(rf"^{name} (\S+)$", metrics, re.M)
    return float(value)


@pytest.fixture(params=["file", "s3", "https"])
def running(
    request: pytest.FixtureRequest, tmp_path: Path, ca: SimulatedCA, nsm: SimulatedNSM,
    pki: tls.Pki,
) -> Iterator[tuple[Running, FakeDataKeys]]:  # fmt: skip
    keys = FakeDataKeys()
    kms, s3, site = FaultyKMS(ca, keys), FaultyS3(), EnvelopeSite(pki)
    path = tmp_path / "envelope.json"
    publish: Callable[[bytes], None]
    if request.param == "file":
        location, publish = str(path), path.write_bytes
    elif request.param == "s3":
        location = f"s3://{BUCKET}/{KEY}"

        def publish(body: bytes) -> None:
            s3.versions = [body]
    else:
        location = site.url

        def publish(body: bytes) -> None:
            site.body = body

    publish(sealed(keys, OLD_LIST, IN_SERVICE))
    environ = {
        "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "AKIDSUPERVISIONTEST",
        "AWS_SECRET_ACCESS_KEY": "supervision/test/secret/key/000000000000",
        "AWS_ENDPOINT_URL_KMS": kms.url, "AWS_ENDPOINT_URL_S3": s3.url,
        "AWS_CA_BUNDLE": str(pki.ca_file),
    }  # fmt: skip
    config = ServeConfig(envelope=location, port=0, attestation=AttestationMode.SIMULATED,
                         refresh_interval=0, key_id=KEY_ARN)  # fmt: skip
    service = Service(config, environ=environ, simulated_module=nsm)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    base = "http://{}:{}".format(*service.address)
    try:
        wait_ready(base)
        yield Running(service, base, publish, runner), keys
    finally:
        service.stop()
        runner.join(timeout=20)
        for server in (kms, s3, site):
            server.stop()
    assert not runner.is_alive()


def inject(kind: str, service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the two "…-raises-…" kinds: the next fetch or decryption raises a foreign error
    whose message quotes a listed name."""
    if kind == "source-raises-RuntimeError":
        source = service.holder.source
        assert source is not None
        real_fetch = source.fetch

        def fetch_once(*, unless_version: str | None = None) -> Fetched | None:
            monkeypatch.setattr(source, "fetch", real_fetch)
            raise RuntimeError(f"cannot screen {QUOTED}")

        monkeypatch.setattr(source, "fetch", fetch_once)
    elif kind == "decryptor-raises-RecursionError":
        real_decrypt = AttestedDecryptor.decrypt

        def decrypt_once(*args: object, **kwargs: object) -> bytes:
            monkeypatch.setattr(AttestedDecryptor, "decrypt", real_decrypt)
            raise RecursionError(f"too deep in {QUOTED}")

        monkeypatch.setattr(AttestedDecryptor, "decrypt", decrypt_once)


def test_hostile_envelopes_fail_closed_one_by_one_and_the_next_valid_list_is_served(
    running: tuple[Running, FakeDataKeys], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    rig, keys = running
    seen: list[str] = []
    counted = dict.fromkeys(OUTCOMES, 0)
    with caplog.at_level(logging.INFO):
        for in_a_row, (kind, (body, outcome)) in enumerate(hostile_envelopes(keys).items(), 1):
            rig.publish(body)
            inject(kind, rig.service, monkeypatch)
            rig.attempt()
            counted[outcome] += 1
            for name in OLD_LIST:
                assert LISTED in ask(rig.base, name), kind
            assert CLEARED in ask(rig.base, NEW_NAME), kind
            status, ready = get(rig.base + "/readyz")
            first, *details = ready.splitlines()
            assert (status, first) == (200, f"ready: list serial {IN_SERVICE}"), kind
            (last,) = [line for line in details if line.startswith("last load: ")]
            assert last.startswith(f"last load: {outcome} at "), (kind, last)
            assert f", {in_a_row} in a row; last success " in last, (kind, last)
            metrics = get(rig.base + "/metrics")[1]
            assert counter(metrics, "loaded") == 1, kind  # the first load, still in service
            assert counter(metrics, "failed") == counted["failed"], kind
            assert counter(metrics, "refused") == counted["refused"], kind
            assert gauge(metrics, "noflylist_list_last_load_success") == 0.0, kind
            assert gauge(metrics, "noflylist_list_failures_in_a_row") == in_a_row, kind
            assert gauge(metrics, "noflylist_list_loader_running") == 1.0, kind
            assert gauge(metrics, "noflylist_list_serial") == IN_SERVICE, kind
            seen += [ready, metrics]
        assert rig.runner.is_alive()

        rig.publish(sealed(keys, (*OLD_LIST, NEW_NAME), IN_SERVICE + 10))
        rig.attempt()
    assert LISTED in ask(rig.base, NEW_NAME) and LISTED in ask(rig.base, OLD_LIST[0])
    status, ready = get(rig.base + "/readyz")
    assert status == 200 and ready.startswith(f"ready: list serial {IN_SERVICE + 10}\n")
    assert re.search(r"^last load: loaded at \S+$", ready, re.M), ready
    metrics = get(rig.base + "/metrics")[1]
    assert gauge(metrics, "noflylist_list_last_load_success") == 1.0
    assert gauge(metrics, "noflylist_list_failures_in_a_row") == 0.0
    assert counter(metrics, "loaded") == 2
    assert (counter(metrics, "failed"), counter(metrics, "refused")) == (counted["failed"], 1)
    # The injected exceptions were logged by type and place, their messages nowhere.
    assert "unexpected RuntimeError at " in caplog.text
    assert "unexpected RecursionError at " in caplog.text
    for text in [caplog.text, *seen]:
        assert QUOTED not in text


class _Escapes(BaseException):
    """Not an Exception: what no ``except Exception`` catches (as SystemExit, say)."""


@pytest.mark.parametrize("running", ["file"], indirect=True)  # one loader for every source
def test_a_loader_that_dies_anyway_is_reported_by_readyz_and_metrics_not_hidden(
    running: tuple[Running, FakeDataKeys], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    rig, _ = running

    def reload(*, only_if_changed: bool) -> bool:
        raise _Escapes(f"gone with {QUOTED}")

    monkeypatch.setattr(rig.service.holder, "reload", reload)
    with caplog.at_level(logging.INFO):
        rig.service.reload()
        deadline = time.monotonic() + ATTEMPT_TIMEOUT
        while get(rig.base + "/readyz")[0] == 200:
            assert time.monotonic() < deadline, "a dead loader went unreported"
            time.sleep(0.01)
    status, ready = get(rig.base + "/readyz")
    assert status == 503
    assert ready.startswith("not ready: the loader thread died with _Escapes at "), ready
    assert "restarted" in ready and QUOTED not in ready and QUOTED not in caplog.text
    metrics = get(rig.base + "/metrics")[1]
    assert gauge(metrics, "noflylist_list_loader_running") == 0.0
    assert LISTED in ask(rig.base, OLD_LIST[0])  # the list it had is still the one answered
