"""``serve`` at an enclave's boot: what it must ask for is retried, what is malformed exits.

With no ``AWS_REGION`` (the shipped manifest) the region comes from the instance metadata
service, through the parent, whose way to IMDS may not be up yet. The service must not
exit then (an exited service ends the enclave): it answers 503 with the reason, retries
with backoff, and serves the list once IMDS answers. A value no retry can fix (a malformed
``AWS_REGION``, IMDS endpoint or envelope location) still exits at once with status 1 and a
message naming it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enclave import credentials
from enclave.errors import NoflylistError
from enclave.kms import key_region
from enclave.modes import AttestationMode
from noflylist.config import ServeConfig
from noflylist.lists import LOADS
from noflylist.service import Service
from noflylist.tools import seal
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import KEY_ARN, FakeDataKeys
from tests.support.imds import REGION_PATH, FakeImds
from tests.support.service_client import ask, free_port, wait_ready
from tests.test_faults import FaultyKMS

LISTED = ("Big Bird", "Oscar the Grouch")
#: A region no default would give, so that finding it in the log proves IMDS was asked.
IMDS_REGION = "ap-southeast-2"
#: How long IMDS stays out of reach at "boot" in these tests.
IMDS_DOWN_FOR = 1.5
#: Variables of this machine that would give the service a region or credentials.
AWS_VARIABLES = re.compile(r"AWS_.*")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.02)


@pytest.fixture
def keys() -> FakeDataKeys:
    return FakeDataKeys()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A simulator state folder: the CA both the service's NSM and the fake KMS use."""
    return tmp_path / "simulator"


@pytest.fixture
def ca(state: Path) -> SimulatedCA:
    return load_or_create(state / "ca")


@pytest.fixture
def kms(ca: SimulatedCA, keys: FakeDataKeys) -> Iterator[FaultyKMS]:
    server = FaultyKMS(ca, keys)
    yield server
    server.stop()


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    """A fake IMDS, not started: each test says when it comes up."""
    server = FakeImds()
    server.region = IMDS_REGION
    yield server
    server.stop()


@pytest.fixture
def envelope_file(tmp_path: Path, keys: FakeDataKeys) -> Path:
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(LISTED, keys, KEY_ARN, serial=1))
    return path


# -- in this process: the reason, the retries, the list ----------------------------------


@pytest.mark.parametrize("fault", ["unreachable", "refusing-tokens"])
def test_serve_without_aws_region_answers_503_with_the_reason_until_imds_answers_then_serves(
    fault: str, kms: FaultyKMS, imds: FakeImds, envelope_file: Path, ca: SimulatedCA,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr("noflylist.service.FIRST_LOAD_RETRY", 0.05)
    monkeypatch.setattr("noflylist.service.FIRST_LOAD_RETRY_MAX", 0.2)
    monkeypatch.setattr(credentials, "IMDS_RETRY_PAUSE", 0.01)
    port = free_port()
    if fault == "refusing-tokens":
        imds.token_status = 403
        imds.start(port)
    # The shipped manifest's setting: no region, no keys; both come from IMDS.
    environ = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}",
               "AWS_ENDPOINT_URL_KMS": kms.url}  # fmt: skip
    config = ServeConfig(envelope=str(envelope_file), port=0, attestation=AttestationMode.SIMULATED,
                         refresh_interval=0, key_id=KEY_ARN)  # fmt: skip
    with caplog.at_level(logging.INFO):
        service = Service(config, environ=environ, simulated_module=SimulatedNSM(ca))
        runner = threading.Thread(target=service.run, daemon=True)
        runner.start()
        base = "http://{}:{}".format(*service.address)
        try:
            wait_until(lambda: service.metrics.events(LOADS, "failed") >= 3, "three failures")
            status, ready = get(base + "/readyz")
            assert status == 503, ready
            assert ready.startswith("not ready: no AWS region yet: AWS_REGION is unset"), ready
            cause = ("could not reach the instance metadata service" if fault == "unreachable"
                     else "IMDS refused a session token (HTTP 403)")  # fmt: skip
            assert cause in ready
            assert re.search(r"^last load: failed at \S+, \d+ in a row; last success never$",
                             ready, re.M), ready  # fmt: skip
            assert get(base + "/enclave/passenger?name=Elmo")[0] == 503  # never "cleared"
            assert kms.calls == 0 and runner.is_alive()

            if fault == "unreachable":
                imds.start(port)  # the way to IMDS is up now, at the same address
            else:
                imds.token_status = None
            wait_ready(base)
        finally:
            service.stop()
            runner.join(timeout=20)
    assert not runner.is_alive()
    assert imds.count("GET", REGION_PATH) == 1, "the region is asked for until known, then kept"
    assert kms.access_keys() == [imds.issued[-1].access_key_id]  # the credentials came too
    assert f"({IMDS_REGION}), credentials from imds" in caplog.text
    assert "retrying the first load" in caplog.text


def test_the_first_load_loop_survives_an_exception_that_escapes_reload_and_counts_it(
    kms: FaultyKMS, envelope_file: Path, ca: SimulatedCA, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A bug outside the holder's own boundary, before any list is in service: the first
    load's loop counts it as a failed load, shows its type and place (never its message) in
    ``/readyz``, and tries again until the list is served."""
    monkeypatch.setattr("noflylist.service.FIRST_LOAD_RETRY", 0.05)
    environ = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKIDSTARTUPTEST",
               "AWS_SECRET_ACCESS_KEY": "s" * 40, "AWS_ENDPOINT_URL_KMS": kms.url}  # fmt: skip
    config = ServeConfig(envelope=str(envelope_file), port=0, attestation=AttestationMode.SIMULATED,
                         refresh_interval=0, key_id=KEY_ARN)  # fmt: skip
    service = Service(config, environ=environ, simulated_module=SimulatedNSM(ca))
    real_reload = service.holder.reload
    escapes = [RuntimeError(f"cannot load {LISTED[1]}"), RecursionError(LISTED[1])]
    release = threading.Event()

    def reload(*, only_if_changed: bool) -> bool:
        if escapes:
            raise escapes.pop(0)
        release.wait(timeout=20)  # until /readyz has been read with both failures counted
        return real_reload(only_if_changed=only_if_changed)

    monkeypatch.setattr(service.holder, "reload", reload)
    runner = threading.Thread(target=service.run, daemon=True)
    with caplog.at_level(logging.INFO):
        runner.start()
        base = "http://{}:{}".format(*service.address)
        try:
            wait_until(lambda: service.metrics.events(LOADS, "failed") == 2, "two failures")
            status, ready = get(base + "/readyz")
            assert status == 503, ready
            assert ready.startswith("not ready: unexpected RecursionError at "), ready
            assert "in the first load (a bug" in ready and LISTED[1] not in ready
            assert re.search(r"^last load: failed at \S+, 2 in a row; last success never$",
                             ready, re.M), ready  # fmt: skip
            release.set()
            wait_ready(base)
            assert "CAN NOT BOARD" in ask(base, LISTED[1])
        finally:
            release.set()
            service.stop()
            runner.join(timeout=20)
    assert not runner.is_alive()
    assert "unexpected RuntimeError at " in caplog.text and LISTED[1] not in caplog.text


class _RecordingEvent(threading.Event):
    """An event that remembers how long each wait on it was to last."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_asking_for_the_region_backs_off_doubling_to_the_ceiling(
    kms: FaultyKMS, imds: FakeImds, envelope_file: Path, ca: SimulatedCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A service waiting for IMDS does not hammer the way to it."""
    monkeypatch.setattr("noflylist.service.FIRST_LOAD_RETRY", 0.05)
    monkeypatch.setattr("noflylist.service.FIRST_LOAD_RETRY_MAX", 0.4)
    monkeypatch.setattr(credentials, "IMDS_RETRY_PAUSE", 0.01)
    imds.token_status = 503
    imds.start()
    environ = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_ENDPOINT_URL_KMS": kms.url}
    config = ServeConfig(envelope=str(envelope_file), port=0, attestation=AttestationMode.SIMULATED,
                         refresh_interval=0, key_id=KEY_ARN)  # fmt: skip
    service = Service(config, environ=environ, simulated_module=SimulatedNSM(ca))
    wake = _RecordingEvent()
    monkeypatch.setattr(service, "_wake", wake)  # where the loader waits between attempts
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(wake.timeouts) >= 6, "six pauses")
        assert service.metrics.events(LOADS, "failed") >= 6
    finally:
        service.stop()
        runner.join(timeout=20)
    assert wake.timeouts[:6] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4])


@pytest.mark.parametrize(
    "environ, words",
    [
        ({"AWS_REGION": "EU-WEST-1"}, "AWS_REGION is 'EU-WEST-1', which is not an AWS region"),
        ({"AWS_DEFAULT_REGION": "eu west 1"}, "AWS_DEFAULT_REGION is 'eu west 1'"),
        ({"AWS_EC2_METADATA_DISABLED": "true"}, "set AWS_REGION"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "ftp://imds"},
         "AWS_EC2_METADATA_SERVICE_ENDPOINT must be an http:// URL"),
        ({"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_KMS": "kms.local:4566"},
         "AWS_ENDPOINT_URL_KMS: unsupported URL scheme"),
        ({"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": "https://user:pw@s3.local"},
         "AWS_ENDPOINT_URL_S3: URL carries user:password@"),
        ({"AWS_REGION": "us-east-1", "https_proxy": "socks5://127.0.0.1:1080"},
         "https_proxy must be http://"),
        ({"AWS_REGION": "us-east-1", "AWS_CA_BUNDLE": "/nonexistent/ca.pem"},
         "AWS_CA_BUNDLE=/nonexistent/ca.pem cannot be loaded"),
    ],
    ids=["bad-region", "bad-default-region", "no-region-and-imds-off", "bad-imds-endpoint",
         "bad-kms-endpoint", "s3-endpoint-with-userinfo", "bad-proxy", "bad-ca-bundle"],
)  # fmt: skip
def test_a_malformed_setting_fails_the_service_at_construction_naming_it(
    envelope_file: Path, environ: dict[str, str], words: str
) -> None:
    environ = {"AWS_ACCESS_KEY_ID": "AKIDSTARTUPTEST", "AWS_SECRET_ACCESS_KEY": "s" * 40,
               **environ}  # fmt: skip
    config = ServeConfig(envelope=str(envelope_file), port=0,
                         attestation=AttestationMode.UNSAFE_NONE)  # fmt: skip
    with pytest.raises(NoflylistError) as raised:
        Service(config, environ=environ)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    "location, words",
    [("s3://bucket-only", "not an S3 object URL"), ("https:///path", "must be https://HOST"),
     ("ftp://host/envelope.json", "unsupported envelope location")],
)  # fmt: skip
def test_a_malformed_envelope_location_fails_the_service_at_construction(
    location: str, words: str
) -> None:
    config = ServeConfig(envelope=location, port=0, attestation=AttestationMode.UNSAFE_NONE)
    with pytest.raises(NoflylistError, match=words):
        Service(config, environ={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"})


# -- as a process: the exit status ---------------------------------------------------------


def serve_environment(**settings: str) -> dict[str, str]:
    """This machine's environment without its AWS settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not AWS_VARIABLES.fullmatch(k)}
    return env | settings


def test_noflylist_serve_exits_1_at_once_naming_a_malformed_aws_region(
    envelope_file: Path,
) -> None:
    env = serve_environment(
        NOFLYLIST_ENVELOPE=str(envelope_file), NOFLYLIST_ATTESTATION="unsafe-none",
        NOFLYLIST_PORT=str(free_port()), AWS_REGION="eu-west-1.evil.example",
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "noflylist", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("noflylist serve: AWS_REGION is 'eu-west-1.evil.example'")
    assert "Traceback" not in done.stderr


def test_noflylist_serve_does_not_load_the_simulator_and_says_which_entry_point_does(
    envelope_file: Path, state: Path
) -> None:
    env = serve_environment(
        NOFLYLIST_ENVELOPE=str(envelope_file), NOFLYLIST_ATTESTATION="simulated",
        NOFLYLIST_SIMULATOR_STATE=str(state), NOFLYLIST_PORT=str(free_port()),
        AWS_REGION="eu-west-1",
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "noflylist", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("noflylist serve: --attestation simulated needs the local")
    assert "python -m noflylist_simulator serve" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_simulator_entry_point_refuses_a_mode_that_is_not_simulated(
    envelope_file: Path,
) -> None:
    env = serve_environment(
        NOFLYLIST_ENVELOPE=str(envelope_file), NOFLYLIST_ATTESTATION="unsafe-none",
        NOFLYLIST_PORT=str(free_port()), AWS_REGION="eu-west-1",
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "noflylist_simulator", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "pass --attestation simulated --simulator-state DIR" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_noflylist_serve_rides_out_imds_down_at_boot_then_serves_and_exits_0_on_sigterm(
    kms: FaultyKMS, imds: FakeImds, envelope_file: Path, state: Path, ca: SimulatedCA
) -> None:
    port, imds_port = free_port(), free_port()
    env = serve_environment(
        NOFLYLIST_ENVELOPE=str(envelope_file), NOFLYLIST_ATTESTATION="simulated",
        NOFLYLIST_SIMULATOR_STATE=str(state), NOFLYLIST_PORT=str(port),
        NOFLYLIST_KEY_ID=KEY_ARN, AWS_ENDPOINT_URL_KMS=kms.url,
        AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{imds_port}",
    )  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(  # serve, with the simulator's NSM passed in by its entry point
        [sys.executable, "-m", "noflylist_simulator", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def not_ready_saying_why() -> bool:
            assert process.poll() is None, "serve exited while IMDS was down"
            try:
                status, ready = get(base + "/readyz")
            except OSError:
                return False  # not listening yet
            return status == 503 and "no AWS region yet" in ready

        wait_until(not_ready_saying_why, "503 with the reason")
        time.sleep(max(0.0, IMDS_DOWN_FOR - (time.monotonic() - started)))
        assert process.poll() is None
        imds.start(imds_port)
        wait_ready(base, timeout=60)
        assert "CAN NOT BOARD" in ask(base, LISTED[0])
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "retrying the first load" in output and "no AWS region yet" in output
    assert f"({IMDS_REGION}), credentials from imds" in output
    assert "Traceback" not in output


# -- the key's region --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_id, region",
    [("arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000", "us-east-1"),
     ("arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/abc", "us-gov-west-1"),
     ("arn:aws:kms:us-east-1:111122223333:alias/lists", None),  # an alias is not the key
     ("00000000-0000-4000-8000-000000000000", None),
     ("arn:aws:kms:us-east-1.evil.example:111122223333:key/abc", None),
     (None, None)],
)  # fmt: skip
def test_the_region_of_a_key_arn_is_read_strictly(key_id: str | None, region: str | None) -> None:
    assert key_region(key_id) == region


def test_kms_calls_go_to_the_region_of_the_key_arn_whatever_the_instance_region(
    envelope_file: Path,
) -> None:
    """enclaver.yaml allows only the key's KMS host, so the service must not ask another."""
    key = "arn:aws:kms:ap-southeast-2:111122223333:key/00000000-0000-4000-8000-000000000000"
    environ = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKIDREGIONTEST",
               "AWS_SECRET_ACCESS_KEY": "s" * 40}  # fmt: skip
    config = ServeConfig(envelope=str(envelope_file), port=0,
                         attestation=AttestationMode.UNSAFE_NONE, key_id=key)  # fmt: skip
    service = Service(config, environ=environ)
    service._open()  # what the first load does before it fetches anything
    assert service.kms is not None
    assert (service.kms.endpoint, service.kms.region) == (
        "https://kms.ap-southeast-2.amazonaws.com", "ap-southeast-2")
    unpinned = Service(ServeConfig(envelope=str(envelope_file), port=0,
                                   attestation=AttestationMode.UNSAFE_NONE), environ=environ)
    unpinned._open()
    assert unpinned.kms is not None and unpinned.kms.region == "eu-west-1"
