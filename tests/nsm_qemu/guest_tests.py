"""The /dev/nsm wrapper against the real Linux ``nsm`` driver and QEMU's ``virtio-nsm-pci``.

These tests run only inside the QEMU guest that ``tests/nsm_qemu/run.sh`` boots (the file name
keeps the host's pytest from collecting it). Everything between the wrapper and the device is
real: ``fcntl.ioctl`` on ``/dev/nsm``, Debian's ``nsm.ko``, the virtio queue, and QEMU's CBOR
NSM emulation (``hw/virtio/virtio-nsm.c``). What QEMU's device does, and so what is checked:

- 32 SHA-384 PCRs, all zero and unlocked at boot; ``ExtendPCR`` sets SHA-384(old || data);
  ``LockPCR``/``LockPCRs`` make registers read-only, and touching them again answers
  ``ReadOnlyIndex``; an index past the bank answers ``InvalidIndex``.
- ``GetRandom`` answers 256 bytes; ``DescribeNSM`` reports the ``module-id`` QEMU was given.
- Attestation documents are untagged COSE_Sign1 with the nine payload fields in AWS's order,
  but unsigned (algorithm -1, 64 zero bytes of signature and of certificate), and their
  ``pcrs`` map holds only the locked registers. The verifier must refuse them at step 1.

The guest boots once, so the device's state carries from test to test: each test uses PCR
indexes of its own (see the constants below) and compares with what the device reports now.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Iterator

import cbor2
import pytest

from enclave import cbor, nsm, nsm_limits
from enclave.nsm import NitroSecureModule, NSMDeviceError, NSMError
from noflylist.client.attestation import AttestationError, verify
from noflylist.client.cose import decode_sign1

#: run.sh passes a fresh module id to QEMU (``-device virtio-nsm-pci,module-id=...``) and the
#: same value to this guest on the kernel command line, which Linux hands to init's environment.
EXPECTED_MODULE_ID = os.environ.get("NSM_EXPECTED_MODULE_ID", "")
#: QEMU's PCR bank (NSM_MAX_PCRS in hw/virtio/virtio-nsm.c).
QEMU_PCR_COUNT = 32
#: QEMU answers GetRandom with NSM_RND_BUF_SIZE bytes.
QEMU_RANDOM_BYTES = 256
#: The payload keys of a Nitro attestation document, in the order AWS's NSM writes them.
AWS_PAYLOAD_ORDER = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]
#: How far the document's timestamp (QEMU host clock) may be from the guest clock (the same
#: host clock through the emulated RTC), allowing for a slow boot under TCG.
CLOCK_SLACK_SECONDS = 600

# PCR indexes, one set per test so that the order of the tests does not matter.
PCR_FRESH = 21
PCR_EXTEND = 16
PCR_LOCK = 17
PCR_AT_LIMIT = 18
PCR_MANY = 19
PCR_IN_DOCUMENT = 20
LOCK_RANGE = 4  # lock_pcrs locks 0 .. LOCK_RANGE - 1


class RecordingIoctl:
    """Calls the real ``fcntl.ioctl`` and keeps the bytes the driver wrote back.

    The wrapper's ``_ioctl`` hook only observes here: the driver does all the work. After the
    call, ``struct nsm_raw`` holds the response buffer's address and the length the driver
    wrote, so the device's answer can be read exactly as the kernel left it.
    """

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> object:
        request_addr, request_len, _, _ = struct.unpack("=QQQQ", arg)
        self.requests.append(ctypes.string_at(request_addr, request_len))
        result = fcntl.ioctl(fd, request, arg)
        _, _, answer_addr, answer_len = struct.unpack("=QQQQ", arg)
        self.answers.append(ctypes.string_at(answer_addr, answer_len))
        return result


@pytest.fixture
def device() -> Iterator[NitroSecureModule]:
    with NitroSecureModule() as module:
        yield module


@pytest.fixture
def recorded() -> Iterator[tuple[NitroSecureModule, RecordingIoctl]]:
    ioctl = RecordingIoctl()
    with NitroSecureModule(_ioctl=ioctl) as module:
        yield module, ioctl


def payload_of(document: bytes) -> dict[str, object]:
    """Decode an attestation document's payload with cbor2, independently of enclave.cbor."""
    envelope = cbor2.loads(document)
    assert isinstance(envelope, list) and len(envelope) == 4, "not an untagged COSE_Sign1"
    payload = cbor2.loads(envelope[2])
    assert isinstance(payload, dict)
    return payload


def extend_request_size(index: int, data_len: int) -> int:
    """Bytes of the ExtendPCR request, measured with cbor2 (an independent encoder)."""
    return len(cbor2.dumps({"ExtendPCR": {"index": index, "data": bytes(data_len)}}))


def data_len_for_request_of(index: int, size: int) -> int:
    """The data length whose ExtendPCR request is exactly ``size`` bytes (256 < data < 65536)."""
    overhead = extend_request_size(index, 1000) - 1000
    data_len = size - overhead
    assert extend_request_size(index, data_len) == size
    return data_len


# -- the device answers through the driver -----------------------------------------------------


def test_describe_nsm_reports_the_module_id_qemu_was_started_with(
    device: NitroSecureModule,
) -> None:
    assert EXPECTED_MODULE_ID, "run.sh must pass NSM_EXPECTED_MODULE_ID on the kernel command line"
    description = device.describe_nsm()
    assert description.module_id == EXPECTED_MODULE_ID
    assert description.digest == "SHA384"
    assert description.max_pcrs == QEMU_PCR_COUNT
    assert description.version_major >= 1


def test_a_pcr_nothing_touched_reads_48_zero_bytes_unlocked(device: NitroSecureModule) -> None:
    pcr = device.describe_pcr(PCR_FRESH)
    assert (pcr.index, pcr.data, pcr.locked) == (PCR_FRESH, bytes(48), False)


def test_extend_pcr_sets_sha384_of_old_value_then_data(device: NitroSecureModule) -> None:
    old = device.describe_pcr(PCR_EXTEND).data
    first = device.extend_pcr(PCR_EXTEND, b"noflylist image")
    assert first == hashlib.sha384(old + b"noflylist image").digest()
    second = device.extend_pcr(PCR_EXTEND, b"")
    assert second == hashlib.sha384(first).digest()
    assert device.describe_pcr(PCR_EXTEND).data == second


def test_many_extends_of_random_lengths_match_hashlib(device: NitroSecureModule) -> None:
    value = device.describe_pcr(PCR_MANY).data
    for _ in range(40):
        data = os.urandom(int.from_bytes(os.urandom(2), "big") % 3000)
        value = hashlib.sha384(value + data).digest()
        assert device.extend_pcr(PCR_MANY, data) == value
    assert device.describe_pcr(PCR_MANY).data == value


def test_a_locked_pcr_refuses_extend_and_relock_with_read_only_index(
    device: NitroSecureModule,
) -> None:
    value = device.extend_pcr(PCR_LOCK, b"before the lock")
    device.lock_pcr(PCR_LOCK)
    with pytest.raises(NSMDeviceError) as extended:
        device.extend_pcr(PCR_LOCK, b"after the lock")
    assert extended.value.code == "ReadOnlyIndex"
    with pytest.raises(NSMDeviceError) as relocked:
        device.lock_pcr(PCR_LOCK)
    assert relocked.value.code == "ReadOnlyIndex"
    assert device.describe_pcr(PCR_LOCK) == nsm.PCR(PCR_LOCK, value, True)
    assert PCR_LOCK in device.describe_nsm().locked_pcrs


def test_lock_pcrs_locks_exactly_the_first_registers(device: NitroSecureModule) -> None:
    device.lock_pcrs(LOCK_RANGE)
    for index in range(LOCK_RANGE):
        assert device.describe_pcr(index).locked
        with pytest.raises(NSMDeviceError) as refused:
            device.extend_pcr(index, b"x")
        assert refused.value.code == "ReadOnlyIndex"
    assert not device.describe_pcr(LOCK_RANGE).locked
    locked = device.describe_nsm().locked_pcrs
    assert set(range(LOCK_RANGE)) <= locked and LOCK_RANGE not in locked


@pytest.mark.parametrize("operation", ["describe", "extend", "lock"])
def test_an_index_past_the_bank_raises_invalid_index(
    device: NitroSecureModule, operation: str
) -> None:
    with pytest.raises(NSMDeviceError) as refused:
        if operation == "describe":
            device.describe_pcr(QEMU_PCR_COUNT)
        elif operation == "extend":
            device.extend_pcr(QEMU_PCR_COUNT, b"x")
        else:
            device.lock_pcr(QEMU_PCR_COUNT)
    assert refused.value.code == "InvalidIndex"


def test_lock_pcrs_past_the_bank_raises_invalid_index(device: NitroSecureModule) -> None:
    with pytest.raises(NSMDeviceError) as refused:
        device.lock_pcrs(QEMU_PCR_COUNT + 1)
    assert refused.value.code == "InvalidIndex"


def test_get_random_returns_256_fresh_bytes_each_call(device: NitroSecureModule) -> None:
    first, second = device.get_random(), device.get_random()
    assert len(first) == len(second) == QEMU_RANDOM_BYTES
    assert first != second


# -- attestation ---------------------------------------------------------------------------


def test_attestation_without_inputs_has_nine_fields_in_aws_order_and_null_inputs(
    device: NitroSecureModule,
) -> None:
    payload = payload_of(device.attestation())
    assert list(payload) == AWS_PAYLOAD_ORDER
    assert (payload["public_key"], payload["user_data"], payload["nonce"]) == (None, None, None)
    assert payload["module_id"] == EXPECTED_MODULE_ID
    assert payload["digest"] == "SHA384"
    timestamp = payload["timestamp"]
    assert isinstance(timestamp, int)
    assert abs(timestamp / 1000 - time.time()) < CLOCK_SLACK_SECONDS


@pytest.mark.parametrize(
    ("public_key_len", "user_data_len", "nonce_len"),
    [
        (1, None, None),
        (None, 1, None),
        (None, None, 1),
        # The NSM's documented limits, all at once.
        (
            nsm_limits.MAX_PUBLIC_KEY_BYTES,
            nsm_limits.MAX_USER_DATA_BYTES,
            nsm_limits.MAX_NONCE_BYTES,
        ),
    ],
)
def test_attestation_returns_public_key_user_data_and_nonce_as_given(
    device: NitroSecureModule,
    public_key_len: int | None,
    user_data_len: int | None,
    nonce_len: int | None,
) -> None:
    public_key, user_data, nonce = (
        None if length is None else os.urandom(length)
        for length in (public_key_len, user_data_len, nonce_len)
    )
    document = device.attestation(public_key=public_key, user_data=user_data, nonce=nonce)
    payload = payload_of(document)
    assert (payload["public_key"], payload["user_data"], payload["nonce"]) == (
        public_key,
        user_data,
        nonce,
    )


def test_the_document_is_byte_for_byte_what_the_driver_copied_out(
    recorded: tuple[NitroSecureModule, RecordingIoctl],
) -> None:
    module, ioctl = recorded
    nonce = os.urandom(32)
    document = module.attestation(nonce=nonce)
    assert len(ioctl.answers) == 1
    answer = ioctl.answers[0]
    # Both the project's decoder and cbor2 read the device's raw answer the same way.
    assert cbor.decode(answer) == {"Attestation": {"document": document}}
    assert cbor2.loads(answer) == {"Attestation": {"document": document}}
    assert cbor2.loads(ioctl.requests[0]) == {
        "Attestation": {"user_data": None, "nonce": nonce, "public_key": None}
    }


def test_the_document_lists_exactly_the_locked_pcrs_with_their_values(
    device: NitroSecureModule,
) -> None:
    device.extend_pcr(PCR_IN_DOCUMENT, b"measured")
    device.lock_pcr(PCR_IN_DOCUMENT)
    pcrs = payload_of(device.attestation())["pcrs"]
    assert isinstance(pcrs, dict)
    assert set(pcrs) == device.describe_nsm().locked_pcrs
    assert PCR_IN_DOCUMENT in pcrs
    for index, value in pcrs.items():
        assert device.describe_pcr(index).data == value


def test_qemu_documents_are_unsigned_and_the_verifier_refuses_them_at_step_1(
    device: NitroSecureModule,
) -> None:
    document = device.attestation(nonce=b"n" * 16)
    sign1 = decode_sign1(document)
    assert cbor2.loads(sign1.protected) == {1: -1}  # not ES384 (-35)
    assert sign1.signature == bytes(64)
    assert payload_of(document)["certificate"] == bytes(64)
    with pytest.raises(AttestationError) as refused:
        verify(document, nonce=b"n" * 16, unsafe_allow_debug=True)
    assert str(refused.value).startswith("step 1")


# -- sizes: the wrapper's limits against the driver's ----------------------------------------


def test_a_request_of_exactly_4096_bytes_passes_the_driver(
    recorded: tuple[NitroSecureModule, RecordingIoctl],
) -> None:
    module, ioctl = recorded
    data = os.urandom(data_len_for_request_of(PCR_AT_LIMIT, nsm.MAX_REQUEST_BYTES))
    old = module.describe_pcr(PCR_AT_LIMIT).data
    assert module.extend_pcr(PCR_AT_LIMIT, data) == hashlib.sha384(old + data).digest()
    assert len(ioctl.requests[-1]) == nsm.MAX_REQUEST_BYTES == 4096


def test_one_byte_more_is_refused_by_the_wrapper_before_the_ioctl(
    recorded: tuple[NitroSecureModule, RecordingIoctl],
) -> None:
    module, ioctl = recorded
    data = bytes(data_len_for_request_of(PCR_AT_LIMIT, nsm.MAX_REQUEST_BYTES + 1))
    with pytest.raises(NSMError, match="at most 4096"):
        module.extend_pcr(PCR_AT_LIMIT, data)
    assert ioctl.requests == []


def test_one_byte_more_is_refused_by_the_driver_with_emsgsize_when_sent(
    device: NitroSecureModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lift the wrapper's own check to prove the driver's limit is the same number.
    monkeypatch.setattr(nsm, "MAX_REQUEST_BYTES", 1 << 16)
    before = device.describe_pcr(PCR_AT_LIMIT).data
    data = bytes(data_len_for_request_of(PCR_AT_LIMIT, 4097))
    with pytest.raises(NSMError, match="too large \\(EMSGSIZE\\)") as refused:
        device.extend_pcr(PCR_AT_LIMIT, data)
    assert not isinstance(refused.value, NSMDeviceError)
    assert device.describe_pcr(PCR_AT_LIMIT).data == before


def test_attestation_inputs_over_the_nsm_limits_are_refused_unsent(
    recorded: tuple[NitroSecureModule, RecordingIoctl],
) -> None:
    module, ioctl = recorded
    with pytest.raises(NSMError, match="user_data is 513 bytes"):
        module.attestation(user_data=bytes(513))
    with pytest.raises(NSMError, match="public_key is 1025 bytes"):
        module.attestation(public_key=bytes(1025))
    assert ioctl.requests == []


def test_an_answer_cut_short_by_a_small_buffer_is_refused_not_half_parsed(
    device: NitroSecureModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver copies out only what fits and reports that length; the wrapper must then
    # refuse the truncated CBOR rather than return part of a document.
    monkeypatch.setattr(nsm, "RESPONSE_BUFFER_BYTES", 200)
    with pytest.raises(NSMError, match="not valid CBOR") as refused:
        device.attestation(user_data=bytes(300))
    assert not isinstance(refused.value, NSMDeviceError)
