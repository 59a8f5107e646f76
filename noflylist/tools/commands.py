"""The client and operator tools' commands of ``noflylist``, each loaded only when it runs.

:mod:`noflylist.cli` adds these where the tools are installed; the enclave image has no
``noflylist.tools``, so there the commands are absent. ``noflylist --help`` lists every command
from the table below without importing any of them; the chosen command's module is imported
and registers its own arguments.
"""

from __future__ import annotations

import argparse
import importlib

from noflylist.cli import Handler

#: Each command: the module that implements it (its ``add_commands`` registers it) and one
#: line of help for ``noflylist --help``.
COMMANDS = {
    "seal": ("noflylist.tools.seal", "encrypt a list into an envelope (the list owner's tool)"),
    "demo": ("noflylist.tools.demo", "run everything locally with the simulator (not secure)"),
    "verify": ("noflylist.tools.trust", "verify an attestation document and print its fields"),
    "check": ("noflylist.tools.trust", "verify the service's enclave, then screen one name"),
    "policy": ("noflylist.tools.trust", "print a least-privilege KMS key policy for the key"),
    "client-key": (
        "noflylist.tools.client_key",
        "make a client's key pair for a list sealed with a client policy (client-key new)",
    ),
    "measure": (
        "noflylist.tools.eif_commands",
        "print the PCRs of an EIF or of an Enclaver release image (as nitro-cli describe-eif)",
    ),
    "eif": ("noflylist.tools.eif_commands", "build the enclave's EIF deterministically"),
}


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], chosen: str | None
) -> dict[str, Handler]:
    """Register every command; import only ``chosen``'s module; return its handlers."""
    handlers: dict[str, Handler] = {}
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        handlers = module.add_commands(commands)
    for name, (_, help_text) in COMMANDS.items():
        if name not in handlers:
            commands.add_parser(name, help=help_text, add_help=False)
    return handlers
