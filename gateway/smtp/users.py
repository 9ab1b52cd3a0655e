"""Submission logins: the authenticator the SMTP front uses.

Role: the SMTP front asks ``Authenticator.authenticate(login, password)`` (AUTH
PLAIN/LOGIN, RFC 4954 §4) and then ``may_send_as(login, address)`` for the envelope
sender and the From: addresses. The users file is read by ``gateway.smtp.user_table``
(model, format, validation; imported here) and rewritten by ``missive users``
(``gateway.smtp.users_cli``, through ``gateway.smtp.users_rewrite``). Trust level: the
front holds password hashes, never a private key.

Decisions:

- Timing: an unknown login costs one scrypt derivation against a dummy hash with the
  default parameters (the ones every hash made by ``missive users`` has), so the
  answer time does not tell which logins exist; the result is the same ``REFUSED``
  value for an unknown login and a wrong password.
- Never blocks the loop: the stat, any reload and the scrypt derivation run in an
  executor; at most ``max_concurrent`` derivations run at once (16 MiB each; a
  cancelled caller keeps its slot until its thread is done). A derivation that fails
  (OpenSSL out of memory) is logged and refused: fail closed, never an exception.
- Reload: before each authentication the file's identity (device, inode, size,
  mtime, ctime) is compared with the loaded one; a change reloads it. A file that
  became unreadable or invalid is logged (``users.reload_failed``, level error) and
  the last good table stays in force, as with CRLs and the liste blanche, so a typo
  in a hand edit does not lock every doctor out; ``missive users`` never writes an
  invalid file. ``may_send_as`` answers from the table the last authentication saw.
- A users file readable by group or others is used but logged (``users.file_mode``):
  the hashes are slow to crack, not impossible; the CLI always writes 0600.

Security notes: no password, hash or salt is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import secrets
import stat
import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from gateway.log import get_logger
from gateway.smtp.passwords import (
    DEFAULT_PARAMETERS,
    KEY_BYTES,
    SALT_BYTES,
    ScryptHash,
    verify_password,
)
from gateway.smtp.user_table import UsersFileError, UserTable, load_users

__all__ = ["REFUSED", "AuthResult", "Authenticator"]


log = get_logger("users")


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of one authentication: ``REFUSED`` for every failure, whatever its cause."""

    ok: bool
    login: str | None = None
    addresses: frozenset[str] = frozenset()


REFUSED = AuthResult(ok=False)

_FileIdentity = tuple[int, int, int, int, int]


def _identity(path: Path) -> _FileIdentity | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _warn_if_readable(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning("users.file_mode", file=str(path), mode=f"{mode:04o}", advice="chmod 600")


class Authenticator:
    """Checks logins against the users file, reloading it when it changes.

    Construct it before serving (it reads the file: ``UsersFileError`` if unusable);
    ``authenticate`` is then safe to call from the event loop at any rate.
    """

    def __init__(
        self, users_file: Path, *, executor: Executor | None = None, max_concurrent: int = 4
    ) -> None:
        self._path = users_file
        self._executor = executor
        self._slots = asyncio.Semaphore(max_concurrent)
        self._lock = threading.Lock()
        self._identity = _identity(users_file)
        self._table = load_users(users_file)
        _warn_if_readable(users_file)
        # a hash no password matches, as costly as a default one (see module doc)
        self._dummy = ScryptHash(
            DEFAULT_PARAMETERS, secrets.token_bytes(SALT_BYTES), secrets.token_bytes(KEY_BYTES)
        )
        log.info("users.loaded", file=str(users_file), users=len(self._table))

    @property
    def table(self) -> UserTable:
        return self._table

    async def authenticate(self, login: str, password: str) -> AuthResult:
        """``AuthResult(ok=True, ...)`` if ``password`` is ``login``'s, else ``REFUSED``."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._check, login, password)
        future.add_done_callback(lambda _: self._slots.release())
        # shielded: a cancelled caller must not free the slot while the thread still works
        return await asyncio.shield(future)

    def may_send_as(self, login: str, address: str) -> bool:
        """True if ``login`` may use ``address`` as envelope sender or From: address."""
        return self._table.may_send_as(login, address)

    def refresh(self) -> bool:
        """Reload the file if it changed (blocking); True when a new table is in force."""
        with self._lock:
            identity = _identity(self._path)
            if identity == self._identity:
                return False
            self._identity = identity
            try:
                table = load_users(self._path)
            except UsersFileError as error:
                log.error(
                    "users.reload_failed",
                    file=str(self._path),
                    problem=error.problems[0],
                    problems=len(error.problems),
                    kept_users=len(self._table),
                )
                return False
            self._table = table
        _warn_if_readable(self._path)
        log.info("users.reloaded", file=str(self._path), users=len(table))
        return True

    def _check(self, login: str, password: str) -> AuthResult:
        self.refresh()
        user = self._table.get(login)
        stored = user.password_hash if user is not None else self._dummy
        try:
            matched = verify_password(password, stored)
        except (ValueError, MemoryError) as error:  # OpenSSL refused the memory: fail closed
            log.error("users.verify_failed", login=login, error=type(error).__name__)
            return REFUSED
        if user is None or not matched:
            reason = "unknown-login" if user is None else "wrong-password"
            log.debug("users.auth_refused", login=login, reason=reason)
            return REFUSED
        return AuthResult(ok=True, login=user.login, addresses=frozenset(user.addresses))
