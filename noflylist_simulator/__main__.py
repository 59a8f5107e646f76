"""``python -m noflylist_simulator serve ...``: the service with the simulator's NSM.

``noflylist serve`` never imports this package (it is not in the enclave image), so it cannot
open a simulated NSM by itself. This entry point takes exactly ``serve``'s options
(:data:`noflylist.config.OPTIONS`), requires ``--attestation simulated`` and
``--simulator-state DIR``, makes the simulator's NSM from that folder's CA and runs the same
service with it. For development, benchmarks and tests only: documents it signs prove nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from enclave.errors import NoflylistError
from enclave.modes import AttestationMode
from noflylist import cli
from noflylist.config import OPTIONS, build_serve_config
from noflylist_simulator.ca import load_or_create
from noflylist_simulator.nsm import SimulatedNSM


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``serve``'s options, make the simulated NSM, run; the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m noflylist_simulator",
        description="Run noflylist serve with the local simulator's NSM (development only).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli.add_serve(commands)
    args = parser.parse_args(argv)
    try:
        config = build_serve_config({name: getattr(args, name) for name in OPTIONS})
        if config.attestation != AttestationMode.SIMULATED or config.simulator_state is None:
            raise NoflylistError(
                "this entry point runs the simulator's NSM: pass --attestation simulated "
                "--simulator-state DIR (for the real NSM, run `noflylist serve`)"
            )
        module = SimulatedNSM(load_or_create(Path(config.simulator_state) / "ca"))
        return cli.serve(args, simulated_module=module)
    except NoflylistError as exc:
        print(f"noflylist_simulator serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
