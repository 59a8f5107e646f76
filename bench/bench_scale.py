"""``noflylist serve`` at 15, 1 million and 2 million names: start-up, memory, lookup latency.

For each size it seals synthetic names (``bench_screening.synthetic_names``, fixed seed)
under the local KMS, starts ``noflylist serve`` and measures:

* **start-up**: from process start to ``/readyz`` answering 200, and the service's own log
  figure for fetch + KMS + decrypt + table build;
* **memory**: resident set (VmRSS) once ready, its high-water mark (VmHWM, the build's
  peak), and bytes per entry: the RSS above the 15-name service's, per name;
* **lookup latency over HTTP**: listed, absent and one-letter-off names interleaved on one
  keep-alive connection, each request timed alone (median and p99).

The demo-shaped baseline (Flask development server, a ``list``) runs beside it at each
size, with fewer lookups at 1M and more (its misses scan the whole list).

Run from the repository root (about 5 minutes)::

    python3 bench/bench_scale.py [--sizes 15,1000000,2000000]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from bench_screening import one_letter_off, synthetic_names

SIZES = (15, 1_000_000, 2_000_000)
KINDS = ("listed", "absent", "near")
#: Lookups a kind for noflylist (each a few hundred microseconds).
LOOKUPS = 3000
#: Lookups a kind for the baseline at 1000 names or more (a miss scans the whole list).
BASELINE_LOOKUPS_LARGE = 100
#: Untimed requests first, so the connection and both servers' code paths are warm.
WARMUP = 200
BYTES_PER_ENTRY_TARGET = 32
FLAT_TARGET = 1.10
_BUILD_LINE = re.compile(r"envelope decrypted and table built in ([0-9.]+) s")


def queries(names: list[str], rng: random.Random, count: int) -> dict[str, list[str]]:
    listed = set(n.replace(" ", "").lower() for n in names)
    absent = [n for n in synthetic_names(count + 100, rng)
              if n.replace(" ", "").lower() not in listed][:count]  # fmt: skip
    near = []
    for name in rng.choices(names, k=count * 2):
        changed = one_letter_off(name, rng)
        if changed.replace(" ", "").lower() not in listed:
            near.append(changed)
    return {"listed": rng.choices(names, k=count), "absent": absent, "near": near[:count]}


def time_lookups(port: int, pool: dict[str, list[str]], per_kind: int,
                 rng: random.Random) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per request, by kind, all kinds shuffled together."""
    order = [(kind, rng.choice(pool[kind])) for kind in KINDS for _ in range(per_kind)]
    rng.shuffle(order)
    warm = [("warm-up", name) for name in pool["absent"][:WARMUP]]
    timings = harness.timed_requests(port, warm + order)
    return {kind: timings[kind] for kind in KINDS}


@dataclass
class Row:
    size: int
    server: str
    ready: float  # seconds from process start to /readyz 200
    build: float | None  # the service's own figure: fetch, KMS, decrypt, build
    rss: int
    peak: int
    timings: dict[str, list[float]]


def measure(size: int, server: harness.Running, pool: dict[str, list[str]],
            rng: random.Random) -> Row:  # fmt: skip
    try:
        ready = harness.wait_ready(server, "/readyz")
        rss = harness.process_tree_rss(server.process.pid)
        peak = harness.peak_rss(server.process.pid)
        large_baseline = server.name != "noflylist" and size >= 1000
        per_kind = BASELINE_LOOKUPS_LARGE if large_baseline else LOOKUPS
        timings = time_lookups(server.port, pool, per_kind, rng)
    finally:
        server.stop()
    build = _BUILD_LINE.search(server.log.read_text())
    return Row(size, server.name, ready, float(build.group(1)) if build else None, rss, peak,
               timings)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}\n")
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rng = random.Random(args.seed)
    rows = []
    for size in sizes:
        names = synthetic_names(size, rng)
        pool = queries(names, rng, 2000)
        with harness.SealedList(names) as sealed:
            del names
            for server in (harness.start_noflylist(sealed, folder),
                           harness.start_flask_dev(sealed.names_file, folder)):  # fmt: skip
                row = measure(size, server, pool, rng)
                rows.append(row)
                print(f"{size:>9} {row.server:<10} ready {row.ready:6.2f} s  RSS "
                      f"{row.rss / 2**20:7.1f} MiB  peak {row.peak / 2**20:7.1f} MiB  median "
                      + "  ".join(f"{k} {statistics.median(row.timings[k]) * 1e6:.0f} us"
                                  for k in KINDS), flush=True)  # fmt: skip
    report(rows, sizes)


def report(rows: list[Row], sizes: list[int]) -> None:
    def row(size: int, server: str) -> Row:
        return next(r for r in rows if r.size == size and r.server == server)

    small, large = min(sizes), max(sizes)
    print("\nstart-up, memory and HTTP lookup latency (us, median / p99)")
    print(f"{'size':>9} {'server':<10} {'ready s':>8} {'build s':>8} {'RSS MiB':>8} "
          f"{'peak MiB':>9} {'B/entry':>8} " + "".join(f"{k:>18}" for k in KINDS))  # fmt: skip
    for server in ("noflylist", "flask-dev"):
        base = row(small, server)
        for size in sizes:
            r = row(size, server)
            per_entry = (r.rss - base.rss) / size if size != small else float("nan")
            build = f"{r.build:8.2f}" if r.build is not None else f"{'-':>8}"
            cells = "".join(
                f"{statistics.median(r.timings[k]) * 1e6:>9.0f} / "
                f"{harness.percentile(r.timings[k], 0.99) * 1e6:<6.0f}" for k in KINDS)
            print(f"{size:>9} {server:<10} {r.ready:8.2f} {build} {r.rss / 2**20:8.1f} "
                  f"{r.peak / 2**20:9.1f} {per_entry:8.1f} {cells}")  # fmt: skip
    ours_small, ours_large = row(small, "noflylist"), row(large, "noflylist")
    per_entry = (ours_large.rss - ours_small.rss) / large
    verdict = "met" if per_entry <= BYTES_PER_ENTRY_TARGET else "MISSED"
    print(f"\ntargets:\n  bytes per entry at {large} names at most {BYTES_PER_ENTRY_TARGET}: "
          f"{per_entry:.1f}  {verdict}")  # fmt: skip
    for kind in KINDS:
        ratio = (statistics.median(ours_large.timings[kind])
                 / statistics.median(ours_small.timings[kind]))  # fmt: skip
        verdict = "met" if ratio <= FLAT_TARGET else "MISSED"
        print(f"  {kind} lookup latency, {large} vs {small} names, within "
              f"{FLAT_TARGET:.2f}: {ratio:.3f}  {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
