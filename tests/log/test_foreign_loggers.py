"""Other libraries' loggers (aiosmtpd's ``mail.log``, ``asyncio``) through ``setup_logging``.

What is checked: a library record at WARNING or above comes out as one logfmt line
(``event=library.log logger=... message=...``) on Missive's stream; aiosmtpd's own
``Session.login_data`` deprecation warning does not come out; below WARNING nothing
does; and, in a fresh interpreter where no test framework has put handlers on the root
logger, nothing at all reaches Python's last-resort handler (stderr stays empty).
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import Session

from gateway import log

_LOGGERS = ("", "missive", "mail.log", "asyncio")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """``setup_logging`` into a StringIO; every logger it touches restored after."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(lg.level, lg.propagate, list(lg.handlers), list(lg.filters)) for lg in loggers]
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    stream = io.StringIO()
    log.setup_logging("info", stream=stream)
    yield stream
    for logger, (level, propagate, handlers, filters) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
        logger.filters[:] = filters
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags


def _tails(stream: io.StringIO) -> list[str]:
    """Each line without its ``ts=...`` head (the clock is not under test)."""
    return [line.partition(" ")[2] for line in stream.getvalue().splitlines()]


def test_a_mail_log_warning_is_one_logfmt_line(captured: io.StringIO) -> None:
    logging.getLogger("mail.log").warning("%r unrecognised: %s", "127.0.0.1", 'X =\n"y"')
    assert _tails(captured) == [
        "level=warning event=library.log logger=mail.log"
        ' message="\'127.0.0.1\' unrecognised: X =\\n\\"y\\""'
    ]


def test_aiosmtpds_login_data_deprecation_does_not_come_out(captured: io.StringIO) -> None:
    loop = asyncio.new_event_loop()
    try:
        session = Session(loop)
        session.login_data = "alice"  # what aiosmtpd's smtp_AUTH does after a success
        assert session.login_data == "alice"
    finally:
        loop.close()
    logging.getLogger("mail.log").warning("%r too many bogus commands", "127.0.0.1")
    assert _tails(captured) == [
        "level=warning event=library.log logger=mail.log"
        " message=\"'127.0.0.1' too many bogus commands\""
    ]


def test_only_that_message_is_dropped(captured: io.StringIO) -> None:
    logging.getLogger("asyncio").warning(
        "Session.login_data is deprecated and will be removed in version 2.0"
    )
    logging.getLogger("mail.log").warning("Session.login_data is deprecated")
    assert [line.split(" ")[2] for line in _tails(captured)] == [
        "logger=asyncio",
        "logger=mail.log",
    ]


def test_below_warning_nothing_and_exceptions_show_their_type_only(
    captured: io.StringIO,
) -> None:
    logging.getLogger("mail.log").info("%r connection lost", "127.0.0.1")
    logging.getLogger("asyncio").debug("poll took 1 ms")
    try:
        raise ValueError("secret body text")
    except ValueError:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
    assert _tails(captured) == [
        'level=error event=library.log logger=asyncio message="Task exception was never'
        ' retrieved" exc=ValueError'
    ]


def test_a_higher_configured_level_applies_to_libraries(captured: io.StringIO) -> None:
    log.setup_logging("error", stream=captured)
    logging.getLogger("mail.log").warning("%r invalid PROXY handshake", "127.0.0.1")
    logging.getLogger("mail.log").error("%r SMTP session exception", "127.0.0.1")
    assert _tails(captured) == [
        "level=error event=library.log logger=mail.log"
        " message=\"'127.0.0.1' SMTP session exception\""
    ]


def test_setup_twice_keeps_one_handler_of_ours(captured: io.StringIO) -> None:
    log.setup_logging("info", stream=captured)
    ours = [h for h in logging.getLogger().handlers if isinstance(h, log._LineHandler)]
    assert len(ours) == 1
    assert logging.getLogger("mail.log").filters.count(log._DROP_LOGIN_DATA_WARNING) == 1
    logging.getLogger("mail.log").warning("once")
    assert len(_tails(captured)) == 1


_FRESH_PROCESS = """
import asyncio, logging
from aiosmtpd.smtp import Session
from gateway.log import setup_logging

setup_logging("info")
loop = asyncio.new_event_loop()
Session(loop).login_data = "alice"
loop.close()
logging.getLogger("mail.log").warning("%r unrecognised: %s", "127.0.0.1", "FOO")
logging.getLogger("mail.log").info("below the threshold")
logging.getLogger("asyncio").error("Task exception was never retrieved")
"""


def test_nothing_reaches_the_last_resort_handler_in_a_fresh_process() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, timeout=60
    )
    assert (run.returncode, run.stderr) == (0, "")
    tails = [line.partition(" ")[2] for line in run.stdout.splitlines()]
    assert tails == [
        "level=warning event=library.log logger=mail.log message=\"'127.0.0.1' unrecognised: FOO\"",
        'level=error event=library.log logger=asyncio message="Task exception was never retrieved"',
    ]
