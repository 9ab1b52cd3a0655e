"""The key arguments that ``missive smime sign`` and ``smime decrypt`` share:
``--key FILE [--cert FILE]`` or ``--address ADDRESS [--keys-dir DIR]``.

Role: ``add_key_arguments`` declares them, ``check_key_choice`` checks the combination
(either ``--key`` or ``--address``; ``--cert`` only with ``--key``: else a
``UsageError``, exit 2) and ``store_from_args`` loads the key store ``--address``
reads (``--keys-dir``, else the configuration's ``[keys] dir``). Used by
``gateway.smime.cli`` (registration), ``gateway.smime.signing_cli`` and
``gateway.smime.envelope_cli``; it imports none of them.

Security notes: a private key comes from a file or from the key store, never from the
command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.errors import UsageError
from gateway.smime import cli_support as support
from gateway.smime.keystore import KeyStore


def add_key_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help=f"{what} private key (PEM, mode 0600; may hold its certificate)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="its certificate (PEM or DER; default: from the key file)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="use this address' keys from the key store instead of --key",
    )
    parser.add_argument(
        "--keys-dir",
        type=Path,
        metavar="DIR",
        help="key store for --address (default: the configuration's [keys] dir)",
    )


def store_from_args(args: argparse.Namespace) -> KeyStore:
    directory: Path | None = args.keys_dir
    return KeyStore.load(directory if directory is not None else support.load_config(args).keys.dir)


def check_key_choice(args: argparse.Namespace) -> None:
    if (args.key is None) == (args.address is None):
        raise UsageError("give either --key FILE (with --cert) or --address ADDRESS")
    if args.address is not None and args.cert is not None:
        raise UsageError("--cert goes with --key, not with --address")
