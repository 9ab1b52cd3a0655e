"""The inbound stage end to end with real crypto and a real Dovecot: a letter encrypted
to two local users is put in ``inbound/``, opened once per recipient with that
recipient's own key, handed to ``local/``, delivered over LMTP and read back over IMAP;
a message the gateway must not deliver is quarantined (``hold/``) with a DSN to the
sender and no plaintext anywhere."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.spool import INBOUND, LOCAL, RECEIVED
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    FROM_OUTSIDE,
    HOLD_UNSIGNED_CBC,
    MAILDIR,
    SECRET,
    SUBJECT,
    certificate,
    entries,
    envelope,
    files_containing,
    incoming_letter,
    lmtp_to,
    opened_site,
)
from tests.peers.dovecot import DovecotInstance

pytestmark = pytest.mark.peer


async def test_two_local_recipients_each_get_their_own_copy_read_back_over_imap(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw", BRUNO: "bruno-pw"})
    async with opened_site(
        tmp_path,
        dev_pki,
        inbound=lmtp_to(dovecot.lmtp_port),
        actor="inbound-agent",
        keys_of=(ALICE, BRUNO),
    ) as site:
        message = incoming_letter(dev_pki, ALICE, BRUNO)
        queue_id = await site.inbound.add(envelope(ALICE, BRUNO), FROM_OUTSIDE, message)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.queue_id == queue_id and outcome.disposition == "completed"
        assert len(set(outcome.handoffs)) == 2 and outcome.dsn is None

        local = await entries(site.spool, LOCAL, "incoming")
        assert sorted(env.recipients[0].address for env, _ in local) == [ALICE, BRUNO]
        assert all(len(env.recipients) == 1 for env, _ in local)
        processed = {e.rcpt_to[0]: e for e in site.trail.of_type("inbound.processed")}
        for address in (ALICE, BRUNO):  # each copy opened with its own key
            facts = processed[address]
            assert facts.outcome == "deliver"
            assert facts.details["key_serial"] == f"{certificate(dev_pki, address).serial_number:x}"
            assert facts.details["signature"] == "valid" and facts.details["signer"] == CLAIRE
            assert facts.details["cipher"] == "aes-256-gcm"

        delivery = await site.local_delivery()
        outcomes = await delivery.drain()
        assert sorted(o.disposition for o in outcomes) == ["completed", "completed"]
        assert await entries(site.spool, LOCAL, "incoming") == []
        assert [e.outcome for e in site.trail.of_type("delivery.local")] == ["delivered"] * 2

    for address in (ALICE, BRUNO):
        [raw] = dovecot.fetch_all(address)
        shown = email.message_from_bytes(raw, policy=email.policy.default)
        assert shown["Subject"] == SUBJECT  # the protected Subject, no tag
        assert "signature=valid" in shown["Missive-Security"]
        assert "encrypted=aes-256-gcm" in shown["Missive-Security"]
        assert "smime=pass" in shown["Authentication-Results"]
        assert SECRET in raw
        assert b"application/pkcs7-mime" not in raw


async def test_cbc_without_signature_held_is_quarantined_with_a_dsn_and_no_plaintext(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with opened_site(
        tmp_path,
        dev_pki,
        inbound=HOLD_UNSIGNED_CBC,
        actor="inbound-agent",
        keys_of=(ALICE,),
    ) as site:
        message = incoming_letter(dev_pki, ALICE, cipher="aes-256-cbc", signed=False)
        queue_id = await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, message)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "held" and outcome.handoffs == ()

        [(held_envelope, held)] = await entries(site.spool, INBOUND, "hold")
        assert held == message  # as received: still encrypted
        assert [r.address for r in held_envelope.recipients] == [ALICE]
        assert await entries(site.spool, LOCAL, "incoming") == []
        [(dsn_envelope, dsn)] = await entries(site.spool, RECEIVED, "incoming")
        assert dsn_envelope.mail_from == "" and dsn_envelope.recipients[0].address == CLAIRE
        report = email.message_from_bytes(dsn, policy=email.policy.default)
        assert report.get_content_type() == "multipart/report"
        assert b"Action: failed" in dsn and b"Status: 5.7.5" in dsn
        assert SUBJECT.encode() not in dsn  # protected: no real Subject
        [event] = site.trail.of_type("inbound.processed")
        assert event.queue_id == queue_id and event.outcome == "hold"
        assert event.details["decrypted"] == "yes"  # opened in memory, then held
        assert [e.type for e in site.trail.events].count("spool.held") == 1
    assert files_containing(tmp_path, SECRET) == []
    assert files_containing(tmp_path, SUBJECT.encode()) == []


async def test_tampered_message_is_held_and_no_dsn_goes_to_a_null_sender(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with opened_site(
        tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        message = incoming_letter(dev_pki, ALICE)
        head, _, body = message.partition(b"\r\n\r\n")
        lines = body.split(b"\r\n")
        middle = len(lines) // 2
        flipped = b"A" if lines[middle][10:11] != b"A" else b"B"
        lines[middle] = lines[middle][:10] + flipped + lines[middle][11:]
        tampered = head + b"\r\n\r\n" + b"\r\n".join(lines)
        await site.inbound.add(envelope(ALICE, sender=""), FROM_OUTSIDE, tampered)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "held" and outcome.dsn is None
        assert len(await entries(site.spool, INBOUND, "hold")) == 1
        assert await entries(site.spool, RECEIVED, "incoming") == []
        [event] = site.trail.of_type("inbound.processed")
        assert event.outcome == "hold" and event.details["decrypted"] == "no"
    assert files_containing(tmp_path, SECRET) == []
