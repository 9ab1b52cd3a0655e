"""``gateway.inbound.store_client`` with PIPELINING (RFC 2920 §3.1, RFC 2033 §5): the
pooled session's RSET, MAIL, RCPT and DATA go in one write when the store advertises
it, and one at a time when it does not; nothing of a message leaves before a ``354``,
and a pooled session whose pipelined RSET fails gives way to a fresh one without the
message being sent twice.

``Store`` is a test double written here: a few lines of LMTP on 127.0.0.1 that record,
for every command, whether the client had already sent the next one before the reply
(the mark of pipelining), and what each session stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.inbound import store_client
from gateway.inbound.store_client import StorePool, StoreTarget
from tests.inbound.site import ALICE, BRUNO, CLAIRE, numbered
from tests.inbound.test_delivery_hunt import Handler, serving


class CountedSessions:
    """What every scripted store here does around its ``_converse``: count the
    connection, end quietly when the client goes, close (``serving`` closes the rest)."""

    connections: int

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self._converse(reader, writer)
        writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class Store(CountedSessions):
    """An LMTP store. ``pipelining``: advertise it. ``hold_replies``: answer nothing
    until the client's DATA arrived (a lock-step client would wait for ever).
    ``refuse``: RCPT refused with 550. ``rset_then_close``: answer the first RSET of a
    session ``421`` and hang up. ``data_always_354``: open DATA even without a
    recipient (a lenient store)."""

    pipelining: bool = True
    hold_replies: bool = False
    refuse: frozenset[str] = frozenset()
    rset_then_close: bool = False
    data_always_354: bool = False
    connections: int = 0
    ahead: list[str] = field(default_factory=list)  # commands read with more behind them
    stored: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted LMTP\r\n")
        recipients: list[str] = []
        held: list[bytes] = []
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if reader._buffer:  # type: ignore[attr-defined]  # the client did not wait
                self.ahead.append(verb)
            if verb == "LHLO":
                extensions = b"250-PIPELINING\r\n" if self.pipelining else b""
                writer.write(b"250-scripted\r\n" + extensions + b"250 ENHANCEDSTATUSCODES\r\n")
            elif verb == "RSET" and self.rset_then_close:
                writer.write(b"421 4.3.2 shutting down\r\n")
                await writer.drain()
                return
            elif verb in ("RSET", "MAIL"):
                recipients = [] if verb == "RSET" else recipients
                held.append(b"250 2.0.0 OK\r\n")
            elif verb == "RCPT":
                address = line.split("<", 1)[1].rstrip(">")
                if address in self.refuse:
                    held.append(b"550 5.1.1 no such user\r\n")
                else:
                    recipients.append(address)
                    held.append(b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                if not recipients and not self.data_always_354:
                    held.append(b"503 5.5.1 no valid recipients\r\n")
                else:
                    writer.write(b"".join(held) + b"354 go ahead\r\n")
                    held = []
                    await writer.drain()
                    data = await reader.readuntil(b"\r\n.\r\n")
                    self.stored.append((list(recipients), data))
                    writer.write(
                        b"".join(f"250 2.0.0 <{a}> saved\r\n".encode() for a in recipients)
                    )
                    recipients = []
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                held.append(b"500 5.5.1 unknown command\r\n")
            if held and (not self.hold_replies or verb in ("DATA", "LHLO")):
                writer.write(b"".join(held))
                held = []
            await writer.drain()


@contextlib.asynccontextmanager
async def pool_on(store: Handler | Store) -> AsyncIterator[StorePool]:
    """A one-session ``StorePool`` on ``store`` (a ``Store`` or any session handler)
    listening on loopback, closed on the way out."""
    handler = store.session if isinstance(store, Store) else store
    async with serving(handler) as port:
        pool = StorePool(StoreTarget(True, "127.0.0.1", port, "mx.chu-a.test"), size=1)
        try:
            yield pool
        finally:
            await pool.aclose()


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_TIMEOUT", "QUIT_TIMEOUT", "COMMAND_TIMEOUT"):
        monkeypatch.setattr(store_client, name, 2.0)


async def test_a_pipelining_store_gets_rset_mail_rcpt_and_data_in_one_write() -> None:
    """The store answers nothing before DATA: only a pipelining client gets through."""
    store = Store(hold_replies=True)
    async with pool_on(store) as pool:
        first = await pool.deliver(CLAIRE, [ALICE, BRUNO], numbered(1))
        second = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert [r.code for r in first + second] == [250, 250, 250]
    assert store.connections == 1
    assert store.ahead == ["MAIL", "RCPT", "RCPT", "RSET", "MAIL", "RCPT"]
    assert [recipients for recipients, _ in store.stored] == [[ALICE, BRUNO], [ALICE]]


async def test_a_store_without_pipelining_gets_one_command_at_a_time() -> None:
    store = Store(pipelining=False)
    async with pool_on(store) as pool:
        await pool.deliver(CLAIRE, [ALICE, BRUNO], numbered(1))
        replies = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert [r.code for r in replies] == [250]
    assert store.ahead == []
    assert store.connections == 1 and len(store.stored) == 2


async def test_a_failed_pipelined_rset_moves_the_message_to_a_fresh_session_once() -> None:
    """The pooled session's RSET gets ``421`` and the store hangs up: the MAIL, RCPT and
    DATA behind it were sent, the content was not; the message goes over a new session,
    and the store holds it once."""
    store = Store()
    async with pool_on(store) as pool:
        await pool.deliver(CLAIRE, [ALICE], numbered(1))
        store.rset_then_close = True
        replies = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert [r.code for r in replies] == [250]
    assert store.connections == 2
    assert sum(b"<m2@" in data for _, data in store.stored) == 1


async def test_no_accepted_recipient_sends_no_content_and_a_354_retires_the_session() -> None:
    """Every RCPT refused, yet the lenient store answers the pipelined DATA with 354:
    the client sends nothing of the message, reports the refusals, and does not reuse a
    session left inside DATA."""
    store = Store(refuse=frozenset({ALICE}), data_always_354=True)
    async with pool_on(store) as pool:
        refused = await pool.deliver(CLAIRE, [ALICE], numbered(1))
        store.refuse = frozenset()
        delivered = await pool.deliver(CLAIRE, [BRUNO], numbered(2))
    assert [r.code for r in refused] == [550]
    assert [r.code for r in delivered] == [250]
    assert [recipients for recipients, _ in store.stored] == [[BRUNO]]
    assert store.connections == 2


async def test_no_accepted_recipient_with_data_refused_keeps_the_session() -> None:
    store = Store(refuse=frozenset({ALICE}))
    async with pool_on(store) as pool:
        refused = await pool.deliver(CLAIRE, [ALICE], numbered(1))
        store.refuse = frozenset()
        delivered = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert [r.code for r in refused] == [550]
    assert [r.code for r in delivered] == [250]
    assert store.connections == 1 and len(store.stored) == 1
