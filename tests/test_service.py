"""The list in service: fail closed before load, atomic swap, refused rollback, old list kept
on failure, and the refresh loop driven by polling and by SIGHUP's wake-up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.errors import EnclaveError
from noflylist import envelope
from noflylist.metrics import Metrics
from noflylist.service import LOADS, ListHolder, RollbackError, refresh_loop
from noflylist.sources import FileSource, SourceError, open_source
from tests.support.fake_kms import FakeDataKeys


def write(path: Path, kms: FakeDataKeys, names: list[str], serial: int) -> None:
    path.write_bytes(envelope.seal_v2(names, kms, "k", serial=serial))


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
    assert rig.holder.screen("foo") is None
    assert rig.holder.current is None and rig.holder.last_error
    with pytest.raises(SourceError, match="cannot read envelope file"):
        rig.holder.reload(only_if_changed=False)
    assert rig.holder.screen("foo") is None
    assert rig.metrics.events(LOADS, "failed") == 1


def test_load_then_screen(rig: Rig) -> None:
    write(rig.path, rig.kms, ["Big Bird", "cookiemonster"], serial=1)
    assert rig.holder.reload(only_if_changed=False) is True
    assert rig.holder.screen("bigbird") is True
    assert rig.holder.screen("  COOKIE monster ") is True
    assert rig.holder.screen("foo") is False
    assert rig.holder.current is not None and rig.holder.current.serial == 1
    assert rig.holder.current.entries == 2
    assert "noflylist_list_entries 2.0" in rig.metrics.render()


def test_newer_serial_replaces_older_is_refused_and_old_list_stays(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=5)
    rig.holder.reload(only_if_changed=False)
    write(rig.path, rig.kms, ["ernie"], serial=6)
    assert rig.holder.reload(only_if_changed=True) is True
    assert rig.holder.screen("ernie") is True and rig.holder.screen("bert") is False
    write(rig.path, rig.kms, ["bert"], serial=4)
    with pytest.raises(RollbackError, match="serial 4 is not newer than serial 6"):
        rig.holder.reload(only_if_changed=True)
    write(rig.path, rig.kms, ["bert"], serial=6)
    with pytest.raises(RollbackError):
        rig.holder.reload(only_if_changed=True)
    assert rig.holder.screen("ernie") is True and rig.holder.screen("bert") is False
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
    with caplog.at_level(logging.ERROR), pytest.raises(EnclaveError):
        rig.holder.reload(only_if_changed=True)
    assert rig.holder.screen("bert") is True
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
    assert rig.holder.screen("bert") is True and rig.holder.screen("ernie") is False
    assert rig.holder.current is not None and rig.holder.current.serial == 1
    assert rig.metrics.events(LOADS, "failed") == 1


def test_a_v2_list_cannot_be_replaced_by_a_fernet_envelope(rig: Rig) -> None:
    write(rig.path, rig.kms, ["bert"], serial=1)
    rig.holder.reload(only_if_changed=False)
    rig.path.write_bytes(envelope.seal_fernet(["ernie"], rig.kms, "k"))
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
            if rig.holder.screen("ernie"):
                break
            threading.Event().wait(0.01)
        assert rig.holder.screen("ernie") is True
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
    with pytest.raises(EnclaveError, match="IncorrectKeyException"):
        pinned.reload(only_if_changed=False)
    assert pinned.screen("bert") is None
