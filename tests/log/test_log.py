"""``gateway.log``: the line format is unchanged by the fast path, one write per line.

The reference below is the formatter as first written (per-character checks, ``strftime``
for every line, ``Logger.log`` with ``extra``): the fast path must produce the very same
bytes for any fields, since sysadmins' greps and parsers depend on them.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import log

CREATED = 1_795_867_200.123456  # 2026-11-28T12:00:00.123Z


def _reference_quote(value: object) -> str:
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=\\' for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


def _reference_fields(fields: Mapping[str, Any]) -> str:
    return " ".join(
        f"{key}={_reference_quote(val)}" for key, val in fields.items() if val is not None
    )


def _reference_line(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    head: dict[str, Any] = {
        "ts": f"{ts}.{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "event": record.getMessage(),
    }
    fields = getattr(record, "fields", None) or {}
    line = _reference_fields({**head, **fields})
    if record.exc_info and record.levelno >= logging.ERROR:
        line += " " + _reference_fields(
            {"exc": record.exc_info[0].__name__ if record.exc_info[0] else "unknown"}
        )
    return line


def _record(
    event: str, fields: Mapping[str, Any], *, created: float = CREATED
) -> logging.LogRecord:
    record = logging.LogRecord("missive.test", logging.INFO, "x.py", 1, event, (), None)
    record.created = created
    record.msecs = min(round(created % 1 * 1000), 999)
    record.__dict__["fields"] = fields
    return record


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """``setup_logging`` into a StringIO; the loggers it touches and flags restored after."""
    root = logging.getLogger("missive")
    saved = (root.level, root.propagate, list(root.handlers))
    libraries = (list(logging.getLogger().handlers), list(logging.getLogger("mail.log").filters))
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    stream = io.StringIO()
    log.setup_logging("info", stream=stream)
    yield stream
    root.setLevel(saved[0])
    root.propagate = saved[1]
    root.handlers[:] = saved[2]
    logging.getLogger().handlers[:] = libraries[0]
    logging.getLogger("mail.log").filters[:] = libraries[1]
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags


def test_a_line_is_exactly_the_documented_form(captured: io.StringIO) -> None:
    log.get_logger("smtp").info(
        "smtp.accepted", queue_id="Q1", peer="mx one", size=12, tls=None, note='a"b\\c'
    )
    line = captured.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    head, _, rest = line.partition(" ")
    assert head.startswith("ts=") and head.endswith("Z") and len(head) == len("ts=") + 24
    assert (
        rest
        == 'level=info event=smtp.accepted queue_id=Q1 peer="mx one" size=12 note="a\\"b\\\\c"\n'
    )


def test_a_known_record_formats_to_known_bytes() -> None:
    record = _record("relay.sent", {"host": "mx.b.test", "rcpt": "é@b.test", "code": 250})
    assert log.LogfmtFormatter().format(record) == (
        "ts=2026-11-28T12:00:00.123Z level=info event=relay.sent"
        " host=mx.b.test rcpt=é@b.test code=250"
    )


_keys = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True) | st.sampled_from(
    ["ts", "level", "event"]
)
_values = st.none() | st.integers() | st.text(max_size=12) | st.sampled_from(["", " ", "=", "\x85"])


@given(
    event=st.text(max_size=20) | st.just("smtp.accepted"),
    fields=st.dictionaries(_keys, _values, max_size=6),
    created=st.floats(min_value=0, max_value=4_000_000_000),
)
def test_the_fast_formatter_writes_what_the_reference_wrote(
    event: str, fields: dict[str, Any], created: float
) -> None:
    record = _record(event, fields, created=created)
    assert log.LogfmtFormatter().format(record) == _reference_line(record)


def test_the_cached_date_follows_the_clock() -> None:
    formatter = log.LogfmtFormatter()
    stamps = [
        formatter.format(_record("a.b", {}, created=created)).split(" ")[0]
        for created in (59.999, 60.0, 60.5, 3_661.25, 60.001)
    ]
    assert stamps == [
        "ts=1970-01-01T00:00:59.999Z",
        "ts=1970-01-01T00:01:00.000Z",
        "ts=1970-01-01T00:01:00.500Z",
        "ts=1970-01-01T01:01:01.250Z",
        "ts=1970-01-01T00:01:00.001Z",
    ]


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def test_one_write_and_one_flush_per_line() -> None:
    stream = _CountingStream()
    root = logging.getLogger("missive")
    saved = list(root.handlers), list(logging.getLogger().handlers)
    try:
        log.setup_logging("info", stream=stream)
        logger = log.get_logger("relay")
        logger.info("relay.sent", host="mx.b.test")
        logger.warning("relay.deferred", reason="line one\nline two")
    finally:
        root.handlers[:] = saved[0]
        logging.getLogger().handlers[:] = saved[1]
    assert [text.count("\n") for text in stream.writes] == [1, 1]
    assert all(text.endswith("\n") for text in stream.writes)
    assert 'reason="line one\\nline two"' in stream.writes[1]
    assert stream.flushes >= 2


def test_a_disabled_level_writes_and_builds_nothing(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_record(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("a record was built for a disabled level")

    monkeypatch.setattr(logging.Logger, "makeRecord", no_record)
    log.get_logger("smtp").debug("smtp.command", verb="EHLO")
    assert captured.getvalue() == ""


def test_setup_is_idempotent_and_levels_apply(captured: io.StringIO) -> None:
    log.setup_logging("warning", stream=captured)
    assert len(logging.getLogger("missive").handlers) == 1
    logger = log.get_logger("spool")
    logger.info("spool.added", queue_id="Q1")
    logger.error("spool.corrupt", queue_id="Q2")
    assert captured.getvalue().count("\n") == 1
    assert "level=error event=spool.corrupt queue_id=Q2" in captured.getvalue()


def test_plain_logging_calls_keep_their_format_and_hide_tracebacks(captured: io.StringIO) -> None:
    plain = logging.getLogger("missive.other")
    plain.info("hello %s", "world")
    try:
        raise ValueError("secret body text")
    except ValueError:
        plain.error("boom", exc_info=True)
    first, second = captured.getvalue().splitlines()
    assert first.endswith('level=info event="hello world"')
    assert second.endswith("level=error event=boom exc=ValueError")
    assert "secret" not in captured.getvalue()
