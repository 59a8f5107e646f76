"""Attested decryption: KMS releases a data key only to an enclave its key policy trusts.

The flow (AWS KMS Developer Guide, "How AWS Nitro Enclaves uses AWS KMS"):

1. make a fresh RSA-2048 key pair, in memory only, for this one call;
2. ask the Nitro Secure Module for an attestation document whose ``public_key`` is that
   key's DER SubjectPublicKeyInfo (the document also carries the enclave's PCRs, signed by
   AWS's certificate chain);
3. call KMS ``Decrypt`` with ``Recipient = {RSAES_OAEP_SHA_256, document}``; KMS checks the
   document and the key policy's ``kms:RecipientAttestation:*`` conditions, and answers
   ``CiphertextForRecipient``: a CMS EnvelopedData addressed to our public key;
4. open it with the private key (:func:`enclave.cms.decrypt_enveloped_data`).

A fresh key per call means no long-lived private key exists to steal, and no answer
recorded earlier can be replayed into a later process.

How a process attests (:class:`enclave.modes.AttestationMode`) is chosen once, at start-up,
and logged (:func:`open_module`, :func:`make_decryptor`):
``nsm`` (the production path), ``simulated`` (a local simulator's NSM; development and
tests only) and ``unsafe-none`` (no attestation at all; for development against a real
KMS from a laptop). There is no silent fallback from one to another.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave import cms
from enclave.errors import NoflylistError
from enclave.kms import KMSClient, KMSError, Recipient
from enclave.modes import AttestationMode
from enclave.nsm import SecureModule

log = logging.getLogger(__name__)

#: RSA modulus size for the per-call key. KMS accepts RSA-2048 and larger; 2048 keeps key
#: generation near 50 ms and suffices for a key that lives for one call.
RSA_KEY_BITS = 2048


class Decryptor(Protocol):
    """Turns a KMS ciphertext blob into the data key, however this process attests."""

    mode: AttestationMode

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes: ...


class AttestedDecryptor:
    """KMS ``Decrypt`` with a ``Recipient`` made from ``module``'s attestation document.

    ``module`` is the real NSM device in production; the simulator's NSM in ``simulated``
    mode. Nothing here knows which one it has.
    """

    def __init__(
        self, kms: KMSClient, module: SecureModule, *, mode: AttestationMode = AttestationMode.NSM
    ) -> None:
        self._kms = kms
        self._module = module
        self.mode = mode

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes:
        """Steps 1-4 of the module docstring; the private key never leaves this function."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document = self._module.attestation(public_key=public_der)
        result = self._kms.decrypt(
            ciphertext_blob,
            key_id=key_id,
            encryption_context=encryption_context,
            recipient=Recipient(document),
        )
        if result.ciphertext_for_recipient is None:  # KMSClient already refuses this
            raise KMSError("KMS Decrypt answered no CiphertextForRecipient")
        return cms.decrypt_enveloped_data(result.ciphertext_for_recipient, private_key)


class UnsafeUnattestedDecryptor:
    """KMS ``Decrypt`` without attestation: KMS sends the data key in clear.

    Only for development against a real KMS from a machine that is not an enclave. Every
    use logs a warning, because a service running like this protects nothing.
    """

    mode = AttestationMode.UNSAFE_NONE

    def __init__(self, kms: KMSClient) -> None:
        self._kms = kms

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes:
        log.warning(
            "UNSAFE: decrypting the data key WITHOUT attestation (--attestation unsafe-none); "
            "KMS returns it in clear and any host can read it. Never run this in production."
        )
        result = self._kms.decrypt(
            ciphertext_blob, key_id=key_id, encryption_context=encryption_context
        )
        if result.plaintext is None:  # KMSClient already requires it
            raise KMSError("KMS Decrypt answered no Plaintext")
        return result.plaintext


class AttestationModeError(NoflylistError):
    """The requested attestation mode cannot be used here; the message says what to do."""


def open_module(
    mode: AttestationMode, *, simulated_module: SecureModule | None = None
) -> SecureModule | None:
    """The secure module for ``mode``: the NSM device, the simulator's, or none.

    ``nsm`` opens ``/dev/nsm`` now, so a missing device fails at start-up with the reason
    rather than at the first key fetch. ``simulated`` needs the simulator's NSM passed in
    (the simulator is not part of the enclave image, so this module never imports it).
    """
    if mode == AttestationMode.NSM:
        from enclave.nsm import NitroSecureModule

        return NitroSecureModule()
    if mode == AttestationMode.SIMULATED:
        if simulated_module is None:
            raise AttestationModeError(
                "--attestation simulated needs the local enclave simulator's NSM, which "
                "`noflylist serve` never loads (it is not in the enclave image): run "
                "`python -m noflylist_simulator serve --simulator-state DIR ...`, or "
                "`noflylist demo`"
            )
        return simulated_module
    if mode == AttestationMode.UNSAFE_NONE:
        return None
    raise AttestationModeError(
        f"unknown attestation mode {mode!r}; choose one of: {', '.join(AttestationMode)}"
    )


def make_decryptor(mode: AttestationMode, kms: KMSClient, module: SecureModule | None) -> Decryptor:
    """The decryptor for ``mode`` and the module :func:`open_module` gave; logged once."""
    if mode == AttestationMode.NSM and module is not None:
        log.info("attestation: nsm (/dev/nsm); KMS releases keys only to this enclave")
        return AttestedDecryptor(kms, module, mode=AttestationMode.NSM)
    if mode == AttestationMode.SIMULATED and module is not None:
        log.warning(
            "SIMULATED attestation: documents come from a local simulator and prove nothing; "
            "for development and tests only"
        )
        return AttestedDecryptor(kms, module, mode=AttestationMode.SIMULATED)
    if mode == AttestationMode.UNSAFE_NONE:
        log.warning(
            "UNSAFE: attestation disabled (--attestation unsafe-none); the data key will "
            "reach this process in clear. Never run this in production."
        )
        return UnsafeUnattestedDecryptor(kms)
    raise AttestationModeError(f"attestation mode '{mode}' needs a secure module")
