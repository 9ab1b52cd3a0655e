"""Entries in flight (issue 7 Speed): ``consumer.drain`` keeps at most ``concurrency``
entries going and waits for them all; the inbound stage and local delivery with several
entries in flight deliver each message exactly once, whatever order they finish in,
read back from the real Dovecot over IMAP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.inbound.delivery import LocalDelivery
from gateway.inbound.stage import InboundStage
from gateway.pki.dev import DevPki
from gateway.smime.keystore import KeyStore
from gateway.spool import LOCAL, Claimed, Queue
from gateway.spool.consumer import drain
from tests.inbound.site import (
    ALICE,
    FROM_OUTSIDE,
    MAILDIR,
    entries,
    envelope,
    lmtp_to,
    message_ids,
    numbered,
    opened_site,
    real_now,
    seal,
)
from tests.peers.dovecot import DovecotInstance

COUNT = 12


class ListQueue:
    """Just enough of a ``Queue`` for ``consumer.drain``: ``claim`` pops names."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)

    async def claim(self) -> str | None:
        return self.names.pop(0) if self.names else None


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_drain_bounds_the_entries_in_flight_and_waits_for_all(
    concurrency: int,
) -> None:
    in_flight, most, done = 0, 0, []

    async def process(name: Claimed) -> str | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(3):  # let the others run
            await asyncio.sleep(0)
        in_flight -= 1
        done.append(name)
        return None if str(name) == "e4" else f"outcome of {name}"

    names = [f"e{i}" for i in range(10)]
    queue = ListQueue(names)
    outcomes = await drain(queue, process, concurrency=concurrency)  # type: ignore[arg-type]
    assert most == concurrency
    assert sorted(map(str, done)) == sorted(names)  # each entry processed once
    assert sorted(outcomes) == sorted(f"outcome of {n}" for n in names if n != "e4")


async def test_a_stage_needs_at_least_one_entry_in_flight(dev_pki: DevPki, tmp_path: Path) -> None:
    async with opened_site(tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent") as site:
        keys = KeyStore.load(site.config.keys.dir)
        with pytest.raises(ValueError, match="concurrency"):
            InboundStage(site.config, site.spool, keys, None, site.trail, concurrency=0)
        with pytest.raises(ValueError, match="concurrency"):
            LocalDelivery(site.config, site.spool, site.trail, concurrency=0)
        with pytest.raises(ValueError, match="connection"):
            LocalDelivery(site.config, site.spool, site.trail, connections=0)


@pytest.mark.peer
async def test_entries_in_flight_are_each_delivered_exactly_once(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    async with opened_site(
        tmp_path,
        dev_pki,
        inbound=lmtp_to(dovecot.lmtp_port),
        actor="inbound-agent",
        keys_of=(ALICE,),
    ) as site:
        inbound: Queue = site.inbound
        queued = [
            await inbound.add(envelope(ALICE), FROM_OUTSIDE, seal(dev_pki, numbered(i), ALICE))
            for i in range(COUNT)
        ]
        stage = await site.inbound_agent(clock=real_now, concurrency=6)
        opened = await stage.drain()
        assert sorted(o.queue_id for o in opened) == sorted(queued)
        assert {o.disposition for o in opened} == {"completed"}
        assert len({h for o in opened for h in o.handoffs}) == COUNT
        assert len(await entries(site.spool, LOCAL, "incoming")) == COUNT

        delivery = await site.local_delivery(concurrency=6, connections=2)
        delivered = await delivery.drain()
        assert [o.disposition for o in delivered] == ["completed"] * COUNT
        assert delivery.pool is not None and 1 <= delivery.pool.opened <= 2
        assert await entries(site.spool, LOCAL, "incoming") == []
    assert [e.outcome for e in site.trail.of_type("inbound.processed")] == ["deliver"] * COUNT
    assert [e.outcome for e in site.trail.of_type("delivery.local")] == ["delivered"] * COUNT
    assert message_ids(dovecot.fetch_all(ALICE)) == sorted(
        f"<m{i}@clinique-b.test>".encode() for i in range(COUNT)
    )
