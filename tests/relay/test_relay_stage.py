"""The relay stage: decisions without sockets, then the stage against the capture sink
(TLS verify, client certificate), and a worker killed with SIGKILL while delivering."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.message
import email.policy
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditEvent, AuditSink, AuditStore
from gateway.config import Config
from gateway.config.model import Route
from gateway.pki.dev import DevPki
from gateway.relay.attempt_plan import (
    DELAY_WARNED_NOTE,
    Attempted,
    Timing,
    delivery_groups,
    plan_attempt,
)
from gateway.relay.dsn_recipients import Action
from gateway.relay.relay_stage import (
    RelaySettings,
    RelayStage,
    build_client,
    run_relay_worker,
)
from gateway.relay.smtp_reply import DeliveryResult, Outcome
from gateway.spool import (
    RECEIVED,
    EntryReader,
    Envelope,
    MailParams,
    Origin,
    Queue,
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
    RetryPolicy,
    Spool,
    relay_stage,
)
from gateway.spool.model import EntryState
from tests.peers.small_fixtures import sink_tls_context
from tests.peers.smtp_sink import SmtpSink
from tests.site_config import write_test_config

SENDER = "alice.martin@chu-a.test"
BOB = "bob@clinique-b.test"
EVE = "eve@clinique-b.test"
SECRET_SUBJECT = "Dupont Jean, resultats"
MESSAGE = (
    b"From: alice.martin@chu-a.test\r\nTo: bob@clinique-b.test\r\n"
    b"Subject: " + SECRET_SUBJECT.encode() + b"\r\n"
    b"Message-ID: <relay-stage@chu-a.test>\r\n\r\nbody line\r\n.dot line\r\n"
)
WAIT = 60.0  # upper bound of a wait for the stage (never an assertion on speed)


# -- sans-IO: plan_attempt -------------------------------------------------------------

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy((timedelta(minutes=1), timedelta(minutes=5)), timedelta(hours=1), 0.0)
TIMING = Timing(NOW, POLICY, delay_warning=timedelta(minutes=30))


def _record(
    *recipients: Recipient,
    received: datetime = NOW - timedelta(seconds=10),
    mail_from: str = SENDER,
    states: tuple[RecipientState, ...] | None = None,
    note: str | None = None,
) -> QueueRecord:
    envelope = Envelope(mail_from, recipients)
    return QueueRecord(
        queue_id="01M8H4BQW0ZZ5NEQ3BDRMA3DYM",  # type: ignore[arg-type]
        parent=None,
        received=received,
        created=received,
        content_length=10,
        content_sha256="0" * 64,
        envelope=envelope,
        origin=Origin("relay"),
        state=EntryState(
            3, received, states or tuple(RecipientState() for _ in recipients), note=note
        ),
    )


def _tried(
    outcome: Outcome, *, dsn: bool = True, host: str | None = "mx.clinique-b.test"
) -> Attempted:
    return Attempted(outcome, DeliveryResult({}, mx_host=host, dsn_passed=dsn))


OK = Outcome(250, "2.0.0", "queued", permanent=False)
REFUSED = Outcome(550, "5.1.1", "no such user", permanent=True)
LATER = Outcome(451, "4.3.0", "try later", permanent=False)


def test_plan_delivered_failed_deferred_per_recipient() -> None:
    record = _record(Recipient(BOB), Recipient(EVE), Recipient("zoe@clinique-b.test"))
    plan = plan_attempt(
        record,
        {0: _tried(OK), 1: _tried(REFUSED), 2: _tried(LATER)},
        TIMING,
    )
    assert [s.status for s in plan.states] == [
        RecipientStatus.DELIVERED,
        RecipientStatus.FAILED,
        RecipientStatus.DEFERRED,
    ]
    assert all(s.attempts == 1 for s in plan.states)
    assert plan.states[1].last_error == "550 5.1.1 no such user"
    assert plan.next_attempt == NOW + timedelta(minutes=1) == plan.states[2].next_attempt
    ((notice),) = plan.notices
    assert notice.action is Action.FAILED and notice.indexes == (1,)
    assert notice.reports[0].status == "5.1.1"
    assert plan.note is None


def test_plan_relayed_only_when_the_peer_did_not_take_dsn() -> None:
    record = _record(Recipient(BOB, notify=("SUCCESS",)), Recipient(EVE, notify=("SUCCESS",)))
    plan = plan_attempt(
        record,
        {0: _tried(OK, dsn=True), 1: _tried(OK, dsn=False)},
        TIMING,
    )
    ((notice),) = plan.notices
    assert notice.action is Action.RELAYED and notice.indexes == (1,)
    assert plan.next_attempt is None and plan.any_delivered


def test_plan_no_dsn_to_null_sender_or_notify_never() -> None:
    record = _record(Recipient(BOB), mail_from="")
    assert plan_attempt(record, {0: _tried(REFUSED)}, TIMING).notices == ()
    record = _record(Recipient(BOB, notify=("NEVER",)))
    assert plan_attempt(record, {0: _tried(REFUSED)}, TIMING).notices == ()


def test_plan_expiry_fails_with_5_4_7() -> None:
    record = _record(Recipient(BOB), received=NOW - timedelta(hours=1))
    plan = plan_attempt(record, {0: _tried(LATER)}, TIMING)
    assert plan.states[0].status is RecipientStatus.FAILED
    assert "max_lifetime" in (plan.states[0].last_error or "")
    ((notice),) = plan.notices
    assert notice.reports[0].status == "5.4.7" and plan.next_attempt is None


def test_plan_delay_warning_once() -> None:
    old = NOW - timedelta(minutes=40)
    plan = plan_attempt(
        _record(Recipient(BOB), received=old),
        {0: _tried(LATER)},
        TIMING,
    )
    assert [n.action for n in plan.notices] == [Action.DELAYED]
    assert plan.notices[0].reports[0].will_retry_until == old + timedelta(hours=1)
    assert plan.note == DELAY_WARNED_NOTE
    again = _record(Recipient(BOB), received=old, note=DELAY_WARNED_NOTE)
    plan = plan_attempt(again, {0: _tried(LATER)}, TIMING)
    assert plan.notices == () and plan.note == DELAY_WARNED_NOTE


def test_plan_tls_failure_without_peer_is_a_secure_connection_reason() -> None:
    outcome = Outcome.temporary("certificate not trusted", "4.7.5")
    record = _record(Recipient(BOB), received=NOW - timedelta(minutes=40))
    plan = plan_attempt(record, {0: _tried(outcome, host=None)}, TIMING)
    report = plan.notices[0].reports[0]
    assert report.reason is not None and report.reason.value == "secure-connection"
    assert report.remote_mta is None and report.diagnostic is None


def test_notice_keys_differ_by_revision_action_and_recipients() -> None:
    record = _record(Recipient(BOB), Recipient(EVE))
    one = plan_attempt(record, {0: _tried(REFUSED), 1: _tried(OK)}, TIMING).notices[0]
    two = plan_attempt(record, {0: _tried(REFUSED), 1: _tried(REFUSED)}, TIMING).notices[0]
    assert one.key(3) == one.key(3)
    assert len({one.key(3), one.key(4), two.key(3)}) == 3


def test_delivery_groups_by_domain_without_next_hop(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_config(tmp_path, dev_pki, 2525)
    static = config.routes[0]
    mx_route = _replace_route(static, next_hop=None)
    states = (RecipientState(), RecipientState(RecipientStatus.DELIVERED, 1), RecipientState())
    record = _record(Recipient(BOB), Recipient(EVE), Recipient("x@other.test"), states=states)
    assert delivery_groups(static, record) == [(0, 2)]
    assert delivery_groups(mx_route, record) == [(0,), (2,)]


def _replace_route(route: Route, **changes: Any) -> Route:
    return dataclasses.replace(route, **changes)


# -- the stage against the capture sink ------------------------------------------------


def write_config(
    directory: Path,
    pki: DevPki,
    port: int,
    *,
    retry: str = '["1s"]',
    max_lifetime: str = "1h",
    delay_warning: str = "30m",
    tls: str = "verify",
) -> Config:
    """A site whose one smtp route goes to 127.0.0.1:``port`` (short retry schedule)."""
    tables = f"""\
[delivery]
retry_schedule = {retry}
max_lifetime = "{max_lifetime}"
delay_warning = "{delay_warning}"

[[routes]]
name = "clinique-b"
domains = ["clinique-b.test"]
next_hop = "127.0.0.1:{port}"
tls = "{tls}"
tls_name = "mx.clinique-b.test"
"""
    return write_test_config(directory, pki, tables, agent_keys=False)


@dataclass
class Site:
    """A running relay stage over a spool the test also writes into."""

    config: Config
    spool: Spool
    audit: AuditSink
    relay: Queue
    received: Queue
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def add(
        self, *recipients: Recipient, mail_from: str = SENDER, content: bytes = MESSAGE
    ) -> str:
        envelope = Envelope(mail_from, recipients, MailParams())
        return await self.relay.add(envelope, Origin("test"), content)

    async def wait_done(self, queue_id: str) -> str:
        """Until the entry left the relay stage for good; its last spool event's type.

        Watched in the audit trail (``spool.completed``/``spool.bounced`` are recorded
        before the file is removed), not by listing state directories, which an entry
        moving between them could slip past."""
        async with asyncio.timeout(WAIT):
            while True:
                kinds = [e.type for e in self.audit_events("spool.") if e.queue_id == queue_id]
                final = [k for k in kinds if k in ("spool.completed", "spool.bounced")]
                # the event is committed just before the file goes: wait for the file too
                if final and await self.relay.locate(queue_id) is None:
                    return final[0]
                await asyncio.sleep(0.05)

    async def dsns(self) -> list[tuple[Envelope, email.message.Message]]:
        """The DSNs the stage queued into ``received`` (envelope, parsed message)."""
        found = []
        for info in await self.received.scan("incoming"):
            assert info.record is not None, info.error
            content = await asyncio.to_thread(_read_all, info.path)
            found.append((info.record.envelope, email.message_from_bytes(content)))
        return found

    def audit_events(self, kind: str) -> list[AuditEvent]:
        with AuditStore.open_reader(self.config.audit.path) as store:
            return [r.event for r in store.iter_records() if r.event.type.startswith(kind)]


def _read_all(path: Path) -> bytes:
    with EntryReader(path) as reader:
        return b"".join(reader.chunks())


@asynccontextmanager
async def running(
    config: Config,
    *,
    max_in_flight: int = 32,
    serve: bool = True,
    routes: Sequence[Route] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Site]:
    """The relay stage on ``config`` (jitter 0, fast polling); stopped and closed at exit.
    ``routes`` replaces the configured ones (a route removed); ``clock``, the stage's."""
    audit = AuditSink(config.audit.path)
    audit.start()
    spool = Spool(config.gateway.spool_dir, audit=audit, actor="test", max_message_size=1 << 20)
    client = build_client(config)
    settings = RelaySettings(
        hostname=config.gateway.hostname,
        language=config.gateway.language,
        policy=RetryPolicy.from_config(config.delivery, jitter=0.0),
        delay_warning=config.delivery.delay_warning,
        poll_interval=0.05,
        max_in_flight=max_in_flight,
    )
    stage = RelayStage(
        routes=config.routes if routes is None else routes,
        spool=spool,
        audit=audit,
        client=client,
        settings=settings,
        **({} if clock is None else {"clock": clock}),
    )
    site = Site(config, spool, audit, spool.queue(relay_stage("clinique-b")), spool.queue(RECEIVED))
    task = asyncio.create_task(stage.run(site.stop)) if serve else None
    try:
        yield site
    finally:
        site.stop.set()
        if task is not None:
            await task
        await client.close()
        await spool.aclose()
        await audit.aclose()


@pytest.fixture
def sink(smtp_sink: SmtpSink) -> SmtpSink:
    return smtp_sink


async def test_a_451_is_retried_then_delivered(
    sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    sink.fail_next("RCPT", 451)
    async with running(write_config(tmp_path, dev_pki, sink.port)) as site:
        queue_id = await site.add(Recipient(BOB))
        outcome = await site.wait_done(queue_id)
        (message,) = sink.messages
        assert message.data == MESSAGE
        assert message.tls_version is not None and message.peer_certificate is not None
        assert await site.dsns() == []
        attempts = [e for e in site.audit_events("relay.attempt") if e.queue_id == queue_id]
        assert [e.outcome for e in attempts] == ["deferred", "delivered"]
        assert attempts[1].peer is not None and "clinique-b" in attempts[1].peer
        assert attempts[1].cert_serials and attempts[1].sha256
        assert attempts[1].details["tls_version"].startswith("TLS")
        assert outcome == "spool.completed"


async def test_a_550_bounces_with_a_failure_dsn_in_received(
    sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    sink.refuse_recipient(BOB)
    async with running(write_config(tmp_path, dev_pki, sink.port)) as site:
        queue_id = await site.add(Recipient(BOB, orcpt=f"rfc822;{BOB}"))
        outcome = await site.wait_done(queue_id)
        assert sink.messages == []
        ((envelope, dsn),) = await site.dsns()
        assert envelope.mail_from == "" and envelope.addresses == (SENDER,)
        assert dsn.get_content_type() == "multipart/report"
        status = _delivery_status(dsn)
        assert "Action: failed" in status and "Status: 5.1.1" in status
        assert f"Final-Recipient: rfc822; {BOB}" in status
        assert "Diagnostic-Code: smtp; 550 5.1.1 sink: mailbox refused" in status
        assert SECRET_SUBJECT.encode() not in dsn.as_bytes()
        assert outcome == "spool.bounced"


async def test_no_dsn_to_a_null_sender(sink: SmtpSink, dev_pki: DevPki, tmp_path: Path) -> None:
    sink.refuse_recipient(BOB)
    async with running(write_config(tmp_path, dev_pki, sink.port)) as site:
        queue_id = await site.add(Recipient(BOB), mail_from="")
        outcome = await site.wait_done(queue_id)
        assert await site.dsns() == []
        assert outcome == "spool.bounced"


async def test_mixed_outcomes_and_a_relayed_dsn_to_a_peer_without_dsn(
    smtp_sink_factory: Callable[..., SmtpSink], dev_pki: DevPki, tmp_path: Path
) -> None:
    sink = smtp_sink_factory(
        hostname="mx.clinique-b.test",
        tls=sink_tls_context(dev_pki),
        extensions=("8BITMIME", "ENHANCEDSTATUSCODES"),
    )
    sink.refuse_recipient(EVE)
    async with running(write_config(tmp_path, dev_pki, sink.port)) as site:
        queue_id = await site.add(Recipient(BOB, notify=("SUCCESS", "FAILURE")), Recipient(EVE))
        outcome = await site.wait_done(queue_id)
        (message,) = sink.messages
        assert message.recipients == (BOB,)
        actions = sorted(_action_of(dsn) for _, dsn in await site.dsns())
        assert actions == ["failed", "relayed"]
        assert outcome == "spool.completed"


async def test_delay_warning_is_sent_once(sink: SmtpSink, dev_pki: DevPki, tmp_path: Path) -> None:
    sink.fail_next("RCPT", 451, count=3)
    config = write_config(tmp_path, dev_pki, sink.port, delay_warning="1s")
    async with running(config) as site:
        queue_id = await site.add(Recipient(BOB))
        assert await site.wait_done(queue_id) == "spool.completed"
        assert len(sink.messages) == 1
        dsns = await site.dsns()
        assert [_action_of(dsn) for _, dsn in dsns] == ["delayed"]
        status = _delivery_status(dsns[0][1])
        assert "Status: 4.3.0" in status and "Will-Retry-Until:" in status


async def test_max_lifetime_gives_up_with_a_failure_dsn(
    sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    sink.fail_next("RCPT", 451, count=100)
    config = write_config(tmp_path, dev_pki, sink.port, max_lifetime="2s", delay_warning="1s")
    async with running(config) as site:
        queue_id = await site.add(Recipient(BOB))
        assert await site.wait_done(queue_id) == "spool.bounced"
        assert sink.messages == []
        dsns = {_action_of(dsn): dsn for _, dsn in await site.dsns()}
        assert sorted(dsns) == ["delayed", "failed"]
        status = _delivery_status(dsns["failed"])
        assert "Action: failed" in status and "Status: 5.4.7" in status
        attempts = site.audit_events("relay.attempt")
        assert len(attempts) >= 2 and all(e.outcome == "deferred" for e in attempts)


async def test_many_entries_with_a_small_in_flight_bound(
    sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    async with running(write_config(tmp_path, dev_pki, sink.port), max_in_flight=2) as site:
        ids = [await site.add(Recipient(BOB)) for _ in range(6)]
        for queue_id in ids:
            assert await site.wait_done(queue_id) == "spool.completed"
        assert len(sink.messages) == 6
        assert sink.connection_count <= 6  # sessions are reused, never one per try


async def test_a_second_worker_waits_then_takes_over(
    sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    config = write_config(tmp_path, dev_pki, sink.port)
    stop_worker = asyncio.Event()
    worker: asyncio.Task[None] | None = None
    try:
        async with running(config) as site:
            first_id = await site.add(Recipient(BOB))
            assert await site.wait_done(first_id) == "spool.completed"  # this stage serves
            worker = asyncio.create_task(run_relay_worker(config, stop_worker))  # standby
            await asyncio.sleep(0.2)  # let it find the lock taken (standby) before we stop
        async with running(config, serve=False) as site:
            second_id = await site.add(Recipient(BOB))
            assert await site.wait_done(second_id) == "spool.completed"
            actors = {
                e.queue_id: e.actor
                for e in site.audit_events("spool.completed")
                if e.queue_id in (first_id, second_id)
            }
        assert len(sink.messages) == 2
        assert actors == {first_id: "test", second_id: "relay"}
    finally:
        stop_worker.set()
        if worker is not None:
            await worker


def _delivery_status(dsn: email.message.Message) -> str:
    for part in dsn.walk():
        if part.get_content_type() == "message/delivery-status":
            return "\n".join(str(p) for p in part.get_payload())
    raise AssertionError("no message/delivery-status part")


def _action_of(dsn: email.message.Message) -> str:
    for line in _delivery_status(dsn).splitlines():
        if line.startswith("Action:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Action field")


# -- a worker killed while delivering ---------------------------------------------------

WORKER_SCRIPT = """
import asyncio, signal, sys
from gateway.config import load_config
from gateway.relay.relay_stage import run_relay_worker

async def main() -> None:
    config = load_config(sys.argv[1], agent_keys=False)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_relay_worker(config, stop)

asyncio.run(main())
"""


class HoldingMx:
    """A clear-text SMTP peer on 127.0.0.1 that leaves the first end of DATA unanswered
    (until the client goes away) and accepts every later message. Test double only."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.accepted: list[bytes] = []
        self._holding = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            writer.write(b"220 mx.clinique-b.test ESMTP test\r\n")
            while line := await reader.readline():
                if not await self._answer(line[:4].upper(), reader, writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self, verb: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if verb == b"EHLO":
            writer.write(b"250-mx.clinique-b.test\r\n250 8BITMIME\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 2.0.0 bye\r\n")
            return False
        elif verb == b"DATA":
            writer.write(b"354 go ahead\r\n")
            await writer.drain()
            data = await reader.readuntil(b"\r\n.\r\n")
            if self._holding:
                self._holding = False
                self.held.set()
                await reader.read()  # no answer, until the client is gone
                return False
            self.accepted.append(data)
            writer.write(b"250 2.0.0 accepted\r\n")
        else:
            writer.write(b"250 2.0.0 ok\r\n")
        return True


def start_worker(config_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, str(config_path)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL by PID if still running, reap it, close its pipe."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


async def _until(condition: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            await asyncio.sleep(0.05)


async def test_a_worker_killed_during_data_delivers_after_restart(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    mx = HoldingMx()
    port = await mx.start()
    config = write_config(tmp_path, dev_pki, port, tls="none")
    audit = AuditSink(config.audit.path)
    audit.start()
    spool = Spool(config.gateway.spool_dir, audit=audit, actor="test", max_message_size=1 << 20)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        relay = spool.queue(relay_stage("clinique-b"))
        envelope = Envelope(SENDER, (Recipient(BOB),), MailParams())
        queue_id = await relay.add(envelope, Origin("test"), MESSAGE)
        workers.append(start_worker(config.source))
        await _until(mx.held.is_set, workers[0])
        os.kill(workers[0].pid, signal.SIGKILL)
        await asyncio.to_thread(workers[0].wait)
        assert await relay.locate(queue_id) == "active"
        assert mx.accepted == []

        workers.append(start_worker(config.source))
        await _until(lambda: bool(mx.accepted), workers[1])
        (data,) = mx.accepted
        assert b"Message-ID: <relay-stage@chu-a.test>" in data and b"\r\n..dot line\r\n" in data
        site = Site(config, spool, audit, relay, spool.queue(RECEIVED))
        assert await site.wait_done(queue_id) == "spool.completed"
        recovered = [e for e in site.audit_events("spool.recovered") if e.queue_id == queue_id]
        assert len(recovered) == 1
        workers[1].send_signal(signal.SIGTERM)
        # the peer runs on this loop: wait in a thread so it can answer the worker's QUIT
        assert await asyncio.to_thread(workers[1].wait, WAIT) == 0
    finally:
        for proc in workers:
            stop_worker(proc)
        await spool.aclose()
        await audit.aclose()
        await mx.close()
