"""``missive keys import|list``: the command line of the key store.

Role: the commands a sysadmin uses to put local users' S/MIME keys into the key store
(``gateway.smime.keystore``/``keyimport``) and to look at them. ``register_keys`` adds the
``keys`` group; ``gateway.smime.cli.register`` calls it and imports this module, never
the reverse.

``keys import ADDRESS FILE [--purpose sign|enc|auto] [--password-file F]
[--allow-expired]`` and ``keys list [--json]`` work on ``--keys-dir DIR``, else on the
configuration's ``[keys] dir`` (``--config``). Passwords never travel on the command line.

Exit status: 0 success, 2 usage or configuration error, each a single line on standard
error; ``keys list`` also exits 2 when the key store scan reports problems (one line
each on standard error, after the list).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.cli_common import SubParsers
from gateway.smime import cli_support as support
from gateway.smime.certinfo import name, serial
from gateway.smime.keyimport import (
    import_identity,
    password_from_file,
    password_from_terminal_or_stdin,
    read_identity,
)
from gateway.smime.keystore import KeyStore, StoredKey, newest_first


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys-dir",
        type=Path,
        metavar="DIR",
        help="key store directory (default: the configuration's [keys] dir)",
    )
    support.add_optional_config_argument(parser)


def register_keys(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser("keys", help="local users' S/MIME keys ([keys] dir)")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    imp = commands.add_parser(
        "import",
        help="import a key and its certificate (PKCS#12 or PEM) for an address",
        description="Import FILE (.p12/.pfx or PEM) for ADDRESS into the key store, 0600."
        " Never overwrites: a renewed certificate gets a new file, the old one is kept.",
    )
    imp.add_argument("address", metavar="ADDRESS")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument(
        "--purpose",
        choices=("auto", "sign", "enc"),
        default="auto",
        help="what the key is for (default auto: what its key usage allows)",
    )
    imp.add_argument(
        "--password-file",
        type=Path,
        metavar="F",
        help="file whose first line is the password (default: ask, or stdin)",
    )
    imp.add_argument(
        "--allow-expired",
        action="store_true",
        help="accept an expired encryption certificate (to decrypt old mail)",
    )
    _add_store_arguments(imp)
    imp.set_defaults(handler=run_keys_import)
    lst = commands.add_parser("list", help="list the keys of the key store")
    lst.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _add_store_arguments(lst)
    lst.set_defaults(handler=run_keys_list)


def _keys_dir(args: argparse.Namespace) -> Path:
    directory: Path | None = args.keys_dir
    return directory if directory is not None else support.load_config(args).keys.dir


def run_keys_import(args: argparse.Namespace) -> int:
    """Handler of ``missive keys import``."""
    path: Path = args.file
    if args.password_file is not None:
        password = password_from_file(args.password_file)
    else:
        password = password_from_terminal_or_stdin(f"Password for {path.name}: ")
    directory = _keys_dir(args)
    identity = read_identity(path, password)
    done = import_identity(
        directory, args.address, identity, args.purpose, allow_expired=args.allow_expired
    )
    for outcome in done:
        print(f"{outcome.action:<8} {outcome.purpose:<4} {outcome.path}")
    return 0


def _key_status(key: StoredKey, current: set[Path], now: datetime) -> str:
    if now > key.not_after:
        return "expired"
    if now < key.not_before:
        return "not-yet-valid"
    return "current" if key.path in current else "older"


def _current_keys(store: KeyStore, now: datetime) -> set[Path]:
    """Per address and purpose, the newest key in its validity period (dates only:
    ``certs check`` validates chains and revocation)."""
    chosen: dict[tuple[str, str], Path] = {}
    for key in newest_first(store.keys):
        slot = (key.address, key.purpose)
        if slot not in chosen and key.in_validity(now):
            chosen[slot] = key.path
    return set(chosen.values())


def run_keys_list(args: argparse.Namespace) -> int:
    """Handler of ``missive keys list``."""
    store, problems = KeyStore.scan(_keys_dir(args))
    now = datetime.now(UTC)
    current = _current_keys(store, now)
    rows = [
        {
            "address": key.address,
            "purpose": key.purpose,
            "status": _key_status(key, current, now),
            "file": key.path.name,
            "serial": serial(key.certificate),
            "subject": name(key.certificate.subject),
            "issuer": name(key.certificate.issuer),
            "not_before": key.not_before.isoformat(),
            "not_after": key.not_after.isoformat(),
        }
        for key in sorted(store.keys, key=lambda k: (k.address, k.purpose, k.path.name))
    ]
    if args.json:
        print(
            json.dumps(
                {"directory": str(store.directory), "keys": rows, "problems": problems}, indent=2
            )
        )
    else:
        for row in rows:
            print(
                f"{row['address']:<32} {row['purpose']:<4} {row['status']:<13} "
                f"{row['not_after'][:10]} {row['serial']:<20} {row['file']}"
            )
        if not rows:
            print(f"no keys in {store.directory}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2 if problems else 0
