"""Commands that let others trust the service: ``verify``, ``check`` and ``policy``.

* ``noflylist verify FILE|-``: check an attestation document (raw CBOR or base64) against the
  AWS Nitro root, step by step (:func:`noflylist.client.attestation.verify`), and print what it
  says;
* ``noflylist check URL NAME --expect-pcr 0=HEX``: the airline's client. It asks the service
  for a document bound to a fresh random nonce, verifies it (AWS root, nonce, expected PCRs),
  and only then asks about the passenger, with a nonce of its own, and prints the answer only
  if the enclave signed it (:class:`noflylist.client.client.Client`). If verification fails,
  no name is ever sent. With ``--client-id ID --client-key FILE`` the query is signed as that
  client (a list sealed with a client policy answers nothing else);
* ``noflylist policy``: print the KMS key policy (:mod:`noflylist.tools.policy`) that lets only the
  measured enclave image decrypt the list; with ``--frozen``, one that nobody can change.

What ``check`` proves, and what it does not: the document proves which code (PCRs) is running
behind ``URL`` right now (the nonce), which list it serves and which answer key it holds
(``user_data``). The answer is signed by that key over this name, this request's nonce, the
verdict, the list serial and the body (``docs/answers.md``), so a relay that alters it,
replays it, or swaps in another name's or another service's answer is refused. The host still
sees which names are asked, and can drop or delay answers.

Every refusal raises :class:`TrustError` (``noflylist.cli`` prints it as one line, exit 1).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from enclave import http_client
from enclave.errors import NoflylistError
from enclave.modes import AttestationMode
from noflylist.cli import Handler
from noflylist.client.attestation import AttestationDocument, AttestationError, verify
from noflylist.client.client import Client, ClientError, load_client_key
from noflylist.tools import policy as key_policy
from noflylist.wire import CBOR_TYPE, MODE_HEADER, ServedList, UserDataError, decode_user_data

__all__ = ["Handler", "TrustError", "add_commands"]

_log = logging.getLogger(__name__)

#: A document is at most about 17 KiB; its base64 with line breaks stays under 32 KiB.
MAX_DOCUMENT_INPUT_BYTES = 64 * 1024
#: A root certificate PEM is about 1 KiB.
MAX_ROOT_PEM_BYTES = 64 * 1024
#: Bytes of fresh randomness in each challenge: as strong as the 256-bit keys it protects.
CHECK_NONCE_BYTES = 32
#: The service's answers are one line; a bigger body is not one of them.
MAX_ANSWER_BYTES = 64 * 1024
#: A server's error text is quoted in our error messages, cut to this many characters.
_PREVIEW_CHARS = 160
#: First bytes of a COSE_Sign1: an array of 4 (untagged, as the NSM sends it) or tag 18.
_CBOR_STARTS = (0x84, 0xD2)


class TrustError(NoflylistError):
    """A document did not verify or a command's input is unusable; the message says why."""


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Handler]:
    """Register ``verify``, ``check`` and ``policy``; return command name -> handler."""
    _add_verify(commands)
    _add_check(commands)
    _add_policy(commands)
    return {"verify": _verify, "check": _check, "policy": _policy}


# -- verify ----------------------------------------------------------------------------------


def _add_verify(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify",
        help="verify an attestation document and print its fields",
        description="Verify a Nitro attestation document (raw CBOR or base64) against the AWS "
        "Nitro root and print what it says; on failure, name the failed step.",
    )
    parser.add_argument("document", metavar="FILE|-", help="the document (- for stdin)")
    _add_trust_options(parser, pcrs_required=False)
    parser.add_argument("--nonce", metavar="HEX", help="the nonce the document must carry")
    parser.add_argument(
        "--at", metavar="ISO8601", help="check certificates at this time (default: now)"
    )
    parser.add_argument("--json", action="store_true", help="print the fields as JSON")


def _add_trust_options(parser: argparse.ArgumentParser, *, pcrs_required: bool) -> None:
    parser.add_argument(
        "--expect-pcr",
        metavar="N=HEX",
        action="append",
        default=[],
        required=pcrs_required,
        help="a PCR the document must carry (repeatable; 96 hex characters)",
    )
    parser.add_argument(
        "--unsafe-root",
        metavar="PEM",
        help="UNSAFE: trust this root instead of AWS's (only for the local simulator's "
        "documents, which prove nothing)",
    )
    parser.add_argument(
        "--unsafe-allow-debug",
        action="store_true",
        help="UNSAFE: accept debug-mode enclaves (PCR0 all zero), whose memory is readable",
    )


def _warn_unsafe(args: argparse.Namespace) -> None:
    """Say on stderr, each time, which guarantee an ``--unsafe-`` option gives up."""
    if args.unsafe_root is not None:
        print(
            "WARNING: SIMULATED attestation: the document is checked against the root from "
            "--unsafe-root, not AWS's; it proves nothing about real hardware",
            file=sys.stderr,
        )
    if args.unsafe_allow_debug:
        print(
            "WARNING: UNSAFE: --unsafe-allow-debug: a debug-mode enclave (PCR0 all zero), "
            "whose memory its parent can read, is accepted",
            file=sys.stderr,
        )


def _verify(args: argparse.Namespace) -> int:
    if args.document == "-":
        data = _read_bounded(sys.stdin.buffer, "stdin")
    else:
        with _open(args.document, "FILE") as handle:
            data = _read_bounded(handle, args.document)
    root = _load_root(args.unsafe_root)
    _warn_unsafe(args)
    document = _checked(
        _document_bytes(data),
        unsafe_root=root,
        now=_parse_time(args.at),
        expected_pcrs=_expected_pcrs(args.expect_pcr),
        nonce=None if args.nonce is None else _parse_hex(args.nonce, "--nonce"),
        unsafe_allow_debug=args.unsafe_allow_debug,
    )
    fields = _fields(document, root)
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for name, value in fields.items():
            if isinstance(value, dict):
                print(f"{name}:")
                for key, item in value.items():
                    print(f"  {key}: {_text(item)}")
            else:
                print(f"{name}: {_text(value)}")
    return 0


def _checked(
    document: bytes,
    *,
    unsafe_root: x509.Certificate | None,
    expected_pcrs: dict[int, bytes],
    nonce: bytes | None,
    unsafe_allow_debug: bool,
    now: datetime | None = None,
) -> AttestationDocument:
    """:func:`noflylist.client.attestation.verify`, its step-naming failure turned into ours."""
    try:
        return verify(
            document,
            unsafe_root=unsafe_root,
            now=now,
            expected_pcrs=expected_pcrs,
            nonce=nonce,
            unsafe_allow_debug=unsafe_allow_debug,
        )
    except AttestationError as exc:
        raise TrustError(f"attestation document NOT verified: {exc}") from None


def _fields(document: AttestationDocument, root: x509.Certificate | None) -> dict[str, object]:
    """The document's content as JSON-ready values; all-zero PCRs are left out."""
    served = _served(document.user_data)
    fields: dict[str, object] = {
        "verified": True,
        "root": "AWS Nitro Enclaves root G1" if root is None else "caller-supplied (--unsafe-root)",
        "root_sha256": (root or document.cabundle[0]).fingerprint(hashes.SHA256()).hex(),
        "module_id": document.module_id,
        "timestamp": document.timestamp.isoformat(),
        "digest": document.digest,
        "pcrs": {
            f"PCR{i}": value.hex() for i, value in sorted(document.pcrs.items()) if any(value)
        },
        "public_key_present": document.public_key is not None,
        "user_data": None,
        "nonce": _hex(document.nonce),
    }
    if served is not None:
        fields["user_data"] = {
            "envelope_sha256": _hex(served.envelope_sha256),
            "serial": served.serial,
            "version": served.version,
            "clients_sha256": _hex(served.clients_sha256),
        }
    elif document.user_data is not None:
        fields["user_data"] = {"hex": document.user_data.hex()}
    return fields


def _who_may_ask(served: ServedList) -> str:
    """``user_data``'s client policy, for a person: its digest, or that the list is open."""
    if served.clients_sha256 is None:
        return (
            "anyone: the list is served open (no client policy sealed with it; or a service "
            "from before client policies)"
        )
    return f"the clients of the sealed policy {served.clients_sha256.hex()}"


def _served(user_data: bytes | None) -> ServedList | None:
    if user_data is None:
        return None
    try:
        return decode_user_data(user_data)
    except UserDataError:
        return None


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _text(value: object) -> str:
    if value is None:
        return "(absent)"
    return str(value).lower() if isinstance(value, bool) else str(value)


# -- check -----------------------------------------------------------------------------------


def _add_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="verify the service's enclave, then screen one name",
        description="Fetch URL/enclave/attestation with a fresh nonce, verify the document "
        "(AWS root, nonce, the expected PCRs), and only then ask URL/enclave/passenger about "
        "NAME, and print the answer only if the enclave's attested answer key signed it for "
        "this name and this request. Nothing is sent about NAME unless verification succeeds.",
    )
    parser.add_argument("url", metavar="URL", help="the service, e.g. https://screening.example")
    parser.add_argument("name", metavar="NAME", help="the passenger's name")
    _add_trust_options(parser, pcrs_required=False)
    parser.add_argument(
        "--expect-eif",
        metavar="FILE",
        help="expect PCR0, PCR1, PCR2 (and PCR8) of this EIF or Enclaver release image, as "
        "`noflylist measure` reads them (with --expect-pcr, both must agree; one is required)",
    )
    parser.add_argument(
        "--min-serial",
        type=int,
        metavar="N",
        help="refuse a service whose list serial is below N (a replica on an older list)",
    )
    parser.add_argument(
        "--client-id",
        metavar="ID",
        help="sign the query as this client, the id the list's owner registered (with "
        "--client-key; needed when the list is sealed with a client policy)",
    )
    parser.add_argument(
        "--client-key",
        metavar="FILE",
        help="the client's Ed25519 private key, PEM PKCS8 with mode 0600, as "
        "`noflylist client-key new` writes it (with --client-id)",
    )
    # One of --expect-pcr and --expect-eif is required: a usage error (exit 2) without either.
    parser.set_defaults(usage_error=parser.error)


def _check(args: argparse.Namespace) -> int:
    if not args.expect_pcr and args.expect_eif is None:
        args.usage_error("one of --expect-pcr N=HEX and --expect-eif FILE is required")
    if (args.client_id is None) != (args.client_key is None):
        args.usage_error("--client-id and --client-key go together: give both or neither")
    args.expect_pcr = _with_eif_pcrs(args.expect_pcr, args.expect_eif)
    base = _service_url(args.url)
    expected = _expected_pcrs(args.expect_pcr)
    root = _load_root(args.unsafe_root)
    client_key = None
    if args.client_key is not None:
        try:
            client_key = load_client_key(args.client_key)
        except ClientError as exc:
            raise TrustError(f"--client-key: {exc}") from None
    nonce = secrets.token_bytes(CHECK_NONCE_BYTES)
    response = _get(
        f"{base}/enclave/attestation?nonce={nonce.hex()}",
        "the attestation request",
        accept=CBOR_TYPE,
    )
    _warn_unsafe(args)
    said_simulated = response.headers.get(MODE_HEADER.lower(), "") == AttestationMode.SIMULATED
    if root is None and said_simulated:
        print(
            "WARNING: the service says its documents are SIMULATED (signed by a development "
            "root); they cannot verify against AWS's root",
            file=sys.stderr,
        )
    if response.status != 200:
        raise TrustError(
            f"{base} answered {response.status} to the attestation request "
            f"({_preview(response.body)}); no passenger query was sent"
        )
    document = _checked(
        _document_bytes(response.body, response.headers.get("content-type")),
        unsafe_root=root,
        expected_pcrs=expected,
        nonce=nonce,
        unsafe_allow_debug=args.unsafe_allow_debug,
    )
    served = _served(document.user_data)
    if served is None:
        raise TrustError(
            "the document verified but carries no noflylist user_data (list serial and "
            "envelope digest): this is not a noflylist service; no passenger query was sent"
        )
    client = Client(
        base, expected, unsafe_root=root, unsafe_allow_debug=args.unsafe_allow_debug,
        min_serial=args.min_serial, client_id=args.client_id, client_key=client_key,
    )  # fmt: skip
    try:
        client.accept_attestation(
            _document_bytes(response.body, response.headers.get("content-type")), nonce
        )
        client.screen(args.name)
    except ClientError as exc:
        raise TrustError(f"{exc}; no answer is printed") from None
    answer = client.last_answer
    assert answer is not None  # screen() returned: an answer verified
    if answer.status != 200:
        raise TrustError(
            f"{base} answered {answer.status} to the query (signed): {_preview(answer.body)}"
        )
    statement = answer.statement
    serial, digest = _text(served.serial), _text(_hex(served.envelope_sha256))
    print(f"enclave verified: module {document.module_id} at {document.timestamp.isoformat()}")
    print(f"  PCR0 {_text(_hex(document.pcrs.get(0)))}")
    for index in sorted(expected):
        print(f"  PCR{index} matches --expect-pcr")
    print(f"  list serial {serial}, envelope sha256 {digest}, noflylist {served.version}")
    print(f"  who may ask: {_who_may_ask(served)}")
    print(
        f"answer signed by the enclave's answer key {statement.key_id}: signature, nonce, "
        f"name and body verified; list serial {_text(statement.serial)}"
    )
    print(f"answer: {_preview(answer.body, MAX_ANSWER_BYTES)}")
    return 0


def _service_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise TrustError(f"URL: expected http(s)://host[:port][/path], got {_preview(url)}")
    return url.rstrip("/")


def _get(url: str, what: str, *, accept: str) -> http_client.Response:
    try:
        return http_client.request(
            "GET", url, headers={"Accept": accept}, max_response_bytes=MAX_ANSWER_BYTES
        )
    except http_client.TransportError as exc:
        raise TrustError(f"{what} failed: {exc}") from None


# -- policy ----------------------------------------------------------------------------------


def _add_policy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "policy",
        help="print a least-privilege KMS key policy for the enclave's key",
        description="Print the whole KMS key policy (JSON) that lets only the measured enclave "
        "image decrypt; give it to 'aws kms put-key-policy --policy-name default' as it is. "
        "Statement ids are fixed, so putting a regenerated policy replaces the old one.",
    )
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="leave kms:PutKeyPolicy out: nobody can ever change the policy (a new image needs "
        "a new key and a resealed list); put it with --bypass-policy-lockout-safety-check",
    )
    parser.add_argument(
        "--pcr",
        metavar="N=HEX",
        action="append",
        default=[],
        help="an accepted measurement (repeat a PCR for rolling deploys; PCR0 required)",
    )
    parser.add_argument("--account", required=True, help="the 12-digit AWS account id")
    parser.add_argument("--admin-role", required=True, metavar="ARN", help="manages the key")
    parser.add_argument("--enclave-role", required=True, metavar="ARN", help="parent's role")
    parser.add_argument("--operator-role", metavar="ARN", help="may seal lists (not decrypt)")
    parser.add_argument(
        "--from-describe-eif",
        metavar="FILE",
        help="take PCR0 (and PCR8) from nitro-cli describe-eif/build-enclave JSON output",
    )
    parser.add_argument(
        "--from-eif",
        metavar="FILE",
        action="append",
        default=[],
        help="take PCR0, PCR1, PCR2 (and PCR8) from this EIF or Enclaver release image, as "
        "`noflylist measure` reads them (repeatable, for rolling deploys)",
    )


def _policy(args: argparse.Namespace) -> int:
    pcrs: dict[int, list[bytes]] = {}
    for text in args.pcr:
        index, value = key_policy.parse_pcr(text, "--pcr")
        pcrs.setdefault(index, []).append(value)
    if args.from_describe_eif is not None:
        with _open(args.from_describe_eif, "--from-describe-eif") as handle:
            data = _read_bounded(handle, args.from_describe_eif, key_policy.MAX_DESCRIBE_EIF_BYTES)
        for index, value in key_policy.measurements_from_describe_eif(data).items():
            pcrs.setdefault(index, []).append(value)
    for path in args.from_eif:
        for index, value in key_policy.measurements_from_eif(Path(path), "--from-eif").items():
            pcrs.setdefault(index, []).append(value)
    document = key_policy.key_policy(
        account=args.account,
        admin_role=args.admin_role,
        enclave_role=args.enclave_role,
        operator_role=args.operator_role,
        pcrs=pcrs,
        frozen=args.frozen,
    )
    print(json.dumps(document, indent=2))
    return 0


# -- inputs ----------------------------------------------------------------------------------


def _with_eif_pcrs(texts: list[str], eif: str | None) -> list[str]:
    """``--expect-pcr`` values plus those of the ``--expect-eif`` file, which must agree."""
    if eif is None:
        return texts
    from_eif = key_policy.measurements_from_eif(Path(eif), "--expect-eif")
    for text in texts:
        index, value = key_policy.parse_pcr(text, "--expect-pcr")
        if index in from_eif and from_eif[index] != value:
            raise TrustError(
                f"--expect-pcr {index}= is not PCR{index} of --expect-eif {eif}: give one of "
                "them, or the values of the image that is deployed"
            )
    return texts + [f"{index}={value.hex()}" for index, value in sorted(from_eif.items())]


def _open(path: str, flag: str) -> BinaryIO:
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise TrustError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _read_bounded(handle: BinaryIO, label: str, limit: int = MAX_DOCUMENT_INPUT_BYTES) -> bytes:
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise TrustError(f"{label} is larger than {limit} bytes: not what this command reads")
    return data


def _document_bytes(data: bytes, content_type: str | None = None) -> bytes:
    """Raw CBOR as is; base64 text (line breaks allowed) decoded. Anything else is refused."""
    if content_type is not None and content_type.split(";")[0].strip().lower() == CBOR_TYPE:
        return data
    if data[:1] and data[0] in _CBOR_STARTS:
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise TrustError(
            "the input is neither a CBOR attestation document nor base64 text of one"
        ) from None


def _load_root(path: str | None) -> x509.Certificate | None:
    if path is None:
        return None
    with _open(path, "--unsafe-root") as handle:
        pem = _read_bounded(handle, path, MAX_ROOT_PEM_BYTES)
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise TrustError(f"--unsafe-root: {path} is not a PEM certificate") from None


def _expected_pcrs(texts: list[str]) -> dict[int, bytes]:
    expected: dict[int, bytes] = {}
    for text in texts:
        index, value = key_policy.parse_pcr(text, "--expect-pcr")
        if expected.setdefault(index, value) != value:
            raise TrustError(f"--expect-pcr: PCR{index} is given two different values")
    return expected


def _parse_hex(text: str, flag: str) -> bytes:
    try:
        if text.isascii() and text.isalnum():
            return bytes.fromhex(text)
    except ValueError:
        pass
    raise TrustError(f"{flag}: expected hexadecimal digits (an even number of them)")


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TrustError(f"--at: {_preview(text)} is not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise TrustError("--at: give a time zone, e.g. 2022-10-13T09:00:00Z")
    return moment.astimezone(UTC)


def _preview(value: str | bytes, limit: int = _PREVIEW_CHARS) -> str:
    """Untrusted text made safe to print: decoded leniently, control characters replaced."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = "".join(c if c.isprintable() else " " for c in text.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"
