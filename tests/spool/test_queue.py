"""The queue API: life of an entry through claim, defer, hold, hand-off, completion."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import gateway.spool.queue
import gateway.spool.record
from gateway.audit import AuditWriteError
from gateway.spool import (
    EntryNotFound,
    EntryStateError,
    RecipientState,
    RecipientStatus,
    Spool,
    SpoolBusy,
    SpoolError,
    SpoolFull,
    consumer,
    relay_stage,
)
from gateway.spool.ids import child_queue_id
from gateway.spool.writer import FLUSH_SIZE

from .support import RecordingTrail, envelope, make_spool, message, mode, origin

DELIVERED = RecipientState(RecipientStatus.DELIVERED, 1)


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


async def test_an_added_entry_is_claimed_with_its_envelope_and_content(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    queue_id = await queue.add(envelope(), origin(), message(7))
    assert files(queue.dirs.state("incoming")) == [queue_id]
    assert files(queue.dirs.tmp) == []
    assert mode(queue.dirs.entry("incoming", queue_id)) == 0o600
    claimed = await queue.claim()
    assert claimed is not None and claimed.queue_id == queue_id
    assert claimed.record.envelope == envelope()
    assert claimed.record.origin == origin()
    assert files(queue.dirs.state("active")) == [queue_id]
    assert b"".join([chunk async for chunk in queue.content(claimed)]) == message(7)
    (added,) = trail.of("spool.added")
    assert added.queue_id == queue_id
    assert added.rcpt_to == ("bob@clinique-b.test",)
    assert added.details["auth_login"] == "alice.martin@chu-a.test"
    assert added.sha256 == claimed.record.content_sha256
    assert await queue.claim() is None


async def test_claims_take_the_oldest_first(spool: Spool) -> None:
    queue = spool.queue("received")
    ids = [await queue.add(envelope(), origin(), message(n)) for n in range(5)]
    claimed = [await queue.claim() for _ in ids]
    assert [entry.queue_id for entry in claimed if entry] == sorted(ids)


async def test_complete_records_the_outcome_then_removes(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    await queue.add(envelope("a@x.test", "b@y.test"), origin(), message())
    claimed = await queue.claim()
    assert claimed is not None
    with pytest.raises(ValueError, match="no final status"):
        await queue.complete(claimed, [DELIVERED, RecipientState()])
    assert files(queue.dirs.state("active")) == [claimed.queue_id]
    failed = RecipientState(RecipientStatus.FAILED, 1, "550 5.1.1 unknown user")
    await queue.complete(claimed, [DELIVERED, failed])
    assert files(queue.dirs.state("active")) == []
    (completed,) = trail.of("spool.completed")
    assert completed.outcome == "partial"
    assert dict(completed.details) == {"stage": "received", "delivered": "1", "failed": "1"}


async def test_a_removal_the_trail_refuses_does_not_happen(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    await queue.add(envelope(), origin(), message())
    claimed = await queue.claim()
    assert claimed is not None
    trail.fail_on.add("spool.completed")
    with pytest.raises(AuditWriteError):
        await queue.complete(claimed, [DELIVERED])
    assert files(queue.dirs.state("active")) == [claimed.queue_id]


async def test_bounce_fails_the_unfinished_recipients_and_removes(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    await queue.add(envelope("a@x.test", "b@y.test"), origin(), message())
    claimed = await queue.claim()
    assert claimed is not None
    await queue.bounce(claimed, "max_lifetime reached", [DELIVERED, RecipientState()])
    (bounced,) = trail.of("spool.bounced")
    assert bounced.outcome == "partial"
    assert bounced.details["failed"] == "1" and bounced.details["reason"] == "max_lifetime reached"
    assert files(queue.dirs.state("active")) == []


async def test_defer_keeps_the_new_state_and_claims_again_only_when_due(
    tmp_path: Path, trail: RecordingTrail
) -> None:
    now = [datetime(2026, 11, 28, 8, 0, tzinfo=UTC)]
    spool = Spool(
        tmp_path / "spool",
        audit=trail,
        actor="test",
        max_message_size=1 << 20,
        clock=lambda: now[0],
    )
    try:
        queue = spool.queue(relay_stage("clinique-b"))
        queue_id = await queue.add(envelope(), origin(), message(3))
        claimed = await queue.claim()
        assert claimed is not None
        until = now[0] + timedelta(minutes=5)
        state = RecipientState(RecipientStatus.DEFERRED, 1, "451 4.4.1 no answer", until)
        await queue.defer(claimed, until, [state], note="peer down")
        deferred = queue.dirs.entry("deferred", queue_id)
        assert os.stat(deferred).st_mtime == until.timestamp()  # ls -l shows the next attempt
        assert mode(deferred) == 0o600
        assert await queue.claim() is None
        now[0] = until
        again = await queue.claim()
        assert again is not None and again.claimed_from == "deferred"
        assert again.record.state.recipients == (state,)
        assert again.record.state.revision == 1 and again.record.state.note == "peer down"
        assert b"".join([chunk async for chunk in queue.content(again)]) == message(3)
        assert trail.of("spool.deferred")[0].details["next_attempt"] == "2026-11-28T08:05:00Z"
        assert files(queue.dirs.tmp) == []
    finally:
        await spool.aclose()


async def test_a_hand_off_is_idempotent_and_keeps_the_lineage(
    spool: Spool, trail: RecordingTrail
) -> None:
    received = spool.queue("received")
    relay = spool.queue(relay_stage("clinique-b"))
    parent_id = await received.add(envelope(), origin(), message())
    parent = await received.claim()
    assert parent is not None
    first = await received.hand_off(parent, relay, "route-clinique-b", envelope(), b"signed")
    again = await received.hand_off(parent, relay, "route-clinique-b", envelope(), b"other")
    assert first == again == child_queue_id(parent_id, "route-clinique-b")
    assert files(relay.dirs.state("incoming")) == [first]
    await received.complete(parent, [DELIVERED])
    child = await relay.claim()
    assert child is not None
    assert child.record.parent == parent_id
    assert child.record.received == parent.record.received
    assert child.record.origin == origin()
    assert b"".join([chunk async for chunk in relay.content(child)]) == b"signed"
    handed = [event for event in trail.of("spool.added") if event.queue_id == first]
    assert len(handed) == 1 and handed[0].details["parent"] == parent_id


async def test_operator_moves_and_their_refusals(spool: Spool, trail: RecordingTrail) -> None:
    queue = spool.queue("received")
    first = await queue.add(envelope(), origin(), message(1))
    second = await queue.add(envelope(), origin(), message(2))
    await queue.hold(first, "checking")
    assert files(queue.dirs.state("hold")) == [first]
    with pytest.raises(EntryStateError, match="already in received/hold/"):
        await queue.hold(first, "twice")
    with pytest.raises(EntryStateError, match="cannot retry"):
        await queue.retry(first)
    await queue.release(first)
    claimed = await queue.claim()
    assert claimed is not None and claimed.queue_id == first
    for action in (queue.release, queue.retry):
        with pytest.raises(EntryStateError, match="being processed"):
            await action(first)
    with pytest.raises(EntryStateError, match="being processed"):
        await queue.delete(first, "no")
    with pytest.raises(EntryNotFound):
        await queue.hold("01M8H4BQW0ZZ5NEQ3BDRMA3DYM", "absent")
    await queue.delete(second, "spam")
    assert files(queue.dirs.state("incoming")) == [] and files(queue.dirs.tmp) == []
    assert trail.types()[2:] == ["spool.held", "spool.released", "spool.deleted"]
    (deleted,) = trail.of("spool.deleted")
    assert deleted.queue_id == second and deleted.details["reason"] == "spam"
    assert deleted.rcpt_to == ("bob@clinique-b.test",)


async def test_an_operator_move_the_trail_refuses_is_undone(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    queue_id = await queue.add(envelope(), origin(), message())
    trail.fail_on.update({"spool.held", "spool.deleted"})
    with pytest.raises(AuditWriteError):
        await queue.hold(queue_id, "x")
    with pytest.raises(AuditWriteError):
        await queue.delete(queue_id, "x")
    assert files(queue.dirs.state("incoming")) == [queue_id]
    assert files(queue.dirs.state("hold")) == [] and files(queue.dirs.tmp) == []


async def test_a_claimed_entry_held_by_its_stage_keeps_the_reason(spool: Spool) -> None:
    queue = spool.queue("inbound")
    queue_id = await queue.add(envelope(), origin(), message())
    claimed = await queue.claim()
    assert claimed is not None
    await queue.hold(claimed, "unknown key: smart card")
    (held,) = await queue.scan("hold")
    assert held.name == queue_id
    assert held.record is not None and held.record.state.note == "unknown key: smart card"


async def test_recover_requeues_active_and_removes_stale_debris(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    queue_id = await queue.add(envelope(), origin(), message())
    assert await queue.claim() is not None
    abandoned = queue.dirs.tmp / "01M8H4BQW0ZZ5NEQ3BDRMA3DYM.0123456789ab.tmp"
    abandoned.write_bytes(b"half a message")
    report = await queue.recover(stale_after=timedelta(0))
    assert report.requeued == (queue_id,)
    assert report.removed_temps == (abandoned.name,)
    assert files(queue.dirs.state("incoming")) == [queue_id]
    assert files(queue.dirs.tmp) == []
    assert trail.of("spool.recovered")[0].queue_id == queue_id
    assert trail.of("spool.discarded")[0].queue_id == "01M8H4BQW0ZZ5NEQ3BDRMA3DYM"


@pytest.mark.parametrize("running", [True, False], ids=["running-consumer", "not-recovered"])
async def test_a_running_consumer_sweeps_debris_made_after_its_start(
    spool: Spool, trail: RecordingTrail, monkeypatch: pytest.MonkeyPatch, running: bool
) -> None:
    """Debris that appears while the consumer runs (here an abandoned write two hours
    old) goes at the next sweep, not at the next restart; a queue that never recovered
    (no consumer: the front, the CLI) never sweeps."""
    monkeypatch.setattr(gateway.spool.queue, "DEBRIS_SWEEP_INTERVAL", 0.0)
    queue = spool.queue("received")
    if running:
        await queue.recover()
    abandoned = queue.dirs.tmp / "01M8H4BQW0ZZ5NEQ3BDRMA3DYM.0123456789ab.tmp"
    abandoned.write_bytes(b"half a message")
    two_hours_ago = datetime.now(UTC).timestamp() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    recent = queue.dirs.tmp / "01M8H4BQW0ZZ5NEQ3BDRMA3DYN.0123456789ab.tmp"
    recent.write_bytes(b"still arriving")
    await queue.sweep_if_due()
    assert files(queue.dirs.tmp) == ([recent.name] if running else [abandoned.name, recent.name])
    discarded = [event.queue_id for event in trail.of("spool.discarded")]
    assert discarded == (["01M8H4BQW0ZZ5NEQ3BDRMA3DYM"] if running else [])


async def test_a_failed_sweep_is_logged_and_tried_again(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.spool.queue, "DEBRIS_SWEEP_INTERVAL", 0.0)
    queue = spool.queue("received")
    await queue.recover()
    calls: list[str] = []

    def unreadable(dirs: object, older_than: float) -> list[tuple[str, bool]]:
        calls.append("swept")
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(gateway.spool.queue, "remove_stale_temps", unreadable)
    await queue.sweep_if_due()  # does not raise: maintenance never stops the consumer
    await queue.sweep_if_due()
    assert calls == ["swept", "swept"]


async def test_the_consumer_loop_sweeps(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.spool.queue, "DEBRIS_SWEEP_INTERVAL", 0.0)
    queue = spool.queue("received")
    await queue.recover()
    abandoned = queue.dirs.tmp / "01M8H4BQW0ZZ5NEQ3BDRMA3DYM.0123456789ab.tmp"
    abandoned.write_bytes(b"half a message")
    os.utime(abandoned, (0, 0))
    stop = asyncio.Event()

    async def nothing(entry: object) -> None:
        raise AssertionError("the queue is empty")

    loop = asyncio.create_task(consumer.consume(queue, stop, nothing, poll_interval=0.01))
    while abandoned.exists():  # the test timeout bounds it
        await asyncio.sleep(0.01)
    stop.set()
    await loop


async def test_recent_temp_files_survive_recovery(spool: Spool) -> None:
    queue = spool.queue("received")
    writing = await queue.open_writer(envelope(), origin())
    await writing.write(b"x" * FLUSH_SIZE)  # the temp file exists from the first flush
    await queue.recover()
    assert len(files(queue.dirs.tmp)) == 1
    assert await writing.commit() in files(queue.dirs.state("incoming"))


async def test_a_deletion_parked_now_survives_recovery_whatever_the_entry_age(
    spool: Spool,
) -> None:
    """A parked deletion keeps the entry's mtime (held two hours ago here): recovery
    dates it by its park, so it is left to the deletion in progress, and removed only
    once it has been parked longer than ``stale_after``."""
    queue = spool.queue("received")
    queue_id = await queue.add(envelope(), origin(), message())
    parked = queue.dirs.tmp / f"{queue_id}.0123456789ab.deleting"
    os.rename(queue.dirs.entry("incoming", queue_id), parked)
    held_long_ago = parked.stat().st_mtime - 2 * 3600
    os.utime(parked, (held_long_ago, held_long_ago))
    report = await queue.recover()
    assert report.removed_temps == ()
    assert files(queue.dirs.tmp) == [parked.name]
    queue.close()
    report = await queue.recover(stale_after=timedelta(0))
    assert report.removed_temps == (parked.name,)


async def test_only_one_consumer_recovers_a_stage(tmp_path: Path, trail: RecordingTrail) -> None:
    first = make_spool(tmp_path / "spool", trail)
    second = make_spool(tmp_path / "spool", trail)
    try:
        await first.queue("received").recover()
        with pytest.raises(SpoolBusy, match="already has a running consumer"):
            await second.queue("received").recover()
        await second.queue("local").recover()  # another stage is another lock
        first.queue("received").close()
        await second.queue("received").recover()
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_add_the_trail_refuses_is_never_published(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    trail.fail_on.add("spool.added")
    with pytest.raises(AuditWriteError):
        await queue.add(envelope(), origin(), message())
    assert files(queue.dirs.state("incoming")) == [] and files(queue.dirs.tmp) == []


async def test_an_aborted_writer_leaves_nothing_and_records_the_refusal(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    writer = await queue.open_writer(envelope(), origin())
    await writer.write(b"From: colleague@chu-a.test\r\n")
    await writer.abort("From: not allowed for this login")
    assert files(queue.dirs.tmp) == []
    (refused,) = trail.of("spool.refused")
    assert refused.details["reason"] == "From: not allowed for this login"
    assert refused.mail_from == "alice.martin@chu-a.test"
    with pytest.raises(RuntimeError, match="closed"):
        await writer.write(b"more")


async def test_an_exception_inside_the_writer_context_aborts(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    with pytest.raises(ConnectionResetError):
        async with await queue.open_writer(envelope(), origin()) as writer:
            await writer.write(b"partial")
            raise ConnectionResetError
    assert files(queue.dirs.tmp) == []
    assert trail.of("spool.refused")[0].details["reason"] == "aborted (ConnectionResetError)"


async def test_a_full_disk_refuses_cleanly_with_452(
    spool: Spool, trail: RecordingTrail, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = spool.queue("received")
    real_write = os.write

    def full(fd: int, data: object) -> int:
        if len(data) > 1000:  # type: ignore[arg-type]  # the content, not the lock or logs
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SpoolFull) as caught:
        await queue.add(envelope(), origin(), message(body=b"x" * 5000))
    assert (caught.value.reply_code, caught.value.enhanced_code) == (452, "4.3.1")
    assert files(queue.dirs.tmp) == [] and files(queue.dirs.state("incoming")) == []
    (refused,) = trail.of("spool.refused")
    assert "No space left on device" in refused.details["reason"]


async def test_a_cancelled_transfer_leaves_no_file(spool: Spool, trail: RecordingTrail) -> None:
    queue = spool.queue("received")
    flowing = asyncio.Event()

    async def slow_client() -> AsyncIterator[bytes]:
        for index in range(1000):
            if index == 10:  # past the first flush: the temp file exists
                flowing.set()
            yield b"x" * 65536
            await asyncio.sleep(0)

    task = asyncio.create_task(queue.add(envelope(), origin(), slow_client()))
    await flowing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert files(queue.dirs.tmp) == [] and files(queue.dirs.state("incoming")) == []
    assert trail.of("spool.refused")[0].details["reason"] == "aborted (CancelledError)"


async def test_a_record_too_large_to_read_back_is_never_written(
    spool: Spool, trail: RecordingTrail, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.spool.record, "MAX_RECORD_LENGTH", 200)
    queue = spool.queue("received")
    with pytest.raises(SpoolError, match="record of"):
        await queue.add(envelope(), origin(), message())
    assert files(queue.dirs.tmp) == [] and files(queue.dirs.state("incoming")) == []
    assert len(trail.of("spool.refused")) == 1
