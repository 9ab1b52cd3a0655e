"""Where an MDN may go (RFC 8098 §2.1; ``gateway.relay.mdn.mdn_destinations``): only to
the Disposition-Notification-To addresses equal to the original's envelope sender.

Without this rule anyone outside could write ``Disposition-Notification-To:
victim@elsewhere`` to a local doctor and have the gateway send a signed "processed for
dr-x" notice to an address of their choice (backscatter; a third party learns that a
message reached that doctor). Unit tests of the address filter (kept, dropped, several
addresses, domain case, local-part case, IDNA forms, null and unknown senders), then the
inbound stage and local delivery end to end with real crypto and the real spool: no MDN
to a third party, the MDN to the sender only when both are named, and the audit trail
saying why.

The functions are read through the module (``mdn.<name>``) so that each test fails on
its own assertion, not at import, when run against the module before the rule."""

from __future__ import annotations

import email
import email.policy
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.relay import mdn
from gateway.spool import RECEIVED
from tests.inbound.site import (
    ALICE,
    CLAIRE,
    FROM_OUTSIDE,
    MAILDIR,
    SECRET,
    SUBJECT,
    OpenSite,
    entries,
    envelope,
    opened_site,
    seal,
)

VICTIM = "victim@elsewhere.test"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def asking(dnt: str) -> bytes:
    """Claire's header block asking for an MDN at ``dnt`` (the field's value as written)."""
    return (
        b"From: Claire <claire.durand@clinique-b.test>\r\n"
        b"To: Alice <alice.martin@chu-a.test>\r\n"
        b"Message-ID: <dest-1@clinique-b.test>\r\n"
        b"Disposition-Notification-To: " + dnt.encode() + b"\r\n"
        b"\r\n"
    )


def built_to(headers: bytes, return_path: str) -> list[str]:
    """The addresses of the To: field of the MDN built for ``headers``."""
    data = mdn.build_mdn(
        reporting_ua="mx.chu-a.test",
        original_headers=headers,
        final_recipient=ALICE,
        disposition=mdn.Disposition.PROCESSED,
        now=NOW,
        return_path=return_path,
    )
    field = email.message_from_bytes(data, policy=email.policy.default)["To"]
    return [address.addr_spec for address in field.addresses]


# -- the address filter (sans-IO) ----------------------------------------------------------


def test_dnt_equal_to_mail_from_gets_the_mdn() -> None:
    headers = asking(f"Claire <{CLAIRE}>")
    assert mdn.should_send_mdn(headers, CLAIRE)
    assert built_to(headers, CLAIRE) == [CLAIRE]
    assert mdn.mdn_envelope(headers, CLAIRE).addresses == (CLAIRE,)


def test_dnt_naming_a_third_party_gets_no_mdn() -> None:
    headers = asking(f"<{VICTIM}>")
    assert not mdn.should_send_mdn(headers, CLAIRE)
    with pytest.raises(mdn.MdnRefused):
        built_to(headers, CLAIRE)
    with pytest.raises(mdn.MdnRefused):
        mdn.mdn_envelope(headers, CLAIRE)
    assert mdn.mdn_destinations(headers, CLAIRE) == mdn.MdnDestinations((), (VICTIM,))


def test_two_dnt_addresses_one_matching_gets_the_mdn_to_that_one_only() -> None:
    headers = asking(f"<{VICTIM}>, Claire <{CLAIRE}>")
    assert mdn.should_send_mdn(headers, CLAIRE)
    assert built_to(headers, CLAIRE) == [CLAIRE]  # the dropped one is not even named
    assert mdn.mdn_envelope(headers, CLAIRE).addresses == (CLAIRE,)
    assert mdn.mdn_destinations(headers, CLAIRE) == mdn.MdnDestinations((CLAIRE,), (VICTIM,))


def test_domain_compares_without_case_and_local_part_exactly() -> None:
    upper_domain = "claire.durand@Clinique-B.TEST"
    assert mdn.should_send_mdn(asking(upper_domain), CLAIRE)
    assert mdn.should_send_mdn(asking(CLAIRE), upper_domain)
    # the MDN goes to MAIL FROM as the envelope spells it, not to the header's spelling
    assert mdn.mdn_envelope(asking(upper_domain), CLAIRE).addresses == (CLAIRE,)
    assert not mdn.should_send_mdn(asking("Claire.Durand@clinique-b.test"), CLAIRE)
    assert mdn.same_mailbox("a@X.test", "a@x.test")
    assert not mdn.same_mailbox("A@x.test", "a@x.test")
    assert not mdn.same_mailbox("a@x.test", "a@x.test.evil.test")


def test_an_idna_look_alike_is_not_the_sender() -> None:
    """The rule allows, so it compares exactly: a U-label is not its A-label (module
    notes), and a fullwidth letter is not a letter."""
    assert not mdn.should_send_mdn(asking("claire@bücher.test"), "claire@xn--bcher-kva.test")
    assert not mdn.should_send_mdn(asking("claire.durand@clinique-ｂ.test"), CLAIRE)


def test_the_same_address_twice_gets_one_mdn() -> None:
    headers = asking(f"{CLAIRE}, claire.durand@CLINIQUE-B.test")
    assert mdn.mdn_envelope(headers, CLAIRE).addresses == (CLAIRE,)


@pytest.mark.parametrize("null", ["", "<>", " <> "])
def test_a_null_sender_gets_no_mdn(null: str) -> None:
    headers = asking(CLAIRE)
    assert not mdn.should_send_mdn(headers, null)
    assert not mdn.mdn_asked(headers, null)
    assert mdn.mdn_destinations(headers, null).kept == ()


def test_an_unknown_sender_matches_nothing_and_the_return_path_field_stands_in() -> None:
    headers = asking(CLAIRE)
    assert not mdn.should_send_mdn(headers)  # no envelope, no Return-Path: fail closed
    with pytest.raises(mdn.MdnRefused):
        mdn.mdn_envelope(headers)
    with_field = b"Return-Path: <" + CLAIRE.encode() + b">\r\n" + headers
    assert mdn.should_send_mdn(with_field)
    assert mdn.mdn_envelope(with_field).addresses == (CLAIRE,)
    assert not mdn.should_send_mdn(with_field, VICTIM)  # the envelope wins over the field


# -- end to end: the inbound stage and local delivery ------------------------------------


def letter(dnt: str) -> bytes:
    """A letter from Claire to Alice asking for processed and dispatched MDNs at ``dnt``."""
    head = asking(dnt).removesuffix(b"\r\n")
    return head + (
        b"Subject: " + SUBJECT.encode() + b"\r\n"
        b"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\n"
        b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n" + SECRET + b"\r\n"
    )


def alice_site(tmp_path: Path, pki: DevPki) -> AbstractAsyncContextManager[OpenSite]:
    return opened_site(tmp_path, pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE,))


async def test_a_third_party_dnt_gets_no_mdn_and_the_trail_says_why(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with alice_site(tmp_path, dev_pki) as site:
        sealed = seal(dev_pki, letter(f"<{VICTIM}>"), ALICE, cipher="aes-256-cbc")
        await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, sealed)
        [outcome] = await (await site.inbound_agent()).drain()
        assert outcome.disposition == "completed" and len(outcome.handoffs) == 1
        assert outcome.mdns == ()
        delivery = await site.local_delivery()
        assert [o.disposition for o in await delivery.drain()] == ["completed"]

        assert await entries(site.spool, RECEIVED, "incoming") == []  # neither MDN
        events = site.trail.of_type("inbound.mdn_recipients_dropped")
        assert [(e.actor, e.details["disposition"]) for e in events] == [
            ("inbound-agent", "processed"),
            ("local-delivery", "dispatched"),
        ]
        for event in events:
            assert event.outcome == "withheld"
            assert event.mail_from == CLAIRE and event.rcpt_to == (ALICE,)
            assert event.details["dropped"] == VICTIM
            assert event.details["dropped_count"] == "1"
            assert event.details["reason"] == mdn.NO_DESTINATION
            assert "mdn" not in event.details


async def test_the_mdn_goes_to_the_sender_only_when_dnt_also_names_a_third_party(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async with alice_site(tmp_path, dev_pki) as site:
        dnt = f"<{VICTIM}>, Claire <{CLAIRE}>"
        sealed = seal(dev_pki, letter(dnt), ALICE, cipher="aes-256-cbc")
        await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, sealed)
        [outcome] = await (await site.inbound_agent()).drain()
        [child] = outcome.mdns

        [(mdn_envelope, data)] = await entries(site.spool, RECEIVED, "incoming")
        assert mdn_envelope.mail_from == "" and mdn_envelope.addresses == (CLAIRE,)
        assert email.message_from_bytes(data)["To"] == f"<{CLAIRE}>"
        assert VICTIM.encode() not in data
        [event] = site.trail.of_type("inbound.mdn_recipients_dropped")
        assert event.outcome == "queued" and event.details["mdn"] == child
        assert event.details["dropped"] == VICTIM


DELIVERED_MARK = b'Missive-Security: encrypted=no; signature=none;\r\n\tsigner=""; weak=no\r\n'


async def test_hundreds_of_third_parties_make_one_bounded_audit_event(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """An audit value holds at most 4 KiB: the dropped addresses are cut, and counted."""
    many = [f"victim{n:03d}@elsewhere.test" for n in range(300)]  # ~8 KB of addresses
    async with alice_site(tmp_path, dev_pki) as site:
        received = letter(", ".join(many))
        child = await site.mdn_for_one(received, DELIVERED_MARK + received)  # ours on top
        assert child is None
        [event] = site.trail.of_type("inbound.mdn_recipients_dropped")
        shown = event.details["dropped"]
        assert event.details["dropped_count"] == "300"
        assert shown.startswith(f"{many[0]}, {many[1]}, ") and shown.endswith(" more)")
        assert len(shown.encode()) <= 1100
