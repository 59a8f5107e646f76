"""The client policy sealed in the envelope (issue 20): who may ask travels with the list.

v2 and v3 envelopes sealed with a policy carry it in the header field ``clients`` (base64 of
the canonical policy), and the header is AES-GCM's associated data: whoever can write the
bucket (or the host) can re-encode the field validly (a raised budget, an added client, a
swapped key, the field removed to serve the list open) but then the envelope no longer
authenticates, and the holder keeps serving the list it had. A policy that is not canonical
is refused while parsing, so one policy has one digest. Fernet has no place for a policy.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from noflylist import envelope, matchkey
from noflylist.clients import Client, ClientPolicy, canonical_policy, parse_policy
from noflylist.config import ConfigError, build_serve_config
from noflylist.envelope import EnvelopeError
from noflylist.lists import ListHolder, OpenListRefused
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.tools import seal
from tests.support.fake_kms import FakeDataKeys

NAMES = ["Big Bird", "Cookie Monster", "Oscar, the Grouch"]
FORMATS = ("v2", "v3")


def _raw_key() -> bytes:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _policy(*clients: tuple[str, int, int]) -> ClientPolicy:
    """A policy read as the owner's file is read (``seal --clients``): not canonical JSON."""
    entries = [
        {"id": client_id, "public_key": base64.b64encode(_raw_key()).decode(),
         "names_per_minute": minute, "names_per_day": day}
        for client_id, minute, day in clients
    ]  # fmt: skip
    return parse_policy(json.dumps({"clients": entries}, indent=2).encode())


POLICY = _policy(("acme-checkin", 600, 100_000), ("bravo.kiosk", 5, 50))


def _seal(form: str, kms: FakeDataKeys, *, serial: int, clients: ClientPolicy | None) -> bytes:
    if form == "v3":
        return seal.seal_v3(NAMES, kms, "k", serial=serial, clients=clients)
    return seal.seal_v2(NAMES, kms, "k", serial=serial, clients=clients)


def _header(document: bytes) -> dict[str, Any]:
    """The header fields as JSON: v2's whole document, v3's second line."""
    if document.startswith(envelope.V3_MAGIC):
        line = document[len(envelope.V3_MAGIC) :].split(b"\n", 1)[0]
        value: dict[str, Any] = json.loads(line)
    else:
        value = json.loads(document)
    return value


def _with_header(document: bytes, header: dict[str, Any]) -> bytes:
    """The same envelope, its header re-serialised as ``header`` (the ciphertext unchanged)."""
    if document.startswith(envelope.V3_MAGIC):
        rest = document[len(envelope.V3_MAGIC) :].split(b"\n", 1)[1]
        return envelope.V3_MAGIC + json.dumps(header).encode() + b"\n" + rest
    return json.dumps(header).encode()


def _with_clients(document: bytes, clients_field: str | None) -> bytes:
    header = _header(document)
    if clients_field is None:
        header.pop("clients", None)
    else:
        header["clients"] = clients_field
    return _with_header(document, header)


def _field(canonical: bytes) -> str:
    return base64.b64encode(canonical).decode()


def _open(document: bytes, kms: FakeDataKeys) -> None:
    """Decrypt as the holder does; raises EnvelopeError if the envelope does not open."""
    parsed = envelope.parse(document)
    if parsed.format == envelope.FORMAT_V3:
        envelope.decrypt_table(parsed, kms, rule=matchkey.DEFAULT_RULE)
    else:
        list(envelope.decrypt(parsed, kms))


def _tampered(policy: ClientPolicy) -> dict[str, bytes]:
    """Validly re-encoded, canonical policies an attacker would like in service instead."""
    first, second = policy.clients
    raised = Client(second.id, second.public_key, 1_000_000, 1_000_000_000)
    stranger = Client("mallory", _raw_key(), 600, 100_000)
    swapped = Client(second.id, _raw_key(), second.names_per_minute, second.names_per_day)
    return {
        "a raised budget": canonical_policy((first, raised)),
        "an added client": canonical_policy((first, second, stranger)),
        "a removed client": canonical_policy((first,)),
        "a swapped key": canonical_policy((first, swapped)),
        "reordered clients": canonical_policy((second, first)),
    }


# -- what a sealed envelope carries ---------------------------------------------------------


@pytest.mark.parametrize("form", FORMATS)
def test_an_envelope_sealed_with_a_policy_carries_it_canonical_with_its_digest(form: str) -> None:
    kms = FakeDataKeys()
    document = _seal(form, kms, serial=3, clients=POLICY)
    parsed = envelope.parse(document)
    assert parsed.clients == POLICY
    assert parsed.clients is not None
    assert parsed.clients.canonical == canonical_policy(POLICY.clients)
    assert base64.b64decode(_header(document)["clients"]) == POLICY.canonical
    assert parsed.clients.sha256 == POLICY.sha256
    assert [c.id for c in parsed.clients.clients] == ["acme-checkin", "bravo.kiosk"]
    _open(document, kms)  # and it decrypts as sealed


@pytest.mark.parametrize("form", FORMATS)
def test_an_envelope_sealed_without_a_policy_has_no_clients_field_and_is_served_open(
    form: str, tmp_path: Path
) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope"
    path.write_bytes(_seal(form, kms, serial=3, clients=None))
    assert "clients" not in _header(path.read_bytes())
    assert envelope.parse(path.read_bytes()).clients is None
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    assert holder.reload(only_if_changed=False)
    assert holder.current is not None and holder.current.clients is None


@pytest.mark.parametrize("form", FORMATS)
def test_the_holder_puts_the_sealed_policy_in_service_with_the_list(
    form: str, tmp_path: Path
) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope"
    path.write_bytes(_seal(form, kms, serial=3, clients=POLICY))
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    assert holder.reload(only_if_changed=False)
    assert holder.current is not None and holder.current.clients == POLICY


def test_fernet_has_no_client_policy_and_seal_refuses_clients_with_fernet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kms = FakeDataKeys()
    assert envelope.parse(seal.seal_fernet(NAMES[:2], kms, "k")).clients is None
    monkeypatch.setattr(seal, "_data_key_source", lambda profile: kms)
    listed = tmp_path / "list.txt"
    listed.write_text("Big Bird\n", encoding="utf-8")
    policy_file = tmp_path / "clients.json"
    policy_file.write_bytes(POLICY.canonical)
    out = tmp_path / "envelope"
    from noflylist.cli import main

    code = main(["seal", "--key-id", "k", "--input", str(listed), "--output", str(out),
                 "--format", "fernet", "--clients", str(policy_file)])  # fmt: skip
    assert code == 1 and not out.exists()
    assert "fernet" in capsys.readouterr().err


@pytest.mark.parametrize("form", FORMATS)
def test_seal_clients_file_seals_the_policy_into_the_envelope(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = FakeDataKeys()
    monkeypatch.setattr(seal, "_data_key_source", lambda profile: kms)
    listed = tmp_path / "list.txt"
    listed.write_text("Big Bird\n", encoding="utf-8")
    policy_file = tmp_path / "clients.json"
    entries = [{"id": c.id, "public_key": base64.b64encode(c.public_key).decode(),
                "names_per_minute": c.names_per_minute, "names_per_day": c.names_per_day}
               for c in POLICY.clients]  # fmt: skip
    policy_file.write_text(json.dumps({"clients": entries}, indent=4), encoding="utf-8")
    out = tmp_path / "envelope"
    from noflylist.cli import main

    code = main(["seal", "--key-id", "k", "--input", str(listed), "--output", str(out),
                 "--format", form, "--serial", "4", "--clients", str(policy_file)])  # fmt: skip
    assert code == 0
    parsed = envelope.parse(out.read_bytes())
    assert parsed.clients == POLICY and parsed.clients.sha256 == POLICY.sha256


# -- what nobody without the data key can change --------------------------------------------


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize(
    "change", ["a raised budget", "an added client", "a removed client", "a swapped key",
               "reordered clients", "the field removed"],
)  # fmt: skip
def test_a_validly_reencoded_policy_fails_authentication_and_the_holder_keeps_the_old_list(
    form: str, change: str, tmp_path: Path
) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope"
    path.write_bytes(_seal(form, kms, serial=7, clients=POLICY))
    holder = ListHolder(FileSource(str(path)), kms, Metrics())
    assert holder.reload(only_if_changed=False)
    before = holder.current
    # A newer envelope (so the rollback check passes) whose policy the attacker re-encoded.
    newer = _seal(form, kms, serial=8, clients=POLICY)
    field = None if change == "the field removed" else _field(_tampered(POLICY)[change])
    forged = _with_clients(newer, field)
    if field is not None:  # it parses: the refusal below is authentication's, not the parser's
        assert envelope.parse(forged).clients != POLICY
    else:
        assert envelope.parse(forged).clients is None
    with pytest.raises(EnvelopeError, match="authentication failed"):
        _open(forged, kms)
    path.write_bytes(forged)
    with pytest.raises(EnvelopeError, match="authentication failed"):
        holder.reload(only_if_changed=False)
    assert holder.current is before
    assert holder.current is not None and holder.current.serial == 7
    assert holder.current.clients == POLICY
    path.write_bytes(newer)  # the genuine serial 8 still loads: the refusal was the change's
    assert holder.reload(only_if_changed=False)
    assert holder.current is not None and holder.current.serial == 8


@pytest.mark.parametrize("form", FORMATS)
def test_a_policy_added_to_an_open_envelope_fails_authentication(form: str) -> None:
    kms = FakeDataKeys()
    forged = _with_clients(_seal(form, kms, serial=3, clients=None), _field(POLICY.canonical))
    assert envelope.parse(forged).clients == POLICY
    with pytest.raises(EnvelopeError, match="authentication failed"):
        _open(forged, kms)


@pytest.mark.parametrize("form", FORMATS)
def test_every_byte_of_the_sealed_policy_is_authenticated(form: str) -> None:
    """Each byte of the canonical policy changed in turn: refused while parsing (no longer a
    canonical policy) or, when it still is one, by authentication; never served."""
    kms = FakeDataKeys()
    document = _seal(form, kms, serial=3, clients=POLICY)
    canonical = POLICY.canonical
    authenticated = 0
    for index in range(len(canonical)):
        changed = bytearray(canonical)
        changed[index] ^= 0x01
        forged = _with_clients(document, _field(bytes(changed)))
        try:
            parsed = envelope.parse(forged)
        except EnvelopeError as exc:
            assert "clients" in str(exc)
            continue
        assert parsed.clients is not None and parsed.clients.canonical == bytes(changed)
        with pytest.raises(EnvelopeError, match="authentication failed"):
            _open(forged, kms)
        authenticated += 1
    # Digits of a budget, letters of an id, base64 of a key: many changes stay canonical.
    assert authenticated > len(canonical) // 4


# -- what the parser refuses ----------------------------------------------------------------


def _spaced(policy: ClientPolicy) -> bytes:
    return json.dumps(json.loads(policy.canonical), indent=1).encode()


def _unsorted(policy: ClientPolicy) -> bytes:
    value = json.loads(policy.canonical)
    value["clients"] = [dict(reversed(list(entry.items()))) for entry in value["clients"]]
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize(
    ("what", "field", "message"),
    [
        ("spaces", _field(_spaced(POLICY)), "not in canonical form"),
        ("keys unsorted", _field(_unsorted(POLICY)), "not in canonical form"),
        ("a trailing newline", _field(POLICY.canonical + b"\n"), "not in canonical form"),
        ("not base64", "not base64!", "not valid base64"),
        ("empty", "", "non-empty base64"),
        ("not JSON", _field(b"clients"), "refused"),
        ("no clients", _field(b'{"clients":[]}'), "refused"),
    ],
)
def test_a_policy_that_is_not_canonical_or_malformed_is_refused_at_parse(
    form: str, what: str, field: str, message: str
) -> None:
    document = _with_clients(_seal(form, FakeDataKeys(), serial=3, clients=POLICY), field)
    with pytest.raises(EnvelopeError, match=message) as caught:
        envelope.parse(document)
    assert "clients" in str(caught.value)
    for name in NAMES:
        assert name not in str(caught.value)


@pytest.mark.parametrize("form", FORMATS)
def test_a_clients_field_that_is_not_a_string_is_refused_at_parse(form: str) -> None:
    document = _seal(form, FakeDataKeys(), serial=3, clients=POLICY)
    header = _header(document)
    header["clients"] = 7  # a number, not the base64 of a policy
    with pytest.raises(EnvelopeError, match="clients"):
        envelope.parse(_with_header(document, header))


# -- --require-clients: no downgrade to an open list ------------------------------------------


@pytest.mark.parametrize("form", FORMATS)
def test_a_service_that_requires_clients_refuses_an_open_envelope_and_keeps_its_list(
    tmp_path: Path, form: str
) -> None:
    # The host restarts the enclave with an older, open envelope in the bucket: refused.
    kms = FakeDataKeys()
    path = tmp_path / "envelope"
    path.write_bytes(_seal(form, kms, serial=5, clients=None))
    metrics = Metrics()
    holder = ListHolder(FileSource(str(path)), kms, metrics, require_clients=True)
    with pytest.raises(OpenListRefused, match="--require-clients"):
        holder.reload(only_if_changed=False)
    assert holder.current is None
    assert metrics.events("noflylist_list_loads_total", "refused") == 1
    # The same list sealed with a policy is served, and a newer open one cannot replace it.
    path.write_bytes(_seal(form, kms, serial=6, clients=POLICY))
    assert holder.reload(only_if_changed=False)
    assert holder.current is not None and holder.current.clients == POLICY
    path.write_bytes(_seal(form, kms, serial=7, clients=None))
    with pytest.raises(OpenListRefused):
        holder.reload(only_if_changed=False)
    assert holder.current.serial == 6 and holder.current.clients == POLICY


def test_a_service_that_requires_clients_refuses_the_fernet_format(tmp_path: Path) -> None:
    kms = FakeDataKeys()
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_fernet(["Big Bird", "Cookie Monster"], kms, "k"))
    holder = ListHolder(FileSource(str(path)), kms, Metrics(), require_clients=True)
    with pytest.raises(OpenListRefused, match="fernet"):
        holder.reload(only_if_changed=False)
    assert holder.current is None


@pytest.mark.parametrize(
    ("text", "required"), [(None, False), ("no", False), ("0", False), ("yes", True),
                           ("TRUE", True), ("1", True)],
)  # fmt: skip
def test_require_clients_is_a_yes_or_no_setting(text: str | None, required: bool) -> None:
    environ = {"NOFLYLIST_ENVELOPE": "x.json", "NOFLYLIST_ATTESTATION": "unsafe-none"}
    if text is not None:
        environ["NOFLYLIST_REQUIRE_CLIENTS"] = text
    assert build_serve_config({}, environ).require_clients is required
    with pytest.raises(ConfigError, match="--require-clients"):
        build_serve_config({"require_clients": "maybe"}, environ)
