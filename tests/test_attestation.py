"""Nitro attestation verification, step by step, against real AWS documents and forged ones.

Real documents (tests/vectors/nitro, see ORIGIN.md) are long expired, so positive tests pass a
``now`` inside their leaf's three-hour window. Forged documents are built with cbor2 and
cryptography (independent of the code under test) under a throwaway P-384 PKI.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from hashlib import sha256
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noflylist.client import attestation
from noflylist.client.attestation import AttestationError, verify
from tests.conftest import VECTORS
from tests.support.stack import with_frames_left

NITRO = VECTORS / "nitro"
EXPECTED: dict[str, Any] = json.loads((NITRO / "expected.json").read_text())
PRODUCTION = sorted(name for name, e in EXPECTED.items() if not e["mode"].startswith("debug"))
DEBUG = "debug-2022-10-12.cbor"
ALL = sorted(EXPECTED)
PROTECTED_ES384 = bytes.fromhex("a1013822")  # {1: -35}
#: attestation_process.md §3.2.2.1: the fields a document must have (the rest are optional).
MANDATORY = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
AWS_ROOT = x509.load_pem_x509_certificate((NITRO / "aws_nitro_enclaves_root_G1.pem").read_bytes())
#: Throwaway PKI time: inside the first real document's window, so its payload's story holds.
FORGED_NOW = datetime(2022, 10, 13, 9, 0, tzinfo=UTC)
#: cryptography warns about the non-positive serials that mangled certificates may hold.
QUIET_SERIALS = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")


@cache
def _document(name: str) -> bytes:
    return (NITRO / name).read_bytes()


def _time(name: str) -> datetime:
    return datetime.fromisoformat(EXPECTED[name]["timestamp_utc"])


def _expected_pcrs(name: str) -> dict[int, bytes]:
    """All PCRs of a document, from expected.json: the listed non-zero ones, zeros elsewhere."""
    entry = EXPECTED[name]
    (size,) = entry["pcr_len"]
    pcrs = {index: bytes(size) for index in range(entry["pcr_count"])}
    pcrs.update({int(i): bytes.fromhex(value) for i, value in entry["pcrs_nonzero"].items()})
    return pcrs


def _payload(name: str) -> dict[str, Any]:
    """A fresh copy of a real document's payload, decoded by cbor2 (not the code under test)."""
    return dict(_decoded_payload(name))


@cache
def _decoded_payload(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = cbor2.loads(cbor2.loads(_document(name))[2])
    return payload


def _envelope(payload: bytes, signature: bytes, protected: bytes = PROTECTED_ES384) -> bytes:
    return cbor2.dumps([protected, {}, payload, signature])


def _with_payload(name: str, payload: dict[str, Any] | Any) -> bytes:
    """A real document's envelope and signature around another payload (fails by step 4)."""
    return _envelope(cbor2.dumps(payload), cbor2.loads(_document(name))[3])


# -- a throwaway P-384 PKI, made with cryptography ---------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _issue(
    common_name: str,
    issuer: Issued | None,
    *,
    ca: bool,
    path_length: int | None = None,
    digital_signature: bool = True,
    key_cert_sign: bool | None = None,
    key_usage: bool = True,
    constraints_critical: bool = True,
    curve: ec.EllipticCurve | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
    window: tuple[datetime, datetime] | None = None,
    extra: x509.ExtensionType | None = None,
    issuer_name: x509.Name | None = None,
) -> Issued:
    key = ec.generate_private_key(curve or ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = window or (FORGED_NOW - timedelta(hours=1), FORGED_NOW + timedelta(hours=3))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or (issuer.cert.subject if issuer else subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
            critical=constraints_critical,
        )
    )
    if key_usage:
        cert_sign = ca if key_cert_sign is None else key_cert_sign
        usage = x509.KeyUsage(
            digital_signature, False, False, False, False, cert_sign, cert_sign, False, False
        )
        builder = builder.add_extension(usage, critical=True)
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, algorithm or hashes.SHA384()), key)


def _sign(key: ec.EllipticCurvePrivateKey, payload: bytes, protected: bytes) -> bytes:
    """COSE ES384 by hand: cbor2 builds the Sig_structure, cryptography signs it."""
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def _forge(
    leaf: Issued,
    bundle: list[bytes],
    *,
    changes: dict[str, Any] | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
    tagged: bool = False,
) -> bytes:
    """A copy of a real payload with our chain, signed by ``signer`` (default: the leaf)."""
    payload = _payload(PRODUCTION[0])
    payload.update(certificate=leaf.der, cabundle=bundle, **(changes or {}))
    encoded = cbor2.dumps(payload)
    signature = _sign(signer or leaf.key, encoded, PROTECTED_ES384)
    message = [PROTECTED_ES384, {}, encoded, signature]
    return cbor2.dumps(cbor2.CBORTag(18, message) if tagged else message)


@pytest.fixture(scope="module")
def pki() -> tuple[Issued, Issued, Issued]:
    root = _issue("throwaway root", None, ca=True)
    intermediate = _issue("throwaway intermediate", root, ca=True, path_length=0)
    leaf = _issue("throwaway leaf", intermediate, ca=False)
    return root, intermediate, leaf


# -- real documents ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_real_document_verifies_at_its_own_time_with_fields_as_in_expected_json(
    name: str,
) -> None:
    entry = EXPECTED[name]
    real_nonce = _payload(name)["nonce"]
    result = verify(
        _document(name),
        now=_time(name),
        expected_pcrs=_expected_pcrs(name),
        nonce=real_nonce,
        unsafe_allow_debug=name == DEBUG,
    )
    assert result.module_id == entry["module_id"]
    assert result.digest == entry["digest"] == "SHA384"
    assert result.timestamp == _time(name)
    assert result.timestamp.timestamp() * 1000 == pytest.approx(entry["timestamp_ms"], abs=0.5)
    assert dict(result.pcrs) == _expected_pcrs(name)
    for field in ("public_key", "user_data", "nonce"):
        value, want = getattr(result, field), entry[field]
        if want is None:
            assert value is None
        else:
            assert len(value) == want["len"]
            if "hex" in want:
                assert value.hex() == want["hex"]
            if "sha256" in want:
                assert sha256(value).hexdigest() == want["sha256"]
    leaf = entry["leaf_cert"]
    assert result.certificate.subject.rfc4514_string() == leaf["subject"]
    assert result.certificate.not_valid_before_utc.isoformat() == leaf["not_before"]
    assert result.certificate.not_valid_after_utc.isoformat() == leaf["not_after"]
    subjects = [cert.subject.rfc4514_string() for cert in result.cabundle]
    assert subjects == entry["cabundle_subjects_in_order"]
    assert result.cabundle[0] == AWS_ROOT


@pytest.mark.parametrize("name", ALL)
def test_real_document_result_is_read_only(name: str) -> None:
    result = verify(_document(name), now=_time(name), unsafe_allow_debug=True)
    with pytest.raises(TypeError):
        result.pcrs[0] = b"\x01" * 48  # type: ignore[index]
    with pytest.raises(AttributeError):
        result.module_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ALL)
def test_real_document_is_valid_at_both_ends_of_the_leaf_window_and_not_beyond(
    name: str,
) -> None:
    leaf = EXPECTED[name]["leaf_cert"]
    start, end = (
        datetime.fromisoformat(leaf["not_before"]),
        datetime.fromisoformat(leaf["not_after"]),
    )
    for inside in (start, end):
        verify(_document(name), now=inside, unsafe_allow_debug=True)
    with pytest.raises(AttestationError, match=r"^step 3 .*not valid before"):
        verify(_document(name), now=start - timedelta(seconds=1), unsafe_allow_debug=True)
    with pytest.raises(AttestationError, match=r"^step 3 .*expired at .*fetch a fresh one"):
        verify(_document(name), now=end + timedelta(seconds=1), unsafe_allow_debug=True)


@pytest.mark.parametrize("name", ALL)
def test_real_document_is_refused_at_todays_clock_as_expired(name: str) -> None:
    with pytest.raises(AttestationError, match=r"^step 3 \(certificate chain\).*expired"):
        verify(_document(name), unsafe_allow_debug=True)


@pytest.mark.parametrize("name", ALL)
def test_independent_rfc5280_validator_agrees_on_real_chains(name: str) -> None:
    # Custom extension policies came in cryptography 45; setup.cfg asks for 47, the lock pins 48.
    from cryptography.x509 import verification
    payload = _payload(name)
    leaf = x509.load_der_x509_certificate(payload["certificate"])
    intermediates = [x509.load_der_x509_certificate(der) for der in payload["cabundle"][1:]]
    criticality = verification.Criticality.CRITICAL
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, criticality, None
    )
    for now, valid in ((_time(name), True), (datetime.now(UTC), False)):
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([AWS_ROOT]))
            .time(now)
            .extension_policies(
                ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
            theirs = True
        except verification.VerificationError:
            theirs = False
        try:
            verify(_document(name), now=now, unsafe_allow_debug=True)
            ours = True
        except AttestationError:
            ours = False
        assert ours == theirs == valid


def test_debug_document_is_refused_unless_allowed_and_allowing_it_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(AttestationError, match=r"^step 5 .*PCR0 is all zero"):
        verify(_document(DEBUG), now=_time(DEBUG))
    with caplog.at_level(logging.WARNING, logger="noflylist.client.attestation"):
        result = verify(_document(DEBUG), now=_time(DEBUG), unsafe_allow_debug=True)
    assert "UNSAFE" in caplog.text and "debug-mode" in caplog.text
    # Debug mode zeroes the image measurements but still fills PCR3 and PCR4.
    assert all(not any(result.pcrs[i]) for i in (0, 1, 2, 8))
    assert any(result.pcrs[3]) and any(result.pcrs[4])


def _unsafe_warnings(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == "noflylist.client.attestation"
        and record.levelno == logging.WARNING
        and "UNSAFE" in record.getMessage()
        and words in record.getMessage()
    )


@pytest.mark.parametrize("name", PRODUCTION)
def test_unsafe_allow_debug_warns_on_every_call_even_for_a_production_document(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="noflylist.client.attestation"):
        for _ in range(2):
            verify(_document(name), now=_time(name), unsafe_allow_debug=True)
    assert _unsafe_warnings(caplog, "unsafe_allow_debug=True") == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="noflylist.client.attestation"):
        verify(_document(name), now=_time(name))
    assert caplog.records == []


def test_unsafe_allow_debug_warns_even_when_the_document_is_then_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="noflylist.client.attestation"),
        pytest.raises(AttestationError, match=r"^step 1"),
    ):
        verify(b"not a document", unsafe_allow_debug=True)
    assert _unsafe_warnings(caplog, "debug-mode") == 1


def test_the_weakening_parameters_are_named_unsafe_and_have_no_old_aliases() -> None:
    document = _document(PRODUCTION[0])
    with pytest.raises(TypeError, match="allow_debug"):
        verify(document, now=_time(PRODUCTION[0]), allow_debug=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="root"):
        verify(document, now=_time(PRODUCTION[0]), root=AWS_ROOT)  # type: ignore[call-arg]


def test_debug_document_fails_expected_production_pcr0_with_a_hint() -> None:
    production_pcr0 = _expected_pcrs(PRODUCTION[0])[0]
    with pytest.raises(AttestationError, match=r"^step 5 .*PCR0 mismatch.*debug-mode"):
        verify(
            _document(DEBUG),
            now=_time(DEBUG),
            expected_pcrs={0: production_pcr0},
            unsafe_allow_debug=True,
        )


@pytest.mark.parametrize("name", PRODUCTION)
@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 8, 15])
def test_wrong_expected_pcr_fails_step5(name: str, index: int) -> None:
    expected = _expected_pcrs(name)
    expected[index] = bytes([expected[index][0] ^ 1]) + expected[index][1:]
    with pytest.raises(AttestationError, match=rf"^step 5 .*PCR{index} mismatch"):
        verify(_document(name), now=_time(name), expected_pcrs=expected)


def test_expected_pcr_the_document_lacks_fails_step5() -> None:
    name = PRODUCTION[0]
    with pytest.raises(AttestationError, match=r"^step 5 .*no PCR16"):
        verify(_document(name), now=_time(name), expected_pcrs={16: bytes(48)})


def test_expected_pcr_of_another_length_fails_step5() -> None:
    name = PRODUCTION[0]
    truncated = _expected_pcrs(name)[0][:32]
    with pytest.raises(AttestationError, match=r"^step 5 .*PCR0 mismatch"):
        verify(_document(name), now=_time(name), expected_pcrs={0: truncated})


@pytest.mark.parametrize("name", PRODUCTION)
def test_wrong_nonce_fails_step5(name: str) -> None:
    real = _payload(name)["nonce"]
    for wrong in (bytes([real[0] ^ 1]) + real[1:], real[:-1], b"", b"x" * 256):
        with pytest.raises(AttestationError, match=r"^step 5 .*nonce mismatch"):
            verify(_document(name), now=_time(name), nonce=wrong)


def test_expected_nonce_with_none_in_the_document_fails_step5() -> None:
    with pytest.raises(AttestationError, match=r"^step 5 .*carries no nonce"):
        verify(_document(DEBUG), now=_time(DEBUG), nonce=b"challenge", unsafe_allow_debug=True)


def test_expected_values_that_are_not_bytes_are_refused_with_a_fix() -> None:
    name = PRODUCTION[0]
    pcr0_hex = _expected_pcrs(name)[0].hex()
    with pytest.raises(AttestationError, match=r"PCR0 must be bytes, e\.g\. bytes\.fromhex"):
        verify(_document(name), now=_time(name), expected_pcrs={0: pcr0_hex})  # type: ignore[dict-item]
    with pytest.raises(AttestationError, match=r"nonce=\.\.\.\) must be bytes"):
        verify(_document(name), now=_time(name), nonce="challenge")  # type: ignore[arg-type]


def test_naive_now_is_refused() -> None:
    name = PRODUCTION[0]
    with pytest.raises(AttestationError, match="timezone-aware"):
        verify(_document(name), now=_time(name).replace(tzinfo=None))


def test_shipped_root_is_the_aws_root_with_the_published_fingerprint() -> None:
    shipped = attestation._pinned_root()
    assert shipped == AWS_ROOT
    digest = sha256(shipped.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    assert digest == "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"


def test_shipped_root_with_another_fingerprint_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attestation, "_ROOT_SHA256", bytes(32))
    attestation._pinned_root.cache_clear()
    try:
        with pytest.raises(AttestationError, match="fingerprint"):
            verify(_document(PRODUCTION[0]), now=_time(PRODUCTION[0]))
    finally:
        monkeypatch.undo()
        attestation._pinned_root.cache_clear()


# -- step 1: the envelope ----------------------------------------------------------------------


def test_qemu_shaped_unsigned_document_fails_step1() -> None:
    # QEMU's emulated NSM: algorithm -1 and a signature of zeros over a real-looking payload.
    payload = cbor2.loads(_document(PRODUCTION[0]))[2]
    document = _envelope(payload, bytes(96), protected=cbor2.dumps({1: -1}))
    with pytest.raises(AttestationError, match=r"^step 1 .*\{1: -1\}"):
        verify(document, now=_time(PRODUCTION[0]))


ENVELOPES = {
    "empty protected bucket": lambda p, s: _envelope(p, s, protected=b""),
    "ES256 protected header": lambda p, s: _envelope(p, s, protected=cbor2.dumps({1: -7})),
    "extra protected header": lambda p, s: _envelope(
        p, s, protected=cbor2.dumps({1: -35, 4: b"k"})
    ),
    "non-shortest -35": lambda p, s: _envelope(p, s, protected=bytes.fromhex("a101390022")),
    "unprotected kid": lambda p, s: cbor2.dumps([PROTECTED_ES384, {4: b"k"}, p, s]),
    "other tag": lambda p, s: cbor2.dumps(cbor2.CBORTag(17, [PROTECTED_ES384, {}, p, s])),
    "empty payload": lambda p, s: _envelope(b"", s),
    "payload over 16 KiB": lambda p, s: _envelope(p + bytes(16385 - len(p)), s),
    "not COSE": lambda p, s: cbor2.dumps({"payload": p}),
    "bytearray": lambda p, s: bytearray(_envelope(p, s)),
}


@pytest.mark.parametrize("make", ENVELOPES.values(), ids=ENVELOPES.keys())
def test_malformed_envelope_fails_step1(make: Any) -> None:
    _, _, payload, signature = cbor2.loads(_document(PRODUCTION[0]))
    with pytest.raises(AttestationError, match=r"^step 1 "):
        verify(make(payload, signature), now=_time(PRODUCTION[0]))


@pytest.mark.parametrize("name", PRODUCTION)
def test_tagged_real_document_verifies(name: str) -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(_document(name))))
    assert verify(tagged, now=_time(name)).module_id == EXPECTED[name]["module_id"]


# -- step 2: the payload's fields --------------------------------------------------------------


def _without(key: str) -> Any:
    return lambda p: {k: v for k, v in p.items() if k != key}


def _set(**values: Any) -> Any:
    return lambda p: {**p, **values}


PAYLOADS: dict[str, Any] = {
    **{f"no {key}": _without(key) for key in MANDATORY},
    "module_id null": _set(module_id=None),
    "module_id empty": _set(module_id=""),
    "module_id bytes": _set(module_id=b"i-0"),
    "digest SHA256": _set(digest="SHA256"),
    "digest bytes": _set(digest=b"SHA384"),
    "timestamp zero": _set(timestamp=0),
    "timestamp negative": _set(timestamp=-1),
    "timestamp text": _set(timestamp="1665651482136"),
    "timestamp true": _set(timestamp=True),
    "timestamp 2**64 (bignum)": _set(timestamp=2**64),
    "timestamp past year 9999": _set(timestamp=2**63),
    "pcrs empty": _set(pcrs={}),
    "pcrs list": _set(pcrs=[bytes(48)]),
    "pcrs 33 entries": _set(pcrs={i: bytes(48) for i in range(33)}),
    "pcr index 32": _set(pcrs={0: b"\x01" * 48, 32: bytes(48)}),
    "pcr index -1": _set(pcrs={0: b"\x01" * 48, -1: bytes(48)}),
    "pcr index text": _set(pcrs={"0": b"\x01" * 48}),
    "pcr 47 bytes": _set(pcrs={0: b"\x01" * 47}),
    "pcr text": _set(pcrs={0: "01" * 48}),
    "certificate empty": _set(certificate=b""),
    "certificate 1025 bytes": _set(certificate=b"\x30" * 1025),
    "certificate text": _set(certificate="MIIC"),
    "cabundle empty": _set(cabundle=[]),
    "cabundle bytes": _set(cabundle=b"\x30"),
    "cabundle entry text": _set(cabundle=["MIIC"]),
    "cabundle entry empty": _set(cabundle=[b""]),
    "cabundle 9 entries": lambda p: {**p, "cabundle": p["cabundle"] * 2 + [p["cabundle"][0]]},
    "public_key empty": _set(public_key=b""),
    "public_key 1025 bytes": _set(public_key=b"k" * 1025),
    "public_key text": _set(public_key="key"),
    "user_data 513 bytes": _set(user_data=b"u" * 513),
    "user_data int": _set(user_data=1),
    "nonce 513 bytes": _set(nonce=b"n" * 513),
    "nonce text": _set(nonce="n"),
    "unknown field": _set(extra=b"x"),
    "integer key": lambda p: {**p, 1: b"x"},
    "payload is a list": lambda p: list(p.values()),
}


@pytest.mark.parametrize("mutate", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_missing_or_mistyped_field_fails_step2(mutate: Any) -> None:
    name = PRODUCTION[0]
    document = _with_payload(name, mutate(_payload(name)))
    with pytest.raises(AttestationError, match=r"^step 2 \(payload\)"):
        verify(document, now=_time(name))


def test_payload_that_is_not_cbor_fails_step2() -> None:
    name = PRODUCTION[0]
    document = _envelope(b"\xa9\x69module", cbor2.loads(_document(name))[3])
    with pytest.raises(AttestationError, match=r"^step 2 .*not valid CBOR"):
        verify(document, now=_time(name))


def test_optional_fields_at_their_size_limits_or_absent_are_accepted(
    pki: tuple[Issued, Issued, Issued],
) -> None:
    root, intermediate, leaf = pki
    bundle = [root.der, intermediate.der]
    limits = {"public_key": b"k" * 1024, "user_data": b"u" * 512, "nonce": b"n" * 512}
    result = verify(_forge(leaf, bundle, changes=limits), unsafe_root=root.cert, now=FORGED_NOW)
    assert (result.public_key, result.user_data, result.nonce) == tuple(limits.values())
    empty = {"user_data": b"", "nonce": b""}
    result = verify(_forge(leaf, bundle, changes=empty), unsafe_root=root.cert, now=FORGED_NOW)
    assert (result.user_data, result.nonce) == (b"", b"")
    name = PRODUCTION[0]
    absent = {k: v for k, v in _payload(name).items() if k not in limits}
    absent.update(certificate=leaf.der, cabundle=bundle)
    encoded = cbor2.dumps(absent)
    document = _envelope(encoded, _sign(leaf.key, encoded, PROTECTED_ES384))
    result = verify(document, unsafe_root=root.cert, now=FORGED_NOW)
    assert (result.public_key, result.user_data, result.nonce) == (None, None, None)


# -- step 3 and 4: forged chains and signatures ------------------------------------------------


def test_forged_document_verifies_only_against_its_own_root_and_warns(
    pki: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, intermediate, leaf = pki
    for tagged in (False, True):
        document = _forge(leaf, [root.der, intermediate.der], tagged=tagged)
        with caplog.at_level(logging.WARNING, logger="noflylist.client.attestation"):
            result = verify(document, unsafe_root=root.cert, now=FORGED_NOW)
        assert result.certificate == leaf.cert
        assert "caller-supplied root" in caplog.text
        with pytest.raises(AttestationError, match=r"^step 3 .*not the trusted root"):
            verify(document, now=FORGED_NOW)
    # Each call warns, not only the first.
    assert _unsafe_warnings(caplog, "caller-supplied root (unsafe_root=)") == 2


def test_forged_chain_that_claims_the_aws_root_fails_step3() -> None:
    impostor = _issue("aws.nitro-enclaves", None, ca=True, issuer_name=AWS_ROOT.subject)
    intermediate = _issue("fake regional", impostor, ca=True, issuer_name=AWS_ROOT.subject)
    leaf = _issue("fake leaf", intermediate, ca=False)
    aws_der = AWS_ROOT.public_bytes(serialization.Encoding.DER)
    document = _forge(leaf, [aws_der, intermediate.der])
    with pytest.raises(AttestationError, match=r"^step 3 .*fake regional.*did not make"):
        verify(document, now=FORGED_NOW)


def _chain_case(
    root_kw: dict[str, Any] | None = None,
    intermediate_kw: dict[str, Any] | None = None,
    leaf_kw: dict[str, Any] | None = None,
) -> tuple[Issued, Issued, Issued]:
    root = _issue("case root", None, **{"ca": True, **(root_kw or {})})
    intermediate = _issue("case intermediate", root, **{"ca": True, **(intermediate_kw or {})})
    leaf = _issue("case leaf", intermediate, **{"ca": False, **(leaf_kw or {})})
    return root, intermediate, leaf


LATE = (FORGED_NOW + timedelta(minutes=1), FORGED_NOW + timedelta(hours=3))
OVER = (FORGED_NOW - timedelta(hours=4), FORGED_NOW - timedelta(seconds=1))
UNKNOWN_CRITICAL = x509.UnrecognizedExtension(
    x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"
)

CHAINS: dict[str, tuple[dict[str, Any], str]] = {
    "leaf is a CA": ({"leaf_kw": {"ca": True}}, "marked as a CA"),
    "leaf lacks digitalSignature": ({"leaf_kw": {"digital_signature": False}}, "digitalSignature"),
    "leaf has no key usage": ({"leaf_kw": {"key_usage": False}}, "no key usage"),
    "leaf expired": ({"leaf_kw": {"window": OVER}}, "case leaf' expired"),
    "leaf not yet valid": ({"leaf_kw": {"window": LATE}}, "case leaf' is not valid before"),
    "leaf signed with SHA-256": ({"leaf_kw": {"algorithm": hashes.SHA256()}}, "not ECDSA-SHA384"),
    "leaf unknown critical extension": (
        {"leaf_kw": {"extra": UNKNOWN_CRITICAL}},
        "1.3.6.1.4.1.55555.1",
    ),
    "intermediate not a CA": ({"intermediate_kw": {"ca": False}}, "case intermediate' issues"),
    "intermediate constraints not critical": (
        {"intermediate_kw": {"constraints_critical": False}},
        "no critical basicConstraints",
    ),
    "intermediate lacks keyCertSign": (
        {"intermediate_kw": {"key_cert_sign": False}},
        "keyCertSign",
    ),
    "intermediate expired": ({"intermediate_kw": {"window": OVER}}, "case intermediate' expired"),
    "root path length 0 above an intermediate": ({"root_kw": {"path_length": 0}}, "allows 0 CA"),
    "root expired": ({"root_kw": {"window": OVER}}, "case root' expired"),
}


@pytest.mark.parametrize("case", CHAINS.values(), ids=CHAINS.keys())
def test_chain_that_breaks_a_rule_fails_step3(case: tuple[dict[str, Any], str]) -> None:
    kwargs, fragment = case
    root, intermediate, leaf = _chain_case(**kwargs)
    document = _forge(leaf, [root.der, intermediate.der])
    with pytest.raises(AttestationError, match=r"^step 3 \(certificate chain\)") as error:
        verify(document, unsafe_root=root.cert, now=FORGED_NOW)
    assert fragment in str(error.value)


def test_chain_missing_its_intermediate_fails_step3() -> None:
    root, _, leaf = _chain_case()
    with pytest.raises(AttestationError, match=r"^step 3 .*names an issuer other"):
        verify(_forge(leaf, [root.der]), unsafe_root=root.cert, now=FORGED_NOW)


def test_cabundle_entry_that_is_not_a_certificate_fails_step3(
    pki: tuple[Issued, Issued, Issued],
) -> None:
    root, _, leaf = pki
    with pytest.raises(AttestationError, match=r"^step 3 .*cabundle\[1\] is not a DER"):
        bundle = [root.der, b"\x30\x03\x02\x01\x01"]
        verify(_forge(leaf, bundle), unsafe_root=root.cert, now=FORGED_NOW)


def test_leaf_key_on_p256_fails_step4() -> None:
    root, intermediate, leaf = _chain_case(leaf_kw={"curve": ec.SECP256R1()})
    document = _forge(
        leaf, [root.der, intermediate.der], signer=ec.generate_private_key(ec.SECP384R1())
    )
    with pytest.raises(AttestationError, match=r"^step 4 .*P-384"):
        verify(document, unsafe_root=root.cert, now=FORGED_NOW)


def test_document_signed_by_a_key_other_than_the_leafs_fails_step4(
    pki: tuple[Issued, Issued, Issued],
) -> None:
    root, intermediate, leaf = pki
    document = _forge(leaf, [root.der, intermediate.der], signer=intermediate.key)
    with pytest.raises(AttestationError, match=r"^step 4 \(signature\).*does not verify"):
        verify(document, unsafe_root=root.cert, now=FORGED_NOW)


# -- tampering and fuzzing ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_flipping_any_one_byte_of_a_real_document_fails(name: str) -> None:
    document = _document(name)
    signature_start = len(document) - 96
    positions = set(range(0, len(document), 37))
    positions |= set(range(0, 64))  # array head, protected header, payload head, module_id
    positions |= {signature_start - 2, signature_start - 1}  # the signature's head
    positions |= set(range(signature_start, len(document), 5))  # the signature's r and s
    for position in sorted(positions):
        for mask in (0x01, 0xFF):
            tampered = bytearray(document)
            tampered[position] ^= mask
            with pytest.raises(AttestationError):
                verify(bytes(tampered), now=_time(name), unsafe_allow_debug=True)


# -- the boundary: whatever happens inside, only AttestationError leaves ------------------------

SECRET = "not-to-be-echoed"


def test_an_unforeseen_failure_in_a_step_is_an_attestation_error_naming_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(payload: bytes) -> None:
        raise KeyError(SECRET)  # as a bug in a field check would

    monkeypatch.setattr(attestation, "_step2_check_payload", broken)
    name = PRODUCTION[0]
    with pytest.raises(AttestationError, match="KeyError while verifying it") as caught:
        verify(_document(name), now=_time(name))
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_certificate_check_that_cryptography_fails_names_its_type_not_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(cert: x509.Certificate, now: datetime) -> None:
        raise ValueError(SECRET)  # cryptography's messages may quote the certificate

    monkeypatch.setattr(attestation, "_check_validity", broken)
    name = PRODUCTION[0]
    refusal = r"^step 3 .*cannot be checked \(ValueError\)$"
    with pytest.raises(AttestationError, match=refusal) as caught:
        verify(_document(name), now=_time(name))
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_recursion_error_from_a_deep_caller_becomes_attestation_error() -> None:
    name = PRODUCTION[0]
    with pytest.raises(AttestationError, match="RecursionError"):
        with_frames_left(14, lambda: verify(_document(name), now=_time(name)))


def _certificate_spans(name: str) -> list[tuple[int, int]]:
    """Where each certificate's DER lies inside a real document (found via cbor2's decoding)."""
    document, payload = _document(name), _payload(name)
    spans = []
    for der in [payload["certificate"], *payload["cabundle"]]:
        start = document.index(der)
        spans.append((start, start + len(der)))
    return spans


@pytest.mark.slow
@QUIET_SERIALS
@pytest.mark.parametrize("name", ALL)
def test_every_header_byte_of_every_certificate_mangled_fails_in_step3_or_4(name: str) -> None:
    # The first bytes of a certificate hold the DER heads, version, serial and algorithm: the
    # parser's trickiest input. Values 0x00, 0x03, 0x7c and 0xff cover zero, a plausible
    # version, an invalid version and a long-form length.
    original = _document(name)
    for start, _ in _certificate_spans(name):
        for offset in range(48):
            for value in (0x00, 0x03, 0x7C, 0xFF):
                if original[start + offset] == value:
                    continue
                data = bytearray(original)
                data[start + offset] = value
                with pytest.raises(AttestationError, match=r"^step [34] "):
                    verify(bytes(data), now=_time(name), unsafe_allow_debug=True)


@pytest.mark.slow
@QUIET_SERIALS
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(ALL),
    which=st.integers(0, 4),
    edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mangled_certificates_raise_only_attestation_error(
    name: str, which: int, edits: list[tuple[int, int]]
) -> None:
    # Byte edits inside one certificate keep every CBOR length intact, so steps 1 and 2 pass and
    # the mangled DER reaches cryptography's X.509 parser in step 3.
    original = _document(name)
    start, end = _certificate_spans(name)[which]
    data = bytearray(original)
    for offset, value in edits:
        data[start + offset % (end - start)] = value
    if bytes(data) == original:
        return  # the edits rewrote bytes to their own values: nothing was tampered with
    with pytest.raises(AttestationError, match=r"^step [34] "):
        verify(bytes(data), now=_time(name), unsafe_allow_debug=True)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=70)
    | st.sampled_from([bytes(32), bytes(48), b"\x01" * 64, "SHA384", ""])
    | st.text(max_size=8)
)
#: One level of nesting is enough to reach every type check of step 2, and cheap to generate.
CBOR_VALUES = (
    _SCALARS
    | st.lists(_SCALARS, max_size=3)
    | st.dictionaries(st.integers(-2, 40) | st.text(max_size=2), _SCALARS, max_size=3)
)
FIELD_NAMES = st.sampled_from([*EXPECTED[DEBUG]["payload_keys_in_order"], "other"])


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(changes=st.dictionaries(FIELD_NAMES, CBOR_VALUES, min_size=1, max_size=5))
def test_payloads_with_random_field_values_raise_only_attestation_error(
    changes: dict[str, Any],
) -> None:
    name = PRODUCTION[0]
    payload = {**_payload(name), **changes}
    if payload == _payload(name):
        return  # hypothesis rewrote fields to their own values: the document is genuine
    with pytest.raises(AttestationError):
        verify(_with_payload(name, payload), now=_time(name))


def test_the_verifier_reads_the_nsm_limits_without_importing_the_device_driver() -> None:
    """A client's machine (perhaps without ``fcntl``) verifies documents: the verifier takes
    the NSM's documented limits from :mod:`enclave.nsm_limits`, not from :mod:`enclave.nsm`."""
    code = (
        "import sys, noflylist.client.attestation\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('enclave', 'fcntl', "
        "'ctypes')))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert "enclave.nsm_limits" in loaded  # the positive control
    assert not {"enclave.nsm", "fcntl", "ctypes"} & set(loaded), loaded
