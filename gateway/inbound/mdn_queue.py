"""Queueing the MDN a delivered copy asks for (moved from ``gateway.inbound.stage``).

Role: ``queue_mdn``, called by the inbound agent (``gateway.inbound.stage``) after each
``DELIVER`` / ``PASS_MARKED`` hand-off and by ``gateway.inbound.delivery`` on final
delivery; with it the logging and audit of the Disposition-Notification-To addresses
that get no MDN (``_log_dropped``, ``_MdnDrops``, ``_bounded_list``) and their bounds
(``MAX_DROPPED_SHOWN``, ``MAX_DROPPED_LOGGED``). A pure move (session 7): same code, same
log area (``inbound.stage``, so the log lines are unchanged); ``gateway.inbound.stage``
re-exports every public name.

MDNs (issue 7 item 5, RFC 8098): after a ``DELIVER`` / ``PASS_MARKED`` hand-off, when
the delivered copy asks for one (``mdn_asked`` with the envelope's MAIL FROM:
never for an MDN, a DSN or a null sender) a *processed* MDN is queued into
``received`` (``queue_mdn``; MAIL FROM:<>, ``Origin("internal")``, hand-off key
``handoff_key("mdn-processed", None, [address])`` so a repeated pass queues it once).
Decision (RFC 8098 §2.1, no user to ask): it goes only to the
Disposition-Notification-To addresses equal to that MAIL FROM
(``gateway.relay.mdn.mdn_destinations``: domain case-insensitive, local part exact),
never to a third party an outsider names; it goes to that MAIL FROM as the envelope
spells it. Each other address is dropped, logged (``inbound.mdn_recipient_dropped``,
the first ``MAX_DROPPED_LOGGED``, then one line with the number left out) and
recorded in one ``inbound.mdn_recipients_dropped`` audit event per MDN: outcome
``queued`` (the MDN went to the sender, ``details.mdn`` its id) or ``withheld`` (none
left: no MDN). Decision (session 7 review, R2): a pass repeated after a crash records
that event again, as it records ``inbound.processed`` again: the trail is
at-least-once, the MDN itself is queued once (same hand-off key, same
``details.mdn``), and a reader counts drops per (queue id, recipient, disposition).
The header block is read once per MDN (``gateway.relay.mdn.read_request``), and not at
all when no field of it is named Disposition-Notification-To (a byte search of the
lower-cased block: ``read_request`` reads field names in ASCII and compares them
lower-cased, so the search misses no field it would find).
``gateway.inbound.delivery`` queues the *dispatched* MDN the same way on final
delivery when ``X-DIRECT-FINAL-DESTINATION-DELIVERY`` is asked. Design decision: the
MDN is queued *in clear* and the secure agent protects it like any outbound message
from this gateway (``gateway.relay.agent``): it signs it (an internal message has no
authenticated login, so with ``keys.organisation_signing``; no signing key -> the
agent defers it, fail closed) and, on an ``smime`` route where the annuaire has the
original sender's certificate, encrypts it to that certificate; otherwise the route's
fallback applies, as for any mail. Signing here with the recipient's personal key
would make the agent wrap an already signed message a second time (triple wrapping,
RFC 2634) for no gain in trust. The MDN is built from the delivered copy's header
block but only its addressing fields and Message-ID are read (``build_mdn``): no
Subject, no body, no third part. None is sent for a copy whose content came under a
CBC cipher without a valid signature (``headers.notifications_allowed``, read from
our own ``Missive-Security``): its addressing fields may be an attacker's chosen
text (EFAIL), and an MDN for some such messages and not others would be a padding
oracle (``gateway.inbound.process``).

Invariants: the hand-off key depends on the disposition and the recipient only
(``handoff_key("mdn-<disposition>", None, [address])``), so a repeated pass writes
nothing twice; nothing is read from the delivered copy but its header block.

Security: no Subject and no body go into an MDN or a log line; a dropped address is an
envelope-level fact (``gateway.log`` quotes and escapes it) and its audit value is bounded
(``MAX_DROPPED_SHOWN`` characters). RFC 8098 §2.1 (to whom), RFC 3461 §6.1 (never to a
null sender), RFC 2634 (no triple wrapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.audit import AuditEvent
from gateway.config import Config
from gateway.inbound import headers
from gateway.log import get_logger
from gateway.relay import notices
from gateway.relay.agent_stage import handoff_key
from gateway.relay.mdn import (
    NO_DESTINATION,
    Disposition,
    MdnRefused,
    build_mdn,
    mdn_asked,
    mdn_destinations,
    mdn_envelope,
    read_request,
)
from gateway.relay.report import NotificationRefused
from gateway.spool import AuditTrail, Claimed, Queue, Recipient

log = get_logger("inbound.stage")  # the area of before the move: log lines unchanged

MDN_WITHHELD = "content not integrity-protected (CBC) and not validly signed"
MDN_NOT_SENDER = "Disposition-Notification-To address is not the envelope sender"
MAX_DROPPED_SHOWN = 1000  # characters of dropped addresses in one audit value (max 4 KiB)
MAX_DROPPED_LOGGED = 20  # dropped addresses logged one per line, per MDN (_log_dropped)
# Without this name (ASCII case-insensitively) in the header block, ``read_request``
# finds no Disposition-Notification-To field, so ``mdn_asked`` is False: most messages
# skip the field parse (~15 us CPU, measured).
_ASKING_FIELD = b"disposition-notification-to"


async def queue_mdn(
    config: Config,
    source: Queue,
    received: Queue,
    entry: Claimed,
    message: bytes,
    recipient: Recipient,
    disposition: Disposition,
    now: datetime,
    *,
    audit: AuditTrail,
    actor: str,
) -> str | None:
    """Queue the MDN ``message`` asks for into ``received`` as a child of ``entry``
    (claimed from ``source``); clear: the secure agent signs and encrypts it (see the
    module docstring).

    ``message``: the copy delivered to ``recipient`` (only its header block is read, and
    only its addressing fields and Message-ID go into the MDN). None when no MDN is due
    (not asked, a notification, a null sender, no Disposition-Notification-To address
    equal to the envelope sender, a bad address). Each dropped address is logged
    (``inbound.mdn_recipient_dropped``) and the drops are recorded in ``audit`` as one
    ``inbound.mdn_recipients_dropped`` event by ``actor`` (outcome ``withheld`` or
    ``queued``). The hand-off key depends on the disposition and the recipient only: a
    repeated pass writes nothing twice.
    """
    header_block = _header_block(message)
    if _ASKING_FIELD not in header_block.lower():  # no such field: not asked (exact)
        return None
    request = read_request(header_block, entry.record.envelope.mail_from)  # read once
    if not mdn_asked(request):
        return None
    if not headers.notifications_allowed(header_block):  # EFAIL, padding oracle
        log.info("inbound.mdn_withheld", queue_id=entry.queue_id, reason=MDN_WITHHELD)
        return None
    destinations = mdn_destinations(request)
    _log_dropped(entry, disposition, destinations.dropped)
    drops = _MdnDrops(entry, recipient, disposition, destinations.dropped, actor)
    if not destinations.kept:
        log.info("inbound.mdn_withheld", queue_id=entry.queue_id, reason=NO_DESTINATION)
        await audit.record(drops.event(child=None))
        return None
    try:
        mdn = build_mdn(
            reporting_ua=config.gateway.hostname,
            original_headers=request,
            final_recipient=recipient.address,
            disposition=disposition,
            now=now,
            language=config.gateway.language,
            original_recipient=recipient.orcpt,
        )
        envelope = mdn_envelope(request)
    except (MdnRefused, NotificationRefused) as error:
        log.warning("inbound.mdn_refused", queue_id=entry.queue_id, error=str(error))
        return None
    key = handoff_key(f"mdn-{disposition.value}", None, [recipient.address])
    child = await source.hand_off(
        entry, received, key, envelope, mdn, origin=notices.INTERNAL_ORIGIN, new_message=True
    )
    if destinations.dropped:
        await audit.record(drops.event(child=child))
    log.info(
        "inbound.mdn_queued", queue_id=entry.queue_id, child=child, disposition=disposition.value
    )
    return child


def _header_block(message: bytes) -> bytes:
    """The header block of ``message`` with the CRLF ending its last field (the whole
    message when it has no empty line); the body is not copied."""
    end = message.find(b"\r\n\r\n")
    return (message if end < 0 else message[:end]) + b"\r\n"


def _log_dropped(entry: Claimed, disposition: Disposition, dropped: Sequence[str]) -> None:
    """One line per Disposition-Notification-To address that gets no MDN (the address
    is an envelope-level fact: ``gateway.log`` quotes and escapes it), for the first
    ``MAX_DROPPED_LOGGED`` of them; then one ``inbound.mdn_recipients_not_logged`` line
    with the number left out (a stranger's field may name thousands: one write and one
    flush per line on the event loop; the audit event counts them all)."""
    for address in dropped[:MAX_DROPPED_LOGGED]:
        log.info(
            "inbound.mdn_recipient_dropped",
            queue_id=entry.queue_id,
            disposition=disposition.value,
            address=address,
            reason=MDN_NOT_SENDER,
        )
    if len(dropped) > MAX_DROPPED_LOGGED:
        log.info(
            "inbound.mdn_recipients_not_logged",
            queue_id=entry.queue_id,
            disposition=disposition.value,
            count=len(dropped) - MAX_DROPPED_LOGGED,
            reason=MDN_NOT_SENDER,
        )


@dataclass(frozen=True)
class _MdnDrops:
    """The facts of the ``inbound.mdn_recipients_dropped`` audit event of one MDN."""

    entry: Claimed
    recipient: Recipient
    disposition: Disposition
    dropped: tuple[str, ...]
    actor: str

    def event(self, *, child: str | None) -> AuditEvent:
        """``withheld`` (no MDN: ``child`` None) or ``queued`` (the MDN ``child`` went
        to the addresses that were kept); the dropped addresses in ``details``."""
        details = {
            "disposition": self.disposition.value,
            "reason": NO_DESTINATION if child is None else MDN_NOT_SENDER,
            "dropped": _bounded_list(self.dropped),
            "dropped_count": str(len(self.dropped)),
        }
        if child is not None:
            details["mdn"] = child
        return AuditEvent(
            type="inbound.mdn_recipients_dropped",
            queue_id=self.entry.queue_id,
            mail_from=self.entry.record.envelope.mail_from,
            rcpt_to=(self.recipient.address,),
            actor=self.actor,
            outcome="withheld" if child is None else "queued",
            details=details,
        )


def _bounded_list(addresses: Sequence[str], limit: int = MAX_DROPPED_SHOWN) -> str:
    """``a, b, c`` within ``limit`` characters (an audit value is bounded), then
    ``(+N more)`` for those left out."""
    shown: list[str] = []
    size = 0
    for address in addresses:
        size += len(address) + 2
        if size > limit:
            break
        shown.append(address)
    left_out = len(addresses) - len(shown)
    more = f"(+{left_out} more)" if left_out else ""
    return " ".join(part for part in (", ".join(shown), more) if part)
