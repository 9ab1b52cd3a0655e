"""The list of problems found in one configuration file, one line each.

Invariant: every line reads ``<file name>: <key path>: <message>`` (product contract,
e.g. ``missive.toml: routes[2].tls: expected one of none|opportunistic|verify, got
"yes"``), where the key path joins TOML keys with dots and indexes arrays of tables
from 0 (``routes[0]`` is the first ``[[routes]]``, as in jq or JSONPath). A key that
got a problem is remembered as *bad*, so later cross-checks skip it instead of
stacking a second, derived complaint on the same mistake.
"""

from __future__ import annotations

import re

from gateway.errors import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_part(name: str) -> str:
    """A TOML key as it appears in a key path (quoted when not a bare key)."""
    if _BARE_KEY.fullmatch(name):
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def _one_line(text: str) -> str:
    """``text`` with control characters escaped: a problem is always one line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{key_part(name)}" if prefix else key_part(name)


class Problems:
    """Collects the problem lines of one file and the keys they concern."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.lines: list[str] = []
        self._bad: set[str] = set()

    def add(self, key: str, message: str) -> None:
        """Record ``message`` about ``key`` ("" for the file itself); marks the key bad."""
        message = _one_line(message)
        line = f"{self.file_name}: {key}: {message}" if key else f"{self.file_name}: {message}"
        if line not in self.lines:
            self.lines.append(line)
        self._bad.add(key)

    def mark_bad(self, key: str) -> None:
        """Mark ``key`` bad without a line (its problem was already reported)."""
        self._bad.add(key)

    def is_bad(self, *keys: str) -> bool:
        """True if any of ``keys``, or a table or array that holds it, had a problem."""
        return any(self._covers(bad, key) for key in keys for bad in self._bad)

    @staticmethod
    def _covers(bad: str, key: str) -> bool:
        return key == bad or key.startswith((bad + ".", bad + "["))

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)
