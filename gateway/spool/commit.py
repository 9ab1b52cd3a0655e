"""Group commit of directory fsyncs: concurrent writers share one, none returns early.

What is fsynced when (the whole durability contract of the spool):

=====================  ===============================================================
operation              fsyncs, in order, all before the call returns
=====================  ===============================================================
add / hand-off         the new file (its bytes and the record); then, after
                       ``link`` into ``incoming/``, the ``incoming/`` directory
state change (defer,   the new version of the file (content copied, new record);
hold by its owner)     after ``rename`` to ``deferred/`` or ``hold/``, that directory
move by id (hold,      the target directory, after the ``rename``
release, retry,
recover, corrupt)
complete, bounce,      the directory the name was removed from, after the ``unlink``;
delete                 before it, for a child whose parent is still in the spool, its
                       tombstone's directory ``handed/`` (``gateway.spool.tombstones``)
claim                  nothing: a claim lost in a crash leaves the entry where it was,
                       and ``active/`` goes back to ``incoming/`` at the next start
=====================  ===============================================================

So an SMTP ``250`` (sent when ``add`` returns) always follows both the file's fsync
and an fsync of ``incoming/`` that *began after* the entry's name was created there
(mox returns from ``queue.Add`` before that; STYLE 4).

Group commit: the file fsyncs are per file and run concurrently in the spool's I/O
threads (the file system batches them in one journal commit). Directory changes go
through ``GroupCommitter.sync(directory, change)``: ``change`` is the ``link``,
``rename`` or ``unlink`` that creates or removes a name in ``directory``. While an
fsync of a directory is running, every new request for that directory joins the
*next* batch; when the running fsync ends, one I/O thread makes every change of the
next batch and then fsyncs the directory once for all of them. A request therefore
waits at most for the end of the running fsync plus one more, and is never satisfied
by an fsync that began before its own change (which would not cover it). Under load,
N concurrent adds to one stage cost N file fsyncs and about two directory fsyncs
instead of N, and the event loop schedules one thread hop per batch, not one per
change.

Failure: a change that raises fails alone (its caller gets the error; the others of
the batch go on); an ``OSError`` from the fsync is raised to every member of the
batch (their names exist but are not known to be durable: they must not acknowledge).

Trust level: scheduling only; the fsync itself is ``atomic.DirectorySyncer``'s (one
kept descriptor per directory) or ``atomic.sync_directory``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from gateway.spool.atomic import DirectorySyncer, sync_directory

_T = TypeVar("_T")


class RunBlocking(Protocol):
    """Runs a blocking callable in an I/O thread and returns its result."""

    def __call__(self, function: Callable[[], _T], /) -> Awaitable[_T]: ...


Change = Callable[[], None]


@dataclass
class _Request:
    change: Change | None
    future: asyncio.Future[None]
    error: BaseException | None = None


@dataclass
class _Directory:
    """The requests that the next fsync of one directory will serve."""

    next_batch: list[_Request] | None = None
    running: bool = False


def _consume_exception(future: asyncio.Future[None]) -> None:
    """A request whose caller was cancelled must not log "never retrieved"."""
    if not future.cancelled():
        future.exception()


class GroupCommitter:
    """Shares directory fsyncs between concurrent callers of one event loop.

    ``run_blocking`` runs a blocking callable off the loop (the spool's I/O threads);
    ``fsync_directory`` is the blocking fsync (replaced in tests to observe ordering);
    by default a ``DirectorySyncer`` of this committer's own, which keeps one
    descriptor per directory (``close`` releases them).
    ``requests`` and ``fsyncs`` count calls and actual fsyncs (``fsyncs <= requests``).
    """

    def __init__(
        self,
        run_blocking: RunBlocking,
        fsync_directory: Callable[[Path], None] | None = None,
    ) -> None:
        self._run_blocking = run_blocking
        self._syncer = DirectorySyncer() if fsync_directory is None else None
        self._fsync_directory = fsync_directory or self._syncer or sync_directory
        self._directories: dict[Path, _Directory] = {}
        self._drains: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.fsyncs = 0

    def close(self) -> None:
        """Release the directory descriptors kept for fsyncs (once none can run)."""
        if self._syncer is not None:
            self._syncer.close()

    async def sync(self, directory: Path, change: Change | None = None) -> None:
        """Make ``change`` (if any), then return once an fsync of ``directory`` that
        began after it (and after this call) has ended. ``change`` runs in an I/O
        thread; its exception is raised here and nothing was fsynced for it.
        """
        state = self._directories.get(directory)
        if state is None:  # not ``setdefault``: it would build a state for every call
            state = self._directories[directory] = _Directory()
        if state.next_batch is None:
            state.next_batch = []
        loop = asyncio.get_running_loop()  # once: each call is a getpid(2) in CPython 3.11
        request = _Request(change, loop.create_future())
        request.future.add_done_callback(_consume_exception)
        state.next_batch.append(request)
        self.requests += 1
        if not state.running:
            state.running = True
            drain = loop.create_task(self._drain(directory, state))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        # the future is this call's alone: a cancelled caller cancels it, and its
        # change still runs in its batch (the drain skips a settled future), as it did
        # under ``asyncio.shield``, which cost one more turn of the loop per request
        await request.future

    async def _drain(self, directory: Path, state: _Directory) -> None:
        """One thread hop per batch (changes, then fsync) until no caller is waiting."""
        try:
            while (batch := state.next_batch) is not None:
                state.next_batch = None
                await self._commit_batch(directory, batch)
        finally:
            state.running = False
            stranded, state.next_batch = state.next_batch, None
            for request in stranded or ():  # only when cancelled: never leave a waiter
                if not request.future.done():
                    request.future.set_exception(OSError("directory fsync interrupted"))

    def _apply_and_fsync(self, directory: Path, batch: list[_Request]) -> bool:
        """In an I/O thread: every change of the batch, then one fsync if any succeeded."""
        for request in batch:
            if request.change is not None:
                try:
                    request.change()
                except Exception as error:  # noqa: BLE001 - goes to its own caller
                    request.error = error
        if all(request.error is not None for request in batch):
            return False
        self._fsync_directory(directory)
        return True

    async def _commit_batch(self, directory: Path, batch: list[_Request]) -> None:
        try:
            synced = await self._run_blocking(lambda: self._apply_and_fsync(directory, batch))
        except BaseException as error:
            failure = error if isinstance(error, Exception) else OSError("fsync interrupted")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(request.error or failure)
            if not isinstance(error, Exception):
                raise
            return
        self.fsyncs += synced
        for request in batch:
            if request.future.done():
                continue
            if request.error is not None:
                request.future.set_exception(request.error)
            else:
                request.future.set_result(None)
