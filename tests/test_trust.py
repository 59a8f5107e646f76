"""Proof for the client-trust parts: ``noflylist verify``, ``noflylist check`` and the
``/enclave/attestation`` route.

``verify`` is run on real AWS-signed documents (tests/vectors/nitro, with the facts in
expected.json written by an independent tool). The route's documents come from the simulated
NSM and are checked with our verifier against the simulator's root, and their ``user_data``
with cbor2, an independent CBOR decoder.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import cbor2
import pytest

from enclave.modes import AttestationMode
from enclave.nsm import NSMError
from noflylist import __version__, cli
from noflylist.answers import AnswerKey
from noflylist.attestation_route import AttestationRoute, AttestationRouteError
from noflylist.client.attestation import verify
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.routes import RouteHandler, RouteResponse, Routes
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.transport.server import Server
from noflylist.wire import ATTESTATION_PATH as PATH
from noflylist.wire import MODE_HEADER, ServedList, UserDataError, decode_user_data
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.conftest import VECTORS
from tests.support.fake_kms import FakeDataKeys

NITRO = VECTORS / "nitro"
EXPECTED = json.loads((NITRO / "expected.json").read_text())
PRODUCTION = ("production-2022-10-13.cbor", "production-2023-01-18.cbor")
PCR0 = hashlib.sha384(b"the simulated enclave image under test").digest()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line itself (``noflylist.cli.main``): our errors become one line, exit 1."""
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def inside_window(name: str) -> str:
    """A moment inside the document's leaf-certificate validity (from expected.json)."""
    not_before = datetime.fromisoformat(EXPECTED[name]["leaf_cert"]["not_before"])
    return (not_before + timedelta(minutes=30)).isoformat()


def raw_nonce(name: str) -> bytes:
    """The document's nonce, read with cbor2 (independent of our decoder)."""
    payload = cbor2.loads(cbor2.loads((NITRO / name).read_bytes())[2])
    return bytes(payload["nonce"])


# -- verify on real documents -----------------------------------------------------------------


@pytest.mark.parametrize("name", [*PRODUCTION, "debug-2022-10-12.cbor"])
def test_verify_prints_the_fields_of_real_documents_inside_their_validity(name, capsys):
    facts = EXPECTED[name]
    extra = ["--unsafe-allow-debug"] if name.startswith("debug") else []
    status, out, err = run(
        ["verify", str(NITRO / name), "--at", inside_window(name), "--json", *extra], capsys
    )
    assert status == 0, err
    fields = json.loads(out)
    assert fields["verified"] is True and fields["root"] == "AWS Nitro Enclaves root G1"
    assert fields["root_sha256"] == facts["cabundle0_sha256_fingerprint"]
    assert fields["module_id"] == facts["module_id"]
    assert datetime.fromisoformat(fields["timestamp"]) == datetime.fromisoformat(
        facts["timestamp_utc"]
    )
    assert fields["pcrs"] == {f"PCR{i}": value for i, value in facts["pcrs_nonzero"].items()}
    assert fields["public_key_present"] is (facts["public_key"] is not None)
    if facts["nonce"] is None:
        assert fields["nonce"] is None
    else:
        nonce = bytes.fromhex(fields["nonce"])
        assert hashlib.sha256(nonce).hexdigest() == facts["nonce"]["sha256"]
    if facts["user_data"] is None:
        assert fields["user_data"] is None
    else:  # not a noflylist map: shown as hex
        user_data = bytes.fromhex(fields["user_data"]["hex"])
        assert hashlib.sha256(user_data).hexdigest() == facts["user_data"]["sha256"]


def test_verify_with_unsafe_allow_debug_prints_a_warning_on_stderr_each_time(capsys):
    name = PRODUCTION[0]
    argv = ["verify", str(NITRO / name), "--at", inside_window(name), "--unsafe-allow-debug"]
    for _ in range(2):
        status, out, err = run(argv, capsys)
        assert status == 0 and "PCR0:" in out
        assert err.count("WARNING: UNSAFE: --unsafe-allow-debug: a debug-mode enclave") == 1
    status, _, err = run(argv[:-1], capsys)
    assert status == 0 and "WARNING" not in err


@pytest.mark.parametrize("old", ["--root", "--allow-debug"])
def test_the_old_names_of_the_unsafe_options_are_refused(old, capsys, simulator):
    sim, _ = simulator
    value = [str(sim.root_pem)] if old == "--root" else []
    with pytest.raises(SystemExit) as exited:
        cli.main(["verify", str(NITRO / PRODUCTION[0]), old, *value])
    assert exited.value.code == 2 and f"unrecognized arguments: {old}" in capsys.readouterr().err


def test_verify_text_output_names_module_pcrs_and_nonce(capsys):
    name = PRODUCTION[0]
    status, out, _ = run(["verify", str(NITRO / name), "--at", inside_window(name)], capsys)
    assert status == 0
    assert f"module_id: {EXPECTED[name]['module_id']}\n" in out
    assert f"  PCR0: {EXPECTED[name]['pcr0_hex']}\n" in out
    assert f"nonce: {raw_nonce(name).hex()}\n" in out
    assert "public_key_present: false\n" in out and "user_data: (absent)\n" in out


@pytest.mark.parametrize("name", PRODUCTION)
def test_verify_with_todays_clock_fails_at_step_3_the_expired_chain(name, capsys):
    status, out, err = run(["verify", str(NITRO / name)], capsys)
    assert status == 1 and out == ""
    assert "NOT verified: step 3 (certificate chain)" in err and "expired" in err


def test_verify_expected_pcr_match_passes_and_mismatch_fails_at_step_5(capsys):
    name = PRODUCTION[1]
    document, at = str(NITRO / name), inside_window(name)
    good = f"0={EXPECTED[name]['pcr0_hex']}"
    assert run(["verify", document, "--at", at, "--expect-pcr", good], capsys)[0] == 0
    other = f"0={EXPECTED[PRODUCTION[0]]['pcr0_hex']}"
    status, out, err = run(["verify", document, "--at", at, "--expect-pcr", other], capsys)
    assert status == 1 and out == ""
    assert "step 5 (caller checks): PCR0 mismatch" in err


def test_verify_nonce_match_passes_and_mismatch_fails_at_step_5(capsys):
    name = PRODUCTION[0]
    document, at = str(NITRO / name), inside_window(name)
    nonce = raw_nonce(name)
    assert run(["verify", document, "--at", at, "--nonce", nonce.hex()], capsys)[0] == 0
    wrong = bytes([nonce[0] ^ 1]) + nonce[1:]
    status, _, err = run(["verify", document, "--at", at, "--nonce", wrong.hex()], capsys)
    assert status == 1 and "step 5 (caller checks): nonce mismatch" in err


def test_verify_refuses_a_debug_enclave_unless_allowed(capsys):
    name = "debug-2022-10-12.cbor"
    status, _, err = run(["verify", str(NITRO / name), "--at", inside_window(name)], capsys)
    assert status == 1 and "step 5 (caller checks): PCR0 is all zero" in err


def test_verify_reads_wrapped_base64_from_stdin_like_the_raw_file(monkeypatch, capsys):
    name = PRODUCTION[1]
    at = inside_window(name)
    raw = (NITRO / name).read_bytes()
    wrapped = base64.encodebytes(raw)  # MIME style: a line break every 76 characters
    assert wrapped.count(b"\n") > 10
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(wrapped)))
    status, from_stdin, err = run(["verify", "-", "--at", at, "--json"], capsys)
    assert status == 0, err
    assert run(["verify", str(NITRO / name), "--at", at, "--json"], capsys)[1] == from_stdin


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--at", "2022-10-13T09:00:00"], "--at: give a time zone"),
        (["--at", "yesterday"], "--at:"),
        (["--expect-pcr", "0=abcd"], "--expect-pcr"),
        (["--nonce", "xyz"], "--nonce"),
        (["--unsafe-root", "/nonexistent/root.pem"], "--unsafe-root"),
    ],
)
def test_verify_refuses_bad_options_naming_them(argv_tail, message, capsys):
    status, out, err = run(["verify", str(NITRO / PRODUCTION[0]), *argv_tail], capsys)
    assert status == 1 and out == "" and message in err


def test_verify_refuses_input_that_is_neither_cbor_nor_base64(tmp_path, capsys):
    path = tmp_path / "doc.txt"
    path.write_text("this is not an attestation document\n")
    status, _, err = run(["verify", str(path)], capsys)
    assert status == 1 and "neither a CBOR attestation document nor base64" in err


def test_verify_against_another_root_fails_at_step_3(capsys, simulator):
    sim, _ = simulator
    name = PRODUCTION[0]
    argv = ["verify", str(NITRO / name), "--at", inside_window(name)]
    status, _, err = run([*argv, "--unsafe-root", str(sim.root_pem)], capsys)
    assert status == 1 and "step 3 (certificate chain)" in err


def test_verify_shows_a_simulated_documents_user_data_map_with_the_simulator_root(
    tmp_path, capsys, simulator, holder
):
    sim, module = simulator
    holder[0].reload(only_if_changed=False)
    nonce = b"\x42" * 32
    _, _, body, _ = AttestationRoute(module, holder[0], mode=AttestationMode.SIMULATED)(
        {"nonce": [nonce.hex()]}, {}
    )
    (tmp_path / "doc.cbor").write_bytes(body)
    argv = ["verify", str(tmp_path / "doc.cbor"), "--unsafe-root", str(sim.root_pem)]
    status, out, err = run([*argv, "--nonce", nonce.hex(), "--json"], capsys)
    assert status == 0, err
    assert "WARNING: SIMULATED attestation" in err and "--unsafe-root" in err
    fields = json.loads(out)
    assert fields["root"] == "caller-supplied (--unsafe-root)"
    assert fields["pcrs"]["PCR0"] == PCR0.hex()
    assert fields["user_data"] == {
        "envelope_sha256": hashlib.sha256(holder[1].read_bytes()).hexdigest(),
        "serial": 7,
        "version": __version__,
        "clients_sha256": None,  # sealed without a client policy: an open list
    }
    # Without --unsafe-root the AWS root is used, and the simulator's chain does not lead to it.
    status, _, err = run(argv[:2], capsys)
    assert status == 1 and "step 3 (certificate chain)" in err


# -- the route, unit ---------------------------------------------------------------------------


class _Simulator:
    """The simulator's CA and the root PEM file it wrote (what a user passes to --unsafe-root)."""

    def __init__(self, ca: SimulatedCA, folder: Path) -> None:
        self.ca = ca
        self.root_pem = folder / "root.pem"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory) -> tuple[_Simulator, SimulatedNSM]:
    folder = tmp_path_factory.mktemp("trust-ca")
    ca = load_or_create(folder)
    return _Simulator(ca, folder), SimulatedNSM(ca, pcr0=PCR0)


@pytest.fixture()
def holder(tmp_path) -> tuple[ListHolder, Path]:
    """A real list holder over a real v2 envelope file (data keys from a fake KMS)."""
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(["Big Bird", "Cookie Monster"], kms, "k", serial=7))
    return ListHolder(FileSource(str(path)), kms, Metrics()), path


def test_route_documents_carry_the_nonce_and_verify_against_the_simulator_root(simulator, holder):
    sim, module = simulator
    route = AttestationRoute(module, holder[0], mode=AttestationMode.SIMULATED)
    nonce = bytes(range(1, 33))
    status, content_type, body, headers = route({"nonce": [nonce.hex()]}, {})
    assert (status, content_type) == (200, "application/cbor")
    assert headers == {MODE_HEADER: "simulated"}
    document = verify(body, unsafe_root=sim.ca.root, nonce=nonce, expected_pcrs={0: PCR0})
    assert document.nonce == nonce and document.public_key is None


def test_route_user_data_names_no_list_before_load_and_the_envelope_after(simulator, holder):
    sim, module = simulator
    list_holder, path = holder
    route = AttestationRoute(module, list_holder, mode=AttestationMode.NSM)
    nonce = b"\x5a" * 8

    def user_data() -> object:
        status, _, body, headers = route({"nonce": [nonce.hex()]}, {"Accept": "*/*"})
        assert status == 200 and headers == {MODE_HEADER: "nsm"}
        data = verify(body, unsafe_root=sim.ca.root, nonce=nonce).user_data
        assert data is not None
        return cbor2.loads(data)

    # clients_sha256 is null: the list is served open (sealed without a client policy).
    assert user_data() == {"envelope_sha256": None, "serial": None, "version": __version__,
                           "clients_sha256": None}  # fmt: skip
    list_holder.reload(only_if_changed=False)
    expected = {
        "envelope_sha256": hashlib.sha256(path.read_bytes()).digest(),
        "serial": 7,
        "version": __version__,
        "clients_sha256": None,
    }
    assert user_data() == expected
    assert list(cbor2.loads(cbor2.dumps(expected))) == [
        "envelope_sha256", "serial", "version", "clients_sha256"]  # fmt: skip


@pytest.mark.parametrize(
    ("accept", "as_text"),
    [
        ("text/plain", True),
        ("Text/Plain; charset=us-ascii", True),
        ("text/plain, application/cbor", False),
        ("text/plain;q=0", False),
        ("application/cbor", False),
        ("*/*", False),
    ],
)
def test_route_sends_base64_text_only_when_text_plain_is_preferred(
    simulator, holder, accept, as_text
):
    sim, module = simulator
    route = AttestationRoute(module, holder[0], mode=AttestationMode.SIMULATED)
    nonce = b"\x01" * 16
    status, content_type, body, _ = route({"nonce": [nonce.hex()]}, {"accept": accept})
    assert status == 200
    if as_text:
        assert content_type.startswith("text/plain") and body.endswith(b"\n")
        document = base64.b64decode(body, validate=False)
        assert base64.b64encode(document) + b"\n" == body
    else:
        assert content_type == "application/cbor"
        document = body
    assert verify(document, unsafe_root=sim.ca.root, nonce=nonce).nonce == nonce


SECRET_LOOKING = "c0ffee" * 3


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"nonce": [""]},
        {"nonce": ["00" * 7]},
        {"nonce": ["00" * 65]},
        {"nonce": ["0" * 17]},
        {"nonce": ["zz" * 8 + SECRET_LOOKING]},
        {"nonce": [" " + "00" * 8]},
        {"nonce": ["\u0660\u0660" * 8]},  # Arabic-Indic zeros: digits to Python, not hex
        {"nonce": ["00" * 8, "11" * 8]},
        {"nonce": ["00" * 8], SECRET_LOOKING: ["x"]},
    ],
    ids=[
        "missing",
        "empty",
        "7 bytes",
        "65 bytes",
        "odd length",
        "not hex",
        "space",
        "unicode digits",
        "twice",
        "extra parameter",
    ],
)
def test_route_refuses_bad_nonces_with_400_and_one_line_that_echoes_nothing(
    simulator, holder, query
):
    _, module = simulator
    route = AttestationRoute(module, holder[0], mode=AttestationMode.SIMULATED)
    status, content_type, body, _ = route(query, {})
    assert status == 400 and content_type.startswith("text/plain")
    text = body.decode()
    assert text.endswith("\n") and text.count("\n") == 1
    assert SECRET_LOOKING not in text and "zz" not in text


def test_route_answers_503_with_the_reason_when_the_nsm_fails(holder):
    class BrokenNSM:
        def attestation(self, **_: object) -> bytes:
            raise NSMError("the NSM did not answer Attestation within the driver's timeout")

    route = AttestationRoute(BrokenNSM(), holder[0], mode=AttestationMode.NSM)  # type: ignore[arg-type]
    status, _, body, _ = route({"nonce": ["ab" * 8]}, {})
    assert status == 503 and b"driver's timeout" in body


def test_route_needs_a_mode_with_an_nsm(simulator, holder):
    with pytest.raises(AttestationRouteError, match="unsafe-none"):
        AttestationRoute(simulator[1], holder[0], mode=AttestationMode.UNSAFE_NONE)


@pytest.mark.parametrize(
    "value",
    [
        {"envelope_sha256": None, "serial": None},
        {"envelope_sha256": None, "serial": None, "version": "1", "extra": 1},
        {"envelope_sha256": b"\x00" * 31, "serial": 1, "version": "1"},
        {"envelope_sha256": None, "serial": True, "version": "1"},
        {"envelope_sha256": None, "serial": -1, "version": "1"},
        {"envelope_sha256": None, "serial": 1, "version": ""},
        {"envelope_sha256": None, "serial": 1, "version": "v" * 65},
        {b"envelope_sha256": None, "serial": 1, "version": "1"},
        ["envelope_sha256", "serial", "version"],
    ],
)
def test_user_data_that_is_not_exactly_our_map_is_refused(value):
    with pytest.raises(UserDataError):
        decode_user_data(cbor2.dumps(value))


def test_user_data_written_by_cbor2_is_read_back():
    data = cbor2.dumps({"version": "0.1.0", "serial": 3, "envelope_sha256": b"\x07" * 32})
    assert decode_user_data(data) == ServedList(b"\x07" * 32, 3, "0.1.0")


# -- check, end to end against a real Server ------------------------------------------------


class _Service:
    """A running Server with the attestation route; what the client under test talks to."""

    def __init__(self, holder: ListHolder, route: RouteHandler, root_pem: Path) -> None:
        self.metrics = Metrics()
        key = getattr(route, "answer_key", None)  # the service's signing key, when it has one
        self.server = Server(
            Routes(holder, self.metrics, extra_routes={PATH: route}, answer_key=key),
            self.metrics,
            port=0,
            workers=2,
        )
        host, port = self.server.address
        self.url = f"http://{host}:{port}"
        self.root_pem = root_pem
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answered(self, route: str) -> int:
        """Requests the server answered on ``route`` (its metrics: every answer is counted)."""
        pattern = re.compile(
            rf'noflylist_http_requests_total\{{route="{route}",status="\d+"\}} (\d+)'
        )
        return sum(int(count) for count in pattern.findall(self.metrics.render()))

    def stop(self) -> None:
        self.server.shutdown(drain_timeout=2)
        self._thread.join(timeout=5)


@pytest.fixture()
def serve(simulator, holder, monkeypatch):
    """Start a loopback Server whose attestation route is ``route`` (default: the simulator)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # traffic stays on loopback, whatever the CI sets
    sim, module = simulator
    list_holder = holder[0]
    list_holder.reload(only_if_changed=False)
    started: list[_Service] = []

    def start(route: RouteHandler | None = None) -> _Service:
        route = route or _Signing(module, list_holder)
        started.append(_Service(list_holder, route, sim.root_pem))
        return started[-1]

    yield start
    for service in started:
        service.stop()


class _Signing(AttestationRoute):
    """The attestation route of a service that signs its answers (as ``serve`` wires it)."""

    def __init__(self, module: SimulatedNSM, holder: ListHolder) -> None:
        self.answer_key = AnswerKey()
        super().__init__(module, holder, mode=AttestationMode.SIMULATED, answer_key=self.answer_key)


def check(service: _Service, name: str, *extra: str) -> list[str]:
    return ["check", service.url, name, "--unsafe-root", str(service.root_pem), *extra]


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("Big Bird", "Big Bird is on the no-fly list and CAN NOT BOARD!"),
        ("  COOKIE monster ", "COOKIE monster  is on the no-fly list and CAN NOT BOARD!"),
        ("Zoë O'Brien & Co?", "Zoë O'Brien & Co? is cleared to fly. Enjoy your flight!"),
    ],
)
def test_check_verifies_then_prints_the_answer_with_what_was_verified(
    serve, holder, capsys, name, answer
):
    service = serve()
    status, out, err = run(check(service, name, "--expect-pcr", f"0={PCR0.hex()}"), capsys)
    assert status == 0, err
    assert f"answer: {answer}" in out
    assert f"  PCR0 {PCR0.hex()}\n" in out and "  PCR0 matches --expect-pcr\n" in out
    digest = hashlib.sha256(holder[1].read_bytes()).hexdigest()
    assert f"list serial 7, envelope sha256 {digest}, noflylist {__version__}" in out
    assert "  who may ask: anyone: the list is served open" in out
    assert "enclave verified: module i-simulated-enc" in out
    assert "WARNING: SIMULATED attestation" in err
    assert service.answered(PATH) == 1 and service.answered("passenger") == 1


def refused(service: _Service, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``argv``; assert it failed and that the server saw no passenger query."""
    status, out, err = run(argv, capsys)
    assert status == 1 and "answer:" not in out
    assert service.answered("passenger") == 0
    return err


def test_check_with_a_wrong_expected_pcr0_refuses_and_sends_no_query(serve, capsys):
    service = serve()
    wrong = hashlib.sha384(b"the image the airline expects").hexdigest()
    err = refused(service, capsys, check(service, "Big Bird", "--expect-pcr", f"0={wrong}"))
    assert "NOT verified: step 5 (caller checks): PCR0 mismatch" in err
    assert service.answered(PATH) == 1  # it did ask for the document


def test_check_against_the_aws_root_refuses_a_simulated_document(serve, capsys):
    service = serve()
    argv = ["check", service.url, "Big Bird", "--expect-pcr", f"0={PCR0.hex()}"]
    err = refused(service, capsys, argv)
    assert "step 3 (certificate chain)" in err and "documents are SIMULATED" in err


def test_check_refuses_a_replayed_document_whose_nonce_is_not_ours(serve, simulator, capsys):
    _, module = simulator
    recorded = module.attestation(nonce=b"\x00" * 32, user_data=b"")

    def replay(query: object, headers: object) -> RouteResponse:
        return RouteResponse(200, "application/cbor", recorded)

    service = serve(replay)
    err = refused(service, capsys, check(service, "Big Bird", "--expect-pcr", f"0={PCR0.hex()}"))
    assert "step 5 (caller checks): nonce mismatch" in err


def test_check_refuses_a_debug_mode_enclave(serve, tmp_path, holder, capsys):
    debug_module = SimulatedNSM(load_or_create(tmp_path / "debug-ca"), pcr0=PCR0, debug=True)
    service = serve(_Signing(debug_module, holder[0]))
    argv = ["check", service.url, "Big Bird", "--expect-pcr", f"0={PCR0.hex()}"]
    root_pem = tmp_path / "debug-ca" / "root.pem"
    err = refused(service, capsys, [*argv, "--unsafe-root", str(root_pem)])
    assert "PCR0 is all zero" in err


def test_check_accepts_a_debug_mode_enclave_only_with_unsafe_allow_debug_and_says_so(
    serve, tmp_path, holder, capsys
):
    debug_module = SimulatedNSM(load_or_create(tmp_path / "debug-ca"), pcr0=PCR0, debug=True)
    service = serve(_Signing(debug_module, holder[0]))
    root_pem = tmp_path / "debug-ca" / "root.pem"
    pcr3 = debug_module.describe_pcr(3).data.hex()  # PCR0 is zero, and cannot be pinned
    argv = ["check", service.url, "Big Bird", "--expect-pcr", f"3={pcr3}",
            "--unsafe-root", str(root_pem)]  # fmt: skip
    err = refused(service, capsys, argv)
    assert "PCR0 is all zero" in err and "--unsafe-allow-debug" not in err
    status, out, err = run([*argv, "--unsafe-allow-debug"], capsys)
    assert status == 0, err
    assert "answer: Big Bird is on the no-fly list and CAN NOT BOARD!" in out
    assert "WARNING: UNSAFE: --unsafe-allow-debug: a debug-mode enclave" in err
    assert "WARNING: SIMULATED attestation" in err


def test_check_refuses_when_the_service_cannot_attest(serve, capsys):
    def broken(query: object, headers: object) -> RouteResponse:
        return RouteResponse(503, "text/plain", b"the NSM could not produce a document\n")

    service = serve(broken)
    err = refused(service, capsys, check(service, "Big Bird", "--expect-pcr", f"0={PCR0.hex()}"))
    assert "answered 503 to the attestation request" in err and "no passenger query" in err


def test_check_refuses_a_document_without_noflylist_user_data(serve, simulator, capsys):
    _, module = simulator

    def foreign(query: dict[str, list[str]], headers: object) -> RouteResponse:
        nonce = bytes.fromhex(query["nonce"][0])
        return RouteResponse(200, "application/cbor", module.attestation(nonce=nonce))

    service = serve(foreign)
    err = refused(service, capsys, check(service, "Big Bird", "--expect-pcr", f"0={PCR0.hex()}"))
    assert "carries no noflylist user_data" in err


def test_check_requires_an_expected_pcr(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["check", "http://127.0.0.1:9", "Big Bird"], capsys)
    assert exit_.value.code == 2
    assert "--expect-pcr" in capsys.readouterr().err
