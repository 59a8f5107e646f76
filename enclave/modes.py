"""The attestation modes: how a process proves to KMS (and to clients) which code it runs.

One enum, so that the configuration, the decryptor (:mod:`enclave.attested_decrypt`, where a
mode is interpreted), the attestation route, the simulator and the client tools all spell a
mode the same way. It is a module of its own, standard library only, because each of those
reads it and none of them should have to import KMS, ``cryptography`` or the NSM device
driver to do so (``noflylist check`` compares the service's mode header with it).

The values are what ``--attestation`` and ``NOFLYLIST_ATTESTATION`` take, and what the
``X-Noflylist-Attestation`` header says; a :class:`~enum.StrEnum` member equals its string.
"""

from __future__ import annotations

import enum

__all__ = ["AttestationMode"]


class AttestationMode(enum.StrEnum):
    """How a process attests; chosen once at start-up, never changed, never a fallback."""

    #: The production path: documents from ``/dev/nsm``, signed by AWS's Nitro PKI.
    NSM = "nsm"
    #: A local simulator's NSM: documents signed by a throwaway root; they prove nothing.
    SIMULATED = "simulated"
    #: No attestation: KMS returns the data key in clear. Development against a real KMS only.
    UNSAFE_NONE = "unsafe-none"
