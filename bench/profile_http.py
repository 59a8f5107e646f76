"""Where does ``noflylist serve`` spend its time under load? py-spy while wrk loads it.

Starts ``noflylist serve`` on the demo's 15 names, loads it with wrk (16 keep-alive
connections, an unlisted name) and samples every thread of the server with py-spy
(``--idle`` off, so waiting threads do not count) for the same seconds. Prints the share of
samples by function where it was running ("self"), and by function anywhere on the stack
("inclusive"), grouped by module, so one can read what each feature costs: framing, the
selector loop, the GIL hand-offs between the loop and the workers, normalisation, the table,
metrics, the access log.

Needs ``py-spy`` (pip) and permission to trace the child (root, or ptrace_scope 0).
Run from the repository root::

    python3 bench/profile_http.py [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

from noflylist.tools.demo import SAMPLE_NAMES

TOP = 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}")
    folder = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    raw = folder / "profile.txt"
    with harness.SealedList(SAMPLE_NAMES) as sealed:
        server = harness.start_noflylist(sealed, folder)
        try:
            harness.wait_ready(server, "/readyz")
            url = f"http://127.0.0.1:{server.port}/enclave/passenger?name=Kermit"
            loadgen.run(url, connections=args.connections, seconds=2, keep_alive=True)
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.process.pid),
                                    "--duration", str(args.seconds), "--rate", "250",
                                    "--format", "raw", "--output", str(raw), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            result = loadgen.run(url, connections=args.connections, seconds=args.seconds,
                                 keep_alive=True)  # fmt: skip
            _, errors = spy.communicate(timeout=args.seconds + 30)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed: {errors.decode()[-500:]}")
        finally:
            server.stop()
    print(f"load during profiling: {result.requests_per_second:.0f} req/s, p50 "
          f"{result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms (py-spy --nonblocking slows "
          "the server a little)")  # fmt: skip
    summarise(raw)


def summarise(raw: Path) -> None:
    """Aggregate py-spy's collapsed stacks ("frame;frame;... count" lines)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")[1:]]  # drop the thread name
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"\n{total} samples of running threads\n\nself (where the CPU was):")
    for frame, count in own.most_common(TOP):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print("\ninclusive (anywhere on the stack), our code only:")
    ours = [(f, c) for f, c in inclusive.most_common() if "noflylist/" in f or "enclave/" in f]
    for frame, count in ours[:TOP]:
        print(f"  {100 * count / total:5.1f} %  {frame}")


def _short(frame: str) -> str:
    """``function (path/to/module.py:line)`` -> ``function (module.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


if __name__ == "__main__":
    main()
