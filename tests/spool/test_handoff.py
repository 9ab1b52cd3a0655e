"""Hand-offs stay idempotent after the child has left its stage (tombstones in ``handed/``).

The scenario of ``gateway.spool.tombstones``: the parent stage hands a child off and
dies before completing the parent; the next stage delivers and removes the child; the
parent is processed again after the restart. The re-run must write nothing. Also: the
tombstones go when the parent leaves the spool (complete, bounce, delete), the common
path writes none, recovery removes what a crash left, and a DSN can be a new message.
"""

from __future__ import annotations

import multiprocessing.synchronize
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.spool import (
    RECEIVED,
    STATES,
    Claimed,
    Queue,
    RecipientState,
    RecipientStatus,
    Spool,
    relay_stage,
)
from gateway.spool.ids import QueueId, child_queue_id, new_queue_id
from gateway.spool.layout import Layout
from gateway.spool.tombstones import remove_orphans, tombstone_name
from tests.together import FORK, exit_codes

from .support import RecordingTrail, envelope, make_spool, message, origin

DELIVERED = RecipientState(RecipientStatus.DELIVERED, 1)
RELAY = relay_stage("clinique-b")
KEY = "relay/clinique-b"


def handed(spool_root: Path, stage: str) -> list[str]:
    return sorted(os.listdir(spool_root / stage / "handed"))


def everywhere(queue: Queue) -> list[str]:
    """Every entry name of the stage, whatever its state."""
    return sorted(name for state in STATES for name in os.listdir(queue.dirs.state(state)))


async def claim(queue: Queue) -> Claimed:
    entry = await queue.claim()
    assert entry is not None
    return entry


async def deliver_child(spool: Spool) -> Claimed:
    """The relay claims its one entry and completes it (the peer said 250)."""
    relay = spool.queue(RELAY)
    child = await claim(relay)
    await relay.complete(child, [DELIVERED])
    return child


async def parent_with_delivered_child(spool: Spool) -> tuple[Claimed, QueueId]:
    """A parent in ``active/`` whose child was handed off and already delivered."""
    received = spool.queue(RECEIVED)
    await received.add(envelope(), origin(), message())
    parent = await claim(received)
    child = await received.hand_off(parent, spool.queue(RELAY), KEY, envelope(), b"signed")
    await deliver_child(spool)
    return parent, child


async def test_a_parent_re_run_after_its_child_was_delivered_writes_no_second_child(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    first_trail = RecordingTrail()
    crashed = make_spool(root, first_trail)
    try:
        parent, child = await parent_with_delivered_child(crashed)
        # the parent stage "crashes" here: the parent stays in received/active/
    finally:
        await crashed.aclose()
    assert handed(root, RELAY) == [tombstone_name(parent.queue_id, child)]

    trail = RecordingTrail()
    restarted = make_spool(root, trail)
    try:
        received, relay = restarted.queue(RECEIVED), restarted.queue(RELAY)
        report = await received.recover()
        assert report.requeued == (parent.queue_id,) and report.removed_tombstones == ()
        again = await claim(received)
        assert again.queue_id == parent.queue_id
        repeated = await received.hand_off(again, relay, KEY, envelope(), b"signed")
        assert repeated == child
        assert everywhere(relay) == []  # no second child
        assert trail.of("spool.added") == []  # nothing written at all
        await received.complete(again, [DELIVERED])
        assert handed(root, RELAY) == []  # the parent left: its tombstone too
        assert everywhere(received) == []
    finally:
        await restarted.aclose()
    added = [event for event in first_trail.of("spool.added") if event.queue_id == child]
    assert len(added) == 1


async def test_the_common_path_writes_no_tombstone(spool: Spool, tmp_path: Path) -> None:
    received = spool.queue(RECEIVED)
    await received.add(envelope(), origin(), message())
    parent = await claim(received)
    await received.hand_off(parent, spool.queue(RELAY), KEY, envelope(), b"signed")
    await received.complete(parent, [DELIVERED])
    await deliver_child(spool)
    assert handed(tmp_path / "spool", RELAY) == []


async def _complete(received: Queue, parent: Claimed) -> None:
    await received.complete(parent, [DELIVERED])


async def _bounce(received: Queue, parent: Claimed) -> None:
    await received.bounce(parent, "no route")


async def _delete(received: Queue, parent: Claimed) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    await received.defer(parent, later, [RecipientState(RecipientStatus.DEFERRED, 1)])
    await received.delete(parent.queue_id, "asked by the sender")


@pytest.mark.parametrize(
    "leave", [_complete, _bounce, _delete], ids=["complete", "bounce", "delete"]
)
async def test_tombstones_go_when_the_parent_leaves_the_spool(
    spool: Spool, tmp_path: Path, leave: Callable[[Queue, Claimed], Awaitable[None]]
) -> None:
    parent, child = await parent_with_delivered_child(spool)
    assert handed(tmp_path / "spool", RELAY) == [tombstone_name(parent.queue_id, child)]
    await leave(spool.queue(RECEIVED), parent)
    assert handed(tmp_path / "spool", RELAY) == []


async def test_a_child_deleted_by_an_operator_is_not_handed_off_again(
    spool: Spool, trail: RecordingTrail, tmp_path: Path
) -> None:
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    await received.add(envelope(), origin(), message())
    parent = await claim(received)
    child = await received.hand_off(parent, relay, KEY, envelope(), b"signed")
    await relay.delete(child, "sent by mistake")
    assert handed(tmp_path / "spool", RELAY) == [tombstone_name(parent.queue_id, child)]
    assert await received.hand_off(parent, relay, KEY, envelope(), b"signed") == child
    assert everywhere(relay) == []
    assert [event.queue_id for event in trail.of("spool.added")].count(child) == 1


async def test_a_child_never_published_is_written_by_the_re_run(
    spool: Spool, trail: RecordingTrail
) -> None:
    """No child and no tombstone: the first attempt died before publishing; write it."""
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    await received.add(envelope(), origin(), message())
    parent = await claim(received)
    other = await received.hand_off(parent, relay, "relay/other", envelope(), b"x")
    await deliver_child(spool)  # a tombstone for another key must not count
    child = await received.hand_off(parent, relay, KEY, envelope(), b"signed")
    assert child != other and everywhere(relay) == [child]


async def test_recovery_removes_the_tombstones_of_parents_that_left(
    spool: Spool, tmp_path: Path
) -> None:
    parent, child = await parent_with_delivered_child(spool)
    gone = child_queue_id(QueueId("01M8H4BQW0ZZ5NEQ3BDRMA3DYM"), KEY)
    orphan = tombstone_name("01M8H4BQW0ZZ5NEQ3BDRMA3DYM", gone)  # its parent's clean-up died
    relay = spool.queue(RELAY)
    (relay.dirs.handed / orphan).touch()
    (relay.dirs.handed / "notes.txt").touch()  # not a tombstone: not ours to remove
    report = await relay.recover()
    assert report.removed_tombstones == (orphan,)
    kept = tombstone_name(parent.queue_id, child)
    assert handed(tmp_path / "spool", RELAY) == sorted(["notes.txt", kept])


async def test_a_dsn_handed_off_as_a_new_message_is_received_now(
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
        received = spool.queue(RECEIVED)
        await received.add(envelope(), origin(), message())
        parent = await claim(received)
        now[0] += timedelta(days=4)
        relayed = await received.hand_off(parent, spool.queue(RELAY), KEY, envelope(), b"s")
        dsn = await received.hand_off(
            parent, received, "dsn-failed", envelope(), b"dsn", new_message=True
        )
        await received.complete(parent, [DELIVERED])
        relay_child = await claim(spool.queue(RELAY))
        dsn_child = await claim(received)
        assert (relay_child.queue_id, dsn_child.queue_id) == (relayed, dsn)
        assert relay_child.record.received == datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
        assert dsn_child.record.received == now[0]
    finally:
        await spool.aclose()


# -- a consumer starting while another process creates a stage ---------------------------


def _create_stages(
    root: str,
    count: int,
    start: multiprocessing.synchronize.Barrier,
    done: multiprocessing.synchronize.Event,
) -> None:
    start.wait()
    try:
        for number in range(count):
            Layout(Path(root)).stage(relay_stage(f"new-{number}")).create()
    finally:
        done.set()


def _remove_orphans_until(
    root: str,
    tombstone: str,
    start: multiprocessing.synchronize.Barrier,
    done: multiprocessing.synchronize.Event,
) -> None:
    """Recover ``received``'s tombstones again and again (a tombstone whose parent has
    left: each round looks for its parent in every stage) until the creator is done."""
    layout = Layout(Path(root))
    received = layout.stage(RECEIVED)
    start.wait()
    while not done.is_set():
        (received.handed / tombstone).touch()
        assert remove_orphans(layout, received) in ([tombstone], [])


def test_recovery_meanwhile_a_stage_is_created_looks_past_it(tmp_path: Path) -> None:
    """A consumer's recovery (``remove_orphans``) looks for the parent of each tombstone
    in every stage; a stage another process was creating (its directory made, its
    ``active/`` not yet) failed the lookup with ``FileNotFoundError``, and the start."""
    root = tmp_path / "spool"
    layout = Layout(root)
    layout.create_root()
    received = layout.stage(RECEIVED)
    received.create()
    tombstone = tombstone_name(new_queue_id(), new_queue_id())  # its parent has left
    start, done = FORK.Barrier(4), FORK.Event()
    creator = FORK.Process(target=_create_stages, args=(str(root), 200, start, done))
    recovering = [
        FORK.Process(target=_remove_orphans_until, args=(str(root), tombstone, start, done))
        for _ in range(3)
    ]
    processes = [creator, *recovering]
    assert exit_codes(processes) == [0, 0, 0, 0]
    assert handed(root, RECEIVED) == []
