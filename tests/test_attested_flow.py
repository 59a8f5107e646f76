"""The issue's proof: KMS releases the list's data key only to the enclave its policy names.

SimulatedNSM (attestation documents) + LocalKMS (the key policy, Recipient) + our KMSClient
and AttestedDecryptor, end to end over HTTP. The format of what the local KMS answers is
checked by independent parties: ``openssl cms -decrypt`` opens its CiphertextForRecipient and
botocore parses its Recipient answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import enclave
import noflylist
from enclave import cms
from enclave.attested_decrypt import AttestedDecryptor, UnsafeUnattestedDecryptor
from enclave.kms import KMSClient, KMSError, Recipient
from enclave.modes import AttestationMode
from enclave.nsm import SecureModule
from enclave.retry import RetryPolicy
from enclave.sigv4 import Credentials
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.kms_server import LocalKMS
from noflylist_simulator.nsm import SimulatedNSM, measure_pcr0
from tests.conftest import VECTORS
from tests.test_cms import OAEP_SHA256_KEYOPTS, _openssl

REGION = "us-east-1"
ACCOUNT = "111122223333"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:user/list-operator"
ENCLAVE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/noflylist-enclave"
NO_RETRY = RetryPolicy(deadline=5.0, max_attempts=1)
CONTEXT = {"purpose": "noflylist data key"}
OTHER_IMAGE = hashlib.sha384(b"some other enclave image").digest()


class Static:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def get(self) -> Credentials:
        return self.credentials


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCA:
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def nsm(ca: SimulatedCA) -> SimulatedNSM:
    """The enclave as built from this checkout: PCR0 measures the installed source."""
    return SimulatedNSM(ca)


@pytest.fixture
def kms(tmp_path: Path, ca: SimulatedCA) -> Iterator[LocalKMS]:
    with LocalKMS(tmp_path / "kms", simulator_root=ca.root) as server:
        yield server


class Setup:
    """The operator's key and data key, and the enclave role's KMS client."""

    def __init__(self, kms: LocalKMS, policy: dict[str, Any]) -> None:
        self.kms = kms
        operator = KMSClient(REGION, Static(kms.create_credentials(OPERATOR)), endpoint=kms.url,
                             environ={}, retry=NO_RETRY)  # fmt: skip
        self.key_arn = kms.create_key(OPERATOR, policy_document=json.dumps(policy))
        self.data_key = operator.generate_data_key(self.key_arn, encryption_context=CONTEXT)
        self.role_credentials = kms.create_credentials(ENCLAVE_ROLE, session_token=True)
        self.enclave = KMSClient(REGION, Static(self.role_credentials), endpoint=kms.url,
                                 environ={}, retry=NO_RETRY)  # fmt: skip

    def attested(self, module: SecureModule) -> bytes:
        decryptor = AttestedDecryptor(self.enclave, module, mode=AttestationMode.SIMULATED)
        return decryptor.decrypt(
            self.data_key.ciphertext_blob, key_id=self.key_arn, encryption_context=CONTEXT
        )

    def code_of_attested(self, module: SecureModule) -> str | None:
        with pytest.raises(KMSError) as refused:
            self.attested(module)
        return refused.value.code


def key_policy(*statements: dict[str, Any]) -> dict[str, Any]:
    operator = {"Sid": "Operator", "Effect": "Allow", "Principal": {"AWS": OPERATOR},
                "Action": "kms:*", "Resource": "*"}  # fmt: skip
    return {"Version": "2012-10-17", "Statement": [operator, *statements]}


def enclave_may_decrypt(pcr0: bytes | None) -> dict[str, Any]:
    """The enclave role may Decrypt; with ``pcr0``, only from an enclave measuring that PCR0
    (written in upper case, as AWS's examples allow with StringEqualsIgnoreCase)."""
    statement = {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": ENCLAVE_ROLE},
                 "Action": "kms:Decrypt", "Resource": "*"}  # fmt: skip
    if pcr0 is not None:
        statement["Condition"] = {
            "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0.hex().upper()}
        }
    return statement


DENY_UNATTESTED = {
    "Sid": "Attested decryption only", "Effect": "Deny", "Principal": "*",
    "Action": "kms:Decrypt", "Resource": "*",
    "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}},
}  # fmt: skip


# -- the flow ---------------------------------------------------------------------------------


def image(module: SimulatedNSM) -> bytes:
    """The PCR0 a simulated enclave reports (measured when it was made)."""
    return module.describe_pcr(0).data


def test_enclave_with_the_pinned_pcr0_gets_the_data_key(kms: LocalKMS, nsm: SimulatedNSM) -> None:
    setup = Setup(kms, key_policy(enclave_may_decrypt(image(nsm))))
    assert setup.data_key.plaintext is not None and len(setup.data_key.plaintext) == 32
    assert setup.attested(nsm) == setup.data_key.plaintext


def test_policy_pinned_to_another_pcr0_is_access_denied(kms: LocalKMS, nsm: SimulatedNSM) -> None:
    setup = Setup(kms, key_policy(enclave_may_decrypt(OTHER_IMAGE)))
    assert setup.code_of_attested(nsm) == "AccessDeniedException"


def test_debug_mode_enclave_is_denied_by_a_pcr0_policy(
    kms: LocalKMS, ca: SimulatedCA, nsm: SimulatedNSM
) -> None:
    """Its document verifies (so not ValidationException); its zero PCR0 fails the policy."""
    setup = Setup(kms, key_policy(enclave_may_decrypt(image(nsm))))
    assert setup.code_of_attested(SimulatedNSM(ca, debug=True)) == "AccessDeniedException"


def test_one_changed_source_line_changes_pcr0_and_is_denied(
    kms: LocalKMS, ca: SimulatedCA, tmp_path: Path
) -> None:
    tree = tmp_path / "image"
    for package in (enclave, noflylist):
        source = Path(package.__file__).parent
        shutil.copytree(source, tree / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    built = measure_pcr0(tree / "enclave", tree / "noflylist")
    assert built == measure_pcr0()  # a faithful copy measures like the installed source
    screening = tree / "noflylist" / "table.py"
    lines = screening.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("return"))
    lines[index] = lines[index].rstrip("\n") + "  # one edited line\n"
    screening.write_text("".join(lines))
    edited = measure_pcr0(tree / "enclave", tree / "noflylist")
    assert edited != built

    setup = Setup(kms, key_policy(enclave_may_decrypt(built)))
    assert setup.code_of_attested(SimulatedNSM(ca, pcr0=edited)) == "AccessDeniedException"
    assert setup.attested(SimulatedNSM(ca, pcr0=built)) == setup.data_key.plaintext


class TamperedNSM(SimulatedNSM):
    """Its documents have one byte of the COSE signature changed (the document's last byte:
    the signature, a 96-byte string, ends the COSE_Sign1 array)."""

    def attestation(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        document = super().attestation(public_key=public_key, user_data=user_data, nonce=nonce)
        return document[:-1] + bytes([document[-1] ^ 0x01])


def test_tampered_document_signature_is_refused(kms: LocalKMS, ca: SimulatedCA) -> None:
    tampered = TamperedNSM(ca)
    setup = Setup(kms, key_policy(enclave_may_decrypt(image(tampered))))
    with pytest.raises(KMSError) as refused:
        setup.attested(tampered)
    assert refused.value.code == "ValidationException"
    assert "signature" in str(refused.value)


def test_documents_from_another_root_are_refused(kms: LocalKMS, tmp_path: Path) -> None:
    """A simulator CA the local KMS does not trust, and a real AWS Nitro document (signed by
    AWS's root, and years old): neither verifies against the simulator's root."""
    setup = Setup(kms, key_policy(enclave_may_decrypt(None)))
    stranger = SimulatedNSM(load_or_create(tmp_path / "another-ca"))
    assert setup.code_of_attested(stranger) == "ValidationException"
    real = (VECTORS / "nitro" / "production-2023-01-18.cbor").read_bytes()
    with pytest.raises(KMSError) as refused:
        setup.enclave.decrypt(setup.data_key.ciphertext_blob, encryption_context=CONTEXT,
                              recipient=Recipient(real))  # fmt: skip
    assert refused.value.code == "ValidationException"


def test_unsafe_none_works_only_where_the_policy_allows_unattested_decryption(
    kms: LocalKMS, nsm: SimulatedNSM
) -> None:
    setup = Setup(kms, key_policy(enclave_may_decrypt(None)))
    unsafe = UnsafeUnattestedDecryptor(setup.enclave)
    blob = setup.data_key.ciphertext_blob
    assert unsafe.decrypt(blob, encryption_context=CONTEXT) == setup.data_key.plaintext

    strict = key_policy(enclave_may_decrypt(image(nsm)), DENY_UNATTESTED)
    kms.put_key_policy(setup.key_arn, json.dumps(strict), principal_arn=OPERATOR)
    with pytest.raises(KMSError) as denied:
        unsafe.decrypt(blob, encryption_context=CONTEXT)
    assert denied.value.code == "AccessDeniedException"
    assert "explicit deny" in str(denied.value)
    assert setup.attested(nsm) == setup.data_key.plaintext  # attested decryption still works


def test_recipient_needs_rsa_oaep_sha256_and_a_public_key(kms: LocalKMS, nsm: SimulatedNSM) -> None:
    setup = Setup(kms, key_policy(enclave_may_decrypt(None)))
    public = _rsa_public_der()
    for recipient in (
        Recipient(nsm.attestation(public_key=public), key_encryption_algorithm="RSAES_OAEP_SHA_1"),
        Recipient(nsm.attestation()),  # no public key in the document
        Recipient(nsm.attestation(public_key=b"\x30\x03\x02\x01\x01")),  # not a key
    ):
        with pytest.raises(KMSError) as refused:
            setup.enclave.decrypt(setup.data_key.ciphertext_blob, encryption_context=CONTEXT,
                                  recipient=recipient)  # fmt: skip
        assert refused.value.code == "ValidationException"


# -- independent parties read the answers ---------------------------------------------------------


def _rsa_public_der() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def openssl_recipient(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """An RSA-2048 key made by openssl, a certificate whose SKI is SHA-256 of the SPKI (how
    KMS names the recipient), and the SPKI DER to put in the attestation document."""
    folder = tmp_path_factory.mktemp("openssl")
    key_pem, cert_pem = folder / "key.pem", folder / "cert.pem"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key_pem)
    )
    spki = _openssl("pkey", "-in", str(key_pem), "-pubout", "-outform", "DER")
    _openssl(
        "req", "-x509", "-new", "-key", str(key_pem), "-subj", "/CN=enclave", "-days", "1",
        "-addext", f"subjectKeyIdentifier={hashlib.sha256(spki).hexdigest()}",
        "-out", str(cert_pem),
    )  # fmt: skip
    return key_pem, cert_pem, spki


def _openssl_open(blob: bytes, recipient: tuple[Path, Path, bytes]) -> bytes:
    key_pem, cert_pem, _ = recipient
    return _openssl(
        "cms", "-decrypt", "-inform", "DER", "-recip", str(cert_pem), "-inkey", str(key_pem),
        *OAEP_SHA256_KEYOPTS, stdin=blob,
    )  # fmt: skip


def test_openssl_opens_ciphertext_for_recipient_of_decrypt_and_generate_data_key(
    kms: LocalKMS, nsm: SimulatedNSM, openssl_recipient: tuple[Path, Path, bytes]
) -> None:
    setup = Setup(kms, key_policy(enclave_may_decrypt(image(nsm)),
                                  {**enclave_may_decrypt(image(nsm)),
                                   "Action": "kms:GenerateDataKey"}))  # fmt: skip
    recipient = Recipient(nsm.attestation(public_key=openssl_recipient[2]))
    answer = setup.enclave.decrypt(setup.data_key.ciphertext_blob, encryption_context=CONTEXT,
                                   recipient=recipient)  # fmt: skip
    assert answer.plaintext is None and answer.ciphertext_for_recipient is not None
    assert _openssl_open(answer.ciphertext_for_recipient, openssl_recipient) == (
        setup.data_key.plaintext
    )

    fresh = setup.enclave.generate_data_key(setup.key_arn, encryption_context=CONTEXT,
                                            recipient=recipient)  # fmt: skip
    assert fresh.plaintext is None and fresh.ciphertext_for_recipient is not None
    opened = _openssl_open(fresh.ciphertext_for_recipient, openssl_recipient)
    assert len(opened) == 32
    again = setup.enclave.decrypt(fresh.ciphertext_blob, encryption_context=CONTEXT,
                                  recipient=recipient)  # fmt: skip
    assert again.ciphertext_for_recipient is not None
    assert _openssl_open(again.ciphertext_for_recipient, openssl_recipient) == opened


def test_botocore_parses_recipient_answers_without_plaintext(
    kms: LocalKMS, nsm: SimulatedNSM
) -> None:
    setup = Setup(kms, key_policy(enclave_may_decrypt(image(nsm))))
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                 "AttestationDocument": nsm.attestation(public_key=public)}  # fmt: skip
    credentials = setup.role_credentials
    client = botocore.session.get_session().create_client(
        "kms", region_name=REGION, endpoint_url=kms.url,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token, config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    answer = client.decrypt(CiphertextBlob=setup.data_key.ciphertext_blob, Recipient=recipient,
                            EncryptionContext=CONTEXT)  # fmt: skip
    assert "Plaintext" not in answer and answer["KeyId"] == setup.key_arn
    opened = cms.decrypt_enveloped_data(answer["CiphertextForRecipient"], private_key)
    assert opened == setup.data_key.plaintext

    random = client.generate_random(NumberOfBytes=48, Recipient=recipient)
    assert "Plaintext" not in random
    assert len(cms.decrypt_enveloped_data(random["CiphertextForRecipient"], private_key)) == 48
