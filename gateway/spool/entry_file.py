"""The blocking steps of writing one new entry: content, digest, record, temp file, name.

Role: the synchronous half of a new entry, shared by the two drivers that write one:

- ``gateway.spool.writer.EntryWriter`` (asyncio): the stages' hand-offs, ``Queue.add``
  and any in-process writer; it runs these steps in the spool's I/O threads and commits
  ``spool.added`` while the file's fsync runs;
- ``gateway.spool.scribe`` (one thread, no event loop): the SMTP front's scribe, which
  runs them inline for a batch of entries at a time.

Each method is one blocking step and does no scheduling; the order in which a driver
calls them is the durability and audit contract, the same for both (``writer``,
``gateway.spool.commit``): ``write_end`` then ``sync`` (the file's bytes and record on
disk), ``spool.added`` committed to the audit trail (after the bytes are written; a
driver may commit it while ``sync`` runs), then ``publish`` (the ``link`` into
``incoming/``), then an fsync of ``incoming/`` that began after the link, and only then
the queue id is returned (the SMTP ``250``).

Memory: content is held until ``FLUSH_SIZE`` bytes are pending, then written to the
temp file (created in ``<stage>/tmp/`` at the first flush) and hashed on the way; a
message that never reached ``FLUSH_SIZE`` is written at ``write_end`` with one
``write``, preamble first, into an unnamed file (``UnnamedTempFile``) that gets its only
name when published.

Each mailbox once (decision, session 8): the envelope an ``EntryFile`` writes is fixed
when it is built, and built here only: ``__init__`` keeps ``envelope.distinct()`` (the
first RCPT of each mailbox, ``gateway.spool.model.mailbox_key``: RFC 5321 §2.4, §3.3)
and logs ``spool.rcpt_merged`` with the count dropped. So both drivers - the
``WriterSide`` of a queue (``add``, ``open_writer``, ``hand_off``: every stage and tool)
and the front's scribe, which builds its entries from the ``OPEN`` frames of another
process - write each mailbox once, and a future driver cannot forget it. A record
listing one mailbox twice can now only be one written by an older gateway; the stages
that read records still handle it (``gateway.relay.agent_pass.Pass``, the relay's and
the local delivery's SMTP clients: one RCPT per mailbox).

Trust level: sees the content it writes; logs ``spool.rcpt_merged`` (queue id, stage,
count) and nothing else (its drivers log sizes and ids).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from gateway.audit.event import AuditEvent
from gateway.log import get_logger
from gateway.spool.atomic import TempFile, UnnamedTempFile, as_spool_error
from gateway.spool.errors import MessageTooLarge, SpoolError, SpoolWriteError
from gateway.spool.events import added_details, entry_event
from gateway.spool.ids import QueueId
from gateway.spool.layout import StageDirs
from gateway.spool.model import Envelope, Origin, QueueRecord, initial_state
from gateway.spool.record import PREAMBLE_SIZE, Preamble, encode_record, encode_trailer

FLUSH_SIZE = 256 * 1024

_log = get_logger("spool")


class EntryFile:
    """One entry being written, step by step (module docstring); not thread-safe: one
    step at a time, in the order the drivers keep."""

    def __init__(
        self,
        dirs: StageDirs,
        *,
        queue_id: QueueId,
        envelope: Envelope,
        origin: Origin,
        received: datetime,
        parent: QueueId | None = None,
        key: str | None = None,
        parent_stage: str | None = None,
        limit: int | None,
    ) -> None:
        self.dirs = dirs
        self.queue_id = queue_id
        self.envelope = each_mailbox_once(envelope, queue_id, dirs.name)
        self.origin = origin
        self._received = received
        self._parent = parent
        self._key = key
        self._parent_stage = parent_stage
        self._limit = limit
        self._temp: TempFile | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._digest = hashlib.sha256()
        self.size = 0  # content bytes received so far

    # -- content -----------------------------------------------------------------------

    def add(self, chunk: bytes) -> bytes | None:
        """Count and keep ``chunk``; the bytes to ``write_content`` now once
        ``FLUSH_SIZE`` are pending, else None. ``MessageTooLarge`` past the limit (the
        size then includes ``chunk``; the driver discards the entry)."""
        self.size += len(chunk)
        if self._limit is not None and self.size > self._limit:
            self.drop_pending()
            raise MessageTooLarge(self._limit)
        self._pending.append(bytes(chunk))
        self._pending_size += len(chunk)
        if self._pending_size >= FLUSH_SIZE:
            return self.take_pending()
        return None

    def take_pending(self) -> bytes:
        """The content kept in memory, now the caller's to write."""
        data = b"".join(self._pending)
        self.drop_pending()
        return data

    def drop_pending(self) -> None:
        self._pending.clear()
        self._pending_size = 0

    def write_content(self, data: bytes) -> None:
        """Blocking: hash and append content bytes (the temp file created on first use)."""
        self._digest.update(data)
        self._file().write(data)

    def _file(self) -> TempFile:
        if self._temp is None:
            self._temp = create_entry_file(_tmp(self.dirs), self.queue_id)
        return self._temp

    # -- ending ------------------------------------------------------------------------

    def write_end(self, data: bytes, now: datetime) -> QueueRecord:
        """Blocking: the last content bytes, the record, then the preamble; the record.
        A message that never left memory is written with one ``write``, preamble first."""
        self._digest.update(data)
        record = QueueRecord(
            queue_id=self.queue_id,
            parent=self._parent,
            received=self._received,
            created=now,
            content_length=self.size,
            content_sha256=self._digest.hexdigest(),
            envelope=self.envelope,
            origin=self.origin,
            state=initial_state(self.envelope, now),
            parent_stage=self._parent_stage,
        )
        payload = encode_record(record)
        preamble = Preamble(self.size, len(payload))
        trailer = encode_trailer(preamble, payload)
        if self._temp is None:
            self._temp = UnnamedTempFile.create(_tmp(self.dirs), self.queue_id)
            self._temp.write(b"".join((preamble.encode(), data, trailer)))
            return record
        self._temp.write(data)
        self._temp.write(trailer)
        self._temp.write_at(preamble.encode(), 0)
        return record

    def start_writeback(self) -> None:
        """Blocking but quick: ask the kernel to start writing the file's dirty pages
        now, without waiting (Linux's ``POSIX_FADV_DONTNEED`` starts their writeback,
        then drops only the pages already clean: those under writeback stay cached).
        The scribe calls it for every file of a batch before their fsyncs, made one
        after another, so each fsync finds its writes under way instead of starting
        them (measured: 30-55 % less time per file in batches of 3 and 10, with or
        without a journal, ``bench/README.md``). Advisory: an error is ignored, the
        fsync that follows is what makes the file durable."""
        try:
            os.posix_fadvise(self._file().fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def sync(self) -> None:
        """Blocking: ``fsync`` the file (and close it, unless it is unnamed: its
        descriptor is what ``publish`` links)."""
        self._file().finish()

    def publish(self) -> None:
        """Blocking: link the file into ``incoming/`` under the queue id (never over an
        existing name). ``LinkFailed`` if it fails, telling whether the file got the
        name all the same (only the removal of its temp name failed)."""
        temp, target = self._file(), self.target
        try:
            temp.publish(target)
        except OSError as error:
            raise LinkFailed(error, linked=_is_named(temp, target)) from error

    def discard(self) -> None:
        """Blocking: close the file and remove its temp name (idempotent, never raises;
        never touches a name it was published under)."""
        self.drop_pending()
        if self._temp is not None:
            self._temp.discard()

    @property
    def incoming(self) -> Path:
        return _incoming(self.dirs)

    @property
    def target(self) -> Path:
        return self.incoming / self.queue_id

    # -- audit events ------------------------------------------------------------------

    def added_event(self, record: QueueRecord, actor: str) -> AuditEvent:
        """``spool.added``: the entry is written, with who sent it and how."""
        return entry_event(
            "added",
            stage=self.dirs.name,
            actor=actor,
            queue_id=self.queue_id,
            record=record,
            outcome="queued",
            details=added_details(record, self._key),
        )

    def closing_event(
        self, kind: str, reason: str, actor: str, record: QueueRecord | None = None
    ) -> AuditEvent:
        """``spool.refused`` (never complete) or ``spool.discarded`` (after ``added``)."""
        details: Mapping[str, str] = {
            "reason": reason,
            "size": str(self.size),
            "listener": self.origin.listener,
        }
        return entry_event(
            kind,
            stage=self.dirs.name,
            actor=actor,
            queue_id=self.queue_id,
            record=record,
            envelope=self.envelope,
            origin=self.origin,
            outcome=kind,
            details=details,
        )


def each_mailbox_once(envelope: Envelope, queue_id: QueueId, stage: str) -> Envelope:
    """``envelope.distinct()``, with ``spool.rcpt_merged`` logged when it dropped a RCPT
    (module docstring, "Each mailbox once")."""
    distinct = envelope.distinct()
    if distinct is not envelope:
        dropped = len(envelope.recipients) - len(distinct.recipients)
        _log.info("spool.rcpt_merged", queue_id=queue_id, stage=stage, dropped=dropped)
    return distinct


@functools.lru_cache(maxsize=256)
def _incoming(dirs: StageDirs) -> Path:
    """The stage's ``incoming/``, one ``Path`` object per stage: built once, and its hash
    (the group committer's key) computed once, not for every message."""
    return dirs.state("incoming")


@functools.lru_cache(maxsize=256)
def _tmp(dirs: StageDirs) -> Path:
    return dirs.tmp


def create_entry_file(tmp: Path, queue_id: str) -> TempFile:
    """Blocking: a temp file with room for the preamble (written last, ``pwrite``)."""
    temp = TempFile.create(tmp, queue_id)
    try:
        temp.write(bytes(PREAMBLE_SIZE))
    except BaseException:
        temp.discard()
        raise
    return temp


class LinkFailed(Exception):
    """``publish`` failed with ``error``; ``linked``: the file had got its entry name
    all the same (only the removal of its temp name failed). Not an ``OSError``, so
    that a driver cannot take it for the directory fsync's error."""

    def __init__(self, error: OSError, *, linked: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.linked = linked


def _is_named(temp: TempFile, target: Path) -> bool:
    """Whether ``target`` is ``temp``'s file (same inode), after a failed ``publish``.
    ``TempFile.publish`` links, then unlinks the temp name: if only the unlink failed,
    both names are the same file. An ``UnnamedTempFile``'s ``path`` is its directory,
    never ``target``: its ``publish`` can fail only at the link."""
    try:
        return os.path.samestat(os.lstat(temp.path), os.lstat(target))
    except OSError:
        return False


def publish_failure(error: OSError) -> str:
    """The ``spool.discarded`` reason of a link that failed."""
    if isinstance(error, FileExistsError):
        return "publish failed: another entry already has this queue id"
    return f"publish failed: {error.strerror or error}"


def publish_error(error: OSError, queue_id: str, incoming: Path) -> SpoolWriteError:
    """The error of a link that failed; for a taken name, one that says the entry there
    is another's (never "syncing": our file was never visible)."""
    if isinstance(error, FileExistsError):
        return SpoolWriteError(
            f"publishing queue file {queue_id}: {incoming} already holds an entry of that "
            "id, not this one (left untouched; this one discarded)"
        )
    return as_spool_error(error, f"publishing queue file {queue_id} into {incoming}")


def spool_error(error: BaseException) -> SpoolError:
    """A failure to write or sync the file, as the spool error its driver raises."""
    if isinstance(error, SpoolError):
        return error
    if isinstance(error, OSError):
        return as_spool_error(error, "writing a queue file")
    return SpoolError(str(error))
