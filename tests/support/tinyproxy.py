"""Debian's real ``tinyproxy`` as a test fixture: a forward proxy on a free loopback port.

Other test modules use it with ``from tests.support.tinyproxy import tinyproxy`` and a
``tinyproxy`` argument. The fixture is registered under the name "tinyproxy" whatever it is
imported as, so ``import tinyproxy as _tinyproxy_fixture  # noqa: F401`` keeps ruff quiet
(ruff's F811 flags a test argument with the same name as an import). The
fixture yields a :class:`Tinyproxy`; :func:`start_tinyproxy` is the same as a context manager
for tests that need special settings (allowed CONNECT ports, Basic credentials).

The package is listed in ``.ci/apt-packages``. A missing binary fails the test (with the fix in
the message) rather than skipping it, so CI can never pass without having run the proxy tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.service_client import free_port

START_TIMEOUT = 10.0  # seconds to wait for tinyproxy to accept connections
STOP_TIMEOUT = 5.0  # seconds to wait for tinyproxy to exit after SIGTERM (then SIGKILL)
PORT_ATTEMPTS = 3  # free-port races (another process takes the port first) retried this often
POLL_INTERVAL = 0.02  # seconds between readiness probes
VIA_NAME = "noflylist-test-proxy"  # tinyproxy adds "Via: 1.1 <this>" to proxied http requests


@dataclass
class Tinyproxy:
    """A running tinyproxy: where it listens and what it logged."""

    port: int
    log_file: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The proxy URL to put in ``https_proxy``/``http_proxy``."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything tinyproxy logged so far (requests appear as ``Request ...: CONNECT``)."""
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate tinyproxy and wait for it (bounded); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def _config(port: int, connect_ports: tuple[int, ...], basic_auth: tuple[str, str] | None) -> str:
    lines = [
        # As root tinyproxy drops privileges; nobody/nogroup exist on Debian.
        "User nobody",
        "Group nogroup",
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 15",
        "LogLevel Connect",  # one line per client request, which the tests look for
        "MaxClients 20",
        "Allow 127.0.0.1",
        f'ViaProxyName "{VIA_NAME}"',
    ]
    # No ConnectPort line means CONNECT to every port (the test server's port is random).
    lines += [f"ConnectPort {p}" for p in connect_ports]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    return "\n".join(lines) + "\n"


def _wait_listening(proxy: Tinyproxy) -> bool:
    """True once the port accepts connections; False if tinyproxy exited first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=1.0):
                return True
        except OSError:
            time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"tinyproxy did not listen within {START_TIMEOUT} s:\n{proxy.log()}")


@contextmanager
def start_tinyproxy(
    *, connect_ports: tuple[int, ...] = (), basic_auth: tuple[str, str] | None = None
) -> Iterator[Tinyproxy]:
    """Run tinyproxy in the foreground on a free loopback port until the block ends."""
    # Debian installs it in /usr/bin, which some minimal PATHs (e.g. in sudo) leave out.
    binary = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin")
    if binary is None:
        pytest.fail("tinyproxy is not installed (apt-get install tinyproxy; see .ci/apt-packages)")
    with tempfile.TemporaryDirectory(prefix="tinyproxy-") as tmp:
        config = Path(tmp) / "tinyproxy.conf"
        log_file = Path(tmp) / "tinyproxy.log"
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            config.write_text(_config(port, connect_ports, basic_auth))
            with log_file.open("wb") as log:
                # -d: stay in the foreground and log to stdout (kept in log_file).
                process = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            proxy = Tinyproxy(port, log_file, process)
            try:
                if _wait_listening(proxy):
                    yield proxy
                    return
            finally:
                proxy.stop()
        raise RuntimeError(f"tinyproxy would not start after {PORT_ATTEMPTS} tries:\n"
                           f"{log_file.read_text(errors='replace')}")


@pytest.fixture(name="tinyproxy")
def tinyproxy() -> Iterator[Tinyproxy]:
    """A running tinyproxy that allows CONNECT to any port, stopped after the test."""
    with start_tinyproxy() as proxy:
        yield proxy
