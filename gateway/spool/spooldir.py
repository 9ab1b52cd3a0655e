"""``Spool``: the spool directory of one process, and the queues of its stages.

Role: the one object the composition root builds. It owns what the queues of a
process share - the I/O thread pool, the group committer, the audit trail, the clock
and the crash checkpoint (``gateway.spool.runtime``) - and hands out one ``Queue`` per
stage, creating the stage's directories (0700) on first use.

Consumer slot: every queue a ``Spool`` hands out consumes (``recover``, ``claim``) as
the same slot (``gateway.spool.queue``): ``consumer_slot`` if given, else the slot of
the current context (``consumer_slot_scope``, which ``missive worker ... --slot K``
sets), else 0. Decision: a context variable rather than a parameter threaded through
each stage module, so the stage modules build their ``Spool`` exactly as with a single
consumer and ``take_queue``/``consume`` keep their signatures; the scope is set once,
at the top of the worker process.

Use it from one event loop (the group committer's futures belong to it); construct
it anywhere. ``close`` (blocking) or ``aclose`` releases the consumer locks the queues
hold and stops the I/O threads after their current work.

Trust level: as the process that builds it; holds no secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType

from gateway.audit.event import utc_now
from gateway.spool.commit import GroupCommitter
from gateway.spool.events import AuditTrail
from gateway.spool.layout import Layout, State, check_slot
from gateway.spool.queue import Queue, check_entry_name
from gateway.spool.runtime import (
    DEFAULT_IO_THREADS,
    Checkpoint,
    Clock,
    SpoolRuntime,
    io_for,
    no_checkpoint,
)

_CONSUMER_SLOT: ContextVar[int] = ContextVar("missive_consumer_slot", default=0)


@contextmanager
def consumer_slot_scope(slot: int) -> Iterator[None]:
    """Within this block (and the tasks it starts), a ``Spool`` built without
    ``consumer_slot`` consumes as ``slot``; ``ValueError`` if it is not 0..63."""
    token = _CONSUMER_SLOT.set(check_slot(slot))
    try:
        yield
    finally:
        _CONSUMER_SLOT.reset(token)


def current_consumer_slot() -> int:
    """The slot set by the innermost ``consumer_slot_scope`` (0 outside any)."""
    return _CONSUMER_SLOT.get()


class Spool:
    """The spool directory: builds the queues, owns their I/O threads and group committer.

    ``audit`` is the trail every event goes to (the gateway's ``AuditSink``); ``actor``
    names this process in it (``smtp``, ``secure-agent``, ``cli:alice``).
    ``max_message_size`` bounds every ``add`` (``[delivery] max_message_size``).
    ``consumer_slot`` is the slot its queues consume as (module docstring).
    """

    def __init__(
        self,
        root: Path,
        *,
        audit: AuditTrail,
        actor: str,
        max_message_size: int,
        io_threads: int = DEFAULT_IO_THREADS,
        clock: Clock = utc_now,
        checkpoint: Checkpoint = no_checkpoint,
        consumer_slot: int | None = None,
        create: bool = True,
    ) -> None:
        self.consumer_slot = check_slot(
            current_consumer_slot() if consumer_slot is None else consumer_slot
        )
        self.layout = Layout(root)
        self._create = create  # False: look only (missive queue list/show), change nothing
        if create:
            self.layout.create_root()
        io = io_for(io_threads)
        self._runtime = SpoolRuntime(
            layout=self.layout,
            audit=audit,
            actor=actor,
            max_message_size=max_message_size,
            clock=clock,
            checkpoint=checkpoint,
            io=io,
            committer=GroupCommitter(io.run),
        )
        self._queues: dict[str, Queue] = {}

    @property
    def committer(self) -> GroupCommitter:
        return self._runtime.committer

    @property
    def audit(self) -> AuditTrail:
        return self._runtime.audit

    @property
    def actor(self) -> str:
        return self._runtime.actor

    def queue(self, stage: str) -> Queue:
        """The queue of ``stage`` (its directories created 0700 on first use, unless the
        spool was opened with ``create=False``: then nothing on disk is changed)."""
        dirs = self.layout.stage(stage)
        if dirs.name not in self._queues:
            if self._create:
                dirs.create()
            self._queues[dirs.name] = Queue(self._runtime, dirs, self.consumer_slot)
        return self._queues[dirs.name]

    def stages(self) -> tuple[str, ...]:
        """The stages present on disk."""
        return self.layout.stages_on_disk()

    async def find(self, name: str) -> tuple[Queue, State] | None:
        """The queue and state holding entry ``name`` (an id, or a file in corrupt/)."""
        check_entry_name(name)
        for stage in self.stages():
            queue = self.queue(stage)
            state = await queue.locate(name)
            if state is not None:
                return queue, state
        return None

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        self._runtime.io.shutdown()
        self._runtime.committer.close()  # after the I/O threads: no fsync can run now

    async def aclose(self) -> None:
        for queue in self._queues.values():
            queue.close()
        await asyncio.get_running_loop().run_in_executor(None, self._runtime.io.shutdown)
        self._runtime.committer.close()

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
