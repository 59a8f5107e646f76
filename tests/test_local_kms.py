"""The simulator's local KMS speaks KMS's protocol: botocore (AWS's own client) and our
KMSClient both use it; bad signatures are refused with KMS's codes; the encryption context
is bound to each blob; state survives a restart; key policies are evaluated as IAM does;
grants let their grantee in, but never past an explicit Deny.

Recipient (attested) calls are proven in tests/test_attested_flow.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave import http_client, sigv4
from enclave.kms import KMSClient, KMSError
from enclave.retry import RetryPolicy
from noflylist.tools.policy import MAX_POLICY_BYTES
from noflylist_simulator import policy
from noflylist_simulator.ca import SimulatedCA, load_or_create
from noflylist_simulator.kms_server import STATE_FILE, LocalKMS, LocalKMSError

REGION = "us-east-1"
ACCOUNT = "111122223333"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
NO_RETRY = RetryPolicy(deadline=5.0, max_attempts=1)
CLI_START_SECONDS = 20.0
PCR0 = bytes(range(48))


class Static:
    def __init__(self, credentials: sigv4.Credentials) -> None:
        self.credentials = credentials

    def get(self) -> sigv4.Credentials:
        return self.credentials


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCA:
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def kms(tmp_path: Path, ca: SimulatedCA) -> Iterator[LocalKMS]:
    with LocalKMS(tmp_path / "state", simulator_root=ca.root) as server:
        yield server


def ours(kms: LocalKMS, credentials: sigv4.Credentials) -> KMSClient:
    return KMSClient(REGION, Static(credentials), endpoint=kms.url, environ={}, retry=NO_RETRY)


#: One botocore session, so its service models are loaded once for the whole module.
BOTOCORE = botocore.session.get_session()


def boto(kms: LocalKMS, credentials: sigv4.Credentials) -> Any:
    return BOTOCORE.create_client(
        "kms",
        region_name=REGION,
        endpoint_url=kms.url,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        config=Config(retries={"max_attempts": 1}),
    )


def code_of(call: Callable[[], object]) -> str:
    """Run a botocore call that must fail; return KMS's error code."""
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def raw(
    kms: LocalKMS,
    credentials: sigv4.Credentials,
    action: str,
    request: dict[str, Any],
    *,
    now: datetime | None = None,
    region: str = REGION,
    tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]] | None = None,
) -> http_client.Response:
    """One request signed by enclave.sigv4, optionally altered after signing."""
    url, body = kms.url + "/", json.dumps(request).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"TrentService.{action}",
    }
    headers |= sigv4.sign(
        "POST", url, headers, body, service="kms", region=region, credentials=credentials,
        now=now or datetime.now(UTC),
    )  # fmt: skip
    if tamper is not None:
        headers, body = tamper(headers, body)
    return http_client.request("POST", url, headers=headers, body=body, environ={})


def error(response: http_client.Response) -> str:
    assert response.status == 400
    assert response.headers["content-type"] == "application/x-amz-json-1.1"
    answer = json.loads(response.body)
    assert set(answer) == {"__type", "message"} and answer["message"]
    return str(answer["__type"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unencodable(kms: LocalKMS, headers: dict[str, str]) -> tuple[int, str]:
    """POST / with header values our HTTP client refuses to send (non-ASCII, sent as
    latin-1); return the status and KMS's error code."""
    lines = [f"{name}: {value}" for name, value in {"Host": kms.url[7:], **headers}.items()]
    port = int(kms.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("POST / HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response = HTTPResponse(sock)
        response.begin()
        return response.status, str(json.loads(response.read())["__type"])


# -- both clients are accepted --------------------------------------------------------------------


@pytest.mark.parametrize("session_token", [False, True], ids=["long-term", "session"])
def test_botocore_client_runs_every_action(kms: LocalKMS, session_token: bool) -> None:
    client = boto(kms, kms.create_credentials(ALICE, session_token=session_token))
    meta = client.create_key(Description="list key")["KeyMetadata"]
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{meta['KeyId']}"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["Enabled"] is True
    described = client.describe_key(KeyId=meta["Arn"])["KeyMetadata"]
    assert described["KeyId"] == meta["KeyId"] and described["KeyState"] == "Enabled"
    client.create_alias(AliasName="alias/list", TargetKeyId=meta["KeyId"])

    data_key = client.generate_data_key(KeyId="alias/list", KeySpec="AES_256")
    assert len(data_key["Plaintext"]) == 32 and data_key["KeyId"] == meta["Arn"]
    opened = client.decrypt(CiphertextBlob=data_key["CiphertextBlob"])
    assert opened["Plaintext"] == data_key["Plaintext"] and opened["KeyId"] == meta["Arn"]
    sealed = client.encrypt(KeyId=meta["Arn"], Plaintext=b"secret list")["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=sealed, KeyId=meta["KeyId"])["Plaintext"] == b"secret list"
    assert len(client.generate_random(NumberOfBytes=77)["Plaintext"]) == 77

    new_policy = json.dumps(policy_allowing(ALICE, "kms:*"))
    client.put_key_policy(KeyId=meta["KeyId"], PolicyName="default", Policy=new_policy)
    got = client.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"]
    assert json.loads(got) == json.loads(new_policy)


def test_our_kms_client_runs_every_action(kms: LocalKMS) -> None:
    client = ours(kms, kms.create_credentials(ALICE, session_token=True))
    # KMSClient has no management calls; its private _call signs them like the others
    # (and reads the answer with the function it is given: here, as a plain dict).
    arn = client._call("CreateKey", {"Description": "list key"}, dict)["KeyMetadata"]["Arn"]
    data_key = client.generate_data_key(arn, encryption_context={"purpose": "list"})
    opened = client.decrypt(data_key.ciphertext_blob, encryption_context={"purpose": "list"})
    assert opened.plaintext == data_key.plaintext and opened.key_id == arn
    sealed = client.encrypt(arn, b"secret list")
    assert client.decrypt(sealed, key_id=arn).plaintext == b"secret list"
    plaintext, for_recipient = client.generate_random(40)
    assert plaintext is not None and len(plaintext) == 40 and for_recipient is None

    new_policy = json.dumps(policy_allowing(ALICE, ["kms:Decrypt", "kms:*KeyPolicy"]))
    client._call("PutKeyPolicy", {"KeyId": arn, "PolicyName": "default", "Policy": new_policy},
                 dict)  # fmt: skip
    got = client._call("GetKeyPolicy", {"KeyId": arn, "PolicyName": "default"}, dict)
    assert json.loads(got["Policy"]) == json.loads(new_policy)
    with pytest.raises(KMSError) as denied:  # the new policy no longer allows Encrypt
        client.encrypt(arn, b"x")
    assert denied.value.code == "AccessDeniedException"


def test_blobs_made_by_one_client_open_with_the_other(kms: LocalKMS) -> None:
    credentials = kms.create_credentials(ALICE)
    theirs, mine = boto(kms, credentials), ours(kms, credentials)
    arn = kms.create_key(ALICE)
    by_botocore = theirs.encrypt(KeyId=arn, Plaintext=b"one")["CiphertextBlob"]
    assert mine.decrypt(by_botocore).plaintext == b"one"
    by_ours = mine.encrypt(arn, b"two", encryption_context={"a": "b"})
    assert (
        theirs.decrypt(CiphertextBlob=by_ours, EncryptionContext={"a": "b"})["Plaintext"] == b"two"
    )


# -- authentication ----------------------------------------------------------------------------


def test_a_correctly_signed_raw_request_is_accepted(kms: LocalKMS) -> None:
    """The control for the refusals below: same helper, nothing altered."""
    response = raw(kms, kms.create_credentials(ALICE), "GenerateRandom", {"NumberOfBytes": 8})
    assert response.status == 200
    assert len(base64.b64decode(json.loads(response.body)["Plaintext"])) == 8


def test_unsigned_request_is_refused(kms: LocalKMS) -> None:
    def unsign(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        return {k: v for k, v in headers.items() if k != "Authorization"}, body

    response = raw(kms, kms.create_credentials(ALICE), "GenerateRandom", {"NumberOfBytes": 8},
                   tamper=unsign)  # fmt: skip
    assert error(response) == "MissingAuthenticationTokenException"


def test_wrong_secret_is_refused_by_both_clients(kms: LocalKMS) -> None:
    real = kms.create_credentials(ALICE)
    last = real.secret_access_key[-1]
    wrong = sigv4.Credentials(real.access_key_id, real.secret_access_key[:-1] + chr(ord(last) ^ 1))
    assert error(raw(kms, wrong, "GenerateRandom", {"NumberOfBytes": 8})) == (
        "InvalidSignatureException"
    )
    assert code_of(lambda: boto(kms, wrong).generate_random(NumberOfBytes=8)) == (
        "InvalidSignatureException"
    )


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_changed_body_byte_is_refused(kms: LocalKMS, where: str) -> None:
    def change_one_byte(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        index = {"first": 0, "middle": len(body) // 2, "last": len(body) - 1}[where]
        return headers, body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]

    response = raw(kms, kms.create_credentials(ALICE), "GenerateRandom", {"NumberOfBytes": 8},
                   tamper=change_one_byte)  # fmt: skip
    assert error(response) == "InvalidSignatureException"


def test_wrong_or_missing_session_token_is_refused(kms: LocalKMS) -> None:
    real = kms.create_credentials(ALICE, session_token=True)
    assert real.session_token is not None
    wrong = sigv4.Credentials(real.access_key_id, real.secret_access_key, real.session_token + "x")
    missing = sigv4.Credentials(real.access_key_id, real.secret_access_key)
    for bad in (wrong, missing):
        assert error(raw(kms, bad, "GenerateRandom", {"NumberOfBytes": 8})) == (
            "UnrecognizedClientException"
        )
    assert code_of(lambda: boto(kms, wrong).generate_random(NumberOfBytes=8)) == (
        "UnrecognizedClientException"
    )


@pytest.mark.parametrize(
    ("length", "code"),
    [("\xb2", "SerializationException"), ("9" * 5000, "ValidationException")],
    ids=["superscript two", "5000 digits"],
)
def test_a_content_length_int_refuses_is_a_400_not_an_internal_error(
    kms: LocalKMS, length: str, code: str
) -> None:
    """Bug fixed: str.isdigit() passed both, then int() raised ValueError (HTTP 500)."""
    assert unencodable(kms, {"Content-Length": length}) == (400, code)


def test_a_non_ascii_session_token_is_refused_not_an_internal_error(kms: LocalKMS) -> None:
    """Bug fixed: comparing it with hmac.compare_digest on str raised TypeError (HTTP 500)."""
    real = kms.create_credentials(ALICE, session_token=True)
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={real.access_key_id}/20240101/{REGION}/kms/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}"
    )
    headers = {"Authorization": authorization, "X-Amz-Security-Token": "caf\xe9",
               "Content-Length": "0"}  # fmt: skip
    assert unencodable(kms, headers) == (400, "UnrecognizedClientException")


def test_unknown_access_key_is_refused(kms: LocalKMS) -> None:
    stranger = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert error(raw(kms, stranger, "GenerateRandom", {"NumberOfBytes": 8})) == (
        "UnrecognizedClientException"
    )


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(timedelta(minutes=-4), True), (timedelta(minutes=4), True),
     (timedelta(minutes=-6), False), (timedelta(minutes=6), False)],
    ids=["4-min-behind", "4-min-ahead", "6-min-behind", "6-min-ahead"],
)  # fmt: skip
def test_signatures_more_than_five_minutes_off_are_refused(
    kms: LocalKMS, offset: timedelta, accepted: bool
) -> None:
    credentials = kms.create_credentials(ALICE)
    now = datetime.now(UTC) + offset
    response = raw(kms, credentials, "GenerateRandom", {"NumberOfBytes": 8}, now=now)
    if accepted:
        assert response.status == 200
    else:
        assert error(response) == "InvalidSignatureException"
        assert b"Signature expired" in response.body


def test_signature_scoped_to_another_region_is_refused(kms: LocalKMS) -> None:
    response = raw(kms, kms.create_credentials(ALICE), "GenerateRandom", {"NumberOfBytes": 8},
                   region="eu-west-1")  # fmt: skip
    assert error(response) == "InvalidSignatureException"
    assert b"region" in response.body


# -- keys, blobs and the encryption context ---------------------------------------------------


def test_encryption_context_is_bound_to_the_blob(kms: LocalKMS) -> None:
    client = boto(kms, kms.create_credentials(ALICE))
    arn = kms.create_key(ALICE)
    context = {"purpose": "no-fly list", "version": "7"}
    blob = client.encrypt(KeyId=arn, Plaintext=b"list key", EncryptionContext=context)[
        "CiphertextBlob"
    ]
    reordered = dict(reversed(context.items()))
    assert client.decrypt(CiphertextBlob=blob, EncryptionContext=reordered)["Plaintext"] == (
        b"list key"
    )
    for other in (
        {},
        {"purpose": "no-fly list"},
        {**context, "extra": "pair"},
        {**context, "version": "8"},
        {"Purpose": "no-fly list", "version": "7"},  # keys are case-sensitive
    ):
        assert code_of(
            lambda o=other: client.decrypt(CiphertextBlob=blob, EncryptionContext=o)
        ) == ("InvalidCiphertextException")


@pytest.fixture
def sealed(kms: LocalKMS) -> tuple[KMSClient, bytes]:
    """A client and one blob it encrypted, made once for all the examples of a test."""
    client = ours(kms, kms.create_credentials(ALICE))
    return client, client.encrypt(kms.create_key(ALICE), b"list key", encryption_context={"a": "b"})


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_any_single_changed_blob_byte_is_refused(
    sealed: tuple[KMSClient, bytes], data: st.DataObject
) -> None:
    client, blob = sealed
    index = data.draw(st.integers(0, len(blob) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = blob[:index] + bytes([blob[index] ^ flip]) + blob[index + 1 :]
    with pytest.raises(KMSError) as refused:
        client.decrypt(changed, encryption_context={"a": "b"})
    assert refused.value.code == "InvalidCiphertextException"


def test_decrypt_with_another_keys_id_is_incorrect_key(kms: LocalKMS) -> None:
    client = boto(kms, kms.create_credentials(ALICE))
    first, second = kms.create_key(ALICE), kms.create_key(ALICE)
    client.create_alias(AliasName="alias/first", TargetKeyId=first)
    blob = client.encrypt(KeyId=first, Plaintext=b"k")["CiphertextBlob"]
    assert code_of(lambda: client.decrypt(CiphertextBlob=blob, KeyId=second)) == (
        "IncorrectKeyException"
    )
    assert client.decrypt(CiphertextBlob=blob, KeyId="alias/first")["Plaintext"] == b"k"


def test_unknown_keys_and_other_regions_keys_are_not_found(kms: LocalKMS) -> None:
    client = boto(kms, kms.create_credentials(ALICE))
    arn = kms.create_key(ALICE)
    elsewhere = arn.replace(f":{REGION}:", ":eu-west-1:")
    for key_id in ("alias/none", "00000000-0000-0000-0000-000000000000", elsewhere):
        assert code_of(lambda k=key_id: client.encrypt(KeyId=k, Plaintext=b"x")) == (
            "NotFoundException"
        )


def test_disabled_key_is_refused_until_enabled(kms: LocalKMS) -> None:
    client = boto(kms, kms.create_credentials(ALICE))
    arn = kms.create_key(ALICE)
    client.disable_key(KeyId=arn)
    assert code_of(lambda: client.encrypt(KeyId=arn, Plaintext=b"x")) == "DisabledException"
    client.enable_key(KeyId=arn)
    assert client.encrypt(KeyId=arn, Plaintext=b"x")["KeyId"] == arn


def test_generate_data_key_sizes_and_validation(kms: LocalKMS) -> None:
    client = boto(kms, kms.create_credentials(ALICE))
    arn = kms.create_key(ALICE)
    assert len(client.generate_data_key(KeyId=arn, KeySpec="AES_128")["Plaintext"]) == 16
    assert len(client.generate_data_key(KeyId=arn, NumberOfBytes=64)["Plaintext"]) == 64
    both = {"KeySpec": "AES_256", "NumberOfBytes": 32}
    assert code_of(lambda: client.generate_data_key(KeyId=arn, **both)) == "ValidationException"
    assert code_of(lambda: client.generate_random(NumberOfBytes=1025)) == "ValidationException"


# -- state --------------------------------------------------------------------------------------


def test_keys_credentials_and_policies_survive_a_restart(tmp_path: Path, ca: SimulatedCA) -> None:
    state = tmp_path / "state"
    with LocalKMS(state, simulator_root=ca.root) as first:
        credentials = first.create_credentials(ALICE, session_token=True)
        arn = first.create_key(ALICE)
        restricted = json.dumps(policy_allowing(ALICE, ["kms:Decrypt", "kms:PutKeyPolicy"]))
        first.put_key_policy(arn, restricted, principal_arn=ALICE)
    assert oct(os.stat(state / STATE_FILE).st_mode & 0o777) == "0o600"
    with LocalKMS(state, simulator_root=ca.root) as second:
        client = ours(second, credentials)  # the same credentials still sign
        with pytest.raises(KMSError) as denied:  # the stored policy still applies
            client.encrypt(arn, b"x")
        assert denied.value.code == "AccessDeniedException"
        second.put_key_policy(arn, json.dumps(policy_allowing(ALICE, "kms:*")), principal_arn=ALICE)
        blob = client.encrypt(arn, b"kept")
    with LocalKMS(state, simulator_root=ca.root) as third:
        assert ours(third, credentials).decrypt(blob).plaintext == b"kept"  # same key material


def test_state_readable_by_others_or_of_another_region_is_refused(
    tmp_path: Path, ca: SimulatedCA
) -> None:
    state = tmp_path / "state"
    with LocalKMS(state, simulator_root=ca.root) as kms:
        kms.create_key(ALICE)
    with pytest.raises(LocalKMSError, match="region us-east-1"):
        LocalKMS(state, simulator_root=ca.root, region="eu-west-1")
    os.chmod(state / STATE_FILE, 0o644)
    with pytest.raises(LocalKMSError, match="chmod 600"):
        LocalKMS(state, simulator_root=ca.root)


def test_running_alone_prints_its_url_and_serves(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "noflylist_simulator.kms_server", "--state", str(tmp_path),
               "--port", "0", "--new-credentials", ALICE]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        access_key, secret, url = _lines_within(process, 3, CLI_START_SECONDS)
        credentials = sigv4.Credentials(access_key.split("=", 1)[1], secret.split("=", 1)[1])
        client = KMSClient(REGION, Static(credentials), endpoint=url, environ={}, retry=NO_RETRY)
        plaintext, _ = client.generate_random(12)
        assert plaintext is not None and len(plaintext) == 12
    finally:
        process.terminate()
        process.wait(timeout=10)


def _lines_within(process: subprocess.Popen[bytes], count: int, seconds: float) -> list[str]:
    """The first ``count`` lines the process prints, waiting at most ``seconds`` in all."""
    assert process.stdout is not None
    deadline, output = time.monotonic() + seconds, b""
    while output.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
        chunk = os.read(process.stdout.fileno(), 4096) if ready else b""
        assert chunk, "the local KMS did not print its credentials and URL in time"
        output += chunk
    return output.decode().splitlines()[:count]


# -- key policies over HTTP ---------------------------------------------------------------------


def policy_allowing(principal: str, actions: str | list[str], **extra: Any) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions,
                 "Resource": "*", **extra}  # fmt: skip
    return {"Version": "2012-10-17", "Statement": [statement]}


def test_another_principal_is_denied_by_the_default_policy(kms: LocalKMS) -> None:
    arn = kms.create_key(ALICE)
    bob = boto(kms, kms.create_credentials(BOB))
    assert code_of(lambda: bob.encrypt(KeyId=arn, Plaintext=b"x")) == "AccessDeniedException"


def test_malformed_or_self_locking_policies_are_refused(kms: LocalKMS) -> None:
    client = boto(kms, kms.create_credentials(ALICE))
    arn = kms.create_key(ALICE)
    for text in ("not json", json.dumps({"Statement": []}),
                 json.dumps(policy_allowing(ALICE, "kms:*") | {"Statement": [{"Effect": "Maybe"}]}),
                 json.dumps(policy_allowing(BOB, "kms:*"))):  # fmt: skip
        assert code_of(lambda t=text: client.put_key_policy(KeyId=arn, PolicyName="default",
                                                            Policy=t)) == (
            "MalformedPolicyDocumentException"
        )  # fmt: skip
    client.put_key_policy(KeyId=arn, PolicyName="default", BypassPolicyLockoutSafetyCheck=True,
                          Policy=json.dumps(policy_allowing(BOB, "kms:*")))  # fmt: skip
    assert code_of(lambda: client.get_key_policy(KeyId=arn, PolicyName="default")) == (
        "AccessDeniedException"
    )


# -- grants -------------------------------------------------------------------------------------

CAROL = f"arn:aws:iam::{ACCOUNT}:user/carol"


def grant(client: Any, key_arn: str, grantee: str, *operations: str, **extra: Any) -> str:
    answer = client.create_grant(KeyId=key_arn, GranteePrincipal=grantee,
                                 Operations=list(operations), **extra)  # fmt: skip
    assert answer["GrantToken"] and len(answer["GrantId"]) == 64
    return str(answer["GrantId"])


def test_a_grant_lets_its_grantee_call_its_operations_and_nothing_else(kms: LocalKMS) -> None:
    alice = boto(kms, kms.create_credentials(ALICE))
    bob = boto(kms, kms.create_credentials(BOB))
    arn = kms.create_key(ALICE)
    blob = alice.encrypt(KeyId=arn, Plaintext=b"list key")["CiphertextBlob"]
    assert code_of(lambda: bob.decrypt(CiphertextBlob=blob)) == "AccessDeniedException"
    grant_id = grant(alice, arn, BOB, "Decrypt", "DescribeKey")
    assert bob.decrypt(CiphertextBlob=blob)["Plaintext"] == b"list key"
    assert bob.describe_key(KeyId=arn)["KeyMetadata"]["Arn"] == arn
    assert code_of(lambda: bob.encrypt(KeyId=arn, Plaintext=b"x")) == "AccessDeniedException"
    assert code_of(lambda: bob.list_grants(KeyId=arn)) == "AccessDeniedException"  # policy only
    carol = boto(kms, kms.create_credentials(CAROL))
    assert code_of(lambda: carol.decrypt(CiphertextBlob=blob)) == "AccessDeniedException"
    (entry,) = alice.list_grants(KeyId=arn)["Grants"]
    assert entry["GrantId"] == grant_id and entry["KeyId"] == arn
    assert entry["GranteePrincipal"] == BOB and entry["Operations"] == ["Decrypt", "DescribeKey"]
    assert entry["IssuingAccount"] == f"arn:aws:iam::{ACCOUNT}:root"
    alice.revoke_grant(KeyId=arn, GrantId=grant_id)
    assert code_of(lambda: bob.decrypt(CiphertextBlob=blob)) == "AccessDeniedException"
    assert code_of(lambda: alice.revoke_grant(KeyId=arn, GrantId=grant_id)) == "NotFoundException"


def test_an_explicit_deny_in_the_key_policy_beats_a_grant(kms: LocalKMS) -> None:
    alice = boto(kms, kms.create_credentials(ALICE))
    bob = boto(kms, kms.create_credentials(BOB))
    deny_bob = statement("Deny", "kms:Decrypt", {"AWS": BOB})
    document = {"Version": "2012-10-17", "Statement": [statement("Allow"), deny_bob]}
    arn = kms.create_key(ALICE, policy_document=json.dumps(document))
    blob = alice.encrypt(KeyId=arn, Plaintext=b"list key")["CiphertextBlob"]
    grant(alice, arn, BOB, "Decrypt", "Encrypt")
    assert bob.encrypt(KeyId=arn, Plaintext=b"x")["KeyId"] == arn  # the grant is in force...
    with pytest.raises(ClientError) as denied:  # ...but not past the Deny
        bob.decrypt(CiphertextBlob=blob)
    assert "explicit deny" in denied.value.response["Error"]["Message"]


def test_a_grant_made_through_a_grant_may_list_only_the_parent_grants_operations(
    kms: LocalKMS,
) -> None:
    """AWS KMS Developer Guide, "Granting CreateGrant permission"."""
    alice = boto(kms, kms.create_credentials(ALICE))
    bob = boto(kms, kms.create_credentials(BOB))
    carol = boto(kms, kms.create_credentials(CAROL))
    arn = kms.create_key(ALICE)
    blob = alice.encrypt(KeyId=arn, Plaintext=b"list key")["CiphertextBlob"]
    grant(alice, arn, BOB, "Decrypt", "CreateGrant")
    for wider in (["Encrypt"], ["Decrypt", "Encrypt"]):
        assert code_of(lambda w=wider: grant(bob, arn, CAROL, *w)) == "AccessDeniedException"
    grant(bob, arn, CAROL, "Decrypt")
    assert carol.decrypt(CiphertextBlob=blob)["Plaintext"] == b"list key"
    assert code_of(lambda: grant(carol, arn, BOB, "Decrypt")) == "AccessDeniedException"


def test_the_consoles_grant_for_aws_resource_statement_lets_no_person_create_grants(
    kms: LocalKMS,
) -> None:
    """AWS's "Allow attachment of persistent resources" statement allows CreateGrant only
    with kms:GrantIsForAWSResource true, i.e. from an AWS service; a direct call has it false."""
    alice = boto(kms, kms.create_credentials(ALICE))
    bob = boto(kms, kms.create_credentials(BOB))
    grants = ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"]
    for_aws = statement("Allow", grants, {"AWS": BOB},
                        {"Bool": {"kms:GrantIsForAWSResource": True}})  # fmt: skip
    document = {"Version": "2012-10-17", "Statement": [statement("Allow"), for_aws]}
    arn = kms.create_key(ALICE, policy_document=json.dumps(document))
    assert code_of(lambda: grant(bob, arn, BOB, "Decrypt")) == "AccessDeniedException"
    assert code_of(lambda: bob.list_grants(KeyId=arn)) == "AccessDeniedException"
    without_condition = statement("Allow", grants, {"AWS": BOB})
    unconditional = {**document, "Statement": [statement("Allow"), without_condition]}
    alice.put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(unconditional))
    assert grant(bob, arn, BOB, "Decrypt")  # the condition was what refused it
    assert len(bob.list_grants(KeyId=arn)["Grants"]) == 1


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"Constraints": {"EncryptionContextSubset": {"a": "b"}}}, "ValidationException"),
        ({"Operations": ["Sign"]}, "ValidationException"),
        ({"Operations": []}, "ValidationException"),
        ({"Operations": "Decrypt"}, "ValidationException"),
        ({"GranteePrincipal": "not a principal"}, "ValidationException"),
        ({"GranteePrincipal": "x" * 257}, "ValidationException"),
        ({"Name": "no spaces"}, "ValidationException"),
        ({"DryRun": True}, "DryRunOperationException"),
    ],
    ids=["constraints", "asymmetric-op", "no-ops", "ops-not-a-list", "bad-principal",
         "long-principal", "bad-name", "dry-run"],
)  # fmt: skip
def test_grant_requests_the_local_kms_does_not_honour_are_refused_and_create_nothing(
    kms: LocalKMS, extra: dict[str, Any], code: str
) -> None:
    """Constraints are refused, not ignored: ignoring one would make the grant wider."""
    credentials = kms.create_credentials(ALICE)
    arn = kms.create_key(ALICE)
    asked = {"KeyId": arn, "GranteePrincipal": BOB, "Operations": ["Decrypt"], **extra}
    assert error(raw(kms, credentials, "CreateGrant", asked)) == code
    assert boto(kms, credentials).list_grants(KeyId=arn)["Grants"] == []


def test_grants_survive_a_restart(tmp_path: Path, ca: SimulatedCA) -> None:
    state = tmp_path / "state"
    with LocalKMS(state, simulator_root=ca.root) as first:
        alice = first.create_credentials(ALICE)
        bob = first.create_credentials(BOB)
        arn = first.create_key(ALICE)
        blob = boto(first, alice).encrypt(KeyId=arn, Plaintext=b"kept")["CiphertextBlob"]
        grant_id = grant(boto(first, alice), arn, BOB, "Decrypt")
    with LocalKMS(state, simulator_root=ca.root) as second:
        assert boto(second, bob).decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
        boto(second, alice).revoke_grant(KeyId=arn, GrantId=grant_id)
    with LocalKMS(state, simulator_root=ca.root) as third:
        assert code_of(lambda: boto(third, bob).decrypt(CiphertextBlob=blob)) == (
            "AccessDeniedException"
        )


# -- key policy evaluation ----------------------------------------------------------------------


def request(
    action: str = "kms:Decrypt",
    principal: str = ALICE,
    *,
    pcrs: dict[int, bytes] | None = None,
    context: dict[str, str] | None = None,
) -> policy.Request:
    keys = policy.condition_context(principal_arn=principal, encryption_context=context, pcrs=pcrs)
    return policy.Request(action, principal, f"arn:aws:kms:{REGION}:{ACCOUNT}:key/k", keys)


def statement(effect: str, actions: str | list[str] = "kms:*", principal: object = None,
              condition: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    made = {"Effect": effect, "Principal": principal or {"AWS": ALICE}, "Action": actions,
            "Resource": "*"}  # fmt: skip
    return made | ({"Condition": condition} if condition else {})


def decide(*statements: dict[str, Any], asked: policy.Request | None = None) -> policy.Decision:
    document = {"Version": "2012-10-17", "Statement": list(statements)}
    policy.parse(json.dumps(document))  # every policy here is one KMS would store
    return policy.evaluate(document, asked or request())


def test_explicit_deny_wins_over_any_allow() -> None:
    allow = statement("Allow")
    deny = statement("Deny", "kms:Decrypt")
    assert decide(allow).allowed
    for order in ((allow, deny), (deny, allow)):
        decision = decide(*order)
        assert not decision.allowed and decision.explicit_deny
    assert decide(allow, deny, asked=request("kms:Encrypt")).allowed  # the Deny is Decrypt only


def test_nothing_is_allowed_without_a_matching_allow() -> None:
    assert not decide(statement("Allow", principal={"AWS": BOB})).allowed
    assert not decide(statement("Allow", "kms:Encrypt")).allowed
    assert decide(statement("Allow", principal="*")).allowed
    assert decide(statement("Allow", principal={"AWS": [BOB, ALICE]})).allowed


def test_action_wildcards_are_case_insensitive() -> None:
    allow = statement("Allow", ["KMS:generate*", "kms:?ncrypt"])
    assert decide(allow, asked=request("kms:GenerateDataKey")).allowed
    assert decide(allow, asked=request("kms:Encrypt")).allowed
    assert not decide(allow, asked=request("kms:Decrypt")).allowed


def test_null_condition_denies_unattested_calls_only() -> None:
    allow = statement("Allow")
    require_attestation = statement(
        "Deny", "kms:Decrypt", "*", {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
    )
    assert not decide(allow, require_attestation).allowed
    assert decide(allow, require_attestation, asked=request(pcrs={0: PCR0})).allowed


def test_pcr_condition_ignores_case_only_with_ignore_case_operator() -> None:
    upper = PCR0.hex().upper()
    for key in ("kms:RecipientAttestation:PCR0", "kms:RecipientAttestation:ImageSha384"):
        ignoring = statement("Allow", condition={"StringEqualsIgnoreCase": {key: upper}})
        exact = statement("Allow", condition={"StringEquals": {key: upper}})
        assert decide(ignoring, asked=request(pcrs={0: PCR0})).allowed
        assert not decide(exact, asked=request(pcrs={0: PCR0})).allowed
        assert not decide(ignoring).allowed  # no Recipient: the key is absent


@settings(max_examples=200)
@given(register=st.binary(min_size=48, max_size=48), mask=st.integers(0, 2**96 - 1))
def test_ignore_case_pcr_match_holds_for_any_register_and_casing(
    register: bytes, mask: int
) -> None:
    text = "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(register.hex()))
    allow = statement("Allow", condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:PCR0": text}})  # fmt: skip
    assert decide(allow, asked=request(pcrs={0: register})).allowed
    other = bytes(b ^ 0xFF for b in register)
    assert not decide(allow, asked=request(pcrs={0: other})).allowed


def test_a_list_of_values_matches_if_any_value_matches() -> None:
    key = "kms:RecipientAttestation:PCR0"
    either = statement("Allow", condition={"StringEquals": {key: [bytes(48).hex(), PCR0.hex()]}})
    neither = statement("Allow", condition={"StringEquals": {key: [bytes(48).hex(), "ab" * 48]}})
    any_value = statement("Allow", condition={"ForAnyValue:StringEquals": {key: [PCR0.hex()]}})
    assert decide(either, asked=request(pcrs={0: PCR0})).allowed
    assert not decide(neither, asked=request(pcrs={0: PCR0})).allowed
    assert decide(any_value, asked=request(pcrs={0: PCR0})).allowed


def test_conditions_on_encryption_context_principal_and_transport() -> None:
    on_context = statement(
        "Allow", condition={"StringEquals": {"kms:EncryptionContext:Purpose": "list"}}
    )
    assert decide(on_context, asked=request(context={"purpose": "list"})).allowed
    assert not decide(on_context, asked=request(context={"purpose": "other"})).allowed
    assert not decide(on_context).allowed
    not_bob = statement(
        "Allow", principal="*", condition={"StringNotEquals": {"aws:PrincipalArn": BOB}}
    )
    assert decide(not_bob).allowed and not decide(not_bob, asked=request(principal=BOB)).allowed
    tls_only = statement("Deny", principal="*", condition={"Bool": {"aws:SecureTransport": False}})
    assert not decide(statement("Allow"), tls_only).allowed  # the simulator speaks plain HTTP


@pytest.mark.parametrize(
    "condition",
    [
        {"NumericLessThan": {"kms:RecipientAttestation:PCR0": "1"}},
        {"StringEqualsIfExists": {"kms:RecipientAttestation:PCR0": PCR0.hex()}},
        {"StringEquals": {"kms:RecipientAttestation:PCR99": PCR0.hex()}},
        {"StringEquals": {"kms:CallerAccount": ACCOUNT}},
        {"ForAllValues:StringEquals": {"kms:RecipientAttestation:PCR0": PCR0.hex()}},
    ],
    ids=["unknown-operator", "ifexists", "pcr-out-of-range", "unknown-key", "forallvalues"],
)
def test_what_is_not_understood_fails_closed(
    condition: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    asked = request(pcrs={0: PCR0})
    with caplog.at_level(logging.WARNING, logger="noflylist_simulator.policy"):
        assert not decide(statement("Allow", condition=condition), asked=asked).allowed
        denied = decide(statement("Allow"), statement("Deny", condition=condition), asked=asked)
    assert not denied.allowed and denied.explicit_deny
    assert "fail closed" in denied.reason
    assert any("fails closed" in record.getMessage() for record in caplog.records)


def test_parse_refuses_documents_kms_would_not_store() -> None:
    for text in ("[]", "{", json.dumps({"Statement": [{"Effect": "Allow"}]}),
                 json.dumps({"Statement": statement("Allow") | {"Effect": "allow"}}),
                 "x" * (MAX_POLICY_BYTES + 1)):  # fmt: skip
        with pytest.raises(policy.PolicyError):
            policy.parse(text)
    assert policy.parse(json.dumps({"Statement": statement("Allow")}))["Statement"]
    assert MAX_POLICY_BYTES == 32_768  # AWS KMS quotas: "Key policy document size: 32 KB"
