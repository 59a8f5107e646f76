"""Configuration: flags win over environment variables, and every bad value is refused with a
message naming both the flag and the variable."""

from __future__ import annotations

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
