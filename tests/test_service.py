"""The list in service: fail closed before load, atomic swap, refused rollback, old list kept
on failure, the refresh loop driven by polling and by SIGHUP's wake-up, and supervision: an
exception of any type is counted and shown, by type and place only, and survived."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.errors import NoflylistError
from noflylist import envelope
from noflylist.lists import (
    LOADS,
    ListHolder,
    LoadError,
    RollbackError,
    refresh_loop,
    where_raised,
)
from noflylist.metrics import Metrics
from noflylist.sources import FileSource, SourceError, open_source
from noflylist.tools import seal
from tests.support.fake_kms import FakeDataKeys
from tests.support.screening import screen


def write(path: Path, kms: FakeDataKeys, names: list[str], serial: int) -> None:
    path.write_bytes(seal.seal_v2(names, kms, "k", serial=serial))


@dataclass
class Rig:
    path: Path
    kms: FakeDataKeys
    metrics: Metrics
    holder: ListHolder


@pytest.fixture()
def rig(tmp_path: Path) -> Rig:
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    metrics = Metrics()
    return Rig(path, kms, metrics, ListHolder(FileSource(str(path)), kms, metrics))


def test_nothing_is_cleared_before_a_list_is_loaded(rig: Rig) -> None:
    assert screen(rig.holder, "foo") is None
    assert rig.holder.current is None and rig.holder.last_error
    with pytest.raises(SourceError, match="cannot read envelope file"):
        rig.holder.reload(only_if_changed=False)
    assert screen(rig.holder, "foo") is None
    assert rig.metrics.events(LOADS, "failed") == 1


def test_load_then_screen(rig: Rig) -> None:
    write(rig.path, rig.kms, ["Big Bird", "cookiemonster"], serial=1)
    assert rig.holder.reload(only_if_changed=False) is True
    assert screen(rig.holder, "bigbird") is True
    assert screen(rig.holder, "  COOKIE monster ") is True
    assert screen(rig.holder, "foo") is False
    assert rig.holder.current is not None and rig.holder.current.serial == 1
    assert rig.holder.current.entries == 2
    assert "noflylist_list_entries 2.0" in rig.metrics.render()


def test_newer_serial_replaces_older_is_refused_and_old_list_stays(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=5)
    rig.holder.reload(only_if_changed=False)
    write(rig.path, rig.kms, ["ernie"], serial=6)
    assert rig.holder.reload(only_if_changed=True) is True
    assert screen(rig.holder, "ernie") is True and screen(rig.holder, "bert") is False
    write(rig.path, rig.kms, ["bert"], serial=4)
    with pytest.raises(RollbackError, match="serial 4 is not newer than serial 6"):
        rig.holder.reload(only_if_changed=True)
    write(rig.path, rig.kms, ["bert"], serial=6)
    with pytest.raises(RollbackError):
        rig.holder.reload(only_if_changed=True)
    assert screen(rig.holder, "ernie") is True and screen(rig.holder, "bert") is False
    assert rig.metrics.events(LOADS, "refused") == 2


def test_unchanged_envelope_is_not_decrypted_again(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    assert rig.holder.reload(only_if_changed=True) is False
    assert rig.holder.reload(only_if_changed=False) is False  # forced, but the same bytes
    assert rig.kms.decrypt_calls == 1
    assert rig.metrics.events(LOADS, "unchanged") == 2


def test_a_broken_new_envelope_keeps_the_old_list(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    rig.path.write_bytes(b'{"format": "noflylist-envelope-v2"}')
    with caplog.at_level(logging.ERROR), pytest.raises(NoflylistError):
        rig.holder.reload(only_if_changed=True)
    assert screen(rig.holder, "bert") is True
    assert "keeping the list in service" in caplog.text
    assert "bert" not in caplog.text


def test_a_list_that_fails_midway_through_its_names_keeps_the_old_list(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Names stream from the decrypted text into the table, so a failure found at the end of
    # the list (an entry count that does not match) arrives after the build has begun.
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    write(rig.path, rig.kms, ["ernie", "elmo"], serial=2)
    real_decrypt = envelope.decrypt
    yielded: list[str] = []

    def fails_after_the_names(*args: object, **kwargs: object) -> object:
        for name in real_decrypt(*args, **kwargs):  # type: ignore[arg-type]
            yielded.append(name)
            yield name
        raise envelope.EnvelopeError("envelope says 3 entries but its list has 2")

    monkeypatch.setattr(envelope, "decrypt", fails_after_the_names)
    with pytest.raises(envelope.EnvelopeError, match="3 entries"):
        rig.holder.reload(only_if_changed=True)
    assert yielded == ["ernie", "elmo"]
    assert screen(rig.holder, "bert") is True and screen(rig.holder, "ernie") is False
    assert rig.holder.current is not None and rig.holder.current.serial == 1
    assert rig.metrics.events(LOADS, "failed") == 1


def test_a_v2_list_cannot_be_replaced_by_a_fernet_envelope(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    rig.path.write_bytes(seal.seal_fernet(["ernie"], rig.kms, "k"))
    with pytest.raises(RollbackError, match="no serial"):
        rig.holder.reload(only_if_changed=True)


def test_refresh_loop_reloads_when_woken_and_stops(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=refresh_loop, args=(rig.holder, 60.0, stop, wake))
    thread.start()
    try:
        write(rig.path, rig.kms, ["ernie"], serial=2)
        wake.set()  # what SIGHUP does
        for _ in range(200):
            if screen(rig.holder, "ernie"):
                break
            threading.Event().wait(0.01)
        assert screen(rig.holder, "ernie") is True
    finally:
        stop.set()
        wake.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_open_source_picks_by_location(tmp_path: Path) -> None:
    assert isinstance(
        open_source(str(tmp_path / "e.json"), region=None, credentials=None), FileSource
    )
    with pytest.raises(SourceError, match="needs AWS credentials"):
        open_source("s3://b/k", region=None, credentials=None)
    with pytest.raises(SourceError, match="unsupported envelope location"):
        open_source("ftp://host/e.json", region=None, credentials=None)
    with pytest.raises(SourceError, match="must be https"):
        open_source("https://", region=None, credentials=None)


def test_a_pinned_key_id_is_what_kms_is_asked_for(tmp_path: Path) -> None:
    """With --key-id, an envelope sealed under any other key is refused by KMS."""
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    write(path, kms, ["bert"], serial=1)
    pinned = ListHolder(FileSource(str(path)), kms, Metrics(), pinned_key_id="alias/other")
    with pytest.raises(NoflylistError, match="IncorrectKeyException"):
        pinned.reload(only_if_changed=False)
    assert screen(pinned, "bert") is None


# -- supervision: whatever a load raises is counted, shown, and survived ---------------------

#: A listed name that an injected exception's message quotes, as a foreign exception's
#: message may quote its input: it must reach no log line, error or status.
QUOTED = "Oscar the Grouch"


def hostile_to_todays_parser(kms: FakeDataKeys) -> dict[str, bytes]:
    """Envelopes that once made :func:`envelope.parse` raise something other than
    EnvelopeError (RecursionError, ValueError). Whether the parser now refuses them as its
    own error or not, a load of them must fail closed and be counted."""
    valid = json.loads(seal.seal_v2(["bert"], kms, "k", serial=9))
    valid["serial"] = "SERIAL"
    huge_serial = json.dumps(valid).replace('"SERIAL"', "9" * 5000).encode()
    return {"deep-nesting": b"[" * 100_000 + b"]" * 100_000, "huge-serial": huge_serial}


class Raising:
    """A source or decryptor whose next calls raise ``errors`` in turn, then delegate."""

    def __init__(self, inner: object, errors: list[BaseException]) -> None:
        self.inner, self.errors = inner, errors
        self.description, self.pollable = "raising source", True

    def fetch(self, *, unless_version: str | None = None) -> object:
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.fetch(unless_version=unless_version)  # type: ignore[attr-defined]

    def decrypt(self, blob: bytes, **kwargs: object) -> bytes:
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.decrypt(blob, **kwargs)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("kind", ["deep-nesting", "huge-serial"])
def test_an_envelope_that_breaks_the_parser_fails_closed_is_counted_and_the_old_list_stays(
    rig: Rig, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    rig.path.write_bytes(hostile_to_todays_parser(rig.kms)[kind])
    with caplog.at_level(logging.INFO), pytest.raises(NoflylistError):
        rig.holder.reload(only_if_changed=True)
    assert screen(rig.holder, "bert") is True and rig.holder.current is not None
    assert rig.metrics.events(LOADS, "failed") == 1
    status = rig.holder.status
    assert status.outcome == "failed" and status.failures_in_a_row == 1 and status.error
    assert "keeping the list in service" in caplog.text
    assert "9999" not in caplog.text and "[[[" not in caplog.text
    write(rig.path, rig.kms, ["bert", "ernie"], serial=2)
    assert rig.holder.reload(only_if_changed=True) is True
    assert screen(rig.holder, "ernie") is True and rig.holder.status.failures_in_a_row == 0


@pytest.mark.parametrize(
    "error", [RuntimeError(QUOTED), RecursionError(QUOTED), ValueError(QUOTED), KeyError(QUOTED)],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("where", ["source", "decryptor"])
def test_a_foreign_exception_is_a_load_error_naming_its_type_and_place_never_its_message(
    rig: Rig, where: str, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    source = Raising(FileSource(str(rig.path)), [error] if where == "source" else [])
    decryptor = Raising(rig.kms, [error] if where == "decryptor" else [])
    holder = ListHolder(source, decryptor, rig.metrics)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO), pytest.raises(LoadError) as raised:
        holder.reload(only_if_changed=False)
    message = str(raised.value)
    assert f"unexpected {type(error).__name__} at tests/test_service.py:" in message
    assert raised.value.__context__ is None, "the failure must not keep the frames alive"
    assert holder.current is None and screen(holder, "bert") is None
    assert rig.metrics.events(LOADS, "failed") == 1
    assert holder.last_error == message and holder.status.outcome == "failed"
    assert message in caplog.text and "no list in service" in caplog.text
    assert QUOTED not in caplog.text and QUOTED not in rig.metrics.render()
    assert holder.reload(only_if_changed=False) is True  # the next attempt is an ordinary one
    assert screen(holder, "bert") is True and holder.last_error is None


def test_where_raised_names_the_innermost_place_and_the_innermost_place_of_ours() -> None:
    try:
        json.loads(b"[" * 100_000)
    except RecursionError as exc:
        text = where_raised(exc)
    assert re.fullmatch(r"RecursionError at json/\w+\.py:\d+ \(from tests/test_service\.py:\d+\)",
                        text), text  # fmt: skip
    assert where_raised(ValueError(QUOTED)) == "ValueError"  # never raised: no place


def test_the_refresh_loop_survives_an_exception_that_escapes_reload(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even a bug outside reload's own boundary does not end the loop: it is counted and
    shown, and the next wake-up loads the next list."""
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    real_reload = rig.holder.reload
    escapes = [RecursionError(QUOTED), RuntimeError(QUOTED)]

    def reload(*, only_if_changed: bool) -> bool:
        if escapes:
            raise escapes.pop(0)
        return real_reload(only_if_changed=only_if_changed)

    monkeypatch.setattr(rig.holder, "reload", reload)
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=refresh_loop, args=(rig.holder, 60.0, stop, wake))
    thread.start()
    try:
        write(rig.path, rig.kms, ["ernie"], serial=2)
        for expected_failures in (1, 2):
            wake.set()
            wait_for(lambda n=expected_failures: rig.metrics.events(LOADS, "failed") == n)
            assert thread.is_alive() and screen(rig.holder, "bert") is True
            assert "in the refresh loop" in (rig.holder.last_error or "")
        wake.set()
        wait_for(lambda: screen(rig.holder, "ernie") is True)
    finally:
        stop.set()
        wake.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert "unexpected RecursionError at tests/test_service.py:" in caplog.text
    assert QUOTED not in caplog.text


def test_load_state_gauges_show_the_last_outcome_its_time_and_the_list_age(rig: Rig) -> None:
    def gauge(name: str) -> float:
        return float(re.findall(rf"^{name} (\S+)$", rig.metrics.render(), re.M)[0])

    assert gauge("noflylist_list_age_seconds") == -1.0
    assert gauge("noflylist_list_last_load_timestamp_seconds") == 0.0
    assert gauge("noflylist_list_last_load_success") == 0.0
    before = time.time()
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    assert gauge("noflylist_list_last_load_success") == 1.0
    loaded = gauge("noflylist_list_last_success_timestamp_seconds")
    assert before <= loaded == gauge("noflylist_list_last_load_timestamp_seconds") <= time.time()
    assert 0.0 <= gauge("noflylist_list_age_seconds") < 5.0
    rig.path.write_bytes(b"not an envelope")
    for attempt in (1, 2):
        with pytest.raises(NoflylistError):
            rig.holder.reload(only_if_changed=True)
        assert gauge("noflylist_list_failures_in_a_row") == attempt
    assert gauge("noflylist_list_last_load_success") == 0.0
    assert gauge("noflylist_list_last_load_timestamp_seconds") >= loaded
    assert gauge("noflylist_list_last_success_timestamp_seconds") == loaded  # stale since
    assert gauge("noflylist_list_loader_running") == 1.0
    write(rig.path, rig.kms, ["bert"], serial=2)
    rig.holder.reload(only_if_changed=True)
    assert gauge("noflylist_list_failures_in_a_row") == 0.0
    assert gauge("noflylist_list_last_success_timestamp_seconds") > loaded


def test_an_opener_is_called_by_each_load_until_it_succeeds_then_never_again(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    calls: list[int] = []

    def opener() -> tuple[FileSource, FakeDataKeys]:
        calls.append(1)
        if len(calls) < 3:
            raise NoflylistError("no AWS region yet: the instance metadata service is not up")
        return FileSource(str(rig.path)), rig.kms

    holder = ListHolder(None, None, rig.metrics, opener=opener)
    assert holder.source is None
    for _ in range(2):
        with pytest.raises(NoflylistError, match="no AWS region yet"):
            holder.reload(only_if_changed=False)
    assert holder.last_error and "no AWS region yet" in holder.last_error
    assert rig.metrics.events(LOADS, "failed") == 2 and screen(holder, "bert") is None
    assert holder.reload(only_if_changed=False) is True
    assert holder.reload(only_if_changed=False) is False
    assert len(calls) == 3 and holder.source is not None and screen(holder, "bert") is True


def test_a_holder_needs_a_source_and_a_decryptor_or_an_opener_not_both(rig: Rig) -> None:
    source = FileSource(str(rig.path))
    for source_, decryptor, opener in [
        (None, None, None), (source, None, None), (None, rig.kms, None),
        (source, rig.kms, lambda: (source, rig.kms)),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match="or an opener"):
            ListHolder(source_, decryptor, rig.metrics, opener=opener)


def test_a_stopped_loader_is_recorded_with_its_cause(rig: Rig) -> None:
    try:
        raise SystemExit(QUOTED)
    except SystemExit as exc:
        rig.holder.note_loader_stopped("the loader thread", exc)
    stopped = rig.holder.status.loader_stopped or ""
    assert "the loader thread died with SystemExit at tests/test_service.py:" in stopped
    assert "restarted" in stopped and QUOTED not in stopped
    assert "noflylist_list_loader_running 0.0" in rig.metrics.render()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
