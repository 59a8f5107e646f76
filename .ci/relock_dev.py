"""Regenerates requirements/dev.lock: the test and development tools, pinned with hashes.

    .venv/bin/python .ci/relock_dev.py            # keep the current pins, add what is new
    .venv/bin/python .ci/relock_dev.py --upgrade  # take the newest releases that fit

Run it with the project's environment (``./test`` makes ``.venv``): it needs CPython 3.11, the
interpreter the lock is for (Debian 12's python3), and ``packaging`` to evaluate markers.

Why each step:
1. pip resolves ``.[dev]`` and the build requirements of pyproject.toml on this interpreter,
   binary wheels only, under requirements/runtime.lock as constraints: the tests run on the
   cryptography the image pins. pip refuses hashes in a constraints file once an editable
   requirement is present (hashes turn on hash-checking mode), so the constraints are the bare
   ``name==version`` lines. Without --upgrade the current dev.lock's pins are constraints too.
2. The closure of those requirements is walked from pip's report once for each machine
   (x86_64, aarch64), markers evaluated for that machine: a package needed on only one machine
   (atheris, whose wheels exist only for x86_64) gets a ``platform_machine`` marker.
3. pip downloads, for each machine, the wheel a Debian 12 (glibc 2.36) CPython 3.11 would
   choose for each pin, and the lock records the sha256 of each file, named in a comment.
Review the diff before committing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements" / "dev.lock"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
#: The interpreter the lock is for: Debian 12's python3, the tests' and the QEMU guest's.
PYTHON = (3, 11)
#: The machines of the lock: CI and most laptops, and Graviton (the Nitro hosts' other one).
MACHINES = ("x86_64", "aarch64")
#: Debian 12 has glibc 2.36; pip on it prefers the newest manylinux tag, then older ones.
GLIBC_MINORS = range(36, 16, -1)

HEADER = """\
# The test and development tools: setup.cfg's `dev` extra with everything it needs, and the
# setuptools and wheel that build the editable install. ./test installs exactly these, with
# requirements/runtime.lock (whose cryptography, cffi and pycparser the tests run on, as the
# image does), by pip --require-hashes --no-deps into .venv, so every machine runs the same
# pytest, pluggy, hypothesis, moto, ruff and mypy from the same files. The hashes are those of
# the wheels for CPython 3.11 (Debian 12's python3) on x86_64 and aarch64; the comment above
# each requirement names the wheel of each hash.
#
# To regenerate: .venv/bin/python .ci/relock_dev.py (keeps these pins, adds what a new
# requirement needs) or with --upgrade (the newest releases). Review the diff before committing.
"""


def bare_pins(lock: Path) -> list[str]:
    """The ``name==version`` lines of a lock, without markers or hashes."""
    return re.findall(r"^([A-Za-z0-9_.-]+==[^ ;\\]+)", lock.read_text(encoding="utf-8"), re.M)


def resolve(constraints: list[str], work: Path) -> dict[str, object]:
    """pip's report of what it would install for ``.[dev]`` and the build requirements."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    build_requires = build["build-system"]["requires"]
    constraint_file = work / "constraints.txt"
    constraint_file.write_text("\n".join(constraints) + "\n", encoding="utf-8")
    report = work / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
         "--only-binary=:all:", "--report", str(report), "-c", str(constraint_file),
         "-e", f"{ROOT}[dev]", *build_requires],
        check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(report.read_text(encoding="utf-8"))
    return result


def closure(report: dict[str, object], machine: str) -> set[str]:
    """Canonical names of everything the requested packages need on ``machine``."""
    environment = dict(report["environment"])  # type: ignore[call-overload]
    environment["platform_machine"] = machine
    installs = {canonicalize_name(item["metadata"]["name"]): item for item in report["install"]}  # type: ignore[attr-defined]
    pending: list[tuple[str, frozenset[str]]] = []
    for item in installs.values():
        if item["requested"]:
            extras = frozenset(item.get("requested_extras") or ())
            pending.append((canonicalize_name(item["metadata"]["name"]), extras))
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in installs[name]["metadata"].get("requires_dist") or []:
            requirement = Requirement(text)
            marker = requirement.marker or Marker("python_version >= '0'")
            if any(marker.evaluate({**environment, "extra": e}) for e in {"", *extras}):
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in seen}


def download(pins: list[str], machine: str, dest: Path) -> None:
    """The wheel pip on a Debian 12 CPython 3.11 on ``machine`` would take for each pin."""
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in GLIBC_MINORS]
    platforms.append(f"manylinux2014_{machine}")
    version = "".join(map(str, PYTHON))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--implementation", "cp", "--python-version", version, "--dest", str(dest),
         *(arg for platform in platforms for arg in ("--platform", platform)), *pins],
        check=True,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="ignore the current pins")
    arguments = parser.parse_args()
    if sys.version_info[:2] != PYTHON:
        sys.exit(f"relock_dev: run with CPython {PYTHON[0]}.{PYTHON[1]} (.venv/bin/python), "
                 f"the interpreter the lock is for; this is {sys.version.split()[0]}")  # fmt: skip
    runtime = {canonicalize_name(pin.partition("==")[0]) for pin in bare_pins(RUNTIME_LOCK)}
    constraints = bare_pins(RUNTIME_LOCK)
    if DEV_LOCK.exists() and not arguments.upgrade:
        constraints += bare_pins(DEV_LOCK)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        report = resolve(constraints, work)
        versions = {canonicalize_name(item["metadata"]["name"]):
                    (item["metadata"]["name"], item["metadata"]["version"])
                    for item in report["install"]}  # type: ignore[attr-defined]  # fmt: skip
        needed = {machine: closure(report, machine) - runtime - {"noflylist"}
                  for machine in MACHINES}  # fmt: skip
        hashes: dict[str, dict[str, str]] = {}  # name -> {sha256: wheel file name}
        for machine in MACHINES:
            dest = work / machine
            download([f"{versions[n][0]}=={versions[n][1]}" for n in sorted(needed[machine])],
                     machine, dest)  # fmt: skip
            for wheel in sorted(dest.iterdir()):
                name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
                digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
                hashes.setdefault(name, {})[digest] = wheel.name
    lines = [HEADER]
    for name in sorted(set().union(*needed.values())):
        spelled, version = versions[name]
        machines = [machine for machine in MACHINES if name in needed[machine]]
        marker = ""
        if len(machines) < len(MACHINES):
            marker = " ; " + " or ".join(f'platform_machine == "{m}"' for m in machines)
        lines += [f"#   {digest} {wheel}" for digest, wheel in hashes[name].items()]
        requirement = f"{spelled}=={version}{marker}"
        lines.append(" \\\n".join([requirement, *(f"    --hash=sha256:{d}" for d in hashes[name])]))
        lines.append("")
    DEV_LOCK.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    subprocess.run(["git", "--no-pager", "diff", "--stat", "--", str(DEV_LOCK)], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
