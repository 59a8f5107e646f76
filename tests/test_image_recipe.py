"""The image recipe keeps its promises before anything is built.

The build itself is checked by .ci/image/check.sh (two builds, compared; an audit of the
contents; a smoke test). These tests read the recipe: the runtime lock is exactly
cryptography and what it needs, with an installable wheel for every target; the Dockerfile's
base is pinned by digest and its final stage is the base plus one COPY. Wheel compatibility is
decided by ``packaging`` (pytest's own dependency), the library pip uses for it.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
PIP_LOCK = ROOT / "requirements" / "pip.lock"
DOCKERFILE = ROOT / "Dockerfile"

#: Debian 12 (python:3.12-slim's and CI's base) has glibc 2.36.
_GLIBC_MINOR = 36
#: (Python version, machine): the released image on both Nitro architectures, and CI's base.
TARGETS = [((3, 12), "x86_64"), ((3, 12), "aarch64"), ((3, 11), "x86_64"), ((3, 11), "aarch64")]


@dataclass
class Locked:
    """One requirement of a lock: its version, its hashes, and the wheels the comments name."""

    version: str
    hashes: list[str]
    wheels: dict[str, str]  # sha256 -> wheel file name, from the comment above the requirement


def read_lock(path: Path) -> dict[str, Locked]:
    """Parse a lock as relock.sh writes it (continuation lines joined)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    locked: dict[str, Locked] = {}
    wheels: dict[str, str] = {}
    for line in text.splitlines():
        comment = re.fullmatch(r"#\s+([0-9a-f]{64}) (\S+\.whl)", line)
        if comment:
            wheels[comment.group(1)] = comment.group(2)
        elif line and not line.startswith("#"):
            pin = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            assert pin, f"not a pinned requirement: {line!r}"
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
            locked[canonicalize_name(pin.group(1))] = Locked(pin.group(2), hashes, wheels)
            wheels = {}
    return locked


def _linux_tags(version: tuple[int, int], machine: str) -> set[Tag]:
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(_GLIBC_MINOR, 16, -1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    return set(cpython_tags(version, platforms=platforms)) | set(
        compatible_tags(version, "cp" + "".join(map(str, version)), platforms)
    )


def test_every_hash_in_the_locks_is_named_beside_its_wheel() -> None:
    for lock in (RUNTIME_LOCK, PIP_LOCK):
        for name, locked in read_lock(lock).items():
            assert locked.hashes, f"{name} has no hash"
            assert sorted(locked.wheels) == sorted(locked.hashes), name
            for wheel in locked.wheels.values():
                wheel_name, wheel_version, _, _ = parse_wheel_filename(wheel)
                assert (wheel_name, str(wheel_version)) == (name, locked.version), wheel


@pytest.mark.parametrize(("version", "machine"), TARGETS)
def test_the_lock_has_an_installable_wheel_of_each_package_for_each_target(
    version: tuple[int, int], machine: str
) -> None:
    supported = _linux_tags(version, machine)
    for name, locked in read_lock(RUNTIME_LOCK).items():
        fitting = [
            wheel
            for wheel in locked.wheels.values()
            if parse_wheel_filename(wheel)[3] & supported
        ]
        assert len(fitting) == 1, f"{name} for CPython {version} on {machine}: {fitting}"


def test_the_lock_does_not_install_on_other_systems_by_accident() -> None:
    """Nothing for Windows or macOS: the lock names Linux wheels for the two Nitro machines."""
    for locked in read_lock(RUNTIME_LOCK).values():
        for wheel in locked.wheels.values():
            for tag in parse_wheel_filename(wheel)[3]:
                linux = "linux" in tag.platform and tag.platform.endswith(("_x86_64", "_aarch64"))
                assert tag.platform == "any" or linux, wheel


def test_the_lock_is_cryptography_and_exactly_what_it_needs_on_cpython_312_linux() -> None:
    """The dependency closure of cryptography, read from the installed packages' metadata,
    with markers evaluated for CPython 3.12 on Linux, is the lock's set of names."""
    locked = read_lock(RUNTIME_LOCK)
    # The tests run on the image's versions (./test installs them from the lock), so the
    # metadata read here is that of the very wheels the image installs.
    installed = {name: importlib.metadata.version(name) for name in locked}
    assert installed == {name: entry.version for name, entry in locked.items()}, (
        "the tests must run on the versions requirements/runtime.lock pins: run them with ./test"
    )
    environment = {"python_version": "3.12", "python_full_version": "3.12.0",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "sys_platform": "linux", "platform_system": "Linux", "extra": ""}  # fmt: skip
    closure: set[str] = set()
    pending = ["cryptography"]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in closure:
            continue
        closure.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker or Marker("python_version >= '0'")
            if marker.evaluate(environment):
                pending.append(requirement.name)
    assert closure == set(locked)


def test_pip_is_pinned_by_exactly_one_hash_which_the_dockerfile_checks() -> None:
    locked = read_lock(PIP_LOCK)
    assert list(locked) == ["pip"]
    assert len(locked["pip"].hashes) == 1  # the Dockerfile's sha256sum check reads one
    wheel = locked["pip"].wheels[locked["pip"].hashes[0]]
    assert wheel == f"pip-{locked['pip'].version}-py3-none-any.whl"  # the name it builds


# -- the Dockerfile --------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    result = []
    for line in "\n".join(kept).replace("\\\n", " ").splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = [[]]
    for instruction in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found[1:]


def test_the_base_is_pinned_by_the_digest_of_its_index() -> None:
    header = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    bases = [rest for keyword, rest in header if keyword == "ARG" and rest.startswith("BASE=")]
    assert len(bases) == 1
    assert re.fullmatch(r"BASE=docker\.io/library/python:3\.12-slim@sha256:[0-9a-f]{64}", bases[0])
    assert [rest for keyword, rest in header if keyword == "FROM"] == [
        "${BASE} AS build",
        "${BASE}",
    ]


def test_the_final_stage_is_the_base_plus_one_copy_and_no_run() -> None:
    final = stages()[-1]
    keywords = [keyword for keyword, _ in final]
    assert "RUN" not in keywords  # a RUN leaves /etc/hosts, /etc/hostname, /etc/resolv.conf
    copies = [rest for keyword, rest in final if keyword in ("COPY", "ADD")]
    assert copies == ["--from=build /out/ /"]


def test_the_envelope_and_its_key_are_fixed_at_build_time() -> None:
    final = stages()[-1]
    assert ("ARG", "NOFLYLIST_ENVELOPE") in final
    assert ("ARG", "NOFLYLIST_KEY_ID") in final
    environment = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "NOFLYLIST_ENVELOPE=${NOFLYLIST_ENVELOPE}" in environment
    assert "NOFLYLIST_KEY_ID=${NOFLYLIST_KEY_ID}" in environment


def test_pip_installs_offline_by_name_with_hashes_and_no_bytecode() -> None:
    build = " ".join(rest for keyword, rest in stages()[0] if keyword == "RUN")
    for flag in ("--isolated", "--no-index", "--find-links wheels", "--only-binary=:all:",
                 "--require-hashes", "--no-deps", "--no-compile", "-r requirements/runtime.lock",
                 "sha256sum --check"):  # fmt: skip
        assert flag in build, flag
    assert not re.search(r"install\b[^;]*\.whl\b(?!/pip)", build)  # never a wheel by path
