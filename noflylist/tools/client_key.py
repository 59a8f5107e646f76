"""``noflylist client-key new``: a client's Ed25519 key pair, and the entry its owner registers.

A list sealed with a client policy is screened only for the clients in it (issue 20). A
client makes its key pair here, keeps the private key, and sends the list's owner the other
file, which the owner pastes into the ``clients`` list of the policy file that ``noflylist
seal --clients FILE`` reads::

    noflylist client-key new --id acme-checkin --out keys/
    keys/acme-checkin.key          PEM PKCS8, unencrypted, mode 0600: stays on the client
    keys/acme-checkin.public.json  {"id", "public_key", "names_per_minute", "names_per_day"}

The private key is written with mode 0600 from the moment the file exists (``os.open`` with
``O_CREAT | O_EXCL``; never chmod after writing), and neither file is ever overwritten: a key
that replaced another would lock its client out, or sign for a client whose key was meant to
be retired. The budgets in the public file are the client's request; the owner decides.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from enclave.errors import NoflylistError
from noflylist.cli import Handler
from noflylist.clients import CLIENT_ID, MAX_BUDGET

__all__ = ["ClientKeyError", "add_commands", "new_client_key"]

#: What a client asks for unless it says otherwise: ten names a second, a large airline's day.
DEFAULT_NAMES_PER_MINUTE = 600
DEFAULT_NAMES_PER_DAY = 100_000
#: The private key: its owner reads and writes it, nobody else (``load_client_key`` refuses
#: any group or other bit).
KEY_FILE_MODE = 0o600
#: The public entry: meant to be sent, so anyone may read it.
PUBLIC_FILE_MODE = 0o644
#: Create a new file, never follow or replace what is there.
_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)  # fmt: skip


class ClientKeyError(NoflylistError):
    """``client-key`` cannot do what was asked; the message names the flag or file, and the fix."""


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Handler]:
    """Register ``client-key new``; return command name -> handler."""
    parser = commands.add_parser(
        "client-key",
        help="make a client's key pair for a list sealed with a client policy",
        description="Keys of the clients a list's owner lets screen names (noflylist seal "
        "--clients).",
    )
    actions = parser.add_subparsers(dest="client_key_action", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new",
        help="make an Ed25519 key pair: ID.key (keep) and ID.public.json (send to the owner)",
        description="Write DIR/ID.key (the private key: PEM PKCS8, mode 0600, never sent) and "
        "DIR/ID.public.json (the entry the list's owner adds to the clients of the policy "
        "file). Existing files are never overwritten.",
    )
    new.add_argument(
        "--id", required=True, dest="client_id", metavar="ID",
        help="the client's id, its signatures' keyid (1 to 64 of A-Z a-z 0-9 . _ -)",
    )  # fmt: skip
    new.add_argument(
        "--out", default=".", metavar="DIR", help="where to write both files (default: .)"
    )
    new.add_argument(
        "--names-per-minute", type=int, default=DEFAULT_NAMES_PER_MINUTE, metavar="N",
        help=f"the budget asked for (default {DEFAULT_NAMES_PER_MINUTE})",
    )  # fmt: skip
    new.add_argument(
        "--names-per-day", type=int, default=DEFAULT_NAMES_PER_DAY, metavar="N",
        help=f"the budget asked for (default {DEFAULT_NAMES_PER_DAY})",
    )  # fmt: skip
    return {"client-key": _client_key}


def _client_key(args: argparse.Namespace) -> int:
    # Only "new" exists; argparse refuses any other action before this runs.
    key_path, public_path = new_client_key(
        args.client_id, Path(args.out),
        names_per_minute=args.names_per_minute, names_per_day=args.names_per_day,
    )  # fmt: skip
    print(f"private key: {key_path} (mode 0600). Keep it on the client; never send it.",
          file=sys.stderr)  # fmt: skip
    print(
        f"client entry: {public_path}. Send this file (not the .key) to the list's owner, "
        'who adds it to the "clients" list of the policy file and seals the list with '
        "noflylist seal --clients FILE:",
        file=sys.stderr,
    )
    print(public_path.read_text(encoding="ascii"), end="", file=sys.stderr)
    print(
        f"then: noflylist check URL NAME --client-id {args.client_id} --client-key {key_path} "
        "--expect-pcr 0=...",
        file=sys.stderr,
    )
    return 0


def new_client_key(
    client_id: str, out: Path, *, names_per_minute: int, names_per_day: int
) -> tuple[Path, Path]:
    """Make a key pair and write ``out/ID.key`` and ``out/ID.public.json``; both paths.

    Nothing is written unless both files can be created; neither replaces a file. The checks
    of the id and the budgets are the policy's (:func:`noflylist.clients.parse_policy`), so
    the entry is one the owner's ``seal --clients`` takes (tests/test_client_keys.py).
    """
    if not CLIENT_ID.fullmatch(client_id):
        raise ClientKeyError(
            "--id must be 1 to 64 of A-Z a-z 0-9 . _ - (it is the signatures' keyid and a "
            "label in /metrics)"
        )
    for flag, value in (("--names-per-minute", names_per_minute),
                        ("--names-per-day", names_per_day)):  # fmt: skip
        if not 1 <= value <= MAX_BUDGET:
            raise ClientKeyError(f"{flag} must be an integer in 1..{MAX_BUDGET}")
    if not out.is_dir():
        raise ClientKeyError(f"--out: {out} is not a directory; create it (mkdir -m 700 {out})")
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    entry = {
        "id": client_id,
        "public_key": base64.b64encode(raw).decode("ascii"),
        "names_per_minute": names_per_minute,
        "names_per_day": names_per_day,
    }
    public_text = json.dumps(entry, indent=2) + "\n"
    key_path, public_path = out / f"{client_id}.key", out / f"{client_id}.public.json"
    key_fd = _create(key_path, KEY_FILE_MODE)
    try:
        public_fd = _create(public_path, PUBLIC_FILE_MODE)
    except ClientKeyError:
        os.close(key_fd)
        key_path.unlink()  # empty, and ours: O_EXCL created it just now
        raise
    try:
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        _write(key_fd, pem)
        del pem
        _write(public_fd, public_text.encode("ascii"))
    except OSError as exc:
        for path in (key_path, public_path):
            path.unlink(missing_ok=True)
        raise ClientKeyError(f"--out: writing in {out} failed: {exc.strerror}") from None
    finally:
        os.close(key_fd)
        os.close(public_fd)
    return key_path, public_path


def _create(path: Path, mode: int) -> int:
    """A new file with ``mode`` (less the umask) from its first moment; never an existing one."""
    try:
        return os.open(path, _CREATE, mode)
    except FileExistsError:
        raise ClientKeyError(
            f"{path} already exists; it is not overwritten (a client's key is replaced by "
            "registering a new one): choose another --id or --out, or move the old file away"
        ) from None
    except OSError as exc:
        raise ClientKeyError(f"--out: cannot create {path}: {exc.strerror}") from None


def _write(fd: int, data: bytes) -> None:
    """All of ``data``, then flushed to disk: a key that is lost in a crash is a lock-out."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)
