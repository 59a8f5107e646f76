"""A LOCAL KMS for development and tests: AWS KMS's JSON protocol on loopback, with Recipient.

No public KMS emulator answers ``Recipient`` (attested decryption), so the simulator has its
own. It is faithful where the enclave's security depends on it, and small everywhere else:

* every request carries a SigV4 signature, checked by botocore (independent of our
  :mod:`enclave.sigv4`) with credentials kept in the state folder
  (:mod:`~noflylist_simulator.kms_auth`);
* every call on a key is authorised by the key's policy (:mod:`noflylist_simulator.policy`),
  with KMS's condition keys, ``kms:RecipientAttestation:*`` included
  (:mod:`~noflylist_simulator.kms_actions`), and then by its grants, which never get past an
  explicit Deny (:mod:`~noflylist_simulator.kms_grants`);
* a ``Recipient``'s attestation document is verified against the simulator's root, and the
  answer is ``CiphertextForRecipient``, a CMS EnvelopedData for the document's public key,
  never ``Plaintext`` (:mod:`~noflylist_simulator.kms_request`);
* the encryption context is bound into each ciphertext blob's AES-GCM tag
  (:mod:`~noflylist_simulator.kms_blob`).

This module is the HTTP server (POST / only, bounded body, one request a connection), the
in-process administration the demo and tests use, and the command line. Errors are HTTP 400
with ``{"__type": code, "message": text}``, as KMS sends them.

Key material and credentials are kept IN CLEAR in the state folder (a file of mode 0600,
:mod:`~noflylist_simulator.kms_state`): this is a development tool that protects nothing.
Never give it a real secret.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509

from enclave.sigv4 import Credentials
from noflylist_simulator.kms_actions import Service
from noflylist_simulator.kms_auth import authenticate, create_credentials
from noflylist_simulator.kms_errors import LocalKMSError, fault
from noflylist_simulator.kms_state import STATE_FILE, State

__all__ = ["STATE_FILE", "LocalKMS", "LocalKMSError", "main"]

_log = logging.getLogger(__name__)

#: A Recipient's document may be 256 KiB of base64 (API limit), plus the rest of a request.
MAX_REQUEST_BYTES = 512 * 1024
#: Seconds any one socket read or write may take, so a stalled client cannot hold a thread.
SOCKET_TIMEOUT = 10.0

_TARGET_PREFIX = "TrentService."
_JSON_TYPE = "application/x-amz-json-1.1"
_WARNING = (
    "LOCAL KMS (simulator): keys and credentials are stored in clear in %s and documents are "
    "trusted from a throwaway root; for development and tests only"
)


# -- HTTP -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    server: _Server

    def do_POST(self) -> None:
        status, answer = self.server.local_kms._answer(self)
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", _JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("local KMS: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    local_kms: LocalKMS


class LocalKMS:
    """The local KMS on ``127.0.0.1``: ``start()`` returns its URL, ``stop()`` ends it."""

    def __init__(
        self,
        state: Path,
        *,
        simulator_root: x509.Certificate,
        region: str = "us-east-1",
        account: str = "111122223333",
        port: int = 0,
    ) -> None:
        self.region, self.account = region, account
        self._state = State(Path(state), region, account)
        self._service = Service(self._state, simulator_root)
        self._port = port
        self._server: _Server | None = None

    # -- lifecycle --

    def start(self) -> str:
        """Listen on loopback and serve in a daemon thread; return the endpoint URL."""
        try:
            import botocore.auth  # noqa: F401  (fail now, not at the first request)
        except ImportError:
            raise LocalKMSError(
                "the local KMS checks signatures with botocore: pip install -e '.[dev]'"
            ) from None
        _log.warning(_WARNING, self._state.folder)
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.local_kms = self
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="local-kms", daemon=True).start()  # fmt: skip
        self._server = server
        return self.url

    @property
    def url(self) -> str:
        if self._server is None:
            raise LocalKMSError("the local KMS is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalKMS:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- in-process administration (the demo, tests) --

    def create_credentials(
        self, principal_arn: str | None = None, *, session_token: bool = False
    ) -> Credentials:
        """Make and store credentials for ``principal_arn`` (default: a ``noflylist-dev``
        user of this account), with a session token if asked, like an assumed role's."""
        principal_arn = principal_arn or f"arn:aws:iam::{self.account}:user/noflylist-dev"
        return create_credentials(self._state, principal_arn, session_token=session_token)

    def create_key(self, principal_arn: str, *, policy_document: str | None = None) -> str:
        """CreateKey as ``principal_arn`` without HTTP; returns the key ARN."""
        request = {} if policy_document is None else {"Policy": policy_document}
        metadata = self._service.create_key(principal_arn, request)["KeyMetadata"]
        return str(metadata["Arn"])

    def put_key_policy(self, key_id: str, policy_document: str, *, principal_arn: str) -> None:
        """PutKeyPolicy as ``principal_arn`` without HTTP (the current policy must allow it)."""
        self._service.put_key_policy(principal_arn, {"KeyId": key_id, "Policy": policy_document})

    # -- one request --

    def _answer(self, handler: _Handler) -> tuple[int, dict[str, Any]]:
        """Read, authenticate and run one request; (status, JSON answer)."""
        try:
            body = _read_body(handler)
            headers = {name.lower(): value for name, value in handler.headers.items()}
            credential = authenticate(
                self._state, handler.command, handler.path, headers, body, datetime.now(UTC)
            )
            action = headers.get("x-amz-target", "").removeprefix(_TARGET_PREFIX)
            run = self._service.actions.get(action)
            if run is None or not headers.get("x-amz-target", "").startswith(_TARGET_PREFIX):
                raise fault("UnknownOperationException", "The operation is not supported.")
            try:
                request = json.loads(body or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise fault("SerializationException", "The body is not valid JSON.") from None
            if not isinstance(request, dict):
                raise fault("SerializationException", "The body must be a JSON object.")
            return 200, run(credential.principal_arn, request)
        except LocalKMSError as exc:
            if exc.code is None:  # unusable state, not a refusal
                _log.error("local KMS: %s", exc)
                return 500, {"__type": "KMSInternalException", "message": str(exc)}
            _log.info("local KMS: refused: %s: %s", exc.code, exc)
            return 400, {"__type": exc.code, "message": str(exc)}
        except Exception:
            _log.exception("local KMS: internal error")
            return 500, {"__type": "KMSInternalException", "message": "internal error"}


def _read_body(handler: _Handler) -> bytes:
    if handler.path.split("?")[0] != "/":
        raise fault("UnknownOperationException", "KMS answers POST / only.")
    length = handler.headers.get("Content-Length", "")
    # ASCII only: str.isdigit() also passes digits such as "²", which int() refuses.
    if not (length.isascii() and length.isdigit()) or handler.headers.get("Transfer-Encoding"):
        raise fault("SerializationException", "Send the body with a Content-Length.")
    digits = length.lstrip("0") or "0"
    # More digits than the limit has is larger, and int() refuses over 4300 digits.
    if len(digits) > len(str(MAX_REQUEST_BYTES)) or int(digits) > MAX_REQUEST_BYTES:
        handler.close_connection = True
        raise fault("ValidationException", f"The request is larger than {MAX_REQUEST_BYTES}.")
    return handler.rfile.read(int(digits))


# -- running alone ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m noflylist_simulator.kms_server --state DIR [--port N]``: print the URL, serve."""
    from noflylist_simulator.ca import load_or_create

    parser = argparse.ArgumentParser(description="The simulator's local KMS (development only).")
    parser.add_argument("--state", type=Path, required=True, help="folder for keys and the CA")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account", default="111122223333")
    parser.add_argument("--new-credentials", metavar="PRINCIPAL_ARN",
                        help="create credentials for this principal and print them")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = load_or_create(args.state).root
    kms = LocalKMS(args.state, simulator_root=root, region=args.region, account=args.account,
                   port=args.port)  # fmt: skip
    with kms:
        if args.new_credentials:
            made = kms.create_credentials(args.new_credentials)
            print(f"AWS_ACCESS_KEY_ID={made.access_key_id}")
            print(f"AWS_SECRET_ACCESS_KEY={made.secret_access_key}")
        print(kms.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
