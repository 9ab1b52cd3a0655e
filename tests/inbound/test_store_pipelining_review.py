"""Review of ``gateway.inbound.store_client``'s pipelining (session 8, R1): duplicate
recipients, cancellation while a pooled session is being closed, and the attacks that
found nothing (odd PIPELINING keywords, a reply too many, a 421 inside the group, a
cancellation inside the group).

``Store`` and ``pool_on`` are the LMTP double of ``test_store_pipelining``; ``Silent``
is a store that answers the session but never its ``QUIT`` (written here).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import pytest

from gateway.inbound import store_client
from gateway.inbound.store_client import StorePool, StoreSession, StoreTarget, TemporaryFailure
from gateway.pki.dev import DevPki
from gateway.relay.smtp_reply import ReplyParser
from tests.inbound.site import ALICE, BRUNO, CLAIRE, numbered
from tests.inbound.test_delivery_hunt import lmtp_send, serving
from tests.inbound.test_store_pipelining import Store, pool_on
from tests.peers.fixtures import tls_files


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_TIMEOUT", "QUIT_TIMEOUT", "COMMAND_TIMEOUT"):
        monkeypatch.setattr(store_client, name, 2.0)


@pytest.mark.parametrize("twin", [ALICE, ALICE.replace("chu-a.test", "CHU-A.test")])
@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_repeated_mailbox_gets_one_rcpt_and_every_occurrence_its_reply(
    pipelining: bool, twin: str
) -> None:
    """An old record may list a mailbox twice (``gateway.spool.model``: one delivery per
    mailbox, the same state for every occurrence; the domain compares without case, RFC
    5321 §2.4): the store must not file it twice."""
    store = Store(pipelining=pipelining)
    async with pool_on(store) as pool:
        replies = await pool.deliver(CLAIRE, [ALICE, BRUNO, twin], numbered(1))
    assert [recipients for recipients, _ in store.stored] == [[ALICE, BRUNO]]
    assert len(replies) == 3 and replies[0] == replies[2]
    assert [r.code for r in replies] == [250, 250, 250]


@pytest.mark.parametrize("keyword", ["XPIPELINING", "PIPELINING-LIKE", "PIPELININGX"])
def test_a_keyword_that_only_contains_pipelining_is_not_pipelining(keyword: str) -> None:
    hello = ReplyParser()
    reply = None
    for line in (b"250-store\r\n", f"250-{keyword}\r\n".encode(), b"250 8BITMIME\r\n"):
        reply = hello.feed(line)
    assert reply is not None and not store_client._advertises(reply, "PIPELINING")


def test_pipelining_in_odd_case_with_parameters_is_pipelining() -> None:
    hello = ReplyParser()
    reply = None
    for line in (b"250-store\r\n", b"250-pIpElInInG extra\r\n", b"250 8BITMIME\r\n"):
        reply = hello.feed(line)
    assert reply is not None and store_client._advertises(reply, "PIPELINING")


class Silent:
    """An LMTP store that pipelines, stores nothing, and never answers ``QUIT``;
    ``quit_seen`` is set when the client's ``QUIT`` arrived, ``rcpt_seen`` at a RCPT
    it will not answer when ``mute_rcpt``."""

    def __init__(self, *, mute_rcpt: bool = False) -> None:
        self.mute_rcpt = mute_rcpt
        self.quit_seen = asyncio.Event()
        self.rcpt_seen = asyncio.Event()
        self.ended = asyncio.Event()  # the (one) session is over: its socket closed

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 silent\r\n")
        try:
            with contextlib.suppress(ConnectionError):
                while line := await reader.readline():
                    self._answer(line.split(b" ", 1)[0].strip().upper(), writer)
        finally:
            writer.close()
            self.ended.set()

    def _answer(self, verb: bytes, writer: asyncio.StreamWriter) -> None:
        if verb == b"LHLO":
            writer.write(b"250-silent\r\n250 PIPELINING\r\n")
        elif verb == b"QUIT":
            self.quit_seen.set()
        elif verb == b"RCPT" and self.mute_rcpt:
            self.rcpt_seen.set()
        elif verb == b"DATA":
            writer.write(b"554 5.5.1 nothing here\r\n")
        else:
            writer.write(b"250 2.0.0 OK\r\n")


def silent_pool(store: Silent) -> contextlib.AbstractAsyncContextManager[StorePool]:
    return pool_on(store.session)


async def cancelled(task: asyncio.Task[object]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_while_closing_an_expired_session_the_socket_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker stops (or a deadline expires) while the pool says ``QUIT`` to an
    expired session: the session is out of the pool, so its socket must not stay open."""
    monkeypatch.setattr(store_client, "QUIT_TIMEOUT", 60.0)  # cancelled long before
    store = Silent()
    async with silent_pool(store) as pool:
        await pool.deliver(CLAIRE, [ALICE], numbered(1))
        (session,) = pool._idle
        session.last_used -= store_client.MAX_IDLE + 1  # expired: closed by the next take
        task = asyncio.ensure_future(pool.deliver(CLAIRE, [ALICE], numbered(2)))
        await store.quit_seen.wait()
        await cancelled(task)
        assert session.talk.writer.transport.is_closing()
        assert pool._idle == []
        await store.ended.wait()  # the store saw the connection end


async def test_cancelled_inside_the_group_no_session_goes_back_to_the_pool() -> None:
    """Found nothing: a cancellation while the RCPT replies are awaited closes the
    session (QUIT), and the next delivery opens a new one."""
    store = Silent(mute_rcpt=True)
    async with silent_pool(store) as pool:
        task = asyncio.ensure_future(pool.deliver(CLAIRE, [ALICE], numbered(1)))
        await store.rcpt_seen.wait()
        sessions: list[StoreSession] = []
        original = StoreSession.close

        async def spy(self: StoreSession) -> None:
            sessions.append(self)
            await original(self)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(StoreSession, "close", spy)
            await cancelled(task)
        assert pool._idle == [] and len(sessions) == 1
        assert sessions[0].talk.writer.transport.is_closing()
        await store.ended.wait()


async def test_a_421_inside_the_group_defers_and_stores_nothing() -> None:
    """Found nothing: MAIL answered 421 and the store hangs up mid-group."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 s\r\n")
        await reader.readline()
        writer.write(b"250-s\r\n250 PIPELINING\r\n")
        await reader.readline()
        writer.write(b"421 4.3.2 going down\r\n")
        await writer.drain()
        writer.close()

    async with serving(session) as port:
        with pytest.raises(TemporaryFailure):
            await lmtp_send(port, [ALICE], numbered(1))


async def test_a_reply_too_many_before_the_message_is_a_protocol_error() -> None:
    """Found nothing: the store sends its final reply together with the 354 (before the
    content): the content is not sent and the delivery is deferred, never 'delivered'."""
    received: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 s\r\n")
        await reader.readline()
        writer.write(b"250-s\r\n250 PIPELINING\r\n")
        for _ in range(3):  # MAIL, RCPT, DATA
            await reader.readline()
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 stored\r\n")
        await writer.drain()
        received.append(await reader.read(65536))
        writer.close()

    async with serving(session) as port:
        with pytest.raises(TemporaryFailure):
            await lmtp_send(port, [ALICE], numbered(1))
    assert b"Dupont" not in b"".join(received)


STORE_HOST = "hospital.chu-a.test"  # a server of the dev PKI (``PEER_SERVERS``)


def store_contexts(pki: DevPki) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``STORE_HOST`` (leaf and chain of the dev PKI) and a client
    context trusting the dev PKI's CAs only."""
    files = tls_files(pki, STORE_HOST)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)
    return server, ssl.create_default_context(cafile=str(files.ca))


@pytest.mark.parametrize(("before", "after"), [(True, False), (False, True)])
async def test_pipelining_is_decided_by_the_ehlo_after_starttls(
    dev_pki: DevPki, monkeypatch: pytest.MonkeyPatch, before: bool, after: bool
) -> None:
    """Found nothing: RFC 3207 §4.2, what the clear-text EHLO said is forgotten."""
    server_context, client_context = store_contexts(dev_pki)
    monkeypatch.setattr(store_client, "is_loopback", lambda host: False)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 store.test\r\n")
        await reader.readline()  # EHLO
        extensions = b"250-PIPELINING\r\n" if before else b""
        writer.write(b"250-store.test\r\n" + extensions + b"250 STARTTLS\r\n")
        await reader.readline()  # STARTTLS
        writer.write(b"220 go\r\n")
        await writer.drain()
        await writer.start_tls(server_context)
        await reader.readline()  # EHLO again
        extensions = b"250-PIPELINING\r\n" if after else b""
        writer.write(b"250-store.test\r\n" + extensions + b"250 8BITMIME\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    real_open = asyncio.open_connection

    async def to_loopback(
        host: str, port: int, **options: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await real_open("127.0.0.1", port, **options)  # STORE_HOST is here

    monkeypatch.setattr(asyncio, "open_connection", to_loopback)
    try:
        target = StoreTarget(False, STORE_HOST, port, "mx.chu-a.test", client_context)
        opened = await StoreSession.open(target)
        await opened.close()
    finally:
        server.close()
        await server.wait_closed()
    assert opened.pipelining is after


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_rcpt_answered_252_is_delivered_only_by_the_reply_after_the_dot(
    pipelining: bool,
) -> None:
    """RFC 5321 §4.2.1: any 2yz is a positive completion, so a store that answers RCPT
    ``252`` (meant for VRFY, §4.2.2) has accepted the recipient. Reporting that ``252``
    as the outcome would say "delivered" for a message never sent."""
    stored: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 s\r\n")
        extensions = b"250-PIPELINING\r\n" if pipelining else b""
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"LHLO":
                writer.write(b"250-s\r\n" + extensions + b"250 8BITMIME\r\n")
            elif verb == b"RCPT":
                writer.write(b"252 2.1.5 will try\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                stored.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 2.0.0 stored\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        replies = await store_client.send_over_protocol(
            lmtp=True,
            host="127.0.0.1",
            port=port,
            helo="mx.chu-a.test",
            mail_from=CLAIRE,
            recipients=[ALICE],
            content=numbered(1),
        )
    finally:
        server.close()
        await server.wait_closed()
    assert [(r.code, r.text) for r in replies] == [(250, "2.0.0 stored")]
    assert len(stored) == 1
