"""The inbound agent and a record that lists one mailbox twice (session 9).

New entries list each mailbox once (``gateway.spool.queue_writing``), but a record
written by an older gateway may not. These tests write such a record the way the old
writer did (``EntryFile`` straight, no merge) and check that the agent opens, audits,
hands off and reports the mailbox once, gives every occurrence the first one's state,
and lets an occurrence already final decide for the later ones. Before the fix the
mailbox was decrypted twice, audited twice and listed twice in the held DSN.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.spool import (
    INBOUND,
    LOCAL,
    RECEIVED,
    Envelope,
    Queue,
    Recipient,
    RecipientState,
    RecipientStatus,
)
from gateway.spool.entry_file import EntryFile
from gateway.spool.ids import new_queue_id
from gateway.spool.writer import EntryWriter
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    FROM_OUTSIDE,
    HOLD_UNSIGNED_CBC,
    MAILDIR,
    OpenSite,
    entries,
    incoming_letter,
    opened_site,
)

ALICE_UPPER_DOMAIN = ALICE.replace("chu-a", "CHU-A")  # the same mailbox


async def add_as_an_old_gateway(site: OpenSite, message: bytes, *addresses: str) -> str:
    """An entry of ``inbound`` written as before the merge: every RCPT kept."""
    queue: Queue = site.inbound
    envelope = Envelope(CLAIRE, tuple(Recipient(a) for a in addresses))
    entry = EntryFile(
        queue.dirs,
        queue_id=new_queue_id(site.clock().timestamp()),
        envelope=envelope,
        origin=FROM_OUTSIDE,
        received=site.clock(),
        limit=None,
    )
    entry.envelope = envelope  # EntryFile merges since session 8: the old record as listed
    writer = EntryWriter(queue._runtime, entry)  # the old writer: no merge
    async with writer:
        await writer.write(message)
        return await writer.commit()


async def test_a_mailbox_listed_twice_is_opened_and_handed_off_once(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with opened_site(
        tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE, BRUNO)
    ) as site:
        message = incoming_letter(dev_pki, ALICE, BRUNO)
        await add_as_an_old_gateway(site, message, ALICE, BRUNO, ALICE_UPPER_DOMAIN)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "completed" and len(outcome.handoffs) == 2
        local = await entries(site.spool, LOCAL, "incoming")
        assert sorted(env.recipients[0].address for env, _ in local) == [ALICE, BRUNO]
        processed = [e.rcpt_to for e in site.trail.of_type("inbound.processed")]
        assert sorted(processed) == [(ALICE,), (BRUNO,)]


async def test_a_held_mailbox_listed_twice_is_reported_once(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with opened_site(
        tmp_path, dev_pki, inbound=HOLD_UNSIGNED_CBC, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        message = incoming_letter(dev_pki, ALICE, cipher="aes-256-cbc", signed=False)
        await add_as_an_old_gateway(site, message, ALICE, ALICE_UPPER_DOMAIN)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "held" and outcome.handoffs == ()
        [(held_envelope, _)] = await entries(site.spool, INBOUND, "hold")
        assert len(held_envelope.recipients) == 2  # the record as it was, both pending
        [(_, dsn)] = await entries(site.spool, RECEIVED, "incoming")
        assert dsn.count(b"Final-Recipient:") == 1
        assert len(site.trail.of_type("inbound.processed")) == 1


@pytest.mark.parametrize("done", [0, 1])
async def test_an_occurrence_already_delivered_decides_for_the_other(
    dev_pki: DevPki, tmp_path: Path, done: int
) -> None:
    """What an older agent could leave: one occurrence handed off (the first or the
    second), the other still pending, the entry held; once released, nothing is opened
    or sent again and the entry completes."""
    async with opened_site(
        tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        message = incoming_letter(dev_pki, ALICE)
        queue_id = await add_as_an_old_gateway(site, message, ALICE, ALICE_UPPER_DOMAIN)
        await site.inbound.recover()
        claimed = await site.inbound.claim()
        assert claimed is not None and claimed.queue_id == queue_id
        states = [RecipientState(), RecipientState()]
        states[done] = RecipientState(RecipientStatus.DELIVERED, 1)
        await site.inbound.defer(claimed, site.clock(), tuple(states))
        await site.inbound.hold(queue_id, "left so by an older gateway")
        await site.inbound.release(queue_id)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "completed" and outcome.handoffs == ()
        assert await entries(site.spool, LOCAL, "incoming") == []
        assert site.trail.of_type("inbound.processed") == []
