"""The decision, whole: admit a name, key it once, look the keys up, answer, fail closed.

This is the file to read first. :func:`decide` is the only function in the service that
turns a name into a verdict; both screening routes (``GET /enclave/passenger`` and
``POST /v1/screen``, in :mod:`noflylist.routes`) call it and act on what it returns,
and nothing else looks a name up. It has no I/O and imports only the standard library and
:mod:`noflylist.matchkey` (the match rules, themselves standard library only): the list
arrives as a :class:`Lookup` (the keyed-digest table of :mod:`noflylist.table`, built under
one match rule, which it records) or as ``None`` while no list is loaded, and a query arrives
as the name exactly as the client wrote it.

The query is keyed under the table's rule (``serve --match``, default ``fold-1``), into that
rule's fixed number of keys (:data:`noflylist.matchkey.KEYS_PER_NAME`), and every key is
looked up, whatever the name: the same work for every query of a rule.

The four verdicts:

* :class:`Listed` / :class:`Cleared`: the name was admitted and looked up;
* :class:`Refused`: the name cannot be screened reliably (too long, an invisible or control
  character, empty; under fold-1 also a character that is no part of a name, named by code
  point, and a name with digits that matches nothing: a name has no digits, so it is matched
  through the letters they stand for or refused, never cleared); ``reason`` says why and
  where, never the name. Answered 400;
* :class:`Unavailable`: no list is loaded, so the service cannot say "cleared" (fail
  closed). Answered 503. Admission comes first, so a bad name is refused even then.

What leaves the process, and the test that guards each exit (all in ``tests/``):

* **Answers.** :func:`answer`'s two sentences, byte for byte the public demo's, carry the
  name as the client wrote it, to that client only (``test_server.py``
  ``test_the_demo_answers_byte_for_byte``); ``/v1/screen`` echoes each name it was sent
  (``test_full_width_names_match_and_are_echoed_in_utf8``). No answer names a listed name that
  the client did not send, and an answer's time does not depend on the verdict
  (``bench/bench_timing.py``; :meth:`noflylist.table.ScreeningTable.contains_normalised`).
* **Errors.** A :class:`Refused` reason and every other refusal say what is wrong and where
  (``names[3]``), never the value (``test_server.py``
  ``test_bad_names_get_400_with_a_reason_that_does_not_echo_them``; ``test_secrecy.py``
  ``test_a_full_run_logs_no_listed_or_queried_name_and_errors_echo_none``, which also sends
  malformed requests built from listed names).
* **Log lines.** The access log holds the route's fixed path, status, size and time; load
  errors name the type and place, never the content (``test_secrecy.py``, the same test,
  text and JSON logs at DEBUG; ``test_server.py``
  ``test_access_log_in_json_is_one_object_a_line_without_the_query``).
* **Metrics.** Labels are fixed route names and outcomes (``test_server.py``
  ``test_metrics_count_by_route_and_no_name_reaches_metrics_or_logs``).
* **Attestation ``user_data``.** Only the serial, the envelope's SHA-256 and the version
  (``test_attested_flow.py``; :mod:`noflylist.attestation_route` says why each is there).
* **Memory.** No live object holds a listed name after load, nor a queried one once it is
  answered (``test_secrecy.py``
  ``test_no_live_object_holds_a_listed_name_after_load_and_serving`` and
  ``test_no_live_object_holds_a_queried_listed_name_once_the_answers_are_sent``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Final, Protocol

from noflylist import matchkey
from noflylist.matchkey import normalize

__all__ = [
    "MAX_NAME_CHARS",
    "Cleared",
    "Listed",
    "Lookup",
    "Refused",
    "Unavailable",
    "Verdict",
    "admit",
    "answer",
    "decide",
    "normalize",
]

#: Longest name, in characters (code points) as written; passport names are far shorter.
MAX_NAME_CHARS: Final = 256
#: What an unavailable verdict says: the route answers 503 with it.
NOT_LOADED: Final = "no list is loaded yet; try again shortly"
_CATEGORY_WORDS: Final = {
    "Cc": "control",
    "Cf": "invisible format",
    "Cs": "surrogate",
    "Co": "private-use",
    "Cn": "unassigned",
}


class Lookup(Protocol):
    """A list of names to look a query's keys up in (:class:`noflylist.table.ScreeningTable`).

    The contract this file relies on: the same work whatever the answer (for a given number
    of keys), and every listed name stored under all its keys under :attr:`rule`, the rule
    the query is keyed under.
    """

    @property
    def rule(self) -> str: ...

    def contains_any(self, keys: Sequence[str]) -> bool: ...


class Listed:
    """The name is on the list: it CAN NOT BOARD."""

    __slots__ = ()
    listed: Final = True


class Cleared:
    """The name was admitted, looked up and is not on the list."""

    __slots__ = ()
    listed: Final = False


class Refused:
    """The name cannot be screened reliably. ``reason`` names the problem and where (the
    ``label``), never the name."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Unavailable:
    """No list is loaded: the service must not say "cleared" (fail closed)."""

    __slots__ = ()
    reason: Final = NOT_LOADED


Verdict = Listed | Cleared | Refused | Unavailable
#: The two looked-up verdicts carry nothing, so one instance of each serves every query.
LISTED: Final = Listed()
CLEARED: Final = Cleared()
UNAVAILABLE: Final = Unavailable()


def decide(table: Lookup | None, raw_name: str, label: str = "the name") -> Verdict:
    """The verdict for ``raw_name``, as the client wrote it, against ``table``.

    In order: admission (:func:`admit`); fail closed (``table`` is ``None``:
    :data:`UNAVAILABLE`); keying under the table's rule, once; the look-up of every key.
    ``label`` says where the name was in the request (``"the name"``, ``"names[3]"``) for a
    refusal's reason.
    """
    admitted = admit(raw_name, label)
    if isinstance(admitted, Refused):
        return admitted
    if table is None:
        return UNAVAILABLE
    try:
        rule = table.rule
        keyed = (
            matchkey.Keys((admitted,), None) if rule == matchkey.EXACT  # keyed by admit()
            else matchkey.keys(raw_name, rule)
        )  # fmt: skip
    except matchkey.MatchKeyError as exc:
        return Refused(f"{label} {exc}")
    if not keyed.keys[0]:
        return Refused(f"{label} has no letters (only punctuation, spaces or titles)")
    if table.contains_any(keyed.keys):
        return LISTED
    if keyed.digit_at is not None:
        digit = ord(raw_name[keyed.digit_at])
        return Refused(
            f"{label} has the digit U+{digit:04X} at position {keyed.digit_at} and matches "
            "no listed name through the letters digits stand for; a name has no digits: "
            "write it in letters"
        )
    return CLEARED


def admit(raw_name: str, label: str) -> str | Refused:
    """``raw_name`` normalised (under ``exact``), or why it cannot be screened reliably.

    Every rule's first step. A name must be 1 to :data:`MAX_NAME_CHARS` characters, not only
    whitespace, and contain no character of Unicode category C: controls (Cc: C0, DEL, C1),
    format characters (Cf: zero-width joiners, bidi overrides, soft hyphen, BOM), surrogates
    (Cs), private use (Co) or unassigned code points (Cn). Format characters are refused
    because :func:`normalize` keeps them: "Big\u200bBird" would otherwise screen as a
    different name from "Big Bird"; and a bidi control reorders what a reader sees, so no
    rule can tell which name it shows. (Under fold-1 the other Default_Ignorable characters,
    which are not Cf, are removed: :mod:`noflylist.matchkey`.) Unassigned code points are
    refused because their normalisation may change with the next Unicode version. The
    reason gives the category, the code point and the position, never the name. The length
    is checked first, so an over-long name costs no normalisation.
    """
    if len(raw_name) > MAX_NAME_CHARS:
        return Refused(f"{label} is longer than {MAX_NAME_CHARS} characters")
    if not (raw_name.isascii() and raw_name.isprintable()):  # ASCII printables are all fine
        for position, char in enumerate(raw_name):
            category = unicodedata.category(char)
            if category[0] == "C":
                return Refused(
                    f"{label} contains a {_CATEGORY_WORDS[category]} character (Unicode "
                    f"category {category}, U+{ord(char):04X}) at position {position}; "
                    "remove it"
                )
    normalised = normalize(raw_name)
    if not normalised:
        return Refused(f"{label} is empty or only whitespace")
    return normalised


def answer(name: str, listed: bool) -> str:
    """The reply text, byte for byte as the public demo sends it, with ``name`` as written."""
    if listed:
        return f"{name} is on the no-fly list and CAN NOT BOARD!\n"
    return f"{name} is cleared to fly. Enjoy your flight!\n"
