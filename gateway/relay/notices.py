"""Queue a DSN about a claimed spool entry: the step every stage shares.

A DSN is a message the gateway sends through its own queue (issue 6): built by the
sans-IO ``dsn.build_dsn`` from the entry's record and the original bytes, addressed by
``dsn.dsn_envelope`` (``MAIL FROM:<>``, to the original sender), and handed off into
``received/`` under a deterministic key (a crash repeats nothing) with its own arrival
time (``new_message=True``: it does not inherit its parent's lifetime). No DSN to a null
or unusable sender: ``DsnRefused`` is logged and nothing is queued.

``WHOLE_READ_LIMIT``: the relay reads an entry up to this size whole
(``Queue.read_all``, one I/O job) and streams larger ones.

Security: callers choose ``protected`` (never copy a protected Subject into a DSN that
leaves in clear) and ``ret``; no message content is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.config.model import Language
from gateway.log import get_logger
from gateway.relay.dsn import build_dsn, dsn_envelope
from gateway.relay.dsn_recipients import DsnRefused, RecipientReport
from gateway.spool import Claimed, Origin, Queue

INTERNAL_ORIGIN = Origin("internal")
WHOLE_READ_LIMIT = 1024 * 1024  # bytes: a relay entry up to this size is read in one job

_log = get_logger("relay.notices")


async def queue_dsn(
    *,
    source: Queue,
    received: Queue,
    entry: Claimed,
    original: bytes,
    reports: Sequence[RecipientReport],
    key: str,
    hostname: str,
    language: Language,
    now: datetime,
    protected: bool,
    ret: str | None,
    area: str,
) -> str | None:
    """Build the DSN for ``reports`` about ``entry`` and hand it off from ``source`` to
    ``received``; the child queue id, or None when no DSN may be sent (logged as
    ``<area>.dsn_refused``)."""
    record = entry.record
    sender = record.envelope.mail_from
    try:
        dsn = build_dsn(
            reporting_mta=hostname,
            original_sender=sender,
            recipients=reports,
            original=original,
            arrival_date=record.received,
            now=now,
            language=language,
            ret=ret,
            envid=record.envelope.params.envid,
            protected=protected,
        )
        envelope = dsn_envelope(sender)
    except DsnRefused as error:  # a null or unusable sender: nobody to tell
        _log.warning(f"{area}.dsn_refused", queue_id=entry.queue_id, error=str(error))
        return None
    child = await source.hand_off(
        entry, received, key, envelope, dsn, origin=INTERNAL_ORIGIN, new_message=True
    )
    _log.info(f"{area}.dsn_queued", queue_id=entry.queue_id, child=child)
    return child
