"""Small file helpers for key material: exclusive, atomic, permission-exact writes.

Invariants (security):
- a private key is created with mode 0600 from its very first byte (the temporary file is
  opened ``O_EXCL`` with that mode) and published with ``os.link``, which fails when the
  target exists, so an existing key (or a symlink planted in its place) is never
  overwritten or followed;
- public files (certificates, CRLs, indexes) are replaced atomically (temporary file in the
  same directory, fsync, ``os.replace``, fsync of the directory), so a reader sees either
  the old or the new content, never half of it;
- directories holding keys are 0700.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` as 0700, or tighten an existing one to 0700. Missing parents are
    created too, with the umask's mode (``pathlib``): a caller that needs them private
    makes them first, from the top (``StageDirs.create`` does).

    Returns True when the directory was created or its mode was changed.
    """
    if not path.exists():
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        except FileExistsError:
            pass  # made meanwhile by another process starting too: checked below
        else:
            os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
            return True
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(path))
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
        return True
    return False


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _write_fd(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private_file(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` with mode 0600 only if ``path`` does not exist yet.

    Returns False (and writes nothing) when ``path`` already exists, whatever it is.
    """
    if os.path.lexists(path):
        return False
    temporary = _temporary_sibling(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        _write_fd(fd, data)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def replace_file(path: Path, data: bytes, mode: int = PUBLIC_FILE_MODE) -> None:
    """Atomically replace (or create) ``path`` with ``data`` and ``mode``."""
    temporary = _temporary_sibling(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        _write_fd(fd, data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def tighten_private_file(path: Path) -> bool:
    """Make an existing key file 0600 (bytes and mtime untouched); True if it changed."""
    if stat.S_IMODE(path.stat().st_mode) == PRIVATE_FILE_MODE:
        return False
    os.chmod(path, PRIVATE_FILE_MODE)
    return True
