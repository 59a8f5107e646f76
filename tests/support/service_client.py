"""A minimal client of a running noflylist service, for end-to-end tests."""

from __future__ import annotations

import socket
import time
import urllib.parse
import urllib.request


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(base: str, timeout: float = 30.0) -> None:
    """Poll ``/readyz`` until it answers 200 (a list is in service)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} never became ready")


def ask(base: str, name: str) -> str:
    """The service's answer for ``name``, as text."""
    url = f"{base}/enclave/passenger?name={urllib.parse.quote(name)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))
