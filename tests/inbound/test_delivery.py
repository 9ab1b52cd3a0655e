"""Local delivery of ``local/`` entries: into a Maildir (0600 files in ``new/``), and over
LMTP to a real Dovecot where a 4xx is deferred and retried, and a 5xx bounces with a
failure DSN to the sender."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.inbound.maildir import PermanentFailure, mailbox_of
from gateway.pki.dev import DevPki
from gateway.spool import RECEIVED
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    INBOUND_AGENT,
    LETTER,
    MAILDIR,
    entries,
    envelope,
    lmtp_to,
    opened_site,
)
from tests.peers.dovecot import MAIL_GID, MAIL_UID, DovecotInstance


async def test_maildir_delivery_writes_a_0600_file_in_new(dev_pki: DevPki, tmp_path: Path) -> None:
    async with opened_site(tmp_path, dev_pki, inbound=MAILDIR, actor="local-delivery") as site:
        await site.local.add(envelope(ALICE), INBOUND_AGENT, LETTER)
        await site.local.add(envelope(ALICE), INBOUND_AGENT, LETTER + b"second\r\n")
        delivery = await site.local_delivery()
        outcomes = await delivery.drain()
        assert [o.disposition for o in outcomes] == ["completed", "completed"]
    mailbox = tmp_path / "var" / "mail" / "alice.martin"
    files = sorted((mailbox / "new").iterdir())
    assert len(files) == 2 and files[0].name != files[1].name
    assert sorted(path.read_bytes() for path in files) == sorted([LETTER, LETTER + b"second\r\n"])
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    assert list((mailbox / "tmp").iterdir()) == []
    assert (mailbox / "cur").is_dir()
    assert [e.outcome for e in site.trail.of_type("delivery.local")] == ["delivered"] * 2


@pytest.mark.parametrize("local_part", ["../etc", ".hidden", "a/b", ""])
def test_a_local_part_that_cannot_name_a_maildir_is_refused(
    tmp_path: Path, local_part: str
) -> None:
    with pytest.raises(PermanentFailure):
        mailbox_of(tmp_path, f"{local_part}@chu-a.test")


@pytest.mark.peer
async def test_lmtp_4xx_is_deferred_then_delivered(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    async with opened_site(
        tmp_path, dev_pki, inbound=lmtp_to(dovecot.lmtp_port), actor="local-delivery"
    ) as site:
        queue = site.local
        os.chown(dovecot.mail_dir, 0, 0)  # Dovecot cannot create the mailbox: LMTP 451
        queue_id = await queue.add(envelope(ALICE), INBOUND_AGENT, LETTER)
        delivery = await site.local_delivery()
        [first] = await delivery.drain()
        assert first.disposition == "deferred"
        [(address, code, text)] = first.replies
        assert address == ALICE and code == 451 and text.startswith("4.2.0")  # Dovecot's own
        assert await queue.locate(queue_id) == "deferred"

        os.chown(dovecot.mail_dir, MAIL_UID, MAIL_GID)
        await queue.retry(queue_id)
        [second] = await delivery.drain()
        assert second.disposition == "completed" and second.replies[0][1] == 250
        assert await queue.locate(queue_id) is None
        assert await entries(site.spool, RECEIVED, "incoming") == []  # no DSN
    [raw] = dovecot.fetch_all(ALICE)
    assert b"Subject: Compte rendu Dupont" in raw


@pytest.mark.peer
async def test_lmtp_5xx_bounces_with_a_failure_dsn(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    async with opened_site(
        tmp_path, dev_pki, inbound=lmtp_to(dovecot.lmtp_port), actor="local-delivery"
    ) as site:
        unknown = "nobody@chu-a.test"
        queue_id = await site.local.add(envelope(unknown), INBOUND_AGENT, LETTER)
        delivery = await site.local_delivery()
        [outcome] = await delivery.drain()
        assert outcome.disposition == "bounced" and outcome.dsn is not None
        assert outcome.replies[0][1] == 550
        assert await site.local.locate(queue_id) is None
        [(dsn_envelope, dsn)] = await entries(site.spool, RECEIVED, "incoming")
        assert dsn_envelope.mail_from == "" and dsn_envelope.recipients[0].address == CLAIRE
        assert b"Action: failed" in dsn and b"Final-Recipient: rfc822; " + unknown.encode() in dsn
        assert b"Status: 5.1.1" in dsn and b"Diagnostic-Code: smtp; 550" in dsn
        assert [e.outcome for e in site.trail.of_type("delivery.local")] == ["failed"]


@pytest.mark.peer
async def test_lmtp_reads_one_reply_per_accepted_recipient(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    """RFC 2033 §4.2: after DATA, one reply per accepted RCPT, in order; a refused
    recipient keeps its RCPT reply and alone gets a failure DSN."""
    dovecot = dovecot_factory(users={ALICE: "alice-pw", BRUNO: "bruno-pw"})
    async with opened_site(
        tmp_path, dev_pki, inbound=lmtp_to(dovecot.lmtp_port), actor="local-delivery"
    ) as site:
        unknown = "nobody@chu-a.test"
        await site.local.add(envelope(ALICE, unknown, BRUNO), INBOUND_AGENT, LETTER)
        delivery = await site.local_delivery()
        [outcome] = await delivery.drain()
        assert outcome.disposition == "completed"
        codes = {address: code for address, code, _ in outcome.replies}
        assert codes == {ALICE: 250, unknown: 550, BRUNO: 250}
        texts = {address: text for address, _, text in outcome.replies}
        assert ALICE in texts[ALICE] and BRUNO in texts[BRUNO]  # each its own reply
        [(_, dsn)] = await entries(site.spool, RECEIVED, "incoming")
        assert b"Final-Recipient: rfc822; " + unknown.encode() in dsn
        assert dsn.count(b"Final-Recipient:") == 1
    assert len(dovecot.fetch_all(ALICE)) == 1 and len(dovecot.fetch_all(BRUNO)) == 1
