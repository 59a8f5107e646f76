"""Proof 3: requests signed by enclave.sigv4 are accepted by a server that checks SigV4 (moto
with IAM enforcement on), and the same requests are refused once changed after signing.

The requests are built by hand as the enclave will build them: KMS JSON 1.1 calls and S3
path-style PutObject/GetObject, with the IAM user's long-term keys and with session
credentials from STS AssumeRole.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from enclave.sigv4 import Credentials, sign
from tests.support.moto_server import MotoResponse, MotoServer, moto_server  # noqa: F401

KMS_JSON = "application/x-amz-json-1.1"
#: A key with a space, a slash and a tilde exercises S3's encode-once path rule. No sub-delims
#: or non-ASCII: moto's server rebuilds the S3 path from werkzeug's re-quoted URL and refuses
#: those even when botocore signs them (see tests/support/moto_server.py).
OBJECT_KEY = "lists/2024 no-fly~v1.bin"


@pytest.fixture(params=["long-term", "assumed-role"])
def credentials(request: pytest.FixtureRequest, moto_server: MotoServer) -> Credentials:  # noqa: F811
    """Each acceptance test runs with the user's keys and with AssumeRole session keys."""
    if request.param == "long-term":
        return moto_server.user_credentials
    session = moto_server.assume_role()
    assert session.access_key_id.startswith("ASIA") and session.session_token
    return session


def _kms_headers(target: str) -> dict[str, str]:
    return {"Content-Type": KMS_JSON, "X-Amz-Target": f"TrentService.{target}"}


def _kms(server: MotoServer, credentials: Credentials, target: str,
         payload: dict[str, object]) -> MotoResponse:
    return server.signed("POST", "/", service="kms", credentials=credentials,
                         headers=_kms_headers(target), body=json.dumps(payload).encode())


def _kms_ok(server: MotoServer, credentials: Credentials, target: str,
            payload: dict[str, object]) -> dict[str, object]:
    response = _kms(server, credentials, target, payload)
    assert response.status == 200, (response.status, response.error_code(), response.body)
    answer = json.loads(response.body)
    assert isinstance(answer, dict)
    return answer


def _signed_headers(server: MotoServer, method: str, path: str, headers: dict[str, str],
                    body: bytes, service: str, credentials: Credentials) -> dict[str, str]:
    return {**headers, **sign(method, server.endpoint + path, headers, body, service=service,
                              region=server.region, credentials=credentials,
                              now=datetime.now(UTC))}


def _flip_one_byte(body: bytes, old: bytes, new: bytes) -> bytes:
    at = body.index(old)
    assert len(old) == len(new) == 1
    return body[:at] + new + body[at + 1:]


def _bucket(server: MotoServer, credentials: Credentials, name: str) -> str:
    response = server.signed("PUT", f"/{name}", service="s3", credentials=credentials)
    assert response.status == 200, (response.status, response.error_code(), response.body)
    return name


def _object_path(bucket: str) -> str:
    return f"/{bucket}/" + quote(OBJECT_KEY, safe="/~")


# --- Accepted ----------------------------------------------------------------------------------


def test_kms_create_key_encrypt_decrypt_are_accepted_and_round_trip(
    moto_server: MotoServer, credentials: Credentials  # noqa: F811
) -> None:
    key = _kms_ok(moto_server, credentials, "CreateKey", {"Description": "sigv4 test"})
    key_id = key["KeyMetadata"]["KeyId"]  # type: ignore[index]
    plaintext = b"data key \x00\xff"
    encrypted = _kms_ok(moto_server, credentials, "Encrypt",
                        {"KeyId": key_id, "Plaintext": base64.b64encode(plaintext).decode()})
    decrypted = _kms_ok(moto_server, credentials, "Decrypt",
                        {"CiphertextBlob": encrypted["CiphertextBlob"]})
    assert base64.b64decode(str(decrypted["Plaintext"])) == plaintext


def test_s3_put_object_and_get_object_are_accepted_and_round_trip(
    moto_server: MotoServer, credentials: Credentials  # noqa: F811
) -> None:
    bucket = _bucket(moto_server, credentials, f"sigv4-{credentials.access_key_id.lower()}")
    body = b"encrypted list \x00\x01\x02"
    put = moto_server.signed("PUT", _object_path(bucket), service="s3", credentials=credentials,
                             headers={"Content-Type": "application/octet-stream"}, body=body)
    assert put.status == 200, (put.status, put.error_code(), put.body)
    got = moto_server.signed("GET", _object_path(bucket), service="s3", credentials=credentials)
    assert got.status == 200, (got.status, got.error_code(), got.body)
    assert got.body == body


# --- Refused -----------------------------------------------------------------------------------


def test_kms_request_with_one_body_byte_changed_after_signing_is_refused(
    moto_server: MotoServer, credentials: Credentials  # noqa: F811
) -> None:
    key_id = _kms_ok(moto_server, credentials, "CreateKey", {})["KeyMetadata"]["KeyId"]  # type: ignore[index]
    body = json.dumps({"KeyId": key_id, "Plaintext": base64.b64encode(b"aaaa").decode()}).encode()
    headers = _signed_headers(moto_server, "POST", "/", _kms_headers("Encrypt"), body, "kms",
                              credentials)
    assert moto_server.send("POST", "/", headers, body).status == 200  # as signed: accepted
    tampered = _flip_one_byte(body, b"Y", b"Z")  # "YWFhYQ==" (aaaa) becomes "ZWFhYQ=="
    refused = moto_server.send("POST", "/", headers, tampered)
    assert (refused.status, refused.error_code()) == (403, "SignatureDoesNotMatch")


def test_kms_request_with_a_signed_header_changed_after_signing_is_refused(
    moto_server: MotoServer, credentials: Credentials  # noqa: F811
) -> None:
    key_id = _kms_ok(moto_server, credentials, "CreateKey", {})["KeyMetadata"]["KeyId"]  # type: ignore[index]
    body = json.dumps({"KeyId": key_id}).encode()
    headers = _signed_headers(moto_server, "POST", "/", _kms_headers("DescribeKey"), body,
                              "kms", credentials)
    headers["X-Amz-Target"] = "TrentService.DisableKey"
    refused = moto_server.send("POST", "/", headers, body)
    assert (refused.status, refused.error_code()) == (403, "SignatureDoesNotMatch")


def test_s3_put_with_body_and_its_hash_changed_after_signing_is_refused(
    moto_server: MotoServer, credentials: Credentials  # noqa: F811
) -> None:
    """moto (unlike S3) never compares the body with x-amz-content-sha256, so a body-only
    change goes unnoticed there; what it can show is that the hash header is signed: change
    a byte and the header to match, and the signature no longer fits."""
    bucket = _bucket(moto_server, credentials, f"tamper-{credentials.access_key_id.lower()}")
    path = _object_path(bucket)
    body = b"original list"
    headers = _signed_headers(moto_server, "PUT", path, {}, body, "s3", credentials)
    tampered = _flip_one_byte(body, b"o", b"O")
    headers["x-amz-content-sha256"] = hashlib.sha256(tampered).hexdigest()
    refused = moto_server.send("PUT", path, headers, tampered)
    assert (refused.status, refused.error_code()) == (403, "SignatureDoesNotMatch")
    assert moto_server.signed("GET", path, service="s3", credentials=credentials).status == 404


def test_wrong_session_token_is_refused_by_kms_and_s3(moto_server: MotoServer) -> None:  # noqa: F811
    session = moto_server.assume_role()
    assert session.session_token is not None
    wrong = replace(session, session_token=session.session_token[:-4] + "AAAA")
    assert wrong.session_token != session.session_token
    kms = _kms(moto_server, wrong, "ListKeys", {})
    assert (kms.status, kms.error_code()) == (403, "InvalidClientTokenId")
    s3 = moto_server.signed("GET", "/", service="s3", credentials=wrong)
    assert (s3.status, s3.error_code()) == (400, "InvalidToken")
    # The same calls with the right token are accepted, so the token alone made the difference.
    assert _kms(moto_server, session, "ListKeys", {}).status == 200
    assert moto_server.signed("GET", "/", service="s3", credentials=session).status == 200


def test_wrong_secret_is_refused_by_kms_and_s3(
    moto_server: MotoServer, credentials: Credentials  # noqa: F811
) -> None:
    wrong = replace(credentials, secret_access_key=credentials.secret_access_key[::-1])
    kms = _kms(moto_server, wrong, "ListKeys", {})
    assert (kms.status, kms.error_code()) == (403, "SignatureDoesNotMatch")
    s3 = moto_server.signed("GET", "/", service="s3", credentials=wrong)
    assert (s3.status, s3.error_code()) == (403, "SignatureDoesNotMatch")
