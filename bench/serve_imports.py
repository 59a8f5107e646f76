"""Which project modules ``noflylist serve`` imports, and how many lines they hold.

Runs ``noflylist serve`` from a source tree (this one, or ``--commit C``'s, exported with
``git archive`` for a before/after in one run) under ``python -X importtime``, asks every
route once (the list never loads: unsafe-none against a closed KMS port, so the failure path
runs too), stops it and sums the lines of every imported module of ``noflylist``,
``enclave`` and ``noflylist_simulator``. This is the audit's size: what an auditor must read
to know what the enclave runs. The 2/5 issue's target is at most 6,500 lines.

    python3 bench/serve_imports.py [--commit COMMIT] [--list]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = ("noflylist", "enclave", "noflylist_simulator")
TARGET_LINES = 6500


def tree_at(commit: str, folder: Path) -> Path:
    listed = subprocess.run(["git", "ls-tree", "--name-only", commit], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    archive = subprocess.run(["git", "archive", commit, *(p for p in PROJECT if p in listed)],
                             cwd=REPO, capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def serve_imports(tree: Path) -> dict[str, int]:
    """Module name to line count, for the project modules that serve imported."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="serve-imports-"))
    (folder / "envelope.json").write_text("not an envelope\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(tree), NOFLYLIST_ENVELOPE=str(folder / "envelope.json"),
               NOFLYLIST_ATTESTATION="unsafe-none", NOFLYLIST_PORT=str(port),
               AWS_REGION="eu-west-1", AWS_ACCESS_KEY_ID="AKIDSERVEIMPORTS",
               AWS_SECRET_ACCESS_KEY="s" * 40, AWS_ENDPOINT_URL_KMS="http://127.0.0.1:9")
    # -S: no site-packages' editable finder may supply a module the tree does not hold;
    # cryptography comes from the site-packages folders named on PYTHONPATH instead.
    import site

    env["PYTHONPATH"] += os.pathsep + os.pathsep.join(site.getsitepackages())
    process = subprocess.Popen([sys.executable, "-S", "-X", "importtime", "-m", "noflylist",
                                "serve"], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    for path in ("/readyz", "/", "/healthz", "/metrics", "/enclave/passenger?name=Elmo"):
        while True:
            try:
                urllib.request.urlopen(base + path, timeout=5).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("serve did not start") from None
                time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", stderr, re.M))
    counts = {}
    for name in sorted(n for n in names if n.split(".")[0] in PROJECT):
        base_path = tree.joinpath(*name.split("."))
        file = base_path / "__init__.py" if base_path.is_dir() else base_path.with_suffix(".py")
        counts[name] = len(file.read_text().splitlines())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", help="also measure this commit, as the baseline")
    parser.add_argument("--list", action="store_true", help="print every module")
    args = parser.parse_args()
    runs = {"this tree": serve_imports(REPO)}
    if args.commit:
        runs[args.commit] = serve_imports(tree_at(args.commit, Path(tempfile.mkdtemp())))
    for label, counts in runs.items():
        if args.list:
            for name, lines in counts.items():
                print(f"  {lines:6d} {name}")
        print(f"{label}: {sum(counts.values()):,} lines in {len(counts)} modules")
    now = sum(runs["this tree"].values())
    verdict = "met" if now <= TARGET_LINES else "MISSED"
    print(f"target: at most {TARGET_LINES:,} lines: {now:,}  {verdict}")
    if args.commit:
        print(f"ratio this tree / {args.commit}: {now / sum(runs[args.commit].values()):.3f}")


if __name__ == "__main__":
    main()
