"""Adversarial review of the spool scribe (session 6, H8): what a hostile or broken peer,
a slow disk or a stopped process does to the promises of ``gateway.spool.scribe``,
``scribe_client`` and ``scribe_protocol``.

Each test drives the real ``python -m gateway.spool.scribe`` through ``ScribeQueue`` (or
a fake scribe over a ``socketpair`` where the test must choose what the scribe sends),
on a spool and a real audit trail in a temp dir. Every process a test starts or stops is
killed by PID in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.audit.event import utc_now
from gateway.spool import MessageTooLarge, SpoolWriteError, scribe_client
from gateway.spool.ids import new_queue_id
from gateway.spool.scribe_client import ScribeQueue, ScribeWriter, _Link
from gateway.spool.scribe_protocol import Kind, NewEntry, decode_failure, frame, read_frame

from .support import REPOSITORY, envelope, message, origin
from .test_scribe import (
    LIMIT,
    _scribe_on_socketpair,
    incoming,
    scribe_queue,
    send,
    trail_events,
)

MB = 1 << 20


def _kill(pid: int | None) -> None:
    if pid is None:
        return
    for signum in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def _state(pid: int) -> str | None:
    """The process's state letter (``Z`` for a zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def _gone(pid: int) -> None:
    for _ in range(1000):
        if _state(pid) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} still there, state {_state(pid)}")


# -- memory: a large message through a scribe that reads faster than it writes ---------


_SLOW_DISK = """
import time
from gateway.spool import entry_file

_write_content = entry_file.EntryFile.write_content


def _slowly(self, data):  # a disk of about 10 MB/s
    time.sleep(0.025)
    _write_content(self, data)


entry_file.EntryFile.write_content = _slowly
"""


async def test_a_large_message_on_a_slow_disk_keeps_the_scribes_memory_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client bounds the front's memory (SEND_SIZE, drain); the scribe must too:
    DATA it has read from the link but not yet written must not pile up when the disk
    is slower than the socket (since session 7 it reads only what it has written). The
    scribe's disk is slowed (a ``sitecustomize`` on its PYTHONPATH) so that this does
    not depend on the load of the machine. Measured by hand with a fast disk and 50 MB:
    +37-44 MiB of peak RSS in the scribe before the fix, +2.4 MiB after; the front's
    stayed flat (+0.03 MiB)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_DISK)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    queue = ScribeQueue(
        spool_dir=tmp_path / "spool",
        audit_path=tmp_path / "audit.sqlite",
        actor="smtp",
        max_message_size=60 * MB,
    )
    await queue.start()
    pid = queue.pid
    assert pid is not None
    try:
        before = _peak_rss_kib(pid)
        writer = await queue.open_writer(envelope(), origin())
        chunk = (b"x" * 78 + b"\r\n") * 800  # 64000 bytes, what DataReceiver hands over
        for _ in range(20 * MB // len(chunk)):
            await writer.write(chunk)
        await writer.commit()
        growth_mib = (_peak_rss_kib(pid) - before) / 1024
    finally:
        await queue.aclose()
    assert growth_mib < 8, f"the scribe's peak RSS grew by {growth_mib:.1f} MiB"


# -- a scribe that stops answering (SIGSTOP): the front must not wait forever ----------


@pytest.fixture
def short_answer_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scribe_client, "ANSWER_TIMEOUT", 1.0, raising=False)


@pytest.mark.usefixtures("short_answer_timeout")
async def test_a_stopped_scribe_fails_the_commit_and_is_replaced(tmp_path: Path) -> None:
    """SIGSTOP: the socket stays open, nothing is answered. Today ``commit`` waits for
    ever (the session's own timeout closes the client's connection, and every later
    session hangs the same way). Expected: past ``ANSWER_TIMEOUT`` the link is declared
    dead, the scribe killed, the commit fails (451), and a new scribe takes over."""
    queue = scribe_queue(tmp_path, restart_interval=0.0)
    await queue.start()
    stopped = queue.pid
    assert stopped is not None
    try:
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(message(1))
        os.kill(stopped, signal.SIGSTOP)
        with pytest.raises(SpoolWriteError):
            await asyncio.wait_for(writer.commit(), 30)
        await _gone(stopped)  # killed, and reaped
        kept = await send(queue, message(2))
    finally:
        _kill(stopped)
        await queue.aclose()
    assert list(await incoming(tmp_path)) == [kept]


@pytest.mark.usefixtures("short_answer_timeout")
async def test_a_stopped_scribe_does_not_block_a_writer_on_drain(tmp_path: Path) -> None:
    """Content beyond the socket's buffers: ``write`` waits in ``drain``; a stopped
    scribe must turn that into a ``SpoolWriteError`` too, not a hang."""
    queue = scribe_queue(tmp_path, restart_interval=0.0)
    await queue.start()
    stopped = queue.pid
    assert stopped is not None
    try:
        writer = await queue.open_writer(envelope(), origin())
        os.kill(stopped, signal.SIGSTOP)

        async def write_a_lot() -> None:
            for _ in range(64):
                await writer.write(b"y" * 65536)

        with pytest.raises(SpoolWriteError):
            await asyncio.wait_for(write_a_lot(), 30)
    finally:
        _kill(stopped)
        await queue.aclose()


# -- the link's answers: a DONE for the wrong handle, a cancelled commit ------------------


class _FakeProcess:
    pid = 0

    async def wait(self) -> int:
        return 0

    def kill(self) -> None:
        return None


@contextlib.asynccontextmanager
async def _fake_scribe() -> AsyncIterator[tuple[_Link, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A ``_Link`` whose scribe is the test: (link, scribe reader, scribe writer)."""
    ours, theirs = socket.socketpair()
    front_reader, front_writer = await asyncio.open_unix_connection(sock=ours)
    scribe_reader, scribe_writer = await asyncio.open_unix_connection(sock=theirs)
    link = _Link(_FakeProcess(), front_reader, front_writer)  # type: ignore[arg-type]
    link.start_reading()
    try:
        yield link, scribe_reader, scribe_writer
    finally:
        await link.close(1)
        scribe_writer.close()


def _new_entry() -> NewEntry:
    return NewEntry(new_queue_id(), utc_now(), envelope(), origin())


async def _until_commit(reader: asyncio.StreamReader) -> int:
    while (received := await read_frame(reader)) is not None:
        if received.kind is Kind.COMMIT:
            return received.handle
    raise AssertionError("no COMMIT")


async def test_a_done_for_a_handle_not_waiting_ends_the_link_and_fails_the_commit() -> None:
    async with _fake_scribe() as (link, reader, writer):
        entry = ScribeWriter(link, _new_entry(), None)
        await entry.write(b"hello\r\n")
        commit = asyncio.create_task(entry.commit())
        handle = await _until_commit(reader)
        writer.write(frame(Kind.DONE, handle + 1000, b"01ABCDEFGHJKMNPQRSTVWXYZ00"))
        with pytest.raises(SpoolWriteError):
            await asyncio.wait_for(commit, 30)
        assert not link.alive


async def test_a_done_with_another_entrys_queue_id_is_not_a_250() -> None:
    async with _fake_scribe() as (link, reader, writer):
        entry = ScribeWriter(link, _new_entry(), None)
        commit = asyncio.create_task(entry.commit())
        handle = await _until_commit(reader)
        writer.write(frame(Kind.DONE, handle, str(new_queue_id()).encode()))
        with pytest.raises(SpoolWriteError, match="committed"):
            await asyncio.wait_for(commit, 30)


async def test_a_cancelled_commit_still_completes_in_the_scribe(tmp_path: Path) -> None:
    """The shield: the session is cancelled during the commit (client gone); the entry is
    written all the same and the link stays usable."""
    queue = scribe_queue(tmp_path)
    await queue.start()
    try:
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(message(1))
        commit = asyncio.create_task(writer.commit())
        await asyncio.sleep(0)  # COMMIT sent, answer awaited
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
        kept = await send(queue, message(2))
    finally:
        await queue.aclose()
    assert sorted(await incoming(tmp_path)) == sorted([writer.queue_id, kept])


async def test_the_fronts_aclose_answers_a_commit_already_sent(tmp_path: Path) -> None:
    """``aclose`` while a commit is in flight: the scribe completes it, so the front
    should get its ``DONE`` rather than a 451 for a message that is stored (a needless
    duplicate when the client retries)."""
    queue = scribe_queue(tmp_path)
    await queue.start()
    writer = await queue.open_writer(envelope(), origin())
    await writer.write(message(1))
    commit = asyncio.create_task(writer.commit())
    await asyncio.sleep(0)  # COMMIT written to the link
    await queue.aclose()
    stored = list(await incoming(tmp_path))
    assert await commit == writer.queue_id
    assert stored == [writer.queue_id]


# -- processes: restart throttle, zombies, inherited descriptors, orphans --------------


async def test_many_sessions_after_a_crash_start_one_scribe_not_many(tmp_path: Path) -> None:
    queue = scribe_queue(tmp_path, restart_interval=0.0)
    await queue.start()
    first = queue.pid
    assert first is not None
    try:
        os.kill(first, signal.SIGKILL)
        await _gone(first)  # reaped by the event loop's child watcher: no zombie
        for _ in range(500):
            if queue.pid is None:
                break
            await asyncio.sleep(0.01)
        writers = await asyncio.gather(
            *(queue.open_writer(envelope(), origin()) for _ in range(20))
        )
        links = {id(w._link) for w in writers}
        assert len(links) == 1
        for w in writers:
            await w.abort("test")
    finally:
        _kill(first)
        _kill(queue.pid)
        await queue.aclose()


async def test_the_scribe_inherits_no_descriptor_of_the_front_and_reads_no_stdin(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "front-secret.pem"
    marker.write_bytes(b"not a key")
    held = os.open(marker, os.O_RDONLY)
    os.set_inheritable(held, True)  # as a listening socket handed over by systemd would be
    queue = scribe_queue(tmp_path)
    try:
        await queue.start()
        pid = queue.pid
        assert pid is not None
        fd_dir = Path(f"/proc/{pid}/fd")
        targets = {int(fd.name): os.readlink(fd) for fd in fd_dir.iterdir()}
    finally:
        os.close(held)
        await queue.aclose()
    assert targets[0] == "/dev/null"
    assert str(marker) not in targets.values()


async def test_the_scribe_exits_when_its_front_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the front: the scribe sees the end of its link, drops the entry in
    flight (``spool.refused``) and exits; no orphan keeps writing."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from gateway.spool.scribe_client import ScribeQueue
        from tests.spool.support import envelope, origin

        async def main():
            q = ScribeQueue(spool_dir=Path({str(tmp_path / "spool")!r}),
                            audit_path=Path({str(tmp_path / "audit.sqlite")!r}),
                            actor="smtp", max_message_size=1 << 20)
            await q.start()
            w = await q.open_writer(envelope(), origin())
            await w.write(b"x" * 70000)
            print("SCRIBE", q.pid, w.queue_id, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    front = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True
    )
    scribe_pid: int | None = None
    try:
        assert front.stdout is not None
        line = ""
        while not line.startswith("SCRIBE "):  # the scribe logs on the same stdout
            line = await asyncio.to_thread(front.stdout.readline)
            assert line, "the front script ended"
        _, pid_text, queue_id = line.split()
        scribe_pid = int(pid_text)
        front.kill()
        front.wait()
        await _gone(scribe_pid)
    finally:
        front.kill()
        front.wait()
        if front.stdout is not None:
            front.stdout.close()
        _kill(scribe_pid)
    assert await incoming(tmp_path) == {}
    assert trail_events(tmp_path) == [("spool.refused", queue_id, "the SMTP front went away")]


async def test_audit_records_carry_the_fronts_actor(tmp_path: Path) -> None:
    queue = scribe_queue(tmp_path)
    await queue.start()
    try:
        kept = await send(queue, message(1))
        refused = await queue.open_writer(envelope(), origin())
        await refused.write(message(2))
        await refused.abort("policy")
    finally:
        await queue.aclose()
    store = AuditStore.open_reader(tmp_path / "audit.sqlite")
    try:
        seen = [
            (r.event.type, r.event.queue_id, r.event.actor)
            for r in store.iter_records()
            if r.event.type.startswith("spool.")
        ]
    finally:
        store.close()
    assert seen == [("spool.added", kept, "smtp"), ("spool.refused", refused.queue_id, "smtp")]


# -- signals: serve stops a front worker by SIGTERM to its process group ---------------


async def test_a_sigterm_to_the_fronts_process_group_does_not_cut_the_scribe(
    tmp_path: Path,
) -> None:
    """``WorkerGroup.aclose`` SIGTERMs each front worker's process group, which holds
    the front's scribe too; the front then drains its DATA transfers (``drain_grace``)
    before it closes the link. A scribe that dies on that SIGTERM fails every transfer
    still in progress (451) in every ordinary stop of ``missive serve``."""
    queue = scribe_queue(tmp_path)
    await queue.start()
    pid = queue.pid
    assert pid is not None
    try:
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(message(1))
        os.kill(pid, signal.SIGTERM)  # what the group signal delivers to the scribe
        await asyncio.sleep(0.2)  # the signal is handled (or not) before the commit
        queue_id = await writer.commit()
    finally:
        _kill(pid)
        await queue.aclose()
    assert list(await incoming(tmp_path)) == [queue_id]


async def test_a_cancelled_commit_whose_link_ends_leaves_no_unretrieved_error(
    tmp_path: Path,
) -> None:
    """A session cancelled during its commit, then the scribe dies: the answer's error
    has nobody to read it; asyncio must not report "exception was never retrieved"."""
    reported: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    queue = scribe_queue(tmp_path)
    await queue.start()
    pid = queue.pid
    try:
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the commit cannot be answered
        writer = await queue.open_writer(envelope(), origin())
        await writer.write(message(1))
        commit = asyncio.create_task(writer.commit())
        await asyncio.sleep(0)
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
        os.kill(pid, signal.SIGKILL)
        await _gone(pid)
        for _ in range(500):
            if queue.pid is None:
                break
            await asyncio.sleep(0.01)
        del commit, writer
        gc.collect()
    finally:
        _kill(pid)
        await queue.aclose()
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_scribe_slow_to_fail_its_start_is_not_restarted_by_every_waiting_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart throttle counted from the *beginning* of the last start: when a start
    takes longer than ``restart_interval`` to fail (a spool on a hung disk, a trail
    locked: here a scribe that never says READY), each session queued on the start lock
    started one more scribe in turn, each waiting ``START_TIMEOUT``. At most one start per
    ``restart_interval`` must hold whatever a start costs."""
    monkeypatch.setattr(scribe_client, "START_TIMEOUT", 2.0)
    monkeypatch.setattr(scribe_client, "STOP_TIMEOUT", 0.5)
    starts = tmp_path / "starts"
    queue = scribe_queue(tmp_path, restart_interval=0.3)
    hanging = f"open({str(starts)!r}, 'a').write('x'); import time; time.sleep(30)"
    queue._command = [sys.executable, "-c", hanging]  # never READY
    try:
        outcomes = await asyncio.gather(
            *(queue.open_writer(envelope(), origin()) for _ in range(4)),
            return_exceptions=True,
        )
    finally:
        await queue.aclose()
    assert all(isinstance(outcome, SpoolWriteError) for outcome in outcomes)
    assert starts.read_text() == "x"


# -- frames: a partial answer, a front that ignores the size limit ---------------------


async def test_a_scribe_that_dies_inside_a_frame_fails_the_commit() -> None:
    async with _fake_scribe() as (link, reader, writer):
        entry = ScribeWriter(link, _new_entry(), None)
        commit = asyncio.create_task(entry.commit())
        handle = await _until_commit(reader)
        writer.write(frame(Kind.DONE, handle, b"01ABCDEFGHJKMNPQRSTVWXYZ00")[:6])
        await writer.drain()
        writer.close()
        with pytest.raises(SpoolWriteError):
            await asyncio.wait_for(commit, 30)
        assert not link.alive


async def test_the_scribe_enforces_the_size_limit_a_front_did_not(tmp_path: Path) -> None:
    front, stop = await _scribe_on_socketpair(tmp_path)
    try:
        queue_id = front.open(1, b"a" * LIMIT)
        front.writer.write(frame(Kind.DATA, 1, b"b"))
        front.writer.write(frame(Kind.COMMIT, 1))
        answer = await asyncio.wait_for(read_frame(front.reader), 30)
    finally:
        await stop()
    assert answer is not None and (answer.kind, answer.handle) == (Kind.FAILED, 1)
    refused = decode_failure(answer.payload)
    assert isinstance(refused, MessageTooLarge) and refused.limit == LIMIT
    assert await incoming(tmp_path) == {}
    assert trail_events(tmp_path) == [
        ("spool.refused", queue_id, f"message larger than {LIMIT} bytes")
    ]
