"""The answer key, and the signature a screening answer gets when the client sends a nonce.

At start the service makes one Ed25519 key (RFC 8032, from ``cryptography``). Its private
half lives only in this process's memory: no method returns it, nothing serialises it, and a
restart makes a new key. Its public half is bound into every attestation document the
service hands out (``user_data``'s ``answer_key``, :mod:`noflylist.wire`), so a client that
verified a document knows that a signature under this key was made by the code the document
measures. What is signed is the statement of :mod:`noflylist.answer_format`: the question
(as a SHA-256), the verdicts, the list, the time, the client's nonce and the answer's body.

Why a key of our own rather than TLS: the service speaks plain HTTP, the host relays every
byte, and a signature over each answer holds whatever carries it (a relay, a cache, a log).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from noflylist.answer_format import (
    MAX_REASON_CHARS,
    SIGNATURE_HEADER,
    STATEMENT_HEADER,
    Statement,
    encode_header,
    encode_statement,
    key_id,
)

__all__ = ["AnswerKey", "Facts", "signed_headers"]


class AnswerKey:
    """An Ed25519 key made in this process; only its public half and signatures leave."""

    __slots__ = ("_private", "key_id", "public_raw")

    def __init__(self) -> None:
        self._private = Ed25519PrivateKey.generate()
        #: The raw 32-byte public key (RFC 8032 section 5.1.5), as bound into ``user_data``.
        self.public_raw = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_raw)

    def sign(self, statement: bytes) -> bytes:
        return self._private.sign(statement)

    def __repr__(self) -> str:  # never the private half
        return f"AnswerKey(key_id={self.key_id})"


@dataclass
class Facts:
    """What a screening route decided, gathered as it answers, for the statement.

    ``question`` is the name's UTF-8 bytes (one name) or the request body (a manifest), or
    ``None`` when no name could be read; ``verdicts`` one line a name, or one for the request
    as a whole; ``serial`` and ``envelope_sha256`` the list the answer was decided on.
    """

    question: bytes | None = None
    verdicts: Sequence[str] = ()
    serial: int | None = None
    envelope_sha256: bytes | None = None


def refused(reason: str) -> str:
    """A ``refused: `` verdict line; the reason as printable ASCII, cut to the format's bound.

    The reason is the one the body carries (the body's SHA-256 binds it exactly); the line
    only has to be readable, so any other character becomes ``?``.
    """
    text = "".join(c if " " <= c <= "~" else "?" for c in reason.strip())[:MAX_REASON_CHARS]
    return "refused: " + (text or "?")


def signed_headers(
    key: AnswerKey, *, route: str, nonce: bytes, status: int, body: bytes, facts: Facts
) -> dict[str, str]:
    """The ``Noflylist-Statement`` and ``Noflylist-Signature`` headers for one answer."""
    statement = Statement(
        key_id=key.key_id,
        route=route,
        nonce=nonce,
        question_sha256=None if facts.question is None else hashlib.sha256(facts.question).digest(),
        status=status,
        verdicts=tuple(facts.verdicts) or ("unavailable",),
        time_ms=time.time_ns() // 1_000_000,
        serial=facts.serial,
        envelope_sha256=facts.envelope_sha256,
        body_sha256=hashlib.sha256(body).digest(),
    )
    data = encode_statement(statement)
    return {STATEMENT_HEADER: encode_header(data), SIGNATURE_HEADER: encode_header(key.sign(data))}
