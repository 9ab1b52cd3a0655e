"""The spool scribe killed at each step of a batch: nothing acknowledged is lost.

The real scribe process (``ScribeQueue``) is made to ``os._exit`` once, right after one
step of its batch (the end of a file written, the audit transaction committed, a file
linked into ``incoming/``, ``incoming/`` fsynced: the ``add.*`` checkpoints of
``gateway.spool.scribe``), through a ``sitecustomize`` on its ``PYTHONPATH`` that wraps
the function doing that step. Several messages, small and large, are committed
at once so that the crash falls inside a batch of several entries. Then:

- every message answered with a queue id is in ``incoming/``, readable, its content
  the one sent (a crash may leave an unacknowledged one there too: a duplicate at most);
- nothing is half-written: no entry goes to ``corrupt/``;
- every entry in ``incoming/`` has its ``spool.added`` record, and the trail verifies;
- the next message gets a new scribe and its queue id.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.spool.entry_file import FLUSH_SIZE

from .test_scribe import incoming, scribe_queue, send, trail_events

_CRASH_ONCE = """
import os
from pathlib import Path
from gateway.audit import store
from gateway.spool import atomic, entry_file

_step = os.environ["MISSIVE_TEST_CRASH_AT"]
_marker = Path(os.environ["MISSIVE_TEST_CRASH_MARKER"])


def _after(step, function):
    def crashing(*args, **kwargs):
        result = function(*args, **kwargs)
        if step == _step and not _marker.exists():
            _marker.write_text(step)
            os._exit(9)
        return result
    return crashing


entry_file.EntryFile.write_end = _after("add.written", entry_file.EntryFile.write_end)
store.AuditStore.append = _after("add.synced", store.AuditStore.append)
entry_file.EntryFile.publish = _after("add.linked", entry_file.EntryFile.publish)
atomic.sync_directory = _after("add.published", atomic.sync_directory)
"""

STEPS = ("add.written", "add.synced", "add.linked", "add.published")


def _contents() -> list[bytes]:
    small = [b"Subject: small %d\r\n\r\n" % n + b"x" * (500 * n) + b"\r\n" for n in range(5)]
    large = b"Subject: large\r\n\r\n" + (b"y" * 78 + b"\r\n") * (FLUSH_SIZE // 80 + 100)
    return [*small, large]


@pytest.mark.parametrize("step", STEPS)
async def test_a_scribe_killed_inside_a_batch_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_ONCE)
    marker = tmp_path / "crashed"
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("MISSIVE_TEST_CRASH_AT", step)
    monkeypatch.setenv("MISSIVE_TEST_CRASH_MARKER", str(marker))
    contents = _contents()
    queue = scribe_queue(tmp_path, restart_interval=0.0)
    await queue.start()
    try:
        outcomes = await asyncio.gather(*(send(queue, c) for c in contents), return_exceptions=True)
        after = await send(queue, b"Subject: after\r\n\r\nthe next scribe\r\n")
    finally:
        await queue.aclose()
    assert marker.read_text() == step, "the scribe did not crash at the step"
    assert any(isinstance(o, BaseException) for o in outcomes), "a crash failed nothing"
    acknowledged = {o: c for o, c in zip(outcomes, contents, strict=True) if isinstance(o, str)}
    found = await incoming(tmp_path)
    for queue_id, content in acknowledged.items():
        assert found[queue_id][1] == content
    for _record, content in found.values():
        assert content in (*contents, b"Subject: after\r\n\r\nthe next scribe\r\n")
    assert after in found
    assert os.listdir(tmp_path / "spool" / "received" / "corrupt") == []
    added = {queue_id for kind, queue_id, _ in trail_events(tmp_path) if kind == "spool.added"}
    assert set(found) <= added
    with AuditStore.open_reader(tmp_path / "audit.sqlite") as store:
        assert store.verify().ok
