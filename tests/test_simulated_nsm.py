"""The simulated NSM and its throwaway CA: real-format documents that verify only against it.

Layout claims are checked against three real Nitro documents (tests/vectors/nitro/, from
evervault's test data); signatures are checked both by ``noflylist.client.attestation`` and by an
independent path (cbor2 builds the Sig_structure, ``cryptography`` verifies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

import enclave
import noflylist
from enclave import cbor
from enclave.nsm import NSMDeviceError, NSMError, SecureModule
from noflylist.client import attestation
from noflylist_simulator import ca as simulated_ca
from noflylist_simulator.ca import SimulatedCA, SimulatedCAError, load_or_create
from noflylist_simulator.nsm import SimulatedNSM, measure_pcr0
from tests.conftest import VECTORS

NITRO = VECTORS / "nitro"
EXPECTED = json.loads((NITRO / "expected.json").read_text())
PRODUCTION = "production-2023-01-18.cbor"
DEBUG = "debug-2022-10-12.cbor"


def real(name: str) -> tuple[list[Any], dict[str, Any]]:
    """A real Nitro document, decoded with our CBOR: the COSE array and its payload map."""
    envelope = cbor.decode((NITRO / name).read_bytes())
    assert isinstance(envelope, list)
    payload = cbor.decode(envelope[2])
    assert isinstance(payload, dict)
    return envelope, payload  # type: ignore[return-value]


def decoded(document: bytes) -> tuple[list[Any], dict[str, Any]]:
    envelope = cbor.decode(document)
    assert isinstance(envelope, list)
    payload = cbor.decode(envelope[2])
    assert isinstance(payload, dict)
    return envelope, payload  # type: ignore[return-value]


def nonzero_pcrs(payload: dict[str, Any]) -> set[int]:
    return {index for index, value in payload["pcrs"].items() if any(value)}


@pytest.fixture
def ca(tmp_path: Path) -> SimulatedCA:
    return load_or_create(tmp_path / "state")


@pytest.fixture
def simulated(ca: SimulatedCA) -> SimulatedNSM:
    return SimulatedNSM(ca)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedCA, SimulatedNSM]:
    """One CA and simulator for the generated examples (making a CA writes and syncs files)."""
    ca = load_or_create(tmp_path_factory.mktemp("shared") / "state")
    return ca, SimulatedNSM(ca)


# -- the document's format ---------------------------------------------------------------------


def test_envelope_is_an_untagged_es384_cose_sign1_like_real_documents(
    simulated: SimulatedNSM,
) -> None:
    document = simulated.attestation()
    envelope, _ = decoded(document)
    for name in EXPECTED:
        real_bytes = (NITRO / name).read_bytes()
        real_envelope, _ = real(name)
        assert document[0] == real_bytes[0] == 0x84  # array(4), no tag 18
        assert envelope[0] == real_envelope[0] == bytes.fromhex("a1013822")  # {1: -35}
        assert envelope[1] == real_envelope[1] == {}
        assert len(envelope[3]) == len(real_envelope[3]) == 96
        assert envelope[2][0] == real_envelope[2][0] == 0xA9  # map(9)


def test_payload_has_the_real_keys_order_types_and_sizes(simulated: SimulatedNSM) -> None:
    _, real_payload = real(PRODUCTION)
    # Give the simulator the same optional inputs the real document carries.
    _, payload = decoded(
        simulated.attestation(user_data=real_payload["user_data"], nonce=real_payload["nonce"])
    )
    assert list(payload) == list(real_payload) == EXPECTED[PRODUCTION]["payload_keys_in_order"]
    for key in payload:
        assert type(payload[key]) is type(real_payload[key]), key
    assert payload["digest"] == real_payload["digest"] == "SHA384"
    assert list(payload["pcrs"]) == list(real_payload["pcrs"]) == list(range(16))
    for pcrs in (payload["pcrs"], real_payload["pcrs"]):
        assert {len(value) for value in pcrs.values()} == {48}
    assert all(isinstance(c, bytes) for c in payload["cabundle"])
    for field in ("public_key", "user_data", "nonce"):
        assert payload[field] == real_payload[field]
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert abs(payload["timestamp"] - now_ms) < 60_000


def test_cabundle_is_root_first_and_the_certificate_is_issued_by_its_last_entry(
    simulated: SimulatedNSM, ca: SimulatedCA
) -> None:
    _, payload = decoded(simulated.attestation())
    bundle = [x509.load_der_x509_certificate(der) for der in payload["cabundle"]]
    leaf = x509.load_der_x509_certificate(payload["certificate"])
    assert bundle[0] == ca.root and bundle[0].subject == bundle[0].issuer
    for lower, upper in zip([*bundle[1:], leaf], bundle, strict=True):
        lower.verify_directly_issued_by(upper)
    _, real_payload = real(PRODUCTION)
    real_root = x509.load_der_x509_certificate(real_payload["cabundle"][0])
    assert real_root.subject == real_root.issuer  # the real bundle is root first as well


def test_signature_verifies_independently_with_cbor2_and_the_leaf_key(
    simulated: SimulatedNSM,
) -> None:
    document = simulated.attestation(nonce=b"n" * 40)
    protected, _, payload, signature = cbor2.loads(document)
    leaf = x509.load_der_x509_certificate(cbor2.loads(payload)["certificate"])
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])  # RFC 9052 §4.4
    der = encode_dss_signature(
        int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    )
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(der, to_be_signed, ec.ECDSA(hashes.SHA384()))


# -- verification with noflylist.client.attestation ----------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    public_key=st.none() | st.binary(min_size=1, max_size=1024),
    user_data=st.none() | st.binary(max_size=512),
    nonce=st.none() | st.binary(max_size=512),
)
def test_documents_verify_against_the_simulator_root_with_the_fields_given(
    shared: tuple[SimulatedCA, SimulatedNSM],
    public_key: bytes | None,
    user_data: bytes | None,
    nonce: bytes | None,
) -> None:
    ca, simulated = shared
    module: SecureModule = simulated
    document = module.attestation(public_key=public_key, user_data=user_data, nonce=nonce)
    result = attestation.verify(document, unsafe_root=ca.root, nonce=nonce)
    assert (result.public_key, result.user_data, result.nonce) == (public_key, user_data, nonce)
    assert result.pcrs[0] == module.describe_pcr(0).data
    assert result.certificate == ca.signing_leaf().certificate


def test_documents_do_not_verify_against_the_aws_root(simulated: SimulatedNSM) -> None:
    with pytest.raises(attestation.AttestationError):
        attestation.verify(simulated.attestation())


def test_a_document_with_one_payload_byte_changed_does_not_verify(
    simulated: SimulatedNSM, ca: SimulatedCA
) -> None:
    envelope = cbor2.loads(simulated.attestation(user_data=b"A" * 16))
    envelope[2] = envelope[2].replace(b"A" * 16, b"A" * 15 + b"B")
    with pytest.raises(attestation.AttestationError, match="signature"):
        attestation.verify(cbor2.dumps(envelope), unsafe_root=ca.root)


def test_pcr0_is_the_measured_source_and_pcrs_match_describe_pcr(
    simulated: SimulatedNSM, ca: SimulatedCA
) -> None:
    result = attestation.verify(simulated.attestation(), unsafe_root=ca.root)
    assert result.pcrs[0] == measure_pcr0()
    for index in range(16):
        pcr = simulated.describe_pcr(index)
        assert (pcr.data, pcr.locked) == (result.pcrs[index], True)


# -- debug mode ------------------------------------------------------------------------------------


def test_debug_mode_zeroes_exactly_pcr0_1_2_8_like_a_real_debug_enclave(ca: SimulatedCA) -> None:
    _, normal = decoded(SimulatedNSM(ca).attestation())
    _, debug = decoded(SimulatedNSM(ca, debug=True).attestation())
    _, real_debug = real(DEBUG)
    _, real_production = real(PRODUCTION)
    assert nonzero_pcrs(debug) == nonzero_pcrs(real_debug) == {3, 4}
    assert nonzero_pcrs(normal) == nonzero_pcrs(real_production) == {0, 1, 2, 3, 4, 8}
    changed = {i for i in range(16) if normal["pcrs"][i] != debug["pcrs"][i]}
    assert changed == {0, 1, 2, 8}


def test_a_debug_document_is_refused_unless_debug_is_allowed(ca: SimulatedCA) -> None:
    document = SimulatedNSM(ca, debug=True).attestation()
    with pytest.raises(attestation.AttestationError, match="debug"):
        attestation.verify(document, unsafe_root=ca.root)
    accepted = attestation.verify(document, unsafe_root=ca.root, unsafe_allow_debug=True)
    assert accepted.pcrs[0] == bytes(48)


# -- PCR0 measures the source --------------------------------------------------------------------


@pytest.fixture
def source_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the two packages, to edit without touching the real tree."""
    ignore = shutil.ignore_patterns("__pycache__")
    copies = []
    for package in (enclave, noflylist):
        source = Path(package.__file__).parent
        copies.append(Path(shutil.copytree(source, tmp_path / "copy" / source.name, ignore=ignore)))
    return copies[0], copies[1]


def documented_measurement(*roots: Path) -> bytes:
    """The PCR0 format as measure_pcr0's docstring states it, written out independently."""
    entries = []
    for root in roots:
        for path in root.rglob("*.py"):
            relative = path.relative_to(root.parent)
            parts = relative.parts
            outside_the_image = {("noflylist", "client"), ("noflylist", "tools")}
            if "__pycache__" in parts or parts[:2] in outside_the_image:
                continue
            if any(part.startswith(".") for part in parts[:-1]):
                continue
            entries.append((relative.as_posix(), path.read_bytes()))
    digest = hashlib.sha384(b"noflylist simulated PCR0 v1\x00")
    for name, content in sorted(entries):
        digest.update(len(name.encode()).to_bytes(8, "big") + name.encode())
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


def test_pcr0_follows_the_documented_format(source_copy: tuple[Path, Path]) -> None:
    assert measure_pcr0(*source_copy) == documented_measurement(*source_copy)
    assert measure_pcr0(*source_copy) == measure_pcr0(*reversed(source_copy))


def test_editing_one_line_of_the_service_changes_pcr0(source_copy: tuple[Path, Path]) -> None:
    before = measure_pcr0(*source_copy)
    cli = source_copy[1] / "cli.py"
    original = cli.read_text()
    cli.write_text(original.replace("return 0", "return 1", 1))
    assert original != cli.read_text()
    assert measure_pcr0(*source_copy) != before
    cli.write_text(original)
    assert measure_pcr0(*source_copy) == before


def test_renaming_or_adding_a_source_file_changes_pcr0(source_copy: tuple[Path, Path]) -> None:
    before = measure_pcr0(*source_copy)
    (source_copy[1] / "cli.py").rename(source_copy[1] / "cli2.py")
    renamed = measure_pcr0(*source_copy)
    (source_copy[0] / "extra.py").write_text("")
    assert len({before, renamed, measure_pcr0(*source_copy)}) == 3


def test_the_tools_the_client_caches_and_other_files_do_not_change_pcr0(
    source_copy: tuple[Path, Path],
) -> None:
    before = measure_pcr0(*source_copy)
    for outside_the_image in ("tools", "client"):
        (source_copy[1] / outside_the_image / "__init__.py").write_text("# edited\n")
    (source_copy[0] / "__pycache__").mkdir(exist_ok=True)
    (source_copy[0] / "__pycache__" / "cached.py").write_text("x = 1\n")
    (source_copy[0] / "notes.txt").write_text("not source\n")
    assert measure_pcr0(*source_copy) == before


def test_measuring_something_that_is_not_a_folder_is_an_nsm_error(tmp_path: Path) -> None:
    with pytest.raises(NSMError, match="not a directory"):
        measure_pcr0(tmp_path / "missing")


# -- the rest of the interface -----------------------------------------------------------------


def test_the_simulator_refuses_oversized_inputs_like_the_device(simulated: SimulatedNSM) -> None:
    with pytest.raises(NSMError, match="public_key is 1025 bytes"):
        simulated.attestation(public_key=bytes(1025))
    with pytest.raises(NSMError, match="nonce is 513 bytes"):
        simulated.attestation(nonce=bytes(513))


def test_describe_pcr_has_a_32_register_bank_with_16_locked(simulated: SimulatedNSM) -> None:
    user = simulated.describe_pcr(16)
    assert (user.data, user.locked) == (bytes(48), False)
    with pytest.raises(NSMDeviceError) as caught:
        simulated.describe_pcr(32)
    assert caught.value.code == "InvalidIndex"


def test_get_random_returns_256_fresh_bytes(simulated: SimulatedNSM) -> None:
    first, second = simulated.get_random(), simulated.get_random()
    assert len(first) == len(second) == 256 and first != second


def test_every_construction_logs_a_loud_warning(
    ca: SimulatedCA, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="noflylist_simulator.nsm"):
        SimulatedNSM(ca)
        SimulatedNSM(ca, debug=True)
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "SIMULATED NSM: attestation documents prove nothing" in r.getMessage()
    ]
    assert len(warnings) == 2


# -- the throwaway CA ----------------------------------------------------------------------------


def test_the_chain_has_the_shape_of_awss(ca: SimulatedCA) -> None:
    leaf = ca.signing_leaf().certificate
    for cert in (ca.root, ca.intermediate, leaf):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    for cert in (ca.root, ca.intermediate):
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(hours=3) <= lifetime <= timedelta(hours=3, minutes=10)
    ca.intermediate.verify_directly_issued_by(ca.root)
    leaf.verify_directly_issued_by(ca.intermediate)


def test_the_chain_persists_across_loads_with_private_keys(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    first = load_or_create(folder)
    second = load_or_create(folder)
    assert (second.root, second.intermediate) == (first.root, first.intermediate)
    assert second.signing_leaf().certificate == first.signing_leaf().certificate
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    keys = sorted(p.name for p in folder.glob("*.key.pem"))
    assert keys == ["intermediate.key.pem", "leaf.key.pem", "root.key.pem"]
    for name in keys:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600


def test_the_leaf_is_renewed_and_saved_when_near_expiry(tmp_path: Path) -> None:
    folder, start = tmp_path / "state", datetime.now(UTC)
    ca = load_or_create(folder, now=start)
    leaf = ca.signing_leaf(start).certificate
    assert ca.signing_leaf(start + timedelta(hours=2)).certificate == leaf
    # One minute inside the renewal margin before the leaf's expiry.
    late = start + simulated_ca.LEAF_LIFETIME - simulated_ca.LEAF_RENEW_BEFORE
    late += timedelta(minutes=1)
    renewed = ca.signing_leaf(late).certificate
    assert renewed != leaf and renewed.not_valid_after_utc > late + timedelta(hours=2)
    renewed.verify_directly_issued_by(ca.intermediate)
    assert load_or_create(folder, now=late).signing_leaf(late).certificate == renewed


def test_the_intermediate_is_renewed_near_expiry_but_the_root_is_kept(tmp_path: Path) -> None:
    folder, start = tmp_path / "state", datetime.now(UTC)
    ca = load_or_create(folder, now=start)
    old_intermediate = ca.intermediate
    late = start + simulated_ca.INTERMEDIATE_LIFETIME - timedelta(hours=12)
    leaf = ca.signing_leaf(late).certificate
    assert ca.intermediate != old_intermediate
    assert load_or_create(folder, now=late).root == ca.root
    leaf.verify_directly_issued_by(ca.intermediate)


def test_missing_leaf_files_are_made_again(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    first = load_or_create(folder)
    (folder / "leaf.key.pem").unlink()
    second = load_or_create(folder)
    assert (
        second.root == first.root
        and second.signing_leaf().certificate != first.signing_leaf().certificate
    )


def test_an_expired_root_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    load_or_create(folder)
    later = datetime.now(UTC) + simulated_ca.ROOT_LIFETIME + timedelta(days=1)
    with pytest.raises(SimulatedCAError, match="expired: delete the folder"):
        load_or_create(folder, now=later)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    load_or_create(folder)
    os.chmod(folder / "root.key.pem", 0o644)
    with pytest.raises(SimulatedCAError, match="chmod 600"):
        load_or_create(folder)


def test_half_a_root_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    load_or_create(folder)
    (folder / "root.key.pem").unlink()
    with pytest.raises(SimulatedCAError, match="half of the simulated root"):
        load_or_create(folder)


def test_an_unreadable_root_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    load_or_create(folder)
    (folder / "root.pem").write_text("not a certificate")
    with pytest.raises(SimulatedCAError, match="not readable PEM"):
        load_or_create(folder)
