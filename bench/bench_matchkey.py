"""What the fold-1 match rule costs: keys per second, and table bytes per name. Not a test.

Two measurements, each with today's rule (``exact``) measured beside it in the same run:

* **keys per second** of :func:`noflylist.matchkey.keys` for four kinds of name: ASCII
  (``Firstname Lastname``), Latin with a diacritic, Cyrillic, and a spoof mixing scripts;
  and of a whole :func:`noflylist.decision.decide` (admission, keys, every look-up);
* **the table** at 1M and 2M synthetic names (``bench_screening``'s random-letter names;
  ``--accented`` of them, 10 % by default, get one Latin letter with a diacritic, as real
  lists have): build seconds, stored keys a name, and the table's own buffer in bytes a name
  (``ScreeningTable.nbytes`` over the distinct names), fold-1 against exact.

Run from the repository root (about 2 minutes)::

    python3 bench/bench_matchkey.py [--sizes 1000000 2000000] [--accented 0.1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness
from bench_screening import synthetic_names

from noflylist import matchkey
from noflylist.decision import decide
from noflylist.table import ScreeningTable

#: Names per kind for the keys-per-second measurement, and repeats over them.
KEY_NAMES = 2000
KEY_ROUNDS = 10
#: Letters with a diacritic put into the accented share of the synthetic names.
DIACRITICS = "áàâäãåçéèêëíìîïñóòôöõøúùûüýÿßæœłđ"


def kinds(rng: random.Random) -> dict[str, list[str]]:
    """Query names of each kind."""
    ascii_names = synthetic_names(KEY_NAMES, rng)
    cyrillic = "абвгдежзийклмнопрстуфхцчшщыэюя"
    return {
        "ASCII": ascii_names,
        "Latin with a diacritic": [_accented(n, rng) for n in ascii_names],
        "Cyrillic": [
            "".join(rng.choices(cyrillic, k=rng.randint(4, 9))).capitalize() + " "
            + "".join(rng.choices(cyrillic, k=rng.randint(5, 12))).capitalize()
            for _ in range(KEY_NAMES)
        ],
        "mixed-script spoof": [n.replace("a", "\u0430").replace("i", "\u0456")
                               for n in ascii_names],
    }  # fmt: skip


def _accented(name: str, rng: random.Random) -> str:
    position = rng.choice([i for i, c in enumerate(name) if c.isalpha()])
    return name[:position] + rng.choice(DIACRITICS) + name[position + 1 :]


def per_second(call: Callable[[str], object], names: list[str]) -> float:
    start = time.perf_counter()
    for _ in range(KEY_ROUNDS):
        for name in names:
            call(name)
    return KEY_ROUNDS * len(names) / (time.perf_counter() - start)


def keys_per_second(rng: random.Random) -> None:
    print("\nkeys per second (noflylist.matchkey.keys) and decide() per second, 15 names listed")
    print(f"  {'kind':<24} {'exact keys/s':>14} {'fold-1 keys/s':>14} {'ratio':>6}"
          f" {'exact decide/s':>15} {'fold-1 decide/s':>16} {'ratio':>6}")  # fmt: skip
    tables = {rule: ScreeningTable.build(synthetic_names(15, rng), rule)
              for rule in matchkey.RULES}  # fmt: skip
    for kind, names in kinds(rng).items():
        rate = {rule: per_second(lambda n, r=rule: matchkey.keys(n, r), names)  # type: ignore[misc]
                for rule in matchkey.RULES}  # fmt: skip
        decided = {rule: per_second(lambda n, t=tables[rule]: decide(t, n), names)  # type: ignore[misc]
                   for rule in matchkey.RULES}  # fmt: skip
        print(f"  {kind:<24} {rate['exact']:14,.0f} {rate['fold-1']:14,.0f} "
              f"{rate['fold-1'] / rate['exact']:6.2f} {decided['exact']:15,.0f} "
              f"{decided['fold-1']:16,.0f} {decided['fold-1'] / decided['exact']:6.2f}")


def table_sizes(sizes: list[int], accented: float, rng: random.Random) -> None:
    print(f"\nthe table, {accented:.0%} of the names with one letter with a diacritic")
    print(f"  {'names':>9} {'rule':<7} {'build s':>8} {'distinct':>9} {'keys/name':>9} "
          f"{'bytes/name':>10} {'MiB':>7}")  # fmt: skip
    for size in sizes:
        names = synthetic_names(size, rng)
        for i in rng.sample(range(size), int(size * accented)):
            names[i] = _accented(names[i], rng)
        rows = {}
        for rule in matchkey.RULES:
            start = time.perf_counter()
            table = ScreeningTable.build(names, rule)
            seconds = time.perf_counter() - start
            rows[rule] = table.nbytes / len(table)
            print(f"  {size:9,} {rule:<7} {seconds:8.2f} {len(table):9,} "
                  f"{table.stored_keys / len(table):9.2f} {table.nbytes / len(table):10.1f} "
                  f"{table.nbytes / 2**20:7.1f}")
            del table
        print(f"  {'':9} fold-1 / exact bytes a name: {rows['fold-1'] / rows['exact']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--accented", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=20261205)
    args = parser.parse_args()
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"rule: {matchkey.rule_identity(matchkey.FOLD_1)}")
    rng = random.Random(args.seed)
    keys_per_second(rng)
    table_sizes(args.sizes, args.accented, rng)


if __name__ == "__main__":
    main()
