"""Quarantine retention (``gateway.inbound.quarantine``): what the inbound agent held in
``inbound/hold/`` longer than ``[inbound] quarantine_retention`` is deleted through the
queue (``spool.deleted`` with the reason); younger entries, entries an operator held,
entries held after an internal error and unreadable files stay; the key is parsed with
a one-day minimum."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.inbound import quarantine
from gateway.inbound.quarantine import PURGE_REASON, purge_expired, run_quarantine_sweeper
from gateway.inbound.stage import HELD_REASON
from gateway.pki.dev import DevPki
from gateway.spool import Queue
from tests.inbound.site import (
    ALICE,
    FROM_OUTSIDE,
    HOLD_UNSIGNED_CBC,
    LETTER,
    MAILDIR,
    OpenSite,
    envelope,
    incoming_letter,
    opened_site,
    real_now,
    write_config,
)

RETENTION = timedelta(days=30)
DAY = timedelta(days=1)


@pytest.fixture
async def site(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[OpenSite]:
    """A site of the inbound agent, ``inbound/`` recovered."""
    async with opened_site(tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent") as opened:
        await opened.inbound.recover()
        yield opened


def deleted(site: OpenSite) -> list[tuple[str | None, dict[str, str]]]:
    """(queue id, details) of each ``spool.deleted`` event."""
    return [(e.queue_id, dict(e.details)) for e in site.trail.of_type("spool.deleted")]


async def held_by_agent(site: OpenSite, note: str = HELD_REASON) -> str:
    """An entry claimed and held as the inbound agent does (``Queue.hold(claimed)``)."""
    queue_id = await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, LETTER)
    claimed = await site.inbound.claim()
    assert claimed is not None and claimed.queue_id == queue_id
    await site.inbound.hold(claimed, note)
    assert await site.inbound.locate(queue_id) == "hold"
    return queue_id


# -- what expires ------------------------------------------------------------------------


async def test_quarantine_older_than_the_retention_is_deleted_with_its_audit_event(
    site: OpenSite,
) -> None:
    queue_id = await held_by_agent(site)
    purged = await purge_expired(site.inbound, RETENTION, real_now() + RETENTION + DAY)
    assert purged == [queue_id]
    assert await site.inbound.locate(queue_id) is None
    [(event_id, details)] = deleted(site)
    assert event_id == queue_id
    assert details == {"stage": "inbound", "reason": PURGE_REASON, "from": "hold"}
    [event] = site.trail.of_type("spool.deleted")
    assert event.actor == "inbound-agent" and event.rcpt_to == (ALICE,)


async def test_quarantine_younger_than_the_retention_stays(site: OpenSite) -> None:
    queue_id = await held_by_agent(site)
    assert await purge_expired(site.inbound, RETENTION, real_now() + RETENTION - DAY) == []
    assert await site.inbound.locate(queue_id) == "hold"
    assert deleted(site) == []


async def test_an_entry_an_operator_held_never_expires(site: OpenSite) -> None:
    queue_id = await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, LETTER)
    await site.inbound.hold(queue_id, "asked by Dr X")  # missive queue hold: by id
    assert await site.inbound.locate(queue_id) == "hold"
    far = real_now() + timedelta(days=3650)
    assert await purge_expired(site.inbound, RETENTION, far) == []
    assert await site.inbound.locate(queue_id) == "hold"
    assert deleted(site) == []


async def test_an_entry_held_after_an_internal_error_never_expires(site: OpenSite) -> None:
    """No DSN went to its sender: deleting it would lose the message silently."""
    queue_id = await held_by_agent(site, note="inbound agent error: ValueError")
    far = real_now() + timedelta(days=3650)
    assert await purge_expired(site.inbound, RETENTION, far) == []
    assert await site.inbound.locate(queue_id) == "hold"


async def test_a_released_and_held_again_quarantine_counts_from_the_new_hold(
    site: OpenSite,
) -> None:
    """The record still says "quarantined 40 days ago" (an operator's hold does not
    rewrite it); the file's change time shows the re-hold: a full retention again."""
    site.clock.now = real_now() - timedelta(days=40)
    queue_id = await held_by_agent(site)
    site.clock.now = real_now()
    await site.inbound.release(queue_id)
    await site.inbound.hold(queue_id, "keep it, I call the sender")
    assert await purge_expired(site.inbound, RETENTION, real_now() + DAY) == []
    assert await site.inbound.locate(queue_id) == "hold"
    later = real_now() + RETENTION + DAY
    assert await purge_expired(site.inbound, RETENTION, later) == [queue_id]


async def test_an_unreadable_file_in_hold_is_left_alone(site: OpenSite) -> None:
    queue_id = await held_by_agent(site)
    junk = site.inbound.dirs.state("hold") / "01M8H4BQW0ZZ5NEQ3BDRMA3DYM"
    junk.write_bytes(b"not a queue file")
    far = real_now() + timedelta(days=3650)
    assert await purge_expired(site.inbound, RETENTION, far) == [queue_id]
    assert junk.read_bytes() == b"not a queue file"


async def test_a_retention_below_one_day_is_refused(site: OpenSite) -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        await purge_expired(site.inbound, timedelta(hours=23), real_now())
    with pytest.raises(ValueError, match="below the minimum"):
        await run_quarantine_sweeper(site.inbound, timedelta(hours=1), asyncio.Event())


async def test_the_inbound_agents_own_quarantine_expires(dev_pki: DevPki, tmp_path: Path) -> None:
    """End to end: the stage quarantines an unsigned CBC message (policy ``hold``) and
    the purge recognises that hold as quarantine."""
    async with opened_site(
        tmp_path, dev_pki, inbound=HOLD_UNSIGNED_CBC, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        message = incoming_letter(dev_pki, ALICE, cipher="aes-256-cbc", signed=False)
        queue_id = await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, message)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        assert outcome.disposition == "held"
        retention = site.config.inbound.quarantine_retention
        soon = real_now() + retention - DAY
        assert await purge_expired(site.inbound, retention, soon) == []
        late = real_now() + retention + DAY
        assert await purge_expired(site.inbound, retention, late) == [queue_id]
        assert await site.inbound.locate(queue_id) is None


# -- the sweeper -------------------------------------------------------------------------


async def test_the_sweeper_purges_then_stops(site: OpenSite) -> None:
    queue_id = await held_by_agent(site)
    stop = asyncio.Event()
    calls: list[datetime] = []

    def clock() -> datetime:  # the second sweep is the last one
        calls.append(real_now())
        if len(calls) == 2:
            stop.set()
        return real_now() + RETENTION + DAY

    await run_quarantine_sweeper(site.inbound, RETENTION, stop, interval=0, clock=clock)
    assert len(calls) == 2
    assert await site.inbound.locate(queue_id) is None
    assert [event_id for event_id, _ in deleted(site)] == [queue_id]


async def test_a_failed_sweep_does_not_stop_the_sweeper(
    site: OpenSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = asyncio.Event()
    sweeps: list[int] = []

    async def failing(queue: Queue, retention: timedelta, now: datetime) -> list[str]:
        sweeps.append(1)
        if len(sweeps) == 2:
            stop.set()
        raise OSError("disk on fire")

    monkeypatch.setattr(quarantine, "purge_expired", failing)
    await run_quarantine_sweeper(site.inbound, RETENTION, stop, interval=0)
    assert len(sweeps) == 2


# -- the configuration key ---------------------------------------------------------------


def test_quarantine_retention_defaults_to_thirty_days(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_config(tmp_path, dev_pki, inbound=MAILDIR)
    assert config.inbound.quarantine_retention == timedelta(days=30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1d", timedelta(days=1)), ("90d", timedelta(days=90)), ("2w", timedelta(weeks=2))],
)
def test_quarantine_retention_is_read(
    dev_pki: DevPki, tmp_path: Path, text: str, expected: timedelta
) -> None:
    config = write_config(tmp_path, dev_pki, inbound=f'quarantine_retention = "{text}"')
    assert config.inbound.quarantine_retention == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"23h"', 'must be at least 1d, got "23h"'),
        ('"0s"', 'must be at least 1d, got "0s"'),
        ('"soon"', "expected a duration"),
        ("30", "expected a duration"),
    ],
)
def test_a_bad_quarantine_retention_names_the_key(
    dev_pki: DevPki, tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        write_config(tmp_path, dev_pki, inbound=f"quarantine_retention = {value}")
    [line] = caught.value.problems
    assert "inbound.quarantine_retention: " in line and message in line, line
