"""The Nitro Secure Module (NSM): the enclave's only source of attestation documents.

Inside a Nitro Enclave the NSM is a virtio device that the Linux ``nsm`` driver exposes as
``/dev/nsm``. It takes one ioctl, ``NSM_IOCTL_RAW``, whose argument points at two buffers:
a CBOR request (at most 4 KiB) and room for the CBOR response (12 KiB). The driver copies the
request to the device, waits for the answer, copies it back and writes its length into the
argument (Linux ``include/uapi/linux/nsm.h`` and ``drivers/misc/nsm.c``).

The CBOR shapes are those of AWS's ``aws-nitro-enclaves-nsm-api`` crate (``src/api/mod.rs``),
which serde encodes as externally tagged enums: a request is ``{"Name": {fields}}`` or the
bare text ``"Name"`` for a variant without fields, and so is a response; a failure is
``{"Error": "<code>"}``.

:class:`SecureModule` is the small interface the rest of the code uses, so nothing above this
module knows whether it holds the real device (:class:`NitroSecureModule`) or the simulator
(``noflylist_simulator.nsm.SimulatedNSM``, development and tests only).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from enclave import cbor
from enclave.errors import NoflylistError
from enclave.nsm_limits import (
    MAX_NONCE_BYTES,
    MAX_PUBLIC_KEY_BYTES,
    MAX_USER_DATA_BYTES,
    PCR_BYTES,
)

#: Where the Linux nsm driver puts the device node inside an enclave.
NSM_DEVICE_PATH = "/dev/nsm"
#: ``_IOWR(NSM_MAGIC=0x0A, 0, struct nsm_raw)``: read-write (3 << 30), size 32 (<< 16),
#: type 0x0A (<< 8), number 0.
NSM_IOCTL_REQUEST = 0xC0200A00
#: ``NSM_REQUEST_MAX_SIZE`` in the uapi header; the driver refuses more with EMSGSIZE.
MAX_REQUEST_BYTES = 0x1000
#: ``NSM_RESPONSE_MAX_SIZE`` in the uapi header: the device never answers more than this.
RESPONSE_BUFFER_BYTES = 0x3000
#: PCR indexes are ``u16`` in the NSM API; the device itself answers InvalidIndex past its bank.
MAX_PCR_INDEX = 0xFFFF
#: Fewer random bytes than this could not seed even one 256-bit key: treat it as a fault.
MIN_RANDOM_BYTES = 32

#: ``struct nsm_raw { struct nsm_iovec { __u64 addr; __u64 len; } request, response; }`` in
#: native byte order, which is how the kernel reads it (Nitro hosts are little-endian).
_NSM_RAW = struct.Struct("=QQQQ")
#: Index of ``response.len`` in :data:`_NSM_RAW`, which the driver overwrites.
_RESPONSE_LEN_FIELD = 3

#: The error codes of the NSM API's ``ErrorCode`` enum, other than ``Success``.
ERROR_CODES = frozenset(
    {
        "InvalidArgument",
        "InvalidIndex",
        "InvalidResponse",
        "ReadOnlyIndex",
        "InvalidOperation",
        "BufferTooSmall",
        "InputTooLarge",
        "InternalError",
    }
)

_IoctlFunction = Callable[[int, int, bytearray], object]


class NSMError(NoflylistError):
    """The NSM could not be reached, refused a request, or answered something malformed."""


class NSMDeviceError(NSMError):
    """The NSM answered ``{"Error": code}``; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, operation: str) -> None:
        super().__init__(f"the NSM refused {operation}: {code}")
        self.code = code


@dataclass(frozen=True)
class PCR:
    """One platform configuration register: its index, value and whether it is locked."""

    index: int
    data: bytes
    locked: bool


@dataclass(frozen=True)
class NSMDescription:
    """The ``DescribeNSM`` answer: API version, module id and the PCR bank's shape."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: frozenset[int]
    digest: str


class SecureModule(Protocol):
    """What the enclave needs from an NSM; the device and the simulator both provide it."""

    def attestation(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """Return a signed attestation document (an untagged COSE_Sign1) binding the inputs."""
        ...

    def describe_pcr(self, index: int) -> PCR:
        """Return the current value of PCR ``index``."""
        ...

    def get_random(self) -> bytes:
        """Return fresh random bytes from the module."""
        ...


class NitroSecureModule:
    """The real NSM behind ``/dev/nsm``. Use as a context manager, or call :meth:`close`.

    ``_ioctl`` replaces :func:`fcntl.ioctl`; tests use it to play the kernel's part.
    """

    def __init__(self, path: str = NSM_DEVICE_PATH, *, _ioctl: _IoctlFunction | None = None):
        self._ioctl: _IoctlFunction = fcntl.ioctl if _ioctl is None else _ioctl
        self._fd: int | None = _open_device(path)

    def __enter__(self) -> NitroSecureModule:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the device; later calls raise :class:`NSMError`. Closing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # -- the SecureModule interface ------------------------------------------------------

    def attestation(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """Ask the NSM for an attestation document carrying the given optional fields."""
        _check_attestation_inputs(public_key=public_key, user_data=user_data, nonce=nonce)
        # Field order as the NSM API's Request::Attestation declares it.
        fields_sent: dict[cbor.CBORValue, cbor.CBORValue] = {
            "user_data": user_data,
            "nonce": nonce,
            "public_key": public_key,
        }
        request: cbor.CBORValue = {"Attestation": fields_sent}
        answer = self._call(request, "Attestation")
        fields = _expect_fields(answer, "Attestation", {"document"})
        document = _expect_bytes(fields["document"], "Attestation.document")
        if not document:
            raise NSMError("the NSM answered an empty attestation document; expected a COSE_Sign1")
        return document

    def describe_pcr(self, index: int) -> PCR:
        """Read PCR ``index`` and whether it is locked."""
        _check_index(index)
        answer = self._call({"DescribePCR": {"index": index}}, "DescribePCR")
        fields = _expect_fields(answer, "DescribePCR", {"lock", "data"})
        locked = fields["lock"]
        if not isinstance(locked, bool):
            raise NSMError("the NSM's DescribePCR 'lock' is not a boolean, as expected")
        return PCR(index, _expect_pcr_value(fields["data"], "DescribePCR.data"), locked)

    def get_random(self) -> bytes:
        """Return the random bytes one ``GetRandom`` request yields (256 on Nitro)."""
        fields = _expect_fields(self._call("GetRandom", "GetRandom"), "GetRandom", {"random"})
        random = _expect_bytes(fields["random"], "GetRandom.random")
        if len(random) < MIN_RANDOM_BYTES:
            raise NSMError(
                f"the NSM answered {len(random)} random bytes; expected {MIN_RANDOM_BYTES} or more"
            )
        return random

    # -- device-only operations -----------------------------------------------------------

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data``; return the register's new value."""
        _check_index(index)
        if not isinstance(data, bytes):
            raise NSMError("extend_pcr data must be bytes")
        answer = self._call({"ExtendPCR": {"index": index, "data": data}}, "ExtendPCR")
        fields = _expect_fields(answer, "ExtendPCR", {"data"})
        return _expect_pcr_value(fields["data"], "ExtendPCR.data")

    def lock_pcr(self, index: int) -> None:
        """Make PCR ``index`` read-only until the enclave stops."""
        _check_index(index)
        _expect_unit(self._call({"LockPCR": {"index": index}}, "LockPCR"), "LockPCR")

    def lock_pcrs(self, count: int) -> None:
        """Make PCRs ``0 .. count-1`` read-only until the enclave stops."""
        _check_index(count)
        _expect_unit(self._call({"LockPCRs": {"range": count}}, "LockPCRs"), "LockPCRs")

    def describe_nsm(self) -> NSMDescription:
        """Return the module's version, id and PCR bank description."""
        names = {
            "version_major",
            "version_minor",
            "version_patch",
            "module_id",
            "max_pcrs",
            "locked_pcrs",
            "digest",
        }
        fields = _expect_fields(self._call("DescribeNSM", "DescribeNSM"), "DescribeNSM", names)
        numbers = {
            name: _expect_u16(fields[name], f"DescribeNSM.{name}")
            for name in ("version_major", "version_minor", "version_patch", "max_pcrs")
        }
        locked = fields["locked_pcrs"]
        if not isinstance(locked, list):
            raise NSMError("the NSM's DescribeNSM 'locked_pcrs' is not an array, as expected")
        module_id, digest = fields["module_id"], fields["digest"]
        if not isinstance(module_id, str) or not isinstance(digest, str):
            raise NSMError("the NSM's DescribeNSM 'module_id' or 'digest' is not text, as expected")
        return NSMDescription(
            version_major=numbers["version_major"],
            version_minor=numbers["version_minor"],
            version_patch=numbers["version_patch"],
            module_id=module_id,
            max_pcrs=numbers["max_pcrs"],
            locked_pcrs=frozenset(_expect_u16(i, "DescribeNSM.locked_pcrs") for i in locked),
            digest=digest,
        )

    # -- one round trip through the driver -------------------------------------------------

    def _call(self, request: cbor.CBORValue, operation: str) -> cbor.CBORValue:
        """Send one request through ``NSM_IOCTL_RAW``; return the decoded, non-error answer."""
        if self._fd is None:
            raise NSMError("the NSM device is closed: open a new NitroSecureModule")
        encoded = cbor.encode(request)
        if len(encoded) > MAX_REQUEST_BYTES:
            raise NSMError(
                f"{operation} request is {len(encoded)} bytes; the NSM takes at most "
                f"{MAX_REQUEST_BYTES}: send less data"
            )
        # ctypes buffers do not move, so their addresses stay valid for the kernel.
        request_buffer = ctypes.create_string_buffer(encoded, len(encoded))
        response_buffer = ctypes.create_string_buffer(RESPONSE_BUFFER_BYTES)
        raw = bytearray(
            _NSM_RAW.pack(
                ctypes.addressof(request_buffer),
                len(encoded),
                ctypes.addressof(response_buffer),
                RESPONSE_BUFFER_BYTES,
            )
        )
        try:
            self._ioctl(self._fd, NSM_IOCTL_REQUEST, raw)
        except OSError as exc:
            raise NSMError(_ioctl_failure(operation, exc)) from None
        length = _NSM_RAW.unpack(raw)[_RESPONSE_LEN_FIELD]
        if not 0 < length <= RESPONSE_BUFFER_BYTES:
            raise NSMError(
                f"the nsm driver reported a {length}-byte answer to {operation}; expected 1 to "
                f"{RESPONSE_BUFFER_BYTES}"
            )
        try:
            answer = cbor.decode(ctypes.string_at(response_buffer, length))
        except cbor.CBORError as exc:
            raise NSMError(f"the NSM's answer to {operation} is not valid CBOR: {exc}") from None
        _raise_if_error(answer, operation)
        return answer


def _open_device(path: str) -> int:
    """Open the NSM device, turning the two usual failures into instructions."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NSMError(
            f"{path} does not exist: not running inside a Nitro Enclave; "
            "for development use --attestation simulated"
        ) from None
    except PermissionError:
        raise NSMError(
            f"permission denied opening {path}: the nsm driver requires CAP_SYS_ADMIN: "
            "run as root inside the enclave"
        ) from None
    except OSError as exc:
        raise NSMError(f"cannot open {path}: {os.strerror(exc.errno or 0)}") from None


def _ioctl_failure(operation: str, exc: OSError) -> str:
    """Explain a failed ``NSM_IOCTL_RAW`` the way the driver means it."""
    if exc.errno == errno.EMSGSIZE:
        return f"the nsm driver refused the {operation} request as too large (EMSGSIZE)"
    if exc.errno == errno.ETIMEDOUT:
        return f"the NSM did not answer {operation} within the driver's timeout (ETIMEDOUT)"
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"the nsm driver failed {operation}: {name} ({os.strerror(exc.errno or 0)})"


def _check_attestation_inputs(
    *, public_key: bytes | None, user_data: bytes | None, nonce: bytes | None
) -> None:
    """Refuse inputs the NSM would refuse, before anything is sent."""
    for name, value, limit in (
        ("public_key", public_key, MAX_PUBLIC_KEY_BYTES),
        ("user_data", user_data, MAX_USER_DATA_BYTES),
        ("nonce", nonce, MAX_NONCE_BYTES),
    ):
        if value is None:
            continue
        if not isinstance(value, bytes):
            raise NSMError(f"attestation {name} must be bytes or None")
        if len(value) > limit:
            raise NSMError(
                f"attestation {name} is {len(value)} bytes; the NSM takes at most {limit}"
            )


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_PCR_INDEX:
        raise NSMError(f"PCR index must be an integer from 0 to {MAX_PCR_INDEX}")


def _raise_if_error(answer: cbor.CBORValue, operation: str) -> None:
    """Turn ``{"Error": code}`` into :class:`NSMDeviceError`."""
    if isinstance(answer, dict) and len(answer) == 1 and "Error" in answer:
        code = answer["Error"]
        if not isinstance(code, str) or code not in ERROR_CODES:
            raise NSMError(f"the NSM answered {operation} with an unknown error code")
        raise NSMDeviceError(code, operation)


def _expect_fields(
    answer: cbor.CBORValue, variant: str, names: set[str]
) -> Mapping[str, cbor.CBORValue]:
    """Check ``answer`` is ``{variant: {exactly these names}}``; return the inner map."""
    expected = f'{{"{variant}": {{{", ".join(sorted(names))}}}}}'
    if not (isinstance(answer, dict) and len(answer) == 1 and variant in answer):
        raise NSMError(f"the NSM's answer has the wrong shape: expected {expected}")
    inner = answer[variant]
    if not isinstance(inner, dict) or set(inner) != names:
        raise NSMError(f"the NSM's answer has the wrong fields: expected {expected}")
    return {str(key): value for key, value in inner.items()}


def _expect_unit(answer: cbor.CBORValue, variant: str) -> None:
    """Check ``answer`` is the bare text ``variant`` (a success without fields)."""
    if answer != variant:
        raise NSMError(f'the NSM\'s answer has the wrong shape: expected "{variant}"')


def _expect_bytes(value: cbor.CBORValue, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise NSMError(f"the NSM's {where} is not a byte string, as expected")
    return value


def _expect_pcr_value(value: cbor.CBORValue, where: str) -> bytes:
    data = _expect_bytes(value, where)
    if len(data) != PCR_BYTES:
        raise NSMError(f"the NSM's {where} is {len(data)} bytes; expected {PCR_BYTES} (SHA-384)")
    return data


def _expect_u16(value: cbor.CBORValue, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise NSMError(f"the NSM's {where} is not an integer from 0 to 65535, as expected")
    return value
