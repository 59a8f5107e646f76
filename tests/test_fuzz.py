"""Fuzz targets for every parser of untrusted bytes: only the module's own error may escape.

Each target takes one ``bytes`` input and feeds it to one parser: the CBOR decoder, the BER
decoder, the CMS parser and decryptor, COSE_Sign1, the Nitro attestation verifier, the
envelope parser and decryptor, the HTTP request framing, the query string and name checks,
the JSON body of ``/v1/screen``, and the whole HTTP application behind the framing. A target
lets exactly one exception type through (the module's, see :data:`TARGETS`); anything else,
a hang or a crash is a finding. Targets also check what a parser returns where there is an
invariant (a framed request is complete; every answer is well-formed HTTP, never a 500).

Two drivers share the targets:

* **CI, hypothesis**: ``FUZZ_EXAMPLES`` inputs a target (default 300; a few seconds in all),
  half random bytes, half mutations (flips, splices, truncations) of seed inputs that are
  valid (published Nitro documents, aws-nitro-enclaves-sdk-c CMS vectors, our own envelopes
  and requests). A longer run: ``FUZZ_EXAMPLES=200000 python3 -m pytest tests/test_fuzz.py``.
* **atheris** (coverage-guided, libFuzzer), where it installs:
  ``python3 tests/test_fuzz.py TARGET -max_total_time=60`` (any libFuzzer flags), from a
  corpus of the same seeds. ``test_atheris_driver_runs_a_target_to_completion`` runs every
  target for ``ATHERIS_SMOKE_RUNS`` inputs in CI (atheris is in the ``dev`` extra on x86_64
  Linux, where it has wheels; elsewhere the test is skipped).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (atheris): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave import attestation, ber, cbor, cms, cose
from enclave.errors import EnclaveError
from enclave.kms import DataKey
from enclave.simulator.cms_writer import encode_enveloped_data
from noflylist import envelope, http_framing, server
from noflylist.metrics import Metrics
from noflylist.service import ListHolder
from noflylist.sources import FileSource
from tests.conftest import VECTORS
from tests.support.fake_kms import KEY_ARN, FakeDataKeys

ROOT = Path(__file__).resolve().parent.parent
#: Inputs per target under hypothesis; raise it for a longer run.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
#: Largest random input; seeds (Nitro documents are ~4.6 KB) are mutated at any size.
MAX_RANDOM_BYTES = 512
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
def _app() -> server._App:
    """The HTTP application over a loaded list, without sockets."""
    import logging

    kms = FakeDataKeys()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / "envelope.json"
    path.write_bytes(envelope.seal_v2(["Big Bird", "Elmo"], kms, KEY_ARN, serial=1))
    metrics = Metrics()
    holder = ListHolder(FileSource(str(path)), kms, metrics)
    holder.reload(only_if_changed=False)
    quiet = logging.getLogger("test.fuzz.access")
    quiet.setLevel(logging.WARNING)
    return server._App(holder, metrics, quiet, False, {})


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
    attestation.verify(data, now=now, allow_debug=True)
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
    names = list(envelope.decrypt(parsed, _FixedKey()))
    assert all(isinstance(name, str) and name.strip() for name in names)


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
    for names in server._parse_query(query).values():
        for name in names:
            server._check_name(name, "the name")


def fuzz_json_body(data: bytes) -> None:
    headers = {"content-type": "application/json"}
    request = http_framing.Request("POST", "/v1/screen", False, headers, data, True, 0.0)
    names = server._parse_manifest(request)
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
TARGETS: dict[str, tuple[Callable[[bytes], None], type[EnclaveError]]] = {
    "cbor": (fuzz_cbor, cbor.CBORError),
    "ber": (fuzz_ber, ber.BERError),
    "cms-parse": (fuzz_cms_parse, cms.CMSError),
    "cms-decrypt": (fuzz_cms_decrypt, cms.CMSError),
    "cose": (fuzz_cose, cose.COSEError),
    "attestation": (fuzz_attestation, attestation.AttestationError),
    "envelope": (fuzz_envelope, envelope.EnvelopeError),
    "http-framing": (fuzz_http_framing, http_framing.RequestError),
    "query": (fuzz_query, server.RequestRejected),
    "json-body": (fuzz_json_body, server.RequestRejected),
    "http-app": (fuzz_http_app, http_framing.RequestError),
}


# -- seeds: valid inputs that mutations start from ----------------------------------------------


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
            envelope.seal_v2(["Big Bird", "Elmo"], _FixedKey(), KEY_ARN, serial=3),
            envelope.seal_fernet(["bert", "ernie"], _FixedKey(), KEY_ARN),
        ),
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

    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} TARGET [libFuzzer flags]; TARGET is one of "
                         f"{', '.join(TARGETS)}")  # fmt: skip
    target = argv[1]
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    for number, seed in enumerate(seeds(target)):
        (corpus / f"seed-{number}").write_bytes(seed)
    _app()  # build the list before instrumenting, so start-up is not fuzzed
    _instrument_project_code(atheris.instrument_func)

    def one_input(data: bytes) -> None:
        run_once(target, data)

    # libFuzzer prints "Done N runs in S second(s)" when a -runs or -max_total_time ends.
    atheris.Setup([argv[0], *argv[2:], str(corpus)], one_input)
    atheris.Fuzz()


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
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
