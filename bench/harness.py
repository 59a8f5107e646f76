"""What the HTTP benchmarks share: seal a list, start the servers, read their memory, do sums.

Not a benchmark itself. ``noflylist serve`` runs exactly as in production except for the
enclave: ``--attestation simulated`` with the local KMS (``noflylist_simulator.kms_server``),
so start-up pays for the real work (an RSA key, a signed attestation document, a signed KMS
``Decrypt`` with a ``Recipient`` over loopback, a CMS answer, AES-GCM, the table build).
The baselines are started from ``bench/baseline_flask.py`` with the same names.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from enclave.credentials import CredentialProvider  # noqa: E402
from enclave.kms import KMSClient  # noqa: E402
from noflylist.clients import ClientPolicy  # noqa: E402
from noflylist.decision import answer  # noqa: E402
from noflylist.tools import seal  # noqa: E402
from noflylist_simulator.ca import load_or_create  # noqa: E402
from noflylist_simulator.kms_server import LocalKMS  # noqa: E402

REGION = "us-east-1"
SERVICE_ROLE = "arn:aws:iam::111122223333:role/noflylist-bench"
#: How long a server may take to answer /readyz (2M names: ~20 s of build on a busy VM).
READY_TIMEOUT = 300.0


@dataclass
class SealedList:
    """A list sealed under a local KMS key, and everything ``noflylist serve`` needs for it.

    Use as a context manager: the local KMS runs (in this process) until the block ends.
    ``names_file`` holds the same names, one a line, for the baseline.
    """

    names: Sequence[str]
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="noflylist-bench-")))
    #: Also seal a v3 envelope (the prebuilt table, keyed here), as ``envelope_v3``.
    v3: bool = False
    #: The client policy to seal with the list (issue 6/6); ``None``: an open list.
    clients: ClientPolicy | None = None

    def __enter__(self) -> SealedList:
        ca = load_or_create(self.folder / "ca")
        self._kms = LocalKMS(self.folder / "kms", simulator_root=ca.root, region=REGION)
        url = self._kms.start()
        credentials = self._kms.create_credentials(SERVICE_ROLE, session_token=True)
        # The role's keys as the service reads them; the sealer reads the same variables.
        self._credential_env = {
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "AWS_SESSION_TOKEN": credentials.session_token or "",
        }
        key_arn = self._kms.create_key(SERVICE_ROLE)
        sealer = KMSClient(REGION, CredentialProvider(self._credential_env), endpoint=url,
                           environ={})  # fmt: skip
        self.envelope = self.folder / "envelope.json"
        self.envelope.write_bytes(seal.seal_v2(self.names, sealer, key_arn, serial=1,
                                                   clients=self.clients))  # fmt: skip
        self.envelope_v3 = self.folder / "envelope.v3"
        if self.v3:
            self.envelope_v3.write_bytes(seal.seal_v3(self.names, sealer, key_arn, serial=1,
                                                         clients=self.clients))  # fmt: skip
        self.names_file = self.folder / "names.txt"
        self.names_file.write_text("".join(name + "\n" for name in self.names))
        self.key_arn, self.kms_url = key_arn, url
        return self

    def __exit__(self, *exc: object) -> None:
        self._kms.stop()

    def serve_command(self, port: int, tree: Path = REPO, *, v3: bool = False
                      ) -> tuple[list[str], dict[str, str]]:  # fmt: skip
        """``noflylist serve`` for this list, as argv and environment; ``tree`` is the source
        tree it runs from (another commit's, from :func:`checkout`, for an A/B run); ``v3``
        serves the v3 envelope."""
        # The simulator's NSM is run by its own entry point; a commit from before it had one
        # (an A/B baseline) ran it from `noflylist serve`.
        entry = "noflylist_simulator" if (tree / "noflylist_simulator").is_dir() else "noflylist"
        document = self.envelope_v3 if v3 else self.envelope
        argv = [sys.executable, "-m", entry, "serve", "--envelope", str(document),
                "--host", "127.0.0.1", "--port", str(port), "--attestation", "simulated",
                "--simulator-state", str(self.folder), "--refresh-interval", "0",
                "--key-id", self.key_arn]  # fmt: skip
        env = clean_environment()
        env.update({
            "PYTHONPATH": str(tree),
            "AWS_ENDPOINT_URL_KMS": self.kms_url,
            "AWS_REGION": REGION,
            **self._credential_env,
        })  # fmt: skip
        return argv, env


def clean_environment() -> dict[str, str]:
    """This environment without proxies or AWS settings that could change what runs."""
    return {k: v for k, v in os.environ.items()
            if not k.lower().endswith("_proxy") and not k.startswith("AWS_")}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    """A server process under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float

    def stop(self) -> None:
        """SIGTERM (every server here drains and exits on it), then SIGKILL after 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


#: With ``pin=True`` servers run on this CPU and the measuring client on the others, so
#: every server under comparison gets the same placement (on a 2-CPU machine, cross-process
#: comparisons otherwise differ by +-30 % with where the scheduler happens to wake each).
SERVER_CPU = 1


def pin_client() -> None:
    """Keep this process (the measuring client) off the servers' CPU."""
    others = set(os.sched_getaffinity(0)) - {SERVER_CPU}
    if others:
        os.sched_setaffinity(0, others)


def start(name: str, argv: list[str], env: dict[str, str], port: int, folder: Path,
          *, pin: bool = False, cwd: Path = REPO) -> Running:  # fmt: skip
    """Start a server with its output (access log included) going to a file."""
    if pin:
        argv = ["taskset", "--cpu-list", str(SERVER_CPU), *argv]
    log = folder / f"{name.replace('/', '_')}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   cwd=cwd, start_new_session=True)  # fmt: skip
    return Running(name, process, port, log, time.monotonic())


def start_noflylist(sealed: SealedList, folder: Path, *, pin: bool = False,
                    commit: str | None = None, match: str | None = None,
                    v3: bool = False) -> Running:  # fmt: skip
    """``noflylist serve`` from this tree, or from ``commit``'s (named ``noflylist@COMMIT``);
    ``match`` is its ``NOFLYLIST_MATCH`` (the default rule when None); ``v3`` serves the
    sealed table (named ``noflylist-v3``)."""
    port = free_port()
    tree = REPO if commit is None else checkout(commit, folder)
    argv, env = sealed.serve_command(port, tree, v3=v3)
    if match is not None:
        env["NOFLYLIST_MATCH"] = match
    name = "noflylist" if commit is None else f"noflylist@{commit}"
    name += "-v3" if v3 else ""
    return start(name, argv, env, port, folder, pin=pin, cwd=tree)


def checkout(commit: str, folder: Path) -> Path:
    """The service's source at ``commit``, exported into ``folder`` (``git archive``), so one
    run can measure two versions side by side: an A/B with the same machine noise on both."""
    tree = folder / f"tree-{commit}"
    if not tree.exists():
        tree.mkdir(parents=True)
        listed = subprocess.run(["git", "ls-tree", "--name-only", commit], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split()
        paths = [p for p in ("noflylist", "enclave", "noflylist_simulator") if p in listed]
        archive = subprocess.run(["git", "archive", commit, *paths], cwd=REPO,
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start_flask_dev(names_file: Path, folder: Path, *, pin: bool = False) -> Running:
    """The baseline under Flask's development server (threaded, as ``flask run``)."""
    port = free_port()
    argv = [sys.executable, str(BENCH / "baseline_flask.py"), "--names", str(names_file),
            "--port", str(port)]  # fmt: skip
    return start("flask-dev", argv, clean_environment(), port, folder, pin=pin)


def start_gunicorn(names_file: Path, folder: Path, workers: int = 2, threads: int = 4) -> Running:
    """The baseline under gunicorn: ``workers`` processes of ``threads`` threads (gthread)."""
    port = free_port()
    env = clean_environment()
    env["BASELINE_NAMES"] = str(names_file)
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers),
            "--threads", str(threads), "--worker-class", "gthread",
            "--bind", f"127.0.0.1:{port}", "--chdir", str(BENCH), "--log-level", "warning",
            "baseline_flask:create_app()"]  # fmt: skip
    return start("gunicorn", argv, env, port, folder)


def start_bare(folder: Path) -> Running:
    """A bare ``http.server`` handler (keep-alive, Nagle off, fixed answer): the ceiling."""
    port = free_port()
    argv = [sys.executable, str(BENCH / "baseline_bare.py"), "--port", str(port)]
    return start("bare-http.server", argv, clean_environment(), port, folder)


def http_get(port: int, target: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on a new connection: (status, body)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", target)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def wait_ready(server: Running, path: str, timeout: float = READY_TIMEOUT) -> float:
    """Poll ``path`` until it answers 200; seconds since the process started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited: see {server.log}")
        try:
            status, _ = http_get(server.port, path, timeout=2.0)
        except OSError:
            status = 0
        if status == 200:
            return time.monotonic() - server.started
        time.sleep(0.05)
    raise SystemExit(f"{server.name} not ready after {timeout:.0f} s: see {server.log}")


def check_answers(server: Running, listed: str, unlisted: str) -> None:
    """Refuse to benchmark a server that gives a wrong answer: every server must answer as
    the public demo does (``noflylist.table.answer``)."""
    from urllib.parse import quote

    for name, is_listed in ((listed, True), (unlisted, False)):
        status, body = http_get(server.port, "/enclave/passenger?name=" + quote(name))
        if status != 200 or body != answer(name, is_listed).encode():
            kind = "listed" if is_listed else "unlisted"
            raise SystemExit(f"{server.name} answered {status} {body[:80]!r} for a {kind} name")


def timed_requests(order: Sequence[tuple[Hashable, int, str]],
                   sign: Callable[[str], Mapping[str, str]] | None = None,
                   ) -> dict[Hashable, list[float]]:  # fmt: skip
    """For each ``(label, port, name)`` in order, GET ``/enclave/passenger?name=NAME`` from
    that port; seconds each, by label. One keep-alive connection a port (a new one whenever
    the server closes), so requests to several servers can be interleaved. ``sign``, given the
    target, returns headers to add (a client's request signature, made before the clock starts).

    Timed from the first byte sent to the last byte of the answer read, with Nagle off.
    """
    from urllib.parse import quote

    from loadgen import _read_response

    timings: dict[Hashable, list[float]] = {}
    sockets: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}
    try:
        for label, port, name in order:
            target = f"/enclave/passenger?name={quote(name)}"
            extra = "".join(f"{k}: {v}\r\n" for k, v in (sign(target) if sign else {}).items())
            request = f"GET {target} HTTP/1.1\r\nHost: b\r\n{extra}\r\n"
            start = time.perf_counter()
            sock = sockets.get(port)
            if sock is None:  # Flask's development server closes after every answer
                sock = sockets[port] = socket.create_connection(("127.0.0.1", port), timeout=60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending[port] = b""
            sock.sendall(request.encode())
            status, closes, pending[port] = _read_response(sock, pending[port])
            elapsed = time.perf_counter() - start
            if closes:
                sockets.pop(port).close()
            if status != 200:
                raise SystemExit(f"status {status} from port {port} for {label}")
            timings.setdefault(label, []).append(elapsed)
    finally:
        for sock in sockets.values():
            sock.close()
    return timings


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (gunicorn's workers)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{current}/task/{current}/children") as children:
                pids.extend(int(child) for child in children.read().split())
        except FileNotFoundError:
            continue
    return total


def peak_rss(pid: int) -> int:
    """The process's high-water resident bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> str:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import platform

    return (f"nproc={os.cpu_count()}, CPU={model}, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at start\n{code_version()}")  # fmt: skip


def code_version() -> str:
    """The commit measured, and which files of the service differ from it (if any)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout  # fmt: skip

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "noflylist", "enclave")
    files = ", ".join(line[3:] for line in changed.splitlines() if line.strip())
    return f"code: commit {git('rev-parse', '--short', 'HEAD').strip()}" + (
        f" with uncommitted changes to {files}" if files else "")


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
    """Welch's t statistic of two samples (dudect's test)."""
    va, vb = statistics.variance(a), statistics.variance(b)
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va / len(a) + vb / len(b))


def percentile(samples: Iterable[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]
