"""Proof for noflylist/tools/policy.py and ``noflylist policy``: the key policy says what it must.

The measurements are real: PCR0 and PCR8 of the AWS-signed documents in tests/vectors/nitro
(see expected.json), not values this code made. The last tests put the generated policy on
a key of the simulator's local KMS and show it allowing and denying the calls it should.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.modes import AttestationMode
from noflylist import cli
from noflylist.tools import policy
from tests.conftest import VECTORS

_EXPECTED = json.loads((VECTORS / "nitro" / "expected.json").read_text())
PCR0_OLD = _EXPECTED["production-2022-10-13.cbor"]["pcr0_hex"]
PCR0_NEW = _EXPECTED["production-2023-01-18.cbor"]["pcr0_hex"]
PCR8_NEW = _EXPECTED["production-2023-01-18.cbor"]["pcrs_nonzero"]["8"]
PCR1_NEW = _EXPECTED["production-2023-01-18.cbor"]["pcrs_nonzero"]["1"]
ACCOUNT = "111122223333"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin"
ENCLAVE = f"arn:aws:iam::{ACCOUNT}:role/enclave/ScreeningInstance"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/ListOperator"
STRANGER = "arn:aws:iam::444455556666:role/AnyoneTheAdminLikes"
SIDS = [
    "KeyAdministration",
    "PutKeyPolicyHolderIsTrustedWithWhoMayDecrypt",
    "EnclaveDecryptWithAttestedImage",
    "DenyEnclaveDecryptWithoutAttestation",
    "OperatorSeal",
    "DenyDecryptToAdministrationAndOperator",
    "DenyEveryoneGrantsReEncryptAndReplicasSoOnlyThisPolicyDecides",
]
#: The key-administrator actions of AWS's console policy (AWS KMS Developer Guide, "Default
#: key policy", "Allows key administrators to administer the KMS key"), which this policy
#: used before: ``kms:Create*`` includes ``kms:CreateGrant``.
AWS_CONSOLE_ADMIN_ACTIONS = [
    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
    "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
]  # fmt: skip


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line itself (``noflylist.cli.main``): our errors become one line, exit 1."""
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def base_args(*extra: str) -> list[str]:
    return [
        "policy",
        "--account", ACCOUNT,
        "--admin-role", ADMIN,
        "--enclave-role", ENCLAVE,
        "--operator-role", OPERATOR,
        *extra,
    ]  # fmt: skip


def statements(document: dict[str, object]) -> dict[str, dict[str, object]]:
    listed = document["Statement"]
    assert isinstance(listed, list)
    return {s["Sid"]: s for s in listed}


def principals(statement: dict[str, object]) -> list[str]:
    principal = statement["Principal"]
    assert isinstance(principal, dict) and set(principal) == {"AWS"}
    value = principal["AWS"]
    return [value] if isinstance(value, str) else list(value)


def actions(statement: dict[str, object]) -> list[str]:
    value = statement["Action"]
    return [value] if isinstance(value, str) else list(value)


def allows(document: dict[str, object], principal: str, action: str) -> bool:
    """Does any Allow statement name ``principal`` and an action pattern matching ``action``?"""
    return any(
        s["Effect"] == "Allow"
        and principal in principals(s)
        and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions(s))
        for s in statements(document).values()
    )


def three_role_policy(pcr0: bytes, *, frozen: bool = False) -> dict[str, object]:
    """The key policy for the admin, enclave and operator roles, pinning one PCR0."""
    return policy.key_policy(
        account=ACCOUNT,
        admin_role=ADMIN,
        enclave_role=ENCLAVE,
        operator_role=OPERATOR,
        pcrs={0: [pcr0]},
        frozen=frozen,
    )


def console_admin_policy(pcr0: bytes) -> dict[str, object]:
    """The policy as it was generated before: the admin had AWS's console actions
    (``kms:Create*``) and nothing denied grants to everyone."""
    document = three_role_policy(pcr0)
    kept = []
    for statement in document["Statement"]:  # type: ignore[attr-defined]
        if statement["Sid"] == "KeyAdministration":
            statement = {**statement, "Action": AWS_CONSOLE_ADMIN_ACTIONS}
        if statement["Sid"] != policy.NO_BYPASS_SID:
            kept.append(statement)
    return {**document, "Statement": kept}


# -- the document ------------------------------------------------------------------------------


def test_cli_prints_json_with_exact_condition_keys_and_operators(capsys):
    status, out, err = run(base_args("--pcr", f"0={PCR0_NEW}"), capsys)
    assert status == 0, err
    document = json.loads(out)
    assert document["Version"] == "2012-10-17"
    by_sid = statements(document)
    assert list(by_sid) == SIDS
    decrypt = by_sid["EnclaveDecryptWithAttestedImage"]
    assert decrypt["Effect"] == "Allow" and principals(decrypt) == [ENCLAVE]
    assert decrypt["Action"] == "kms:Decrypt" and decrypt["Resource"] == "*"
    assert decrypt["Condition"] == {
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0_NEW}
    }
    deny = by_sid["DenyEnclaveDecryptWithoutAttestation"]
    assert deny["Effect"] == "Deny" and principals(deny) == [ENCLAVE]
    assert deny["Action"] == "kms:Decrypt"
    assert deny["Condition"] == {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
    seal = by_sid["OperatorSeal"]
    assert sorted(actions(seal)) == ["kms:Encrypt", "kms:GenerateDataKey"]
    assert out.startswith("{\n  ")  # indented for a reviewer


def test_several_pcr0_values_become_a_list_that_accepts_any_of_them(capsys):
    status, out, _ = run(
        base_args(
            "--pcr", f"0={PCR0_OLD}", "--pcr", f"0={PCR0_NEW.upper()}", "--pcr", f"0={PCR0_OLD}"
        ),
        capsys,
    )
    assert status == 0
    condition = statements(json.loads(out))["EnclaveDecryptWithAttestedImage"]["Condition"]
    # Duplicates (in any case) collapse; order is as given; hex is lower case as KMS reports it.
    assert condition == {
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": [PCR0_OLD, PCR0_NEW]}
    }


def test_pcr8_adds_a_second_condition_key_that_must_also_match(capsys):
    status, out, _ = run(base_args("--pcr", f"8={PCR8_NEW}", "--pcr", f"0={PCR0_NEW}"), capsys)
    assert status == 0
    condition = statements(json.loads(out))["EnclaveDecryptWithAttestedImage"]["Condition"]
    assert condition == {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR0": PCR0_NEW,
            "kms:RecipientAttestation:PCR8": PCR8_NEW,
        }
    }


def test_only_the_deny_to_everyone_names_a_wildcard_principal_and_resources_are_the_key():
    """Behaviour changed on request: the Deny of grants names every principal ("*"); no
    Allow does, and no other statement."""
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    for statement in statements(document).values():
        if statement["Sid"] != policy.NO_BYPASS_SID:
            assert all("*" not in arn for arn in principals(statement)), statement["Sid"]
        assert statement["Resource"] == "*"
    wildcards = [s for s in statements(document).values() if "*" in principals(s)]
    assert [(s["Sid"], s["Effect"]) for s in wildcards] == [(policy.NO_BYPASS_SID, "Deny")]
    assert wildcards[0]["Principal"] == {"AWS": "*"}
    assert ":root" not in json.dumps(document)  # no delegation to the account's IAM policies


@pytest.mark.parametrize("role", [ADMIN, OPERATOR])
@pytest.mark.parametrize("action", ["kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"])
def test_admin_and_operator_are_never_allowed_to_decrypt_and_are_explicitly_denied(role, action):
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    assert not allows(document, role, action)
    deny = statements(document)["DenyDecryptToAdministrationAndOperator"]
    assert deny["Effect"] == "Deny" and role in principals(deny) and deny["Action"] == "kms:Decrypt"
    assert ENCLAVE not in principals(deny)


def test_admin_manages_the_key_and_the_operator_seals():
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    for action in ("kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:DescribeKey"):
        assert allows(document, ADMIN, action)
    for action in ("kms:GenerateDataKey", "kms:Encrypt"):
        assert allows(document, OPERATOR, action) and not allows(document, ADMIN, action)
    assert not allows(document, OPERATOR, "kms:PutKeyPolicy")
    assert not allows(document, ENCLAVE, "kms:GenerateDataKey")


def test_without_operator_role_there_is_no_seal_statement_and_the_sids_keep_their_names():
    document = policy.key_policy(
        account=ACCOUNT, admin_role=ADMIN, enclave_role=ENCLAVE, pcrs={0: [b"\x01" * 48]}
    )
    assert list(statements(document)) == [sid for sid in SIDS if sid != "OperatorSeal"]
    assert principals(statements(document)["DenyDecryptToAdministrationAndOperator"]) == [ADMIN]


#: The admin's actions, each named (AWS KMS Developer Guide, "AWS KMS permissions").
EXPECTED_ADMIN_ACTIONS = [
    "kms:DescribeKey", "kms:GetKeyPolicy", "kms:ListKeyPolicies", "kms:ListResourceTags",
    "kms:ListGrants", "kms:RevokeGrant", "kms:EnableKey", "kms:DisableKey",
    "kms:EnableKeyRotation", "kms:DisableKeyRotation", "kms:GetKeyRotationStatus",
    "kms:ListKeyRotations", "kms:RotateKeyOnDemand", "kms:UpdateKeyDescription",
    "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
]  # fmt: skip
#: What AWS's console list gave the admin and this one does not.
NOT_FOR_THE_ADMIN = [
    "kms:CreateGrant", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:Decrypt", "kms:Encrypt",
    "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKeyPair",
    "kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias", "kms:ReplicateKey",
    "kms:UpdatePrimaryRegion", "kms:ImportKeyMaterial", "kms:DeleteImportedKeyMaterial",
    "kms:GetParametersForImport", "kms:CreateWhateverKMSAddsNext",
]  # fmt: skip


def test_admin_actions_are_named_one_by_one_with_no_wildcard_grant_or_cryptography():
    """Behaviour changed on request: no kms:Create* (it includes kms:CreateGrant) or any
    other wildcard, which would also allow actions KMS adds later."""
    by_sid = statements(three_role_policy(bytes.fromhex(PCR0_NEW)))
    assert actions(by_sid["KeyAdministration"]) == EXPECTED_ADMIN_ACTIONS
    assert principals(by_sid["KeyAdministration"]) == [ADMIN]
    allow_actions = [a for s in by_sid.values() if s["Effect"] == "Allow" for a in actions(s)]
    assert not any("*" in a or "?" in a for a in allow_actions)
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    console = console_admin_policy(bytes.fromhex(PCR0_NEW))
    for action in NOT_FOR_THE_ADMIN:
        assert not allows(document, ADMIN, action), action
    for action in ("kms:CreateGrant", "kms:CreateAlias", "kms:CreateWhateverKMSAddsNext"):
        assert allows(console, ADMIN, action), action  # the old list did allow these


@pytest.mark.parametrize("role", [ADMIN, ENCLAVE, OPERATOR, STRANGER])
@pytest.mark.parametrize(
    "action", ["kms:CreateGrant", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:ReplicateKey"]
)
def test_grants_reencrypt_and_replicas_are_allowed_to_nobody_and_denied_to_everyone(role, action):
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    assert not allows(document, role, action)
    deny = statements(document)[policy.NO_BYPASS_SID]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
    assert actions(deny) == ["kms:CreateGrant", "kms:ReEncrypt*", "kms:ReplicateKey"]
    assert "Condition" not in deny  # no kms:GrantIsForAWSResource exception either
    assert any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions(deny))


def test_only_one_statement_allows_put_key_policy_and_its_sid_names_the_trust_it_gives():
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    granting = [s for s in statements(document).values()
                if s["Effect"] == "Allow" and "kms:PutKeyPolicy" in actions(s)]  # fmt: skip
    assert len(granting) == 1
    assert granting[0]["Sid"] == "PutKeyPolicyHolderIsTrustedWithWhoMayDecrypt"
    assert granting[0]["Action"] == "kms:PutKeyPolicy" and principals(granting[0]) == [ADMIN]
    assert document["Id"] == "noflylist-key-policy"


def test_frozen_policy_leaves_put_key_policy_out_entirely_and_keeps_everything_else():
    document = three_role_policy(bytes.fromhex(PCR0_NEW))
    frozen = three_role_policy(bytes.fromhex(PCR0_NEW), frozen=True)
    assert "PutKeyPolicy" not in json.dumps(frozen["Statement"])
    assert not any(allows(frozen, role, "kms:PutKeyPolicy") for role in (ADMIN, OPERATOR, ENCLAVE))
    assert list(statements(frozen)) == [sid for sid in SIDS if sid != policy.POLICY_CHANGE_SID]
    kept = {sid: s for sid, s in statements(document).items() if sid != policy.POLICY_CHANGE_SID}
    assert statements(frozen) == kept
    assert frozen["Id"] == "noflylist-key-policy-frozen-no-PutKeyPolicy"


def test_cli_frozen_flag_prints_the_frozen_policy(capsys):
    status, out, err = run(base_args("--pcr", f"0={PCR0_NEW}", "--frozen"), capsys)
    assert status == 0, err
    assert json.loads(out) == three_role_policy(bytes.fromhex(PCR0_NEW), frozen=True)
    status, out, _ = run(base_args("--pcr", f"0={PCR0_NEW}"), capsys)
    assert status == 0 and json.loads(out) == three_role_policy(bytes.fromhex(PCR0_NEW))


hex48 = st.binary(min_size=48, max_size=48).filter(any)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 31), st.lists(hex48, min_size=1, max_size=4), min_size=0, max_size=4
    ),
    st.lists(hex48, min_size=1, max_size=4),
)
def test_sids_are_stable_and_every_given_measurement_appears_once(extra, pcr0_values):
    pcrs = {**extra, 0: pcr0_values}
    document = policy.key_policy(
        account=ACCOUNT, admin_role=ADMIN, enclave_role=ENCLAVE, operator_role=OPERATOR, pcrs=pcrs
    )
    assert list(statements(document)) == SIDS
    condition = statements(document)["EnclaveDecryptWithAttestedImage"]["Condition"]
    values = condition["StringEqualsIgnoreCase"]
    assert list(values) == [f"kms:RecipientAttestation:PCR{i}" for i in sorted(pcrs)]
    for index, given_values in pcrs.items():
        got = values[f"kms:RecipientAttestation:PCR{index}"]
        got_list = [got] if isinstance(got, str) else got
        assert got_list == list(dict.fromkeys(v.hex() for v in given_values))


# -- refusals ------------------------------------------------------------------------------------

GOOD = {
    "--account": ACCOUNT,
    "--admin-role": ADMIN,
    "--enclave-role": ENCLAVE,
    "--operator-role": OPERATOR,
}


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--account", "11112222333", "--account"),
        ("--account", "11112222333x", "--account"),
        ("--admin-role", f"arn:aws:iam::{ACCOUNT}:user/bob", "--admin-role"),
        ("--admin-role", "KeyAdmin", "--admin-role"),
        ("--enclave-role", "arn:aws:iam::999988887777:role/Screening", "--enclave-role"),
        ("--enclave-role", ADMIN, "--enclave-role"),
        ("--operator-role", f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abc", "--operator-role"),
        ("--operator-role", ENCLAVE, "--enclave-role"),
        ("--pcr", f"0={PCR0_NEW[:-2]}", "--pcr"),
        ("--pcr", f"0={PCR0_NEW[:-1]}g", "--pcr"),
        ("--pcr", f"32={PCR0_NEW}", "--pcr"),
        ("--pcr", f"-1={PCR0_NEW}", "--pcr"),
        ("--pcr", PCR0_NEW, "--pcr"),
        ("--pcr", "0=" + "0" * 96, "--pcr"),
        ("--pcr", f"8={PCR8_NEW}", "--pcr"),  # PCR0 is missing
    ],
)
def test_bad_inputs_are_refused_naming_the_flag(flag, value, named, capsys):
    values = {**GOOD, "--pcr": f"0={PCR0_NEW}", flag: value}
    argv = ["policy", *(f"{name}={text}" for name, text in values.items())]
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    assert err.startswith(f"noflylist policy: {named}"), err
    assert len(err.strip().splitlines()) == 1


def test_a_policy_larger_than_kms_accepts_is_refused():
    many = [hashlib.sha384(str(i).encode()).digest() for i in range(400)]
    with pytest.raises(policy.PolicyError, match="at most 32768"):
        policy.key_policy(account=ACCOUNT, admin_role=ADMIN, enclave_role=ENCLAVE, pcrs={0: many})


# -- --from-describe-eif ------------------------------------------------------------------------


def describe_eif(tmp_path: Path, **measurements: str) -> Path:
    """A file shaped like ``nitro-cli describe-eif`` output (Nitro Enclaves User Guide)."""
    path = tmp_path / "describe-eif.json"
    document = {
        "EifVersion": 4,
        "Measurements": {"HashAlgorithm": "Sha384 { ... }", **measurements},
        "IsSigned": "PCR8" in measurements,
        "CheckCRC": True,
        "ImageName": "noflylist",
        "ImageVersion": "1.0",
        "Metadata": {"BuildTime": "2023-01-18T13:00:00.000000000+00:00"},
    }
    path.write_text(json.dumps(document, indent=2))
    return path


def test_from_describe_eif_takes_pcr0_and_pcr8_and_adds_them_to_given_values(tmp_path, capsys):
    eif = describe_eif(tmp_path, PCR0=PCR0_NEW, PCR1=PCR1_NEW, PCR2=PCR1_NEW, PCR8=PCR8_NEW)
    status, out, err = run(
        base_args("--pcr", f"0={PCR0_OLD}", "--from-describe-eif", str(eif)), capsys
    )
    assert status == 0, err
    condition = statements(json.loads(out))["EnclaveDecryptWithAttestedImage"]["Condition"]
    assert condition == {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR0": [PCR0_OLD, PCR0_NEW],
            "kms:RecipientAttestation:PCR8": PCR8_NEW,
        }
    }


def test_from_describe_eif_alone_is_enough_and_pcr1_pcr2_are_not_pinned(tmp_path):
    eif = describe_eif(tmp_path, PCR0=PCR0_NEW, PCR1=PCR1_NEW, PCR2=PCR1_NEW)
    assert policy.measurements_from_describe_eif(eif.read_bytes()) == {0: bytes.fromhex(PCR0_NEW)}


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"PCR0": PCR0_NEW}),
        json.dumps({"Measurements": {"HashAlgorithm": "Sha256 { ... }", "PCR0": PCR0_NEW}}),
        json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR1": PCR1_NEW}}),
        json.dumps({"Measurements": {"PCR0": "EXAMPLE" + PCR0_NEW[7:]}}),  # the docs' example
        json.dumps({"Measurements": {"PCR0": PCR0_NEW, "PCR8": 8}}),
    ],
)
def test_from_describe_eif_refuses_other_shapes_naming_the_flag(tmp_path, capsys, content):
    path = tmp_path / "eif.json"
    path.write_text(content)
    status, out, err = run(base_args("--from-describe-eif", str(path)), capsys)
    assert status == 1 and out == ""
    assert err.startswith("noflylist policy: --from-describe-eif"), err


def test_from_describe_eif_missing_file_is_named(tmp_path, capsys):
    status, _, err = run(base_args("--from-describe-eif", str(tmp_path / "nope.json")), capsys)
    assert status == 1 and "--from-describe-eif" in err and "nope.json" in err


# -- evaluation by the local KMS --------------------------------------------------------------

GOOD_PCR0 = hashlib.sha384(b"the enclave image the policy pins").digest()
OTHER_PCR0 = hashlib.sha384(b"some other enclave image").digest()


class _Fixed:
    """A credential source that always returns the same credentials."""

    def __init__(self, credentials: object) -> None:
        self._credentials = credentials

    def get(self):  # type: ignore[no-untyped-def]
        return self._credentials


@pytest.fixture(scope="module")
def local_kms(tmp_path_factory) -> Iterator[tuple[object, object, str]]:
    """A LocalKMS holding one key under the generated policy: (kms, ca, key ARN)."""
    kms_server = pytest.importorskip(
        "noflylist_simulator.kms_server", reason="the local KMS (noflylist_simulator) is not here"
    )
    from noflylist_simulator.ca import load_or_create

    folder = tmp_path_factory.mktemp("trust-kms")
    ca = load_or_create(folder / "ca")
    document = three_role_policy(GOOD_PCR0)
    with kms_server.LocalKMS(folder / "kms", simulator_root=ca.root) as kms:
        key_arn = kms.create_key(ADMIN, policy_document=json.dumps(document))
        yield kms, ca, key_arn


def _client(kms, role: str):  # type: ignore[no-untyped-def]
    from enclave.kms import KMSClient

    return KMSClient(kms.region, _Fixed(kms.create_credentials(role)), endpoint=kms.url)


def _sealed_data_key(local_kms) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    kms, _, key_arn = local_kms
    data_key = _client(kms, OPERATOR).generate_data_key(key_arn)
    assert data_key.plaintext is not None and len(data_key.plaintext) == 32
    return data_key.ciphertext_blob, data_key.plaintext


def _attested_decrypt(local_kms, **nsm_options):  # type: ignore[no-untyped-def]
    from enclave.attested_decrypt import AttestedDecryptor
    from noflylist_simulator.nsm import SimulatedNSM

    kms, ca, key_arn = local_kms
    blob, plaintext = _sealed_data_key(local_kms)
    module = SimulatedNSM(ca, **nsm_options)
    decryptor = AttestedDecryptor(_client(kms, ENCLAVE), module, mode=AttestationMode.SIMULATED)
    return decryptor.decrypt(blob, key_id=key_arn), plaintext


def test_local_kms_lets_the_enclave_role_with_the_pinned_pcr0_decrypt(local_kms):
    opened, plaintext = _attested_decrypt(local_kms, pcr0=GOOD_PCR0)
    assert opened == plaintext


@pytest.mark.parametrize(
    "nsm_options",
    [{"pcr0": OTHER_PCR0}, {"pcr0": GOOD_PCR0, "debug": True}],
    ids=["another image", "debug mode (PCR0 zero)"],
)
def test_local_kms_denies_the_enclave_role_with_another_image_or_debug_mode(local_kms, nsm_options):
    from enclave.kms import KMSError

    with pytest.raises(KMSError) as caught:
        _attested_decrypt(local_kms, **nsm_options)
    assert caught.value.code == "AccessDeniedException"


def test_local_kms_denies_the_enclave_role_without_attestation(local_kms):
    from enclave.kms import KMSError

    kms, _, key_arn = local_kms
    blob, _ = _sealed_data_key(local_kms)
    with pytest.raises(KMSError) as caught:
        _client(kms, ENCLAVE).decrypt(blob, key_id=key_arn)
    assert caught.value.code == "AccessDeniedException"


@pytest.mark.parametrize("role", [OPERATOR, ADMIN])
def test_local_kms_denies_decrypt_to_the_operator_and_admin(local_kms, role):
    from enclave.kms import KMSError

    kms, _, key_arn = local_kms
    blob, _ = _sealed_data_key(local_kms)
    with pytest.raises(KMSError) as caught:
        _client(kms, role).decrypt(blob, key_id=key_arn)
    assert caught.value.code == "AccessDeniedException"


def test_local_kms_lets_the_operator_encrypt_but_not_the_admin(local_kms):
    from enclave.kms import KMSError

    kms, _, key_arn = local_kms
    assert _client(kms, OPERATOR).encrypt(key_arn, b"a small secret")
    with pytest.raises(KMSError) as caught:
        _client(kms, ADMIN).generate_data_key(key_arn)
    assert caught.value.code == "AccessDeniedException"


@pytest.mark.parametrize(
    ("role", "pcrs"),
    [(ENCLAVE, None), (ADMIN, None), (OPERATOR, None), (ADMIN, {0: GOOD_PCR0})],
    ids=["enclave unattested", "admin unattested", "operator unattested", "admin attested"],
)
def test_explicit_denies_hold_even_when_a_later_edit_allows_everything(role, pcrs):
    """Someone appends "allow kms:* to all three roles": the Deny statements still decide."""
    evaluator = pytest.importorskip(
        "noflylist_simulator.policy", reason="the local KMS's policy evaluator is not here"
    )
    document = three_role_policy(GOOD_PCR0)
    widened = dict(document)
    widened["Statement"] = [
        *document["Statement"],  # type: ignore[misc]
        {
            "Sid": "CarelessEdit",
            "Effect": "Allow",
            "Principal": {"AWS": [ADMIN, ENCLAVE, OPERATOR]},
            "Action": "kms:*",
            "Resource": "*",
        },
    ]
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-4000-8000-000000000000"
    context = evaluator.condition_context(principal_arn=role, pcrs=pcrs)
    decision = evaluator.evaluate(widened, evaluator.Request("kms:Decrypt", role, key, context))
    assert not decision.allowed and decision.explicit_deny
    # ...and the widening is real: without our Deny statements it would have allowed.
    allow_only = {
        **widened,
        "Statement": [s for s in widened["Statement"] if s["Effect"] == "Allow"],
    }
    assert evaluator.evaluate(
        allow_only, evaluator.Request("kms:Decrypt", role, key, context)
    ).allowed


@pytest.mark.parametrize("role", [ADMIN, ENCLAVE, OPERATOR, STRANGER])
@pytest.mark.parametrize("action", ["kms:CreateGrant", "kms:ReEncryptFrom", "kms:ReplicateKey"])
def test_the_deny_to_everyone_holds_even_when_a_later_edit_allows_everything(role, action):
    """Someone appends "allow kms:* to everyone": no grant, re-encryption or replica."""
    evaluator = pytest.importorskip(
        "noflylist_simulator.policy", reason="the local KMS's policy evaluator is not here"
    )
    document = three_role_policy(GOOD_PCR0)
    careless = {"Sid": "CarelessEdit", "Effect": "Allow", "Principal": "*", "Action": "kms:*",
                "Resource": "*"}  # fmt: skip
    widened = {**document, "Statement": [*document["Statement"], careless]}  # type: ignore[misc]
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-4000-8000-000000000000"
    asked = evaluator.Request(action, role, key, evaluator.condition_context(principal_arn=role))
    decision = evaluator.evaluate(widened, asked)
    assert not decision.allowed and decision.explicit_deny
    assert policy.NO_BYPASS_SID in decision.reason
    without_deny = {**widened, "Statement": [s for s in widened["Statement"]
                                             if s["Sid"] != policy.NO_BYPASS_SID]}  # fmt: skip
    assert evaluator.evaluate(without_deny, asked).allowed  # the widening is real


# -- grants and frozen policies on the local KMS ------------------------------------------------


def _boto(kms, role: str):  # type: ignore[no-untyped-def]
    """botocore's own KMS client (an independent peer), signed as ``role``."""
    import botocore.session
    from botocore.config import Config

    credentials = kms.create_credentials(role)
    return botocore.session.get_session().create_client(
        "kms",
        region_name=kms.region,
        endpoint_url=kms.url,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        config=Config(retries={"max_attempts": 1}),
    )


def _refused(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Run a botocore call that must fail; return KMS's error code and message."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    return str(error["Code"]), str(error["Message"])


def _grant_decrypt_to_stranger(kms, role: str, key_arn: str) -> str:  # type: ignore[no-untyped-def]
    answer = _boto(kms, role).create_grant(
        KeyId=key_arn, GranteePrincipal=STRANGER, Operations=["Decrypt"]
    )
    return str(answer["GrantId"])


def test_old_console_admin_policy_lets_the_admin_grant_decrypt_to_anyone_without_attestation(
    local_kms,
):
    """The attack the policy now closes: with kms:Create*, the admin grants Decrypt to a
    principal the policy never names, who then decrypts with no attestation at all."""
    from enclave.kms import KMSError

    kms, _, _ = local_kms
    key_arn = kms.create_key(ADMIN, policy_document=json.dumps(console_admin_policy(GOOD_PCR0)))
    blob, plaintext = _sealed_data_key((kms, None, key_arn))
    stranger = _client(kms, STRANGER)
    with pytest.raises(KMSError) as before:
        stranger.decrypt(blob, key_id=key_arn)
    assert before.value.code == "AccessDeniedException"  # the key policy alone keeps it out
    assert _grant_decrypt_to_stranger(kms, ADMIN, key_arn)
    assert stranger.decrypt(blob, key_id=key_arn).plaintext == plaintext


@pytest.mark.parametrize("role", [ADMIN, OPERATOR, ENCLAVE, STRANGER])
def test_local_kms_refuses_every_grant_under_the_generated_policy(local_kms, role):
    from enclave.kms import KMSError

    kms, _, key_arn = local_kms
    code, message = _refused(lambda: _grant_decrypt_to_stranger(kms, role, key_arn))
    assert code == "AccessDeniedException"
    assert "kms:CreateGrant" in message and "explicit deny" in message
    assert _boto(kms, ADMIN).list_grants(KeyId=key_arn)["Grants"] == []
    blob, _ = _sealed_data_key(local_kms)
    with pytest.raises(KMSError) as caught:
        _client(kms, STRANGER).decrypt(blob, key_id=key_arn)
    assert caught.value.code == "AccessDeniedException"


def test_a_grant_made_before_the_generated_policy_decrypts_until_the_admin_revokes_it(local_kms):
    """Why docs/deploy.md says to list and revoke grants: a new policy leaves old grants."""
    from enclave.kms import KMSError

    kms, _, _ = local_kms
    key_arn = kms.create_key(ADMIN, policy_document=json.dumps(console_admin_policy(GOOD_PCR0)))
    grant_id = _grant_decrypt_to_stranger(kms, ADMIN, key_arn)
    admin = _boto(kms, ADMIN)
    admin.put_key_policy(KeyId=key_arn, PolicyName="default",
                         Policy=json.dumps(three_role_policy(GOOD_PCR0)))  # fmt: skip
    blob, plaintext = _sealed_data_key((kms, None, key_arn))
    stranger = _client(kms, STRANGER)
    assert stranger.decrypt(blob, key_id=key_arn).plaintext == plaintext
    listed = admin.list_grants(KeyId=key_arn)["Grants"]
    assert [(g["GrantId"], g["GranteePrincipal"], g["Operations"]) for g in listed] == [
        (grant_id, STRANGER, ["Decrypt"])
    ]
    admin.revoke_grant(KeyId=key_arn, GrantId=grant_id)
    assert admin.list_grants(KeyId=key_arn)["Grants"] == []
    with pytest.raises(KMSError) as caught:
        stranger.decrypt(blob, key_id=key_arn)
    assert caught.value.code == "AccessDeniedException"


def test_generated_policy_still_lets_the_admin_administer_the_key(local_kms):
    kms, _, _ = local_kms
    document = three_role_policy(GOOD_PCR0)
    key_arn = kms.create_key(ADMIN, policy_document=json.dumps(document))
    admin = _boto(kms, ADMIN)
    assert admin.describe_key(KeyId=key_arn)["KeyMetadata"]["Arn"] == key_arn
    got = admin.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    assert json.loads(got) == document
    admin.disable_key(KeyId=key_arn)
    assert admin.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"] == "Disabled"
    admin.enable_key(KeyId=key_arn)
    assert admin.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"] == "Enabled"
    assert admin.list_grants(KeyId=key_arn)["Grants"] == []
    new_image = json.dumps(three_role_policy(OTHER_PCR0))  # a release: the policy follows
    admin.put_key_policy(KeyId=key_arn, PolicyName="default", Policy=new_image)
    assert json.loads(admin.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]) == (
        json.loads(new_image)
    )
    code, _ = _refused(lambda: admin.create_alias(AliasName="alias/list", TargetKeyId=key_arn))
    assert code == "AccessDeniedException"  # aliases are no longer the admin's


@pytest.mark.slow  # 0.7 s or more (pyproject.toml): the full tier runs it
def test_frozen_policy_needs_the_lockout_bypass_and_then_nobody_may_put_a_policy(local_kms):
    kms, ca, _ = local_kms
    admin = _boto(kms, ADMIN)
    key_arn = admin.create_key(Description="noflylist list key")["KeyMetadata"]["Arn"]
    frozen = json.dumps(three_role_policy(GOOD_PCR0, frozen=True))

    def put(text: str, bypass: bool) -> object:
        return admin.put_key_policy(KeyId=key_arn, PolicyName="default", Policy=text,
                                    BypassPolicyLockoutSafetyCheck=bypass)  # fmt: skip

    code, message = _refused(lambda: put(frozen, False))  # KMS's lockout safety check
    assert code == "MalformedPolicyDocumentException"
    assert "will not allow you to update the key policy" in message
    put(frozen, True)
    got = admin.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    assert json.loads(got) == json.loads(frozen)
    for role in (ADMIN, OPERATOR, ENCLAVE):
        for bypass in (False, True):
            code, message = _refused(
                lambda r=role, b=bypass: _boto(kms, r).put_key_policy(
                    KeyId=key_arn, PolicyName="default", BypassPolicyLockoutSafetyCheck=b,
                    Policy=json.dumps(three_role_policy(OTHER_PCR0)))
            )  # fmt: skip
            assert code == "AccessDeniedException" and "kms:PutKeyPolicy" in message
    admin.disable_key(KeyId=key_arn)  # the admin still administers...
    admin.enable_key(KeyId=key_arn)
    opened, plaintext = _attested_decrypt((kms, ca, key_arn), pcr0=GOOD_PCR0)
    assert opened == plaintext  # ...and the pinned image still decrypts
