"""A commit that changes only what the image does not hold leaves the image's epoch, so PCR0,
alone; one that changes what it holds moves it (``.ci/image/inputs-epoch.sh``).

The image build is reproducible given its inputs and ``SOURCE_DATE_EPOCH`` (the image stage of
``.ci/run`` builds it twice and compares, and ``noflylist eif build`` is deterministic given the
image), so the epoch is the only way a commit outside the inputs could reach PCR0. Here a
scratch repository with this checkout's real ``.dockerignore`` gets one commit after another,
each at its own committer time, and the script must answer the last input commit's time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "image" / "inputs-epoch.sh"
START = 1_700_000_000


def commit(repo: Path, path: str, when: int) -> None:
    file = repo / path
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a") as out:
        out.write(f"# changed at {when}\n")
    env = {**os.environ, "GIT_AUTHOR_DATE": f"@{when} +0000",
           "GIT_COMMITTER_DATE": f"@{when} +0000"}  # fmt: skip
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example",
                    "commit", "-q", "-m", f"change {path}"], check=True, env=env)  # fmt: skip


def epoch(repo: Path) -> int:
    done = subprocess.run(["bash", str(SCRIPT), str(repo)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return int(done.stdout)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    commit(tmp_path, "Dockerfile", START)
    return tmp_path


@pytest.mark.parametrize(
    "outside",
    ["README.md", "docs/deploy.md", "tests/test_x.py", "bench/bench_x.py",
     "noflylist/tools/seal.py", "noflylist/client/attestation.py",
     "noflylist_simulator/nsm.py", ".ci/run", "requirements/dev.lock"],
)  # fmt: skip
def test_a_commit_outside_the_image_leaves_the_epoch(repo: Path, outside: str) -> None:
    commit(repo, "noflylist/decision.py", START + 10)
    assert epoch(repo) == START + 10
    commit(repo, outside, START + 20)
    assert epoch(repo) == START + 10


@pytest.mark.parametrize(
    "inside",
    ["noflylist/decision.py", "noflylist/transport/loop.py", "enclave/kms.py",
     "noflylist/data/fold-1-tables.txt",
     "requirements/runtime.lock", "requirements/pip.lock", "Dockerfile", ".dockerignore",
     "enclaver.yaml"],
)  # fmt: skip
def test_a_commit_to_what_the_image_holds_moves_the_epoch(repo: Path, inside: str) -> None:
    commit(repo, "README.md", START + 10)
    assert epoch(repo) == START  # the control: the documentation commit did not count
    commit(repo, inside, START + 20)
    assert epoch(repo) == START + 20
