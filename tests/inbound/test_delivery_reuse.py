"""Local delivery reuses its LMTP connections (RFC 2033 §4.1: several transactions per
session, ``RSET`` between them): several messages over one connection to the real
Dovecot, read back over IMAP; a store that closes the connection (or answers ``421``)
between messages gets a new one and nothing is lost or sent twice; a 4xx for one
recipient defers that recipient only; ``run`` closes its connections when stopped, and
idle ones past their time are closed.

``ScriptedLmtp`` is a test double written here: a few lines of LMTP on loopback that
record every transaction and can misbehave on purpose (Dovecot cannot be told to close
a session or to refuse one recipient of two with a 4xx)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.audit import AuditEvent
from gateway.inbound.delivery import LocalDelivery
from gateway.inbound.store_client import MAX_IDLE, StorePool, StoreTarget
from gateway.pki.dev import DevPki
from gateway.spool import LOCAL, RecipientStatus, Spool
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    INBOUND_AGENT,
    LETTER,
    POLICY,
    Trail,
    envelope,
    lmtp_to,
    message_ids,
    numbered,
    opened_site,
)
from tests.peers.dovecot import DovecotInstance


@dataclass
class Transaction:
    mail_from: str
    recipients: list[str]
    data: bytes


@dataclass
class ScriptedLmtp:
    """An LMTP server on 127.0.0.1 that records what it gets.

    ``after_transaction``: "keep" (a normal server), "close" (drops the connection after
    each transaction, without a word) or "421" (answers the next command with 421 and
    closes). ``refuse_rcpt`` / ``defer_data``: addresses answered 450 at RCPT, or 452
    after DATA (their own reply, RFC 2033 §4.2)."""

    after_transaction: str = "keep"
    refuse_rcpt: set[str] = field(default_factory=set)
    defer_data: set[str] = field(default_factory=set)
    connections: int = 0
    quits: int = 0
    transactions: list[Transaction] = field(default_factory=list)
    port: int = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._converse(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted LMTP\r\n")
        mail_from, recipients, ended = "", list[str](), False
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if ended and self.after_transaction == "421":
                writer.write(b"421 4.4.2 closing for inactivity\r\n")
                return
            if verb == "LHLO":
                writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
            elif verb == "RSET":
                mail_from, recipients = "", []
                writer.write(b"250 2.0.0 OK\r\n")
            elif verb == "MAIL":
                mail_from = line.split("<", 1)[1].rstrip(">")
                writer.write(b"250 2.1.0 OK\r\n")
            elif verb == "RCPT":
                address = line.split("<", 1)[1].rstrip(">")
                if address in self.refuse_rcpt:
                    writer.write(b"450 4.2.1 mailbox busy\r\n")
                else:
                    recipients.append(address)
                    writer.write(b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                self.transactions.append(Transaction(mail_from, recipients, data))
                for address in recipients:  # one reply per accepted RCPT
                    if address in self.defer_data:
                        writer.write(f"452 4.2.2 <{address}> over quota\r\n".encode())
                    else:
                        writer.write(f"250 2.0.0 <{address}> saved\r\n".encode())
                mail_from, recipients, ended = "", [], True
                if self.after_transaction == "close":
                    await writer.drain()
                    return
            elif verb == "QUIT":
                self.quits += 1
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"500 5.5.1 unknown command\r\n")
            await writer.drain()

    def delivered_to(self, address: str) -> list[bytes]:
        return [t.data for t in self.transactions if address in t.recipients]


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedLmtp]:
    server_state = ScriptedLmtp()
    server = await asyncio.start_server(server_state.session, "127.0.0.1", 0)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()


async def queue_letters_to_alice(spool: Spool, count: int) -> None:
    """``numbered(1)`` ... ``numbered(count)`` queued in ``local/`` for Alice."""
    for index in range(1, count + 1):
        await spool.queue(LOCAL).add(envelope(ALICE), INBOUND_AGENT, numbered(index))


def lmtp_sessions_logged(dovecot: DovecotInstance) -> int:
    """LMTP connections Dovecot logged, less those closed at the greeting (the fixture's
    readiness probe)."""
    lines = dovecot.log_path.read_text(errors="replace").splitlines()
    lmtp = [line for line in lines if " lmtp(" in f" {line}" or line.startswith("lmtp(")]
    connects = sum("Connect from" in line for line in lmtp)
    return connects - sum("state=GREETING" in line for line in lmtp)


@pytest.mark.peer
async def test_several_messages_share_one_lmtp_connection_to_dovecot(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    async with opened_site(
        tmp_path, dev_pki, inbound=lmtp_to(dovecot.lmtp_port), actor="local-delivery"
    ) as site:
        await queue_letters_to_alice(site.spool, 5)
        delivery = await site.local_delivery(concurrency=4, connections=1)
        outcomes = await delivery.drain()
        assert [o.disposition for o in outcomes] == ["completed"] * 5
        assert delivery.pool is not None and delivery.pool.opened == 1
    assert message_ids(dovecot.fetch_all(ALICE)) == sorted(
        f"<m{i}@clinique-b.test>".encode() for i in range(1, 6)
    )
    assert lmtp_sessions_logged(dovecot) == 1  # Dovecot's own count agrees


@pytest.mark.parametrize("misbehaviour", ["close", "421"])
async def test_a_store_that_drops_the_session_between_messages_gets_a_new_one(
    dev_pki: DevPki, tmp_path: Path, scripted: ScriptedLmtp, misbehaviour: str
) -> None:
    scripted.after_transaction = misbehaviour
    async with opened_site(
        tmp_path, dev_pki, inbound=lmtp_to(scripted.port), actor="local-delivery"
    ) as site:
        await queue_letters_to_alice(site.spool, 3)
        delivery = await site.local_delivery(concurrency=1, connections=1)
        outcomes = await delivery.drain()
        assert [o.disposition for o in outcomes] == ["completed"] * 3
    assert scripted.connections == 3 and delivery.pool is not None
    assert delivery.pool.opened == 3
    delivered = scripted.delivered_to(ALICE)
    assert len(delivered) == 3  # each message once: nothing resent on the new session
    assert all(sum(f"<m{i}@".encode() in d for d in delivered) == 1 for i in range(1, 4))


@pytest.mark.parametrize("where", ["rcpt", "data"])
async def test_a_4xx_for_one_recipient_defers_only_that_one(
    dev_pki: DevPki, tmp_path: Path, scripted: ScriptedLmtp, where: str
) -> None:
    (scripted.refuse_rcpt if where == "rcpt" else scripted.defer_data).add(BRUNO)
    async with opened_site(
        tmp_path, dev_pki, inbound=lmtp_to(scripted.port), actor="local-delivery"
    ) as site:
        queue = site.local
        queue_id = await queue.add(envelope(ALICE, BRUNO), INBOUND_AGENT, LETTER)
        delivery = await site.local_delivery()
        [first] = await delivery.drain()
        assert first.disposition == "deferred"
        codes = {address: code for address, code, _ in first.replies}
        assert codes == {ALICE: 250, BRUNO: 450 if where == "rcpt" else 452}
        [info] = await queue.scan("deferred")
        assert info.record is not None
        states = [s.status for s in info.record.state.recipients]
        assert states == [RecipientStatus.DELIVERED, RecipientStatus.DEFERRED]

        scripted.refuse_rcpt.clear()
        scripted.defer_data.clear()
        await queue.retry(queue_id)
        [second] = await delivery.drain()
        assert second.disposition == "completed"
        assert [(a, c) for a, c, _ in second.replies] == [(BRUNO, 250)]  # Bruno only
    assert [t.recipients for t in scripted.transactions] == (
        [[ALICE], [BRUNO]] if where == "rcpt" else [[ALICE, BRUNO], [BRUNO]]
    )
    assert len(scripted.delivered_to(ALICE)) == 1  # Alice's copy never sent twice
    outcomes = [(e.rcpt_to[0], e.outcome) for e in site.trail.of_type("delivery.local")]
    assert outcomes == [(ALICE, "delivered"), (BRUNO, "deferred"), (BRUNO, "delivered")]


class CountingTrail(Trail):
    """A trail that sets ``done`` once ``expected`` local deliveries are recorded."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.done = asyncio.Event()

    async def record(self, event: AuditEvent) -> object:
        await super().record(event)
        if len(self.of_type("delivery.local")) >= self.expected:
            self.done.set()
        return None


async def test_run_reuses_a_connection_and_closes_it_when_stopped(
    dev_pki: DevPki, tmp_path: Path, scripted: ScriptedLmtp
) -> None:
    trail = CountingTrail(4)
    inbound = lmtp_to(scripted.port)
    async with opened_site(
        tmp_path, dev_pki, inbound=inbound, actor="local-delivery", trail=trail
    ) as site:
        await queue_letters_to_alice(site.spool, 4)
        delivery = LocalDelivery(
            site.config,
            site.spool,
            trail,
            policy=POLICY,
            clock=site.clock,
            poll_interval=0.01,
            connections=1,
        )
        stop = asyncio.Event()
        worker = asyncio.ensure_future(delivery.run(stop))
        try:
            await trail.done.wait()
        finally:
            stop.set()
            await worker
    assert scripted.connections == 1 and len(scripted.transactions) == 4
    assert scripted.quits == 1  # the pooled session was closed politely on stop


async def test_idle_sessions_past_their_time_are_closed(scripted: ScriptedLmtp) -> None:
    pool = StorePool(StoreTarget(True, "127.0.0.1", scripted.port, "mx.chu-a.test"), size=2)
    try:
        await asyncio.gather(*(pool.deliver(CLAIRE, [ALICE], numbered(i)) for i in (1, 2)))
        assert pool.opened == 2
        assert await pool.close_expired() == 0  # fresh: kept for the next message
        later = time.monotonic() + MAX_IDLE + 1
        assert await pool.close_expired(later) == 2
        assert scripted.quits == 2
        await pool.deliver(CLAIRE, [ALICE], numbered(3))  # a new session, not a dead one
        assert pool.opened == 3 and len(scripted.delivered_to(ALICE)) == 3
    finally:
        await pool.aclose()
