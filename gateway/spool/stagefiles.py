"""Blocking file operations on the entries of one stage (run in the spool's I/O threads).

Role: everything ``Queue`` does to the file system besides writing new files
(``writer``) - listing, claiming by rename, locating, inspecting, rewriting a version,
recovering ``active/``, removing ``tmp/`` debris, the consumer lock - as plain
functions over a ``StageDirs``, so the async ``Queue`` stays an orchestration of steps
and these stay testable without an event loop.

Invariants:

- a claim is one ``rename`` into ``active/``: of two claimers, exactly one succeeds,
  the other sees ``FileNotFoundError`` and moves on;
- a file is trusted only if its record validates *and* its name is the queue id
  inside it (a renamed or copied file would otherwise be processed under another id);
- ``locate`` declares an entry absent only after several passes over the state
  directories miss it, because an entry can move from a directory not yet looked at
  into one already looked at during one pass;
- the consumer lock is ``flock(LOCK_EX | LOCK_NB)`` on ``consumer.lock``: held for
  the life of the consumer, released by the kernel if the process dies.

Trust level: reads and renames under one stage directory; content only through
``write_version``'s kernel copy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.spool.atomic import TEMP_SUFFIX, TempFile, move
from gateway.spool.entry import read_record
from gateway.spool.errors import CorruptEntry, SpoolBusy
from gateway.spool.layout import STATES, StageDirs, State
from gateway.spool.model import QueueRecord
from gateway.spool.record import PREAMBLE_SIZE, Preamble, encode_record, encode_trailer

CLAIM_BATCH = 1000
LOCATE_PASSES = 3
_FREE_NAME_TRIES = 1000


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """One file found by ``scan``: its record, or why it could not be read."""

    stage: str
    state: State
    name: str
    path: Path
    file_size: int
    modified: datetime
    record: QueueRecord | None
    error: str | None


def read_named(path: Path, name: str) -> QueueRecord:
    """The record of ``path``; ``CorruptEntry`` if it does not validate or names another id."""
    record = read_record(path)
    if record.queue_id != name:
        raise CorruptEntry(f"file name {name} differs from the queue id {record.queue_id} inside")
    return record


def read_quietly(path: Path) -> QueueRecord | None:
    """The record, or None (for audit events about a file that may be damaged or gone)."""
    try:
        return read_record(path)
    except (CorruptEntry, OSError):
        return None


def list_candidates(dirs: StageDirs, now: float) -> list[tuple[State, str]]:
    """Entries to claim: ``incoming/`` by name (= age), then due ``deferred/`` by due time
    (mtime <= ``now``), at most ``CLAIM_BATCH`` of each."""
    incoming = sorted(os.listdir(dirs.state("incoming")))[:CLAIM_BATCH]
    deferred = dirs.state("deferred")
    due: list[tuple[float, str]] = []
    for name in os.listdir(deferred):
        try:
            modified = os.lstat(deferred / name).st_mtime
        except FileNotFoundError:
            continue
        if modified <= now:
            due.append((modified, name))
    due.sort()
    found: list[tuple[State, str]] = [("incoming", name) for name in incoming]
    return found + [("deferred", name) for _, name in due[:CLAIM_BATCH]]


def take(
    dirs: StageDirs, state: State, name: str, moved: Callable[[str], None]
) -> QueueRecord | CorruptEntry | None:
    """Claim ``state/name``: None if another claimer won, the damage if it is corrupt
    (it is then in ``active/``), else its record. ``moved`` is the crash checkpoint."""
    active = dirs.entry("active", name)
    try:
        move(dirs.entry(state, name), active)
    except FileNotFoundError:
        return None
    moved("claim.moved")
    try:
        return read_named(active, name)
    except CorruptEntry as error:
        return error


def locate(dirs: StageDirs, name: str) -> State | None:
    """The state directory holding ``name``, or None after ``LOCATE_PASSES`` misses."""
    for _ in range(LOCATE_PASSES):
        for state in STATES:
            if os.path.lexists(dirs.entry(state, name)):
                return state
    return None


def inspect(dirs: StageDirs, state: State, name: str) -> EntryInfo | None:
    """One file's ``EntryInfo``; None if it is gone."""
    path = dirs.entry(state, name)
    try:
        status = os.lstat(path)
        record, error = read_named(path, name), None
    except FileNotFoundError:
        return None
    except CorruptEntry as corrupt:
        record, error = None, corrupt.reason
    return EntryInfo(
        stage=dirs.name,
        state=state,
        name=name,
        path=path,
        file_size=status.st_size,
        modified=datetime.fromtimestamp(status.st_mtime, UTC),
        record=record,
        error=error,
    )


def scan(dirs: StageDirs, state: State) -> list[EntryInfo]:
    """Every file of one state directory, by name."""
    found = (inspect(dirs, state, name) for name in sorted(os.listdir(dirs.state(state))))
    return [info for info in found if info is not None]


def write_version(dirs: StageDirs, current: Path, record: QueueRecord) -> None:
    """A new file with ``current``'s content (kernel copy) and ``record``, fsynced, then
    atomically in place of ``current`` (which the caller owns, in ``active/``)."""
    payload = encode_record(record)
    preamble = Preamble(record.content_length, len(payload))
    temp = TempFile.create(dirs.tmp, record.queue_id)
    try:
        temp.write(preamble.encode())
        source = os.open(current, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(source).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(current))
            temp.copy_from(source, PREAMBLE_SIZE, record.content_length)
        finally:
            os.close(source)
        temp.write(encode_trailer(preamble, payload))
        temp.finish()
        temp.replace(current)
    except BaseException:
        temp.discard()
        raise


def move_deferred(path: Path, target: Path, due: float) -> None:
    """Set the mtime to the next attempt (what ``ls -l deferred/`` shows and what
    ``list_candidates`` compares), then move into ``deferred/``."""
    os.utime(path, (due, due), follow_symlinks=False)
    move(path, target)


def move_back(current: Path, original: Path) -> None:
    """Undo a move; nothing to undo if a claimer took the entry from its new place."""
    try:
        move(current, original)
    except FileNotFoundError:
        pass


def move_to_free_name(path: Path, directory: Path, name: str) -> Path:
    """Move ``path`` into ``directory`` as ``name`` (``name.1``, ``name.2``... if taken)."""
    for suffix in range(_FREE_NAME_TRIES):
        target = directory / (name if suffix == 0 else f"{name}.{suffix}")
        if os.path.lexists(target):
            continue
        move(path, target)
        return target
    raise OSError(errno.EEXIST, "no free name", str(directory))


def requeue_active(dirs: StageDirs) -> list[tuple[str, QueueRecord | None]]:
    """Move everything in ``active/`` back to ``incoming/`` (the consumer's start)."""
    moved: list[tuple[str, QueueRecord | None]] = []
    for name in sorted(os.listdir(dirs.state("active"))):
        source = dirs.entry("active", name)
        record = read_quietly(source)
        move(source, dirs.entry("incoming", name))
        moved.append((name, record))
    return moved


def remove_stale_temps(dirs: StageDirs, older_than: float) -> list[tuple[str, bool]]:
    """Remove files of ``tmp/`` last modified before ``older_than`` (a timestamp).

    Each removed name comes with True for an unpublished write (a ``.tmp`` file with a
    single link); a second link to a published entry or a parked deletion is False.
    """
    removed: list[tuple[str, bool]] = []
    for name in sorted(os.listdir(dirs.tmp)):
        path = dirs.tmp / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if info.st_mtime > older_than:
            continue
        os.unlink(path)
        removed.append((name, name.endswith(TEMP_SUFFIX) and info.st_nlink == 1))
    return removed


class ConsumerLock:
    """``flock`` on a stage's ``consumer.lock``: one consumer per stage at a time."""

    def __init__(self, dirs: StageDirs) -> None:
        self._dirs = dirs
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (idempotent); ``SpoolBusy`` if another process holds it."""
        if self._fd is not None:
            return
        path = self._dirs.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(
                f"stage {self._dirs.name} already has a running consumer ({path} is locked)"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
