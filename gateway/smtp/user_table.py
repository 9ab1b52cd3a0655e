"""Submission logins: the ``conf/users.toml`` model and its reading (no writing, no auth).

Role: ``User`` and ``UserTable`` (every login of one users file, immutable), the
normalisation of logins and addresses, and ``parse_users`` / ``load_users`` /
``read_header``, which read and validate the file. The authenticator
(``gateway.smtp.users``) and the atomic rewrite (``gateway.smtp.users_rewrite``) import
this module; ``missive users`` (``gateway.smtp.users_cli``) edits the file through
``load_users`` and ``gateway.smtp.users_rewrite.write_users_file``.

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
- Addresses (``gateway.config.domains.parse_email``, as ``gateway.config`` and
  ``gateway.pki`` do): the domain is case-insensitive (lower-cased), the local part is
  exact (RFC 5321 §2.4: only the receiving host may fold it). ``may_send_as`` applies
  the same normalisation to the address it is asked about; an unparsable address is
  simply not allowed.
- Reading is bounded (``MAX_FILE_BYTES``) and blocking: the authenticator reloads the
  file from an executor.

Security notes: no password, hash or salt is ever logged or put in an error message
(this module logs nothing).
"""

from __future__ import annotations

import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.domains import parse_email
from gateway.config.problems import Problems
from gateway.config.value_errors import BadValue
from gateway.errors import ConfigError
from gateway.smtp.passwords import BadHash, ScryptHash, parse_hash

__all__ = [
    "User",
    "UserTable",
    "UsersFileError",
    "load_users",
    "normalise_address",
    "normalise_login",
    "parse_users",
    "read_header",
]


MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_LOGIN_BYTES = 255

_USER_KEYS = ("login", "password_hash", "addresses")

DEFAULT_HEADER = """\
# Missive: logins of the submission listeners (auth.users_file in missive.toml).
# Written by `missive users add|passwd|remove`; only password hashes are stored here.
"""


class UsersFileError(ConfigError):
    """The users file cannot be used; ``problems`` holds one line per problem."""


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
