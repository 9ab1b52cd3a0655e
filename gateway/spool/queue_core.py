"""What every side of a ``Queue`` shares: its state, looking up entries, and three steps.

Role: ``QueueCore`` is the base of the classes ``Queue`` is made of
(``gateway.spool.queue``). Its ``__init__`` sets every attribute a queue has (the
writer, consumer and operator sides share state only through these); it answers where
an entry is (``locate``, ``locate_path``, ``scan``), and holds the steps the sides
have in common: rewrite a version of an owned file (``_rewrite``), move a file to
``corrupt/`` (``_to_corrupt``), record a ``spool.*`` audit event (``_record``).

Invariants:

- **Unreadable entries are kept.** A file that fails validation (or whose name is not
  the queue id inside it) is moved to ``corrupt/`` with a ``spool.corrupt`` event; the
  gateway never deletes it (an operator may, with ``missive queue delete``). The move
  takes a free name in ``corrupt/`` (``stagefiles.move_to_free_name``), so it never
  replaces an earlier corrupt file.
- Files are never modified in place: ``_rewrite`` writes a new version that replaces
  the old one atomically (``gateway.spool.record``, ``stagefiles.write_version``).
- Every event names the stage and the actor of the ``Spool`` (``gateway.spool.events``).

Trust level: any gateway process that owns a stage; sees content only through the
reader it hands to the consumer. Events carry ids and states, never content.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from gateway.log import get_logger
from gateway.spool.atomic import as_spool_error
from gateway.spool.events import entry_event
from gateway.spool.ids import is_queue_id
from gateway.spool.layout import StageDirs, State
from gateway.spool.model import QueueRecord
from gateway.spool.queue_values import Claimed
from gateway.spool.runtime import SpoolRuntime
from gateway.spool.stagefiles import (
    ConsumerLock,
    EntryInfo,
    find_entry,
    locate,
    move_to_free_name,
    scan,
    write_version,
)
from gateway.spool.tombstones import HandedListings

_log = get_logger("spool")


class QueueCore:
    """The state of one stage's ``Queue`` and the steps its sides share."""

    def __init__(self, runtime: SpoolRuntime, dirs: StageDirs, slot: int = 0) -> None:
        self._runtime = runtime
        self.dirs = dirs
        self.slot = slot
        self._candidates: deque[tuple[State, str]] = deque()
        self._lock = ConsumerLock(dirs, slot)
        self._active_ready = slot == 0  # slot 0's active/ is made with the stage
        self._active_dir = dirs.active(slot)  # where this slot claims to
        self._stage_root = os.fspath(dirs.root)  # claims build their source path from it
        self._handed = HandedListings()
        self._next_sweep: float | None = None  # monotonic time of the next debris sweep

    @property
    def name(self) -> str:
        return self.dirs.name

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

    # -- shared steps ------------------------------------------------------------------

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
