"""KMS and S3 clients against local servers that misbehave on purpose: what is transient is
retried within the deadline, what is not fails at once, and every error says why."""

from __future__ import annotations

import base64
import json
import time

import pytest

from enclave import kms, s3
from enclave.retry import RetryableFailure, RetryPolicy, call_with_retries
from enclave.sigv4 import Credentials
from tests.support.scripted_server import Answer, scripted_server

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
FAST = RetryPolicy(deadline=3.0, base_delay=0.01, max_delay=0.05)


class Static:
    def get(self) -> Credentials:
        return CREDS


def kms_error(code: str, message: str = "try later", status: int = 400) -> Answer:
    body = json.dumps({"__type": code, "message": message}).encode()
    return Answer(status, body, {"Content-Type": "application/x-amz-json-1.1"})


def decrypted(plaintext: bytes) -> Answer:
    body = {
        "KeyId": "arn:aws:kms:eu-west-1:111122223333:key/k",
        "Plaintext": base64.b64encode(plaintext).decode(),
    }
    return Answer(200, json.dumps(body).encode())


def client(url: str, policy: RetryPolicy = FAST) -> kms.KMSClient:
    return kms.KMSClient("eu-west-1", Static(), environ={"AWS_ENDPOINT_URL_KMS": url}, retry=policy)


def test_kms_request_is_the_json_protocol_and_signed() -> None:
    with scripted_server([decrypted(b"k" * 32)]) as server:
        result = client(server.url).decrypt(
            b"blob", key_id="alias/x", encryption_context={"a": "b"}
        )
    assert result.plaintext == b"k" * 32
    (request,) = server.requests
    assert request.method == "POST" and request.path == "/"
    assert request.headers["x-amz-target"] == "TrentService.Decrypt"
    assert request.headers["content-type"] == "application/x-amz-json-1.1"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/kms/aws4_request" in request.headers["authorization"]
    assert json.loads(request.body) == {
        "CiphertextBlob": base64.b64encode(b"blob").decode(),
        "KeyId": "alias/x",
        "EncryptionContext": {"a": "b"},
    }


@pytest.mark.parametrize(
    "fault",
    [
        kms_error("ThrottlingException", "Rate exceeded"),
        kms_error("KMSInternalException", "internal", 500),
        Answer(500, b"<html>oops</html>"),
        Answer(503, b""),
    ],
    ids=["throttling", "kms-internal", "html-500", "empty-503"],
)
def test_kms_retries_transient_failures_then_succeeds(fault: Answer) -> None:
    with scripted_server([fault, fault, fault, decrypted(b"x" * 32)]) as server:
        result = client(server.url).decrypt(b"blob")
    assert result.plaintext == b"x" * 32
    assert len(server.requests) == 4


@pytest.mark.slow
def test_kms_gives_up_within_the_deadline_with_the_cause() -> None:
    policy = RetryPolicy(deadline=1.0, base_delay=0.05, max_delay=0.2)
    with scripted_server([kms_error("ThrottlingException", "Rate exceeded")]) as server:
        started = time.monotonic()
        with pytest.raises(kms.KMSError) as caught:
            client(server.url, policy).decrypt(b"blob")
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert caught.value.code == "ThrottlingException"
    assert "Rate exceeded" in str(caught.value)
    assert "still failing after" in str(caught.value)
    assert len(server.requests) >= 2


def test_kms_does_not_retry_client_errors_and_explains_access_denied() -> None:
    denied = kms_error("AccessDeniedException", "not authorized", 400)
    with scripted_server([denied]) as server:
        kms_client = client(server.url)
        with pytest.raises(kms.KMSError) as caught:
            kms_client.decrypt(b"blob")
    assert len(server.requests) == 1
    assert caught.value.code == "AccessDeniedException"
    assert "PCR0" in str(caught.value) and "debug-mode" in str(caught.value)
    assert (kms_client.calls, kms_client.errors) == (1, 1)


def test_kms_error_code_with_namespace_prefix_is_shortened() -> None:
    with scripted_server([kms_error("com.amazonaws.kms#InvalidCiphertextException", "bad")]) as s:
        with pytest.raises(kms.KMSError) as caught:
            client(s.url).decrypt(b"blob")
    assert caught.value.code == "InvalidCiphertextException"


@pytest.mark.slow
def test_kms_read_timeout_is_retried_then_reported() -> None:
    policy = RetryPolicy(deadline=1.5, base_delay=0.01, max_delay=0.02)
    slow = Answer(200, b"{}", delay=5.0)
    with scripted_server([slow]) as server:
        started = time.monotonic()
        with pytest.raises(kms.KMSError):
            client(server.url, policy).decrypt(b"blob")
    assert time.monotonic() - started < 3.0


def test_kms_connection_refused_is_reported_with_the_endpoint() -> None:
    policy = RetryPolicy(deadline=0.5, base_delay=0.01, max_delay=0.02)
    with pytest.raises(kms.KMSError) as caught:
        client("http://127.0.0.1:9", policy).decrypt(b"blob")
    assert "127.0.0.1:9" in str(caught.value)


@pytest.mark.parametrize(
    "answer, words",
    [
        (Answer(200, b"not json"), "not JSON"),
        (Answer(200, b"[1, 2]"), "not a JSON object"),
        (Answer(200, b'{"KeyId": "k"}'), "lacks Plaintext"),
        (Answer(200, b'{"KeyId": "k", "Plaintext": "***"}'), "not valid base64"),
    ],
)
def test_kms_malformed_answers_are_clear_errors(answer: Answer, words: str) -> None:
    with scripted_server([answer]) as server:
        with pytest.raises(kms.KMSError, match=words):
            client(server.url).decrypt(b"blob")


def test_kms_plaintext_answer_to_a_recipient_request_is_refused() -> None:
    recipient = kms.Recipient(b"attestation document")
    with scripted_server([decrypted(b"k" * 32)]) as server:
        with pytest.raises(kms.KMSError, match="did not come from KMS"):
            client(server.url).decrypt(b"blob", recipient=recipient)
    sent = json.loads(server.requests[0].body)
    assert sent["Recipient"] == {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": base64.b64encode(b"attestation document").decode(),
    }


def test_kms_endpoint_precedence() -> None:
    env = {
        "AWS_ENDPOINT_URL": "https://global",
        "AWS_KMS_ENDPOINT": "http://127.0.0.1:9999",
        "AWS_ENDPOINT_URL_KMS": "https://kms-specific/",
    }
    assert kms.kms_endpoint("eu-west-1", env) == "https://kms-specific"
    del env["AWS_ENDPOINT_URL_KMS"]
    assert kms.kms_endpoint("eu-west-1", env) == "http://127.0.0.1:9999"
    del env["AWS_KMS_ENDPOINT"]
    assert kms.kms_endpoint("eu-west-1", env) == "https://global"
    assert kms.kms_endpoint("eu-west-1", {}) == "https://kms.eu-west-1.amazonaws.com"


# -- S3 ------------------------------------------------------------------------------


def s3_client(url: str) -> s3.S3Client:
    return s3.S3Client("eu-west-1", Static(), environ={"AWS_ENDPOINT_URL_S3": url}, retry=FAST)


def s3_error(status: int, code: str) -> Answer:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>"
    return Answer(status, body.encode(), {"Content-Type": "application/xml"})


def test_s3_get_is_path_style_signed_and_conditional() -> None:
    answers = [Answer(200, b"envelope", {"ETag": '"abc"'}), Answer(304)]
    with scripted_server(answers) as server:
        client_ = s3_client(server.url)
        first = client_.get_object("bucket", "lists/a b.json")
        second = client_.get_object("bucket", "lists/a b.json", if_none_match='"abc"')
    assert first == s3.S3Object(b"envelope", '"abc"')
    assert second is None
    assert server.requests[0].path == "/bucket/lists/a%20b.json"
    assert server.requests[0].headers["x-amz-content-sha256"]
    assert server.requests[1].headers["if-none-match"] == '"abc"'
    assert "if-none-match" in server.requests[1].headers["authorization"]


def test_s3_retries_5xx_but_not_404_or_403() -> None:
    with scripted_server([s3_error(503, "SlowDown"), Answer(200, b"x", {"ETag": '"e"'})]) as srv:
        assert s3_client(srv.url).get_object("b", "k") == s3.S3Object(b"x", '"e"')
        assert len(srv.requests) == 2
    for status, code in ((404, "NoSuchKey"), (403, "AccessDenied")):
        with scripted_server([s3_error(status, code)]) as srv:
            with pytest.raises(s3.S3Error) as caught:
                s3_client(srv.url).get_object("b", "k")
            assert len(srv.requests) == 1
            assert caught.value.code == code and caught.value.status == status


def test_s3_object_urls() -> None:
    assert s3.object_url("my-bucket", "a/b c", "eu-west-1", {}) == (
        "https://my-bucket.s3.eu-west-1.amazonaws.com/a/b%20c"
    )
    assert s3.object_url("my.bucket", "k", "eu-west-1", {}) == (
        "https://s3.eu-west-1.amazonaws.com/my.bucket/k"
    )
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000/"}
    assert s3.object_url("b", "k", "eu-west-1", env) == "http://127.0.0.1:5000/b/k"
    assert s3.parse_s3_url("s3://bucket/dir/key.json") == ("bucket", "dir/key.json")
    for bad in ("s3://bucket", "s3:///key", "https://bucket/key", "s3://b/k?x=1"):
        with pytest.raises(s3.S3Error, match="s3://BUCKET/KEY"):
            s3.parse_s3_url(bad)


# -- the retry loop itself, on a fake clock ------------------------------------------


def test_retry_backoff_grows_and_stays_within_the_deadline() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    def attempt(remaining: float) -> None:
        now[0] += 0.5
        raise RetryableFailure(kms.KMSError("still throttled"))

    policy = RetryPolicy(deadline=10.0, max_attempts=50, base_delay=0.1, max_delay=2.0)
    with pytest.raises(kms.KMSError, match="still throttled; KMS x still failing after"):
        call_with_retries(
            attempt,
            policy,
            describe="KMS x",
            sleep=sleep,
            clock=lambda: now[0],
            jitter=lambda low, high: high,
        )
    assert sleeps[:5] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert max(sleeps) == 2.0
    assert now[0] <= 10.0


def test_retry_does_not_sleep_after_the_last_attempt() -> None:
    sleeps: list[float] = []

    def attempt(remaining: float) -> None:
        raise RetryableFailure(kms.KMSError("still throttled"))

    policy = RetryPolicy(deadline=60.0, max_attempts=3, base_delay=0.1, max_delay=5.0)
    with pytest.raises(kms.KMSError, match="after 3 attempts"):
        call_with_retries(
            attempt, policy, describe="KMS x", sleep=sleeps.append, clock=lambda: 0.0,
            jitter=lambda low, high: high,
        )
    assert sleeps == [0.1, 0.2]
