"""Adversarial review of the relay's TLS promise (issue 6): a message leaves only over
the TLS its route demands, and nothing a man in the middle writes in clear text can
stand for what the verified peer said.

The peer here is a small scripted SMTP server on 127.0.0.1 (transcript test, STYLE 12):
greeting and EHLO in clear, STARTTLS with the dev PKI's ``mx.clinique-b.test``
certificate, then a plain SMTP state machine over TLS that refuses every RCPT. What it
writes in the same segment as its ``220`` to STARTTLS stands for what an attacker on
the path injects before the handshake (the client side of CVE-2011-0411, RFC 3207 §4.2
"the client MUST discard any knowledge obtained from the server"). Other modes of the
same peer answer STARTTLS with 454, hang up, or write clear text where the handshake
should be, while taking any message in clear: what a downgrade would leak.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.pki.dev import DevPki
from gateway.relay.client import RelayClient
from tests.peers.small_fixtures import sink_tls_context
from tests.relay.client_helpers import (
    LOOPBACK,
    MESSAGE,
    content_of,
    envelope,
    relay_clients_fixture,  # noqa: F401 (the relay_clients fixture)
    static_route,
)

RECIPIENT = "bob@clinique-b.test"

#: A whole successful transaction, written by the attacker in clear after the ``220``.
FAKE_TRANSACTION = (
    b"250 fake-ehlo\r\n"
    b"250 2.1.0 fake-mail\r\n"
    b"250 2.1.5 fake-rcpt\r\n"
    b"354 fake-data\r\n"
    b"250 2.0.0 fake-queued\r\n"
)


class StartTlsPeer:
    """Clear greeting and EHLO (STARTTLS offered). To STARTTLS, by ``mode``: ``tls``
    answers ``220`` (with ``injected`` in the same write) and starts TLS; ``refuse``
    answers 454 and stays in clear; ``close`` answers 220 and hangs up; ``garbage``
    answers 220 and then writes clear text where the handshake should be. In clear it
    takes any message (``clear_messages``: what a downgrade would leak); over TLS it
    refuses every RCPT with 550. Records the lines read in clear and over TLS."""

    def __init__(self, context: ssl.SSLContext, mode: str, injected: bytes) -> None:
        self._context = context
        self._mode = mode
        self._injected = injected
        self.clear_lines: list[bytes] = []
        self.tls_lines: list[bytes] = []
        self.clear_messages: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> StartTlsPeer:
        self._server = await asyncio.start_server(self._session, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            writer.write(b"220 peer.test ESMTP\r\n")
            if await self._clear_phase(reader, writer):
                await self._tls_phase(reader, writer)
        except (OSError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _clear_phase(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve in clear; True once TLS is up (``tls`` mode)."""
        while line := await reader.readline():
            self.clear_lines.append(line)
            verb = line[:8].upper().rstrip()
            if verb == b"STARTTLS":
                if self._mode == "refuse":
                    writer.write(b"454 4.7.0 TLS not available now\r\n")
                    await writer.drain()
                    continue
                writer.write(b"220 2.0.0 ready to start TLS\r\n" + self._injected)
                await writer.drain()
                if self._mode == "tls":
                    await writer.start_tls(self._context)
                    return True
                if self._mode == "garbage":
                    writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                    await writer.drain()
                return False
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                self.clear_messages.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 2.0.0 taken in clear\r\n")
            elif verb.startswith((b"EHLO", b"HELO")):
                writer.write(b"250-peer.test\r\n250 STARTTLS\r\n")
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
        return False

    async def _tls_phase(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            self.tls_lines.append(line)
            verb = line[:4].upper()
            if verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            writer.write(self._answer(verb))
            await writer.drain()

    @staticmethod
    def _answer(verb: bytes) -> bytes:
        if verb in (b"EHLO", b"HELO"):
            return b"250-peer.test\r\n250 SIZE 10000000\r\n"
        if verb in (b"MAIL", b"RSET", b"NOOP"):
            return b"250 2.0.0 ok\r\n"
        if verb == b"RCPT":
            return b"550 5.1.1 no such user here\r\n"
        if verb == b"DATA":
            return b"554 5.5.1 no valid recipients\r\n"
        return b"500 5.5.2 command unrecognised\r\n"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None


PeerFactory = Callable[..., Awaitable[StartTlsPeer]]


@pytest.fixture(name="starttls_peer")
async def starttls_peer_fixture(dev_pki: DevPki) -> AsyncIterator[PeerFactory]:
    """``await make(mode="tls", injected=b"")`` -> a started ``StartTlsPeer`` with the
    ``mx.clinique-b.test`` certificate; all stopped at teardown, also on failure."""
    made: list[StartTlsPeer] = []

    async def make(mode: str = "tls", injected: bytes = b"") -> StartTlsPeer:
        peer = StartTlsPeer(sink_tls_context(dev_pki), mode, injected)
        made.append(peer)
        return await peer.start()

    try:
        yield make
    finally:
        for peer in made:
            await peer.stop()


async def test_the_scripted_peer_refuses_the_recipient_without_injection(
    starttls_peer: PeerFactory, relay_clients: Callable[..., RelayClient]
) -> None:
    """Control for the test below: over verified TLS, the peer's 550 is what counts."""
    peer = await starttls_peer()
    result = await relay_clients().deliver(
        static_route(peer.port), envelope(RECIPIENT), content_of(MESSAGE)
    )
    outcome = result.per_recipient[RECIPIENT]
    assert not outcome.delivered and outcome.permanent, outcome
    assert outcome.code == 550 and "no such user" in outcome.text
    assert result.peer_verified
    assert any(line.startswith(b"RCPT TO:") for line in peer.tls_lines)


@pytest.mark.parametrize("tls", ["verify", "opportunistic"])
async def test_clear_text_injected_after_the_starttls_reply_is_never_a_reply(
    starttls_peer: PeerFactory, relay_clients: Callable[..., RelayClient], tls: str
) -> None:
    """FINDING. RFC 3207 §4.2 (CVE-2011-0411, client side): bytes that arrived in clear
    after the ``220`` to STARTTLS must be discarded or end the session. Read as replies
    once TLS is up, they let an attacker who cannot break TLS answer the whole
    transaction and make the relay record "delivered" (250 "fake-queued") while the
    verified peer refused the recipient: the entry is completed, no DSN, the message
    is lost."""
    peer = await starttls_peer(injected=FAKE_TRANSACTION)
    result = await relay_clients().deliver(
        static_route(peer.port, tls=tls), envelope(RECIPIENT), content_of(MESSAGE)
    )
    outcome = result.per_recipient[RECIPIENT]
    assert "fake" not in outcome.text, f"an injected clear-text line was read as a reply: {outcome}"
    assert not outcome.delivered, outcome
    assert not any(line.startswith(b"MAIL") for line in peer.clear_lines)


@pytest.mark.parametrize("tls", ["verify", "opportunistic"])
@pytest.mark.parametrize("mode", ["refuse", "close", "garbage"])
async def test_a_failed_starttls_never_continues_in_clear(
    starttls_peer: PeerFactory, relay_clients: Callable[..., RelayClient], tls: str, mode: str
) -> None:
    """Held: STARTTLS offered, then 454, a hang-up after the 220, or clear text where
    the handshake should be: the message is deferred (4xx, retried), and nothing of it
    is sent in clear to a peer that would take it."""
    peer = await starttls_peer(mode=mode)
    result = await relay_clients().deliver(
        static_route(peer.port, tls=tls), envelope(RECIPIENT), content_of(MESSAGE)
    )
    outcome = result.per_recipient[RECIPIENT]
    assert not outcome.delivered and not outcome.permanent, outcome
    assert peer.clear_messages == []
    assert not any(line.startswith(b"MAIL") for line in peer.clear_lines)
    assert peer.tls_lines == []
