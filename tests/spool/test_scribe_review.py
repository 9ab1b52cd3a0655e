"""The spool scribe under failure: review of the one-thread scribe (session 7, R1).

Each test runs ``Scribe.serve`` in a thread of this process over a ``socketpair``; the
test is the front, with a blocking socket and the scribe's own ``FrameDecoder``, so it
chooses exactly which frames arrive together (one ``sendall``: one batch). Failures are
injected by patching ``os`` functions or the audit store for the duration of one batch.
After each batch the test checks the contract of ``gateway.spool.scribe``:

- each ``COMMIT`` and ``ABORT`` is answered exactly once, ``DONE`` only for an entry
  that is in ``incoming/`` with its ``spool.added`` record;
- what failed is audited (``spool.refused`` / ``spool.discarded``), the trail verifies;
- nothing is left behind: no name in ``received/tmp``, no descriptor left open (the
  count of ``/proc/self/fd`` is back to what it was before the batch).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.audit.event import utc_now
from gateway.spool import RECEIVED, MessageTooLarge, SpoolFull, SpoolWriteError
from gateway.spool.entry_file import FLUSH_SIZE, EntryFile
from gateway.spool.ids import new_queue_id
from gateway.spool.layout import Layout
from gateway.spool.model import Origin
from gateway.spool.scribe import Scribe
from gateway.spool.scribe_protocol import (
    Frame,
    FrameDecoder,
    Kind,
    NewEntry,
    decode_failure,
    encode_open,
    frame,
)

from .support import envelope, message, origin

LIMIT = 4 << 20
BIG = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * (FLUSH_SIZE // 40)  # > 2 flushes


class Front:
    """The test's end of the link to a ``Scribe`` served by a thread of this process."""

    def __init__(
        self,
        tmp_path: Path,
        checkpoint: Callable[[str], None] | None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.tmp_path = tmp_path
        layout = Layout(tmp_path / "spool")
        layout.create_root()
        self.dirs = layout.stage(RECEIVED)
        self.dirs.create()
        self.store = AuditStore.open_writer(tmp_path / "audit.sqlite")
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(30)
        scribe = Scribe(
            theirs,
            self.dirs,
            self.store,
            actor="smtp",
            max_message_size=LIMIT,
            checkpoint=checkpoint or (lambda name: None),
            clock=clock,
        )
        self.thread = threading.Thread(target=scribe.serve, name="scribe", daemon=True)
        self.thread.start()
        self.decoder = FrameDecoder()
        self._handles = iter(range(1, 1 << 30))
        ready = self.answer()
        assert ready is not None and ready.kind is Kind.READY

    # -- frames --------------------------------------------------------------------------

    def entry(
        self, content: bytes, *, last: Kind = Kind.COMMIT, entry_origin: Origin | None = None
    ) -> tuple[int, str, list[bytes]]:
        """(handle, queue id, frames) of one whole entry, ``last`` its ending frame."""
        handle = next(self._handles)
        new = NewEntry(new_queue_id(), utc_now(), envelope(), entry_origin or origin())
        frames = [frame(Kind.OPEN, handle, encode_open(new))]
        for start in range(0, len(content), 64 * 1024):
            frames.append(frame(Kind.DATA, handle, content[start : start + 64 * 1024]))
        payload = b"refused by the test" if last is Kind.ABORT else b""
        frames.append(frame(last, handle, payload))
        return handle, new.queue_id, frames

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def preload(self, frames: list[bytes]) -> list[bytes]:
        """Send all of ``frames`` but the last, and wait until the scribe has carried
        them out (an entry opened and aborted after them is answered); the last frame,
        to send with others in one batch (at most ``READ_SIZE`` bytes in all)."""
        probe, _probe_id, probe_frames = self.entry(b"", last=Kind.ABORT)
        self.send(*frames[:-1], *probe_frames)
        assert self.answers(1)[probe].kind is Kind.DONE
        return frames[-1:]

    def answer(self) -> Frame | None:
        """The next frame from the scribe; None once it closed the link."""
        while (got := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                assert self.decoder.between_frames
                return None
            self.decoder.feed(data)
        return got

    def answers(self, count: int) -> dict[int, Frame]:
        got: dict[int, Frame] = {}
        for _ in range(count):
            one = self.answer()
            assert one is not None, f"the link ended after {len(got)} of {count} answers"
            assert one.handle not in got, f"handle {one.handle} answered twice"
            got[one.handle] = one
        return got

    def commit(self, content: bytes) -> str:
        handle, queue_id, frames = self.entry(content)
        self.send(*frames)
        done = self.answers(1)[handle]
        assert (done.kind, done.payload.decode()) == (Kind.DONE, queue_id)
        return queue_id

    def stop(self) -> None:
        """Shut our half, read what is left (no answer may come unasked), wait for it."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            assert self.answer() is None
        finally:
            self.sock.close()
            self.thread.join(30)
            self.store.close()
        assert not self.thread.is_alive()

    # -- what reached the disk and the trail -----------------------------------------------

    def incoming(self) -> list[str]:
        return sorted(os.listdir(self.dirs.state("incoming")))

    def temp_names(self) -> list[str]:
        return sorted(os.listdir(self.dirs.tmp))

    def trail(self) -> list[tuple[str, str | None]]:
        """(type, queue id) of every record, in order; the chain must verify."""
        reader = AuditStore.open_reader(self.tmp_path / "audit.sqlite")
        try:
            assert reader.verify().problem is None
            return [(r.event.type, r.event.queue_id) for r in reader.iter_records()]
        finally:
            reader.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    link = Front(tmp_path, None)
    link.commit(message(0))  # opens what stays open (the trail, /proc/self/fd)
    yield link
    link.stop()


def failure_of(answer: Frame) -> Exception:
    assert answer.kind is Kind.FAILED
    return decode_failure(answer.payload)


# -- an error outside the guarded steps of a batch -------------------------------------


def test_an_unexpected_error_after_the_audit_record_leaks_nothing_and_is_audited(
    tmp_path: Path,
) -> None:
    """A bug after ``spool.added`` was committed (here the ``add.synced`` checkpoint
    raises, once): the commits are answered ``FAILED``, and their files are closed and
    gone, with ``spool.discarded`` after their ``spool.added``."""
    raise_once: list[str] = []

    def checkpoint(name: str) -> None:
        if name == "add.synced" and raise_once == ["armed"]:
            raise_once.append("raised")
            raise ZeroDivisionError("a bug in the ending")

    link = Front(tmp_path, checkpoint)
    try:
        link.commit(message(0))
        before = open_descriptors()
        small, small_id, small_frames = link.entry(message(1))
        big, big_id, big_frames = link.entry(BIG)
        raise_once.append("armed")
        link.send(*small_frames, *link.preload(big_frames))
        got = link.answers(2)
        assert {type(failure_of(got[h])) for h in (small, big)} == {SpoolWriteError}
        assert open_descriptors() == before
        assert link.temp_names() == []
        kept = link.commit(message(2))
    finally:
        link.stop()
    assert kept in link.incoming() and small_id not in link.incoming()
    trail = link.trail()
    for queue_id in (small_id, big_id):
        assert [t for t, q in trail if q == queue_id] == ["spool.added", "spool.discarded"]


def test_an_unexpected_error_before_the_audit_record_ends_each_entry_once(
    tmp_path: Path,
) -> None:
    """A bug before anything of the batch was recorded (here its clock raises, once):
    every entry ends with one ``spool.refused`` (none for one already refused during
    its ``DATA``), its file closed and gone, and no ``spool.added``."""
    armed: list[str] = []

    def clock() -> datetime:
        if armed == ["armed"]:
            armed.append("raised")
            raise ZeroDivisionError("a bug in the clock")
        return utc_now()

    link = Front(tmp_path, None, clock)
    try:
        link.commit(message(0))
        before = open_descriptors()
        big, big_id, big_frames = link.entry(BIG)
        over, over_id, over_frames = link.entry(b"z" * (LIMIT + 1))
        aborted, aborted_id, aborted_frames = link.entry(message(1), last=Kind.ABORT)
        last = link.preload(big_frames) + link.preload(over_frames)
        armed.append("armed")
        link.send(*last, *aborted_frames)
        got = link.answers(3)
        assert isinstance(failure_of(got[big]), SpoolWriteError)
        assert isinstance(failure_of(got[over]), MessageTooLarge)
        assert got[aborted].kind is Kind.FAILED
        assert open_descriptors() == before
        assert link.temp_names() == []
    finally:
        link.stop()
    trail = link.trail()
    for queue_id in (big_id, over_id, aborted_id):
        assert [t for t, q in trail if q == queue_id] == ["spool.refused"]


def test_an_unexpected_error_at_the_link_is_audited_as_discarded(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spool.added`` was committed, then the link raised something no one foresaw:
    the trail must not claim an entry that never appeared."""
    before = open_descriptors()
    handle, queue_id, frames = front.entry(message(1))

    def broken(self: EntryFile) -> None:
        raise RuntimeError("a bug in publish")

    monkeypatch.setattr(EntryFile, "publish", broken)
    front.send(*frames)
    got = front.answers(1)
    monkeypatch.undo()
    assert isinstance(failure_of(got[handle]), SpoolWriteError)
    assert open_descriptors() == before
    assert queue_id not in front.incoming()
    assert [t for t, q in front.trail() if q == queue_id] == ["spool.added", "spool.discarded"]


def test_a_bug_right_after_a_link_never_records_a_linked_entry_as_discarded(
    tmp_path: Path,
) -> None:
    """The ``add.linked`` checkpoint raises once: the linked file stays (answered
    ``FAILED``: not known durable) and its trail says ``added`` only; the rest of the
    batch is closed and recorded ``discarded``."""
    armed: list[str] = []

    def checkpoint(name: str) -> None:
        if name == "add.linked" and armed == ["armed"]:
            armed.append("raised")
            raise ZeroDivisionError("a bug after the link")

    link = Front(tmp_path, checkpoint)
    try:
        link.commit(message(0))
        before = open_descriptors()
        first, first_id, first_frames = link.entry(message(1))
        second, second_id, second_frames = link.entry(message(2))
        armed.append("armed")
        link.send(*first_frames, *second_frames)
        got = link.answers(2)
        assert {got[first].kind, got[second].kind} == {Kind.FAILED}
        assert open_descriptors() == before
        assert link.temp_names() == []
    finally:
        link.stop()
    trail = link.trail()
    assert first_id in link.incoming() and second_id not in link.incoming()
    assert [t for t, q in trail if q == first_id] == ["spool.added"]
    assert [t for t, q in trail if q == second_id] == ["spool.added", "spool.discarded"]


def test_an_entry_whose_audit_event_cannot_be_built_fails_alone(front: Front) -> None:
    """A client certificate DN of 2,100 accented characters: the record accepts it
    (4,096 characters at most), the trail does not (4,096 UTF-8 bytes). Only that entry
    fails; the others of its batch are written, and nothing is left open."""
    before = open_descriptors()
    long_dn = Origin("submission", client_address="127.0.0.1", client_cert_dn="CN=" + "é" * 2100)
    first, first_id, first_frames = front.entry(message(1))
    odd, odd_id, odd_frames = front.entry(BIG, entry_origin=long_dn)
    last, last_id, last_frames = front.entry(message(3))
    front.send(*first_frames, *front.preload(odd_frames), *last_frames)
    got = front.answers(3)
    assert (got[first].kind, got[first].payload.decode()) == (Kind.DONE, first_id)
    assert (got[last].kind, got[last].payload.decode()) == (Kind.DONE, last_id)
    assert isinstance(failure_of(got[odd]), SpoolWriteError)
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert odd_id not in front.incoming()
    assert [t for t, q in front.trail() if q == odd_id] == ["spool.refused"]


def test_an_abort_reason_longer_than_the_trail_takes_is_cut_not_fatal(front: Front) -> None:
    """The protocol puts no bound on an ``ABORT`` reason; the trail takes 4 KiB."""
    before = open_descriptors()
    kept, kept_id, kept_frames = front.entry(message(1))
    dropped, dropped_id, dropped_frames = front.entry(BIG, last=Kind.ABORT)
    dropped_frames[-1] = frame(Kind.ABORT, dropped, "é".encode() * 5000)
    front.send(*kept_frames, *front.preload(dropped_frames))
    got = front.answers(2)
    assert (got[kept].kind, got[kept].payload.decode()) == (Kind.DONE, kept_id)
    assert (got[dropped].kind, got[dropped].payload) == (Kind.DONE, b"")
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert [t for t, q in front.trail() if q == dropped_id] == ["spool.refused"]


# -- each step failing with ENOSPC / EIO ---------------------------------------------------


def _failing_for_files(real: Callable[..., object], code: int) -> Callable[..., object]:
    """``real``, failing with ``code`` on a regular file's descriptor (not a directory)."""

    def failing(fd: int, *args: object) -> object:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        return real(fd, *args)

    return failing


def test_a_file_fsync_failing_fails_its_entries_and_leaves_nothing(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = open_descriptors()
    small, small_id, small_frames = front.entry(message(1))
    big, big_id, big_frames = front.entry(BIG)
    aborted, aborted_id, aborted_frames = front.entry(message(2), last=Kind.ABORT)
    monkeypatch.setattr(os, "fsync", _failing_for_files(os.fsync, errno.ENOSPC))
    front.send(*small_frames, *front.preload(big_frames), *aborted_frames)
    got = front.answers(3)
    monkeypatch.undo()
    assert isinstance(failure_of(got[small]), SpoolFull)
    assert isinstance(failure_of(got[big]), SpoolFull)
    assert got[aborted].kind is Kind.DONE
    assert open_descriptors() == before
    assert front.temp_names() == []
    kept = front.commit(message(3))
    assert front.incoming()[-1:] == [kept] and len(front.incoming()) == 2
    trail = front.trail()
    for queue_id in (small_id, big_id, aborted_id):
        assert [t for t, q in trail if q == queue_id] == ["spool.refused"]


@pytest.mark.parametrize("function", ["write", "open"])
def test_no_space_when_a_small_message_is_written_whole_fails_it_alone(
    front: Front, monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    """ENOSPC creating or writing the file of a message that never left memory (its
    one ``write`` at the end): ``SpoolFull`` (452) for it, nothing left."""
    before = open_descriptors()
    handle, queue_id, frames = front.entry(message(1))
    real = getattr(os, function)

    def no_space(path_or_fd: object, *args: object, **kwargs: object) -> object:
        if function == "open" and str(path_or_fd).endswith("/tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if function == "write" and stat.S_ISREG(os.fstat(path_or_fd).st_mode):  # type: ignore[arg-type]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path_or_fd, *args, **kwargs)

    monkeypatch.setattr(os, function, no_space)
    front.send(*frames)
    got = front.answers(1)
    monkeypatch.undo()
    assert isinstance(failure_of(got[handle]), SpoolFull)
    assert open_descriptors() == before
    assert front.temp_names() == [] and queue_id not in front.incoming()
    assert [t for t, q in front.trail() if q == queue_id] == ["spool.refused"]


def test_a_write_failing_during_data_fails_the_commit_and_drops_later_data(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on the first flush of a large message: its later ``DATA`` frames are dropped
    (no new temp file), its ``COMMIT`` is answered with the failure, one refusal."""
    before = open_descriptors()
    big, big_id, big_frames = front.entry(BIG * 3)
    created: list[str] = []
    real_open = os.open

    def counting_open(path: object, *args: object, **kwargs: object) -> int:
        created.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", _failing_for_files(os.write, errno.EIO))
    monkeypatch.setattr(os, "open", counting_open)
    front.send(*big_frames)
    got = front.answers(1)
    monkeypatch.undo()
    error = failure_of(got[big])
    assert type(error) is SpoolWriteError and "writing a queue file" in str(error)
    assert len([p for p in created if "/tmp" in p]) == 1  # no second file after the failure
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert [t for t, q in front.trail() if q == big_id] == ["spool.refused"]


def test_the_size_limit_passed_mid_stream_fails_the_commit_once(front: Front) -> None:
    before = open_descriptors()
    big, big_id, big_frames = front.entry(b"z" * (LIMIT + 3 * 64 * 1024))
    front.send(*big_frames)
    error = failure_of(front.answers(1)[big])
    assert isinstance(error, MessageTooLarge) and error.limit == LIMIT
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert [t for t, q in front.trail() if q == big_id] == ["spool.refused"]


def test_a_link_failing_discards_the_recorded_entry(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = open_descriptors()
    small, small_id, small_frames = front.entry(message(1))
    big, big_id, big_frames = front.entry(BIG)
    real_link = os.link

    def failing_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "link", failing_link)
    front.send(*small_frames, *front.preload(big_frames))
    got = front.answers(2)
    monkeypatch.setattr(os, "link", real_link)
    assert {type(failure_of(got[h])) for h in (small, big)} == {SpoolWriteError}
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert len(front.incoming()) == 1
    trail = front.trail()
    for queue_id in (small_id, big_id):
        assert [t for t, q in trail if q == queue_id] == ["spool.added", "spool.discarded"]


def test_a_link_onto_a_taken_name_leaves_the_other_entry_untouched(front: Front) -> None:
    before = open_descriptors()
    handle, queue_id, frames = front.entry(message(1))
    taken = front.dirs.state("incoming") / queue_id
    taken.write_bytes(b"another entry")
    kept, kept_id, kept_frames = front.entry(message(2))
    front.send(*frames, *kept_frames)
    got = front.answers(2)
    assert "already holds an entry" in str(failure_of(got[handle]))
    assert (got[kept].kind, got[kept].payload.decode()) == (Kind.DONE, kept_id)
    assert taken.read_bytes() == b"another entry"
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert [t for t, q in front.trail() if q == queue_id] == ["spool.added", "spool.discarded"]


def test_a_directory_fsync_failing_fails_what_it_would_have_made_durable(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked but not known durable: answered ``FAILED``, left in ``incoming/`` (a
    duplicate at most), nothing else left behind."""
    before = open_descriptors()
    small, small_id, small_frames = front.entry(message(1))
    big, big_id, big_frames = front.entry(BIG)
    real_fsync = os.fsync

    def failing_for_directories(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_for_directories)
    front.send(*small_frames, *front.preload(big_frames))
    got = front.answers(2)
    monkeypatch.undo()
    assert {type(failure_of(got[h])) for h in (small, big)} == {SpoolWriteError}
    assert open_descriptors() == before
    assert front.temp_names() == []
    assert {small_id, big_id} <= set(front.incoming())
    assert front.commit(message(3)) in front.incoming()


def test_a_failing_trail_leaves_nothing_open(front: Front, monkeypatch: pytest.MonkeyPatch) -> None:
    before = open_descriptors()
    small, small_id, small_frames = front.entry(message(1))
    big, big_id, big_frames = front.entry(BIG)

    def broken(self: AuditStore, events: object) -> object:
        raise OSError(errno.EIO, "disk I/O error")

    monkeypatch.setattr(AuditStore, "append", broken)
    front.send(*small_frames, *front.preload(big_frames))
    got = front.answers(2)
    monkeypatch.undo()
    assert {type(failure_of(got[h])) for h in (small, big)} == {SpoolWriteError}
    assert open_descriptors() == before
    assert front.temp_names() == [] and len(front.incoming()) == 1
    assert not [q for t, q in front.trail() if q in (small_id, big_id)]


# -- the link: bad frames, its end, many frames ---------------------------------------------


def test_a_protocol_error_mid_batch_answers_what_came_before_it(tmp_path: Path) -> None:
    link = Front(tmp_path, None)
    try:
        first, first_id, first_frames = link.entry(message(1))
        second, second_id, second_frames = link.entry(message(2), last=Kind.ABORT)
        _open_handle, open_id, open_frames = link.entry(BIG)
        link.send(*first_frames, *second_frames, *open_frames[:-1], frame(Kind.COMMIT, 999))
        got = link.answers(2)
        assert link.answer() is None  # then the scribe closes the link
    finally:
        link.stop()
    assert (got[first].kind, got[first].payload.decode()) == (Kind.DONE, first_id)
    assert (got[second].kind, got[second].payload) == (Kind.DONE, b"")
    assert link.incoming() == [first_id] and link.temp_names() == []
    trail = link.trail()
    assert [t for t, q in trail if q == open_id] == ["spool.refused"]
    assert [t for t, q in trail if q == second_id] == ["spool.refused"]


def test_the_end_of_the_link_inside_a_frame_still_answers_the_frames_before(
    tmp_path: Path,
) -> None:
    link = Front(tmp_path, None)
    try:
        first, first_id, first_frames = link.entry(message(1))
        _cut, cut_id, cut_frames = link.entry(BIG)
        stream = b"".join(first_frames + cut_frames)
        link.send(stream[: len(b"".join(first_frames)) + 70_000])  # inside a DATA frame
        link.sock.shutdown(socket.SHUT_WR)
        got = link.answers(1)
    finally:
        link.stop()
    assert (got[first].kind, got[first].payload.decode()) == (Kind.DONE, first_id)
    assert link.incoming() == [first_id] and link.temp_names() == []
    assert [t for t, q in link.trail() if q == cut_id] == ["spool.refused"]


def test_many_tiny_frames_are_carried_out_in_order(front: Front) -> None:
    """One byte per ``DATA`` frame, empty frames between, and 500 entries opened and
    aborted in the same stream: each answered once, the content intact."""
    content = message(4, b"0123456789" * 2000)
    handle, queue_id, opening = front.entry(b"")
    frames = opening[:1]  # its OPEN
    for index in range(len(content)):
        frames.append(frame(Kind.DATA, handle, content[index : index + 1]))
        frames.append(frame(Kind.DATA, handle))
    aborted = []
    for _ in range(500):
        other, _other_id, other_frames = front.entry(b"x", last=Kind.ABORT)
        frames += other_frames
        aborted.append(other)
    frames.append(frame(Kind.COMMIT, handle))
    front.send(*frames)
    got = front.answers(501)
    assert (got[handle].kind, got[handle].payload.decode()) == (Kind.DONE, queue_id)
    assert all(got[h].kind is Kind.DONE for h in aborted)
    stored = (front.dirs.state("incoming") / queue_id).read_bytes()
    assert content in stored
