"""Review R2 (session 7) of the MDN destination rule (``gateway.relay.mdn``,
``gateway.inbound.stage.queue_mdn``).

Findings, each a test that failed before its fix:

- the MDN went to the Disposition-Notification-To *spelling* of the sender, not to
  the envelope's MAIL FROM: a header value is then where the MDN goes. Now it goes to
  MAIL FROM as the envelope spells it, whatever the header says;
- the domain compared with ``str.lower``, which maps KELVIN SIGN (U+212A) to ``k``: a
  look-alike domain counted as the sender's (and the MDN was addressed to it);
- ``queue_mdn`` split the stranger's header block about ten times per MDN on the
  event loop (``report.split_fields`` costs about 1 s for 256 KiB of folded lines);
  now once (``mdn.read_request``);
- one log line (one write and flush) per dropped address: a 256 KiB field names
  thousands. Now at most ``MAX_DROPPED_LOGGED`` lines and one with the count.

What held is kept as regression tests: header tricks (display names, comments, group
syntax, encoded words, source routes, several addresses, quoted local parts, trailing
dots) never make a third party the destination; a control character in a dropped
address reaches the audit trail as data (the trail escapes it on output), not as a
crash; a repeated pass queues the MDN once and records the drop event again (decision:
at-least-once trail, written in the ``gateway.inbound.stage`` docstring)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from gateway.inbound import mdn_queue
from gateway.inbound.mdn_queue import MAX_DROPPED_LOGGED, queue_mdn
from gateway.pki.dev import DevPki
from gateway.relay import mdn, report
from gateway.spool import RECEIVED, Claimed, Recipient
from tests.inbound.site import ALICE, CLAIRE, FROM_OUTSIDE, MAILDIR, OpenSite, entries, envelope
from tests.inbound.site import opened_site as open_site
from tests.inbound.test_mdn_destination import DELIVERED_MARK, VICTIM, asking, built_to, letter

# -- where the MDN goes (sans-IO) ----------------------------------------------------------


def built(headers: bytes, return_path: str) -> tuple[list[str], tuple[str, ...]]:
    """The To: addresses of the MDN built for ``headers`` and its envelope's RCPT TO."""
    return built_to(headers, return_path), mdn.mdn_envelope(headers, return_path).addresses


def test_the_mdn_goes_to_mail_from_as_the_envelope_spells_it() -> None:
    """Before: RCPT TO and To: were the header's ``claire.durand@CLINIQUE-B.TEST``."""
    headers = asking("Claire <claire.durand@CLINIQUE-B.TEST>")
    assert built(headers, CLAIRE) == ([CLAIRE], (CLAIRE,))
    assert mdn.mdn_destinations(headers, CLAIRE) == mdn.MdnDestinations((CLAIRE,), ())


def test_a_kelvin_sign_domain_is_not_the_senders_domain() -> None:
    """``"\\u212a".lower() == "k"``: before, ``alice@\\u212aevil.test`` was the sender
    ``alice@kevil.test`` and got the MDN addressed to the look-alike."""
    kelvin = "alice@\u212aevil.test"
    assert not mdn.same_mailbox(kelvin, "alice@kevil.test")
    assert not mdn.should_send_mdn(asking(kelvin), "alice@kevil.test")
    assert mdn.same_mailbox("alice@KEVIL.test", "alice@kevil.test")  # ASCII still folds


TRICKS = [
    f"{VICTIM} <{CLAIRE}>",
    f'"{CLAIRE}" <{VICTIM}>',
    f"{CLAIRE} ({VICTIM})",
    f'"{VICTIM}"@clinique-b.test',
    f"{CLAIRE}, {VICTIM}",
    f"group: {VICTIM}, {CLAIRE};",
    f"=?utf-8?q?claire.durand=40clinique-b.test?= <{VICTIM}>",
    f"{CLAIRE})<{VICTIM}>",
    f"{VICTIM})<{CLAIRE}>",
    f"<{CLAIRE}>{VICTIM}",
    f"<@elsewhere.test:{CLAIRE}>",
    f"{CLAIRE}@elsewhere.test",
    "claire.durand%elsewhere.test@clinique-b.test",
    f"{CLAIRE}.",
    f"{CLAIRE}\\",
    '"claire.durand"@clinique-b.test',
    f"{CLAIRE}\x00{VICTIM}",
    "(((((",
    '"\\',
    "<<<>>>",
    ":;",
]


@pytest.mark.parametrize("dnt", TRICKS)
def test_no_header_trick_makes_anyone_but_mail_from_the_destination(dnt: str) -> None:
    headers = asking(dnt)
    destinations = mdn.mdn_destinations(headers, CLAIRE)
    assert destinations.kept in ((), (CLAIRE,))
    if mdn.should_send_mdn(headers, CLAIRE):
        assert built(headers, CLAIRE) == ([CLAIRE], (CLAIRE,))
    else:
        with pytest.raises(mdn.MdnRefused):
            mdn.mdn_envelope(headers, CLAIRE)


def test_of_several_dnt_fields_only_the_first_is_read() -> None:
    """RFC 8098 §2.1 allows one field; a second one can neither add nor steer."""
    first_victim = asking(VICTIM).replace(
        b"\r\n\r\n", f"\r\nDisposition-Notification-To: {CLAIRE}\r\n\r\n".encode()
    )
    assert not mdn.should_send_mdn(first_victim, CLAIRE)
    first_sender = asking(CLAIRE).replace(
        b"\r\n\r\n", f"\r\nDisposition-Notification-To: {VICTIM}\r\n\r\n".encode()
    )
    assert built(first_sender, CLAIRE) == ([CLAIRE], (CLAIRE,))
    assert mdn.mdn_destinations(first_sender, CLAIRE).dropped == ()


# -- queue_mdn: cost, logs, audit, repeated pass -------------------------------------------


def alice_site(tmp_path: Path, pki: DevPki) -> AbstractAsyncContextManager[OpenSite]:
    return open_site(tmp_path, pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE,))


async def claimed(site: OpenSite, dnt: str) -> Claimed:
    """Claire's letter asking for an MDN at ``dnt``, added to ``inbound`` and claimed."""
    await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, letter(dnt))
    await site.inbound.recover()
    entry = await site.inbound.claim()
    assert entry is not None
    return entry


async def queued(site: OpenSite, entry: Claimed, dnt: str) -> str | None:
    """``queue_mdn`` for Alice's delivered copy (our security field on top)."""
    return await queue_mdn(
        site.config,
        site.inbound,
        site.spool.queue(RECEIVED),
        entry,
        DELIVERED_MARK + letter(dnt),
        Recipient(ALICE),
        mdn.Disposition.PROCESSED,
        site.clock(),
        audit=site.trail,
        actor="inbound-agent",
    )


async def test_queue_mdn_reads_the_header_block_once(
    dev_pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``report.split_fields`` ran 11 times for one MDN (``mdn_asked``,
    ``mdn_destinations``, ``build_mdn`` twice over, ``mdn_envelope``...)."""
    splits: list[int] = []
    real = report.split_fields

    def counted(data: bytes) -> list[tuple[str, bytes]]:
        splits.append(len(data))
        return real(data)

    monkeypatch.setattr(report, "split_fields", counted)
    monkeypatch.setattr(mdn, "split_fields", counted, raising=False)
    async with alice_site(tmp_path, dev_pki) as site:
        dnt = f"<{VICTIM}>, Claire <{CLAIRE}>"
        entry = await claimed(site, dnt)
        assert await queued(site, entry, dnt) is not None
    assert len(splits) == 1


class Lines:
    """A stand-in for the stage's logger: the event names it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]


async def test_thousands_of_dropped_addresses_log_a_bounded_number_of_lines(
    dev_pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = Lines()
    monkeypatch.setattr(mdn_queue, "log", lines)
    many = ", ".join(f"v{n}@elsewhere.test" for n in range(2000))
    async with alice_site(tmp_path, dev_pki) as site:
        entry = await claimed(site, many)
        assert await queued(site, entry, many) is None
        [event] = site.trail.of_type("inbound.mdn_recipients_dropped")
        assert event.details["dropped_count"] == "2000"  # the trail counts them all
    assert len(lines.named("inbound.mdn_recipient_dropped")) == MAX_DROPPED_LOGGED
    [rest] = lines.named("inbound.mdn_recipients_not_logged")
    assert rest["count"] == 2000 - MAX_DROPPED_LOGGED


async def test_a_control_character_in_a_dropped_address_is_data_not_a_crash(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    dnt = f"evil\x7f\u202e@elsewhere.test, <{CLAIRE}>"
    async with alice_site(tmp_path, dev_pki) as site:
        entry = await claimed(site, dnt)
        assert await queued(site, entry, dnt) is not None
        [event] = site.trail.of_type("inbound.mdn_recipients_dropped")
        assert event.details["dropped"] == "evil\x7f\u202e@elsewhere.test"


async def test_a_repeated_pass_queues_one_mdn_and_records_the_drop_again(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """Crash recovery runs ``queue_mdn`` again for the same entry: the hand-off key
    gives the same MDN (one in ``received``), the audit event is written again with
    the same ``details.mdn`` (decision: at-least-once trail, stage docstring)."""
    dnt = f"<{VICTIM}>, <{CLAIRE}>"
    async with alice_site(tmp_path, dev_pki) as site:
        entry = await claimed(site, dnt)
        first = await queued(site, entry, dnt)
        second = await queued(site, entry, dnt)
        assert first is not None and first == second
        [(mdn_envelope, _)] = await entries(site.spool, RECEIVED, "incoming")
        assert mdn_envelope.addresses == (CLAIRE,)
        events = site.trail.of_type("inbound.mdn_recipients_dropped")
        assert [e.details["mdn"] for e in events] == [first, first]
