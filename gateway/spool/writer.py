"""Streaming one new entry into a stage: bounded memory, size limit, durable before return.

The asyncio driver of ``gateway.spool.entry_file.EntryFile`` (whose blocking steps it
runs in the spool's I/O threads): the stages' hand-offs and ``Queue.add`` write with it,
and an SMTP front could too (in ``missive serve`` the front's spool scribe writes its
entries, driving the same steps itself: ``gateway.spool.scribe``). A caller opens a
writer, feeds it the content's chunks and commits it once it has decided to accept (or
aborts it, say when the From: header is not one the login may use). Memory is bounded
by ``FLUSH_SIZE`` plus one chunk, whatever the message size (twice that for a moment
at ``commit``, when a message that never left memory is joined into one ``write``):
chunks are written to ``<stage>/tmp/`` in the I/O threads, hashed (SHA-256) on the
way, and never kept.

``commit()`` (the order is the durability and audit contract):

1. write the last chunks, the record and its digest, then the preamble (``pwrite``; a
   message that never left memory is written with one ``write``, preamble first);
2. concurrently: ``fsync`` the file, and commit ``spool.added`` to the audit trail
   (the event leaves as soon as the bytes are written, while the fsync runs);
   if either fails the temp file is removed and the error raised (nothing published:
   the front answers 4xx; a ``spool.discarded`` follows an ``added`` that was
   committed; a failed write in 1 is a ``spool.refused``, no ``added`` was sent);
3. ``link`` the file into ``incoming/`` (never over an existing name) and ``fsync``
   ``incoming/``, both in one group-committed batch (``gateway.spool.commit``);
4. return the queue id: only now may the front answer ``250``.

A crash after 2 and before the end of 3 leaves an ``added`` event for an entry that
may not exist after restart; its sender had no ``250`` and will retry (the trail shows
the attempt). A crash after 3 and before the ``250`` leaves a queued message whose
sender will retry: a duplicate, never a loss.

The temp file is created at the first flush (or at ``commit`` for a message smaller
than ``FLUSH_SIZE``: then an ``UnnamedTempFile``, which gets its only name when it is
linked into ``incoming/``, ``gateway.spool.atomic``). Steps 1 and 2's fsync are one
I/O-thread job, which tells the loop (``call_soon_threadsafe``) when the bytes are
written so the audit commit starts then; so a small message costs two thread hops:
write and fsync (while the audit commits), then link and directory fsync (shared with
concurrent adds). The end of the first job wakes the loop only if the loop already
waits for it (``_JobEnd``): the audit commit usually takes longer than the file's
fsync, and the loop, woken by the audit's settlement, then finds the fsync done
(one wake-up of the loop and one ``send`` of the I/O thread less per message than a
``run_in_executor`` future; issue 5). With inline I/O (``io_threads=0``, the stage
workers: ``gateway.spool.runtime``) the job runs on the loop's own thread, so the record
is handed over directly instead of through ``call_soon_threadsafe``: no self-pipe
``send``/``recv`` and no extra turn of the loop per entry written (session 9).

``commit`` runs shielded from cancellation: if the SMTP client goes away during the
commit, the commit still completes (a possible duplicate rather than a half-written
entry); cancellation reaches the caller afterwards.

``write`` raises ``MessageTooLarge`` as soon as the limit is passed; the temp file is
then already removed and ``spool.refused`` recorded, and the writer is closed.

Trust level: runs in the SMTP front; sees the content, logs only its size and digest.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from gateway.log import get_logger
from gateway.spool.atomic import as_spool_error
from gateway.spool.entry_file import (
    FLUSH_SIZE,
    EntryFile,
    LinkFailed,
    publish_error,
    publish_failure,
    spool_error,
)
from gateway.spool.errors import MessageTooLarge, SpoolError
from gateway.spool.ids import QueueId
from gateway.spool.model import QueueRecord, RecordError
from gateway.spool.runtime import SpoolRuntime

__all__ = ["FLUSH_SIZE", "EntryWriter"]

_log = get_logger("spool")


class EntryWriter:
    """One entry being written; ``write`` chunks, then ``commit`` or ``abort``."""

    def __init__(self, runtime: SpoolRuntime, entry: EntryFile) -> None:
        self._runtime = runtime
        self._entry = entry
        self.queue_id = entry.queue_id
        self._open = True

    @property
    def size(self) -> int:
        """Content bytes received so far."""
        return self._entry.size

    # -- streaming ---------------------------------------------------------------------

    async def write(self, chunk: bytes) -> None:
        """Add ``chunk`` to the content (``MessageTooLarge`` past the limit)."""
        self._check_open()
        if not chunk:
            return
        entry = self._entry
        try:
            data = entry.add(chunk)
        except MessageTooLarge as error:
            await self._close_without_entry("refused", f"message larger than {error.limit} bytes")
            raise
        if data is not None:
            try:
                await self._runtime.run_to_end(lambda: entry.write_content(data))
            except OSError as error:
                failure = as_spool_error(error, "writing a queue file")
                await self._close_without_entry("refused", str(failure))
                raise failure from error

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this entry writer is closed (committed or aborted)")

    # -- ending ------------------------------------------------------------------------

    async def abort(self, reason: str) -> None:
        """Drop the partial entry and record ``spool.refused`` with ``reason``."""
        if self._open:
            await self._close_without_entry("refused", reason)

    async def commit(self) -> QueueId:
        """Make the entry durable and visible in ``incoming/``; return its id."""
        self._check_open()
        self._open = False
        task = asyncio.ensure_future(self._commit())
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _commit(self) -> QueueId:
        runtime = self._runtime
        data = self._entry.take_pending()
        loop = asyncio.get_running_loop()
        written: asyncio.Future[QueueRecord] = loop.create_future()

        loop_thread = threading.get_ident()

        def report(outcome: QueueRecord | BaseException) -> None:
            if threading.get_ident() == loop_thread:  # inline I/O: the job runs here
                _settle(written, outcome)
            else:
                loop.call_soon_threadsafe(_settle, written, outcome)

        sync = _JobEnd(loop)
        runtime.io.executor.submit(self._write_end_and_sync, data, report, sync)
        try:
            record = await written
        except (OSError, SpoolError, RecordError) as error:
            await sync.settled()
            failure = spool_error(error)
            await self._close_without_entry("refused", str(failure))
            raise failure from error
        except BaseException:
            await sync.settled()
            raise
        await self._sync_and_record(record, sync)
        runtime.checkpoint("add.synced")
        await self._publish(record)
        runtime.checkpoint("add.published")
        _log.info(
            "spool.added",
            queue_id=self.queue_id,
            stage=self._entry.dirs.name,
            size=record.content_length,
            parent=record.parent,
        )
        return self.queue_id

    def _write_end_and_sync(
        self, data: bytes, report: Callable[[QueueRecord | BaseException], None], end: _JobEnd
    ) -> None:
        """In an I/O thread, one job: write the end (``report`` the record, or the error,
        to the loop as soon as it is written), then ``fsync`` the file; its outcome goes
        to ``end`` whatever happens (the loop may be waiting for it)."""
        error: BaseException | None = None
        try:
            self._write_end_and_sync_steps(data, report)
        except BaseException as failure:  # noqa: BLE001 - handed to the loop through ``end``
            error = failure
        finally:
            end.finish(error)

    def _write_end_and_sync_steps(
        self, data: bytes, report: Callable[[QueueRecord | BaseException], None]
    ) -> None:
        try:
            record = self._entry.write_end(data, self._runtime.clock())
            self._runtime.checkpoint("add.written")
        except BaseException as error:
            report(error)
            raise
        report(record)
        self._entry.sync()

    async def _publish(self, record: QueueRecord) -> None:
        """Link into ``incoming/`` and fsync it, in one group-committed batch.

        The failure is told apart by where it was raised (``GroupCommitter.sync``
        raises a change's own error to its caller alone, an fsync's to the whole
        batch), never by looking at ``incoming/`` afterwards: a name already there may
        be another entry's (an id collision, another writer of the same id). So:

        - the link failed (``LinkFailed``, not ``linked``): our file never got its
          name; it is discarded and ``spool.discarded`` recorded; the entry that holds
          the name, if any, is not ours and is left untouched;
        - the link succeeded but removing the temp name failed (``linked``): the entry
          is visible, not known durable; nothing is discarded (it is in ``incoming/``);
        - the change succeeded and the directory fsync failed (any other ``OSError``):
          visible, not known durable.
        """
        runtime, entry = self._runtime, self._entry

        def link() -> None:
            entry.publish()
            runtime.checkpoint("add.linked")

        try:
            await runtime.committer.sync(entry.incoming, link)
        except LinkFailed as failed:
            if failed.linked:
                doing = "removing the temp name of a published queue file"
                raise as_spool_error(failed.error, doing) from failed.error
            await self._discard(record, publish_failure(failed.error))
            raise publish_error(failed.error, self.queue_id, entry.incoming) from failed.error
        except OSError as error:
            # linked, but the directory fsync failed: visible, not known durable. The
            # descriptor is released all the same (``discard`` never touches a name the
            # file was published under: only its own temp name, gone once linked)
            await runtime.run(entry.discard)
            raise as_spool_error(error, "syncing the incoming directory") from error

    async def _sync_and_record(self, record: QueueRecord, sync: _JobEnd) -> None:
        """Commit ``spool.added`` while ``sync`` fsyncs the file; both or neither."""
        runtime = self._runtime
        try:
            event = self._entry.added_event(record, runtime.actor)  # may refuse a field
            await runtime.audit.record(event)
        except BaseException:
            await sync.settled()
            await runtime.run(self._entry.discard)
            raise
        try:
            await sync.wait()
        except OSError as error:
            await self._discard(record, "fsync failed")
            raise as_spool_error(error, "syncing a queue file") from error

    async def _discard(self, record: QueueRecord | None, reason: str) -> None:
        """Remove the temp file; record ``spool.discarded`` if ``added`` was recorded."""
        await self._runtime.run(self._entry.discard)
        if record is not None:
            await self._record_quietly("discarded", reason, record)

    async def _close_without_entry(self, kind: str, reason: str) -> None:
        self._open = False
        await self._runtime.run(self._entry.discard)
        await self._record_quietly(kind, reason, None)

    async def _record_quietly(self, kind: str, reason: str, record: QueueRecord | None) -> None:
        """Record a refusal or discard; the caller is already failing, so a broken trail
        is logged here rather than raised over the original error."""
        runtime = self._runtime
        event = self._entry.closing_event(kind, reason, runtime.actor, record)
        try:
            await runtime.audit.record(event)
        except Exception as error:  # noqa: BLE001 - see docstring
            _log.error(
                "spool.audit_failed",
                audit_event=event.type,
                queue_id=self.queue_id,
                error=type(error).__name__,
            )
        _log.info(
            f"spool.{kind}", queue_id=self.queue_id, stage=self._entry.dirs.name, reason=reason
        )

    # -- context manager: abort on error -----------------------------------------------

    async def __aenter__(self) -> EntryWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._open:
            reason = "not committed" if exc_type is None else f"aborted ({exc_type.__name__})"
            await self.abort(reason)


class _JobEnd:
    """The end of an I/O job, told to the loop only if the loop is waiting for it.

    ``finish`` (the I/O thread, once) and ``wait``/``settled`` (the loop) meet under a
    lock: if the job ended first, the loop goes on without a wake-up; otherwise the loop
    leaves a future that ``finish`` settles with one ``call_soon_threadsafe``.
    """

    __slots__ = ("_done", "_error", "_future", "_lock", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._done = False
        self._error: BaseException | None = None
        self._future: asyncio.Future[None] | None = None

    def finish(self, error: BaseException | None) -> None:
        """In the I/O thread: the job ended (with ``error``, or None)."""
        with self._lock:
            self._done, self._error = True, error
            future = self._future
        if future is not None:
            self._loop.call_soon_threadsafe(_resolve, future)

    async def settled(self) -> None:
        """In the loop: return once the job has ended, whatever its outcome."""
        with self._lock:
            if not self._done and self._future is None:
                self._future = self._loop.create_future()
            future = self._future
        if future is not None and not self._done:
            await asyncio.shield(future)

    async def wait(self) -> None:
        """In the loop: ``settled``, then raise the job's error if it failed."""
        await self.settled()
        if self._error is not None:
            raise self._error


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(future: asyncio.Future[QueueRecord], outcome: QueueRecord | BaseException) -> None:
    """In the loop: resolve ``future`` from an I/O thread's outcome."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _consume_exception(task: asyncio.Future[QueueId]) -> None:
    if not task.cancelled():
        task.exception()
