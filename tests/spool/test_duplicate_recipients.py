"""Each mailbox once in every new entry (session 8, H1): ``Envelope.distinct`` and the
spool's writers (``add``, ``open_writer``, ``hand_off``), whatever the producer; the
rule of "the same mailbox" is the SMTP front's (``gateway.smtp.envelope.Address``)."""

from __future__ import annotations

import pytest

from gateway.smtp.envelope import parse_rcpt
from gateway.spool import RECEIVED, Envelope, Queue, Recipient, Spool, relay_stage
from gateway.spool.model import mailbox_key

from .support import message, origin

SENDER = "alice.martin@chu-a.test"
BOB = "bob@clinique-b.test"
CLAIRE = "claire@clinique-b.test"


def listed(*recipients: Recipient) -> Envelope:
    return Envelope(SENDER, recipients)


async def stored(queue: Queue) -> Envelope:
    (info,) = await queue.scan("incoming")
    assert info.record is not None
    assert len(info.record.state.recipients) == len(info.record.envelope.recipients)
    return info.record.envelope


def test_distinct_keeps_the_first_rcpt_of_each_mailbox_in_order() -> None:
    first = Recipient(BOB, notify=("FAILURE",), orcpt="rfc822;bob@clinique-b.test")
    env = listed(first, Recipient(CLAIRE), Recipient("bob@Clinique-B.TEST", notify=("NEVER",)))
    assert env.distinct().recipients == (first, Recipient(CLAIRE))
    assert env.distinct().params is env.params


def test_distinct_is_the_same_object_when_nothing_repeats() -> None:
    env = listed(Recipient(BOB), Recipient("Bob@clinique-b.test"))
    assert env.distinct() is env  # local parts differ by case: two mailboxes


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("bob@clinique-b.test", "bob@CLINIQUE-B.test"),
        ("bob@clinique-b.test", "Bob@clinique-b.test"),
        ("bob@clinique-b.test", "bob@clinique-b.test"),
        ("jean.dupont@chu-a.test", "jean.dupont@chu-b.test"),
    ],
)
def test_mailbox_key_agrees_with_the_smtp_front(first: str, second: str) -> None:
    def front(address: str) -> object:
        return parse_rcpt(f"<{address}>", smtputf8=False).recipient

    assert (mailbox_key(first) == mailbox_key(second)) == (front(first) == front(second))


async def test_add_writes_each_mailbox_once(spool: Spool) -> None:
    received = spool.queue(RECEIVED)
    env = listed(Recipient(BOB), Recipient(CLAIRE), Recipient("bob@CLINIQUE-B.test"))
    await received.add(env, origin(), message())
    assert (await stored(received)).addresses == (BOB, CLAIRE)


async def test_open_writer_writes_each_mailbox_once(spool: Spool) -> None:
    received = spool.queue(RECEIVED)
    writer = await received.open_writer(listed(Recipient(BOB), Recipient(BOB)), origin())
    async with writer:
        await writer.write(message())
        await writer.commit()
    assert (await stored(received)).addresses == (BOB,)


async def test_hand_off_writes_each_mailbox_once(spool: Spool) -> None:
    received, relay = spool.queue(RECEIVED), spool.queue(relay_stage("clinique-b"))
    await received.add(listed(Recipient(BOB)), origin(), message())
    parent = await received.claim()
    assert parent is not None
    twice = listed(Recipient(CLAIRE), Recipient(BOB), Recipient(CLAIRE))
    await received.hand_off(parent, relay, "relay:clinique-b:k", twice, b"signed")
    assert (await stored(relay)).addresses == (CLAIRE, BOB)
