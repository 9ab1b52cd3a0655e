"""The ``relay.attempt`` audit event: one per delivery attempt of a group of recipients.

Role: what the relay stage (``gateway.relay.relay_stage``, which imports this module)
records in the audit trail after each call of the client: route, MX host, TLS version,
peer DN and certificate serial, per-recipient outcome, SHA-256 of the content sent; the
spool records ``deferred``/``completed``/``bounced`` itself. ``ACTOR`` is the name the
relay worker acts under in the trail and the spool.

Invariants: every value is bounded (at most ``MAX_AUDITED_RECIPIENTS`` per-recipient
details, ``MAX_AUDITED_RCPT_TO`` addresses, ``MAX_DETAIL`` characters of a reply), so
that no envelope or peer can make the event invalid: an event that cannot be recorded
would send the entry round again (a duplicate).

Security notes: nothing of the content, and no Subject, is in the event; of an
authenticated session only the login, never a password.

Trust level: pure function; no I/O, no keys, no logging.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.audit import AuditEvent
from gateway.config.model import Route
from gateway.relay.attempt_plan import MAX_DETAIL, reply_text
from gateway.relay.smtp_reply import DeliveryResult
from gateway.spool import QueueRecord

ACTOR = "relay"
MAX_AUDITED_RECIPIENTS = 24  # per-recipient details of one event (the trail allows 32)
MAX_AUDITED_RCPT_TO = 1000  # the trail's MAX_ITEMS


def attempt_event(
    route: Route,
    record: QueueRecord,
    indexes: Sequence[int],
    result: DeliveryResult,
) -> AuditEvent:
    """The ``relay.attempt`` audit event of one delivery (no content, no Subject)."""
    recipients = [record.envelope.recipients[i].address for i in indexes]
    outcomes = [result.per_recipient[address] for address in recipients]
    # Every value bounded, so that no envelope or peer can make the event invalid (an
    # event that cannot be recorded would send the entry round again: a duplicate).
    kinds = {
        "delivered" if o.delivered else "failed" if o.permanent else "deferred" for o in outcomes
    }
    details: dict[str, str] = {
        "route": route.name,
        "mx_host": result.mx_host or "",
        "tls_version": result.tls_version or "none",
        "peer_verified": "yes" if result.peer_verified else "no",
        "auth": (result.auth_user or "none")[:MAX_DETAIL],  # the login, never a password
        "dsn_passed": "yes" if result.dsn_passed else "no",
    }
    if result.attempts:
        details["hosts_failed"] = "; ".join(result.attempts)[:1000]
    for position, (address, outcome) in enumerate(zip(recipients, outcomes, strict=True)):
        if position == MAX_AUDITED_RECIPIENTS:
            details["rcpt.more"] = str(len(recipients) - position)
            break
        details[f"rcpt.{position}"] = f"{address[:MAX_DETAIL]} {reply_text(outcome)}"
    return AuditEvent(
        "relay.attempt",
        queue_id=record.queue_id,
        mail_from=record.envelope.mail_from,
        rcpt_to=tuple(address[:MAX_DETAIL] for address in recipients[:MAX_AUDITED_RCPT_TO]),
        actor=ACTOR,
        peer=result.peer_dn[:1000] if result.peer_dn else None,
        cert_serials=(result.peer_cert_serial,) if result.peer_cert_serial else (),
        outcome=kinds.pop() if len(kinds) == 1 else "mixed",
        sha256=record.content_sha256,
        details=details,
    )
