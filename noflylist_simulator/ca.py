"""A throwaway certificate chain for the simulated NSM: root -> intermediate -> leaf, all P-384.

It copies the shape of AWS's Nitro chain (ECDSA P-384 with SHA-384 everywhere; CA certificates
with basicConstraints CA and keyCertSign; a leaf that may only sign and lives about three
hours, renewed as it nears expiry) so the code that verifies real attestation documents can
be run against simulated ones. Nothing it signs proves anything: the root is made here.

The chain lives in a state folder as PEM files so a demo keeps its root across restarts:
``root.pem``/``root.key.pem``, ``intermediate.pem``/``intermediate.key.pem`` and
``leaf.pem``/``leaf.key.pem``; private keys are written with mode 0600 and refused if anyone
but the owner may read them. A missing, mismatched or nearly expired intermediate or leaf is
simply made again; the root is never replaced behind the user's back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave.errors import NoflylistError
from noflylist_simulator.files import (
    PRIVATE_FILE_MODE,
    PRIVATE_FOLDER_MODE,
    shared_mode,
    write_atomically,
)

#: Long enough to outlive any demo; to start over, delete the state folder.
ROOT_LIFETIME = timedelta(days=3650)
#: AWS's regional intermediates live a few weeks; ours is renewed like them.
INTERMEDIATE_LIFETIME = timedelta(days=30)
#: Renew the intermediate this long before it expires, so no leaf outlives its issuer.
INTERMEDIATE_RENEW_BEFORE = timedelta(days=1)
#: AWS's attestation leaf certificates live about three hours.
LEAF_LIFETIME = timedelta(hours=3)
#: Renew the leaf this long before it expires, so a fresh document stays verifiable a while.
LEAF_RENEW_BEFORE = timedelta(minutes=30)
#: Certificates start this far in the past so a verifier whose clock lags a little accepts them.
CLOCK_SKEW = timedelta(minutes=5)

_ORGANIZATION = "noflylist SIMULATED NSM (not AWS; proves nothing)"


class SimulatedCAError(NoflylistError):
    """The simulated CA's state folder cannot be used as it is."""


@dataclass(frozen=True)
class _Pair:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningLeaf:
    """What signing one document needs, taken together so the parts always belong together.

    ``cabundle`` is the DER chain above the leaf, root first, as in a Nitro document.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cabundle: tuple[bytes, ...]


class SimulatedCA:
    """The simulated chain. Build it with :func:`load_or_create`, never directly."""

    def __init__(self, folder: Path, root: _Pair, intermediate: _Pair, leaf: _Pair) -> None:
        self._folder = folder
        self._root = root
        self._intermediate = intermediate
        self._leaf = leaf
        self._lock = threading.Lock()

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor to give a verifier instead of the AWS Nitro root."""
        return self._root.certificate

    @property
    def intermediate(self) -> x509.Certificate:
        """The CA certificate that issues the leaves."""
        return self._intermediate.certificate

    def signing_leaf(self, now: datetime | None = None) -> SigningLeaf:
        """Return the current leaf, its key and the bundle above it, renewed near expiry."""
        now = _utc(now)
        with self._lock:
            self._intermediate, self._leaf = _fresh_below_root(
                self._folder, self._root, self._intermediate, self._leaf, now
            )
            return SigningLeaf(
                certificate=self._leaf.certificate,
                key=self._leaf.key,
                cabundle=(_der(self._root.certificate), _der(self._intermediate.certificate)),
            )


def load_or_create(folder: Path, *, now: datetime | None = None) -> SimulatedCA:
    """Load the chain kept in ``folder``, creating the folder and any missing part."""
    now = _utc(now)
    folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
    root = _load_pair(folder, "root", required_together=True)
    if root is None:
        root = _issue(_root_name(), None, now, ROOT_LIFETIME, ca=True)
        _save_pair(folder, "root", root)
    elif root.certificate.not_valid_after_utc <= now:
        raise SimulatedCAError(
            f"the simulated root in {folder} has expired: delete the folder to make a new one "
            "(and give verifiers the new root)"
        )
    intermediate = _load_pair(folder, "intermediate", required_together=False)
    leaf = _load_pair(folder, "leaf", required_together=False)
    intermediate, leaf = _fresh_below_root(folder, root, intermediate, leaf, now)
    return SimulatedCA(folder, root, intermediate, leaf)


def _fresh_below_root(
    folder: Path, root: _Pair, intermediate: _Pair | None, leaf: _Pair | None, now: datetime
) -> tuple[_Pair, _Pair]:
    """Keep the intermediate and leaf if still valid for a while; otherwise issue new ones."""
    if intermediate is None or not _usable(intermediate, root, now, INTERMEDIATE_RENEW_BEFORE):
        intermediate = _issue(_intermediate_name(), root, now, INTERMEDIATE_LIFETIME, ca=True)
        _save_pair(folder, "intermediate", intermediate)
        leaf = None  # a new issuer needs a new leaf
    if leaf is None or not _usable(leaf, intermediate, now, LEAF_RENEW_BEFORE):
        leaf = _issue(_leaf_name(), intermediate, now, LEAF_LIFETIME, ca=False)
        _save_pair(folder, "leaf", leaf)
    return intermediate, leaf


def _usable(pair: _Pair, issuer: _Pair, now: datetime, renew_before: timedelta) -> bool:
    """True if ``pair`` was issued by ``issuer``, holds its own key and stays valid a while."""
    try:
        pair.certificate.verify_directly_issued_by(issuer.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    matches = _spki(pair.certificate.public_key()) == _spki(pair.key.public_key())
    return matches and now + renew_before < pair.certificate.not_valid_after_utc


def _issue(
    subject: x509.Name, issuer: _Pair | None, now: datetime, lifetime: timedelta, *, ca: bool
) -> _Pair:
    """Make a P-384 key and a certificate for it, signed by ``issuer`` (self-signed if None)."""
    key = ec.generate_private_key(ec.SECP384R1())
    signer = issuer.key if issuer is not None else key
    issuer_name = issuer.certificate.subject if issuer is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        builder = builder.add_extension(aki, critical=False)
    # A root may issue anything; the intermediate only leaves (like AWS's instance CA).
    path_length = None if issuer is None else 0
    builder = builder.add_extension(
        x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
    )
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    return _Pair(builder.sign(signer, hashes.SHA384()), key)


def _root_name() -> x509.Name:
    return _name("SIMULATED Nitro Enclaves root - development only")


def _intermediate_name() -> x509.Name:
    return _name("SIMULATED Nitro Enclaves intermediate - development only")


def _leaf_name() -> x509.Name:
    return _name("SIMULATED Nitro Enclaves attestation leaf - development only")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the state folder ------------------------------------------------------------------------


def _load_pair(folder: Path, name: str, *, required_together: bool) -> _Pair | None:
    """Read ``name.pem`` and ``name.key.pem``; None if either is absent and that is allowed."""
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key.pem"
    present = cert_path.exists(), key_path.exists()
    if not all(present):
        if required_together and any(present):
            raise SimulatedCAError(
                f"{folder} holds only half of the simulated {name} (certificate and key must "
                "both exist): restore the missing file or delete the folder to start over"
            )
        return None
    mode = shared_mode(key_path)
    if mode is not None:
        raise SimulatedCAError(
            f"{key_path} may be read by others (mode {mode:o}): run chmod 600 on it"
        )
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        raise SimulatedCAError(
            f"the simulated {name} in {folder} is not readable PEM: delete the folder to start over"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise SimulatedCAError(f"{key_path} is not a P-384 key: delete the folder to start over")
    if required_together and _spki(certificate.public_key()) != _spki(key.public_key()):
        raise SimulatedCAError(
            f"{cert_path} and {key_path} do not belong together: delete the folder to start over"
        )
    return _Pair(certificate, key)


def _save_pair(folder: Path, name: str, pair: _Pair) -> None:
    """Write the key then the certificate, each atomically; the key is private to its owner."""
    key_pem = pair.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # a throwaway development key, kept in a 0600 file
    )
    write_atomically(folder / f"{name}.key.pem", key_pem, PRIVATE_FILE_MODE)
    cert_pem = pair.certificate.public_bytes(serialization.Encoding.PEM)
    write_atomically(folder / f"{name}.pem", cert_pem, 0o644)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise SimulatedCAError("times given to the simulated CA must carry a time zone")
    return now.astimezone(UTC)
