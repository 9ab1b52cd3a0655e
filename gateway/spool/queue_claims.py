"""The consumer side of a ``Queue``: claim an entry, read it, defer it, quarantine it.

Role: ``ConsumerSide`` is how the consumer of a stage (in its slot K) takes an entry
(``claim``: ``incoming/`` or a due ``deferred/`` -> K's active directory), reads its
content (``content`` streams, ``read_all`` returns it whole), and gives it back for
later (``defer``: -> ``deferred/``, the file's mtime being the next attempt) or to
``corrupt/`` (``quarantine``). Its removals (``complete``, ``bounce``) and the recovery
of its slot are ``Queue``'s own (``gateway.spool.queue``); ``hold`` is
``OperatorSide``'s (``gateway.spool.queue_operator``).

Invariants:

- **One claimer wins.** A claim is one ``rename`` out of ``incoming/``/``deferred/``
  into the slot's own active directory (``stagefiles.take``), so an entry is processed
  by at most one live consumer; it goes back only from a dead consumer's directory
  (``Queue.recover``).
- **Few thread hops per entry** (issues #6/#7: every consumer pays this path). A
  claim is one I/O job, which can also read a small entry whole
  (``claim(read_ahead=...)``, its SHA-256 checked; ``read_all`` then returns those
  bytes). The candidates of one listing are tried before the directory is listed
  again.
- A file that does not validate at claim time goes to ``corrupt/`` on the way
  (``gateway.spool.queue_core``); content whose checksum fails raises ``CorruptEntry``
  only once its last chunk is reached, so the caller must ``quarantine`` it.
- ``defer`` rewrites the record (new version, atomic) before the move; the entry is
  no longer the caller's after it returns.

Trust level: any gateway process that owns a stage; content reaches the consumer only
through ``content``/``read_all`` and is never logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from gateway.spool.entry import CHUNK_SIZE
from gateway.spool.errors import CorruptEntry
from gateway.spool.layout import State
from gateway.spool.model import RecipientState
from gateway.spool.queue_core import QueueCore
from gateway.spool.queue_values import Claimed
from gateway.spool.stagefiles import Taken, list_candidates, move_deferred, take

READ_AHEAD = 1024 * 1024  # bytes: what a stage that reads every entry whole reads at claim


class ConsumerSide(QueueCore):
    """Claiming, reading and deferring the entries of one stage (one consumer slot)."""

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
        active = self._active_dir / name
        source = f"{self._stage_root}/{state}/{name}"
        checkpoint = self._runtime.checkpoint

        def take_it() -> Taken | CorruptEntry | None:
            return take(source, active, checkpoint, read_ahead)

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

    async def quarantine(self, entry: Claimed, reason: str) -> None:
        """Move a claimed entry whose content failed its check to ``corrupt/``."""
        await self._to_corrupt(entry.path, entry.path.name, reason)


def _show_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_whole(entry: Claimed) -> bytes:
    with entry.open() as reader:
        return b"".join(reader.chunks(max(1, reader.record.content_length)))
