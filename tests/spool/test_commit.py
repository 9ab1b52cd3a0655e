"""Group commit: shared directory fsyncs, and never an acknowledgement before its fsync."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.spool.atomic import DirectorySyncer
from gateway.spool.commit import GroupCommitter
from gateway.spool.writer import _JobEnd, _resolve

from .support import RecordingTrail, envelope, make_spool, message, origin

T = TypeVar("T")


class ControlledFsync:
    """A fake ``run_blocking`` whose fsyncs end only when the test says so."""

    def __init__(self) -> None:
        self.started: list[asyncio.Event] = []
        self.release: list[asyncio.Event] = []
        self.log: list[str] = []

    async def __call__(self, function: Callable[[], T]) -> T:
        started, release = asyncio.Event(), asyncio.Event()
        self.started.append(started)
        self.release.append(release)
        number = len(self.started)
        self.log.append(f"start {number}")
        started.set()
        await release.wait()
        result = function()
        self.log.append(f"end {number}")
        return result


async def test_requests_during_an_fsync_share_the_next_one() -> None:
    fsync = ControlledFsync()
    synced: list[Path] = []
    committer = GroupCommitter(fsync, fsync_directory=synced.append)
    directory = Path("/spool/received/incoming")

    async def request(name: str) -> None:
        await committer.sync(directory)
        fsync.log.append(f"done {name}")

    first = asyncio.create_task(request("a"))
    await _until(lambda: len(fsync.started) == 1)
    later = [asyncio.create_task(request(name)) for name in ("b", "c", "d")]
    await asyncio.sleep(0)
    fsync.release[0].set()
    await first
    assert not any(task.done() for task in later)  # fsync 1 began before their requests
    await _until(lambda: len(fsync.started) == 2)
    fsync.release[1].set()
    await asyncio.gather(*later)
    position = {entry: index for index, entry in enumerate(fsync.log)}
    assert position["start 1"] < position["end 1"] < position["done a"] < position["end 2"]
    for name in "bcd":
        assert position["end 2"] < position[f"done {name}"]
    assert (committer.requests, committer.fsyncs) == (4, 2)
    assert synced == [directory, directory]


async def test_an_fsync_error_reaches_every_member_of_its_batch() -> None:
    def failing(directory: Path) -> None:
        raise OSError(errno.EIO, "I/O error")

    async def run_now(function: Callable[[], T]) -> T:
        return function()

    committer = GroupCommitter(run_now, fsync_directory=failing)
    results = await asyncio.gather(
        *(committer.sync(Path("/d")) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, OSError) for result in results)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


# -- the real spool, with os.fsync and os.link instrumented ----------------------------------


class FsyncObserver:
    """Logs every fsync (with the path of its descriptor) and every link, in order.

    The first fsync of the watched directory waits until the test opens ``gate``,
    which it does once every add has asked for its directory fsync: they then all
    wait behind that running fsync and must share one more, and each must still
    wait for it before it is acknowledged.
    """

    def __init__(self, watched: Path) -> None:
        self.watched = str(watched)
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.real_fsync = os.fsync
        self.real_link = os.link

    def fsync(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path == self.watched:
            self._append("dir-start", path)
            self.gate.wait(timeout=60)  # a guard against a hang, not a timing
            self.real_fsync(fd)
            self._append("dir-end", path)
            return
        self.real_fsync(fd)
        self._append("file", f"inode {os.fstat(fd).st_ino}")  # a new entry has no name yet

    def link(self, source: object, target: object, **kwargs: object) -> None:
        self.real_link(source, target, **kwargs)  # type: ignore[arg-type]
        directory = kwargs.get("dst_dir_fd")
        if isinstance(directory, int):
            target = os.path.join(os.readlink(f"/proc/self/fd/{directory}"), str(target))
        self._append("link", str(target))

    def _append(self, kind: str, path: str) -> None:
        with self.lock:
            self.log.append((kind, path))

    def index(self, kind: str, predicate: Callable[[str], bool]) -> list[int]:
        return [i for i, (k, path) in enumerate(self.log) if k == kind and predicate(path)]


async def test_concurrent_adds_each_wait_for_their_fsyncs_and_share_directory_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = RecordingTrail()
    count = 24
    spool = make_spool(tmp_path / "spool", trail)
    queue = spool.queue("received")
    observer = FsyncObserver(queue.dirs.state("incoming"))
    monkeypatch.setattr(os, "fsync", observer.fsync)
    monkeypatch.setattr(os, "link", observer.link)

    async def add(number: int) -> str:
        queue_id = await queue.add(envelope(), origin(), message(number))
        observer._append("done", queue_id)
        return queue_id

    async def open_gate_when_all_asked() -> None:
        await _until(lambda: spool.committer.requests == count)
        observer.gate.set()

    try:
        opener = asyncio.create_task(open_gate_when_all_asked())
        ids = await asyncio.gather(*(add(n) for n in range(count)))
        await opener
    finally:
        observer.gate.set()
        await spool.aclose()
    for queue_id in ids:
        _check_order(observer, queue_id)
    assert spool.committer.requests == count
    assert spool.committer.fsyncs <= 2  # the group commit shared the directory fsyncs


def _check_order(observer: FsyncObserver, queue_id: str) -> None:
    """file fsync < link < start of a directory fsync < its end < acknowledgement."""
    (done,) = observer.index("done", lambda path: path == queue_id)
    (linked,) = observer.index("link", lambda path: path.endswith(f"/incoming/{queue_id}"))
    inode = os.stat(observer.watched + "/" + queue_id).st_ino
    (file_synced,) = observer.index("file", lambda path: path == f"inode {inode}")
    assert file_synced < linked < done
    starts = observer.index("dir-start", lambda path: True)
    ends = observer.index("dir-end", lambda path: True)
    covering = [
        (start, end)
        for start, end in zip(starts, ends, strict=True)
        if linked < start and end < done
    ]
    assert covering, f"{queue_id} acknowledged without a directory fsync after its link"


# -- the end of a write-and-fsync job, told to the loop only when it waits --------------------


async def test_a_job_that_ended_first_costs_the_loop_no_wake_up() -> None:
    loop = asyncio.get_running_loop()
    end = _JobEnd(loop)
    wake_ups: list[object] = []
    real = loop.call_soon_threadsafe

    def watched(callback: Callable[..., object], *args: object) -> asyncio.Handle:
        wake_ups.append(callback)
        return real(callback, *args)

    loop.call_soon_threadsafe = watched  # type: ignore[method-assign,assignment]
    try:
        await loop.run_in_executor(None, end.finish, None)
        await end.wait()
    finally:
        del loop.call_soon_threadsafe
    assert _resolve not in wake_ups  # the loop found the job done: nothing to wake it


async def test_a_loop_waiting_for_a_job_is_woken_with_its_error() -> None:
    loop = asyncio.get_running_loop()
    end = _JobEnd(loop)
    release = threading.Event()

    def job() -> None:
        release.wait(timeout=60)  # a guard against a hang, not a timing
        end.finish(OSError(errno.EIO, "I/O error"))

    thread = threading.Thread(target=job)
    thread.start()
    try:
        waiting = asyncio.create_task(end.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        release.set()
        with pytest.raises(OSError, match="I/O error"):
            await waiting
        await end.settled()  # settled never raises
    finally:
        release.set()
        await asyncio.to_thread(thread.join)


async def test_a_cancelled_caller_still_gets_its_change_made_and_spares_the_others() -> None:
    fsync = ControlledFsync()
    committer = GroupCommitter(fsync, fsync_directory=lambda directory: None)
    directory = Path("/spool/received/incoming")
    changed: list[str] = []
    first = asyncio.create_task(committer.sync(directory, lambda: changed.append("a")))
    await _until(lambda: len(fsync.started) == 1)
    cancelled = asyncio.create_task(committer.sync(directory, lambda: changed.append("b")))
    other = asyncio.create_task(committer.sync(directory, lambda: changed.append("c")))
    await asyncio.sleep(0)
    cancelled.cancel()
    fsync.release[0].set()
    await first
    await _until(lambda: len(fsync.started) == 2)
    fsync.release[1].set()
    await other
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert changed == ["a", "b", "c"]  # the cancelled caller's change was made all the same
    assert (committer.requests, committer.fsyncs) == (3, 2)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_directory_syncer_keeps_one_descriptor_per_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "incoming", tmp_path / "active"
    first.mkdir()
    second.mkdir()
    syncer = DirectorySyncer()
    before = _open_descriptors()
    for _ in range(3):
        syncer(first)
        syncer(second)
    assert _open_descriptors() == before + 2
    syncer.close()
    assert _open_descriptors() == before
    syncer.close()  # idempotent


def test_directory_syncer_reopens_after_a_failed_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer = DirectorySyncer()
    before = _open_descriptors()
    syncer(tmp_path)
    real_fsync, synced = os.fsync, []

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        syncer(tmp_path)
    assert _open_descriptors() == before  # the failed descriptor is closed, not kept

    def recording(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    syncer(tmp_path)
    assert synced == [tmp_path.stat().st_ino] and _open_descriptors() == before + 1
    syncer.close()


async def test_a_spool_closes_its_directory_descriptors(tmp_path: Path) -> None:
    async def add_then_close(root: Path) -> None:
        spool = make_spool(root, RecordingTrail())
        await spool.queue("received").add(envelope(), origin(), message())
        await spool.aclose()

    await add_then_close(tmp_path / "warm-up")  # what a process opens once (/proc/self/fd)
    before = _open_descriptors()
    await add_then_close(tmp_path / "spool")
    assert _open_descriptors() == before
