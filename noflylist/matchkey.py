"""Match keys: the forms in which a listed name and a queried name are compared.

A rule turns a name into a FIXED number of keys (:data:`KEYS_PER_NAME`), whatever the name:
the table holds every key of every listed name, a query looks up all of its keys, and the
name is listed if any is found. Two rules, named and versioned, chosen by ``serve --match``:

* ``exact`` (today's rule, the public demo's extended to Unicode): one key, :func:`normalize`
  (NFKC, case folding, whitespace removed).
* ``fold-1`` (the default): four keys, two *readings* of the name times two *orders*:

  - reading A, **as it looks** (UTS #39 confusable skeleton, Unicode Technical Standard #39
    section 4): every non-ASCII character is replaced by its prototype from Unicode's
    ``confusables.txt``, so Cyrillic ``В``/``і``, Greek ``Ι``, mathematical and full-width
    letters and small capitals read as the Latin letters they look like; diacritics are then
    dropped (``Müller`` -> ``muller``, the form Doc 9303 allows by omitting diacritics);
  - reading B, **as it is spelled** on a travel document: ICAO Doc 9303 Part 3 (8th ed.,
    2021), section 6 "Transliterations recommended for use by States", for Latin letters
    with diacritics (``Ä``->``AE``, ``Ü``->``UE``, ``ß``->``SS``, ``Þ``->``TH``...) and
    Cyrillic (``Ж``->``ZH``, ``Х``->``KH``...); Greek by ELOT 743 (the standard of Greek
    passports, adopted by UN resolution V/19); any other character by its UTS #39 prototype;
  - the *joined* order: the tokens as written, concatenated (a name without spaces, as in the
    public demo's list, keys as it always did); the *sorted* order: the tokens sorted, then
    concatenated, so ``Bird, Big``, ``BIRD/BIG`` and ``BIRD<<BIG`` key as ``Big Bird``.

  Before both readings: apostrophes are dropped (Doc 9303 Part 3 section 4.6: omitted in the
  MRZ); every other punctuation (P*) and separator (Z*), whitespace, the MRZ filler ``<`` and
  the characters that render as a blank (Hangul fillers, braille blank) separate tokens; every
  other Default_Ignorable_Code_Point (combining grapheme joiner, variation selectors...) is
  removed; digits read as letters (``B1g``, ``0scar``; ``1`` is ``l`` in reading A and ``i``
  in B); the titles reservation systems append (MR MRS MS MISS MSTR DR) are dropped as
  tokens. A character that is none of letter, mark, digit, punctuation, separator (a symbol,
  an emoji, a control, ``½``) cannot be read as part of a name: :class:`MatchKeyError` names
  its code point and position, never the name.

  fold-1 leaves ASCII letters as written (then case-folds them): UTS #39 also maps ``m`` to
  ``rn`` and ``I`` to ``l``, which would merge distinct Latin names (``Kim``/``Kirn``). A
  non-ASCII capital whose prototype is ``l`` (Greek ``Ι``, Cyrillic ``І``) is read as ``I``.

Same work for every query of a rule: the same number of keys and look-ups
(:mod:`noflylist.decision`). The keys depend on the Unicode version of the running Python
(NFKC, case folding, categories) and of the tables; :func:`rule_identity` names all three,
and :func:`check_rule` refuses a table built under another.

Where the rule is recorded: a table records the rule it was built under
(:attr:`noflylist.table.ScreeningTable.rule`), and the load's log line names its
:func:`rule_identity`. A v2 or fernet envelope holds the names themselves (clear only inside
the enclave) and records no rule: the enclave keys them under its ``--match``, so a list
sealed before fold-1 existed is matched under fold-1 at once, with nothing to reseal. A list
sealed with its keys (a prebuilt table) must record the identity it was keyed under, and
:func:`check_rule` refuses another, saying how to reseal.
"""

# The tables below hold Cyrillic and Greek letters as themselves, which is what ruff's
# ambiguous-character rules flag; tests/test_matchkey.py checks that each table's letters
# are of its script and its values plain ASCII letters.
# ruff: noqa: RUF001, RUF002, RUF003

from __future__ import annotations

import hashlib
import re
import unicodedata
from importlib import resources
from types import MappingProxyType
from typing import Final, NamedTuple

from enclave.errors import NoflylistError

EXACT: Final = "exact"
FOLD_1: Final = "fold-1"
#: Every rule, by name; the index of a rule here is how a table records it.
RULES: Final = (EXACT, FOLD_1)
DEFAULT_RULE: Final = FOLD_1
#: Keys a name gives under each rule, always exactly this many (some may be equal).
KEYS_PER_NAME: Final = MappingProxyType({EXACT: 1, FOLD_1: 4})
#: The generated tables (noflylist/tools/gen_fold_tables.py) and their pinned SHA-256: a
#: changed file would silently change fold-1, so it is refused at import.
TABLES_FILE: Final = "data/fold-1-tables.txt"
TABLES_SHA256: Final = "02cbc203726c5a47d90d68e6616ba35d1ea662ca44e46f874bc44e2b97ad0ca8"

#: Dropped without splitting a token: Doc 9303 Part 3 section 4.6 omits apostrophes in the
#: MRZ (O'BRIEN -> OBRIEN); the others are what keyboards and fonts give for one.
_APOSTROPHES: Final = frozenset("'`\u00b4\u2018\u2019\u201b\u2032\u02b9\u02bb\u02bc\uff07")
#: Render as a blank the width of a letter or a space, so they separate tokens: the Hangul
#: fillers (Default_Ignorable, but drawn with a width), braille pattern blank, ideographic
#: half fill space. (Other ignorables render as nothing and are removed.)
_BLANKS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800\u303f")
#: Doc 9303 Part 3 section 4.6: the filler between the MRZ's name components.
_MRZ_FILLER: Final = "<"
#: Titles that reservation systems append to a name (``BIRD/BIG MR``); no part of a name.
_TITLES: Final = frozenset({"mr", "mrs", "ms", "miss", "mstr", "dr"})
#: Digits written for letters: a person's name has none. Reading A reads 1 as l (UTS #39's
#: prototype of 1), reading B as i; 0 is UTS #39's O; the rest are the usual substitutions.
_DIGITS_A: Final = str.maketrans("0123456789", "olzeasbtbg")
_DIGITS_B: Final = str.maketrans("0123456789", "oizeasgtbg")
#: ASCII characters that are symbols (Unicode S*): not part of a name.
_ASCII_SYMBOLS: Final = re.compile(r"[$+=>^|~]|[^\t-\r\x1c-\x7e]")
_ASCII_DIGIT: Final = re.compile(r"[0-9]")
_NOT_ASCII_LETTER: Final = re.compile(r"[^a-z]+")
#: A run of combining marks after an ASCII character: the diacritics Doc 9303 omits, and
#: the marks left over from prototypes (``ø`` -> ``o`` + U+0338).
_MARKS_AFTER_ASCII: Final = re.compile(
    "([\x00-\x7f])[\u0300-\u036f\u0483-\u0489\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff"
    "\ufe20-\ufe2f]+"
)

# ICAO Doc 9303 Part 3 (8th ed.), section 6, table A "Transliteration of multinational
# Latin-based characters": the letters not written as their base letter (every other letter
# with a diacritic is, which NFD and mark removal do). Case-folded, as reading B looks them up
# (case folding already writes ß as ss, as the table does).
_ICAO_LATIN: Final = {
    "ä": "ae", "å": "aa", "æ": "ae", "ð": "d", "ö": "oe", "ø": "oe", "ü": "ue",
    "þ": "th", "ĳ": "ij", "œ": "oe", "ŋ": "n", "ı": "i", "ł": "l", "ħ": "h", "đ": "d",
    "ŀ": "l",
}  # fmt: skip
# Same section, table B "Transliteration of Cyrillic characters" (ь is omitted).
_ICAO_CYRILLIC: Final = {
    "а": "a", "б": "b", "в": "v", "г": "g", "ґ": "g", "д": "d", "ђ": "d", "ѓ": "g",
    "е": "e", "ё": "e", "є": "ie", "ж": "zh", "з": "z", "ѕ": "dz", "и": "i", "і": "i",
    "ї": "i", "й": "i", "ј": "j", "к": "k", "л": "l", "љ": "lj", "м": "m", "н": "n",
    "њ": "nj", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "ћ": "c", "ќ": "k",
    "у": "u", "ў": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "џ": "dz", "ш": "sh",
    "щ": "shch", "ъ": "ie", "ы": "y", "ь": "", "э": "e", "ю": "iu", "я": "ia",
}  # fmt: skip
# ELOT 743 (2001), type 2 "transcription", the one Greek passports use; the conversion table
# of UN resolution V/19's annex. Single letters (case folding makes final ς a σ); the
# digraphs are _greek() below.
_ELOT_743: Final = {
    "α": "a", "β": "v", "γ": "g", "δ": "d", "ε": "e", "ζ": "z", "η": "i", "θ": "th",
    "ι": "i", "κ": "k", "λ": "l", "μ": "m", "ν": "n", "ξ": "x", "ο": "o", "π": "p",
    "ρ": "r", "σ": "s", "τ": "t", "υ": "y", "φ": "f", "χ": "ch", "ψ": "ps",
    "ω": "o", "ϊ": "i", "ϋ": "y",
}  # fmt: skip
#: Greek vowels with tonos, as the same vowel (ELOT 743 writes the accent only optionally).
_GREEK_TONOS: Final = str.maketrans("άέήίόύώΐΰ", "αεηιουωϊϋ")
# ELOT 743 digraphs: ου -> ou; αυ, ευ, ηυ -> av, ev, iv, but af, ef, if before θ κ ξ π σ τ φ
# χ ψ or at the end of a word; μπ -> b at the start of a word, mb inside; γγ -> ng, γξ -> nx,
# γχ -> nch (γκ -> gk is letter by letter).
_GREEK_OU: Final = re.compile("ου")
_GREEK_U_VOICELESS: Final = re.compile("([αεη])υ(?=[θκξπσςτφχψ]|(?![α-ωϊϋ]))")
_GREEK_U_VOICED: Final = re.compile("([αεη])υ")
_GREEK_MP_START: Final = re.compile("(?<![α-ωϊϋ])μπ")
_GREEK_PAIRS: Final = (("μπ", "mb"), ("γγ", "ng"), ("γξ", "nx"), ("γχ", "nch"))


class MatchKeyError(NoflylistError):
    """A name has a character this rule cannot read as part of a name.

    The message names the code point and its position, never the name (so it can go into a
    400 answer or a load error as it is)."""

    def __init__(self, code_point: int, position: int, what: str) -> None:
        self.code_point = code_point
        self.position = position
        super().__init__(
            f"has U+{code_point:04X} ({what}) at position {position}, which {FOLD_1} cannot "
            "read as part of a name; write the name in letters"
        )


class MatchRuleError(NoflylistError):
    """A table was built under another rule (or Unicode version) than the service's."""


class Keys(NamedTuple):
    """A name's keys under one rule, and where it had a digit (None if it had none)."""

    keys: tuple[str, ...]
    digit_at: int | None


def rule_identity(rule: str) -> str:
    """What a table built under ``rule`` depends on: the rule's name, the Unicode version of
    this Python's ``unicodedata`` and, for fold-1, the versions of its tables."""
    if rule == EXACT:
        return f"{EXACT}; unicode {unicodedata.unidata_version}"
    return f"{FOLD_1}; unicode {unicodedata.unidata_version}; tables {_TABLES.versions}"


def check_rule(recorded: str, configured: str) -> None:
    """Refuse a table whose recorded :func:`rule_identity` is not this service's.

    For lists sealed with their keys (the prebuilt tables of envelope v3). A v2 or fernet
    envelope holds the names themselves, so the enclave keys them under the configured rule
    and there is nothing to compare."""
    expected = rule_identity(configured)
    if recorded != expected:
        raise MatchRuleError(
            f"the list was keyed under the match rule '{recorded}', this service matches "
            f"under '{expected}'; seal the list again with this release's noflylist seal "
            f"(--match {configured}), or serve with the --match the list was sealed under"
        )


def keys(name: str, rule: str) -> Keys:
    """The :data:`KEYS_PER_NAME` keys of ``name`` under ``rule``.

    Raises :class:`MatchKeyError` for a character ``fold-1`` cannot read, and ``ValueError``
    for an unknown rule. An empty key means the name has no letters at all.
    """
    if rule == FOLD_1:
        return _fold_1(name)
    if rule == EXACT:
        return Keys((normalize(name),), None)
    raise ValueError(f"unknown match rule {rule!r}; the rules are {', '.join(RULES)}")


def normalize(name: str) -> str:
    """The ``exact`` rule's key: the form of ``name`` that list entries and queries are
    compared in under it.

    The public demo removed all whitespace and lowercased (``"Big Bird"`` -> ``"bigbird"``);
    this does the same for ASCII and extends it to Unicode, in this order:

    1. NFKC, first, so compatibility forms become ordinary letters *before* case folding:
       full-width letters (U+FF22 U+FF29 U+FF27) -> ``"BIG"``, ligature ``"ﬁ"`` -> ``"fi"``,
       ``"㎒"`` -> ``"MHz"``, NBSP and ideographic space -> ``" "``, ``"e"`` + combining acute
       -> ``"é"``.
    2. Case folding (``str.casefold``), which is stronger than ``lower``: ``"ß"`` -> ``"ss"``,
       final sigma U+03C2 -> sigma U+03C3.
    3. Drop every character for which ``str.isspace()`` is true.
    4. NFKC again, because case folding can leave a decomposed sequence (``"ǰ"`` -> ``"j"`` +
       combining caron) and step 3 can put a combining mark (from ``"¨"`` -> ``" "`` + U+0308)
       next to a new base letter. Doing this after step 3 makes the function idempotent, so a
       list that its producer already normalised with this function is left unchanged. This
       last step introduces no whitespace (the tests check every code point).

    Only whitespace is removed; other invisible characters (e.g. U+200B) are kept, which is
    why :func:`noflylist.decision.admit` refuses them in a query. Results follow the Unicode
    version of the running Python, which is the same at load and lookup.
    """
    folded = unicodedata.normalize("NFKC", name).casefold()
    # str.split() with no argument splits on exactly the characters for which str.isspace()
    # is true; joining the pieces drops them, as the public demo did.
    without_space = "".join(folded.split())
    return unicodedata.normalize("NFKC", without_space)


# -- fold-1 ---------------------------------------------------------------------------------


def _fold_1(name: str) -> Keys:
    if name.isascii():
        return _fold_1_ascii(name)
    looks, spelled, digit_at = _prepare(name)
    look = _tokens(_reading_a(unicodedata.normalize("NFKC", looks)))
    spell = _tokens(_reading_b(unicodedata.normalize("NFKC", spelled)))
    return Keys((*_orders(look), *_orders(spell)), digit_at)


def _fold_1_ascii(name: str) -> Keys:
    """fold-1 for an ASCII name, the common case, with the same result as the general path
    (a test compares them): no prototype, transliteration or ignorable applies to ASCII."""
    symbol = _ASCII_SYMBOLS.search(name)
    if symbol is not None:
        char = symbol.group()
        raise MatchKeyError(ord(char), symbol.start(), _what(char))
    digit = _ASCII_DIGIT.search(name)
    lowered = name.replace("'", "").replace("`", "").lower()
    if digit is None:  # the common case: both readings are the name as written
        tokens = _untitled([t for t in _NOT_ASCII_LETTER.split(lowered) if t])
        joined, ordered = "".join(tokens), "".join(sorted(tokens))
        return Keys((joined, ordered, joined, ordered), None)
    look = [t for t in _NOT_ASCII_LETTER.split(lowered.translate(_DIGITS_A)) if t]
    spelled = [t for t in _NOT_ASCII_LETTER.split(lowered.translate(_DIGITS_B)) if t]
    return Keys((*_orders(_untitled(look)), *_orders(_untitled(spelled))), digit.start())


def _prepare(name: str) -> tuple[str, str, int | None]:
    """``name`` with apostrophes and ignorables removed, blanks and the MRZ filler as spaces
    and every decimal digit as an ASCII one, twice: for reading A with punctuation and
    separators kept (UTS #39 gives some a letter's prototype: ``¡`` looks like ``i``), for
    reading B with them as spaces (as written, ``¡`` separates); and the position of the
    first digit.

    Raises :class:`MatchKeyError` for a character that is not a letter, mark, digit,
    punctuation or separator, even after compatibility decomposition."""
    looks = []
    spelled = []
    digit_at = None
    for position, char in enumerate(name):
        if char in _APOSTROPHES:
            continue
        if char in _BLANKS or char == _MRZ_FILLER:
            looks.append(" ")
            spelled.append(" ")
            continue
        if ord(char) in _TABLES.ignorable:
            continue
        category = unicodedata.category(char)
        major = category[0]
        if major in "PZ" or char.isspace():
            looks.append(char)
            spelled.append(" ")
            continue
        if major in "LM":
            pass
        elif category == "Nd":
            digit_at = position if digit_at is None else digit_at
            char = str(unicodedata.decimal(char))
        elif major == "N" and _reads_as_letters(char):  # Roman numerals, circled digits
            if any(c.isdigit() for c in unicodedata.normalize("NFKC", char)):
                digit_at = position if digit_at is None else digit_at
        else:
            raise MatchKeyError(ord(char), position, _what(char))
        looks.append(char)
        spelled.append(char)
    return "".join(looks), "".join(spelled), digit_at


def _reads_as_letters(char: str) -> bool:
    """True if ``char``'s compatibility form is letters and digits only (``Ⅳ``, ``②``)."""
    form = unicodedata.normalize("NFKC", char)
    return bool(form) and all(unicodedata.category(c)[0] == "L" or c.isdecimal() for c in form)


def _what(char: str) -> str:
    category = unicodedata.category(char)
    words = {"S": "a symbol", "C": "a control or format character", "N": "a number sign"}
    return f"{words.get(category[0], 'not a letter')}, Unicode category {category}"


def _reading_a(text: str) -> str:
    """As it looks: UTS #39 prototypes of the non-ASCII characters (NFD, map, NFD, as the
    standard's skeleton), case folded, digits as letters, diacritics dropped."""
    text = unicodedata.normalize("NFD", text).translate(_TABLES.look)
    text = unicodedata.normalize("NFD", text).casefold().translate(_DIGITS_A)
    return _MARKS_AFTER_ASCII.sub(r"\1", text)


def _reading_b(text: str) -> str:
    """As it is spelled: case folded, ELOT 743 for Greek, ICAO Doc 9303 for Latin and
    Cyrillic, UTS #39 prototypes for the rest; diacritics dropped, digits as letters."""
    text = unicodedata.normalize("NFC", text.casefold())
    if any("\u0370" <= c <= "\u03ff" for c in text):
        text = _greek(text)
    text = text.translate(_SPELLED).translate(_TABLES.spelled_fallback)
    text = _MARKS_AFTER_ASCII.sub(r"\1", unicodedata.normalize("NFD", text))
    return text.translate(_DIGITS_B)


def _greek(text: str) -> str:
    """ELOT 743's digraphs, before its single letters (in :data:`_SPELLED`)."""
    text = text.translate(_GREEK_TONOS)
    text = _GREEK_OU.sub("ou", text)
    text = _GREEK_U_VOICELESS.sub(r"\1f", text)
    text = _GREEK_U_VOICED.sub(r"\1v", text)
    text = _GREEK_MP_START.sub("b", text)
    for pair, latin in _GREEK_PAIRS:
        text = text.replace(pair, latin)
    return text


def _tokens(text: str) -> list[str]:
    """The tokens of ``text``: runs between punctuation, separators and whitespace."""
    tokens: list[str] = []
    current: list[str] = []
    for char in text:
        if char.isspace() or unicodedata.category(char)[0] in "PZ":
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        tokens.append("".join(current))
    return _untitled(tokens)


def _untitled(tokens: list[str]) -> list[str]:
    """``tokens`` without the reservation titles, unless nothing else would be left."""
    kept = [token for token in tokens if token not in _TITLES]
    return kept if kept else tokens


def _orders(tokens: list[str]) -> tuple[str, str]:
    """The joined and the sorted key of ``tokens``."""
    return "".join(tokens), "".join(sorted(tokens))


# -- the tables -----------------------------------------------------------------------------


class _Tables(NamedTuple):
    look: dict[int, str]
    spelled_fallback: dict[int, str]
    ignorable: frozenset[int]
    versions: str


def _load_tables() -> _Tables:
    """Read and check the generated tables (:data:`TABLES_FILE`).

    ``look`` is reading A's map: each non-ASCII character to its UTS #39 prototype, small
    capitals to their letter (in prototypes too: Cyrillic ``в`` -> ``ʙ`` -> ``b``), and a
    capital whose prototype is ``l`` to ``I``. ``spelled_fallback`` is reading B's map for
    what its transliterations leave: the same prototypes with ``l`` read as ``i`` (the
    reading of ``1`` there)."""
    data = resources.files("noflylist").joinpath(TABLES_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TABLES_SHA256:
        raise MatchRuleError(
            f"noflylist/{TABLES_FILE} has sha256 {digest}, not the {TABLES_SHA256} this "
            "release pins: the package is damaged or the file was edited; reinstall "
            "noflylist (the file is generated by noflylist/tools/gen_fold_tables.py)"
        )
    sections: dict[str, list[list[str]]] = {}
    versions = ""
    current: list[list[str]] = []
    for line in data.decode("utf-8").splitlines():
        if line.startswith("# versions: "):
            versions = line.removeprefix("# versions: ")
        elif line.startswith("@"):
            current = sections.setdefault(line[1:], [])
        elif line and not line.startswith("#"):
            current.append(line.split())
    small = {int(f[0], 16): chr(int(f[1], 16)) for f in sections["smallcaps"]}
    look: dict[int, str] = dict(small)
    fallback: dict[int, str] = dict(small)
    for source, *target in sections["confusables"]:
        code = int(source, 16)
        prototype = "".join(chr(int(t, 16)) for t in target).translate(small)
        capital = unicodedata.category(chr(code)) == "Lu"
        look[code] = "I" if prototype == "l" and capital else prototype
        fallback[code] = "i" if prototype == "l" else prototype
    look.update(small)  # a small capital is its letter, whatever UTS #39 says (ᴍ -> ʍ)
    fallback.update(small)
    ignorable: set[int] = set()
    for (field,) in sections["ignorable"]:
        first, _, last = field.partition("..")
        ignorable.update(range(int(first, 16), int(last or first, 16) + 1))
    return _Tables(look, fallback, frozenset(ignorable - {ord(c) for c in _BLANKS}), versions)


_TABLES: Final = _load_tables()
#: Reading B's transliterations, as one map for str.translate.
_SPELLED: Final = str.maketrans({**_ICAO_LATIN, **_ICAO_CYRILLIC, **_ELOT_743})
