"""The consumer lock of one slot of a stage: ``ConsumerLock`` and the checks on its path.

Role: one consumer per slot at a time. The lock of slot K is ``flock(LOCK_EX |
LOCK_NB)`` on its lock file (``consumer.lock`` for slot 0, ``consumer-<K>.lock``;
``gateway.spool.layout``): held for the life of the consumer, released by the kernel if
the process dies. Only the holder of slot K's lock moves entries out of slot K's active
directory back to ``incoming/`` (``gateway.spool.stage_recovery``): a live consumer's
entries are never taken from it.

Invariants and security (a planted lock path; decision in ``ConsumerLock``'s
docstring): a lock path that is not a regular file (a planted symbolic link, a
directory, a FIFO, a socket, a device) is never followed, opened for locking, truncated,
chmod'ed nor removed: the worker stops with ``UnsafeLockFile`` (exit status 2, one line
on stderr) after one ``spool.lock_unsafe`` error. ``open_lock_file`` checks with
``lstat`` first, so a FIFO or a device is never even opened, then opens with
``O_NOFOLLOW | O_NONBLOCK`` and checks with ``fstat``, for one swapped in meanwhile.

Trust level: opens, creates (0600) and locks only the lock files of one stage
directory; reads no entry.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from gateway.errors import MissiveError
from gateway.log import get_logger
from gateway.spool.errors import SpoolBusy
from gateway.spool.layout import StageDirs

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
