"""The spool scribe: an SMTP front's messages written durably by a child process.

Each test starts the real ``python -m gateway.spool.scribe`` through ``ScribeQueue`` (or
runs ``Scribe`` in a thread of this process over a ``socketpair`` where the test must see the order
of events) on a spool and a real audit trail in a temp dir, then reads what reached the
disk and the trail back with the spool's and the trail's own readers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.audit.event import utc_now
from gateway.spool import RECEIVED, MessageTooLarge, Spool, SpoolWriteError
from gateway.spool.ids import new_queue_id
from gateway.spool.layout import Layout
from gateway.spool.scribe import Scribe
from gateway.spool.scribe_client import SEND_SIZE, ScribeQueue
from gateway.spool.scribe_protocol import (
    MAX_PAYLOAD,
    FrameDecoder,
    Kind,
    NewEntry,
    ProtocolError,
    decode_failure,
    encode_failure,
    encode_open,
    frame,
    read_frame,
)

from .support import envelope, message, origin

LIMIT = 1 << 20


def scribe_queue(tmp_path: Path, *, restart_interval: float = 1.0) -> ScribeQueue:
    return ScribeQueue(
        spool_dir=tmp_path / "spool",
        audit_path=tmp_path / "audit.sqlite",
        actor="smtp",
        max_message_size=LIMIT,
        restart_interval=restart_interval,
    )


async def send(queue: ScribeQueue, content: bytes, chunk: int = 4096) -> str:
    writer = await queue.open_writer(envelope(), origin())
    for start in range(0, len(content), chunk):
        await writer.write(content[start : start + chunk])
    return await writer.commit()


async def incoming(tmp_path: Path) -> dict[str, tuple[object, bytes]]:
    """Every entry of ``received/incoming``: its record and its checked content."""
    found = {}
    async with Spool(tmp_path / "spool", audit=_NoTrail(), actor="t", max_message_size=LIMIT) as s:
        queue = s.queue(RECEIVED)
        while (claimed := await queue.claim(read_ahead=LIMIT)) is not None:
            assert isinstance(claimed.preloaded, bytes)
            found[claimed.queue_id] = (claimed.record, claimed.preloaded)
    return found


class _NoTrail:
    async def record(self, event: object) -> None:
        return None


def trail_events(tmp_path: Path) -> list[tuple[str, str | None, str]]:
    """(type, queue id, reason) of every ``spool.*`` record of the trail, in order."""
    store = AuditStore.open_reader(tmp_path / "audit.sqlite")
    try:
        return [
            (r.event.type, r.event.queue_id, r.event.details.get("reason", ""))
            for r in store.iter_records()
            if r.event.type.startswith("spool.")
        ]
    finally:
        store.close()


async def test_a_message_is_written_with_its_envelope_origin_and_audit_record(
    tmp_path: Path,
) -> None:
    queue = scribe_queue(tmp_path)
    await queue.start()
    try:
        content = message(7)
        queue_id = await send(queue, content)
    finally:
        await queue.aclose()
    entries = await incoming(tmp_path)
    assert list(entries) == [queue_id]
    record, stored = entries[queue_id]
    assert stored == content
    assert record.envelope == envelope()  # type: ignore[attr-defined]
    assert record.origin == origin()  # type: ignore[attr-defined]
    assert record.content_sha256 == hashlib.sha256(content).hexdigest()  # type: ignore[attr-defined]
    assert ("spool.added", queue_id, "") in trail_events(tmp_path)


async def test_concurrent_and_large_messages_all_arrive_intact(tmp_path: Path) -> None:
    queue = scribe_queue(tmp_path)
    await queue.start()
    large = message(99, (b"y" * 78 + b"\r\n") * 8000)
    contents = [message(n) for n in range(30)] + [large]
    try:
        ids = await asyncio.gather(*(send(queue, content) for content in contents))
    finally:
        await queue.aclose()
    assert len(large) > 600_000  # several of the scribe's 256 KiB flushes
    entries = await incoming(tmp_path)
    assert sorted(entries) == sorted(ids)
    for queue_id, content in zip(ids, contents, strict=True):
        assert entries[queue_id][1] == content


async def test_past_the_size_limit_nothing_is_written_and_the_refusal_is_audited(
    tmp_path: Path,
) -> None:
    queue = scribe_queue(tmp_path)
    await queue.start()
    try:
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(b"a" * (LIMIT // 2))
        with pytest.raises(MessageTooLarge) as raised:
            await writer.write(b"b" * (LIMIT // 2 + 1))
        assert raised.value.limit == LIMIT
        kept = await send(queue, message(1))
    finally:
        await queue.aclose()
    assert list(await incoming(tmp_path)) == [kept]
    events = trail_events(tmp_path)
    assert ("spool.refused", writer.queue_id, f"message larger than {LIMIT} bytes") in events
    assert not [e for e in events if e[0] == "spool.added" and e[1] == writer.queue_id]


async def test_an_aborted_message_leaves_nothing_but_its_refusal(tmp_path: Path) -> None:
    queue = scribe_queue(tmp_path)
    await queue.start()
    try:
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(message(3))
        await writer.abort("From: not allowed for this login")
    finally:
        await queue.aclose()
    assert await incoming(tmp_path) == {}
    assert trail_events(tmp_path) == [
        ("spool.refused", writer.queue_id, "From: not allowed for this login")
    ]
    assert sorted(os.listdir(tmp_path / "spool" / "received" / "tmp")) == []


async def test_a_killed_scribe_fails_what_is_in_flight_then_is_restarted(
    tmp_path: Path,
) -> None:
    queue = scribe_queue(tmp_path, restart_interval=0.5)
    await queue.start()
    try:
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(message(1))
        pid = queue.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SpoolWriteError):
            await writer.commit()
        with pytest.raises(SpoolWriteError, match="restarting"):
            await queue.open_writer(envelope(), origin())
        await asyncio.sleep(0.6)
        kept = await send(queue, message(2))
        assert queue.pid not in (None, pid)
    finally:
        await queue.aclose()
    assert list(await incoming(tmp_path)) == [kept]


async def test_when_the_front_goes_away_the_unfinished_entry_is_dropped(
    tmp_path: Path,
) -> None:
    queue = scribe_queue(tmp_path)
    await queue.start()
    writer = await queue.open_writer(envelope(), origin())
    await writer.write(message(4, b"z" * SEND_SIZE))  # enough to be sent to the scribe
    unsent = await queue.open_writer(envelope(), origin())
    await unsent.write(message(5))  # still gathered in the front
    await queue.aclose()  # the front stops with entries open: no 250 was given
    assert await incoming(tmp_path) == {}
    assert trail_events(tmp_path) == [
        ("spool.refused", writer.queue_id, "the SMTP front went away")
    ]
    assert sorted(os.listdir(tmp_path / "spool" / "received" / "tmp")) == []


async def test_a_scribe_that_cannot_start_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "audit.sqlite").mkdir()  # the trail cannot be opened
    queue = scribe_queue(tmp_path)
    with pytest.raises(SpoolWriteError, match="did not start"):
        await queue.start()
    await queue.aclose()


# -- the scribe in this process: what it answers, and when ------------------------------


class _Front:
    """The front's end of a socketpair to an in-process ``Scribe``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def open(self, handle: int, content: bytes) -> str:
        entry = NewEntry(new_queue_id(), utc_now(), envelope(), origin())
        self.writer.write(frame(Kind.OPEN, handle, encode_open(entry)))
        self.writer.write(frame(Kind.DATA, handle, content))
        return entry.queue_id


async def _scribe_on_socketpair(
    tmp_path: Path, checkpoint: Callable[[str], None] | None = None
) -> tuple[_Front, Callable[[], Awaitable[None]]]:
    """``Scribe.serve`` in a thread of this process, its link a ``socketpair``."""
    ours, theirs = socket.socketpair()
    layout = Layout(tmp_path / "spool")
    layout.create_root()
    dirs = layout.stage(RECEIVED)
    dirs.create()
    store = AuditStore.open_writer(tmp_path / "audit.sqlite")
    scribe = Scribe(
        theirs,
        dirs,
        store,
        actor="smtp",
        max_message_size=LIMIT,
        checkpoint=checkpoint or (lambda name: None),
    )
    task = asyncio.create_task(asyncio.to_thread(scribe.serve))
    front = _Front(*await asyncio.open_unix_connection(sock=ours))
    ready = await read_frame(front.reader)
    assert ready is not None and ready.kind is Kind.READY

    async def stop() -> None:
        front.writer.close()
        await task
        theirs.close()
        store.close()

    return front, stop


async def test_done_is_sent_only_after_the_entry_is_durable_and_published(
    tmp_path: Path,
) -> None:
    seen_before_done: list[str] = []
    front_socket: list[socket.socket] = []

    def checkpoint(name: str) -> None:
        # at each step of the commit, nothing may have been answered yet
        if name in ("add.written", "add.synced", "add.linked", "add.published"):
            sock = front_socket[0]
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = b""
            seen_before_done.append(f"{name}:{'answer' if data else 'nothing'}")

    front, stop = await _scribe_on_socketpair(tmp_path, checkpoint)
    front_socket.append(
        socket.socket(fileno=os.dup(front.writer.get_extra_info("socket").fileno()))
    )
    try:
        queue_id = front.open(1, message(5))
        front.writer.write(frame(Kind.COMMIT, 1))
        done = await read_frame(front.reader)
    finally:
        front_socket[0].close()
        await stop()
    assert done is not None and (done.kind, done.handle) == (Kind.DONE, 1)
    assert done.payload.decode() == queue_id
    assert seen_before_done == [
        "add.written:nothing",
        "add.synced:nothing",
        "add.linked:nothing",
        "add.published:nothing",
    ]
    assert list(await incoming(tmp_path)) == [queue_id]


async def test_an_unexpected_error_in_the_commit_is_answered_failed_not_left_waiting(
    tmp_path: Path,
) -> None:
    raised: list[str] = []

    def checkpoint(name: str) -> None:
        if name == "add.synced" and not raised:
            raised.append(name)
            raise ZeroDivisionError("a bug somewhere in the commit")

    front, stop = await _scribe_on_socketpair(tmp_path, checkpoint)
    try:
        front.open(1, message(8))
        front.writer.write(frame(Kind.COMMIT, 1))
        answer = await asyncio.wait_for(read_frame(front.reader), 30)
        kept = front.open(2, message(9))  # the link and the scribe still serve
        front.writer.write(frame(Kind.COMMIT, 2))
        second = await asyncio.wait_for(read_frame(front.reader), 30)
    finally:
        await stop()
    assert answer is not None and (answer.kind, answer.handle) == (Kind.FAILED, 1)
    error = decode_failure(answer.payload)
    assert type(error) is SpoolWriteError and "bug" not in str(error)
    assert second is not None and (second.kind, second.payload.decode()) == (Kind.DONE, kept)


async def test_a_frame_for_no_open_entry_ends_the_link_and_drops_what_was_open(
    tmp_path: Path,
) -> None:
    front, stop = await _scribe_on_socketpair(tmp_path)
    try:
        queue_id = front.open(1, message(6))
        front.writer.write(frame(Kind.COMMIT, 2))  # never opened
        assert await read_frame(front.reader) is None  # the scribe closed the link
    finally:
        await stop()
    assert await incoming(tmp_path) == {}
    assert trail_events(tmp_path) == [("spool.refused", queue_id, "the SMTP front went away")]


async def test_an_open_record_the_spool_would_not_accept_ends_the_link(tmp_path: Path) -> None:
    front, stop = await _scribe_on_socketpair(tmp_path)
    try:
        front.writer.write(frame(Kind.OPEN, 1, b'{"queue_id":"../../etc"}'))
        assert await read_frame(front.reader) is None
    finally:
        await stop()
    assert await incoming(tmp_path) == {}


def test_errors_cross_as_spool_errors_without_internal_text() -> None:
    too_large = decode_failure(encode_failure(MessageTooLarge(1234)))
    assert isinstance(too_large, MessageTooLarge) and too_large.limit == 1234
    full = decode_failure(encode_failure(SpoolWriteError("no space left")))
    assert type(full) is SpoolWriteError and str(full) == "no space left"
    other = decode_failure(encode_failure(KeyError("/secret/path/key.pem")))
    assert type(other) is SpoolWriteError and "secret" not in str(other)
    assert type(decode_failure(b"not json")) is SpoolWriteError
    assert type(decode_failure(b'{"error": "os.system", "message": "x"}')) is SpoolWriteError


async def test_commits_that_arrive_together_share_one_directory_fsync(tmp_path: Path) -> None:
    """Group commit: the commits read in one batch are published with one fsync of
    ``incoming/`` (``add.published`` once), each answered with its own queue id."""
    steps: list[str] = []
    front, stop = await _scribe_on_socketpair(tmp_path, steps.append)
    try:
        frames: list[bytes] = []
        queue_ids = []
        for handle in range(1, 6):
            entry = NewEntry(new_queue_id(), utc_now(), envelope(), origin())
            queue_ids.append(entry.queue_id)
            frames += [
                frame(Kind.OPEN, handle, encode_open(entry)),
                frame(Kind.DATA, handle, message(handle)),
                frame(Kind.COMMIT, handle),
            ]
        front.writer.write(b"".join(frames))  # one write: the scribe reads one batch
        answers = [await read_frame(front.reader) for _ in range(5)]
    finally:
        await stop()
    assert [(a.kind, a.handle, a.payload.decode()) for a in answers if a] == [
        (Kind.DONE, handle, queue_id) for handle, queue_id in enumerate(queue_ids, 1)
    ]
    assert steps.count("add.written") == 5
    assert steps.count("add.published") == 1
    assert sorted(await incoming(tmp_path)) == sorted(queue_ids)


async def test_an_audit_trail_that_refuses_the_batch_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``spool.added`` committed, no entry: the file is discarded, the commit is
    answered ``FAILED`` (451), and the next batch, with the trail back, is written."""
    front, stop = await _scribe_on_socketpair(tmp_path)
    real_append = AuditStore.append

    def broken(self: AuditStore, events: object) -> object:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        monkeypatch.setattr(AuditStore, "append", broken)
        front.open(1, message(3))
        front.writer.write(frame(Kind.COMMIT, 1))
        failed = await read_frame(front.reader)
        monkeypatch.setattr(AuditStore, "append", real_append)
        kept = front.open(2, message(4))
        front.writer.write(frame(Kind.COMMIT, 2))
        done = await read_frame(front.reader)
    finally:
        await stop()
    assert failed is not None and (failed.kind, failed.handle) == (Kind.FAILED, 1)
    assert "audit record" in str(decode_failure(failed.payload))
    assert done is not None and (done.kind, done.payload.decode()) == (Kind.DONE, kept)
    assert list(await incoming(tmp_path)) == [kept]
    assert os.listdir(tmp_path / "spool" / "received" / "tmp") == []


def test_the_frame_decoder_takes_frames_split_anywhere_and_refuses_bad_ones() -> None:
    stream = frame(Kind.OPEN, 7, b"abc") + frame(Kind.DATA, 7, b"x" * 1000) + frame(Kind.COMMIT, 7)
    for cut in (1, 5, 9, 11, 13, 500, len(stream) - 1):  # never between two frames
        decoder = FrameDecoder()
        decoder.feed(stream[:cut])
        got = []
        while (one := decoder.next_frame()) is not None:
            got.append(one)
        assert not decoder.between_frames  # a stream cut here ends inside a frame
        decoder.feed(stream[cut:])
        while (one := decoder.next_frame()) is not None:
            got.append(one)
        assert decoder.between_frames
        assert [(f.kind, f.handle, len(f.payload)) for f in got] == [
            (Kind.OPEN, 7, 3),
            (Kind.DATA, 7, 1000),
            (Kind.COMMIT, 7, 0),
        ]
    unknown = FrameDecoder()
    unknown.feed(b"\x63" + bytes(8))
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        unknown.next_frame()
    huge = FrameDecoder()
    huge.feed(bytes([Kind.DATA]) + bytes(4) + (MAX_PAYLOAD + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="at most"):
        huge.next_frame()
