"""The service's configuration: one typed object, built once at start-up.

Every option of ``noflylist serve`` can come from a flag or from an environment variable
(flag wins). A bad value is refused with a message naming both the flag and the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from enclave.errors import NoflylistError
from enclave.modes import AttestationMode
from enclave.nsm import NSM_DEVICE_PATH
from noflylist.clients import MAX_BUDGET
from noflylist.matchkey import DEFAULT_RULE, RULES

#: Where the NSM device appears inside a Nitro Enclave; its presence makes ``nsm`` the default.
NSM_DEVICE = NSM_DEVICE_PATH
#: Loopback only: in an enclave, Enclaver's ingress forwards connections to it.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
#: How often a remote envelope (s3://, https://) is polled; a conditional request is cheap.
DEFAULT_REFRESH_INTERVAL = 300.0
#: A week: a longer pause between polls is surely a typo (0 turns polling off).
MAX_REFRESH_INTERVAL = 7 * 24 * 3600.0
#: Worker threads for the routes that may take a while or wait (a manifest, /metrics and its
#: gauges, extra routes such as one calling /dev/nsm); single-name screening and the health
#: pages are answered on the connection loop. Under the GIL more threads add no speed.
#: :class:`noflylist.transport.server.Server` takes the same bounds.
DEFAULT_WORKERS = 8
#: Fewest and most worker threads: at least one must exist to answer those routes, and each
#: thread costs a stack; far more than the CPUs only queue on the GIL.
MIN_WORKERS = 1
MAX_WORKERS = 256
LOG_FORMATS = ("text", "json")


class ConfigError(NoflylistError):
    """An option has a bad value; the message names the flag and its variable."""


@dataclass(frozen=True)
class Option:
    """One ``serve`` option: its flag, its environment variable and its help."""

    flag: str
    variable: str
    help: str


OPTIONS = {
    "envelope": Option(
        "--envelope", "NOFLYLIST_ENVELOPE", "envelope: a path, s3://BUCKET/KEY or https://URL"
    ),
    "host": Option("--host", "NOFLYLIST_HOST", f"address to listen on (default {DEFAULT_HOST})"),
    "port": Option("--port", "NOFLYLIST_PORT", f"port to listen on (default {DEFAULT_PORT})"),
    "attestation": Option(
        "--attestation",
        "NOFLYLIST_ATTESTATION",
        f"how KMS calls are attested: {AttestationMode.NSM} (default when {NSM_DEVICE} exists), "
        f"{AttestationMode.SIMULATED}, {AttestationMode.UNSAFE_NONE}",
    ),
    "refresh_interval": Option(
        "--refresh-interval",
        "NOFLYLIST_REFRESH_INTERVAL",
        f"seconds between polls of a remote envelope; 0 turns polling off "
        f"(default {DEFAULT_REFRESH_INTERVAL:g})",
    ),
    "key_id": Option(
        "--key-id", "NOFLYLIST_KEY_ID", "KMS key the envelope must be sealed under (optional)"
    ),
    "log_format": Option("--log-format", "NOFLYLIST_LOG_FORMAT", "log lines as text or json"),
    "workers": Option(
        "--workers", "NOFLYLIST_WORKERS", f"worker threads (default {DEFAULT_WORKERS})"
    ),
    "match": Option(
        "--match",
        "NOFLYLIST_MATCH",
        f"how names are compared: {' or '.join(RULES)} (default {DEFAULT_RULE}; exact is the "
        "public demo's rule: case, spaces and compatibility forms only)",
    ),
    "max_names_per_minute": Option(
        "--max-names-per-minute",
        "NOFLYLIST_MAX_NAMES_PER_MINUTE",
        "a global budget for an open list (one sealed without clients): names a minute, "
        "shared by every client (default: none; a sealed client policy sets its own budgets)",
    ),
    "require_clients": Option(
        "--require-clients",
        "NOFLYLIST_REQUIRE_CLIENTS",
        "yes: refuse every envelope sealed without a client policy (and the fernet format), "
        "so that nobody who can write where the envelope is kept, or restart the enclave, "
        "can have an older open list served; set it in the image to bind it into PCR0 "
        "(default no)",
    ),
    "simulator_state": Option(
        "--simulator-state",
        "NOFLYLIST_SIMULATOR_STATE",
        "folder of the local enclave simulator (with --attestation simulated)",
    ),
}


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``noflylist serve`` needs, validated."""

    envelope: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    attestation: AttestationMode = AttestationMode.NSM
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    key_id: str | None = None
    log_format: str = LOG_FORMATS[0]
    workers: int = DEFAULT_WORKERS
    #: The match rule (noflylist.matchkey.RULES) the list is keyed under.
    match: str = DEFAULT_RULE
    simulator_state: str | None = None
    #: The global budget of an open list; ``None``: an open list is unbounded.
    max_names_per_minute: int | None = None
    #: Refuse envelopes without a client policy (a downgrade to an open list).
    require_clients: bool = False


def build_serve_config(
    flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None
) -> ServeConfig:
    """Merge flags (``None`` = not given) over environment variables, then validate."""
    env = os.environ if environ is None else environ

    def value(name: str) -> str | None:
        given = flags.get(name)
        if given is not None:
            return given
        return env.get(OPTIONS[name].variable) or None

    envelope = value("envelope")
    if not envelope:
        raise ConfigError(_named("envelope", "is required: where is the encrypted list?"))
    attestation = _attestation(value("attestation") or None)
    log_format = value("log_format") or LOG_FORMATS[0]
    if log_format not in LOG_FORMATS:
        raise ConfigError(_named("log_format", f"must be {' or '.join(LOG_FORMATS)}"))
    match = value("match") or DEFAULT_RULE
    if match not in RULES:
        raise ConfigError(_named("match", f"must be {' or '.join(RULES)}"))
    simulator_state = value("simulator_state")
    if attestation == AttestationMode.SIMULATED and not simulator_state:
        raise ConfigError(_named("simulator_state", "is required with --attestation simulated"))
    return ServeConfig(
        envelope=envelope,
        host=value("host") or DEFAULT_HOST,
        port=_integer(value("port"), "port", DEFAULT_PORT, 1, 65535),
        attestation=attestation,
        refresh_interval=_seconds(value("refresh_interval"), "refresh_interval"),
        key_id=value("key_id"),
        log_format=log_format,
        workers=_integer(value("workers"), "workers", DEFAULT_WORKERS, MIN_WORKERS, MAX_WORKERS),
        match=match,
        simulator_state=simulator_state,
        max_names_per_minute=_budget(value("max_names_per_minute")),
        require_clients=_yes_no(value("require_clients"), "require_clients"),
    )


def _yes_no(text: str | None, name: str) -> bool:
    if text is None or text.lower() in ("no", "false", "0"):
        return False
    if text.lower() in ("yes", "true", "1"):
        return True
    raise ConfigError(_named(name, "must be yes or no"))


def _budget(text: str | None) -> int | None:
    return None if text is None else _integer(text, "max_names_per_minute", 0, 1, MAX_BUDGET)


def _attestation(text: str | None) -> AttestationMode:
    """The mode named, or ``nsm`` where ``/dev/nsm`` exists; never a silent fallback."""
    if text is None:
        if os.path.exists(NSM_DEVICE):
            return AttestationMode.NSM
        raise ConfigError(
            f"{NSM_DEVICE} does not exist, so this is not a Nitro Enclave; choose "
            f"--attestation {AttestationMode.SIMULATED} (local simulator) or --attestation "
            f"{AttestationMode.UNSAFE_NONE} (development against a real KMS, no protection) "
            f"explicitly (or set {OPTIONS['attestation'].variable})"
        )
    try:
        return AttestationMode(text)
    except ValueError:
        valid = ", ".join(AttestationMode)
        raise ConfigError(_named("attestation", f"must be one of {valid}")) from None


def _named(name: str, problem: str) -> str:
    option = OPTIONS[name]
    return f"{option.flag} (or {option.variable}) {problem}"


def _integer(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ConfigError(_named(name, f"must be a whole number from {low} to {high}"))
    return number


def _seconds(text: str | None, name: str) -> float:
    if text is None:
        return DEFAULT_REFRESH_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_REFRESH_INTERVAL:
        raise ConfigError(
            _named(name, f"must be a number of seconds from 0 to {MAX_REFRESH_INTERVAL:.0f}")
        )
    return seconds
