"""Who may ask, and how much (issue 6/6): what signed requests cost, and the dictionary attack.

Starts two ``noflylist serve`` of this tree side by side on the demo's 15-name list: one
serving the list **open** (sealed without clients, as today) and one serving the same list
sealed with a **client policy** (``seal --clients``). Both run pinned to one CPU, the load
generator to the other.

**Cost.** At 16 keep-alive connections, rotating the order every round, four rows:

* ``open``: ``GET /enclave/passenger`` unsigned, on the open list;
* ``signed``: the same, each request signed (RFC 9421, Ed25519) with its own nonce, on the
  policy-bound list (a client with budgets far above what the run asks);
* ``batch-open`` and ``batch-signed``: ``POST /v1/screen`` of 1,000 names, counted in names
  a second.

Every row uses the Python load generator (``bench/loadgen.py``) with requests made before the
measurement (a signed request cannot be sent twice: its nonce is remembered), so both kinds
cost the client the same and the difference is the server's. Targets: signed single-name
requests at least 0.6x the open rate; signed batches at least 0.9x the open batches' names a
second (the median of each round's ratio: a shared machine drifts between rounds). Open-mode
figures against the commit before 6/6 are ``bench_http.py --compare COMMIT
--no-baselines --tolerance 0.03``.

**The dictionary attack.** A client of the policy with a budget of 20,000 names a minute and
20,000 a day asks for 1,000,000 distinct plausible names (1,000 given names x 1,000 surnames)
in signed batches of 1,000 over 4 connections, as fast as it can: it must get exactly 20,000
answers and 980 refusals (429: the minute's budget first, then the day's), and the service's
``/metrics`` must say so. The same dictionary against the open list is answered whole: the
names a second is what an unauthenticated client reads out today.

    python3 bench/bench_clients.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

from noflylist.clients import MAX_BUDGET, parse_policy
from noflylist.httpsig import sign_request
from noflylist.tools.demo import SAMPLE_NAMES

CONNECTIONS = 16
BATCH_NAMES = 1000
SIGNED_MIN_RATIO = 0.6
BATCH_MIN_RATIO = 0.9
WARMUP_SECONDS = 2
#: Signed requests made before a measurement, a second of it: above the fastest rate seen.
SIGNED_PER_SECOND = 16_000
ATTACK_NAMES = 1_000_000
ATTACK_BUDGET = 20_000
ATTACK_CONNECTIONS = 4
BENCH_CLIENT, ATTACKER = "bench-checkin", "dictionary"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    folder = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    keys = {BENCH_CLIENT: Ed25519PrivateKey.generate(), ATTACKER: Ed25519PrivateKey.generate()}
    budgets = {BENCH_CLIENT: MAX_BUDGET, ATTACKER: ATTACK_BUDGET}
    policy = parse_policy(json.dumps({"clients": [
        {"id": client, "names_per_minute": budgets[client], "names_per_day": budgets[client],
         "public_key": base64.b64encode(key.public_key().public_bytes(
             Encoding.Raw, PublicFormat.Raw)).decode()}
        for client, key in keys.items()
    ]}).encode())  # fmt: skip
    print(f"client policy {policy.sha256.hex()[:16]}: {BENCH_CLIENT} (budget {MAX_BUDGET:,}), "
          f"{ATTACKER} ({ATTACK_BUDGET:,} names a minute and a day)")  # fmt: skip
    batch = json.dumps({"names": _manifest()}).encode()
    harness.pin_client()
    with harness.SealedList(SAMPLE_NAMES) as open_list, \
            harness.SealedList(SAMPLE_NAMES, clients=policy) as sealed:  # fmt: skip
        servers = {"open": harness.start_noflylist(open_list, folder, pin=True),
                   "policy": harness.start_noflylist(sealed, folder, pin=True)}  # fmt: skip
        try:
            for server in servers.values():
                harness.wait_ready(server, "/readyz")
            _check_refused_unsigned(servers["policy"])
            results = measure(servers, keys[BENCH_CLIENT], batch, args.seconds, args.rounds)
            report(results)
            attack(servers, keys[ATTACKER])
        finally:
            for server in servers.values():
                server.stop()
    print(f"\nserver logs: {folder}")


# -- the cost rows ------------------------------------------------------------------------


def _manifest() -> list[str]:
    """1,000 distinct names of letters only, one of them listed (as bench_signed's)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = [f"Passenger {letters[n // 26 % 26].upper()}{letters[n % 26]}ington "
             f"{letters[n // 676 % 26].upper()}ay" for n in range(BATCH_NAMES - 1)]  # fmt: skip
    return [*names, "Big Bird"]


def _signed_requests(port: int, target: str, body: bytes | None, key: Ed25519PrivateKey,
                     client: str, count: int) -> Iterator[bytes]:  # fmt: skip
    """``count`` raw requests, each signed with its own nonce, made now."""
    url = f"http://127.0.0.1:{port}{target}"
    method = "GET" if body is None else "POST"
    extra = {} if body is None else {"Content-Type": "application/json"}
    made = [
        loadgen.raw_request(url, keep_alive=True, body=body, headers={
            **extra, **sign_request(method, target, body or b"", key_id=client, private_key=key),
        })
        for _ in range(count)
    ]  # fmt: skip
    return iter(made)


Row = str  # open, signed, batch-open, batch-signed


def _run(row: Row, servers: dict[str, harness.Running], key: Ed25519PrivateKey, batch: bytes,
         seconds: float) -> loadgen.Result:  # fmt: skip
    passenger = f"/enclave/passenger?name={quote('Big Bird')}"
    json_type = {"Content-Type": "application/json"}
    if row == "open":
        url = f"http://127.0.0.1:{servers['open'].port}{passenger}"
        return loadgen.run_python(url, connections=CONNECTIONS, seconds=seconds, keep_alive=True)
    if row == "batch-open":
        url = f"http://127.0.0.1:{servers['open'].port}/v1/screen"
        return loadgen.run_python(url, connections=CONNECTIONS, seconds=seconds,
                                  keep_alive=True, headers=json_type, body=batch)  # fmt: skip
    port = servers["policy"].port
    if row == "signed":
        made = _signed_requests(port, passenger, None, key, BENCH_CLIENT,
                                int(SIGNED_PER_SECOND * seconds))  # fmt: skip
    else:
        made = _signed_requests(port, "/v1/screen", batch, key, BENCH_CLIENT,
                                int(SIGNED_PER_SECOND * seconds / 50))  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    return loadgen.run_python(url, connections=CONNECTIONS, seconds=seconds, keep_alive=True,
                              requests=made)  # fmt: skip


def measure(servers: dict[str, harness.Running], key: Ed25519PrivateKey, batch: bytes,
            seconds: float, rounds: int) -> dict[Row, list[loadgen.Result]]:  # fmt: skip
    rows = ["open", "signed", "batch-open", "batch-signed"]
    for row in rows:
        _run(row, servers, key, batch, WARMUP_SECONDS)
    results: dict[Row, list[loadgen.Result]] = {}
    for number in range(rounds):
        for row in rows[number % len(rows):] + rows[: number % len(rows)]:
            result = _run(row, servers, key, batch, seconds)
            results.setdefault(row, []).append(result)
            print(f"round {number + 1} {row:>13} {result.requests_per_second:9.0f} req/s  "
                  f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                  f"requests {result.requests}  errors {result.errors}", flush=True)  # fmt: skip
            time.sleep(0.2)
    return results


def report(results: dict[Row, list[loadgen.Result]]) -> None:
    rate = {row: statistics.median(r.requests_per_second for r in rs)
            for row, rs in results.items()}  # fmt: skip
    p99 = {row: statistics.median(r.p99_ms for r in rs) for row, rs in results.items()}
    print(f"\n| row (c={CONNECTIONS}, keep-alive) | req/s | names/s | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row, rs in results.items():
        per = BATCH_NAMES if row.startswith("batch") else 1
        errors = sum(r.errors for r in rs)
        print(f"| {row} | {rate[row]:.0f} | {rate[row] * per:.0f} | {p99[row]:.2f} | {errors} |")
    # Each round's ratio, then their median: the machine drifts between rounds (a shared
    # VM), and the two rows of a round are measured minutes closer than two medians are.
    single = _median_ratio(results["signed"], results["open"])
    batched = _median_ratio(results["batch-signed"], results["batch-open"])
    print(f"\nratios of medians: single {rate['signed'] / rate['open']:.3f}x, batches "
          f"{rate['batch-signed'] / rate['batch-open']:.3f}x; medians of each round's ratio:")
    print(f"signed / open, single names: {single:.3f}x (target >= {SIGNED_MIN_RATIO}x): "
          f"{'met' if single >= SIGNED_MIN_RATIO else 'MISSED'}")  # fmt: skip
    print(f"signed / open, batches of {BATCH_NAMES}, names a second: {batched:.3f}x "
          f"(target >= {BATCH_MIN_RATIO}x): {'met' if batched >= BATCH_MIN_RATIO else 'MISSED'}")


def _median_ratio(signed: list[loadgen.Result], unsigned: list[loadgen.Result]) -> float:
    return statistics.median(a.requests_per_second / b.requests_per_second
                             for a, b in zip(signed, unsigned, strict=True))  # fmt: skip


def _check_refused_unsigned(server: harness.Running) -> None:
    """The policy-bound service refuses an unsigned request: the rows measure what they say."""
    status, body = harness.http_get(server.port, f"/enclave/passenger?name={quote('Big Bird')}")
    if status != 401:
        raise SystemExit(f"the policy-bound service answered unsigned: {status} {body!r}")


# -- the dictionary attack -------------------------------------------------------------------


def _dictionary() -> Iterator[list[str]]:
    """1,000,000 distinct plausible names, 1,000 a batch: given names x surnames."""
    syllables = ["an", "bel", "cor", "dan", "el", "fin", "gar", "hol", "ir", "jon"]
    given = [(a + b + c).capitalize() for a, b, c in itertools.product(syllables, repeat=3)]
    surnames = [(a + b + c + "son").capitalize()
                for a, b, c in itertools.product(syllables, repeat=3)]  # fmt: skip
    for surname in surnames:
        yield [f"{first} {surname}" for first in given]


def attack(servers: dict[str, harness.Running], key: Ed25519PrivateKey) -> None:
    """The attacker's client asks for every name of the dictionary; count what it gets."""
    print(f"\nthe dictionary attack: {ATTACK_NAMES:,} names in batches of {BATCH_NAMES}, "
          f"{ATTACK_CONNECTIONS} connections")  # fmt: skip
    for which in ("policy", "open"):
        port = servers[which].port
        started = time.monotonic()
        counts, budgets = _ask_everything(port, key if which == "policy" else None)
        elapsed = time.monotonic() - started
        answered = counts["answered names"]
        print(f"  {which:>6} list: {answered:,} names answered, {counts['429']:,} batches "
              f"refused 429 ({', '.join(sorted(budgets)) or 'none'}), {counts['other']} other, "
              f"in {elapsed:.1f} s: {answered / elapsed:,.0f} names answered a second, "
              f"{ATTACK_NAMES / elapsed:,.0f} names asked a second")  # fmt: skip
        if which == "policy":
            expected = (ATTACK_BUDGET, (ATTACK_NAMES - ATTACK_BUDGET) // BATCH_NAMES)
            got = (answered, counts["429"])
            print(f"  exactly the budget answered and the rest refused: "
                  f"{'yes' if got == expected and not counts['other'] else 'NO'} "
                  f"(expected {expected[0]:,} answered, {expected[1]} refused)")  # fmt: skip
            _, metrics = harness.http_get(port, "/metrics")
            for line in metrics.decode().splitlines():
                if f'client="{ATTACKER}"' in line:
                    print(f"  /metrics: {line}")


def _ask_everything(port: int, key: Ed25519PrivateKey | None) -> tuple[dict[str, int], set[str]]:
    """Every batch of the dictionary, over a few connections, signed when ``key`` is given;
    the answered names, the 429s and anything else, and which budgets the 429s named."""
    batches = _dictionary()
    lock = threading.Lock()
    counts = {"answered names": 0, "429": 0, "other": 0}
    budgets: set[str] = set()

    def client() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        pending = b""
        while True:
            with lock:
                names = next(batches, None)
            if names is None:
                break
            body = json.dumps({"names": names}).encode()
            headers = {"Content-Type": "application/json"}
            if key is not None:
                headers.update(sign_request("POST", "/v1/screen", body, key_id=ATTACKER,
                                            private_key=key))  # fmt: skip
            sock.sendall(loadgen.raw_request(f"http://127.0.0.1:{port}/v1/screen",
                                             keep_alive=True, headers=headers, body=body))
            status, _, pending, answer = loadgen.read_response(sock, pending)
            with lock:
                if status == 200:
                    counts["answered names"] += len(json.loads(answer)["results"])
                elif status == 429:
                    counts["429"] += 1
                    budgets.add("names_per_day" if b"names_per_day" in answer
                                else "names_per_minute")  # fmt: skip
                else:
                    counts["other"] += 1
        sock.close()

    threads = [threading.Thread(target=client) for _ in range(ATTACK_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts, budgets


if __name__ == "__main__":
    main()
