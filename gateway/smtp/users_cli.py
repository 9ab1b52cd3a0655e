"""``missive users add|passwd|list|remove``: manage the submission logins.

Usage::

    missive users add LOGIN [--address ADDR]... [--users-file FILE | --config FILE]
    missive users passwd LOGIN [--users-file FILE | --config FILE]
    missive users list [--json] [--users-file FILE | --config FILE]
    missive users remove LOGIN [--users-file FILE | --config FILE]

Decisions:

- The file: ``--users-file`` if given; else ``auth.users_file`` of ``--config`` when
  that is given (only ``gateway.home`` and ``[auth]`` are read, so the command works
  before the rest of the configuration is in place); else ``conf/users.toml``.
- The password is never an argument (it would show in ``ps`` and shell history): it
  is asked twice on the terminal with ``getpass`` (the two must match), or read as one
  line from stdin when stdin is not a terminal (``printf '%s\\n' "$PW" | missive users
  add ...``; the final newline is dropped). Policy (``gateway.smtp.passwords``): 12 to
  1024 characters, no control character; an empty or shorter password is refused.
- ``add`` refuses a login that exists (use ``passwd``); without ``--address`` the
  login itself is the only address, which needs the login to be a mail address.
  ``add`` creates the file (mode 0600, with a comment header) when it is missing; the
  other commands need it to exist. ``passwd`` and ``remove`` of an unknown login are
  usage errors (exit 2).
- Every change rewrites the file atomically, mode 0600 (``gateway.smtp.users_rewrite``);
  ``list`` never prints hashes, only each login, its addresses and hash scheme.

Exit status: 0 done, 2 a usage or file error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from gateway.cli_common import SubParsers
from gateway.errors import UsageError
from gateway.smtp.passwords import (
    MAX_LENGTH,
    BadPassword,
    check_new_password,
    hash_password,
    parse_hash,
)
from gateway.smtp.user_table import (
    User,
    UserTable,
    load_users,
    normalise_address,
    normalise_login,
    read_header,
)
from gateway.smtp.users_rewrite import users_file_lock, write_users_file

DEFAULT_USERS_FILE = Path("conf/users.toml")


# ---------------------------------------------------------------- arguments


def _add_file_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--users-file",
        type=Path,
        metavar="FILE",
        help=f"users file (default: auth.users_file of --config, else {DEFAULT_USERS_FILE})",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="configuration whose auth.users_file to use",
    )


def users_file_from_args(args: argparse.Namespace) -> Path:
    """The users file the command works on (see module doc)."""
    if args.users_file is not None:
        path: Path = args.users_file
        return path
    if args.config is not None:
        from gateway.config.loader import users_file_of

        return users_file_of(args.config)
    return DEFAULT_USERS_FILE


def _login(text: str) -> str:
    try:
        return normalise_login(text)
    except ValueError as error:
        raise UsageError(f"users: invalid login {text!r}: {error}") from None


def _addresses(login: str, texts: list[str] | None) -> tuple[str, ...]:
    if not texts:
        texts = [login]
    addresses: list[str] = []
    for text in texts:
        try:
            address = normalise_address(text)
        except ValueError as error:
            if text == login:
                raise UsageError(
                    f"users: the login {login!r} is not a mail address: give --address"
                ) from None
            raise UsageError(f"users: invalid --address: {error}") from None
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


# ---------------------------------------------------------------- password input


def read_new_password(stdin: TextIO | None = None) -> str:
    """The new password: twice on a terminal, else one line of stdin (see module doc)."""
    stream = sys.stdin if stdin is None else stdin
    if stream.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat the password: ") != password:
            raise UsageError("users: the two passwords differ; nothing changed")
    else:
        line = stream.readline(MAX_LENGTH * 4 + 2)
        password = line.removesuffix("\n").removesuffix("\r")
    try:
        check_new_password(password)
    except BadPassword as error:
        raise UsageError(f"users: {error}; nothing changed") from None
    return password


# ---------------------------------------------------------------- commands


def _load_or_empty(path: Path) -> UserTable:
    if not path.exists():
        if not path.parent.is_dir():
            raise UsageError(f"users: directory {path.parent} does not exist")
        return UserTable()
    return load_users(path)


def _change(
    path: Path, load: Callable[[Path], UserTable], change: Callable[[UserTable], UserTable]
) -> None:
    """Read, change and rewrite the file under the directory lock."""
    with users_file_lock(path):
        table = load(path)
        write_users_file(path, change(table), read_header(path))


def _cmd_add(args: argparse.Namespace) -> int:
    path = users_file_from_args(args)
    login = _login(args.login)
    addresses = _addresses(login, args.address)
    if _load_or_empty(path).get(login) is not None:
        raise UsageError(f"users: {login} already exists in {path}; use `missive users passwd`")
    password_hash = parse_hash(hash_password(read_new_password()))

    def add(table: UserTable) -> UserTable:
        if table.get(login) is not None:
            raise UsageError(f"users: {login} already exists in {path}")
        return table.with_user(User(login, password_hash, addresses))

    _change(path, _load_or_empty, add)
    print(f"users: added {login} ({', '.join(addresses)}) to {path}")
    return 0


def _existing_user(table: UserTable, login: str, path: Path) -> User:
    user = table.get(login)
    if user is None:
        raise UsageError(f"users: no login {login} in {path}")
    return user


def _cmd_passwd(args: argparse.Namespace) -> int:
    path = users_file_from_args(args)
    login = _login(args.login)
    _existing_user(load_users(path), login, path)
    password_hash = parse_hash(hash_password(read_new_password()))

    def passwd(table: UserTable) -> UserTable:
        user = _existing_user(table, login, path)
        return table.with_user(User(user.login, password_hash, user.addresses))

    _change(path, load_users, passwd)
    print(f"users: new password for {login} in {path}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    path = users_file_from_args(args)
    login = _login(args.login)

    def remove(table: UserTable) -> UserTable:
        _existing_user(table, login, path)
        return table.without(login)

    _change(path, load_users, remove)
    print(f"users: removed {login} from {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    path = users_file_from_args(args)
    table = load_users(path)
    if args.json:
        entries = [
            {"login": user.login, "addresses": list(user.addresses), "scheme": "scrypt"}
            for user in table.users
        ]
        print(json.dumps({"users_file": str(path), "users": entries}, ensure_ascii=False))
        return 0
    for user in table.users:
        print(f"{user.login}\t{' '.join(user.addresses)}")
    return 0


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    users = subparsers.add_parser("users", help="manage the submission logins (users.toml)")
    commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="add a login (password read from the terminal/stdin)")
    add.add_argument("login", metavar="LOGIN")
    add.add_argument(
        "--address",
        action="append",
        metavar="ADDR",
        help="an address the login may send as (repeatable; default: the login itself)",
    )
    _add_file_arguments(add)
    add.set_defaults(handler=_cmd_add)

    passwd = commands.add_parser("passwd", help="set a new password for a login")
    passwd.add_argument("login", metavar="LOGIN")
    _add_file_arguments(passwd)
    passwd.set_defaults(handler=_cmd_passwd)

    listing = commands.add_parser("list", help="list the logins and their addresses")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _add_file_arguments(listing)
    listing.set_defaults(handler=_cmd_list)

    remove = commands.add_parser("remove", help="remove a login")
    remove.add_argument("login", metavar="LOGIN")
    _add_file_arguments(remove)
    remove.set_defaults(handler=_cmd_remove)
