"""Proof that enclave.cms opens KMS's CiphertextForRecipient and refuses everything else.

Independent producers first: the ``openssl cms`` command line (run at test time) and the
parse vectors from aws-nitro-enclaves-sdk-c. Then refusals, the simulator's writer checked
against ``openssl cms -decrypt``, the BER decoder's limits, and fuzzing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave import ber
from enclave.ber import BERError
from enclave.cms import (
    DECRYPTION_FAILED,
    CMSError,
    EnvelopedData,
    decrypt_enveloped_data,
    parse_enveloped_data,
    subject_key_identifier,
)
from noflylist_simulator.cms_writer import encode_enveloped_data
from tests.conftest import VECTORS
from tests.support import ber_tree
from tests.support.stack import with_frames_left

OAEP_SHA256_KEYOPTS = (
    "-keyopt", "rsa_padding_mode:oaep",
    "-keyopt", "rsa_oaep_md:sha256",
    "-keyopt", "rsa_mgf1_md:sha256",
)  # fmt: skip
OPENSSL_TIMEOUT_SECONDS = 60
PLAINTEXT_SIZES = [0, 1, 15, 16, 17, 32, 1000, 100_000]
SDKC = json.loads((VECTORS / "cms" / "sdkc_cms_parse_vectors.json").read_text())["vectors"]
FUZZ_EXAMPLES = 2000


# --- fixtures: throwaway RSA keys and certificates made by the openssl command line -------------


@dataclass(frozen=True)
class Recipient:
    """An RSA-2048 key and self-signed certificate whose SKI is SHA-256 of the SPKI."""

    key_pem: Path
    cert_pem: Path
    private_key: RSAPrivateKey
    spki_sha256: bytes


def _openssl(*args: str, stdin: bytes = b"") -> bytes:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command is missing: install the Debian package (.ci/apt-packages)")
    done = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, timeout=OPENSSL_TIMEOUT_SECONDS
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _make_recipient(directory: Path) -> Recipient:
    directory.mkdir()
    key_pem, cert_pem = directory / "key.pem", directory / "cert.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(key_pem))  # fmt: skip
    spki = _openssl("pkey", "-in", str(key_pem), "-pubout", "-outform", "DER")
    ski = hashlib.sha256(spki).digest()
    _openssl(
        "req", "-x509", "-new", "-key", str(key_pem), "-subj", "/CN=cms-test", "-days", "1",
        "-addext", f"subjectKeyIdentifier={ski.hex()}", "-out", str(cert_pem),
    )  # fmt: skip
    shown = _openssl("x509", "-in", str(cert_pem), "-noout", "-ext", "subjectKeyIdentifier")
    assert ski.hex(":").upper() in shown.decode(), "openssl did not take our SKI extension"
    private_key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
    assert isinstance(private_key, RSAPrivateKey)
    return Recipient(key_pem, cert_pem, private_key, ski)


@pytest.fixture(scope="module")
def recipient(tmp_path_factory: pytest.TempPathFactory) -> Recipient:
    return _make_recipient(tmp_path_factory.mktemp("cms") / "recipient")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Recipient:
    return _make_recipient(tmp_path_factory.mktemp("cms") / "stranger")


def _openssl_encrypt(
    plaintext: bytes,
    *recipients: Recipient,
    stream: bool = True,
    cipher: str = "-aes256",
    keyopts: tuple[str, ...] = OAEP_SHA256_KEYOPTS,
    keyid: bool = True,
) -> bytes:
    """``openssl cms -encrypt`` as the brief describes KMS's output; -keyopt follows each -recip."""
    args = ["cms", "-encrypt", "-binary", "-outform", "DER", cipher]
    args += ["-stream"] if stream else []
    args += ["-keyid"] if keyid else []
    for each in recipients:
        args += ["-recip", str(each.cert_pem), *keyopts]
    return _openssl(*args, stdin=plaintext)


def _encrypted_content_node(blob: bytes) -> ber.TLV:
    """ContentInfo.content[0] -> EnvelopedData -> EncryptedContentInfo -> encryptedContent."""
    enveloped = ber.decode(blob).children[1].children[0]
    return enveloped.children[2].children[2]


def _plaintext(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


# --- (1) vectors made by the openssl command line --------------------------------------------


def test_subject_key_identifier_is_sha256_of_the_spki_openssl_prints(recipient: Recipient) -> None:
    assert subject_key_identifier(recipient.private_key.public_key()) == recipient.spki_sha256


@pytest.mark.parametrize("size", PLAINTEXT_SIZES)
def test_openssl_streamed_indefinite_ber_decrypts_to_the_plaintext(
    recipient: Recipient, size: int
) -> None:
    plaintext = _plaintext(size)
    blob = _openssl_encrypt(plaintext, recipient)
    assert blob[:2] == b"\x30\x80", "openssl -stream should write indefinite-length BER"
    assert parse_enveloped_data(blob).recipient_key_id == recipient.spki_sha256
    assert decrypt_enveloped_data(blob, recipient.private_key) == plaintext


def test_openssl_streams_large_content_as_segmented_octet_strings(recipient: Recipient) -> None:
    plaintext = _plaintext(100_000)
    blob = _openssl_encrypt(plaintext, recipient)
    content = _encrypted_content_node(blob)
    assert content.constructed and len(content.children) > 1  # segments of at most 4 KiB
    assert decrypt_enveloped_data(blob, recipient.private_key) == plaintext


@pytest.mark.parametrize("size", [0, 17, 1000])
def test_openssl_definite_der_decrypts_to_the_plaintext(recipient: Recipient, size: int) -> None:
    plaintext = _plaintext(size)
    blob = _openssl_encrypt(plaintext, recipient, stream=False)
    assert blob[:2] == b"\x30\x82", "without -stream openssl writes definite-length DER"
    assert not _encrypted_content_node(blob).constructed
    assert decrypt_enveloped_data(blob, recipient.private_key) == plaintext


# --- (2) the aws-nitro-enclaves-sdk-c parse vectors (no private key exists) ----------------


@pytest.mark.parametrize("vector", SDKC, ids=[v["name"] for v in SDKC])
def test_sdkc_vector_parses_to_the_published_fields(vector: dict[str, str]) -> None:
    parsed = parse_enveloped_data(bytes.fromhex(vector["ber_hex"]))
    assert parsed.recipient_key_id.hex() == vector["expected_rid_ski_hex"]
    assert parsed.encrypted_key.hex() == vector["expected_encrypted_key_hex"]
    assert parsed.iv.hex() == vector["expected_iv_hex"]
    assert parsed.encrypted_content.hex() == vector["expected_ciphertext_hex"]


def test_sdkc_vectors_cover_both_encrypted_content_forms() -> None:
    forms = [_encrypted_content_node(bytes.fromhex(v["ber_hex"])).constructed for v in SDKC]
    assert forms == [True, False]


# --- (3) refusals ------------------------------------------------------------------------------


def test_refuses_blob_addressed_to_another_key(recipient: Recipient, stranger: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", stranger)
    with pytest.raises(CMSError, match="addressed to another key"):
        decrypt_enveloped_data(blob, recipient.private_key)


def test_refuses_oaep_with_default_sha1_parameters(recipient: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", recipient, keyopts=("-keyopt", "rsa_padding_mode:oaep"))
    with pytest.raises(CMSError, match="SHA-1"):
        decrypt_enveloped_data(blob, recipient.private_key)


def test_refuses_pkcs1_v1_5_key_transport(recipient: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", recipient, keyopts=())
    with pytest.raises(CMSError, match=r"1\.2\.840\.113549\.1\.1\.1 refused"):
        decrypt_enveloped_data(blob, recipient.private_key)


def test_refuses_aes_128_content_encryption(recipient: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", recipient, cipher="-aes128")
    with pytest.raises(CMSError, match=r"2\.16\.840\.1\.101\.3\.4\.1\.2 refused"):
        decrypt_enveloped_data(blob, recipient.private_key)


def test_refuses_issuer_and_serial_number_recipient(recipient: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", recipient, keyid=False)
    with pytest.raises(CMSError, match="EnvelopedData version 0"):
        decrypt_enveloped_data(blob, recipient.private_key)


def test_refuses_two_recipients(recipient: Recipient, stranger: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", recipient, stranger)
    with pytest.raises(CMSError, match="exactly one RecipientInfo, found 2"):
        decrypt_enveloped_data(blob, recipient.private_key)


def _replace_once(blob: bytes, old: bytes, new: bytes) -> bytes:
    assert blob.count(old) == 1 and len(old) == len(new)
    return blob.replace(old, new)


def test_every_decryption_failure_gives_the_same_opaque_error(recipient: Recipient) -> None:
    plaintext = b"seventeen bytes!!"  # pads to 32 bytes with fifteen 0x0f
    blob = _openssl_encrypt(plaintext, recipient, stream=False)  # content in one piece
    assert decrypt_enveloped_data(blob, recipient.private_key) == plaintext
    parsed = parse_enveloped_data(blob)
    public_key = recipient.private_key.public_key()
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)

    corrupt_key = bytes([parsed.encrypted_key[0] ^ 1]) + parsed.encrypted_key[1:]
    aes128_key = public_key.encrypt(bytes(16), oaep)
    first, second = parsed.encrypted_content[:16], parsed.encrypted_content[16:]
    zero_last_pad_byte = first[:15] + bytes([first[15] ^ 0x0F]) + second
    failures = {
        "OAEP check fails": _replace_once(blob, parsed.encrypted_key, corrupt_key),
        "unwrapped key is 16 bytes": _replace_once(blob, parsed.encrypted_key, aes128_key),
        "CBC padding byte is 0": _replace_once(
            blob, parsed.encrypted_content, zero_last_pad_byte
        ),
    }
    for case, tampered in failures.items():
        with pytest.raises(CMSError) as caught:
            decrypt_enveloped_data(tampered, recipient.private_key)
        assert str(caught.value) == DECRYPTION_FAILED, case
        assert caught.value.__cause__ is None and caught.value.__suppress_context__, case


@pytest.mark.parametrize("suffix", [b"\x00", b"\x00\x00", b"\x05\x00"])
def test_refuses_trailing_bytes(recipient: Recipient, suffix: bytes) -> None:
    blob = _openssl_encrypt(b"data key", recipient)
    with pytest.raises(CMSError, match="trailing byte"):
        decrypt_enveloped_data(blob + suffix, recipient.private_key)


def test_every_truncation_of_an_openssl_blob_raises_cmserror(recipient: Recipient) -> None:
    blob = _openssl_encrypt(b"data key", recipient)
    for end in range(len(blob)):
        with pytest.raises(CMSError):
            decrypt_enveloped_data(blob[:end], recipient.private_key)


def test_every_truncation_of_the_sdkc_vectors_raises_cmserror() -> None:
    for vector in SDKC:
        blob = bytes.fromhex(vector["ber_hex"])
        for end in range(len(blob)):
            with pytest.raises(CMSError):
                parse_enveloped_data(blob[:end])


SDKC_SEGMENTED = SDKC[0]["ber_hex"]
SDKC_PRIMITIVE = SDKC[1]["ber_hex"]
AES256_OID_HEX = "060960864801650304012a"
# Each case edits one sdk-c vector in place: (name, vector hex, old hex, new hex, message).
STRUCTURAL_EDITS = [
    ("content type id-data", SDKC_SEGMENTED, "2a864886f70d010703", "2a864886f70d010701",
     "does not hold EnvelopedData"),
    ("EnvelopedData version 0", SDKC_SEGMENTED, "3080020102", "3080020100",
     "EnvelopedData version 0"),
    ("KeyTransRecipientInfo version 0", SDKC_SEGMENTED, "30820167020102", "30820167020100",
     "KeyTransRecipientInfo version 0"),
    ("key agreement RecipientInfo", SDKC_SEGMENTED, "3082016702", "a182016702",
     "only KeyTransRecipientInfo"),
    ("OAEP hash SHA-384", SDKC_SEGMENTED, "a00f300d0609608648016503040201",
     "a00f300d0609608648016503040202", r"OAEP hashAlgorithm is 2\.16\.840\.1\.101\.3\.4\.2\.2"),
    ("MGF1 hash SHA-384", SDKC_SEGMENTED, "0108300d0609608648016503040201",
     "0108300d0609608648016503040202", r"MGF1 hash is 2\.16\.840\.1\.101\.3\.4\.2\.2"),
    ("SHA-256 parameters not NULL", SDKC_SEGMENTED, "a00f300d060960864801650304020105",
     "a00f300d060960864801650304020104", "absent or NULL"),
    ("AES-192-CBC", SDKC_SEGMENTED, AES256_OID_HEX, "0609608648016503040116",
     r"2\.16\.840\.1\.101\.3\.4\.1\.22 refused"),
    ("IV of 15 bytes", SDKC_SEGMENTED,
     "301d" + AES256_OID_HEX + "0410688c6d5f7f31b0fecedf09f2e7c99ac9",
     "301c" + AES256_OID_HEX + "040f688c6d5f7f31b0fecedf09f2e7c99a", "IV must be 16 bytes, got 15"),
    ("ciphertext of 15 bytes", SDKC_PRIMITIVE, "80101f943eb0105c1b0644df4f7130448a28",
     "800f1f943eb0105c1b0644df4f7130448a", "encryptedContent of 15 bytes"),
    ("no encryptedContent", SDKC_PRIMITIVE, "80101f943eb0105c1b0644df4f7130448a28", "",
     "EncryptedContentInfo has 2 fields"),
    ("originatorInfo present", SDKC_SEGMENTED, "3080020102", "3080020102a000",
     "originatorInfo"),
    # the vector ends with five end-of-contents markers; the third closes EnvelopedData
    ("unprotectedAttrs present", SDKC_SEGMENTED, "2e" + "0000" * 5,
     "2e" + "0000" * 2 + "a100" + "0000" * 3, "unprotectedAttrs"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("vector_hex", "old", "new", "message"),
    [case[1:] for case in STRUCTURAL_EDITS],
    ids=[case[0] for case in STRUCTURAL_EDITS],
)
def test_refuses_structural_deviation_from_kms_shape(
    vector_hex: str, old: str, new: str, message: str
) -> None:
    assert vector_hex.count(old) == 1
    edited = bytes.fromhex(vector_hex.replace(old, new, 1))
    with pytest.raises(CMSError, match=message):
        parse_enveloped_data(edited)


def _short_der(identifier: int, content: bytes) -> bytes:
    assert len(content) < 0x80
    return bytes([identifier, len(content)]) + content


OAEP_OID_HEX = "06092a864886f70d010107"


def _edit_recipient_info(*edits: tuple[str, str]) -> bytes:
    """The segmented sdk-c vector with hex edits inside its KeyTransRecipientInfo, and the
    definite lengths of that SEQUENCE and of the SET around it changed to match."""
    vector = SDKC_SEGMENTED
    for old, new in edits:
        assert vector.count(old) == 1
        vector = vector.replace(old, new)
    grow = (len(vector) - len(SDKC_SEGMENTED)) // 2
    lengths = f"3182{0x16B + grow:04x}3082{0x167 + grow:04x}"  # BER allows the long form
    return bytes.fromhex(vector.replace("3182016b30820167", lengths, 1))


def _with_oaep_label(label: bytes) -> bytes:
    """An explicit pSourceAlgorithm [2] appended to the OAEP parameters."""
    p_specified = bytes.fromhex("2a864886f70d010109")  # 1.2.840.113549.1.1.9
    source = _short_der(0x30, _short_der(0x06, p_specified) + _short_der(0x04, label))
    field = _short_der(0xA2, source).hex()
    grow = len(field) // 2
    return _edit_recipient_info(
        ("303c" + OAEP_OID_HEX + "302f", f"30{0x3C + grow:02x}{OAEP_OID_HEX}30{0x2F + grow:02x}"),
        ("050004820100", "0500" + field + "04820100"),
    )


def test_accepts_an_explicit_empty_oaep_label() -> None:
    parsed = parse_enveloped_data(_with_oaep_label(b""))
    assert parsed.encrypted_key.hex() == SDKC[0]["expected_encrypted_key_hex"]


def test_refuses_a_non_empty_oaep_label() -> None:
    with pytest.raises(CMSError, match="OAEP label must be empty"):
        parse_enveloped_data(_with_oaep_label(b"\xaa"))


def test_refuses_an_empty_encrypted_key() -> None:
    encrypted_key = SDKC[0]["expected_encrypted_key_hex"]
    edited = _edit_recipient_info(("04820100" + encrypted_key, "0400"))
    with pytest.raises(CMSError, match="encryptedKey of 0 bytes"):
        parse_enveloped_data(edited)


def test_refuses_a_key_id_that_is_not_32_bytes() -> None:
    ski = SDKC[0]["expected_rid_ski_hex"]
    edited = _edit_recipient_info(("8020" + ski, "8014" + ski[:40]))  # SHA-1 sized
    with pytest.raises(CMSError, match="32-byte SHA-256 key id, got 20"):
        parse_enveloped_data(edited)


def test_refuses_input_larger_than_the_cap() -> None:
    with pytest.raises(CMSError, match="exceeds"):
        parse_enveloped_data(bytes(2 << 20))


# --- (4) the simulator's writer ---------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 7, 4096])
@pytest.mark.parametrize("size", [0, 33, 4000])
def test_writer_output_opens_with_openssl_and_with_ours(
    recipient: Recipient, chunk_size: int | None, size: int
) -> None:
    plaintext = _plaintext(size)
    public_key = recipient.private_key.public_key()
    blob = encode_enveloped_data(plaintext, public_key, chunk_size=chunk_size)
    opened = _openssl(
        "cms", "-decrypt", "-inform", "DER", "-recip", str(recipient.cert_pem),
        "-inkey", str(recipient.key_pem), *OAEP_SHA256_KEYOPTS, stdin=blob,
    )  # fmt: skip
    assert opened == plaintext
    assert decrypt_enveloped_data(blob, recipient.private_key) == plaintext
    content = _encrypted_content_node(blob)
    ciphertext_size = (size // 16 + 1) * 16
    if chunk_size is None:
        assert not content.constructed
    else:
        assert content.constructed and len(content.children) == -(-ciphertext_size // chunk_size)


@pytest.mark.parametrize(("vector", "size", "chunk_size"), [(SDKC[0], 40, 48), (SDKC[1], 5, None)])
def test_writer_layout_equals_kms_vectors_apart_from_random_fields(
    recipient: Recipient, vector: dict[str, str], size: int, chunk_size: int | None
) -> None:
    public_key = recipient.private_key.public_key()
    blob = encode_enveloped_data(bytes(size), public_key, chunk_size=chunk_size)
    ours = parse_enveloped_data(blob)
    for field, key in [
        (ours.recipient_key_id, "expected_rid_ski_hex"),
        (ours.encrypted_key, "expected_encrypted_key_hex"),
        (ours.iv, "expected_iv_hex"),
        (ours.encrypted_content, "expected_ciphertext_hex"),
    ]:
        blob = _replace_once(blob, field, bytes.fromhex(vector[key]))
    assert blob.hex() == vector["ber_hex"]


def test_writer_uses_a_fresh_key_and_iv_each_time(recipient: Recipient) -> None:
    public_key = recipient.private_key.public_key()
    first = parse_enveloped_data(encode_enveloped_data(b"same", public_key))
    second = parse_enveloped_data(encode_enveloped_data(b"same", public_key))
    assert first.iv != second.iv and first.encrypted_content != second.encrypted_content


def test_writer_rejects_a_chunk_size_below_one(recipient: Recipient) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        encode_enveloped_data(b"x", recipient.private_key.public_key(), chunk_size=0)


# --- the BER decoder ----------------------------------------------------------------------------


def test_ber_definite_and_indefinite_lengths_decode_to_the_same_tree() -> None:
    definite = ber.decode(bytes.fromhex("3008 0201 05 a003 0401 aa".replace(" ", "")))
    indefinite = ber.decode(bytes.fromhex("3080 0201 05 a080 0401 aa 0000 0000".replace(" ", "")))
    assert definite == indefinite
    assert ber.decode_integer(definite.children[0]) == 5
    assert definite.children[1].children[0].value == b"\xaa"


BER_REFUSALS = [
    ("", "ends where a tag"),
    ("02", "ends where a length"),
    ("0201", "claims 1 bytes but only 0 remain"),
    ("3003020205 06", "claims 2 bytes but only 1 remain"),
    ("0480", "primitive value with indefinite length"),
    ("3080 020105", "before the end-of-contents"),
    ("3080 0001", "end-of-contents marker with non-zero length"),
    ("0000", "end-of-contents marker where a value"),
    ("3002 0000", "end-of-contents marker where a value"),
    ("1f2200", "above 30"),
    ("04ff", "reserved length"),
    ("0485 0100000000", "too wide"),
    ("3003 020105 00", "1 trailing byte"),
]


@pytest.mark.parametrize(("hex_input", "message"), BER_REFUSALS, ids=[m for _, m in BER_REFUSALS])
def test_ber_refuses_malformed_input(hex_input: str, message: str) -> None:
    with pytest.raises(BERError, match=message):
        ber.decode(bytes.fromhex(hex_input.replace(" ", "")))


def test_ber_nesting_cap_is_exact() -> None:
    def nested(depth: int) -> bytes:
        return b"\x30\x80" * depth + b"\x00\x00" * depth

    ber.decode(nested(8), max_depth=8)
    with pytest.raises(BERError, match="deeper than 8"):
        ber.decode(nested(9), max_depth=8)


def test_ber_item_cap_is_exact() -> None:
    def items(count: int) -> bytes:  # one SEQUENCE holding count - 1 NULLs
        return b"\x30\x80" + b"\x05\x00" * (count - 1) + b"\x00\x00"

    ber.decode(items(50), max_items=50)
    with pytest.raises(BERError, match="more than 50 values"):
        ber.decode(items(51), max_items=50)


@pytest.mark.parametrize(
    ("hex_input", "expected"),
    [("020100", 0), ("02017f", 127), ("02020080", 128), ("0201ff", -1), ("0202ff7f", -129)],
)
def test_ber_integer_values(hex_input: str, expected: int) -> None:
    assert ber.decode_integer(ber.decode(bytes.fromhex(hex_input))) == expected


@pytest.mark.parametrize("hex_input", ["0200", "02020001", "0202ff80", "0209010000000000000000"])
def test_ber_integer_refuses_empty_non_minimal_and_oversized(hex_input: str) -> None:
    with pytest.raises(BERError):
        ber.decode_integer(ber.decode(bytes.fromhex(hex_input)))


@pytest.mark.parametrize(
    ("hex_input", "expected"),
    [
        ("06092a864886f70d010703", "1.2.840.113549.1.7.3"),
        ("060960864801650304012a", "2.16.840.1.101.3.4.1.42"),
        ("0603883703", "2.999.3"),  # the X.690 section 8.19.5 example
    ],
)
def test_ber_oid_values(hex_input: str, expected: str) -> None:
    assert ber.decode_oid(ber.decode(bytes.fromhex(hex_input))) == expected


@pytest.mark.parametrize("hex_input", ["0600", "06022a86", "06032a8001", "0401aa"])
def test_ber_oid_refuses_empty_truncated_padded_or_wrong_type(hex_input: str) -> None:
    with pytest.raises(BERError):
        ber.decode_oid(ber.decode(bytes.fromhex(hex_input)))


def test_ber_octet_string_reassembles_nested_segments() -> None:
    segmented = ber.decode(bytes.fromhex("2480 0402aabb 2403 0401cc 0000".replace(" ", "")))
    assert ber.decode_octet_string(segmented) == b"\xaa\xbb\xcc"


def test_ber_octet_string_refuses_segments_of_another_type() -> None:
    with pytest.raises(BERError, match="expected an OCTET STRING"):
        ber.decode_octet_string(ber.decode(bytes.fromhex("2403020105")))


# --- (4b) the boundary: whatever the input, only BERError and CMSError leave ------------------


@pytest.mark.parametrize("bad", ["3000", None, 2**62, [0x30, 0x00], 1.5])
def test_ber_and_cms_refuse_input_that_is_not_bytes_before_touching_it(bad: object) -> None:
    # 2**62 once went to bytes(), which tries to allocate that many zero bytes.
    with pytest.raises(BERError, match="BER input must be bytes"):
        ber.decode(bad)  # type: ignore[arg-type]
    with pytest.raises(CMSError, match="input must be bytes"):
        parse_enveloped_data(bad)  # type: ignore[arg-type]


def test_ber_limits_outside_the_safe_range_are_refused() -> None:
    for depth in (0, -1, 201, 10_000, True):
        with pytest.raises(BERError, match="max_depth"):
            ber.decode(b"\x05\x00", max_depth=depth)
    for items in (0, -1, True):
        with pytest.raises(BERError, match="max_items"):
            ber.decode(b"\x05\x00", max_items=items)


def test_recursion_error_from_a_deep_caller_becomes_ber_and_cms_errors() -> None:
    deepest = b"\x30\x80" * ber.DEFAULT_MAX_DEPTH + b"\x00\x00" * ber.DEFAULT_MAX_DEPTH
    assert with_frames_left(200, lambda: ber.decode(deepest)).constructed
    with pytest.raises(BERError, match="RecursionError") as caught:
        with_frames_left(20, lambda: ber.decode(deepest))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    vector = bytes.fromhex(SDKC[0]["ber_hex"])
    with pytest.raises(CMSError, match="RecursionError"):
        with_frames_left(14, lambda: parse_enveloped_data(vector))


def test_an_unforeseen_failure_in_a_structure_check_is_a_cmserror_naming_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(node: ber.TLV) -> tuple[bytes, bytes]:
        raise KeyError("secret-looking input")

    monkeypatch.setattr("enclave.cms._key_trans_recipient_info", broken)
    with pytest.raises(CMSError, match=r"malformed EnvelopedData \(KeyError") as caught:
        parse_enveloped_data(bytes.fromhex(SDKC[0]["ber_hex"]))
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_unforeseen_failure_in_the_cryptography_is_the_one_opaque_error(
    monkeypatch: pytest.MonkeyPatch, recipient: Recipient
) -> None:
    def broken(content_key: bytes, iv: bytes, encrypted_content: bytes) -> bytes:
        raise TypeError("a failure cryptography could add in a later release")

    monkeypatch.setattr("enclave.cms._decrypt_content", broken)
    blob = encode_enveloped_data(b"k" * 32, recipient.private_key.public_key())
    with pytest.raises(CMSError) as caught:
        decrypt_enveloped_data(blob, recipient.private_key)
    assert str(caught.value) == DECRYPTION_FAILED


@pytest.mark.parametrize("vector", SDKC, ids=[v["name"] for v in SDKC])
def test_any_node_of_a_kms_vector_replaced_removed_or_repeated_raises_only_cmserror(
    vector: dict[str, str],
) -> None:
    """Every node in turn becomes each other kind of node, goes, or appears twice; the tree
    is encoded again, so the BER stays well-formed and the CMS checks are what refuse it."""
    tree = ber.decode(bytes.fromhex(vector["ber_hex"]))
    refused = 0
    for path in ber_tree.paths(tree):
        edits = [ber_tree.replace(tree, path, kind) for kind in ber_tree.KINDS]
        if path:
            edits += [ber_tree.replace(tree, path, None), ber_tree.duplicate(tree, path)]
        for edited in edits:
            try:
                assert isinstance(parse_enveloped_data(ber_tree.encode(edited)), EnvelopedData)
            except CMSError as exc:
                assert exc.__cause__ is None
                refused += 1
    assert refused > 200  # most edits break the KMS shape; a few only change a value's bytes


# --- (5) fuzzing: only the module's own error type escapes ------------------------------------


_MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=1 << 16),
    st.binary(min_size=1, max_size=4),
)


def _mutate(blob: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    for kind, where, extra in mutations:
        at = where % (len(blob) + 1)
        if kind == "flip" and at < len(blob):
            blob = blob[:at] + bytes([blob[at] ^ (extra[0] or 1)]) + blob[at + 1 :]
        elif kind == "insert":
            blob = blob[:at] + extra + blob[at:]
        elif kind == "delete":
            blob = blob[:at] + blob[at + len(extra) :]
        elif kind == "truncate":
            blob = blob[:at]
    return blob


@pytest.fixture(scope="module")
def fuzz_seed(recipient: Recipient) -> bytes:
    """An openssl-streamed blob: indefinite lengths and a segmented encryptedContent."""
    blob = _openssl_encrypt(b"data key 32 bytes long, exactly!", recipient)
    assert _encrypted_content_node(blob).constructed
    return blob


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_blobs_raise_only_cmserror(
    recipient: Recipient, fuzz_seed: bytes, mutations: list[tuple[str, int, bytes]]
) -> None:
    mutated = _mutate(fuzz_seed, mutations)
    try:
        decrypt_enveloped_data(mutated, recipient.private_key)
    except CMSError:
        pass
