"""Quarantine retention: purge what the inbound agent held in ``inbound/hold/`` too long.

Role (issue 7: "undecryptable or untrusted per policy -> held in quarantine (0700,
retention-bound) with a DSN to the sender"): the inbound agent (``gateway.inbound.stage``)
puts such a message in the spool's ``inbound/hold/`` and its sender gets a failure DSN
at that moment. This module bounds how long the quarantined copy stays there:
``purge_expired`` deletes every quarantined entry held longer than ``[inbound]
quarantine_retention``, through ``Queue.delete`` (the ``spool.deleted`` audit event
comes first, with the reason ``PURGE_REASON``; the tombstone rules of
``gateway.spool.tombstones`` are the queue's). ``run_quarantine_sweeper`` calls it
every ``interval`` until ``stop`` is set; it runs in the inbound worker.

Which held entries expire (decided here; docs/operations.md says it to the sysadmin):

- **only the inbound agent's quarantine**: an entry whose record carries the note the
  agent writes when it quarantines (``stage.HELD_REASON``). An operator's ``missive
  queue hold ID`` moves the file without rewriting its record, so an entry an operator
  held from ``incoming/`` or ``deferred/`` has no such note and never expires: an
  operator who holds a message means "keep it until I decide";
- **not an entry held after an internal error** (``consumer.guarded``: "inbound agent
  error: <type>"): no DSN went to its sender, so deleting it would lose a message that
  got ``250`` without telling anyone; it waits for an operator, like a ``corrupt/`` file;
- unreadable files in ``hold/`` are never touched (``missive queue`` shows them).

When an entry was held: the record's state time (``EntryState.updated``, written by
the agent's hold) or, if later, the file's inode change time (``st_ctime``). A rename
changes ``st_ctime`` (Linux: ext4, XFS, tmpfs), so the count restarts whenever the file
was moved after the agent's hold. This covers the one case the record cannot tell
apart: a quarantined entry that an operator released and then held again before the
agent claimed it (the worker was stopped) still carries the agent's note and hold
time; counted from the re-hold, it gets a full retention period again. A spool copied
elsewhere (``cp -a`` keeps the mtime, not the ctime) restarts the count the same way.
Both err on the side of keeping a message longer, never shorter.

Why a minimum of one day (``QUARANTINE_RETENTION_MINIMUM``, checked when the
configuration is read): a sysadmin must have time to look at a quarantined message
(a missing key, an expired certificate of a partner) and release it, and the sender
time to answer the DSN, before it disappears for good.

No DSN at purge: the sender was told when the message was quarantined (RFC 3461: one
failure notice per recipient). The purged content was never decrypted (the agent keeps
the message as received), and no Subject or body is logged.

Race with an operator: ``purge_expired`` checks the entry is still in ``hold/`` right
before ``Queue.delete``, which is called with ``only_from=("hold",)``: an entry
released or deleted meanwhile is skipped (``EntryNotFound`` / ``EntryStateError``),
never deleted from ``incoming/``.

Trust level: runs in the inbound worker next to the inbound agent; reads records only
(never content) and deletes through the queue API.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.config.model import QUARANTINE_RETENTION_MINIMUM
from gateway.inbound.stage import HELD_REASON
from gateway.log import get_logger
from gateway.spool import EntryInfo, EntryNotFound, EntryStateError, Queue, QueueRecord
from gateway.spool.consumer import sleep_unless

log = get_logger("inbound.quarantine")

PURGE_REASON = "quarantine retention expired"
DEFAULT_SWEEP_INTERVAL = 3600.0  # seconds; retention is counted in days


@dataclass(frozen=True)
class QuarantinedEntry:
    """One entry of ``hold/`` that the inbound agent quarantined, and since when."""

    name: str
    held_since: datetime

    def expired(self, retention: timedelta, now: datetime) -> bool:
        return now - self.held_since > retention


def is_quarantined(record: QueueRecord) -> bool:
    """True if the inbound agent's quarantine put this record on hold (module docstring):
    not an operator's hold, not a hold after an internal error."""
    return record.state.note == HELD_REASON


def check_retention(retention: timedelta) -> None:
    """``ValueError`` unless ``retention`` is at least ``QUARANTINE_RETENTION_MINIMUM``."""
    if retention < QUARANTINE_RETENTION_MINIMUM:
        raise ValueError(
            f"quarantine retention {retention} is below the minimum {QUARANTINE_RETENTION_MINIMUM}"
        )


def _changed_at(info: EntryInfo) -> datetime | None:
    """The file's inode change time (UTC), or None if it is gone."""
    try:
        return datetime.fromtimestamp(os.stat(info.path).st_ctime, UTC)
    except FileNotFoundError:
        return None


def quarantined(info: EntryInfo) -> QuarantinedEntry | None:
    """``info`` as a quarantined entry, or None (unreadable, not the agent's, gone)."""
    if info.record is None or not is_quarantined(info.record):
        return None
    changed = _changed_at(info)
    if changed is None:
        return None
    return QuarantinedEntry(info.name, max(info.record.state.updated, changed))


async def _quarantine_of(queue: Queue) -> list[QuarantinedEntry]:
    infos = await queue.scan("hold")
    found = await asyncio.to_thread(lambda: [quarantined(info) for info in infos])
    return [entry for entry in found if entry is not None]


async def purge_expired(queue: Queue, retention: timedelta, now: datetime) -> list[str]:
    """Delete every quarantined entry of ``queue``'s ``hold/`` held for longer than
    ``retention`` at ``now``; return their ids, in id order.

    ``ValueError`` if ``retention`` is below ``QUARANTINE_RETENTION_MINIMUM`` (the
    configuration refuses it already). Audit and spool errors propagate: the entry
    being deleted stays (``Queue.delete`` undoes its move when the event cannot be
    recorded), and the next sweep tries again."""
    check_retention(retention)
    purged: list[str] = []
    for entry in await _quarantine_of(queue):
        if not entry.expired(retention, now):
            continue
        if await _delete_if_still_held(queue, entry):
            purged.append(entry.name)
    return purged


async def _delete_if_still_held(queue: Queue, entry: QuarantinedEntry) -> bool:
    if await queue.locate(entry.name) != "hold":
        return False  # released or deleted by an operator meanwhile
    try:
        await queue.delete(entry.name, PURGE_REASON, only_from=("hold",))
    except (EntryNotFound, EntryStateError) as error:
        log.info("quarantine.skipped", queue_id=entry.name, reason=str(error))
        return False
    log.info("quarantine.expired", queue_id=entry.name, held_since=_show(entry.held_since))
    return True


async def run_quarantine_sweeper(
    queue: Queue,
    retention: timedelta,
    stop: asyncio.Event,
    interval: float = DEFAULT_SWEEP_INTERVAL,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """``purge_expired`` at once, then every ``interval`` seconds, until ``stop`` is set.

    A failed sweep (spool or audit error) is logged and tried again at the next
    interval; it never stops the worker. ``ValueError`` at once for a retention below
    the minimum."""
    check_retention(retention)
    while not stop.is_set():
        try:
            purged = await purge_expired(queue, retention, clock())
        except Exception as error:  # noqa: BLE001 - a failed sweep must not stop the worker
            log.error("quarantine.sweep_failed", error=f"{type(error).__name__}: {error}")
        else:
            if purged:
                log.info("quarantine.swept", stage=queue.name, purged=len(purged))
        await sleep_unless(stop, interval)


def _show(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
