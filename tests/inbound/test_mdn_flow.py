"""MDNs on inbound delivery (issue 7 item 5, RFC 8098) with real crypto and the real
spool: a letter asking for notifications gets a *processed* MDN from the inbound stage
and a *dispatched* MDN from local delivery (Direct ``X-DIRECT-FINAL-DESTINATION-DELIVERY``),
each queued once in ``received/`` (MAIL FROM:<>, clear: the secure agent protects it),
holding nothing decrypted; no MDN for an MDN, for a null sender, nor for a held message."""

from __future__ import annotations

import email
import email.policy
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from gateway.inbound.stage import queue_mdn
from gateway.pki.dev import DevPki
from gateway.relay import protect
from gateway.relay.mdn import Disposition
from gateway.smime.encrypt import Recipient as CmsRecipient
from gateway.smime.encrypt import encrypt_entity
from gateway.spool import RECEIVED, Recipient
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    FROM_OUTSIDE,
    HOLD_UNSIGNED_CBC,
    MAILDIR,
    SECRET,
    SUBJECT,
    OpenSite,
    certificate,
    entries,
    envelope,
    opened_site,
    seal,
)

ASKING = (
    b"From: Claire <claire.durand@clinique-b.test>\r\n"
    b"To: Alice <alice.martin@chu-a.test>, Bruno <bruno.petit@chu-a.test>\r\n"
    b"Subject: " + SUBJECT.encode() + b"\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\n"
    b"Message-ID: <mdn1@clinique-b.test>\r\n"
    b"Disposition-Notification-To: <claire.durand@clinique-b.test>\r\n"
    b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + SECRET + b"\r\n"
)


def sealed(pki: DevPki, letter: bytes, *recipients: str) -> bytes:
    """``letter`` as Claire's gateway sends it: header-protected, signed, encrypted with
    the library's default cipher (aes-256-cbc)."""
    return seal(pki, letter, *recipients, cipher="aes-256-cbc")


def maildir_site(tmp_path: Path, pki: DevPki) -> AbstractAsyncContextManager[OpenSite]:
    """The inbound agent's site delivering to Maildirs, with Alice's and Bruno's keys."""
    return opened_site(
        tmp_path, pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE, BRUNO)
    )


def notification_fields(mdn: bytes) -> email.message.Message:
    report = email.message_from_bytes(mdn, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "disposition-notification"
    [_, part] = report.iter_parts()
    assert part.get_content_type() == "message/disposition-notification"
    return email.message_from_bytes(
        part.as_bytes().partition(b"\n\n")[2].replace(b"\r\n", b"\n"),
        policy=email.policy.compat32,
    )


async def test_processed_then_dispatched_mdn_each_queued_once_without_content(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with maildir_site(tmp_path, dev_pki) as site:
        message = sealed(dev_pki, ASKING, ALICE, BRUNO)
        await site.inbound.add(envelope(ALICE, BRUNO), FROM_OUTSIDE, message)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "completed" and len(set(outcome.mdns)) == 2

        processed = await entries(site.spool, RECEIVED, "incoming")
        assert len(processed) == 2
        finals = set()
        for mdn_envelope, mdn in processed:
            assert mdn_envelope.mail_from == ""
            assert [r.address for r in mdn_envelope.recipients] == [CLAIRE]
            fields = notification_fields(mdn)
            assert fields["Disposition"].endswith("; processed")
            assert fields["Original-Message-ID"] == "<mdn1@clinique-b.test>"
            finals.add(fields["Final-Recipient"])
            assert SECRET not in mdn and SUBJECT.encode() not in mdn
            assert b"application/pkcs7-mime" not in mdn  # clear: the secure agent seals it
        assert finals == {f"rfc822; {ALICE}", f"rfc822; {BRUNO}"}

        delivery = await site.local_delivery()
        assert sorted(o.disposition for o in await delivery.drain()) == ["completed"] * 2
        everything = await entries(site.spool, RECEIVED, "incoming")
        dispatched = [mdn for _, mdn in everything if b"; dispatched" in mdn]
        assert len(everything) == 4 and len(dispatched) == 2
        for mdn in dispatched:
            assert notification_fields(mdn)["Disposition"] == (
                "automatic-action/MDN-sent-automatically; dispatched"
            )
            assert SECRET not in mdn and SUBJECT.encode() not in mdn


DELIVERED_MARK = b'Missive-Security: encrypted=no; signature=none;\r\n\tsigner=""; weak=no\r\n'


async def test_a_repeated_pass_queues_the_mdn_once(dev_pki: DevPki, tmp_path: Path) -> None:
    async with maildir_site(tmp_path, dev_pki) as site:
        inbound, received = site.inbound, site.spool.queue(RECEIVED)
        await inbound.add(envelope(ALICE), FROM_OUTSIDE, ASKING)
        await inbound.recover()
        entry = await inbound.claim()
        assert entry is not None
        alice = Recipient(ALICE, orcpt=f"rfc822;{ALICE}")
        delivered = DELIVERED_MARK + ASKING  # what the inbound agent delivers: ours on top
        children = {
            await queue_mdn(
                site.config,
                inbound,
                received,
                entry,
                delivered,
                alice,
                Disposition.PROCESSED,
                site.clock(),
                audit=site.trail,
                actor="inbound-agent",
            )
            for _ in range(2)
        }
        assert len(children) == 1 and None not in children
        [(_, mdn)] = await entries(site.spool, RECEIVED, "incoming")
        assert notification_fields(mdn)["Original-Recipient"] == f"rfc822;{ALICE}"


async def test_no_mdn_for_an_mdn_a_null_sender_or_a_held_message(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    head = ASKING.partition(b"Content-Type:")[0]
    an_mdn = head + (
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nseen\r\n"
        b"--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Final-Recipient: rfc822; someone@clinique-b.test\r\n"
        b"Disposition: automatic-action/MDN-sent-automatically; processed\r\n"
        b"--b--\r\n"
    )
    async with opened_site(
        tmp_path,
        dev_pki,
        inbound=HOLD_UNSIGNED_CBC,
        actor="inbound-agent",
        keys_of=(ALICE,),
    ) as site:
        inbound = site.inbound
        await inbound.add(envelope(ALICE), FROM_OUTSIDE, sealed(dev_pki, an_mdn, ALICE))
        await inbound.add(envelope(ALICE, sender=""), FROM_OUTSIDE, sealed(dev_pki, ASKING, ALICE))
        cbc_unsigned = protect.outer_header(protect.SplitMessage.of(ASKING), protect=False)
        held = cbc_unsigned + encrypt_entity(
            ASKING, [CmsRecipient(certificate(dev_pki, ALICE))], cipher="aes-256-cbc"
        )
        await inbound.add(envelope(ALICE), FROM_OUTSIDE, held)
        stage = await site.inbound_agent()
        outcomes = await stage.drain()
        assert sorted(o.disposition for o in outcomes) == ["completed", "completed", "held"]
        assert all(o.mdns == () for o in outcomes)
        delivery = await site.local_delivery()
        assert [o.disposition for o in await delivery.drain()] == ["completed"] * 2
        [(dsn_envelope, dsn)] = await entries(site.spool, RECEIVED, "incoming")  # the held one's
        assert b"report-type=delivery-status" in dsn and b"disposition-notification" not in dsn
        assert dsn_envelope.mail_from == ""
