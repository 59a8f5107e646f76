"""The local KMS's persisted state: keys, aliases, grants and credentials in one 0600 JSON file.

Key material and credentials are kept IN CLEAR in the state folder (a file of mode 0600):
this is a development tool that protects nothing. Never give it a real secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from noflylist_simulator.files import (
    PRIVATE_FILE_MODE,
    PRIVATE_FOLDER_MODE,
    shared_mode,
    write_atomically,
)
from noflylist_simulator.kms_errors import LocalKMSError

__all__ = ["STATE_FILE", "STATE_FILE_MODE", "Credential", "Grant", "Key", "State"]

#: The state file (keys, aliases, grants, credentials); only its owner may read it.
STATE_FILE = "kms-state.json"
#: Owner only, like the folder it is in (created if missing).
STATE_FILE_MODE = PRIVATE_FILE_MODE
_STATE_FORMAT = 1


@dataclass
class Key:
    """One symmetric key: its AES-256 ``material``, policy (JSON text) and enabled flag."""

    key_id: str
    arn: str
    material: bytes = field(repr=False)
    created: float
    description: str
    enabled: bool
    policy: str


@dataclass(frozen=True)
class Grant:
    """A grant on the key ``key_id``: ``grantee_principal`` may call ``operations`` (KMS's
    operation names, ``Decrypt``) on it (:mod:`~noflylist_simulator.kms_grants`)."""

    grant_id: str
    key_id: str
    grantee_principal: str
    operations: tuple[str, ...]
    retiring_principal: str | None
    name: str
    created: float


@dataclass(frozen=True)
class Credential:
    """A stored SigV4 secret (and session token, like an assumed role's) and whose it is."""

    secret: str = field(repr=False)
    session_token: str | None = field(repr=False)
    principal_arn: str


class State:
    """Keys, aliases, grants and credentials in one JSON file, rewritten after every change.

    The file is the simulator's own, trusted like its folder: it is checked for an owner-only
    mode, its format and its region and account, not field by field. Hold ``lock`` while
    reading or changing ``keys``, ``aliases``, ``grants`` or ``credentials``. A file
    written before grants were modelled has no ``grants``: it loads with none.
    """

    def __init__(self, folder: Path, region: str, account: str) -> None:
        self.folder, self.region, self.account = folder, region, account
        self.path = folder / STATE_FILE
        self.lock = threading.Lock()
        self.keys: dict[str, Key] = {}
        self.aliases: dict[str, str] = {}
        self.grants: dict[str, Grant] = {}
        self.credentials: dict[str, Credential] = {}
        folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        mode = shared_mode(self.path)
        if mode is not None:
            raise LocalKMSError(f"{self.path} may be read by others (mode {mode:o}): chmod 600 it")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data["format"] != _STATE_FORMAT:
                raise ValueError(f"format {data['format']!r}")
            where = (data["region"], data["account"])
            for key_id, k in data["keys"].items():
                material = base64.b64decode(k.pop("material"), validate=True)
                self.keys[key_id] = Key(material=material, **k)
            self.aliases = dict(data["aliases"])
            for grant_id, g in data.get("grants", {}).items():
                self.grants[grant_id] = Grant(**g | {"operations": tuple(g["operations"])})
            self.credentials = {a: Credential(**c) for a, c in data["credentials"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise LocalKMSError(
                f"the local KMS state {self.path} is unreadable ({exc.__class__.__name__}): "
                "restore it, or delete it to start over"
            ) from None
        if where != (self.region, self.account):
            raise LocalKMSError(
                f"{self.path} holds keys of region {where[0]}, account {where[1]}: start with "
                "those, or use another state folder"
            )

    def save(self) -> None:
        """Rewrite the file; call with ``lock`` held."""
        keys = {
            key_id: asdict(k) | {"material": base64.b64encode(k.material).decode()}
            for key_id, k in self.keys.items()
        }
        data = {
            "format": _STATE_FORMAT, "region": self.region, "account": self.account,
            "keys": keys, "aliases": self.aliases,
            "grants": {grant_id: asdict(g) for grant_id, g in self.grants.items()},
            "credentials": {a: asdict(c) for a, c in self.credentials.items()},
        }  # fmt: skip
        write_atomically(
            self.path, json.dumps(data, indent=1, sort_keys=True).encode(), STATE_FILE_MODE
        )
