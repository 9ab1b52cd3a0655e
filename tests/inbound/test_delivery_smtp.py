"""Local delivery over ``[inbound] deliver_to = "smtp://host:port"`` to a real Postfix on
loopback playing the hospital's mail server (``hospital.chu-a.test``, virtual Maildirs
for chu-a.test, STARTTLS offered with the development PKI's certificate).

- a message the inbound agent decrypted is delivered over SMTP and found in Postfix's
  Maildir, with our ``Missive-Security`` field and the protected Subject;
- a ``4xx`` to RCPT (Postfix ``check_recipient_access``) defers the recipient; once the
  server accepts again, a retry delivers it; one SMTP transaction for several
  recipients keeps each recipient's outcome (RFC 5321 §4.1.1.4: one DATA reply for
  every accepted recipient);
- a ``5xx`` bounces the recipient with a failure DSN to the sender;
- "STARTTLS required unless loopback" (``gateway.inbound.store_client``): to 127.0.0.1 the
  session stays in clear (Postfix writes ``with ESMTP``); the other branch is reached
  with ``is_loopback`` patched to say "not loopback" (the tests only use loopback
  addresses): the session then uses STARTTLS with the server certificate verified
  against ``[trust] anchors`` (``with ESMTPS``), a server that offers no STARTTLS gets
  nothing and the message is deferred, and so does a server whose certificate the
  context does not trust.
"""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.inbound import store_client
from gateway.inbound.delivery import DeliveryOutcome, LocalDelivery
from gateway.pki.dev import DevPki
from gateway.spool import LOCAL, RECEIVED
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    FROM_OUTSIDE,
    INBOUND_AGENT,
    LETTER,
    SECRET,
    SUBJECT,
    OpenSite,
    entries,
    envelope,
    incoming_letter,
    opened_site,
)
from tests.peers.fixtures import tls_files
from tests.peers.postfix import PostfixInstance, set_recipient_access

pytestmark = pytest.mark.peer

HOSPITAL = "hospital.chu-a.test"
BUSY = "busy@chu-a.test"
REFUSED = "refused@chu-a.test"
BUSY_REPLY = "450 4.2.1 mailbox busy, try again later"
REFUSED_REPLY = "550 5.1.1 no such mailbox here"
# What Postfix makes of those access-table replies (its text after the status code)
BUSY_SEEN = f"4.2.1 <{BUSY}>: Recipient address rejected: mailbox busy, try again later"
REFUSED_SEEN = f"5.1.1 <{REFUSED}>: Recipient address rejected: no such mailbox here"

PostfixFactory = Callable[..., PostfixInstance]


def hospital_server(
    factory: PostfixFactory,
    pki: DevPki,
    *,
    replies: dict[str, str] | None = None,
    starttls: bool = True,
) -> PostfixInstance:
    """The hospital's Postfix: Maildirs for chu-a.test (alice and bruno their own, the
    rest a catch-all), STARTTLS offered unless ``starttls`` is false, RCPT replies
    forced for the addresses of ``replies``."""
    server = factory(
        tls=tls_files(pki, HOSPITAL),
        domain="chu-a.test",
        hostname=HOSPITAL,
        mailboxes=[ALICE, BRUNO],
        start=False,
    )
    if not starttls:
        server.main_cf["smtpd_tls_security_level"] = "none"
    set_recipient_access(server, replies or {})
    server.start()
    return server


def smtp_to(server: PostfixInstance) -> str:
    """The ``[inbound]`` body delivering over SMTP to ``server``."""
    return f'deliver_to = "smtp://{server.host}:{server.port}"'


@dataclass
class Site(OpenSite):
    """An open site and its local delivery."""

    delivery: LocalDelivery

    async def deliver(self, *recipients: str, content: bytes = LETTER) -> DeliveryOutcome:
        await self.local.add(envelope(*recipients), INBOUND_AGENT, content)
        [outcome] = await self.delivery.drain()
        return outcome


SiteFor = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site_for(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[SiteFor]:
    """``await make(server, tls_context=None)`` -> a site delivering to ``server`` over
    SMTP, the local queue recovered; every spool closed at teardown."""
    async with AsyncExitStack() as spools:

        async def make(server: PostfixInstance, tls_context: ssl.SSLContext | None = None) -> Site:
            opened = await spools.enter_async_context(
                opened_site(tmp_path, dev_pki, inbound=smtp_to(server), actor="local-delivery")
            )
            delivery = await opened.local_delivery(tls_context=tls_context)
            return Site(
                opened.pki, opened.config, opened.spool, opened.trail, opened.clock, delivery
            )

        yield make


def stored_in(server: PostfixInstance, address: str) -> list[bytes]:
    return server.messages(address)


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat 127.0.0.1 as a remote host: the "TLS required" branch of the rule."""
    monkeypatch.setattr(store_client, "is_loopback", lambda host: False)


# -- delivery -------------------------------------------------------------------------------


async def test_a_decrypted_message_is_delivered_over_smtp_into_postfix(
    dev_pki: DevPki, tmp_path: Path, postfix_mx_factory: PostfixFactory
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki)
    async with opened_site(
        tmp_path, dev_pki, inbound=smtp_to(server), actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        message = incoming_letter(dev_pki, ALICE)
        await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, message)
        stage = await site.inbound_agent()
        [opened] = await stage.drain()
        assert opened.disposition == "completed"

        delivery = await site.local_delivery()
        [outcome] = await delivery.drain()
        assert outcome.disposition == "completed"
        [(address, code, text)] = outcome.replies
        assert (address, code) == (ALICE, 250) and text.startswith("2.0.0 Ok: queued")
        assert await entries(site.spool, LOCAL, "incoming") == []
        assert await entries(site.spool, RECEIVED, "incoming") == []  # no DSN
        [event] = site.trail.of_type("delivery.local")
        assert event.outcome == "delivered" and event.details["reply"].startswith("250 ")

    [stored] = server.wait_for_messages(1, mailbox=ALICE)
    shown = email.message_from_bytes(stored, policy=email.policy.default)
    assert shown["Subject"] == SUBJECT  # the protected Subject, shown after decryption
    assert "signature=valid" in shown["Missive-Security"]
    assert shown["Return-Path"] == f"<{CLAIRE}>"
    assert SECRET in stored and b"application/pkcs7-mime" not in stored
    assert b"with ESMTP id" in stored  # loopback: no STARTTLS (see the TLS tests)


async def test_a_4xx_defers_and_the_retry_delivers(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki, replies={BUSY: BUSY_REPLY})
    site = await site_for(server)
    first = await site.deliver(BUSY)
    assert first.disposition == "deferred"
    assert first.replies == ((BUSY, 450, BUSY_SEEN),)
    [info] = await site.local.scan("deferred")
    [state] = info.record.state.recipients if info.record else ()
    assert state.status == "deferred" and state.attempts == 1
    assert state.last_error == f"450 {BUSY_SEEN}" and state.next_attempt is not None
    assert await entries(site.spool, RECEIVED, "incoming") == []  # no DSN for a delay
    assert server.messages() == []

    set_recipient_access(server, {})  # the mailbox is free again
    server.restart()
    await site.local.retry(info.name)
    [second] = await site.delivery.drain()
    assert second.disposition == "completed" and second.replies[0][1] == 250
    assert await site.local.locate(info.name) is None
    assert len(server.wait_for_messages(1, mailbox="catchall")) == 1
    outcomes = [e.outcome for e in site.trail.of_type("delivery.local")]
    assert outcomes == ["deferred", "delivered"]


async def test_a_5xx_bounces_with_a_failure_dsn(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki, replies={REFUSED: REFUSED_REPLY})
    site = await site_for(server)
    outcome = await site.deliver(REFUSED)
    assert outcome.disposition == "bounced" and outcome.dsn is not None
    assert outcome.replies == ((REFUSED, 550, REFUSED_SEEN),)
    assert await site.local.scan("deferred") == [] and await site.local.scan("incoming") == []
    [(dsn_envelope, dsn)] = await entries(site.spool, RECEIVED, "incoming")
    assert dsn_envelope.mail_from == "" and dsn_envelope.addresses == (CLAIRE,)
    assert b"Action: failed" in dsn and b"Final-Recipient: rfc822; " + REFUSED.encode() in dsn
    assert b"Status: 5.1.1" in dsn and b"Diagnostic-Code: smtp; 550 5.1.1" in dsn
    assert b"Remote-MTA: dns; 127.0.0.1" in dsn
    assert [e.outcome for e in site.trail.of_type("delivery.local")] == ["failed"]
    assert server.messages() == []


async def test_one_transaction_keeps_each_recipients_outcome(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    """Accepted, refused (5xx) and busy (4xx) recipients in one SMTP transaction: the
    DATA reply counts for the accepted one only; the refused one alone gets a DSN; the
    entry waits for the busy one, and the retry sends to it alone."""
    replies = {REFUSED: REFUSED_REPLY, BUSY: BUSY_REPLY}
    server = hospital_server(postfix_mx_factory, dev_pki, replies=replies)
    site = await site_for(server)
    first = await site.deliver(ALICE, REFUSED, BUSY)
    assert first.disposition == "deferred"
    assert {address: code for address, code, _ in first.replies} == {
        ALICE: 250,
        REFUSED: 550,
        BUSY: 450,
    }
    [(_, dsn)] = await entries(site.spool, RECEIVED, "incoming")
    assert dsn.count(b"Final-Recipient:") == 1 and REFUSED.encode() in dsn
    assert len(server.wait_for_messages(1, mailbox=ALICE)) == 1

    set_recipient_access(server, {REFUSED: REFUSED_REPLY})
    server.restart()
    [info] = await site.local.scan("deferred")
    await site.local.retry(info.name)
    [second] = await site.delivery.drain()
    assert second.disposition == "completed"
    assert [(address, code) for address, code, _ in second.replies] == [(BUSY, 250)]
    assert len(server.wait_for_messages(1, mailbox="catchall")) == 1
    assert len(server.messages(ALICE)) == 1  # not delivered twice
    assert len(await entries(site.spool, RECEIVED, "incoming")) == 1  # no second DSN


# -- TLS: required unless loopback -----------------------------------------------------------


async def test_to_loopback_the_session_stays_in_clear(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki)
    site = await site_for(server)
    assert (await site.deliver(ALICE)).disposition == "completed"
    [stored] = server.wait_for_messages(1, mailbox=ALICE)
    assert b"with ESMTP id" in stored and b"ESMTPS" not in stored


@pytest.mark.usefixtures("remote")
async def test_not_loopback_uses_starttls_with_a_verified_certificate(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki)
    site = await site_for(server)  # the context of [trust] anchors (the dev PKI's root)
    assert (await site.deliver(ALICE)).disposition == "completed"
    [stored] = server.wait_for_messages(1, mailbox=ALICE)
    assert b"with ESMTPS id" in stored and b"(using TLSv1." in stored
    assert "TLS connection established from" in server.maillog(200)


@pytest.mark.usefixtures("remote")
async def test_not_loopback_without_starttls_is_deferred_and_nothing_sent(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki, starttls=False)
    site = await site_for(server)
    outcome = await site.deliver(ALICE)
    assert outcome.disposition == "deferred"
    [(address, code, text)] = outcome.replies
    assert (address, code) == (ALICE, 451)
    assert "does not offer STARTTLS (required: not loopback)" in text
    assert server.messages() == []


@pytest.mark.usefixtures("remote")
async def test_not_loopback_with_an_untrusted_certificate_is_deferred(
    dev_pki: DevPki, postfix_mx_factory: PostfixFactory, site_for: SiteFor
) -> None:
    server = hospital_server(postfix_mx_factory, dev_pki)
    site = await site_for(server, tls_context=ssl.create_default_context())  # no dev PKI root
    outcome = await site.deliver(ALICE)
    assert outcome.disposition == "deferred"
    [(_, code, text)] = outcome.replies
    assert code == 451 and "CERTIFICATE_VERIFY_FAILED" in text
    assert server.messages() == []
