"""``missive worker inbound`` and ``missive worker delivery`` for real: started by the
supervisor as subprocesses, they take an encrypted letter from ``inbound/`` through
``local/`` into a Maildir, and stop cleanly (exit 0) on ``aclose``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.pki.dev import DevPki
from gateway.workers import WorkerCounts, start_workers, worker_commands
from tests.inbound.site import (
    ALICE,
    FROM_OUTSIDE,
    MAILDIR,
    SECRET,
    envelope,
    incoming_letter,
    opened_site,
    write_config,
)

PROGRAM = (sys.executable, "-P", "-m", "gateway")


def test_worker_commands_include_inbound_and_delivery(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_config(tmp_path, dev_pki, inbound=MAILDIR)
    commands = worker_commands(config, WorkerCounts(agents=1, relays=0, inbound=1, delivery=2))
    assert [name for name, _ in commands] == ["agent-1", "inbound-1", "delivery-1", "delivery-2"]
    assert commands[1][1] == (*PROGRAM, "worker", "inbound", "--config", str(config.source))


async def test_inbound_and_delivery_workers_deliver_into_the_maildir(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    new = tmp_path / "var" / "mail" / "alice.martin" / "new"
    async with opened_site(
        tmp_path, dev_pki, inbound=MAILDIR, actor="test", keys_of=(ALICE,)
    ) as site:
        message = incoming_letter(dev_pki, ALICE)
        await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, message)
        group = await start_workers(
            site.config, WorkerCounts(agents=0, relays=0, inbound=1, delivery=1), program=PROGRAM
        )
        try:
            while not (new.is_dir() and any(new.iterdir())):  # the test timeout bounds it
                for worker in group.workers:
                    assert 2 not in worker.exits, f"{worker.name} exited with a config error"
                await asyncio.sleep(0.05)
        finally:
            await group.aclose()
        assert [worker.exits for worker in group.workers] == [[0], [0]]
    [delivered] = list(new.iterdir())
    content = delivered.read_bytes()
    assert SECRET in content and b"signature=valid" in content
