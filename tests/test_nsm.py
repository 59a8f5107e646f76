"""The /dev/nsm wrapper, driven through a fake kernel that plays the nsm driver's part.

There is no /dev/nsm here. ``FakeKernel`` stands in for ``fcntl.ioctl``: like Linux's
``drivers/misc/nsm.c`` it reads the ``struct nsm_raw`` from the 32-byte argument, copies the
request from the address in it, lets a scripted device answer, copies the answer into the
response buffer (truncating what does not fit) and writes the length back into the struct.
Requests are decoded and answers encoded with cbor2, an independent CBOR implementation.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave import nsm, nsm_limits
from enclave.nsm import NitroSecureModule, NSMDeviceError, NSMError, SecureModule

#: _IOWR(type, nr, size) from linux/ioctl.h: direction 3 in bits 30-31, size in 16-29,
#: type in 8-15, number in 0-7; the uapi header uses type 0x0A, nr 0, sizeof(nsm_raw) = 32.
IOWR_NSM_RAW = (3 << 30) | (32 << 16) | (0x0A << 8) | 0
#: NSM_REQUEST_MAX_SIZE and NSM_RESPONSE_MAX_SIZE from include/uapi/linux/nsm.h.
UAPI_REQUEST_MAX = 0x1000
UAPI_RESPONSE_MAX = 0x3000
#: The eight ErrorCode names of aws-nitro-enclaves-nsm-api (src/api/mod.rs), Success aside.
NSM_API_ERROR_CODES = [
    "InvalidArgument",
    "InvalidIndex",
    "InvalidResponse",
    "ReadOnlyIndex",
    "InvalidOperation",
    "BufferTooSmall",
    "InputTooLarge",
    "InternalError",
]

Device = Callable[[Any], bytes]


class FakeKernel:
    """Plays ``nsm_dev_ioctl``: copy in the request, ask ``device``, copy out the answer."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.requests: list[bytes] = []
        self.copied_out: list[int] = []
        #: If set, the length written back instead of the true one (a broken driver).
        self.report_length: int | None = None
        #: Bytes left in the response buffer after the answer (stale data the length excludes).
        self.stale_tail = b""

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert request == IOWR_NSM_RAW
        assert isinstance(arg, bytearray) and len(arg) == 32
        os.fstat(fd)  # the wrapper passes an open descriptor
        request_addr, request_len, response_addr, response_cap = struct.unpack("<4Q", arg)
        assert response_cap == UAPI_RESPONSE_MAX
        if request_len > UAPI_REQUEST_MAX:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        raw_request = ctypes.string_at(request_addr, request_len)
        self.requests.append(raw_request)
        answer = self.device(cbor2.loads(raw_request)) + self.stale_tail
        copied = min(response_cap, len(answer))  # parse_resp_raw truncates what does not fit
        ctypes.memmove(response_addr, answer, copied)
        self.copied_out.append(copied)
        length = copied - len(self.stale_tail) if self.stale_tail else copied
        if self.report_length is not None:
            length = self.report_length
        struct.pack_into("<Q", arg, 24, length)
        return 0


def answering(value: Any) -> Device:
    """A device that answers every request with ``value`` encoded by cbor2."""
    return lambda _request: cbor2.dumps(value)


@pytest.fixture
def device_node(tmp_path: Path) -> str:
    """A file to open in place of /dev/nsm; the fake kernel never reads it."""
    node = tmp_path / "nsm"
    node.write_bytes(b"")
    return str(node)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One stand-in device file for the generated examples."""
    node = tmp_path_factory.mktemp("dev") / "nsm"
    node.write_bytes(b"")
    return str(node)


def open_with(device_node: str, kernel: FakeKernel) -> NitroSecureModule:
    return NitroSecureModule(device_node, _ioctl=kernel)


PCR_VALUE = bytes(range(48))


# -- the ioctl and the request shapes --------------------------------------------------------


def test_ioctl_number_is_iowr_of_the_32_byte_nsm_raw_struct() -> None:
    assert nsm.NSM_IOCTL_REQUEST == IOWR_NSM_RAW == 0xC0200A00
    assert nsm.MAX_REQUEST_BYTES == UAPI_REQUEST_MAX
    assert nsm.RESPONSE_BUFFER_BYTES == UAPI_RESPONSE_MAX


def test_get_random_sends_the_linux_drivers_bytes_and_reads_its_documented_answer(
    device_node: str,
) -> None:
    # drivers/misc/nsm.c builds GetRandom by hand: text(9) "GetRandom"; the answer starts
    # A1 69 "GetRandom" A1 66 "random", then a byte string.
    random = os.urandom(256)
    answer = bytes.fromhex("a169") + b"GetRandom" + bytes.fromhex("a166") + b"random"
    answer += bytes.fromhex("590100") + random
    kernel = FakeKernel(lambda _request: answer)
    with open_with(device_node, kernel) as module:
        assert module.get_random() == random
    assert kernel.requests == [bytes.fromhex("69") + b"GetRandom"]


@settings(max_examples=150, deadline=None)
@given(
    public_key=st.none() | st.binary(max_size=nsm_limits.MAX_PUBLIC_KEY_BYTES),
    user_data=st.none() | st.binary(max_size=nsm_limits.MAX_USER_DATA_BYTES),
    nonce=st.none() | st.binary(max_size=nsm_limits.MAX_NONCE_BYTES),
    document=st.binary(min_size=1, max_size=6000),
)
def test_attestation_request_has_the_nsm_api_shape_and_returns_the_document(
    shared_node: str,
    public_key: bytes | None,
    user_data: bytes | None,
    nonce: bytes | None,
    document: bytes,
) -> None:
    kernel = FakeKernel(answering({"Attestation": {"document": document}}))
    with open_with(shared_node, kernel) as module:
        got = module.attestation(public_key=public_key, user_data=user_data, nonce=nonce)
    assert got == document
    (raw,) = kernel.requests
    # serde's encoding of Request::Attestation: fields in declaration order, None as null.
    expected = {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
    assert raw == cbor2.dumps(expected)
    assert list(cbor2.loads(raw)["Attestation"]) == ["user_data", "nonce", "public_key"]


def test_describe_pcr_sends_the_index_and_returns_value_and_lock(device_node: str) -> None:
    kernel = FakeKernel(answering({"DescribePCR": {"lock": True, "data": PCR_VALUE}}))
    with open_with(device_node, kernel) as module:
        pcr = module.describe_pcr(4)
    assert (pcr.index, pcr.data, pcr.locked) == (4, PCR_VALUE, True)
    assert cbor2.loads(kernel.requests[0]) == {"DescribePCR": {"index": 4}}


def test_extend_pcr_sends_index_and_data_and_returns_the_new_value(device_node: str) -> None:
    kernel = FakeKernel(answering({"ExtendPCR": {"data": PCR_VALUE}}))
    with open_with(device_node, kernel) as module:
        assert module.extend_pcr(16, b"measurement") == PCR_VALUE
    assert cbor2.loads(kernel.requests[0]) == {"ExtendPCR": {"index": 16, "data": b"measurement"}}


def test_lock_pcr_and_lock_pcrs_accept_the_bare_text_answers(device_node: str) -> None:
    answers = iter([cbor2.dumps("LockPCR"), cbor2.dumps("LockPCRs")])
    kernel = FakeKernel(lambda _request: next(answers))
    with open_with(device_node, kernel) as module:
        module.lock_pcr(16)
        module.lock_pcrs(16)
    assert [cbor2.loads(r) for r in kernel.requests] == [
        {"LockPCR": {"index": 16}},
        {"LockPCRs": {"range": 16}},
    ]


def test_describe_nsm_reads_the_seven_fields_qemu_documents(device_node: str) -> None:
    # Field order and types as QEMU's virtio-nsm.c emits them.
    answer = {
        "DescribeNSM": {
            "digest": "SHA384",
            "max_pcrs": 32,
            "module_id": "i-1234-enc5678",
            "locked_pcrs": [0, 1, 2, 3, 4],
            "version_major": 1,
            "version_minor": 0,
            "version_patch": 0,
        }
    }
    kernel = FakeKernel(answering(answer))
    with open_with(device_node, kernel) as module:
        info = module.describe_nsm()
    assert kernel.requests == [cbor2.dumps("DescribeNSM")]
    assert info == nsm.NSMDescription(1, 0, 0, "i-1234-enc5678", 32, frozenset(range(5)), "SHA384")


def test_only_the_reported_length_is_decoded_not_stale_bytes_after_it(device_node: str) -> None:
    kernel = FakeKernel(answering({"Attestation": {"document": b"doc"}}))
    kernel.stale_tail = b"\xff" * 100
    with open_with(device_node, kernel) as module:
        assert module.attestation() == b"doc"


def test_the_device_and_the_protocol_agree_on_the_interface(device_node: str) -> None:
    kernel = FakeKernel(answering({"DescribePCR": {"lock": False, "data": PCR_VALUE}}))
    module: SecureModule = open_with(device_node, kernel)
    assert module.describe_pcr(0).data == PCR_VALUE


# -- error answers and malformed answers -----------------------------------------------------


@pytest.mark.parametrize("code", NSM_API_ERROR_CODES)
def test_each_nsm_error_code_raises_a_typed_error_carrying_it(device_node: str, code: str) -> None:
    kernel = FakeKernel(answering({"Error": code}))
    with open_with(device_node, kernel) as module, pytest.raises(NSMDeviceError) as caught:
        module.describe_pcr(40)
    assert caught.value.code == code
    assert code in str(caught.value) and "DescribePCR" in str(caught.value)


def test_an_unknown_error_code_is_a_malformed_answer_not_a_device_error(device_node: str) -> None:
    kernel = FakeKernel(answering({"Error": "Success"}))
    with open_with(device_node, kernel) as module, pytest.raises(NSMError) as caught:
        module.get_random()
    assert not isinstance(caught.value, NSMDeviceError)


def test_an_answer_longer_than_the_buffer_is_truncated_by_the_driver_and_refused(
    device_node: str,
) -> None:
    kernel = FakeKernel(answering({"Attestation": {"document": b"d" * (UAPI_RESPONSE_MAX + 500)}}))
    with open_with(device_node, kernel) as module, pytest.raises(NSMError, match="not valid CBOR"):
        module.attestation()
    assert kernel.copied_out == [UAPI_RESPONSE_MAX]


@pytest.mark.parametrize("length", [0, UAPI_RESPONSE_MAX + 1, 2**64 - 1])
def test_a_reported_length_outside_the_buffer_is_refused(device_node: str, length: int) -> None:
    kernel = FakeKernel(answering({"GetRandom": {"random": bytes(256)}}))
    kernel.report_length = length
    with open_with(device_node, kernel) as module, pytest.raises(NSMError, match="-byte answer"):
        module.get_random()


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff", b"\xa1\x69GetRa", cbor2.dumps("LockPCR") + b"\x00", b"\xf9\x3c\x00"],
    ids=["garbage", "truncated", "trailing-bytes", "float"],
)
def test_an_answer_that_is_not_cbor_we_accept_is_refused(device_node: str, raw: bytes) -> None:
    kernel = FakeKernel(lambda _request: raw)
    with open_with(device_node, kernel) as module, pytest.raises(NSMError, match="not valid CBOR"):
        module.lock_pcr(1)


GOOD_PCR = {"lock": False, "data": PCR_VALUE}
WRONG_SHAPES: list[tuple[str, Any]] = [
    ("describe_pcr", {"ExtendPCR": {"data": PCR_VALUE}}),  # another operation's answer
    ("describe_pcr", {"DescribePCR": {"lock": False}}),  # a missing field
    ("describe_pcr", {"DescribePCR": {**GOOD_PCR, "extra": 1}}),  # an extra field
    ("describe_pcr", {"DescribePCR": {"lock": 0, "data": PCR_VALUE}}),  # int for bool
    ("describe_pcr", {"DescribePCR": {"lock": False, "data": PCR_VALUE[:32]}}),  # not SHA-384
    ("describe_pcr", {"DescribePCR": {"lock": False, "data": PCR_VALUE.hex()}}),  # text
    ("describe_pcr", {"DescribePCR": GOOD_PCR, "Error": "InternalError"}),  # two variants
    ("describe_pcr", "DescribePCR"),  # a bare name where fields are due
    ("get_random", {"GetRandom": {"random": bytes(31)}}),  # too few bytes to be useful
    ("get_random", {"GetRandom": [bytes(256)]}),  # an array, not a map
    ("attestation", {"Attestation": {"document": b""}}),  # an empty document
    ("attestation", {"Attestation": {"document": None}}),
    ("lock_pcr", {"LockPCR": {}}),  # a map where the bare text is due
    ("lock_pcr", "LockPCRs"),  # the other lock's answer
    ("extend_pcr", {"ExtendPCR": {"data": bytes(47)}}),
    ("describe_nsm", {"DescribeNSM": {"digest": "SHA384"}}),
]


@pytest.mark.parametrize(("operation", "answer"), WRONG_SHAPES)
def test_an_answer_of_the_wrong_shape_is_refused_naming_what_was_expected(
    device_node: str, operation: str, answer: Any
) -> None:
    calls: dict[str, Callable[[NitroSecureModule], object]] = {
        "describe_pcr": lambda m: m.describe_pcr(1),
        "get_random": lambda m: m.get_random(),
        "attestation": lambda m: m.attestation(),
        "lock_pcr": lambda m: m.lock_pcr(1),
        "extend_pcr": lambda m: m.extend_pcr(16, b"x"),
        "describe_nsm": lambda m: m.describe_nsm(),
    }
    kernel = FakeKernel(answering(answer))
    with open_with(device_node, kernel) as module, pytest.raises(NSMError) as caught:
        calls[operation](module)
    assert not isinstance(caught.value, NSMDeviceError)
    assert "expected" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EMSGSIZE, "too large"), (errno.ETIMEDOUT, "timeout"), (errno.EIO, "EIO")],
)
def test_a_failing_ioctl_becomes_an_nsm_error_naming_the_cause(
    device_node: str, code: int, words: str
) -> None:
    def failing(_fd: int, _request: int, _arg: bytearray) -> int:
        raise OSError(code, os.strerror(code))

    with NitroSecureModule(device_node, _ioctl=failing) as module:
        with pytest.raises(NSMError, match=words):
            module.get_random()


# -- opening the device ------------------------------------------------------------------------


def test_a_missing_device_says_we_are_not_in_an_enclave_and_how_to_simulate(
    tmp_path: Path,
) -> None:
    with pytest.raises(NSMError) as caught:
        NitroSecureModule(str(tmp_path / "no-such-nsm"))
    message = str(caught.value)
    assert "not running inside a Nitro Enclave" in message
    assert "--attestation simulated" in message


def test_permission_denied_says_the_driver_needs_cap_sys_admin(
    device_node: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root here, so a mode-000 file would open; make open fail as it would for
    # an unprivileged user.
    def denied(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(NSMError, match="CAP_SYS_ADMIN: run as root inside the enclave"):
        NitroSecureModule(device_node)


def test_the_device_is_opened_read_write_and_closed_by_the_context_manager(
    device_node: str,
) -> None:
    kernel = FakeKernel(answering("LockPCR"))
    with open_with(device_node, kernel) as module:
        fd = module._fd
        assert fd is not None
        assert os.get_inheritable(fd) is False
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(NSMError, match="closed"):
        module.lock_pcr(1)
    module.close()  # closing twice is harmless


# -- limits checked before anything is sent ------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("public_key", nsm_limits.MAX_PUBLIC_KEY_BYTES),
        ("user_data", nsm_limits.MAX_USER_DATA_BYTES),
        ("nonce", nsm_limits.MAX_NONCE_BYTES),
    ],
)
def test_attestation_fields_at_the_limit_are_sent_and_one_byte_more_is_refused_unsent(
    device_node: str, field: str, limit: int
) -> None:
    limits = nsm_limits
    assert (limits.MAX_PUBLIC_KEY_BYTES, limits.MAX_USER_DATA_BYTES, limits.MAX_NONCE_BYTES) == (
        1024,
        512,
        512,
    )
    kernel = FakeKernel(answering({"Attestation": {"document": b"doc"}}))
    with open_with(device_node, kernel) as module:
        assert module.attestation(**{field: bytes(limit)}) == b"doc"
        assert len(kernel.requests) == 1
        with pytest.raises(NSMError, match=f"{field} is {limit + 1} bytes"):
            module.attestation(**{field: bytes(limit + 1)})
        with pytest.raises(NSMError, match="must be bytes"):
            module.attestation(**{field: "text"})  # type: ignore[arg-type]
    assert len(kernel.requests) == 1


def test_a_request_over_4_kib_is_refused_before_the_ioctl(device_node: str) -> None:
    kernel = FakeKernel(answering({"ExtendPCR": {"data": PCR_VALUE}}))
    with open_with(device_node, kernel) as module:
        with pytest.raises(NSMError, match="at most 4096"):
            module.extend_pcr(16, bytes(UAPI_REQUEST_MAX))
        module.extend_pcr(16, bytes(UAPI_REQUEST_MAX - 100))
    assert len(kernel.requests) == 1


@pytest.mark.parametrize("index", [-1, 65536, True, 1.0, "1"])
def test_a_pcr_index_outside_u16_is_refused_before_the_ioctl(device_node: str, index: Any) -> None:
    kernel = FakeKernel(answering("LockPCR"))
    with open_with(device_node, kernel) as module, pytest.raises(NSMError, match="PCR index"):
        module.lock_pcr(index)
    assert kernel.requests == []
