"""Benchmark of noflylist.table against the public demo's shapes. Prints numbers; not a test.

For each list size it builds a ScreeningTable, a Python ``set`` of the demo-normalised names,
and the demo's ``list`` (looked up with ``name in list``), then reports build time, memory per
entry and lookup latency for listed, absent and one-letter-off names, timed one lookup at a
time with ``time.perf_counter_ns`` over a shuffled (interleaved) sequence, GC paused.

Run from the repository root:  python3 bench/bench_screening.py
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import string
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness

from noflylist.table import ScreeningTable

SIZES = (15, 1_000_000, 2_000_000)
#: Lookups timed per kind (listed/absent/near) for the table and the set: enough for a p99.
LOOKUPS_PER_KIND = 20_000
#: The demo's list is a linear scan (~10 ms a miss at 2M names), so it gets fewer lookups.
LIST_LOOKUPS_PER_KIND = 150
#: Untimed lookups before each measurement, to warm caches and the interpreter.
WARMUP_LOOKUPS = 300
KINDS = ("listed", "absent", "near")
#: Distinct query names drawn per kind and size.
QUERY_POOL = 2000
#: Names in each table of the role-swap check (two builds; big enough to leave the caches).
SWAP_CHECK_NAMES = 200_000
#: Random reads timed by the memory probe, per buffer.
PROBE_READS = 40_000


def demo_normalize(name: str) -> str:
    """The public demo's normalisation: remove whitespace, lowercase."""
    return "".join(name.split()).lower()


def demo_set(names: list[str]) -> set[str]:
    """Baseline: a Python set of the demo-normalised names."""
    return {demo_normalize(n) for n in names}


def demo_list(names: list[str]) -> list[str]:
    """Baseline: the demo's shape, a list of normalised names searched with ``in``."""
    return [demo_normalize(n) for n in names]


def synthetic_names(count: int, rng: random.Random) -> list[str]:
    """``Firstname Lastname`` pairs of random letters (4-9 and 5-12 long)."""
    letters = string.ascii_lowercase
    names = []
    for _ in range(count):
        first = "".join(rng.choices(letters, k=rng.randint(4, 9)))
        last = "".join(rng.choices(letters, k=rng.randint(5, 12)))
        names.append(f"{first.capitalize()} {last.capitalize()}")
    return names


def one_letter_off(name: str, rng: random.Random) -> str:
    """``name`` with one letter replaced by a different one."""
    positions = [i for i, c in enumerate(name) if c.isalpha()]
    i = rng.choice(positions)
    replacement = rng.choice([c for c in string.ascii_lowercase if c != name[i].lower()])
    return name[:i] + replacement + name[i + 1 :]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_build(make: Callable[[], object]) -> tuple[object, float, int, int]:
    """Build twice: once timed with RSS delta, once under tracemalloc for retained bytes."""
    gc.collect()
    rss_before = rss_bytes()
    start = time.perf_counter()
    built = make()
    seconds = time.perf_counter() - start
    gc.collect()
    rss_delta = rss_bytes() - rss_before
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        traced = make()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del traced
    return built, seconds, retained, rss_delta


Key = tuple[str, int]  # (shape, list size)


def time_interleaved(
    lookups: dict[Key, Callable[[str], bool]], queries: dict[int, dict[str, list[str]]],
    per_kind: int, rng: random.Random,
) -> dict[tuple[Key, str], list[int]]:
    """Time ``per_kind`` lookups of each kind on each structure, all shuffled together.

    Interleaving spreads machine noise (other processes, frequency changes) evenly over every
    structure, size and kind, so their ratios stay meaningful on a shared machine.
    """
    order = [(key, kind, rng.choice(queries[key[1]][kind]))
             for key in lookups for kind in KINDS for _ in range(per_kind)]
    rng.shuffle(order)
    for key, _kind, query in order[:WARMUP_LOOKUPS]:
        lookups[key](query)
    timings: dict[tuple[Key, str], list[int]] = {(key, k): [] for key in lookups for k in KINDS}
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for key, kind, query in order:
            lookup = lookups[key]
            start = clock()
            answer = lookup(query)
            timings[(key, kind)].append(clock() - start)
            if answer is not (kind == "listed"):
                raise SystemExit(f"wrong answer for a {kind} name: the benchmark is broken")
    finally:
        gc.enable()
    return timings


def memory_probe(big_bytes: int, rng: random.Random) -> tuple[float, float]:
    """Median ns to copy one random 64-byte line from a 64-byte and a ``big_bytes`` buffer.

    The difference is what one cache/TLB miss costs on this machine: the part of a big
    table's lookup latency that no code change in Python can remove.
    """
    buffers = {"small": bytes(64), "big": rng.randbytes(big_bytes // 64 * 64)}
    order = [name for name in buffers for _ in range(PROBE_READS)]
    rng.shuffle(order)
    timings: dict[str, list[int]] = {name: [] for name in buffers}
    clock = time.perf_counter_ns
    for name in order:
        buffer = buffers[name]
        offset = rng.randrange(len(buffer) // 64) * 64
        start = clock()
        buffer[offset : offset + 64]
        timings[name].append(clock() - start)
    return statistics.median(timings["small"]), statistics.median(timings["big"])


def swap_check(size: int, rng: random.Random) -> dict[tuple[str, str], float]:
    """Median ns for listed vs one-letter-off queries with the *same strings* in both roles.

    Table A lists names ``a``; table B lists ``b``, each ``a`` with its last letter changed.
    Querying both tables with both sets swaps which strings are "listed" and which are
    "near", so any difference that follows the role (not the strings) would be a leak.
    """
    a = synthetic_names(size, rng)
    b = [n[:-1] + ("x" if n[-1] != "x" else "y") for n in a]
    tables = {"A": ScreeningTable.build(a), "B": ScreeningTable.build(b)}
    pools = {"a": rng.sample(a, min(size, QUERY_POOL))}
    pools["b"] = [n[:-1] + ("x" if n[-1] != "x" else "y") for n in pools["a"]]
    cases = [(t, q) for t in tables for q in pools]
    order = [case for case in cases for _ in range(LOOKUPS_PER_KIND)]
    rng.shuffle(order)
    timings: dict[tuple[str, str], list[int]] = {case: [] for case in cases}
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for table, pool in order:
            lookup, query = tables[table].contains, rng.choice(pools[pool])
            start = clock()
            lookup(query)
            timings[(table, pool)].append(clock() - start)
    finally:
        gc.enable()
    return {case: statistics.median(samples) for case, samples in timings.items()}


def median_p99(samples: Sequence[int]) -> tuple[float, float]:
    return statistics.median(samples), harness.percentile(samples, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}\n")
    print(f"{'size':>9} {'shape':<6} {'entries':>8} {'build s':>8} {'B/entry buffer':>14} "
          f"{'B/entry traced':>14} {'B/entry RSS':>11}")
    rng = random.Random(args.seed)
    lookups: dict[Key, Callable[[str], bool]] = {}
    queries: dict[int, dict[str, list[str]]] = {}
    per_entry: dict[Key, float] = {}
    table_nbytes: dict[int, int] = {}
    for size in sizes:
        names = synthetic_names(size, rng)
        listed = set(map(demo_normalize, names))
        absent = [n for n in synthetic_names(QUERY_POOL, rng) if demo_normalize(n) not in listed]
        near = [one_letter_off(n, rng) for n in rng.sample(names, min(size, QUERY_POOL))]
        queries[size] = {
            # Equal pools of 2000 for every kind, so no kind has colder query strings.
            "listed": rng.sample(names, min(size, QUERY_POOL)), "absent": absent,
            "near": [n for n in near if demo_normalize(n) not in listed],
        }
        del listed
        makers: dict[str, Callable[[], object]] = {
            "table": partial(ScreeningTable.build, names),
            "set": partial(demo_set, names),
            "list": partial(demo_list, names),
        }
        for shape, make in makers.items():
            built, seconds, retained, rss_delta = measure_build(make)
            if isinstance(built, ScreeningTable):
                entries, buffer = len(built), f"{built.nbytes / len(built):14.1f}"
                lookups[(shape, size)] = built.contains
                table_nbytes[size] = built.nbytes
            else:
                assert isinstance(built, (set, list))
                container: set[str] | list[str] = built
                entries, buffer = len(set(container)), f"{'-':>14}"

                def lookup(name: str, container: set[str] | list[str] = container) -> bool:
                    return demo_normalize(name) in container

                lookups[(shape, size)] = lookup
            per_entry[(shape, size)] = retained / entries
            print(f"{size:>9} {shape:<6} {entries:>8} {seconds:8.2f} {buffer} "
                  f"{retained / entries:14.1f} {rss_delta / entries:11.1f}", flush=True)
            del built

    # Linear scans of big lists are far too slow for as many lookups as the rest.
    slow = {key: f for key, f in lookups.items() if key[0] == "list" and key[1] >= 10_000}
    fast = {key: f for key, f in lookups.items() if key not in slow}
    timings = time_interleaved(fast, queries, LOOKUPS_PER_KIND, rng)
    timings.update(time_interleaved(slow, queries, LIST_LOOKUPS_PER_KIND, rng))

    print(f"\nlookup latency, ns (median / p99), {LOOKUPS_PER_KIND} lookups a kind "
          f"({LIST_LOOKUPS_PER_KIND} for lists of 10000 or more), all interleaved:")
    print(f"{'size':>9} {'shape':<6} " + "".join(f"{k:>24}" for k in KINDS))
    medians: dict[tuple[Key, str], float] = {}
    for shape in ("table", "set", "list"):
        for size in sizes:
            cells = ""
            for kind in KINDS:
                median, p99 = median_p99(timings[((shape, size), kind)])
                medians[((shape, size), kind)] = median
                cells += f"{median:>13.0f} / {p99:<8.0f}"
            print(f"{size:>9} {shape:<6} {cells}")

    small, large = min(sizes), max(sizes)
    print(f"\nmedian lookup latency, {large} vs {small} names (table target: within 1.10):")
    for shape in ("table", "set", "list"):
        ratios = "  ".join(
            f"{k} {medians[((shape, large), k)] / medians[((shape, small), k)]:.3f}"
            for k in KINDS)
        print(f"  {shape:<6} {ratios}")
    small_ns, big_ns = memory_probe(table_nbytes[large], rng)
    print(f"\nmemory probe: copying one random 64-byte line takes {small_ns:.0f} ns from a "
          f"64-byte buffer, {big_ns:.0f} ns from one of {table_nbytes[large] / 2**20:.1f} MiB "
          f"(the {large}-name table's size): +{big_ns - small_ns:.0f} ns a miss; "
          "a lookup reads 2 random lines")
    swapped = swap_check(SWAP_CHECK_NAMES, rng)
    print(f"\nrole swap at {SWAP_CHECK_NAMES} names, median ns (table A lists names a, table B "
          "lists b = a with the last letter changed):")
    for table, pool in swapped:
        role = "listed" if table.lower() == pool else "near  "
        print(f"  table {table}, queries {pool} ({role}): {swapped[(table, pool)]:.0f}")
    print(f"\ntable vs baselines at {large} names (memory: traced bytes per entry):")
    for shape in ("set", "list"):
        memory = per_entry[("table", large)] / per_entry[(shape, large)]
        latency = "  ".join(
            f"{k} {medians[(('table', large), k)] / medians[((shape, large), k)]:.3g}"
            for k in KINDS)
        print(f"  table/{shape:<5} memory {memory:.3f}  median latency {latency}")


if __name__ == "__main__":
    main()
