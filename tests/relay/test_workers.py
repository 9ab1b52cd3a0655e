"""Worker processes for real: ``missive worker agent`` in a subprocess takes mail from
``received/``; the supervisor restarts a worker killed with SIGKILL and stops every
worker it started (by PID) on ``aclose``; a bad configuration exits 2 without a
traceback. Several secure agents run at once, each in its consumer slot
(``[gateway] crypto_workers``, ``--slot K``). ``WorkerCounts`` says how many workers of
each kind ``serve`` starts; it is checked when built.

The workers run as ``python -m gateway.workers worker ...`` (the same ``register``
as ``missive worker``) so these tests do not depend on ``gateway.cli.COMMANDS``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from gateway.audit import AuditEvent
from gateway.config import Config, ImapFetch, load_config
from gateway.errors import ConfigError
from gateway.pki.dev import DevPki
from gateway.spool import INBOUND, RECEIVED, Envelope, Origin, Recipient, Spool
from gateway.spool.layout import StageDirs
from gateway.spool.stagefiles import ConsumerLock
from gateway.workers import (
    ORPHAN_CHECK_EVERY,
    WorkerCounts,
    WorkerGroup,
    crypto_worker_count,
    start_workers,
    worker_commands,
)
from tests.relay.configs import write_site
from tests.together import gone

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


async def until_locked(dirs: StageDirs, slot: int) -> None:
    """Poll until a worker holds ``slot``'s consumer lock (the test timeout bounds it)."""
    while True:
        probe = ConsumerLock(dirs, slot)
        if not probe.try_acquire():
            return
        probe.release()  # nobody holds it yet: give it back at once
        await asyncio.sleep(0.05)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_commands_name_the_config_file(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki)
    commands = worker_commands(config, WorkerCounts(agents=2, relays=1))
    assert [name for name, _ in commands] == ["agent-1", "agent-2", "relay-1"]
    assert commands[0][1] == (
        sys.executable,
        "-P",  # the directory serve runs in is not on the worker's module path
        "-m",
        "gateway",
        "worker",
        "agent",
        "--config",
        str(config.source),
    )
    with pytest.raises(ValueError, match="negative"):
        worker_commands(config, WorkerCounts(agents=-1, relays=0))


async def test_supervised_agent_processes_mail_restarts_after_kill_and_stops(
    spool_of: tuple[Config, Spool],
) -> None:
    config, spool = spool_of
    group = await start_workers(config, WorkerCounts(agents=1, relays=0), program=PROGRAM)
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


def with_gateway_key(config: Config, line: str) -> Path:
    """``config``'s file with ``line`` added to ``[gateway]``."""
    text = config.source.read_text(encoding="utf-8")
    config.source.write_text(text.replace("[gateway]\n", f"[gateway]\n{line}\n", 1), "utf-8")
    return config.source


def test_each_crypto_worker_gets_its_slot(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki)
    commands = dict(
        worker_commands(config, WorkerCounts(agents=3, relays=2, inbound=2), program=("m",))
    )
    base = ("--config", str(config.source))
    assert commands["agent-1"] == ("m", "worker", "agent", *base)  # slot 0: as before
    assert commands["agent-2"] == ("m", "worker", "agent", *base, "--slot", "1")
    assert commands["agent-3"] == ("m", "worker", "agent", *base, "--slot", "2")
    assert commands["inbound-2"] == ("m", "worker", "inbound", *base, "--slot", "1")
    assert commands["relay-2"] == ("m", "worker", "relay", *base)  # a standby of slot 0
    with pytest.raises(ValueError, match="at most 64"):
        worker_commands(config, WorkerCounts(agents=65, relays=0))


def test_serve_starts_the_workers_its_configuration_asks_for(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """``WorkerCounts.from_config``: what ``serve`` starts, in the order it starts them."""
    config = write_site(tmp_path, dev_pki)  # smtp routes, no IMAP fetcher, one front
    crypto = crypto_worker_count(config)
    assert WorkerCounts.from_config(config) == WorkerCounts(
        agents=crypto, relays=1, inbound=crypto, delivery=1
    )
    fetcher = ImapFetch(
        url="imaps://127.0.0.1:9993/INBOX",
        user="bal",
        password_file=tmp_path / "password",
        deliver_to_address=ALICE,
    )
    bigger = replace(
        config,
        gateway=replace(config.gateway, crypto_workers=2, front_workers=3),
        routes=tuple(route for route in config.routes if route.transport != "smtp"),
        inbound=replace(config.inbound, imap_fetch=(fetcher,)),
    )
    counts = WorkerCounts.from_config(bigger)
    assert counts == WorkerCounts(agents=2, relays=0, inbound=2, delivery=1, imap=1, fronts=2)
    assert [name for name, _ in worker_commands(bigger, counts, program=("m",))] == [
        "front-1",
        "front-2",
        "agent-1",
        "agent-2",
        "inbound-1",
        "inbound-2",
        "delivery-1",
        "imap-1",
    ]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"relays": -1}, "negative"),
        ({"imap": -1}, "negative"),
        ({"fronts": -1}, "negative"),
        ({"inbound": 65}, "at most 64"),
        ({"fronts": 64}, "at most 63 front workers"),
    ],
)
def test_worker_counts_are_checked_when_built(counts: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerCounts(**counts)


def test_worker_counts_are_one_frozen_value() -> None:
    counts = WorkerCounts(agents=2)
    with pytest.raises(FrozenInstanceError):
        counts.agents = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        WorkerCounts(2)  # type: ignore[call-arg]  # keywords only: six ints are easy to swap
    assert counts == WorkerCounts(agents=2, relays=0, inbound=0, delivery=0, imap=0, fronts=0)


def test_crypto_workers_comes_from_the_configuration(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki)
    assert config.gateway.crypto_workers == 0
    assert crypto_worker_count(config) == len(os.sched_getaffinity(0))  # one per core
    assert crypto_worker_count(load_config(with_gateway_key(config, "crypto_workers = 3"))) == 3


def test_a_bad_crypto_workers_value_names_the_key(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki)
    with pytest.raises(ConfigError) as raised:
        load_config(with_gateway_key(config, "crypto_workers = 65"))
    assert any("gateway.crypto_workers" in problem for problem in raised.value.problems)


@pytest.mark.parametrize(
    ("kind", "slot", "message"), [("agent", "64", "expected 0 to 63"), ("imap", "1", "no slot")]
)
def test_a_bad_slot_exits_2_without_traceback(
    dev_pki: DevPki, tmp_path: Path, kind: str, slot: str, message: str
) -> None:
    config = write_site(tmp_path, dev_pki)
    result = subprocess.run(
        [*PROGRAM, "worker", kind, "--config", str(config.source), "--slot", slot],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


async def test_two_agents_consume_received_at_once(spool_of: tuple[Config, Spool]) -> None:
    config, spool = spool_of
    group = await start_workers(config, WorkerCounts(agents=2, relays=0), program=PROGRAM)
    slot_one = spool.queue(RECEIVED).dirs.active(1)
    try:
        for _ in range(6):
            await submit(spool)
        await wait_for_inbound(spool, 6, group)
        while not slot_one.is_dir():  # made by slot 1's recovery (the test timeout bounds it)
            await asyncio.sleep(0.05)
        # slot 1 may have done all the work while slot 0 was still starting: stopping a
        # worker before it took its lock (still importing) is not what is checked here
        await until_locked(spool.queue(RECEIVED).dirs, 0)
    finally:
        await group.aclose()
    assert [worker.exits for worker in group.workers] == [[0], [0]]
    assert await spool.queue(RECEIVED).scan("active") == []
    assert len(await spool.queue(INBOUND).scan("incoming")) == 6


@pytest.mark.parametrize("started_by_serve", [True, False], ids=["by-serve", "by-hand"])
async def test_a_stage_worker_whose_serve_died_stops(
    spool_of: tuple[Config, Spool], started_by_serve: bool
) -> None:
    """``serve`` killed with SIGKILL (its workers live in their own sessions and get no
    signal): a secure agent it started stops by itself and frees its consumer lock for
    the next ``serve``'s agent; one started by hand (no ``MISSIVE_SUPERVISOR_PID``) is not
    tied to its parent and keeps running."""
    config, spool = spool_of
    argv = [*PROGRAM, "worker", "agent", "--config", str(config.source)]
    spawn = (  # a stand-in for serve: starts the worker as serve does, then waits
        "import os, subprocess, sys\n"
        "env = dict(os.environ)\n"
        "env.pop('MISSIVE_SUPERVISOR_PID', None)\n"
        "if os.environ.get('AS_SERVE'):\n"
        "    env['MISSIVE_SUPERVISOR_PID'] = str(os.getpid())\n"
        f"child = subprocess.Popen({argv!r}, start_new_session=True, env=env,"
        " stdout=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    environment = {**os.environ, "AS_SERVE": "1" if started_by_serve else ""}
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        spawn,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=environment,
    )
    agent = 0
    try:
        assert supervisor.stdout is not None
        agent = int(await supervisor.stdout.readline())
        await submit(spool)
        await wait_for_inbound(spool, 1)  # the agent runs (the test timeout bounds it)
        supervisor.kill()
        await supervisor.wait()
        if started_by_serve:
            while not gone(agent):  # within a second or so
                await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(3 * ORPHAN_CHECK_EVERY)
            assert not gone(agent)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
        if agent and is_alive(agent):
            os.kill(agent, signal.SIGKILL)
