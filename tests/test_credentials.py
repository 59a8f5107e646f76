"""Where AWS credentials and region come from: environment first, then IMDSv2.

The fake IMDS (tests/support/imds.py) is first shown to be faithful by pointing botocore's
own metadata client at it, with IMDSv1 fallback turned off. Our provider is then tested
against the same server: what it fetches, when it refreshes, how it behaves under
concurrency, and what it says when something is wrong.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher
from hypothesis import event, given, settings
from hypothesis import strategies as st

from enclave import credentials
from enclave.credentials import (
    REFRESH_AHEAD,
    CredentialProvider,
    CredentialsError,
    region_from_environment,
    region_from_imds,
    resolve_region,
)
from enclave.imds import ImdsError, parse_credentials_document
from tests.support.imds import (
    REGION_PATH,
    ROLE_LIST_PATH,
    TOKEN_PATH,
    ZONE_PATH,
    FakeImds,
    running_imds,
)
from tests.support.tinyproxy import VIA_NAME, start_tinyproxy

T0 = datetime(2031, 5, 17, 12, 0, 0, tzinfo=UTC)
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY", "no_proxy", "NO_PROXY")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(autouse=True)
def _fast_and_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short IMDS timeouts so failure cases finish fast; no proxy from the test runner."""
    monkeypatch.setattr(credentials, "IMDS_CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(credentials, "IMDS_READ_TIMEOUT", 0.3)
    monkeypatch.setattr(credentials, "IMDS_RETRY_PAUSE", 0.01)
    for name in PROXY_VARIABLES:  # botocore reads os.environ for proxies
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with running_imds() as server:
        server.expiration = T0 + timedelta(hours=1)
        yield server


def imds_env(imds: FakeImds) -> dict[str, str]:
    return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}


def secrets_of(imds: FakeImds) -> list[str]:
    return [s for i in imds.issued for s in (i.secret_access_key, i.token)]


def botocore_fetcher(imds: FakeImds) -> InstanceMetadataFetcher:
    config = {"ec2_metadata_service_endpoint": imds.url, "ec2_metadata_v1_disabled": True}
    return InstanceMetadataFetcher(timeout=1, num_attempts=1, config=config, env={})


# -- the fake IMDS is faithful: botocore accepts it -------------------------------------


def test_botocore_fetches_the_fake_imds_role_credentials_over_imdsv2(imds: FakeImds) -> None:
    got = botocore_fetcher(imds).retrieve_iam_role_credentials()

    issued = imds.issued[0]
    assert got["role_name"] == imds.role
    assert (got["access_key"], got["secret_key"], got["token"]) == (
        issued.access_key_id, issued.secret_access_key, issued.token)
    assert got["expiry_time"] == issued.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
    # botocore took a token first and presented it on both GETs (v1 fallback is off).
    assert [(s.method, s.path) for s in imds.seen] == [
        ("PUT", TOKEN_PATH), ("GET", ROLE_LIST_PATH), ("GET", ROLE_LIST_PATH + imds.role)]
    assert all(s.token for s in imds.seen[1:])


def test_botocore_credential_provider_loads_credentials_from_the_fake_imds(
    imds: FakeImds,
) -> None:
    imds.expiration = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=6)
    loaded = InstanceMetadataProvider(botocore_fetcher(imds)).load()

    assert loaded is not None
    frozen = loaded.get_frozen_credentials()
    issued = imds.issued[-1]
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        issued.access_key_id, issued.secret_access_key, issued.token)


@pytest.mark.parametrize(
    ("zone", "region"),
    [("eu-west-1b", "eu-west-1"), ("us-gov-west-1a", "us-gov-west-1"),
     ("ap-southeast-2c", "ap-southeast-2")],
)
def test_botocore_and_our_resolver_read_the_same_region_from_the_fake_imds(
    imds: FakeImds, zone: str, region: str
) -> None:
    imds.availability_zone, imds.region = zone, region
    config = {"ec2_metadata_service_endpoint": imds.url, "ec2_metadata_v1_disabled": True}
    fetcher = InstanceMetadataRegionFetcher(timeout=1, num_attempts=1, config=config, env={})

    botocore_region = fetcher.retrieve_region()

    assert botocore_region == region
    assert resolve_region(imds_env(imds)) == botocore_region
    assert imds.count("GET", ZONE_PATH + "/") == 1  # botocore's way
    assert imds.count("GET", REGION_PATH) == 1  # ours


@pytest.mark.parametrize("knob", ["no role", "error code", "token refused"])
def test_botocore_also_finds_no_credentials_when_the_fake_imds_reports_a_failure(
    imds: FakeImds, knob: str
) -> None:
    if knob == "no role":
        imds.role = None
    elif knob == "error code":
        imds.code = "AssumeRoleUnauthorizedAccess"
    else:
        imds.refuse_tokens = True

    assert botocore_fetcher(imds).retrieve_iam_role_credentials() == {}
    assert InstanceMetadataProvider(botocore_fetcher(imds)).load() is None


# -- environment ------------------------------------------------------------------------


def test_environment_credentials_win_over_imds_and_imds_is_not_contacted(
    imds: FakeImds,
) -> None:
    env = imds_env(imds) | {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLE",
    }
    provider = CredentialProvider(env)

    got = provider.get()

    assert provider.source == "environment"
    assert (got.access_key_id, got.secret_access_key, got.session_token, got.expiration) == (
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLE",
        None)
    assert imds.seen == []


def test_environment_keys_without_session_token_are_long_term_keys() -> None:
    got = CredentialProvider({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                              "AWS_SECRET_ACCESS_KEY": "secret"}).get()
    assert got.session_token is None
    assert got.expiration is None


@pytest.mark.parametrize("present", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_one_of_the_key_pair_alone_is_an_error_naming_both_variables(present: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        CredentialProvider({present: "do-not-echo-me"})
    message = str(caught.value)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "do-not-echo-me" not in message


def test_session_token_without_keys_is_an_error() -> None:
    with pytest.raises(CredentialsError, match="AWS_SESSION_TOKEN is set but"):
        CredentialProvider({"AWS_SESSION_TOKEN": "token"})


def test_environment_key_with_a_line_break_is_refused_without_echoing_it() -> None:
    with pytest.raises(CredentialsError, match="AWS_SECRET_ACCESS_KEY contains") as caught:
        CredentialProvider({"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "zq7k\nx9"})
    assert "zq7k" not in str(caught.value)


def test_metadata_disabled_without_environment_keys_fails_at_construction() -> None:
    with pytest.raises(CredentialsError, match="AWS_EC2_METADATA_DISABLED=true"):
        CredentialProvider({"AWS_EC2_METADATA_DISABLED": "TRUE"})


@pytest.mark.parametrize(
    "endpoint",
    ["https://169.254.169.254", "169.254.169.254", "http://169.254.169.254/latest",
     "http://user@169.254.169.254", "http://169.254.169.254:99999", "http://"],
)
def test_malformed_imds_endpoint_is_an_error_naming_the_variable(endpoint: str) -> None:
    with pytest.raises(CredentialsError, match="AWS_EC2_METADATA_SERVICE_ENDPOINT must be"):
        CredentialProvider({"AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint})


# -- IMDS credentials -------------------------------------------------------------------


def test_imds_credentials_are_what_imds_issued_with_aware_expiration(imds: FakeImds) -> None:
    provider = CredentialProvider(imds_env(imds), clock=FakeClock(T0))

    got = provider.get()

    issued = imds.issued[0]
    assert provider.source == "imds"
    assert (got.access_key_id, got.secret_access_key, got.session_token) == (
        issued.access_key_id, issued.secret_access_key, issued.token)
    assert got.expiration == T0 + timedelta(hours=1)
    assert got.expiration is not None and got.expiration.utcoffset() == timedelta(0)
    # Our token lifetime is inside what IMDS accepts (the server answers 400 otherwise).
    assert imds.count("PUT", TOKEN_PATH) == 1


def test_imds_is_reached_with_a_trailing_slash_in_the_endpoint(imds: FakeImds) -> None:
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url + "/"}
    assert CredentialProvider(env, clock=FakeClock(T0)).get().access_key_id == (
        imds.issued[0].access_key_id)


def test_credentials_are_not_fetched_again_while_far_from_expiry(imds: FakeImds) -> None:
    clock = FakeClock(T0)
    provider = CredentialProvider(imds_env(imds), clock=clock)
    imds.rotate = True

    first = provider.get()
    clock.advance(timedelta(hours=1) - REFRESH_AHEAD)  # exactly REFRESH_AHEAD left
    second = provider.get()

    assert second is first
    assert imds.credential_fetches() == 1


def test_credentials_are_refreshed_once_less_than_refresh_ahead_remains(imds: FakeImds) -> None:
    clock = FakeClock(T0)
    provider = CredentialProvider(imds_env(imds), clock=clock)
    imds.rotate = True
    first = provider.get()

    imds.expiration = T0 + timedelta(hours=2)
    clock.advance(timedelta(hours=1) - REFRESH_AHEAD + timedelta(seconds=1))
    refreshed = provider.get()
    clock.advance(timedelta(minutes=1))
    again = provider.get()

    assert refreshed.access_key_id == imds.issued[1].access_key_id != first.access_key_id
    assert refreshed.expiration == T0 + timedelta(hours=2)
    assert again is refreshed
    assert imds.credential_fetches() == 2
    assert REFRESH_AHEAD >= timedelta(minutes=2)  # "several minutes", as promised


def test_many_threads_during_a_refresh_cause_exactly_one_fetch(imds: FakeImds) -> None:
    clock = FakeClock(T0)
    provider = CredentialProvider(imds_env(imds), clock=clock)
    imds.rotate = True
    provider.get()
    imds.expiration = T0 + timedelta(hours=2)
    clock.advance(timedelta(minutes=58))
    imds.delay = 0.2  # keep the refresh in flight while the others arrive
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    results: list[str] = []

    def call() -> None:
        barrier.wait(timeout=5)
        results.append(provider.get().access_key_id)

    threads = [threading.Thread(target=call) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)

    assert results == [imds.issued[1].access_key_id] * threads_count
    assert imds.credential_fetches() == 2
    assert imds.count("PUT", TOKEN_PATH) == 2


def test_many_threads_at_start_up_cause_exactly_one_fetch(imds: FakeImds) -> None:
    provider = CredentialProvider(imds_env(imds), clock=FakeClock(T0))
    imds.delay = 0.2
    threads = [threading.Thread(target=provider.get) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert imds.credential_fetches() == 1


def test_failed_refresh_keeps_valid_credentials_warns_then_raises_once_expired(
    imds: FakeImds, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    provider = CredentialProvider(imds_env(imds), clock=clock)
    first = provider.get()
    imds.refuse_tokens = True
    clock.advance(timedelta(minutes=57))

    with caplog.at_level(logging.WARNING, logger="enclave.credentials"):
        kept = provider.get()
    assert kept is first
    assert "keeping the current ones" in caplog.text
    assert not any(secret in caplog.text for secret in secrets_of(imds))
    puts_after_failure = imds.count("PUT", TOKEN_PATH)

    clock.advance(timedelta(seconds=10))  # inside REFRESH_RETRY_INTERVAL: IMDS is left alone
    assert provider.get() is first
    assert imds.count("PUT", TOKEN_PATH) == puts_after_failure

    clock.advance(timedelta(minutes=3))  # now past expiry minus the margin
    with pytest.raises(CredentialsError, match=r"expire at .* could not be refreshed"):
        provider.get()


def test_refresh_after_a_failure_succeeds_once_imds_recovers(imds: FakeImds) -> None:
    clock = FakeClock(T0)
    provider = CredentialProvider(imds_env(imds), clock=clock)
    imds.rotate = True
    first = provider.get()
    imds.refuse_tokens = True
    clock.advance(timedelta(minutes=56))
    assert provider.get() is first

    imds.refuse_tokens = False
    imds.expiration = T0 + timedelta(hours=2)
    clock.advance(credentials.REFRESH_RETRY_INTERVAL)
    recovered = provider.get()

    assert recovered.access_key_id == imds.issued[-1].access_key_id != first.access_key_id
    assert recovered.expiration == T0 + timedelta(hours=2)


def test_imds_still_serving_old_keys_is_asked_again_only_after_the_retry_interval(
    imds: FakeImds,
) -> None:
    clock = FakeClock(T0)
    provider = CredentialProvider(imds_env(imds), clock=clock)
    clock.advance(timedelta(minutes=56))  # the keys IMDS serves are already due for refresh

    provider.get()
    provider.get()
    clock.advance(credentials.REFRESH_RETRY_INTERVAL)
    provider.get()

    assert imds.credential_fetches() == 2


def test_transient_imds_errors_are_retried(imds: FakeImds) -> None:
    imds.fail_next = credentials.IMDS_ATTEMPTS - 1
    got = CredentialProvider(imds_env(imds), clock=FakeClock(T0)).get()
    assert got.access_key_id == imds.issued[0].access_key_id


# -- what each failure says -------------------------------------------------------------


def fetch_error(imds: FakeImds, clock: FakeClock | None = None) -> str:
    provider = CredentialProvider(imds_env(imds), clock=clock or FakeClock(T0))
    with pytest.raises(CredentialsError) as caught:
        provider.get()
    message = str(caught.value)
    assert not any(secret in message for secret in secrets_of(imds))
    return message


def test_imds_down_names_the_endpoint_and_the_hop_limit_fix(imds: FakeImds) -> None:
    imds.stop()
    message = fetch_error(imds)
    assert f"could not reach the instance metadata service at {imds.url}" in message
    assert "--http-put-response-hop-limit 2" in message


@pytest.mark.slow
def test_imds_that_never_answers_the_token_request_times_out_with_the_hop_limit_fix(
    imds: FakeImds,
) -> None:
    imds.stall = True
    started = time.monotonic()
    message = fetch_error(imds)
    elapsed = time.monotonic() - started
    assert "a session token" in message and "timed out" in message
    assert "--http-put-response-hop-limit 2" in message
    bound = credentials.IMDS_ATTEMPTS * (credentials.IMDS_READ_TIMEOUT + 0.5)
    assert elapsed < bound


def test_slow_imds_within_the_timeout_still_works(imds: FakeImds) -> None:
    imds.delay = credentials.IMDS_READ_TIMEOUT / 3
    got = CredentialProvider(imds_env(imds), clock=FakeClock(T0)).get()
    assert got.access_key_id == imds.issued[0].access_key_id


def test_no_role_attached_says_so_and_how_to_attach_one(imds: FakeImds) -> None:
    imds.role = None
    message = fetch_error(imds)
    assert "no IAM role is attached to this instance" in message
    assert "associate-iam-instance-profile" in message


def test_error_code_in_the_credentials_document_is_reported_with_the_trust_policy_fix(
    imds: FakeImds,
) -> None:
    imds.code = "AssumeRoleUnauthorizedAccess"
    message = fetch_error(imds)
    assert "Code AssumeRoleUnauthorizedAccess" in message
    assert "trust policy" in message and "noflylist-enclave" in message


def test_refused_token_says_401_and_names_the_header_a_proxy_may_drop(imds: FakeImds) -> None:
    imds.refuse_tokens = True
    message = fetch_error(imds)
    assert "HTTP 401" in message and "X-aws-ec2-metadata-token" in message


def test_imds_failing_every_attempt_reports_the_status(imds: FakeImds) -> None:
    imds.fail_next = 100
    message = fetch_error(imds)
    assert "HTTP 503" in message
    assert imds.count("GET", ROLE_LIST_PATH) == credentials.IMDS_ATTEMPTS


VALID_DOCUMENT = {
    "Code": "Success", "LastUpdated": "2031-05-17T11:00:00Z", "Type": "AWS-HMAC",
    "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "topsecretvalue",
    "Token": "sessiontokenvalue", "Expiration": "2031-05-17T13:00:00Z",
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 10_000 + b"]" * 10_000, "not valid JSON"),
        (b'["Code", "Success"]', "not a JSON object"),
        (b'{"Code": "Success", "Code": "Success"}', "not valid JSON"),
        *[
            (json.dumps({k: v for k, v in VALID_DOCUMENT.items() if k != field}).encode(),
             f"lack a usable {field} field")
            for field in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")
        ],
        (json.dumps(VALID_DOCUMENT | {"Token": ""}).encode(), "lack a usable Token field"),
        (json.dumps(VALID_DOCUMENT | {"SecretAccessKey": 5}).encode(),
         "lack a usable SecretAccessKey field"),
        (json.dumps(VALID_DOCUMENT | {"Token": "topsecret\r\nX-Evil: 1"}).encode(),
         "lack a usable Token field"),
        (json.dumps(VALID_DOCUMENT | {"Expiration": "tomorrow"}).encode(), "Expiration"),
        (json.dumps(VALID_DOCUMENT | {"Code": None}).encode(), "Code ?"),
    ],
)
def test_malformed_credentials_document_is_a_clear_error_without_secrets(
    imds: FakeImds, body: bytes, expected: str
) -> None:
    imds.credentials_body = body
    message = fetch_error(imds)
    assert expected in message
    assert "topsecret" not in message and "sessiontoken" not in message


_VALID_BODY = json.dumps(VALID_DOCUMENT).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nested more than"),
        (b'{"Code": ' + b"[" * 300_000, "more than the 65536 allowed"),
        (_VALID_BODY[:-1] + b', "N": ' + b"9" * 5000 + b"}", "more than 32 characters"),
        (_VALID_BODY[:-1] + b', "N": NaN}', "NaN is not JSON"),
        (_VALID_BODY[:-1] + b', "Token": "topsecret2"}', "repeated key"),
        (_VALID_BODY + b"topsecret", "Extra data"),
        (_VALID_BODY + b"\xff", "not UTF-8"),
        (_VALID_BODY.decode().encode("utf-16"), "not UTF-8"),
        (b"\xef\xbb\xbf" + _VALID_BODY, "byte-order mark"),
        (_VALID_BODY[: len(_VALID_BODY) // 2], "not valid JSON"),
        (json.dumps(VALID_DOCUMENT | {"Token": "topsecret\ud800"}).encode(), "usable Token"),
    ],
    ids=["deep", "larger than IMDS answers", "5000 digits", "NaN", "repeated key",
         "garbage tail", "tail not UTF-8", "UTF-16", "byte-order mark", "truncated",
         "lone surrogate"],
)  # fmt: skip
def test_hostile_credentials_documents_raise_imds_error_naming_the_cause(
    body: bytes, expected: str
) -> None:
    with pytest.raises(ImdsError) as caught:
        parse_credentials_document(body, "role")
    message = str(caught.value)
    assert expected in message
    assert "topsecret" not in message and "sessiontoken" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_every_truncation_of_a_credentials_document_raises_imds_error() -> None:
    assert parse_credentials_document(_VALID_BODY, "role").access_key_id == "ASIAEXAMPLE"
    for end in range(len(_VALID_BODY)):
        with pytest.raises(ImdsError) as caught:
            parse_credentials_document(_VALID_BODY[:end], "role")
        assert "topsecret" not in str(caught.value)


def test_an_unforeseen_failure_reading_credentials_is_an_imds_error_naming_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        def fullmatch(self, text: str) -> None:
            raise TypeError(text)  # a foreign message quoting a secret

    monkeypatch.setattr("enclave.imds.VISIBLE_ASCII", Broken())
    with pytest.raises(ImdsError, match=r"could not be read \(TypeError\)") as caught:
        parse_credentials_document(_VALID_BODY, "role")
    assert "topsecret" not in str(caught.value) and "ASIA" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_credentials_already_expired_by_our_clock_point_at_the_clock(imds: FakeImds) -> None:
    message = fetch_error(imds, FakeClock(T0 + timedelta(hours=2)))
    assert "check the clock" in message


def test_naive_clock_is_refused(imds: FakeImds) -> None:
    provider = CredentialProvider(imds_env(imds), clock=lambda: datetime(2031, 1, 1))
    with pytest.raises(CredentialsError, match="naive"):
        provider.get()


# -- region -----------------------------------------------------------------------------


def test_region_from_aws_region_wins_over_default_region_and_imds(imds: FakeImds) -> None:
    env = imds_env(imds) | {"AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "eu-north-1"}
    assert resolve_region(env) == "us-east-2"
    assert imds.seen == []


def test_region_from_aws_default_region_when_aws_region_is_unset_or_empty() -> None:
    assert resolve_region({"AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-north-1"}) == (
        "eu-north-1")


def test_region_from_imds_placement(imds: FakeImds) -> None:
    imds.region = "il-central-1"
    assert resolve_region(imds_env(imds)) == "il-central-1"


@pytest.mark.parametrize("value", ["EU-WEST-1", "eu-west-1.evil.example", "eu west 1", "1"])
def test_region_that_is_not_a_region_name_is_refused_naming_its_source(value: str) -> None:
    with pytest.raises(CredentialsError, match=r"AWS_REGION is .* not an AWS region name"):
        resolve_region({"AWS_REGION": value})


def test_region_from_imds_that_is_not_a_region_name_is_refused(imds: FakeImds) -> None:
    imds.region = "<html>"
    with pytest.raises(CredentialsError, match="IMDS placement/region"):
        resolve_region(imds_env(imds))


def test_region_unavailable_from_imds_says_how_to_set_it(imds: FakeImds) -> None:
    imds.stop()
    with pytest.raises(CredentialsError, match="AWS_REGION"):
        resolve_region(imds_env(imds))


def test_region_with_metadata_disabled_asks_for_aws_region() -> None:
    with pytest.raises(CredentialsError, match="set AWS_REGION"):
        resolve_region({"AWS_EC2_METADATA_DISABLED": "true"})


def test_region_from_environment_asks_nobody_and_leaves_an_unset_region_to_imds(
    imds: FakeImds,
) -> None:
    """What ``serve`` checks at start: without AWS_REGION the answer is "ask IMDS later",
    not a request to an IMDS that may not be reachable yet."""
    assert region_from_environment(imds_env(imds)) is None
    assert region_from_environment(imds_env(imds) | {"AWS_REGION": "eu-north-1"}) == (
        "eu-north-1")
    assert imds.seen == []


@pytest.mark.parametrize(
    "env, words",
    [({"AWS_REGION": "EU-WEST-1"}, "AWS_REGION is 'EU-WEST-1'"),
     ({"AWS_EC2_METADATA_DISABLED": "true"}, "set AWS_REGION"),
     ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://169.254.169.254/latest"},
      "AWS_EC2_METADATA_SERVICE_ENDPOINT must be an http:// URL with only a host")],
)  # fmt: skip
def test_region_from_environment_refuses_what_no_retry_can_fix_naming_the_variable(
    env: dict[str, str], words: str
) -> None:
    with pytest.raises(CredentialsError) as raised:
        region_from_environment(env)
    assert words in str(raised.value)


@pytest.mark.parametrize("fault", ["down", "refusing-tokens", "not-a-region"])
def test_region_from_imds_says_no_region_yet_why_and_how_to_set_it(
    imds: FakeImds, fault: str
) -> None:
    env = imds_env(imds)
    if fault == "down":
        imds.stop()
    elif fault == "refusing-tokens":
        imds.token_status = 403
    else:
        imds.region = "<html>"
    with pytest.raises(CredentialsError) as raised:
        region_from_imds(env)
    message = str(raised.value)
    assert message.startswith("no AWS region yet: AWS_REGION is unset, and asking the "
                              "instance metadata service failed: ")  # fmt: skip
    assert {"down": "could not reach the instance metadata service",
            "refusing-tokens": "HTTP 403",
            "not-a-region": "IMDS placement/region is '<html>'"}[fault] in message  # fmt: skip


# -- generated inputs -------------------------------------------------------------------

REGION_LIKE = st.builds(
    "{}-{}-{}".format,
    st.sampled_from(["eu", "us", "ap", "il", "cn"]),
    st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
    st.integers(0, 120),
)


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.text(max_size=40), REGION_LIKE))
def test_region_from_environment_is_returned_verbatim_or_refused(value: str) -> None:
    try:
        got = resolve_region({"AWS_REGION": value, "AWS_EC2_METADATA_DISABLED": "true"})
    except CredentialsError:
        return
    assert got == value
    # It becomes part of a host name: nothing that could change which host that is.
    assert got.isascii() and got.islower()
    assert not any(c in got for c in "./:@ \t\r\n")


FIELD_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    st.just("2031-05-17T13:00:00Z"),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(st.sampled_from(sorted(VALID_DOCUMENT)), FIELD_VALUES, max_size=4).map(
            lambda changes: json.dumps(VALID_DOCUMENT | changes).encode()
        ),
    )
)
def test_credentials_document_parser_returns_credentials_or_raises_credentials_error(
    body: bytes,
) -> None:
    try:
        with credentials._imds_failures_as_credentials_errors():  # as _fetch_imds_credentials does
            got = parse_credentials_document(body, "role")
    except CredentialsError as exc:
        assert "topsecretvalue" not in str(exc)
        event("refused")
        return
    event("parsed")
    document = json.loads(body)
    assert document["Code"] == "Success"
    assert (got.access_key_id, got.secret_access_key, got.session_token) == (
        document["AccessKeyId"], document["SecretAccessKey"], document["Token"])
    assert got.expiration is not None and got.expiration.tzinfo is UTC


# -- through a forward proxy, as inside an enclave --------------------------------------


def test_imds_client_repr_never_shows_proxy_credentials() -> None:
    proxy_env = {"https_proxy": "http://user:s3cret-pw@127.0.0.1:3128"}
    client = credentials._imds_client(credentials.DEFAULT_IMDS_ENDPOINT, proxy_env)
    assert "s3cret" not in repr(client)


def test_imds_is_reached_through_a_real_forward_proxy_as_inside_an_enclave(
    imds: FakeImds,
) -> None:
    with start_tinyproxy() as proxy:
        env = imds_env(imds) | {"http_proxy": proxy.url, "no_proxy": "kms.example"}
        got = CredentialProvider(env, clock=FakeClock(T0)).get()
        region = resolve_region(env)

    assert got.access_key_id == imds.issued[0].access_key_id
    assert region == imds.region
    # Every request, token PUT included, went through tinyproxy, which names itself in Via.
    assert len(imds.seen) == 5
    assert all(s.via is not None and VIA_NAME in s.via for s in imds.seen)


def test_fake_imds_refuses_a_token_to_requests_carrying_x_forwarded_for(
    imds: FakeImds,
) -> None:
    # As EC2 documents for IMDSv2: a token PUT that a proxy marked as forwarded gets no token.
    host, port = imds.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.5"}
    conn.request("PUT", TOKEN_PATH, headers=headers)
    status = conn.getresponse().status
    conn.close()
    assert status == 403


def test_token_refused_with_403_names_disabled_metadata_and_x_forwarded_for(
    imds: FakeImds,
) -> None:
    imds.token_status = 403
    message = fetch_error(imds)
    assert "HTTP 403" in message and "X-Forwarded-For" in message
    assert "--http-endpoint enabled" in message


@pytest.mark.parametrize("status", [404, 405])
def test_endpoint_without_imdsv2_token_support_is_named(imds: FakeImds, status: int) -> None:
    imds.token_status = status
    message = fetch_error(imds)
    assert f"HTTP {status}" in message and "only IMDSv2 is used" in message
