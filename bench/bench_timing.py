"""Does the answer's timing depend on whether a name is listed? dudect-style, at 1M names.

Three classes of query: **listed** names, **unlisted** names, and **near** names (a listed
name with one letter changed: the case a leaky comparison would answer fastest or slowest).
Queries of all classes are shuffled into one sequence, each timed alone, and every pair of
classes is compared with Welch's t statistic, as dudect does (Reparaz, Balasch, Verbauwhede,
"Dude, is my code constant time?", 2017): |t| above 4.5 is evidence that the timing depends
on the class. dudect also crops the slowest samples, where noise from the machine lives;
``t p90`` is computed on the samples below the pooled 90th percentile.

Measured four ways, with the baseline beside ours:

* **over HTTP** (each server pinned to one CPU, the client to the other) against
  ``noflylist serve`` (20k samples a class on one keep-alive
  connection) and against the demo-shaped Flask baseline (fewer: each miss scans 1M names);
* **in process** on the decision, ``noflylist.decision.decide`` then ``answer`` (admit,
  normalise, look up in the table, answer), and on the demo's
  ``name.replace(" ", "").lower() in names``; here the median difference between classes is
  reported in nanoseconds too. ``screen`` (below) includes building the answer text,
  which differs between the two answers by design;
  ``ScreeningTable.contains`` is the look-up alone; a control repeats it against a table
  that lists none of the queries, to tell an effect of membership from one of the strings.

Run from the repository root (about 5 minutes)::

    python3 bench/bench_timing.py [--size 1000000] [--samples 20000] [--v3] [--signed]

``--signed`` seals the list with a one-client policy and signs every request over HTTP
(issue 6/6: the signature is checked before the name is read, the same work for every name).
"""

from __future__ import annotations

import argparse
import base64
import gc
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from bench_screening import one_letter_off, synthetic_names
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from noflylist.clients import MAX_BUDGET, ClientPolicy, parse_policy
from noflylist.decision import LISTED, answer, decide
from noflylist.httpsig import sign_request
from noflylist.table import ScreeningTable

CLASSES = ("listed", "unlisted", "near")
T_THRESHOLD = 4.5
#: Samples a class for the baseline (a miss scans the whole list: tens of ms at 1M).
BASELINE_SAMPLES = 400
#: Untimed queries first (not counted in any class).
WARMUP = 500
#: Distinct query names a class.
POOL = 2000


def pools(names: list[str], rng: random.Random) -> dict[str, list[str]]:
    listed = {n.replace(" ", "").lower() for n in names}
    unlisted = [n for n in synthetic_names(POOL * 2, rng)
                if n.replace(" ", "").lower() not in listed][:POOL]  # fmt: skip
    near = [one_letter_off(n, rng) for n in rng.sample(names, POOL * 2)]
    near = [n for n in near if n.replace(" ", "").lower() not in listed][:POOL]
    # Fresh copies: the list's own str objects lie scattered over the whole list's memory,
    # so timing them against freshly made unlisted and near names would measure cache misses
    # on the query string (about 10 ns here), not the look-up.
    listed_copies = [name.encode().decode() for name in rng.sample(names, POOL)]
    return {"listed": listed_copies, "unlisted": unlisted, "near": near}


def schedule(pool: dict[str, list[str]], per_class: int,
             rng: random.Random) -> list[tuple[str, str]]:  # fmt: skip
    order = [(kind, rng.choice(pool[kind])) for kind in CLASSES for _ in range(per_class)]
    rng.shuffle(order)
    return [("warm-up", rng.choice(pool["unlisted"])) for _ in range(WARMUP)] + order


def over_http(port: int, order: list[tuple[str, str]],
              sign: Callable[[str], dict[str, str]] | None = None) -> dict[str, list[float]]:
    """Seconds per request, by class, in the order given (each signed, with ``sign``)."""
    timings = harness.timed_requests([(kind, port, name) for kind, name in order], sign)
    return {str(kind): samples for kind, samples in timings.items()}


def time_in_process(decide: Callable[[str], str], order: list[tuple[str, str]],
                    expected: dict[str, str]) -> dict[str, list[float]]:  # fmt: skip
    """Nanoseconds per call of ``decide``, by class, GC paused (as in bench_screening)."""
    clock = time.perf_counter_ns
    timings: dict[str, list[float]] = {}
    gc.collect()
    gc.disable()
    try:
        for kind, name in order:
            start = clock()
            text = decide(name)
            elapsed = clock() - start
            timings.setdefault(kind, []).append(elapsed)
            if kind != "warm-up" and not text.endswith(expected[kind]):
                raise SystemExit(f"wrong answer for a {kind} name: the benchmark is broken")
    finally:
        gc.enable()
    return timings


def t_statistics(timings: dict[str, list[float]]) -> list[tuple[str, float, float, float]]:
    """(pair, t, t on samples under the pooled 90th percentile, median difference)."""
    rows = []
    for a, b in itertools.combinations(CLASSES, 2):
        cut = harness.percentile(timings[a] + timings[b], 0.90)
        cropped_a = [x for x in timings[a] if x < cut]
        cropped_b = [x for x in timings[b] if x < cut]
        rows.append((f"{a} vs {b}", harness.welch_t(timings[a], timings[b]),
                     harness.welch_t(cropped_a, cropped_b),
                     statistics.median(timings[a]) - statistics.median(timings[b])))  # fmt: skip
    return rows


def show(title: str, timings: dict[str, list[float]], unit: str, scale: float) -> float:
    """Print one measurement; return its largest |t| (raw or cropped)."""
    counts = ", ".join(f"{k} {len(timings[k])}" for k in CLASSES)
    medians = ", ".join(f"{k} {statistics.median(timings[k]) * scale:.1f}" for k in CLASSES)
    print(f"\n{title}\n  samples: {counts}\n  medians ({unit}): {medians}")
    worst = 0.0
    for pair, t, cropped, difference in t_statistics(timings):
        worst = max(worst, abs(t), abs(cropped))
        print(f"  {pair:<20} t {t:8.2f}   t p90 {cropped:8.2f}   median difference "
              f"{difference * scale:9.1f} {unit}")  # fmt: skip
    return worst


def ours_in_process(names: list[str], pool: dict[str, list[str]], samples: int,
                    rng: random.Random, suffix: dict[str, str]) -> dict[str, float]:  # fmt: skip
    table = ScreeningTable.build(names)
    worst = {}
    def screen(name: str) -> str:
        # `is LISTED` and not isinstance: the same one comparison for either verdict.
        return answer(name, decide(table, name) is LISTED)

    timings = time_in_process(screen,
                              schedule(pool, samples, rng), suffix)  # fmt: skip
    worst["noflylist, decide()"] = show(
        "noflylist.decision.decide + answer in process (look-up and answer text)", timings,
        "ns", 1.0)
    verdicts = (suffix["unlisted"], suffix["listed"])

    def look_up(name: str) -> str:
        # `+ 0` makes the index an exact int: CPython 3.11 converts a bool index through a
        # branch on its value (True costs ~7 ns more), which would be the wrapper's own leak.
        return verdicts[table.contains(name) + 0]

    timings = time_in_process(look_up, schedule(pool, samples, rng), suffix)
    worst["noflylist, contains()"] = show(
        "ScreeningTable.contains in process (the look-up alone)", timings, "ns", 1.0)
    # Control: the same query strings against a table of as many other names, which lists
    # none of them. A difference that persists here comes from the strings, not membership.
    table = ScreeningTable.build(synthetic_names(len(names), random.Random(rng.random())))
    cleared = dict.fromkeys(CLASSES, suffix["unlisted"])
    timings = time_in_process(look_up, schedule(pool, samples, rng), cleared)
    show("control: the same look-ups in a table that lists none of the queries", timings,
         "ns", 1.0)  # fmt: skip
    return worst


def baseline_in_process(names: list[str], pool: dict[str, list[str]], rng: random.Random,
                        suffix: dict[str, str]) -> dict[str, float]:  # fmt: skip
    demo_list = [n.replace(" ", "").lower() for n in names]

    def demo(name: str) -> str:
        return answer(name, name.replace(" ", "").lower() in demo_list)

    timings = time_in_process(demo, schedule(pool, BASELINE_SAMPLES, rng), suffix)
    return {"baseline, in process": show(
        "the demo's `name in list` in process", timings, "ns", 1.0)}  # fmt: skip


def _signing_client() -> tuple[ClientPolicy, Callable[[str], dict[str, str]]]:
    """A client policy of one client whose budgets the run cannot spend, and its signer."""
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    policy = parse_policy(json.dumps({"clients": [{
        "id": "timing", "public_key": public.decode(), "names_per_minute": MAX_BUDGET,
        "names_per_day": MAX_BUDGET}]}).encode())  # fmt: skip

    def sign(target: str) -> dict[str, str]:
        return sign_request("GET", target, b"", key_id="timing", private_key=key)

    return policy, sign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20_000, help="a class, for noflylist")
    parser.add_argument("--seed", type=int, default=20240602)
    parser.add_argument("--signed", action="store_true",
                        help="seal the list with a client policy and sign every request "
                        "(RFC 9421): the signature is checked before the name is read")
    parser.add_argument("--v3", action="store_true",
                        help="serve a v3 envelope (the table prebuilt by seal)")  # fmt: skip
    args = parser.parse_args()
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    rng = random.Random(args.seed)
    names = synthetic_names(args.size, rng)
    pool = pools(names, rng)
    suffix = {"listed": "CAN NOT BOARD!\n", "unlisted": "Enjoy your flight!\n",
              "near": "Enjoy your flight!\n"}  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="bench-timing-"))
    worst: dict[str, float] = {}

    policy, sign = _signing_client() if args.signed else (None, None)
    with harness.SealedList(names, v3=args.v3, clients=policy) as sealed:
        harness.pin_client()
        server = harness.start_noflylist(sealed, folder, pin=True, v3=args.v3)
        try:
            harness.wait_ready(server, "/readyz")
            timings = over_http(server.port, schedule(pool, args.samples, rng), sign)
        finally:
            server.stop()
        worst["noflylist, HTTP"] = show(
            f"noflylist serve over HTTP, {args.size} names", timings, "us", 1e6)
        baseline = harness.start_flask_dev(sealed.names_file, folder, pin=True)
        try:
            harness.wait_ready(baseline, "/readyz")
            timings = over_http(baseline.port, schedule(pool, BASELINE_SAMPLES, rng))
        finally:
            baseline.stop()
        worst["baseline, HTTP"] = show(
            f"demo-shaped Flask baseline over HTTP, {args.size} names", timings, "us", 1e6)

    worst.update(ours_in_process(names, pool, args.samples, rng, suffix))
    worst.update(baseline_in_process(names, pool, rng, suffix))

    print(f"\nlargest |t| (target for noflylist: below {T_THRESHOLD}):")
    for what, value in worst.items():
        verdict = ("met" if value < T_THRESHOLD else "MISSED") if what.startswith("noflylist") \
            else ("leaks" if value >= T_THRESHOLD else "no evidence")  # fmt: skip
        print(f"  {what:<24} {value:8.2f}  {verdict}")


if __name__ == "__main__":
    main()
