"""docs/answers.md's test vector is true, read from the page itself so that it cannot drift.

Every value is taken from the page's ``vector``, ``statement`` and ``headers`` blocks and
re-derived: the public key from RFC 8032's TEST 1 seed, the key-id, the statement's digests,
the headers' base64, our encoder's bytes and our signer's signature. The signature is checked
by ``cryptography`` and by the ``openssl pkeyutl`` command line, which also refuses the
statement with any of several bytes changed and the signature with one bit flipped.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from noflylist.answer_format import (
    SIGNATURE_HEADER,
    STATEMENT_HEADER,
    encode_statement,
    key_id,
    parse_statement,
)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "answers.md"
#: RFC 8032 section 7.1, TEST 1: the secret key and the public key, as the RFC prints them.
RFC8032_TEST1_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_TEST1_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def block(label: str) -> str:
    match = re.search(rf"```text {label}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert match, f"docs/answers.md has no ```text {label} block"
    return match.group(1)


def vector() -> dict[str, str]:
    return dict(line.split(None, 1) for line in block("vector").splitlines() if line.strip())


def statement_bytes() -> bytes:
    return block("statement").encode("ascii")


def headers() -> dict[str, str]:
    return dict(line.split(": ", 1) for line in block("headers").splitlines() if line)


def test_the_key_is_rfc_8032_test_1_and_its_key_id_is_the_page_s():
    v = vector()
    assert v["seed"] == RFC8032_TEST1_SECRET and v["public-key"] == RFC8032_TEST1_PUBLIC
    public = bytes.fromhex(v["public-key"])
    derived = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed"])).public_key()
    raw = derived.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == public
    assert key_id(public) == v["key-id"] == hashlib.sha256(public).hexdigest()[:16]


def test_the_statement_binds_the_page_s_name_body_and_envelope_and_our_encoder_agrees():
    v, data = vector(), statement_bytes()
    assert len(data) == int(v["statement-bytes"])
    statement = parse_statement(data)
    assert encode_statement(statement) == data  # our encoder writes exactly these bytes
    body = v["body"].replace("\\n", "\n").encode()
    assert statement.question_sha256 == hashlib.sha256(v["name"].encode()).digest()
    assert statement.body_sha256 == hashlib.sha256(body).digest()
    assert statement.envelope_sha256 == hashlib.sha256(b"an envelope").digest()
    assert statement.key_id == v["key-id"] and statement.verdicts == ("listed",)
    assert (statement.route, statement.status, statement.serial) == ("/enclave/passenger", 200, 7)


def test_the_headers_are_the_base64_of_the_statement_and_of_the_signature():
    v, h = vector(), headers()
    assert base64.b64decode(h[STATEMENT_HEADER], validate=True) == statement_bytes()
    assert base64.b64decode(h[SIGNATURE_HEADER], validate=True).hex() == v["signature-hex"]


def test_our_signer_makes_the_page_s_signature_and_cryptography_verifies_it():
    v = vector()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed"]))
    assert key.sign(statement_bytes()).hex() == v["signature-hex"]
    key.public_key().verify(bytes.fromhex(v["signature-hex"]), statement_bytes())


@pytest.fixture()
def openssl_files(tmp_path: Path) -> Path:
    v = vector()
    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed"])).public_key()
    (tmp_path / "answer-key.pem").write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    (tmp_path / "statement").write_bytes(statement_bytes())
    (tmp_path / "signature").write_bytes(bytes.fromhex(v["signature-hex"]))
    return tmp_path


def openssl_verify(folder: Path, statement: str = "statement", signature: str = "signature"):  # type: ignore[no-untyped-def]
    return subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(folder / "answer-key.pem"),
         "-rawin", "-in", str(folder / statement), "-sigfile", str(folder / signature)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_openssl_command_line_verifies_the_vector(openssl_files: Path):
    done = openssl_verify(openssl_files)
    assert done.returncode == 0 and "Signature Verified Successfully" in done.stdout


@pytest.mark.parametrize("position", [0, 30, 100, 180, 250, 399])
def test_openssl_refuses_the_statement_with_one_byte_changed(openssl_files: Path, position: int):
    changed = bytearray(statement_bytes())
    changed[position] ^= 0x01
    (openssl_files / "changed").write_bytes(bytes(changed))
    done = openssl_verify(openssl_files, statement="changed")
    assert done.returncode != 0 and "Signature Verification Failure" in done.stdout


def test_openssl_refuses_the_signature_with_one_bit_flipped(openssl_files: Path):
    flipped = bytearray(bytes.fromhex(vector()["signature-hex"]))
    flipped[17] ^= 0x80
    (openssl_files / "flipped").write_bytes(bytes(flipped))
    done = openssl_verify(openssl_files, signature="flipped")
    assert done.returncode != 0 and "Signature Verification Failure" in done.stdout
