"""Structured logging: one line per event on stdout, ``logfmt`` style.

A line looks like::

    ts=2026-11-28T12:00:00.123Z level=info event=listener.start name=mx address=127.0.0.1:2525

Invariants (security): callers pass only envelope-level facts as fields: queue ids,
addresses, peers, certificate serials, outcomes. Never a password, a private key, a
message body or a Subject (it often names a patient). ``event`` is a dotted name
that a sysadmin can grep. Values with spaces, quotes, ``=`` or control characters are
quoted and escaped so one event is always one line (no log injection through a
peer-supplied string such as an EHLO name).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_ROOT = "missive"


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=\\' for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


def format_fields(fields: Mapping[str, Any]) -> str:
    """``k=v`` pairs in the given order, values quoted when needed; None values skipped."""
    return " ".join(f"{key}={_quote(val)}" for key, val in fields.items() if val is not None)


class LogfmtFormatter(logging.Formatter):
    """Formats a record as ``ts=… level=… event=… k=v…`` (fields from ``extra={"fields":…}``)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        head: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None) or {}
        line = format_fields({**head, **fields})
        if record.exc_info and record.levelno >= logging.ERROR:
            # the exception type only: a traceback may carry message data
            line += " " + format_fields(
                {"exc": record.exc_info[0].__name__ if record.exc_info[0] else "unknown"}
            )
        return line


def setup_logging(level: str = "info") -> None:
    """Send the ``missive`` loggers to stdout at ``level`` (idempotent)."""
    logger = logging.getLogger(_ROOT)
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LogfmtFormatter())
    logger.addHandler(handler)


class EventLogger:
    """A small wrapper: ``log.info("spool.accepted", queue_id=qid, size=n)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"{_ROOT}.{name}")

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)
