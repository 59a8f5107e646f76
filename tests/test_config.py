"""Configuration: flags win over environment variables, and every bad value is refused with a
message naming both the flag and the variable."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from enclave.modes import AttestationMode
from noflylist import config
from noflylist.config import ConfigError, build_serve_config

NO_FLAGS: dict[str, str | None] = {}


def test_environment_supplies_every_option() -> None:
    env = {
        "NOFLYLIST_ENVELOPE": "s3://bucket/envelope.json",
        "NOFLYLIST_HOST": "0.0.0.0",
        "NOFLYLIST_PORT": "9000",
        "NOFLYLIST_ATTESTATION": "unsafe-none",
        "NOFLYLIST_REFRESH_INTERVAL": "30",
        "NOFLYLIST_KEY_ID": "alias/noflylist",
        "NOFLYLIST_LOG_FORMAT": "json",
        "NOFLYLIST_WORKERS": "4",
    }
    built = build_serve_config(NO_FLAGS, env)
    assert built == config.ServeConfig(
        envelope="s3://bucket/envelope.json",
        host="0.0.0.0",
        port=9000,
        attestation=AttestationMode.UNSAFE_NONE,
        refresh_interval=30.0,
        key_id="alias/noflylist",
        log_format="json",
        workers=4,
    )


def test_flags_win_over_environment() -> None:
    env = {"NOFLYLIST_ENVELOPE": "a.json", "NOFLYLIST_PORT": "9000"}
    flags = {"envelope": "b.json", "port": "9001", "attestation": "unsafe-none"}
    built = build_serve_config(flags, env)
    assert (built.envelope, built.port) == ("b.json", 9001)


@pytest.mark.parametrize(
    "flags, words",
    [
        ({"attestation": "unsafe-none"}, "--envelope (or NOFLYLIST_ENVELOPE) is required"),
        ({"envelope": "e", "attestation": "bogus"}, "--attestation (or NOFLYLIST_ATTESTATION)"),
        (
            {"envelope": "e", "attestation": "unsafe-none", "port": "0"},
            "--port (or NOFLYLIST_PORT)",
        ),
        ({"envelope": "e", "attestation": "unsafe-none", "port": "http"}, "NOFLYLIST_PORT"),
        (
            {"envelope": "e", "attestation": "unsafe-none", "refresh_interval": "-1"},
            "--refresh-interval (or NOFLYLIST_REFRESH_INTERVAL)",
        ),
        ({"envelope": "e", "attestation": "unsafe-none", "log_format": "xml"}, "--log-format"),
        ({"envelope": "e", "attestation": "unsafe-none", "workers": "0"}, "--workers"),
        ({"envelope": "e", "attestation": "simulated"}, "--simulator-state"),
    ],
)
def test_bad_values_name_flag_and_variable(flags: dict[str, str | None], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_serve_config(flags, {})
    assert words in str(caught.value)


def test_without_dev_nsm_the_mode_must_be_chosen_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config, "NSM_DEVICE", "/nonexistent/nsm")
    with pytest.raises(ConfigError, match=r"not a Nitro Enclave.*simulated.*unsafe-none"):
        build_serve_config({"envelope": "e"}, {})


def test_nsm_is_the_default_where_dev_nsm_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    monkeypatch.setattr(config, "NSM_DEVICE", str(device))
    assert build_serve_config({"envelope": "e"}, {}).attestation is AttestationMode.NSM


@pytest.mark.parametrize("text", ["nsm", "simulated", "unsafe-none"])
def test_the_attestation_value_on_the_command_line_becomes_the_enum_member(text: str) -> None:
    flags = {"envelope": "e", "attestation": text, "simulator_state": "state"}
    built = build_serve_config(flags, {})
    assert built.attestation is AttestationMode(text) and built.attestation == text


def test_an_unknown_attestation_mode_is_refused_with_every_valid_one() -> None:
    with pytest.raises(ConfigError) as caught:
        build_serve_config({"envelope": "e", "attestation": "NSM"}, {})
    assert str(caught.value) == (
        "--attestation (or NOFLYLIST_ATTESTATION) must be one of nsm, simulated, unsafe-none"
    )


def test_an_empty_attestation_flag_counts_as_not_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    monkeypatch.setattr(config, "NSM_DEVICE", str(device))
    assert build_serve_config({"envelope": "e", "attestation": ""}, {}).attestation == "nsm"


@pytest.mark.parametrize("workers", ["1", "256"])
def test_the_worker_count_is_accepted_from_one_to_max_workers(workers: str) -> None:
    flags = {"envelope": "e", "attestation": "unsafe-none", "workers": workers}
    assert build_serve_config(flags, {}).workers == int(workers)


@pytest.mark.parametrize("workers", ["0", "257", "-1", "eight"])
def test_a_worker_count_outside_one_to_max_workers_is_refused_with_the_range(workers: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_serve_config({"envelope": "e", "attestation": "unsafe-none", "workers": workers}, {})
    assert str(caught.value) == (
        f"--workers (or NOFLYLIST_WORKERS) must be a whole number from {config.MIN_WORKERS} to "
        f"{config.MAX_WORKERS}"
    )
    assert (config.MIN_WORKERS, config.MAX_WORKERS) == (1, 256)


def test_the_server_and_the_configuration_have_one_set_of_defaults() -> None:
    from noflylist.routes import Routes
    from noflylist.transport.server import Server

    defaults = {
        name: parameter.default
        for made in (Server, Routes)
        for name, parameter in inspect.signature(made).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    built = build_serve_config({"envelope": "e", "attestation": "unsafe-none"}, {})
    assert defaults["workers"] == built.workers == config.DEFAULT_WORKERS
    assert defaults["port"] == built.port == config.DEFAULT_PORT
    assert defaults["host"] == built.host == config.DEFAULT_HOST
    assert defaults["log_format"] == built.log_format == config.LOG_FORMATS[0]
