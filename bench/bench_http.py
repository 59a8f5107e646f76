"""Throughput and latency of ``noflylist serve`` against the demo-shaped Flask baseline.

Starts, side by side on loopback: ``noflylist serve`` (one process, every feature on: strict
parsing and name validation, Unicode normalisation, the keyed constant-time table, metrics,
the access log written to a file), the baseline (``bench/baseline_flask.py``) under Flask's
development server and under gunicorn (2 workers x 4 threads), and a bare ``http.server``
handler as the ceiling of a Python server on this machine. All serve the public demo's
15-name list. Then, for 1, 16 and 64 connections, keep-alive and not, a listed and an
unlisted name, it loads each server in turn for a few seconds (``bench/loadgen.py``: wrk
when installed), rotating the order every round so machine noise falls on all of them alike,
and prints req/s and p50/p99 latency (medians over rounds) and noflylist's ratios.

``--compare COMMIT`` also starts the service as it was at COMMIT (``noflylist@COMMIT``, its
source exported by ``git archive``) and prints this tree's throughput and p99 as ratios of
that one's, so a change to the serving path is measured against its own before, in one run,
under the same machine noise (an A/B). Both services then run pinned to one CPU and the
load generator to the other (``harness.pin_client``: unpinned, two identical services differ
by up to 30 % with where the scheduler wakes each, which would drown a 5 % question);
``--no-baselines`` leaves Flask, gunicorn and the bare server out, for a shorter A/B.

Run from the repository root (about 6 minutes with the defaults)::

    python3 bench/bench_http.py [--seconds 4] [--rounds 2] [--compare COMMIT [--no-baselines]]
                                [--v3] [--tolerance 0.05]

``--v3`` serves this tree from a v3 envelope (the sealed, prebuilt table; the row is named
``noflylist-v3``) while the other commit reads the v2 envelope it understands: the 5/5 issue's
"HTTP throughput at least 0.9x today's" is ``--compare <commit before 5/5> --v3
--tolerance 0.10``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

from noflylist.tools.demo import SAMPLE_NAMES

CONNECTIONS = (1, 16, 64)
QUERIES = {"listed": "Big Bird", "unlisted": "Kermit the Frog"}
#: Untimed load before the rounds, so every server's code paths and caches are warm.
WARMUP_SECONDS = 2
TARGETS = (
    # (description, server compared with, connections, minimum ratio)
    ("at least 8x the Flask development server at 16 connections", "flask-dev", 16, 8.0),
    ("at least 1.5x gunicorn (2x4) at 16 connections", "gunicorn", 16, 1.5),
    ("at least 1x gunicorn (2x4) at 64 connections", "gunicorn", 64, 1.0),
)
P99_TARGET_MS = 5.0
#: An A/B (``--compare``) passes when this tree's keep-alive throughput and p99 are within
#: this fraction of the other commit's (the issue's "unchanged").
AB_TOLERANCE = 0.05

Key = tuple[str, int, bool, str]  # server, connections, keep-alive, query kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", metavar="COMMIT", help="also run the service at COMMIT")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out Flask, gunicorn and the bare server")  # fmt: skip
    parser.add_argument("--v3", action="store_true",
                        help="serve this tree from a v3 envelope (the prebuilt table)")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=AB_TOLERANCE,
                        help="A/B passes within this fraction (default %(default)s)")  # fmt: skip
    args = parser.parse_args()
    if args.no_baselines and not args.compare:
        parser.error("--no-baselines leaves only noflylist: use it with --compare")
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    folder = Path(tempfile.mkdtemp(prefix="bench-http-"))
    with harness.SealedList(SAMPLE_NAMES, v3=args.v3) as sealed:
        pin = args.compare is not None
        if pin:
            harness.pin_client()  # and so wrk, its child
        servers = [harness.start_noflylist(sealed, folder, pin=pin, v3=args.v3)]
        if args.compare:
            servers.append(harness.start_noflylist(sealed, folder, pin=pin, commit=args.compare))
        if not args.no_baselines:
            servers += [
                harness.start_flask_dev(sealed.names_file, folder),
                harness.start_gunicorn(sealed.names_file, folder),
                harness.start_bare(folder),
            ]
        try:
            for server in servers:
                path = "/readyz" if server.name != "bare-http.server" else "/"
                harness.wait_ready(server, path)
                if server.name != "bare-http.server":
                    harness.check_answers(server, QUERIES["listed"], QUERIES["unlisted"])
            results = measure(servers, args.seconds, args.rounds)
        finally:
            for server in servers:
                server.stop()
    ours = servers[0].name
    report(results, ours)
    if args.compare:
        report_ab(results, ours, f"noflylist@{args.compare}", args.tolerance)
    print(f"\nserver logs (noflylist's access log among them): {folder}")


def measure(
    servers: list[harness.Running], seconds: float, rounds: int
) -> dict[Key, list[loadgen.Result]]:
    for server in servers:
        url = f"http://127.0.0.1:{server.port}/enclave/passenger?name=x"
        loadgen.run(url, connections=16, seconds=WARMUP_SECONDS, keep_alive=True)
    results: dict[Key, list[loadgen.Result]] = {}
    for number in range(rounds):
        order = servers[number % len(servers):] + servers[: number % len(servers)]
        for connections in CONNECTIONS:
            for keep_alive in (True, False):
                for kind, name in QUERIES.items():
                    for server in order:
                        if server.name == "bare-http.server" and kind == "listed":
                            continue  # a fixed answer: one kind is enough
                        url = f"http://127.0.0.1:{server.port}/enclave/passenger?name={quote(name)}"
                        result = loadgen.run(url, connections=connections, seconds=seconds,
                                             keep_alive=keep_alive)  # fmt: skip
                        key = (server.name, connections, keep_alive, kind)
                        results.setdefault(key, []).append(result)
                        print(f"round {number + 1} {server.name:>16} c={connections:<3} "
                              f"{'keep-alive' if keep_alive else 'close     '} {kind:<8} "
                              f"{result.requests_per_second:9.0f} req/s  p50 {result.p50_ms:7.2f} "
                              f"ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}",
                              flush=True)  # fmt: skip
                        time.sleep(0.2)
    return results


def _median(results: list[loadgen.Result], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def report(results: dict[Key, list[loadgen.Result]], ours_name: str) -> None:
    """The table of every server's medians, this tree's ratios and the targets; ``ours_name``
    is this tree's row (``noflylist``, or ``noflylist-v3`` under ``--v3``)."""
    names = sorted({key[0] for key in results}, key=lambda n: (n != ours_name, n))
    tool = next(iter(results.values()))[0].tool
    print(f"\nmedians over rounds (load generator: {tool}); req/s  p50/p99 ms  [errors]")
    print(f"{'conns':>5} {'mode':<10} {'name':<8} " + "".join(f"{n:>30}" for n in names))
    for connections in CONNECTIONS:
        for keep_alive in (True, False):
            for kind in QUERIES:
                cells = ""
                for name in names:
                    runs = results.get((name, connections, keep_alive, kind))
                    if not runs:
                        cells += f"{'-':>30}"
                        continue
                    errors = sum(r.errors for r in runs)
                    cell = (f"{_median(runs, 'requests_per_second'):.0f}  "
                            f"{_median(runs, 'p50_ms'):.2f}/{_median(runs, 'p99_ms'):.2f}"
                            + (f" [{errors}]" if errors else ""))  # fmt: skip
                    cells += f"{cell:>30}"
                mode = "keep-alive" if keep_alive else "close"
                print(f"{connections:>5} {mode:<10} {kind:<8} {cells}")

    print(f"\n{ours_name}'s throughput as a multiple of each other server's (same run):")
    for connections in CONNECTIONS:
        for keep_alive in (True, False):
            for kind in QUERIES:
                ours = _median(results[(ours_name, connections, keep_alive, kind)],
                               "requests_per_second")  # fmt: skip
                ratios = []
                for name in names[1:]:
                    runs = results.get((name, connections, keep_alive, kind))
                    if runs is None:
                        runs = results.get((name, connections, keep_alive, "unlisted"))
                    assert runs is not None
                    ratios.append(f"{name} {ours / _median(runs, 'requests_per_second'):5.2f}x")
                mode = "keep-alive" if keep_alive else "close"
                print(f"  c={connections:<3} {mode:<10} {kind:<8} " + "  ".join(ratios))

    print("\ntargets (keep-alive; both names must meet each):")
    for description, other, connections, minimum in TARGETS:
        if (other, connections, True, "listed") not in results:
            continue  # --no-baselines
        worst = min(
            _median(results[(ours_name, connections, True, kind)], "requests_per_second")
            / _median(results[(other, connections, True, kind)], "requests_per_second")
            for kind in QUERIES
        )
        verdict = "met" if worst >= minimum else "MISSED"
        print(f"  {description}: {worst:.2f}x  {verdict}")
    p99 = max(_median(results[(ours_name, 16, True, kind)], "p99_ms") for kind in QUERIES)
    verdict = "met" if p99 <= P99_TARGET_MS else "MISSED"
    print(f"  p99 at 16 connections at most {P99_TARGET_MS:g} ms: {p99:.2f} ms  {verdict}")


def report_ab(results: dict[Key, list[loadgen.Result]], after: str, before: str,
              tolerance: float) -> None:  # fmt: skip
    """This tree's (``after``'s) throughput and p99 as ratios of ``before``'s (medians over
    rounds), and whether keep-alive stays within ``tolerance`` (throughput not lower, p99 not
    higher, by more than that fraction)."""
    print(f"\nA/B: {after} (this tree) / {before}, same run; req/s ratio, p99 ratio")
    worst_rate, worst_p99 = float("inf"), 0.0
    for connections in CONNECTIONS:
        for keep_alive in (True, False):
            for kind in QUERIES:
                after_runs = results[(after, connections, keep_alive, kind)]
                before_runs = results[(before, connections, keep_alive, kind)]
                rate = (_median(after_runs, "requests_per_second")
                        / _median(before_runs, "requests_per_second"))  # fmt: skip
                p99 = _median(after_runs, "p99_ms") / _median(before_runs, "p99_ms")
                if keep_alive:
                    worst_rate, worst_p99 = min(worst_rate, rate), max(worst_p99, p99)
                mode = "keep-alive" if keep_alive else "close"
                print(f"  c={connections:<3} {mode:<10} {kind:<8} req/s {rate:5.3f}x  "
                      f"p99 {p99:5.3f}x")  # fmt: skip
    verdict = ("met" if worst_rate >= 1 - tolerance and worst_p99 <= 1 + tolerance
               else "MISSED")  # fmt: skip
    print(f"  keep-alive within {tolerance:.0%} of {before} (worst row): req/s "
          f"{worst_rate:.3f}x, p99 {worst_p99:.3f}x  {verdict}")


if __name__ == "__main__":
    main()
