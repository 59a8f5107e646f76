"""enclave.http_client against a real local HTTPS server and Debian's real tinyproxy.

Every test passes ``environ`` explicitly, so proxies or CA bundles set on the developer's
machine cannot change what is tested.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave import http_client
from enclave.http_client import Response, TransportError, proxy_for, request
from enclave.proxy import parse_proxy
from tests.support import tls
from tests.support.tinyproxy import VIA_NAME, Tinyproxy, start_tinyproxy
from tests.support.tinyproxy import tinyproxy as _tinyproxy_fixture  # noqa: F401 (fixture)

FAST = 3.0  # seconds: a failure that should be quick must take less than this


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls.Pki:
    return tls.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> tls.Pki:
    return tls.make_pki(tmp_path_factory.mktemp("other-pki"), ca_name="some other CA")


@pytest.fixture
def https_server(pki: tls.Pki) -> Iterator[tls.EchoServer]:
    with tls.serve(pki.server_context()) as server:
        yield server


@pytest.fixture
def http_server() -> Iterator[tls.EchoServer]:
    with tls.serve(None, host="127.0.0.1") as server:
        yield server


def echo(response: Response) -> dict[str, Any]:
    """What the echo server received: method, path, headers (ordered pairs), base64 body."""
    data: dict[str, Any] = json.loads(response.body)
    return data


def echoed_headers(response: Response) -> dict[str, str]:
    return {k.lower(): v for k, v in echo(response)["headers"]}


# --- through the real proxy -------------------------------------------------------------------


def test_https_with_https_proxy_goes_through_tinyproxy_connect(
    https_server: tls.EchoServer, tinyproxy: Tinyproxy, pki: tls.Pki
) -> None:
    proxy = tinyproxy
    env = {"https_proxy": proxy.url, "AWS_CA_BUNDLE": str(pki.ca_file)}
    response = request("POST", https_server.url("/echo?q=1"), body=b"payload",
                       headers={"X-Test": "yes"}, environ=env)
    assert response.status == 200
    seen = echo(response)
    assert seen["method"] == "POST" and seen["path"] == "/echo?q=1"
    assert base64.b64decode(seen["body"]) == b"payload"
    headers = echoed_headers(response)
    assert headers["x-test"] == "yes" and headers["host"] == f"localhost:{https_server.port}"
    assert f"CONNECT localhost:{https_server.port} HTTP/1.1" in proxy.log()

    proxy.stop()
    with pytest.raises(TransportError) as failure:
        request("GET", https_server.url(), environ=env, connect_timeout=1.0)
    assert failure.value.transient
    assert "proxy 127.0.0.1" in str(failure.value) and "https_proxy" in str(failure.value)


def test_plain_http_with_http_proxy_is_sent_in_absolute_form_through_tinyproxy(
    http_server: tls.EchoServer,
) -> None:
    with start_tinyproxy() as proxy:
        response = request("GET", http_server.url("/latest/meta-data?x=1"),
                           environ={"http_proxy": proxy.url, "https_proxy": "http://127.0.0.1:1"})
        log = proxy.log()
    assert response.status == 200
    assert echo(response)["path"] == "/latest/meta-data?x=1"
    assert VIA_NAME in echoed_headers(response)["via"]  # tinyproxy stamped the request
    assert f"GET http://127.0.0.1:{http_server.port}/latest/meta-data?x=1 HTTP/1.1" in log


def test_proxy_credentials_in_url_are_sent_as_basic_auth_and_not_to_the_origin(
    https_server: tls.EchoServer, pki: tls.Pki
) -> None:
    # tinyproxy's config accepts [-a-z0-9._] only; the URL percent-encodes "." to prove
    # credentials are decoded before use.
    with start_tinyproxy(basic_auth=("enclave", "pass.word-1")) as proxy:
        userinfo = "enclave:pass%2Eword-1"
        env = {"https_proxy": f"http://{userinfo}@127.0.0.1:{proxy.port}",
               "AWS_CA_BUNDLE": str(pki.ca_file)}
        response = request("GET", https_server.url(), environ=env)
        assert response.status == 200
        assert "proxy-authorization" not in echoed_headers(response)

        env["https_proxy"] = proxy.url
        with pytest.raises(TransportError) as failure:
            request("GET", https_server.url(), environ=env)
    assert not failure.value.transient
    assert "407" in str(failure.value) and "user:password@" in str(failure.value)


def test_proxy_refusing_connect_with_403_is_not_transient_and_names_allow_list(
    https_server: tls.EchoServer, pki: tls.Pki
) -> None:
    with start_tinyproxy(connect_ports=(443,)) as proxy:
        env = {"https_proxy": proxy.url, "AWS_CA_BUNDLE": str(pki.ca_file)}
        with pytest.raises(TransportError) as failure:
            request("GET", https_server.url(), environ=env)
    message = str(failure.value)
    assert not failure.value.transient
    assert "403" in message and "egress allow list" in message and "https_proxy" in message


def test_proxy_failing_to_reach_the_host_gives_transient_error(
    tinyproxy: Tinyproxy, pki: tls.Pki
) -> None:
    env = {"https_proxy": tinyproxy.url, "AWS_CA_BUNDLE": str(pki.ca_file)}
    url = f"https://localhost:{tls.closed_port()}/"
    with pytest.raises(TransportError) as failure:
        request("GET", url, environ=env)
    assert failure.value.transient and "500" in str(failure.value)


def test_no_proxy_host_is_reached_directly_not_through_the_proxy(
    https_server: tls.EchoServer, pki: tls.Pki
) -> None:
    # The proxy port is closed: going through it fails, so success proves the bypass.
    env = {"https_proxy": f"http://127.0.0.1:{tls.closed_port()}",
           "AWS_CA_BUNDLE": str(pki.ca_file)}
    with pytest.raises(TransportError, match="proxy"):
        request("GET", https_server.url(), environ=env)
    env["no_proxy"] = "localhost,127.0.0.1"
    assert request("GET", https_server.url(), environ=env).status == 200


def test_certificate_from_unknown_ca_is_refused_through_proxy(
    https_server: tls.EchoServer, tinyproxy: Tinyproxy
) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", https_server.url(), environ={"https_proxy": tinyproxy.url})
    assert not failure.value.transient
    assert "certificate" in str(failure.value) and "AWS_CA_BUNDLE" in str(failure.value)


# --- direct connections, TLS ------------------------------------------------------------------


def test_certificate_from_unknown_ca_is_refused_directly(https_server: tls.EchoServer) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", https_server.url(), environ={})
    message = str(failure.value)
    assert not failure.value.transient
    assert f"localhost:{https_server.port}" in message and "system CAs" in message
    assert "set AWS_CA_BUNDLE" in message


def test_aws_ca_bundle_makes_the_test_ca_trusted(https_server: tls.EchoServer,
                                                 pki: tls.Pki) -> None:
    response = request("GET", https_server.url(), environ={"AWS_CA_BUNDLE": str(pki.ca_file)})
    assert response.status == 200 and echo(response)["method"] == "GET"


def test_aws_ca_bundle_of_another_ca_still_refuses(https_server: tls.EchoServer,
                                                   other_pki: tls.Pki) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", https_server.url(), environ={"AWS_CA_BUNDLE": str(other_pki.ca_file)})
    assert not failure.value.transient and str(other_pki.ca_file) in str(failure.value)


def test_certificate_for_another_host_name_is_refused(pki: tls.Pki) -> None:
    # The certificate names localhost and 127.0.0.1; the server is reached as 127.0.0.2.
    with tls.serve(pki.server_context(), bind="127.0.0.2", host="127.0.0.2") as server:
        with pytest.raises(TransportError) as failure:
            request("GET", server.url(), environ={"AWS_CA_BUNDLE": str(pki.ca_file)})
    assert not failure.value.transient and "127.0.0.2" in str(failure.value)


def test_unreadable_aws_ca_bundle_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TransportError) as failure:
        request("GET", "https://localhost:1/", environ={"AWS_CA_BUNDLE": str(missing)})
    assert not failure.value.transient and "AWS_CA_BUNDLE" in str(failure.value)


def test_https_to_a_plain_http_server_fails_without_retry_advice(
    http_server: tls.EchoServer,
) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", http_server.url().replace("http://", "https://"), environ={})
    assert not failure.value.transient and "TLS" in str(failure.value)


# --- responses --------------------------------------------------------------------------------


def test_error_status_is_returned_not_raised(https_server: tls.EchoServer, pki: tls.Pki) -> None:
    response = request("GET", https_server.url("/status/503"),
                       environ={"AWS_CA_BUNDLE": str(pki.ca_file)})
    assert response.status == 503 and echo(response)["path"] == "/status/503"


def test_header_names_are_lowercased_and_repeats_joined(http_server: tls.EchoServer) -> None:
    response = request("GET", http_server.url("/repeat-header"), environ={})
    assert response.headers["x-repeated"] == "one, two"
    assert response.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in response.headers)


def test_head_request_has_empty_body(http_server: tls.EchoServer) -> None:
    response = request("HEAD", http_server.url(), environ={})
    assert response.status == 200 and response.body == b""
    assert int(response.headers["content-length"]) > 0


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_body_of_exactly_the_limit_is_accepted_and_one_more_byte_refused(
    http_server: tls.EchoServer, chunked: str
) -> None:
    limit = 200_000
    url = http_server.url(f"/huge?bytes={limit}&chunked={chunked}")
    assert request("GET", url, max_response_bytes=limit, environ={}).body == b"y" * limit
    url = http_server.url(f"/huge?bytes={limit + 1}&chunked={chunked}")
    with pytest.raises(TransportError) as failure:
        request("GET", url, max_response_bytes=limit, environ={})
    assert not failure.value.transient and "max_response_bytes" in str(failure.value)


def test_huge_declared_length_is_refused_quickly(https_server: tls.EchoServer,
                                                 pki: tls.Pki) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError) as failure:
        request("GET", https_server.url(f"/huge?bytes={10**12}"),
                environ={"AWS_CA_BUNDLE": str(pki.ca_file)})
    assert not failure.value.transient and time.monotonic() - start < FAST


def test_body_cut_short_of_content_length_is_transient(http_server: tls.EchoServer) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", http_server.url("/short?bytes=1000"), environ={})
    assert failure.value.transient and "short" in str(failure.value)


# --- timeouts and refusals --------------------------------------------------------------------


def test_read_timeout_is_transient_and_quick(https_server: tls.EchoServer, pki: tls.Pki) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError) as failure:
        request("GET", https_server.url("/hang"), read_timeout=0.3,
                environ={"AWS_CA_BUNDLE": str(pki.ca_file)})
    assert failure.value.transient and "timed out" in str(failure.value)
    assert time.monotonic() - start < FAST


def test_trickled_body_is_cut_off_at_the_transfer_deadline(
    http_server: tls.EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_client, "TRANSFER_DEADLINE", 0.3)
    start = time.monotonic()
    with pytest.raises(TransportError) as failure:
        # 200 bytes at one per 0.05 s would take 10 s; every single read is well in time.
        request("GET", http_server.url("/trickle?bytes=200"), read_timeout=1.0, environ={})
    assert failure.value.transient and "took over" in str(failure.value)
    assert time.monotonic() - start < FAST


def test_connection_refused_is_transient_and_quick() -> None:
    start = time.monotonic()
    with pytest.raises(TransportError) as failure:
        request("GET", f"https://localhost:{tls.closed_port()}/", environ={})
    assert failure.value.transient and "refused" in str(failure.value)
    assert time.monotonic() - start < FAST


def test_refused_proxy_is_transient_and_never_shows_its_password() -> None:
    proxy = f"http://user:s3cret-pw@127.0.0.1:{tls.closed_port()}"
    with pytest.raises(TransportError) as failure:
        request("GET", "https://example.com/", environ={"HTTPS_PROXY": proxy})
    assert failure.value.transient and "HTTPS_PROXY" in str(failure.value)
    assert "s3cret" not in str(failure.value)


def test_response_repr_never_shows_the_body() -> None:
    response = Response(200, {}, b'{"SecretAccessKey": "s3cret"}')
    assert "s3cret" not in repr(response)


def test_proxy_repr_never_shows_its_credentials() -> None:
    proxy = parse_proxy("http://user:s3cret-pw@127.0.0.1:3128", "https_proxy")
    assert proxy.authorization is not None
    for text in (repr(proxy), str(proxy)):
        assert proxy.authorization not in text and "s3cret" not in text


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full, so new connections hang in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(16):
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel accepts connections past a full backlog")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_connect_timeout_is_transient_and_quick(full_backlog: int) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError) as failure:
        request("GET", f"http://127.0.0.1:{full_backlog}/", connect_timeout=0.3, environ={})
    assert failure.value.transient and "timed out" in str(failure.value)
    assert time.monotonic() - start < FAST


# --- requests refused before anything is sent -------------------------------------------------


@pytest.mark.parametrize("url", [
    "ftp://example.com/file",
    "file:///etc/passwd",
    "example.com/path",
    "https://user:pw@example.com/",
    "https://example.com:99999/",
    "https://example.com:0/",
    "https://exa mple.com/",
    "https://example.com/\r\nX: y",
    "https://bücher.example/",
    "https://[::1/",
])
def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", url, environ={"https_proxy": "http://127.0.0.1:1"})
    assert not failure.value.transient


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "https://127.0.0.1:1",
                                   "http://127.0.0.1:1/path", "http://127.0.0.1:port"])
def test_unsupported_proxy_settings_are_refused(proxy: str) -> None:
    with pytest.raises(TransportError) as failure:
        request("GET", "https://example.com/", environ={"https_proxy": proxy})
    assert not failure.value.transient and "https_proxy" in str(failure.value)


@pytest.mark.parametrize("headers", [
    {"X-Token": "secret\r\nInjected: 1"},
    {"Bad Name": "v"},
    {"Transfer-Encoding": "chunked"},
    {"Proxy-Authorization": "Basic c2VjcmV0"},
    {"Content-Length": "5"},
    {"x-a": "1", "X-A": "2"},
])
def test_unsafe_request_headers_are_refused_without_echoing_values(
    headers: dict[str, str],
) -> None:
    with pytest.raises(TransportError) as failure:
        request("POST", "http://127.0.0.1:1/", headers=headers, body=b"1", environ={})
    assert not failure.value.transient and "secret" not in str(failure.value)


def test_caller_host_header_replaces_the_generated_one(http_server: tls.EchoServer) -> None:
    response = request("GET", http_server.url(), headers={"host": "signed.example"}, environ={})
    sent = [k for k, _ in echo(response)["headers"] if k.lower() == "host"]
    assert sent == ["host"] and echoed_headers(response)["host"] == "signed.example"


# --- proxy_for rules --------------------------------------------------------------------------

ENCLAVER = {"https_proxy": "http://127.0.0.1:9000", "http_proxy": "http://127.0.0.1:9001",
            "no_proxy": "localhost,127.0.0.1"}


@pytest.mark.parametrize(("url", "expected"), [
    ("https://kms.us-east-1.amazonaws.com/", "http://127.0.0.1:9000"),
    ("http://169.254.169.254/latest/api/token", "http://127.0.0.1:9001"),
    ("https://localhost:8443/", None),
    ("http://127.0.0.1:8080/", None),
    ("https://127.0.0.2/", "http://127.0.0.1:9000"),
    ("https://LOCALHOST./", None),
])
def test_enclaver_settings_proxy_everything_but_loopback(url: str, expected: str | None) -> None:
    assert proxy_for(url, ENCLAVER) == expected


@pytest.mark.parametrize(("no_proxy", "url", "bypassed"), [
    ("*", "https://anything.example/", True),
    ("example.com, *", "https://anything.example/", True),
    ("example.com", "https://example.com/", True),
    ("example.com", "https://api.example.com/", True),
    ("example.com", "https://notexample.com/", False),
    (".example.com", "https://example.com/", True),
    (".example.com", "https://a.b.example.com/", True),
    ("*.example.com", "https://a.example.com/", True),
    ("EXAMPLE.com", "https://Api.Example.COM/", True),
    (" a.test ,, example.com ", "https://example.com/", True),
    ("example.com:8443", "https://example.com:8443/", True),
    ("example.com:8443", "https://example.com/", False),
    ("example.com:443", "https://example.com/", True),
    ("10.0.0.1", "http://10.0.0.1/", True),
    ("10.0.0.1", "http://10.0.0.10/", False),
    ("10.0.0.0/8", "http://10.200.3.4/", True),
    ("10.0.0.0/8", "http://11.0.0.1/", False),
    ("10.0.0.0/8", "http://ten.example/", False),
    ("::1", "http://[::1]:8080/", True),
    ("[::1]", "http://[::1]:8080/", True),
    ("[::1]:8080", "http://[::1]:8080/", True),
    ("[::1]:8081", "http://[::1]:8080/", False),
    ("fd00::/8", "http://[fd12::5]/", True),
    ("1.2.3.4", "http://4/", False),
    ("example.com:notaport", "https://example.com/", False),
    ("[::1", "http://[::1]/", False),
    ("", "https://example.com/", False),
    (".", "https://example.com/", False),
])
def test_no_proxy_rules(no_proxy: str, url: str, bypassed: bool) -> None:
    env = {"https_proxy": "http://proxy:3128", "http_proxy": "http://proxy:3128",
           "no_proxy": no_proxy}
    assert (proxy_for(url, env) is None) is bypassed


def test_proxy_variables_lowercase_first_then_uppercase_and_empty_means_unset() -> None:
    url = "https://example.com/"
    assert proxy_for(url, {"HTTPS_PROXY": "http://upper:1"}) == "http://upper:1"
    assert proxy_for(url, {"https_proxy": "http://lower:1",
                           "HTTPS_PROXY": "http://upper:1"}) == "http://lower:1"
    assert proxy_for(url, {"https_proxy": "", "HTTPS_PROXY": "http://upper:1"}) == "http://upper:1"
    assert proxy_for(url, {"https_proxy": "  "}) is None
    assert proxy_for(url, {"http_proxy": "http://plain:1"}) is None  # https uses https_proxy
    assert proxy_for("http://example.com/", {"https_proxy": "http://tls:1"}) is None
    assert proxy_for(url, {"https_proxy": "http://p:1", "NO_PROXY": "example.com"}) is None


_LABEL = st.sampled_from(["a", "b", "ab", "ba", "aws", "kms"])
_HOST = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_ENTRY = st.tuples(st.sampled_from(["", "."]), _HOST, st.sampled_from(["", " "])).map("".join)


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(host=_HOST, entries=st.lists(_ENTRY, max_size=4), upper=st.booleans())
def test_domain_rules_agree_with_urllib(host: str, entries: list[str], upper: bool) -> None:
    """CPython's urllib is an independent implementation of the same domain-suffix rules."""
    no_proxy = ",".join(entries)
    shown = host.upper() if upper else host
    ours = proxy_for(f"https://{shown}/", {"https_proxy": "http://p:1", "no_proxy": no_proxy})
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    theirs = bypass(shown, {"no": no_proxy})
    assert (ours is None) == bool(theirs)
