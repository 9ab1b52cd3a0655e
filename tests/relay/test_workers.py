"""Worker processes for real: ``missive worker agent`` in a subprocess takes mail from
``received/``; the supervisor restarts a worker killed with SIGKILL and stops every
worker it started (by PID) on ``aclose``; a bad configuration exits 2 without a
traceback.

The workers run as ``python -m gateway.workers worker ...`` (the same ``register``
as ``missive worker``) so these tests do not depend on ``gateway.cli.COMMANDS``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import AuditEvent
from gateway.config import Config
from gateway.pki.dev import DevPki
from gateway.spool import INBOUND, RECEIVED, Envelope, Origin, Recipient, Spool
from gateway.workers import WorkerGroup, start_workers, worker_commands
from tests.relay.configs import write_site

PROGRAM = (sys.executable, "-m", "gateway")
BRUNO = "bruno.petit@chu-a.test"
ALICE = "alice.martin@chu-a.test"
MESSAGE = (
    f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: test\r\nMessage-ID: <w@chu-a.test>\r\n\r\nbody\r\n"
).encode()


class Trail:
    async def record(self, event: AuditEvent) -> object:
        return None


@pytest.fixture
async def spool_of(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[tuple[Config, Spool]]:
    config = write_site(tmp_path, dev_pki)
    spool = Spool(config.gateway.spool_dir, audit=Trail(), actor="test", max_message_size=1 << 20)
    try:
        yield config, spool
    finally:
        await spool.aclose()


async def submit(spool: Spool) -> str:
    envelope = Envelope(ALICE, (Recipient(BRUNO),))
    return await spool.queue(RECEIVED).add(envelope, Origin("submission"), MESSAGE)


async def wait_for_inbound(spool: Spool, count: int, group: WorkerGroup | None = None) -> None:
    """Poll until ``count`` entries reached inbound/ (the test timeout bounds it)."""
    while len(await spool.queue(INBOUND).scan("incoming")) < count:
        if group is not None:
            for worker in group.workers:
                assert worker.exits.count(2) == 0, "a worker exited with a config error"
        await asyncio.sleep(0.05)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_commands_name_the_config_file(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki)
    commands = worker_commands(config, agents=2, relays=1)
    assert [name for name, _ in commands] == ["agent-1", "agent-2", "relay-1"]
    assert commands[0][1] == (
        sys.executable,
        "-m",
        "gateway",
        "worker",
        "agent",
        "--config",
        str(config.source),
    )
    with pytest.raises(ValueError, match="negative"):
        worker_commands(config, agents=-1, relays=0)


async def test_supervised_agent_processes_mail_restarts_after_kill_and_stops(
    spool_of: tuple[Config, Spool],
) -> None:
    config, spool = spool_of
    group = await start_workers(config, agents=1, relays=0, program=PROGRAM)
    group.backoff_first = 0.05
    try:
        await submit(spool)
        await wait_for_inbound(spool, 1, group)
        (worker,) = group.workers
        first_pid = worker.pid
        assert first_pid is not None
        os.kill(first_pid, 9)
        while worker.restarts == 0:
            await asyncio.sleep(0.02)
        await group.wait_running("agent-1")
        assert worker.pid != first_pid and worker.exits == [-9]
        await submit(spool)
        await wait_for_inbound(spool, 2, group)
    finally:
        await group.aclose()
    second_pid = worker.pid
    assert second_pid is not None and not is_alive(second_pid)
    assert worker.exits[-1] == 0  # a clean stop on SIGTERM
    assert await spool.queue(RECEIVED).scan("active") == []


def test_worker_with_a_broken_configuration_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "missive.toml"
    bad.write_text('[gateway]\nhostname = "mx.chu-a.test"\nunknown_key = 1\n', encoding="utf-8")
    result = subprocess.run(
        [*PROGRAM, "worker", "agent", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown_key" in result.stderr
    assert "Traceback" not in result.stderr
