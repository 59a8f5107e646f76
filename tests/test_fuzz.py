"""Fuzz targets for every parser of untrusted bytes: only the module's own error may escape.

Each target takes one ``bytes`` input and feeds it to one parser: the CBOR decoder, the BER
decoder, the CMS parser and decryptor, COSE_Sign1, the Nitro attestation verifier, the
envelope parser and decryptor, the HTTP request framing, the query string and name checks,
the JSON body of ``/v1/screen``, and the whole HTTP application behind the framing. A target
lets exactly one exception type through (the module's, see :data:`TARGETS`); anything else,
a hang or a crash is a finding. Targets also check what a parser returns where there is an
invariant (a framed request is complete; every answer is well-formed HTTP, never a 500).

Random bytes are capped at :data:`MAX_RANDOM_BYTES` and byte mutations keep a seed's shape,
so neither reaches a document nested 300,000 deep, a number of 5000 digits or a claimed
length of 2**63. **Structured generators** (:func:`structured`) build those: deep nesting,
huge numbers and lengths, long strings, valid prefixes with garbage tails, envelopes (v2 and
fernet), credentials and manifests changed field by field, CBOR and COSE documents decoded
from real ones, changed node by node and encoded again, and BER re-encoded from the CMS
vectors with a node replaced, removed or repeated. A generator takes its decisions from a
:class:`_Choices`, so hypothesis and atheris drive the same code.

Two drivers share the targets:

* **CI, hypothesis**: ``FUZZ_EXAMPLES`` inputs a target (default 300; a few seconds in all),
  half random bytes, half mutations (flips, splices, truncations) of seed inputs that are
  valid (published Nitro documents, aws-nitro-enclaves-sdk-c CMS vectors, our own envelopes
  and requests), and ``STRUCTURED_EXAMPLES`` structured inputs for each target that has
  generators. A longer run: ``FUZZ_EXAMPLES=200000 python3 -m pytest tests/test_fuzz.py``.
* **atheris** (coverage-guided, libFuzzer), where it installs:
  ``python3 tests/test_fuzz.py TARGET -max_total_time=60`` (any libFuzzer flags), from a
  corpus of the same seeds; ``TARGET+structured`` feeds libFuzzer's bytes to the target's
  generators as their decisions instead. ``test_atheris_driver_runs_a_target_to_completion``
  runs every target for ``ATHERIS_SMOKE_RUNS`` inputs in CI (atheris is in the ``dev`` extra
  on x86_64 Linux, where it has wheels; elsewhere the test is skipped).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

if __name__ == "__main__":  # run as a script (atheris): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave import ber, cbor, cms, imds
from enclave.ber import TLV
from enclave.errors import NoflylistError
from enclave.kms import DataKey
from noflylist import answer_format, decision, envelope, matchkey, routes, wire
from noflylist.client import attestation, cose
from noflylist.lists import ListHolder
from noflylist.metrics import Metrics
from noflylist.sources import FileSource
from noflylist.tools import seal
from noflylist.transport import framing as http_framing
from noflylist_simulator.cms_writer import encode_enveloped_data
from tests.conftest import VECTORS
from tests.support import ber_tree
from tests.support.fake_kms import KEY_ARN, FakeDataKeys

ROOT = Path(__file__).resolve().parent.parent
#: Inputs per target under hypothesis; raise it for a longer run.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
#: Largest random input; seeds (Nitro documents are ~4.6 KB) are mutated at any size.
MAX_RANDOM_BYTES = 512
#: Structured inputs per target under hypothesis; each is one of the target's generators.
STRUCTURED_EXAMPLES = int(os.environ.get("FUZZ_STRUCTURED_EXAMPLES", "200"))
#: libFuzzer runs per target in CI's bounded atheris run (about 1.5 s a target here, most of
#: it imports and seed loading).
ATHERIS_SMOKE_RUNS = 3000


# -- fixed material the targets need -----------------------------------------------------------


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _FixedKey:
    """A DataKeyDecryptor that always returns the same 32-byte key (KMS is not under test)."""

    key = bytes(range(32))

    def decrypt(self, ciphertext_blob: bytes, **_: object) -> bytes:
        return self.key

    def generate_data_key(self, key_id: str, **_: object) -> DataKey:
        return DataKey(KEY_ARN, b"blob", self.key, None)


@functools.cache
def _app() -> routes.Routes:
    """The HTTP application over a loaded list, without sockets."""
    import logging

    kms = FakeDataKeys()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / "envelope.json"
    path.write_bytes(seal.seal_v2(["Big Bird", "Elmo"], kms, KEY_ARN, serial=1))
    metrics = Metrics()
    holder = ListHolder(FileSource(str(path)), kms, metrics)
    holder.reload(only_if_changed=False)
    quiet = logging.getLogger("test.fuzz.access")
    quiet.setLevel(logging.WARNING)
    return routes.Routes(holder, metrics, access_log=quiet)


_NITRO = ("production-2022-10-13.cbor", "production-2023-01-18.cbor", "debug-2022-10-12.cbor")


@functools.cache
def _nitro_documents() -> tuple[tuple[bytes, datetime], ...]:
    """The published Nitro documents (see tests/vectors/ORIGIN.md) and when each was made."""
    expected = json.loads((VECTORS / "nitro" / "expected.json").read_text())
    return tuple(
        ((VECTORS / "nitro" / name).read_bytes(),
         datetime.fromisoformat(expected[name]["timestamp_utc"]))
        for name in _NITRO
    )  # fmt: skip


# -- the targets -------------------------------------------------------------------------------


def fuzz_cbor(data: bytes) -> None:
    encoded = cbor.encode(cbor.decode(data))
    assert cbor.encode(cbor.decode(encoded)) == encoded  # what decodes, round-trips


def fuzz_ber(data: bytes) -> None:
    tlv = ber.decode(data)
    assert isinstance(tlv, ber.TLV)


def fuzz_cms_parse(data: bytes) -> None:
    assert isinstance(cms.parse_enveloped_data(data), cms.EnvelopedData)


def fuzz_cms_decrypt(data: bytes) -> None:
    assert isinstance(cms.decrypt_enveloped_data(data, _rsa_key()), bytes)


def fuzz_cose(data: bytes) -> None:
    assert isinstance(cose.decode_sign1(data), cose.Sign1)


def fuzz_attestation(data: bytes) -> None:
    """Verified at the time of the real document the input shares most bytes with, so a
    mutant's certificates are still valid and verification goes on to the later steps."""
    nearest, now = max(_nitro_documents(), key=lambda known: _common_prefix(known[0], data))
    attestation.verify(data, now=now, unsafe_allow_debug=True)
    # A changed signed document that still verifies would be a forgery (ES384). (A
    # "mutation" may leave the document as it was, e.g. by setting a zero byte to zero.)
    assert data == nearest, "a changed attestation document verified"


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix, by bisection on slices (fast in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def fuzz_envelope(data: bytes) -> None:
    parsed = envelope.parse(data)
    if parsed.format == envelope.FORMAT_V3:
        table = envelope.decrypt_table(parsed, _FixedKey(), rule=matchkey.DEFAULT_RULE)
        assert len(table) <= table.stored_keys
        return
    names = list(envelope.decrypt(parsed, _FixedKey()))
    assert all(isinstance(name, str) and name.strip() for name in names)


def fuzz_imds(data: bytes) -> None:
    got = imds.parse_credentials_document(data, "role")
    for value in (got.access_key_id, got.secret_access_key, got.session_token):
        assert value and value.isascii() and value.isprintable() and " " not in value
    assert got.expiration is not None and got.expiration.tzinfo is not None


def fuzz_answer_statement(data: bytes) -> None:
    statement = answer_format.parse_statement(data)
    assert answer_format.encode_statement(statement) == data  # one spelling: what is read is
    # exactly what would be written


def fuzz_user_data(data: bytes) -> None:
    served = wire.decode_user_data(data)
    again = wire.encode_user_data(served)
    assert wire.decode_user_data(again) == served  # what is read, round-trips


def fuzz_http_framing(data: bytes) -> None:
    """Frame requests from ``data`` as the connection loop does; every one is whole."""
    framer = http_framing.RequestFramer()
    framer.buffer += data
    for _ in range(len(data) + 1):  # each framed request consumes bytes, so this ends
        request = framer.take_request(0.0)
        if request is None:
            return
        assert len(request.body) == int(request.headers.get("content-length", "0"))


def fuzz_query(data: bytes) -> None:
    # The request target is visible ASCII by the time the query is parsed (http_framing.py).
    query = bytes(b for b in data if 0x21 <= b <= 0x7E).decode("ascii")
    for names in routes._parse_query(query).values():
        for name in names:  # admission never raises: a verdict for every name
            verdict = decision.decide(None, name)
            assert isinstance(verdict, (decision.Refused, decision.Unavailable))


def fuzz_json_body(data: bytes) -> None:
    headers = {"content-type": "application/json"}
    request = http_framing.Request("POST", "/v1/screen", False, headers, data, True, 0.0)
    names = routes._parse_manifest(request)
    assert names and all(isinstance(name, str) for name in names)


def fuzz_http_app(data: bytes) -> None:
    """Frame ``data`` and answer every request: always well-formed HTTP, never a 500."""
    framer = http_framing.RequestFramer()
    framer.buffer += data
    app = _app()
    for _ in range(len(data) + 1):
        try:
            request = framer.take_request(0.0)
        except http_framing.RequestError as exc:
            answer = app.reject(exc.status, exc.reason)
            request = None
        else:
            if request is None:
                return
            answer = app.handle(request)
        assert answer.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in answer
        assert not answer.startswith(b"HTTP/1.1 500"), answer[:200]
        if request is None:
            return


#: Target name -> (function, the only exception type it may raise).
TARGETS: dict[str, tuple[Callable[[bytes], None], type[NoflylistError]]] = {
    "cbor": (fuzz_cbor, cbor.CBORError),
    "ber": (fuzz_ber, ber.BERError),
    "cms-parse": (fuzz_cms_parse, cms.CMSError),
    "cms-decrypt": (fuzz_cms_decrypt, cms.CMSError),
    "cose": (fuzz_cose, cose.COSEError),
    "attestation": (fuzz_attestation, attestation.AttestationError),
    "envelope": (fuzz_envelope, envelope.EnvelopeError),
    "imds": (fuzz_imds, imds.ImdsError),
    "user-data": (fuzz_user_data, wire.UserDataError),
    "answer-statement": (fuzz_answer_statement, answer_format.AnswerFormatError),
    "http-framing": (fuzz_http_framing, http_framing.RequestError),
    "query": (fuzz_query, routes.RequestRejected),
    "json-body": (fuzz_json_body, routes.RequestRejected),
    "http-app": (fuzz_http_app, http_framing.RequestError),
}


# -- seeds: valid inputs that mutations start from ----------------------------------------------

_STATEMENTS = tuple(
    answer_format.encode_statement(answer_format.Statement(
        "21fe31dfa154a261", route, bytes(range(16)), question, status, verdicts,
        1796422599123, serial, digest, bytes(range(32)),
    ))
    for route, question, status, verdicts, serial, digest in (
        ("/enclave/passenger", bytes(32), 200, ("listed",), 7, bytes(range(32))),
        ("/v1/screen", b"\x01" * 32, 200, ("cleared", "listed", "refused: names[2] is empty"),
         2**53 - 1, b"\x02" * 32),
        ("/enclave/passenger", None, 503, ("unavailable",), None, None),
    )
)

_IMDS_DOCUMENT = json.dumps({
    "Code": "Success", "LastUpdated": "2031-05-17T11:00:00Z", "Type": "AWS-HMAC",
    "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "secretvalue", "Token": "tokenvalue",
    "Expiration": "2031-05-17T13:00:00Z",
}).encode()  # fmt: skip


@functools.cache
def seeds(target: str) -> tuple[bytes, ...]:
    nitro = tuple(document for document, _ in _nitro_documents())
    sdkc = json.loads((VECTORS / "cms" / "sdkc_cms_parse_vectors.json").read_text())["vectors"]
    kms_cms = tuple(bytes.fromhex(v["ber_hex"]) for v in sdkc)
    ours = encode_enveloped_data(b"k" * 32, _rsa_key().public_key(), chunk_size=16)
    manifest = b'{"names": ["Big Bird", "Kermit"]}'
    requests = (
        b"GET /enclave/passenger?name=Big%20Bird HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /enclave/passenger?name=a+b&x=%C3%A9 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST /v1/screen HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(manifest), manifest),
        b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    by_target: dict[str, tuple[bytes, ...]] = {
        "cbor": (*nitro, cbor.encode({"a": [1, -2, b"x", None, True], 7: cbor.Tag(18, [b""])})),
        "ber": (*kms_cms, ours),
        "cms-parse": (*kms_cms, ours),
        "cms-decrypt": (ours, encode_enveloped_data(b"", _rsa_key().public_key())),
        "cose": nitro,
        "attestation": nitro,
        "envelope": (
            seal.seal_v2(["Big Bird", "Elmo"], _FixedKey(), KEY_ARN, serial=3),
            seal.seal_fernet(["bert", "ernie"], _FixedKey(), KEY_ARN),
            seal.seal_v3(["Big Bird", "Elmo"], _FixedKey(), KEY_ARN, serial=4),
        ),
        "imds": (_IMDS_DOCUMENT,),
        "user-data": tuple(
            wire.encode_user_data(wire.ServedList(*fields))
            for fields in ((bytes(range(32)), 7, "0.1.0"), (None, None, "0.1.0"),
                           (None, 3, "0.1.0", b"\x07" * 32))
        ),
        "answer-statement": _STATEMENTS,
        "http-framing": requests,
        "query": (b"name=Big%20Bird", b"name=a&nom=b", b"name=%C3%A9+x&&a=b", b"x=%25"),
        "json-body": (b'{"names": ["Big Bird", "\\u00e9"]}', b' {"names":["a"]} '),
        "http-app": requests,
    }
    return by_target[target]


def run_once(target: str, data: bytes) -> None:
    """Run one input; the target's own error type is the expected refusal."""
    function, allowed = TARGETS[target]
    try:
        function(data)
    except allowed:
        pass


# -- structured inputs: the shapes random bytes and byte mutations cannot reach ----------------

T = TypeVar("T")


class _Choices(Protocol):
    """Where a generator takes its decisions: hypothesis draws or libFuzzer's bytes."""

    def integer(self, low: int, high: int) -> int: ...

    def raw(self, max_size: int) -> bytes: ...


class _Drawn:
    """Decisions drawn by hypothesis, which can shrink them to a small failing example."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return int(self._draw(st.integers(low, high)))

    def raw(self, max_size: int) -> bytes:
        return bytes(self._draw(st.binary(max_size=max_size)))


class _Provided:
    """Decisions read from libFuzzer's bytes (atheris), so coverage steers them too."""

    def __init__(self, data: bytes) -> None:
        import atheris

        self._provider = atheris.FuzzedDataProvider(data)

    def integer(self, low: int, high: int) -> int:
        return int(self._provider.ConsumeIntInRange(low, high))

    def raw(self, max_size: int) -> bytes:
        return bytes(self._provider.ConsumeBytes(self._provider.ConsumeIntInRange(0, max_size)))


class _Seeded:
    """Decisions from a seeded PRNG, for tests that check what the generators make."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def raw(self, max_size: int) -> bytes:
        return self._random.randbytes(self._random.randint(0, max_size))


def _pick(c: _Choices, options: Sequence[T]) -> T:
    return options[c.integer(0, len(options) - 1)]


#: Depths, digit counts and lengths come from these classes, each as likely as the others, so
#: huge values come up as often as small ones. 300,000 levels is far past any recursion limit.
_SIZE_CLASSES = ((0, 40), (41, 2_000), (2_001, 70_000), (70_001, 300_000))


def _size(c: _Choices) -> int:
    low, high = _pick(c, _SIZE_CLASSES)
    return c.integer(low, high)


_TAILS = (b"\x00", b"\xff", b"}", b"]", b",", b"x", b"\x80", b"\x00\x00", b"\xff" * 9, b" 1")


def _prefix_with_tail(c: _Choices, valid: Sequence[bytes]) -> bytes:
    """A valid input, whole or cut anywhere, then garbage: bytes, a closer, or another input."""
    seed = _pick(c, valid)
    cut = len(seed) if c.integer(0, 1) else c.integer(0, len(seed))
    tail = c.raw(32) if not c.integer(0, 3) else _pick(c, (*_TAILS, _pick(c, valid)))
    return seed[:cut] + tail


# JSON: envelopes, manifests, IMDS credentials.

_JSON_ATOMS = (b"null", b"true", b"NaN", b"Infinity", b"-Infinity", b"[]", b"{}", b'""',
               b"[1,]", b'{"a" 1}', b"tru", b"01", b"-", b"1e400", b"\"\\ud800\"")  # fmt: skip


def _json_number(c: _Choices) -> bytes:
    digits = b"9" * max(1, _size(c))
    return _pick(c, (digits, b"-" + digits, b"0." + digits, b"1e" + digits, b"1e-" + digits,
                     digits + b".5", b"-0", b"0x1F", b"+1"))  # fmt: skip


def _json_string(c: _Choices) -> bytes:
    unit = _pick(c, (b"a", b"\\u00e9", b"\\ud800", b'\\"', b"\\\\", "é".encode(), b"\x01",
                     b"\xff", b"\\x", b"\n"))  # fmt: skip
    return b'"' + unit * _size(c) + _pick(c, (b'"', b""))


def _json_deep(c: _Choices) -> bytes:
    depth = _size(c)
    opener, closer = _pick(c, ((b"[", b"]"), (b'{"a":', b"}"), (b'{"names":[', b"]}"),
                               (b"[1,", b"]")))  # fmt: skip
    closed = depth if c.integer(0, 3) else c.integer(0, depth)  # sometimes left open
    return opener * depth + _pick(c, (b"1", b'"x"', b"[]", b"null")) + closer * closed


def _json_value(c: _Choices) -> bytes:
    """The text of one hostile JSON value (or of something that is not JSON at all)."""
    kind = c.integer(0, 5)
    if kind == 0:
        return _json_number(c)
    if kind == 1:
        return _json_string(c)
    if kind in (2, 3):
        return _pick(c, _JSON_ATOMS)
    if kind == 4:
        return _json_deep(c)
    return c.raw(64)


def _json_field_mutant(c: _Choices, valid: Sequence[bytes]) -> bytes:
    """A valid JSON object with one field removed, replaced, repeated, added, or a member of
    its list or object value replaced; the new value is written in as raw JSON text."""
    document: dict[str, Any] = json.loads(_pick(c, valid))
    name = _pick(c, [*document, "extra", "format", "names"])
    others = json.dumps({k: v for k, v in document.items() if k != name})[1:-1].encode()
    action = c.integer(0, 3)
    if action == 0:
        return b"{" + others + b"}"
    value = _json_value(c)
    inner = document.get(name)
    if action == 3 and isinstance(inner, list) and inner:
        items = [json.dumps(item).encode() for item in inner]
        items[c.integer(0, len(items) - 1)] = value
        value = b"[" + b", ".join(items) + b"]"
    elif action == 3 and isinstance(inner, dict):
        opened = json.dumps(inner).encode()[:-1] + (b", " if inner else b"")
        value = opened + b'"k": ' + value + b"}"
    if action == 2:  # the field twice: its own value, then the new one
        others = json.dumps(document)[1:-1].encode()
    entry = json.dumps(name).encode() + b": " + value
    return b"{" + others + (b", " if others else b"") + entry + b"}"


def _v3_mutant(c: _Choices, valid: Sequence[bytes]) -> bytes:
    """A v3 envelope (first line, JSON header line, binary table) with its header mutated as
    a JSON object is, its ciphertext cut or a byte of it changed, or its lines run together."""
    document = _pick(c, valid)
    header, _, ciphertext = document[len(envelope.V3_MAGIC) :].partition(b"\n")
    action = c.integer(0, 3)
    if action == 0:
        header = _json_field_mutant(c, [header])
    elif action == 1:
        ciphertext = ciphertext[: c.integer(0, len(ciphertext))]
    elif action == 2 and ciphertext:
        changed = bytearray(ciphertext)
        changed[c.integer(0, len(changed) - 1)] ^= 1 << c.integer(0, 7)
        ciphertext = bytes(changed)
    else:
        return envelope.V3_MAGIC + header + ciphertext
    return envelope.V3_MAGIC + header + b"\n" + ciphertext


# CBOR: Nitro documents, COSE_Sign1, user_data.

_CBOR_POOL: tuple[cbor.CBORValue, ...] = (
    None, True, False, 0, -1, 24, 2**64 - 1, -(2**64), b"", bytes(32), bytes(48), b"\x01" * 97,
    "", "SHA384", "x" * 100, [], {}, [b"", {}, b"", b""], {1: -35}, {"a": 1},
    cbor.Tag(18, []), cbor.Tag(2, b"\x01" * 40), cbor.Tag(24, b"\xa0"),
)  # fmt: skip
_CBOR_KEYS: tuple[cbor.CBORValue, ...] = ("extra", 0, -1, 1, 4, "nonce", "public_key", b"k", True)


def _cbor_value(c: _Choices) -> cbor.CBORValue:
    kind = c.integer(0, 3)
    if kind == 0:
        return _pick(c, _CBOR_POOL)
    if kind == 1:
        return b"\x01" * _size(c)
    if kind == 2:
        return "é" * _size(c)
    nested: list[cbor.CBORValue] = []
    for _ in range(c.integer(1, 31)):
        nested = [nested]
    return nested


def _mutate_cbor(c: _Choices, value: cbor.CBORValue, depth: int) -> cbor.CBORValue:
    """``value`` with one node inside replaced, or a list item or map entry removed or added.
    Byte strings that hold CBOR (COSE's protected header and payload) may be entered. Going
    deeper is the likeliest step, so the edits reach the fields of an attestation payload."""
    step = c.integer(0, 7)
    if step == 0 or depth > 12:
        return _cbor_value(c)
    if isinstance(value, list) and value:
        items = list(value)
        at = c.integer(0, len(items) - 1)
        if step == 1:
            del items[at]
        else:
            items[at] = _mutate_cbor(c, items[at], depth + 1)
        return items
    if isinstance(value, dict) and value:
        entries = dict(value)
        key = _pick(c, list(entries))
        if step == 1:
            del entries[key]
        elif step == 2 and c.integer(0, 1):
            entries[_pick(c, _CBOR_KEYS)] = _cbor_value(c)
        else:
            entries[key] = _mutate_cbor(c, entries[key], depth + 1)
        return entries
    if isinstance(value, cbor.Tag):
        return cbor.Tag(value.number, _mutate_cbor(c, value.value, depth + 1))
    if isinstance(value, bytes) and value and step > 1:
        try:
            return cbor.encode(_mutate_cbor(c, cbor.decode(value), depth + 1))
        except cbor.CBORError:
            pass
    return _cbor_value(c)


def _cbor_tree_mutant(c: _Choices, valid: Sequence[bytes]) -> bytes:
    original = _pick(c, valid)
    try:
        return cbor.encode(_mutate_cbor(c, cbor.decode(original), 1))
    except cbor.CBORError:  # nested deeper than the encoder writes: _cbor_raw makes those
        return original


def _payload_mutant(c: _Choices, valid: Sequence[bytes]) -> bytes:
    """A Nitro document whose payload map (step 2's fields) is changed and encoded again."""
    original = _pick(c, valid)
    parts = cbor.decode(original)
    assert isinstance(parts, list) and isinstance(parts[2], bytes)
    try:
        payload = cbor.encode(_mutate_cbor(c, cbor.decode(parts[2]), 2))
        return cbor.encode([*parts[:2], payload, *parts[3:]])
    except cbor.CBORError:
        return original


def _cbor_raw(c: _Choices) -> bytes:
    """CBOR our encoder never writes: deep nesting, 64-bit arguments, long or lying lengths."""
    kind = c.integer(0, 3)
    if kind == 0:
        opener = _pick(c, (b"\x81", b"\x9f", b"\xa1\x00", b"\xc6", b"\xa1\x61a", b"\x82\x00"))
        return opener * _size(c) + _pick(c, (b"\x00", b"", b"\xff"))
    if kind == 1:
        initial = c.integer(0, 7) << 5 | _pick(c, (24, 25, 26, 27, 28, 31))
        return bytes([initial]) + c.raw(8) + c.raw(16)
    if kind == 2:
        claimed = _size(c)
        actual = claimed if c.integer(0, 1) else c.integer(0, claimed)
        unit = _pick(c, (b"a", b"\xff", "é".encode()))
        head = bytes([_pick(c, (0x5A, 0x7A))]) + claimed.to_bytes(4, "big")
        return head + (unit * actual)[:actual]
    return bytes([_pick(c, (0x5F, 0x7F))]) + _pick(c, (b"\x41a", b"\x61a", b"\x5f")) * _size(c)


# BER: CMS EnvelopedData.


def _ber_node(c: _Choices) -> TLV:
    kind = c.integer(0, 3)
    if kind == 0:
        return _pick(c, ber_tree.KINDS)
    if kind == 1:  # a huge INTEGER, a long OCTET STRING, a long OID
        return TLV(0, False, _pick(c, (2, 4, 6)), b"\x7f" + b"\xff" * _size(c))
    if kind == 2:
        node = TLV(0, True, 16, None, ())
        for _ in range(c.integer(1, 60)):
            node = TLV(0, True, _pick(c, (16, 17, 4)), None, (node,))
        return node
    constructed = bool(c.integer(0, 1))
    return TLV(c.integer(0, 3), constructed, c.integer(0, 30), None if constructed else c.raw(48))


def _ber_tree_mutant(c: _Choices, valid: Sequence[bytes]) -> bytes:
    """A valid CMS blob with one node replaced, removed, repeated or given other content,
    encoded again (definite lengths), so the edit reaches the CMS structure checks."""
    tree = ber.decode(_pick(c, valid))
    path = _pick(c, list(ber_tree.paths(tree)))
    action = c.integer(0, 3) if path else 0
    if action == 0:
        tree = ber_tree.replace(tree, path, _ber_node(c))
    elif action == 1:
        tree = ber_tree.replace(tree, path, None)
    elif action == 2:
        tree = ber_tree.duplicate(tree, path)
    else:
        node = ber_tree.node(tree, path)
        content = None if node.constructed else c.raw(64)
        tree = ber_tree.replace(tree, path, TLV(node.tag_class, node.constructed,
                                                node.tag_number, content, ()))  # fmt: skip
    return ber_tree.encode(tree)


def _ber_raw(c: _Choices) -> bytes:
    """BER the tree encoder never writes: deep indefinite nesting, wide or lying lengths."""
    kind = c.integer(0, 2)
    if kind == 0:
        depth = _size(c)
        opener = _pick(c, (b"\x30\x80", b"\x24\x80", b"\xa0\x80", b"\x30\x84\x7f\xff\xff\xff"))
        return opener * depth + b"\x00\x00" * (depth if c.integer(0, 1) else c.integer(0, depth))
    if kind == 1:
        width = c.integer(1, 8)
        return _pick(c, (b"\x04", b"\x30", b"\x02", b"\x06")) + bytes([0x80 | width]) + c.raw(40)
    return ber_tree.encode(TLV(0, False, _pick(c, (2, 4, 6)), c.raw(8) * _size(c)))


def _generators(target: str) -> tuple[Callable[[_Choices], bytes], ...]:
    """The structured generators that fit ``target``; none for the HTTP framing targets,
    whose inputs random bytes and the request seeds already shape."""
    valid = seeds(target)
    tail: Callable[[_Choices], bytes] = functools.partial(_prefix_with_tail, valid=valid)
    if target in ("envelope", "json-body", "imds"):
        documents = [v for v in valid if not v.startswith(envelope.V3_MAGIC)]
        fields: Callable[[_Choices], bytes] = functools.partial(_json_field_mutant,
                                                                valid=documents)  # fmt: skip
        if target == "envelope":
            tables = [v for v in valid if v.startswith(envelope.V3_MAGIC)]
            v3 = functools.partial(_v3_mutant, valid=tables)
            return (_json_value, fields, fields, tail, v3, v3)
        return (_json_value, fields, fields, tail)
    if target in ("cbor", "cose", "attestation", "user-data"):
        tree: Callable[[_Choices], bytes] = functools.partial(_cbor_tree_mutant, valid=valid)
        if target == "attestation":
            payload = functools.partial(_payload_mutant, valid=valid)
            return (_cbor_raw, tree, payload, payload, payload, tail)
        return (_cbor_raw, tree, tree, tail)
    if target in ("ber", "cms-parse", "cms-decrypt"):
        edits: Callable[[_Choices], bytes] = functools.partial(_ber_tree_mutant, valid=valid)
        return (_ber_raw, edits, edits, tail)
    return ()


#: The targets that have structured generators.
STRUCTURED = ("attestation", "ber", "cbor", "cms-decrypt", "cms-parse", "cose", "envelope",
              "imds", "json-body", "user-data")  # fmt: skip


def structured(target: str, c: _Choices) -> bytes:
    """One structured input for ``target``, made by one of its generators."""
    return _pick(c, _generators(target))(c)


# -- driver 1: hypothesis ----------------------------------------------------------------------

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x30, 0x0A, 0x0D)


@st.composite
def _mutant(draw: st.DrawFn, target: str) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds(target))))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "splice")))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from(_INTERESTING))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            size = draw(st.integers(1, 32))
            data[at:at] = data[draw(st.integers(0, max(0, len(data) - 1))):][:size]
    return bytes(data)


def _inputs(target: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=MAX_RANDOM_BYTES), _mutant(target))


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzed_input_raises_only_the_modules_own_error(target: str) -> None:
    executions = 0

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=_inputs(target))
    def run(data: bytes) -> None:
        nonlocal executions
        executions += 1
        run_once(target, data)

    run()
    assert executions >= min(FUZZ_EXAMPLES, 50)


@pytest.mark.parametrize("target", STRUCTURED)
def test_structured_input_raises_only_the_modules_own_error(target: str) -> None:
    executions = 0

    @settings(max_examples=STRUCTURED_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        nonlocal executions
        executions += 1
        run_once(target, structured(target, _Drawn(data.draw)))

    run()
    assert executions >= min(STRUCTURED_EXAMPLES, 50)


def test_structured_targets_are_those_with_generators() -> None:
    assert tuple(sorted(t for t in TARGETS if _generators(t))) == STRUCTURED


@pytest.mark.parametrize("target", STRUCTURED)
def test_structured_generators_make_inputs_random_bytes_cannot(target: str) -> None:
    """Among 300 inputs: some far longer than random bytes get, and refusals for deep
    nesting, huge numbers, garbage after a valid prefix and (attestation) every step."""
    inputs = [structured(target, _Seeded(seed)) for seed in range(300)]
    assert max(map(len, inputs)) > 100 * MAX_RANDOM_BYTES
    function, allowed = TARGETS[target]
    refusals = set()
    for data in inputs:
        try:
            function(data)
        except allowed as exc:
            refusals.add(str(exc))
    wanted = {"envelope": ("nested more than", "more than 32 characters", "repeated key",
                           "Extra data", "not UTF-8", "lacks field", "unknown field"),
              "json-body": ("nested more than", "more than 32 characters", "Extra data"),
              "imds": ("nested more than", "more than 32 characters", "Extra data"),
              "cbor": ("nesting deeper", "trailing bytes", "truncated"),
              "ber": ("nesting deeper", "trailing byte", "claims"),
              "attestation": ("step 1", "step 2", "step 3", "step 4")}  # fmt: skip
    for words in wanted.get(target, ()):
        assert any(words in refusal for refusal in refusals), words


@pytest.mark.parametrize("target", TARGETS)
def test_every_seed_passes_its_target(target: str) -> None:
    """The seeds are valid inputs, so mutations start from deep inside each parser."""
    function, _ = TARGETS[target]
    for seed in seeds(target):
        function(seed)


# -- driver 2: atheris -------------------------------------------------------------------------


def _instrument_project_code(instrument: Callable[[Any], Any]) -> int:
    """Give coverage feedback for our code only (``atheris.instrument_all`` would also
    instrument hypothesis, pytest and the standard library: minutes of start-up)."""
    count = 0
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] not in ("enclave", "noflylist"):
            continue
        for value in list(vars(module).values()):
            owned = getattr(value, "__module__", None) == name
            if inspect.isfunction(value) and owned:
                instrument(value)
                count += 1
            elif inspect.isclass(value) and owned:
                for member in vars(value).values():
                    function = getattr(member, "__func__", member)  # static/class methods
                    if inspect.isfunction(function):
                        instrument(function)
                        count += 1
    return count


def _atheris_main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in ATHERIS_TARGETS:
        raise SystemExit(f"usage: {argv[0]} TARGET [libFuzzer flags]; TARGET is one of "
                         f"{', '.join(ATHERIS_TARGETS)}")  # fmt: skip
    target, _, mode = argv[1].partition("+")
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    if not mode:  # structured targets read decisions, not documents: no seeds to start from
        for number, seed in enumerate(seeds(target)):
            (corpus / f"seed-{number}").write_bytes(seed)
    _app()  # build the list before instrumenting, so start-up is not fuzzed
    _generators(target)  # load the seeds, too
    _instrument_project_code(atheris.instrument_func)

    def one_input(data: bytes) -> None:
        run_once(target, structured(target, _Provided(data)) if mode else data)

    # libFuzzer prints "Done N runs in S second(s)" when a -runs or -max_total_time ends.
    atheris.Setup([argv[0], *argv[2:], str(corpus)], one_input)
    atheris.Fuzz()


#: What the atheris driver runs: every target on raw bytes, and ``T+structured`` for each
#: target T that has generators.
ATHERIS_TARGETS = (*sorted(TARGETS), *(f"{target}+structured" for target in STRUCTURED))


@pytest.mark.slow
@pytest.mark.parametrize("target", ATHERIS_TARGETS)
def test_atheris_driver_runs_a_target_to_completion(target: str) -> None:
    pytest.importorskip("atheris")
    completed = subprocess.run(
        [sys.executable, __file__, target, f"-runs={ATHERIS_SMOKE_RUNS}", "-seed=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"Done {ATHERIS_SMOKE_RUNS} runs" in completed.stderr


if __name__ == "__main__":
    _atheris_main(sys.argv)
