"""Shared builders for the relay tests: routes, TLS/trust sections and a relay client
wired to the session's development PKI; for the SMTP client's wire tests, a recording TCP
proxy, an aiosmtpd server without PIPELINING and a scripted peer. Test code only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from gateway.config.hosts import HostPort
from gateway.config.model import Route, TlsSection, TrustSection
from gateway.pki.dev import DevPki
from gateway.relay.client import RelayClient
from gateway.relay.mx import MxResolver, make_resolver
from gateway.relay.smtp_data import ContentSource
from gateway.relay.tlsclient import PeerVerifier
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listeblanche import ListeBlanche
from gateway.spool.model import Envelope, MailParams, Recipient
from tests.peers.ports import free_port

LOOPBACK = "127.0.0.1"
OUR_HOSTNAME = "mx.chu-a.test"
SENDER = "alice.martin@chu-a.test"


def make_route(**overrides: Any) -> Route:
    """A ``[[routes]]`` entry with the contract's defaults (tls = verify, smime)."""
    fields: dict[str, Any] = {
        "name": "clinique-b",
        "domains": ("clinique-b.test",),
        "transport": "smtp",
        "next_hop": None,
        "tls": "verify",
        "tls_name": None,
        "security": "smime",
        "wrap": False,
        "fallback": "bounce",
        "anchors": (),
        "auth_user": None,
        "auth_password_file": None,
    }
    fields.update(overrides)
    return Route(**fields)


def static_route(port: int, **overrides: Any) -> Route:
    """A route to 127.0.0.1:``port`` verified as mx.clinique-b.test."""
    defaults: dict[str, Any] = {
        "next_hop": HostPort("127.0.0.1", port),
        "tls_name": "mx.clinique-b.test",
    }
    return make_route(**(defaults | overrides))


def tls_section(pki: DevPki) -> TlsSection:
    return TlsSection(
        certificate=pki.server_cert(OUR_HOSTNAME),
        private_key=pki.server_key(OUR_HOSTNAME),
        min_version="1.2",
        ciphers="",
    )


def trust_section(pki: DevPki, anchors: Sequence[Path] | None = None) -> TrustSection:
    return TrustSection(
        anchors=tuple(anchors) if anchors is not None else (pki.root_cert,),
        intermediates=(pki.intermediates,),
        crls=(pki.crl("serveurs"),),
        revocation="hard-fail",
        liste_blanche=None,
    )


def relay_client(
    pki: DevPki,
    *,
    resolver: MxResolver | None = None,
    trust: TrustSection | None = None,
    liste_blanche: ListeBlanche | None = None,
    concurrency: int = 10,
    mx_port: int = 25,
) -> RelayClient:
    trust = trust or trust_section(pki)
    validator = CertificateValidator.from_files(
        trust.anchors, trust.intermediates, trust.crls, trust.revocation
    )
    return RelayClient(
        helo_name=OUR_HOSTNAME,
        tls=tls_section(pki),
        trust=trust,
        resolver=resolver or MxResolver(make_resolver([]), mx_port=mx_port),
        verifier=PeerVerifier(validator, liste_blanche),
        concurrency_per_destination=concurrency,
    )


def envelope(*recipients: str, **params: Any) -> Envelope:
    return Envelope(
        SENDER, tuple(Recipient(address) for address in recipients), MailParams(**params)
    )


def content_of(*chunks: bytes) -> ContentSource:
    """A content source that yields ``chunks`` (fresh iterator per call)."""

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return source


MESSAGE = (
    b"From: alice.martin@chu-a.test\r\nTo: bob@clinique-b.test\r\n"
    b"Subject: [...]\r\nMessage-ID: <relay-test@chu-a.test>\r\n\r\n"
    b"line one\r\n.starts with a dot\r\nlast line\r\n"
)


@pytest.fixture(name="relay_clients")
async def relay_clients_fixture(dev_pki: DevPki) -> AsyncIterator[Callable[..., RelayClient]]:
    """``make(**relay_client keywords)``; every client made is closed at teardown, also
    when the test failed (no socket left open)."""
    made: list[RelayClient] = []

    def make(**kwargs: Any) -> RelayClient:
        client = relay_client(dev_pki, **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


# -- what the client puts on the wire -----------------------------------------------------


class RecordingProxy:
    """A plain TCP relay on 127.0.0.1 between the client under test and a server.

    It records what the client sent, per connection, as the chunks it read (one
    ``recv`` each): a pipelined group written at once arrives as one chunk, and a client
    that waits for each reply can never have two commands in one chunk. ``drop_all``
    closes every open connection (a peer that hung up on an idle session). Plain text
    only: after STARTTLS it would record ciphertext. Runs on the test's event loop;
    ``stop`` (or the ``recording_proxy`` fixture) closes everything it opened.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections: list[list[bytes]] = []
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks: list[bytes] = []
        self.connections.append(chunks)
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            pumps = {
                asyncio.ensure_future(_pump(reader, up_writer, chunks)),
                asyncio.ensure_future(_pump(up_reader, writer, None)),
            }
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._open.discard(pair)
            for side in pair:
                side.transport.abort()

    def sent_chunks(self) -> list[bytes]:
        """Every chunk the client sent, all connections in order."""
        return [chunk for chunks in self.connections for chunk in chunks]

    def drop_all(self) -> None:
        """Close every open connection at once (both sides)."""
        for pair in list(self._open):
            for side in pair:
                side.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: list[bytes] | None
) -> None:
    try:
        while data := await reader.read(65536):
            if record is not None:
                record.append(data)
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        return


@pytest.fixture(name="recording_proxy")
async def recording_proxy_fixture() -> AsyncIterator[Callable[[int], Awaitable[RecordingProxy]]]:
    """``await make(target_port)`` -> a started ``RecordingProxy``; all stopped at teardown."""
    made: list[RecordingProxy] = []

    async def make(target_port: int) -> RecordingProxy:
        proxy = RecordingProxy(target_port)
        made.append(proxy)
        return await proxy.start()

    try:
        yield make
    finally:
        for proxy in made:
            await proxy.stop()


def command_chunks(chunks: Sequence[bytes], verb: bytes) -> list[bytes]:
    """The chunks that hold a command line starting with ``verb`` (``b"RCPT TO:"``)."""
    return [c for c in chunks if c.startswith(verb) or b"\r\n" + verb in c]


# -- peers without PIPELINING, and a scripted one -----------------------------------------


class LockstepHandler:
    """aiosmtpd handler (aiosmtpd 1.4.6 does not offer PIPELINING): records each message
    and refuses the addresses of ``refused`` with their reply."""

    def __init__(self, refused: dict[str, str] | None = None) -> None:
        self.refused = refused or {}
        self.messages: list[tuple[tuple[str, ...], bytes]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, env: SmtpEnvelope, address: str, options: list[str]
    ) -> str:
        if address in self.refused:
            return self.refused[address]
        env.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: SMTP, session: Session, env: SmtpEnvelope) -> str:
        assert isinstance(env.original_content, bytes)
        self.messages.append((tuple(env.rcpt_tos), env.original_content))
        return "250 2.0.0 queued"


@pytest.fixture(name="lockstep_server")
def lockstep_server_fixture() -> Iterator[Callable[..., tuple[LockstepHandler, int]]]:
    """``make(refused=None)`` -> (handler, port) of a started aiosmtpd server on loopback,
    no TLS, no PIPELINING; every one stopped at teardown."""
    controllers: list[Controller] = []

    def make(refused: dict[str, str] | None = None) -> tuple[LockstepHandler, int]:
        handler = LockstepHandler(refused)
        port = free_port()
        controller = Controller(handler, hostname=LOOPBACK, port=port)
        controller.start()
        controllers.append(controller)
        return handler, port

    try:
        yield make
    finally:
        for controller in controllers:
            controller.stop()


class ScriptedPeer:
    """A loopback SMTP peer that answers each line it reads with the next reply of
    ``replies`` (after its own greeting) and records the lines: a transcript test
    (STYLE 12) for replies no real server gives, such as a 354 to DATA when no RCPT
    was accepted. When the script runs out it closes the connection."""

    def __init__(self, replies: Sequence[bytes]) -> None:
        self.replies = list(replies)
        self.lines: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._session, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 scripted.test ESMTP\r\n")
            for reply in self.replies:
                line = await reader.readline()
                if not line:
                    break
                self.lines.append(line)
                writer.write(reply)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
