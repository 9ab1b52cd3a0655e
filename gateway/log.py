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

Other libraries' loggers (decision): aiosmtpd writes to ``mail.log`` (an unrecognised
command, a session exception), asyncio to ``asyncio`` (a task exception never
retrieved); with no handler of their own their records would reach Python's last-resort
handler and come out on stderr as bare, unquoted text. ``setup_logging`` therefore puts
a second handler, on the same stream, on the root logger: every record that is not
Missive's (the ``missive`` logger does not propagate) and is at WARNING or above (or at
the configured level when that is higher) becomes one line
``event=library.log logger=mail.log message="..."``, quoted and escaped like any other,
so a peer's string cannot forge a line, and an exception shows as its type only
(aiosmtpd's warnings name the peer and at most the SMTP verb it sent; asyncio's name a
task and the repr of its exception, whose text is Missive's own error text).
Exactly one library message is dropped: aiosmtpd 1.4 reads and sets its own deprecated
``Session.login_data`` after every successful AUTH and warns about it each time
("Session.login_data is deprecated ..."); that is aiosmtpd's doing, not Missive's, and
it would fill the log. A filter on ``mail.log`` removes that message only.
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
_LIBRARY_EVENT = "library.log"
_AIOSMTPD_LOGGER = "mail.log"
# aiosmtpd 1.4 warns this after each successful AUTH, from its own code (module docstring)
_AIOSMTPD_LOGIN_DATA_WARNING = "Session.login_data is deprecated and will be removed in version 2.0"
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


class _LibraryFormatter(LogfmtFormatter):
    """Formats another library's record as ``event=library.log logger=… message=…``."""

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(
            {
                **record.__dict__,
                "msg": _LIBRARY_EVENT,
                "args": (),
                "fields": {"logger": record.name, "message": record.getMessage()},
            }
        )
        return super().format(shown)


class _DropLoginDataWarning(logging.Filter):
    """Drops aiosmtpd's own ``Session.login_data`` deprecation warning, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _AIOSMTPD_LOGIN_DATA_WARNING


_DROP_LOGIN_DATA_WARNING = _DropLoginDataWarning()


def _line_handler(stream: TextIO, formatter: logging.Formatter) -> _LineHandler:
    handler = _LineHandler(stream)
    handler.setFormatter(formatter)
    return handler


def _route_libraries(level: int, stream: TextIO) -> None:
    """Other libraries' records at ``level`` and above to ``stream`` (module docstring)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LineHandler):  # ours, from an earlier call
            root.removeHandler(handler)
    handler = _line_handler(stream, _LibraryFormatter())
    handler.setLevel(max(level, logging.WARNING))
    root.addHandler(handler)
    logging.getLogger(_AIOSMTPD_LOGGER).addFilter(_DROP_LOGIN_DATA_WARNING)  # added once


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the ``missive`` loggers to ``stream`` (stdout) at ``level`` (idempotent).

    Other libraries' records at WARNING and above (or ``level`` if higher) go to the
    same stream as ``library.log`` lines (module docstring).
    """
    target = sys.stdout if stream is None else stream
    logger = logging.getLogger(_ROOT)
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(_line_handler(target, LogfmtFormatter()))
    _route_libraries(LEVELS[level], target)
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
