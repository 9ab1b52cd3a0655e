"""``Spool``: the spool directory of one process, and the queues of its stages.

Role: the one object the composition root builds. It owns what the queues of a
process share - the I/O thread pool, the group committer, the audit trail, the clock
and the crash checkpoint (``gateway.spool.runtime``) - and hands out one ``Queue`` per
stage, creating the stage's directories (0700) on first use.

Use it from one event loop (the group committer's futures belong to it); construct
it anywhere. ``close`` (blocking) or ``aclose`` releases the consumer locks the queues
hold and stops the I/O threads after their current work.

Trust level: as the process that builds it; holds no secret.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

from gateway.audit.event import utc_now
from gateway.spool.commit import GroupCommitter
from gateway.spool.events import AuditTrail
from gateway.spool.layout import Layout, State
from gateway.spool.queue import Queue, check_entry_name
from gateway.spool.runtime import (
    DEFAULT_IO_THREADS,
    Checkpoint,
    Clock,
    IoThreads,
    SpoolRuntime,
    no_checkpoint,
)


class Spool:
    """The spool directory: builds the queues, owns their I/O threads and group committer.

    ``audit`` is the trail every event goes to (the gateway's ``AuditSink``); ``actor``
    names this process in it (``smtp``, ``secure-agent``, ``cli:alice``).
    ``max_message_size`` bounds every ``add`` (``[delivery] max_message_size``).
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
    ) -> None:
        self.layout = Layout(root)
        self.layout.create_root()
        io = IoThreads(io_threads)
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
        """The queue of ``stage`` (its directories created 0700 on first use)."""
        dirs = self.layout.stage(stage)
        if dirs.name not in self._queues:
            dirs.create()
            self._queues[dirs.name] = Queue(self._runtime, dirs)
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

    async def aclose(self) -> None:
        for queue in self._queues.values():
            queue.close()
        await asyncio.get_running_loop().run_in_executor(None, self._runtime.io.shutdown)

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
