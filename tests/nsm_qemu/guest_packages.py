"""Copies installed distributions, and every distribution they need, into the QEMU guest.

    .venv/bin/python tests/nsm_qemu/guest_packages.py DEST pytest cbor2 cryptography

run.sh calls it while building the initramfs. It copies whole distributions, each file that the
distribution's RECORD lists under its site-packages folder, so the guest gets each package's
``*.dist-info`` with its code: pytest (9.2 and later) reads pluggy's version from that metadata
at start-up, and a copy of the import packages alone made the guest fail with
``PackageNotFoundError: pluggy``. The closure follows each distribution's requirements with
markers evaluated for this interpreter, which is the guest's Python version (run.sh checks).
Scripts outside site-packages (``bin/pytest``) and bytecode are left out: run.sh byte-compiles
for the guest's interpreter.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(roots: list[str]) -> list[importlib.metadata.Distribution]:
    """The named distributions and everything they require here, each once."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        distribution = importlib.metadata.distribution(name)
        found[name] = distribution
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return [found[name] for name in sorted(found)]


def copy_distribution(distribution: importlib.metadata.Distribution, dest: Path) -> int:
    """Copy the distribution's files that lie in its site-packages folder; return how many."""
    copied = 0
    for file in distribution.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue
        source = Path(str(file.locate()))
        target = dest / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        copied += 1
    return copied


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.exit("usage: guest_packages.py DEST DISTRIBUTION...")
    dest = Path(argv[1])
    try:
        distributions = closure(argv[2:])
    except importlib.metadata.PackageNotFoundError as exc:
        sys.exit(f"guest_packages: {exc.name} is not installed for {sys.executable}: run ./test")
    for distribution in distributions:
        count = copy_distribution(distribution, dest)
        print(f"{distribution.metadata['Name']} {distribution.version}: {count} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
