"""Review (session 9, R1) of the kept directory descriptors of the group committer
(``gateway.spool.atomic.DirectorySyncer``, commit 6eff000).

``Spool.close`` closes the committer's descriptors, but a batch whose drain task runs
after it (a caller cancelled at shutdown: its change still runs, by design) opens its
directory again through the same syncer, and nothing closes that descriptor any more.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.spool import Spool

from .support import RecordingTrail


def _descriptors_on(directory: Path) -> list[int]:
    """This process's descriptors open on ``directory``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(directory):
                found.append(int(name))
        except OSError:
            continue
    return found


async def test_a_batch_drained_after_close_leaves_no_descriptor_open(
    tmp_path: Path, trail: RecordingTrail
) -> None:
    spool = Spool(
        tmp_path / "spool", audit=trail, actor="test", max_message_size=1 << 20, io_threads=0
    )
    directory = tmp_path / "spool"
    caller = asyncio.create_task(spool.committer.sync(directory))
    await asyncio.sleep(0)  # the request is queued; its drain task is scheduled
    caller.cancel()  # shutdown: the caller goes, the batch still runs (as under shield)
    spool.close()
    for _ in range(5):
        await asyncio.sleep(0)  # the drain runs now, after close
    leaked = _descriptors_on(directory)
    for fd in leaked:
        os.close(fd)
    assert leaked == [], "a directory descriptor was reopened after Spool.close"
