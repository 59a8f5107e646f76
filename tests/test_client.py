"""``noflylist.client.Client`` and ``noflylist check`` through a relay that attacks the answers.

The host of an enclave relays every byte (``tests/support/relay.py``). An honest relay's
answers verify; one that alters any byte of an answer or of its signature, substitutes
another name's genuine signed answer, replays an earlier answer to a new nonce, or swaps in
a second service's answers (its own key) is refused with its reason, by the library and by
``check``, which then prints no answer. Two simulated enclaves behind a round-robin relay
are each attested once and both verify; a replica on an older list is refused.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from noflylist import cli
from noflylist.client import client as lib
from noflylist.client.client import (
    AnswerNotVerified,
    AttestationFailed,
    Cleared,
    Client,
    Listed,
    Refused,
    ServiceUnavailable,
)
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist_simulator.ca import load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import FakeDataKeys
from tests.support.relay import Relay, _flip
from tests.test_signed_routes import LISTED, PCR0, _Service


@pytest.fixture(scope="module")
def ca_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("client-ca")
    load_or_create(folder)
    return folder


def holder_at(folder: Path, serial: int) -> ListHolder:
    kms = FakeDataKeys()
    path = folder / f"envelope-{serial}.json"
    path.write_bytes(seal.seal_v2(LISTED, kms, "k", serial=serial))
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    holder.reload(only_if_changed=False)
    return holder


@pytest.fixture()
def services(ca_folder: Path, tmp_path: Path) -> Iterator[list[_Service]]:
    """Two simulated enclaves of the same image, each with its own answer key."""
    ca = load_or_create(ca_folder)
    started = [_Service(holder_at(tmp_path, 7), SimulatedNSM(ca, pcr0=PCR0)) for _ in range(2)]
    yield started
    for service in started:
        service.stop()


@pytest.fixture()
def relay(services: list[_Service]) -> Iterator[Relay]:
    started = Relay([(services[0].host, services[0].port)])
    yield started
    started.stop()


def client_for(url: str, ca_folder: Path, **options: object) -> Client:
    return Client(url, {0: PCR0}, unsafe_root=load_or_create(ca_folder).root, **options)  # type: ignore[arg-type]


def check(url: str, ca_folder: Path, name: str, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    status = cli.main(["check", url, name, "--unsafe-root", str(ca_folder / "root.pem"),
                       "--expect-pcr", f"0={PCR0.hex()}"])  # fmt: skip
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- an honest relay ---------------------------------------------------------------------------


def test_through_an_honest_relay_answers_verify_by_library_and_by_check(relay, ca_folder, capsys):
    client = client_for(relay.url, ca_folder)
    assert client.screen("Big Bird") == Listed(7)
    assert client.screen("Elmo") == Cleared(7)
    assert client.screen_many(["Elmo", "cookie MONSTER"]) == [Cleared(7), Listed(7)]
    refused = client.screen("\u0007Elmo")
    assert isinstance(refused, Refused) and "control" in refused.reason.lower()
    assert len(client.keys) == 1
    status, out, err = check(relay.url, ca_folder, "Big Bird", capsys)
    assert status == 0, err
    assert "answer: Big Bird is on the no-fly list and CAN NOT BOARD!" in out
    assert "signature, nonce, name and body verified; list serial 7" in out


# -- relays that attack ------------------------------------------------------------------------

ATTACKS = [
    ("rewrite", {}, "the body received is not the one signed"),
    ("body", {"position": 3}, "the body received is not the one signed"),
    ("body", {"position": -1}, "the body received is not the one signed"),
    ("statement", {"position": 60}, "does not verify under the attested answer key"),
    ("statement", {"position": 30}, "no attestation of .* showed"),  # the key-id line
    ("statement", {"position": 0}, "does not verify under the attested answer key"),
    ("signature", {"position": 0}, "does not verify under the attested answer key"),
    ("signature", {"position": 63}, "does not verify under the attested answer key"),
    ("other-name", {"other_name": "Elmo"}, "another name's answer"),
]


def test_the_relays_flip_keeps_every_hex_digit_a_different_hex_digit():
    """The key-id attack must reach the key look-up whatever random key id the run has."""
    for digit in b"0123456789abcdef":
        flipped = _flip(bytes([digit]), 0)
        assert flipped != bytes([digit]) and flipped in [bytes([d]) for d in b"0123456789abcdef"]


@pytest.mark.parametrize(("mode", "options", "reason"), ATTACKS,
                         ids=[f"{m}-{sorted(o.values())}" for m, o, _ in ATTACKS])  # fmt: skip
def test_an_altered_or_substituted_answer_is_refused_with_its_reason(
    services, ca_folder, capsys, mode, options, reason
):
    attacker = Relay([(services[0].host, services[0].port)], mode, **options)
    try:
        with pytest.raises(AnswerNotVerified, match=reason):
            client_for(attacker.url, ca_folder).screen("Big Bird")
        status, out, err = check(attacker.url, ca_folder, "Big Bird", capsys)
        assert status == 1 and "answer:" not in out and "cleared" not in out
        assert re.search(reason, err) and "no answer is printed" in err
    finally:
        attacker.stop()


def test_an_earlier_signed_answer_replayed_to_a_new_nonce_is_refused(services, ca_folder):
    attacker = Relay([(services[0].host, services[0].port)], "replay")
    try:
        client = client_for(attacker.url, ca_folder)
        assert client.screen("Big Bird") == Listed(7)  # the first answer is genuine
        with pytest.raises(AnswerNotVerified, match="the nonce differs: a replay"):
            client.screen("Big Bird")
    finally:
        attacker.stop()


def test_a_second_services_answers_signed_with_its_own_key_are_refused(services, ca_folder,
                                                                       capsys):  # fmt: skip
    attacker = Relay([(s.host, s.port) for s in services], "other-service")
    try:
        with pytest.raises(AnswerNotVerified, match=r"no attestation of .* showed"):
            client_for(attacker.url, ca_folder).screen("Big Bird")
        status, out, err = check(attacker.url, ca_folder, "Big Bird", capsys)
        assert status == 1 and "answer:" not in out and "no attestation" in err
    finally:
        attacker.stop()


# -- several replicas, restarts, old lists -----------------------------------------------------


def test_two_replicas_behind_a_round_robin_relay_are_each_attested_and_verified(
    services, ca_folder
):
    balancer = Relay([(s.host, s.port) for s in services])
    try:
        client = client_for(balancer.url, ca_folder)
        verdicts = [client.screen(name) for name in ["Big Bird", "Elmo"] * 4]
        assert verdicts == [Listed(7), Cleared(7)] * 4
        assert set(client.keys) == {s.key.key_id for s in services}
    finally:
        balancer.stop()


def test_a_restarted_service_with_a_new_key_is_attested_again_then_verified(
    relay, services, ca_folder
):
    client = client_for(relay.url, ca_folder)
    assert client.screen("Big Bird") == Listed(7)
    relay.upstreams = [(services[1].host, services[1].port)]  # same URL, a new process and key
    assert client.screen("Big Bird") == Listed(7)
    assert services[1].key.key_id in client.keys


def test_min_serial_refuses_a_replica_on_an_older_list(relay, ca_folder):
    with pytest.raises(AnswerNotVerified, match="older than min_serial 8"):
        client_for(relay.url, ca_folder, min_serial=8).screen("Big Bird")
    assert client_for(relay.url, ca_folder, min_serial=7).screen("Big Bird") == Listed(7)


def test_a_service_that_binds_no_answer_key_is_refused(ca_folder, tmp_path):
    unsigned = _Service(holder_at(tmp_path, 7), SimulatedNSM(load_or_create(ca_folder),
                                                             pcr0=PCR0), sign=False)  # fmt: skip
    try:
        with pytest.raises(AttestationFailed, match="binds no answer key"):
            client_for(f"http://{unsigned.host}:{unsigned.port}", ca_folder).screen("Elmo")
    finally:
        unsigned.stop()


def test_a_wrong_pcr0_refuses_before_any_name_is_sent(relay, services, ca_folder):
    client = Client(relay.url, {0: b"\x01" * 48}, unsafe_root=load_or_create(ca_folder).root)
    with pytest.raises(AttestationFailed, match="PCR0 mismatch"):
        client.screen("Big Bird")
    assert "noflylist_answers_signed_total" not in services[0].metrics.render()


def test_an_unreachable_service_is_a_service_unavailable_error(ca_folder):
    from tests.support.service_client import free_port

    client = client_for(f"http://127.0.0.1:{free_port()}", ca_folder, timeout=2.0)
    with pytest.raises(ServiceUnavailable, match="failed"):
        client.screen("Elmo")


def test_the_client_library_imports_nothing_of_the_server():
    import subprocess

    code = (
        "import sys, noflylist.client.client; "
        "print(sorted(m for m in sys.modules if m.startswith(('noflylist', 'enclave'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout  # fmt: skip
    for server in ("noflylist.routes", "noflylist.service", "noflylist.lists",
                   "noflylist.decision", "noflylist.transport", "noflylist.answers"):  # fmt: skip
        assert f"'{server}" not in out
    assert lib.MAX_ATTESTATIONS_PER_ANSWER >= 2


def test_check_min_serial_refuses_a_service_on_an_older_list(relay, ca_folder, capsys):
    status = cli.main(["check", relay.url, "Big Bird", "--unsafe-root",
                       str(ca_folder / "root.pem"), "--expect-pcr", f"0={PCR0.hex()}",
                       "--min-serial", "8"])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 1 and "answer:" not in captured.out
    assert "older than min_serial 8" in captured.err
