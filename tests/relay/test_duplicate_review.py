"""Second review of "spool and secure agent: one mailbox, one decision" (session 8, R2).

1. Hand-off keys of a mailbox listed twice. The child a hand-off writes lists each
   mailbox once (``Envelope.distinct`` in ``queue_writing``), but ``handoff_key``
   hashed every address given, a repeated mailbox twice: the key (hence the child id)
   of ``[a, A]`` differed from that of ``[a]`` although both children are the same.
   An older gateway's agent, given a record listing CLAIRE twice, handed off one
   message for both; if it stopped before updating the entry, the new agent's pass
   (which serves the first occurrence only) computed another key and wrote a second
   copy. Fixed in ``handoff_key``: each mailbox counts once.
2. ``Pass.of`` settled an occurrence by writing the first final state found to *every*
   occurrence of the mailbox, also over another occurrence's own final state: a record
   saying one occurrence failed and the other was delivered became "failed" twice (a
   delivered copy recorded as failed; with nothing else delivered the entry is
   bounced as "no recipient could be served"). The docstring promised that only an
   occurrence still pending takes the final state. Fixed: final states are kept.
3. What was tried and holds (pass before and after): mixed unfinished states (the
   first occurrence served, with its NOTIFY and ORCPT; every occurrence gets the
   outcome), addresses without ``@``, and the SMTP front's rule for Unicode domains
   (``gateway.smtp.envelope``: ``str.lower`` of the domain, as ``mailbox_key``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.relay.agent_pass import Pass, handoff_key
from gateway.smtp.envelope import parse_rcpt, to_recipient
from gateway.spool import (
    Envelope,
    Origin,
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
    relay_stage,
)
from gateway.spool.model import EntryState, mailbox_key
from tests.relay.test_agent_stage import CLAIRE, SUBMISSION, Site, make_site, message
from tests.relay.test_duplicate_recipients import add_as_an_old_gateway

CLAIRE_UPPER_DOMAIN = CLAIRE.replace("clinique-b", "CLINIQUE-B")  # the same mailbox
NOW = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
DELIVERED = RecipientState(RecipientStatus.DELIVERED, 1)
FAILED = RecipientState(RecipientStatus.FAILED, 1, "refused by route")


def record_of(*pairs: tuple[Recipient, RecipientState]) -> QueueRecord:
    return QueueRecord(
        queue_id="01M8H4BQW0ZZ5NEQ3BDRMA3DYM",  # type: ignore[arg-type]
        parent=None,
        received=NOW,
        created=NOW,
        content_length=10,
        content_sha256="0" * 64,
        envelope=Envelope("alice.martin@chu-a.test", tuple(r for r, _ in pairs)),
        origin=Origin("submission"),
        state=EntryState(2, NOW, tuple(s for _, s in pairs)),
    )


# -- 1. hand-off keys ----------------------------------------------------------------


def test_a_mailbox_given_twice_has_the_key_of_the_mailbox_given_once() -> None:
    once = handoff_key("relay", "clinique-b", [CLAIRE])
    assert handoff_key("relay", "clinique-b", [CLAIRE, CLAIRE_UPPER_DOMAIN]) == once
    assert handoff_key("relay", "clinique-b", [CLAIRE, CLAIRE]) == once
    other = "Claire.durand@clinique-b.test"  # another mailbox: another key
    assert handoff_key("relay", "clinique-b", [CLAIRE, other]) != once


@pytest.fixture
async def site(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[Site]:
    async for built in make_site(dev_pki, tmp_path):
        await built.stage.received.recover()
        yield built


async def test_a_hand_off_left_by_an_older_agent_is_not_written_again(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The older agent served both occurrences in one message (as ``process`` still does
    with such an envelope), handed it off and stopped before updating the entry. Both
    files are written as the older gateway wrote them: no merge of repeated mailboxes."""
    queue = site.stage.received
    twice = (CLAIRE, CLAIRE_UPPER_DOMAIN)
    with monkeypatch.context() as older_gateway:
        older_gateway.setattr(Envelope, "distinct", lambda envelope: envelope)
        await add_as_an_old_gateway(site, *twice)
        claimed = await queue.claim()
        assert claimed is not None and claimed.record.envelope.addresses == twice
        old = await site.stage.agent.process(claimed.record.envelope, message(*twice), SUBMISSION)
        (outgoing,) = old.messages
        addresses = [r.address for r in outgoing.recipients]
        assert outgoing.route == "clinique-b" and addresses == list(twice)
        old_key = handoff_key("relay", outgoing.route, addresses)
        child_envelope = Envelope(outgoing.mail_from, outgoing.recipients)
        target = site.spool.queue(relay_stage("clinique-b"))
        await queue.hand_off(claimed, target, old_key, child_envelope, outgoing.content)
    await queue.defer(claimed, site.clock() - timedelta(seconds=1))  # due: the next pass

    outcome = await site.stage.process_next()

    assert outcome is not None and outcome.disposition == "completed"
    assert len(await site.entries(relay_stage("clinique-b"))) == 1  # one copy, not two


# -- 2. Pass.of keeps final states ---------------------------------------------------


def test_pass_of_settles_the_pending_occurrence_and_keeps_each_final_state() -> None:
    twin = Recipient(CLAIRE_UPPER_DOMAIN)
    work = Pass.of(
        record_of((Recipient(CLAIRE), FAILED), (twin, DELIVERED), (Recipient(CLAIRE), FAILED))
    )
    assert work.states == [FAILED, DELIVERED, FAILED]
    assert work.delivered_any

    held = record_of((Recipient(CLAIRE), RecipientState()), (twin, DELIVERED))
    settled = Pass.of(held)
    assert settled.states == [DELIVERED, DELIVERED]
    assert settled.work_envelope(held.envelope) is None


# -- 3. what holds -------------------------------------------------------------------


def test_mixed_unfinished_states_serve_the_first_occurrence_and_share_the_outcome() -> None:
    first = Recipient(CLAIRE, notify=("FAILURE",), orcpt="rfc822;claire@old.test")
    later = Recipient(CLAIRE_UPPER_DOMAIN, notify=("NEVER",))
    deferred = RecipientState(RecipientStatus.DEFERRED, 2, "busy", NOW + timedelta(hours=1))
    record = record_of((later, RecipientState()), (first, deferred))
    work = Pass.of(record)
    envelope = work.work_envelope(record.envelope)
    assert envelope is not None and envelope.recipients == (later,)
    assert work.recipient(CLAIRE) == later  # the first RCPT's NOTIFY and ORCPT
    work.set(CLAIRE, RecipientStatus.DELIVERED)
    assert [s.status for s in work.states] == [RecipientStatus.DELIVERED] * 2
    assert not work.unfinished


def test_an_address_without_at_sign_is_its_own_mailbox() -> None:
    assert mailbox_key("Postmaster") == "Postmaster"
    assert mailbox_key("postmaster") != mailbox_key("Postmaster")
    envelope = Envelope("", (Recipient("Postmaster"), Recipient("Postmaster")))
    assert envelope.distinct().addresses == ("Postmaster",)


@pytest.mark.parametrize(
    ("written", "again"),
    [
        ("Jean@Hôpital-Nord.TEST", "Jean@hôpital-nord.test"),
        ("anne@ÉCOLE.test", "anne@école.test"),
        ("Zoë@Example.TEST", "Zoë@example.test"),
    ],
)
def test_the_front_and_the_spool_use_one_rule_for_unicode_domains(written: str, again: str) -> None:
    first = to_recipient(parse_rcpt(f"<{written}>", smtputf8=True))
    second = to_recipient(parse_rcpt(f"<{again}>", smtputf8=True))
    assert mailbox_key(first.address) == mailbox_key(second.address)
    assert mailbox_key(written) == mailbox_key(first.address)
    assert first.address == second.address  # the front's Address: equal, so one RCPT
