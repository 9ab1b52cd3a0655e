"""Errors that the command line turns into an exit status and clear lines.

Invariant: a command never shows a traceback for a user's mistake. Handlers raise
one of these; ``gateway.cli.main`` prints ``str(problem)`` for each problem on stderr
and exits with ``status`` (2 for usage and configuration errors, per the product
contract: 0 success, 1 a negative answer, 2 usage or configuration error).
"""

from __future__ import annotations

from collections.abc import Iterable


class MissiveError(Exception):
    """Base of the errors a command reports to its user (never a traceback)."""

    status = 2

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("; ".join(self.problems))


class UsageError(MissiveError):
    """A command was called wrongly (bad argument, missing file)."""


class ConfigError(MissiveError):
    """The configuration is unusable; ``problems`` holds one line per problem, each
    naming the file and the key (``missive.toml: routes[2].tls: ...``)."""
