"""Structured logging: one line per event on stdout, ``logfmt`` style.

A line looks like::

    ts=2026-11-28T12:00:00.123Z level=info event=listener.start name=mx address=127.0.0.1:2525

Invariants (security): callers pass only envelope-level facts as fields: queue ids,
addresses, peers, certificate serials, outcomes. Never a password, a private key, a
message body or a Subject (it often names a patient). ``event`` is a dotted name
that a sysadmin can grep. Values with spaces, quotes, ``=`` or control characters are
quoted and escaped so one event is always one line (no log injection through a
peer-supplied string such as an EHLO name).

Cost (every stage pays it for each line; ``bench/bench_log.py`` measures it):

- a disabled level costs one cached ``isEnabledFor`` check, nothing is built;
- an enabled line builds one ``LogRecord`` through the standard ``Logger.makeRecord``
  and ``Logger.handle`` (so levels, handlers and filters stay the standard ones), but
  skips ``findCaller``'s walk of the stack: the source line of a record would name
  this module anyway, and the format does not show it. ``setup_logging`` also turns
  off the thread and process names that ``LogRecord`` looks up for every record
  (``logging.logThreads`` and its siblings, the optimisation the ``logging`` HOWTO
  documents); no Missive format shows them;
- the line is formatted once: a value made only of printable ASCII other than space,
  ``"``, ``=`` and ``\\`` (nearly all of them) is checked by one compiled regular
  expression and written as is; the date part of ``ts`` is rendered once per second;
- one ``write`` of the finished line (newline included) then one ``flush`` per line, so
  each event reaches the journal whole, at once, even if the process dies next.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_ROOT = "missive"
_UNKNOWN_FILE = "(unknown file)"  # what logging itself records when it has no caller
_HEAD_KEYS = frozenset({"ts", "level", "event"})
# printable ASCII except space, '"', '=' and '\': such a value needs no quoting
_PLAIN_VALUE = re.compile(r"[!#-<>-\[\]-~]+").fullmatch


def _quote_slow(text: str) -> str:
    """Quote and escape ``text`` unless every character is printable and not special."""
    if text and all(c.isprintable() and c not in ' "=\\' for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


def _quote(value: object) -> str:
    text = value if type(value) is str else str(value)  # a str subclass may have its own str()
    if _PLAIN_VALUE(text) is not None:
        return text
    return _quote_slow(text)


def format_fields(fields: Mapping[str, Any]) -> str:
    """``k=v`` pairs in the given order, values quoted when needed; None values skipped."""
    # inline fast path: a plain str, or an int (whose str() is always plain), as is
    return " ".join(
        [
            f"{key}={val}"
            if (type(val) is str and _PLAIN_VALUE(val)) or type(val) is int
            else f"{key}={_quote(val)}"
            for key, val in fields.items()
            if val is not None
        ]
    )


class LogfmtFormatter(logging.Formatter):
    """Formats a record as ``ts=… level=… event=… k=v…`` (fields from ``extra={"fields":…}``)."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # (epoch second, its rendered date part)

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached  # one tuple: threads see the old pair or the new one
        return f"{cached[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._timestamp(record.created, record.msecs)  # always plain
        level, event = record.levelname.lower(), record.getMessage()
        fields: Mapping[str, Any] = getattr(record, "fields", None) or {}
        if _HEAD_KEYS.isdisjoint(fields):
            line = f"ts={stamp} level={_quote(level)} event={_quote(event)}"
            if tail := format_fields(fields):
                line = f"{line} {tail}"
        else:  # a field named like a head key takes its place, as it always did
            line = format_fields({"ts": stamp, "level": level, "event": event, **fields})
        if record.exc_info and record.levelno >= logging.ERROR:
            # the exception type only: a traceback may carry message data
            line += " " + format_fields(
                {"exc": record.exc_info[0].__name__ if record.exc_info[0] else "unknown"}
            )
        return line


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes each finished line in one call, then flushes."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            stream = self.stream
            stream.write(line)
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own rule: report, never raise
            self.handleError(record)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the ``missive`` loggers to ``stream`` (stdout) at ``level`` (idempotent)."""
    logger = logging.getLogger(_ROOT)
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _LineHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(LogfmtFormatter())
    logger.addHandler(handler)
    # documented logging optimisation: no format of ours shows these names
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class EventLogger:
    """A small wrapper: ``log.info("spool.accepted", queue_id=qid, size=n)``."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"{_ROOT}.{name}")

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        logger = self._logger
        if logger.isEnabledFor(level):
            record = logger.makeRecord(logger.name, level, _UNKNOWN_FILE, 0, event, (), None)
            record.__dict__["fields"] = fields  # what extra={"fields": fields} sets
            logger.handle(record)

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
