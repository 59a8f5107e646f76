"""The list in service: load it, screen against it, replace it without a restart.

A new envelope is fetched, decrypted and built into a complete table *before* one
reference assignment swaps it in, so a query sees either the old list or the new one,
never half of one. If anything fails, the old list stays in service and the failure is
logged and counted. An envelope whose serial is lower than the one in service is refused:
nobody can roll the service back to an older list by replaying an older envelope.

Until the first list is loaded, :meth:`ListHolder.screen` returns ``None`` and the HTTP
layer answers 503: the service never says "cleared" without a list.

:class:`ListHolder` is the one owner of the load state. Every attempt ends in one of
:data:`OUTCOMES`, counted in ``noflylist_list_loads_total{outcome=...}``; the holder keeps
the last one (:class:`LoadStatus`, shown by ``/readyz``) and serves these gauges:

* ``noflylist_list_age_seconds``: seconds since the list in service was swapped in
  (-1 while there is none);
* ``noflylist_list_last_load_timestamp_seconds``: when the last attempt ended, whatever its
  outcome (Unix time; 0 before the first);
* ``noflylist_list_last_load_success``: 1 if the last attempt loaded a list or found the
  envelope unchanged, 0 if it failed or was refused (and before the first);
* ``noflylist_list_last_success_timestamp_seconds``: when an attempt last succeeded, that is,
  when the source last confirmed the list in service (Unix time; 0 before the first). This
  is the one to alert on: ``time() - it`` well above the refresh interval is a stale list;
* ``noflylist_list_failures_in_a_row``: failed or refused attempts since the last success;
* ``noflylist_list_loader_running``: 1 while the loops that load lists run, 0 once one has
  stopped by accident (a bug: no list will be loaded again until a restart).

**Supervision.** Whatever goes wrong in a load is counted as ``failed`` and the old list
stays, including an exception of a type no module was meant to raise (a bug, or an input
a parser did not bound: ``RecursionError``, ``ValueError``, ``MemoryError``). Such an
exception is logged by type and place only (:func:`where_raised`), never by its message,
which may quote the input; the caller gets a :class:`LoadError`. The loops that load
(:func:`refresh_loop`, the first load in :mod:`noflylist.service`) go on after any exception.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from enclave.errors import NoflylistError
from noflylist import envelope, matchkey
from noflylist.clients import ClientPolicy
from noflylist.metrics import Metrics
from noflylist.sources import Source
from noflylist.table import ScreeningTable

log = logging.getLogger(__name__)

#: The event counter for list loads, by outcome (one of OUTCOMES).
LOADS = "noflylist_list_loads_total"
#: How a load attempt ends: a new list in service, the same envelope as the one in service,
#: an error, or an envelope refused as older than the one in service.
OUTCOMES = ("loaded", "unchanged", "failed", "refused")
#: The outcomes after which the list in service is known to be the source's current one.
SUCCESSES = frozenset({"loaded", "unchanged"})
#: What ``/readyz`` says before the first attempt has ended.
NOT_LOADED_YET = "no list loaded yet"

#: The folder holding the ``noflylist`` and ``enclave`` packages: places inside it are
#: shown relative to it (``noflylist/envelope.py:122``).
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RollbackError(NoflylistError):
    """The envelope is older than the list in service."""


class OpenListRefused(RollbackError):
    """The envelope was sealed without a client policy, and this service requires one
    (``--require-clients``): a downgrade, refused like a rollback."""


class LoadError(NoflylistError):
    """A load failed with an exception no module raised as its own error: a bug, or an
    input a parser did not bound. The message names the type and place, never the text."""


#: Makes the source and the decryptor, at the first load (see :class:`ListHolder`).
Opener = Callable[[], "tuple[Source, envelope.DataKeyDecryptor]"]


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
    #: Who may ask, and how much (sealed with the list, authenticated with it); ``None``: the
    #: list is served open, to anyone who reaches the port.
    clients: ClientPolicy | None = None

    @property
    def entries(self) -> int:
        return len(self.table)


@dataclass(frozen=True)
class LoadStatus:
    """A snapshot of the load state, replaced whole after each attempt: what ``/readyz``
    shows. Times are Unix times for display, with monotonic twins for ages, so a step of
    the wall clock cannot make a list look fresh or ancient."""

    current: ListInService | None = None
    #: How the last attempt ended (one of OUTCOMES); None before the first has ended.
    outcome: str | None = None
    attempted_at: float = 0.0
    succeeded_at: float = 0.0
    #: Why the last attempt failed or was refused; None after a success.
    error: str | None = NOT_LOADED_YET
    failures_in_a_row: int = 0
    #: Why a loop that loads lists stopped by accident; None while they run.
    loader_stopped: str | None = None
    loaded_monotonic: float = 0.0
    succeeded_monotonic: float = 0.0

    def list_age(self) -> float | None:
        """Seconds since the list in service was swapped in; None without one."""
        return None if self.current is None else time.monotonic() - self.loaded_monotonic

    def since_success(self) -> float | None:
        """Seconds since an attempt last succeeded; None if none has."""
        return None if not self.succeeded_monotonic else (
            time.monotonic() - self.succeeded_monotonic
        )


def where_raised(exc: BaseException) -> str:
    """``RecursionError at json/decoder.py:353 (from noflylist/envelope.py:122)``.

    The exception's type, the innermost place it passed through and, if that is not in
    this project's folder, the innermost place that is. Never the message: a foreign
    exception's message can quote the input (``invalid literal for int(): 'Big Bird'``).
    The frames are walked, not formatted, so no source line is read and no local touched.
    (Installed, the project's folder is site-packages, shared with other packages: the
    second place is a hint for finding the bug, nothing more.)
    """
    places = [
        (frame.f_code.co_filename, lineno)
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
    ]
    text = type(exc).__name__
    if not places:
        return text
    filename, lineno = places[-1]
    ours = _project_path(filename)
    text += f" at {ours or '/'.join(Path(filename).parts[-2:])}:{lineno}"
    if ours is None:
        inside = [(path, n) for f, n in places if (path := _project_path(f)) is not None]
        if inside:
            text += " (from {}:{})".format(*inside[-1])
    return text


@functools.lru_cache(maxsize=256)
def _project_path(filename: str) -> str | None:
    """``noflylist/envelope.py`` for a file in the project's folder, else None."""
    try:
        return Path(filename).resolve().relative_to(_PROJECT_ROOT).as_posix()
    except ValueError:
        return None


class ListHolder:
    """Owns the list in service and the load state. ``screen`` is lock-free; loads are
    serialised by a lock.

    Give ``source`` and ``decryptor``, or ``None`` for both and an ``opener`` that makes
    them: ``serve`` cannot make its KMS and S3 clients before it knows the AWS region, which
    may come from an instance metadata service that is not reachable yet at boot. The
    opener is called by each load until it succeeds once; its failures are load failures
    like any other (counted, shown by ``/readyz``, retried by the caller).
    """

    def __init__(
        self,
        source: Source | None,
        decryptor: envelope.DataKeyDecryptor | None,
        metrics: Metrics,
        *,
        pinned_key_id: str | None = None,
        opener: Opener | None = None,
        match_rule: str = matchkey.DEFAULT_RULE,
        require_clients: bool = False,
    ) -> None:
        self._opened: tuple[Source, envelope.DataKeyDecryptor] | None = None
        if source is not None and decryptor is not None and opener is None:
            self._opened = (source, decryptor)
        elif source is not None or decryptor is not None or opener is None:
            raise ValueError("give a source and a decryptor, or an opener instead of both")
        self._opener = opener
        self._pinned_key_id = pinned_key_id
        if match_rule not in matchkey.RULES:
            raise ValueError(f"unknown match rule {match_rule!r}; one of {matchkey.RULES}")
        self._match_rule = match_rule
        self._require_clients = require_clients
        self._metrics = metrics
        self._load_lock = threading.Lock()
        self._state_lock = threading.Lock()  # short: a status update, never held over I/O
        self.current: ListInService | None = None
        self._status = LoadStatus()
        use_returnable_memory()  # before the first load: see its docstring
        self._register_gauges(metrics)

    @property
    def source(self) -> Source | None:
        """The envelope's source; None until the opener (if any) has made it."""
        return None if self._opened is None else self._opened[0]

    @property
    def status(self) -> LoadStatus:
        """The load state now, one consistent snapshot."""
        return self._status

    @property
    def last_error(self) -> str | None:
        """Why the last attempt failed; None after a success."""
        return self._status.error

    def reload(self, *, only_if_changed: bool) -> bool:
        """Open the source (once), fetch, check, decrypt and swap in the envelope; ``True``
        if a new list is in service.

        Raises the cause on failure (after logging and counting it), as a
        :class:`LoadError` if it is not a :class:`NoflylistError`; the list in service, if
        any, stays.
        """
        with self._load_lock:
            unexpected: str | None = None
            try:
                loaded = self._load(only_if_changed=only_if_changed)
            except NoflylistError as exc:
                outcome = "refused" if isinstance(exc, RollbackError) else "failed"
                self._finish(outcome, str(exc))
                log.error(
                    "loading the envelope from %s failed: %s (%s)",
                    self._description(),
                    exc,
                    self._keeping(),
                )
                raise
            except Exception as exc:  # the supervision boundary: see the module docstring
                unexpected = where_raised(exc)
            if unexpected is not None:
                # Raised outside the except block, so the new error holds no reference to
                # the old one's frames (whose locals may be decrypted names).
                failure = LoadError(
                    f"unexpected {unexpected} while loading the envelope (a bug: please "
                    "report it)"
                )
                self._finish("failed", str(failure))
                log.error(
                    "loading the envelope from %s failed: %s (%s)",
                    self._description(),
                    failure,
                    self._keeping(),
                )
                raise failure
            if loaded is None:
                self._finish("unchanged", None)
                return False
            self.current = loaded
            self._finish("loaded", None)
            _return_freed_memory()
            log.info(
                "list in service: %d entries, serial %d, %s format, envelope sha256 %s, from %s",
                loaded.entries,
                loaded.serial,
                loaded.format,
                loaded.envelope_sha256.hex()[:16],
                self._description(),
            )
            if loaded.clients is None:
                log.warning(
                    "this list is served OPEN: it was sealed without a client policy, so "
                    "anyone who reaches the port may ask (asking is reading; seal it with "
                    "noflylist seal --clients FILE, or bound it with --max-names-per-minute)"
                )
            else:
                log.info(
                    "who may ask: %d client(s) of the sealed policy %s, signed requests only",
                    len(loaded.clients.clients),
                    loaded.clients.sha256.hex()[:16],
                )
            return True

    def note_loop_failure(self, exc: BaseException, loop: str) -> None:
        """Count and show an exception that escaped :meth:`reload` into ``loop`` (a bug).

        The loop goes on; this records a failed load so that the failure is visible in
        ``/readyz`` and ``/metrics``, and logs the type and place only.
        """
        reason = f"unexpected {where_raised(exc)} in {loop} (a bug: please report it)"
        self._finish("failed", reason)
        log.error("%s; %s", reason, self._keeping())

    def note_loader_stopped(self, loop: str, exc: BaseException | None) -> None:
        """A loop that loads lists has ended although nobody stopped the service (a bug).

        From now on ``/readyz`` answers 503 with this reason and
        ``noflylist_list_loader_running`` is 0: no list will be loaded again, and a service
        whose list can no longer change should say so, not look healthy.
        """
        cause = "returned" if exc is None else f"died with {where_raised(exc)}"
        reason = (
            f"{loop} {cause} (a bug: please report it); no list will be loaded again until "
            "the service is restarted"
        )
        with self._state_lock:
            self._status = replace(self._status, loader_stopped=reason)
        log.critical("%s", reason)

    def _finish(self, outcome: str, error: str | None) -> None:
        """Record how an attempt ended: the counter, then one new status snapshot."""
        self._metrics.count(LOADS, outcome)
        now, monotonic = time.time(), time.monotonic()
        with self._state_lock:
            old = self._status
            succeeded = outcome in SUCCESSES
            swapped = old.current is not self.current
            self._status = replace(
                old,
                current=self.current,
                outcome=outcome,
                attempted_at=now,
                error=None if succeeded else error,
                failures_in_a_row=0 if succeeded else old.failures_in_a_row + 1,
                succeeded_at=now if succeeded else old.succeeded_at,
                succeeded_monotonic=monotonic if succeeded else old.succeeded_monotonic,
                loaded_monotonic=monotonic if swapped else old.loaded_monotonic,
            )

    def _description(self) -> str:
        source = self.source
        return "the envelope source (not opened yet)" if source is None else source.description

    def _keeping(self) -> str:
        return "keeping the list in service" if self.current else "no list in service"

    def _register_gauges(self, metrics: Metrics) -> None:
        def age() -> float:
            seconds = self._status.list_age()
            return -1.0 if seconds is None else seconds

        gauges = {
            "noflylist_list_entries": (
                "Distinct names in the list in service.",
                lambda: float(self.current.entries if self.current else 0),
            ),
            "noflylist_list_serial": (
                "Serial of the envelope in service (0 for the fernet format).",
                lambda: float(self.current.serial if self.current else -1),
            ),
            "noflylist_list_loaded_timestamp_seconds": (
                "When the list in service was loaded (Unix time).",
                lambda: self.current.loaded_at if self.current else 0.0,
            ),
            "noflylist_list_age_seconds": (
                "Seconds since the list in service was swapped in (-1: no list).",
                age,
            ),
            "noflylist_list_last_load_timestamp_seconds": (
                "When the last load attempt ended, whatever its outcome (Unix time).",
                lambda: self._status.attempted_at,
            ),
            "noflylist_list_last_load_success": (
                "1 if the last load attempt loaded a list or found it unchanged, else 0.",
                lambda: float(self._status.outcome in SUCCESSES),
            ),
            "noflylist_list_last_success_timestamp_seconds": (
                "When the source last confirmed the list in service (Unix time); alert on "
                "its age.",
                lambda: self._status.succeeded_at,
            ),
            "noflylist_list_failures_in_a_row": (
                "Failed or refused load attempts since the last success.",
                lambda: float(self._status.failures_in_a_row),
            ),
            "noflylist_list_loader_running": (
                "0 once a loop that loads lists has stopped by accident (restart).",
                lambda: float(self._status.loader_stopped is None),
            ),
        }
        metrics.gauges.update(gauges)

    def _load(self, *, only_if_changed: bool) -> ListInService | None:
        started = time.monotonic()
        if self._opened is None:
            assert self._opener is not None  # checked by __init__
            self._opened = self._opener()
        source, decryptor = self._opened
        current = self.current
        in_service = current.source_version if (only_if_changed and current) else None
        fetched = source.fetch(unless_version=in_service)
        if fetched is None:
            return None
        data = fetched.data
        digest = hashlib.sha256(data).digest()
        if current is not None and digest == current.envelope_sha256:
            return None
        parsed = envelope.parse(data)
        _check_not_older(parsed, current)
        if self._require_clients and parsed.clients is None:
            raise OpenListRefused(
                "this envelope was sealed without a client policy (or in the public demo's "
                "fernet format), and this service requires one (--require-clients): reseal "
                "it with noflylist seal --clients FILE"
            )
        # The client policy was parsed with the header, and the header is the decryption's
        # associated data: it is put in service only below, once decryption has checked the tag.
        serial, form, clients = parsed.serial, parsed.format, parsed.clients
        if parsed.format == envelope.FORMAT_V3:
            # The sealer keyed the names: the table is decrypted, checked and served.
            table = envelope.decrypt_table(
                parsed, decryptor, rule=self._match_rule, pinned_key_id=self._pinned_key_id
            )
            done = "sealed table decrypted and checked"
        else:
            names = envelope.decrypt(parsed, decryptor, pinned_key_id=self._pinned_key_id)
            # v2 and fernet envelopes carry the names, not their keys, and record no match
            # rule: the names are keyed here, under the rule this service is configured with.
            table = ScreeningTable.build(names, self._match_rule)
            del names
            done = "envelope decrypted and table built"
        version = fetched.version
        del parsed, data, fetched  # a v3 table does not need the document it came in
        log.info(
            "%s in %.2f s: %d keys under match rule %s",
            done,
            time.monotonic() - started,
            table.stored_keys,
            matchkey.rule_identity(table.rule),
        )
        return ListInService(table, serial, form, digest, time.time(), version, clients)


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


#: The formats with a serial, which only grows (the fernet format has none).
_SERIAL_FORMATS = (envelope.FORMAT_V2, envelope.FORMAT_V3)


def _check_not_older(parsed: envelope.Envelope, current: ListInService | None) -> None:
    """Refuse rollback: a changed v2 or v3 envelope must carry a higher serial than the one
    in use."""
    if current is None:
        return
    if parsed.format in _SERIAL_FORMATS and parsed.serial <= current.serial:
        raise RollbackError(
            f"envelope serial {parsed.serial} is not newer than serial {current.serial} in "
            "service; refusing to roll back (seal the new list with a higher --serial)"
        )
    if parsed.format == envelope.FORMAT_FERNET:
        if current.format in _SERIAL_FORMATS:
            raise RollbackError(
                "a fernet-format envelope has no serial and cannot replace a v2 or v3 list in "
                "service"
            )
        log.warning("fernet-format envelopes carry no serial: rollback cannot be detected")


def refresh_loop(
    holder: ListHolder, interval: float, stop: threading.Event, wake: threading.Event
) -> None:
    """Poll the source every ``interval`` seconds (when pollable), or at once when woken.

    ``wake`` is set by SIGHUP: that forces a full fetch, for every kind of source. To end
    the loop, set ``stop`` and then ``wake``.
    Failures are logged and counted by :meth:`ListHolder.reload`; anything else that goes
    wrong in an iteration is counted by :meth:`ListHolder.note_loop_failure`. Either way
    the loop goes on, and the old list stays in service.
    """
    while not stop.is_set():
        source = holder.source
        pollable = source is not None and source.pollable and interval > 0
        forced = wake.wait(timeout=interval if pollable else None)
        if stop.is_set():
            return
        wake.clear()
        if not forced and not pollable:
            continue
        try:
            holder.reload(only_if_changed=not forced)
        except NoflylistError:
            pass  # already logged and counted; the old list stays in service
        except Exception as exc:  # a bug outside reload's own boundary: count it, go on
            holder.note_loop_failure(exc, "the refresh loop")
