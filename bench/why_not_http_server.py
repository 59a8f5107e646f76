"""Why noflylist's HTTP transport is a hand-written selector loop, not ``http.server``.

Measures, side by side in one run, ``noflylist serve`` (``harness.start_noflylist``, 8
workers) and the standard library's server in the shapes one would deploy it in
(``bench/baseline_http_server.py``: a thread per connection, a bounded pool of 8 threads,
and the handler's ``timeout`` knob), on the five points that decided the design:

1. **Thread per connection.** 1,000 idle keep-alive connections (connect, send nothing):
   the server's thread count (``/proc/PID/status`` ``Threads:``), its RSS and open sockets,
   and a normal client's latency (200 requests, each on a new connection) before and
   meanwhile. Both servers hold their 1,000 at the same time and their requests are
   interleaved, so the shared machine's noise falls on both alike.
2. **A bounded pool is starved.** http.server with a pool of 8 threads and 8 idle
   connections: is a 9th, normal client answered within 5 s (and once the idle ones close)?
   noflylist (8 workers) with the 1,000 idle connections of item 1: that client's latency,
   for a lookup (answered on the loop thread) and for ``/metrics`` (answered by a worker).
3. **A per-operation timeout vs a trickling client.** A client sends its request head one
   byte every 0.5 s. http.server with ``timeout = 10``: how long the connection stays open
   and holds a thread (measured up to 60 s). noflylist: when it is closed (its
   ``request_timeout``, 408).
4. **Echo of the request line.** ``GET /enclave/passenger?name=Big%20Bird HTTP/1.1``,
   valid and with a malformed part: does the queried name appear in the answer's body, and
   in the server's access log (both servers' stderr, in the harness log file)?
5. **Lax parsing.** Bare LF line ends, an obs-folded field, two different
   ``Content-Length`` values, a bare CR: the status each server answers.

Item 3 runs in the background alongside the others (its 60 s is most of the run). No
server is pinned: this is not a throughput comparison, and on a shared 2-CPU machine a p99
of 200 samples is the machine's noise as much as the server's. Every http.server listens
with a backlog of 1024, as noflylist does (its default of 5 would measure SYN retries).
Run from the repository root (about 65 seconds)::

    python3 bench/why_not_http_server.py
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

#: Idle keep-alive connections held open in items 1 and 2 (noflylist allows 4096).
IDLE_CONNECTIONS = 1000
#: Requests timed on new connections while the idle ones are open.
LATENCY_REQUESTS = 200
#: Threads in the bounded http.server pool, and noflylist's workers (its default).
POOL_THREADS = 8
#: How long the 9th client of item 2 waits for an answer.
STARVED_WAIT = 5.0
#: The http.server handler's ``timeout`` in item 3 (seconds, per socket operation).
HANDLER_TIMEOUT = 10
#: Item 3's client sends one byte of its head this often.
TRICKLE_INTERVAL = 0.5
#: Item 3 stops measuring a connection that is still open after this long.
TRICKLE_LIMIT = 60.0
#: How long a new connection waits to be accepted before we call it not accepted.
ACCEPT_WAIT = 20.0
#: The queried name of items 4 and 5; an unlisted name.
NAME = "Big Bird"
#: How the name can appear in a body or log line: URL-encoded, decoded, or partly.
NAME_MARKS = (b"Bird",)
LISTED = ["Oscar Grouch", "Count von Count", "Elmo Monster"]

PASSENGER = "/enclave/passenger?name=Big%20Bird"
GET = f"GET {PASSENGER} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode()
#: A noflylist route its workers answer (not quick: the loop hands it to a worker thread).
WORKER_GET = b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"

#: Item 4: the request line, valid and malformed three ways.
ECHO_PROBES = {
    "valid": GET,
    "extra space": f"GET {PASSENGER}  HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode(),
    "bad version": f"GET {PASSENGER} HTTP/1.x\r\nHost: b\r\nConnection: close\r\n\r\n".encode(),
    "raw space in target": (
        b"GET /enclave/passenger?name=Big Bird HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    ),
}
#: Item 5: framings a strict RFC 9112 parser refuses. The POST body is 4 bytes, so a server
#: that reads the first Content-Length reads it all (and one that reads the second waits).
LAX_PROBES = {
    "bare LF line ends": f"GET {PASSENGER} HTTP/1.1\nHost: b\nConnection: close\n\n".encode(),
    "obs-fold": (
        f"GET {PASSENGER} HTTP/1.1\r\nHost: b\r\nX-Note: one\r\n two\r\n"
        "Connection: close\r\n\r\n"
    ).encode(),
    "two Content-Length": (
        f"POST {PASSENGER} HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\nContent-Length: 40\r\n"
        "Connection: close\r\n\r\nbody"
    ).encode(),
    "bare CR in field": (
        f"GET {PASSENGER} HTTP/1.1\r\nHost: b\r\nX-Note: one\rX-Other: two\r\n"
        "Connection: close\r\n\r\n"
    ).encode(),
}
#: Item 3's head: longer than TRICKLE_LIMIT / TRICKLE_INTERVAL bytes, so it never completes.
TRICKLE_HEAD = f"GET {PASSENGER} HTTP/1.1\r\nHost: b\r\nUser-Agent: {'t' * 200}\r\n\r\n".encode()


# -- the server process, from /proc --------------------------------------------------------


def proc_status(pid: int) -> tuple[int, float]:
    """(threads, RSS in MiB) of ``pid``."""
    threads, rss = 0, 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return threads, rss


def open_sockets(pid: int) -> int:
    """Sockets the process holds (listener and any client connections)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def wait_for_sockets(pid: int, at_least: int) -> float:
    """Wait until the server holds ``at_least`` sockets (it has accepted them); seconds."""
    start = time.monotonic()
    while open_sockets(pid) < at_least and time.monotonic() - start < ACCEPT_WAIT:
        time.sleep(0.05)
    return time.monotonic() - start


# -- clients -------------------------------------------------------------------------------


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing, closed when the block ends."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def read_answer(sock: socket.socket, deadline: float) -> bytes:
    """Bytes until the server closes, a whole response (by Content-Length) or ``deadline``."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionError:
            break
        if not chunk:
            break
        data += chunk
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            for line in head.split(b"\r\n")[1:]:
                field, _, value = line.partition(b":")
                if field.strip().lower() == b"content-length" and value.strip().isdigit():
                    if len(body) >= int(value):
                        return data
    return data


def status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def body_of(answer: bytes) -> bytes:
    """The body; all of it if there is no status line (http.server answers a request whose
    version it cannot parse as HTTP/0.9: a bare HTML page, no status line, no fields)."""
    if status_of(answer) is None:
        return answer
    return answer.partition(b"\r\n\r\n")[2]


def timed_get(port: int, request: bytes = GET, timeout: float = STARVED_WAIT) -> float | None:
    """One GET on a new connection, from connect to the whole answer; None if none came."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        answer = read_answer(sock, time.monotonic() + timeout)
    if status_of(answer) != 200:
        return None
    return time.perf_counter() - start


Latency = tuple[float, float, int]  # p50 and p99 in ms, and how many got no answer


def latencies(targets: list[tuple[int, bytes]]) -> list[Latency]:
    """LATENCY_REQUESTS requests to each ``(port, request)``, interleaved (so the shared
    machine's noise falls on every target alike), each on a new connection."""
    times: list[list[float | None]] = [[] for _ in targets]
    for _ in range(LATENCY_REQUESTS):
        for samples, (port, request) in zip(times, targets, strict=True):
            samples.append(timed_get(port, request))
    figures = []
    for samples in times:
        answered = [t * 1000 for t in samples if t is not None]
        unanswered = len(samples) - len(answered)
        if not answered:
            figures.append((float("nan"), float("nan"), unanswered))
        else:
            p50 = harness.percentile(answered, 0.50)
            figures.append((p50, harness.percentile(answered, 0.99), unanswered))
    return figures


def exchange(port: int, request: bytes, timeout: float = 3.0) -> bytes:
    """Send ``request`` on a new connection; the answer (possibly empty)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_answer(sock, time.monotonic() + timeout)


# -- the items -----------------------------------------------------------------------------


@dataclass
class Crowd:
    """Item 1 for one server."""

    threads_before: int
    rss_before: float
    quiet: Latency  # no idle connections
    threads: int
    rss: float
    sockets: int
    accept_seconds: float
    crowded: Latency  # IDLE_CONNECTIONS idle connections open
    #: noflylist only: WORKER_GET, which its workers answer, with the idle connections open.
    worker: Latency | None = None


def crowd(theirs: harness.Running, ours: harness.Running) -> tuple[Crowd, Crowd]:
    """Item 1 for both servers at once: their requests interleaved, before and while each
    holds IDLE_CONNECTIONS idle connections (noflylist's idle_timeout, 15 s, is far off)."""
    servers = (theirs, ours)
    pids = [server.process.pid for server in servers]
    before = [proc_status(pid) for pid in pids]
    sockets_before = [open_sockets(pid) for pid in pids]
    quiet = latencies([(server.port, GET) for server in servers])
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(idle_connections(server.port, IDLE_CONNECTIONS))
        accept_seconds = [wait_for_sockets(pid, n + IDLE_CONNECTIONS)
                          for pid, n in zip(pids, sockets_before, strict=True)]  # fmt: skip
        time.sleep(0.5)  # let every handler thread start and block
        during = [proc_status(pid) for pid in pids]
        held = [open_sockets(pid) - n for pid, n in zip(pids, sockets_before, strict=True)]
        crowded = latencies([(theirs.port, GET), (ours.port, GET), (ours.port, WORKER_GET)])
        for server, pid, n in zip(servers, pids, sockets_before, strict=True):
            still_held = open_sockets(pid) - n
            if still_held < IDLE_CONNECTIONS:
                raise SystemExit(f"{server.name} closed {IDLE_CONNECTIONS - still_held} idle "
                                 "connections while measuring: the figures would not be for "
                                 f"{IDLE_CONNECTIONS}")  # fmt: skip
    for pid, n, (threads, _) in zip(pids, sockets_before, before, strict=True):
        settle(pid, n, threads)
    results = tuple(
        Crowd(before[k][0], before[k][1], quiet[k], during[k][0], during[k][1], held[k],
              accept_seconds[k], crowded[k], crowded[2] if k == 1 else None)
        for k in range(2))  # fmt: skip
    return results[0], results[1]


def settle(pid: int, sockets: int, threads: int) -> None:
    """Wait until the server is back to ``sockets`` and ``threads``, so the next
    measurement does not share the CPUs with 1,000 threads winding down."""
    deadline = time.monotonic() + ACCEPT_WAIT
    while time.monotonic() < deadline:
        if open_sockets(pid) <= sockets and proc_status(pid)[0] <= threads:
            break
        time.sleep(0.05)
    time.sleep(0.5)


@dataclass
class Starved:
    """Item 2 for the pooled http.server."""

    threads: int
    answer_within: float | None
    answer_after_idle_closed: float | None


def starve(server: harness.Running) -> Starved:
    pid = server.process.pid
    sockets_before = open_sockets(pid)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(POOL_THREADS)]
    try:
        wait_for_sockets(pid, sockets_before + POOL_THREADS)
        time.sleep(0.5)
        threads, _ = proc_status(pid)
        client = socket.create_connection(("127.0.0.1", server.port))
        start = time.monotonic()
        client.sendall(GET)
        answer = read_answer(client, start + STARVED_WAIT)
        within = time.monotonic() - start if status_of(answer) == 200 else None
    finally:
        for sock in idle:
            sock.close()
    after = None
    if within is None:  # is it queued, or lost? Answered once a thread is free?
        closed = time.monotonic()
        answer = read_answer(client, closed + STARVED_WAIT)
        if status_of(answer) == 200:
            after = time.monotonic() - closed
    client.close()
    return Starved(threads, within, after)


@dataclass
class Trickled:
    """Item 3 for one server."""

    seconds: float
    bytes_sent: int
    ended: str  # "408", "closed", or "open" (still open at TRICKLE_LIMIT)
    #: http.server only: its threads just before the trickler leaves, and once it has left.
    threads_during: int | None = None
    threads_after: int | None = None


def trickle(server: harness.Running, count_threads: bool, connected: threading.Event) -> Trickled:
    """Send TRICKLE_HEAD a byte every TRICKLE_INTERVAL until the server answers or closes."""
    pid = server.process.pid
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        connected.set()
        start = time.monotonic()
        sent, data, ended = 0, b"", "open"
        while time.monotonic() - start < TRICKLE_LIMIT:
            try:
                sock.sendall(TRICKLE_HEAD[sent : sent + 1])
                sent += 1
                sock.settimeout(TRICKLE_INTERVAL)
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            ended = str(status_of(data)) if data else "closed"
            break
        seconds = time.monotonic() - start
        during = proc_status(pid)[0] if count_threads else None
    after = None
    if count_threads:
        time.sleep(0.5)  # the handler thread reads EOF and exits
        after = proc_status(pid)[0]
    return Trickled(seconds, sent, ended, during, after)


@dataclass
class Probe:
    status: int | None
    answered: bool  # any bytes at all (an HTTP/0.9 answer has no status)
    name_in_body: bool
    name_in_log: bool


def probe(server: harness.Running, request: bytes) -> Probe:
    before = server.log.stat().st_size
    answer = exchange(server.port, request)
    time.sleep(0.2)  # both servers log before they answer; this is for the file system
    with server.log.open("rb") as log:
        log.seek(before)
        logged = log.read()
    body = body_of(answer)
    return Probe(status_of(answer), bool(answer), any(m in body for m in NAME_MARKS),
                 any(m in logged for m in NAME_MARKS))  # fmt: skip


def in_background(work: Callable[[threading.Event], Trickled]) -> Callable[[], Trickled]:
    """Run ``work`` on a thread and wait until it has connected (so item 1's socket counts
    do not catch it connecting); the returned function waits for its result."""
    result: list[Trickled] = []
    connected = threading.Event()
    thread = threading.Thread(target=lambda: result.append(work(connected)), daemon=True)
    thread.start()
    if not connected.wait(timeout=ACCEPT_WAIT):
        raise SystemExit("the trickling client could not connect")

    def join() -> Trickled:
        thread.join()
        return result[0]

    return join


# -- printing ------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "no answer" if value is None else f"{value * 1000:.1f} ms"


def describe_status(result: Probe) -> str:
    if result.status is None:
        return "an HTML page with no status line (HTTP/0.9)" if result.answered else "no answer"
    return f"{result.status}" + (" (accepted)" if result.status == 200 else "")


def describe_probe(result: Probe) -> str:
    return (f"{describe_status(result)}; name in body: {'yes' if result.name_in_body else 'no'}"
            f", in log: {'yes' if result.name_in_log else 'no'}")  # fmt: skip


def describe_trickle(result: Trickled) -> str:
    if result.ended == "open":
        text = f">= {TRICKLE_LIMIT:.0f} s open, {result.bytes_sent} bytes sent, never answered"
    else:
        how = "closed" if result.ended == "closed" else f"answered {result.ended} and closed"
        text = f"{how} after {result.seconds:.1f} s, {result.bytes_sent} bytes sent"
    if result.threads_during is not None:
        text += (f"; threads {result.threads_during} while open, "
                 f"{result.threads_after} once the client left")  # fmt: skip
    return text


def describe_latency(figures: tuple[float, float, int]) -> str:
    p50, p99, unanswered = figures
    return f"{p50:.2f}/{p99:.2f} ms" + (f" ({unanswered} unanswered)" if unanswered else "")


def describe_crowd(result: Crowd) -> str:
    return (f"threads {result.threads_before} -> {result.threads}, "
            f"RSS {result.rss_before:.1f} -> {result.rss:.1f} MiB, "
            f"{result.sockets} connections held (accepted in {result.accept_seconds:.1f} s); "
            f"a new client's p50/p99 {describe_latency(result.quiet)} with none idle, "
            f"{describe_latency(result.crowded)} with them")  # fmt: skip


def main() -> None:
    print(harness.machine())
    started = time.monotonic()
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"why-not-http-server-{os.getpid()}"
    folder.mkdir()
    with harness.SealedList([*LISTED, "Zoe Monster"]) as sealed:
        port = harness.free_port()
        argv, env = sealed.serve_command(port)
        argv += ["--workers", str(POOL_THREADS)]
        servers = {"noflylist": harness.start("noflylist", argv, env, port, folder)}

        def stdlib(name: str, *flags: str) -> harness.Running:
            port = harness.free_port()
            command = [sys.executable, str(harness.BENCH / "baseline_http_server.py"),
                       "--port", str(port), *flags]  # fmt: skip
            return harness.start(name, command, harness.clean_environment(), port, folder)

        servers["threads"] = stdlib("http.server-threads")
        servers["pool"] = stdlib("http.server-pool8", "--pool", str(POOL_THREADS))
        servers["timeout"] = stdlib("http.server-timeout10", "--timeout", str(HANDLER_TIMEOUT))
        try:
            for key, server in servers.items():
                harness.wait_ready(server, "/readyz" if key == "noflylist" else "/")
            print(f"servers ready after {time.monotonic() - started:.1f} s; logs in {folder}")

            # Item 3 first, in the background: it takes TRICKLE_LIMIT.
            trickle_stdlib = in_background(lambda c: trickle(servers["timeout"], True, c))
            trickle_ours = in_background(lambda c: trickle(servers["noflylist"], False, c))
            time.sleep(0.3)  # and the servers have accepted them

            crowd_stdlib, crowd_ours = crowd(servers["threads"], servers["noflylist"])
            starved = starve(servers["pool"])
            echo = {label: (probe(servers["threads"], request),
                            probe(servers["noflylist"], request))
                    for label, request in ECHO_PROBES.items()}  # fmt: skip
            lax = {label: (probe(servers["threads"], request),
                           probe(servers["noflylist"], request))
                   for label, request in LAX_PROBES.items()}  # fmt: skip
            trickled_stdlib, trickled_ours = trickle_stdlib(), trickle_ours()
        finally:
            for server in servers.values():
                server.stop()

    report(crowd_stdlib, crowd_ours, starved, trickled_stdlib, trickled_ours, echo, lax)
    print(f"\nwhole run {time.monotonic() - started:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f} at the end")


def report(
    crowd_stdlib: Crowd,
    crowd_ours: Crowd,
    starved: Starved,
    trickled_stdlib: Trickled,
    trickled_ours: Trickled,
    echo: dict[str, tuple[Probe, Probe]],
    lax: dict[str, tuple[Probe, Probe]],
) -> None:
    if starved.answer_within is not None:
        starved_text = f"answered in {ms(starved.answer_within)}"
    else:
        starved_text = f"no answer in {STARVED_WAIT:.0f} s"
    after = starved.answer_after_idle_closed
    starved_detail = starved_text + (
        f" (queued: answered {ms(after)} after the idle clients closed)" if after else "")
    assert crowd_ours.worker is not None
    w50, w99, w_unanswered = crowd_ours.worker
    ours_starved = (f"{IDLE_CONNECTIONS} idle, {POOL_THREADS} workers: a new client's "
                    f"GET /metrics (a worker answers) p50/p99 {w50:.2f}/{w99:.2f} ms, the "
                    f"lookup (the loop answers) {describe_latency(crowd_ours.crowded)}; "
                    f"{w_unanswered + crowd_ours.crowded[2]} of {2 * LATENCY_REQUESTS} "
                    "unanswered")  # fmt: skip
    rows: list[tuple[str, str, str]] = [
        (f"1. {IDLE_CONNECTIONS} idle keep-alive connections", describe_crowd(crowd_stdlib),
         describe_crowd(crowd_ours)),
        (f"2. pool of {POOL_THREADS}, a 9th client",
         f"{POOL_THREADS} idle: {starved_detail}; threads {starved.threads}", ours_starved),
        (f"3. head at 1 byte / {TRICKLE_INTERVAL:g} s",
         f"timeout = {HANDLER_TIMEOUT}: {describe_trickle(trickled_stdlib)}",
         f"request_timeout: {describe_trickle(trickled_ours)}"),
    ]
    rows += [(f"4. request line: {label}", describe_probe(a), describe_probe(b))
             for label, (a, b) in echo.items()]  # fmt: skip
    rows += [(f"5. {label}", describe_status(a), describe_status(b))
             for label, (a, b) in lax.items()]  # fmt: skip

    print("\n| item | http.server | noflylist |\n|---|---|---|")
    for item, theirs, ours in rows:
        print(f"| {item} | {theirs} | {ours} |")
    print("(4. valid: both answers name the passenger by design, the demo's text.)")

    print("\nSummary (one line an item, for the docstring):")
    print(f"1. {IDLE_CONNECTIONS:,} idle keep-alive connections: http.server (a thread per "
          f"connection) runs {crowd_stdlib.threads:,} threads in {crowd_stdlib.rss:.0f} MiB RSS "
          f"(from {crowd_stdlib.threads_before} in {crowd_stdlib.rss_before:.0f}); noflylist "
          f"{crowd_ours.threads} threads in {crowd_ours.rss:.0f} MiB (from "
          f"{crowd_ours.threads_before} in {crowd_ours.rss_before:.0f}); a new client's p50/p99 "
          f"meanwhile {crowd_stdlib.crowded[0]:.1f}/{crowd_stdlib.crowded[1]:.1f} ms vs "
          f"{crowd_ours.crowded[0]:.1f}/{crowd_ours.crowded[1]:.1f} ms.")  # fmt: skip
    print(f"2. Bounded to {POOL_THREADS} threads, http.server is starved by {POOL_THREADS} idle "
          f"connections: a 9th client gets {starved_text}; noflylist's {POOL_THREADS} workers "
          f"only ever see whole requests, so with {IDLE_CONNECTIONS:,} idle connections a "
          f"worker-answered request takes p99 {w99:.1f} ms.")  # fmt: skip
    if trickled_stdlib.ended == "open":
        theirs = (f"keeps the connection and its thread >= {TRICKLE_LIMIT:.0f} s "
                  f"({trickled_stdlib.bytes_sent} bytes, no answer)")  # fmt: skip
    else:
        theirs = f"ends it after {trickled_stdlib.seconds:.1f} s"
    print(f"3. A head trickled at 1 byte / {TRICKLE_INTERVAL:g} s: http.server's "
          f"timeout = {HANDLER_TIMEOUT} (per socket operation) {theirs}; noflylist answers "
          f"{trickled_ours.ended} after {trickled_ours.seconds:.1f} s (request_timeout, whole "
          f"request; {trickled_ours.bytes_sent} bytes).")  # fmt: skip
    echoed = [label for label, (a, _) in echo.items() if a.status != 200 and a.name_in_body]
    accepted = [label for label, (a, _) in echo.items() if label != "valid" and a.status == 200]
    ours_refused = all(b.status is not None and b.status >= 400
                       for label, (_, b) in echo.items() if label != "valid")  # fmt: skip
    ours_leaks = any(b.name_in_log for _, b in echo.values()) or any(
        b.name_in_body for label, (_, b) in echo.items() if label != "valid")
    print(f"4. http.server's default access log writes the queried name "
          f"({sum(a.name_in_log for a, _ in echo.values())} of {len(echo)} requests, valid or "
          f"not), its error page echoes it ({', '.join(echoed) or 'none'}), and it accepts "
          f"({', '.join(accepted) or 'none'}); noflylist "
          + ("refuses every malformed line and " if ours_refused else "")
          + ("never logs or echoes the name." if not ours_leaks else "LEAKS THE NAME."))
    stdlib_accepts = [label for label, (a, _) in lax.items() if a.status == 200]
    ours_statuses = sorted({describe_status(b) for _, b in lax.values()})
    print(f"5. http.server accepts {len(stdlib_accepts)} of {len(lax)} framings RFC 9112 "
          f"refuses ({', '.join(stdlib_accepts) or 'none'}); noflylist answers each "
          f"{' or '.join(ours_statuses)} and closes.")


if __name__ == "__main__":
    main()
