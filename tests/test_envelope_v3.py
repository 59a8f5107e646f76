"""Envelope v3: the sealer builds the keyed table, the enclave decrypts, checks and serves it.

Issue 5/5 part 2. What is shown here: a sealed table answers every question exactly as a
table the service builds from the same names (listed names, their variants, near names and
unreadable ones), under each rule; the document holds no name; every header field is
authenticated; a table keyed under another rule is refused with how to reseal; each structure
check of ``ScreeningTable.from_sealed`` refuses what a wrong sealer could write; malformed
framing gives one ``EnvelopeError`` naming the cause; and the holder serves v3, refuses an
older serial and will not let a fernet envelope replace it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noflylist import envelope, matchkey, table
from noflylist.decision import Listed, decide
from noflylist.envelope import V3_MAGIC, EnvelopeError
from noflylist.lists import ListHolder, RollbackError
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.table import ScreeningError, ScreeningTable, build_parts
from noflylist.tools import seal
from tests.support.fake_kms import KEY_ARN, FakeDataKeys

NAMES = ["Big Bird", "Zoe Sesame", "Oscar the Grouch", "Müller, Hans", "两个头的怪物"]
QUESTIONS = [
    *NAMES,
    "Bird, Big", "BIRD<<BIG", "Zoë Sesame", "B1g B1rd", "big   bird", "Mueller Hans",
    "Big Birdie", "Bog Bird", "Zoe", "Oscar", "Kermit the Frog", "",
    "Big\u200bBird", "Big Bird \u2603",
]  # fmt: skip


def verdict(value: object) -> tuple[str, str]:
    """A verdict as comparable values: its kind and, for a refusal, the reason."""
    return type(value).__name__, str(getattr(value, "reason", ""))


def split(document: bytes) -> tuple[dict[str, object], bytes]:
    """A v3 document's header (as JSON) and its ciphertext."""
    assert document.startswith(V3_MAGIC)
    line, _, ciphertext = document[len(V3_MAGIC) :].partition(b"\n")
    header: dict[str, object] = json.loads(line)
    return header, ciphertext


def join(header: dict[str, object], ciphertext: bytes) -> bytes:
    return V3_MAGIC + json.dumps(header).encode() + b"\n" + ciphertext


def open_table(document: bytes, kms: FakeDataKeys, rule: str = matchkey.DEFAULT_RULE) -> object:
    return envelope.decrypt_table(envelope.parse(document), kms, rule=rule)


@pytest.mark.parametrize("rule", matchkey.RULES)
def test_a_sealed_table_answers_every_question_as_a_built_one(rule: str) -> None:
    kms = FakeDataKeys()
    document = seal.seal_v3(NAMES, kms, "alias/noflylist", serial=9, rule=rule)
    parsed = envelope.parse(document)
    assert (parsed.format, parsed.serial, parsed.key_id) == (envelope.FORMAT_V3, 9, KEY_ARN)
    assert parsed.rule == matchkey.rule_identity(rule)
    sealed = envelope.decrypt_table(parsed, kms, rule=rule)
    built = ScreeningTable.build(NAMES, rule)
    assert isinstance(sealed, ScreeningTable) and sealed.rule == rule
    assert (len(sealed), sealed.stored_keys) == (len(built), built.stored_keys) == (
        len(NAMES), parsed.stored_keys)  # fmt: skip
    for question in QUESTIONS:
        assert verdict(decide(sealed, question)) == verdict(decide(built, question)), question
    assert all(isinstance(decide(sealed, name), Listed) for name in NAMES)
    if rule == matchkey.FOLD_1:  # the variants the folded rule exists for
        assert isinstance(decide(sealed, "Bird, Big"), Listed)
        assert not isinstance(decide(sealed, "Big Birdie"), Listed)


def test_a_sealed_table_does_the_same_work_as_a_built_one() -> None:
    """The slots are a view of the decrypted buffer; a look-up still hashes each key once
    and calls compare_digest 8 times a key, listed or not."""
    import hmac

    kms = FakeDataKeys()
    sealed = open_table(seal.seal_v3(NAMES, kms, "k", serial=1), kms)
    assert isinstance(sealed, ScreeningTable)
    calls = []
    real = hmac.compare_digest

    def counting(a: object, b: object) -> bool:
        calls.append(1)
        return real(a, b)  # type: ignore[arg-type]

    hmac.compare_digest = counting  # type: ignore[assignment]
    try:
        counts = []
        for name in ("Big Bird", "Kermit the Frog"):
            calls.clear()
            sealed.contains(name)
            counts.append(len(calls))
    finally:
        hmac.compare_digest = real
    keys = matchkey.KEYS_PER_NAME[matchkey.DEFAULT_RULE]
    assert counts == [keys * 8, keys * 8]


def test_the_document_holds_no_name_and_the_header_says_what_was_sealed() -> None:
    kms = FakeDataKeys()
    document = seal.seal_v3(NAMES, kms, "k", serial=4)
    for name in NAMES:
        assert name.encode() not in document and name.lower().encode() not in document
    for key in ("bigbird", "zoesesame", "birdbig"):
        assert key.encode() not in document
    header, ciphertext = split(document)
    assert header["entries"] == len(NAMES) and header["skipped_empty"] == 0
    parts_size = 32 + 64 * table._buckets_for(int(str(header["stored_keys"])))
    assert len(ciphertext) >= parts_size + 16  # key, whole buckets, the GCM tag


@pytest.mark.parametrize(
    ("field", "value"),
    [("serial", 99), ("entries", 6), ("stored_keys", 1), ("skipped_empty", 3),
     ("created", "2030-01-01T00:00:00Z"), ("rule", "exact; unicode 1.0.0")],
)  # fmt: skip
def test_every_header_field_is_authenticated(field: str, value: object) -> None:
    kms = FakeDataKeys()
    header, ciphertext = split(seal.seal_v3(NAMES, kms, "k", serial=4))
    header[field] = value
    with pytest.raises(EnvelopeError, match="authentication failed"):
        open_table(join(header, ciphertext), kms)


def test_a_changed_ciphertext_byte_fails_authentication() -> None:
    kms = FakeDataKeys()
    header, ciphertext = split(seal.seal_v3(NAMES, kms, "k", serial=4))
    changed = bytearray(ciphertext)
    changed[40] ^= 1
    with pytest.raises(EnvelopeError, match="authentication failed"):
        open_table(join(header, bytes(changed)), kms)


def test_a_table_keyed_under_another_rule_is_refused_with_how_to_reseal() -> None:
    kms = FakeDataKeys()
    document = seal.seal_v3(NAMES, kms, "k", serial=4, rule=matchkey.EXACT)
    with pytest.raises(EnvelopeError, match=r"keyed under the match rule 'exact; .*--match") as e:
        open_table(document, kms, rule=matchkey.FOLD_1)
    for name in NAMES:
        assert name not in str(e.value)


def test_the_pinned_key_id_is_what_kms_is_asked_with() -> None:
    from enclave.kms import KMSError

    kms = FakeDataKeys()
    parsed = envelope.parse(seal.seal_v3(NAMES, kms, "k", serial=4))
    with pytest.raises(KMSError, match="IncorrectKeyException"):
        envelope.decrypt_table(parsed, kms, rule=matchkey.DEFAULT_RULE, pinned_key_id="other")


# -- the structure checks, on tables a wrong sealer could write --------------------------------


def good_parts() -> table.TableParts:
    return build_parts(NAMES * 40 + [f"Passenger {n}" for n in range(400)], matchkey.EXACT)


def from_parts(parts: table.TableParts, plaintext: bytes | None = None, **counts: int) -> object:
    values = {"entries": parts.entries, "stored_keys": parts.stored_keys,
              "skipped_empty": parts.skipped_empty, **counts}  # fmt: skip
    buffer = bytearray(parts.key + parts.slots if plaintext is None else plaintext)
    return ScreeningTable.from_sealed(buffer, rule=matchkey.EXACT, **values)


def occupied_offsets(slots: bytes) -> list[int]:
    return [at for at in range(0, len(slots), 16) if slots[at] & 0x80]


def test_the_parts_of_a_good_build_are_accepted() -> None:
    parts = good_parts()
    served = from_parts(parts)
    assert isinstance(served, ScreeningTable) and served.contains("Passenger 7")
    assert not served.contains("Passenger 400")


def test_a_table_that_is_not_a_key_and_whole_buckets_is_refused() -> None:
    parts = good_parts()
    for plaintext in (parts.key, parts.key + parts.slots[:-1], parts.key + parts.slots + b"\0"):
        with pytest.raises(ScreeningError, match="not a 32-byte key and whole 64-byte buckets"):
            from_parts(parts, plaintext)


def test_an_occupied_count_other_than_the_headers_is_refused() -> None:
    parts = good_parts()
    with pytest.raises(ScreeningError, match="occupied slots; its header says"):
        from_parts(parts, stored_keys=parts.stored_keys + 1)
    slots = bytearray(parts.slots)
    slots[occupied_offsets(parts.slots)[3]] &= 0x7F  # one flag cleared: now an odd slot
    with pytest.raises(ScreeningError, match="occupied slots"):
        from_parts(parts, parts.key + bytes(slots))


def test_an_empty_slot_that_is_not_all_zero_is_refused() -> None:
    parts = good_parts()
    empty = next(at for at in range(0, len(parts.slots), 16) if not parts.slots[at] & 0x80)
    for column in (0, 7, 15):
        slots = bytearray(parts.slots)
        slots[empty + column] = 0x01
        with pytest.raises(ScreeningError, match=r"neither empty .* nor flagged"):
            from_parts(parts, parts.key + bytes(slots))


def test_a_fingerprint_outside_its_two_buckets_is_refused() -> None:
    parts = good_parts()
    slots = bytearray(parts.slots)
    buckets = len(slots) // 64
    at = occupied_offsets(parts.slots)[0]
    fingerprint = bytes(slots[at : at + 16])
    home = set(table._candidate_buckets(fingerprint, buckets))
    target = next(b for b in range(buckets) if b not in home and not slots[b * 64] & 0x80)
    slots[at : at + 16] = bytes(16)
    slots[target * 64 : target * 64 + 16] = fingerprint
    with pytest.raises(ScreeningError, match="not one of its two: the sealer placed it wrong"):
        from_parts(parts, parts.key + bytes(slots))


def test_counts_that_no_build_gives_are_refused() -> None:
    parts = good_parts()
    with pytest.raises(ScreeningError, match="a name has 1 to 4 keys"):
        from_parts(parts, entries=parts.stored_keys + 1)
    with pytest.raises(ScreeningError, match="a name has 1 to 4 keys"):
        from_parts(parts, entries=0)
    padded = parts.key + parts.slots + bytes(64 * 40 * len(parts.slots) // 64)
    with pytest.raises(ScreeningError, match="more than any build makes"):
        from_parts(parts, padded)


def test_an_empty_list_seals_and_clears_every_name() -> None:
    kms = FakeDataKeys()
    sealed = open_table(seal.seal_v3([], kms, "k", serial=1), kms)
    assert isinstance(sealed, ScreeningTable) and len(sealed) == 0
    assert not isinstance(decide(sealed, "Big Bird"), Listed)


# -- framing ------------------------------------------------------------------------------------


def _good_document() -> bytes:
    return seal.seal_v3(NAMES, FakeDataKeys(), "k", serial=4)


def _mutated(change: str) -> bytes:
    header, ciphertext = split(_good_document())
    if change == "no-newline":
        return V3_MAGIC + b"{" * (envelope.MAX_V3_HEADER_BYTES + 10)
    if change == "not-json":
        return V3_MAGIC + b"{not json\n" + ciphertext
    if change == "not-v3":
        return join({**header, "format": "noflylist-envelope-v2"}, ciphertext)
    if change == "missing":
        return join({k: v for k, v in header.items() if k != "stored_keys"}, ciphertext)
    if change == "extra":
        return join({**header, "listed": "Big Bird"}, ciphertext)
    if change == "count":
        return join({**header, "stored_keys": -1}, ciphertext)
    if change == "rule":
        return join({**header, "rule": ""}, ciphertext)
    if change == "serial":
        return join({**header, "serial": "7"}, ciphertext)
    if change == "no-ciphertext":
        return join(header, b"")
    if change == "deep":
        return V3_MAGIC + b"[" * 10_000 + b"\n" + ciphertext
    raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "words"),
    [("no-newline", "no header line ending within"), ("not-json", "header is not JSON"),
     ("not-v3", "not an object with format"), ("missing", "lacks header field(s): stored_keys"),
     ("extra", "1 unknown header field"), ("count", "'stored_keys' must be an integer"),
     ("rule", "'rule' must be a non-empty"), ("serial", "'serial' must be an integer"),
     ("no-ciphertext", "no ciphertext after its header"), ("deep", "header is not JSON")],
)  # fmt: skip
def test_malformed_v3_documents_name_the_cause(change: str, words: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        envelope.parse(_mutated(change))
    assert words in str(caught.value)
    assert "Big Bird" not in str(caught.value)


def test_a_v2_reader_path_is_not_taken_for_v3_and_back() -> None:
    kms = FakeDataKeys()
    v2 = envelope.parse(seal.seal_v2(NAMES, kms, "k", serial=1))
    with pytest.raises(EnvelopeError, match="decrypt_table opens noflylist-envelope-v3"):
        envelope.decrypt_table(v2, kms, rule=matchkey.DEFAULT_RULE)


# -- in the holder ------------------------------------------------------------------------------


def test_the_holder_serves_v3_refuses_an_older_one_and_no_fernet_replaces_it(
    tmp_path: Path,
) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope"
    path.write_bytes(seal.seal_v2(NAMES[:2], kms, "k", serial=1))
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    assert holder.reload(only_if_changed=False)
    assert not isinstance(decide(holder.current.table if holder.current else None,
                                 "Oscar the Grouch"), Listed)  # fmt: skip
    path.write_bytes(seal.seal_v3(NAMES, kms, "k", serial=2))  # v2 -> v3, one more name
    assert holder.reload(only_if_changed=False)
    current = holder.current
    assert current is not None and current.format == envelope.FORMAT_V3 and current.serial == 2
    assert isinstance(decide(current.table, "Oscar the Grouch"), Listed)
    path.write_bytes(seal.seal_v3(NAMES[:1], kms, "k", serial=2))
    with pytest.raises(RollbackError, match="serial 2 is not newer than serial 2"):
        holder.reload(only_if_changed=False)
    path.write_bytes(seal.seal_fernet(NAMES[:1], kms, "k"))
    with pytest.raises(RollbackError, match="cannot replace a v2 or v3 list"):
        holder.reload(only_if_changed=False)
    assert holder.current is current  # the v3 list stays in service


def test_the_holder_refuses_a_v3_table_under_another_rule_and_keeps_serving(
    tmp_path: Path,
) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope"
    path.write_bytes(seal.seal_v3(NAMES, kms, "k", serial=1))
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    assert holder.reload(only_if_changed=False)
    first = holder.current
    path.write_bytes(seal.seal_v3(NAMES, kms, "k", serial=2, rule=matchkey.EXACT))
    with pytest.raises(EnvelopeError, match="seal the list again"):
        holder.reload(only_if_changed=False)
    assert holder.current is first and holder.status.outcome == "failed"


def test_seal_command_writes_v3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kms = FakeDataKeys()
    monkeypatch.setattr(seal, "_data_key_source", lambda profile: kms)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(name + "\n" for name in NAMES), encoding="utf-8")
    out = tmp_path / "envelope.v3"
    from noflylist.cli import main

    code = main(["seal", "--key-id", "k", "--input", str(listed), "--output", str(out),
                 "--format", "v3", "--match", "exact", "--serial", "5"])  # fmt: skip
    assert code == 0
    parsed = envelope.parse(out.read_bytes())
    assert parsed.format == envelope.FORMAT_V3 and parsed.serial == 5
    assert parsed.rule == matchkey.rule_identity(matchkey.EXACT)
    sealed = envelope.decrypt_table(parsed, kms, rule=matchkey.EXACT)
    assert all(sealed.contains(name) for name in NAMES)


# -- in place -----------------------------------------------------------------------------------


def test_a_bytearray_document_is_decrypted_in_place_and_served_from() -> None:
    """A file's envelope arrives as a bytearray: the table is decrypted over its own
    ciphertext and served from the document's buffer, so the load holds one copy."""
    kms = FakeDataKeys()
    original = seal.seal_v3(NAMES, kms, "k", serial=4)
    document = bytearray(original)
    sealed = envelope.decrypt_table(envelope.parse(document), kms, rule=matchkey.DEFAULT_RULE)
    assert isinstance(sealed, ScreeningTable)
    assert sealed._slots.obj is document  # type: ignore[union-attr]
    header_end = original.index(b"\n", len(V3_MAGIC)) + 1
    assert document[:header_end] == original[:header_end]  # the header is left alone
    assert document[header_end:] != original[header_end:]  # the ciphertext is now the table
    built = envelope.decrypt_table(envelope.parse(original), kms, rule=matchkey.DEFAULT_RULE)
    for question in QUESTIONS:
        assert verdict(decide(sealed, question)) == verdict(decide(built, question)), question


def test_an_in_place_failure_leaves_no_table_key_in_the_document() -> None:
    kms = FakeDataKeys()
    original = seal.seal_v3(NAMES, kms, "k", serial=4, rule=matchkey.EXACT)
    document = bytearray(original)
    header_end = original.index(b"\n", len(V3_MAGIC)) + 1
    with pytest.raises(EnvelopeError, match="keyed under the match rule"):
        envelope.decrypt_table(envelope.parse(document), kms, rule=matchkey.FOLD_1)
    plaintext_size = len(original) - header_end - 16
    assert document[header_end : header_end + plaintext_size] == bytes(plaintext_size)
    changed = bytearray(original)
    changed[-20] ^= 1
    with pytest.raises(EnvelopeError, match="authentication failed"):
        envelope.decrypt_table(envelope.parse(changed), kms, rule=matchkey.EXACT)
    assert changed[header_end : header_end + plaintext_size] == bytes(plaintext_size)


def test_a_file_source_reads_into_one_bytearray_of_the_files_size(tmp_path: Path) -> None:
    path = tmp_path / "envelope"
    path.write_bytes(b"x" * 100_003)
    fetched = FileSource(str(path)).fetch()
    assert fetched is not None and isinstance(fetched.data, bytearray)
    assert fetched.data == b"x" * 100_003
    assert FileSource(str(path)).fetch(unless_version=fetched.version) is None
