"""A Bcc recipient on a ``wrap = true`` (Direct) route, end to end with real crypto.

Before session 6 the Direct tamper rule asked every RCPT TO to be in To or Cc of the
wrapped message, so a Bcc recipient of a wrap route was *failed* by the agent
("RCPT TO <...> is in neither To nor Cc": a 5.7.1 failure DSN to the sender) instead of
getting its own message. The decision (``gateway.relay.protect``, module docstring):

- a Bcc copy wraps the very message the To/Cc recipients get: the message as sent,
  without any Bcc or Resent-Bcc field (RFC 5322 §3.6.3, first method), signed and
  encrypted for that one recipient (and the sender's copy);
- its tamper check asks the RCPT TO to be one of the Bcc addresses of the original
  (the author named it as a blind copy); a RCPT TO in none of To, Cc, Bcc is still
  refused, and MAIL FROM must still be the From or Sender address.

Messages are built on a dev PKI, looked up in a real LDIF annuaire, validated with
CRLs, signed with the sender's personal key; each outgoing message is opened with
``openssl cms`` by each intended reader's key and its signature verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.relay import protect
from gateway.relay.agent import AgentResult, OutgoingMessage
from gateway.smime import mime
from tests.peers.cms_tools import OpenSSLCms, PeerToolError
from tests.relay.test_agent import (
    ALICE,
    BODY,
    SUBJECT,
    SUBMISSION,
    Site,
    assert_no_clear_text,
    cms_der,
    envelope,
    make_agent,
    open_as,
    recipient_serials,
    serial_of,
    signer_serials,
    site_with_users,
)

DOC = "doc@direct.test"
NURSE = "nurse@direct.test"
BLIND = "blind@direct.test"
BLIND_TWO = "blind.two@direct.test"
SNEAKY = "sneaky@direct.test"  # has a certificate, is named nowhere in the message
DIRECT_USERS = (DOC, NURSE, BLIND, BLIND_TWO, SNEAKY)
HIDDEN_ADDRESSES = (BLIND, BLIND_TWO, "blind")  # "blind" catches blind.two too


@pytest.fixture(scope="module")
def wrap_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return site_with_users(tmp_path_factory.mktemp("wrap-bcc"), DIRECT_USERS)


def direct_message(
    to: Sequence[str], cc: Sequence[str] = (), bcc: Sequence[str] | None = None
) -> bytes:
    """A message as a mail client submits it; ``bcc=None``: no Bcc field at all."""
    lines = [f"From: Alice Martin <{ALICE}>", f"To: {', '.join(to)}"]
    if cc:
        lines.append(f"Cc: {', '.join(cc)}")
    if bcc is not None:
        lines.append(f"Bcc: {', '.join(bcc)}")
    lines += [
        f"Subject: {SUBJECT}",
        "Date: Sun, 29 Nov 2026 00:30:00 +0100",
        "Message-ID: <wrap-bcc@chu-a.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        BODY,
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def message_for(result: AgentResult, *addresses: str) -> OutgoingMessage:
    """The one outgoing message whose envelope recipients are exactly ``addresses``."""
    found = [m for m in result.messages if [r.address for r in m.recipients] == [*addresses]]
    assert len(found) == 1, [[r.address for r in m.recipients] for m in result.messages]
    return found[0]


def opened(openssl: OpenSSLCms, site: Site, outgoing: OutgoingMessage, reader: str) -> bytes:
    """Decrypted by ``reader``'s key, signature verified (chain to the dev root): the
    signed content, a ``message/rfc822`` entity."""
    signed = open_as(openssl, site, outgoing, reader)
    assert signer_serials(signed) == [serial_of(site.pki.user_cert(ALICE, "sign"))]
    return openssl.verify(signed, site.ca_bundle, inform="SMIME", binary=False)


def wrapped_inner(content: bytes) -> mime.MimeEntity:
    wrapper = mime.parse_entity(content)
    assert wrapper.content_type == "message/rfc822"
    assert wrapper.param("forwarded") == "no"
    return mime.parse_entity(content, wrapper.body_start)


def hidden_leaks(data: bytes) -> list[str]:
    return [a for a in HIDDEN_ADDRESSES if a.encode() in data.lower()]


# -- the Bcc copy is made ---------------------------------------------------------------


async def test_a_bcc_recipient_of_a_wrap_route_gets_its_own_wrapped_copy(
    wrap_site: Site, tmp_path: Path, openssl_cms: OpenSSLCms
) -> None:
    agent, _ = make_agent(wrap_site, tmp_path)
    raw = direct_message([DOC], cc=[NURSE], bcc=[BLIND])
    result = await agent.process(envelope(DOC, NURSE, BLIND), raw, SUBMISSION)
    assert not result.failed, [(f.address, f.reason) for f in result.failed]
    assert not result.fallback and not result.deferred
    assert [m.route for m in result.messages] == ["direct", "direct"]
    shown, hidden = message_for(result, DOC, NURSE), message_for(result, BLIND)
    assert_no_clear_text(result)
    serials = {a: serial_of(wrap_site.pki.user_cert(a, "enc")) for a in (ALICE, *DIRECT_USERS)}
    assert recipient_serials(cms_der(shown)) == {serials[a] for a in (DOC, NURSE, ALICE)}
    assert recipient_serials(cms_der(hidden)) == {serials[a] for a in (BLIND, ALICE)}
    assert hidden_leaks(shown.content) == []  # the clear outer header included
    assert hidden_leaks(hidden.content) == []  # its RCPT TO is its only mention
    inner_of = {}
    for outgoing, readers in ((shown, (DOC, NURSE, ALICE)), (hidden, (BLIND, ALICE))):
        for reader in readers:
            content = opened(openssl_cms, wrap_site, outgoing, reader)
            # the decrypted bytes name no blind recipient anywhere (To/Cc copy above all)
            assert hidden_leaks(content) == [], (outgoing.recipients, reader)
            inner = wrapped_inner(content)
            assert inner.header_values("Subject") == [SUBJECT]
            assert inner.header_values("To") == [DOC]
            assert inner.header_values("Cc") == [NURSE]
            assert inner.header_values("Bcc") == []  # the decision: no Bcc field inside
            assert inner.body == f"{BODY}\r\n".encode()
            inner_of[outgoing.sha256, reader] = content
    # the Bcc copy wraps the very message the To/Cc recipients got
    assert inner_of[hidden.sha256, BLIND] == inner_of[shown.sha256, DOC]
    with pytest.raises(PeerToolError):
        open_as(openssl_cms, wrap_site, shown, BLIND)
    with pytest.raises(PeerToolError):
        open_as(openssl_cms, wrap_site, hidden, DOC)
    assert [(e.type, e.rcpt_to) for e in result.audit] == [
        ("agent.smime", (DOC, NURSE)),
        ("agent.smime", (BLIND,)),
    ]


async def test_two_bcc_recipients_each_get_a_message_that_names_neither(
    wrap_site: Site, tmp_path: Path, openssl_cms: OpenSSLCms
) -> None:
    agent, _ = make_agent(wrap_site, tmp_path, smime="copy_to_sender = false")
    raw = direct_message([DOC], bcc=[BLIND, BLIND_TWO])
    result = await agent.process(envelope(BLIND, DOC, BLIND_TWO), raw, SUBMISSION)
    assert not result.failed and not result.fallback and not result.deferred
    assert [[r.address for r in m.recipients] for m in result.messages] == [
        [DOC],
        [BLIND],
        [BLIND_TWO],
    ]
    for outgoing in result.messages:
        (reader,) = (r.address for r in outgoing.recipients)
        assert recipient_serials(cms_der(outgoing)) == {
            serial_of(wrap_site.pki.user_cert(reader, "enc"))
        }
        content = opened(openssl_cms, wrap_site, outgoing, reader)
        assert hidden_leaks(content) == []
        assert hidden_leaks(outgoing.content) == []
    with pytest.raises(PeerToolError):
        open_as(openssl_cms, wrap_site, message_for(result, BLIND), BLIND_TWO)


# -- the tamper rule still holds --------------------------------------------------------


async def test_a_rcpt_to_in_none_of_to_cc_bcc_is_still_refused(
    wrap_site: Site, tmp_path: Path
) -> None:
    agent, _ = make_agent(wrap_site, tmp_path)
    raw = direct_message([DOC], bcc=[BLIND])
    result = await agent.process(envelope(DOC, BLIND, SNEAKY), raw, SUBMISSION)
    assert [(f.address, f.route) for f in result.failed] == [(SNEAKY, "direct")]
    assert result.failed[0].reason == (f"RCPT TO <{SNEAKY}> is in neither To nor Cc, nor in Bcc")
    assert [[r.address for r in m.recipients] for m in result.messages] == [[DOC], [BLIND]]
    assert all(SNEAKY.encode() not in m.content for m in result.messages)


async def test_a_blind_rcpt_to_without_a_bcc_field_is_refused(
    wrap_site: Site, tmp_path: Path
) -> None:
    """A client that strips Bcc before submitting names no blind recipient: the author's
    message does not say who the RCPT TO is, and the Direct rule fails closed."""
    agent, _ = make_agent(wrap_site, tmp_path)
    result = await agent.process(envelope(DOC, BLIND), direct_message([DOC]), SUBMISSION)
    assert [(f.address, f.reason) for f in result.failed] == [
        (BLIND, f"RCPT TO <{BLIND}> is in neither To nor Cc, nor in Bcc")
    ]
    assert [[r.address for r in m.recipients] for m in result.messages] == [[DOC]]


async def test_an_empty_bcc_field_names_no_blind_recipient(wrap_site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(wrap_site, tmp_path)
    raw = direct_message([DOC], bcc=[])
    result = await agent.process(envelope(DOC, BLIND), raw, SUBMISSION)
    assert [f.address for f in result.failed] == [BLIND]


async def test_a_bcc_copy_still_needs_mail_from_to_be_the_author(
    wrap_site: Site, tmp_path: Path
) -> None:
    agent, _ = make_agent(wrap_site, tmp_path)
    raw = direct_message([DOC], bcc=[BLIND])
    forged = envelope(DOC, BLIND, mail_from="other@chu-a.test")
    result = await agent.process(forged, raw, SUBMISSION)
    assert not result.messages
    assert [f.address for f in result.failed] == [DOC, BLIND]
    assert all("MAIL FROM" in f.reason for f in result.failed)


# -- the rule itself (sans-IO) ----------------------------------------------------------


def split(*fields: str) -> protect.SplitMessage:
    head = "".join(f"{field}\r\n" for field in fields)
    return protect.SplitMessage.of(f"{head}Subject: x\r\n\r\nbody\r\n".encode())


def test_blind_addresses_are_read_from_every_bcc_field() -> None:
    message = split(
        f"From: {ALICE}",
        f"To: {DOC}",
        f'Bcc: "Blind, One" <{BLIND}>,\r\n\tundisclosed: {BLIND_TWO};',
        "Bcc: third@direct.test",
    )
    assert message.blind == (BLIND, BLIND_TWO, "third@direct.test")
    assert split(f"From: {ALICE}", f"To: {DOC}", "Bcc:").blind == ()
    assert split(f"From: {ALICE}", f"To: {DOC}").blind == ()


def test_tamper_rule_of_a_bcc_copy() -> None:
    message = split(f"From: {ALICE}", f"To: {DOC}", f"Cc: {NURSE}", f"Bcc: {BLIND}")
    protect.check_tamper(message, ALICE, [BLIND], blind=True)
    protect.check_tamper(message, ALICE, ["blind@DIRECT.test"], blind=True)  # RFC 8550 §3
    with pytest.raises(protect.TamperError, match="nor in Bcc"):
        protect.check_tamper(message, ALICE, ["Blind@direct.test"], blind=True)
    with pytest.raises(protect.TamperError, match="nor in Bcc"):
        protect.check_tamper(message, ALICE, [SNEAKY], blind=True)
    with pytest.raises(protect.TamperError, match="MAIL FROM"):
        protect.check_tamper(message, "mallory@chu-a.test", [BLIND], blind=True)
    # a To/Cc copy is still checked against To and Cc only
    protect.check_tamper(message, ALICE, [DOC, NURSE])
    with pytest.raises(protect.TamperError, match="neither To nor Cc"):
        protect.check_tamper(message, ALICE, [BLIND])
    # a Bcc copy is for a Bcc recipient only: a To address is not one
    with pytest.raises(protect.TamperError, match="is in To or Cc, not in Bcc"):
        protect.check_tamper(message, ALICE, [DOC], blind=True)
