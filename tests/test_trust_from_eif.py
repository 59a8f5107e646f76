"""``noflylist policy --from-eif FILE`` pins, and ``noflylist check --expect-eif FILE`` expects,
PCR0, PCR1 and PCR2 of the EIF (or Enclaver release image) itself, as ``noflylist measure``
reads them.

The EIFs come from the independent writer (tests/support/eif_writer.py) and their PCRs are
computed here from the formula (``SHA-384(0^48 || SHA-384(sections))``), not by our reader.
``check`` runs against a real loopback Server whose documents the simulated NSM signs, with
its PCR bank set to the EIF's measurements as the Nitro hypervisor sets a real enclave's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.wire import ATTESTATION_PATH
from noflylist_simulator.ca import load_or_create
from noflylist_simulator.nsm import SimulatedNSM
from tests.support import eif_images as images
from tests.support import eif_writer as w
from tests.support.fake_kms import FakeDataKeys
from tests.test_policy import base_args
from tests.test_trust import _Service, _Signing, run

KERNEL, CMDLINE = b"kernel for the trust tests" * 40, b"console=ttyS0"
BOOT, APP = b"init and nsm.ko" * 20, b"the application ramdisk" * 50


def extended(data: bytes) -> bytes:
    return hashlib.sha384(bytes(48) + hashlib.sha384(data).digest()).digest()


def write_eif(path: Path, app: bytes = APP) -> dict[int, bytes]:
    """An EIF from the independent writer; return its PCR0..2 by the formula."""
    pieces = w.nitro_layout(KERNEL, CMDLINE, [BOOT, app], metadata=w.metadata_json())
    path.write_bytes(w.eif_bytes(pieces))
    return {
        0: extended(KERNEL + CMDLINE + BOOT + app),
        1: extended(KERNEL + CMDLINE + BOOT),
        2: extended(app),
    }


def conditions(out: str) -> dict[str, object]:
    document = json.loads(out)
    statement = next(
        s for s in document["Statement"] if s["Sid"] == "EnclaveDecryptWithAttestedImage"
    )
    return dict(statement["Condition"]["StringEqualsIgnoreCase"])


# -- policy --from-eif -----------------------------------------------------------------------


def test_policy_from_eif_pins_pcr0_pcr1_and_pcr2_of_the_eif(tmp_path, capsys):
    pcrs = write_eif(tmp_path / "app.eif")
    status, out, err = run(base_args("--from-eif", str(tmp_path / "app.eif")), capsys)
    assert status == 0, err
    assert conditions(out) == {
        f"kms:RecipientAttestation:PCR{index}": value.hex() for index, value in pcrs.items()
    }


def test_policy_from_a_release_image_pins_what_its_eif_gives(tmp_path, capsys):
    write_eif(tmp_path / "app.eif")
    layer = images.layer_tar(
        [
            ("dir", "enclave"),
            ("file", "enclave/application.eif", (tmp_path / "app.eif").read_bytes()),
            ("file", "enclave/enclaver.yaml", b"version: v1\n"),
        ]
    )
    images.write_layout(tmp_path / "release", [layer], compress=True)
    from_eif = run(base_args("--from-eif", str(tmp_path / "app.eif")), capsys)
    from_release = run(base_args("--from-eif", str(tmp_path / "release")), capsys)
    assert from_release == from_eif and from_eif[0] == 0


def test_policy_from_eif_twice_accepts_either_image_for_a_rolling_deploy(tmp_path, capsys):
    old = write_eif(tmp_path / "old.eif")
    new = write_eif(tmp_path / "new.eif", APP + b"one more byte")
    old_eif, new_eif = str(tmp_path / "old.eif"), str(tmp_path / "new.eif")
    argv = base_args("--from-eif", old_eif, "--from-eif", new_eif)
    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert conditions(out) == {
        "kms:RecipientAttestation:PCR0": [old[0].hex(), new[0].hex()],
        "kms:RecipientAttestation:PCR1": old[1].hex(),  # the same boot blobs: one value
        "kms:RecipientAttestation:PCR2": [old[2].hex(), new[2].hex()],
    }


def test_policy_from_a_corrupt_eif_is_refused_naming_the_flag_and_the_cause(tmp_path, capsys):
    write_eif(tmp_path / "app.eif")
    data = bytearray((tmp_path / "app.eif").read_bytes())
    data[-5] ^= 1
    (tmp_path / "app.eif").write_bytes(bytes(data))
    status, out, err = run(base_args("--from-eif", str(tmp_path / "app.eif")), capsys)
    assert status == 1 and out == ""
    assert err.startswith("noflylist policy: --from-eif: ") and "CRC" in err
    status, _, err = run(base_args("--from-eif", str(tmp_path / "none.eif")), capsys)
    assert status == 1 and "--from-eif" in err and "none.eif does not exist" in err


# -- check --expect-eif ----------------------------------------------------------------------


@pytest.fixture()
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Start a Server whose simulated NSM reports the PCRs given (PCR3.. as the simulator's)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    kms = FakeDataKeys()
    envelope = tmp_path / "envelope.json"
    envelope.write_bytes(seal.seal_v2(["Big Bird"], kms, "k", serial=7))
    holder = ListHolder(FileSource(str(envelope)), kms, Metrics())
    holder.reload(only_if_changed=False)
    ca_folder = tmp_path / "ca"
    ca = load_or_create(ca_folder)
    started: list[_Service] = []

    def start(pcrs: dict[int, bytes]) -> _Service:
        module = SimulatedNSM(ca, pcr0=pcrs[0])
        # The simulator is given PCR0 only; the hypervisor measures PCR1 and PCR2 too.
        for index, value in pcrs.items():
            module._pcrs[index] = value
        route = _Signing(module, holder)
        started.append(_Service(holder, route, ca_folder / "root.pem"))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def check(service: _Service, *extra: str) -> list[str]:
    return ["check", service.url, "Big Bird", "--unsafe-root", str(service.root_pem), *extra]


def test_check_expect_eif_verifies_pcr0_1_2_of_the_eif_then_asks(service, tmp_path, capsys):
    pcrs = write_eif(tmp_path / "app.eif")
    running = service(pcrs)
    status, out, err = run(check(running, "--expect-eif", str(tmp_path / "app.eif")), capsys)
    assert status == 0, err
    assert f"  PCR0 {pcrs[0].hex()}\n" in out
    for index in (0, 1, 2):
        assert f"  PCR{index} matches" in out
    assert "answer: Big Bird is on the no-fly list" in out
    assert running.answered("passenger") == 1


def test_check_expect_eif_refuses_an_enclave_whose_pcr1_differs_and_sends_no_query(
    service, tmp_path, capsys
):
    pcrs = write_eif(tmp_path / "app.eif")
    running = service({0: pcrs[0], 2: pcrs[2]})  # PCR1: the simulator's own, another blob set
    status, out, err = run(check(running, "--expect-eif", str(tmp_path / "app.eif")), capsys)
    assert status == 1 and "answer:" not in out
    assert "step 5 (caller checks): PCR1 mismatch" in err
    assert running.answered(ATTESTATION_PATH) == 1 and running.answered("passenger") == 0


def test_check_with_expect_pcr_disagreeing_with_expect_eif_asks_nothing(service, tmp_path, capsys):
    pcrs = write_eif(tmp_path / "app.eif")
    running = service(pcrs)
    other = extended(b"another image").hex()
    argv = check(running, "--expect-eif", str(tmp_path / "app.eif"), "--expect-pcr", f"0={other}")
    status, _, err = run(argv, capsys)
    assert status == 1 and "--expect-pcr 0= is not PCR0 of --expect-eif" in err
    assert running.answered(ATTESTATION_PATH) == 0
    agreeing = check(running, "--expect-eif", str(tmp_path / "app.eif"), "--expect-pcr")
    assert run([*agreeing, f"2={pcrs[2].hex()}"], capsys)[0] == 0


def test_check_without_expect_pcr_or_expect_eif_is_a_usage_error_naming_both(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["check", "http://127.0.0.1:9", "Big Bird"], capsys)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--expect-pcr" in err and "--expect-eif" in err
