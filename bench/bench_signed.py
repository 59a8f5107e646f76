"""What signed answers cost: signed rows beside the unsigned ones, in one run (issue 3/5).

Starts ``noflylist serve`` (simulated attestation, so it has an answer key and signs when
asked) on the demo's 15-name list and loads it, rotating the order every round, with:

* ``unsigned``: ``GET /enclave/passenger`` without a nonce (the public demo's request);
* ``signed``: the same with ``Noflylist-Nonce`` (one Ed25519 signature an answer);
* ``batch-signed``: ``POST /v1/screen`` of 1,000 names with a nonce (one signature for all),
  counted in names a second.

all at 16 keep-alive connections (``bench/loadgen.py``: wrk when installed), and prints req/s
and p99 (medians over rounds) and the ratios against the issue's targets: signed at least
0.6x unsigned; a signed batch at least 20x the single-name signed rate in names a second.
``--compare COMMIT`` also runs the service at COMMIT (both pinned to one CPU, the load to the
other, as ``bench_http.py --compare`` does) and prints this tree's unsigned throughput and
p99 as ratios of that one's: the issue's "unsigned unchanged (within 3 %)".

``--match exact`` serves under the ``exact`` rule instead of fold-1: one keyed look-up a name
instead of fold-1's four (the batch's cost is the look-ups, see bench/README.md).

    python3 bench/bench_signed.py [--seconds 4] [--rounds 3] [--compare COMMIT] [--match RULE]
"""

from __future__ import annotations

import argparse
import json
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

CONNECTIONS = 16
#: A fixed nonce: the service keeps no record of nonces, so signing costs the same for any.
NONCE = {"Noflylist-Nonce": "000102030405060708090a0b0c0d0e0f"}
BATCH_NAMES = 1000
SIGNED_MIN_RATIO = 0.6
BATCH_MIN_RATIO = 20.0
UNSIGNED_TOLERANCE = 0.03
WARMUP_SECONDS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", metavar="COMMIT", help="also run the service at COMMIT")
    parser.add_argument("--match", choices=("fold-1", "exact"), default=None,
                        help="the services' match rule (default: the service's own default)")
    args = parser.parse_args()
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"match rule: {args.match or 'the default (fold-1)'}")
    folder = Path(tempfile.mkdtemp(prefix="bench-signed-"))
    names = _manifest()
    batch = json.dumps({"names": names}).encode()
    with harness.SealedList(SAMPLE_NAMES) as sealed:
        pin = args.compare is not None
        if pin:
            harness.pin_client()
        servers = [harness.start_noflylist(sealed, folder, pin=pin, match=args.match)]
        if args.compare:
            servers.append(harness.start_noflylist(sealed, folder, pin=pin, commit=args.compare,
                                                   match=args.match))  # fmt: skip
        try:
            for server in servers:
                harness.wait_ready(server, "/readyz")
                harness.check_answers(server, "Big Bird", "Kermit the Frog")
            rows = _rows(servers[0], batch)
            if args.compare:
                rows["unsigned@" + args.compare] = (_passenger(servers[1]), None, None)
            results = measure(rows, args.seconds, args.rounds)
        finally:
            for server in servers:
                server.stop()
    report(results, args.compare)


Row = tuple[str, dict[str, str] | None, bytes | None]  # url, headers, body


def _manifest() -> list[str]:
    """1,000 distinct names a flight could carry: letters only (a name with digits that
    matches nothing is refused, by design), one of them listed."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = [f"Passenger {letters[n // 26 % 26].upper()}{letters[n % 26]}ington "
             f"{letters[n // 676 % 26].upper()}ay" for n in range(BATCH_NAMES - 1)]  # fmt: skip
    return [*names, "Big Bird"]


def _passenger(server: harness.Running) -> str:
    return f"http://127.0.0.1:{server.port}/enclave/passenger?name={quote('Big Bird')}"


def _rows(server: harness.Running, batch: bytes) -> dict[str, Row]:
    screen = f"http://127.0.0.1:{server.port}/v1/screen"
    return {
        "unsigned": (_passenger(server), None, None),
        "signed": (_passenger(server), NONCE, None),
        "batch-unsigned": (screen, {"Content-Type": "application/json"}, batch),
        "batch-signed": (screen, {**NONCE, "Content-Type": "application/json"}, batch),
    }


def measure(rows: dict[str, Row], seconds: float, rounds: int) -> dict[str, list[loadgen.Result]]:
    for url, headers, body in rows.values():
        loadgen.run(url, connections=CONNECTIONS, seconds=WARMUP_SECONDS, keep_alive=True,
                    headers=headers, body=body)  # fmt: skip
    results: dict[str, list[loadgen.Result]] = {}
    names = list(rows)
    for number in range(rounds):
        for name in names[number % len(names):] + names[: number % len(names)]:
            url, headers, body = rows[name]
            result = loadgen.run(url, connections=CONNECTIONS, seconds=seconds, keep_alive=True,
                                 headers=headers, body=body)  # fmt: skip
            results.setdefault(name, []).append(result)
            print(f"round {number + 1} {name:>22} {result.requests_per_second:9.0f} req/s  "
                  f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                  f"errors {result.errors}", flush=True)  # fmt: skip
            time.sleep(0.2)
    return results


def _median(results: list[loadgen.Result], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def report(results: dict[str, list[loadgen.Result]], compare: str | None) -> None:
    rate = {name: _median(rs, "requests_per_second") for name, rs in results.items()}
    p99 = {name: _median(rs, "p99_ms") for name, rs in results.items()}
    errors = sum(r.errors for rs in results.values() for r in rs)
    print(f"\n| row (c={CONNECTIONS}, keep-alive) | req/s | names/s | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    for name in results:
        per = BATCH_NAMES if name.startswith("batch") else 1
        print(f"| {name} | {rate[name]:.0f} | {rate[name] * per:.0f} | {p99[name]:.2f} |")
    signed = rate["signed"] / rate["unsigned"]
    batch = rate["batch-signed"] * BATCH_NAMES / rate["signed"]
    print(f"\nsigned / unsigned throughput: {signed:.3f}x (target >= {SIGNED_MIN_RATIO}x): "
          f"{'met' if signed >= SIGNED_MIN_RATIO else 'MISSED'}")  # fmt: skip
    print(f"signed batch of {BATCH_NAMES} / single-name signed, names a second: {batch:.1f}x "
          f"(target >= {BATCH_MIN_RATIO}x): {'met' if batch >= BATCH_MIN_RATIO else 'MISSED'}")
    if compare:
        base = f"unsigned@{compare}"
        throughput, tail = rate["unsigned"] / rate[base], p99["unsigned"] / p99[base]
        ok = throughput >= 1 - UNSIGNED_TOLERANCE and tail <= 1 + UNSIGNED_TOLERANCE
        print(f"unsigned, this tree / {compare}: throughput {throughput:.3f}x, p99 {tail:.3f}x "
              f"(target within {UNSIGNED_TOLERANCE:.0%}): {'met' if ok else 'MISSED'}")
    print(f"signed batch / unsigned batch throughput: "
          f"{rate['batch-signed'] / rate['batch-unsigned']:.3f}x")
    print(f"errors: {errors}")


if __name__ == "__main__":
    main()
