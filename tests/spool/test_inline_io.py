"""A spool built with ``io_threads=0`` (the stage workers' default, ``[gateway]
spool_io_threads``): its file-system calls run on the event loop's own thread, with
the same durability and audit contract as with a pool of threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.spool import RECEIVED, RecipientState, RecipientStatus, Spool
from gateway.spool.runtime import InlineIo, IoThreads, io_for

from .support import RecordingTrail, envelope, message, origin


def test_zero_threads_is_the_loop_and_a_negative_count_an_error() -> None:
    assert isinstance(io_for(0), InlineIo)
    pool = io_for(2)
    assert type(pool) is IoThreads
    pool.shutdown()
    with pytest.raises(ValueError):
        io_for(-1)


async def test_an_inline_spool_writes_claims_and_completes_on_the_loops_thread(
    tmp_path: Path,
) -> None:
    trail = RecordingTrail()
    threads: set[str] = set()

    def checkpoint(name: str) -> None:
        threads.add(threading.current_thread().name)

    spool = Spool(
        tmp_path / "spool",
        audit=trail,
        actor="test",
        max_message_size=1 << 20,
        io_threads=0,
        checkpoint=checkpoint,
    )
    try:
        queue = spool.queue(RECEIVED)
        queue_id = await queue.add(envelope(), origin(), message(3))
        claimed = await queue.claim(read_ahead=1 << 20)
        assert claimed is not None and claimed.queue_id == queue_id
        assert claimed.preloaded == message(3)
        delivered = RecipientState(RecipientStatus.DELIVERED, 1)
        await queue.complete(claimed, [delivered] * len(claimed.record.envelope.recipients))
    finally:
        await spool.aclose()
    assert threads == {threading.current_thread().name}  # every step on the loop's thread
    assert os.listdir(queue.dirs.state("incoming")) == []
    assert trail.types() == ["spool.added", "spool.completed"]
