"""Each mailbox once in every new entry, whichever driver writes it (session 8, H4).

``EntryFile`` keeps ``Envelope.distinct`` when it is built, so the front's scribe (a
child process that builds its ``EntryFile`` from the ``OPEN`` frame it reads) writes
each mailbox once, as the queue's own writer does, and ``spool.rcpt_merged`` is logged
wherever the merge happens. Before the change only ``WriterSide._writer`` merged: an
``EntryFile`` kept every RCPT it was given, and so did the scribe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.spool import RECEIVED, Spool
from gateway.spool.entry_file import EntryFile
from gateway.spool.ids import new_queue_id
from gateway.spool.scribe_client import ScribeQueue

from .support import envelope, message, origin
from .test_scribe import incoming, scribe_queue

BOB = "bob@clinique-b.test"
BOB_UPPER_DOMAIN = "bob@CLINIQUE-B.test"  # the same mailbox (RFC 5321 §2.4)
CLAIRE = "claire@clinique-b.test"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[dict[str, object]]:
        return [r.__dict__["fields"] for r in self.records if r.getMessage() == name]


@pytest.fixture
def spool_log() -> Iterator[_Records]:
    """The ``missive.spool`` logger's records (a handler of its own: caplog would miss
    them once a test elsewhere in the session turned propagation off)."""
    handler = _Records()
    logger = logging.getLogger("missive.spool")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_an_entry_file_keeps_each_mailbox_once_and_logs_the_merge(
    spool: Spool, spool_log: _Records
) -> None:
    now = datetime.now(UTC)
    queue_id = new_queue_id(now.timestamp())
    entry = EntryFile(
        spool.queue(RECEIVED).dirs,
        queue_id=queue_id,
        envelope=envelope(BOB, CLAIRE, BOB_UPPER_DOMAIN, BOB),
        origin=origin(),
        received=now,
        limit=None,
    )
    assert entry.envelope.addresses == (BOB, CLAIRE)
    assert spool_log.events("spool.rcpt_merged") == [
        {"queue_id": queue_id, "stage": RECEIVED, "dropped": 2}
    ]


async def test_an_entry_file_with_distinct_mailboxes_keeps_its_envelope_and_logs_nothing(
    spool: Spool, spool_log: _Records
) -> None:
    listed = envelope(BOB, "Bob@clinique-b.test")  # local parts differ: two mailboxes
    now = datetime.now(UTC)
    entry = EntryFile(
        spool.queue(RECEIVED).dirs,
        queue_id=new_queue_id(now.timestamp()),
        envelope=listed,
        origin=origin(),
        received=now,
        limit=None,
    )
    assert entry.envelope is listed
    assert spool_log.events("spool.rcpt_merged") == []


async def test_the_queue_writer_still_merges_and_logs_once(
    spool: Spool, spool_log: _Records
) -> None:
    queue_id = await spool.queue(RECEIVED).add(envelope(BOB, BOB_UPPER_DOMAIN), origin(), b"x")
    (info,) = await spool.queue(RECEIVED).scan("incoming")
    assert info.record is not None and info.record.envelope.addresses == (BOB,)
    assert spool_log.events("spool.rcpt_merged") == [
        {"queue_id": queue_id, "stage": RECEIVED, "dropped": 1}
    ]


async def test_the_fronts_scribe_writes_each_mailbox_once(tmp_path: Path) -> None:
    """The real scribe process, fed an ``OPEN`` that lists one mailbox three times (a
    front that did not merge): the entry on disk lists it once, with one state."""
    queue: ScribeQueue = scribe_queue(tmp_path)
    await queue.start()
    try:
        writer = await queue.open_writer(envelope(BOB, CLAIRE, BOB_UPPER_DOMAIN, BOB), origin())
        await writer.write(message(1))
        queue_id = await writer.commit()
    finally:
        await queue.aclose()
    record, _ = (await incoming(tmp_path))[queue_id]
    assert record.envelope.addresses == (BOB, CLAIRE)  # type: ignore[attr-defined]
    assert len(record.state.recipients) == 2  # type: ignore[attr-defined]
