"""The ``noflylist`` command line (also ``python -m noflylist``).

* ``serve``: the service (inside the enclave; locally with the simulator's NSM it is
  ``python -m noflylist_simulator serve``, which this package never imports);
* ``seal``: the operator's tool that encrypts a list into an envelope;
* ``demo``: everything at once on this machine, with the local enclave simulator;
* ``verify``, ``check``, ``policy``: trust tools for clients and operators
  (:mod:`noflylist.tools.trust`);
* ``measure``, ``eif build``: operator tools (:mod:`noflylist.tools`), not in the enclave image.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence

from enclave.errors import NoflylistError
from enclave.nsm import SecureModule
from noflylist import __version__
from noflylist.config import OPTIONS, build_serve_config

log = logging.getLogger("noflylist")

#: What runs a command: its parsed arguments in, the process exit status out.
Handler = Callable[[argparse.Namespace], int]


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


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``serve`` command and its options (:data:`noflylist.config.OPTIONS`)."""
    serve = commands.add_parser("serve", help="run the screening service")
    for name, option in OPTIONS.items():
        serve.add_argument(
            option.flag, dest=name, default=None, help=f"{option.help} [{option.variable}]"
        )


def serve(args: argparse.Namespace, *, simulated_module: SecureModule | None = None) -> int:
    """Run the service until a signal stops it. ``simulated_module`` is for the simulator's
    own entry point (``python -m noflylist_simulator serve``), which passes its NSM in."""
    from noflylist.service import Service

    flags = {name: getattr(args, name) for name in OPTIONS}
    config = build_serve_config(flags)
    setup_logging(config.log_format)
    service = Service(config, simulated_module=simulated_module)
    service.install_signal_handlers()
    service.run()
    return 0


# -- main --------------------------------------------------------------------------------


def _parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="noflylist",
        description="Screen passengers against a secret no-fly list from inside a Nitro Enclave.",
    )
    parser.add_argument("--version", action="version", version=f"noflylist {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve(commands)
    handlers: dict[str, Handler] = {"serve": serve}
    chosen = _chosen(argv)
    if chosen != "serve":  # serve loads no tool code, not even the table of tool commands
        handlers.update(_tool_commands(commands, chosen))
    return parser, handlers


def _chosen(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (its first argument that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def _tool_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], chosen: str | None
) -> dict[str, Handler]:
    """The client and operator tools' commands, where the tools are installed.

    The enclave image has no ``noflylist.tools``: there these commands are simply absent. A
    tools package that is present but fails to import is an error, not silence. Only the
    chosen command's module is imported (:mod:`noflylist.tools.commands`).
    """
    if importlib.util.find_spec("noflylist.tools") is None:
        return {}
    from noflylist.tools.commands import add_commands

    return add_commands(commands, chosen)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status.

    Errors this project raises on purpose are printed as one line (their message names the
    cause and the fix), never as a traceback.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _parser(words)
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return commands[args.command](args)
    except NoflylistError as exc:
        print(f"noflylist {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
