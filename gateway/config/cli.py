"""``missive check-config [FILE]``: validate a configuration file, print OK or every problem.

Contract: the file is a positional argument (default ``conf/missive.toml``). Exit 0 and
``OK`` on stdout when the file is usable; otherwise every problem on stderr, one line
each (``missive.toml: routes[2].tls: ...``), exit 2, never a traceback. It checks
more than ``serve`` loads: also every key file of ``keys.dir`` (see
``gateway.config.checks``). It only reads files: nothing is created or changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli_common import DEFAULT_CONFIG, SubParsers
from gateway.config.loader import check_config


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a configuration file: print OK or every problem",
        description="Validate a Missive configuration file and every file it names.",
    )
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )
    parser.set_defaults(handler=run_check_config)


def run_check_config(args: argparse.Namespace) -> int:
    """Print ``OK`` and return 0, or raise ``ConfigError`` (main prints it, exit 2)."""
    file: Path = args.file
    check_config(file)
    print("OK")
    return 0
