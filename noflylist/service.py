"""The list in service: load it, screen against it, replace it without a restart.

A new envelope is fetched, decrypted and built into a complete table *before* one
reference assignment swaps it in, so a query sees either the old list or the new one,
never half of one. If anything fails, the old list stays in service and the failure is
logged and counted. An envelope whose serial is lower than the one in service is refused:
nobody can roll the service back to an older list by replaying an older envelope.

Until the first list is loaded, :meth:`ListHolder.screen` returns ``None`` and the HTTP
layer answers 503: the service never says "cleared" without a list.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from enclave.errors import EnclaveError
from noflylist import envelope
from noflylist.metrics import Metrics
from noflylist.screening import ScreeningTable
from noflylist.sources import Source

log = logging.getLogger(__name__)

#: The event counter for list loads, by outcome (loaded, unchanged, failed, refused).
LOADS = "noflylist_list_loads_total"


class RollbackError(EnclaveError):
    """The envelope is older than the list in service."""


@dataclass(frozen=True)
class ListInService:
    """One loaded list. Nothing here is secret: the table holds only keyed digests."""

    table: ScreeningTable
    serial: int
    format: str
    envelope_sha256: bytes
    loaded_at: float
    #: The source's version of the envelope in service (ETag, digest): polls ask for changes
    #: relative to it, so an envelope that failed to load is tried again at the next poll.
    source_version: str = ""

    @property
    def entries(self) -> int:
        return len(self.table)


class ListHolder:
    """Owns the list in service. ``screen`` is lock-free; loads are serialised by a lock."""

    def __init__(
        self,
        source: Source,
        decryptor: envelope.DataKeyDecryptor,
        metrics: Metrics,
        *,
        pinned_key_id: str | None = None,
    ) -> None:
        self.source = source
        self._pinned_key_id = pinned_key_id
        self._decryptor = decryptor
        self._metrics = metrics
        self._load_lock = threading.Lock()
        self.current: ListInService | None = None
        self.last_error: str | None = "no list loaded yet"
        use_returnable_memory()  # before the first load: see its docstring
        metrics.gauges["noflylist_list_entries"] = (
            "Distinct names in the list in service.",
            lambda: float(self.current.entries if self.current else 0),
        )
        metrics.gauges["noflylist_list_serial"] = (
            "Serial of the envelope in service (0 for the fernet format).",
            lambda: float(self.current.serial if self.current else -1),
        )
        metrics.gauges["noflylist_list_loaded_timestamp_seconds"] = (
            "When the list in service was loaded (Unix time).",
            lambda: self.current.loaded_at if self.current else 0.0,
        )

    def screen(self, name: str) -> bool | None:
        """Is ``name`` listed? ``None`` while no list is loaded (fail closed)."""
        current = self.current  # one read: a concurrent swap cannot split this lookup
        if current is None:
            return None
        return current.table.contains(name)

    def reload(self, *, only_if_changed: bool) -> bool:
        """Fetch, check, decrypt and swap in the envelope; ``True`` if a new list is in service.

        Raises the cause on failure (after logging and counting it); the list in service,
        if any, stays.
        """
        with self._load_lock:
            try:
                loaded = self._load(only_if_changed=only_if_changed)
            except EnclaveError as exc:
                self._metrics.count(
                    LOADS, "refused" if isinstance(exc, RollbackError) else "failed"
                )
                self.last_error = str(exc)
                keeping = "keeping the list in service" if self.current else "no list in service"
                log.error(
                    "loading the envelope from %s failed: %s (%s)",
                    self.source.description,
                    exc,
                    keeping,
                )
                raise
            if loaded is None:
                self._metrics.count(LOADS, "unchanged")
                return False
            self.current = loaded
            self.last_error = None
            _return_freed_memory()
            self._metrics.count(LOADS, "loaded")
            log.info(
                "list in service: %d entries, serial %d, %s format, envelope sha256 %s, from %s",
                loaded.entries,
                loaded.serial,
                loaded.format,
                loaded.envelope_sha256.hex()[:16],
                self.source.description,
            )
            return True

    def _load(self, *, only_if_changed: bool) -> ListInService | None:
        started = time.monotonic()
        current = self.current
        in_service = current.source_version if (only_if_changed and current) else None
        fetched = self.source.fetch(unless_version=in_service)
        if fetched is None:
            return None
        data = fetched.data
        digest = hashlib.sha256(data).digest()
        if current is not None and digest == current.envelope_sha256:
            return None
        parsed = envelope.parse(data)
        _check_not_older(parsed, current)
        names = envelope.decrypt(parsed, self._decryptor, pinned_key_id=self._pinned_key_id)
        table = ScreeningTable.build(names)
        del names
        log.info("envelope decrypted and table built in %.2f s", time.monotonic() - started)
        return ListInService(
            table, parsed.serial, parsed.format, digest, time.time(), fetched.version
        )


#: glibc's ``mallopt`` parameter number for the mmap threshold (``M_MMAP_THRESHOLD``).
_M_MMAP_THRESHOLD = -3
#: glibc's default mmap threshold. Setting it explicitly (even to the default) turns off
#: glibc's habit of raising it after a large block is freed.
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc (it has ``malloc_trim``); None elsewhere."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def use_returnable_memory() -> None:
    """Have glibc give large freed blocks back to the kernel at once. Called once at start.

    A load makes a few buffers of tens of MiB (the decrypted list, the fingerprints, the
    table). By default glibc raises its mmap threshold each time such a block is freed (up
    to 32 MiB), so the next ones come from a heap; in a thread's heap (reloads run on a
    thread) freed memory at the top stays resident, and ``malloc_trim`` does not shrink
    it: about 9 bytes a name at 2M names. A fixed threshold keeps such blocks in their own
    mappings, which ``free`` returns (zeroed by the kernel) at once.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def _return_freed_memory() -> None:
    """Ask glibc to give freed heap pages back to the kernel after a load.

    Decrypting and building leave freed blocks that glibc keeps for reuse: they inflate
    resident memory per entry and keep fragments of listed names readable in the process's
    free memory until overwritten. ``malloc_trim(0)`` releases what it can; elsewhere than
    glibc this does nothing.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _check_not_older(parsed: envelope.Envelope, current: ListInService | None) -> None:
    """Refuse rollback: a changed v2 envelope must carry a higher serial than the one in use."""
    if current is None:
        return
    if parsed.format == envelope.FORMAT_V2 and parsed.serial <= current.serial:
        raise RollbackError(
            f"envelope serial {parsed.serial} is not newer than serial {current.serial} in "
            "service; refusing to roll back (seal the new list with a higher --serial)"
        )
    if parsed.format == envelope.FORMAT_FERNET:
        if current.format == envelope.FORMAT_V2:
            raise RollbackError(
                "a fernet-format envelope has no serial and cannot replace a v2 list in service"
            )
        log.warning("fernet-format envelopes carry no serial: rollback cannot be detected")


def refresh_loop(
    holder: ListHolder, interval: float, stop: threading.Event, wake: threading.Event
) -> None:
    """Poll the source every ``interval`` seconds (when pollable), or at once when woken.

    ``wake`` is set by SIGHUP: that forces a full fetch, for every kind of source. To end
    the loop, set ``stop`` and then ``wake``.
    Failures are logged and counted by :meth:`ListHolder.reload`; the loop goes on.
    """
    pollable = holder.source.pollable and interval > 0
    while not stop.is_set():
        forced = wake.wait(timeout=interval if pollable else None)
        if stop.is_set():
            return
        wake.clear()
        if not forced and not pollable:
            continue
        try:
            holder.reload(only_if_changed=not forced)
        except EnclaveError:
            pass  # already logged and counted; the old list stays in service
