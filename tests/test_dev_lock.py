"""requirements/dev.lock keeps its promises: every machine that runs ./test gets the same tools.

./test installs the dev lock and the runtime lock with pip --require-hashes --no-deps, so the
two must together hold a wheel of every package setup.cfg's ``dev`` extra and pyproject.toml's
build need, for CPython 3.11 (Debian 12's python3) on x86_64 and aarch64, at a version the
requirement accepts, and each hash must name its wheel. ``pip check`` in ./test then proves the
transitive closure is whole; .ci/relock_dev.py writes the lock.
"""

from __future__ import annotations

import configparser
import re
import tomllib

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.test_image_recipe import ROOT, RUNTIME_LOCK, _linux_tags, read_lock

DEV_LOCK = ROOT / "requirements" / "dev.lock"
#: The interpreter and machines the dev lock is for (.ci/relock_dev.py's PYTHON and MACHINES).
PYTHON = (3, 11)
MACHINES = ("x86_64", "aarch64")


def markers() -> dict[str, Marker]:
    """The environment marker of each requirement of the dev lock that has one."""
    text = DEV_LOCK.read_text(encoding="utf-8")
    found = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ ; ([^\\\n]+?) *\\$", text, re.M)
    return {canonicalize_name(name): Marker(marker) for name, marker in found}


def needed_on(machine: str) -> set[str]:
    """Names of the dev lock's packages that pip installs on ``machine``."""
    environment = {"platform_machine": machine, "python_version": "3.11", "extra": ""}
    conditions = markers()
    return {
        name
        for name in read_lock(DEV_LOCK)
        if name not in conditions or conditions[name].evaluate(environment)
    }


def direct_requirements() -> list[Requirement]:
    """setup.cfg's install_requires and ``dev`` extra, and pyproject.toml's build requires."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = setup["options"]["install_requires"].splitlines()
    lines += setup["options.extras_require"]["dev"].splitlines()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lines += build["build-system"]["requires"]
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_every_hash_in_the_dev_lock_is_named_beside_its_wheel() -> None:
    for name, locked in read_lock(DEV_LOCK).items():
        assert locked.hashes, f"{name} has no hash"
        assert sorted(locked.wheels) == sorted(locked.hashes), name
        for wheel in locked.wheels.values():
            wheel_name, wheel_version, _, _ = parse_wheel_filename(wheel)
            assert (wheel_name, str(wheel_version)) == (name, locked.version), wheel


@pytest.mark.parametrize("machine", MACHINES)
def test_the_dev_lock_has_one_installable_wheel_of_each_package_on_each_machine(
    machine: str,
) -> None:
    supported = _linux_tags(PYTHON, machine)
    locked = read_lock(DEV_LOCK)
    for name in needed_on(machine):
        wheels = locked[name].wheels.values()
        fitting = [wheel for wheel in wheels if parse_wheel_filename(wheel)[3] & supported]
        assert len(fitting) == 1, f"{name} for CPython 3.11 on {machine}: {fitting}"


def test_the_dev_lock_leaves_the_runtime_packages_to_the_runtime_lock() -> None:
    """The tests run on the image's cryptography, cffi and pycparser, and on no second pin."""
    assert not set(read_lock(DEV_LOCK)) & set(read_lock(RUNTIME_LOCK))


@pytest.mark.parametrize("machine", MACHINES)
def test_the_two_locks_satisfy_every_direct_requirement_on_each_machine(machine: str) -> None:
    versions = {name: entry.version for name, entry in read_lock(RUNTIME_LOCK).items()}
    dev = read_lock(DEV_LOCK)
    versions |= {name: dev[name].version for name in needed_on(machine)}
    environment = {"platform_machine": machine, "platform_system": "Linux",
                   "python_version": "3.11", "extra": ""}  # fmt: skip
    for requirement in direct_requirements():
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{requirement} is in neither lock: run .ci/relock_dev.py"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"{requirement}: the locks pin {versions[name]}; run .ci/relock_dev.py"
        )
