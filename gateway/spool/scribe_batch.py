"""The spool scribe's batch endings: the steps that make a batch's commits durable.

Role: ``gateway.spool.scribe.Scribe`` reads a batch of frames from its front and keeps
the ``COMMIT`` and ``ABORT`` frames it read; this module holds what ends them
(``BatchSteps``, a base class of ``Scribe``), the records of an entry under way
(``_Open``, ``_Ending``, ``_Batch``) and how an ending is answered (``_answer``). Split
from ``gateway.spool.scribe`` (session 7, pure move): the numbered steps 1-4 of that
module's docstring are carried out here, and its invariants hold here:

- ``DONE`` for a ``COMMIT`` only once its file is fsynced, its ``spool.added`` committed
  in the batch's one audit transaction (``AuditStore.append``), its link made into
  ``incoming/`` and ``incoming/`` fsynced (``_Ending.done`` is set in no other way).
- Nothing outlives a failure: a failing entry has its file discarded and its end
  recorded, ``spool.refused`` before its ``spool.added`` was committed,
  ``spool.discarded`` after (``_end_after_error``, ``_guarded``, ``_link_one``); one
  entry's step is guarded alone, so it fails alone, not its batch.
- A refusal's reason is cut to ``MAX_REASON`` characters (``_bounded``): the protocol
  does not bound an ``ABORT``'s, the trail takes 4 KiB.

The step functions are looked up at call time on their modules' classes
(``EntryFile.write_end``, ``AuditStore.append``, ``EntryFile.publish``) or through the
name ``sync_directory`` bound at import, so the crash tests' ``sitecustomize`` wrappers
(installed before this module is imported) still reach every step.

Security notes: it sees no key; it logs only queue ids, sizes, reasons it wrote itself
and error types (never an exception's text: it may quote content).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.audit.event import AuditEvent
from gateway.audit.store import AuditStore
from gateway.log import get_logger
from gateway.spool.atomic import as_spool_error, sync_directory
from gateway.spool.entry_file import (
    EntryFile,
    LinkFailed,
    publish_error,
    publish_failure,
    spool_error,
)
from gateway.spool.errors import SpoolError, SpoolWriteError
from gateway.spool.layout import RECEIVED, StageDirs
from gateway.spool.model import QueueRecord, RecordError
from gateway.spool.runtime import Checkpoint
from gateway.spool.scribe_protocol import Kind, encode_failure, frame

_log = get_logger("spool.scribe")

MAX_REASON = 1000  # characters of a refusal's reason kept in the trail (``_bounded``)


@dataclass(eq=False)
class _Open:
    """An entry between its ``OPEN`` and its ``COMMIT`` or ``ABORT``. ``failure``: a
    write failed or the limit was passed; its file is gone and ``spool.refused`` queued,
    the rest of its ``DATA`` is dropped and its ``COMMIT`` answered with the failure."""

    entry: EntryFile
    failure: SpoolError | None = None


@dataclass(eq=False)
class _Ending:
    """A ``COMMIT`` (``abort_reason`` None) or an ``ABORT`` of one entry, and its outcome.

    ``audited``: what the batch's events say of it so far: None (nothing yet),
    ``"added"`` (its ``spool.added`` is in the batch's events), ``"closed"`` (its end is
    audited and its file gone: refused, discarded, or an abort) or ``"linked"`` (it is in
    ``incoming/``). An unexpected error ends what is neither closed nor linked
    (``Scribe._end_after_error``)."""

    handle: int
    opened: _Open
    abort_reason: str | None
    record: QueueRecord | None = None
    error: BaseException | None = None
    audited: str | None = None
    done: bool = False  # set only once every step ended well: the one way to a DONE

    @property
    def entry(self) -> EntryFile:
        return self.opened.entry


@dataclass
class _Batch:
    """What one batch commits to the audit trail, and the endings it answers."""

    endings: list[_Ending] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)
    recorded: bool = False  # ``events`` committed to the trail (step 2)


class BatchSteps:
    """Steps 1-3 of ``gateway.spool.scribe``'s docstring for one batch's endings; a base
    of ``Scribe``, which sets the attributes below and answers the endings (step 4)."""

    _dirs: StageDirs
    _store: AuditStore
    _actor: str
    _clock: Callable[[], datetime]
    _checkpoint: Checkpoint

    def _end_after_error(self, batch: _Batch, error: Exception) -> None:
        """An unexpected error stopped the steps: each entry not done fails with it; one
        neither audited closed nor linked has its file closed and removed, and its end
        recorded (``spool.discarded`` after a committed ``added``, else ``refused``)."""
        closing: list[AuditEvent] = []
        for ending in batch.endings:
            if ending.done:
                continue
            ending.error = ending.error or ending.opened.failure or error
            if ending.audited in ("closed", "linked") or ending.opened.failure is not None:
                continue  # (a failure during DATA was audited then)
            ending.entry.discard()
            if ending.audited == "added" and batch.recorded:
                closing.append(self._discarded(ending, "error in the spool scribe"))
            else:
                reason = ending.abort_reason or "error in the spool scribe"
                closing.append(self._refused(ending.entry, reason))
            ending.audited = "closed"
        if not batch.recorded:  # the refusals queued before the error, not the adds
            closing[:0] = [e for e in batch.events if e.type != "spool.added"]
        if closing and not self._record(closing):
            _log.error("spool.audit_failed", audit_event="spool.refused")

    def _end_steps(self, batch: _Batch) -> None:
        now = self._clock()
        ended = [e for e in batch.endings if self._write_end(e, batch, now)]
        written = [e for e in ended if self._sync(e, batch)]
        for ending in batch.endings:  # an abort is answered DONE once its file is gone
            ending.done = ending.abort_reason is not None
        if not self._record(batch.events):  # (a refusal not recorded is logged, as before)
            for ending in written:  # not recorded: never published, never a 250
                ending.entry.discard()
                ending.error = SpoolWriteError("the audit record of the entry was not committed")
                ending.audited = "closed"
            return
        batch.recorded = True
        if written:
            self._checkpoint("add.synced")
            self._publish(written)

    def _write_end(self, ending: _Ending, batch: _Batch, now: datetime) -> bool:
        """Step 1, first half, for a ``COMMIT``: the end of its file written and its
        writeback started (True if so); an ``ABORT`` drops its file and queues its
        refusal. Every other outcome is set on ``ending``."""
        opened, entry = ending.opened, ending.entry
        ending.audited = "closed"  # unless the file is written and synced
        if ending.abort_reason is not None:
            if opened.failure is None:
                entry.discard()
                batch.events.append(self._refused(entry, ending.abort_reason))
            return False
        if opened.failure is not None:
            ending.error = opened.failure
            return False

        def write() -> None:
            ending.record = entry.write_end(entry.take_pending(), now)
            self._checkpoint("add.written")
            entry.start_writeback()  # the batch's fsyncs then wait on writes under way

        return self._guarded(ending, batch, write)

    def _sync(self, ending: _Ending, batch: _Batch) -> bool:
        """Step 1, second half: the file fsynced, then its ``spool.added`` queued for the
        batch's transaction (True if so)."""
        entry, record = ending.entry, ending.record
        assert record is not None
        added: list[AuditEvent] = []

        def sync() -> None:
            entry.sync()
            added.append(entry.added_event(record, self._actor))  # may refuse a field

        if not self._guarded(ending, batch, sync):
            return False
        ending.audited = "added"
        batch.events.extend(added)
        return True

    def _guarded(self, ending: _Ending, batch: _Batch, step: Callable[[], None]) -> bool:
        """Run one entry's ``step``; if it fails, the entry alone is refused (its file
        discarded, ``spool.refused`` queued, the error set on ``ending``)."""
        entry = ending.entry
        try:
            step()
        except (OSError, SpoolError, RecordError) as error:
            failure: BaseException = spool_error(error)
            reason = str(failure)
        except Exception as error:  # noqa: BLE001 - answered as FAILED (module docstring)
            _log_unexpected(error, entry)
            failure, reason = error, "error in the spool scribe"
        else:
            return True
        entry.discard()
        batch.events.append(self._refused(entry, reason))
        ending.error = failure
        return False

    def _record(self, events: list[AuditEvent]) -> bool:
        """Step 2: one transaction; False (logged) if it was not committed."""
        if not events:
            return True
        try:
            self._store.append(events)
        except Exception as error:  # noqa: BLE001 - every entry must hear back
            _log.error("spool.audit_failed", records=len(events), error=type(error).__name__)
            return False
        return True

    def _publish(self, recorded: list[_Ending]) -> None:
        """Step 3: link each recorded file, then one fsync of ``incoming/``; the
        ``spool.discarded`` of those whose link failed are recorded whatever happens."""
        linked: list[_Ending] = []
        discarded: list[AuditEvent] = []
        try:
            for ending in recorded:
                if self._link_one(ending, discarded):
                    linked.append(ending)
            if linked:
                self._sync_linked(linked)
        finally:
            if discarded and not self._record(discarded):
                _log.error("spool.audit_failed", audit_event="spool.discarded")

    def _sync_linked(self, linked: list[_Ending]) -> None:
        """One fsync of ``incoming/``, after every link: then the linked are ``DONE``."""
        try:
            sync_directory(self._dirs.state("incoming"))
        except OSError as error:
            failure = as_spool_error(error, "syncing the incoming directory")
            for ending in linked:  # visible, not known durable: no 250
                ending.entry.discard()
                ending.error = failure
            return
        self._checkpoint("add.published")
        for ending in linked:
            ending.done = True
            _log_added(ending)

    def _link_one(self, ending: _Ending, discarded: list[AuditEvent]) -> bool:
        """Link one file; False (its error set, its discard queued) if it failed."""
        entry = ending.entry
        try:
            entry.publish()
        except LinkFailed as failed:
            if failed.linked:  # visible under its name, not known durable
                doing = "removing the temp name of a published queue file"
                ending.error = as_spool_error(failed.error, doing)
                ending.audited = "linked"
                return False
            entry.discard()
            discarded.append(self._discarded(ending, publish_failure(failed.error)))
            ending.error = publish_error(failed.error, entry.queue_id, entry.incoming)
            return False
        except Exception as error:  # noqa: BLE001 - answered as FAILED (module docstring)
            _log_unexpected(error, entry)
            entry.discard()
            discarded.append(self._discarded(ending, "error in the spool scribe"))
            ending.error = error
            return False
        ending.audited = "linked"
        self._checkpoint("add.linked")  # (outside the try: the file is linked by now)
        return True

    def _refused(self, entry: EntryFile, reason: str) -> AuditEvent:
        reason = _bounded(reason)
        _log.info("spool.refused", queue_id=entry.queue_id, stage=RECEIVED, reason=reason)
        return entry.closing_event("refused", reason, self._actor)

    def _discarded(self, ending: _Ending, reason: str) -> AuditEvent:
        """``spool.discarded`` of an entry whose ``spool.added`` was committed."""
        entry, reason = ending.entry, _bounded(reason)
        ending.audited = "closed"
        _log.info("spool.discarded", queue_id=entry.queue_id, stage=RECEIVED, reason=reason)
        return entry.closing_event("discarded", reason, self._actor, ending.record)


def _bounded(reason: str) -> str:
    """A reason the trail takes (4 KiB of UTF-8 at most): the front's ``ABORT`` payload
    is not bounded by the protocol, so it is cut here (the client sends at most 1000)."""
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."


def _answer(ending: _Ending) -> bytes:
    if not ending.done:
        error = ending.error or SpoolWriteError("the spool scribe failed")
        return frame(Kind.FAILED, ending.handle, encode_failure(error))
    queue_id = "" if ending.abort_reason is not None else ending.entry.queue_id
    return frame(Kind.DONE, ending.handle, queue_id.encode("ascii"))


def _log_added(ending: _Ending) -> None:
    entry = ending.entry
    _log.info("spool.added", queue_id=entry.queue_id, stage=RECEIVED, size=entry.size)


def _log_unexpected(error: Exception, entry: EntryFile) -> None:
    """Anything but a spool or OS error is a bug or an unforeseen failure, logged by
    type (never its text: it may quote content)."""
    if not isinstance(error, (SpoolError, OSError, RecordError)):
        _log.error("scribe.error", queue_id=entry.queue_id, error=type(error).__name__)
