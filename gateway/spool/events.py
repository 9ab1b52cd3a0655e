"""The audit events of the spool: one per change of an entry's life, never its content.

Types (``details.stage`` is always set; ``queue_id`` whenever the id is known):

=====================  ===============================================================
``spool.added``        an entry is durably written and about to be published; the SMTP
                       ``250`` follows unless ``spool.discarded`` follows for that id
                       (``details.parent`` and ``details.key`` for a hand-off)
``spool.refused``      an entry was being written and was dropped: too large, or the
                       front refused it after DATA (``details.reason``)
``spool.discarded``    an ``added`` entry that could not be published, or an abandoned
                       partial file removed by recovery
``spool.deferred``     a stage will retry (``details.next_attempt``)
``spool.held``         moved to ``hold/`` (``details.reason``)
``spool.released``     ``hold/`` -> ``incoming/``
``spool.retried``      ``deferred/`` -> ``incoming/`` by an operator
``spool.recovered``    found in ``active/`` at a consumer's start, back to ``incoming/``
``spool.completed``    every recipient has a final status; the entry is removed
``spool.bounced``      the stage gave up on the entry; the entry is removed (its DSN was
                       queued first by the stage)
``spool.deleted``      removed by an operator (``details.reason``)
``spool.corrupt``      failed validation, moved to ``corrupt/`` (``details.reason``)
``spool.viewed``       an operator read an entry (``details.part``: headers or full)
=====================  ===============================================================

``sha256`` is the content's digest, so the trail ties each event to the exact bytes
without holding them. Addresses go into ``mail_from``/``rcpt_to``; a Subject never
does (it often names a patient).

Trust level: pure functions building ``AuditEvent``s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.audit.event import MAX_ITEMS, AuditEvent
from gateway.spool.model import Envelope, Origin, QueueRecord, RecipientStatus


class AuditTrail(Protocol):
    """What the spool needs of the audit trail (``gateway.audit.AuditSink`` is one)."""

    async def record(self, event: AuditEvent) -> object:
        """Commit ``event``; raise (``AuditWriteError``) if it was not committed."""
        ...


def entry_event(
    kind: str,
    *,
    stage: str,
    actor: str,
    queue_id: str | None,
    record: QueueRecord | None = None,
    envelope: Envelope | None = None,
    origin: Origin | None = None,
    outcome: str | None = None,
    details: Mapping[str, str] | None = None,
) -> AuditEvent:
    """``spool.<kind>`` for one entry; envelope fields come from ``record`` when known
    (else from ``envelope`` and ``origin``, for an entry that was never complete)."""
    if record is not None:
        envelope, origin = record.envelope, record.origin
    return AuditEvent(
        f"spool.{kind}",
        queue_id=queue_id,
        mail_from=None if envelope is None else envelope.mail_from,
        rcpt_to=() if envelope is None else envelope.addresses[:MAX_ITEMS],
        actor=actor,
        peer=None if origin is None else origin.client_address,
        outcome=outcome,
        sha256=None if record is None else record.content_sha256,
        details={"stage": stage, **(details or {})},
    )


def added_details(record: QueueRecord, key: str | None) -> dict[str, str]:
    """Who sent it and how: listener, TLS, client certificate, login, size, lineage."""
    origin = record.origin
    facts = {
        "size": str(record.content_length),
        "listener": origin.listener,
        "recipients": str(len(record.envelope.recipients)),
    }
    optional = {
        "tls": origin.tls_version,
        "client_dn": origin.client_cert_dn,
        "auth_login": origin.auth_login,
        "parent": record.parent,
        "key": key,
    }
    facts.update({name: value for name, value in optional.items() if value})
    return facts


def outcome_of(record: QueueRecord) -> tuple[str, dict[str, str]]:
    """``delivered``/``failed``/``partial`` and the count per status."""
    counts = {status: 0 for status in RecipientStatus}
    for state in record.state.recipients:
        counts[state.status] += 1
    details = {str(status): str(count) for status, count in counts.items() if count}
    delivered, failed = counts[RecipientStatus.DELIVERED], counts[RecipientStatus.FAILED]
    if delivered == len(record.state.recipients):
        return "delivered", details
    if failed == len(record.state.recipients):
        return "failed", details
    return "partial", details
