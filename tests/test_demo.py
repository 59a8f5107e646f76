"""`noflylist demo`, the README's first command, as a user runs it: a separate process that
answers the public demo's questions, passes `noflylist check`, shows a signed request that a
policy-bound service would accept, survives a restart on the same state folder, and stops
cleanly on SIGTERM."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from noflylist.clients import parse_policy
from noflylist.httpsig import ReplayCache, verify_request
from tests.support.service_client import ask, wait_ready

pytestmark = pytest.mark.slow  # each test starts the demo, a process that makes keys

#: Generous: the first start makes a CA and RSA keys on a loaded 2-core machine.
START_TIMEOUT = 60.0


@contextmanager
def demo(
    state: Path, banner: list[str] | None = None, everything: list[str] | None = None
) -> Iterator[tuple[str, str]]:
    """Run `noflylist demo` on a free port; yield (base URL, PCR0 hex) once it is ready.

    ``banner``, if given, receives the lines the demo prints before it is ready, up to
    "Ctrl-C stops it"; ``everything``, once it has stopped, all it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "noflylist", "demo", "--port", "0", "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        base = pcr0 = None
        deadline = time.monotonic() + START_TIMEOUT
        assert process.stdout is not None
        shown = False
        while not (base and pcr0 and shown) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if found := re.search(r"sample list on (http://127\.0\.0\.1:\d+)", line):
                base = found.group(1)
            if found := re.search(r"PCR0 of this code: ([0-9a-f]{96})", line):
                pcr0 = found.group(1)
            shown = shown or banner is None or "Ctrl-C stops it" in line
        assert base and pcr0, "demo did not start:\n" + "".join(output)
        if banner is not None:
            banner.extend(output)
        wait_ready(base, timeout=max(1.0, deadline - time.monotonic()))
        yield base, pcr0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
        output.append(rest or "")
        if everything is not None:
            everything.extend(output)
        assert process.returncode == 0, "".join(output)
        assert "stopped" in "".join(output)


def check(base: str, state: Path, pcr0: str) -> subprocess.CompletedProcess[str]:
    """`noflylist check` of "Big Bird", expecting ``pcr0`` and trusting the demo's root."""
    return subprocess.run(
        [
            sys.executable, "-m", "noflylist", "check", base, "Big Bird",
            "--expect-pcr", f"0={pcr0}", "--unsafe-root", str(state / "ca" / "root.pem"),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def banner_check_command(banner: list[str]) -> list[str]:
    """The `noflylist check ...` the banner tells a user to try, as argv (continuation joined)."""
    text = "".join(banner).replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith("noflylist check"))
    return shlex.split(line)


def banner_signed_command(banner: list[str]) -> list[str]:
    """The `python3 -c '...'` the banner shows, as argv exactly as a POSIX shell passes it."""
    text = "".join(banner)
    start = text.index("python3 -c ")
    words = shlex.shlex(text[start:], posix=True, punctuation_chars=False)
    words.whitespace_split = True
    return [next(words), next(words), next(words)]


@contextmanager
def recorder() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """A loopback HTTP server that answers 200 and records each request's target and headers."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_demo_answers_like_the_public_demo_and_passes_check(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with demo(state) as (base, pcr0):
        assert ask(base, "Big Bird") == "Big Bird is on the no-fly list and CAN NOT BOARD!\n"
        assert ask(base, "  COOKIE monster ") == (
            "  COOKIE monster  is on the no-fly list and CAN NOT BOARD!\n"
        )
        assert ask(base, "foo") == "foo is cleared to fly. Enjoy your flight!\n"
        checked = check(base, state, pcr0)
        assert checked.returncode == 0, checked.stderr
        assert "Big Bird is on the no-fly list and CAN NOT BOARD!" in checked.stdout
        refused = check(base, state, "ab" * 48)
        assert refused.returncode != 0
        assert "CAN NOT BOARD" not in refused.stdout


def test_the_check_command_the_demo_banner_shows_passes_and_warns_its_root_is_unsafe(
    tmp_path: Path,
) -> None:
    state, banner = tmp_path / "state", []
    with demo(state, banner) as (base, pcr0):
        argv = banner_check_command(banner)
        assert argv[:3] == ["noflylist", "check", base] and f"0={pcr0}" in argv
        assert argv[-2:] == ["--unsafe-root", str(state / "ca" / "root.pem")]
        shown = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Big Bird is on the no-fly list and CAN NOT BOARD!" in shown.stdout
    assert "WARNING: SIMULATED attestation" in shown.stderr and "--unsafe-root" in shown.stderr


def test_the_signed_request_the_banner_shows_is_answered_and_verifies_under_its_client_entry(
    tmp_path: Path,
) -> None:
    state, banner = tmp_path / "state", []
    with demo(state, banner) as (base, _):
        python, flag, code = banner_signed_command(banner)
        assert (python, flag) == ("python3", "-c") and base in code
        answered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=60)  # fmt: skip
        assert ask(base, "Elmo") == "Elmo is on the no-fly list and CAN NOT BOARD!\n"
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == "Big Bird is on the no-fly list and CAN NOT BOARD!\n"
    key = state / "demo-client.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and str(key) in code
    # What the owner would seal: the client's entry, which the policy parser takes as it is.
    entry = json.loads((state / "demo-client.public.json").read_text())
    policy = parse_policy(json.dumps({"clients": [entry]}).encode())
    with recorder() as (url, seen):
        sent = subprocess.run([sys.executable, "-c", code.replace(base, url)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    ((target, headers),) = seen
    verified = verify_request("GET", target, headers, b"", public_keys=policy.public_keys,
                              replay=ReplayCache())  # fmt: skip
    assert verified.client_id == entry["id"] == "demo-client"


def test_the_demo_shows_a_verified_signed_check_line_once_its_list_is_loaded(
    tmp_path: Path,
) -> None:
    printed: list[str] = []
    with demo(tmp_path / "state", everything=printed):
        time.sleep(3.0)  # the banner's check runs once the list is in service
    text = "".join(printed)
    line = next(line for line in text.splitlines() if line.strip().startswith("check:"))
    assert "check: verified: Big Bird is on the no-fly list and CAN NOT BOARD!" in line
    assert re.search(r"answer key [0-9a-f]{16} for this name and a fresh nonce", line)


def test_demo_restarts_on_its_state_with_the_same_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with demo(state) as (base, _):
        assert "CAN NOT BOARD" in ask(base, "elmo")
    key = (state / "demo-key.json").read_text()
    client_key = (state / "demo-client.key").read_bytes()
    with demo(state) as (base, _):
        assert "CAN NOT BOARD" in ask(base, "Elmo")
    assert (state / "demo-key.json").read_text() == key
    assert (state / "demo-client.key").read_bytes() == client_key
