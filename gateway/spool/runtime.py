"""What every queue of one spool shares: I/O threads, group committer, audit, clock.

Role: the small context object the ``Spool`` builds once and hands to each ``Queue``
and ``EntryWriter``, so that those stay free of construction logic.

Invariants:

- blocking file-system calls (write, fsync, rename, listdir) run in the spool's own
  thread pool, never on the event loop (STYLE 10); the pool is larger than the number
  of cores on purpose, because concurrent fsyncs are what lets the file system batch
  them into one journal commit (measured: 16 threads ~1,800 durable adds/s against
  ~150/s for one, on the 2-core development VM, docs/spool.md);
- ``checkpoint(name)`` is called at each named step of a write or a move
  (``add.synced``, ``defer.moved``, ...), on the event loop thread, or in an I/O thread
  for a step inside an I/O job (``add.written``, between the write and the fsync of a
  new entry) or a group-committed directory change (``add.linked``). It does
  nothing in production; the crash tests pass one that calls ``os._exit`` at a chosen step to
  prove that a crash there loses nothing acknowledged.

Trust level: no secret, no content.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from gateway.spool.commit import GroupCommitter
from gateway.spool.events import AuditTrail
from gateway.spool.layout import Layout

T = TypeVar("T")

Checkpoint = Callable[[str], None]
Clock = Callable[[], datetime]
DEFAULT_IO_THREADS = 16


def no_checkpoint(name: str) -> None:
    """The production checkpoint: nothing."""


class IoThreads:
    """The spool's thread pool; ``run`` awaits a blocking callable's result."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spool-io")

    async def run(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class SpoolRuntime:
    """Shared by the queues of one ``Spool`` (one event loop)."""

    layout: Layout
    audit: AuditTrail
    actor: str
    max_message_size: int
    clock: Clock
    checkpoint: Checkpoint
    io: IoThreads
    committer: GroupCommitter

    async def run(self, function: Callable[[], T]) -> T:
        """Run a blocking callable in the spool's I/O threads."""
        return await self.io.run(function)

    async def run_to_end(self, function: Callable[[], T]) -> T:
        """``run``, but a cancelled caller still waits for the thread to finish before
        the cancellation goes on: the caller's clean-up closes a descriptor the thread
        may be using, and a closed descriptor number can be reused by another file."""
        future = asyncio.ensure_future(self.io.run(function))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.gather(future, return_exceptions=True)
            raise
