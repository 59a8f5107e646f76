"""``noflylist seal``: the list owner's tool that encrypts a list into an envelope.

Not in the enclave image: the enclave only opens envelopes (:mod:`noflylist.envelope`, which
documents both formats). Sealing asks KMS ``GenerateDataKey`` for a fresh data key (through
botocore where it is installed, for its credential chain: profiles, SSO; else through our own
:class:`enclave.kms.KMSClient`), encrypts the list under it and forgets it; the envelope keeps
only the KMS-encrypted copy of the key.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.errors import NoflylistError
from enclave.kms import DataKey
from noflylist import matchkey
from noflylist.cli import Handler, setup_logging
from noflylist.clients import ClientPolicy, ClientPolicyError, parse_policy
from noflylist.envelope import (
    DATA_KEY_BYTES,
    DEFAULT_ENCRYPTION_CONTEXT,
    FORMAT_V2,
    FORMAT_V3,
    MAX_COUNT,
    NONCE_BYTES,
    V3_MAGIC,
    EnvelopeError,
    canonical_header,
    is_count,
)
from noflylist.table import ScreeningError, build_parts

log = logging.getLogger("noflylist")


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Handler]:
    """Register ``seal``; return command name -> handler."""
    _add_seal(commands)
    return {"seal": _seal}


# -- the envelope --------------------------------------------------------------------------


class DataKeySource(Protocol):
    """What makes a data key: :class:`enclave.kms.KMSClient` (or botocore, operator-side)."""

    def generate_data_key(
        self, key_id: str, *, encryption_context: Mapping[str, str] | None = None
    ) -> DataKey: ...


def seal_v2(
    names: Iterable[str],
    kms: DataKeySource,
    key_id: str,
    *,
    serial: int,
    encryption_context: Mapping[str, str] = DEFAULT_ENCRYPTION_CONTEXT,
    now: datetime | None = None,
    clients: ClientPolicy | None = None,
) -> bytes:
    """Encrypt ``names`` into a v2 envelope under a fresh KMS data key, then forget the key.
    ``clients``: who may ask, and how much (sealed in the header); ``None``: an open list."""
    if not is_count(serial):
        raise EnvelopeError(f"the serial must be an integer in 0..{MAX_COUNT}")
    lines = [_one_line(name) for name in names]
    key_arn, data_key, blob = _new_data_key(kms, key_id, encryption_context)
    header: dict[str, Any] = {
        "format": FORMAT_V2,
        "key_id": key_arn,
        "serial": serial,
        "created": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "entries": len(lines),
        "encryption_context": dict(encryption_context),
        "data_key_ciphertext": _b64(blob),
        **_clients_field(clients),
    }
    nonce = os.urandom(NONCE_BYTES)
    plaintext = "".join(line + "\n" for line in lines).encode("utf-8")
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, canonical_header(header))
    del data_key, plaintext
    document = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    return json.dumps(document, indent=1).encode() + b"\n"


def seal_v3(
    names: Iterable[str],
    kms: DataKeySource,
    key_id: str,
    *,
    serial: int,
    rule: str = matchkey.DEFAULT_RULE,
    encryption_context: Mapping[str, str] = DEFAULT_ENCRYPTION_CONTEXT,
    now: datetime | None = None,
    clients: ClientPolicy | None = None,
) -> bytes:
    """Key ``names`` under ``rule``, build their table here and seal it into a v3 envelope
    (:mod:`noflylist.envelope`) under a fresh KMS data key, then forget the key.

    The enclave then decrypts the table and serves it, with no keying at start. The table is
    keyed under this Python's Unicode version: the service refuses it if its own differs
    (the log line says the rule identity to match)."""
    if not is_count(serial):
        raise EnvelopeError(f"the serial must be an integer in 0..{MAX_COUNT}")
    try:
        parts = build_parts((_one_line(name) for name in names), rule)
    except ScreeningError as exc:
        raise EnvelopeError(str(exc)) from None
    key_arn, data_key, blob = _new_data_key(kms, key_id, encryption_context)
    header: dict[str, Any] = {
        "format": FORMAT_V3,
        "key_id": key_arn,
        "serial": serial,
        "created": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "entries": parts.entries,
        "stored_keys": parts.stored_keys,
        "skipped_empty": parts.skipped_empty,
        "rule": matchkey.rule_identity(rule),
        "encryption_context": dict(encryption_context),
        "data_key_ciphertext": _b64(blob),
        **_clients_field(clients),
    }
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, parts.key + parts.slots, canonical_header(header))
    del data_key, parts
    line = json.dumps({**header, "nonce": _b64(nonce)}, ensure_ascii=True)
    return V3_MAGIC + line.encode("ascii") + b"\n" + ciphertext


def seal_fernet(names: Iterable[str], kms: DataKeySource, key_id: str) -> bytes:
    """Write the public demo's format (comma-separated names; no serial, no key id)."""
    listed = [_one_line(name) for name in names]
    if any("," in name for name in listed):
        raise EnvelopeError("the fernet format separates names with commas; use --format v2")
    _, data_key, blob = _new_data_key(kms, key_id, None)
    token = Fernet(base64.b64encode(data_key)).encrypt(",".join(listed).encode("utf-8"))
    del data_key
    document = {"data-key-ciphertext-base64": _b64(blob), "aes-ciphertext-base64": token.decode()}
    return json.dumps(document).encode() + b"\n"


def _new_data_key(
    kms: DataKeySource, key_id: str, context: Mapping[str, str] | None
) -> tuple[str, bytes, bytes]:
    key = kms.generate_data_key(key_id, encryption_context=context)
    if key.plaintext is None or len(key.plaintext) != DATA_KEY_BYTES:
        raise EnvelopeError(f"KMS did not return a {DATA_KEY_BYTES}-byte data key")
    return key.key_id, key.plaintext, key.ciphertext_blob


def _clients_field(clients: ClientPolicy | None) -> dict[str, str]:
    """The header's ``clients`` field: the policy's canonical bytes, base64; none when open."""
    return {} if clients is None else {"clients": _b64(clients.canonical)}


def _one_line(name: str) -> str:
    stripped = name.strip()
    if not stripped or "\n" in stripped or "\r" in stripped:
        raise EnvelopeError("every listed name must be one non-empty line")
    return stripped


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- the command ------------------------------------------------------------------------


def _add_seal(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    seal = commands.add_parser(
        "seal",
        help="encrypt a list into an envelope (operator side)",
        description="Encrypt a list (one name a line) under a fresh KMS data key; the data "
        "key is forgotten once the envelope is written.",
    )
    seal.add_argument("--key-id", required=True, help="KMS key id, ARN or alias")
    seal.add_argument("--input", default="-", help="list file, one name a line (default: stdin)")
    seal.add_argument("--output", default="-", help="envelope file (default: stdout)")
    seal.add_argument(
        "--format",
        choices=("v2", "v3", "fernet"),
        default="v2",
        help="v2: the names, keyed by the service at each load (default); v3: the table, "
        "keyed here, loaded in well under a second at millions of names, but only by a "
        "service with this Python's Unicode version (the service says so if not); fernet: "
        "the public demo's",
    )
    seal.add_argument(
        "--match",
        choices=matchkey.RULES,
        default=matchkey.DEFAULT_RULE,
        help=f"v3: the match rule to key under, the service's --match (default "
        f"{matchkey.DEFAULT_RULE})",
    )
    seal.add_argument(
        "--clients",
        default=None,
        metavar="FILE",
        help="v2, v3: the client policy, who may ask and how much (JSON: "
        '{"clients": [{"id", "public_key", "names_per_minute", "names_per_day"}]}); '
        "without it the list is served open, to anyone who reaches the port",
    )
    seal.add_argument(
        "--serial",
        type=int,
        default=None,
        help="envelope serial; must exceed the one in service (default: the Unix time now)",
    )
    seal.add_argument(
        "--profile", default=None, help="AWS profile (needs botocore: pip install botocore)"
    )


class _BotocoreDataKeys:
    """GenerateDataKey through botocore, for its credential chain (profiles, SSO)."""

    def __init__(self, profile: str | None) -> None:
        import botocore.session
        from botocore.exceptions import BotoCoreError

        session = botocore.session.Session(profile=profile)
        # botocore reads AWS_DEFAULT_REGION and the profile; the other SDKs also AWS_REGION.
        region = session.get_config_variable("region") or os.environ.get("AWS_REGION")
        try:
            self._client = session.create_client("kms", region_name=region)
        except BotoCoreError as exc:
            raise NoflylistError(f"cannot make a KMS client with botocore: {exc}") from None

    def generate_data_key(
        self, key_id: str, *, encryption_context: Mapping[str, str] | None = None
    ) -> DataKey:
        kwargs: dict[str, object] = {"KeyId": key_id, "KeySpec": "AES_256"}
        if encryption_context:
            kwargs["EncryptionContext"] = dict(encryption_context)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.generate_data_key(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise NoflylistError(f"KMS GenerateDataKey through botocore failed: {exc}") from None
        return DataKey(answer["KeyId"], answer["CiphertextBlob"], answer["Plaintext"], None)


def _data_key_source(profile: str | None) -> DataKeySource:
    try:
        return _BotocoreDataKeys(profile)
    except ImportError:
        if profile:
            raise NoflylistError("--profile needs botocore: pip install botocore") from None
    from enclave.credentials import CredentialProvider, resolve_region
    from enclave.kms import KMSClient

    return KMSClient(resolve_region(), CredentialProvider())


def _seal(args: argparse.Namespace) -> int:
    setup_logging()
    source = sys.stdin.buffer if args.input == "-" else Path(args.input).open("rb")
    with source:
        text = source.read().decode("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    clients = _read_clients(args.clients, args.format)
    kms = _data_key_source(args.profile)
    if args.format == "fernet":
        document = seal_fernet(names, kms, args.key_id)
        serial = 0
    elif args.format == "v3":
        serial = int(time.time()) if args.serial is None else args.serial
        document = seal_v3(names, kms, args.key_id, serial=serial, rule=args.match, clients=clients)
        log.info("keyed under match rule %s", matchkey.rule_identity(args.match))
    else:
        serial = int(time.time()) if args.serial is None else args.serial
        document = seal_v2(names, kms, args.key_id, serial=serial, clients=clients)
    del names, text
    if args.output == "-":
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    else:
        _write_atomically(Path(args.output), document)
    log.info(
        "sealed %d bytes of envelope (%s format, serial %d) under %s to %s",
        len(document),
        args.format,
        serial,
        args.key_id,
        args.output,
    )
    return 0


def _read_clients(path: str | None, form: str) -> ClientPolicy | None:
    """The owner's client policy file, checked here as the enclave will check it; or a
    warning that the list will be served open."""
    if path is None:
        log.warning(
            "sealing without --clients: the list will be served OPEN, to anyone who reaches "
            "the port, without limit; asking is reading (a dictionary of common names reads "
            "the list out), so name who may ask and how much with --clients FILE"
        )
        return None
    if form == "fernet":
        raise NoflylistError(
            "--clients: the public demo's fernet format has no place for a client policy; "
            "seal --format v2 or v3"
        )
    try:
        policy = parse_policy(Path(path).read_bytes())
    except OSError as exc:
        raise NoflylistError(f"--clients: cannot read {path}: {exc.strerror}") from None
    except ClientPolicyError as exc:
        raise NoflylistError(f"--clients {path}: {exc}") from None
    log.info(
        "client policy %s: %d client(s) may ask: %s",
        policy.sha256.hex()[:16],
        len(policy.clients),
        ", ".join(
            f"{c.id} ({c.names_per_minute}/min, {c.names_per_day}/day)" for c in policy.clients
        ),
    )
    return policy


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
