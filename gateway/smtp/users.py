"""Submission logins: the ``conf/users.toml`` model, its atomic rewrite, the authenticator.

Role: the SMTP front asks ``Authenticator.authenticate(login, password)`` (AUTH
PLAIN/LOGIN, RFC 4954 §4) and then ``may_send_as(login, address)`` for the envelope
sender and the From: addresses; ``missive users`` (``gateway.smtp.users_cli``) edits
the file through ``load_users`` / ``write_users_file``. Trust level: the front holds
password hashes, never a private key.

File format (``auth.users_file``, CONFIG-CONTRACT)::

    [[users]]
    login = "alice.martin@chu-a.test"
    password_hash = "$scrypt$ln=14,r=8,p=1$<salt>$<hash>"   # gateway.smtp.passwords
    addresses = ["alice.martin@chu-a.test"]                  # may send as these

Decisions:

- Unknown keys, a missing key, a bad hash, a bad address, an empty ``addresses`` or a
  login given twice are errors (``UsersFileError``, a ``ConfigError``: one line per
  problem, ``users.toml: users[1].addresses[0]: ...``), never silently skipped.
- Logins: 1 to 255 UTF-8 bytes, no space or control character, compared after NFC
  normalisation; a login that is a mail address gets its domain lower-cased (as the
  addresses below), any other login is compared exactly as written.
- Addresses (``gateway.config.values.parse_email``, as ``gateway.config`` and
  ``gateway.pki`` do): the domain is case-insensitive (lower-cased), the local part is
  exact (RFC 5321 §2.4: only the receiving host may fold it). ``may_send_as`` applies
  the same normalisation to the address it is asked about; an unparsable address is
  simply not allowed.
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
- Rewrite (CLI only): the new content is rendered, re-parsed (it must read back to
  the same table), written to an exclusive temporary file in the same directory with
  mode 0600 from its first byte, given the owner and group of the file it replaces
  (so a root-run CLI does not lock the gateway's user out), fsynced, renamed over the
  file, then the directory is fsynced. Concurrent CLI runs are serialised by an
  ``flock`` on the directory. Comments are kept only in the header (the leading block
  of comment and blank lines); a symlink is followed and its target rewritten.
- A users file readable by group or others is used but logged (``users.file_mode``):
  the hashes are slow to crack, not impossible; the CLI always writes 0600.

Security notes: no password, hash or salt is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import stat
import threading
import tomllib
import unicodedata
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.problems import Problems
from gateway.config.values import BadValue, parse_email
from gateway.errors import ConfigError
from gateway.log import get_logger
from gateway.smtp.passwords import (
    DEFAULT_PARAMETERS,
    KEY_BYTES,
    SALT_BYTES,
    BadHash,
    ScryptHash,
    hash_password,
    parse_hash,
    verify_password,
)

__all__ = [
    "REFUSED",
    "AuthResult",
    "Authenticator",
    "User",
    "UserTable",
    "UsersFileError",
    "hash_password",
    "load_users",
    "normalise_address",
    "normalise_login",
    "parse_users",
    "read_header",
    "render_users",
    "users_file_lock",
    "write_users_file",
]

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_LOGIN_BYTES = 255
FILE_MODE = 0o600
_USER_KEYS = ("login", "password_hash", "addresses")

DEFAULT_HEADER = """\
# Missive: logins of the submission listeners (auth.users_file in missive.toml).
# Written by `missive users add|passwd|remove`; only password hashes are stored here.
"""

log = get_logger("users")


class UsersFileError(ConfigError):
    """The users file cannot be used; ``problems`` holds one line per problem."""


# ---------------------------------------------------------------- model


def normalise_login(text: str) -> str:
    """The lookup form of a login (see module doc); ``ValueError`` if it is not one."""
    login = unicodedata.normalize("NFC", text)
    if not login or len(login.encode("utf-8")) > MAX_LOGIN_BYTES:
        raise ValueError(f"a login has 1 to {MAX_LOGIN_BYTES} bytes")
    if any(char.isspace() or unicodedata.category(char).startswith("C") for char in login):
        raise ValueError("a login cannot contain spaces or control characters")
    if "@" in login:
        try:
            return parse_email(login)
        except BadValue:
            return login
    return login


def normalise_address(text: str) -> str:
    """``local@domain`` with the domain lower-cased; ``ValueError`` if not an address."""
    try:
        return parse_email(text)
    except BadValue as error:
        raise ValueError(str(error)) from None


@dataclass(frozen=True, slots=True)
class User:
    """One ``[[users]]`` entry, normalised."""

    login: str
    password_hash: ScryptHash = field(repr=False)
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserTable:
    """Every login of one users file, by normalised login (immutable)."""

    users: tuple[User, ...] = ()
    _by_login: dict[str, User] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_login", {user.login: user for user in self.users})

    def __len__(self) -> int:
        return len(self.users)

    def get(self, login: str) -> User | None:
        try:
            return self._by_login.get(normalise_login(login))
        except ValueError:
            return None

    def may_send_as(self, login: str, address: str) -> bool:
        """True if ``login`` exists and ``address`` is one of its addresses."""
        user = self.get(login)
        if user is None:
            return False
        try:
            return normalise_address(address) in user.addresses
        except ValueError:
            return False

    def with_user(self, user: User) -> UserTable:
        """This table with ``user`` added, or replacing the entry of the same login."""
        if user.login in self._by_login:
            return UserTable(tuple(user if u.login == user.login else u for u in self.users))
        return UserTable((*self.users, user))

    def without(self, login: str) -> UserTable:
        return UserTable(tuple(user for user in self.users if user.login != login))


# ---------------------------------------------------------------- reading


def _read_login(raw: object, key: str, problems: Problems) -> str | None:
    if not isinstance(raw, str):
        problems.add(key, "expected a string")
        return None
    try:
        return normalise_login(raw)
    except ValueError as error:
        problems.add(key, str(error))
        return None


def _read_hash(raw: object, key: str, problems: Problems) -> ScryptHash | None:
    if not isinstance(raw, str):
        problems.add(key, "expected a string")
        return None
    try:
        return parse_hash(raw)
    except BadHash as error:
        problems.add(key, str(error))
        return None


def _read_addresses(raw: object, key: str, problems: Problems) -> tuple[str, ...] | None:
    if not isinstance(raw, list) or not raw:
        problems.add(key, "expected a non-empty array of mail addresses")
        return None
    addresses: list[str] = []
    valid = True
    for index, item in enumerate(raw):
        try:
            if not isinstance(item, str):
                raise ValueError("expected a string")
            address = normalise_address(item)
        except ValueError as error:
            problems.add(f"{key}[{index}]", str(error))
            valid = False
            continue
        if address not in addresses:  # the same address twice is harmless: kept once
            addresses.append(address)
    return tuple(addresses) if valid else None


def _read_user(entry: dict[str, object], key: str, problems: Problems) -> User | None:
    for name in entry:
        if name not in _USER_KEYS:
            problems.add(f"{key}.{name}", "unknown key")
    missing = [name for name in _USER_KEYS if name not in entry]
    for name in missing:
        problems.add(f"{key}.{name}", "missing (required)")
    if missing:
        return None
    login = _read_login(entry["login"], f"{key}.login", problems)
    hashed = _read_hash(entry["password_hash"], f"{key}.password_hash", problems)
    addresses = _read_addresses(entry["addresses"], f"{key}.addresses", problems)
    if login is None or hashed is None or addresses is None:
        return None
    return User(login, hashed, addresses)


def _read_users(document: dict[str, object], problems: Problems) -> list[User]:
    for name in document:
        if name != "users":
            problems.add(name, "unknown key (only [[users]] tables belong here)")
    entries = document.get("users", [])
    if not isinstance(entries, list):
        problems.add("users", "expected an array of tables ([[users]])")
        return []
    users: list[User] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        key = f"users[{index}]"
        if not isinstance(entry, dict):
            problems.add(key, "expected a table ([[users]])")
            continue
        user = _read_user(entry, key, problems)
        if user is None:
            continue
        if user.login in seen:
            problems.add(f"{key}.login", f"login already defined in users[{seen[user.login]}]")
            continue
        seen[user.login] = index
        users.append(user)
    return users


def parse_users(text: str, file_name: str) -> UserTable:
    """The table of a users file's ``text``; ``UsersFileError`` lists every problem."""
    problems = Problems(file_name)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsersFileError(f"{file_name}: invalid TOML: {error}") from None
    users = _read_users(document, problems)
    if problems.lines:
        raise UsersFileError(problems.lines)
    return UserTable(tuple(users))


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsersFileError(f"{path.name}: users file {path} does not exist") from None
    except OSError as error:
        raise UsersFileError(f"{path.name}: cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsersFileError(f"{path.name}: {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsersFileError(
            f"{path.name}: invalid TOML: not UTF-8 (byte {error.start} of the file)"
        ) from None


def load_users(path: Path) -> UserTable:
    """Read and validate the users file at ``path`` (blocking)."""
    return parse_users(_read_text(path), path.name)


def read_header(path: Path) -> str:
    """The leading comment block of an existing file, or ``DEFAULT_HEADER``."""
    try:
        text = _read_text(path)
    except UsersFileError:
        return DEFAULT_HEADER
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" if lines else DEFAULT_HEADER


# ---------------------------------------------------------------- writing


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


# ---------------------------------------------------------------- authentication


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
