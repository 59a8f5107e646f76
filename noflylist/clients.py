"""Who may ask, and how much: the client policy sealed with the list, and its budgets.

Asking is reading: a client that may screen names without limit reads the list out with a
dictionary. So the list's owner names, when sealing, the clients that may ask and how much
each may ask, and the policy travels inside the envelope (header field ``clients``,
authenticated with the list): neither the host nor whoever can write the bucket can add a
client or raise a budget (they can only offer an older envelope, which ``--require-clients``
refuses when it was sealed open). The owner's file, which ``noflylist seal --clients FILE`` reads::

    {"clients": [{"id": "acme-checkin", "public_key": "<base64 of the raw 32-byte Ed25519 key>",
                  "names_per_minute": 600, "names_per_day": 100000}]}

:func:`parse_policy` reads it strictly (one error type, bounded sizes) and gives the
:class:`ClientPolicy` with its canonical bytes, which are what the envelope carries and
what ``user_data``'s ``clients_sha256`` digests. In the enclave the envelope's bytes must
already be canonical, so one policy has exactly one digest.

:class:`Budgets` charges every name of a request before any is looked up: a token bucket a
client for names a minute (a burst of at most a minute's names, refilled continuously) and a
rolling day of :data:`DAY_SLOTS` ten-minute slots for names a day. Counters live in enclave
memory: a restart resets them (each restart is also a new attestation and answer key, which
clients see), and with N replicas a client's budget is per replica.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from enclave import strict_json
from enclave.errors import NoflylistError

__all__ = [
    "BudgetExceeded",
    "Budgets",
    "Client",
    "ClientPolicy",
    "ClientPolicyError",
    "Standing",
    "budget_headers",
    "canonical_policy",
    "open_client",
    "parse_policy",
]

#: Clients a policy may name: an airline's check-in systems number a handful to dozens.
MAX_CLIENTS = 200
#: Largest policy document: 200 clients of about 150 bytes each, with room to spare. The
#: envelope's header carries it as base64, inside v3's 64 KiB header line.
MAX_POLICY_BYTES = 32 * 1024
#: Largest budget, either kind: a billion names is more than any airline screens in a day.
MAX_BUDGET = 1_000_000_000
#: A client id: what ``keyid`` carries, and a label in ``/metrics``, so a short fixed alphabet.
CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: An Ed25519 public key (RFC 8032 section 5.1.5).
PUBLIC_KEY_BYTES = 32
#: The rolling day: 144 slots of ten minutes. Names charged in a slot count until 24 hours
#: after the slot's end, so 24 h to 24 h 10 min after they were charged: no 24 hours ever
#: hold more than the budget, and a day's names come back at most ten minutes late.
DAY_SLOTS = 144
SLOT_SECONDS = 600
DAY_SECONDS = DAY_SLOTS * SLOT_SECONDS
#: The global budget's name in messages and ``/metrics`` (an id no client may take).
OPEN_CLIENT = "(open)"
_CLIENT_FIELDS = ("id", "public_key", "names_per_minute", "names_per_day")
#: The policy is ``{"clients": [{...}, ...]}``: two levels of nesting below the top.
_POLICY_DEPTH = 3


class ClientPolicyError(NoflylistError):
    """The client policy is malformed; the message says which part and how to fix it."""


@dataclass(frozen=True)
class Client:
    """One client the owner registered: its id (the signature's ``keyid``), its raw Ed25519
    public key, and its two budgets in names."""

    id: str
    public_key: bytes = field(repr=False)
    names_per_minute: int
    names_per_day: int


@dataclass(frozen=True)
class ClientPolicy:
    """The clients of one sealed list, in the owner's order, and the policy's canonical bytes."""

    clients: tuple[Client, ...]
    canonical: bytes = field(repr=False)

    @property
    def sha256(self) -> bytes:
        """The digest bound into ``user_data`` as ``clients_sha256``."""
        return hashlib.sha256(self.canonical).digest()

    @functools.cached_property
    def public_keys(self) -> Mapping[str, bytes]:
        """Client id to raw public key, as :func:`noflylist.httpsig.verify_request` takes it."""
        return MappingProxyType({client.id: client.public_key for client in self.clients})

    def client(self, client_id: str) -> Client | None:
        """The client with this id, or ``None``."""
        return self._by_id.get(client_id)

    @functools.cached_property
    def _by_id(self) -> Mapping[str, Client]:
        return MappingProxyType({client.id: client for client in self.clients})


def parse_policy(document: bytes, *, require_canonical: bool = False) -> ClientPolicy:
    """Read a policy strictly; with ``require_canonical`` (the envelope's copy) the bytes must
    be exactly what :func:`canonical_policy` writes. Raises only :class:`ClientPolicyError`."""
    try:
        policy = _parse_policy(document)
    except ClientPolicyError:
        raise
    except Exception as exc:  # the boundary: whatever the bytes, only ClientPolicyError
        raise ClientPolicyError(
            f"the client policy could not be read ({type(exc).__name__}); write it as "
            '{"clients": [{"id", "public_key", "names_per_minute", "names_per_day"}]}'
        ) from None
    if require_canonical and policy.canonical != bytes(document):
        raise ClientPolicyError(
            "the sealed client policy is not in canonical form; seal it with noflylist seal"
        )
    return policy


def canonical_policy(clients: tuple[Client, ...]) -> bytes:
    """Sorted keys, no spaces, ASCII: one byte string, so one digest, per policy."""
    value = {
        "clients": [
            {
                "id": client.id,
                "names_per_day": client.names_per_day,
                "names_per_minute": client.names_per_minute,
                "public_key": base64.b64encode(client.public_key).decode("ascii"),
            }
            for client in clients
        ]
    }
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _parse_policy(document: bytes) -> ClientPolicy:
    if len(document) > MAX_POLICY_BYTES:
        raise ClientPolicyError(
            f"the client policy is {len(document)} bytes, more than {MAX_POLICY_BYTES}"
        )
    try:
        value = strict_json.loads(document, max_bytes=MAX_POLICY_BYTES, max_depth=_POLICY_DEPTH)
    except strict_json.JSONError as exc:
        raise ClientPolicyError(f"the client policy is not JSON that this reads: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"clients"}:
        raise ClientPolicyError('the client policy must be an object {"clients": [...]}')
    entries = value["clients"]
    if not isinstance(entries, list) or not entries:
        raise ClientPolicyError(
            '"clients" must be a non-empty list (to serve a list open, seal it without --clients)'
        )
    if len(entries) > MAX_CLIENTS:
        raise ClientPolicyError(f"the client policy names more than {MAX_CLIENTS} clients")
    clients = tuple(_client(entry, f"clients[{index}]") for index, entry in enumerate(entries))
    ids = [client.id for client in clients]
    if len(set(ids)) != len(ids):
        raise ClientPolicyError("two clients have the same id; give each client its own id")
    keys = [client.public_key for client in clients]
    if len(set(keys)) != len(keys):
        raise ClientPolicyError(
            "two clients have the same public key; make each client its own key "
            "(noflylist client-key new)"
        )
    return ClientPolicy(clients, canonical_policy(clients))


def _client(entry: Any, where: str) -> Client:
    if not isinstance(entry, dict) or set(entry) != set(_CLIENT_FIELDS):
        fields = ", ".join(_CLIENT_FIELDS)
        raise ClientPolicyError(f"{where} must be an object with exactly {fields}")
    client_id = entry["id"]
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise ClientPolicyError(f"{where}.id must be 1 to 64 of A-Z a-z 0-9 . _ -")
    public_key = entry["public_key"]
    try:
        raw = base64.b64decode(public_key, validate=True) if isinstance(public_key, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ClientPolicyError(
            f"{where}.public_key must be the base64 of a raw 32-byte Ed25519 public key "
            "(noflylist client-key new writes it)"
        )
    budgets = []
    for name in ("names_per_minute", "names_per_day"):
        budget = entry[name]
        if type(budget) is not int or not 1 <= budget <= MAX_BUDGET:
            raise ClientPolicyError(f"{where}.{name} must be an integer in 1..{MAX_BUDGET}")
        budgets.append(budget)
    return Client(client_id, raw, budgets[0], budgets[1])


# -- budgets --------------------------------------------------------------------------------


class BudgetExceeded(NoflylistError):
    """A request asks for more names than a budget has left; nothing was charged.

    ``budget`` is ``"names_per_minute"`` or ``"names_per_day"``; ``retry_after`` the whole
    seconds until the request would fit (at least 1), or ``None`` when it never can (more
    names in one request than the budget holds).
    """

    def __init__(self, budget: str, retry_after: int | None, message: str) -> None:
        super().__init__(message)
        self.budget = budget
        self.retry_after = retry_after


@dataclass
class _Account:
    """One client's counters: the minute bucket's tokens, the day's slots, the totals."""

    tokens: float
    refilled_at: float
    #: slot number (time // SLOT_SECONDS) -> names charged in it: this slot and the
    #: DAY_SLOTS before it, the ones whose names still count.
    slots: dict[int, int] = field(default_factory=dict)
    answered: int = 0
    refused: int = 0


@dataclass(frozen=True)
class Standing:
    """What ``/metrics`` shows of one client: names answered, refused, and budget left."""

    client_id: str
    answered: int
    refused: int
    minute_left: int
    day_left: int


class Budgets:
    """Every client's budgets, thread-safe (the loop and worker threads charge them).

    :meth:`charge` takes a :class:`Client` (its limits are the sealed policy's of the list in
    service, so a refresh that changes a budget applies at once, counters kept) and the
    number of names in the request; it charges both budgets or neither.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    def charge(self, client: Client, names: int) -> None:
        """Charge ``names`` to ``client``, or raise :class:`BudgetExceeded` and charge none."""
        with self._lock:
            now = self._clock()
            account = self._account(client, now)
            refusals = [
                refusal
                for refusal in (
                    self._check_minute(client, account, names),
                    self._check_day(client, account, names, now),
                )
                if refusal is not None
            ]
            if refusals:
                account.refused += names
                # The one to wait for: a budget the request never fits, else the longer wait.
                raise max(refusals, key=lambda r: math.inf if r.retry_after is None
                          else r.retry_after)  # fmt: skip
            account.tokens -= names
            slot = int(now // SLOT_SECONDS)
            account.slots[slot] = account.slots.get(slot, 0) + names
            account.answered += names

    def standings(self, policy_clients: tuple[Client, ...]) -> list[Standing]:
        """Each client's counters and budget left now, in the policy's order."""
        with self._lock:
            now = self._clock()
            result = []
            for client in policy_clients:
                account = self._account(client, now)
                used_today = sum(account.slots.values())
                result.append(
                    Standing(
                        client.id,
                        account.answered,
                        account.refused,
                        int(account.tokens),
                        max(0, client.names_per_day - used_today),
                    )
                )
            return result

    def _account(self, client: Client, now: float) -> _Account:
        """The client's account, its bucket refilled and its day's old slots dropped."""
        account = self._accounts.get(client.id)
        if account is None:
            account = self._accounts[client.id] = _Account(float(client.names_per_minute), now)
        rate = client.names_per_minute / 60.0
        elapsed = max(0.0, now - account.refilled_at)
        account.tokens = min(float(client.names_per_minute), account.tokens + elapsed * rate)
        account.refilled_at = now
        oldest = int(now // SLOT_SECONDS) - DAY_SLOTS
        for slot in [slot for slot in account.slots if slot < oldest]:
            del account.slots[slot]
        return account

    @staticmethod
    def _check_minute(client: Client, account: _Account, names: int) -> BudgetExceeded | None:
        """The minute's refusal of this request, or ``None`` if it fits."""
        limit = client.names_per_minute
        if names > limit:
            return BudgetExceeded(
                "names_per_minute",
                None,
                f"over budget: names_per_minute; this request asks for {names} names and the "
                f"budget is {limit} a minute: split it into requests of at most {limit}",
            )
        if account.tokens >= names:
            return None
        wait = math.ceil((names - account.tokens) / (limit / 60.0))
        return BudgetExceeded(
            "names_per_minute",
            max(1, wait),
            f"over budget: names_per_minute ({limit} names a minute); retry after {max(1, wait)} s",
        )

    @staticmethod
    def _check_day(
        client: Client, account: _Account, names: int, now: float
    ) -> BudgetExceeded | None:
        """The day's refusal of this request, or ``None`` if it fits."""
        limit = client.names_per_day
        if names > limit:
            return BudgetExceeded(
                "names_per_day",
                None,
                f"over budget: names_per_day; this request asks for {names} names and the "
                f"budget is {limit} a day: split it",
            )
        used = sum(account.slots.values())
        if used + names <= limit:
            return None
        # The oldest slots leave the rolling day first: wait until enough of them have.
        freed = 0
        for slot in sorted(account.slots):
            freed += account.slots[slot]
            if used - freed + names <= limit:
                leaves_at = (slot + 1 + DAY_SLOTS) * SLOT_SECONDS  # 24 h after the slot ends
                wait = max(1, math.ceil(leaves_at - now))
                break
        else:  # unreachable: freeing every slot leaves names <= limit
            wait = DAY_SECONDS
        return BudgetExceeded(
            "names_per_day",
            wait,
            f"over budget: names_per_day ({limit} names in any 24 hours); retry after {wait} s",
        )


def open_client(names_per_minute: int) -> Client:
    """The pseudo-client an open list's global budget (``--max-names-per-minute``) is charged to:
    every request, whoever sends it, shares it. No key: an open list checks no signature."""
    return Client(OPEN_CLIENT, b"", names_per_minute, MAX_BUDGET)


def budget_headers(exc: BudgetExceeded) -> Mapping[str, str]:
    """The 429's headers: ``Retry-After`` (RFC 9110 section 10.2.3) when waiting helps, and
    which budget ran out."""
    headers = {"Noflylist-Budget": exc.budget}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return headers
