"""The QEMU guest gets exactly the project files ``tests/nsm_qemu/guest_files.txt`` names.

Stop 23's CI failed five minutes in, inside the guest, with ``No module named
'noflylist.answer_format'``: the client package had gained an import that the guest's copy
list did not have. Here the same list is copied into an empty folder and ``guest_tests.py`` is
imported from it in a fresh interpreter whose path holds that folder and the installed
third-party packages only, so the next such miss fails in the fast tier with the module's name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tests" / "nsm_qemu" / "guest_files.txt"

#: Run in the child: keep only the copy and the interpreter's own and site directories, so
#: neither the checkout nor an editable install can supply a project module the list lacks.
CHILD = """
import importlib.util, sys
copy = sys.argv[1]
sys.path[:] = [copy] + [p for p in sys.path[1:] if p.startswith(sys.base_prefix) or
                        "site-packages" in p]
for finder in list(sys.meta_path):
    if "editable" in type(finder).__module__ or "__editable__" in repr(finder):
        sys.meta_path.remove(finder)
path = copy + "/tests/nsm_qemu/guest_tests.py"
spec = importlib.util.spec_from_file_location("guest_tests", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for name in ("enclave", "noflylist"):
    origin = sys.modules[name].__file__
    assert origin.startswith(copy), (name, origin)
print("ok")
"""


def listed_paths() -> list[str]:
    lines = LIST.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def import_guest_tests_from_copy(
    folder: Path, paths: list[str]
) -> subprocess.CompletedProcess[str]:
    """Copy ``paths`` into ``folder`` as run.sh does and import guest_tests.py from there."""
    for path in paths:
        source = ROOT / path
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
    )


def test_every_listed_path_exists() -> None:
    missing = [path for path in listed_paths() if not (ROOT / path).exists()]
    assert missing == []


def test_guest_tests_import_from_exactly_the_listed_files(tmp_path: Path) -> None:
    result = import_guest_tests_from_copy(tmp_path, listed_paths())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_a_missing_file_is_caught(tmp_path: Path) -> None:
    """The check fails when the list leaves out a module the client imports."""
    paths = [path for path in listed_paths() if path != "noflylist/answer_format.py"]
    result = import_guest_tests_from_copy(tmp_path, paths)
    assert result.returncode != 0
    assert "noflylist.answer_format" in result.stderr
