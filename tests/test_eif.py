"""noflylist.tools.eif measures EIFs that it did not write, and refuses every damaged one.

The EIFs here come from tests/support/eif_writer.py, a writer made from the format's
definition that imports nothing of ours; the expected PCRs come from the formula, written out
in this file: ``PCR = SHA-384(0^48 || SHA-384(data))`` with PCR0 over kernel, cmdline and
every ramdisk, PCR1 over kernel, cmdline and the first ramdisk, PCR2 over the other ramdisks,
PCR8 over the signing certificate's DER (aws-nitro-enclaves-image-format ``get_pcrs``, QEMU
``hw/i386/nitro_enclave.c``).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist.tools import eif, eif_write
from tests.support import eif_writer as w

KERNEL = b"MZ" + bytes(range(256)) * 7
CMDLINE = b"reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on"
BOOT_RAMDISK = b"070701" + b"boot ramdisk" * 50
APP_RAMDISK = b"070701" + b"app ramdisk" * 80


def pcr(data: bytes) -> str:
    """One extend of a zeroed SHA-384 register with the SHA-384 of ``data``."""
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(data).digest()).hexdigest()


def parse(data: bytes) -> eif.EIF:
    return eif.read_stream(io.BytesIO(data), len(data), "test.eif")


def standard(**overrides: object) -> bytes:
    pieces = w.nitro_layout(
        KERNEL, CMDLINE, [BOOT_RAMDISK, APP_RAMDISK], metadata=w.metadata_json()
    )
    return w.eif_bytes(pieces, **overrides)  # type: ignore[arg-type]


def self_signed_pem() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eif signer")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA384())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    return pem, certificate.public_bytes(serialization.Encoding.DER)


# -- measurements ------------------------------------------------------------------------------


def test_measure_gives_the_formula_s_pcrs_for_an_eif_from_the_independent_writer() -> None:
    found = parse(standard())
    assert found.measurements == eif.Measurements(
        pcr(KERNEL + CMDLINE + BOOT_RAMDISK + APP_RAMDISK),
        pcr(KERNEL + CMDLINE + BOOT_RAMDISK),
        pcr(APP_RAMDISK),
        None,
    )
    assert [section.kind for section in found.sections] == [
        "kernel", "cmdline", "metadata", "ramdisk", "ramdisk"]  # fmt: skip
    assert [section.size for section in found.sections][3:] == [len(BOOT_RAMDISK), len(APP_RAMDISK)]
    assert found.sections[0].offset == 548
    assert found.sections[0].sha384 == hashlib.sha384(KERNEL).hexdigest()
    assert found.cmdline == CMDLINE.decode()
    assert found.metadata is not None and found.metadata["ImageName"] == "app"
    assert (found.version, found.arch, found.default_cpus) == (4, "x86_64", 2)


def test_pcr2_covers_every_ramdisk_after_the_first_and_pcr0_all_of_them() -> None:
    extra = b"third ramdisk" * 9
    pieces = w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK, APP_RAMDISK, extra])
    found = parse(w.eif_bytes(pieces))
    assert found.measurements.pcr0 == pcr(KERNEL + CMDLINE + BOOT_RAMDISK + APP_RAMDISK + extra)
    assert found.measurements.pcr1 == pcr(KERNEL + CMDLINE + BOOT_RAMDISK)
    assert found.measurements.pcr2 == pcr(APP_RAMDISK + extra)


def test_an_eif_with_one_ramdisk_has_pcr2_of_nothing() -> None:
    found = parse(w.eif_bytes(w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK])))
    assert found.measurements.pcr2 == pcr(b"")
    assert found.measurements.pcr0 == found.measurements.pcr1


def test_metadata_and_signature_do_not_enter_pcr0_to_pcr2() -> None:
    plain = parse(standard())
    pem, _ = self_signed_pem()
    pieces = w.nitro_layout(
        KERNEL, CMDLINE, [BOOT_RAMDISK, APP_RAMDISK],
        metadata=w.metadata_json("other", "2.0", '{"a":1}'),
        signature=w.signature_section(pem, b"\x84cose"),
    )  # fmt: skip
    signed = parse(w.eif_bytes(pieces))
    assert signed.measurements.pcr0 == plain.measurements.pcr0
    assert signed.measurements.pcr1 == plain.measurements.pcr1
    assert signed.measurements.pcr2 == plain.measurements.pcr2


def test_pcr8_is_the_extend_of_the_signing_certificate_s_der() -> None:
    pem, der = self_signed_pem()
    pieces = w.nitro_layout(
        KERNEL, CMDLINE, [BOOT_RAMDISK, APP_RAMDISK],
        metadata=w.metadata_json(), signature=w.signature_section(pem, b"\x84cose"),
    )  # fmt: skip
    found = parse(w.eif_bytes(pieces))
    assert found.measurements.pcr8 == pcr(der)
    assert found.certificate_der == der


def test_an_aarch64_eif_and_versions_2_and_3_without_metadata_are_read() -> None:
    assert parse(standard(flags=1)).arch == "aarch64"
    pieces = w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK, APP_RAMDISK])
    for version in (2, 3):
        found = parse(w.eif_bytes(pieces, version=version))
        assert (found.version, found.metadata) == (version, None)
        assert found.measurements.pcr1 == pcr(KERNEL + CMDLINE + BOOT_RAMDISK)


def test_read_measures_a_file_on_disk_in_pieces(tmp_path: Path) -> None:
    big = os.urandom(3 * eif.CHUNK_BYTES + 17)
    path = tmp_path / "big.eif"
    path.write_bytes(w.eif_bytes(w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK, big])))
    assert eif.read(path).measurements.pcr2 == pcr(big)


# -- our writer against the independent one ----------------------------------------------------


def test_our_writer_writes_the_same_bytes_as_the_independent_writer(tmp_path: Path) -> None:
    files = {"kernel": KERNEL, "r0": BOOT_RAMDISK, "r1": APP_RAMDISK}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "ours.eif"
    with out.open("w+b") as stream:
        measured, crc = eif_write.write(
            stream, kernel=tmp_path / "kernel", cmdline=CMDLINE.decode(),
            ramdisks=[tmp_path / "r0", tmp_path / "r1"], metadata=w.metadata_json(),
        )  # fmt: skip
    assert out.read_bytes() == standard()
    assert measured == eif.read(out).measurements
    assert crc == eif.read(out).crc32 == int.from_bytes(standard()[544:548], "big")


def test_our_writer_refuses_what_no_eif_can_hold(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(KERNEL)
    with pytest.raises(eif.EIFError, match="at least one ramdisk"):
        eif_write.write(io.BytesIO(), kernel=tmp_path / "k", cmdline="x", ramdisks=[], metadata=b"")
    with pytest.raises(eif.EIFError, match="ASCII without NUL"):
        eif_write.write(
            io.BytesIO(), kernel=tmp_path / "k", cmdline="a\0b", ramdisks=[tmp_path / "k"],
            metadata=b"",
        )  # fmt: skip


# -- refusals ----------------------------------------------------------------------------------


def test_every_truncation_of_an_eif_is_refused() -> None:
    data = standard()
    for length in range(len(data)):
        with pytest.raises(eif.EIFError):
            parse(data[:length])


def test_every_single_bit_flip_anywhere_in_an_eif_is_refused() -> None:
    data = bytearray(standard())
    rng = random.Random(15)
    for offset in range(len(data)):
        bit = 1 << rng.randrange(8)
        data[offset] ^= bit
        with pytest.raises(eif.EIFError):
            parse(bytes(data))
        data[offset] ^= bit


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"magic": b"EIF."}, "the magic is"),
        ({"version": 1}, "version 1; this reader knows"),
        ({"version": 5}, "version 5"),
        ({"flags": 2}, "unknown header flags 0x0002"),
        ({"reserved": 1}, "reserved or unused field is not zero"),
        ({"unused": 1}, "reserved or unused field is not zero"),
        ({"num_sections": 0}, "0 sections"),
        ({"num_sections": 33}, "33 sections"),
        ({"crc": 0}, "CRC-32 mismatch"),
        ({"trailer": b"\0" * 12}, "12 bytes follow the last section"),
        ({"offsets": [548, 999]}, "section 1 is at offset"),
        ({"sizes": [len(KERNEL) + 1]}, "the header's table says"),
    ],
)
def test_a_malformed_header_is_refused_with_its_cause(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(eif.EIFError, match=message):
        parse(standard(**overrides))


def test_a_section_table_with_entries_beyond_its_count_is_refused() -> None:
    pieces = w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK])
    real = w.eif_bytes(pieces)
    offsets = [int.from_bytes(real[28 + 8 * i : 36 + 8 * i], "big") for i in range(3)]
    with pytest.raises(eif.EIFError, match="entries beyond its 3 sections"):
        parse(w.eif_bytes(pieces, offsets=[*offsets, 4096]))


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([w.Piece(w.TYPE_KERNEL, KERNEL), w.Piece(w.TYPE_CMDLINE, CMDLINE)], "0 ramdisk sections"),
        ([w.Piece(w.TYPE_CMDLINE, CMDLINE), w.Piece(w.TYPE_RAMDISK, b"r")], "0 kernel sections"),
        ([w.Piece(w.TYPE_KERNEL, KERNEL), w.Piece(w.TYPE_KERNEL, KERNEL),
          w.Piece(w.TYPE_CMDLINE, CMDLINE), w.Piece(w.TYPE_RAMDISK, b"r")], "2 kernel sections"),
        ([w.Piece(w.TYPE_RAMDISK, b"r"), w.Piece(w.TYPE_KERNEL, KERNEL),
          w.Piece(w.TYPE_CMDLINE, CMDLINE)], "a ramdisk comes before the kernel"),
        ([w.Piece(0, b""), w.Piece(w.TYPE_KERNEL, KERNEL)], "unknown type 0"),
        ([w.Piece(6, b""), w.Piece(w.TYPE_KERNEL, KERNEL)], "unknown type 6"),
        ([w.Piece(w.TYPE_KERNEL, KERNEL, flags=1)], "the kernel section .section 0. has flags"),
        ([w.Piece(w.TYPE_KERNEL, KERNEL), w.Piece(w.TYPE_CMDLINE, b"x" * 4097)], "at most 4096"),
        ([w.Piece(w.TYPE_KERNEL, KERNEL), w.Piece(w.TYPE_CMDLINE, "é".encode()),
          w.Piece(w.TYPE_RAMDISK, b"r")], "not ASCII"),
    ],
)  # fmt: skip
def test_a_malformed_section_list_is_refused_with_its_cause(
    pieces: list[w.Piece], message: str
) -> None:
    with pytest.raises(eif.EIFError, match=message):
        parse(w.eif_bytes(pieces))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (b"{not json", "metadata section is not JSON"),
        (b'{"ImageName":"a"}', "exactly"),
        (b"[]", "exactly"),
        (w.metadata_json().replace(b'"KernelVersion":"6.1"', b'"Kernel":"6.1"'), "BuildMetadata"),
        (w.metadata_json().replace(b'"ImageVersion":"1.0"', b'"ImageVersion":1'), "strings"),
        (b'{"a":1,"a":2}', "not JSON"),
    ],
)
def test_a_malformed_metadata_section_is_refused(metadata: bytes, message: str) -> None:
    pieces = w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK], metadata=metadata)
    with pytest.raises(eif.EIFError, match=message):
        parse(w.eif_bytes(pieces))


def test_a_malformed_signature_section_is_refused() -> None:
    pem, _ = self_signed_pem()
    cases = {
        b"\xff": "not CBOR",
        w.cbor2.dumps([]): "non-empty array",
        w.cbor2.dumps([{"signing_certificate": list(pem)}]): "exactly signing_certificate",
        w.cbor2.dumps([{"signing_certificate": pem, "signature": []}]): "array of bytes",
        w.cbor2.dumps([{"signing_certificate": [256], "signature": []}]): "array of bytes",
        w.signature_section(b"not a pem", b""): "one PEM CERTIFICATE block",
        w.signature_section(pem.replace(b"M", b"*", 1), b""): "does not hold DER",
        w.signature_section(
            b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", b""
        ): "not an X.509 Certificate",
    }
    for section, message in cases.items():
        pieces = w.nitro_layout(KERNEL, CMDLINE, [BOOT_RAMDISK], signature=section)
        with pytest.raises(eif.EIFError, match=message):
            parse(w.eif_bytes(pieces))


def test_a_missing_file_is_an_eif_error_that_names_it(tmp_path: Path) -> None:
    with pytest.raises(eif.EIFError, match=r"cannot read the EIF .*nothing\.eif"):
        eif.read(tmp_path / "nothing.eif")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=4096))
def test_arbitrary_bytes_after_a_valid_header_raise_only_eif_error(junk: bytes, cut: int) -> None:
    data = standard()[: min(cut, 600)] + junk
    try:
        parse(data)
    except eif.EIFError:
        pass
