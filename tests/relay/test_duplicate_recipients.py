"""The secure agent and a record that lists one mailbox twice (session 8, H1).

New entries list each mailbox once (``gateway.spool.queue_writing``), but a record
written by an older gateway may not: these tests write such a record the way the old
writer did (``EntryFile`` straight, no merge) and check that the agent serves each
mailbox once (one letter, one copy), gives every occurrence the same state and
completes the entry. Before the fix (``index_of``: the last index won) the first
occurrence stayed pending: the entry ended held and a release sent a second copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.spool import (
    RECEIVED,
    Envelope,
    Queue,
    Recipient,
    RecipientState,
    RecipientStatus,
    relay_stage,
)
from gateway.spool.entry_file import EntryFile
from gateway.spool.ids import new_queue_id
from gateway.spool.writer import EntryWriter
from tests.relay.test_agent_stage import (
    ALICE,
    CLAIRE,
    PAUL,
    SUBMISSION,
    Site,
    dsn_by_action,
    make_site,
    message,
)

PAUL_UPPER_DOMAIN = PAUL.replace("clinique-b", "CLINIQUE-B")  # the same mailbox


@pytest.fixture
async def site(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[Site]:
    async for built in make_site(dev_pki, tmp_path):
        await built.stage.received.recover()
        yield built


async def add_as_an_old_gateway(site: Site, *addresses: str) -> str:
    """An entry of ``received`` written as before the merge: every RCPT kept."""
    queue: Queue = site.stage.received
    now: datetime = site.clock()
    notify = ("SUCCESS", "FAILURE")
    envelope = Envelope(ALICE, tuple(Recipient(a, notify=notify) for a in addresses))
    entry = EntryFile(
        queue.dirs,
        queue_id=new_queue_id(now.timestamp()),
        envelope=envelope,
        origin=SUBMISSION,
        received=now,
        limit=None,
    )
    entry.envelope = envelope  # EntryFile merges since session 8: the old record as listed
    writer = EntryWriter(queue._runtime, entry)  # the old writer: no merge
    async with writer:
        await writer.write(message(*addresses))
        return await writer.commit()


def letters(site: Site) -> list[Path]:
    return sorted(site.config.postal.outbox.glob("*.pdf"))


@pytest.mark.parametrize("twin", [PAUL, PAUL_UPPER_DOMAIN], ids=["same", "domain-case"])
async def test_a_postal_recipient_listed_twice_gets_one_letter_and_the_entry_completes(
    site: Site, twin: str
) -> None:
    queue_id = await add_as_an_old_gateway(site, PAUL, twin)
    (info,) = await site.stage.received.scan("incoming")
    assert info.record is not None and len(info.record.envelope.recipients) == 2  # as on disk

    outcome = await site.stage.process_next()

    assert outcome is not None and outcome.queue_id == queue_id
    assert outcome.disposition == "completed"
    assert len(letters(site)) == 1
    assert site.trail.types().count("agent.postal") == 1
    relayed = dsn_by_action(await site.entries(RECEIVED))["relayed"]
    assert [b["Final-Recipient"].split(";")[1].strip() for b in relayed] == [PAUL]
    assert await site.stage.received.scan("hold") == []


async def test_an_smime_recipient_listed_twice_gets_one_copy_and_the_entry_completes(
    site: Site,
) -> None:
    await add_as_an_old_gateway(site, CLAIRE, CLAIRE)

    outcome = await site.stage.process_next()

    assert outcome is not None and outcome.disposition == "completed"
    assert len(outcome.handoffs) == 1
    ((child_envelope, _),) = await site.entries(relay_stage("clinique-b"))
    assert child_envelope.addresses == (CLAIRE,)
    assert await site.stage.received.scan("hold") == []


async def test_local_parts_differing_by_case_are_two_mailboxes_each_served(
    site: Site,
) -> None:
    other = PAUL[0].upper() + PAUL[1:]  # Paul.roux@: another mailbox (RFC 5321 §2.4)
    await add_as_an_old_gateway(site, PAUL, other)

    outcome = await site.stage.process_next()

    assert outcome is not None and outcome.disposition in ("completed", "bounced")
    assert (
        site.trail.types().count("agent.postal")
        + len(dsn_by_action(await site.entries(RECEIVED)).get("failed", []))
        == 2
    )  # each mailbox decided on its own


async def test_an_old_held_record_with_one_occurrence_done_is_not_served_again(
    site: Site,
) -> None:
    """What the old agent left: the last occurrence posted, the first still pending and
    the entry held. Released, it completes without a second letter."""
    queue = site.stage.received
    queue_id = await add_as_an_old_gateway(site, PAUL, PAUL)
    claimed = await queue.claim()
    assert claimed is not None
    posted = RecipientState(RecipientStatus.DELIVERED, 1, "sent by post")
    await queue.defer(claimed, site.clock(), (RecipientState(), posted))
    await queue.hold(queue_id, "left so by an older gateway")
    await queue.release(queue_id)

    outcome = await site.stage.process_next()

    assert outcome is not None and outcome.disposition == "completed"
    assert letters(site) == [] and "agent.postal" not in site.trail.types()
    assert await site.entries(RECEIVED) == []  # no DSN either: nothing new was decided
