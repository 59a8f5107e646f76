"""How many listed names can still be read in the memory of a running ``noflylist serve``?

``tests/test_secrecy.py`` proves that no *live* Python object holds a listed name once the
list is loaded. Freed memory is another matter: Python cannot wipe a ``str`` or ``bytes``
before it is freed, and the allocator keeps freed memory for reuse without clearing it. This
measures that residue from outside: it starts the service on synthetic names, waits until it
is ready, reads every writable anonymous mapping and the heap of the process through
``/proc/PID/mem``, and counts how many of a sample of listed names occur there, as written.

(Inside a Nitro Enclave no other process can read this memory; the residue matters only
if the service itself has a memory-disclosure bug.)

Run from the repository root (root or ptrace permission needed)::

    python3 bench/memory_remnants.py [--sizes 1000,100000,2000000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from bench_screening import synthetic_names

SIZES = (1000, 100_000, 2_000_000)
#: Listed names looked for in each process's memory.
SAMPLE = 200


def readable_names(pid: int, probes: list[bytes]) -> tuple[int, int]:
    """(probes found, bytes scanned) over the heap and anonymous writable mappings."""
    regions = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split()
            low, high = (int(x, 16) for x in parts[0].split("-"))
            anonymous = len(parts) < 6 or parts[5] == "[heap]"
            if parts[1].startswith("rw") and anonymous:
                regions.append((low, high))
    found: set[bytes] = set()
    scanned = 0
    with open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for low, high in regions:
            memory.seek(low)
            try:
                data = memory.read(high - low)
            except OSError:
                continue
            scanned += len(data)
            found.update(probe for probe in probes if probe in data)
    return len(found), scanned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    print(harness.machine())
    print(f"command: python3 {' '.join(sys.argv)}\n")
    folder = Path(tempfile.mkdtemp(prefix="bench-remnants-"))
    for size in (int(s) for s in args.sizes.split(",")):
        names = synthetic_names(size, random.Random(args.seed))
        probes = [name.encode() for name in random.Random(size).sample(names, SAMPLE)]
        with harness.SealedList(names) as sealed:
            del names
            server = harness.start_noflylist(sealed, folder)
            try:
                harness.wait_ready(server, "/readyz")
                found, scanned = readable_names(server.process.pid, probes)
            finally:
                server.stop()
        print(f"{size:>9} names: {found} of {len(probes)} sampled listed names readable in "
              f"{scanned / 2**20:.0f} MiB of the ready service's heap and anonymous memory",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
