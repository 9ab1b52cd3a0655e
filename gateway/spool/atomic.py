"""The one helper that writes queue files: exclusive temp file, write, fsync, rename, fsync(dir).

Every queue file - a newly accepted message, a hand-off to the next stage, a state
change - is written through ``TempFile`` and nothing else (STYLE 4, the step that
maddy, Haraka and stdlib ``mailbox.Maildir`` each skip):

1. ``TempFile.create``: ``open(<stage>/tmp/<id>.<random>.tmp, O_CREAT|O_EXCL|O_NOFOLLOW,
   0600)`` then ``fchmod(0600)`` (the umask cannot loosen it; ``O_EXCL`` means a name
   planted in advance, a symlink included, makes the write fail instead of following it);
2. ``write``/``write_at``/``copy_from``: the bytes (``write`` loops on short writes);
3. ``finish``: ``fsync(file)`` then ``close`` - the file's bytes are on disk;
4. ``publish`` (a new entry): ``link(temp, <state>/<id>)`` then ``unlink(temp)``.
   ``link`` fails when the target exists, so an entry is never overwritten, not even by
   an id collision; ``replace`` (a new version of an entry its owner holds in
   ``active/``): ``rename(temp, active/<id>)``, atomic;
5. ``sync_directory(<state>)``: ``fsync`` of the directory that received the name, so
   the name survives a power failure. The caller does it through the group committer
   (``gateway.spool.commit``), which shares one directory fsync between concurrent
   writers but never lets one return before an fsync that began after its rename.

``tmp/`` itself is not fsynced: if a crash resurrects a temp name, it is either a
second link to a published entry (``st_nlink > 1``) or an unpublished file; recovery
removes both (nothing in ``tmp/`` was ever acknowledged).

``UnnamedTempFile`` (a new entry written in one go, the SMTP front's usual case) skips
the temp name: ``open(<stage>/tmp, O_TMPFILE)`` gives a file with no name at all, so
there is no name to create in ``tmp/``, nor to remove after ``publish``, and nothing
is left behind by a crash (measured on the development VM with 16 threads: about 1.4x
the adds per second of a named temp file, less CPU; issue 5). Steps 2 and 3 are the
same (``finish`` fsyncs but keeps the descriptor open, ``link`` needs it); ``publish``
is ``linkat(AT_SYMLINK_FOLLOW)`` of ``/proc/self/fd/<fd>`` (the kernel's documented way
to name an ``O_TMPFILE`` file), which, like ``link``, never replaces an existing name.
It is one system call: ``<fd>`` is looked up relative to a descriptor of
``/proc/self/fd`` opened once per process (``O_PATH``; closed and forgotten in a child
after ``fork``, whose ``/proc/self`` is another directory) and the target is the
entry's path (Python 3.11's ``os.link`` only calls ``linkat`` when a directory
descriptor is given, hence ``src_dir_fd``); it used to open and close the target
directory around the link as well, two more system calls per message, each a release
and re-acquisition of the GIL in a busy I/O thread (issue 5). Where the file system
or ``/proc`` cannot do it, ``UnnamedTempFile.create`` falls back to a named
``TempFile``.

Moves between state directories are plain ``rename(2)`` (``move``): atomic, the file
keeps its inode, and its target never exists because a queue id lives in exactly one
state directory at a time (the only writer of a new name is ``publish``, which checks).
On ext4 and XFS a rename is one journal transaction, so an fsync of the target
directory makes both directory entries durable.

Blocking functions: the queue calls them from its I/O threads, never from the event
loop. Trust level: writes only under the spool directory, files 0600.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import threading
from pathlib import Path

from gateway.spool.errors import SpoolFull, SpoolWriteError

FILE_MODE = 0o600
TEMP_SUFFIX = ".tmp"
DELETING_SUFFIX = ".deleting"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_NO_COPY_FILE_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_TMPFILE_FLAGS = os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC
# the file system (or an old kernel, which reads O_TMPFILE as O_DIRECTORY) cannot
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}


def as_spool_error(error: OSError, doing: str) -> SpoolWriteError:
    """The typed error for a failed write: ``SpoolFull`` for ENOSPC/EDQUOT (452)."""
    kind = SpoolFull if error.errno in _FULL else SpoolWriteError
    return kind(f"{doing}: {error.strerror or error}")


def temp_name(stem: str, suffix: str = TEMP_SUFFIX) -> str:
    """``<stem>.<12 hex>.tmp``: unique even when the same entry is written twice."""
    return f"{stem}.{secrets.token_hex(6)}{suffix}"


class TempFile:
    """A new file in a stage's ``tmp/``, open for writing until ``finish``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, directory: Path, stem: str) -> TempFile:
        """Create ``directory/<stem>.<random>.tmp`` exclusively, mode 0600."""
        path = directory / temp_name(stem)
        fd = os.open(path, _CREATE_FLAGS, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(path, fd)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("temp file already closed")
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` at the current position (loops on short writes)."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def write_at(self, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset`` without moving the position (the preamble)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def copy_from(self, source_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of ``source_fd`` from ``offset``, in the kernel when it
        can (``copy_file_range``), through a 1 MiB buffer otherwise."""
        try:
            while length:
                copied = os.copy_file_range(source_fd, self.fd, length, offset)
                if copied == 0:
                    raise SpoolWriteError("source shorter than its recorded content length")
                offset, length = offset + copied, length - copied
        except OSError as error:
            if error.errno not in _NO_COPY_FILE_RANGE:
                raise
            self._copy_by_reading(source_fd, offset, length)

    def _copy_by_reading(self, source_fd: int, offset: int, length: int) -> None:
        while length:
            chunk = os.pread(source_fd, min(length, _COPY_CHUNK), offset)
            if not chunk:
                raise SpoolWriteError("source shorter than its recorded content length")
            self.write(chunk)
            offset, length = offset + len(chunk), length - len(chunk)

    def finish(self) -> None:
        """``fsync`` then close: after this the bytes are on disk."""
        fd = self.fd
        try:
            os.fsync(fd)
        finally:
            self._fd = None
            os.close(fd)

    def publish(self, target: Path) -> None:
        """Give the finished file its entry name (``FileExistsError`` if taken)."""
        os.link(self.path, target, follow_symlinks=False)
        os.unlink(self.path)

    def replace(self, target: Path) -> None:
        """Atomically replace ``target`` (an entry its caller owns) with this file."""
        os.replace(self.path, target)

    def discard(self) -> None:
        """Close if open and remove the temp name (idempotent, never raises)."""
        self._close_quietly()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _close_quietly(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass


class UnnamedTempFile(TempFile):
    """A new file without any name until ``publish`` (``O_TMPFILE``); module docstring.

    ``path`` is the directory it was created in (for messages); ``replace`` is not
    available (a new version of an entry is written as a named ``TempFile``).
    """

    @classmethod
    def create(cls, directory: Path, stem: str) -> TempFile:
        """An unnamed file in ``directory``, mode 0600; a named ``TempFile`` where the
        file system cannot make one, or where ``/proc`` (which ``publish`` links through)
        is not mounted (a chroot, some sandboxes)."""
        if not _proc_fd_links():
            return TempFile.create(directory, stem)
        try:
            fd = os.open(directory, _TMPFILE_FLAGS, FILE_MODE)
        except OSError as error:
            if error.errno not in _NO_TMPFILE:
                raise
            return TempFile.create(directory, stem)
        try:
            os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd)

    def finish(self) -> None:
        """``fsync``; the descriptor stays open for ``publish`` (which closes it)."""
        os.fsync(self.fd)

    def publish(self, target: Path) -> None:
        """Give the file its entry name (``FileExistsError`` if taken), then close it."""
        os.link(str(self.fd), target, src_dir_fd=_proc_fd_directory(), follow_symlinks=True)
        self.discard()

    def replace(self, target: Path) -> None:
        raise NotImplementedError("an unnamed file only becomes a new entry (publish)")

    def discard(self) -> None:
        """Close if open (the file disappears unless published; never raises)."""
        self._close_quietly()


def sync_directory(path: Path) -> None:
    """``fsync`` the directory ``path``: the names created or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySyncer:
    """``sync_directory`` through one descriptor per directory, opened at its first
    fsync and kept (``O_RDONLY | O_DIRECTORY``): the group committer of a ``Spool``
    fsyncs the same few state directories for every entry, and the ``open`` and
    ``close`` around each fsync were two system calls of three (session 9).

    Why a kept descriptor fsyncs the right directory: the spool never removes or
    replaces a state directory (``gateway.spool.layout``: made once, 0700; a slot's
    ``active/<K>/`` included), and docs/spool.md says to stop the gateway before moving
    the spool. If an fsync fails, its descriptor is closed and forgotten, so the next
    fsync of that directory opens it again (a directory replaced by hand, ``ESTALE``).
    Linux reports a writeback error to every descriptor open when it happened, so a
    kept one misses nothing a fresh one would see.

    Thread-safe (the spool's I/O threads): two threads opening the same directory
    at once keep one descriptor and close the other. A descriptor is closed only by
    the thread whose fsync failed on it, or by ``close``: safe because the group
    committer runs one batch at a time per directory (``gateway.spool.commit``), so no
    other thread is using that directory's descriptor, and ``close`` is called once no
    fsync can run (``Spool.close``, after its I/O threads have stopped); a descriptor
    closed under a running fsync could otherwise be reused by another file and the
    fsync land there. Measured: the ``open`` and ``close`` of a state directory cost
    about 3 us of CPU together on the development VM, next to 45-60 us for the fsync.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._descriptors: dict[Path, int] = {}
        self._closed = False

    def __call__(self, path: Path) -> None:
        """``fsync`` the directory ``path``; once closed, through a descriptor of its
        own (a batch drained after ``Spool.close``, its caller cancelled at shutdown,
        still syncs, and keeps nothing open: review R1, session 9)."""
        if self._closed:
            sync_directory(path)
            return
        fd = self._descriptors.get(path)
        if fd is None:
            fd = self._open(path)
            if fd is None:  # closed meanwhile
                sync_directory(path)
                return
        try:
            os.fsync(fd)
        except OSError:
            self._forget(path, fd)
            raise

    def _open(self, path: Path) -> int | None:
        """The descriptor kept for ``path`` (opened now if none); None once closed."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with self._lock:
            kept = None if self._closed else self._descriptors.setdefault(path, fd)
        if kept != fd:
            os.close(fd)
        return kept

    def _forget(self, path: Path, fd: int) -> None:
        with self._lock:
            if self._descriptors.get(path) != fd:
                return
            del self._descriptors[path]
        os.close(fd)

    def close(self) -> None:
        """Close every kept descriptor (idempotent)."""
        with self._lock:
            self._closed = True
            descriptors, self._descriptors = list(self._descriptors.values()), {}
        for fd in descriptors:
            try:
                os.close(fd)
            except OSError:
                pass


def move(source: str | Path, target: str | Path) -> None:
    """Move an entry between state directories (one atomic ``rename``)."""
    os.rename(source, target)


def remove(path: Path) -> None:
    """Remove an entry name (the caller fsyncs the directory)."""
    os.unlink(path)


@functools.cache
def _proc_fd_links() -> bool:
    """Whether ``/proc/self/fd`` exists (checked once per process)."""
    return os.path.isdir("/proc/self/fd")


_proc_fd_lock = threading.Lock()
_proc_fd: list[int] = []  # the descriptor of /proc/self/fd, once opened (module docstring)


def _proc_fd_directory() -> int:
    """A descriptor of this process's ``/proc/self/fd`` (``O_PATH``), opened on first use."""
    if not _proc_fd:
        with _proc_fd_lock:
            if not _proc_fd:
                _proc_fd.append(os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    return _proc_fd[0]


def _forget_proc_fd_directory() -> None:
    """In a child after ``fork``: the inherited descriptor names the parent's table (and
    the lock may have been held by a thread that does not exist in the child)."""
    global _proc_fd_lock
    _proc_fd_lock = threading.Lock()
    while _proc_fd:
        try:
            os.close(_proc_fd.pop())
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_proc_fd_directory)
