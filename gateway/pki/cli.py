"""``missive certs``: certificate tooling: ``certs init-dev`` (the development PKI) here,
``certs show`` and ``certs check`` in ``gateway.smime.certs_cli``.

``missive certs init-dev DIR [--ec] [--user ADDRESS]... [--server HOST]...
[--crl-base-url URL] [--ocsp-url URL] [--demo-annuaire LDIF] [--keys-dir DIR]
[--local-domain DOMAIN]...`` creates or completes the development PKI in DIR
(``gateway.pki.dev``), optionally writes the demo annuaire LDIF (kept if it exists: it may
have been edited) and installs the local users' keys into a key store directory
(``gateway.pki.demo``), with the organisation signing key of the first local domain in
``<keys dir>/organisation/sign.pem`` (``keys.organisation_signing``). It prints one line
per file: created, kept, reissued, refreshed or tightened. It does not read the
configuration. Defaults: the demo users, the servers ``mx.chu-a.test`` and
``mx.clinique-b.test`` (so a test can play the remote MX), local domain ``chu-a.test``.
Wrong arguments are a ``UsageError`` (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from gateway.cli_common import SubParsers
from gateway.errors import UsageError
from gateway.pki.demo import (
    DEFAULT_LOCAL_DOMAINS,
    install_demo_keys,
    install_organisation_key,
    local_addresses,
    practitioner_for,
    write_demo_annuaire,
)
from gateway.pki.dev import (
    DEMO_USERS,
    Change,
    DevPkiError,
    describe_os_error,
    init_dev_pki,
    normalise_address,
)
from gateway.smime.certs_cli import add_certs_subcommands

CLI_DEFAULT_SERVERS: tuple[str, ...] = ("mx.chu-a.test", "mx.clinique-b.test")


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command group and its ``init-dev`` subcommand."""
    certs = subparsers.add_parser("certs", help="certificates: development PKI, show, check")
    commands = certs.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    init = commands.add_parser(
        "init-dev",
        help="create or complete a development PKI shaped like IGC-Santé",
        description="Create or complete a development PKI in DIR. Never overwrites a key.",
    )
    init.add_argument("directory", type=Path, metavar="DIR", help="PKI directory (made 0700)")
    init.add_argument("--ec", action="store_true", help="P-256 keys instead of RSA-2048")
    init.add_argument(
        "--user",
        action="append",
        metavar="ADDRESS",
        help=f"user to certify, repeatable (default: {', '.join(DEMO_USERS)})",
    )
    init.add_argument(
        "--server",
        action="append",
        metavar="HOST",
        help=f"server to certify, repeatable (default: {', '.join(CLI_DEFAULT_SERVERS)})",
    )
    init.add_argument(
        "--crl-base-url", metavar="URL", help="put CRL distribution points URL/<ca>.crl"
    )
    init.add_argument("--ocsp-url", metavar="URL", help="put this AIA OCSP URL in leaves")
    init.add_argument(
        "--demo-annuaire", type=Path, metavar="LDIF", help="write the demo annuaire here"
    )
    init.add_argument("--keys-dir", type=Path, metavar="DIR", help="install local users' keys here")
    init.add_argument(
        "--local-domain",
        action="append",
        metavar="DOMAIN",
        help=f"domain of local users, repeatable (default: {', '.join(DEFAULT_LOCAL_DOMAINS)})",
    )
    init.set_defaults(handler=run_init_dev)
    add_certs_subcommands(commands)  # certs show|check (gateway.smime.certs_cli)


def _checked_url(option: str, url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option}: need an http:// or https:// URL, not {url!r}")
    return url


def _print_changes(changes: Iterable[Change]) -> None:
    for change in changes:
        print(f"{change.action:<10} {change.path}")


def run_init_dev(args: argparse.Namespace) -> int:
    """Handler of ``missive certs init-dev``."""
    users: list[str] = args.user or list(DEMO_USERS)
    servers: list[str] = args.server or list(CLI_DEFAULT_SERVERS)
    local_domains: list[str] = args.local_domain or list(DEFAULT_LOCAL_DOMAINS)
    crl_base_url = _checked_url("--crl-base-url", args.crl_base_url)
    ocsp_url = _checked_url("--ocsp-url", args.ocsp_url)
    path: Path = args.directory
    try:
        pki = init_dev_pki(
            path,
            users,
            servers,
            ec=True if args.ec else None,
            crl_base_url=crl_base_url,
            ocsp_url=ocsp_url,
        )
        _print_changes(pki.changes)
        if args.demo_annuaire is not None:
            path = args.demo_annuaire
            practitioners = [practitioner_for(address) for address in users]
            written = write_demo_annuaire(pki, path, practitioners, overwrite=False)
            _print_changes([Change("created" if written else "kept", path)])
        if args.keys_dir is not None:
            path = args.keys_dir
            local = local_addresses(map(normalise_address, users), local_domains)
            _print_changes(install_demo_keys(pki, path, local))
            _print_changes(install_organisation_key(pki, path, local_domains[0]))
    except DevPkiError as error:
        raise UsageError(error.problems) from None
    except OSError as error:
        raise UsageError(f"cannot write {path}: {describe_os_error(error, path)}") from None
    return 0
