"""COSE_Sign1 (RFC 9052) and ES384 (RFC 9053): checked against real Nitro documents, cbor2 as an
independent CBOR encoder/decoder, RFC 9052's own example, and signatures made by cryptography."""

from __future__ import annotations

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist.client import cose
from tests.conftest import VECTORS
from tests.support.stack import with_frames_left

NITRO = VECTORS / "nitro"
DOCUMENTS = sorted(path.name for path in NITRO.glob("*.cbor"))
PROTECTED_ES384 = bytes.fromhex("a1013822")  # {1: -35}, as every real document carries it


def _real(name: str) -> bytes:
    return (NITRO / name).read_bytes()


def _leaf_key(document: bytes) -> ec.EllipticCurvePublicKey:
    """The signing key of a real document, found with cbor2 (not with the code under test)."""
    payload = cbor2.loads(cbor2.loads(document)[2])
    key = x509.load_der_x509_certificate(payload["certificate"]).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes, size: int = 48) -> bytes:
    """ECDSA by cryptography (DER), converted to COSE's fixed-width r||s."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _signed(key: ec.EllipticCurvePrivateKey, payload: bytes, protected: bytes) -> cose.Sign1:
    signature = _raw_signature(key, cose.sig_structure(protected, payload))
    return cose.decode_sign1(cose.encode_sign1(protected, {}, payload, signature))


@pytest.fixture(scope="module")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


# -- decoding and encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCUMENTS)
def test_real_document_decodes_to_the_same_four_parts_as_cbor2(name: str) -> None:
    data = _real(name)
    protected, unprotected, payload, signature = cbor2.loads(data)
    sign1 = cose.decode_sign1(data)
    assert sign1.protected == protected == PROTECTED_ES384
    assert dict(sign1.unprotected) == unprotected == {}
    assert sign1.payload == payload
    assert sign1.signature == signature
    assert len(sign1.signature) == 96
    assert dict(sign1.protected_header) == {1: -35}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_real_document_reencodes_byte_for_byte_untagged_and_tagged(name: str) -> None:
    data = _real(name)
    sign1 = cose.decode_sign1(data)
    parts = (sign1.protected, dict(sign1.unprotected), sign1.payload, sign1.signature)
    assert cose.encode_sign1(*parts) == data
    tagged = cose.encode_sign1(*parts, tagged=True)
    assert tagged == b"\xd2" + data  # tag 18 is the single byte 0xd2 (RFC 8949 §3.4)
    independent = cbor2.loads(tagged)
    assert isinstance(independent, cbor2.CBORTag) and independent.tag == 18
    assert cose.decode_sign1(tagged) == sign1


@pytest.mark.parametrize("name", DOCUMENTS)
def test_cbor2_tagged_document_decodes_like_the_untagged_one(name: str) -> None:
    data = _real(name)
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(data)))
    assert cose.decode_sign1(tagged) == cose.decode_sign1(data)


def test_empty_protected_bucket_means_no_headers() -> None:
    sign1 = cose.decode_sign1(cbor2.dumps([b"", {4: b"kid"}, b"payload", b"sig"]))
    assert dict(sign1.protected_header) == {}
    assert dict(sign1.unprotected) == {4: b"kid"}


MALFORMED = {
    "not an array": cbor2.dumps({"a": 1}),
    "three items": cbor2.dumps([PROTECTED_ES384, {}, b"payload"]),
    "five items": cbor2.dumps([PROTECTED_ES384, {}, b"payload", b"s", b"x"]),
    "other tag (COSE_Sign, 98)": cbor2.dumps(cbor2.CBORTag(98, [PROTECTED_ES384, {}, b"p", b"s"])),
    "detached payload": cbor2.dumps([PROTECTED_ES384, {}, None, b"s"]),
    "protected is a map": cbor2.dumps([{1: -35}, {}, b"payload", b"s"]),
    "protected is not CBOR": cbor2.dumps([b"\xa1\x01", {}, b"payload", b"s"]),
    "protected is an array": cbor2.dumps([cbor2.dumps([1, -35]), {}, b"payload", b"s"]),
    "unprotected is bytes": cbor2.dumps([PROTECTED_ES384, b"", b"payload", b"s"]),
    "payload is text": cbor2.dumps([PROTECTED_ES384, {}, "payload", b"s"]),
    "signature is text": cbor2.dumps([PROTECTED_ES384, {}, b"payload", "s"]),
    "label in both buckets": cbor2.dumps([PROTECTED_ES384, {1: -35}, b"payload", b"s"]),
    "label is bytes": cbor2.dumps([cbor2.dumps({b"\x01": -35}), {}, b"payload", b"s"]),
    "label is true": cbor2.dumps([b"", {True: 1}, b"payload", b"s"]),
    "trailing bytes": cbor2.dumps([PROTECTED_ES384, {}, b"payload", b"s"]) + b"\x00",
    "empty input": b"",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_sign1_is_refused_with_coseerror(data: bytes) -> None:
    with pytest.raises(cose.COSEError):
        cose.decode_sign1(data)


def test_encode_refuses_a_protected_bucket_that_is_not_a_serialized_map() -> None:
    with pytest.raises(cose.COSEError):
        cose.encode_sign1(b"\x01", {}, b"payload", b"sig")


#: One value of every CBOR type this codec reads, and the awkward ones for COSE's positions.
WRONG_VALUES: list[object] = [
    None, True, 0, -35, 2**64 - 1, -(2**64), b"", b"\xa0", b"\x01" * 96, "", "x", [], {},
    {1: -35}, {"x": b""}, [b"", {}, b"", b""], cbor2.CBORTag(18, []),
]  # fmt: skip
SECRET = "not-to-be-echoed"


@pytest.mark.parametrize("position", range(4), ids=["protected", "unprotected", "payload",
                                                  "signature"])  # fmt: skip
def test_any_value_at_any_position_of_a_real_document_decodes_or_raises_coseerror(
    position: int,
) -> None:
    parts = cbor2.loads(_real(DOCUMENTS[0]))
    for value in WRONG_VALUES:
        changed = list(parts)
        changed[position] = value
        for data in (cbor2.dumps(changed), cbor2.dumps(cbor2.CBORTag(18, changed))):
            try:
                assert isinstance(cose.decode_sign1(data), cose.Sign1)
            except cose.COSEError as exc:
                assert exc.__cause__ is None or isinstance(exc.__cause__, cose.CBORError)


def test_labels_in_both_buckets_are_counted_not_quoted() -> None:
    data = cbor2.dumps([cbor2.dumps({SECRET: 1, 1: -35}), {SECRET: 1, 1: -35}, b"p", b"s"])
    with pytest.raises(cose.COSEError, match="has 2 header label") as caught:
        cose.decode_sign1(data)
    assert SECRET not in str(caught.value)


def test_an_algorithm_that_is_not_an_integer_is_not_quoted(
    p384_key: ec.EllipticCurvePrivateKey,
) -> None:
    sign1 = _signed(p384_key, b"payload", cbor2.dumps({1: SECRET}))
    with pytest.raises(cose.COSEError, match="no integer algorithm") as caught:
        cose.verify_es384(sign1, p384_key.public_key())
    assert SECRET not in str(caught.value)


def test_recursion_error_from_a_deep_caller_becomes_coseerror() -> None:
    document = _real(DOCUMENTS[0])
    with pytest.raises(cose.COSEError, match="RecursionError"):
        with_frames_left(14, lambda: cose.decode_sign1(document))


def test_unforeseen_failures_in_decoding_and_verifying_are_coseerrors_naming_only_the_type(
    monkeypatch: pytest.MonkeyPatch, p384_key: ec.EllipticCurvePrivateKey
) -> None:
    sign1 = _signed(p384_key, b"payload", PROTECTED_ES384)
    data = cose.encode_sign1(PROTECTED_ES384, {}, b"payload", sign1.signature)

    def broken(*_: object) -> bytes:
        raise OverflowError(SECRET)

    monkeypatch.setattr(cose, "_der_signature", broken)
    with pytest.raises(cose.COSEError, match="OverflowError while verifying") as caught:
        cose.verify_es384(sign1, p384_key.public_key())
    assert SECRET not in str(caught.value) and caught.value.__suppress_context__
    monkeypatch.setattr(cose, "_check_header_map", broken)
    with pytest.raises(cose.COSEError, match="OverflowError while decoding") as caught:
        cose.decode_sign1(data)
    assert SECRET not in str(caught.value) and caught.value.__suppress_context__


# -- Sig_structure -----------------------------------------------------------------------------


def test_sig_structure_matches_rfc9052_example_c21() -> None:
    # RFC 9052 Appendix C.2.1: protected {1: -7}, no external AAD, payload "This is the content."
    expected = bytes.fromhex(
        "846a5369676e61747572653143a101264054546869732069732074686520636f6e74656e742e"
    )
    assert cose.sig_structure(bytes.fromhex("a10126"), b"This is the content.") == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=70), st.binary(max_size=300), st.binary(max_size=70))
def test_sig_structure_equals_cbor2s_encoding_of_the_rfc_array(
    protected: bytes, payload: bytes, aad: bytes
) -> None:
    expected = cbor2.dumps(["Signature1", protected, aad, payload])
    assert cose.sig_structure(protected, payload, aad) == expected


# -- ES384 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCUMENTS)
def test_real_document_signature_verifies_with_its_leaf_key(name: str) -> None:
    data = _real(name)
    cose.verify_es384(cose.decode_sign1(data), _leaf_key(data))


@pytest.mark.parametrize("part", ["protected", "payload", "signature"])
def test_real_document_with_one_flipped_bit_fails(part: str) -> None:
    data = _real(DOCUMENTS[0])
    sign1 = cose.decode_sign1(data)
    key = _leaf_key(data)
    original = getattr(sign1, part)
    for position in range(0, len(original), max(1, len(original) // 40)):
        changed = bytearray(original)
        changed[position] ^= 0x01
        parts = {
            "protected": sign1.protected,
            "unprotected": {},
            "payload": sign1.payload,
            "signature": sign1.signature,
        }
        parts[part] = bytes(changed)
        try:
            tampered = cose.Sign1(**parts)  # type: ignore[arg-type]
        except cose.COSEError:
            continue  # a changed protected bucket may no longer be a map: also a refusal
        with pytest.raises(cose.COSEError):
            cose.verify_es384(tampered, key)


def test_signature_made_by_cryptography_verifies(p384_key: ec.EllipticCurvePrivateKey) -> None:
    sign1 = _signed(p384_key, b"attested payload", PROTECTED_ES384)
    cose.verify_es384(sign1, p384_key.public_key())


def test_signature_by_another_key_fails(p384_key: ec.EllipticCurvePrivateKey) -> None:
    sign1 = _signed(p384_key, b"attested payload", PROTECTED_ES384)
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(cose.COSEError, match="does not verify"):
        cose.verify_es384(sign1, other)


def test_signature_with_short_r_and_s_is_left_padded(p384_key: ec.EllipticCurvePrivateKey) -> None:
    # r or s below 2**376 happens in 1 of 128 signatures; find one, then check it still verifies.
    for attempt in range(2000):
        payload = attempt.to_bytes(4, "big")
        message = cose.sig_structure(PROTECTED_ES384, payload)
        signature = _raw_signature(p384_key, message)
        if signature[0] == 0 or signature[48] == 0:
            sign1 = cose.Sign1(PROTECTED_ES384, {}, payload, signature)
            cose.verify_es384(sign1, p384_key.public_key())
            return
    pytest.fail("no signature with a leading zero byte in 2000 tries (odds about 1e-7)")


def test_protected_header_must_name_es384(p384_key: ec.EllipticCurvePrivateKey) -> None:
    es256 = cbor2.dumps({1: -7})
    sign1 = _signed(p384_key, b"payload", es256)  # a valid signature, wrong algorithm label
    with pytest.raises(cose.COSEError, match="only ES384"):
        cose.verify_es384(sign1, p384_key.public_key())


@pytest.mark.parametrize("length", [0, 64, 95, 97, 132])
def test_signature_of_wrong_length_fails(p384_key: ec.EllipticCurvePrivateKey, length: int) -> None:
    sign1 = cose.Sign1(PROTECTED_ES384, {}, b"payload", b"\x01" * length)
    with pytest.raises(cose.COSEError, match="96 bytes"):
        cose.verify_es384(sign1, p384_key.public_key())


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP521R1()).public_key(),
        lambda: rsa.generate_private_key(65537, 2048).public_key(),
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["P-256", "P-521", "RSA", "Ed25519"],
)
def test_key_not_on_p384_is_refused(make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    sign1 = cose.decode_sign1(_real(DOCUMENTS[0]))
    with pytest.raises(cose.COSEError, match="P-384"):
        cose.verify_es384(sign1, key)


def test_p256_signature_cannot_pass_as_es384() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    message = cose.sig_structure(PROTECTED_ES384, b"payload")
    signature = _raw_signature(key, message, size=48)
    sign1 = cose.Sign1(PROTECTED_ES384, {}, b"payload", signature)
    with pytest.raises(cose.COSEError):
        cose.verify_es384(sign1, key.public_key())
