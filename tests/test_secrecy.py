"""No listed name stays in the process after a load, and no listed or queried name reaches a
log line or an error.

* **Memory**: a fresh Python process (so that nothing of pytest's is scanned) seals a list,
  loads it into a :class:`ListHolder`, serves queries over HTTP, then walks every object the
  garbage collector tracks, every object those refer to, and the locals of every thread's
  frames, looking for a ``str``, ``bytes`` or ``bytearray`` equal to or containing a listed
  name (as written, lower-cased, or normalised). It must find none. A positive control
  plants copies and must find exactly those, so the scan is known to see what it looks for.
  (Python cannot wipe freed memory; the scan proves only that no live object keeps a name.)
* **Logs and errors**: a full run of :class:`noflylist.service.Service` (as ``noflylist serve``
  wires it, with the real logging set-up, text and JSON) through start-up faults, queries,
  bad input and failed refreshes; every byte written to stderr and every error answer is
  searched for every listed and queried name.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import string
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave.modes import AttestationMode
from noflylist import cli
from noflylist.config import ServeConfig
from noflylist.lists import LOADS
from noflylist.service import Service
from noflylist.table import normalize
from noflylist.tools import seal
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support.fake_kms import KEY_ARN, FakeDataKeys
from tests.support.screening import screen
from tests.test_faults import FaultyKMS

pytestmark = pytest.mark.slow  # each test runs the whole service and scans its memory or logs

ROOT = Path(__file__).resolve().parent.parent
#: Listed names in the memory scan; enough that a leak of "some" names would show.
SCANNED_NAMES = 100
#: How long the child process may take (it imports cryptography and builds a table).
CHILD_TIMEOUT = 60.0
START_TIMEOUT = 20.0


def distinctive_names(seed: int, count: int) -> Iterator[str]:
    """``Firstname Lastname`` of random letters, 7 to 10 each: no such text occurs by chance
    in a Python process, so any find is a leak."""
    rng = random.Random(seed)
    for _ in range(count):
        first = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(7, 10)))
        last = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(7, 10)))
        yield f"{first.capitalize()} {last.capitalize()}"


def forms(name: str) -> set[str]:
    """The spellings a leak could take: as written, lower-cased, normalised (no spaces),
    and percent-encoded as a client sends it."""
    return {name, name.lower(), normalize(name), urllib.parse.quote(name),
            urllib.parse.quote_plus(name)}  # fmt: skip


# -- memory ----------------------------------------------------------------------------------


def _live_texts(exclude: set[int]) -> list[str | bytes | bytearray]:
    """Every live str, bytes and bytearray reachable from what the collector tracks or from
    a thread's frame. The walk follows references through containers that the collector
    does not track itself (a dict or tuple holding only strings, say), so such strings are
    found too."""
    import gc

    gc.collect()  # unreachable cycles (an earlier scan's frames, say) are not "live"
    found: list[str | bytes | bytearray] = []
    pending: list[object] = list(gc.get_objects())
    for frame in sys._current_frames().values():
        walker: Any = frame
        while walker is not None:
            pending.append(walker.f_locals)
            walker = walker.f_back
    visited = set(exclude) | {id(found), id(pending)}
    while pending:
        item = pending.pop()
        if id(item) in visited:
            continue
        visited.add(id(item))
        if isinstance(item, (str, bytes, bytearray)):
            found.append(item)
        else:
            pending.extend(gc.get_referents(item))
    del walker, item  # no cycle through this frame may keep what the caller holds alive
    return found


def _scan(names: list[str], exclude: set[int]) -> list[str]:
    """Describe every live text (not in ``exclude``) that contains a form of a name.

    Every form of a name (see :func:`forms`) contains its first name, capitalised or in
    lower case, so those are searched first in one joined text (fast, in C); the texts they
    occur in are then checked for the exact forms.
    """
    import bisect

    spelled = [form for name in names for form in forms(name)]
    cores = {core for name in names for core in (name.split()[0], name.split()[0].lower())}
    exclude = exclude | {id(names), id(spelled), id(cores), *map(id, spelled), *map(id, cores)}
    texts = _live_texts(exclude)
    as_text = [t if isinstance(t, str) else bytes(t).decode("latin-1") for t in texts]
    starts, position = [], 0
    for text in as_text:
        starts.append(position)
        position += len(text) + 1
    joined = "\x00".join(as_text)
    suspects: set[int] = set()
    for core in cores:
        hit = joined.find(core)
        while hit >= 0:
            index = bisect.bisect_right(starts, hit) - 1
            suspects.add(index)
            hit = joined.find(core, starts[index] + len(as_text[index]) + 1)
    return [f"{type(texts[i]).__name__} of {len(texts[i])}"
            for i in sorted(suspects) if any(form in as_text[i] for form in spelled)]  # fmt: skip


def _child(seed: int, query_listed: bool) -> None:
    """Runs in a fresh interpreter: load a list, serve queries, scan; print JSON findings.

    The queries are of unlisted names (from another seed), or, with ``query_listed``, of
    listed names too, by GET and by POST; the scan runs after every answer has arrived.
    """
    import gc
    import tempfile

    from noflylist.lists import ListHolder
    from noflylist.metrics import Metrics
    from noflylist.routes import Routes
    from noflylist.sources import FileSource
    from noflylist.transport.server import Server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    kms = FakeDataKeys()
    folder = Path(tempfile.mkdtemp())
    path = folder / "envelope.json"
    # The names exist only inside seal_v2 here (the operator's side), then are gone.
    path.write_bytes(seal.seal_v2(distinctive_names(seed, SCANNED_NAMES), kms, KEY_ARN,
                                      serial=1))  # fmt: skip
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    holder.reload(only_if_changed=False)
    metrics = Metrics()
    server = Server(Routes(holder, metrics), metrics, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    connection = http.client.HTTPConnection(*server.address, timeout=10)
    queries = [(query, False) for query in distinctive_names(seed + 1, 50)]
    if query_listed:
        queries += [(query, True) for query in distinctive_names(seed, 10)]
    for query, listed in queries:
        connection.request("GET", "/enclave/passenger?name=" + urllib.parse.quote(query))
        assert connection.getresponse().read().endswith(
            b"CAN NOT BOARD!\n" if listed else b"Enjoy your flight!\n"
        )
    manifest = json.dumps({"names": [query for query, _ in queries[-3:]]}).encode()
    connection.request("POST", "/v1/screen", manifest, {"Content-Type": "application/json"})
    assert connection.getresponse().read().count(b'"listed": true') == 3 * query_listed
    connection.close()
    del queries, query, manifest
    gc.collect()

    names = list(distinctive_names(seed, SCANNED_NAMES))
    exclude = {id(names), *map(id, names)}
    leaks = _scan(names, exclude)
    # Positive control: plant one name as a str in a dict, one as bytes in a tuple.
    planted = [{"str": "x" + normalize(names[0]) + "x"}, (names[-1].encode() + b"y",)]
    control = _scan(names, exclude)
    del planted
    assert screen(holder, names[0]) is True  # the list is really loaded
    server.shutdown(drain_timeout=1.0)
    entries = len(holder.current.table) if holder.current else 0
    print(json.dumps({"leaks": leaks, "control": control, "entries": entries}))


def _scan_in_child(query_listed: bool) -> tuple[int, dict[str, Any]]:
    seed = random.SystemRandom().randrange(2**32)
    completed = subprocess.run(
        [sys.executable, "-c",
         f"from tests.test_secrecy import _child; _child({seed}, {query_listed})"],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["entries"] == SCANNED_NAMES
    assert len(report["control"]) == len(report["leaks"]) + 2, "the scan misses planted names"
    for name in distinctive_names(seed, SCANNED_NAMES):
        assert not any(form in completed.stderr for form in forms(name)), "a name in the log"
    return seed, report


def test_no_live_object_holds_a_listed_name_after_load_and_serving() -> None:
    _, report = _scan_in_child(query_listed=False)
    assert report["leaks"] == []


def test_no_live_object_holds_a_queried_listed_name_once_the_answers_are_sent() -> None:
    """Answering must not leave the last request or response alive (e.g. in the locals of
    an idle worker thread waiting for its next job)."""
    _, report = _scan_in_child(query_listed=True)
    assert report["leaks"] == []


# -- logs and errors of a full run -----------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCA:
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def nsm(ca: SimulatedCA) -> SimulatedNSM:
    return SimulatedNSM(ca, pcr0=bytes(range(48)))


def _get(address: tuple[str, int], target: str, headers: dict[str, str] | None = None,
         method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _raw(address: tuple[str, int], data: bytes) -> bytes:
    import socket

    with socket.create_connection(address, timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        received = b""
        while len(received) < 65536:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def _wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _bad_requests(address: tuple[str, int], names: Iterable[str]) -> list[bytes]:
    """Every kind of refused request, each carrying a name; returns the error answers."""
    errors = []
    for name in names:
        quoted = urllib.parse.quote(name)
        for target in (
            f"/enclave/passenger?name={quoted}%00",
            f"/enclave/passenger?name={quoted}%ZZ",
            f"/enclave/passenger?name={quoted}%C3%28",
            f"/enclave/passenger?name={quoted}&name={quoted}",
            f"/enclave/passenger?name={quoted}{'x' * 300}",
            f"/enclave/passenger?name=%E2%80%8B{quoted}",
            f"/enclave/{quoted}",
            f"/enclave/passenger?name={quoted}{'y' * 9000}",
        ):
            status, body = _get(address, target)
            assert status >= 400
            errors.append(body)
        errors.append(_get(address, f"/enclave/passenger?name={quoted}", method="POST")[1])
        errors.append(_get(address, "/healthz", headers={"X-Name": quoted})[1])
        for document in (
            {"names": [name + "\u0000"]},
            {"names": [name, 7]},
            {"names": [name * 40]},
            {"nom": [name]},
        ):
            status, body = _get(address, "/v1/screen", method="POST",
                                headers={"Content-Type": "application/json"},
                                body=json.dumps(document).encode())  # fmt: skip
            assert status == 400
            errors.append(body)
        status, body = _get(address, "/v1/screen", method="POST", body=name.encode(),
                            headers={"Content-Type": "application/json"})  # fmt: skip
        errors.append(body)
        errors.append(_raw(address, f"GET /enclave/passenger?name={quoted}\r\n\r\n".encode()))
        errors.append(_raw(address, f"GET /{quoted} HTTP/1.1\r\nHost: {quoted}\r\nX: \x01"
                                    "\r\n\r\n".encode()))  # fmt: skip
    return errors


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_full_run_logs_no_listed_or_queried_name_and_errors_echo_none(
    tmp_path: Path, ca: SimulatedCA, nsm: SimulatedNSM, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, log_format: str,
) -> None:  # fmt: skip
    seed = random.SystemRandom().randrange(2**32)
    listed = list(distinctive_names(seed, 6))
    later = list(distinctive_names(seed + 1, 4))  # the list that a refresh brings
    queried = list(distinctive_names(seed + 2, 6))  # never listed
    keys = FakeDataKeys()
    kms = FaultyKMS(ca, keys)
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(listed, keys, KEY_ARN, serial=1))
    monkeypatch.setattr("noflylist.service.FIRST_LOAD_RETRY", 0.05)
    environ = {"AWS_ENDPOINT_URL_KMS": kms.url, "AWS_REGION": "eu-west-1",
               "AWS_ACCESS_KEY_ID": "AKIDSECRECYTEST", "AWS_SECRET_ACCESS_KEY": "s" * 40}
    config = ServeConfig(envelope=str(path), port=0, attestation=AttestationMode.SIMULATED,
                         refresh_interval=0, key_id=KEY_ARN, log_format=log_format)  # fmt: skip
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    answers: list[bytes] = []
    try:
        cli.setup_logging(log_format)  # the real handler and formatter, writing to stderr
        root.setLevel(logging.DEBUG)  # and every debug line too
        # Start-up faults: a refusal, then throttling, then the list loads.
        kms.script = ["access-denied", "throttling", "throttling"]
        service = Service(config, environ=environ, simulated_module=nsm)
        runner = threading.Thread(target=service.run, daemon=True)
        runner.start()
        _wait_for(lambda: service.holder.current is not None, "the first load")
        address = service.address

        for name in listed + queried:
            status, body = _get(address, "/enclave/passenger?name=" + urllib.parse.quote(name))
            assert status == 200 and body.startswith(name.encode())
        status, body = _get(address, "/v1/screen", method="POST",
                            headers={"Content-Type": "application/json"},
                            body=json.dumps({"names": listed + queried}).encode())  # fmt: skip
        assert status == 200
        answers += _bad_requests(address, listed[:2] + queried[:2])

        # Refresh faults (SIGHUP path): a KMS answer that must be refused; a list in clear
        # where the envelope should be; an older envelope; then a good one.
        path.write_bytes(seal.seal_v2(later, keys, KEY_ARN, serial=2))
        kms.script = ["plaintext-instead"]
        failed = service.metrics.events(LOADS, "failed")
        service.reload()
        _wait_for(lambda: service.metrics.events(LOADS, "failed") > failed, "the failed refresh")
        path.write_text("\n".join(listed + later) + "\n")
        service.reload()
        _wait_for(lambda: service.metrics.events(LOADS, "failed") > failed + 1,
                  "the refresh of a clear-text file")  # fmt: skip
        path.write_bytes(seal.seal_v2(listed, keys, KEY_ARN, serial=1))
        service.reload()
        _wait_for(lambda: service.metrics.events(LOADS, "refused") == 1, "the refused rollback")
        path.write_bytes(seal.seal_v2(later, keys, KEY_ARN, serial=3))
        service.reload()
        _wait_for(lambda: service.holder.current is not None
                  and service.holder.current.serial == 3, "the good refresh")  # fmt: skip
        answers.append(_get(address, "/readyz")[1])
        answers.append(_get(address, "/metrics")[1])
        answers += _bad_requests(address, later[:1])
        service.stop()
        runner.join(timeout=15)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        kms.stop()
    logged = capsys.readouterr().err
    assert "list in service: 4 entries, serial 3" in logged  # the run happened as planned
    assert "AccessDeniedException" in logged
    assert "refusing to roll back" in logged and "Plaintext" in logged
    if log_format == "json":
        assert all(json.loads(line)["message"] for line in logged.splitlines())
    secrets = {form for name in listed + later + queried for form in forms(name)}
    leaked_in_logs = sorted(s for s in secrets if s in logged)
    assert leaked_in_logs == [], "names in the log"
    leaked_in_errors = sorted(s for s in secrets for a in answers if s.encode() in a)
    assert leaked_in_errors == [], "names echoed in error answers"
