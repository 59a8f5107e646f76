"""noflylist.clients: the sealed client policy (strict, bounded, canonical) and the budgets.

The policy is read from bytes the list's owner wrote (``seal --clients FILE``) and, in the
enclave, from the envelope's header, so it is a parser of untrusted bytes: every malformed
document raises :class:`ClientPolicyError` and nothing else. The budgets run on a fake clock:
a token bucket of a minute's names, refilled continuously, and a rolling day of 144
ten-minute slots; a request is charged whole or not at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from noflylist.clients import (
    DAY_SECONDS,
    MAX_BUDGET,
    MAX_CLIENTS,
    MAX_POLICY_BYTES,
    SLOT_SECONDS,
    BudgetExceeded,
    Budgets,
    Client,
    ClientPolicyError,
    budget_headers,
    canonical_policy,
    open_client,
    parse_policy,
)


def raw_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def entry(client_id: str = "acme-checkin", **overrides: object) -> dict[str, object]:
    value: dict[str, object] = {
        "id": client_id,
        "public_key": base64.b64encode(raw_key()).decode(),
        "names_per_minute": 600,
        "names_per_day": 100_000,
    }
    value.update(overrides)
    return value


def document(*entries: dict[str, object]) -> bytes:
    return json.dumps({"clients": list(entries)}, indent=2).encode()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the policy ----------------------------------------------------------------------------


def test_an_owners_file_reads_into_clients_with_their_keys_and_budgets() -> None:
    first, second = entry("acme-checkin"), entry("bravo.kiosk_2", names_per_day=5)
    policy = parse_policy(document(first, second))
    assert [c.id for c in policy.clients] == ["acme-checkin", "bravo.kiosk_2"]
    assert policy.clients[0].public_key == base64.b64decode(str(first["public_key"]))
    assert (policy.clients[1].names_per_minute, policy.clients[1].names_per_day) == (600, 5)
    assert policy.public_keys == {c.id: c.public_key for c in policy.clients}
    assert policy.client("bravo.kiosk_2") is policy.clients[1]
    assert policy.client("nobody") is None


def test_the_canonical_bytes_are_one_per_policy_whatever_the_owners_formatting() -> None:
    one = entry()
    spaced = json.dumps({"clients": [one]}, indent=4).encode()
    reordered = json.dumps({"clients": [dict(reversed(list(one.items())))]}).encode()
    a, b = parse_policy(spaced), parse_policy(reordered)
    assert a.canonical == b.canonical
    assert a.sha256 == b.sha256 == hashlib.sha256(a.canonical).digest()
    # The canonical form parses back to itself, and is what the envelope must carry.
    assert parse_policy(a.canonical, require_canonical=True).canonical == a.canonical
    assert canonical_policy(a.clients) == a.canonical
    with pytest.raises(ClientPolicyError, match="canonical"):
        parse_policy(spaced, require_canonical=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[]", "an object"),
        (b'{"clients": [], "extra": 1}', "an object"),
        (b'{"clients": []}', "non-empty"),
        (b'{"clients": {}}', "non-empty"),
        (b"{", "not JSON"),
        (b'{"clients": [1]}', r"clients\[0\] must be an object"),
    ],
)
def test_a_malformed_policy_is_refused_naming_the_part(text: bytes, message: str) -> None:
    with pytest.raises(ClientPolicyError, match=message):
        parse_policy(text)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": ""}, r"clients\[0\].id"),
        ({"id": "a" * 65}, r"clients\[0\].id"),
        ({"id": "acme checkin"}, r"clients\[0\].id"),
        ({"id": "acmé"}, r"clients\[0\].id"),
        ({"id": 7}, r"clients\[0\].id"),
        ({"public_key": base64.b64encode(b"x" * 31).decode()}, "32-byte"),
        ({"public_key": "not base64!"}, "32-byte"),
        ({"public_key": None}, "32-byte"),
        ({"names_per_minute": 0}, "names_per_minute"),
        ({"names_per_minute": MAX_BUDGET + 1}, "names_per_minute"),
        ({"names_per_minute": True}, "names_per_minute"),
        ({"names_per_minute": 1.5}, "names_per_minute"),
        ({"names_per_day": -1}, "names_per_day"),
        ({"names_per_day": "100"}, "names_per_day"),
    ],
)
def test_a_bad_client_entry_is_refused_naming_its_field(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ClientPolicyError, match=message):
        parse_policy(document(entry(**overrides)))


def test_an_entry_with_a_missing_or_an_extra_field_is_refused() -> None:
    missing = entry()
    del missing["names_per_day"]
    with pytest.raises(ClientPolicyError, match="exactly id, public_key"):
        parse_policy(document(missing))
    with pytest.raises(ClientPolicyError, match="exactly id, public_key"):
        parse_policy(document(entry(role="admin")))


def test_two_clients_may_share_neither_an_id_nor_a_key() -> None:
    with pytest.raises(ClientPolicyError, match="same id"):
        parse_policy(document(entry("a"), entry("a")))
    shared = entry("a")
    with pytest.raises(ClientPolicyError, match="same public key"):
        parse_policy(document(shared, entry("b", public_key=shared["public_key"])))


def test_the_policy_is_bounded_in_clients_and_in_bytes() -> None:
    many = [entry(f"c{i}") for i in range(MAX_CLIENTS + 1)]
    with pytest.raises(ClientPolicyError):  # the byte bound or the count, whichever is first
        parse_policy(json.dumps({"clients": many}, separators=(",", ":")).encode())
    assert len(parse_policy(document(*many[:MAX_CLIENTS])).clients) == MAX_CLIENTS
    with pytest.raises(ClientPolicyError, match=f"more than {MAX_POLICY_BYTES}"):
        parse_policy(b" " * (MAX_POLICY_BYTES + 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_whatever_the_bytes_only_client_policy_error_leaves(data: bytes) -> None:
    try:
        parse_policy(data, require_canonical=True)
    except ClientPolicyError:
        pass


# -- the budgets ---------------------------------------------------------------------------


def client(per_minute: int = 60, per_day: int = 1000) -> Client:
    return Client("acme", raw_key(), per_minute, per_day)


def test_a_client_may_ask_a_minutes_names_at_once_then_waits_for_the_bucket() -> None:
    clock = Clock()
    budgets, acme = Budgets(clock=clock), client(per_minute=60)
    budgets.charge(acme, 60)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(acme, 1)
    assert refused.value.budget == "names_per_minute"
    assert refused.value.retry_after == 1  # one name a second comes back
    clock.now += 10  # ten names back
    budgets.charge(acme, 10)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(acme, 30)
    assert refused.value.retry_after == 30
    assert "retry after 30 s" in str(refused.value)


def test_a_refused_request_charges_nothing_and_is_counted_as_refused() -> None:
    clock = Clock()
    budgets, acme = Budgets(clock=clock), client(per_minute=10)
    budgets.charge(acme, 4)
    with pytest.raises(BudgetExceeded):
        budgets.charge(acme, 7)
    budgets.charge(acme, 6)  # the 7 were not taken
    [standing] = budgets.standings((acme,))
    assert (standing.answered, standing.refused, standing.minute_left) == (10, 7, 0)


def test_a_request_larger_than_a_budget_can_never_fit_and_says_split_it() -> None:
    budgets = Budgets(clock=Clock())
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(client(per_minute=100), 101)
    assert refused.value.retry_after is None
    assert "split" in str(refused.value)
    assert "Retry-After" not in budget_headers(refused.value)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(client(per_minute=1000, per_day=50), 51)
    assert (refused.value.budget, refused.value.retry_after) == ("names_per_day", None)


def test_the_bucket_never_holds_more_than_a_minutes_names() -> None:
    clock = Clock()
    budgets, acme = Budgets(clock=clock), client(per_minute=60, per_day=10**6)
    clock.now += 3600  # an idle hour refills one minute's worth, no more
    budgets.charge(acme, 60)
    with pytest.raises(BudgetExceeded):
        budgets.charge(acme, 1)


def test_the_day_is_rolling_names_leave_it_a_day_after_their_slot() -> None:
    clock = Clock(now=100 * SLOT_SECONDS)  # the start of a slot
    budgets, acme = Budgets(clock=clock), client(per_minute=1000, per_day=1500)
    budgets.charge(acme, 1000)
    clock.now += 3 * SLOT_SECONDS
    budgets.charge(acme, 500)
    clock.now += 600  # the minute bucket is full again; the day is not
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(acme, 1)
    assert refused.value.budget == "names_per_day"
    # The first 1000 leave 24 h after the end of the slot they were charged in.
    leaves_at = 101 * SLOT_SECONDS + DAY_SECONDS
    assert refused.value.retry_after == leaves_at - clock.now
    headers = budget_headers(refused.value)
    assert headers == {"Noflylist-Budget": "names_per_day",
                       "Retry-After": str(refused.value.retry_after)}  # fmt: skip
    clock.now = leaves_at - 1
    with pytest.raises(BudgetExceeded):
        budgets.charge(acme, 1)
    clock.now = leaves_at
    budgets.charge(acme, 1000)
    [standing] = budgets.standings((acme,))
    assert standing.day_left == 0


def test_a_refresh_that_changes_a_budget_applies_at_once_and_keeps_the_counters() -> None:
    clock = Clock()
    budgets = Budgets(clock=clock)
    small = client(per_minute=10, per_day=100)
    budgets.charge(small, 10)
    larger = Client(small.id, small.public_key, 1000, 100)
    clock.now += 1
    budgets.charge(larger, 16)  # refills at the new rate, from the old count
    [standing] = budgets.standings((larger,))
    assert standing.answered == 26
    assert standing.day_left == 74


def test_clients_have_budgets_of_their_own() -> None:
    budgets = Budgets(clock=Clock())
    a, b = Client("a", raw_key(), 5, 5), Client("b", raw_key(), 5, 5)
    budgets.charge(a, 5)
    budgets.charge(b, 5)
    with pytest.raises(BudgetExceeded):
        budgets.charge(a, 1)


def test_an_open_lists_global_budget_is_one_shared_bucket() -> None:
    budgets = Budgets(clock=Clock())
    shared = open_client(100)
    budgets.charge(shared, 60)
    budgets.charge(shared, 40)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(shared, 1)
    assert refused.value.budget == "names_per_minute"


def test_charges_from_many_threads_never_exceed_the_budget() -> None:
    budgets = Budgets(clock=Clock())
    acme = client(per_minute=500, per_day=500)
    taken: list[int] = []
    lock = threading.Lock()

    def ask() -> None:
        for _ in range(100):
            try:
                budgets.charge(acme, 1)
            except BudgetExceeded:
                continue
            with lock:
                taken.append(1)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 500
    [standing] = budgets.standings((acme,))
    assert (standing.answered, standing.refused) == (500, 300)


def test_no_24_hours_ever_hold_more_than_the_daily_budget() -> None:
    # Charged in the last second of a slot: those names still count 24 h later.
    clock = Clock(now=SLOT_SECONDS - 1)
    budgets, acme = Budgets(clock=clock), client(per_minute=1000, per_day=100)
    budgets.charge(acme, 100)
    for later in (DAY_SECONDS - 1, DAY_SECONDS):
        clock.now = SLOT_SECONDS - 1 + later
        with pytest.raises(BudgetExceeded):
            budgets.charge(acme, 1)
    clock.now = SLOT_SECONDS + DAY_SECONDS  # 24 h after the slot's end
    budgets.charge(acme, 100)


def test_a_request_refused_by_both_budgets_is_told_the_longer_wait() -> None:
    clock = Clock()
    budgets, acme = Budgets(clock=clock), client(per_minute=10, per_day=10)
    budgets.charge(acme, 10)  # both spent
    with pytest.raises(BudgetExceeded) as refused:
        budgets.charge(acme, 1)
    assert refused.value.budget == "names_per_day"
    assert refused.value.retry_after is not None and refused.value.retry_after > 60
    clock.now += 60  # the minute is back, the day is not
    with pytest.raises(BudgetExceeded) as again:
        budgets.charge(acme, 1)
    assert again.value.budget == "names_per_day"
    assert again.value.retry_after == refused.value.retry_after - 60
