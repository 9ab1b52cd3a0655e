"""Adversarial review of the SMTP front (session 5, H9): mail the front accepted although
issue 5 says it must refuse it. Each test failed when it was written; the module
docstrings of ``gateway.smtp.policy`` and ``gateway.smtp.envelope`` state the rules.

- A From: field the stdlib only half understands (an address where the display name
  goes, two addresses without a comma): the policy judged the first address while the
  field names another one, which mail readers may show (RFC 5322 §3.4 forbids ``@`` in
  an unquoted phrase; "Composition Kills", USENIX Security 2020, lists such fields as
  sender spoofing across parsers). Inbound this passes a local sender from outside;
  on submission it passes a colleague's address.
- A control character (NUL, ESC, DEL) after the From: address: the policy read the
  domain ``chu-a.test\\x00`` (not local); Dovecot 2.3.19's IMAP ENVELOPE of the same
  field shows ``bob.durand@chu-a.test`` (checked by hand with ``/usr/lib/dovecot/imap``).
- A local domain written in a form that IDNA maps to it (fullwidth letters, a soft
  hyphen, the ideographic full stop; the U-label of an ``xn--`` local domain): the
  envelope parser accepts the domain *because* its IDNA form is valid, but the policy
  compared the raw text with ``local_domains`` (A-labels), so the local-sender rule did
  not apply.
- A second STARTTLS on a TLS session was answered 220 (RFC 3207 §4.2: no STARTTLS once
  TLS is active; the EHLO reply no longer offers it).
- ``MAIL FROM:<...> AUTH=<mailbox>`` from a client that never authenticated was kept in
  the spool record (RFC 4954 §5: such a server "MUST behave as if the AUTH=<>
  parameter was supplied"); ``missive queue show`` prints it as ``AUTH=``.

State: all fixed - the first three in ``gateway.smtp.policy`` (an address written
anywhere in From: besides its mailboxes is a *named* address: a local one is a local
sender from outside, and must be the login's on submission; a control character is
refused; IDNA twins of a local domain are local senders), the last two in
``gateway.smtp.session``; the usual From: forms still pass (last tests). Loopback
only; every front is stopped by its context manager.
"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.smtp import replies as r
from gateway.smtp.envelope import Address, parse_mail
from gateway.smtp.policy import ClientFacts, MessageFacts, Policy, RelayRules
from gateway.smtp.replies import SmtpReply

from .front import (
    ALICE,
    BOB,
    PASSWORD,
    RELAY,
    SUBMISSION,
    Front,
    client_context,
    in_thread,
    raw_exchange,
    running_front,
    write_config,
)

OUTSIDE_SENDER = "someone@clinique-b.test"
LOCAL_RECIPIENT = "alice.martin@chu-a.test"


def inbound(port: int, mail: bytes, data: bytes) -> list[str]:
    """One transaction on the relay listener from a client that is not a relay client."""
    script = [
        b"EHLO probe\r\n",
        mail,
        f"RCPT TO:<{LOCAL_RECIPIENT}>\r\n".encode(),
        b"DATA\r\n",
        data + b"\r\nhello\r\n.\r\n",
    ]
    return raw_exchange(port, script)


def plain_mail(sender: str = OUTSIDE_SENDER) -> bytes:
    return f"MAIL FROM:<{sender}>\r\n".encode()


async def run_inbound(tmp_path: Path, dev_pki: DevPki, mail: bytes, data: bytes) -> Front:
    config = write_config(tmp_path, dev_pki, RELAY, accept="any")
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        front.extra["replies"] = await in_thread(lambda: inbound(port, mail, data))
    return front


# -- From: fields the policy and a reader may read differently ----------------------------


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: someone@clinique-b.test <bob.durand@chu-a.test>\r\n",
        b"From: <someone@clinique-b.test> <bob.durand@chu-a.test>\r\n",
        b"From: someone@clinique-b.test bob.durand@chu-a.test\r\n",
    ],
    ids=["address-as-display-name", "two-angle-addresses", "two-addresses-no-comma"],
)
async def test_a_half_parsed_from_cannot_carry_a_local_sender_in(
    tmp_path: Path, dev_pki: DevPki, from_field: bytes
) -> None:
    front = await run_inbound(tmp_path, dev_pki, plain_mail(), from_field)
    replies = front.extra["replies"]
    assert replies[-1].startswith("550 "), replies
    assert front.queue.messages == []


async def test_a_half_parsed_from_cannot_carry_a_colleague_on_submission(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def spoof() -> int:
            with smtplib.SMTP("127.0.0.1", front.port("submission"), timeout=30) as client:
                client.starttls(context=client_context(front.ca_file))
                client.login(ALICE, PASSWORD)
                content = f"From: {ALICE} <{BOB}>\r\nSubject: t\r\n\r\nhello\r\n".encode()
                try:
                    client.sendmail(ALICE, ["x@clinique-b.test"], content)
                except smtplib.SMTPDataError as error:
                    return error.smtp_code
                return 250

        code = await in_thread(spoof)
    assert code == 550
    assert front.queue.messages == []


@pytest.mark.parametrize("control", [b"\x00", b"\x1b", b"\x7f"], ids=["NUL", "ESC", "DEL"])
async def test_a_control_character_in_the_from_address_cannot_hide_a_local_domain(
    tmp_path: Path, dev_pki: DevPki, control: bytes
) -> None:
    from_field = b"From: bob.durand@chu-a.test" + control + b"\r\n"
    front = await run_inbound(tmp_path, dev_pki, plain_mail(), from_field)
    replies = front.extra["replies"]
    assert replies[-1].startswith("550 "), replies
    assert front.queue.messages == []


# -- local domains in another form that IDNA maps to them ---------------------------------

IDNA_TWINS = {
    "fullwidth": "\uff43\uff48\uff55-\uff41.test",  # ｃｈｕ-ａ.test
    "soft-hyphen": "chu\u00ad-a.test",  # shown as chu-a.test
    "ideographic-full-stop": "chu-a\u3002test",
}


@pytest.mark.parametrize("domain", list(IDNA_TWINS.values()), ids=list(IDNA_TWINS))
async def test_an_idna_twin_of_a_local_domain_is_a_local_sender_in_mail_from(
    tmp_path: Path, dev_pki: DevPki, domain: str
) -> None:
    assert domain.encode("idna") == b"chu-a.test"  # what IDNA software makes of it
    mail = f"MAIL FROM:<bob.durand@{domain}> SMTPUTF8\r\n".encode()
    front = await run_inbound(tmp_path, dev_pki, mail, b"From: someone@clinique-b.test\r\n")
    replies = front.extra["replies"]
    mail_reply = next(line for line in replies if line.startswith(("250 2.1.0", "5")))
    assert mail_reply.startswith("5"), replies
    assert front.queue.messages == []


async def test_an_idna_twin_of_a_local_domain_is_a_local_sender_in_from(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    from_field = f"From: bob.durand@{IDNA_TWINS['soft-hyphen']}\r\n".encode()
    front = await run_inbound(
        tmp_path, dev_pki, plain_mail().replace(b"\r\n", b" SMTPUTF8\r\n"), from_field
    )
    replies = front.extra["replies"]
    assert replies[-1].startswith("550 "), replies
    assert front.queue.messages == []


def test_the_u_label_of_an_idn_local_domain_is_a_local_sender() -> None:
    policy = Policy(RelayRules("relay", frozenset({"xn--hpital-ixa.test"}), inbound_accept="any"))
    outsider = ClientFacts("203.0.113.9")
    sender = parse_mail("<chef@h\u00f4pital.test> SMTPUTF8", max_size=100).sender
    with pytest.raises(SmtpReply) as at_mail:
        policy.check_mail(outsider, sender)
    assert at_mail.value.reply is r.LOCAL_SENDER_FROM_OUTSIDE
    header = MessageFacts.from_headers("From: chef@h\u00f4pital.test\r\n".encode())
    with pytest.raises(SmtpReply) as after_data:
        policy.check_message(outsider, [Address("x", "xn--hpital-ixa.test")], header)
    assert after_data.value.reply is r.LOCAL_SENDER_FROM_OUTSIDE


# -- the session ---------------------------------------------------------------------------


async def test_a_second_starttls_is_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, accept="any")
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")

        def exchange() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                plain = raw.makefile("rb")
                plain.readline()
                raw.sendall(b"STARTTLS\r\n")
                plain.readline()
                context = client_context(front.ca_file)
                with context.wrap_socket(raw, server_hostname="mx.chu-a.test") as tls:
                    secure = tls.makefile("rb")
                    tls.sendall(b"EHLO probe\r\n")
                    while not secure.readline().startswith(b"250 "):
                        pass
                    tls.sendall(b"STARTTLS\r\n")
                    reply = secure.readline().decode()
                    secure.close()
                plain.close()
            return reply

        reply = await in_thread(exchange)
    assert reply.startswith("5"), reply


async def test_the_auth_parameter_of_an_unauthenticated_client_is_not_kept(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    mail = f"MAIL FROM:<{OUTSIDE_SENDER}> AUTH={BOB}\r\n".encode()
    front = await run_inbound(tmp_path, dev_pki, mail, b"From: someone@clinique-b.test\r\n")
    kept = [message.envelope.params.auth for message in front.queue.messages]
    assert kept in ([], [None]), kept


# -- what the fixes must not refuse --------------------------------------------------------


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: Dr. House <dr.house@clinique-b.test>\r\n",  # obsolete '.' in a phrase
        "From: Zoé Durand <zoe@clinique-b.test>\r\n".encode(),  # raw UTF-8 (RFC 6532)
        b"From: =?utf-8?q?Zo=C3=A9?= <zoe@clinique-b.test>\r\n",
        b"From: zoe@clinique-b.test (Zoe), \r\n",  # an empty list item (obsolete)
        b"From: <@relay.test:zoe@clinique-b.test>\r\n",  # obsolete route
        "From: zoe@clinique-é.test\r\n".encode(),  # a non-local IDN domain
    ],
)
def test_usual_from_forms_from_outside_still_pass(from_field: bytes) -> None:
    policy = Policy(RelayRules("relay", frozenset({"chu-a.test"}), inbound_accept="any"))
    facts = MessageFacts.from_headers(from_field)
    policy.check_message(ClientFacts("203.0.113.9"), [Address("x", "chu-a.test")], facts)


def test_an_idna_twin_is_still_no_local_recipient() -> None:
    policy = Policy(RelayRules("relay", frozenset({"chu-a.test"}), inbound_accept="any"))
    twin = Address("alice", IDNA_TWINS["fullwidth"])
    with pytest.raises(SmtpReply) as caught:
        policy.check_rcpt(ClientFacts("203.0.113.9"), twin, 0)
    assert caught.value.reply.code == 554


async def test_a_repeated_recipient_is_kept_once(tmp_path: Path, dev_pki: DevPki) -> None:
    """The same RCPT twice (the domain in another case): accepted, stored once, so the
    recipient does not get two copies (Postfix's cleanup removes them too)."""
    local, _, domain = LOCAL_RECIPIENT.partition("@")
    again = f"RCPT TO:<{local}@{domain.upper()}>\r\n".encode()
    front = await run_inbound(
        tmp_path, dev_pki, plain_mail() + again, b"From: someone@clinique-b.test\r\n"
    )
    [message] = front.queue.messages
    assert [recipient.address for recipient in message.envelope.recipients] == [LOCAL_RECIPIENT]
