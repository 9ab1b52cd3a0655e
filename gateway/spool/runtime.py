"""What every queue of one spool shares: I/O threads, group committer, audit, clock.

Role: the small context object the ``Spool`` builds once and hands to each ``Queue``
and ``EntryWriter``, so that those stay free of construction logic.

Invariants:

- blocking file-system calls (write, fsync, rename, listdir) run in the spool's own
  thread pool (``IoThreads``), never on the event loop (STYLE 10), unless the spool was
  built with ``io_threads=0``: then they run on the loop itself (``InlineIo``). The pool
  is larger than the number of cores on purpose, because concurrent fsyncs are what
  lets the file system batch them into one journal commit (measured: 16 threads ~1,800
  durable adds/s against ~150/s for one, on the 2-core development VM, docs/spool.md).
- Decision (session 7), ``io_threads=0`` for the stage workers (``[gateway]
  spool_io_threads``, default 0): a worker's loop serves its stage's own entries, not
  clients waiting on it, and a thread hand-off per file-system call (a wake-up, a
  self-pipe write, the GIL taken back and forth) cost more than the call: with the
  calls on the loop, the secure agent spent 3.3-3.6 ms of CPU per message instead of
  6.0-6.1, the relay 1.4-1.5 instead of 2.5-2.6, and the pipeline relayed 200-223
  msg/s instead of 141-147 (``bench/bench_outbound.py``, alternated, ``bench/README.md``
  "Spool I/O on the workers' loops"). What it gives up: fsyncs in flight at once, so
  a disk whose fsync is slow (no write cache) serialises them; there a sysadmin sets
  ``spool_io_threads`` to a pool size. Group commit of directory fsyncs still gathers
  the requests made in one loop iteration. The SMTP front never takes this path: its
  writes go to its scribe (``gateway.spool.scribe``), and the CLI and tests build
  spools with threads;
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
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

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
        self.executor: Executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="spool-io"
        )

    async def run(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


class InlineExecutor(Executor):
    """An executor that runs each job at once, in the caller's thread (the event loop's:
    module docstring, ``io_threads=0``); its future is already settled when returned."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - the caller reads it from the future
            future.set_exception(error)
        return future


class InlineIo(IoThreads):
    """``IoThreads`` without threads: ``run`` calls the function on the loop."""

    def __init__(self) -> None:
        self.executor = InlineExecutor()

    async def run(self, function: Callable[[], T]) -> T:
        return function()


def io_for(threads: int) -> IoThreads:
    """The spool's I/O: a pool of ``threads``, or the loop itself for 0."""
    if threads < 0:
        raise ValueError(f"io_threads must be 0 or more, got {threads}")
    return InlineIo() if threads == 0 else IoThreads(threads)


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
