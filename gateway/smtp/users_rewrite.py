"""Submission logins: the atomic rewrite of ``conf/users.toml`` (CLI only).

Role: ``missive users`` (``gateway.smtp.users_cli``) renders a ``UserTable``
(``gateway.smtp.user_table``, which this module imports) with ``render_users`` and
replaces the file with ``write_users_file`` while holding ``users_file_lock``. The
gateway itself never writes the file.

Decisions:

- Rewrite: the new content is rendered, re-parsed (it must read back to the same
  table), written to an exclusive temporary file in the same directory with mode 0600
  from its first byte, given the owner and group of the file it replaces (so a
  root-run CLI does not lock the gateway's user out), fsynced, renamed over the file,
  then the directory is fsynced. Concurrent CLI runs are serialised by an ``flock`` on
  the directory. Comments are kept only in the header (the leading block of comment
  and blank lines, ``gateway.smtp.user_table.read_header``); a symlink is followed and
  its target rewritten.
- ``missive users`` never writes an invalid file, and always writes 0600.

Security notes: no password, hash or salt is ever logged or put in an error message.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.smtp.user_table import DEFAULT_HEADER, UsersFileError, UserTable, parse_users

__all__ = ["render_users", "users_file_lock", "write_users_file"]


FILE_MODE = 0o600


def _toml_string(text: str) -> str:
    """A TOML basic string (TOML 1.0 §String): quotes, backslashes and controls escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def render_users(table: UserTable, header: str = DEFAULT_HEADER) -> str:
    """The TOML text of ``table`` after ``header`` (comment lines)."""
    parts = [header.rstrip("\n") + "\n"]
    for user in table.users:
        addresses = ", ".join(_toml_string(address) for address in user.addresses)
        parts.append(
            "\n[[users]]\n"
            f"login = {_toml_string(user.login)}\n"
            f"password_hash = {_toml_string(user.password_hash.encode())}\n"
            f"addresses = [{addresses}]\n"
        )
    return "".join(parts)


@contextmanager
def users_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory of ``path`` (CLI read-modify-write)."""
    directory = Path(os.path.realpath(path)).parent
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise UsersFileError(f"{path.name}: cannot open {directory}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _owner_of(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_uid, info.st_gid


def _replace_atomically(target: Path, data: bytes) -> None:
    owner = _owner_of(target)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(fd, *owner)
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_users_file(path: Path, table: UserTable, header: str = DEFAULT_HEADER) -> None:
    """Atomically replace ``path`` with ``table``, mode 0600 (see module doc)."""
    text = render_users(table, header)
    if parse_users(text, path.name) != table:
        raise UsersFileError(f"{path.name}: internal error: the rendered file reads back wrong")
    target = Path(os.path.realpath(path))
    try:
        _replace_atomically(target, text.encode("utf-8"))
    except OSError as error:
        raise UsersFileError(f"{path.name}: cannot write {target}: {error.strerror}") from None
