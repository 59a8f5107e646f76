"""Load generation: Debian's ``wrk`` when installed, else a small Python client.

``run(url, connections=, seconds=, keep_alive=)`` returns requests a second and the 50th and
99th latency percentiles, from whichever generator is present (``Result.tool`` says which).
wrk is preferred: it is written in C on epoll and costs the machine far less than the
servers it loads, so the figures are the servers'. The Python client is a fallback with the
same interface; its own CPU use caps what it can measure, so its figures are lower bounds.

Run alone: ``python3 bench/loadgen.py URL --connections 16 --seconds 5 [--close]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

#: wrk threads: one, so the generator takes at most one of the machine's cores.
WRK_THREADS = 1
#: Socket timeout of the Python client; an answer slower than this counts as an error.
PYTHON_CLIENT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Result:
    tool: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers, socket errors and timeouts


def run(url: str, *, connections: int, seconds: float, keep_alive: bool,
        headers: dict[str, str] | None = None, body: bytes | None = None) -> Result:  # fmt: skip
    """Load ``url`` with GETs, or with POSTs of ``body`` when one is given; ``headers`` are
    sent with every request (the same bytes each time: e.g. one ``Noflylist-Nonce``)."""
    if shutil.which("wrk"):
        return run_wrk(url, connections=connections, seconds=seconds, keep_alive=keep_alive,
                       headers=headers, body=body)  # fmt: skip
    return run_python(url, connections=connections, seconds=seconds, keep_alive=keep_alive,
                      headers=headers, body=body)  # fmt: skip


# -- wrk --------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_PERCENTILE = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$", re.MULTILINE)


def run_wrk(
    url: str, *, connections: int, seconds: float, keep_alive: bool,
    headers: dict[str, str] | None = None, body: bytes | None = None,
) -> Result:  # fmt: skip
    """``wrk -t1 -cN -dS --latency`` (with ``Connection: close`` when not keep-alive); a POST
    body goes through a small Lua script, wrk's way to set one."""
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "10s"]  # fmt: skip
    if not keep_alive:
        argv += ["-H", "Connection: close"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if body is not None:
            text = body.decode("utf-8")
            if "]==]" in text:
                raise SystemExit("a POST body for wrk may not contain ']==]' (Lua's long string)")
            script.write(f'wrk.method = "POST"\nwrk.body = [==[{text}]==]\n')
            script.flush()
            argv += ["-s", script.name]
        output = subprocess.run([*argv, url], capture_output=True, text=True, check=True,
                                timeout=seconds + 60).stdout  # fmt: skip
    percentiles = {int(p): float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.MULTILINE)
    if total is None or rate is None or set(percentiles) != {50, 99}:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Result("wrk", float(rate.group(1)), percentiles[50], percentiles[99],
                  int(total.group(1)), errors)  # fmt: skip


# -- the Python fallback ------------------------------------------------------------------------


def _read_response(sock: socket.socket, pending: bytes) -> tuple[int, bool, bytes]:
    """Read one response; (status, server closes, bytes left over)."""
    status, closes, rest, _ = read_response(sock, pending)
    return status, closes, rest


def read_response(sock: socket.socket, pending: bytes) -> tuple[int, bool, bytes, bytes]:
    """Read one response; (status, server closes, bytes left over, the body)."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, closes = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            closes = True
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the whole body")
        rest += chunk
    return status, closes, rest[length:], rest[:length]


def raw_request(url: str, *, keep_alive: bool, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> bytes:  # fmt: skip
    """The bytes of one GET of ``url`` (a POST of ``body`` when one is given)."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    header = "" if keep_alive else "Connection: close\r\n"
    header += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    method = "GET" if body is None else "POST"
    if body is not None:
        header += f"Content-Length: {len(body)}\r\n"
    return (f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{header}\r\n".encode()
            + (body or b""))  # fmt: skip


def run_python(
    url: str, *, connections: int, seconds: float, keep_alive: bool,
    headers: dict[str, str] | None = None, body: bytes | None = None,
    requests: Iterator[bytes] | None = None,
) -> Result:  # fmt: skip
    """One thread a connection, sending requests back to back for ``seconds``.

    ``requests``: distinct raw requests (e.g. each signed with its own nonce), taken in turn
    by every connection, instead of one request sent again and again; when it runs out the
    measurement ends early (so make enough: the rate is over the time it lasted)."""
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = raw_request(url, keep_alive=keep_alive, headers=headers, body=body)
    lock = threading.Lock()

    def next_request() -> bytes | None:
        if requests is None:
            return request
        with lock:
            return next(requests, None)

    deadline = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections

    def client(slot: int) -> None:
        sock: socket.socket | None = None
        pending = b""
        while time.monotonic() < deadline:
            this = next_request()
            if this is None:
                break
            start = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection(address, timeout=PYTHON_CLIENT_TIMEOUT)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    pending = b""
                sock.sendall(this)
                status, closes, pending = _read_response(sock, pending)
            except OSError:
                errors[slot] += 1
                if sock is not None:
                    sock.close()
                sock = None
                continue
            latencies[slot].append(time.perf_counter() - start)
            if status >= 300:
                errors[slot] += 1
            if closes or not keep_alive:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + PYTHON_CLIENT_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    merged = sorted(x for per in latencies for x in per)
    if not merged:
        return Result("python", 0.0, float("nan"), float("nan"), 0, sum(errors))
    p50 = merged[len(merged) // 2] * 1000
    p99 = merged[min(len(merged) - 1, len(merged) * 99 // 100)] * 1000
    return Result("python", len(merged) / elapsed, p50, p99, len(merged), sum(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    parser.add_argument("--python", action="store_true", help="use the Python client")
    args = parser.parse_args()
    generate = run_python if args.python else run
    print(generate(args.url, connections=args.connections, seconds=args.seconds,
                   keep_alive=not args.close))  # fmt: skip


if __name__ == "__main__":
    main()
