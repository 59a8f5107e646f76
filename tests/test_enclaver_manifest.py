"""enclaver.yaml lets the service reach exactly what it contacts, and nothing that bypasses it.

The hosts come from the service's own code (:func:`enclave.kms.kms_endpoint`,
:func:`enclave.s3.object_url`, :data:`enclave.credentials.DEFAULT_IMDS_ENDPOINT`), so a change
in how it addresses AWS shows up here. The egress check follows Enclaver's rules as its source
states them (``enclaver/src/policy/domain_filter.rs`` and ``policy/mod.rs``): a pattern and a
host are compared label by label from the right, case-insensitively; ``*`` matches one label,
``**`` one or more; an entry that parses as an IP address or CIDR range matches addresses only.
Enclaver's own test cases for that matcher are checked first, so the matcher here is theirs.

PyYAML comes with moto[server] (the ``dev`` extra). Enclaver reads the manifest with serde and
``deny_unknown_fields`` on every struct, so an unknown key anywhere would make ``enclaver
build`` fail; the schema below is its current manifest.rs (enclaver-io/enclaver, main, which
has ``sources.odyn`` and ``sources.sleeve``: the older ``supervisor`` and ``wrapper`` are
refused there).
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave.credentials import DEFAULT_IMDS_ENDPOINT
from enclave.kms import key_region, kms_endpoint
from enclave.s3 import object_url, parse_s3_url
from noflylist.config import DEFAULT_PORT

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "enclaver.yaml"
DOCKERFILE = ROOT / "Dockerfile"

#: The deployment the committed manifest is written for (docs/deploy.md's example, and the
#: build argument .ci/image/build-twice.sh builds with).
ENVELOPE = "s3://noflylist-example-lists/envelope.json"
KEY_ID = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
#: Regions to try: the pattern must not depend on which one the instance is in.
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1")

#: Enclaver's manifest schema (manifest.rs): each struct's fields; every one denies others.
_SCHEMA = {
    "": {
        "version", "name", "target", "sources", "signature",
        "ingress", "egress", "defaults", "kms_proxy", "api", "spire",
    },
    "sources": {"app", "odyn", "sleeve"},
    "signature": {"certificate", "key"},
    "ingress[]": {"listen_port", "tls"},
    "ingress[].tls": {"key_file", "cert_file"},
    "egress": {"proxy_port", "allow", "deny"},
    "defaults": {"cpu_count", "memory_mb"},
    "kms_proxy": {"listen_port", "endpoints"},
    "api": {"listen_port"},
    "spire": {"server_addr", "ca_cert", "trust_domain", "svid_dir", "workload_api_addr"},
}
#: An image reference pinned by digest, as ``docker pull NAME@sha256:HEX`` takes it.
_BY_DIGEST = re.compile(r"[a-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}")


# -- Enclaver's egress rules ----------------------------------------------------------------


def _domain_matches(pattern: str, host: str) -> bool:
    """One domain pattern against one host name, as Enclaver's DomainFilter decides."""
    wanted = [label.lower() for label in reversed(pattern.split("."))]
    labels = [label.lower() for label in reversed(host.split("."))]
    for position, part in enumerate(wanted):
        if position >= len(labels):
            return False
        if part == "**":
            return True
        if part != "*" and part != labels[position]:
            return False
    return len(labels) == len(wanted)


def _ip_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def egress_allows(allow: list[str], deny: list[str], host: str) -> bool:
    """Enclaver's EgressPolicy.is_host_allowed: IP entries for addresses, patterns for names;
    a deny entry wins over an allow entry."""
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None

    def matches(entries: list[str]) -> bool:
        for entry in entries:
            network = _ip_entry(entry)
            if address is not None and network is not None and address in network:
                return True
            if address is None and network is None and _domain_matches(entry, host):
                return True
        return False

    return matches(allow) and not matches(deny)


# Enclaver's own cases for its matcher (domain_filter.rs, test_pattern_matching).
_ENCLAVER_CASES = [
    ("example.com", ["example.com", "Example.COM"],
     ["example.net", ".example.com", "foo.com", "", "abc.example.com", "example."]),
    ("*.com", ["example.com", "cnn.CoM"],
     ["example.net", "", "news.ycombinator.com", "beta.client1.saas.com", "example."]),
    ("foo.*.com", ["foo.example.com"],
     ["example.net", "", "example.", "foo.bar.example.com", ".com"]),
    ("**.amazonaws.com", ["kms.us-east-1.amazonaws.com", "s3.amazonaws.com"],
     ["amazonaws.com", "", "example.com"]),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "positives", "negatives"), _ENCLAVER_CASES)
def test_the_egress_matcher_agrees_with_enclavers_own_test_cases(
    pattern: str, positives: list[str], negatives: list[str]
) -> None:
    for host in positives:
        assert egress_allows([pattern], [], host), (pattern, host)
    for host in negatives:
        assert not egress_allows([pattern], [], host), (pattern, host)


def test_ip_entries_match_addresses_and_never_names() -> None:
    assert egress_allows(["169.254.169.254"], [], "169.254.169.254")
    assert egress_allows(["10.0.0.0/8"], [], "10.1.2.3")
    assert not egress_allows(["169.254.169.254"], [], "169.254.169.253")
    assert not egress_allows(["*.*.*.*"], [], "169.254.169.254")  # a pattern is not an IP rule


def test_a_deny_entry_wins_over_an_allow_entry() -> None:
    assert egress_allows(["**.amazonaws.com"], [], "kms.x.amazonaws.com")
    assert not egress_allows(["**.amazonaws.com"], ["kms.*.amazonaws.com"], "kms.x.amazonaws.com")


# -- the manifest ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    document = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _allow(manifest: dict[str, Any]) -> list[str]:
    return [str(entry) for entry in manifest["egress"]["allow"]]


def _deny(manifest: dict[str, Any]) -> list[str]:
    return [str(entry) for entry in manifest["egress"].get("deny") or []]


def _host(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    assert host, url
    return host


def hosts_contacted(envelope: str, region: str, environ: dict[str, str],
                    key_id: str | None = KEY_ID) -> dict[str, str]:  # fmt: skip
    """What the service connects to for this configuration, by purpose, from its own code
    (KMS in the key's region when the key is an ARN, as noflylist.service does)."""
    bucket, key = parse_s3_url(envelope)
    return {
        "KMS": _host(kms_endpoint(key_region(key_id) or region, environ)),
        "S3": _host(object_url(bucket, key, region, environ)),
        "IMDS": _host(DEFAULT_IMDS_ENDPOINT),
    }


@pytest.mark.parametrize("region", REGIONS)
def test_every_host_the_service_contacts_is_allowed(manifest: dict[str, Any], region: str) -> None:
    hosts = hosts_contacted(ENVELOPE, region, {})
    assert hosts["S3"] == f"noflylist-example-lists.s3.{region}.amazonaws.com"  # virtual-hosted
    for purpose, host in hosts.items():
        assert egress_allows(_allow(manifest), _deny(manifest), host), (purpose, host)


def test_egress_allows_no_other_bucket_and_no_other_service(manifest: dict[str, Any]) -> None:
    allow, deny = _allow(manifest), _deny(manifest)
    for host in (
        "someone-elses-bucket.s3.us-east-1.amazonaws.com",
        "s3.us-east-1.amazonaws.com",  # path style: any bucket of the region
        "s3.amazonaws.com",
        "noflylist-example-lists.s3.amazonaws.com",  # the global endpoint is not used
        "sts.us-east-1.amazonaws.com",
        "kms.us-east-1.amazonaws.com.attacker.example",
        "example.com",
        "169.254.170.2",  # the ECS credentials endpoint
    ):
        assert not egress_allows(allow, deny, host), host


def test_a_bucket_name_with_dots_is_path_style_and_would_need_the_whole_region(
    manifest: dict[str, Any],
) -> None:
    """enclave/s3.py addresses a dotted bucket path-style (S3's wildcard certificate does not
    cover it); that host serves every bucket, which is why the manifest's comment says to use
    a name without dots. The manifest as committed refuses it."""
    hosts = hosts_contacted("s3://lists.noflylist.example/envelope.json", "eu-west-1", {})
    assert hosts["S3"] == "s3.eu-west-1.amazonaws.com"
    assert not egress_allows(_allow(manifest), _deny(manifest), hosts["S3"])
    assert egress_allows([*_allow(manifest), "s3.*.amazonaws.com"], [], hosts["S3"])


def test_an_endpoint_override_is_path_style_on_that_host() -> None:
    environ = {"AWS_ENDPOINT_URL_S3": "https://bucket.vpce-0abc.s3.eu-west-1.vpce.amazonaws.com"}
    hosts = hosts_contacted(ENVELOPE, "eu-west-1", environ)
    assert hosts["S3"] == "bucket.vpce-0abc.s3.eu-west-1.vpce.amazonaws.com"


def test_no_kms_proxy_so_every_kms_call_is_attested_by_the_service(
    manifest: dict[str, Any],
) -> None:
    assert "kms_proxy" not in manifest
    # Without the proxy nothing sets AWS_KMS_ENDPOINT, and the service goes to KMS itself.
    assert hosts_contacted(ENVELOPE, "us-east-1", {})["KMS"] == "kms.eu-west-1.amazonaws.com"
    hosts = hosts_contacted(ENVELOPE, "us-east-1", {}, key_id=None)
    assert hosts["KMS"] == "kms.us-east-1.amazonaws.com"


def test_the_manifest_uses_only_fields_enclaver_knows(manifest: dict[str, Any]) -> None:
    assert manifest["version"] == "v1"
    assert set(manifest) <= _SCHEMA[""]
    for section in ("sources", "signature", "egress", "defaults", "kms_proxy", "api", "spire"):
        if section in manifest:
            assert set(manifest[section]) <= _SCHEMA[section], section
    for ingress in manifest["ingress"]:
        assert set(ingress) <= _SCHEMA["ingress[]"]
        assert set(ingress.get("tls") or {}) <= _SCHEMA["ingress[].tls"]
    for name in ("name", "target"):
        assert isinstance(manifest[name], str) and manifest[name]
    assert isinstance(manifest["sources"]["app"], str) and manifest["sources"]["app"]
    assert manifest["defaults"]["cpu_count"] == 2
    assert isinstance(manifest["defaults"]["memory_mb"], int)


def _entrypoint() -> list[str]:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    found = [line.removeprefix("ENTRYPOINT ") for line in lines if line.startswith("ENTRYPOINT ")]
    assert len(found) == 1, "the Dockerfile should have one ENTRYPOINT, in exec form"
    entrypoint = json.loads(found[0])
    assert isinstance(entrypoint, list)
    return [str(part) for part in entrypoint]


def test_ingress_reaches_the_port_and_address_the_image_listens_on(
    manifest: dict[str, Any],
) -> None:
    """odyn connects to 127.0.0.1:listen_port inside the enclave (proxy/ingress.rs)."""
    entrypoint = _entrypoint()
    assert entrypoint[1:4] == ["serve", "--attestation", "nsm"]
    options = dict(zip(entrypoint[4::2], entrypoint[5::2], strict=True))
    assert options["--host"] == "127.0.0.1"
    assert [entry["listen_port"] for entry in manifest["ingress"]] == [int(options["--port"])]
    assert int(options["--port"]) == DEFAULT_PORT


def test_the_example_bucket_is_the_one_the_image_check_builds_with() -> None:
    """build-twice.sh builds with ENVELOPE; docs/deploy.md shows it: one example everywhere."""
    script = (ROOT / ".ci" / "image" / "build-twice.sh").read_text(encoding="utf-8")
    assert re.search(r"NOFLYLIST_TEST_ENVELOPE:-" + re.escape(ENVELOPE) + r"\}", script)


def test_the_old_schema_is_refused_by_the_schema_here() -> None:
    """The keys Enclaver used to take, which current Enclaver refuses as unknown fields."""
    assert not {"supervisor", "wrapper"} & _SCHEMA["sources"]


def test_odyn_and_sleeve_are_pinned_by_digest(manifest: dict[str, Any]) -> None:
    """odyn is inside the EIF (PCR0); the sleeve wraps it: a tag would let either change."""
    for source in ("odyn", "sleeve"):
        assert _BY_DIGEST.fullmatch(manifest["sources"][source]), source


@pytest.mark.parametrize("region", REGIONS)
def test_egress_reaches_kms_only_in_the_keys_region(manifest: dict[str, Any], region: str) -> None:
    allow, deny = _allow(manifest), _deny(manifest)
    assert key_region(KEY_ID) == "eu-west-1"
    assert egress_allows(allow, deny, hosts_contacted(ENVELOPE, region, {})["KMS"])
    if region != "eu-west-1":
        assert not egress_allows(allow, deny, f"kms.{region}.amazonaws.com"), region
