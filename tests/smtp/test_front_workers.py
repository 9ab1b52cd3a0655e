"""Several SMTP front processes on the same listeners (``[gateway] front_workers``,
``SO_REUSEPORT``), for real: ``missive worker front`` processes on loopback spool every
message sent over many connections exactly once, each process takes some (the audit
trail names each one's spool actor), a front killed with SIGKILL loses no acknowledged
message and is restarted by the supervisor; ``missive serve`` starts the extra fronts
itself. The limits are shared (each process enforces its share, so the whole stays the
configured limit: a unit test of the division and a real ``421 4.7.0``), and with one
front process no socket has ``SO_REUSEPORT``.

The workers run as ``python -m gateway.workers worker front ...`` (the ``register`` of
``missive worker``), in their own process groups, stopped by PID (``WorkerGroup.aclose``)
even when a test fails."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.config import Config, load_config
from gateway.errors import UsageError
from gateway.pki.dev import DevPki
from gateway.serve import only_serve_on, serve
from gateway.smtp.listener import ListenerGroup, start_listeners
from gateway.smtp.throttle import ThrottleLimits, share_of, shared_limits
from gateway.spool import RECEIVED, Spool
from gateway.workers import WorkerGroup
from tests.site_config import write_test_config
from tests.smtp.front import FakeQueue, RecordingAudit
from tests.together import gone

PROGRAM = (sys.executable, "-m", "gateway.workers")
RECIPIENT = "alice.martin@chu-a.test"
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp


# -- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_site(
    home: Path,
    pki: DevPki,
    *,
    front_workers: int,
    port: int,
    max_connections: int = 200,
    per_ip: int = 200,
    crypto_workers: int = 1,
) -> Config:
    """A relay listener on ``127.0.0.1:port`` (TLS off, any sender to a local address)."""
    tables = f"""\
[inbound]
accept = "any"

[[listeners]]
name = "mx"
address = "127.0.0.1:{port}"
kind = "relay"
tls = "none"
max_connections = {max_connections}
max_connections_per_ip = {per_ip}
"""
    config = write_test_config(home, pki, tables)
    text = config.source.read_text(encoding="utf-8")
    gateway_keys = f"front_workers = {front_workers}\ncrypto_workers = {crypto_workers}"
    config.source.write_text(text.replace("[gateway]\n", f"[gateway]\n{gateway_keys}\n", 1))
    return load_config(config.source, agent_keys=False)


def front_command(config: Config, slot: int) -> tuple[str, tuple[str, ...]]:
    argv = (*PROGRAM, "worker", "front", "--config", str(config.source), "--slot", str(slot))
    return f"front-{slot}", argv


def listening_inodes(port: int) -> set[str]:
    """Inodes of the loopback IPv4 sockets listening on ``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == TCP_LISTEN and int(local.split(":")[1], 16) == port:
            inodes.add(inode)
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port``."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:  # the process is gone
        return False
    return any(_link(f"/proc/{pid}/fd/{fd}") in wanted for fd in descriptors)


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # closed since listed (the listing's own descriptor, too)
        return ""


async def wait_listening(group: WorkerGroup, port: int) -> None:
    """Until every worker of ``group`` listens on ``port`` (the test timeout bounds it)."""
    while True:
        for worker in group.workers:
            assert 2 not in worker.exits, f"{worker.name} exited with a configuration error"
        pids = [worker.pid for worker in group.workers]
        if all(pid is not None and listens(pid, port) for pid in pids):
            return
        await asyncio.sleep(0.05)


async def reply(reader: asyncio.StreamReader) -> str:
    """One SMTP reply (its last line); "" if the connection was closed."""
    while True:
        line = (await reader.readline()).decode()
        if len(line) < 4 or line[3] != "-":
            return line


async def send_one(port: int, sender: str) -> str:
    """One message on a new connection; the reply to its DATA ("" if cut)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if not (await reply(reader)).startswith("220"):
            return ""
        for command in ("EHLO client.test", f"MAIL FROM:<{sender}>", f"RCPT TO:<{RECIPIENT}>"):
            writer.write(f"{command}\r\n".encode())
            if not (await reply(reader)).startswith("250"):
                return ""
        writer.write(b"DATA\r\n")
        if not (await reply(reader)).startswith("354"):
            return ""
        body = f"From: <{sender}>\r\nTo: <{RECIPIENT}>\r\nSubject: t\r\n\r\nbody\r\n.\r\n"
        writer.write(body.encode())
        answer = await reply(reader)
        writer.write(b"QUIT\r\n")
        return answer
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def send_until_accepted(port: int, sender: str) -> None:
    """What a sending MTA does: try again until the message gets its ``250``."""
    while True:
        try:
            if (await send_one(port, sender)).startswith("250"):
                return
        except OSError:  # reset by a front that died: not acknowledged, send it again
            pass
        await asyncio.sleep(0.01)


async def send_many(port: int, senders: list[str], at_once: int = 8) -> None:
    pending = iter(senders)

    async def client() -> None:
        for sender in pending:
            await send_until_accepted(port, sender)

    await asyncio.gather(*(client() for _ in range(at_once)))


def senders(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index}@clinique-b.test" for index in range(count)]


async def spooled_senders(config: Config) -> Counter[str]:
    """How many ``received/incoming`` entries each envelope sender has."""
    spool = Spool(
        config.gateway.spool_dir, audit=RecordingAudit(), actor="test", max_message_size=1 << 20
    )
    try:
        entries = await spool.queue(RECEIVED).scan("incoming")
    finally:
        await spool.aclose()
    assert all(entry.record is not None for entry in entries)
    return Counter(entry.record.envelope.mail_from for entry in entries if entry.record)


def actors_of_received(config: Config) -> Counter[str]:
    """``spool.added`` into ``received/`` per actor, from the audit trail."""
    with AuditStore.open_reader(config.audit.path) as store:
        return Counter(
            record.event.actor or "-"
            for record in store.iter_records()
            if record.event.type == "spool.added" and record.event.details["stage"] == RECEIVED
        )


@pytest.fixture
async def two_fronts(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[tuple[Config, WorkerGroup]]:
    port = free_port()
    config = write_site(tmp_path, dev_pki, front_workers=2, port=port)
    group = WorkerGroup([front_command(config, 0), front_command(config, 1)], backoff_first=0.05)
    try:
        await group.start()
        await wait_listening(group, port)
        yield config, group
    finally:
        await group.aclose()


# -- real processes -----------------------------------------------------------------------


async def test_two_front_processes_spool_each_message_once(
    two_fronts: tuple[Config, WorkerGroup],
) -> None:
    config, group = two_fronts
    sent = senders("once", 40)
    await send_many(config.listeners[0].address.port, sent)
    await group.aclose()
    assert [worker.exits for worker in group.workers] == [[0], [0]]  # clean SIGTERM stops
    assert await spooled_senders(config) == Counter(sent)
    actors = actors_of_received(config)
    assert set(actors) == {"smtp-front-0", "smtp-front-1"}, actors  # both took some
    assert sum(actors.values()) == len(sent)


async def test_a_killed_front_loses_no_acknowledged_message_and_restarts(
    two_fronts: tuple[Config, WorkerGroup],
) -> None:
    config, group = two_fronts
    port = config.listeners[0].address.port
    victim = group.workers[1]
    first_pid = victim.pid
    assert first_pid is not None
    before, after = senders("before", 60), senders("after", 20)
    sending = asyncio.create_task(send_many(port, before, at_once=6))
    try:
        while actors_of_received(config)["smtp-front-1"] < 5:  # the victim acknowledged some
            assert not sending.done(), "every message was sent before the kill"
            await asyncio.sleep(0.01)
        os.kill(first_pid, signal.SIGKILL)
        await sending  # every message retried until its 250, as an MTA would
    finally:
        sending.cancel()
    while victim.restarts == 0:
        await asyncio.sleep(0.02)
    await wait_listening(group, port)
    assert victim.pid != first_pid and victim.exits[0] == -signal.SIGKILL
    await send_many(port, after)
    await group.aclose()
    spooled = await spooled_senders(config)
    # At-least-once: an entry fsynced just before the kill may come again from the retry,
    # but every message that got its 250 is in received/.
    assert set(spooled) == set(before) | set(after)
    assert all(spooled[sender] == 1 for sender in after)


async def test_serve_starts_the_extra_front_and_both_accept(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    port = free_port()
    config = write_site(tmp_path, dev_pki, front_workers=2, port=port)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(config, stop))
    try:
        while not listens(os.getpid(), port):  # serve's own listener (front slot 0)
            assert not running.done(), running
            await asyncio.sleep(0.05)
        front_pid = await wait_front_worker(port)
        with pytest.raises(UsageError, match="another missive serve is running"):
            await serve(config, asyncio.Event())  # by mistake: it would share the ports
        sent = senders("serve", 30)
        await send_many(port, sent)
        actors = actors_of_received(config)
        assert actors["gateway"] > 0 and actors["smtp-front-1"] > 0, actors
        assert sum(actors.values()) == len(sent)
    finally:
        stop.set()
        await running
    assert not pid_alive(front_pid)


async def wait_front_worker(port: int) -> int:
    """The PID of the child of this process that listens on ``port`` (a front worker)."""
    while True:
        for pid in children(os.getpid()):
            if listens(pid, port):
                return pid
        await asyncio.sleep(0.05)


def children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_front_worker_whose_supervisor_dies_stops(dev_pki: DevPki, tmp_path: Path) -> None:
    """``serve`` killed with SIGKILL: its front worker (own session, no signal) notices
    it was orphaned and stops, instead of keeping the port beside the next ``serve``."""
    port = free_port()
    config = write_site(tmp_path, dev_pki, front_workers=2, port=port)
    argv = [*PROGRAM, "worker", "front", "--config", str(config.source), "--slot", "1"]
    spawn = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen({argv!r}, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", spawn, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    front = 0
    try:
        assert supervisor.stdout is not None
        front = int(await supervisor.stdout.readline())
        while not listens(front, port):
            assert not gone(front), "the front worker exited at start"
            await asyncio.sleep(0.05)
        supervisor.kill()
        await supervisor.wait()
        while not gone(front):  # within a second or so (the test timeout bounds it)
            await asyncio.sleep(0.05)
        assert listening_inodes(port) == set()
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
        if front and not gone(front):
            os.kill(front, signal.SIGKILL)


async def test_a_front_worker_whose_supervisor_died_while_it_started_stops(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """The supervisor dies before the worker has even imported its modules: the worker
    is init's child from its first look at ``getppid()``, so it must compare with the
    supervisor PID given at spawn time (``MISSIVE_SUPERVISOR_PID``), not with that."""
    port = free_port()
    config = write_site(tmp_path, dev_pki, front_workers=2, port=port)
    argv = [*PROGRAM, "worker", "front", "--config", str(config.source), "--slot", "1"]
    spawn = (
        "import os, subprocess\n"
        "env = {**os.environ, 'MISSIVE_SUPERVISOR_PID': str(os.getpid())}\n"
        f"child = subprocess.Popen({argv!r}, start_new_session=True, env=env)\n"
        "print(child.pid, flush=True)\n"
    )  # and exits at once: the worker is still starting
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", spawn, stdout=asyncio.subprocess.PIPE
    )
    front = 0
    try:
        assert supervisor.stdout is not None
        front = int(await supervisor.stdout.readline())
        await supervisor.wait()
        while not gone(front):  # within a second or so of its start (the test timeout)
            await asyncio.sleep(0.05)
        assert listening_inodes(port) == set()
    finally:
        if front and not gone(front):
            os.kill(front, signal.SIGKILL)


@pytest.mark.parametrize(
    ("slot", "message"),
    [("1", "--slot: front slot 1 needs [gateway] front_workers > 1"), ("64", "expected 0 to 63")],
)
def test_a_front_slot_beyond_front_workers_exits_2_without_traceback(
    dev_pki: DevPki, tmp_path: Path, slot: str, message: str
) -> None:
    config = write_site(tmp_path, dev_pki, front_workers=1, port=free_port())
    result = subprocess.run(
        [*PROGRAM, "worker", "front", "--config", str(config.source), "--slot", slot],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


# -- limits and the socket option (in this process) -----------------------------------------


@pytest.mark.parametrize("processes", [1, 2, 3, 5, 7, 64])
@pytest.mark.parametrize("limit", [1, 5, 10, 20, 100, 200])
def test_shares_add_up_to_the_limit(limit: int, processes: int) -> None:
    shares = [share_of(limit, processes, slot) for slot in range(processes)]
    assert min(shares) >= 1 and max(shares) - min(shares) <= 1
    assert sum(shares) == max(limit, processes)  # exact whenever each process gets one


def test_throttle_limits_are_shared_and_the_window_kept() -> None:
    limits = ThrottleLimits(window=300.0, max_per_ip=10, max_per_login=5, max_keys=100)
    first, second = (shared_limits(limits, 2, slot) for slot in (0, 1))
    assert (first.max_per_ip, first.max_per_login) == (5, 3)
    assert (second.max_per_ip, second.max_per_login) == (5, 2)
    assert first.window == second.window == 300.0 and first.max_keys == 100
    assert shared_limits(limits, 1, 0) == limits
    with pytest.raises(ValueError, match="slot 2 of 2"):
        share_of(10, 2, 2)


async def start_front(config: Config, slot: int) -> ListenerGroup:
    return await start_listeners(
        config,
        queue=FakeQueue(),
        audit=RecordingAudit(),
        validator=None,
        authenticator=None,
        liste_blanche=None,
        front_slot=slot,
    )


def reuse_port(group: ListenerGroup) -> int:
    sock = group.listeners[0].server.sockets[0]
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


async def test_one_front_process_opens_no_reuseport_socket(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki, front_workers=1, port=free_port())
    group = await start_front(config, 0)
    try:
        assert reuse_port(group) == 0
        running = group.listeners[0]
        assert (running.connections.total, running.connections.per_ip) == (200, 200)
    finally:
        await group.aclose()


async def test_each_front_process_enforces_its_share(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki, front_workers=3, port=free_port(), per_ip=20)
    groups = [await start_front(config, slot) for slot in range(3)]
    try:
        assert [reuse_port(group) for group in groups] == [1, 1, 1]
        gates = [group.listeners[0].connections for group in groups]
        assert [(gate.total, gate.per_ip) for gate in gates] == [(67, 7), (67, 7), (66, 6)]
    finally:
        for group in groups:
            await group.aclose()


async def test_the_shared_connection_cap_answers_421(dev_pki: DevPki, tmp_path: Path) -> None:
    """max_connections = 2 over 2 processes: one connection each, whatever the spread,
    so of 6 connections held open at most 2 get a greeting, the others 421 4.7.0."""
    port = free_port()
    config = write_site(tmp_path, dev_pki, front_workers=2, port=port, max_connections=2, per_ip=2)
    groups = [await start_front(config, slot) for slot in (0, 1)]
    writers = []
    try:
        greetings = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            greetings.append(await reply(reader))
        admitted = [line for line in greetings if line.startswith("220")]
        refused = [line for line in greetings if line.startswith("421 4.7.0")]
        assert 1 <= len(admitted) <= 2 and len(admitted) + len(refused) == 6, greetings
    finally:
        for writer in writers:
            writer.close()
        for group in groups:
            await group.aclose()


async def test_a_stopping_front_finishes_data_in_flight_and_refuses_new_data(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """``aclose`` (SIGTERM): the transfer whose commit is under way gets its 250, a new
    DATA gets 451 4.3.2 before any content, then the sessions are closed."""
    port = free_port()
    config = write_site(tmp_path, dev_pki, front_workers=1, port=port)
    queue = FakeQueue()
    queue.commit_gate.clear()  # the commit of the first message waits
    group = await start_listeners(
        config,
        queue=queue,
        audit=RecordingAudit(),
        validator=None,
        authenticator=None,
        liste_blanche=None,
    )
    writers = []
    closing: asyncio.Task[None] | None = None
    try:
        sessions = []
        for sender in ("inflight@clinique-b.test", "late@clinique-b.test"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            await reply(reader)
            for command in ("EHLO client.test", f"MAIL FROM:<{sender}>", f"RCPT TO:<{RECIPIENT}>"):
                writer.write(f"{command}\r\n".encode())
                assert (await reply(reader)).startswith("250")
            sessions.append((reader, writer))
        (first_reader, first_writer), (late_reader, late_writer) = sessions
        first_writer.write(b"DATA\r\n")
        assert (await reply(first_reader)).startswith("354")
        first_writer.write(b"From: <inflight@clinique-b.test>\r\n\r\nbody\r\n.\r\n")
        final = asyncio.ensure_future(reply(first_reader))
        started = asyncio.ensure_future(queue.commit_started.wait())
        await asyncio.wait([final, started], return_when=asyncio.FIRST_COMPLETED)
        assert not final.done(), final.result()  # a refusal, not a commit held back
        closing = asyncio.create_task(group.aclose())
        late_writer.write(b"DATA\r\n")
        assert (await reply(late_reader)).startswith("451 4.3.2")
        assert not closing.done()  # still waiting for the transfer in flight
        queue.commit_gate.set()
        assert (await final).startswith("250")
        await closing
        assert await reply(late_reader) == ""  # then every session is closed
        assert [message.envelope.mail_from for message in queue.messages] == [
            "inflight@clinique-b.test"
        ]
    finally:
        queue.commit_gate.set()
        for writer in writers:
            writer.close()
        if closing is None:
            await group.aclose()
        else:
            await closing


def test_one_serve_per_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with only_serve_on(spool):
        with pytest.raises(UsageError, match="another missive serve is running"):
            with only_serve_on(spool):
                pass  # pragma: no cover - never reached
        assert os.listdir(spool) == []  # the directory itself is locked: no file to remove
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    with only_serve_on(spool):  # released with the first
        pass


def test_a_spool_path_that_cannot_be_locked_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("not a directory")
    with pytest.raises(UsageError, match=r"spool directory .*: exists and is not a directory"):
        with only_serve_on(tmp_path / "spool"):
            pass  # pragma: no cover - never reached
