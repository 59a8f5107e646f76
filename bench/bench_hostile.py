"""Hostile clients against the real service: a normal client's latency while others attack.

Starts ``noflylist serve`` (as ``bench_http.py`` does; with ``--compare COMMIT`` also the
service as it was at COMMIT, for an A/B in one run) and, for each row, starts an attacker in
a separate process, then times a normal client for a few seconds: one
``GET /enclave/passenger`` at a time, each on a fresh connection, one every
:data:`MEASURE_INTERVAL`. Rows:

* ``quiet``: no attacker (the baseline of the same run);
* ``flood``: :data:`FLOOD_CONNECTIONS` keep-alive connections that pipeline the same GET as
  fast as they can and never read an answer; a connection the server closes is opened again
  at once, so the attacker always holds as many;
* ``idle-slowloris``: :data:`IDLE_CONNECTIONS` idle connections and :data:`SLOW_CONNECTIONS`
  sending their request head a byte a second (re-opened when the server drops them).

For each row it prints the normal client's p50/p99/max latency and failures (an error, a
timeout of :data:`MEASURE_TIMEOUT` or a wrong answer), the server's CPU use, the answers it
gave the attacker (from ``/metrics``), the connections it closed by reason, and the server's
socket queues halfway through (``ss``: the request bytes not yet read, the answer bytes
not yet taken by the client), which show where a flood's bytes wait.

Run from the repository root::

    python3 bench/bench_hostile.py [--seconds 8] [--rounds 2] [--compare COMMIT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from noflylist.decision import answer
from noflylist.tools.demo import SAMPLE_NAMES

FLOOD_CONNECTIONS = 50
IDLE_CONNECTIONS = 1000
SLOW_CONNECTIONS = 200
#: Requests a flooding connection hands the kernel in one ``send``.
FLOOD_BURST = 64
#: One normal request is started this often (each waits for the one before).
MEASURE_INTERVAL = 0.02
#: A normal request not answered within this is a failure.
MEASURE_TIMEOUT = 10.0
#: Seconds the attacker runs before the normal client starts timing (connections set up).
ATTACK_WARMUP = 1.5
#: The issue's target for the flood row.
FLOOD_P99_TARGET_MS = 50.0
ROWS = ("quiet", "flood", "idle-slowloris")
TARGET = "/enclave/passenger?name=Kermit+the+Frog"
EXPECTED = answer("Kermit the Frog", False).encode()
REQUEST = f"GET {TARGET} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


# -- the attacker (a separate process: python3 bench/bench_hostile.py attack ...) ----------


def _connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.connect(("127.0.0.1", port))
    return sock


def attack_flood(port: int, seconds: float, connections: int) -> dict[str, int]:
    """Pipeline requests on ``connections`` sockets as fast as the server takes them; never
    read. A socket the server closes is replaced at once."""
    burst = REQUEST * FLOOD_BURST
    selector = selectors.DefaultSelector()
    for _ in range(connections):
        selector.register(_connect(port), selectors.EVENT_WRITE)
    sent = reconnects = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                sent += sock.send(burst)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # closed by the server (reset, or the peer shut down)
                selector.unregister(sock)
                sock.close()
                selector.register(_connect(port), selectors.EVENT_WRITE)
                reconnects += 1
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"requests_sent": sent // len(REQUEST), "reconnects": reconnects}


def attack_idle_slowloris(port: int, seconds: float, idle: int, slow: int) -> dict[str, int]:
    """``idle`` connections that send nothing and ``slow`` ones that send a byte a second."""
    idlers = [_connect(port) for _ in range(idle)]
    slowpokes = [(_connect(port), 0) for _ in range(slow)]
    reconnects = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        for index, (sock, position) in enumerate(slowpokes):
            try:
                sock.send(REQUEST[position % len(REQUEST) : position % len(REQUEST) + 1])
                slowpokes[index] = (sock, position + 1)
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                slowpokes[index] = (_connect(port), 0)
                reconnects += 1
    for sock in idlers + [sock for sock, _ in slowpokes]:
        sock.close()
    return {"reconnects": reconnects}


def attacker_main(kind: str, port: int, seconds: float) -> None:
    if kind == "flood":
        stats = attack_flood(port, seconds, FLOOD_CONNECTIONS)
    elif kind == "idle-slowloris":
        stats = attack_idle_slowloris(port, seconds, IDLE_CONNECTIONS, SLOW_CONNECTIONS)
    else:
        raise SystemExit(f"unknown attack {kind!r}")
    print(json.dumps(stats), flush=True)


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    row: str
    latencies: list[float]
    failures: int
    cpu_percent: float
    attacker_answers: int
    closes: dict[str, int]
    queues: str
    attacker: dict[str, int]


def normal_request(port: int) -> float | None:
    """One GET on a fresh connection; seconds from connect to the whole answer, or None."""
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=MEASURE_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(REQUEST)
            data = b""
            while len(data) < len(EXPECTED) or not data.endswith(EXPECTED):
                chunk = sock.recv(65536)
                if not chunk or len(data) > 4096:
                    return None  # closed, or not the answer expected
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 200 "):
        return None
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(port: int) -> tuple[int, dict[str, int]]:
    """Answers on the passenger route, and connections closed by outcome, from /metrics."""
    _, body = harness.http_get(port, "/metrics", timeout=MEASURE_TIMEOUT)
    text = body.decode()
    answered = sum(int(n) for n in re.findall(
        r'^noflylist_http_requests_total\{route="passenger",[^}]*\} (\d+)$', text, re.M))
    closes = {outcome: int(n) for outcome, n in re.findall(
        r'^noflylist_http_connections_closed_total\{outcome="([a-z_]+)"\} (\d+)$', text, re.M)}
    return answered, closes


def socket_queues(port: int) -> str:
    """The server side's established sockets: how many, and the bytes waiting in each
    direction (Recv-Q: request bytes the server has not read; Send-Q: answer bytes the
    client has not taken), as sum and max."""
    output = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    rows = [line.split() for line in output.splitlines() if line.strip()]
    recv = [int(row[0]) for row in rows]
    send = [int(row[1]) for row in rows]
    if not rows:
        return "no sockets"
    return (f"{len(rows)} sockets; unread requests sum {sum(recv) // 1024} KiB max "
            f"{max(recv) // 1024} KiB; untaken answers sum {sum(send) // 1024} KiB max "
            f"{max(send) // 1024} KiB")


def measure(server: harness.Running, row: str, seconds: float) -> Row:
    attacker = None
    if row != "quiet":
        argv = [sys.executable, __file__, "attack", row, str(server.port),
                str(seconds + ATTACK_WARMUP)]  # fmt: skip
        attacker = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        time.sleep(ATTACK_WARMUP)
    answered_before, closes_before = metrics(server.port)
    cpu_before, started = cpu_seconds(server.process.pid), time.monotonic()
    latencies: list[float] = []
    failures = 0
    queues: list[str] = []
    probe = threading.Timer(seconds / 2, lambda: queues.append(socket_queues(server.port)))
    probe.start()
    deadline = started + seconds
    while time.monotonic() < deadline:
        begun = time.monotonic()
        latency = normal_request(server.port)
        if latency is None:
            failures += 1
        else:
            latencies.append(latency)
        time.sleep(max(0.0, MEASURE_INTERVAL - (time.monotonic() - begun)))
    probe.join()
    cpu = (cpu_seconds(server.process.pid) - cpu_before) / (time.monotonic() - started)
    stats: dict[str, int] = {}
    if attacker is not None:
        output, _ = attacker.communicate(timeout=ATTACK_WARMUP + 30)
        stats = json.loads(output.strip().splitlines()[-1])
    answered_after, closes_after = metrics(server.port)
    closes = {k: v - closes_before.get(k, 0) for k, v in closes_after.items()
              if v != closes_before.get(k, 0)}  # fmt: skip
    return Row(server.name, row, latencies, failures, 100 * cpu,
               answered_after - answered_before - len(latencies), closes,
               queues[0] if queues else "-", stats)  # fmt: skip


def _ms(values: list[float], fraction: float) -> float:
    return 1000 * harness.percentile(values, fraction) if values else float("nan")


def show(result: Row, prefix: str = "") -> None:
    lat = result.latencies
    print(f"{prefix}{result.server:>20} {result.row:<15} n={len(lat):<4} p50 {_ms(lat, 0.5):7.2f} "
          f"p99 {_ms(lat, 0.99):7.2f} max {1000 * max(lat, default=float('nan')):7.2f} ms  "
          f"failures {result.failures}  server CPU {result.cpu_percent:3.0f} %  attacker "
          f"answered {result.attacker_answers}  closes {result.closes or '-'}  "
          f"attacker {result.attacker or '-'}\n{'':>22}queues: {result.queues}",
          flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per row")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument("--compare", metavar="COMMIT", help="also run the service at COMMIT")
    args = parser.parse_args()
    rows = args.rows.split(",")
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    folder = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    results: list[Row] = []
    with harness.SealedList(SAMPLE_NAMES) as sealed:
        servers = [harness.start_noflylist(sealed, folder)]
        if args.compare:
            servers.append(harness.start_noflylist(sealed, folder, commit=args.compare))
        try:
            for server in servers:
                harness.wait_ready(server, "/readyz")
                harness.check_answers(server, "Big Bird", "Kermit the Frog")
            for number in range(args.rounds):
                order = servers[number % len(servers):] + servers[: number % len(servers)]
                for row in rows:
                    for server in order:
                        results.append(measure(server, row, args.seconds))
                        show(results[-1], f"round {number + 1} ")
                        time.sleep(0.5)
        finally:
            for server in servers:
                server.stop()
    print("\nall rounds pooled: normal client on fresh connections, one at a time")
    print(f"{'server':>20} {'row':<15} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'failures':>8} {'CPU %':>6}")
    for server in servers:
        for row in rows:
            runs = [r for r in results if r.server == server.name and r.row == row]
            lat = [x for r in runs for x in r.latencies]
            failures = sum(r.failures for r in runs)
            cpu = statistics.median(r.cpu_percent for r in runs)
            print(f"{server.name:>20} {row:<15} {len(lat):>5} {_ms(lat, 0.5):8.2f} "
                  f"{_ms(lat, 0.99):8.2f} {1000 * max(lat, default=float('nan')):8.2f} "
                  f"{failures:>8} {cpu:6.0f}")
            if row == "flood":
                p99 = _ms(lat, 0.99)
                verdict = "met" if p99 < FLOOD_P99_TARGET_MS and not failures else "MISSED"
                print(f"{'':>20} target: p99 under {FLOOD_P99_TARGET_MS:g} ms with no failures:"
                      f" {verdict}")
    print(f"\nserver logs: {folder}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "attack":
        attacker_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
