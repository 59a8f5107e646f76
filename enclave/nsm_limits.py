"""The Nitro Secure Module's documented limits, in one place for its three readers.

The device wrapper (:mod:`enclave.nsm`) refuses a request the NSM would refuse, the
simulator (``noflylist_simulator.nsm``) refuses the same, and the client's verifier
(``noflylist.client.attestation``) refuses a document whose fields exceed them. The numbers
come from AWS's NSM API (``aws-nitro-enclaves-nsm-api``, ``docs/attestation_process.md``
§3.2.2.2, and the Nitro Enclaves User Guide's description of the attestation document).

This module imports nothing, so a verifier that runs on a client's machine can read the limits
without importing the device driver (:mod:`enclave.nsm` needs ``fcntl`` and ``ctypes`` for its
ioctl, and ``fcntl`` exists only on Unix).
"""

from __future__ import annotations

__all__ = [
    "MAX_NONCE_BYTES",
    "MAX_PCRS",
    "MAX_PUBLIC_KEY_BYTES",
    "MAX_USER_DATA_BYTES",
    "PCR_BYTES",
]

#: The NSM refuses a larger ``public_key``; a document's is ``bstr .size (1..1024)``.
MAX_PUBLIC_KEY_BYTES = 1024
#: As above, for ``user_data`` (``bstr .size (0..512)``).
MAX_USER_DATA_BYTES = 512
#: As above, for ``nonce`` (``bstr .size (0..512)``).
MAX_NONCE_BYTES = 512
#: The PCR bank holds 32 registers (DescribeNSM's ``max_pcrs``); a document's ``pcrs`` map has
#: 1 to 32 entries, indices 0 to 31.
MAX_PCRS = 32
#: Nitro's PCR bank is SHA-384 (DescribeNSM reports digest "SHA384").
PCR_BYTES = 48
