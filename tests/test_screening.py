"""Behaviour of the decision logic: normalisation, the keyed cuckoo table, the answer text.

The Unicode reference data (``/usr/share/unicode``, Debian package ``unicode-data``) is the
Unicode Consortium's own NFKC_Casefold table: an independent producer of the expected
normalisation of every code point.
"""

from __future__ import annotations

import gc
import hmac
import pickle
import sys
import tracemalloc
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist import matchkey
from noflylist import table as screening
from noflylist.decision import Cleared, Listed, answer, decide, normalize
from noflylist.table import ScreeningError, ScreeningTable

UNICODE_DATA = Path("/usr/share/unicode")
SESAME = ["Big Bird", "Oscar the Grouch", "Elmo", "Cookie Monster", "Straße", "Zoë"]
SLOTS_COMPARED_PER_LOOKUP = 8  # 2 candidate buckets x 4 slots, for each key
#: The rule these tests compare against `normalize` under (tests/test_matchkey.py has fold-1's).
EXACT = matchkey.EXACT


def screen(table: ScreeningTable, name: str) -> str:
    """Decide and answer, as the passenger route does for an admitted name."""
    verdict = decide(table, name)
    assert isinstance(verdict, (Listed, Cleared))
    return answer(name, verdict.listed)


def demo_normalize(name: str) -> str:
    """The public demo's normalisation, as written there."""
    return "".join(name.split()).lower()


# --- normalisation --------------------------------------------------------------------------


def test_normalize_gives_the_public_demo_example() -> None:
    assert normalize("Big Bird") == "bigbird"


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_normalize_agrees_with_public_demo_on_every_ascii_string(name: str) -> None:
    assert normalize(name) == demo_normalize(name)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("\uff22\uff29\uff27\u3000\uff22\uff29\uff32\uff24", "bigbird"),  # full width, U+3000
        ("\ufb01ona", "fiona"),  # U+FB01 LATIN SMALL LIGATURE FI
        ("Gri\ufb03n", "griffin"),  # U+FB03 LATIN SMALL LIGATURE FFI
        ("Stra\u00dfe", "strasse"),  # sharp s folds to "ss"
        ("STRA\u1e9eE", "strasse"),  # U+1E9E LATIN CAPITAL LETTER SHARP S
        ("\u212aim", "kim"),  # U+212A KELVIN SIGN
        ("Louis \u2166", "louisvii"),  # U+2166 ROMAN NUMERAL SEVEN
        ("Big\u00a0Bird", "bigbird"),  # NO-BREAK SPACE
        ("Big\u202fBird", "bigbird"),  # NARROW NO-BREAK SPACE
        ("Big\u2003Bird", "bigbird"),  # EM SPACE
        ("Big\tBird\n", "bigbird"),
        ("Big\r\n\x0b\x0cBird", "bigbird"),
        ("Big\u2028Bird\u2029", "bigbird"),  # LINE / PARAGRAPH SEPARATOR
        ("Jose\u0301", "jos\u00e9"),  # combining acute composes
        ("JOSE\u0301", "jos\u00e9"),
        ("Zoe\u0308", "zo\u00eb"),
        ("a\u00a8", "\u00e4"),  # DIAERESIS -> space + U+0308; the mark then joins "a"
    ],
)
def test_normalize_folds_compatibility_forms_case_and_whitespace(
    written: str, expected: str
) -> None:
    assert normalize(written) == expected


def test_normalize_makes_both_greek_sigmas_equal() -> None:
    # str.lower() gives final sigma U+03C2 at the end of a word; casefold gives U+03C3.
    assert normalize("\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3") == normalize(
        "\u03bf\u03b4\u03c5\u03c3\u03c3\u03b5\u03c5\u03c2"
    )


def test_normalize_keeps_zero_width_characters_which_are_not_whitespace() -> None:
    # A documented limit: only str.isspace() characters are removed.
    assert normalize("Big\u200bBird") != normalize("BigBird")


def _code_points_in(path: Path, prop: str | None) -> dict[int, str]:
    """Parse a UCD file of ``range ; [prop ;] value`` lines into {code point: value}."""
    table: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = [f.strip() for f in line.split("#", 1)[0].split(";")]
        if len(fields) < 2 or (prop is not None and fields[1] != prop):
            continue
        first, _, last = fields[0].partition("..")
        value = fields[2] if prop is not None else fields[1]
        for cp in range(int(first, 16), int(last or first, 16) + 1):
            table[cp] = value
    return table


@pytest.fixture(scope="module")
def unicode_nfkc_casefold() -> tuple[dict[int, str], set[int]]:
    """Unicode's NFKC_Casefold mapping and the set of code points its version assigns."""
    props = UNICODE_DATA / "DerivedNormalizationProps.txt"
    if not props.exists():
        pytest.fail(f"{props} is missing: apt-get install unicode-data (see .ci/apt-packages)")
    mapping = {
        cp: "".join(chr(int(h, 16)) for h in value.split())
        for cp, value in _code_points_in(props, "NFKC_CF").items()
    }
    assigned = set(_code_points_in(UNICODE_DATA / "DerivedAge.txt", None))
    return mapping, assigned


def test_normalize_equals_unicode_nfkc_casefold_without_whitespace_for_every_code_point(
    unicode_nfkc_casefold: tuple[dict[int, str], set[int]],
) -> None:
    mapping, assigned = unicode_nfkc_casefold
    compared = default_ignorable = 0
    for cp in range(sys.maxunicode + 1):
        char = chr(cp)
        if cp not in assigned or unicodedata.category(char) in ("Cn", "Cs"):
            continue  # unassigned in this Python's or the data file's Unicode version
        expected = mapping.get(cp, char)
        if expected == "":
            # NFKC_CF deletes Default_Ignorable_Code_Point characters; we keep them.
            assert normalize(char) != ""
            default_ignorable += 1
            continue
        assert normalize(char) == "".join(c for c in expected if not c.isspace()), hex(cp)
        compared += 1
    assert compared > 250_000
    assert default_ignorable > 300


@pytest.mark.slow
def test_normalize_drops_exactly_whitespace_and_is_stable_for_every_code_point() -> None:
    for cp in range(sys.maxunicode + 1):
        once = normalize(chr(cp))
        assert (once == "") == chr(cp).isspace(), hex(cp)
        assert not any(c.isspace() for c in once), hex(cp)
        assert normalize(once) == once, hex(cp)


# Letters, marks, spacing accents and exotic spaces that interact across NFKC and casefold.
TRICKY = list(
    "aeiouAEIOU \u00a0\u3000\t\u0301\u0308\u0307\u0323\u0345\u00a8\u00b4\u00df\u1e9e"
    "\u0130\u0131\u03a3\u03c3\u03c2\u0390\u1fb3\u01c5\u01f0\ufb01\u3392\u212a\uff22"
)


@settings(max_examples=500)
@given(st.one_of(st.text(), st.text(alphabet=st.sampled_from(TRICKY), max_size=16)))
def test_normalize_is_idempotent_and_removes_all_whitespace(name: str) -> None:
    once = normalize(name)
    assert normalize(once) == once
    assert not any(c.isspace() for c in once)


# --- the table ------------------------------------------------------------------------------


def test_listed_names_are_found_however_they_are_written() -> None:
    table = ScreeningTable.build(SESAME)
    for written in ["Big Bird", "BIG   BIRD", "big\tbird\n", "\uff22\uff29\uff27 BIRD", "elmo",
                    "Oscar The Grouch", "STRASSE", "Zoe\u0308", "Z O \u00cb"]:
        assert table.contains(written), written


def test_names_not_on_the_list_are_cleared() -> None:
    table = ScreeningTable.build(SESAME)
    for written in ["Grover", "Bert", "Ernie", "Big", "Bird", "BigBirdBigBird", "", " "]:
        assert not table.contains(written), written


def _one_letter_off(name: str) -> set[str]:
    """Every deletion, substitution and insertion of one letter a-z in ``name``."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = {name[:i] + name[i + 1 :] for i in range(len(name))}
    for i in range(len(name) + 1):
        for letter in letters:
            out.add(name[:i] + letter + name[i + 1 :])
            out.add(name[:i] + letter + name[i:])
    return out


def test_names_one_letter_off_a_listed_name_are_cleared() -> None:
    table = ScreeningTable.build(SESAME, EXACT)
    listed = {normalize(n) for n in SESAME}
    near = {v for n in listed for v in _one_letter_off(n)} - listed
    assert len(near) > 2000
    assert not any(table.contains(v) for v in near)


def test_duplicates_are_stored_once() -> None:
    table = ScreeningTable.build(
        ["Big Bird", "big bird", "BIGBIRD", "\uff22\uff29\uff27 \uff22\uff29\uff32\uff24", "Elmo"]
    )
    assert len(table) == 2
    assert table.skipped_empty == 0


def test_names_empty_after_normalisation_are_skipped_and_counted() -> None:
    table = ScreeningTable.build(["", "   ", "\u3000\t\n\u00a0", "Elmo"])
    assert len(table) == 1
    assert table.skipped_empty == 3
    assert not table.contains("")
    assert table.contains("Elmo")


def test_empty_list_clears_everyone() -> None:
    table = ScreeningTable.build([])
    assert len(table) == 0
    assert not table.contains("Big Bird")
    assert not table.contains("")


def test_build_accepts_a_one_shot_iterator() -> None:
    table = ScreeningTable.build(name for name in SESAME)
    assert len(table) == len(SESAME)
    assert all(table.contains(name) for name in SESAME)


NAME_PARTS = st.sampled_from(["Big", "bird", "BIRD", " ", "\u00a0", "\u00df", "ss", "e\u0301",
                              "\u00e9", "\ufb01", "fi", "Elmo", "\uff25", "\u3000", "x"])
NAMES = st.one_of(st.text(max_size=12), st.lists(NAME_PARTS, max_size=4).map("".join))


@settings(max_examples=300, deadline=None)
@given(st.lists(NAMES, max_size=40), st.lists(NAMES, max_size=20))
def test_membership_agrees_with_a_python_set_of_normalised_names(
    names: list[str], others: list[str]
) -> None:
    table = ScreeningTable.build(names, EXACT)
    expected = {normalize(n) for n in names} - {""}
    assert len(table) == len(expected)
    assert table.skipped_empty == sum(1 for n in names if normalize(n) == "")
    for query in names + others:
        assert table.contains(query) == (normalize(query) in expected), ascii(query)


# --- what the table holds and hides ---------------------------------------------------------


def _reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through gc referents, not entering classes."""
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def _occupied_slots(table: ScreeningTable) -> list[bytes]:
    """The table's 16-byte slots that hold a fingerprint (an empty slot is all zeros)."""
    slots = (table._slots[i : i + 16] for i in range(0, table.nbytes, 16))
    return [slot for slot in slots if slot != bytes(16)]


def test_table_references_only_bytes_and_ints_and_no_name_text() -> None:
    names = [*SESAME, "Abdulrahman Al-Example", "Jane Q. Public"]
    table = ScreeningTable.build(names)
    reachable = _reachable(table)
    assert {type(o) for o in reachable} == {ScreeningTable, bytes, int}
    buffers = [o for o in reachable if isinstance(o, bytes)]
    for name in names:
        for form in {name, normalize(name)}:
            assert not any(form.encode() in b for b in buffers), name


def test_key_is_not_exposed_by_repr_attributes_or_pickling() -> None:
    table = ScreeningTable.build(SESAME)
    key = table._key
    assert len(key) == 32
    for text in (repr(table), str(table), f"{table!r}"):
        assert key.hex() not in text and str(key) not in text
    for attribute in dir(table):
        if not attribute.startswith("_"):
            value = getattr(table, attribute)
            assert value != key and not (isinstance(value, bytes) and key in value), attribute
    with pytest.raises(TypeError, match="never serialised"):
        pickle.dumps(table)


def test_two_tables_from_the_same_names_use_different_keys_and_fingerprints() -> None:
    first, second = ScreeningTable.build(SESAME), ScreeningTable.build(SESAME)
    assert first._key != second._key
    assert first._slots != second._slots
    assert not set(_occupied_slots(first)) & set(_occupied_slots(second))
    assert all(first.contains(n) and second.contains(n) for n in SESAME)


def test_every_stored_fingerprint_has_the_flag_so_no_empty_slot_can_match() -> None:
    table = ScreeningTable.build(SESAME, EXACT)
    occupied = _occupied_slots(table)
    assert len(occupied) == len(SESAME)
    assert all(s[0] & 0x80 for s in occupied)


# --- failure and rebuild ----------------------------------------------------------------------


def _counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[object]:
    """Wrap ``module.name`` so every call's result is recorded; return the record."""
    original: Callable[..., object] = getattr(module, name)
    results: list[object] = []

    def wrapper(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(module, name, wrapper)
    return results


def test_failed_insertion_rebuilds_with_more_buckets_from_a_one_shot_iterator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(screening, "_buckets_for", lambda entries: 1)  # 4 slots for 5 names
    attempts = _counting(monkeypatch, screening, "_place_all")
    names = ["Big Bird", "Elmo", "Grover", "Bert", "Ernie"]
    table = ScreeningTable.build(name for name in names)  # can be read only once
    assert attempts[0] is None and len(attempts) >= 2  # the first attempt did not fit
    assert table.nbytes >= 2 * 64
    assert len(table) == 5 and all(table.contains(n) for n in names)
    assert not table.contains("Oscar")


def test_repeats_are_stored_once_even_when_most_of_the_list_repeats() -> None:
    names = ["Big Bird", "big bird", "BIGBIRD", "Elmo"] * 500 + ["Grover"]
    table = ScreeningTable.build(iter(names))
    assert len(table) == 3
    assert len(_occupied_slots(table)) == 3
    assert table.contains(" b i g b i r d ") and table.contains("GROVER")
    assert not table.contains("Bert")


def test_build_gives_up_with_screening_error_after_bounded_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(screening, "_buckets_for", lambda entries: 1)
    monkeypatch.setattr(screening, "_MAX_BUILD_ATTEMPTS", 1)
    with pytest.raises(ScreeningError, match="could not place 5 fingerprints") as caught:
        ScreeningTable.build(["Big Bird", "Elmo", "Grover", "Bert", "Ernie"])
    assert "elmo" not in str(caught.value).lower()


# --- same work for every lookup -------------------------------------------------------------


@pytest.mark.parametrize("rule", matchkey.RULES)
def test_every_lookup_makes_the_same_number_of_constant_time_comparisons(
    monkeypatch: pytest.MonkeyPatch, rule: str
) -> None:
    table = ScreeningTable.build(SESAME, rule)
    empty = ScreeningTable.build([], rule)
    results = _counting(monkeypatch, hmac, "compare_digest")
    cases = [(table, "Big Bird", True), (table, "Grover", False), (table, "Big Birb", False),
             (table, "Elmo", True), (table, "Elmp", False), (table, "", False),
             (empty, "Elmo", False)]
    for which, name, listed in cases:
        results.clear()
        assert which.contains(name) is listed
        assert len(results) == SLOTS_COMPARED_PER_LOOKUP * matchkey.KEYS_PER_NAME[rule], name
        # A listed name can match twice when both candidate buckets are the same bucket.
        assert (True in results) is listed, name


# --- memory ---------------------------------------------------------------------------------


def test_sizing_rule_stays_under_32_bytes_a_name_at_two_million() -> None:
    names = 2_000_000
    assert screening._buckets_for(names) * 64 / names <= 32


@pytest.mark.slow
def test_built_table_uses_at_most_32_bytes_a_name_measured() -> None:
    names = [f"Passenger {i}" for i in range(50_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = ScreeningTable.build(names, EXACT)  # digits fold under fold-1: 6 reads as 8
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == len(names)
    assert table.nbytes / len(table) <= 32
    assert retained / len(table) <= 32


# --- the answer -----------------------------------------------------------------------------


def test_answer_text_is_the_public_demos_byte_for_byte() -> None:
    listed = b"Big Bird is on the no-fly list and CAN NOT BOARD!\n"
    assert answer("Big Bird", True).encode() == listed
    assert answer("Elmo", False).encode() == b"Elmo is cleared to fly. Enjoy your flight!\n"


def test_screen_answers_with_the_name_as_the_caller_wrote_it() -> None:
    table = ScreeningTable.build(SESAME)
    assert screen(table, "  BIG bird ") == "  BIG bird  is on the no-fly list and CAN NOT BOARD!\n"
    assert screen(table, "Grover") == "Grover is cleared to fly. Enjoy your flight!\n"


def test_slot_search_skips_matches_that_straddle_two_slots() -> None:
    # Slot 0 ends in eight zero bytes and slot 1 is empty: sixteen zero bytes first appear at
    # offset 8, inside slot 0, which is not a slot. The same for a fingerprint-shaped value
    # made of slot 2's second half and slot 3's first half.
    first = bytes([0x80 | 1]) + bytes(range(2, 9)) + bytes(8)
    third = bytes([0x80 | 2]) + bytes(7) + b"ABCDEFGH"
    fourth = b"IJKLMNOP" + bytes([0x80 | 3]) * 8
    bucket = bytearray(64 * 3)  # the bucket under test is bucket 1, at offset 64
    bucket[64:128] = first + bytes(16) + third + fourth
    assert screening._find_in_bucket(bucket, 1, bytes(16)) == 64 + 16
    assert screening._find_in_bucket(bucket, 1, b"ABCDEFGHIJKLMNOP") == -1
    assert screening._find_in_bucket(bucket, 1, fourth) == 64 + 48
    assert screening._find_in_bucket(bucket, 0, first) == -1  # other buckets are not searched
