"""The ``missive`` command line: one console script, one subcommand per task.

Each subcommand lives next to the code it drives and registers itself through a
``register(subparsers)`` function listed in ``COMMANDS`` (an explicit list, no
discovery by reflection). Exit status (product contract): 0 success, 1 a negative
answer (invalid signature, broken audit chain), 2 a usage or configuration error.
A ``MissiveError`` is printed as one line per problem on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import MissiveError

# module path of each subcommand group, in the order ``--help`` lists them
COMMANDS: tuple[str, ...] = (
    "gateway.serve",
    "gateway.workers",
    "gateway.config.cli",
    "gateway.pki.cli",
    "gateway.smime.cli",
    "gateway.audit.cli",
    "gateway.spool.cli",
    "gateway.smtp.users_cli",
    "gateway.smtp.listeblanche_cli",
    "annuaire.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error already; keep its message on one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="missive",
        description="Missive secure health-mail gateway.",
    )
    parser.add_argument("--version", action="version", version=f"missive {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except MissiveError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``missive queue list | head``): not an error of ours;
        # point stdout at /dev/null so the interpreter's final flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
