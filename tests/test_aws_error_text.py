"""The one line a failed KMS or S3 call raises: AWS's error code and message, read from every
form AWS answers in (JSON ``__type``/``code``, S3 XML, query XML, EC2/moto XML, the
``X-Amzn-ErrorType`` header), and for the authentication family the cause and its fix.

botocore's own response parsers read the same bodies as an independent oracle for which fields
carry the code and the message. The clients are driven over HTTP (tests/support/
scripted_server.py); tests/test_aws_clients_moto.py does the same against moto's real answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from botocore import parsers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave import awserror, kms, s3
from enclave.retry import RetryPolicy
from enclave.sigv4 import Credentials
from tests.support.scripted_server import Answer, ScriptedServer, scripted_server

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-x")
#: Client errors are never retried; a short deadline keeps a wrong guess from hanging a test.
ONCE = RetryPolicy(deadline=2.0, max_attempts=1)


class Static:
    def get(self) -> Credentials:
        return CREDS


# -- the codes and what each line must say ---------------------------------------------------

#: Words of each fix that must reach the operator (checked as literal text, not via the
#: module's constants, so rewording a fix into something else fails here).
KEY_PAIR = "secret access key does not match the access key id"
UNKNOWN = "does not know this access key id or session token"
EXPIRED = "session token expired: refresh the credentials"
CLOCK = "clock is too far from AWS's"
KMS_DECRYPT_DENIED = "kms:RecipientAttestation:PCR0"
S3_DENIED = "bucket policy"
GENERIC_DENIED = "IAM policy, or the resource's own policy"

#: Every code of the authentication family, with AWS's usual message and the expected fix.
AUTH_CODES: dict[str, tuple[int, str, str]] = {
    "InvalidSignatureException": (
        400,
        "The request signature we calculated does not match the signature you provided.",
        KEY_PAIR,
    ),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
        KEY_PAIR,
    ),
    "InvalidClientTokenId": (
        403,
        "The security token included in the request is invalid.",
        UNKNOWN,
    ),
    "UnrecognizedClientException": (
        400,
        "The security token included in the request is invalid.",
        UNKNOWN,
    ),
    "InvalidAccessKeyId": (
        403,
        "The AWS Access Key Id you provided does not exist in our records.",
        UNKNOWN,
    ),
    "InvalidToken": (400, "The provided token is malformed or otherwise invalid.", UNKNOWN),
    "ExpiredToken": (400, "The provided token has expired.", EXPIRED),
    "ExpiredTokenException": (
        400,
        "The security token included in the request is expired",
        EXPIRED,
    ),
    "TokenRefreshRequired": (400, "The provided token must be refreshed.", EXPIRED),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the current time is too large.",
        CLOCK,
    ),
    "RequestExpired": (400, "Request has expired.", CLOCK),
    "AccessDenied": (403, "Access Denied", "<denied>"),
    "AccessDeniedException": (
        400,
        "User: arn:aws:sts::111122223333:assumed-role/enclave/i-0 is not authorized to perform: "
        "kms:Decrypt on this resource because no resource-based policy allows the kms:Decrypt "
        "action",
        "<denied>",
    ),
}


@dataclass(frozen=True)
class Form:
    """One wire form of an error answer, and the botocore parser that reads that form."""

    name: str
    protocol: str  # botocore.parsers.PROTOCOL_PARSERS key
    build: Callable[[str, str], tuple[dict[str, str], bytes]]


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


FORMS = [
    Form("json-__type", "json",
         lambda c, m: ({}, json.dumps({"__type": c, "message": m}).encode())),
    Form("json-__type-namespaced", "json",
         lambda c, m: ({}, json.dumps({"__type": f"com.amazon.coral.service#{c}",
                                       "message": m}).encode())),
    Form("json-code", "rest-json",
         lambda c, m: ({}, json.dumps({"code": c, "Message": m}).encode())),
    Form("json-code-namespaced-with-url", "rest-json",
         lambda c, m: ({}, json.dumps({"code": f"aws.auth#{c}:http://internal.amazon.com/x/",
                                       "message": m}).encode())),
    Form("xml-s3", "rest-xml",
         lambda c, m: ({}, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{c}</Code>'
                            f"<Message>{_xml_text(m)}</Message><RequestId>4442587FB7D0A2F9"
                            "</RequestId><HostId>aGVsbG8=</HostId></Error>").encode())),
    Form("xml-query", "query",
         lambda c, m: ({}, ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                            f"<Error><Type>Sender</Type><Code>{c}</Code><Message>"
                            f"{_xml_text(m)}</Message></Error><RequestId>a-b-c</RequestId>"
                            "</ErrorResponse>").encode())),
    Form("xml-ec2-as-moto-sends", "query",
         lambda c, m: ({}, ('<?xml version="1.0" encoding="utf-8"?>\n<ErrorResponse><Errors>'
                            f"<Error><Code>{c}</Code><Message>{_xml_text(m)}</Message>"
                            "<Type>Sender</Type></Error></Errors></ErrorResponse>").encode())),
    Form("header-only", "rest-json",
         lambda c, m: ({"x-amzn-errortype": f"{c}:http://internal.amazon.com/coral/"}, b"")),
]  # fmt: skip


def _botocore(form: Form, status: int, headers: dict[str, str], body: bytes) -> dict[str, str]:
    parser = parsers.create_parser(form.protocol)
    parsed = parser.parse({"status_code": status, "headers": headers, "body": body}, None)
    error: dict[str, str] = parsed["Error"]
    return error


def _answer(status: int, headers: dict[str, str], body: bytes) -> Answer:
    wire = {"X-Amzn-ErrorType" if k == "x-amzn-errortype" else k: v for k, v in headers.items()}
    return Answer(status, body, wire)


def _kms_client(url: str) -> kms.KMSClient:
    return kms.KMSClient("eu-west-1", Static(), environ={"AWS_ENDPOINT_URL_KMS": url}, retry=ONCE)


def _s3_client(url: str) -> s3.S3Client:
    return s3.S3Client("eu-west-1", Static(), environ={"AWS_ENDPOINT_URL_S3": url}, retry=ONCE)


def _assert_one_clean_line(text: str) -> None:
    assert "\n" not in text and "\r" not in text
    assert all(" " <= char <= "~" for char in text), text
    assert CREDS.secret_access_key not in text and str(CREDS.session_token) not in text


# -- the reader agrees with botocore on every code in every form -----------------------------


@pytest.mark.parametrize("form", FORMS, ids=[form.name for form in FORMS])
@pytest.mark.parametrize("code", sorted(AUTH_CODES))
def test_reader_finds_the_code_and_message_botocore_finds(code: str, form: Form) -> None:
    status, message, _ = AUTH_CODES[code]
    headers, body = form.build(code, message)
    read = awserror.read(headers, body)
    oracle = _botocore(form, status, headers, body)
    assert read.code == oracle["Code"] == code
    assert read.message == oracle["Message"]
    assert read.message == ("" if form.name == "header-only" else message)


# -- every code, every form, through each client over HTTP -----------------------------------


@pytest.mark.parametrize("form", FORMS, ids=[form.name for form in FORMS])
@pytest.mark.parametrize("code", sorted(AUTH_CODES))
def test_kms_names_code_message_and_fix_in_one_line(code: str, form: Form) -> None:
    status, message, fix = AUTH_CODES[code]
    headers, body = form.build(code, message)
    with scripted_server([_answer(status, headers, body)]) as server:
        client = _kms_client(server.url)
        with pytest.raises(kms.KMSError) as decrypt:
            client.decrypt(b"blob")
        with pytest.raises(kms.KMSError) as encrypt:
            client.encrypt("alias/k", b"x")
    assert len(server.requests) == 2  # one attempt each: none of these is retried
    for caught, action in ((decrypt, "Decrypt"), (encrypt, "Encrypt")):
        text = str(caught.value)
        _assert_one_clean_line(text)
        assert (caught.value.code, caught.value.status) == (code, status)
        assert text.startswith(f"KMS {action} failed: HTTP {status} {code}")
        if form.name != "header-only":
            assert message in text
        expected = fix
        if fix == "<denied>":
            expected = KMS_DECRYPT_DENIED if action == "Decrypt" else GENERIC_DENIED
        assert "Likely cause: " in text
        assert expected in text, text
    assert "unknown error" not in str(decrypt.value)


@pytest.mark.parametrize("form", FORMS, ids=[form.name for form in FORMS])
@pytest.mark.parametrize("code", sorted(AUTH_CODES))
def test_s3_names_code_message_and_fix_in_one_line(code: str, form: Form) -> None:
    status, message, fix = AUTH_CODES[code]
    headers, body = form.build(code, message)
    with scripted_server([_answer(status, headers, body)]) as server:
        with pytest.raises(s3.S3Error) as caught:
            _s3_client(server.url).get_object("noflylist-bucket", "lists/envelope.json")
    assert len(server.requests) == 1
    text = str(caught.value)
    _assert_one_clean_line(text)
    assert (caught.value.code, caught.value.status) == (code, status)
    assert text.startswith(
        f"S3 GetObject s3://noflylist-bucket/lists/envelope.json failed: HTTP {status} {code}"
    )
    if form.name != "header-only":
        assert message in text
    expected = S3_DENIED if fix == "<denied>" else fix
    assert expected in text, text
    if fix == "<denied>":
        assert "s3:GetObject" in text
    else:
        assert S3_DENIED not in text  # a signature problem is not blamed on the bucket policy


# -- clock skew reported as a signature error --------------------------------------------------

SIGNATURE_EXPIRED = [
    # Real KMS (JSON): InvalidSignatureException with this message.
    (400, {}, json.dumps({
        "__type": "InvalidSignatureException",
        "message": "Signature expired: 20240101T000000Z is now earlier than 20240101T000500Z "
                   "(20240101T001000Z - 5 min.)",
    }).encode()),
    # Query services: SignatureDoesNotMatch with the same words.
    (403, {}, b"<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>"
              b"<Message>Signature expired: 20240101T000000Z is now earlier than "
              b"20240101T000500Z (20240101T001000Z - 15 min.)</Message></Error></ErrorResponse>"),
    (400, {}, json.dumps({
        "__type": "InvalidSignatureException",
        "message": "Signature not yet current: 20240101T010000Z is still later than "
                   "20240101T000500Z (20240101T000000Z + 5 min.)",
    }).encode()),
]  # fmt: skip


@pytest.mark.parametrize(("status", "headers", "body"), SIGNATURE_EXPIRED)
def test_a_signature_error_that_says_signature_expired_is_blamed_on_the_clock(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    with scripted_server([_answer(status, headers, body)]) as server:
        with pytest.raises(kms.KMSError) as caught:
            _kms_client(server.url).decrypt(b"blob")
    assert CLOCK in str(caught.value)
    assert KEY_PAIR not in str(caught.value)
    assert caught.value.code in ("InvalidSignatureException", "SignatureDoesNotMatch")


# -- where the code comes from when there are several ------------------------------------------


def test_code_comes_from_header_then_code_then___type_as_smithy_orders_them() -> None:
    both = json.dumps({"__type": "ThrottlingException", "code": "ExpiredTokenException"})
    assert awserror.read({}, both.encode()).code == "ExpiredTokenException"
    header = {"x-amzn-errortype": "AccessDeniedException"}
    assert awserror.read(header, both.encode()).code == "AccessDeniedException"
    rest_json = parsers.create_parser("rest-json")
    oracle = rest_json.parse({"status_code": 400, "headers": header, "body": both.encode()}, None)
    assert oracle["Error"]["Code"] == "AccessDeniedException"


def test_namespace_is_cut_at_the_first_hash_after_the_suffix_is_cut_at_the_first_colon() -> None:
    answer = awserror.read({"x-amzn-errortype": "a.b#ExpiredTokenException:http://x#y"}, b"")
    assert answer.code == "ExpiredTokenException"


# -- unreadable error bodies never hide the status ---------------------------------------------

MARKER = "Oscar the Grouch"  # stands for anything a body might carry that must not be echoed

UNREADABLE = {
    "empty": (b"", "has no body"),
    "proxy-html": (f"<html><body>502 {MARKER}</body></html>".encode(), "not an AWS error"),
    "plain-text": (f"{MARKER} says no".encode(), "neither JSON nor XML"),
    "binary": (b"\x00\xff\xfe" + MARKER.encode() + b"\x80", "neither JSON nor XML"),
    "truncated-xml": (f"<Error><Code>AccessDenied</Code><Message>{MARKER}".encode(),
                      "truncated"),
    "entity-bomb": (
        b'<?xml version="1.0"?><!DOCTYPE Error [<!ENTITY a "' + MARKER.encode() + b'">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b"<Error><Code>&c;</Code><Message>&c;</Message></Error>",
        "DOCTYPE",
    ),
    "external-entity": (
        b'<!DOCTYPE Error [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<Error><Code>&x;</Code></Error>",
        "DOCTYPE",
    ),
    "xml-not-utf8": (b"<Error><Code>AccessDenied</Code><Message>\xff</Message></Error>",
                     "not UTF-8"),
    "deep-json": (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested more than"),
    "huge-number": (b'{"__type": "X", "n": 1' + b"0" * 5000 + b"}", "more than 32 characters"),
    "json-list": (json.dumps([MARKER]).encode(), "neither JSON nor XML"),
    "json-repeated-key": (
        json.dumps({"__type": "AccessDenied"})[:-1].encode() + b', "__type": "X"}',
        "repeated key",
    ),
    "oversized": (b'{"message": "' + b"x" * awserror.MAX_ERROR_BODY_BYTES + b'"}', "bytes, more"),
    "no-error-element": (b"<ErrorResponse><RequestId>x</RequestId></ErrorResponse>",
                         "no <Error> element"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(UNREADABLE))
@pytest.mark.parametrize("status", [400, 403, 404])
def test_an_unreadable_error_body_still_reports_the_status_and_why(name: str, status: int) -> None:
    body, why = UNREADABLE[name]
    with scripted_server([Answer(status, body)]) as server:
        with pytest.raises(kms.KMSError) as from_kms:
            _kms_client(server.url).decrypt(b"blob")
        with pytest.raises(s3.S3Error) as from_s3:
            _s3_client(server.url).get_object("b", "k")
    for caught in (from_kms.value, from_s3.value):
        text = str(caught)
        _assert_one_clean_line(text)
        assert f"failed: HTTP {status} with no AWS error code (" in text
        assert why in text
        assert MARKER not in text
        assert (caught.code, caught.status) == (None, status)
        assert ("Likely cause:" in text) == (status == 403)  # a bare 403 is still a refusal


def test_an_unreadable_body_with_an_error_type_header_still_gives_the_code() -> None:
    answer = Answer(403, b"<html>gateway</html>", {"X-Amzn-ErrorType": "ExpiredTokenException"})
    with scripted_server([answer]) as server:
        with pytest.raises(kms.KMSError) as caught:
            _kms_client(server.url).decrypt(b"blob")
    assert caught.value.code == "ExpiredTokenException"
    assert EXPIRED in str(caught.value)


# -- what AWS's message may carry ------------------------------------------------------------


def test_a_long_message_is_cut_and_odd_characters_become_printable_ascii() -> None:
    message = "line one\nline two\tnul\x00 é \u202e" + "x" * 400
    answer = awserror.read({}, json.dumps({"__type": "X", "message": message}).encode())
    assert answer.message.startswith("line one line two nul? ? ?")
    assert answer.message.endswith("x...")
    assert len(answer.message) == awserror.MESSAGE_CHARS + 3
    _assert_one_clean_line(awserror.explain("KMS Decrypt", 400, answer))


def test_only_the_five_predefined_entities_are_unescaped() -> None:
    body = (b"<Error><Code>AccessDenied</Code><Message>&lt;a&gt; &amp;amp; &quot;q&quot; "
            b"&apos;s&apos; &#65; &x;</Message></Error>")  # fmt: skip
    assert awserror.read({}, body).message == "<a> &amp; \"q\" 's' &#65; &x;"
    assert _botocore(FORMS[4], 403, {}, body.replace(b" &x;", b""))["Message"] == (
        "<a> &amp; \"q\" 's' A"  # botocore's XML parser also expands character references
    )


@pytest.mark.parametrize(
    "raw",
    ["Access\nDenied", "x" * 200, "", "#", "Bad Code", "<script>", "9Lives", "é"],
)
def test_a_code_that_is_not_an_aws_error_name_counts_as_none(raw: str) -> None:
    answer = awserror.read({}, json.dumps({"__type": raw}).encode())
    assert answer.code is None
    assert awserror.read({"x-amzn-errortype": raw}, b"").code is None


# -- the answer-parser boundary, for any bytes --------------------------------------------------

_json_noise = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.just(MARKER),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["KeyId", "Plaintext", "CiphertextBlob", "__type",
                                       "message", "code", MARKER]), children, max_size=4),
    max_leaves=20,
)  # fmt: skip
_bodies = st.one_of(
    st.binary(max_size=300).map(lambda noise: noise + MARKER.encode()),
    _json_noise.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + MARKER.encode() + b"]" * depth),
    st.integers(1, 6000).map(lambda digits: b'{"KeyId": 1' + b"0" * digits + b"}"),
    st.sampled_from([body for body, _ in UNREADABLE.values()]),
)


@pytest.fixture(scope="module")
def one_server() -> Iterator[ScriptedServer]:
    """One server for every example; each example sets its answer."""
    server = ScriptedServer([Answer(200)])
    server.start()
    yield server
    server.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies, status=st.sampled_from([200, 400, 403]))
@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_any_kms_answer_gives_a_result_or_a_kms_error_that_never_quotes_the_answer(
    one_server: ScriptedServer, body: bytes, status: int
) -> None:
    one_server.answers = [Answer(status, body)]
    try:
        _kms_client(one_server.url).decrypt(b"blob")
    except kms.KMSError as error:
        text = str(error)
        _assert_one_clean_line(text)
        if status == 200:
            assert MARKER not in text
            assert text.startswith("KMS Decrypt: ")  # what is wrong, never the value
        else:
            assert text.startswith(f"KMS Decrypt failed: HTTP {status}")
    else:
        assert status == 200


@settings(max_examples=150, deadline=None)
@given(body=_bodies, headers=st.dictionaries(st.just("x-amzn-errortype"), st.text(max_size=40)))
def test_the_error_reader_never_raises_and_gives_a_clean_code_and_message(
    body: bytes, headers: dict[str, str]
) -> None:
    answer = awserror.read(headers, body)
    assert answer.code is None or awserror._CODE.fullmatch(answer.code)
    assert len(answer.message) <= awserror.MESSAGE_CHARS + 3
    text = awserror.explain("S3 GetObject s3://b/k", 403, answer)
    _assert_one_clean_line(text)
    assert text.startswith("S3 GetObject s3://b/k failed: HTTP 403")
    if answer.problem is not None:
        assert MARKER not in answer.problem
