"""The sink: one writer thread, group commits, ``await record`` resolved after commit."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.audit import (
    AuditDatabaseError,
    AuditEvent,
    AuditSink,
    AuditSinkClosed,
    AuditStore,
    AuditWriteError,
)
from gateway.audit.sink import Pending, _Inbox

from .events import make_event


@pytest.fixture
async def sink(db_path: Path) -> AsyncIterator[AuditSink]:
    async with AuditSink(db_path) as started:
        yield started


def _committed_rows(db_path: Path) -> dict[int, str]:
    """seq -> hash as another connection sees it (so: committed)."""
    with AuditStore.open_reader(db_path) as reader:
        return {row.seq: row.hash for row in reader.iter_rows()}


async def test_many_concurrent_tasks_are_all_committed_in_one_chain(
    sink: AuditSink, db_path: Path
) -> None:
    async def session(worker: int) -> list[tuple[int, str]]:
        receipts = []
        for step in range(5):
            receipt = await sink.record(make_event(worker * 5 + step))
            receipts.append((receipt.seq, receipt.hash))
        return receipts

    results = await asyncio.gather(*(session(worker) for worker in range(200)))
    receipts = dict(receipt for result in results for receipt in result)
    assert sorted(receipts) == list(range(1, 1001))
    assert _committed_rows(db_path) == receipts
    with AuditStore.open_reader(db_path) as reader:
        report = reader.verify()
    assert report.ok and report.records == 1000


async def test_record_resolves_only_once_committed(sink: AuditSink, db_path: Path) -> None:
    receipt = await sink.record(AuditEvent("smtp.accepted", queue_id="Q1"))
    assert _committed_rows(db_path) == {receipt.seq: receipt.hash}


async def test_record_stamps_the_time_with_the_sink_clock(db_path: Path) -> None:
    moment = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    async with AuditSink(db_path, clock=lambda: moment) as sink:
        await sink.record(AuditEvent("smtp.accepted"))
        await sink.record(AuditEvent("smtp.accepted", time=datetime(2026, 1, 1, tzinfo=UTC)))
    with AuditStore.open_reader(db_path) as reader:
        times = [record.event.time for record in reader.iter_records()]
    assert times == [moment, datetime(2026, 1, 1, tzinfo=UTC)]


async def test_reserved_types_are_refused_before_queueing(sink: AuditSink) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await sink.record(AuditEvent("audit.checkpoint"))


async def test_a_failed_commit_raises_and_the_sink_recovers(sink: AuditSink, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    with pytest.raises(AuditWriteError, match="not committed"):
        await sink.record(AuditEvent("smtp.accepted", queue_id="Q1"))
    blocker.execute("DROP TRIGGER refuse")
    blocker.close()
    receipt = await sink.record(AuditEvent("smtp.accepted", queue_id="Q2"))
    assert receipt.seq == 1  # the failed batch left nothing behind
    assert list(_committed_rows(db_path)) == [1]


async def test_a_cancelled_record_is_still_committed(sink: AuditSink, db_path: Path) -> None:
    task = asyncio.create_task(sink.record(AuditEvent("smtp.accepted", queue_id="Q1")))
    await asyncio.sleep(0)  # the task has queued its event and now waits
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    receipt = await sink.record(AuditEvent("smtp.accepted", queue_id="Q2"))
    assert receipt.seq == 2
    assert len(_committed_rows(db_path)) == 2


async def test_a_small_inbox_makes_producers_wait_not_fail(db_path: Path) -> None:
    async with AuditSink(db_path, capacity=2, max_batch=3) as sink:
        receipts = await asyncio.gather(*(sink.record(make_event(i)) for i in range(60)))
    assert sorted(r.seq for r in receipts) == list(range(1, 61))


async def test_append_refuses_to_block_the_event_loop(sink: AuditSink) -> None:
    with pytest.raises(RuntimeError, match="await record"):
        sink.append(AuditEvent("smtp.accepted"))


def test_append_from_threads_returns_after_commit(db_path: Path) -> None:
    seen: list[bool] = []

    def worker(writer: AuditSink, offset: int) -> None:
        for index in range(offset, offset + 20):
            receipt = writer.append(make_event(index))
            seen.append(receipt.seq in _committed_rows(db_path))

    with AuditSink(db_path) as sink:
        threads = [threading.Thread(target=worker, args=(sink, n * 20)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert seen == [True] * 80
    with AuditStore.open_reader(db_path) as reader:
        assert reader.verify().records == 80


def test_close_commits_what_is_queued_then_refuses(db_path: Path) -> None:
    sink = AuditSink(db_path)
    with pytest.raises(AuditSinkClosed, match="not running"):
        sink.submit(make_event(0))  # not started: refused, not left waiting forever
    sink.start()
    futures = [sink.submit(make_event(index)) for index in range(50)]
    sink.close()
    assert all(future.done() for future in futures)
    assert sorted(future.result().seq for future in futures) == list(range(1, 51))
    with pytest.raises(AuditSinkClosed):
        sink.submit(make_event(51))
    sink.close()  # idempotent


def test_start_reports_an_unusable_database_at_once(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = AuditSink(blocker / "audit.sqlite")
    with pytest.raises(AuditDatabaseError):
        sink.start()
    with AuditSink(tmp_path / "ok.sqlite") as started, pytest.raises(RuntimeError):
        started.start()


def test_inbox_wakes_its_sleeping_taker_for_every_producer_and_on_close() -> None:
    inbox = _Inbox(capacity=10_000)
    inbox.open()
    taken: list[Pending] = []

    def taker() -> None:
        while (batch := inbox.take(7)) is not None:
            taken.extend(batch)

    def producer(offset: int) -> None:
        for index in range(offset, offset + 300):
            inbox.put((make_event(index), datetime.now(UTC), concurrent.futures.Future()))

    thread = threading.Thread(target=taker)
    thread.start()
    try:
        producers = [threading.Thread(target=producer, args=(n * 300,)) for n in range(4)]
        for each in producers:
            each.start()
        for each in producers:
            each.join()
    finally:
        inbox.close()  # wakes the taker even when it sleeps on an empty inbox
        thread.join(timeout=60)
    assert not thread.is_alive()
    queue_ids = [event.queue_id or "" for event, _, _ in taken]
    assert sorted(queue_ids) == sorted(f"Q{index:06d}" for index in range(1200))
    for n in range(4):  # each producer's items in its own order
        own = [q for q in queue_ids if n * 300 <= int(q[1:]) < (n + 1) * 300]
        assert own == sorted(own)


async def test_inbox_hands_out_batches_in_order_and_bounds_producers() -> None:
    loop = asyncio.get_running_loop()
    inbox = _Inbox(capacity=3)
    inbox.open()
    events: list[Pending] = [
        (make_event(i), datetime.now(UTC), concurrent.futures.Future()) for i in range(4)
    ]
    for item in events[:3]:
        assert inbox.put_or_wait(item, loop) is None
    room = inbox.put_or_wait(events[3], loop)
    assert room is not None and not room.done()  # full: the producer must wait
    assert inbox.take(2) == events[:2]
    await room  # the writer's take made room
    assert inbox.put_or_wait(events[3], loop) is None
    assert inbox.take(5) == events[2:]
    inbox.close()
    assert inbox.take(5) is None
    with pytest.raises(AuditSinkClosed):
        inbox.put(events[0])
    with pytest.raises(AuditSinkClosed):
        inbox.put_or_wait(events[0], loop)


# -- the group commit window (module docstring of gateway.audit.sink) -------------------


WINDOW = 0.25  # seconds: long enough to gather on a loaded machine, short for a test


def _pending(index: int) -> Pending:
    return (make_event(index), datetime.now(UTC), concurrent.futures.Future())


def _take_in_thread(
    inbox: _Inbox, expect: int, within: float
) -> tuple[threading.Thread, list[list[Pending] | None]]:
    taken: list[list[Pending] | None] = []
    thread = threading.Thread(target=lambda: taken.append(inbox.take(100, expect, within)))
    thread.start()
    return thread, taken


def test_a_gathering_taker_returns_as_soon_as_the_expected_count_waits() -> None:
    inbox = _Inbox(capacity=100)
    inbox.open()
    thread, taken = _take_in_thread(inbox, expect=3, within=600.0)
    items = [_pending(index) for index in range(3)]
    inbox.put(items[0])  # wakes the taker, which now waits for two more (not 600 s)
    inbox.put(items[1])
    inbox.put(items[2])
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert taken == [items]


def test_a_gathering_taker_takes_what_waits_when_the_window_passes() -> None:
    inbox = _Inbox(capacity=100)
    inbox.open()
    first = _pending(0)
    inbox.put(first)
    assert inbox.take(100, expect=5, within=0.01) == [first]
    # the wake-up lock is held again: a plain take sleeps until the next producer
    thread, taken = _take_in_thread(inbox, expect=1, within=0.0)
    thread.join(timeout=0.2)
    assert thread.is_alive()
    second = _pending(1)
    inbox.put(second)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert taken == [[second]]


def test_closing_ends_a_gathering_wait_with_what_is_queued() -> None:
    inbox = _Inbox(capacity=100)
    inbox.open()
    first = _pending(0)
    inbox.put(first)
    thread, taken = _take_in_thread(inbox, expect=10, within=600.0)
    thread.join(timeout=0.2)
    assert thread.is_alive()  # waiting for nine more
    inbox.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert taken == [[first]]


async def test_a_lone_sequential_caller_never_waits_for_a_group(db_path: Path) -> None:
    """With a window of ten minutes, 30 awaited records in a row would take hours if
    the writer waited for company each time; they all commit one by one."""
    async with AuditSink(db_path, gather_window=600.0) as sink:
        for index in range(30):
            await asyncio.wait_for(sink.record(make_event(index)), timeout=60)
        assert (sink.commits, sink.committed) == (30, 30)


def test_staggered_callers_share_commits_through_the_window(db_path: Path) -> None:
    """Ten threads, each appending its records one after the other with a short pause
    between them, as a stage's entries reach their audit steps between two
    decryptions: the writer waits for as many as its last batch held, so commits carry
    several records (with no window, most commit alone: a writer is faster than a
    caller's pause)."""
    with AuditSink(db_path, gather_window=WINDOW) as sink:

        def caller(worker: int) -> None:
            for step in range(20):
                sink.append(make_event(worker * 20 + step), timeout=60)
                time.sleep(0.002 + 0.0002 * worker)

        threads = [threading.Thread(target=caller, args=(worker,)) for worker in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sink.committed == 200
        assert sink.commits <= 100  # measured: 37-50 with the window, 134-154 without
    with AuditStore.open_reader(db_path) as reader:
        assert reader.verify().ok


@pytest.mark.parametrize("window", [-0.001, float("nan"), float("inf"), 601.0])
def test_a_window_out_of_range_is_refused_before_the_writer_starts(
    db_path: Path, window: float
) -> None:
    """An infinite window would raise OverflowError in the writer thread at its first
    wait and leave every later record hanging; NaN would silently mean no window."""
    with pytest.raises(ValueError, match="gather_window"):
        AuditSink(db_path, gather_window=window)
