"""The queue API: one ``Queue`` per stage of a ``Spool``; every operation keyed by queue id.

A stage (``received``, ``relay/<route>``, ``inbound``, ``local``; see
``gateway.spool.layout``) is worked by one or several *consumers* (the secure agent,
the relay of a route, ...), each in its own consumer *slot*, and written by the stages
before it::

    writer side                        consumer side (slot K)
    add / open_writer -> incoming/     recover()            K's active dir -> incoming/,
                                                             at start (+ dead slots')
    hand_off (from the previous        claim()              incoming/ or due deferred/
      stage's claimed entry)                                 -> K's active dir (one
                                                             rename: one claimer wins)
                                       defer(until)         active/ -> deferred/
                                       hold(entry)          active/ -> hold/
                                       complete / bounce    active/ -> removed
                                       hand_off(to, key)    a child entry in the next stage
                                       quarantine           active/ -> corrupt/
    operator (``missive queue``): hold/release/retry/delete by id, never in ``active/``

Invariants:

- **Nothing acknowledged is lost.** An entry exists as exactly one complete file in one
  state directory; every move is one ``rename``; files are never modified in place (a
  new version replaces the old one atomically, ``gateway.spool.record``). What is
  fsynced when is in ``gateway.spool.commit``.
- **At most a duplicate.** A hand-off writes the child entry (id derived from the
  parent's id and the hand-off key, ``ids.child_queue_id``) durably *before* the parent
  is completed; after a crash between the two, the parent is processed again and the
  hand-off finds its child already there and writes nothing. If the next stage removed
  the child meanwhile, it first left a tombstone (``handed/``, written only while the
  parent is still in the spool; ``gateway.spool.tombstones``), which the hand-off finds
  instead. Only a crash after the next hop's ``250`` and before ``complete`` delivers
  twice (ARCHITECTURE).
- **Unreadable entries are kept.** A file that fails validation (or whose name is not
  the queue id inside it) is moved to ``corrupt/`` with a ``spool.corrupt`` event; the
  gateway never deletes it (an operator may, with ``missive queue delete``).
- **Safe while running.** Operator actions are renames that happen entirely or not at
  all; an entry in ``active/`` belongs to its consumer and is refused with a clear
  ``EntryStateError``; a rename that loses a race to a claimer (``ENOENT``) is
  reported the same way, never retried blindly.
- **One consumer per slot at a time; several slots per stage.** Slot K claims into its
  own active directory (``active/`` for slot 0, ``active/<K>/`` otherwise) and
  ``recover()`` takes slot K's lock (``consumer.lock``, ``consumer-<K>.lock``; ``flock``,
  released by ``close`` or by the kernel when the process dies) before moving that
  directory back to ``incoming/``: a second consumer of the same slot gets
  ``SpoolBusy`` (a standby), and the entries of a live consumer of another slot are
  never moved, because only the holder of a slot's lock moves its entries. Recovery
  also adopts the entries of every *other* slot whose lock is free (its consumer died
  and is not running): it takes that lock for the move, so a consumer of that slot
  starting at the same moment waits as a standby and then finds its directory empty.
  An entry is processed by at most one live consumer because a claim is one rename out
  of ``incoming/``/``deferred/``, and an entry goes back there only from a dead
  consumer's directory. The slot of a ``Queue`` comes from its ``Spool``
  (``gateway.spool.spooldir``); a single consumer is slot 0, the layout of old.
- **Few thread hops per entry** (issues #6/#7: every consumer pays this path). A
  claim is one I/O job, which can also read a small entry whole
  (``claim(read_ahead=...)``, its SHA-256 checked; ``read_all`` then returns those
  bytes); a hand-off's "already there?" (child, then tombstone, in that order) is one
  job; a removal's look for the parent (the tombstone rule) is made in the
  group-committed job that unlinks the entry (when the parent is still there, nothing
  is unlinked: the tombstone is written first), and so is the look for tombstones of
  the entry's own children: a clean-up job follows only if it saw some (or wrote a
  tombstone).
- **Audit.** Removals (complete, bounce, delete) are recorded before they happen, and
  an operator's move is undone if its event cannot be recorded; the audit error is
  raised in every case except the clean-up of a write that is already failing.

Trust level: any gateway process that owns a stage; sees content only through the
reader it hands to the consumer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit.errors import AuditWriteError
from gateway.log import get_logger
from gateway.spool.atomic import DELETING_SUFFIX, as_spool_error, move, remove, temp_name
from gateway.spool.commit import Change
from gateway.spool.entry import CHUNK_SIZE, EntryReader
from gateway.spool.errors import CorruptEntry, EntryNotFound, EntryStateError, SpoolError
from gateway.spool.events import entry_event, outcome_of
from gateway.spool.ids import QueueId, child_queue_id, is_queue_id, new_queue_id
from gateway.spool.layout import StageDirs, State
from gateway.spool.model import (
    Envelope,
    Origin,
    QueueRecord,
    RecipientState,
    RecipientStatus,
)
from gateway.spool.runtime import SpoolRuntime
from gateway.spool.stagefiles import (
    ConsumerLock,
    EntryInfo,
    Taken,
    find_entry,
    list_candidates,
    locate,
    move_back,
    move_deferred,
    move_to_free_name,
    read_quietly,
    remove_stale_temps,
    requeue_active,
    requeue_orphaned_slots,
    scan,
    take,
    write_version,
)
from gateway.spool.tombstones import (
    HandedListings,
    has_children,
    has_tombstone,
    parent_alive,
    remove_children_of,
    remove_orphans,
    remove_tombstone,
    write_tombstone,
)
from gateway.spool.writer import EntryWriter

ContentSource = bytes | AsyncIterable[bytes]

STALE_TEMP_AGE = timedelta(hours=1)
DEBRIS_SWEEP_INTERVAL = 15 * 60.0  # seconds between two sweeps of tmp/ by a running consumer
READ_AHEAD = 1024 * 1024  # bytes: what a stage that reads every entry whole reads at claim
_MAX_NAME = 255

_log = get_logger("spool")


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry a consumer holds in ``active/``: its record, and its content on demand.

    ``preloaded`` is the whole content when the claim read it (``Queue.read_all`` returns
    it), or its damage (``CorruptEntry``: the SHA-256 did not match); None if not read."""

    stage: str
    queue_id: QueueId
    path: Path
    record: QueueRecord
    claimed_from: State
    preloaded: bytes | CorruptEntry | None = field(default=None, repr=False, compare=False)

    def open(self) -> EntryReader:
        """A blocking reader of the content (for worker code outside the event loop)."""
        return EntryReader(self.path)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``recover`` did: entries moved back, debris removed from ``tmp/``, tombstones
    of ``handed/`` removed because their parent has left the spool."""

    requeued: tuple[str, ...]
    removed_temps: tuple[str, ...]
    removed_tombstones: tuple[str, ...] = ()


def check_entry_name(name: str) -> str:
    """``name`` if it can name a file in a state directory; ``UsageError`` if not."""
    if not name or len(name) > _MAX_NAME or "/" in name or "\x00" in name or name.startswith("."):
        raise EntryNotFound(f"not a queue id or entry name: {name!r}")
    return name


async def _chunks(content: ContentSource) -> AsyncIterator[bytes]:
    if isinstance(content, bytes | bytearray | memoryview):
        yield bytes(content)
        return
    async for chunk in content:
        yield chunk


class Queue:
    """The entries of one stage. Built by ``Spool.queue``."""

    def __init__(self, runtime: SpoolRuntime, dirs: StageDirs, slot: int = 0) -> None:
        self._runtime = runtime
        self.dirs = dirs
        self.slot = slot
        self._candidates: deque[tuple[State, str]] = deque()
        self._lock = ConsumerLock(dirs, slot)
        self._active_ready = slot == 0  # slot 0's active/ is made with the stage
        self._handed = HandedListings()
        self._next_sweep: float | None = None  # monotonic time of the next debris sweep

    @property
    def name(self) -> str:
        return self.dirs.name

    # -- writing new entries -----------------------------------------------------------

    async def open_writer(
        self,
        envelope: Envelope,
        origin: Origin,
        *,
        queue_id: QueueId | None = None,
        received: datetime | None = None,
    ) -> EntryWriter:
        """Start a new entry (the SMTP DATA path); see ``EntryWriter``. ``queue_id`` and
        ``received`` are the ones an SMTP front chose before handing the entry to its
        scribe (``gateway.spool.scribe``); by default a new id, and now."""
        now = self._runtime.clock() if received is None else received
        return self._writer(
            new_queue_id(now.timestamp()) if queue_id is None else queue_id,
            envelope,
            origin,
            received=now,
            limit=self._runtime.max_message_size,
        )

    async def add(self, envelope: Envelope, origin: Origin, content: ContentSource) -> QueueId:
        """Write a whole entry from ``content`` (bytes or an async byte source)."""
        writer = await self.open_writer(envelope, origin)
        async with writer:
            async for chunk in _chunks(content):
                await writer.write(chunk)
            return await writer.commit()

    def _writer(
        self,
        queue_id: QueueId,
        envelope: Envelope,
        origin: Origin,
        *,
        received: datetime,
        limit: int | None,
        parent: QueueId | None = None,
        parent_stage: str | None = None,
        key: str | None = None,
    ) -> EntryWriter:
        return EntryWriter(
            self._runtime,
            self.dirs,
            queue_id=queue_id,
            envelope=envelope,
            origin=origin,
            received=received,
            parent=parent,
            parent_stage=parent_stage,
            key=key,
            limit=limit,
        )

    async def hand_off(
        self,
        entry: Claimed,
        to: Queue,
        key: str,
        envelope: Envelope,
        content: ContentSource,
        origin: Origin | None = None,
        *,
        new_message: bool = False,
    ) -> QueueId:
        """Write the child ``key`` of ``entry`` into stage ``to``; idempotent.

        The child id is derived from ``entry``'s id and ``key``: if the child already
        exists in ``to``, or was there and has been removed since (its tombstone is in
        ``to``'s ``handed/``), nothing is written and its id is returned - a hand-off
        repeated after a crash. The child keeps the parent's ``received`` time (its
        expiry counts from the first acceptance) unless ``new_message`` (a DSN, an
        MDN: a message of its own, received now); it keeps the parent's origin unless
        ``origin`` is given. Complete ``entry`` only after every hand-off returned. No
        size limit: a stage's output is bounded by its input.
        """
        child = child_queue_id(entry.queue_id, key)
        if await self._handed_already(entry.queue_id, to, child):
            _log.info("spool.handoff_exists", queue_id=child, parent=entry.queue_id, key=key)
            return child
        writer = to._writer(
            child,
            envelope,
            origin or entry.record.origin,
            received=self._runtime.clock() if new_message else entry.record.received,
            limit=None,
            parent=entry.queue_id,
            parent_stage=entry.stage,
            key=key,
        )
        async with writer:
            async for chunk in _chunks(content):
                await writer.write(chunk)
            return await writer.commit()

    async def _handed_already(self, parent: QueueId, to: Queue, child: QueueId) -> bool:
        """The child is in ``to``, or was (its tombstone); one I/O job. In this order: a
        child is removed only after its tombstone is durable, so one that the first look
        misses has a tombstone by the second (``gateway.spool.tombstones``)."""
        dirs = to.dirs
        return await self._runtime.run(
            lambda: locate(dirs, child) is not None or has_tombstone(dirs, parent, child)
        )

    # -- consumer side -----------------------------------------------------------------

    async def claim(self, *, read_ahead: int = 0) -> Claimed | None:
        """Take the oldest entry of ``incoming/``, else the most overdue of ``deferred/``.

        Returns None when there is nothing to do. Files that do not validate are moved
        to ``corrupt/`` on the way. An entry of at most ``read_ahead`` bytes of content
        is read whole in the same I/O job, through the descriptor its record was read
        from (``Claimed.preloaded``: what ``read_all`` returns, the bytes as checked
        then; a stage that reads every entry at once passes ``READ_AHEAD``).
        """
        await self._ensure_active()
        for refill in (False, True):
            if refill:
                await self._refill()
            while self._candidates:
                state, name = self._candidates.popleft()
                claimed = await self._try_claim(state, name, read_ahead)
                if claimed is not None:
                    return claimed
        return None

    async def _refill(self) -> None:
        now = self._runtime.clock().timestamp()
        self._candidates.extend(await self._runtime.run(lambda: list_candidates(self.dirs, now)))

    async def _ensure_active(self) -> None:
        if not self._active_ready:
            await self._runtime.run(lambda: self.dirs.create_active(self.slot))
            self._active_ready = True

    async def _try_claim(self, state: State, name: str, read_ahead: int) -> Claimed | None:
        slot, dirs = self.slot, self.dirs
        active = dirs.active(slot) / name
        checkpoint = self._runtime.checkpoint

        def take_it() -> Taken | CorruptEntry | None:
            return take(dirs, state, name, checkpoint, slot, read_ahead)

        taken = await self._runtime.run(take_it)
        if isinstance(taken, CorruptEntry):
            await self._to_corrupt(active, name, taken.reason)
            return None
        if taken is None:
            return None
        record = taken.record
        return Claimed(self.name, record.queue_id, active, record, state, taken.content)

    async def content(self, entry: Claimed, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The content of a claimed entry, chunk by chunk, read in the I/O threads.

        The last chunk comes only after the SHA-256 matched (``CorruptEntry`` if not:
        call ``quarantine``).
        """
        reader = await self._runtime.run(entry.open)
        try:
            while chunk := await self._runtime.run_to_end(lambda: reader.read(chunk_size)):
                yield chunk
        finally:
            reader.close()

    async def read_all(self, entry: Claimed) -> bytes:
        """The whole content of a claimed entry, its SHA-256 checked (``CorruptEntry`` if
        not: call ``quarantine``): what the claim read, else one I/O job. For entries a
        stage holds in memory anyway; ``content`` streams larger ones."""
        preloaded = entry.preloaded
        if isinstance(preloaded, CorruptEntry):
            raise CorruptEntry(preloaded.reason)
        if preloaded is not None:
            return preloaded
        return await self._runtime.run(lambda: _read_whole(entry))

    async def defer(
        self,
        entry: Claimed,
        until: datetime,
        recipients: Sequence[RecipientState] | None = None,
        *,
        note: str | None = None,
    ) -> None:
        """Write the new state, move to ``deferred/`` (its mtime = ``until``); the entry
        is no longer the caller's."""
        runtime = self._runtime
        record = entry.record.with_state(runtime.clock(), recipients, next_attempt=until, note=note)
        await self._rewrite(entry, record)
        runtime.checkpoint("defer.rewritten")
        target = self.dirs.entry("deferred", entry.queue_id)
        due = until.timestamp()
        await runtime.committer.sync(target.parent, lambda: move_deferred(entry.path, target, due))
        runtime.checkpoint("defer.moved")
        await self._record(
            "deferred", entry.queue_id, record, details={"next_attempt": _show_time(until)}
        )

    async def complete(
        self, entry: Claimed, recipients: Sequence[RecipientState] | None = None
    ) -> None:
        """Every recipient has its final status: record ``spool.completed``, remove.

        ``ValueError`` if a recipient is still pending or deferred (that would lose
        it): ``defer`` or ``bounce`` instead.
        """
        record = entry.record
        if recipients is not None:
            record = record.with_state(self._runtime.clock(), recipients)
        if record.unfinished:
            raise ValueError(
                f"complete {entry.queue_id}: recipients {list(record.unfinished)} have no "
                "final status (defer or bounce instead)"
            )
        outcome, counts = outcome_of(record)
        await self._remove_owned(entry, "completed", record, outcome, counts)

    async def bounce(
        self, entry: Claimed, reason: str, recipients: Sequence[RecipientState] | None = None
    ) -> None:
        """Give up on the entry (queue its DSN first): recipients without a final status
        become ``failed`` with ``reason``; record ``spool.bounced``; remove."""
        states = entry.record.state.recipients if recipients is None else tuple(recipients)
        failed = tuple(
            state
            if state.status.final
            else RecipientState(RecipientStatus.FAILED, state.attempts, reason, None)
            for state in states
        )
        record = entry.record.with_state(self._runtime.clock(), failed, note=reason)
        outcome, counts = outcome_of(record)
        await self._remove_owned(entry, "bounced", record, outcome, {**counts, "reason": reason})

    async def _remove_owned(
        self,
        entry: Claimed,
        kind: str,
        record: QueueRecord,
        outcome: str,
        details: dict[str, str],
    ) -> None:
        runtime = self._runtime
        await self._record(kind, entry.queue_id, record, outcome=outcome, details=details)
        runtime.checkpoint(f"{kind}.recorded")
        left, children = await self._remove_claimed(entry.path, record)
        runtime.checkpoint(f"{kind}.removed")
        if left or children:
            await self._after_removal(entry.queue_id, record, left)

    async def _remove_claimed(self, path: Path, record: QueueRecord) -> tuple[bool, bool]:
        """Remove the owned file ``path``; a child whose parent is still in the spool
        only after its tombstone is durable (``gateway.spool.tombstones``). Returns
        whether a tombstone was written, and whether tombstones of the entry's own
        children were seen (both call for ``_after_removal``)."""
        parent, queue_id = record.parent, record.queue_id
        seen = await self._unlink_owned(path, queue_id, parent, record.parent_stage)
        if seen is None and parent is not None:  # the parent is still queued
            await self._write_tombstone(parent, queue_id)
            return True, bool(await self._unlink_owned(path, queue_id))
        return False, bool(seen)

    async def _unlink_owned(
        self,
        path: Path,
        queue_id: str,
        waiting: QueueId | None = None,
        stage: str | None = None,
    ) -> bool | None:
        """One job of the group commit of ``path``'s directory: unless the parent
        ``waiting`` (in ``stage``, if known) is still in the spool, look for tombstones of
        ``queue_id``'s children, then ``unlink`` ``path``; True if some were seen. None
        if the parent is still there: nothing was done, its tombstone must come first
        (a parent found gone has left for good, so nothing can come between)."""
        runtime, handed = self._runtime, self._handed
        layout = runtime.layout
        seen: list[bool] = []

        def look_for_children() -> bool:
            try:
                return has_children(layout, queue_id, handed)
            except OSError:  # the clean-up job tries again and logs what fails
                return True

        def change() -> None:
            if waiting is not None and parent_alive(layout, waiting, stage):
                raise _ParentQueued
            seen.append(look_for_children())
            remove(path)

        try:
            await runtime.committer.sync(path.parent, change)
        except _ParentQueued:
            return None
        return seen[0]

    async def _leave_tombstone(self, record: QueueRecord | None) -> bool:
        """Before removing a child whose parent is still in the spool: its tombstone,
        durable (``gateway.spool.tombstones``). True if one was written."""
        if record is None or record.parent is None:
            return False
        runtime, parent, stage = self._runtime, record.parent, record.parent_stage
        if not await runtime.run(lambda: parent_alive(runtime.layout, parent, stage)):
            return False
        return await self._write_tombstone(parent, record.queue_id)

    async def _write_tombstone(self, parent: QueueId, child: str) -> bool:
        """The tombstone of ``parent``'s child ``child``, durable; True."""
        runtime, handed = self._runtime, self.dirs.handed
        await runtime.committer.sync(handed, lambda: write_tombstone(self.dirs, parent, child))
        runtime.checkpoint("tombstone.written")
        _log.info("spool.tombstone_written", stage=self.name, queue_id=child, parent=parent)
        return True

    async def _after_removal(self, queue_id: str, record: QueueRecord | None, left: bool) -> None:
        """Once ``queue_id`` has left the spool, in one I/O job: its children's
        tombstones go; its own goes if its parent left meanwhile (that parent's clean-up
        may have run before the tombstone existed)."""
        runtime, dirs, handed = self._runtime, self.dirs, self._handed

        def clean_up() -> list[str]:
            removed = remove_children_of(runtime.layout, queue_id, handed)
            if left and record is not None and record.parent is not None:
                parent = record.parent
                if not parent_alive(runtime.layout, parent, record.parent_stage):
                    remove_tombstone(dirs, parent, queue_id)
            return removed

        try:
            removed = await runtime.run(clean_up)
        except OSError as error:  # the removal is done; recovery removes what is left
            _log.warning("spool.tombstone_cleanup_failed", queue_id=queue_id, error=str(error))
            return
        if removed:
            _log.info("spool.tombstones_removed", parent=queue_id, count=len(removed))

    async def quarantine(self, entry: Claimed, reason: str) -> None:
        """Move a claimed entry whose content failed its check to ``corrupt/``."""
        await self._to_corrupt(entry.path, entry.path.name, reason)

    async def hold(self, target: Claimed | str, reason: str) -> None:
        """Stop an entry until ``release``: a claimed one (its owner, with ``reason`` as the
        record's note), or one in ``incoming/`` or ``deferred/`` by id (an operator)."""
        if isinstance(target, str):
            await self._move_by_id(target, ("incoming", "deferred"), "hold", "held", reason)
            return
        runtime = self._runtime
        record = target.record.with_state(runtime.clock(), note=reason)
        await self._rewrite(target, record)
        destination = self.dirs.entry("hold", target.queue_id)
        await runtime.committer.sync(destination.parent, lambda: move(target.path, destination))
        await self._record("held", target.queue_id, record, details={"reason": reason})

    async def release(self, queue_id: str) -> None:
        """``hold/`` -> ``incoming/`` (an operator)."""
        await self._move_by_id(queue_id, ("hold",), "incoming", "released", None)

    async def retry(self, queue_id: str) -> None:
        """``deferred/`` -> ``incoming/``: try now (an operator)."""
        await self._move_by_id(queue_id, ("deferred",), "incoming", "retried", None)

    async def delete(
        self,
        name: str,
        reason: str,
        *,
        only_from: tuple[State, ...] = ("incoming", "deferred", "hold", "corrupt"),
    ) -> None:
        """Remove an entry that is not being processed (an operator); recorded first.

        ``only_from`` narrows the states an entry may be deleted from: the quarantine
        purge passes ``("hold",)`` so an entry an operator released meanwhile is refused
        (``EntryStateError``), never deleted from ``incoming/``."""
        runtime = self._runtime
        state = await self._state_for_action(name, "delete", only_from)
        source = self.dirs.entry(state, name)
        parked = self.dirs.tmp / temp_name(name, DELETING_SUFFIX)
        # the tombstone goes before the park: a parked child is invisible to hand_off
        left = await self._leave_tombstone(await runtime.run(lambda: read_quietly(source)))
        await self._move_or_explain(name, source.parent, lambda: move(source, parked))
        record = await runtime.run(lambda: read_quietly(parked))
        try:
            await self._record("deleted", name, record, details={"reason": reason, "from": state})
        except BaseException:
            await runtime.committer.sync(source.parent, lambda: move(parked, source))
            raise
        await runtime.run(lambda: remove(parked))
        await self._after_removal(name, record, left)

    # -- recovery ----------------------------------------------------------------------

    async def recover(self, stale_after: timedelta = STALE_TEMP_AGE) -> RecoveryReport:
        """At a consumer's start: take the lock of this queue's slot, move the slot's
        active directory back to ``incoming/`` and, with their lock taken in turn, those
        of other slots whose consumer is not running (module docstring), remove ``tmp/``
        debris older than ``stale_after`` and the tombstones of ``handed/`` whose parent
        has left the spool (a crash between a removal and its clean-up leaves them;
        ``gateway.spool.tombstones``).

        ``SpoolBusy`` if another consumer holds this slot's lock. Debris is never an
        entry: no ``250`` was sent for it; ``spool.discarded`` records each abandoned
        write.
        """
        runtime = self._runtime
        dirs, slot = self.dirs, self.slot
        await runtime.run(self._lock.acquire)
        await runtime.run(lambda: dirs.create_active(slot))
        self._active_ready = True
        own = await runtime.run(lambda: requeue_active(dirs, slot))
        adopted = await runtime.run(lambda: requeue_orphaned_slots(dirs, slot))
        requeued = [(slot, name, record) for name, record in own] + adopted
        if requeued:
            await runtime.committer.sync(dirs.state("incoming"))
        for held_by, name, record in requeued:
            details = {"from": "active" if held_by == 0 else f"active/{held_by}"}
            await self._record("recovered", name, record, details=details)
        removed = await self.remove_debris(stale_after)
        orphans = await runtime.run(lambda: remove_orphans(runtime.layout, self.dirs))
        _log.info(
            "spool.recovered",
            stage=self.name,
            slot=slot,
            requeued=len(requeued),
            adopted=len(adopted),
            removed_temps=len(removed),
            removed_tombstones=len(orphans),
        )
        return RecoveryReport(
            tuple(name for _, name, _ in requeued), tuple(removed), tuple(orphans)
        )

    async def remove_debris(self, stale_after: timedelta = STALE_TEMP_AGE) -> list[str]:
        """Remove the files of ``tmp/`` older than ``stale_after`` (``remove_stale_temps``:
        abandoned writes, each recorded as ``spool.discarded``; second names a crash left;
        deletions a crash cut short); the names removed. Run by ``recover`` and, while the
        consumer runs, by ``sweep_if_due``."""
        runtime = self._runtime
        older_than = runtime.clock().timestamp() - stale_after.total_seconds()
        self._next_sweep = time.monotonic() + DEBRIS_SWEEP_INTERVAL
        removed = await runtime.run(lambda: remove_stale_temps(self.dirs, older_than))
        for name, abandoned in removed:
            if abandoned:
                await self._record(
                    "discarded",
                    name.split(".", 1)[0],
                    None,
                    details={"reason": "incomplete write abandoned (crash or timeout)"},
                )
        return [name for name, _ in removed]

    async def sweep_if_due(self) -> None:
        """``remove_debris`` every ``DEBRIS_SWEEP_INTERVAL`` while the consumer runs (its
        loop calls this), so that debris made after the start - a deletion a crash of
        ``missive queue delete`` cut short, a clear-text message in ``local/tmp/`` - does
        not wait for the next restart. A failure is logged and tried again next time."""
        if self._next_sweep is None or time.monotonic() < self._next_sweep:
            return
        try:
            removed = await self.remove_debris()
        except (OSError, SpoolError, AuditWriteError) as error:  # maintenance: never fatal
            _log.error("spool.sweep_failed", stage=self.name, error=str(error))
            return
        if removed:
            _log.info("spool.swept", stage=self.name, removed_temps=len(removed))

    def close(self) -> None:
        """Release the consumer lock of this queue's slot, if it holds it."""
        self._lock.release()

    # -- looking -----------------------------------------------------------------------

    async def locate(self, name: str) -> State | None:
        """The state directory holding entry ``name`` (any slot's, for ``active``), or None."""
        return await self._runtime.run(lambda: locate(self.dirs, name))

    async def locate_path(self, name: str) -> tuple[State, Path] | None:
        """The state holding entry ``name`` and its file (in ``active/``, the slot's)."""
        return await self._runtime.run(lambda: find_entry(self.dirs, name))

    async def scan(self, state: State) -> list[EntryInfo]:
        """Every file of one state directory with its record or its error, by name."""
        return await self._runtime.run(lambda: scan(self.dirs, state))

    # -- internals ---------------------------------------------------------------------

    async def _rewrite(self, entry: Claimed, record: QueueRecord) -> None:
        """Replace the owned file ``entry.path`` with the same content and ``record``."""
        try:
            await self._runtime.run(lambda: write_version(self.dirs, entry.path, record))
        except OSError as error:
            raise as_spool_error(error, "rewriting a queue file") from error

    async def _to_corrupt(self, path: Path, name: str, reason: str) -> None:
        runtime = self._runtime
        corrupt = self.dirs.state("corrupt")
        kept: list[Path] = []
        await runtime.committer.sync(
            corrupt, lambda: kept.append(move_to_free_name(path, corrupt, name))
        )
        (target,) = kept
        _log.warning("spool.corrupt", stage=self.name, name=name, reason=reason, kept=target.name)
        queue_id = name if is_queue_id(name) else None
        await self._record(
            "corrupt", queue_id, None, details={"reason": reason, "file": target.name}
        )

    async def _state_for_action(
        self, name: str, action: str, allowed: tuple[State, ...], to: State | None = None
    ) -> State:
        check_entry_name(name)
        state = await self.locate(name)
        if state is None:
            raise EntryNotFound(f"no entry {name} in stage {self.name}")
        if state == "active":
            raise _busy(self.name, name)
        if state == to:
            raise EntryStateError(f"{name} is already in {self.name}/{to}/")
        if state not in allowed:
            raise EntryStateError(
                f"cannot {action} {name}: it is in {self.name}/{state}/ "
                f"(only from {', '.join(f'{s}/' for s in allowed)})"
            )
        return state

    async def _move_or_explain(self, name: str, directory: Path, change: Change) -> None:
        """Make ``change`` (a rename of ``name``) and fsync ``directory``; or explain why
        not: a claimer took the entry meanwhile (``EntryStateError``)."""
        try:
            await self._runtime.committer.sync(directory, change)
        except FileNotFoundError:
            now = await self.locate(name)
            if now == "active":
                raise _busy(self.name, name) from None
            raise EntryStateError(
                f"{name} moved while acting on it (now in {now or 'no'} state); try again"
            ) from None

    async def _move_by_id(
        self,
        name: str,
        allowed: tuple[State, ...],
        to: State,
        kind: str,
        reason: str | None,
    ) -> None:
        runtime = self._runtime
        action = {"held": "hold", "released": "release", "retried": "retry"}[kind]
        state = await self._state_for_action(name, action, allowed, to)
        source = self.dirs.entry(state, name)
        target = self.dirs.entry(to, name)
        record = await runtime.run(lambda: read_quietly(source))
        await self._move_or_explain(name, target.parent, lambda: move(source, target))
        details = {"from": state, **({"reason": reason} if reason else {})}
        try:
            await self._record(kind, name, record, details=details)
        except BaseException:
            await runtime.committer.sync(source.parent, lambda: move_back(target, source))
            raise

    async def _record(
        self,
        kind: str,
        queue_id: str | None,
        record: QueueRecord | None,
        *,
        outcome: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        event = entry_event(
            kind,
            stage=self.name,
            actor=self._runtime.actor,
            queue_id=queue_id,
            record=record,
            outcome=outcome or kind,
            details=details,
        )
        await self._runtime.audit.record(event)


class _ParentQueued(Exception):
    """A removal that must wait for a tombstone (``Queue._unlink_owned``)."""


def _busy(stage: str, name: str) -> EntryStateError:
    return EntryStateError(
        f"{name} is being processed (in {stage}/active/); try again once it has left active/"
    )


def _show_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_whole(entry: Claimed) -> bytes:
    with entry.open() as reader:
        return b"".join(reader.chunks(max(1, reader.record.content_length)))
