"""A SIMULATED Nitro Secure Module for development and tests. Its documents prove nothing.

:class:`SimulatedNSM` answers like the real NSM (:class:`enclave.nsm.SecureModule`) with
attestation documents in the real format, byte for byte in layout: an untagged COSE_Sign1 with
protected header ``{1: -35}`` (ES384), an empty unprotected map, a 96-byte ``r || s`` signature
and a payload map of the nine Nitro fields in Nitro's order. They are signed by the throwaway
chain of :mod:`noflylist_simulator.ca`, so they verify only against that chain's root.

The registers it reports (index, meaning in a real enclave, simulated value):

* PCR0 (enclave image): :func:`measure_pcr0` of the installed ``enclave`` and ``noflylist``
  source, so changing one line of the service changes PCR0, as rebuilding an image would;
* PCR1 (kernel and boot ramfs), PCR2 (application), PCR3 (parent's IAM role), PCR4 (parent
  instance) and PCR8 (image signing certificate): SHA-384 of a fixed label naming the register
  (see :data:`_LABELS`), identical on every machine;
* PCR5 to PCR15: zero, as in a real enclave.

``debug=True`` zeroes PCR0, 1, 2 and 8 as a debug-mode enclave does; PCR3 and PCR4 stay.
Errors are those of :mod:`enclave.nsm` (:class:`~enclave.nsm.NSMError`), so callers cannot
tell the simulator from the device by what it raises.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from enclave import cbor
from enclave.nsm import (
    PCR,
    NSMDeviceError,
    NSMError,
    # The device wrapper's own refusals, so the simulator and the device refuse alike.
    _check_attestation_inputs,
    _check_index,
)
from enclave.nsm_limits import MAX_PCRS, PCR_BYTES
from noflylist.client import cose
from noflylist_simulator.ca import SimulatedCA

_log = logging.getLogger(__name__)

#: The packages whose source PCR0 measures by default.
MEASURED_PACKAGES = ("enclave", "noflylist")
#: Not measured: the client library and the operator tools are never part of an enclave
#: image (the Dockerfile leaves them out), like this simulator, which is a package apart.
_UNMEASURED_PREFIXES = frozenset({("noflylist", "client"), ("noflylist", "tools")})
#: Domain separation for the PCR0 hash, versioned so a format change shows.
_PCR0_CONTEXT = b"noflylist simulated PCR0 v1\x00"
#: Registers a real NSM reports in a document (the bank holds 32; 16 to 31 are user PCRs).
DOCUMENT_PCRS = 16
#: Registers a debug-mode enclave reports as zero.
DEBUG_ZEROED_PCRS = frozenset({0, 1, 2, 8})
#: Bytes per GetRandom answer, like the NSM's.
RANDOM_BYTES = 256
#: Fixed labels the simulated PCR1..4 and PCR8 are hashed from.
_LABELS = {
    1: b"noflylist simulated PCR1: kernel and boot ramfs",
    2: b"noflylist simulated PCR2: user application",
    3: b"noflylist simulated PCR3: parent instance IAM role",
    4: b"noflylist simulated PCR4: parent instance id",
    8: b"noflylist simulated PCR8: enclave image signing certificate",
}
#: The protected header of every Nitro document: ``{1: -35}``, algorithm ES384 (RFC 9053).
_PROTECTED = cbor.encode({cose.HEADER_ALG: cose.ALG_ES384})
#: Bytes of each of r and s in an ES384 signature (RFC 9053 section 2.1).
_WARNING = (
    "SIMULATED NSM: attestation documents prove nothing; they are signed by a throwaway "
    "development CA. Never use --attestation simulated in production."
)


class SimulatedNSM:
    """A development stand-in for the NSM, signing real-format documents with ``ca``'s leaf.

    ``pcr0`` overrides the measured source (tests); ``module_id`` defaults to a name derived
    from the CA's root, stable across restarts.
    """

    def __init__(
        self,
        ca: SimulatedCA,
        *,
        debug: bool = False,
        pcr0: bytes | None = None,
        module_id: str | None = None,
    ) -> None:
        _log.warning(_WARNING)
        if pcr0 is not None and len(pcr0) != PCR_BYTES:
            raise NSMError(f"a simulated PCR0 must be {PCR_BYTES} bytes (SHA-384)")
        self._ca = ca
        self._pcrs = _registers(measure_pcr0() if pcr0 is None else pcr0, debug=debug)
        if module_id is None:
            root_id = ca.root.fingerprint(hashes.SHA256()).hex()[:16]
            module_id = f"i-simulated-enc{root_id}"
        self._module_id = module_id

    def attestation(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """Return a signed document in Nitro's format binding the given optional fields."""
        _check_attestation_inputs(public_key=public_key, user_data=user_data, nonce=nonce)
        now = datetime.now(UTC)
        signer = self._ca.signing_leaf(now)
        payload = cbor.encode(
            {
                "module_id": self._module_id,
                "digest": "SHA384",
                "timestamp": int(now.timestamp() * 1000),
                "pcrs": {index: self._pcrs[index] for index in range(DOCUMENT_PCRS)},
                "certificate": signer.certificate.public_bytes(serialization.Encoding.DER),
                "cabundle": list[cbor.CBORValue](signer.cabundle),
                "public_key": public_key,
                "user_data": user_data,
                "nonce": nonce,
            }
        )
        signature = _sign_es384(signer.key, cose.sig_structure(_PROTECTED, payload))
        return cose.encode_sign1(_PROTECTED, {}, payload, signature, tagged=False)

    def describe_pcr(self, index: int) -> PCR:
        """PCR0..15 are locked after boot, as in a real enclave; 16..31 are zero and open."""
        _check_index(index)
        if index >= MAX_PCRS:
            raise NSMDeviceError("InvalidIndex", "DescribePCR")
        return PCR(index, self._pcrs[index], locked=index < DOCUMENT_PCRS)

    def get_random(self) -> bytes:
        """Random bytes from the operating system, as many as the NSM gives."""
        return secrets.token_bytes(RANDOM_BYTES)


def measure_pcr0(*package_dirs: Path) -> bytes:
    """SHA-384 over the ``.py`` source of ``package_dirs`` (default: the installed packages).

    Each file is named by its path relative to its package's parent (``enclave/nsm.py``).
    Files are taken in order of that path, and for each the path and the content are hashed,
    each preceded by its length as 8 big-endian bytes, so no two trees hash alike by
    shifting bytes between names and contents. ``noflylist/client/``, ``noflylist/tools/``,
    caches and hidden folders are skipped: they are never part of an enclave image.
    """
    if not package_dirs:
        package_dirs = tuple(_installed_package_dir(name) for name in MEASURED_PACKAGES)
    files = sorted(
        (relative, path) for root in package_dirs for relative, path in _source_files(root)
    )
    digest = hashlib.sha384(_PCR0_CONTEXT)
    for relative, path in files:
        name = relative.encode("utf-8")
        content = path.read_bytes()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


def _source_files(package_dir: Path) -> Iterator[tuple[str, Path]]:
    """Yield (relative posix path, path) for each measured ``.py`` file under a package."""
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise NSMError(f"cannot measure {package_dir}: it is not a directory")
    base = package_dir.parent
    for folder, subfolders, names in os.walk(package_dir):
        # Prune in place so os.walk never descends into caches or hidden folders.
        subfolders[:] = [s for s in subfolders if s != "__pycache__" and not s.startswith(".")]
        for name in names:
            path = Path(folder, name)
            relative = path.relative_to(base)
            if name.endswith(".py") and relative.parts[:2] not in _UNMEASURED_PREFIXES:
                yield relative.as_posix(), path


def _installed_package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise NSMError(f"cannot measure PCR0: package {name!r} is not installed")
    return Path(spec.origin).parent


def _registers(pcr0: bytes, *, debug: bool) -> list[bytes]:
    """The simulated PCR bank: see the module docstring for what each register holds."""
    bank = [bytes(PCR_BYTES)] * MAX_PCRS
    bank[0] = pcr0
    for index, label in _LABELS.items():
        bank[index] = hashlib.sha384(label).digest()
    if debug:
        for index in DEBUG_ZEROED_PCRS:
            bank[index] = bytes(PCR_BYTES)
    return bank


def _sign_es384(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-384/SHA-384 as COSE wants it: ``r || s``, each 48 bytes (RFC 9053 §2.1)."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    size = cose.P384_SCALAR_BYTES
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
