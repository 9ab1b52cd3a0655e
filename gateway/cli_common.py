"""Helpers shared by the subcommands of ``missive``.

Every subcommand that reads the configuration takes ``--config FILE`` after its own
name (product contract), defaulting to ``conf/missive.toml`` relative to the current
directory. Handlers are ``(argparse.Namespace) -> int`` and raise
``gateway.errors.MissiveError`` for anything the user must fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.config import Config

DEFAULT_CONFIG = Path("conf/missive.toml")


class Handler(Protocol):
    """What ``set_defaults(handler=...)`` holds: run the command, return the exit status."""

    def __call__(self, args: argparse.Namespace) -> int: ...


SubParsers = argparse._SubParsersAction  # the type argparse returns from add_subparsers()


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` (default ``conf/missive.toml``)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )


def load_config_from_args(args: argparse.Namespace) -> Config:
    """Load and validate the file named by ``--config``; raises ``ConfigError``."""
    from gateway.config import load_config

    path: Path = args.config
    return load_config(path)
