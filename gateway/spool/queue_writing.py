"""The writer side of a ``Queue``: new entries (``add``, ``open_writer``) and hand-offs.

Role: ``WriterSide`` starts the entries of a stage: a new message from a front
(``open_writer``, streamed by ``gateway.spool.writer.EntryWriter``; ``add`` for whole
contents) and the child that a consumer of the previous stage hands on (``hand_off``).
Each entry is written to ``tmp/`` and published in ``incoming/`` by the writer; what is
fsynced when is in ``gateway.spool.commit``.

Invariants:

- **At most a duplicate.** A hand-off writes the child entry (id derived from the
  parent's id and the hand-off key, ``ids.child_queue_id``) durably *before* the parent
  is completed; after a crash between the two, the parent is processed again and the
  hand-off finds its child already there and writes nothing. If the next stage removed
  the child meanwhile, it first left a tombstone (``handed/``, written by the removal
  only while the parent is still in the spool: ``gateway.spool.queue``,
  ``gateway.spool.tombstones``), which the hand-off finds instead.
- **Few thread hops.** A hand-off's "already there?" (child, then tombstone, in that
  order) is one I/O job.
- A new entry from a front is bounded by ``max_message_size``; a hand-off is not (a
  stage's output is bounded by its input).
- **Each mailbox once.** Every entry written here (``add``, ``open_writer``,
  ``hand_off``: the IMAP fetcher, DSN and MDN producers, the agent's hand-offs, tools)
  lists each recipient mailbox once: ``EntryFile`` keeps ``Envelope.distinct`` (the
  first occurrence, ``gateway.spool.model``: the front's rule, RFC 5321 §3.3) and logs
  ``spool.rcpt_merged`` with the count dropped. It moved there from ``_writer``
  (session 8) so that the front's scribe, which builds ``EntryFile``s without this
  module, keeps it too: one place for every producer and both drivers, so no later
  stage can receive a new entry naming one mailbox twice (two copies, two letters,
  states never updated). Old records on disk may still hold duplicates: see ``Pass``
  in ``gateway.relay.agent_pass``.

Trust level: any gateway process that owns a stage; writes content it is given, never
reads it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.log import get_logger
from gateway.spool.entry_file import EntryFile
from gateway.spool.ids import QueueId, child_queue_id, new_queue_id
from gateway.spool.model import Envelope, Origin
from gateway.spool.queue_core import QueueCore
from gateway.spool.queue_values import Claimed
from gateway.spool.stagefiles import locate
from gateway.spool.tombstones import has_tombstone
from gateway.spool.writer import EntryWriter

if TYPE_CHECKING:
    from gateway.spool.queue import Queue

ContentSource = bytes | AsyncIterable[bytes]

_log = get_logger("spool")


class WriterSide(QueueCore):
    """Writing the entries of one stage: new ones, and children handed on to it."""

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
        entry = EntryFile(  # keeps each mailbox once (entry_file: "Each mailbox once")
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
        return EntryWriter(self._runtime, entry)

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


async def _chunks(content: ContentSource) -> AsyncIterator[bytes]:
    if isinstance(content, bytes | bytearray | memoryview):
        yield bytes(content)
        return
    async for chunk in content:
        yield chunk
