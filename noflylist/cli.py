"""The ``noflylist`` command line (also ``python -m noflylist``).

* ``serve``: the service (inside the enclave, or locally with the simulator);
* ``seal``: the operator's tool that encrypts a list into an envelope;
* ``demo``: everything at once on this machine, with the local enclave simulator;
* ``verify``, ``check``, ``policy``: trust tools for clients and operators (:mod:`noflylist.trust`);
* ``measure``, ``eif build``: operator tools (:mod:`noflylist.tools`), not in the enclave image.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.kms import DataKey
from noflylist import __version__, envelope, trust
from noflylist.config import OPTIONS, build_serve_config

log = logging.getLogger("noflylist")


class _JSONFormatter(logging.Formatter):
    """One JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def setup_logging(log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# -- serve -------------------------------------------------------------------------------


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the screening service")
    for name, option in OPTIONS.items():
        serve.add_argument(
            option.flag, dest=name, default=None, help=f"{option.help} [{option.variable}]"
        )


def _serve(args: argparse.Namespace) -> int:
    from noflylist.app import Service

    flags = {name: getattr(args, name) for name in OPTIONS}
    config = build_serve_config(flags)
    setup_logging(config.log_format)
    service = Service(config)
    service.install_signal_handlers()
    service.run()
    return 0


# -- seal --------------------------------------------------------------------------------


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
    seal.add_argument("--format", choices=("v2", "fernet"), default="v2")
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
            raise EnclaveError(f"cannot make a KMS client with botocore: {exc}") from None

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
            raise EnclaveError(f"KMS GenerateDataKey through botocore failed: {exc}") from None
        return DataKey(answer["KeyId"], answer["CiphertextBlob"], answer["Plaintext"], None)


def _data_key_source(profile: str | None) -> envelope.DataKeySource:
    try:
        return _BotocoreDataKeys(profile)
    except ImportError:
        if profile:
            raise EnclaveError("--profile needs botocore: pip install botocore") from None
    from enclave.credentials import CredentialProvider, resolve_region
    from enclave.kms import KMSClient

    return KMSClient(resolve_region(), CredentialProvider())


def _seal(args: argparse.Namespace) -> int:
    setup_logging()
    source = sys.stdin.buffer if args.input == "-" else Path(args.input).open("rb")
    with source:
        text = source.read().decode("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    kms = _data_key_source(args.profile)
    if args.format == "fernet":
        document = envelope.seal_fernet(names, kms, args.key_id)
        serial = 0
    else:
        serial = int(time.time()) if args.serial is None else args.serial
        document = envelope.seal_v2(names, kms, args.key_id, serial=serial)
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


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# -- demo --------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run everything locally with the enclave simulator (not secure)",
        description="Start the local KMS and simulated NSM, seal the public demo's sample "
        "list and serve it on 127.0.0.1 in simulated mode.",
    )
    demo.add_argument("--port", type=int, default=8001, help="port to listen on (default 8001)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument(
        "--state",
        default=None,
        help="simulator state folder (default $XDG_STATE_HOME/noflylist/demo)",
    )


def _demo(args: argparse.Namespace) -> int:
    from noflylist.demo import default_state_folder, run_demo

    setup_logging()
    state = Path(args.state) if args.state else default_state_folder()
    return run_demo(port=args.port, state=state, host=args.host)


# -- main --------------------------------------------------------------------------------


Handler = Callable[[argparse.Namespace], int]


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="noflylist",
        description="Screen passengers against a secret no-fly list from inside a Nitro Enclave.",
    )
    parser.add_argument("--version", action="version", version=f"noflylist {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(commands)
    _add_seal(commands)
    _add_demo(commands)
    handlers: dict[str, Handler] = {"serve": _serve, "seal": _seal, "demo": _demo}
    handlers.update(trust.add_commands(commands))
    handlers.update(_tool_commands(commands))
    return parser, handlers


def _tool_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Handler]:
    """The operator tools' commands (``measure``, ``eif``), where the tools are installed.

    The enclave image has no ``noflylist.tools``: there these commands are simply absent. A
    tools package that is present but fails to import is an error, not silence.
    """
    if importlib.util.find_spec("noflylist.tools") is None:
        return {}
    from noflylist.tools.commands import add_commands

    return add_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status.

    Errors this project raises on purpose are printed as one line (their message names the
    cause and the fix), never as a traceback.
    """
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return commands[args.command](args)
    except EnclaveError as exc:
        print(f"noflylist {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
