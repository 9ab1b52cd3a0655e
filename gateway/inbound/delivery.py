"""Local delivery: ``local/`` in, the hospital's mail store out (LMTP, SMTP or Maildir).

Role (issue 7 item 3): the consumer of the spool's ``local`` queue, written by the
inbound agent (one entry per local recipient, already decrypted and marked). Each entry
goes where ``[inbound] deliver_to`` says:

- ``lmtp://host:port`` (RFC 2033): LHLO, MAIL, one RCPT per recipient, DATA, then *one
  reply per accepted RCPT*, in RCPT order (§4.2): each recipient's outcome is its own;
- ``smtp://host:port`` (RFC 5321) to the hospital's server: STARTTLS (RFC 3207) is
  required unless the host is a loopback address; the server certificate is verified
  against ``[trust] anchors`` and the system store (a hospital server has no S/MIME
  certificate of ours to pin). One DATA reply counts for every accepted recipient;
- ``maildir:PATH``: one Maildir per local part, ``PATH/<local part>/{tmp,new,cur}``
  (the layout Dovecot's ``mail_location = maildir:PATH/%n`` reads). A local part that
  cannot name a directory (``/``, a leading dot, NUL, control characters) fails
  (5.1.3). The file is written in ``tmp/`` (O_EXCL, 0600), fsynced, renamed into
  ``new/`` and ``new/`` is fsynced (the Maildir protocol: a reader never sees a partial
  file); names are ``<seconds>.M<usec>P<pid>Q<counter>R<random>.<host>`` with ``/`` and
  ``:`` of the host name escaped as ``\\057`` and ``\\072`` (maildir spec, Dovecot's
  conventions).

Outcomes per recipient: 2xx -> delivered; 4xx, a refused connection, a timeout, a
protocol error or a Maildir I/O error -> deferred with the ``RetryPolicy`` of
``[delivery]`` (past ``max_lifetime``: failed, ``expired``); 5xx -> failed with a
failure DSN (``gateway.relay.dsn``: the sender is told; ``protected`` unless the sender
is local, as in the secure agent). One ``delivery.local`` audit event per recipient.

Dispatched MDN (issue 7 item 5; Direct "Delivery Notification" guide §3): when a
recipient is delivered and the message asks for it with
``Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true``
(``wants_final_delivery_mdn``), a *dispatched* MDN is queued into ``received`` by
``gateway.inbound.stage.queue_mdn`` (clear, signed and encrypted by the secure agent;
hand-off key per recipient, so a repeated pass queues it once; never for an MDN, a DSN
or a null sender).

Connections (RFC 2033 §4.1, RFC 5321 §4.1.1.5): an LMTP or SMTP session carries many
transactions, so ``StorePool`` keeps up to ``connections`` sessions open (default 4)
and hands one to each entry in turn. A reused session is reset with ``RSET`` before its
next ``MAIL``; if that probe fails (the store closed the connection, a ``421``, a reset
socket, a timeout) the session is dropped and the transaction runs on a fresh one:
nothing of the message was sent yet, so this cannot deliver twice. A session idle for
``MAX_IDLE`` seconds or open for ``MAX_AGE`` is closed (``QUIT``) rather than reused;
any error inside a transaction closes its session. Per-recipient replies are read as
before (LMTP: one per accepted RCPT; SMTP: the DATA reply for all).

Throughput (issue 7 Speed): ``concurrency`` entries (default 16) are in flight at once,
so their spool fsyncs and audit commits share group commits; those beyond the pool's
``connections`` wait for a free session. Entries finish in any order.

Invariants as in every stage runner: the DSN (and any MDN) is queued before the entry leaves
``active/``; a crash after the store's ``250`` and before ``complete`` delivers twice
at most (at-least-once, docs/spool.md).

Written by hand: the LMTP/SMTP client and its small connection pool are a few commands on
an asyncio stream (aiosmtplib is not a dependency, has no LMTP mode nor pool, and
``smtplib.LMTP`` misreads RFC 2033 §4.2 replies); reply parsing and dot-stuffing reuse
``gateway.relay.client``.

Trust level: runs in the delivery worker (``missive worker delivery``), which holds no
private key. It reads decrypted content: the local store is the end of the gateway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.audit import AuditEvent, AuditSink
from gateway.config import Config
from gateway.inbound.stage import queue_mdn
from gateway.log import get_logger
from gateway.relay import notices, routing
from gateway.relay.agent_stage import handoff_key
from gateway.relay.client import DotStuffer, ProtocolError, Reply, ReplyParser
from gateway.relay.dsn import (
    Action,
    Reason,
    RecipientReport,
    should_send_dsn,
)
from gateway.relay.mdn import Disposition, wants_final_delivery_mdn
from gateway.spool import (
    LOCAL,
    RECEIVED,
    AuditTrail,
    Claimed,
    CorruptEntry,
    Queue,
    Recipient,
    RecipientState,
    RecipientStatus,
    RetryPolicy,
    Spool,
    consumer,
)

log = get_logger("inbound.delivery")

DEFAULT_POLL_INTERVAL = 0.2
DEFAULT_CONCURRENCY = 16  # entries in flight: the spool and audit group their fsyncs
DEFAULT_CONNECTIONS = 4  # sessions open at once to the mail store
MAX_IDLE = 5.0  # seconds a pooled session may stay unused before it is closed
MAX_AGE = 300.0  # seconds a pooled session is used at most (then closed and reopened)
COMMAND_TIMEOUT = 60.0
QUIT_TIMEOUT = 5.0
DATA_TIMEOUT = 600.0
MAX_LINE = 4096
STATUS_EXPIRED = "5.4.7"
STATUS_BAD_MAILBOX = "5.1.3"
_counter = itertools.count(1)


@dataclass(frozen=True)
class StoreReply:
    """The store's answer for one recipient: an SMTP code and its text."""

    code: int
    text: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


class TemporaryFailure(Exception):
    """The store could not be reached or spoke nonsense: try again later."""


class PermanentFailure(Exception):
    """Nothing the store could do would ever accept this recipient (bad mailbox name)."""


@dataclass(frozen=True)
class DeliveryOutcome:
    """The end of one pass over one entry (for logs and tests)."""

    queue_id: str
    disposition: str  # "completed" | "bounced" | "deferred" | "held" | "corrupt"
    replies: tuple[tuple[str, int, str], ...] = ()  # (address, code, text)
    dsn: str | None = None


# -- LMTP and SMTP ------------------------------------------------------------------------


class _Conversation:
    """One LMTP or SMTP connection: commands and multi-line replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, timeout: float = COMMAND_TIMEOUT) -> Reply:
        parser = ReplyParser()
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise TemporaryFailure("connection closed by the mail store")
                reply = parser.feed(line)
                if reply is not None:
                    return reply

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        """``QUIT``, its ``221`` awaited briefly (RFC 5321 §4.1.1.10), then close; a dead
        or silent peer is not an error here."""
        try:
            self.writer.write(b"QUIT\r\n")
            await self.writer.drain()
            await self.reply(QUIT_TIMEOUT)
        except (OSError, RuntimeError, TimeoutError, TemporaryFailure, ProtocolError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost`` (TLS optional there)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StoreTarget:
    """Where ``LocalDelivery`` talks LMTP or SMTP, and how it introduces itself."""

    lmtp: bool
    host: str
    port: int
    helo: str
    tls_context: ssl.SSLContext | None = None


class StoreSession:
    """One open session with the store, greeted (and, for SMTP off loopback, under TLS);
    it runs one mail transaction after another (module docstring, "Connections")."""

    def __init__(self, talk: _Conversation, target: StoreTarget) -> None:
        self.talk = talk
        self.target = target
        self.opened = time.monotonic()
        self.last_used = self.opened
        self.transactions = 0

    @classmethod
    async def open(cls, target: StoreTarget) -> StoreSession:
        """Connect, read the greeting, LHLO/EHLO (and STARTTLS); ``TemporaryFailure``."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, limit=MAX_LINE),
                COMMAND_TIMEOUT,
            )
        except (OSError, TimeoutError) as error:
            raise TemporaryFailure(
                f"cannot connect to {target.host}:{target.port}: {error}"
            ) from error
        talk = _Conversation(reader, writer)
        try:
            await _introduce(talk, target)
        except BaseException as error:
            await talk.close()
            if isinstance(error, _SESSION_ERRORS):
                raise TemporaryFailure(f"{type(error).__name__}: {error}") from error
            raise
        return cls(talk, target)

    def expired(self, now: float) -> bool:
        """Too long idle or too old to be reused."""
        return now - self.last_used > MAX_IDLE or now - self.opened > MAX_AGE

    async def reset(self) -> bool:
        """``RSET`` before reusing the session; False if the session is no longer usable."""
        try:
            reply = await self.talk.command("RSET")
        except (TemporaryFailure, *_SESSION_ERRORS):
            return False
        return reply.code == 250

    async def send(
        self, mail_from: str, recipients: Sequence[str], content: bytes
    ) -> list[StoreReply]:
        """One mail transaction; ``TemporaryFailure`` (the session is then unusable)."""
        try:
            replies = await _mail_transaction(
                self.talk, self.target.lmtp, mail_from, recipients, content
            )
        except _SESSION_ERRORS as error:
            raise TemporaryFailure(f"{type(error).__name__}: {error}") from error
        self.transactions += 1
        self.last_used = time.monotonic()
        return replies

    async def close(self) -> None:
        """``QUIT`` and close (errors ignored)."""
        await self.talk.close()


_SESSION_ERRORS = (OSError, TimeoutError, ProtocolError, ssl.SSLError)


class StorePool:
    """Up to ``size`` sessions with one store, reused across transactions.

    ``deliver`` waits for a free slot, takes an idle session (``RSET`` first) or opens
    one, runs the transaction and gives the session back; a session that failed is
    closed, never given back. ``opened`` counts the connections made (for tests and
    the benchmark). ``aclose`` closes the idle sessions; call it when the stage stops.
    """

    def __init__(self, target: StoreTarget, *, size: int = DEFAULT_CONNECTIONS) -> None:
        if size < 1:
            raise ValueError("the pool needs at least one connection")
        self.target = target
        self.size = size
        self.opened = 0
        self._slots = asyncio.Semaphore(size)
        self._idle: list[StoreSession] = []

    async def deliver(
        self, mail_from: str, recipients: Sequence[str], content: bytes
    ) -> list[StoreReply]:
        """One transaction on a pooled session; ``TemporaryFailure`` as
        ``send_over_protocol``."""
        async with self._slots:
            session = await self._take()
            try:
                replies = await session.send(mail_from, recipients, content)
            except BaseException:
                await session.close()
                raise
            self._idle.append(session)
            return replies

    async def _take(self) -> StoreSession:
        """The most recently used idle session that still answers ``RSET``, else a new
        one; expired and broken sessions are closed on the way."""
        while self._idle:
            session = self._idle.pop()
            try:
                usable = not session.expired(time.monotonic()) and await session.reset()
            except BaseException:  # cancelled while probing: never leak the socket
                await session.close()
                raise
            if usable:
                return session
            log.info("delivery.session_dropped", transactions=session.transactions)
            await session.close()
        session = await StoreSession.open(self.target)
        self.opened += 1
        return session

    async def close_expired(self, now: float | None = None) -> int:
        """Close the idle sessions past ``MAX_IDLE`` or ``MAX_AGE`` at ``now`` (monotonic,
        default: the current time), so a quiet worker holds no half-closed sockets; the
        number closed."""
        moment = time.monotonic() if now is None else now
        expired = [session for session in self._idle if session.expired(moment)]
        self._idle = [session for session in self._idle if session not in expired]
        for session in expired:
            await session.close()
        return len(expired)

    async def aclose(self) -> None:
        """Close every idle session (``QUIT``)."""
        idle, self._idle = self._idle, []
        for session in idle:
            await session.close()


async def send_over_protocol(
    *,
    lmtp: bool,
    host: str,
    port: int,
    helo: str,
    mail_from: str,
    recipients: Sequence[str],
    content: bytes,
    tls_context: ssl.SSLContext | None = None,
) -> list[StoreReply]:
    """Deliver ``content`` once to ``recipients`` on a connection of its own; one
    ``StoreReply`` per recipient (``StorePool`` reuses connections instead).

    LMTP: one reply per accepted RCPT after DATA (RFC 2033 §4.2). SMTP: STARTTLS unless
    ``host`` is loopback (``TemporaryFailure`` if not offered), the DATA reply for all.
    ``TemporaryFailure`` for a connection problem or a refusal of the whole session."""
    session = await StoreSession.open(StoreTarget(lmtp, host, port, helo, tls_context))
    try:
        return await session.send(mail_from, recipients, content)
    finally:
        await session.close()


async def _introduce(talk: _Conversation, target: StoreTarget) -> None:
    """Greeting, LHLO/EHLO, and STARTTLS for SMTP off loopback (RFC 3207)."""
    greeting = await talk.reply()
    if greeting.code != 220:
        raise TemporaryFailure(f"greeting {greeting.code} {greeting.text}")
    hello = await talk.command(f"{'LHLO' if target.lmtp else 'EHLO'} {target.helo}")
    _expect(hello, "hello")
    if not target.lmtp and not is_loopback(target.host):
        await _starttls(talk, hello, target.host, target.helo, target.tls_context)


async def _mail_transaction(
    talk: _Conversation,
    lmtp: bool,
    mail_from: str,
    recipients: Sequence[str],
    content: bytes,
) -> list[StoreReply]:
    """MAIL, one RCPT per recipient, DATA and its reply or replies (module docstring)."""
    _expect(await talk.command(f"MAIL FROM:<{mail_from}>"), "MAIL FROM")
    replies: dict[str, StoreReply] = {}
    accepted: list[str] = []
    for address in recipients:
        reply = await talk.command(f"RCPT TO:<{address}>")
        replies[address] = StoreReply(reply.code, reply.text)
        if reply.code in (250, 251):
            accepted.append(address)
    if not accepted:
        return [replies[address] for address in recipients]
    start = await talk.command("DATA")
    if start.code != 354:
        return [
            replies[a] if a not in accepted else StoreReply(start.code, start.text)
            for a in recipients
        ]
    stuffer = DotStuffer()
    talk.writer.write(stuffer.feed(content) + stuffer.finish())
    await talk.writer.drain()
    if lmtp:  # one reply per accepted recipient, in RCPT order (RFC 2033 §4.2)
        for address in accepted:
            reply = await talk.reply(DATA_TIMEOUT)
            replies[address] = StoreReply(reply.code, reply.text)
    else:  # one reply for the whole transaction (RFC 5321 §4.1.1.4)
        reply = await talk.reply(DATA_TIMEOUT)
        replies.update({address: StoreReply(reply.code, reply.text) for address in accepted})
    return [replies[address] for address in recipients]


async def _starttls(
    talk: _Conversation, hello: Reply, host: str, helo: str, context: ssl.SSLContext | None
) -> None:
    if not any(line.upper().startswith("STARTTLS") for line in hello.lines[1:]):
        raise TemporaryFailure(f"{host} does not offer STARTTLS (required: not loopback)")
    _expect(await talk.command("STARTTLS"), "STARTTLS", code=220)
    await talk.writer.start_tls(context or ssl.create_default_context(), server_hostname=host)
    _expect(await talk.command(f"EHLO {helo}"), "EHLO after STARTTLS")


def _expect(reply: Reply, what: str, code: int = 250) -> None:
    if reply.code != code:
        raise TemporaryFailure(f"{what} refused: {reply.code} {reply.text}")


# -- Maildir -----------------------------------------------------------------------------


def maildir_name(hostname: str | None = None) -> str:
    """A unique Maildir file name (module docstring)."""
    now = time.time()
    seconds, micros = int(now), int((now - int(now)) * 1_000_000)
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    unique = f"M{micros}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(8)}"
    return f"{seconds}.{unique}.{host}"


def mailbox_of(root: Path, address: str) -> Path:
    """``root/<local part>``; ``PermanentFailure`` if the local part cannot be a name."""
    local = address.rsplit("@", 1)[0]
    bad = not local or local.startswith(".") or "/" in local or "\\" in local
    if bad or any(ord(c) < 0x20 or ord(c) == 0x7F for c in local):
        raise PermanentFailure(f"local part {local!r} cannot name a Maildir")
    return root / local


def deliver_to_maildir(root: Path, address: str, content: bytes) -> Path:
    """Write ``content`` into ``address``'s Maildir (tmp -> new, fsynced); the new path."""
    mailbox = mailbox_of(root, address)
    for sub in ("tmp", "new", "cur"):
        (mailbox / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    name = maildir_name()
    temporary = mailbox / "tmp" / name
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        final = mailbox / "new" / name
        os.rename(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(mailbox / "new", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return final


# -- the stage ---------------------------------------------------------------------------


class LocalDelivery:
    """The consumer of ``local`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        audit: AuditTrail,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        tls_context: ssl.SSLContext | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if connections < 1:
            raise ValueError("the pool needs at least one connection")
        self.config = config
        self.spool = spool
        self.audit = audit
        self.policy = policy or RetryPolicy.from_config(config.delivery)
        self.clock = clock
        self.poll_interval = poll_interval
        self.tls_context = tls_context or _trust_context(config)
        self.concurrency = concurrency
        self.pool = _pool_for(config, self.tls_context, connections)
        self.local: Queue = spool.queue(LOCAL)
        self.received: Queue = spool.queue(RECEIVED)

    async def run(self, stop: asyncio.Event) -> None:
        """Recover (standby while another delivery worker holds the lock), then deliver
        entries, ``concurrency`` at once, until ``stop`` is set; the pooled connections
        are closed on the way out."""
        try:
            if (
                await consumer.take_queue(self.local, stop, area="delivery", who="delivery worker")
                is None
            ):
                return
            consumed = asyncio.Event()
            reaper = asyncio.ensure_future(self._close_idle_sessions(consumed))
            try:
                await consumer.consume(
                    self.local,
                    stop,
                    self.process_entry,
                    poll_interval=self.poll_interval,
                    concurrency=self.concurrency,
                )
            finally:
                consumed.set()
                await reaper
        finally:
            await self.aclose()

    async def _close_idle_sessions(self, consumed: asyncio.Event) -> None:
        """Every ``MAX_IDLE`` seconds until ``consumed`` is set, close the pooled sessions
        that expired (a quiet worker keeps no half-closed socket)."""
        while self.pool is not None and not consumed.is_set():
            await consumer.sleep_unless(consumed, MAX_IDLE)
            await self.pool.close_expired()

    async def drain(self) -> list[DeliveryOutcome]:
        """Deliver every entry ready now, ``concurrency`` at once, outcomes in the order
        they finished (tests, tools); ``recover`` must have run. The entries of one
        drain share the pooled connections, which are closed when it ends."""
        try:
            return await consumer.drain(
                self.local, self.process_entry, concurrency=self.concurrency
            )
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections to the store (idempotent)."""
        if self.pool is not None:
            await self.pool.aclose()

    async def process_entry(self, entry: Claimed) -> DeliveryOutcome | None:
        """One pass over a claimed entry; never raises for a bad message."""
        return await consumer.guarded(
            self.local,
            entry,
            self._process,
            area="delivery",
            what="local delivery",
            held=lambda queue_id: DeliveryOutcome(queue_id, "held"),
        )

    async def _process(self, entry: Claimed) -> DeliveryOutcome:
        try:
            content = b"".join([chunk async for chunk in self.local.content(entry)])
        except CorruptEntry as error:
            await self.local.quarantine(entry, str(error))
            return DeliveryOutcome(entry.queue_id, "corrupt")
        record = entry.record
        pending = list(record.unfinished)
        recipients = [record.envelope.recipients[i] for i in pending]
        replies = await self._deliver(record.envelope.mail_from, recipients, content)
        states = list(record.state.recipients)
        failures: list[RecipientReport] = []
        for index, recipient, reply in zip(pending, recipients, replies, strict=True):
            states[index], report = self._judge(entry, recipient, states[index], reply)
            if report is not None:
                failures.append(report)
            await self.audit.record(_delivery_event(entry, recipient.address, reply, states[index]))
            if reply.delivered:
                await self._queue_dispatched_mdn(entry, content, recipient)
        dsn = await self._queue_dsn(entry, content, failures) if failures else None
        shown = tuple(
            (r.address, reply.code, reply.text)
            for r, reply in zip(recipients, replies, strict=True)
        )
        return DeliveryOutcome(entry.queue_id, await self._finish(entry, states), shown, dsn)

    async def _deliver(
        self, mail_from: str, recipients: Sequence[Recipient], content: bytes
    ) -> list[StoreReply]:
        target = self.config.inbound.deliver_to
        addresses = [r.address for r in recipients]
        if target.scheme == "maildir":
            assert target.path is not None
            return [await self._to_maildir(target.path, a, content) for a in addresses]
        assert self.pool is not None
        try:
            return await self.pool.deliver(mail_from, addresses, content)
        except TemporaryFailure as error:
            return [StoreReply(451, f"4.4.1 {error}") for _ in addresses]

    async def _to_maildir(self, root: Path, address: str, content: bytes) -> StoreReply:
        try:
            path = await asyncio.to_thread(deliver_to_maildir, root, address, content)
        except PermanentFailure as error:
            return StoreReply(550, f"{STATUS_BAD_MAILBOX} {error}")
        except OSError as error:
            return StoreReply(451, f"4.3.0 maildir: {error.strerror or error}")
        return StoreReply(250, f"2.0.0 maildir {path.name}")

    def _judge(
        self, entry: Claimed, recipient: Recipient, state: RecipientState, reply: StoreReply
    ) -> tuple[RecipientState, RecipientReport | None]:
        attempts = state.attempts + 1
        text = f"{reply.code} {reply.text}"[:4000]
        if reply.delivered:
            return RecipientState(RecipientStatus.DELIVERED, attempts, None), None
        if not reply.permanent:
            when = self.policy.next_attempt(attempts, entry.record.received, self.clock())
            if when is not None:
                return RecipientState(RecipientStatus.DEFERRED, attempts, text, when), None
            failed = RecipientState(RecipientStatus.FAILED, attempts, f"expired: {text}")
            return failed, self._report(entry, recipient, STATUS_EXPIRED, text, Reason.EXPIRED)
        status = _enhanced(reply) or "5.0.0"
        failed = RecipientState(RecipientStatus.FAILED, attempts, text)
        return failed, self._report(entry, recipient, status, text, Reason.REMOTE_REJECTED)

    def _report(
        self, entry: Claimed, recipient: Recipient, status: str, text: str, reason: Reason
    ) -> RecipientReport | None:
        if not should_send_dsn(Action.FAILED, recipient.notify, entry.record.envelope.mail_from):
            return None
        target = self.config.inbound.deliver_to
        host = target.address.host if target.address is not None else None
        return RecipientReport(
            recipient.address,
            Action.FAILED,
            status,
            original_recipient=recipient.orcpt,
            remote_mta=host,
            diagnostic=text,
            last_attempt=self.clock(),
            reason=reason,
        )

    async def _finish(self, entry: Claimed, states: list[RecipientState]) -> str:
        if any(not state.status.final for state in states):
            due = min(s.next_attempt for s in states if s.next_attempt is not None)
            await self.local.defer(entry, due, states)
            return "deferred"
        if any(state.status is RecipientStatus.DELIVERED for state in states):
            await self.local.complete(entry, states)
            return "completed"
        await self.local.bounce(entry, "the local mail store refused the message", states)
        return "bounced"

    async def _queue_dispatched_mdn(
        self, entry: Claimed, content: bytes, recipient: Recipient
    ) -> str | None:
        """The dispatched MDN of a delivered recipient, when the message asks for it."""
        if not wants_final_delivery_mdn(content.partition(b"\r\n\r\n")[0] + b"\r\n"):
            return None
        return await queue_mdn(
            self.config,
            self.local,
            self.received,
            entry,
            content,
            recipient,
            Disposition.DISPATCHED,
            self.clock(),
        )

    async def _queue_dsn(
        self, entry: Claimed, content: bytes, reports: list[RecipientReport]
    ) -> str | None:
        sender = entry.record.envelope.mail_from
        return await notices.queue_dsn(
            source=self.local,
            received=self.received,
            entry=entry,
            original=content,
            reports=reports,
            key=handoff_key("dsn-local", None, (r.final_recipient for r in reports)),
            hostname=self.config.gateway.hostname,
            language=self.config.gateway.language,
            now=self.clock(),
            protected=not routing.is_local(self.config, sender),
            ret=entry.record.envelope.params.ret,
            area="delivery",
        )


def _enhanced(reply: StoreReply) -> str | None:
    first = reply.text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and parts[0] == "5" and all(p.isdigit() for p in parts):
        return first
    return None


def _delivery_event(
    entry: Claimed, address: str, reply: StoreReply, state: RecipientState
) -> AuditEvent:
    return AuditEvent(
        type="delivery.local",
        queue_id=entry.queue_id,
        mail_from=entry.record.envelope.mail_from,
        rcpt_to=(address,),
        actor="local-delivery",
        outcome=state.status.value,
        details={"reply": f"{reply.code} {reply.text}"[:500]},
    )


def _pool_for(config: Config, tls_context: ssl.SSLContext, connections: int) -> StorePool | None:
    """The connection pool for an ``lmtp://`` or ``smtp://`` target; None for Maildir."""
    target = config.inbound.deliver_to
    if target.address is None:
        return None
    return StorePool(
        StoreTarget(
            lmtp=target.scheme == "lmtp",
            host=target.address.host,
            port=target.address.port,
            helo=config.gateway.hostname,
            tls_context=tls_context,
        ),
        size=connections,
    )


def _trust_context(config: Config) -> ssl.SSLContext:
    """Verify the hospital's SMTP server against the system store and ``[trust] anchors``."""
    context = ssl.create_default_context()
    for anchor in config.trust.anchors:
        try:
            context.load_verify_locations(cafile=str(anchor))
        except (OSError, ssl.SSLError) as error:
            log.warning("delivery.anchor_unusable", anchor=str(anchor), error=str(error))
    return context


# -- the worker process ----------------------------------------------------------------


async def run_delivery_worker(config: Config, stop: asyncio.Event) -> None:
    """``missive worker delivery``: build the stage from ``config`` and run it until
    ``stop`` (no private key: ``agent_keys=False``)."""
    audit = AuditSink(config.audit.path)
    audit.start()
    try:
        spool = Spool(
            config.gateway.spool_dir,
            audit=audit,
            actor="local-delivery",
            max_message_size=config.delivery.max_message_size,
        )
        try:
            await LocalDelivery(config, spool, audit).run(stop)
        finally:
            await spool.aclose()
    finally:
        await audit.aclose()
    log.info("delivery.stopped")
