"""The consumer path's shortcuts keep their contracts (issues #6/#7, fewer hops per entry).

- a claim asked to read ahead (as the shared consumer loop does) reads a small entry
  whole with its record (``Claimed.preloaded``, what ``read_all`` returns), its
  SHA-256 checked: damaged content still ends in ``corrupt/``; a larger entry, or any
  entry of a plain claim, is left to ``read_all``/``content``;
- a hand-off names the parent's stage in the child's record, and the tombstone check
  of a removal looks only there; a child written without it (an old record) gets the
  look in every stage and still its tombstone;
- ``HandedListings`` re-reads a ``handed/`` directory whenever its mtime moved, and
  trusts a kept listing only when it was taken well after that mtime.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import gateway.spool.queue
from gateway.spool import (
    RECEIVED,
    Claimed,
    CorruptEntry,
    Queue,
    RecipientState,
    RecipientStatus,
    Spool,
    relay_stage,
)
from gateway.spool.consumer import consume, content_or_quarantine, drain
from gateway.spool.ids import child_queue_id
from gateway.spool.layout import Layout
from gateway.spool.queue import READ_AHEAD
from gateway.spool.record import PREAMBLE_SIZE
from gateway.spool.tombstones import (
    QUIET_MARGIN,
    HandedListings,
    parent_alive,
    remove_children_of,
    tombstone_name,
)

from .support import envelope, message, origin

DELIVERED = RecipientState(RecipientStatus.DELIVERED, 1)
DEFERRED = RecipientState(RecipientStatus.DEFERRED, 1)
RELAY = relay_stage("clinique-b")
KEY = "relay/clinique-b"


async def claim(queue: Queue, **options: int) -> Claimed:
    entry = await queue.claim(**options)
    assert entry is not None
    return entry


async def test_a_claim_reads_a_small_entry_whole_and_read_all_returns_it(
    spool: Spool,
) -> None:
    received = spool.queue(RECEIVED)
    await received.add(envelope(), origin(), message(7))
    entry = await claim(received, read_ahead=READ_AHEAD)
    assert entry.preloaded == message(7)
    os.unlink(entry.path)  # read_all needs no file: the claim read it
    assert await received.read_all(entry) == message(7)


@pytest.mark.parametrize("read_ahead", [0, len(message(7)) - 1])
async def test_a_claim_leaves_a_larger_entry_to_read_all(spool: Spool, read_ahead: int) -> None:
    received = spool.queue(RECEIVED)
    await received.add(envelope(), origin(), message(7))
    entry = await claim(received, read_ahead=read_ahead)
    assert entry.preloaded is None
    assert await received.read_all(entry) == message(7)


async def test_the_shared_consumer_loop_reads_ahead_when_asked(spool: Spool) -> None:
    received = spool.queue(RECEIVED)
    await received.add(envelope(), origin(), message(7))
    await received.recover()

    async def process(entry: Claimed) -> bytes | CorruptEntry | None:
        await received.complete(entry, [DELIVERED])
        return entry.preloaded

    assert await drain(received, process, read_ahead=READ_AHEAD) == [message(7)]


async def test_the_worker_loop_reads_ahead(spool: Spool) -> None:
    received = spool.queue(RECEIVED)
    await received.add(envelope(), origin(), message(7))
    await received.recover()
    stop = asyncio.Event()
    seen: list[bytes | CorruptEntry | None] = []

    async def process(entry: Claimed) -> None:
        seen.append(entry.preloaded)
        await received.complete(entry, [DELIVERED])
        stop.set()

    await consume(received, stop, process, poll_interval=0.01)
    assert seen == [message(7)]


async def test_content_damaged_before_the_claim_still_goes_to_corrupt(spool: Spool) -> None:
    received = spool.queue(RECEIVED)
    queue_id = await received.add(envelope(), origin(), message(7))
    path = received.dirs.entry("incoming", queue_id)
    with path.open("r+b") as file:  # one content byte flipped: only the SHA-256 sees it
        file.seek(PREAMBLE_SIZE)
        first = file.read(1)
        file.seek(PREAMBLE_SIZE)
        file.write(bytes([first[0] ^ 1]))
    entry = await claim(received, read_ahead=READ_AHEAD)
    assert isinstance(entry.preloaded, CorruptEntry)
    with pytest.raises(CorruptEntry, match="SHA-256"):
        await received.read_all(entry)
    assert await content_or_quarantine(received, entry) is None
    assert os.listdir(received.dirs.state("corrupt")) == [queue_id]


async def _parent_and_child(spool: Spool, *, old_record: bool = False) -> tuple[Claimed, Claimed]:
    """A claimed parent in ``received/`` and its claimed child in the relay stage;
    ``old_record``: the child is written as before ``parent_stage`` existed."""
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    await received.add(envelope(), origin(), message())
    parent = await claim(received)
    if old_record:
        writer = relay._writer(  # what hand_off wrote before the field existed
            child_queue_id(parent.queue_id, KEY),
            envelope(),
            origin(),
            received=parent.record.received,
            limit=None,
            parent=parent.queue_id,
            key=KEY,
        )
        async with writer:
            await writer.write(b"signed")
            await writer.commit()
    else:
        await received.hand_off(parent, relay, KEY, envelope(), b"signed")
    return parent, await claim(relay)


async def test_a_hand_off_names_the_parent_stage_in_the_child(spool: Spool) -> None:
    parent, child = await _parent_and_child(spool)
    assert child.record.parent == parent.queue_id
    assert child.record.parent_stage == RECEIVED


@pytest.mark.parametrize("old_record", [False, True], ids=["parent_stage", "old record"])
async def test_a_child_removed_while_its_parent_waits_leaves_a_tombstone(
    spool: Spool, old_record: bool
) -> None:
    parent, child = await _parent_and_child(spool, old_record=old_record)
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    later = datetime.now(UTC) + timedelta(hours=1)
    await received.defer(parent, later, [DEFERRED])  # waits for a certificate, say
    await relay.complete(child, [DELIVERED])
    assert os.listdir(relay.dirs.handed) == [tombstone_name(parent.queue_id, child.queue_id)]
    assert os.listdir(relay.dirs.state("active")) == []


@pytest.mark.parametrize("old_record", [False, True], ids=["parent_stage", "old record"])
async def test_a_child_whose_parent_left_goes_without_a_tombstone(
    spool: Spool, old_record: bool
) -> None:
    parent, child = await _parent_and_child(spool, old_record=old_record)
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    await received.complete(parent, [DELIVERED])
    await relay.complete(child, [DELIVERED])
    assert os.listdir(relay.dirs.handed) == []
    assert os.listdir(relay.dirs.state("active")) == []


async def test_the_clean_up_after_a_removal_runs_only_when_it_has_work(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal's own job looks for the entry's children's tombstones; the clean-up
    job follows only when it saw some (and then removes them)."""
    calls: list[str] = []

    def counting(layout: Layout, parent: str, listings: HandedListings | None = None) -> list[str]:
        calls.append(parent)
        return remove_children_of(layout, parent, listings)

    monkeypatch.setattr(gateway.spool.queue, "remove_children_of", counting)
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    for number in range(2):
        await received.add(envelope(), origin(), message(number))
    plain = await claim(received)
    await received.complete(plain, [DELIVERED])
    assert calls == []
    parent, child = await _parent_and_child(spool)
    later = datetime.now(UTC) + timedelta(hours=1)
    await received.defer(parent, later, [DEFERRED])
    await relay.complete(child, [DELIVERED])  # leaves its tombstone: the parent waits
    assert calls == [child.queue_id]  # the child's own clean-up (its tombstone stays)
    assert os.listdir(relay.dirs.handed) != []
    await received.retry(parent.queue_id)
    again = await claim(received)
    await received.complete(again, [DELIVERED])
    assert calls == [child.queue_id, parent.queue_id]
    assert os.listdir(relay.dirs.handed) == []


async def test_parent_alive_looks_in_the_named_stage_only(spool: Spool) -> None:
    received = spool.queue(RECEIVED)
    spool.queue(RELAY)
    queue_id = await received.add(envelope(), origin(), message())
    layout = spool.layout
    assert parent_alive(layout, queue_id)  # every stage
    assert parent_alive(layout, queue_id, RECEIVED)
    assert not parent_alive(layout, queue_id, RELAY)
    assert not parent_alive(layout, queue_id, relay_stage("no-such-route"))


# -- HandedListings -------------------------------------------------------------------


def _mtime(directory: Path) -> float:
    return os.stat(directory).st_mtime_ns / 1e9


def _add_quietly(directory: Path, name: str) -> None:
    """Create ``name`` and put the directory's mtime back: a change the mtime rule
    cannot see, to prove whether a kept listing is used."""
    before = os.stat(directory)
    (directory / name).touch()
    os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_listing_taken_long_after_the_mtime_is_kept_until_the_directory_changes(
    tmp_path: Path,
) -> None:
    handed = tmp_path / "handed"
    handed.mkdir()
    later = _mtime(handed) + QUIET_MARGIN + 1
    listings = HandedListings(clock=lambda: later)
    assert listings.names(handed) == ()
    _add_quietly(handed, "hidden")
    assert listings.names(handed) == ()  # kept: the directory looked unchanged
    (handed / "seen").touch()  # an ordinary change moves the mtime
    assert listings.names(handed) == ("hidden", "seen")


def test_a_listing_taken_soon_after_the_mtime_is_not_kept(tmp_path: Path) -> None:
    handed = tmp_path / "handed"
    handed.mkdir()
    soon = _mtime(handed) + QUIET_MARGIN / 2
    listings = HandedListings(clock=lambda: soon)
    assert listings.names(handed) == ()
    _add_quietly(handed, "same-tick")  # as a coarse timestamp would hide it
    assert listings.names(handed) == ("same-tick",)


def test_a_new_stage_is_swept_even_after_the_stage_list_was_kept(tmp_path: Path) -> None:
    spool_root = tmp_path / "spool"
    spool = Spool(spool_root, audit=_NoTrail(), actor="test", max_message_size=1 << 20)
    try:
        spool.queue(RECEIVED)
        layout = spool.layout
        later = max(_mtime(d) for d in layout.stage_containers() if d.exists()) + 10
        listings = HandedListings(clock=lambda: later)
        assert listings.handed_dirs(layout) == (layout.stage(RECEIVED).handed,)
        relay = spool.queue(RELAY)  # creates relay/: the spool directory changed
        parent = "01M8H4BQW0ZZ5NEQ3BDRMA3DYM"
        name = tombstone_name(parent, "01M8H4BQW4TVWW1NX146CNYP01")
        (relay.dirs.handed / name).touch()
        assert remove_children_of(layout, parent, listings) == [name]
        assert os.listdir(relay.dirs.handed) == []
    finally:
        spool.close()


class _NoTrail:
    async def record(self, event: object) -> object:
        return None


async def test_the_worker_loop_keeps_few_large_entries_in_flight(spool: Spool) -> None:
    """Six entries larger than the read-ahead and six smaller, ten slots, two of them
    for large entries: never more than two large ones are processed at once, while the
    small ones still run beside them."""
    received = spool.queue(RECEIVED)
    small, large = message(1), message(2, body=b"Bonjour\r\n" * 50)
    read_ahead = (len(small) + len(large)) // 2
    for content in [large, small] * 6:
        await received.add(envelope(), origin(), content)
    await received.recover()
    stop = asyncio.Event()
    in_flight: list[bool] = []  # is_large of each entry being processed
    most_large = most = finished = 0

    async def process(entry: Claimed) -> None:
        nonlocal most_large, most, finished
        is_large = entry.record.content_length > read_ahead
        in_flight.append(is_large)
        most_large = max(most_large, sum(in_flight))
        most = max(most, len(in_flight))
        await asyncio.sleep(0.05)  # the loop claims more meanwhile
        in_flight.remove(is_large)
        await received.complete(entry, [DELIVERED])
        finished += 1
        if finished == 12:
            stop.set()

    await asyncio.wait_for(
        consume(
            received,
            stop,
            process,
            poll_interval=0.01,
            concurrency=10,
            read_ahead=read_ahead,
            large_concurrency=2,
        ),
        timeout=60,
    )
    assert finished == 12
    assert most_large == 2
    assert most > 2


async def test_the_worker_loop_refuses_no_slot_for_large_entries(spool: Spool) -> None:
    async def process(entry: Claimed) -> None:
        raise AssertionError("nothing is claimed")

    with pytest.raises(ValueError, match="large_concurrency"):
        await consume(
            spool.queue(RECEIVED), asyncio.Event(), process, poll_interval=0.01, large_concurrency=0
        )
