"""The list in memory: keyed digests of match keys, looked up in fixed work.

The decision itself (admit, key, look up, fail closed) is :mod:`noflylist.decision`; this is
the table it looks names up in. It has no I/O: the list arrives as an iterable of names
(already decrypted elsewhere).

What an auditor should be able to check here:

* **Match keys** are :func:`noflylist.matchkey.keys`, under the rule the table is built with
  (recorded in it, :attr:`ScreeningTable.rule`), used both for list entries here at load and
  for queries in :func:`noflylist.decision.decide`, so the two can never disagree. Every key
  of every listed name is stored (fold-1: up to four a name, most names give one or two).
* **No plaintext is kept.** :class:`ScreeningTable` stores only 16-byte keyed BLAKE2b digests
  ("fingerprints") under a random key, held only in memory and never returned, printed or
  serialised. After :meth:`ScreeningTable.build` returns, the table references no name. The
  key is made for this process, or, for an envelope v3, by the sealer, who built the table
  from the names it holds anyway (:func:`build_parts`), and sealed key and slots together:
  :meth:`ScreeningTable.from_sealed` checks that table's structure and serves it as it is.
* **Every lookup does the same work** whether the name is listed, absent or one letter away
  from a listed name: for each of the rule's keys (a fixed number,
  :data:`noflylist.matchkey.KEYS_PER_NAME`), one keyed hash, then exactly eight
  :func:`hmac.compare_digest` calls against the eight fixed-size slots of the key's two
  candidate buckets, counted without an early exit. (Python promises no cycle-exact timing;
  the point is that no code path depends on membership. ``bench/bench_screening.py`` and
  ``bench/bench_timing.py`` measure it.)
* **Compact.** The slots live in one ``bytes`` buffer (a bucketed cuckoo table, 2 buckets x 4
  slots), about 18 bytes a stored key; a Python ``set`` of the names takes about 100
  (``bench/README.md`` has the measurements).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from enclave.errors import NoflylistError
from noflylist import matchkey
from noflylist.matchkey import normalize as normalize  # re-exported: the exact rule's key

#: BLAKE2b key length: 256 bits, so nobody can recompute a fingerprint without the key.
_KEY_BYTES = 32
#: Fingerprint length. One bit is the "occupied" flag, so 127 bits are random: the chance that
#: an unlisted name matches one of the 8 slots it is compared with is at most 8 / 2**127.
_FINGERPRINT_BYTES = 16
#: The two halves of a fingerprint, as the bits of one little-endian number.
_HALF_BITS = _FINGERPRINT_BYTES * 4
_HALF_MASK = (1 << _HALF_BITS) - 1
#: Marks a slot as occupied: every real fingerprint has this bit set in its first byte.
_OCCUPIED_FLAG = 0x80
#: An empty slot is all zero bytes. It can never equal a real fingerprint, whose first byte
#: always has _OCCUPIED_FLAG set; so empty slots need no separate bookkeeping at lookup.
_EMPTY_SLOT = bytes(_FINGERPRINT_BYTES)
#: Slots per bucket; 4 x 16 bytes = one 64-byte cache line. (ScreeningTable.contains_any
#: writes the four comparisons out: change it with these.)
_SLOTS_PER_BUCKET = 4
_BUCKET_BYTES = _SLOTS_PER_BUCKET * _FINGERPRINT_BYTES
#: Fill the table to at most 90 %. Two-choice, four-slot cuckoo tables fill to about 97 %
#: before insertion fails, so this leaves margin while costing about 17.8 bytes a name.
_TARGET_LOAD = 0.90
#: Listed or not, by the number of slots that matched in a lookup of one or more keys: a
#: fingerprint is stored once, so each key matches 0 or 1 slots, or 2 when both of its
#: candidate buckets are the same bucket.
_MAX_KEYS = max(matchkey.KEYS_PER_NAME.values())
_LISTED_FOR_MATCHES = (False,) + (True,) * (2 * _MAX_KEYS)
#: Bound on one insertion's chain of evictions; a longer chain means "rebuild".
_MAX_KICKS = 500
#: Bound on rebuilds (each with 10 % more buckets) before giving up.
_MAX_BUILD_ATTEMPTS = 32
_GROWTH_PER_ATTEMPT = 1.10
#: First bytes of occupied slots (the flag set), deleted to count the rest.
_FLAGGED_BYTES = bytes(range(_OCCUPIED_FLAG, 256))
#: A slot's first byte to 0xff if the slot is empty (no flag), to 0x00 if it is occupied.
_EMPTY_MASK = bytes(0xFF if b < _OCCUPIED_FLAG else 0 for b in range(256))
#: How many buckets of a sealed table have their placement checked (spread evenly).
_PLACEMENT_SAMPLE_BUCKETS = 4096


class ScreeningError(NoflylistError):
    """The screening table could not be built."""


def _fingerprint(key: bytes, normalised: str) -> bytes:
    """Keyed BLAKE2b of the normalised name, with the occupied flag set.

    ``surrogatepass`` gives every ``str`` (even one with a lone surrogate) one distinct
    encoding, so hashing cannot raise and two different names cannot share an input.
    """
    digest = hashlib.blake2b(
        normalised.encode("utf-8", "surrogatepass"), key=key, digest_size=_FINGERPRINT_BYTES
    ).digest()
    return bytes((digest[0] | _OCCUPIED_FLAG,)) + digest[1:]


def _candidate_buckets(fingerprint: bytes, buckets: int) -> tuple[int, int]:
    """The two buckets a fingerprint may live in, taken from its own two halves.

    Deriving both from the stored fingerprint lets insertion move an entry to its other
    bucket without knowing the name. The two may coincide; a lookup then compares that bucket
    twice, which keeps the work the same.
    """
    # One conversion: the low 64 bits of the little-endian number are the first half's
    # value, the high 64 bits the second half's.
    value = int.from_bytes(fingerprint, "little")
    return (value & _HALF_MASK) % buckets, (value >> _HALF_BITS) % buckets


def _buckets_for(entries: int) -> int:
    """Number of buckets that holds ``entries`` at no more than the target load."""
    return max(1, math.ceil(entries / (_SLOTS_PER_BUCKET * _TARGET_LOAD)))


def _find_in_bucket(slots: bytearray, bucket: int, value: bytes) -> int:
    """Offset in ``slots`` of the first slot of ``bucket`` that equals ``value``, or -1.

    ``find`` runs in C; a match that straddles two slots is not a slot and is skipped.
    """
    start = bucket * _BUCKET_BYTES
    end = start + _BUCKET_BYTES
    offset = slots.find(value, start, end)
    while offset >= 0 and (offset - start) % _FINGERPRINT_BYTES:
        offset = slots.find(value, offset + 1, end)
    return offset


def _place_in_free_slot(slots: bytearray, bucket: int, fingerprint: bytes) -> bool:
    """Write ``fingerprint`` into the first empty slot of ``bucket``; False if it is full."""
    offset = _find_in_bucket(slots, bucket, _EMPTY_SLOT)
    if offset < 0:
        return False
    slots[offset : offset + _FINGERPRINT_BYTES] = fingerprint
    return True


def _insert(
    slots: bytearray, buckets: int, fingerprint: bytes, rng: random.Random
) -> bool | None:
    """Cuckoo insertion with a bounded random walk.

    True if placed, None if the fingerprint is already in the table (a repeated name),
    False if the walk ran out ("rebuild the table"). A repeated name has the same
    fingerprint, so the same two buckets, and cuckoo moves keep every entry in one of its
    own two buckets: looking in those two finds every repeat.

    Runs at load only, so its time may vary. On failure one fingerprint is left out, which
    is harmless because the caller discards this buffer and starts again.
    """
    first, second = _candidate_buckets(fingerprint, buckets)
    if _find_in_bucket(slots, first, fingerprint) >= 0:
        return None
    if _find_in_bucket(slots, second, fingerprint) >= 0:
        return None
    if _place_in_free_slot(slots, first, fingerprint):
        return True
    if _place_in_free_slot(slots, second, fingerprint):
        return True
    bucket = rng.choice((first, second))
    for _ in range(_MAX_KICKS):
        offset = bucket * _BUCKET_BYTES + rng.randrange(_SLOTS_PER_BUCKET) * _FINGERPRINT_BYTES
        evicted = bytes(slots[offset : offset + _FINGERPRINT_BYTES])
        slots[offset : offset + _FINGERPRINT_BYTES] = fingerprint
        fingerprint = evicted
        evicted_first, evicted_second = _candidate_buckets(fingerprint, buckets)
        bucket = evicted_second if bucket == evicted_first else evicted_first
        if _place_in_free_slot(slots, bucket, fingerprint):
            return True
    return False


def _place_all(
    slots: bytearray, buckets: int, fingerprints: bytearray, groups: bytes, rng: random.Random
) -> tuple[int, int] | None:
    """Insert every fingerprint once; the numbers of distinct names and of distinct
    fingerprints, or None to rebuild.

    ``groups`` holds, for each name in turn, how many of the fingerprints are its keys; a
    name is distinct if one of its keys was not in the table yet (a repeat of a name, or a
    name whose every key another name already gave, adds nothing)."""
    names = placed_count = 0
    start = 0
    for count in groups:
        new = False
        for _ in range(count):
            fingerprint = bytes(fingerprints[start : start + _FINGERPRINT_BYTES])
            start += _FINGERPRINT_BYTES
            placed = _insert(slots, buckets, fingerprint, rng)
            if placed is False:
                return None
            new = new or placed is True
            placed_count += placed is True
        names += new
    return names, placed_count


class TableParts(NamedTuple):
    """What a table is made of: its key, its slots and its counts (:func:`build_parts`).

    Only the sealer (``noflylist seal --format v3``) holds one, to seal it; the service's
    own tables keep their key to themselves (:class:`ScreeningTable`)."""

    key: bytes
    slots: bytes
    entries: int
    stored_keys: int
    skipped_empty: int


def build_parts(names: Iterable[str], rule: str) -> TableParts:
    """Key ``names`` under ``rule`` and place their fingerprints under a fresh random key
    (:meth:`ScreeningTable.build` says how)."""
    key = secrets.token_bytes(_KEY_BYTES)
    fingerprints = bytearray()
    groups = bytearray()  # how many keys each name gave (1 to 4)
    skipped_empty = 0
    for number, name in enumerate(names, 1):
        try:
            keyed = matchkey.keys(name, rule)
        except matchkey.MatchKeyError as exc:
            raise ScreeningError(
                f"the list's entry {number} {exc}; correct the list and seal it again "
                f"(or serve it with --match {matchkey.EXACT}, which keeps today's rule)"
            ) from None
        distinct = [k for k in dict.fromkeys(keyed.keys) if k]
        if not distinct:
            skipped_empty += 1
            continue
        for one in distinct:
            fingerprints += _fingerprint(key, one)
        groups.append(len(distinct))
    # Placement choices are not secrets; they only need to differ between attempts.
    rng = random.Random(secrets.randbits(64))  # noqa: S311
    # Sized for every fingerprint: repeats are found only while placing.
    stored = len(fingerprints) // _FINGERPRINT_BYTES
    buckets = _buckets_for(stored)
    for _ in range(_MAX_BUILD_ATTEMPTS):
        slots = bytearray(buckets * _BUCKET_BYTES)
        counts = _place_all(slots, buckets, fingerprints, bytes(groups), rng)
        if counts is not None:
            entries, occupied = counts
            return TableParts(key, bytes(slots), entries, occupied, skipped_empty)
        buckets = max(buckets + 1, math.ceil(buckets * _GROWTH_PER_ATTEMPT))
    raise ScreeningError(
        f"could not place {stored} fingerprints after "
        f"{_MAX_BUILD_ATTEMPTS} attempts; this indicates a bug in noflylist.table, "
        "please report it"
    )


def _most_buckets(stored_keys: int) -> int:
    """The most buckets a build of ``stored_keys`` fingerprints can end with: the first
    size grown by every attempt :func:`build_parts` makes."""
    buckets = _buckets_for(stored_keys)
    for _ in range(_MAX_BUILD_ATTEMPTS - 1):
        buckets = max(buckets + 1, math.ceil(buckets * _GROWTH_PER_ATTEMPT))
    return buckets


def _check_sealed(buffer: bytearray, start: int, end: int, entries: int, stored_keys: int
                  ) -> None:  # fmt: skip
    """The structure checks of :meth:`ScreeningTable.from_sealed`, on ``buffer[start:end]``."""
    size = end - start - _KEY_BYTES
    if not 0 <= start <= end <= len(buffer) or size < _BUCKET_BYTES or size % _BUCKET_BYTES:
        raise ScreeningError(
            f"the sealed table is {end - start} bytes: not a {_KEY_BYTES}-byte key and "
            f"whole {_BUCKET_BYTES}-byte buckets"
        )
    buckets = size // _BUCKET_BYTES
    most_keys = entries * _MAX_KEYS
    if not (entries <= stored_keys <= most_keys) or (stored_keys == 0) != (entries == 0):
        raise ScreeningError(
            f"the sealed table says {entries} names and {stored_keys} keys: a name has 1 to "
            f"{_MAX_KEYS} keys"
        )
    if buckets > _most_buckets(stored_keys):
        raise ScreeningError(
            f"the sealed table has {buckets} buckets for {stored_keys} keys, more than any "
            f"build makes ({_most_buckets(stored_keys)})"
        )
    # Strided slices of the bytearray itself (a C loop each): a strided memoryview's
    # tobytes() takes a generic path, about 25 ms a column at 2M names.
    slots = start + _KEY_BYTES  # where the slots begin in buffer
    first = bytes(buffer[slots:end:_FINGERPRINT_BYTES])  # each slot's first byte
    occupied = len(first) - len(first.translate(None, _FLAGGED_BYTES))
    if occupied != stored_keys:
        raise ScreeningError(
            f"the sealed table has {occupied} occupied slots; its header says "
            f"{stored_keys} keys"
        )
    # 0xff for an empty slot (first byte without the flag), 0x00 for an occupied one:
    # every byte of an empty slot ANDed with it must be zero.
    empty = int.from_bytes(first.translate(_EMPTY_MASK), "little")
    for column in range(_FINGERPRINT_BYTES):
        if int.from_bytes(buffer[slots + column : end : _FINGERPRINT_BYTES], "little") & empty:
            raise ScreeningError(
                "the sealed table has a slot that is neither empty (all zero) nor "
                "flagged as occupied"
            )
    stride = max(1, buckets // _PLACEMENT_SAMPLE_BUCKETS)
    for bucket in range(0, buckets, stride):
        first_slot = slots + bucket * _BUCKET_BYTES
        for at in range(first_slot, first_slot + _BUCKET_BYTES, _FINGERPRINT_BYTES):
            fingerprint = bytes(buffer[at : at + _FINGERPRINT_BYTES])
            if fingerprint[0] & _OCCUPIED_FLAG and bucket not in _candidate_buckets(
                fingerprint, buckets
            ):
                raise ScreeningError(
                    f"the sealed table has a fingerprint in bucket {bucket}, which is "
                    "not one of its two: the sealer placed it wrong"
                )


class ScreeningTable:
    """A set of listed names, held only as keyed fingerprints of their match keys in one
    compact buffer.

    Make one with :meth:`build`; it cannot change afterwards.
    """

    __slots__ = ("_buckets", "_entries", "_key", "_keys", "_rule", "_skipped_empty", "_slots")

    def __init__(
        self,
        key: bytes,
        slots: bytes | memoryview,
        entries: int,
        skipped_empty: int,
        *,
        rule: int,
        keys: int,
    ) -> None:
        self._key = key
        self._slots = slots
        self._buckets = len(slots) // _BUCKET_BYTES
        self._entries = entries
        self._skipped_empty = skipped_empty
        #: The rule's index in matchkey.RULES: an int, so the table references no text.
        self._rule = rule
        self._keys = keys

    @classmethod
    def build(cls, names: Iterable[str], rule: str = matchkey.DEFAULT_RULE) -> ScreeningTable:
        """Key ``names`` under ``rule`` and store the keys' fingerprints under a fresh random
        key.

        Names without a key (empty, or only punctuation or spaces) are skipped and counted;
        a key two names share is stored once. If an insertion exceeds its eviction bound,
        the table is built again with 10 % more buckets. A name the rule cannot read (a
        symbol in it, under fold-1) fails the build: :class:`ScreeningError` says which
        entry and which character, never the name.

        ``names`` is read once, one name at a time, and each name is reduced to its 16-byte
        fingerprints at once: no set or list of names is ever made. That keeps the load's
        memory to flat buffers (the fingerprints, a byte a name, then the table) which the
        allocator returns to the system when they are freed; millions of small string
        objects would stay in Python's own allocator, resident, long after the load
        (``bench/README.md``).
        """
        rule_index = matchkey.RULES.index(rule)
        parts = build_parts(names, rule)
        return cls(parts.key, parts.slots, parts.entries, parts.skipped_empty, rule=rule_index,
                   keys=parts.stored_keys)  # fmt: skip

    @classmethod
    def from_sealed(
        cls,
        buffer: bytearray,
        *,
        start: int = 0,
        end: int | None = None,
        rule: str,
        entries: int,
        stored_keys: int,
        skipped_empty: int,
    ) -> ScreeningTable:
        """The table an envelope v3 carries: ``buffer[start:end]`` is its key and then its
        slots (:func:`build_parts`, as ``noflylist seal`` wrote them), served in place, no
        copy (the envelope module decrypts it inside the document's own buffer).

        The sealer built it, so nothing is keyed here and no listed name is ever in clear in
        the enclave. What is checked, since a buggy or foreign sealer (not an attacker: the
        envelope is authenticated before this runs) could write a table that clears listed
        names: the sizes (a key, then whole buckets); the count of occupied slots, which
        must be the header's ``stored_keys``; that every empty slot is all zero (a slot is
        empty or has the occupied flag, nothing between); the load (no more buckets than a
        build that grew :data:`_MAX_BUILD_ATTEMPTS` times would use, no more than four keys
        a name); and, for the occupied slots of up to :data:`_PLACEMENT_SAMPLE_BUCKETS`
        buckets spread over the table, that each sits in one of its own two buckets. All in
        C loops (slices, ``translate``, big-integer ``&``): at 2M names about 0.1 s.
        Raises :class:`ScreeningError` naming the check.
        """
        end = len(buffer) if end is None else end
        _check_sealed(buffer, start, end, entries, stored_keys)
        key = bytes(buffer[start : start + _KEY_BYTES])
        slots = memoryview(buffer)[start + _KEY_BYTES : end]
        return cls(key, slots, entries, skipped_empty, rule=matchkey.RULES.index(rule),
                   keys=stored_keys)  # fmt: skip

    @property
    def rule(self) -> str:
        """The match rule the table was built under (:data:`noflylist.matchkey.RULES`)."""
        return matchkey.RULES[self._rule]

    def contains(self, name: str) -> bool:
        """True if a key of ``name`` under the table's rule is listed (for tools and tests;
        the service asks through :func:`noflylist.decision.decide`, which keys once).
        Raises :class:`noflylist.matchkey.MatchKeyError` for a name the rule cannot read."""
        return self.contains_any(matchkey.keys(name, self.rule).keys)

    def contains_any(self, keys: Sequence[str]) -> bool:
        """True if any of ``keys``, match keys under :attr:`rule`, is listed.

        Always ``len(keys)`` hashes and exactly ``len(keys)`` x 2 x 4 ``hmac.compare_digest``
        calls, counted: no early exit, not after a match either, and empty slots are compared
        like full ones. The caller passes the rule's fixed number of keys, repeats included.
        """
        # An int count, not `found |= ...`: each `|` of Python bools builds its result
        # through a branch in C, so after a match every later `|` would take the rarer
        # branch; adding to an int and indexing a tuple with it do the same work for 0 and 1.
        matches = 0
        slots, buckets, key, same = self._slots, self._buckets, self._key, hmac.compare_digest
        for one in keys:
            fingerprint = _fingerprint(key, one)
            for bucket in _candidate_buckets(fingerprint, buckets):
                # The bucket's four slots, written out: one loop level less per look-up.
                at = bucket * _BUCKET_BYTES
                matches += (
                    same(slots[at : at + 16], fingerprint)
                    + same(slots[at + 16 : at + 32], fingerprint)
                    + same(slots[at + 32 : at + 48], fingerprint)
                    + same(slots[at + 48 : at + 64], fingerprint)
                )
        return _LISTED_FOR_MATCHES[matches]

    def contains_normalised(self, normalised: str) -> bool:
        """True if the one key ``normalised`` is listed: under the ``exact`` rule, a name
        already passed through :func:`noflylist.matchkey.normalize`. One hash and exactly
        2 x 4 = 8 ``hmac.compare_digest`` calls (:meth:`contains_any`)."""
        return self.contains_any((normalised,))

    def __len__(self) -> int:
        """Number of distinct listed names: names with a key no earlier name gave."""
        return self._entries

    @property
    def stored_keys(self) -> int:
        """How many fingerprints the table holds (distinct keys of every listed name)."""
        return self._keys

    @property
    def skipped_empty(self) -> int:
        """How many input names normalised to the empty string and were left out."""
        return self._skipped_empty

    @property
    def nbytes(self) -> int:
        """Size of the fingerprint buffer in bytes (the table's bulk memory)."""
        return len(self._slots)

    def __repr__(self) -> str:
        return (
            f"ScreeningTable(entries={self._entries}, keys={self._keys}, "
            f"buckets={self._buckets}, rule={self.rule})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            "a ScreeningTable holds this process's secret key and is never serialised; "
            "build a new one from the list instead"
        )
