"""A client that trusts an answer only when the enclave signed it for this question.

::

    client = Client("http://screening.example:8000", expected_pcrs={0: PCR0})
    verdict = client.screen("Big Bird")        # Listed / Cleared / Refused / Unavailable
    verdicts = client.screen_many(["Elmo", "Big Bird"])

What each answer is checked against, in this order (:func:`verify_answer`):

1. the signature, under an answer key learnt from an attestation document that verified
   against the AWS root (or an ``unsafe_root``), with a fresh nonce and the expected PCRs;
   the statement's ``key-id`` picks the key, so several replicas behind a load balancer,
   each with its own key, are each attested once, when first met;
2. the statement is ``noflylist-answer-1``, for this route, this request's nonce (fresh, 16
   random bytes a request), this question (SHA-256 of the name, or of the exact body sent),
   the status and the body received;
3. the verdicts agree with the body, and the list's serial is at least ``min_serial``.

A signature that does not verify under the key known for its ``key-id`` (a replica that
restarted with a new key under the same id cannot happen, but a relay can try) is answered
by attesting once more; if it still fails, :class:`AnswerNotVerified`. Nothing here imports
the server: standard library, ``cryptography`` and the wire format only.

When the list in service carries a client policy, the service screens only for the clients
its owner registered: give ``client_id`` and ``client_key`` (:func:`load_client_key` reads
the key ``noflylist client-key new`` wrote) and every screening request is signed (RFC 9421,
:func:`noflylist.httpsig.sign_request`) over the method, the request target exactly as sent
and the body. A 401 (signature refused) or 429 (over budget) raises :class:`AccessRefused`
with the service's reason; the attestation request is never signed.
"""

from __future__ import annotations

import binascii
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from enclave import http_client
from enclave.errors import NoflylistError
from noflylist.answer_format import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    STATEMENT_HEADER,
    AnswerFormatError,
    Statement,
    decode_signature,
    decode_statement_header,
    key_id,
    parse_statement,
    question_sha256,
)
from noflylist.client.attestation import AttestationDocument, AttestationError, verify
from noflylist.clients import CLIENT_ID
from noflylist.httpsig import SignatureRefused, sign_request
from noflylist.wire import (
    ATTESTATION_PATH,
    CBOR_TYPE,
    PASSENGER_PATH,
    SCREEN_PATH,
    ServedList,
    UserDataError,
    decode_user_data,
)

__all__ = [
    "AccessRefused",
    "AnswerNotVerified",
    "AttestationFailed",
    "Cleared",
    "Client",
    "ClientError",
    "Listed",
    "Refused",
    "ServiceUnavailable",
    "Unavailable",
    "Verdict",
    "load_client_key",
    "verify_answer",
]

#: A fresh nonce a request: 16 random bytes cannot repeat in practice.
NONCE_BYTES = 16
#: Attestations tried to meet the replica whose key signed an answer (behind a round-robin
#: balancer each try may reach another replica); a few times the replicas expected.
MAX_ATTESTATIONS_PER_ANSWER = 8
#: Largest answer read: a signed 1,000-name manifest is well under this.
MAX_ANSWER_BYTES = 1024 * 1024
#: Seconds to connect, and to wait for each read.
TIMEOUT_SECONDS = 10.0
#: Largest client key file read: an Ed25519 PKCS8 PEM is 119 bytes, an RSA-4096 one 3.3 KiB.
MAX_CLIENT_KEY_BYTES = 16 * 1024
#: A refusal's reason is one line; the service's are under 300 characters.
MAX_REFUSAL_REASON_CHARS = 400
#: A Retry-After this reads: delay-seconds (RFC 9110 section 10.2.3), under 32 years.
_RETRY_AFTER = re.compile(r"[0-9]{1,9}")
#: The budgets a 429's ``Noflylist-Budget`` may name (noflylist.clients).
_BUDGETS = ("names_per_minute", "names_per_day")


class ClientError(NoflylistError):
    """Base of every failure of :class:`Client`; the message says what failed and what to do."""


class AttestationFailed(ClientError):
    """The service's attestation document did not verify (root, nonce, PCRs, user_data)."""


class AnswerNotVerified(ClientError):
    """An answer is not the enclave's signed answer to this question: do not use it."""


class ServiceUnavailable(ClientError):
    """The service could not be reached or did not answer in time."""


class AccessRefused(ClientError):
    """The service would not screen for this client: 401, the request's signature was refused
    (unsigned, unknown client, clock, replay), or 429, a budget is spent. Nothing was screened.

    ``reason`` is the service's one line (it never quotes a name); for a 429, ``budget``
    (``names_per_minute`` or ``names_per_day``) and ``retry_after`` (seconds; ``None`` when
    waiting does not help: the request holds more names than the budget). A refusal is not a
    verdict, so it is not verified: a relay could forge one, as it could drop the request.
    """

    def __init__(
        self, message: str, *, status: int, reason: str, budget: str | None = None,
        retry_after: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.budget = budget
        self.retry_after = retry_after


@dataclass(frozen=True)
class Listed:
    serial: int


@dataclass(frozen=True)
class Cleared:
    serial: int


@dataclass(frozen=True)
class Refused:
    """The service refused to screen the name (e.g. control characters); ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class Unavailable:
    """The service has no list loaded yet: it never says cleared then."""


Verdict = Listed | Cleared | Refused | Unavailable


@dataclass(frozen=True)
class _Answer:
    """A verified answer: its status, body and signed statement."""

    status: int
    body: bytes
    statement: Statement


def verify_answer(
    public_key: bytes,
    *,
    route: str,
    nonce: bytes,
    question: bytes | None,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
) -> Statement:
    """Check one signed answer (headers with lower-case names); its statement, or a refusal.

    ``question`` is what was asked: the name's UTF-8 bytes (single route) or the body sent.
    """
    statement_value = headers.get(STATEMENT_HEADER.lower())
    signature_value = headers.get(SIGNATURE_HEADER.lower())
    if statement_value is None or signature_value is None:
        raise AnswerNotVerified(
            "the answer carries no signature (Noflylist-Statement/Noflylist-Signature): "
            "the service is older than signed answers, or something between rewrote it"
        )
    try:
        data = decode_statement_header(statement_value)
        signature = decode_signature(signature_value)
    except AnswerFormatError as exc:
        raise AnswerNotVerified(f"the answer's signature headers are malformed: {exc}") from None
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except InvalidSignature:
        raise AnswerNotVerified(
            "the answer's signature does not verify under the attested answer key: the "
            "statement or the signature was altered, or another service signed it"
        ) from None
    try:
        statement = parse_statement(data)
    except AnswerFormatError as exc:
        raise AnswerNotVerified(f"the signed statement is not readable: {exc}") from None
    problems = [
        (statement.key_id != key_id(public_key), "it names another answer key"),
        (statement.route != route, "it answers another route"),
        (statement.nonce != nonce, "it answers another request (the nonce differs: a replay)"),
        (
            statement.question_sha256
            != (None if question is None else question_sha256(question)),
            "it answers another question (another name's answer)",
        ),
        (statement.status != status, "its status is not the one received"),
        (statement.body_sha256 != question_sha256(body), "the body received is not the one signed"),
    ]
    for wrong, why in problems:
        if wrong:
            raise AnswerNotVerified(f"the signed answer does not match this request: {why}")
    return statement


class Client:
    """Screen names at ``url`` and accept only answers the attested enclave signed.

    ``expected_pcrs`` maps PCR indexes to the values the enclave must report (PCR0 at
    least). ``unsafe_root`` trusts another root than AWS's (the simulator's): the documents
    then prove nothing about AWS hardware. ``min_serial`` refuses a replica on an older list.
    ``client_id`` and ``client_key`` (both or neither): the id the list's owner registered and
    its Ed25519 private key (:func:`load_client_key`); every screening request is then signed.
    """

    def __init__(
        self,
        url: str,
        expected_pcrs: Mapping[int, bytes],
        *,
        unsafe_root: x509.Certificate | None = None,
        unsafe_allow_debug: bool = False,
        min_serial: int | None = None,
        timeout: float = TIMEOUT_SECONDS,
        client_id: str | None = None,
        client_key: Ed25519PrivateKey | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ClientError(f"url must be http(s)://host[:port][/path], got {url[:80]!r}")
        if not expected_pcrs:
            raise ClientError("expected_pcrs must name at least PCR0: which code to trust")
        _check_client(client_id, client_key)
        self.url = url.rstrip("/")
        self._expected = dict(expected_pcrs)
        self._root = unsafe_root
        self._allow_debug = unsafe_allow_debug
        self._min_serial = min_serial
        self._timeout = timeout
        self._client_id = client_id
        self._client_key = client_key
        #: The origin-form path the url's own path puts before every route (usually none).
        self._prefix = parts.path.rstrip("/")
        #: Verified answer keys by key-id: one per replica met.
        self.keys: dict[str, bytes] = {}
        #: The last verified document and its user_data, for callers that show them.
        self.last_document: AttestationDocument | None = None
        self.last_served: ServedList | None = None
        #: The last verified answer (status, body, statement), for callers that print it.
        self.last_answer: _Answer | None = None

    # -- attestation ---------------------------------------------------------------------

    def attest(self) -> ServedList:
        """Fetch and verify a fresh attestation document; remember its answer key."""
        nonce = secrets.token_bytes(32)
        response = self._send("GET", f"{ATTESTATION_PATH}?nonce={nonce.hex()}", {}, b"",
                              accept=CBOR_TYPE, what="the attestation request")  # fmt: skip
        if response.status != 200:
            raise AttestationFailed(
                f"{self.url} answered {response.status} to the attestation request; no "
                "passenger query was sent; retry later"
            )
        return self.accept_attestation(response.body, nonce)

    def accept_attestation(self, document_bytes: bytes, nonce: bytes) -> ServedList:
        """Verify a document fetched with ``nonce`` (root, nonce, PCRs, user_data) and learn
        its answer key; what :meth:`attest` does after fetching."""
        try:
            document = verify(
                document_bytes, unsafe_root=self._root, expected_pcrs=self._expected,
                nonce=nonce, unsafe_allow_debug=self._allow_debug,
            )  # fmt: skip
        except AttestationError as exc:
            raise AttestationFailed(f"attestation document NOT verified: {exc}") from None
        if document.user_data is None:
            raise AttestationFailed("the document carries no noflylist user_data")
        try:
            served = decode_user_data(document.user_data)
        except UserDataError as exc:
            raise AttestationFailed(f"the document's user_data is not noflylist's: {exc}") from None
        if served.answer_key is None:
            raise AttestationFailed(
                "the service binds no answer key into its attestation: it is older than "
                "signed answers; upgrade it, or its answers cannot be verified"
            )
        self._check_serial(served.serial, "its attestation")
        self.keys[key_id(served.answer_key)] = served.answer_key
        self.last_document, self.last_served = document, served
        return served

    # -- screening -----------------------------------------------------------------------

    def screen(self, name: str) -> Verdict:
        """One name, through ``GET /enclave/passenger``."""
        question = name.encode("utf-8")
        answer = self._signed("GET", f"{PASSENGER_PATH}?name={quote(name, safe='')}", {}, b"",
                              question, PASSENGER_PATH)  # fmt: skip
        return self._verdicts(answer, 1)[0]

    def screen_many(self, names: Sequence[str]) -> list[Verdict]:
        """Up to 1,000 names in one ``POST /v1/screen``; one verdict a name, in order."""
        body = json.dumps({"names": list(names)}, ensure_ascii=False).encode("utf-8")
        answer = self._signed("POST", SCREEN_PATH, {"Content-Type": "application/json"}, body,
                              body, SCREEN_PATH)  # fmt: skip
        return self._verdicts(answer, len(names))

    def _signed(
        self, method: str, target: str, headers: dict[str, str], body: bytes,
        question: bytes, route: str,
    ) -> _Answer:  # fmt: skip
        if not self.keys:
            self.attest()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sent = {**headers, NONCE_HEADER: nonce.hex(), **self._signature(method, target, body)}
        response = self._send(method, target, sent, body, accept="*/*",
                              what="the screening request")  # fmt: skip
        if response.status in (401, 429):  # not an answer to the question: nothing to verify
            raise self._access_refused(response)
        claimed = _claimed_key_id(response.headers)
        if claimed is None:  # no readable statement: verify_answer says what is wrong
            verify_answer(next(iter(self.keys.values())), route=route, nonce=nonce,
                          question=question, status=response.status, body=response.body,
                          headers=response.headers)  # fmt: skip
            raise AnswerNotVerified("the answer's statement is not readable")
        retried = False
        for attempt in range(MAX_ATTESTATIONS_PER_ANSWER + 1):
            key = self.keys.get(claimed)
            if key is not None:
                try:
                    statement = verify_answer(
                        key, route=route, nonce=nonce, question=question,
                        status=response.status, body=response.body, headers=response.headers,
                    )  # fmt: skip
                    self.last_answer = _Answer(response.status, response.body, statement)
                    return self.last_answer
                except AnswerNotVerified:
                    if retried:
                        raise
                    retried = True
                    del self.keys[claimed]  # perhaps a stale key: attest and try once more
            if attempt == MAX_ATTESTATIONS_PER_ANSWER:
                break
            self.attest()
        raise AnswerNotVerified(
            f"the answer is signed by a key no attestation of {self.url} showed in "
            f"{MAX_ATTESTATIONS_PER_ANSWER} tries: it does not come from an attested enclave"
        )

    def _signature(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """RFC 9421 headers over the request exactly as it goes on the wire: the target is the
        url's path, then the route and the query, as :func:`enclave.http_client.request` sends
        it (a proxy is sent the absolute form and forwards this origin form)."""
        if self._client_id is None or self._client_key is None:
            return {}
        try:
            return sign_request(method, self._prefix + target, body, key_id=self._client_id,
                                private_key=self._client_key)  # fmt: skip
        except SignatureRefused as exc:  # a bug here, found before anything is sent
            raise ClientError(f"the screening request could not be signed: {exc}") from None

    def _access_refused(self, response: http_client.Response) -> AccessRefused:
        """A 401 or 429 as an error that says why and what to do; never the names asked."""
        status = response.status
        reason = _one_line(response.body) or "(no reason given)"
        who = "" if self._client_id is None else f" to client {self._client_id}"
        if status == 401:
            fix = (
                "" if self._client_key is not None else
                "; this list answers only requests signed by a client its owner registered: "
                "make a key with `noflylist client-key new`, have the owner add its "
                ".public.json to the sealed policy, and give client_id= and client_key= "
                "(noflylist check --client-id ID --client-key FILE)"
            )  # fmt: skip
            return AccessRefused(
                f"{self.url} refused the screening request{who} (401): {reason}{fix}",
                status=status, reason=reason,
            )  # fmt: skip
        budget = response.headers.get("noflylist-budget")
        budget = budget if budget in _BUDGETS else None
        retry = response.headers.get("retry-after", "").strip()
        retry_after = int(retry) if _RETRY_AFTER.fullmatch(retry) else None
        when = (
            f"retry after {retry_after} s" if retry_after is not None
            else "waiting does not help: ask fewer names a request"
        )  # fmt: skip
        return AccessRefused(
            f"{self.url} refused the screening request{who} (429, over budget "
            f"{budget or '(unnamed)'}; {when}): {reason}",
            status=status, reason=reason, budget=budget, retry_after=retry_after,
        )  # fmt: skip

    def _verdicts(self, answer: _Answer, count: int) -> list[Verdict]:
        statement = answer.statement
        self._check_serial(statement.serial, "its answer")
        if answer.status == 503:
            return [Unavailable()] * count
        if answer.status != 200:
            reason = statement.verdicts[0].removeprefix("refused: ")
            return [Refused(reason)] * count
        if len(statement.verdicts) != count or statement.serial is None:
            raise AnswerNotVerified("the signed answer has not one verdict a name")
        serial = statement.serial
        verdicts: list[Verdict] = []
        for line in statement.verdicts:
            if line == "listed":
                verdicts.append(Listed(serial))
            elif line == "cleared":
                verdicts.append(Cleared(serial))
            else:
                raise AnswerNotVerified("a 200 answer carries a verdict that is not a screening")
        _check_body(answer.body, verdicts)
        return verdicts

    def _check_serial(self, serial: int | None, where: str) -> None:
        if self._min_serial is not None and serial is not None and serial < self._min_serial:
            raise AnswerNotVerified(
                f"{where} is on list serial {serial}, older than min_serial {self._min_serial}: "
                "this replica has not loaded the current list; ask again or alert its operator"
            )

    def _send(
        self, method: str, target: str, headers: dict[str, str], body: bytes, *,
        accept: str, what: str,
    ) -> http_client.Response:  # fmt: skip
        try:
            return http_client.request(
                method, self.url + target, headers={"Accept": accept, **headers}, body=body,
                connect_timeout=self._timeout, read_timeout=self._timeout,
                max_response_bytes=MAX_ANSWER_BYTES,
            )  # fmt: skip
        except http_client.TransportError as exc:
            raise ServiceUnavailable(f"{what} to {self.url} failed: {exc}") from None


def load_client_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM PKCS8 file, as ``noflylist client-key new`` writes it.

    Refused, as ssh refuses, when group or others may read the file (mode & 0o077): a key
    others can read is a key others can sign with, and its budget is this client's. Refused
    too: a file that is not one unencrypted PEM private key, and a key that is not Ed25519
    (the service verifies ``alg="ed25519"`` only). Raises only :class:`ClientError`.
    """
    shown = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ClientError(f"client key {shown}: cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ClientError(f"client key {shown} is not a regular file: give the .key file")
        if mode & 0o077:
            raise ClientError(
                f"client key {shown} is readable by group or others (permissions "
                f"{stat.S_IMODE(mode):04o} are too open): a key others can read is a key "
                f"others can sign with; run chmod 600 {shown}"
            )
        data = handle.read(MAX_CLIENT_KEY_BYTES + 1)
    if len(data) > MAX_CLIENT_KEY_BYTES:
        raise ClientError(
            f"client key {shown} is larger than {MAX_CLIENT_KEY_BYTES} bytes: not a key file"
        )
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way to say a password is needed
        raise ClientError(
            f"client key {shown} is encrypted; the client reads unencrypted PKCS8 keys, "
            "protected by file permissions (noflylist client-key new writes one)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ClientError(
            f"client key {shown} is not a PEM private key (-----BEGIN PRIVATE KEY-----); "
            "make one with noflylist client-key new --id ID"
        ) from None
    finally:
        del data
    if not isinstance(key, Ed25519PrivateKey):
        raise ClientError(
            f"client key {shown} is {_kind(key)} key, not Ed25519: the service verifies only "
            "Ed25519 signatures; make one with noflylist client-key new --id ID"
        )
    return key


def _kind(key: object) -> str:
    """A private key's algorithm, for a message."""
    if isinstance(key, RSAPrivateKey):
        return f"an RSA-{key.key_size}"
    if isinstance(key, EllipticCurvePrivateKey):
        return f"an EC ({key.curve.name})"
    return f"a {type(key).__name__.lstrip('_')}"


def _check_client(client_id: str | None, client_key: object) -> None:
    """Both or neither, an id the policy format allows, an Ed25519 key."""
    if (client_id is None) != (client_key is None):
        missing = "client_key" if client_key is None else "client_id"
        raise ClientError(
            f"client_id and client_key go together, {missing} is missing: give both (the id "
            "the list's owner registered and its key, load_client_key(path)) or neither"
        )
    if client_id is not None and not CLIENT_ID.fullmatch(client_id):
        raise ClientError(
            "client_id must be 1 to 64 of A-Z a-z 0-9 . _ -: the id the list's owner "
            'registered (the "id" of its .public.json)'
        )
    if client_key is not None and not isinstance(client_key, Ed25519PrivateKey):
        raise ClientError(
            f"client_key must be an Ed25519 private key, not {type(client_key).__name__}: "
            "read it with load_client_key(path)"
        )


def _one_line(body: bytes) -> str:
    """The first line of a refusal's body, printable ASCII only, bounded."""
    line = body[: MAX_REFUSAL_REASON_CHARS * 4].decode("utf-8", "replace").strip().split("\n")[0]
    text = "".join(c if " " <= c <= "~" else "?" for c in line.strip())
    return text[:MAX_REFUSAL_REASON_CHARS]


def _claimed_key_id(headers: Mapping[str, str]) -> str | None:
    """The key-id the (not yet verified) statement names, to pick the replica's key."""
    value = headers.get(STATEMENT_HEADER.lower())
    if value is None:
        return None
    try:
        return parse_statement(decode_statement_header(value)).key_id
    except (AnswerFormatError, binascii.Error, ValueError):
        return None


def _check_body(body: bytes, verdicts: list[Verdict]) -> None:
    """The body agrees with the signed verdicts (the body is signed too; this catches a
    service bug, not an attacker)."""
    text = body.decode("utf-8", "replace").rstrip("\n")
    listed = [isinstance(v, Listed) for v in verdicts]
    if len(verdicts) == 1 and not text.startswith("{"):
        ok = text.endswith("CAN NOT BOARD!") if listed[0] else "cleared to fly" in text
    else:
        try:
            ok = [r["listed"] for r in json.loads(text)["results"]] == listed
        except (ValueError, KeyError, TypeError):
            ok = False
    if not ok:
        raise AnswerNotVerified("the answer's body disagrees with its signed verdicts")

