"""Our KMS and S3 clients against moto in server mode with IAM authentication on, and the
service end to end: `noflylist serve` decrypting the public demo's envelope through moto."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import botocore.session
import pytest
from cryptography.fernet import Fernet

from enclave.kms import KMSClient, KMSError
from enclave.modes import AttestationMode
from enclave.retry import RetryPolicy
from enclave.s3 import S3Client, S3Error
from enclave.sigv4 import Credentials
from noflylist.tools import seal
from tests.support.moto_server import MotoServer
from tests.support.service_client import ask, free_port, wait_ready

FAST = RetryPolicy(deadline=5.0, base_delay=0.01, max_delay=0.05)


class Static:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def get(self) -> Credentials:
        return self.credentials


def create_key(moto: MotoServer) -> str:
    response = moto.signed(
        "POST", "/", service="kms", credentials=moto.user_credentials,
        headers={"X-Amz-Target": "TrentService.CreateKey",
                 "Content-Type": "application/x-amz-json-1.1"},
        body=b"{}",
    )  # fmt: skip
    assert response.status == 200, response.body
    return str(json.loads(response.body)["KeyMetadata"]["Arn"])


def kms_client(moto: MotoServer, credentials: Credentials) -> KMSClient:
    return KMSClient(
        moto.region, Static(credentials), endpoint=moto.endpoint, environ={}, retry=FAST
    )


@pytest.mark.parametrize("identity", ["user", "assumed-role"])
def test_kms_data_key_encrypt_decrypt_round_trip(moto_server: MotoServer, identity: str) -> None:
    credentials = moto_server.user_credentials if identity == "user" else moto_server.assume_role()
    assert (credentials.session_token is not None) == (identity == "assumed-role")
    key_arn = create_key(moto_server)
    client = kms_client(moto_server, credentials)
    context = {"app": "noflylist"}
    data_key = client.generate_data_key(key_arn, encryption_context=context)
    assert data_key.plaintext is not None and len(data_key.plaintext) == 32
    opened = client.decrypt(data_key.ciphertext_blob, key_id=key_arn, encryption_context=context)
    assert opened.plaintext == data_key.plaintext
    blob = client.encrypt(key_arn, b"small secret")
    assert client.decrypt(blob).plaintext == b"small secret"
    assert (client.calls, client.errors) == (4, 0)


def test_kms_refuses_a_wrong_context_and_a_wrong_token_without_retrying(
    moto_server: MotoServer,
) -> None:
    key_arn = create_key(moto_server)
    client = kms_client(moto_server, moto_server.user_credentials)
    data_key = client.generate_data_key(key_arn, encryption_context={"app": "noflylist"})
    with pytest.raises(KMSError) as caught:
        client.decrypt(data_key.ciphertext_blob, encryption_context={"app": "other"})
    assert caught.value.code == "InvalidCiphertextException"
    session = moto_server.assume_role()
    forged = Credentials(session.access_key_id, session.secret_access_key, "wrong-token")
    started = time.monotonic()
    with pytest.raises(KMSError) as caught:
        kms_client(moto_server, forged).decrypt(data_key.ciphertext_blob)
    assert caught.value.status == 403
    assert caught.value.code == "InvalidClientTokenId"
    assert time.monotonic() - started < 2.0  # a client error: no retries


def test_s3_put_get_conditional_get_and_missing_key(moto_server: MotoServer) -> None:
    bucket = "noflylist-s3-client"
    created = moto_server.signed("PUT", f"/{bucket}", service="s3",
                                 credentials=moto_server.user_credentials)  # fmt: skip
    assert created.status == 200, created.body
    environ = {"AWS_ENDPOINT_URL_S3": moto_server.endpoint}
    for credentials in (moto_server.user_credentials, moto_server.assume_role()):
        client = S3Client(moto_server.region, Static(credentials), environ=environ, retry=FAST)
        etag = client.put_object(bucket, "lists/envelope.json", b'{"format": "x"}')
        found = client.get_object(bucket, "lists/envelope.json")
        assert found is not None and found.body == b'{"format": "x"}' and found.etag == etag
        assert client.get_object(bucket, "lists/envelope.json", if_none_match=etag) is None
        with pytest.raises(S3Error) as caught:
            client.get_object(bucket, "lists/missing.json")
        assert (caught.value.status, caught.value.code) == (404, "NoSuchKey")


# -- what a failed call says, with moto's real error answers ------------------------------

#: The fix each refusal must name (literal words of enclave.awserror's table).
KEY_PAIR = "the secret access key does not match the access key id"
UNKNOWN = "AWS does not know this access key id or session token"


def _refusals(
    moto: MotoServer, credentials: Credentials, bucket: str = "noflylist-refusals"
) -> tuple[KMSError, S3Error]:
    """One KMS Decrypt and one S3 GetObject with ``credentials``, both refused."""
    key_arn = create_key(moto)
    blob = kms_client(moto, moto.user_credentials).encrypt(key_arn, b"data key")
    environ = {"AWS_ENDPOINT_URL_S3": moto.endpoint}
    owner = S3Client(moto.region, Static(moto.user_credentials), environ=environ, retry=FAST)
    moto.signed("PUT", f"/{bucket}", service="s3", credentials=moto.user_credentials)
    owner.put_object(bucket, "envelope.json", b"{}")
    started = time.monotonic()
    with pytest.raises(KMSError) as from_kms:
        kms_client(moto, credentials).decrypt(blob, key_id=key_arn)
    client = S3Client(moto.region, Static(credentials), environ=environ, retry=FAST)
    with pytest.raises(S3Error) as from_s3:
        client.get_object(bucket, "envelope.json")
    assert time.monotonic() - started < 2.0  # client errors: no retries
    for error in (from_kms.value, from_s3.value):
        text = str(error)
        assert "\n" not in text and text.isascii() and text.isprintable()
        assert credentials.secret_access_key not in text
        assert not credentials.session_token or credentials.session_token not in text
        assert "unknown error" not in text
    return from_kms.value, from_s3.value


@pytest.mark.parametrize("identity", ["user", "assumed-role"])
def test_a_wrong_secret_key_is_named_as_such_by_kms_and_s3(
    moto_server: MotoServer, identity: str
) -> None:
    """moto answers KMS with query-style XML here (real KMS: JSON InvalidSignatureException);
    both must come out as the same one line with the same fix."""
    right = moto_server.user_credentials if identity == "user" else moto_server.assume_role()
    wrong = replace(right, secret_access_key=right.secret_access_key[::-1])
    from_kms, from_s3 = _refusals(moto_server, wrong)
    assert (from_kms.status, from_kms.code) == (403, "SignatureDoesNotMatch")
    assert str(from_kms).startswith("KMS Decrypt failed: HTTP 403 SignatureDoesNotMatch: The "
                                    "request signature we calculated does not match")  # fmt: skip
    assert KEY_PAIR in str(from_kms)
    assert (from_s3.status, from_s3.code) == (403, "SignatureDoesNotMatch")
    assert KEY_PAIR in str(from_s3) and "bucket policy" not in str(from_s3)


def test_a_wrong_session_token_is_named_as_such_by_kms_and_s3(moto_server: MotoServer) -> None:
    session = moto_server.assume_role()
    assert session.session_token is not None
    wrong = replace(session, session_token=session.session_token[:-4] + "AAAA")
    from_kms, from_s3 = _refusals(moto_server, wrong)
    assert (from_kms.status, from_kms.code) == (403, "InvalidClientTokenId")
    assert (from_s3.status, from_s3.code) == (400, "InvalidToken")
    for error in (from_kms, from_s3):
        assert UNKNOWN in str(error) and "AWS_SESSION_TOKEN" in str(error)


@pytest.mark.parametrize("case", ["unknown-key-id", "temporary-keys-without-token"])
def test_an_unknown_key_id_or_a_missing_session_token_is_named_by_kms_and_s3(
    moto_server: MotoServer, case: str
) -> None:
    if case == "unknown-key-id":
        credentials = Credentials("AKIAIOSFODNN7NOTAKEY", "not-the-secret-of-any-key")
    else:
        credentials = replace(moto_server.assume_role(), session_token=None)
    from_kms, from_s3 = _refusals(moto_server, credentials)
    assert (from_kms.status, from_kms.code) == (403, "InvalidClientTokenId")
    assert (from_s3.status, from_s3.code) == (403, "InvalidAccessKeyId")
    for error in (from_kms, from_s3):
        assert UNKNOWN in str(error)


def _iam(moto: MotoServer, action: str, **params: str) -> dict[str, str]:
    """One IAM call as the allow-everything user; the answer's leaf elements by name."""
    body = urlencode({"Action": action, "Version": "2010-05-08", **params}).encode()
    answer = moto.signed("POST", "/", service="iam", credentials=moto.user_credentials,
                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                         body=body)  # fmt: skip
    assert answer.status == 200, answer.body
    return {
        node.tag.rpartition("}")[2]: node.text or "" for node in ET.fromstring(answer.body).iter()
    }


def test_access_denied_names_the_key_policy_for_kms_and_the_bucket_policy_for_s3(
    moto_server: MotoServer,
) -> None:
    """An IAM user whose only permission is sts:GetCallerIdentity: moto's IAM check refuses
    its Decrypt and GetObject with AccessDenied."""
    name = "noflylist-denied"
    _iam(moto_server, "CreateUser", UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}]}  # fmt: skip
    _iam(moto_server, "PutUserPolicy", UserName=name, PolicyName="almost-nothing",
         PolicyDocument=json.dumps(policy))  # fmt: skip
    key = _iam(moto_server, "CreateAccessKey", UserName=name)
    denied = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    from_kms, from_s3 = _refusals(moto_server, denied, bucket="noflylist-denied")
    assert (from_kms.status, from_kms.code) == (403, "AccessDenied")
    assert "is not authorized to perform: kms:Decrypt" in str(from_kms)  # moto's own message
    assert "kms:RecipientAttestation:PCR0" in str(from_kms)
    assert (from_s3.status, from_s3.code) == (403, "AccessDenied")
    assert "may s3:GetObject" in str(from_s3) and "bucket policy" in str(from_s3)
    with pytest.raises(KMSError) as other_action:
        kms_client(moto_server, denied).generate_data_key(create_key(moto_server))
    assert other_action.value.code == "AccessDenied"
    assert "PCR0" not in str(other_action.value)  # the attestation hint is Decrypt's alone
    assert "IAM policy, or the resource's own policy" in str(other_action.value)


# -- the service end to end, on the public demo's envelope format ------------------------


def public_demo_envelope(moto: MotoServer, key_arn: str, names: str) -> bytes:
    """Sealed the way the public demo's script does it: botocore + Fernet, not our code."""
    session = botocore.session.Session()
    client = session.create_client(
        "kms",
        region_name=moto.region,
        endpoint_url=moto.endpoint,
        aws_access_key_id=moto.user_credentials.access_key_id,
        aws_secret_access_key=moto.user_credentials.secret_access_key,
    )
    answer = client.generate_data_key(KeyId=key_arn, KeySpec="AES_256")
    token = Fernet(base64.b64encode(answer["Plaintext"])).encrypt(names.encode("utf-8"))
    return json.dumps(
        {
            "data-key-ciphertext-base64": base64.b64encode(answer["CiphertextBlob"]).decode(),
            "aes-ciphertext-base64": token.decode(),
        }
    ).encode()


def test_serve_answers_the_public_demo_questions_from_its_envelope_through_moto(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    key_arn = create_key(moto_server)
    path = tmp_path / "no-fly-envelope.json"
    path.write_bytes(
        public_demo_envelope(moto_server, key_arn, "bigbird,oscarthegrouch,cookiemonster,elmo")
    )
    env = {
        **os.environ,
        "NOFLYLIST_ENVELOPE": str(path),
        "NOFLYLIST_ATTESTATION": "unsafe-none",
        "NOFLYLIST_PORT": str(free_port()),
        "AWS_ENDPOINT_URL_KMS": moto_server.endpoint,
        "AWS_REGION": moto_server.region,
        "AWS_ACCESS_KEY_ID": moto_server.user_credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": moto_server.user_credentials.secret_access_key,
    }
    env.pop("AWS_SESSION_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "noflylist", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{env['NOFLYLIST_PORT']}"
        wait_ready(base)
        assert ask(base, "Big Bird") == "Big Bird is on the no-fly list and CAN NOT BOARD!\n"
        assert ask(base, "  COOKIE monster ") == (
            "  COOKIE monster  is on the no-fly list and CAN NOT BOARD!\n"
        )
        assert ask(base, "foo") == "foo is cleared to fly. Enjoy your flight!\n"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "UNSAFE" in output  # the unattested mode says so, loudly
    assert re.search(r"list in service: 4 entries, serial 0, fernet format", output), output
    for name in ("bigbird", "oscarthegrouch", "cookiemonster", "Big Bird", "COOKIE"):
        assert name not in output


def test_serve_from_s3_polls_swaps_in_a_newer_list_and_refuses_an_older_one(
    moto_server: MotoServer,
) -> None:
    """The refresh path for real: S3 GetObject with If-None-Match through moto, KMS Decrypt
    through moto, the service in this process on a free port."""
    from noflylist.config import ServeConfig
    from noflylist.service import Service

    key_arn = create_key(moto_server)
    bucket = "noflylist-refresh"
    assert (
        moto_server.signed(
            "PUT", f"/{bucket}", service="s3", credentials=moto_server.user_credentials
        ).status
        == 200
    )
    credentials = moto_server.user_credentials
    environ = {
        "AWS_ENDPOINT_URL": moto_server.endpoint,
        "AWS_REGION": moto_server.region,
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
    }
    kms = kms_client(moto_server, credentials)
    s3 = S3Client(moto_server.region, Static(credentials), environ=environ, retry=FAST)
    s3.put_object(bucket, "envelope.json", seal.seal_v2(["bert"], kms, key_arn, serial=10))
    config = ServeConfig(
        envelope=f"s3://{bucket}/envelope.json",
        port=free_port(),
        attestation=AttestationMode.UNSAFE_NONE,
        refresh_interval=0.2,
        key_id=key_arn,
    )
    service = Service(config, environ=environ)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    try:
        wait_ready(base)
        assert "CAN NOT BOARD" in ask(base, "Bert")
        s3.put_object(bucket, "envelope.json", seal.seal_v2(["ernie"], kms, key_arn, serial=11))
        _wait_until(lambda: "CAN NOT BOARD" in ask(base, "Ernie"))
        assert "cleared" in ask(base, "Bert")
        loads_before = service.metrics.events("noflylist_list_loads_total", "refused")
        s3.put_object(bucket, "envelope.json", seal.seal_v2(["bert"], kms, key_arn, serial=9))
        _wait_until(
            lambda: service.metrics.events("noflylist_list_loads_total", "refused") > loads_before
        )
        assert "CAN NOT BOARD" in ask(base, "Ernie") and "cleared" in ask(base, "Bert")
    finally:
        service.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()


def _wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _moto_env(moto: MotoServer) -> dict[str, str]:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_KMS": moto.endpoint,
        "AWS_REGION": moto.region,
        "AWS_ACCESS_KEY_ID": moto.user_credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": moto.user_credentials.secret_access_key,
    }
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("client", ["botocore", "builtin"])
def test_seal_writes_an_envelope_that_opens_with_the_listed_names(
    moto_server: MotoServer, tmp_path: Path, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`noflylist seal` through botocore's credential chain (when installed) and through the
    project's own client (otherwise); both write a v2 envelope our reader opens."""
    from noflylist import cli, envelope

    key_arn = create_key(moto_server)
    names = ["Big Bird", "Oscar, the Grouch", "zoë"]
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n\n", encoding="utf-8")
    for name, value in _moto_env(moto_server).items():
        monkeypatch.setenv(name, value)
    if client == "builtin":

        def no_botocore(profile: str | None) -> None:
            raise ImportError("botocore")

        monkeypatch.setattr(seal, "_BotocoreDataKeys", no_botocore)
    output = tmp_path / "envelope.json"
    status = cli.main(
        ["seal", "--key-id", key_arn, "--input", str(tmp_path / "list.txt"),
         "--output", str(output), "--serial", "42"]
    )  # fmt: skip
    assert status == 0
    parsed = envelope.parse(output.read_bytes())
    assert (parsed.serial, parsed.entries, parsed.key_id) == (42, 3, key_arn)
    kms = kms_client(moto_server, moto_server.user_credentials)

    class Unattested:
        def decrypt(self, blob: bytes, **kwargs: object) -> bytes:
            plaintext = kms.decrypt(blob, **kwargs).plaintext  # type: ignore[arg-type]
            assert plaintext is not None
            return plaintext

    assert list(envelope.decrypt(parsed, Unattested())) == names
    for name in names:
        assert name.encode() not in output.read_bytes()


def test_serve_reloads_a_file_envelope_on_sighup(moto_server: MotoServer, tmp_path: Path) -> None:

    key_arn = create_key(moto_server)
    kms = kms_client(moto_server, moto_server.user_credentials)
    path = tmp_path / "envelope.json"
    path.write_bytes(seal.seal_v2(["bert"], kms, key_arn, serial=1))
    port = free_port()
    env = {
        **_moto_env(moto_server),
        "NOFLYLIST_ENVELOPE": str(path),
        "NOFLYLIST_ATTESTATION": "unsafe-none",
        "NOFLYLIST_PORT": str(port),
        "NOFLYLIST_KEY_ID": key_arn,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "noflylist", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        assert "CAN NOT BOARD" in ask(base, "Bert")
        path.write_bytes(seal.seal_v2(["ernie"], kms, key_arn, serial=2))
        assert "cleared" in ask(base, "Ernie")  # a file is not polled: nothing changes yet
        process.send_signal(signal.SIGHUP)
        _wait_until(lambda: "CAN NOT BOARD" in ask(base, "Ernie"))
        assert "cleared" in ask(base, "Bert")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "SIGHUP: reloading the envelope" in output
