"""Several consumers of one stage queue (consumer slots, ``gateway.spool.queue``).

In this process: a slot claims into its own active directory; recovering a slot moves
back only that slot's entries (and those of slots whose lock is free), never those of a
live consumer; ``locate``/``scan``/``missive queue`` see an entry of any slot as
``active`` and refuse to act on it.

With real processes (``stage_worker hold-then-drain``): three consumers of ``received``
hold entries at the same time and together process every entry exactly once; a
consumer killed with SIGKILL while holding entries gets them back when its slot
restarts, while the entries of the other, live consumer are never moved.
"""

from __future__ import annotations

import asyncio
import multiprocessing.synchronize
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.spool import (
    RECEIVED,
    EntryStateError,
    Queue,
    RecipientState,
    RecipientStatus,
    Spool,
    SpoolBusy,
)
from gateway.spool.display import list_row
from gateway.spool.layout import Layout, check_slot
from gateway.spool.spooldir import consumer_slot_scope, current_consumer_slot
from gateway.spool.stagefiles import ConsumerLock, UnsafeLockFile
from tests.together import FORK, exit_codes

from .support import (
    QueueSite,
    RecordingTrail,
    Run,
    envelope,
    fill_received,
    message,
    origin,
    start_stage_worker,
)


def open_spool(root: Path, trail: RecordingTrail, slot: int) -> Spool:
    return Spool(
        root, audit=trail, actor=f"slot-{slot}", max_message_size=1 << 20, consumer_slot=slot
    )


async def add(spool: Spool, count: int) -> list[str]:
    queue = spool.queue(RECEIVED)
    return [await queue.add(envelope(), origin(), message(n)) for n in range(count)]


async def recovered_queues(*spools: Spool) -> list[Queue]:
    """Each spool's ``received`` queue, recovered (its slot taken), in order."""
    queues = [spool.queue(RECEIVED) for spool in spools]
    for queue in queues:
        await queue.recover()
    return queues


def names(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if (directory / name).is_file())


# -- in one process ---------------------------------------------------------------------


async def test_each_slot_claims_into_its_own_directory(tmp_path: Path) -> None:
    trail = RecordingTrail()
    first, second = open_spool(tmp_path, trail, 0), open_spool(tmp_path, trail, 1)
    try:
        ids = await add(first, 3)
        zero, one = await recovered_queues(first, second)
        held_by_zero = await zero.claim()
        held_by_one = await one.claim()
        assert held_by_zero is not None and held_by_one is not None
        active = zero.dirs.state("active")
        assert names(active) == [held_by_zero.queue_id]
        assert names(active / "1") == [held_by_one.queue_id]
        assert held_by_one.path == active / "1" / held_by_one.queue_id
        # every view sees both as active; the slot directory itself is no entry
        assert await zero.locate(held_by_one.queue_id) == "active"
        infos = await zero.scan("active")
        assert [(info.name, info.slot) for info in infos] == [
            (held_by_zero.queue_id, 0),
            (held_by_one.queue_id, 1),
        ]
        assert list_row(infos[1], datetime.now(UTC))[2] == "active/1"
        with pytest.raises(EntryStateError, match="is being processed"):
            await zero.hold(held_by_one.queue_id, "operator")
        # the holder leaves active/1/ as it would leave active/
        await one.complete(held_by_one, [RecipientState(RecipientStatus.DELIVERED, 1)])
        assert await zero.locate(held_by_one.queue_id) is None
        assert names(active / "1") == [] and len(ids) == 3
    finally:
        await first.aclose()
        await second.aclose()


async def test_recovery_moves_back_only_its_slot_while_the_others_live(tmp_path: Path) -> None:
    trail = RecordingTrail()
    live = open_spool(tmp_path, trail, 0)
    crashed = open_spool(tmp_path, trail, 1)
    try:
        await add(live, 4)
        zero, one = await recovered_queues(live, crashed)
        kept = [await zero.claim(), await zero.claim()]
        lost = [await one.claim(), await one.claim()]
        await crashed.aclose()  # slot 1 "dies": its lock is released, its entries stay
        restarted = open_spool(tmp_path, trail, 1)
        try:
            report = await restarted.queue(RECEIVED).recover()
            assert sorted(report.requeued) == sorted(e.queue_id for e in lost if e)
            active = zero.dirs.state("active")
            assert names(active) == sorted(e.queue_id for e in kept if e)  # never moved
            assert names(active / "1") == []
            recovered = [(e.queue_id, e.details["from"]) for e in trail.of("spool.recovered")]
            assert sorted(recovered) == sorted((e.queue_id, "active/1") for e in lost if e)
        finally:
            await restarted.aclose()
    finally:
        await live.aclose()
        await crashed.aclose()


async def test_slot_zero_recovery_skips_live_slots_and_adopts_orphans(tmp_path: Path) -> None:
    trail = RecordingTrail()
    one_spool = open_spool(tmp_path, trail, 1)
    three_spool = open_spool(tmp_path, trail, 3)
    try:
        await add(one_spool, 2)
        one, three = await recovered_queues(one_spool, three_spool)
        live = await one.claim()
        orphan = await three.claim()
        assert live is not None and orphan is not None
        await three_spool.aclose()  # slot 3 is not running any more (fewer workers)
        zero_spool = open_spool(tmp_path, trail, 0)
        try:
            report = await zero_spool.queue(RECEIVED).recover()
            assert report.requeued == (orphan.queue_id,)
            active = one.dirs.state("active")
            assert names(active / "1") == [live.queue_id]  # slot 1 runs: untouched
            assert names(active / "3") == []
            assert sorted(os.listdir(active)) == ["1", "3"]  # slot dirs are no entries
            assert os.listdir(one.dirs.state("incoming")) == [orphan.queue_id]
        finally:
            await zero_spool.aclose()
    finally:
        await one_spool.aclose()
        await three_spool.aclose()


async def test_a_second_consumer_of_one_slot_is_refused(tmp_path: Path) -> None:
    trail = RecordingTrail()
    spools = [open_spool(tmp_path, trail, slot) for slot in (2, 2, 0)]
    try:
        await spools[0].queue(RECEIVED).recover()
        with pytest.raises(SpoolBusy, match="slot 2"):
            await spools[1].queue(RECEIVED).recover()
        await spools[2].queue(RECEIVED).recover()  # another slot is another lock
    finally:
        for spool in spools:
            await spool.aclose()


async def test_a_stray_file_named_like_a_slot_is_never_claimed(tmp_path: Path) -> None:
    """Claimed, ``incoming/1`` would be renamed onto slot 1's ``active/1/`` (review
    finding: the claimer crashed with IsADirectoryError, in a loop)."""
    trail = RecordingTrail()
    zero_spool, one_spool = open_spool(tmp_path, trail, 0), open_spool(tmp_path, trail, 1)
    try:
        [queue_id] = await add(zero_spool, 1)
        zero, _one = await recovered_queues(zero_spool, one_spool)
        stray = zero.dirs.state("incoming") / "1"
        stray.write_bytes(b"left by hand")
        claimed = await zero.claim()
        assert claimed is not None and claimed.queue_id == queue_id
        assert await zero.claim() is None
        assert stray.read_bytes() == b"left by hand"
    finally:
        await zero_spool.aclose()
        await one_spool.aclose()


async def test_the_slot_comes_from_the_scope_and_is_checked(tmp_path: Path) -> None:
    assert current_consumer_slot() == 0
    with consumer_slot_scope(5):
        spool = Spool(tmp_path, audit=RecordingTrail(), actor="t", max_message_size=1)
        assert spool.queue(RECEIVED).slot == 5
        await spool.aclose()
    assert current_consumer_slot() == 0
    for bad in (-1, 64, True):
        with pytest.raises(ValueError, match="not a consumer slot"):
            check_slot(bad)


# -- several processes ------------------------------------------------------------------


def start(
    site: QueueSite, workers: list[subprocess.Popen[str]], slot: int, hold: int
) -> subprocess.Popen[str]:
    """A ``hold-then-drain`` consumer of ``received`` in ``slot`` holding ``hold`` entries."""
    return start_stage_worker(site, workers, "hold-then-drain", hold, str(slot))


def until_holding(process: subprocess.Popen[str]) -> dict[str, list[str]]:
    """The lines up to ``HOLDING``: tag -> words (CLAIMED collects every id)."""
    assert process.stdout is not None
    said: dict[str, list[str]] = {"RECOVERED": [], "CLAIMED": []}
    while (line := process.stdout.readline()) and line.strip() != "HOLDING":
        tag, *words = line.split()
        said[tag].extend(words)
    assert line, f"consumer exited early: {process.communicate(timeout=30)[1]}"
    return said


def finish(process: subprocess.Popen[str]) -> list[str]:
    """Let the consumer go on; the ids it completed."""
    out, err = process.communicate("go\n", timeout=60)
    assert process.returncode == 0, err
    assert out.splitlines()[-1] == "EMPTY"
    return [line.split()[1] for line in out.splitlines() if line.startswith("DONE ")]


def audited(site: QueueSite, kind: str) -> list[tuple[str, dict[str, str]]]:
    with AuditStore.open_reader(site.trail) as store:
        return [
            (record.event.queue_id or "", dict(record.event.details))
            for record in store.iter_records()
            if record.event.type == kind
        ]


def test_three_consumer_processes_process_each_entry_exactly_once(
    site: QueueSite, workers: list[subprocess.Popen[str]], missive: Run
) -> None:
    ids = fill_received(site, 30)
    processes = [start(site, workers, slot, hold=2) for slot in (0, 1, 2)]
    held = [until_holding(process)["CLAIMED"] for process in processes]
    # all three hold entries at the same time, each in its own directory
    active = site.spool / RECEIVED / "active"
    assert [names(active), names(active / "1"), names(active / "2")] == [
        sorted(each) for each in held
    ]
    busy = held[1][0]
    status, out, _ = missive("queue", "list", "--state", "active", *site.args)
    assert status == 0 and "active/1" in out and "active/2" in out and "6 entries" in out
    status, _, err = missive("queue", "hold", busy, *site.args)
    assert status == 1 and f"{busy} is being processed" in err
    assert missive("queue", "show", busy, *site.args)[0] == 0  # reading is allowed
    done = [queue_id for process in processes for queue_id in finish(process)]
    assert sorted(done) == sorted(ids)  # every entry, none twice
    completed = [queue_id for queue_id, _ in audited(site, "spool.completed")]
    assert sorted(completed) == sorted(ids)
    assert not any(os.listdir(site.spool / RECEIVED / "incoming"))


def test_a_killed_consumer_gets_its_entries_back_and_never_the_live_ones(
    site: QueueSite, workers: list[subprocess.Popen[str]]
) -> None:
    ids = fill_received(site, 10)
    live = start(site, workers, 0, hold=2)
    live_held = until_holding(live)["CLAIMED"]
    doomed = start(site, workers, 1, hold=3)
    doomed_held = until_holding(doomed)["CLAIMED"]
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert doomed.returncode == -signal.SIGKILL
    active = site.spool / RECEIVED / "active"
    assert names(active / "1") == sorted(doomed_held)  # still held by the dead slot
    restarted = start(site, workers, 1, hold=0)
    recovered = until_holding(restarted)["RECOVERED"]
    assert sorted(recovered) == sorted(doomed_held)
    assert names(active) == sorted(live_held)  # the live consumer's, never moved
    events = [(queue_id, details["from"]) for queue_id, details in audited(site, "spool.recovered")]
    assert sorted(events) == sorted((queue_id, "active/1") for queue_id in doomed_held)
    done = finish(restarted) + finish(live)
    assert sorted(done) == sorted(ids)


# -- a deletion in progress while consumers start ----------------------------------------

HELD_LONG_AGO = 2 * 3600  # seconds: older than STALE_TEMP_AGE, like a quarantined entry


async def _held_long_ago(root: Path, count: int) -> list[str]:
    """``count`` entries an operator (or the inbound agent) held two hours ago."""
    spool = open_spool(root, RecordingTrail(), 0)
    try:
        queue = spool.queue(RECEIVED)
        ids = await add(spool, count)
        for queue_id in ids:
            await queue.hold(queue_id, "operator")
    finally:
        await spool.aclose()
    then = time.time() - HELD_LONG_AGO
    for queue_id in ids:
        os.utime(root / RECEIVED / "hold" / queue_id, (then, then))
    return ids


def _delete_each(root: str, ids: list[str], start: multiprocessing.synchronize.Barrier) -> None:
    async def delete_each() -> None:
        spool = open_spool(Path(root), RecordingTrail(), 0)
        try:
            queue = spool.queue(RECEIVED)
            start.wait()
            for queue_id in ids:
                await queue.delete(queue_id, "purge")
        finally:
            await spool.aclose()

    asyncio.run(delete_each())


def _recover_slot(root: str, slot: int, start: multiprocessing.synchronize.Barrier) -> None:
    async def recover() -> None:
        spool = open_spool(Path(root), RecordingTrail(), slot)
        try:
            queue = spool.queue(RECEIVED)
            start.wait()
            await queue.recover()
        finally:
            await spool.aclose()

    asyncio.run(recover())


def test_consumers_starting_during_deletions_leave_them_alone(tmp_path: Path) -> None:
    """A deletion parks its entry in ``tmp/`` (``Queue.delete``) while it records the
    event; consumers of other slots starting at that moment took the parked file, whose
    mtime is the entry's, for debris of a crash and removed it, and the deletion failed
    with ``FileNotFoundError`` (the quarantine purge runs when the slot-0 inbound worker
    starts, beside the other slots' recovery)."""
    for attempt in range(5):
        root = tmp_path / str(attempt)
        ids = asyncio.run(_held_long_ago(root, 20))
        start = FORK.Barrier(4)
        deleter = FORK.Process(target=_delete_each, args=(str(root), ids, start))
        starting = [
            FORK.Process(target=_recover_slot, args=(str(root), slot, start)) for slot in (1, 2, 3)
        ]
        processes = [deleter, *starting]
        assert exit_codes(processes) == [0, 0, 0, 0]
        assert names(root / RECEIVED / "hold") == []
        assert names(root / RECEIVED / "tmp") == []


def test_a_symlink_planted_as_a_lock_file_is_never_followed(tmp_path: Path) -> None:
    """The lock file is opened ``O_NOFOLLOW``: a symlink in its place (only the spool's
    owner could plant one, the spool is 0700) makes the start fail instead of creating
    or locking the file it points to (``UnsafeLockFile``, exit 2: tests/spool/
    test_lock_path.py)."""
    dirs = Layout(tmp_path / "spool").stage(RECEIVED)
    dirs.create()
    target = tmp_path / "elsewhere"
    dirs.consumer_lock(1).symlink_to(target)
    with pytest.raises(UnsafeLockFile, match="a symbolic link"):
        ConsumerLock(dirs, 1).try_acquire()
    assert not target.exists()
