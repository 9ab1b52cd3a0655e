"""Blocking file operations on the entries of one stage (run in the spool's I/O threads).

Role: everything ``Queue`` does to the file system besides writing new files
(``writer``) - listing, claiming by rename, locating, inspecting, rewriting a version,
recovering ``active/``, removing ``tmp/`` debris, the consumer lock - as plain
functions over a ``StageDirs``, so the async ``Queue`` stays an orchestration of steps
and these stay testable without an event loop.

Invariants:

- a claim is one ``rename`` into the claimer's active directory (``active/`` for slot
  0, ``active/<K>/`` for slot K; ``gateway.spool.layout``): of two claimers, exactly
  one succeeds, the other sees ``FileNotFoundError`` and moves on; the claimer then
  reads the record and, for an entry up to ``read_ahead`` bytes, its whole content
  (SHA-256 checked) through the same descriptor, in the same I/O job (``take``);
- a file is trusted only if its record validates *and* its name is the queue id
  inside it (a renamed or copied file would otherwise be processed under another id);
- ``locate`` declares an entry absent only after several passes over the state
  directories miss it, because an entry can move from a directory not yet looked at
  into one already looked at during one pass;
- the consumer lock of slot K is ``flock(LOCK_EX | LOCK_NB)`` on its lock file
  (``consumer.lock``, ``consumer-<K>.lock``): held for the life of the consumer,
  released by the kernel if the process dies. Only the holder of slot K's lock moves
  entries out of slot K's active directory back to ``incoming/`` (``requeue_active``,
  ``requeue_orphaned_slots``): a live consumer's entries are never taken from it. A
  lock path that is not a regular file (a planted symbolic link, a directory, a FIFO)
  is never followed nor removed: the worker stops with ``UnsafeLockFile`` (exit 2;
  ``ConsumerLock``);
- "in ``active/``" means in any slot's active directory: ``locate`` and ``scan``
  look in each (a slot directory is never an entry);
- ``tmp/`` debris is a file last changed before the recovery's limit; a parked
  deletion (``.deleting``) is dated by its park (its ctime), not by the entry's mtime,
  so a consumer starting while another process deletes never removes it under that
  deletion (``remove_stale_temps``).

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

from gateway.errors import MissiveError
from gateway.log import get_logger
from gateway.spool.atomic import DELETING_SUFFIX, TEMP_SUFFIX, TempFile, move
from gateway.spool.entry import EntryReader, read_record
from gateway.spool.errors import CorruptEntry, SpoolBusy
from gateway.spool.layout import STATES, StageDirs, State, slot_of_name
from gateway.spool.model import QueueRecord
from gateway.spool.record import PREAMBLE_SIZE, Preamble, encode_record, encode_trailer

CLAIM_BATCH = 1000
LOCATE_PASSES = 3
_FREE_NAME_TRIES = 1000

_log = get_logger("spool")
# what ``os.open`` says of a lock path that is not a regular file (``open_lock_file``)
_NOT_A_FILE_ERRORS = frozenset({errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV})
_UNKNOWN_KIND = "of an unknown type"
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


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
    slot: int = 0  # in ``active/``: the consumer slot holding it


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take`` read of a claimed entry: its record, and its whole content when it
    was small enough to read at once (``CorruptEntry`` if that content failed its
    SHA-256, None if it was not read)."""

    record: QueueRecord
    content: bytes | CorruptEntry | None


def read_named(path: Path, name: str) -> QueueRecord:
    """The record of ``path``; ``CorruptEntry`` if it does not validate or names another id."""
    return _named(read_record(path), name)


def _named(record: QueueRecord, name: str) -> QueueRecord:
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
    (mtime <= ``now``), at most ``CLAIM_BATCH`` of each.

    A stray file named like a consumer slot (``1`` .. ``63``: never a queue id) is left
    where it is: claimed, it would be renamed onto that slot's ``active/K/`` directory.
    Any other stray name is claimed and ends in ``corrupt/`` as an unreadable entry."""
    names = (name for name in os.listdir(dirs.state("incoming")) if slot_of_name(name) is None)
    incoming = sorted(names)[:CLAIM_BATCH]
    deferred = dirs.state("deferred")
    due: list[tuple[float, str]] = []
    for name in os.listdir(deferred):
        if slot_of_name(name) is not None:
            continue
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
    dirs: StageDirs,
    state: State,
    name: str,
    moved: Callable[[str], None],
    slot: int = 0,
    read_ahead: int = 0,
) -> Taken | CorruptEntry | None:
    """Claim ``state/name`` for ``slot``: None if another claimer won, the damage if its
    record is corrupt (it is then in the slot's active directory), else its record and,
    if it has at most ``read_ahead`` bytes of content, that content (one open file).
    ``moved`` is the crash checkpoint."""
    active = dirs.active(slot) / name
    try:
        move(dirs.entry(state, name), active)
    except FileNotFoundError:
        return None
    moved("claim.moved")
    try:
        with EntryReader(active) as reader:
            return Taken(_named(reader.record, name), _read_small(reader, read_ahead))
    except CorruptEntry as error:
        return error


def _read_small(reader: EntryReader, limit: int) -> bytes | CorruptEntry | None:
    """The whole content if it is at most ``limit`` bytes (its damage if it does not
    match its SHA-256), else None."""
    length = reader.record.content_length
    if length > limit:
        return None
    try:
        return b"".join(reader.chunks(max(1, length)))
    except CorruptEntry as error:
        return error


def slot_dirs(dirs: StageDirs) -> list[tuple[int, Path]]:
    """The active directories of slots >= 1 present under ``active/`` (by name only: a
    file that happens to bear a slot's name holds no entry, and is harmless here)."""
    active = dirs.state("active")
    found = ((slot_of_name(name), name) for name in os.listdir(active))
    return sorted((slot, active / name) for slot, name in found if slot is not None)


def _is_slot_dir(directory: Path, name: str) -> bool:
    return slot_of_name(name) is not None and stat.S_ISDIR(os.lstat(directory / name).st_mode)


def _existing_path(root: str, state: State, name: str) -> str | None:
    """``<root>/<state>/<name>`` if it exists; for ``active``, in whichever slot's
    directory. Plain strings: this runs a dozen times per hand-off and per removal of
    a child (``find_entry``), where building ``Path`` objects cost as much as the
    ``lstat`` calls themselves."""
    path = f"{root}/{state}/{name}"
    if os.path.lexists(path):
        return path
    if state != "active":
        return None
    active = f"{root}/active"
    try:
        names = os.listdir(active)
    except FileNotFoundError:  # a stage being created by another process: nothing in it yet
        return None
    slots = sorted(slot for slot in map(slot_of_name, names) if slot is not None)
    in_slots = (f"{active}/{slot}/{name}" for slot in slots)
    return next((path for path in in_slots if os.path.lexists(path)), None)


def find_entry(dirs: StageDirs, name: str) -> tuple[State, Path] | None:
    """The state holding ``name`` and its path, or None after ``LOCATE_PASSES`` misses."""
    root = os.fspath(dirs.root)
    for _ in range(LOCATE_PASSES):
        for state in STATES:
            path = _existing_path(root, state, name)
            if path is not None:
                return state, Path(path)
    return None


def locate(dirs: StageDirs, name: str) -> State | None:
    """The state directory holding ``name`` (any slot's, for ``active``), or None after
    ``LOCATE_PASSES`` misses."""
    found = find_entry(dirs, name)
    return None if found is None else found[0]


def inspect(
    dirs: StageDirs, state: State, name: str, *, slot: int = 0, path: Path | None = None
) -> EntryInfo | None:
    """One file's ``EntryInfo`` (``path`` defaults to ``state/name``); None if it is gone."""
    path = path or dirs.entry(state, name)
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
        slot=slot,
    )


def scan(dirs: StageDirs, state: State) -> list[EntryInfo]:
    """Every file of one state directory, by name; for ``active``, slot 0's then each
    other slot's (the slot directories themselves are not listed)."""
    if state != "active":
        found = (inspect(dirs, state, name) for name in sorted(os.listdir(dirs.state(state))))
        return [info for info in found if info is not None]
    infos: list[EntryInfo] = []
    for slot, directory in [(0, dirs.active(0)), *slot_dirs(dirs)]:
        for name in _entry_names(directory, slot):
            info = inspect(dirs, state, name, slot=slot, path=directory / name)
            if info is not None:
                infos.append(info)
    return infos


def _entry_names(directory: Path, slot: int) -> list[str]:
    """The names of ``directory`` (a slot's active directory) that can be entries."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):  # gone, or a stray file of that name
        return []
    if slot != 0:
        return names
    return [name for name in names if not _is_slot_dir_quietly(directory, name)]


def _is_slot_dir_quietly(directory: Path, name: str) -> bool:
    try:
        return _is_slot_dir(directory, name)
    except FileNotFoundError:
        return False


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


def requeue_active(dirs: StageDirs, slot: int = 0) -> list[tuple[str, QueueRecord | None]]:
    """Move everything in ``slot``'s active directory back to ``incoming/`` (the start of
    that slot's consumer, which holds its lock); the other slots' directories are left
    alone."""
    moved: list[tuple[str, QueueRecord | None]] = []
    directory = dirs.active(slot)
    for name in _entry_names(directory, slot):
        source = directory / name
        record = read_quietly(source)
        move(source, dirs.entry("incoming", name))
        moved.append((name, record))
    return moved


def requeue_orphaned_slots(
    dirs: StageDirs, own_slot: int
) -> list[tuple[int, str, QueueRecord | None]]:
    """For every other slot whose lock is free (its consumer is dead or gone), move its
    active directory back to ``incoming/`` while holding that lock; a slot whose lock is
    held (a live consumer, or one starting right now, which recovers it itself) is
    skipped, and so is an empty directory (its lock is not even tried, so a consumer
    starting meanwhile is not made to wait). Returns ``(slot, name, record)`` of each
    entry moved.

    Decision: adopting orphans here means a slot that is no longer started (fewer
    ``crypto_workers`` after a restart) does not strand its claimed entries."""
    others = [slot for slot, _ in slot_dirs(dirs)]
    if own_slot != 0:
        others.insert(0, 0)
    moved: list[tuple[int, str, QueueRecord | None]] = []
    for slot in others:
        if slot == own_slot or not _entry_names(dirs.active(slot), slot):
            continue  # an empty directory: nothing to adopt, its lock is left alone
        lock = ConsumerLock(dirs, slot)
        if not lock.try_acquire():
            continue
        try:
            moved.extend((slot, name, record) for name, record in requeue_active(dirs, slot))
        finally:
            lock.release()
    return moved


def remove_stale_temps(dirs: StageDirs, older_than: float) -> list[tuple[str, bool]]:
    """Remove files of ``tmp/`` last changed before ``older_than`` (a timestamp): last
    modified, or for a parked deletion, parked (``_last_changed``).

    Each removed name comes with True for an unpublished write (a ``.tmp`` file with a
    single link); a second link to a published entry or a parked deletion is False.
    Consumers of several slots may run this at once: each file is reported by the one
    whose ``unlink`` removed it.
    """
    removed: list[tuple[str, bool]] = []
    for name in sorted(os.listdir(dirs.tmp)):
        path = dirs.tmp / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if _last_changed(name, info) > older_than:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:  # another consumer of the stage, recovering too
            continue
        removed.append((name, name.endswith(TEMP_SUFFIX) and info.st_nlink == 1))
    return removed


def _last_changed(name: str, info: os.stat_result) -> float:
    """When a file of ``tmp/`` was last written, or a parked deletion (``.deleting``)
    parked: the rename into ``tmp/`` keeps the entry's mtime (a held entry's: hours or
    days ago; a deferred entry's: its next attempt, maybe hours ahead) but sets its
    ctime (ext4, XFS, btrfs, tmpfs). By the mtime alone, a consumer starting while a
    ``delete`` (an operator's, the quarantine purge's) records its event took the
    parked entry for a crash's debris and removed it under the deletion. The price: a
    deletion cut short by a crash is finished an hour after it (by the running
    consumer's sweep, ``Queue.sweep_if_due``), not by the next start."""
    if name.endswith(DELETING_SUFFIX):
        return info.st_ctime  # not the mtime: a deferred entry's is its next attempt, ahead
    return info.st_mtime


class UnsafeLockFile(MissiveError):
    """Something other than a regular file is at a consumer lock's path (exit status 2).

    Not a ``SpoolError``: no stage catches it as a bad entry or a busy slot; it stops
    the worker, whose command prints the line (``gateway.cli``)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(
            f"consumer lock {path} is {what}, not a regular file: not followed, not removed; "
            "find out how it got there, remove it, then start the worker again"
        )


def open_lock_file(path: Path) -> int:
    """A descriptor on the lock file at ``path``, created (0600) if missing;
    ``UnsafeLockFile`` if something other than a regular file is there (class
    ``ConsumerLock``). ``lstat`` first, so a FIFO or a device is never even opened;
    ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat`` after, for one swapped in meanwhile."""
    what = _not_a_regular_file(path)
    if what is not None:
        raise UnsafeLockFile(path, what)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        if error.errno not in _NOT_A_FILE_ERRORS:
            raise
        found = _not_a_regular_file(path) or error.strerror or _UNKNOWN_KIND
        raise UnsafeLockFile(path, found) from None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    raise UnsafeLockFile(path, _not_a_regular_file(path) or _UNKNOWN_KIND)


def _not_a_regular_file(path: Path) -> str | None:
    """What is at ``path`` if it exists and is not a regular file (a symbolic link is
    named with where it points, never followed), else None."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link (to {_link_target(path)})"
    return next((kind for test, kind in _KINDS if test(mode)), _UNKNOWN_KIND)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # replaced meanwhile
        return "?"


class ConsumerLock:
    """``flock`` on the lock file of one consumer slot of a stage: one consumer per slot
    at a time (``flock`` locks belong to the open file, so two ``ConsumerLock`` of one
    slot exclude each other even inside one process).

    Decision (a planted lock path): the lock file must be a regular file. Anything else
    at its path - a symbolic link (an attacker with write access to the stage directory,
    or an operator's mistake), a directory, a FIFO, a socket, a device - is never
    followed, opened for locking, truncated, chmod'ed or removed: it could point at a
    file of the gateway's user outside the spool, and removing it would hide the
    tampering. ``try_acquire`` logs one ``spool.lock_unsafe`` error naming the path and
    what is there and raises ``UnsafeLockFile`` (a ``MissiveError``: the worker stops,
    exit status 2, one line on stderr, no traceback). This holds for the consumer's own
    slot and for the slots whose orphans ``requeue_orphaned_slots`` tries to adopt:
    the stage is tampered with, and the operator must look before any worker goes on.
    """

    def __init__(self, dirs: StageDirs, slot: int = 0) -> None:
        self._dirs = dirs
        self._slot = slot
        self._path = dirs.consumer_lock(slot)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (idempotent); ``SpoolBusy`` if another consumer holds it."""
        if not self.try_acquire():
            slot = "" if self._slot == 0 else f" in slot {self._slot}"
            raise SpoolBusy(
                f"stage {self._dirs.name} already has a running consumer{slot} "
                f"({self._path} is locked)"
            )

    def try_acquire(self) -> bool:
        """Take the lock if it is free (True; idempotent), else False; ``UnsafeLockFile``
        if its path is not a regular file (class docstring)."""
        if self._fd is not None:
            return True
        try:
            fd = open_lock_file(self._path)
        except UnsafeLockFile as unsafe:
            _log.error(
                "spool.lock_unsafe",
                stage=self._dirs.name,
                slot=self._slot,
                path=str(unsafe.path),
                found=unsafe.what,
            )
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
