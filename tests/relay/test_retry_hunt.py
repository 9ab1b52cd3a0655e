"""Adversarial hunt in the relay stage's retries and DSNs (session 5, H17).

Each test states the promise it attacks (module docstrings of ``gateway.relay``:
``relay_stage``, ``attempt_plan``, ``dsn``, ``notices``). The sans-IO ones drive
``plan_attempt`` and ``build_dsn`` directly; the others run the relay stage over a
spool in a temp dir against the capture sink on 127.0.0.1 (fixtures of
``tests/relay/test_relay_stage.py``).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.pki.dev import DevPki
from gateway.relay.attempt_plan import Attempted, Timing, plan_attempt
from gateway.relay.dsn import build_dsn
from gateway.relay.dsn_recipients import Action, DsnRefused, RecipientReport
from gateway.relay.smtp_reply import DeliveryResult, Outcome
from gateway.smtp.envelope import parse_rcpt
from gateway.smtp.replies import SmtpReply
from gateway.spool import (
    Envelope,
    MailParams,
    Origin,
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
    RetryPolicy,
)
from gateway.spool.model import EntryState, RecordError
from tests.peers.smtp_sink import SmtpSink
from tests.relay.test_relay_stage import (
    _delivery_status,
    running,
    write_config,
)

SENDER = "alice.martin@chu-a.test"
UTF8_SENDER = "josé.martin@chu-a.test"
BOB = "bob@clinique-b.test"
EVE = "eve@clinique-b.test"
SECRET = "Dupont Jean, resultats"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(hours=5)
POLICY = RetryPolicy(
    (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1)),
    LIFETIME,
    0.5,
)
WARNING = timedelta(hours=2)
WAIT = 20.0  # upper bound of a wait for something that should happen (never a speed check)

LATER = Outcome(451, "4.3.0", "try later", permanent=False)
REFUSED = Outcome(550, "5.1.1", "no such user", permanent=True)
OK = Outcome(250, "2.0.0", "queued", permanent=False)


def _record(
    *recipients: Recipient,
    received: datetime = NOW,
    mail_from: str = SENDER,
) -> QueueRecord:
    return QueueRecord(
        queue_id="01M8H4BQW0ZZ5NEQ3BDRMA3DYM",  # type: ignore[arg-type]
        parent=None,
        received=received,
        created=received,
        content_length=10,
        content_sha256="0" * 64,
        envelope=Envelope(mail_from, recipients),
        origin=Origin("relay"),
        state=EntryState(0, received, tuple(RecipientState() for _ in recipients)),
    )


def _tried(outcome: Outcome) -> Attempted:
    return Attempted(outcome, DeliveryResult({}, mx_host="mx.clinique-b.test", dsn_passed=True))


def _report(address: str, **extra: str) -> RecipientReport:
    return RecipientReport(address, Action.FAILED, "5.1.1", **extra)  # type: ignore[arg-type]


def _dsn(original: bytes, *, sender: str = SENDER, recipient: str = BOB) -> bytes:
    return build_dsn(
        reporting_mta="mx.chu-a.test",
        original_sender=sender,
        recipients=[_report(recipient)],
        original=original,
        arrival_date=NOW,
        now=NOW,
        protected=True,
    )


def _part(message: email.message.Message, content_type: str) -> str:
    for part in message.walk():
        if part.get_content_type() == content_type:
            payload = part.get_payload()
            if isinstance(payload, list):
                return "\n".join(str(p) for p in payload)
            return str(payload)
    raise AssertionError(f"no {content_type} part")


# -- findings: fail today ----------------------------------------------------------------


def test_protected_dsn_never_shows_a_subject_hidden_behind_a_bare_cr() -> None:
    """Promise (dsn.py): ``protected=True`` never copies the Subject. A header block
    with a bare CR (``To: ...\\rSubject: ...``) is split on LF only by
    ``report.split_fields``: the Subject rides inside the kept ``To`` field and goes
    out raw in the 7bit ``text/rfc822-headers`` part, where every reader (the stdlib
    parser included) takes the CR as a line end and shows ``Subject: <secret>``."""
    original = (
        b"From: alice.martin@chu-a.test\r\n"
        b"To: bob@clinique-b.test\rSubject: " + SECRET.encode() + b"\r\n"
        b"Message-ID: <hunt@chu-a.test>\r\n\r\nbody\r\n"
    )
    dsn = _dsn(original)
    assert SECRET.encode() not in dsn


def test_dsn_to_an_smtputf8_sender_has_a_parseable_to_address() -> None:
    """RFC 2047 §5 forbids encoded-words in an addr-spec; ``build_dsn`` wraps the whole
    ``<josé...>`` in one, so the DSN's To is no address at all (RFC 6532: UTF-8 as is)."""
    data = _dsn(b"From: x@y.test\r\n\r\n", sender=UTF8_SENDER)
    dsn = email.message_from_bytes(data, policy=email.policy.SMTPUTF8)
    assert "=?" not in str(dsn["To"]), dsn["To"]
    assert f"To: <{UTF8_SENDER}>".encode() in data


def test_delivery_status_of_an_smtputf8_recipient_has_no_encoded_word() -> None:
    """Promise (dsn.py): "no encoded-word inside ``message/delivery-status`` where RFC
    3464 does not allow one". A non-ASCII Final-Recipient (accepted by the listener
    with SMTPUTF8) becomes ``=?utf-8?q?rfc822=3B_...?=``: the field is unreadable by a
    DSN parser (RFC 6533 §3 wants ``utf-8;`` with ``\\x{HH}`` escapes, or
    ``message/global-delivery-status``)."""
    recipient = "zoé@clinique-b.test"
    dsn = email.message_from_bytes(_dsn(b"From: x@y.test\r\n\r\n", recipient=recipient))
    status = _delivery_status(dsn)
    assert "=?" not in status, status


async def test_a_dsn_to_an_smtputf8_sender_is_queued_with_smtputf8(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    """Promise (notices.py): the DSN goes through the gateway's own queue to the original
    sender. ``dsn_envelope`` keeps ``smtputf8=False`` for a non-ASCII sender, so the
    relay will send ``RCPT TO:<josé...>`` without SMTPUTF8 (RFC 6531 §3.4 violation)."""
    smtp_sink.refuse_recipient(BOB)
    async with running(write_config(tmp_path, dev_pki, smtp_sink.port)) as site:
        envelope = Envelope(UTF8_SENDER, (Recipient(BOB),), MailParams(smtputf8=True))
        content = b"From: " + UTF8_SENDER.encode() + b"\r\nSubject: x\r\n\r\nbody\r\n"
        queue_id = await site.relay.add(envelope, Origin("test"), content)
        assert await site.wait_done(queue_id) == "spool.bounced"
        ((dsn_envelope, _dsn_message),) = await site.dsns()
        assert dsn_envelope.addresses == (UTF8_SENDER,)
        assert dsn_envelope.params.smtputf8, dsn_envelope.params


async def _wait_for_event(path: Path, kind: str, queue_id: str) -> bool:
    """True once the trail holds ``kind`` for ``queue_id``; False after ``WAIT``."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                with AuditStore.open_reader(path) as store:
                    if any(
                        r.event.type == kind and r.event.queue_id == queue_id
                        for r in store.iter_records()
                    ):
                        return True
                await asyncio.sleep(0.1)
    except TimeoutError:
        return False


def test_a_peer_reply_with_a_control_character_is_still_decided() -> None:
    """Promise (attempt_plan): every 5xx is ``failed`` with a DSN, every 4xx deferred
    until ``max_lifetime``. A peer reply is read with any octet but CR LF at its end
    (``ReplyParser``): a TAB (common), ESC or a bare CR in it went through
    ``reply_text`` into ``RecipientState.last_error``, which the spool model refuses
    (``RecordError``) - ``plan_attempt`` raised, so nothing was decided at all."""
    for text in ("5.1.1 no\tsuch user", "5.1.1 no\x1b[31m such\ruser", "5.1.1 \x00"):
        refused = Outcome(550, "5.1.1", text, permanent=True)
        later = Outcome(451, "4.3.0", text.replace("5.1.1", "4.3.0"), permanent=False)
        record = _record(Recipient(BOB), Recipient(EVE))
        plan = plan_attempt(
            record, {0: _tried(refused), 1: _tried(later)}, Timing(NOW, POLICY, WARNING)
        )
        assert [s.status for s in plan.states] == [
            RecipientStatus.FAILED,
            RecipientStatus.DEFERRED,
        ]
        assert [(n.action, n.indexes) for n in plan.notices] == [(Action.FAILED, (0,))]


async def test_a_refusal_with_a_tab_neither_loops_nor_delivers_twice(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    """The same at the stage: BOB accepted, EVE refused with ``550 5.1.1 no<TAB>such
    user``. Before the fix the plan raised, ``_defer_after_error`` put the entry back
    unchanged, and every retry (1 s here) sent the message to BOB again, for ever
    (never expired, no DSN)."""
    smtp_sink.refuse_recipient(EVE, 550, "5.1.1 no\tsuch user")
    async with running(write_config(tmp_path, dev_pki, smtp_sink.port)) as site:
        queue_id = await site.add(Recipient(BOB), Recipient(EVE))
        done = await _wait_for_event(site.config.audit.path, "spool.completed", queue_id)
        delivered = len(smtp_sink.messages)
        dsns = await site.dsns()
    assert done, f"entry never completed; delivered {delivered} times"
    assert delivered == 1
    ((_envelope, dsn),) = dsns
    assert "Action: failed" in _delivery_status(dsn)


# -- tried and held: regression tests ---------------------------------------------------


def _run_until_final(
    record: QueueRecord, outcome: Outcome, now: datetime, rng: random.Random
) -> tuple[datetime, list[Action]]:
    """Replay the stage's loop sans-IO: each attempt at the planned time, ``outcome``
    for every recipient, the state and note carried on as ``Queue.defer`` does."""
    actions: list[Action] = []
    for _ in range(1000):
        tried = {
            i: _tried(outcome) for i, (_, s) in enumerate(record.recipients) if not s.status.final
        }
        plan = plan_attempt(record, tried, Timing(now, POLICY, WARNING, rng))
        actions += [notice.action for notice in plan.notices]
        if plan.next_attempt is None:
            return now, actions
        assert plan.next_attempt <= POLICY.expires(record.received)
        record = record.with_state(now, plan.states, next_attempt=plan.next_attempt, note=plan.note)
        now = plan.next_attempt
    raise AssertionError("never final")


def test_4xx_forever_bounces_exactly_at_max_lifetime_with_one_delayed_dsn() -> None:
    for seed in range(20):
        end, actions = _run_until_final(
            _record(Recipient(BOB), Recipient(EVE)), LATER, NOW, random.Random(seed)
        )
        assert end == NOW + LIFETIME
        assert actions == [Action.DELAYED, Action.FAILED]


def test_notify_delay_only_gets_the_delay_but_no_failure_dsn() -> None:
    _, actions = _run_until_final(
        _record(Recipient(BOB, notify=("DELAY",))), LATER, NOW, random.Random(1)
    )
    assert actions == [Action.DELAYED]


def test_a_message_from_the_null_sender_that_fails_gets_no_dsn() -> None:
    _, actions = _run_until_final(
        _record(Recipient(BOB), mail_from=""), LATER, NOW, random.Random(2)
    )
    assert actions == []


def test_clock_backwards_neither_expires_nor_warns_early() -> None:
    record = _record(Recipient(BOB), received=NOW)
    before = NOW - timedelta(days=3)
    plan = plan_attempt(record, {0: _tried(LATER)}, Timing(before, POLICY, WARNING))
    assert plan.states[0].status is RecipientStatus.DEFERRED
    assert plan.notices == () and plan.next_attempt is not None and plan.next_attempt > before


def test_clock_forward_past_the_lifetime_fails_with_5_4_7_only() -> None:
    record = _record(Recipient(BOB), received=NOW)
    later = NOW + timedelta(days=30)
    plan = plan_attempt(record, {0: _tried(LATER)}, Timing(later, POLICY, WARNING))
    ((notice),) = plan.notices
    assert notice.action is Action.FAILED and notice.reports[0].status == "5.4.7"
    assert plan.next_attempt is None


def test_5xx_and_4xx_in_one_transaction_then_a_later_delay_lists_only_the_deferred() -> None:
    record = _record(Recipient(BOB), Recipient(EVE))
    plan = plan_attempt(
        record, {0: _tried(REFUSED), 1: _tried(LATER)}, Timing(NOW, POLICY, WARNING)
    )
    assert [(n.action, n.indexes) for n in plan.notices] == [(Action.FAILED, (0,))]
    record = record.with_state(NOW, plan.states, next_attempt=plan.next_attempt, note=plan.note)
    later = NOW + WARNING
    plan = plan_attempt(record, {1: _tried(LATER)}, Timing(later, POLICY, WARNING))
    assert [(n.action, n.indexes) for n in plan.notices] == [(Action.DELAYED, (1,))]


@pytest.mark.parametrize(
    "orcpt",
    ["rfc822;bob+0D+0ABcc:x@evil.test", "rfc822;bob+0Ax", "rfc822;bob+C3+A9@x.test"],
)
def test_orcpt_with_cr_lf_or_non_ascii_is_refused_at_rcpt(orcpt: str) -> None:
    with pytest.raises(SmtpReply):
        parse_rcpt(f"<{BOB}> ORCPT={orcpt}", smtputf8=True)


def test_cr_lf_in_envelope_values_never_reach_a_dsn_header() -> None:
    with pytest.raises(RecordError):
        Recipient(BOB, orcpt="rfc822;bob\r\nBcc: x@evil.test")
    with pytest.raises(RecordError):
        MailParams(envid="id\r\nBcc: x@evil.test")
    with pytest.raises(DsnRefused):
        _report(BOB, original_recipient="rfc822;bob\rX: y")


async def test_ret_full_with_an_envid_gets_headers_only_and_the_envid(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    """RET=FULL is downgraded to the allowed headers (the relay always builds with
    ``protected=True``); the ENVID, xtext-decoded, comes back as Original-Envelope-Id."""
    smtp_sink.refuse_recipient(BOB)
    envid = "QQ+id=" + "x" * 90
    body = b"Compte rendu confidentiel"
    content = (
        b"From: " + SENDER.encode() + b"\r\nTo: " + BOB.encode() + b"\r\n"
        b"Subject: " + SECRET.encode() + b"\r\n\r\n" + body + b"\r\n"
    )
    async with running(write_config(tmp_path, dev_pki, smtp_sink.port)) as site:
        envelope = Envelope(SENDER, (Recipient(BOB),), MailParams(ret="FULL", envid=envid))
        queue_id = await site.relay.add(envelope, Origin("test"), content)
        assert await site.wait_done(queue_id) == "spool.bounced"
        ((_envelope, dsn),) = await site.dsns()
    raw = dsn.as_bytes()
    assert SECRET.encode() not in raw and body not in raw
    assert [p.get_content_type() for p in dsn.walk()][-1] == "text/rfc822-headers"
    unfolded = re.sub(r"\n[ \t]+", " ", _delivery_status(dsn))
    assert re.search(rf"^Original-Envelope-Id: +{re.escape(envid)}$", unfolded, re.M)
    assert all(len(line) <= 998 for line in raw.splitlines())


async def test_a_retry_after_a_restart_continues_from_the_persisted_state(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    """Stop the stage while an entry waits in ``deferred/``: its per-recipient state
    (attempts, last error, next attempt) is in the spool; a new stage goes on from it."""
    smtp_sink.fail_next("RCPT", 451, count=1)
    config = write_config(tmp_path, dev_pki, smtp_sink.port, retry='["1h"]')
    async with running(config) as site:
        queue_id = await site.add(Recipient(BOB))
        assert await _wait_for_event(config.audit.path, "spool.deferred", queue_id)
    async with running(config, serve=False) as site:
        (info,) = await site.relay.scan("deferred")
        assert info.record is not None
        (state,) = info.record.state.recipients
        assert state.status is RecipientStatus.DEFERRED and state.attempts == 1
        assert (state.last_error or "").startswith("451 4.3.0")
        await site.relay.retry(queue_id)  # an operator: try now
    async with running(config) as site:
        assert await site.wait_done(queue_id) == "spool.completed"
        outcomes = [e.outcome for e in site.audit_events("relay.attempt")]
    assert outcomes == ["deferred", "delivered"] and len(smtp_sink.messages) == 1


async def test_an_entry_of_a_removed_route_still_expires_with_a_failure_dsn(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    """Promise (issue 6 item 3): every entry is failed with a DSN once ``max_lifetime``
    is over. An entry in ``relay/clinique-b`` whose route was removed from the
    configuration was never claimed again: the stage served the configured routes only,
    and the sender never heard of it. Here the stage's clock is 2 h past a 1 h
    lifetime; nothing may be sent anywhere."""
    later = datetime.now(UTC) + timedelta(hours=2)
    config = write_config(tmp_path, dev_pki, smtp_sink.port)
    async with running(config, routes=(), clock=lambda: later) as site:
        queue_id = await site.add(Recipient(BOB))
        assert await site.wait_done(queue_id) == "spool.bounced"
        ((envelope, dsn),) = await site.dsns()
    assert envelope.addresses == (SENDER,)
    assert "Action: failed" in str(dsn) and "Status: 5.4.7" in str(dsn)  # expired
    assert smtp_sink.messages == []


async def test_an_entry_of_a_removed_route_waits_until_its_lifetime(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    """Before ``max_lifetime`` it is deferred (4.3.5), not lost and not sent."""
    config = write_config(tmp_path, dev_pki, smtp_sink.port)
    async with running(config, routes=()) as site:
        queue_id = await site.add(Recipient(BOB))
        async with asyncio.timeout(10):
            while await site.relay.locate(queue_id) != "deferred":
                await asyncio.sleep(0.05)
        [info] = await site.relay.scan("deferred")
        assert info.record is not None
        assert "no longer configured" in (info.record.state.recipients[0].last_error or "")
    assert smtp_sink.messages == []
