"""A one-line progress display for ``missive annuaire import`` on a terminal.

Shown only when stderr is a terminal (``isatty``): in a cron job, a pipe or a log file
it would be noise, so nothing is printed there. The line is redrawn in place with
``\\r`` at most every ``interval`` seconds and erased before any other message (a bad
row report) and at the end.

Why by hand: about forty lines; a progress-bar library (tqdm, rich) would be a runtime
dependency of the gateway for a cosmetic feature.
"""

from __future__ import annotations

import time
from typing import TextIO


class TerminalProgress:
    """Progress of the two passes: bytes read of ``total_bytes``, then entries written."""

    def __init__(self, stream: TextIO, total_bytes: int, *, interval: float = 0.2) -> None:
        self._stream = stream
        self._total = max(total_bytes, 1)
        self._interval = interval
        self._last_draw = 0.0
        self._width = 0

    def reading(self, bytes_read: int, rows: int) -> None:
        percent = min(100, bytes_read * 100 // self._total)
        self._draw(f"reading {percent:3d}%  {rows:,} rows")

    def writing(self, entries: int) -> None:
        self._draw(f"writing {entries:,} entries")

    def clear(self) -> None:
        """Erase the line (before printing a message, and at the end)."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
            self._last_draw = 0.0

    def _draw(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_draw < self._interval:
            return
        self._last_draw = now
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = max(self._width, len(text))
