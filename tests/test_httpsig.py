"""noflylist.httpsig: RFC 9421 request signatures (ed25519) with an RFC 9530 Content-Digest.

Independent producers first: RFC 9421 Appendix B.2.6's printed signature base and signature
under the Appendix B.1.4 key, and the ``http-message-signatures`` package (a locked dev
dependency) as a second implementation both ways. Then one refusal a reason, a fuzz of the
three fields the verifier parses, and the replay cache's window.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from datetime import UTC, datetime

import http_sf
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    MappingKeyResolver,
    algorithms,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist.httpsig import (
    ACCEPT_SIGNATURE,
    MAX_SKEW_SECONDS,
    REASONS,
    ReplayCache,
    SignatureRefused,
    Verified,
    _component_value,
    _InnerList,
    _Item,
    _parse_dictionary,
    _signature_base,
    _step7_check_digest,
    content_digest,
    sign_request,
    verify_request,
)

# --- RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2 (test-request) -------------------

RFC_ED25519_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""
RFC_ED25519_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_REQUEST_TARGET = "/foo?param=Value&Pet=dog"
RFC_REQUEST_HEADERS = {
    "host": "example.com",
    "date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "content-type": "application/json",
    "content-digest": (
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
    ),
    "content-length": "18",
}
RFC_REQUEST_BODY = b'{"hello": "world"}'
# B.2.6, with the RFC 8792 line wrapping undone.
RFC_B26_SIGNATURE_INPUT = (
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIGNATURE = (
    "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1"
    "u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
)
RFC_B26_BASE = (
    b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    b'"@method": POST\n'
    b'"@path": /foo\n'
    b'"@authority": example.com\n'
    b'"content-type": application/json\n'
    b'"content-length": 18\n'
    b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    b'"content-length");created=1618884473;keyid="test-key-ed25519"'
)

# --- this service's test client: the RFC's published test key, never a real client's ------

_private = load_pem_private_key(RFC_ED25519_PRIVATE_PEM, password=None)
assert isinstance(_private, Ed25519PrivateKey)
UNSAFE_TEST_CLIENT_KEY: Ed25519PrivateKey = _private
KEY_ID = "acme-ops"
PUBLIC_KEYS = {
    KEY_ID: UNSAFE_TEST_CLIENT_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
}
NOW = 1_796_422_599
NAME_TARGET = "/enclave/passenger?name=Big+Bird"
BATCH_BODY = b'{"names": ["Big Bird", "Kermit"]}'


def _lower(headers: dict[str, str]) -> dict[str, str]:
    """As the service's HTTP server hands headers over: names in lower case."""
    return {name.lower(): value for name, value in headers.items()}


def _signed(
    method: str = "GET",
    target: str = NAME_TARGET,
    body: bytes = b"",
    *,
    created: int = NOW,
    nonce: str = "nonce-0123456789",
) -> dict[str, str]:
    """A request as this module's own client signs it, headers as the server sees them."""
    headers = sign_request(
        method,
        target,
        body,
        key_id=KEY_ID,
        private_key=UNSAFE_TEST_CLIENT_KEY,
        created=created,
        nonce=nonce,
    )
    return _lower(headers)


def _custom(
    signature_input: str,
    headers: dict[str, str],
    *,
    method: str = "GET",
    target: str = NAME_TARGET,
    key: Ed25519PrivateKey = UNSAFE_TEST_CLIENT_KEY,
) -> dict[str, str]:
    """A request signed correctly over any Signature-Input (label ``sig1``), to prove a refusal
    is for the rule under test and not for a signature that fails."""
    ((label, inner),) = _parse_dictionary(signature_input, field="test", reason="malformed")
    assert isinstance(inner, _InnerList)
    values = [
        (str(item.value), _component_value(str(item.value), method, target, headers))
        for item in inner.items
    ]
    signature = key.sign(_signature_base(values, inner))
    return {
        **headers,
        "signature-input": signature_input,
        "signature": f"{label}=:{base64.b64encode(signature).decode()}:",
    }


def _replay(per_client: int = 10_000) -> ReplayCache:
    """A replay cache on the tests' clock."""
    return ReplayCache(per_client=per_client, clock=lambda: float(NOW))


def _verify(
    headers: dict[str, str],
    *,
    method: str = "GET",
    target: str = NAME_TARGET,
    body: bytes = b"",
    now: float = NOW,
    replay: ReplayCache | None = None,
) -> Verified:
    return verify_request(
        method,
        target,
        headers,
        body,
        public_keys=PUBLIC_KEYS,
        replay=_replay() if replay is None else replay,
        now=now,
    )


def _refused(
    headers: dict[str, str],
    reason: str,
    *,
    method: str = "GET",
    target: str = NAME_TARGET,
    body: bytes = b"",
    replay: ReplayCache | None = None,
) -> SignatureRefused:
    """The refusal, checked for its reason and for quoting nothing the client sent."""
    with pytest.raises(SignatureRefused) as caught:
        _verify(headers, method=method, target=target, body=body, replay=replay)
    assert caught.value.reason == reason, str(caught.value)
    message = str(caught.value)
    for secret in ("Big", "Kermit", "name=", KEY_ID):
        assert secret not in message
    return caught.value


# --- 1. RFC 9421 Appendix B.2.6 ------------------------------------------------------------


def test_signature_base_equals_rfc9421_b26_byte_for_byte() -> None:
    ((label, inner),) = _parse_dictionary(RFC_B26_SIGNATURE_INPUT, field="t", reason="malformed")
    assert label == "sig-b26" and isinstance(inner, _InnerList)
    values = [
        (
            str(i.value),
            _component_value(str(i.value), "POST", RFC_REQUEST_TARGET, RFC_REQUEST_HEADERS),
        )
        for i in inner.items
    ]
    assert _signature_base(values, inner) == RFC_B26_BASE


def test_rfc9421_b26_signature_verifies_under_the_rfc_public_key() -> None:
    public = load_pem_public_key(RFC_ED25519_PUBLIC_PEM)
    assert isinstance(public, Ed25519PublicKey)
    ((_, signature),) = _parse_dictionary(RFC_B26_SIGNATURE, field="t", reason="malformed")
    assert isinstance(signature, _Item) and isinstance(signature.value, bytes)
    public.verify(signature.value, RFC_B26_BASE)
    # Ed25519 is deterministic (RFC 8032 5.1.6): the RFC's private key gives the same bytes.
    assert UNSAFE_TEST_CLIENT_KEY.sign(RFC_B26_BASE) == signature.value


def test_query_component_follows_rfc9421_section_2_2_7() -> None:
    assert _component_value("@query", "POST", RFC_REQUEST_TARGET, {}) == "?param=Value&Pet=dog"
    assert _component_value("@query", "GET", "/path?queryString", {}) == "?queryString"
    assert _component_value("@query", "GET", "/path", {}) == "?"
    assert _component_value("@path", "GET", "/path?x", {}) == "/path"


def test_content_digest_matches_the_published_digests_of_the_rfc_body() -> None:
    # sha-256: the digest of this body printed throughout RFC 9530-era examples;
    # sha-512: RFC 9421 Appendix B.2's test-request.
    assert (
        content_digest(RFC_REQUEST_BODY) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    )
    both = content_digest(RFC_REQUEST_BODY) + ", " + RFC_REQUEST_HEADERS["content-digest"]
    _step7_check_digest({"content-digest": both}, RFC_REQUEST_BODY, ("content-digest",))


# --- 2. interop with http-message-signatures --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "https://enclave.example/enclave/passenger?name=Big+Bird", b""),
        ("POST", "https://enclave.example/v1/screen", BATCH_BODY),
    ],
)
def test_a_request_signed_by_http_message_signatures_is_accepted(
    method: str, url: str, body: bytes
) -> None:
    request = requests.Request(method, url, data=body or None).prepare()
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(
            public_keys={}, private_keys={KEY_ID: UNSAFE_TEST_CLIENT_KEY}
        ),
    )
    created = int(time.time())
    covered = ("@method", "@path", "@query", "content-digest")
    signer.sign(
        request,
        key_id=KEY_ID,
        created=datetime.fromtimestamp(created, tz=UTC),
        nonce="interop-nonce-1",
        label="sig1",
        covered_component_ids=covered,
        body=body,
    )
    headers = _lower(dict(request.headers))
    assert headers["signature-input"].startswith(
        'sig1=("@method" "@path" "@query" "content-digest")'
    )
    verified = verify_request(
        method,
        request.path_url,
        headers,
        body,
        public_keys=PUBLIC_KEYS,
        replay=ReplayCache(),
        now=created,
    )
    assert verified == Verified(client_id=KEY_ID, created=created, nonce="interop-nonce-1")


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [("GET", NAME_TARGET, b""), ("POST", "/v1/screen", BATCH_BODY)],
)
def test_headers_from_sign_request_verify_under_http_message_signatures(
    method: str, target: str, body: bytes
) -> None:
    request = requests.Request(method, "https://enclave.example" + target, data=body or None)
    prepared = request.prepare()
    prepared.headers.update(
        sign_request(method, target, body, key_id=KEY_ID, private_key=UNSAFE_TEST_CLIENT_KEY)
    )
    verifier = HTTPMessageVerifier(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(
            public_keys={KEY_ID: UNSAFE_TEST_CLIENT_KEY.public_key()}, private_keys={}
        ),
    )
    required = ("@method", "@path", "@query", *(("content-digest",) if body else ()))
    (result,) = verifier.verify(prepared, require_components=required, body=body)
    assert result.parameters["keyid"] == KEY_ID
    assert result.parameters["alg"] == "ed25519"
    assert len(result.nonce) == 22  # 16 random bytes, base64url without padding
    if body:
        assert result.body == body


def test_accept_signature_is_an_rfc8941_dictionary_by_both_parsers() -> None:
    ((label, inner),) = _parse_dictionary(ACCEPT_SIGNATURE, field="t", reason="malformed")
    assert label == "sig1" and isinstance(inner, _InnerList)
    assert [i.value for i in inner.items] == ["@method", "@path", "@query", "content-digest"]
    assert dict(inner.params) == {"created": True, "alg": "ed25519"}
    parsed = http_sf.parse(ACCEPT_SIGNATURE.encode(), tltype="dictionary")
    assert list(parsed) == ["sig1"]


# --- the accepted shapes ------------------------------------------------------------------


def test_a_signed_get_and_a_signed_post_are_accepted() -> None:
    assert _verify(_signed()) == Verified(KEY_ID, NOW, "nonce-0123456789")
    post = _signed("POST", "/v1/screen", BATCH_BODY)
    assert post["content-digest"] == content_digest(BATCH_BODY)
    assert _verify(post, method="POST", target="/v1/screen", body=BATCH_BODY).client_id == KEY_ID


def test_a_post_without_a_body_still_sends_and_covers_content_digest() -> None:
    headers = _signed("POST", "/v1/screen", b"")
    assert '"content-digest"' in headers["signature-input"]
    assert _verify(headers, method="POST", target="/v1/screen").client_id == KEY_ID


def test_the_optional_components_and_parameters_are_accepted() -> None:
    fields = {
        "host": "Enclave.Example",
        "content-type": "application/json",
        "content-length": str(len(BATCH_BODY)),
        "noflylist-nonce": "00" * 8,
        "content-digest": content_digest(BATCH_BODY),
    }
    headers = _custom(
        'sig1=("@method" "@path" "@query" "@authority" "content-digest" "content-type" '
        f'"content-length" "noflylist-nonce");created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";'
        f'alg="ed25519";expires={NOW + 60};tag="noflylist"',
        fields,
        method="POST",
        target="/v1/screen",
    )
    assert _verify(headers, method="POST", target="/v1/screen", body=BATCH_BODY).nonce == "abcdefgh"


# --- 3. one refusal a reason ------------------------------------------------------------


@pytest.mark.parametrize(
    "drop", [("signature-input",), ("signature",), ("signature", "signature-input")]
)
def test_a_request_without_both_signature_fields_is_refused_as_missing(
    drop: tuple[str, ...],
) -> None:
    headers = {k: v for k, v in _signed().items() if k not in drop}
    _refused(headers, "missing")


def test_two_labels_are_refused_as_malformed() -> None:
    headers = _signed()
    inner, sig = headers["signature-input"][5:], headers["signature"][5:]
    headers["signature-input"] += f", sig2={inner}"
    headers["signature"] += f", sig2={sig}"
    _refused(headers, "malformed")


def test_labels_that_differ_between_the_fields_are_refused() -> None:
    headers = _signed()
    headers["signature"] = "sig2" + headers["signature"][4:]
    _refused(headers, "malformed")


@pytest.mark.parametrize(
    "components",
    [
        '"@method" "@path" "@query" "@target-uri"',
        '"@method" "@path" "@query" "date"',
        '"@method" "@path" "@query" "@method"',
        '"@method" "@path" "@query" "content-type";sf',
        '"@method" "@path" "@query" content-type',
    ],
)
def test_a_component_outside_the_list_twice_or_with_parameters_is_refused(components: str) -> None:
    signature_input = f'sig1=({components});created={NOW};keyid="{KEY_ID}";nonce="abcdefgh"'
    headers = {**_signed(), "signature-input": signature_input}
    refusal = _refused(headers, "malformed")
    assert '"@method" "@path" "@query" "@authority" "content-digest"' in str(refusal)
    assert "target-uri" not in str(refusal) and "date" not in str(refusal)


def test_a_signature_that_does_not_cover_the_query_is_refused() -> None:
    headers = _custom(
        f'sig1=("@method" "@path");created={NOW};keyid="{KEY_ID}";nonce="abcdefgh"', {}
    )
    _refused(headers, "malformed")


def test_a_post_whose_signature_does_not_cover_content_digest_is_refused() -> None:
    headers = _custom(
        f'sig1=("@method" "@path" "@query");created={NOW};keyid="{KEY_ID}";nonce="abcdefgh"',
        {"content-digest": content_digest(BATCH_BODY)},
        method="POST",
        target="/v1/screen",
    )
    _refused(headers, "malformed", method="POST", target="/v1/screen", body=BATCH_BODY)


@pytest.mark.parametrize(
    "params",
    [
        f'keyid="{KEY_ID}";nonce="abcdefgh"',
        f'created="{NOW}";keyid="{KEY_ID}";nonce="abcdefgh"',
        f'created={NOW};nonce="abcdefgh"',
        f'created={NOW};keyid="{KEY_ID}"',
        f'created={NOW};keyid="{KEY_ID}";nonce="short"',
        f'created={NOW};keyid={KEY_ID};nonce="abcdefgh"',
        f'created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";alg="rsa-pss-sha512"',
        f'created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";alg=ed25519',
        f'created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";context="x"',
        f'created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";expires="soon"',
        f'created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";created={NOW}',
    ],
)
def test_missing_or_mistyped_or_unknown_parameters_are_refused(params: str) -> None:
    headers = _signed()
    headers["signature-input"] = f'sig1=("@method" "@path" "@query");{params}'
    _refused(headers, "malformed")


def test_an_alg_other_than_ed25519_is_refused_even_when_the_signature_verifies() -> None:
    headers = _custom(
        f'sig1=("@method" "@path" "@query");created={NOW};keyid="{KEY_ID}";nonce="abcdefgh";'
        'alg="hmac-sha256"',
        {},
    )
    assert "ed25519" in str(_refused(headers, "malformed"))


@pytest.mark.parametrize("offset", [MAX_SKEW_SECONDS + 1, -(MAX_SKEW_SECONDS + 1)])
def test_created_too_far_from_the_clock_either_way_is_stale(offset: int) -> None:
    _refused(_signed(created=NOW + offset), "stale")


@pytest.mark.parametrize("offset", [MAX_SKEW_SECONDS, -MAX_SKEW_SECONDS])
def test_created_at_the_edge_of_the_skew_is_accepted(offset: int) -> None:
    assert _verify(_signed(created=NOW + offset)).created == NOW + offset


def test_expires_in_the_past_is_stale() -> None:
    headers = _custom(
        f'sig1=("@method" "@path" "@query");created={NOW - 10};keyid="{KEY_ID}";'
        f'nonce="abcdefgh";expires={NOW - 1}',
        {},
    )
    _refused(headers, "stale")


def test_an_unknown_keyid_is_refused_without_echoing_it() -> None:
    headers = _custom(
        f'sig1=("@method" "@path" "@query");created={NOW};keyid="mallory-9f3c";nonce="abcdefgh"',
        {},
    )
    refusal = _refused(headers, "unknown-client")
    assert "mallory" not in str(refusal)
    assert str(refusal) == (
        "this service has no client with that keyid; ask the list's owner to add your public key"
    )


def test_a_flipped_signature_byte_is_a_bad_signature() -> None:
    headers = _signed()
    raw = bytearray(base64.b64decode(headers["signature"][6:-1]))
    raw[17] ^= 0x01
    headers["signature"] = f"sig1=:{base64.b64encode(bytes(raw)).decode()}:"
    _refused(headers, "bad-signature")


def test_a_query_changed_by_a_relay_is_a_bad_signature() -> None:
    _refused(_signed(target=NAME_TARGET), "bad-signature", target="/enclave/passenger?name=Kermit")


def test_another_clients_key_is_a_bad_signature() -> None:
    other = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"another client").digest())
    headers = _custom(
        f'sig1=("@method" "@path" "@query");created={NOW};keyid="{KEY_ID}";nonce="abcdefgh"',
        {},
        key=other,
    )
    _refused(headers, "bad-signature")


def test_a_body_changed_after_signing_fails_the_digest() -> None:
    headers = _signed("POST", "/v1/screen", BATCH_BODY)
    changed = BATCH_BODY.replace(b"Kermit", b"Gonzo!")
    _refused(headers, "digest", method="POST", target="/v1/screen", body=changed)


def test_a_removed_content_digest_is_refused_as_digest() -> None:
    headers = _signed("POST", "/v1/screen", BATCH_BODY)
    del headers["content-digest"]
    _refused(headers, "digest", method="POST", target="/v1/screen", body=BATCH_BODY)


@pytest.mark.parametrize(
    "value",
    [
        "sha-512=:" + base64.b64encode(hashlib.sha512(BATCH_BODY).digest()).decode() + ":",
        "md5=:AAAAAAAAAAAAAAAAAAAAAA==:",
        "sha-256=" + base64.b64encode(hashlib.sha256(BATCH_BODY).digest()).decode(),
        content_digest(BATCH_BODY) + ", sha-512=:AAAA:",
    ],
)
def test_a_content_digest_without_a_good_sha256_is_refused(value: str) -> None:
    headers = _custom(
        f'sig1=("@method" "@path" "@query" "content-digest");created={NOW};keyid="{KEY_ID}";'
        'nonce="abcdefgh"',
        {"content-digest": value},
        method="POST",
        target="/v1/screen",
    )
    _refused(headers, "digest", method="POST", target="/v1/screen", body=BATCH_BODY)


def test_a_covered_header_field_the_request_lacks_is_malformed() -> None:
    headers = _signed()
    headers["signature-input"] = headers["signature-input"].replace(
        '"@query"', '"@query" "content-type"'
    )
    _refused(headers, "malformed")


def test_a_signature_that_is_not_64_bytes_is_malformed() -> None:
    headers = _signed()
    headers["signature"] = "sig1=:" + base64.b64encode(b"\x00" * 63).decode() + ":"
    _refused(headers, "malformed")


def test_a_replayed_nonce_is_refused() -> None:
    replay = _replay()
    headers = _signed()
    _verify(headers, replay=replay)
    _refused(headers, "replayed", replay=replay)


def test_a_client_whose_replay_memory_is_full_is_told_to_slow_down() -> None:
    replay = _replay(per_client=3)
    for n in range(3):
        _verify(_signed(nonce=f"nonce-{n:08d}"), replay=replay)
    refusal = _refused(_signed(nonce="nonce-99999999"), "replayed", replay=replay)
    assert "slow down" in str(refusal)


def test_signature_refused_takes_only_the_listed_reasons() -> None:
    with pytest.raises(ValueError):
        SignatureRefused("nope", "x")
    assert len(set(REASONS)) == 7


# --- 4. strictness fuzz ---------------------------------------------------------------------

_ALPHABET = '()";=,:?*-_ .\\/+09azAZ@\t\x00\x7f\xe9'


def _mutate(value: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(value))
        choice = rng.randint(0, 4)
        if choice == 0:
            value = value[:at] + rng.choice(_ALPHABET) + value[at:]
        elif choice == 1:
            value = value[:at] + value[at + 1 :]
        elif choice == 2:
            value = value[:at]
        elif choice == 3:
            end = rng.randint(at, len(value))
            value = value[:at] + value[at:end] * rng.randint(2, 300) + value[end:]
        else:
            value = value[:at] + rng.choice(_ALPHABET) + value[at + 1 :]
    return value


def _refuses_cleanly(headers: dict[str, str], body: bytes) -> None:
    """Only SignatureRefused, and never the boundary's catch-all: the parser itself held."""
    try:
        verify_request(
            "POST",
            "/v1/screen",
            headers,
            body,
            public_keys=PUBLIC_KEYS,
            replay=ReplayCache(),
            now=NOW,
        )
    except SignatureRefused as refusal:
        assert refusal.reason in REASONS
        assert "could not be read" not in str(refusal), str(refusal)


def test_mutated_signature_fields_and_digests_only_ever_raise_signature_refused() -> None:
    rng = random.Random(9421)
    good = _signed("POST", "/v1/screen", BATCH_BODY)
    for _ in range(2000):
        headers = dict(good)
        field = rng.choice(("signature-input", "signature", "content-digest"))
        headers[field] = _mutate(headers[field], rng)
        _refuses_cleanly(headers, BATCH_BODY)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(("signature-input", "signature", "content-digest")),
    value=st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=200),
)
def test_arbitrary_latin1_field_values_only_ever_raise_signature_refused(
    field: str, value: str
) -> None:
    headers = _signed("POST", "/v1/screen", BATCH_BODY)
    headers[field] = value
    _refuses_cleanly(headers, BATCH_BODY)


def test_an_oversized_field_is_refused_before_parsing() -> None:
    headers = _signed()
    headers["signature-input"] += ";" * 5000
    assert "longer than" in str(_refused(headers, "malformed"))


# --- 5. the replay cache ------------------------------------------------------------------


def test_replay_cache_forgets_nonces_after_the_window() -> None:
    clock = [float(NOW)]
    replay = ReplayCache(clock=lambda: clock[0])
    replay.remember(KEY_ID, "nonce-a", NOW)
    clock[0] = NOW + 2 * MAX_SKEW_SECONDS - 1
    with pytest.raises(SignatureRefused):
        replay.remember(KEY_ID, "nonce-a", NOW)
    clock[0] = NOW + 2 * MAX_SKEW_SECONDS
    replay.remember(KEY_ID, "nonce-a", NOW)  # forgotten, so accepted again


def test_a_full_replay_cache_accepts_again_once_old_nonces_expire() -> None:
    clock = [float(NOW)]
    replay = ReplayCache(per_client=2, clock=lambda: clock[0])
    replay.remember(KEY_ID, "n1", NOW)
    replay.remember(KEY_ID, "n2", NOW + 5)
    replay.remember("other-client", "n1", NOW)  # the limit is a client's, not the cache's
    with pytest.raises(SignatureRefused, match="slow down"):
        replay.remember(KEY_ID, "n3", NOW)
    clock[0] = NOW + 2 * MAX_SKEW_SECONDS
    replay.remember(KEY_ID, "n3", NOW + 10)


def test_replay_cache_lets_exactly_one_of_many_threads_use_a_nonce() -> None:
    replay = _replay()
    accepted: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            replay.remember(KEY_ID, "shared-nonce", NOW)
            accepted.append(n)
        except SignatureRefused:
            pass

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 1
