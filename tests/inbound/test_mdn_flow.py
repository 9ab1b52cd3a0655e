"""MDNs on inbound delivery (issue 7 item 5, RFC 8098) with real crypto and the real
spool: a letter asking for notifications gets a *processed* MDN from the inbound stage
and a *dispatched* MDN from local delivery (Direct ``X-DIRECT-FINAL-DESTINATION-DELIVERY``),
each queued once in ``received/`` (MAIL FROM:<>, clear: the secure agent protects it),
holding nothing decrypted; no MDN for an MDN, for a null sender, nor for a held message."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from cryptography import x509

from gateway.config import Config
from gateway.inbound.delivery import LocalDelivery
from gateway.inbound.stage import InboundStage, queue_mdn
from gateway.pki.dev import DevPki
from gateway.pki.store import load_private_key
from gateway.relay import protect
from gateway.relay.mdn import Disposition
from gateway.smime.encrypt import Recipient as CmsRecipient
from gateway.smime.encrypt import encrypt_entity
from gateway.smime.keystore import KeyStore
from gateway.smime.sign import sign
from gateway.smime.validate import CertificateValidator
from gateway.spool import INBOUND, LOCAL, RECEIVED, Recipient, Spool
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    FROM_OUTSIDE,
    POLICY,
    SECRET,
    SUBJECT,
    Clock,
    Trail,
    certificate,
    entries,
    envelope,
    install_keys,
    open_spool,
    write_config,
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


def sealed(pki: DevPki, letter: bytes, *recipients: str, signed: bool = True) -> bytes:
    """``letter`` as Claire's gateway sends it: header-protected, signed, encrypted."""
    split = protect.SplitMessage.of(letter)
    payload = protect.cryptographic_payload(split, protect=True, wrap=False)
    outer = protect.outer_header(split, protect=True)
    if signed:
        key = load_private_key(pki.user_key(CLAIRE, "sign"))
        chain = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
        payload = sign(payload, certificate(pki, CLAIRE, "sign"), key, chain, detached=True)
    targets = [CmsRecipient(certificate(pki, address)) for address in recipients]
    return outer + b"MIME-Version: 1.0\r\n" + encrypt_entity(payload, targets)


def validator_of(pki: DevPki) -> CertificateValidator:
    return CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes"), pki.crl("serveurs")]
    )


def maildir_site(tmp_path: Path, pki: DevPki) -> Config:
    config = write_config(tmp_path, pki, inbound='deliver_to = "maildir:var/mail"')
    install_keys(config, pki, ALICE, BRUNO)
    return config


async def run_inbound(
    config: Config, pki: DevPki, spool: Spool, trail: Trail, clock: Clock
) -> InboundStage:
    stage = InboundStage(
        config, spool, KeyStore.load(config.keys.dir), validator_of(pki), trail, clock=clock
    )
    await spool.queue(INBOUND).recover()
    return stage


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
    config = maildir_site(tmp_path, dev_pki)
    trail, clock = Trail(), Clock()
    spool = open_spool(config, trail, clock, "inbound-agent")
    try:
        message = sealed(dev_pki, ASKING, ALICE, BRUNO)
        await spool.queue(INBOUND).add(envelope(ALICE, BRUNO), FROM_OUTSIDE, message)
        stage = await run_inbound(config, dev_pki, spool, trail, clock)
        [outcome] = await stage.drain()
        assert outcome.disposition == "completed" and len(set(outcome.mdns)) == 2

        processed = await entries(spool, RECEIVED, "incoming")
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

        delivery = LocalDelivery(config, spool, trail, policy=POLICY, clock=clock)
        await spool.queue(LOCAL).recover()
        assert sorted(o.disposition for o in await delivery.drain()) == ["completed"] * 2
        everything = await entries(spool, RECEIVED, "incoming")
        dispatched = [mdn for _, mdn in everything if b"; dispatched" in mdn]
        assert len(everything) == 4 and len(dispatched) == 2
        for mdn in dispatched:
            assert notification_fields(mdn)["Disposition"] == (
                "automatic-action/MDN-sent-automatically; dispatched"
            )
            assert SECRET not in mdn and SUBJECT.encode() not in mdn
    finally:
        await spool.aclose()


async def test_a_repeated_pass_queues_the_mdn_once(dev_pki: DevPki, tmp_path: Path) -> None:
    config = maildir_site(tmp_path, dev_pki)
    trail, clock = Trail(), Clock()
    spool = open_spool(config, trail, clock, "inbound-agent")
    try:
        inbound, received = spool.queue(INBOUND), spool.queue(RECEIVED)
        await inbound.add(envelope(ALICE), FROM_OUTSIDE, ASKING)
        await inbound.recover()
        entry = await inbound.claim()
        assert entry is not None
        alice = Recipient(ALICE, orcpt=f"rfc822;{ALICE}")
        children = {
            await queue_mdn(
                config, inbound, received, entry, ASKING, alice, Disposition.PROCESSED, clock()
            )
            for _ in range(2)
        }
        assert len(children) == 1 and None not in children
        [(_, mdn)] = await entries(spool, RECEIVED, "incoming")
        assert notification_fields(mdn)["Original-Recipient"] == f"rfc822;{ALICE}"
    finally:
        await spool.aclose()


async def test_no_mdn_for_an_mdn_a_null_sender_or_a_held_message(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, dev_pki, inbound='deliver_to = "maildir:var/mail"\nunsigned_cbc = "hold"'
    )
    install_keys(config, dev_pki, ALICE)
    trail, clock = Trail(), Clock()
    spool = open_spool(config, trail, clock, "inbound-agent")
    head = ASKING.partition(b"Content-Type:")[0]
    an_mdn = head + (
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nseen\r\n"
        b"--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Final-Recipient: rfc822; someone@clinique-b.test\r\n"
        b"Disposition: automatic-action/MDN-sent-automatically; processed\r\n"
        b"--b--\r\n"
    )
    try:
        inbound = spool.queue(INBOUND)
        await inbound.add(envelope(ALICE), FROM_OUTSIDE, sealed(dev_pki, an_mdn, ALICE))
        await inbound.add(envelope(ALICE, sender=""), FROM_OUTSIDE, sealed(dev_pki, ASKING, ALICE))
        cbc_unsigned = protect.outer_header(protect.SplitMessage.of(ASKING), protect=False)
        held = cbc_unsigned + encrypt_entity(
            ASKING, [CmsRecipient(certificate(dev_pki, ALICE))], cipher="aes-256-cbc"
        )
        await inbound.add(envelope(ALICE), FROM_OUTSIDE, held)
        stage = await run_inbound(config, dev_pki, spool, trail, clock)
        outcomes = await stage.drain()
        assert sorted(o.disposition for o in outcomes) == ["completed", "completed", "held"]
        assert all(o.mdns == () for o in outcomes)
        delivery = LocalDelivery(config, spool, trail, policy=POLICY, clock=clock)
        await spool.queue(LOCAL).recover()
        assert [o.disposition for o in await delivery.drain()] == ["completed"] * 2
        [(dsn_envelope, dsn)] = await entries(spool, RECEIVED, "incoming")  # the held one's
        assert b"report-type=delivery-status" in dsn and b"disposition-notification" not in dsn
        assert dsn_envelope.mail_from == ""
    finally:
        await spool.aclose()
