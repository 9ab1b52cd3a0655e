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

``Queue`` is one class made of one part per concern, each a module with its own
invariants::

    queue_values     Claimed, RecoveryReport, check_entry_name: the values it hands out
    queue_core       QueueCore: its state, locate/locate_path/scan, and the steps the
                     sides share (rewrite a version, move to corrupt/, record an event)
    queue_writing    WriterSide: add, open_writer, hand_off (idempotent hand-offs)
    queue_claims     ConsumerSide: claim, content, read_all, defer, quarantine
    queue_operator   OperatorSide: hold, release, retry, the checks of actions by name
    queue (here)     Queue: how entries leave the spool (complete, bounce, delete, with
                     the tombstone rule) and a slot's clean-up (recover, remove_debris,
                     sweep_if_due, close)

Why base classes (mixins) rather than module-level functions the class delegates to:
each method moved unchanged (its ``self``, signature and body), so ``Queue`` keeps its
one class and its exact API, the split adds no second signature per operation, and a
reader finds an operation as a method in the module of its concern. The parts share
state only through ``QueueCore.__init__`` (every attribute is set there) and do not call
each other, except ``Queue`` here, which uses the operator's checks for ``delete``.
Every name that callers import from this module (``Queue``, ``Claimed``,
``RecoveryReport``, ``check_entry_name``, ``READ_AHEAD``, ``ContentSource``) still is.
Removals and recovery stay here, as one concern (entries leaving the spool, with the
tombstone rule, and what a crash left behind), and because tests patch ``remove_children_of``,
``remove_stale_temps`` and ``DEBRIS_SWEEP_INTERVAL`` on this module: the code that uses
them must live in it.

Invariants (the whole queue; each part's own are in its module):

- **Nothing acknowledged is lost.** An entry exists as exactly one complete file in one
  state directory; every move is one ``rename``; files are never modified in place (a
  new version replaces the old one atomically, ``gateway.spool.record``). What is
  fsynced when is in ``gateway.spool.commit``.
- **At most a duplicate.** A hand-off writes its child durably before the parent is
  completed (``gateway.spool.queue_writing``). A removal here of a child whose parent is
  still in the spool first leaves a tombstone (``handed/``; ``gateway.spool.tombstones``)
  that a repeated hand-off finds. Only a crash after the next hop's ``250`` and before
  ``complete`` delivers twice (ARCHITECTURE).
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
  of ``incoming/``/``deferred/`` (``gateway.spool.queue_claims``), and an entry goes
  back there only from a dead consumer's directory. The slot of a ``Queue`` comes from
  its ``Spool`` (``gateway.spool.spooldir``); a single consumer is slot 0, the layout of
  old.
- **Few thread hops per entry** (issues #6/#7). A removal's look for the parent (the
  tombstone rule) is made in the group-committed job that unlinks the entry (when the
  parent is still there, nothing is unlinked: the tombstone is written first), and so
  is the look for tombstones of the entry's own children: a clean-up job follows only
  if it saw some (or wrote a tombstone).
- **Audit.** Removals (complete, bounce, delete) are recorded before they happen; a
  deletion is undone if its event cannot be recorded (so is an operator's move,
  ``gateway.spool.queue_operator``); the audit error is raised in every case except the
  clean-up of a write that is already failing.
- **Debris is never an entry.** ``tmp/`` holds writes no ``250`` was sent for, second
  names a crash left and deletions a crash cut short; ``recover`` and, while the
  consumer runs, ``sweep_if_due`` remove what is older than ``STALE_TEMP_AGE``.

Trust level: any gateway process that owns a stage; sees content only through the
reader it hands to the consumer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from gateway.audit.errors import AuditWriteError
from gateway.log import get_logger
from gateway.spool.atomic import DELETING_SUFFIX, move, remove, temp_name
from gateway.spool.errors import SpoolError
from gateway.spool.events import outcome_of
from gateway.spool.ids import QueueId
from gateway.spool.layout import State
from gateway.spool.model import QueueRecord, RecipientState, RecipientStatus
from gateway.spool.queue_claims import READ_AHEAD, ConsumerSide
from gateway.spool.queue_operator import OperatorSide
from gateway.spool.queue_values import Claimed, RecoveryReport, check_entry_name
from gateway.spool.queue_writing import ContentSource, WriterSide
from gateway.spool.stagefiles import (
    read_quietly,
    remove_stale_temps,
    requeue_active,
    requeue_orphaned_slots,
)
from gateway.spool.tombstones import (
    has_children,
    parent_alive,
    remove_children_of,
    remove_orphans,
    remove_tombstone,
    write_tombstone,
)

__all__ = [
    "DEBRIS_SWEEP_INTERVAL",
    "READ_AHEAD",
    "STALE_TEMP_AGE",
    "Claimed",
    "ContentSource",
    "Queue",
    "RecoveryReport",
    "check_entry_name",
]

STALE_TEMP_AGE = timedelta(hours=1)
DEBRIS_SWEEP_INTERVAL = 15 * 60.0  # seconds between two sweeps of tmp/ by a running consumer

_log = get_logger("spool")


class Queue(WriterSide, ConsumerSide, OperatorSide):
    """The entries of one stage. Built by ``Spool.queue``. Its parts: module docstring."""

    # -- removals: complete, bounce (the consumer), delete (an operator) ---------------

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

    # -- a consumer slot's clean-up ----------------------------------------------------

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


class _ParentQueued(Exception):
    """A removal that must wait for a tombstone (``Queue._unlink_owned``)."""
