"""Smoke test of the built enclave image: it starts, imports what it needs, lacks what it must
not carry, and serves a list sealed under a local KMS, refusing one sealed under another key.

The image rightly carries no simulator and there is no /dev/nsm here, so the service runs with
``--attestation unsafe-none`` against the simulator's local KMS (running here, outside the
image) under a key whose policy lets the enclave role decrypt without attestation. Processes
in the image run with ``buildah run --isolation chroot``, which shares this machine's loopback.

    python3 .ci/image/smoke.py --root R --runroot RR [--driver overlay] [--image IMAGE]

Every wait is bounded; the service is stopped through its own process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from enclave.credentials import CredentialProvider  # noqa: E402
from enclave.kms import KMSClient  # noqa: E402
from noflylist import __version__  # noqa: E402
from noflylist.tools import seal  # noqa: E402
from noflylist_simulator.ca import load_or_create  # noqa: E402
from noflylist_simulator.kms_server import LocalKMS  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "111122223333"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/noflylist-operator"
ENCLAVE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/noflylist-enclave"
NAMES = ("Big Bird", "Oscar the Grouch", "Count von Count")
#: A command inside the image (import, --version) finishes well within this.
COMMAND_TIMEOUT = 60.0
#: The service starts and loads a three-name list in about a second; this allows a slow machine.
READY_TIMEOUT = 30.0
#: How long the refused case gets to (wrongly) become ready; its first load fails at once.
REFUSED_WAIT = 5.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.2


class SmokeFailure(Exception):
    """The image did not behave; the message says how."""


class Buildah:
    """``buildah`` on one private storage, and one working container of the image."""

    def __init__(self, root: str, runroot: str, driver: str, image: str) -> None:
        self._base = ["buildah", "--root", root, "--runroot", runroot, "--storage-driver", driver]
        self.container = self._call("from", "--pull-never", "--quiet", image).stdout.strip()

    def _call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._base, *args], capture_output=True, text=True, check=True,
                              timeout=COMMAND_TIMEOUT)  # fmt: skip

    def run_argv(self, command: list[str], *, env: dict[str, str], mounts: list[str]) -> list[str]:
        options = ["--isolation", "chroot"]
        for name, value in env.items():
            options += ["--env", f"{name}={value}"]
        for mount in mounts:
            options += ["--volume", mount]
        return [*self._base, "run", *options, self.container, "--", *command]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_argv(list(command), env={}, mounts=[]),
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)  # fmt: skip

    def remove(self) -> None:
        self._call("rm", self.container)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextmanager
def _service(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group; end that group (ours) on the way out."""
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=STOP_TIMEOUT)


def _wait_ready(port: int, process: subprocess.Popen[bytes], deadline: float) -> tuple[int, str]:
    """Poll /readyz until 200, the process exits, or the deadline; return the last answer."""
    answer = (0, "no answer")
    while time.monotonic() < deadline and process.poll() is None:
        try:
            answer = _get(f"http://127.0.0.1:{port}/readyz")
        except OSError as exc:
            answer = (0, f"no answer: {exc}")
        if answer[0] == 200:
            break
        time.sleep(POLL_INTERVAL)
    return answer


def check_commands(image: Buildah) -> None:
    """``noflylist --version``, the service's imports, and no simulator."""
    version = image.run("noflylist", "--version")
    if version.returncode != 0 or __version__ not in version.stdout + version.stderr:
        raise SmokeFailure(f"noflylist --version: {version.stdout}{version.stderr}")
    print(f"smoke: noflylist --version -> {(version.stdout + version.stderr).strip()}")
    imports = image.run(
        "python3", "-c", "import noflylist.transport.server, noflylist.service, enclave.nsm"
    )
    if imports.returncode != 0:
        raise SmokeFailure(f"importing the service failed:\n{imports.stderr}")
    for absent in ("noflylist_simulator", "noflylist.tools", "noflylist.client"):
        probe = f"import importlib.util; print(importlib.util.find_spec({absent!r}))"
        found = image.run("python3", "-c", probe)
        if found.returncode != 0 or found.stdout.strip() != "None":
            raise SmokeFailure(
                f"{absent} must not ship, yet looking for it gave: exit "
                f"{found.returncode}, {found.stdout.strip()!r} {found.stderr.strip()!r}"
            )
    print("smoke: the service imports; the simulator, the client and the tools are absent")


def _policy() -> str:
    operator = {"Sid": "Operator", "Effect": "Allow", "Principal": {"AWS": OPERATOR},
                "Action": "kms:*", "Resource": "*"}  # fmt: skip
    # Unattested decryption for the smoke test only: a real policy requires the PCRs.
    enclave_role = {"Sid": "EnclaveUnattested", "Effect": "Allow",
                    "Principal": {"AWS": ENCLAVE_ROLE}, "Action": "kms:Decrypt",
                    "Resource": "*"}  # fmt: skip
    return json.dumps({"Version": "2012-10-17", "Statement": [operator, enclave_role]})


def check_service(image: Buildah, work: Path) -> None:
    """Serve a sealed list and answer queries; refuse a list sealed under a key not pinned."""
    pinned_in_image = image.run("sh", "-c", 'echo "$NOFLYLIST_KEY_ID"').stdout.strip()
    ca = load_or_create(work / "ca")
    with LocalKMS(work / "kms", simulator_root=ca.root, region=REGION, account=ACCOUNT) as kms:
        # The operator's key, and a key of someone who can replace the envelope.
        key_arn = kms.create_key(OPERATOR, policy_document=_policy())
        other_arn = kms.create_key(OPERATOR, policy_document=_policy())
        operator = kms.create_credentials(OPERATOR)
        operator_env = {"AWS_ACCESS_KEY_ID": operator.access_key_id,
                        "AWS_SECRET_ACCESS_KEY": operator.secret_access_key}  # fmt: skip
        sealer = KMSClient(REGION, CredentialProvider(operator_env), endpoint=kms.url,
                           environ={})  # fmt: skip
        mounted = work / "mounted"
        mounted.mkdir()
        (mounted / "envelope.json").write_bytes(
            seal.seal_v2(list(NAMES), sealer, key_arn, serial=1)
        )
        (mounted / "other.json").write_bytes(seal.seal_v2([], sealer, other_arn, serial=2))
        role = kms.create_credentials(ENCLAVE_ROLE, session_token=True)
        env = {
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": role.access_key_id,
            "AWS_SECRET_ACCESS_KEY": role.secret_access_key,
            "AWS_SESSION_TOKEN": role.session_token or "",
            "AWS_ENDPOINT_URL_KMS": kms.url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        mounts = [f"{mounted}:/run/noflylist:ro"]

        def serve(port: int, name: str, *pin: str) -> list[str]:
            command = ["noflylist", "serve", "--attestation", "unsafe-none", "--port", str(port),
                       "--envelope", f"/run/noflylist/{name}", "--refresh-interval", "0",
                       *pin]  # fmt: skip
            return image.run_argv(command, env=env, mounts=mounts)

        port = _free_port()
        with _service(serve(port, "envelope.json", "--key-id", key_arn), work / "a.log") as process:
            status, text = _wait_ready(port, process, time.monotonic() + READY_TIMEOUT)
            if status != 200:
                log = (work / "a.log").read_text(errors="replace")
                raise SmokeFailure(f"the service did not become ready: {status} {text}\n{log}")
            listed = _get(f"http://127.0.0.1:{port}/enclave/passenger?name=big+bird")
            cleared = _get(f"http://127.0.0.1:{port}/enclave/passenger?name=Kermit")
        if listed != (200, "big bird is on the no-fly list and CAN NOT BOARD!\n"):
            raise SmokeFailure(f"a listed name was answered {listed}")
        if cleared != (200, "Kermit is cleared to fly. Enjoy your flight!\n"):
            raise SmokeFailure(f"a cleared name was answered {cleared}")
        print(f"smoke: served the list ({text.strip()}); 'big bird' -> {listed[1].strip()!r}")

        # An empty list sealed under another key (which the enclave role may use) replaces
        # the envelope: with the pin, KMS refuses it, and screening fails closed.
        _expect_refusal(serve, "other.json", ("--key-id", key_arn), work, "IncorrectKey")
        # The pin the image was built with (NOFLYLIST_KEY_ID) is in force without any flag.
        _expect_refusal(serve, "envelope.json", (), work, pinned_in_image)


def _expect_refusal(
    serve: Callable[..., list[str]], name: str, pin: tuple[str, ...], work: Path, reason: str
) -> None:
    port = _free_port()
    with _service(serve(port, name, *pin), work / "refused.log") as process:
        status, text = _wait_ready(port, process, time.monotonic() + REFUSED_WAIT)
        screened = _get(f"http://127.0.0.1:{port}/enclave/passenger?name=Kermit")
    if status == 200 or screened[0] != 503:
        raise SmokeFailure(f"{name} under pin {pin or 'of the image'} was served: {text}")
    if not reason or reason not in text:
        raise SmokeFailure(f"{name} was refused, but not for naming {reason!r}: {text}")
    print(f"smoke: {name} with {' '.join(pin) or 'the image pin'}: refused: {text.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--runroot", required=True)
    parser.add_argument("--driver", default="overlay")
    parser.add_argument("--image", default="localhost/noflylist:check")
    args = parser.parse_args(argv)
    image = Buildah(args.root, args.runroot, args.driver, args.image)
    try:
        with tempfile.TemporaryDirectory(prefix="noflylist-smoke-") as folder:
            check_commands(image)
            check_service(image, Path(folder))
    except SmokeFailure as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        image.remove()
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
