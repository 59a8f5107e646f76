"""The audit boundary holds: what ``serve`` runs is small, and the decision is one file.

* ``noflylist serve``, run as a process and asked every route, imports no client or
  operator tool, no attestation verifier and no simulator (``python -X importtime`` lists
  every module a process imports, lazily imported ones included);
* :mod:`noflylist.decision` is at most 400 lines, imports only the standard library and
  :mod:`noflylist.matchkey` (itself the standard library and the base error), and no other
  runtime module looks a name up;
* :mod:`noflylist.wire`, shared with clients, imports nothing of the server.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from noflylist import envelope, wire
from tests.support.service_client import free_port

ROOT = Path(__file__).resolve().parent.parent
#: What the image leaves out (.dockerignore, Dockerfile): serve must not need any of it.
NOT_IN_THE_IMAGE = (
    "noflylist.tools", "noflylist.client", "noflylist_simulator", "enclave.simulator"
)  # fmt: skip
#: The runtime packages: the image's Python.
RUNTIME = ("noflylist", "enclave")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports at its top level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _runtime_files() -> list[Path]:
    files = [*(ROOT / "enclave").glob("*.py"), *(ROOT / "noflylist").glob("*.py")]
    files += (ROOT / "noflylist" / "transport").glob("*.py")
    return sorted(files)


def _image_files() -> list[Path]:
    """The runtime files and the data they read (noflylist/data/, the match rule's tables)."""
    return sorted([*_runtime_files(), *(ROOT / "noflylist" / "data").glob("*.txt")])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_serve_imports_no_tool_verifier_or_simulator_while_it_answers_every_route(
    tmp_path: Path,
) -> None:
    envelope_file = tmp_path / "envelope.json"
    envelope_file.write_text("not yet an envelope\n")  # loads fail: the failure path runs too
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(NOFLYLIST_ENVELOPE=str(envelope_file), NOFLYLIST_ATTESTATION="unsafe-none",
               NOFLYLIST_PORT=str(port), AWS_REGION="eu-west-1",
               AWS_ACCESS_KEY_ID="AKIDAUDITSHAPE", AWS_SECRET_ACCESS_KEY="s" * 40,
               AWS_ENDPOINT_URL_KMS="http://127.0.0.1:9")  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "noflylist", "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        statuses = {}
        for _ in range(300):
            try:
                statuses["/readyz"] = _get(base + "/readyz")
                break
            except OSError:
                if process.poll() is not None:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
        for path in ("/", "/healthz", "/metrics", "/enclave/passenger?name=Big+Bird",
                     "/no/such/route"):  # fmt: skip
            statuses[path] = _get(base + path)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert statuses == {"/readyz": 503, "/": 200, "/healthz": 200, "/metrics": 200,
                        "/enclave/passenger?name=Big+Bird": 503, "/no/such/route": 404}, stderr
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", stderr, re.M))
    # A positive control, so that a change in -X importtime's output cannot pass this test.
    assert {"noflylist.decision", "noflylist.routes", "noflylist.transport.server",
            "enclave.kms"} <= imported  # fmt: skip
    # A package and its modules, not every name that starts alike (noflylist.clients is in
    # the image; noflylist.client is not).
    leaked = sorted(name for name in imported
                    if any(name == p or name.startswith(p + ".") for p in NOT_IN_THE_IMAGE))
    assert leaked == [], "serve imported code that is not in the image"


def test_the_decision_is_one_small_file_of_standard_library_code() -> None:
    path = ROOT / "noflylist" / "decision.py"
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"noflylist/decision.py has {lines} lines; the promise is at most 400"
    imported = _imports(path) - {"__future__"}
    project = {"noflylist", "noflylist.matchkey"}  # `from noflylist import matchkey`
    assert project <= imported
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported - project)
    keys = _imports(ROOT / "noflylist" / "matchkey.py") - {"__future__", "enclave.errors"}
    assert keys and all(name.split(".")[0] in sys.stdlib_module_names for name in keys)


def test_no_runtime_module_but_the_decision_looks_a_name_up() -> None:
    """The table's look-ups are called in :mod:`noflylist.decision` and nowhere else."""
    callers = sorted(
        str(path.relative_to(ROOT))
        for path in _runtime_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in ("contains", "contains_normalised", "contains_any")
        and isinstance(getattr(node, "ctx", None), ast.Load)
        and path.name != "table.py"  # its contains() is contains_normalised(normalize(...))
    )  # fmt: skip
    assert callers == ["noflylist/decision.py"]


def test_the_transport_imports_neither_the_routes_nor_the_decision() -> None:
    """The direction is service -> routes -> decision, and service -> transport: the socket
    code is handed the routes, so it cannot decide anything itself."""
    files = sorted((ROOT / "noflylist" / "transport").glob("*.py"))
    imported = {name for path in files for name in _imports(path)}
    assert "noflylist.transport.framing" in imported  # a positive control
    assert sorted(imported & {"noflylist.routes", "noflylist.decision", "noflylist.lists",
                              "noflylist.table"}) == []  # fmt: skip


def _attribute_assignments(path: Path) -> set[tuple[str, str, str]]:
    """``(file, enclosing class or "-", attribute)`` for every attribute assigned in ``path``."""
    found: set[tuple[str, str, str]] = set()

    def visit(node: ast.AST, owner: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for target in targets:
                    for item in target.elts if isinstance(target, ast.Tuple) else [target]:
                        if isinstance(item, ast.Attribute):
                            found.add((path.name, owner, item.attr))
            visit(child, child.name if isinstance(child, ast.ClassDef) else owner)

    visit(ast.parse(path.read_text()), "-")
    return found


def test_only_a_connection_changes_its_own_state() -> None:
    """One owner per state machine: a connection's fields (and its framer's) are assigned in
    the methods of :class:`~noflylist.transport.connection.Connection` (the framer's also in
    :class:`~noflylist.transport.framing.RequestFramer`), nowhere else in the transport; the
    loop asks and commands, and a Connection has a framer rather than being one."""
    from noflylist.transport.connection import Connection
    from noflylist.transport.framing import RequestFramer

    assert not issubclass(Connection, RequestFramer)
    owners = {name: {"Connection"} for name in Connection.__slots__}
    owners.update({name: {"Connection", "RequestFramer"} for name in RequestFramer.__slots__})
    assigned = set().union(*(_attribute_assignments(path) for path in
                             (ROOT / "noflylist" / "transport").glob("*.py")))  # fmt: skip
    # Positive controls: a state change, and one made by a tuple assignment.
    assert {("connection.py", "Connection", "deadline"),
            ("framing.py", "RequestFramer", "searched")} <= assigned  # fmt: skip
    stray = sorted(entry for entry in assigned
                   if entry[2] in owners and entry[1] not in owners[entry[2]])  # fmt: skip
    assert stray == [], "only a Connection's methods may change its state"


def test_the_wire_format_imports_nothing_of_the_server() -> None:
    imported = _imports(ROOT / "noflylist" / "wire.py") - {"__future__"}
    project = {name for name in imported if name.split(".")[0] in RUNTIME}
    assert project == {"enclave", "enclave.errors"}  # `from enclave import cbor`
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported - project)


def test_the_wire_format_and_the_envelope_agree_on_the_largest_serial() -> None:
    assert wire.MAX_SERIAL == envelope.MAX_COUNT


def test_the_auditors_reading_order_lists_every_file_of_the_image_with_its_true_line_count() -> (
    None
):
    rows = re.findall(r"^\| `([^`]+)` \| ([\d,]+) \|", (ROOT / "docs" / "audit.md").read_text(),
                      re.M)  # fmt: skip
    listed = {path: int(count.replace(",", "")) for path, count in rows}
    assert len(listed) == len(rows), "a file is listed twice"
    image = {str(path.relative_to(ROOT)) for path in _image_files()}
    assert sorted(set(listed) ^ image) == [], "docs/audit.md and the image's files differ"
    wrong = {path: (count, len((ROOT / path).read_text().splitlines()))
             for path, count in listed.items()
             if count != len((ROOT / path).read_text().splitlines())}  # fmt: skip
    assert wrong == {}, "docs/audit.md's line counts (listed, actual); fix the table"
