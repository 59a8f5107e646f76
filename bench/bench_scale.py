"""``noflylist serve`` at 15, 1 million and 2 million names: start-up, memory, lookup latency.

For each size it seals synthetic names (``bench_screening.synthetic_names``, fixed seed)
under the local KMS, starts ``noflylist serve`` (one size at a time, so start-up is timed
alone) and measures:

* **start-up**: from process start to ``/readyz`` answering 200, and the service's own log
  figure for fetch + KMS + decrypt + table build;
* **memory**: resident set (VmRSS) once ready, its high-water mark (VmHWM, the build's
  peak), and bytes per entry: the RSS above the 15-name service's, per name.

Then, with the services of every size running at once, **lookup latency over HTTP**:
listed, absent and one-letter-off names for every size, all shuffled into one sequence (one
keep-alive connection a service), each request timed alone. Interleaving puts the machine's
noise on every size alike, and every server is pinned to one CPU and the client to the
other, so all servers are placed alike; only then does the ratio between sizes mean
something on a shared 2-CPU machine.

The demo-shaped baseline (Flask development server, a ``list``) is measured the same way,
with fewer lookups (its misses scan the whole list).

Last, a **memory diagnosis** in a plain Python process: the same decrypt-and-build as the
service's load (on a thread, as the service's loader runs it), then the resident set after
``gc.collect()`` and after glibc's ``malloc_trim(0)``, to tell the table's own bytes from
memory the build freed but the allocator kept.

Run from the repository root (about 6 minutes)::

    python3 bench/bench_scale.py [--sizes 15,1000000,2000000]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from bench_screening import one_letter_off, rss_bytes, synthetic_names

SIZES = (15, 1_000_000, 2_000_000)
KINDS = ("listed", "absent", "near")
#: Lookups a kind and size for noflylist (each a few hundred microseconds).
LOOKUPS = 3000
#: Lookups a kind and size for the baseline (a miss scans the whole list: ~25 ms at 2M).
BASELINE_LOOKUPS = 100
#: Untimed requests first, so every connection and code path is warm.
WARMUP = 200
BYTES_PER_ENTRY_TARGET = 32
FLAT_TARGET = 1.10
_BUILD_LINE = re.compile(
    r"(?:envelope decrypted and table built|sealed table decrypted and checked) in ([0-9.]+) s"
)
#: Envelope v3's targets (issue 5/5 part 2): ready at the largest size within this many
#: seconds, peak RSS at most the table's size plus this much over the smallest service's.
V3_READY_TARGET = 1.0
V3_PEAK_SLACK = 20 * 2**20
V3_BYTES_PER_ENTRY_TARGET = 40


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


@dataclass
class Row:
    size: int
    server: str
    port: int
    ready: float  # seconds from process start to /readyz 200
    build: float | None  # the service's own figure: fetch, KMS, decrypt, build
    rss: int
    peak: int
    timings: dict[str, list[float]] = field(default_factory=dict)


def started(server: harness.Running, size: int) -> Row:
    ready = harness.wait_ready(server, "/readyz")
    build = _BUILD_LINE.search(server.log.read_text())
    return Row(size, server.name, server.port, ready, float(build.group(1)) if build else None,
               harness.process_tree_rss(server.process.pid),
               harness.peak_rss(server.process.pid))  # fmt: skip


def interleaved_lookups(rows: list[Row], pools: dict[int, dict[str, list[str]]],
                        per_kind: int, rng: random.Random) -> None:  # fmt: skip
    """Fill each row's timings: every size and kind shuffled into one sequence."""
    order = [((row.server, row.size, kind), row.port, rng.choice(pools[row.size][kind]))
             for row in rows for kind in KINDS for _ in range(per_kind)]  # fmt: skip
    rng.shuffle(order)
    warm = [(("warm-up", 0, ""), row.port, name)
            for row in rows for name in pools[row.size]["absent"][:WARMUP]]  # fmt: skip
    timings = harness.timed_requests(warm + order)
    for row in rows:
        row.timings = {kind: timings[(row.server, row.size, kind)] for kind in KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.seed)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}\n")
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rng = random.Random(args.seed)
    rows: dict[str, list[Row]] = {"noflylist": [], "noflylist-v3": [], "flask-dev": []}
    pools: dict[int, dict[str, list[str]]] = {}
    with contextlib.ExitStack() as stack:
        for size in sizes:
            names = synthetic_names(size, rng)
            pools[size] = queries(names, rng, 2000)
            sealed = stack.enter_context(harness.SealedList(names, v3=True))
            del names
            # One at a time, so neither start-up competes with the other.
            for start in (
                functools.partial(harness.start_noflylist, sealed),
                functools.partial(harness.start_noflylist, sealed, v3=True),
                functools.partial(harness.start_flask_dev, sealed.names_file),
            ):
                server = start(folder, pin=True)
                stack.callback(server.stop)
                row = started(server, size)
                rows[row.server].append(row)
                print(f"{size:>9} {row.server:<10} ready {row.ready:6.2f} s  RSS "
                      f"{row.rss / 2**20:7.1f} MiB  peak {row.peak / 2**20:7.1f} MiB",
                      flush=True)  # fmt: skip
        harness.pin_client()
        interleaved_lookups(rows["noflylist"] + rows["noflylist-v3"], pools, LOOKUPS, rng)
        interleaved_lookups(rows["flask-dev"], pools, BASELINE_LOOKUPS, rng)
    report(rows, sizes)
    diagnose_memory(max(sizes), args.seed)


def report(rows: dict[str, list[Row]], sizes: list[int]) -> None:
    small, large = min(sizes), max(sizes)
    print(f"\nstart-up, memory and HTTP lookup latency (us, median / p99; {LOOKUPS} lookups a "
          f"kind and size for noflylist, {BASELINE_LOOKUPS} for flask-dev, all interleaved)")
    print(f"{'size':>9} {'server':<10} {'ready s':>8} {'build s':>8} {'RSS MiB':>8} "
          f"{'peak MiB':>9} {'B/entry':>8} " + "".join(f"{k:>18}" for k in KINDS))  # fmt: skip
    for server, server_rows in rows.items():
        base = next(r for r in server_rows if r.size == small)
        for r in server_rows:
            per_entry = (r.rss - base.rss) / r.size if r.size != small else float("nan")
            build = f"{r.build:8.2f}" if r.build is not None else f"{'-':>8}"
            cells = "".join(
                f"{statistics.median(r.timings[k]) * 1e6:>9.0f} / "
                f"{harness.percentile(r.timings[k], 0.99) * 1e6:<6.0f}" for k in KINDS)
            print(f"{r.size:>9} {server:<10} {r.ready:8.2f} {build} {r.rss / 2**20:8.1f} "
                  f"{r.peak / 2**20:9.1f} {per_entry:8.1f} {cells}")  # fmt: skip
    ours = {r.size: r for r in rows["noflylist"]}
    per_entry = (ours[large].rss - ours[small].rss) / large
    verdict = "met" if per_entry <= BYTES_PER_ENTRY_TARGET else "MISSED"
    print(f"\ntargets:\n  bytes per entry at {large} names at most {BYTES_PER_ENTRY_TARGET}: "
          f"{per_entry:.1f}  {verdict}")  # fmt: skip
    for kind in KINDS:
        ratio = (statistics.median(ours[large].timings[kind])
                 / statistics.median(ours[small].timings[kind]))  # fmt: skip
        verdict = "met" if ratio <= FLAT_TARGET else "MISSED"
        print(f"  {kind} lookup latency over HTTP, {large} vs {small} names, within "
              f"{FLAT_TARGET:.2f}: {ratio:.3f}  {verdict}")  # fmt: skip
    v3 = {r.size: r for r in rows["noflylist-v3"]}
    demo = {r.size: r for r in rows["flask-dev"]}
    if large in v3 and small in v3:
        ready = v3[large].ready
        print(f"envelope v3 (the sealed table) at {large} names:")
        print(f"  ready within {V3_READY_TARGET:.1f} s: {ready:.2f} s  "
              f"{'met' if ready <= V3_READY_TARGET else 'MISSED'}")  # fmt: skip
        if large in demo:
            print(f"  ready no later than the demo's shape ({demo[large].ready:.2f} s): "
                  f"{'met' if ready <= demo[large].ready else 'MISSED'}")  # fmt: skip
        print(f"  against v2 at the same size: {ours[large].ready:.2f} s, "
              f"{ours[large].ready / ready:.1f}x slower")  # fmt: skip
        table_bytes = v3[large].rss - v3[small].rss
        peak_over = v3[large].peak - v3[small].rss
        print(f"  peak RSS above the {small}-name service {peak_over / 2**20:.1f} MiB, the "
              f"table {table_bytes / 2**20:.1f} MiB (target: table + "
              f"{V3_PEAK_SLACK / 2**20:.0f} MiB): "
              f"{'met' if peak_over <= table_bytes + V3_PEAK_SLACK else 'MISSED'}")  # fmt: skip
        per = table_bytes / large
        print(f"  bytes per entry at most {V3_BYTES_PER_ENTRY_TARGET}: {per:.1f}  "
              f"{'met' if per <= V3_BYTES_PER_ENTRY_TARGET else 'MISSED'}")  # fmt: skip
        for kind in KINDS:
            ratio = (statistics.median(v3[large].timings[kind])
                     / statistics.median(v3[small].timings[kind]))  # fmt: skip
            print(f"  {kind} lookup latency over HTTP, {large} vs {small} names, within "
                  f"{FLAT_TARGET:.2f}: {ratio:.3f}  "
                  f"{'met' if ratio <= FLAT_TARGET else 'MISSED'}")  # fmt: skip


# -- memory diagnosis --------------------------------------------------------------------------


def memory_child(size: int, seed: int) -> None:
    """In a fresh process: the service's decrypt-and-build of ``size`` names, on a thread of
    its own as the service's loader does; print JSON."""
    import ctypes
    import gc
    import threading

    from noflylist import envelope
    from noflylist.lists import use_returnable_memory
    from noflylist.table import ScreeningTable
    from noflylist.tools import seal

    use_returnable_memory()  # as the service does at start

    class FixedKey:
        key = bytes(32)

        def decrypt(self, blob: bytes, **_: object) -> bytes:
            return self.key

        def generate_data_key(self, key_id: str, **_: object) -> object:
            from enclave.kms import DataKey

            return DataKey("k", b"blob", self.key, None)

    trim = ctypes.CDLL("libc.so.6").malloc_trim
    document = seal.seal_v2(synthetic_names(size, random.Random(seed)), FixedKey(), "k",
                                serial=1)  # type: ignore[arg-type]  # fmt: skip
    gc.collect()
    trim(0)  # so that "before" holds nothing freeable either
    before = rss_bytes()
    tables = []
    loader = threading.Thread(target=lambda: tables.append(ScreeningTable.build(
        envelope.decrypt(envelope.parse(document), FixedKey()))))  # fmt: skip
    loader.start()
    loader.join()
    gc.collect()
    built = rss_bytes()
    trim(0)
    trimmed = rss_bytes()
    sizes = {"before": before, "built": built, "trimmed": trimmed}
    print(json.dumps({**sizes, "table": tables[0].nbytes, "entries": len(tables[0])}))


def diagnose_memory(size: int, seed: int) -> None:
    completed = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(size), "--seed", str(seed)],
        capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
    m = json.loads(completed.stdout.strip().splitlines()[-1])
    per = {key: (m[key] - m["before"]) / m["entries"] for key in ("built", "trimmed")}
    print(f"\nmemory diagnosis, {m['entries']} names decrypted and built on a thread, in a plain "
          f"Python process (bytes per entry above the process before the load):\n"
          f"  the table's buffer                            {m['table'] / m['entries']:6.1f}\n"
          f"  RSS after the build and gc.collect()          {per['built']:6.1f}\n"
          f"  RSS after glibc's malloc_trim(0)              {per['trimmed']:6.1f}  (anything above "
          "the buffer: freed build temporaries the allocator kept)")  # fmt: skip


if __name__ == "__main__":
    main()
