"""The LMTP/SMTP client of local delivery and its connection pool.

Role: hand one message to the hospital's mail store for some recipients and say, per
recipient, what the store answered (``StoreReply``). ``gateway.inbound.delivery`` calls
``StorePool.deliver`` for ``[inbound] deliver_to = "lmtp://..."`` or ``"smtp://..."``;
``send_over_protocol`` does the same on a connection of its own.

Protocols:

- LMTP (RFC 2033): LHLO, MAIL, one RCPT per recipient, DATA, then *one reply per
  accepted RCPT*, in RCPT order (§4.2): each recipient's outcome is its own;
- SMTP (RFC 5321) to the hospital's server: EHLO, then STARTTLS (RFC 3207) is required
  unless the host is a loopback address (``is_loopback``); the server certificate is
  verified with the ``StoreTarget``'s ``ssl.SSLContext`` (the stage builds it from
  ``[trust] anchors`` and the system store). One DATA reply (§4.1.1.4) counts for every
  accepted recipient. ``QUIT`` waits briefly for its ``221`` (§4.1.1.10);
- a mailbox listed twice (old records may hold duplicates; ``gateway.spool.model.
  mailbox_key`` is the rule) gets one RCPT, each occurrence its reply: filed once;
- any 2yz to RCPT accepts the recipient (RFC 5321 §4.2.1; a ``252`` too): only the
  reply after the final dot can say "delivered", never a RCPT reply.

Connections (RFC 2033 §4.1, RFC 5321 §4.1.1.5): ``StorePool`` keeps up to ``size``
sessions open (``DEFAULT_CONNECTIONS``), one transaction at a time on each; callers
beyond that wait. A reused session is reset with ``RSET`` before its next ``MAIL``; if
that probe fails (closed connection, ``421``, reset socket, timeout) the transaction
runs on a fresh session: nothing of the message was sent (no ``354`` was read), so this
cannot deliver twice (a chunked group: see "Chunking"). A session idle for ``MAX_IDLE``
seconds or open for ``MAX_AGE`` is closed (``QUIT``) rather than reused; an error or a
cancellation inside a transaction closes its session, and a cancellation while it is
being closed aborts its socket (a session out of the pool never keeps one open).

Pipelining (RFC 2920 §3.1; RFC 2033 §5): when the LHLO/EHLO reply (after STARTTLS: the
second EHLO's) advertises ``PIPELINING``, ``[RSET,] MAIL``, every ``RCPT`` and ``DATA``
go in one write, the replies are read in order, the content leaves only after ``354``;
else one command at a time. Measured (bench/README.md "Local delivery pipelined").

Chunking (RFC 3030 §2 with RFC 2920; RFC 2033 §4.2): an LMTP store that advertises
``PIPELINING`` and ``CHUNKING`` gets a one-recipient transaction (the ``local/`` queue
holds one entry per recipient) as ``[RSET,] MAIL, RCPT, BDAT n LAST`` and the content in
one write: one round trip instead of two (measured: less CPU per message in the worker
and in Dovecot). With one RCPT there is exactly one reply to the ``BDAT`` whether the
recipient was accepted or not, so replies cannot be miscounted; several recipients go
the ``DATA`` way. The chunk is counted, not ended by a dot: its line ends are made CRLF
as for ``DATA`` (``_canonical_lines``) and nothing in it can end it early. A refused
``RCPT`` is the recipient's outcome and retires the session (the store reads and drops
the chunk, RFC 3030 §2; its state after that is not guessed). The content leaves before
the ``RSET`` is answered, so the pooled-session retry is narrower: only a session the
store had closed (end of stream, reset socket, ``421``) moves to a fresh session; a
timeout or any other failure is ``TemporaryFailure``. A store that stored the message
and died before answering even the ``RSET`` could then get it twice: the
at-least-once of docs/spool.md, as for a store that dies before its final reply.

Failures: a refused connection, a timeout, a TLS or protocol error, a refusal of the
whole session (greeting, hello, STARTTLS, MAIL) raise ``TemporaryFailure`` (every
recipient deferred); a per-recipient refusal is its ``StoreReply``, in the caller's
order. Reads are bounded: ``MAX_LINE`` per line, ``COMMAND_TIMEOUT`` per reply,
``DATA_TIMEOUT`` after the message. Replies awaited together share one deadline (one
timer instead of one per reply, measured: less CPU per message), whose length keeps the
former total: a pipelined group's replies and its drain ``COMMAND_TIMEOUT`` each, the
content's drain and its final replies ``DATA_TIMEOUT`` each; a group that runs out of
time while its ``RSET`` is unanswered is ``StaleSession`` as a failed ``RSET`` is.
Bytes sent unasked never stand for a later reply:
bytes with the ``354`` or a ``DATA`` answered ``2xx``/``3xx`` other than ``354`` fail the
transaction; a pooled session holding unread bytes is dropped, not reset (a chunked
transaction's too: ``broken``).

Security: off loopback an SMTP session without STARTTLS gets nothing of the message;
the handshake verifies the server's name and certificate with the target's context
(``ssl.create_default_context()`` if none). Clear text with or after the STARTTLS
``220`` fails the session (RFC 3207 §4.2; CVE-2011-0411's response injection). Logs
only ``delivery.session_dropped`` with a transaction count.

Written by hand (aiosmtplib has no LMTP mode nor pool, ``smtplib.LMTP`` misreads RFC 2033
§4.2 replies); replies and dot-stuffing: ``gateway.relay.smtp_reply``, ``smtp_data``.

Trust level: runs in the delivery worker (``missive worker delivery``), which holds no
private key; it sends decrypted content to the local store, the end of the gateway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.log import get_logger
from gateway.relay.smtp_data import DotStuffer, has_bare_line_end
from gateway.relay.smtp_reply import ProtocolError, Reply, ReplyParser
from gateway.spool.model import mailbox_key
from gateway.streams import has_unread

log = get_logger("inbound.store_client")

DEFAULT_CONNECTIONS = 4  # sessions open at once to the mail store
MAX_IDLE = 5.0  # seconds a pooled session may stay unused before it is closed
MAX_AGE = 300.0  # seconds a pooled session is used at most (then closed and reopened)
COMMAND_TIMEOUT = 60.0
QUIT_TIMEOUT = 5.0
DATA_TIMEOUT = 600.0
MAX_LINE = 4096


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


class _Conversation:
    """One LMTP or SMTP connection: commands and multi-line replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, timeout: float = COMMAND_TIMEOUT) -> Reply:
        """The next reply within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.next_reply()

    async def next_reply(self) -> Reply:
        """The next reply, with no deadline of its own: the caller holds one around the
        replies it awaits (module docstring, "Failures")."""
        parser = ReplyParser()
        while True:
            try:
                line = await self.reader.readline()
            except ValueError as error:  # a line past MAX_LINE (LimitOverrunError)
                raise ProtocolError("reply line too long") from error
            if not line:
                raise TemporaryFailure("connection closed by the mail store")
            reply = parser.feed(line)
            if reply is not None:
                return reply

    def has_unread(self) -> bool:
        """True if the store sent bytes that no command asked for yet (``gateway.streams``)."""
        return has_unread(self.reader)

    async def command(self, line: str) -> Reply:
        await self.send(line.encode("utf-8") + b"\r\n", COMMAND_TIMEOUT)
        return await self.reply()

    async def send(self, data: bytes, timeout: float) -> None:
        """Write ``data``; ``TimeoutError`` if the store does not take it in ``timeout``."""
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()

    async def close(self) -> None:
        """``QUIT``, its ``221`` awaited briefly (RFC 5321 §4.1.1.10), then close; a dead
        or silent peer is not an error here."""
        try:
            await self.send(b"QUIT\r\n", QUIT_TIMEOUT)
            await self.reply(QUIT_TIMEOUT)
        except (OSError, RuntimeError, TimeoutError, TemporaryFailure, ProtocolError):
            self.writer.transport.abort()  # what is still buffered would never be read
        except BaseException:  # cancelled: the socket must not outlive its session
            self.writer.transport.abort()
            raise
        self.writer.close()
        try:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await self.writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError):
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

    def __init__(
        self, talk: _Conversation, target: StoreTarget, *, pipelining: bool, chunking: bool = False
    ) -> None:
        self.talk = talk
        self.target = target
        self.pipelining = pipelining  # the store advertised PIPELINING (RFC 2920)
        self.chunking = chunking  # and CHUNKING (RFC 3030): see "Chunking"
        self.opened = time.monotonic()
        self.last_used = self.opened
        self.transactions = 0
        self.reset_pending = False  # RSET goes in front of the next pipelined group
        self.broken = False  # left mid-transaction: never given back to the pool

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
            hello = await _introduce(talk, target)
        except BaseException as error:
            await talk.close()
            if isinstance(error, _SESSION_ERRORS):
                raise TemporaryFailure(f"{type(error).__name__}: {error}") from error
            raise
        pipelining = _advertises(hello, "PIPELINING")
        chunking = pipelining and target.lmtp and _advertises(hello, "CHUNKING")
        return cls(talk, target, pipelining=pipelining, chunking=chunking)

    def expired(self, now: float) -> bool:
        """Too long idle or too old to be reused."""
        return now - self.last_used > MAX_IDLE or now - self.opened > MAX_AGE

    async def reset(self) -> bool:
        """Ready the session for reuse: ``RSET`` now, or with PIPELINING in front of the
        next group (``StaleSession`` there). False if it is no longer usable (also when
        the store sent something unasked: its replies would be read one command late)."""
        if self.talk.has_unread():
            return False
        if self.pipelining:
            self.reset_pending = True
            return True
        try:
            reply = await self.talk.command("RSET")
        except (TemporaryFailure, *_SESSION_ERRORS):
            return False
        return reply.code == 250

    async def send(
        self, mail_from: str, recipients: Sequence[str], content: bytes
    ) -> list[StoreReply]:
        """One mail transaction, one ``RCPT`` per mailbox; ``TemporaryFailure`` (the session
        is then unusable), or ``StaleSession`` when its pipelined ``RSET`` failed."""
        reset, self.reset_pending = self.reset_pending, False
        keys = [mailbox_key(address) for address in recipients]
        firsts: dict[str, str] = {}  # each mailbox once, as first listed
        for key, address in zip(keys, recipients, strict=True):
            firsts.setdefault(key, address)
        distinct = list(firsts.values())
        try:
            if self.chunking and len(distinct) == 1:
                replies = [await self._chunked(reset, mail_from, distinct[0], content)]
            elif self.pipelining:
                replies = await self._pipelined(reset, mail_from, distinct, content)
            else:
                replies = await _mail_transaction(
                    self.talk, self.target.lmtp, mail_from, distinct, content
                )
        except _SESSION_ERRORS as error:
            raise TemporaryFailure(f"{type(error).__name__}: {error}") from error
        self.transactions += 1
        self.last_used = time.monotonic()
        by_mailbox = dict(zip(firsts, replies, strict=True))  # firsts: in ``distinct`` order
        return [by_mailbox[key] for key in keys]

    async def close(self) -> None:
        """``QUIT`` and close (errors ignored)."""
        await self.talk.close()

    async def _pipelined(
        self, reset: bool, mail_from: str, recipients: Sequence[str], content: bytes
    ) -> list[StoreReply]:
        """RFC 2920 §3.1: [RSET,] MAIL, RCPT..., DATA in one write, then every reply in
        order; the content only after a ``354``. The group's replies and the drain share
        one deadline, ``COMMAND_TIMEOUT`` per step (module docstring, "Failures")."""
        talk = self.talk
        group = [f"MAIL FROM:<{mail_from}>", *(f"RCPT TO:<{a}>" for a in recipients), "DATA"]
        talk.writer.write("".join(f"{line}\r\n" for line in (["RSET"] * reset + group)).encode())
        rset_answered = not reset
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT * (reset + len(group) + 1)):
                if reset:
                    await _stale_unless_reset(talk)
                    rset_answered = True
                mail = await talk.next_reply()
                rcpts = [await talk.next_reply() for _ in recipients]
                start = await talk.next_reply()
                await talk.writer.drain()  # the group is out: the store answered its DATA
        except TimeoutError:
            if not rset_answered:  # nothing of the message was sent: a stale session
                raise StaleSession("pooled session lost: TimeoutError") from None
            raise
        _expect(mail, "MAIL FROM")
        replies = {a: StoreReply(r.code, r.text) for a, r in zip(recipients, rcpts, strict=True)}
        accepted = [a for a, r in zip(recipients, rcpts, strict=True) if r.code // 100 == 2]
        if not accepted:
            self.broken = start.code == 354  # DATA opened anyway: the session is not reused
            return [replies[address] for address in recipients]
        lmtp = self.target.lmtp
        return await _data_phase(talk, lmtp, start, content, recipients, replies, accepted)

    async def _chunked(
        self, reset: bool, mail_from: str, recipient: str, content: bytes
    ) -> StoreReply:
        """RFC 3030 §2 with RFC 2920 and RFC 2033 §4.2, one recipient: [RSET,] MAIL, RCPT
        and ``BDAT n LAST`` followed by the content, in one write; then one reply each
        (module docstring, "Chunking"). The replies and the drain share one deadline."""
        talk = self.talk
        data = _canonical_lines(content)
        group = f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{recipient}>\r\nBDAT {len(data)} LAST\r\n"
        talk.writer.write(b"RSET\r\n" * reset + group.encode() + data)
        async with asyncio.timeout(COMMAND_TIMEOUT * (reset + 2) + DATA_TIMEOUT * 2):
            if reset:
                await _stale_unless_closed(talk)
            mail = await talk.next_reply()
            rcpt = await talk.next_reply()
            final = await talk.next_reply()
            await talk.writer.drain()
        if talk.has_unread():  # a reply too many: the replies may be out of step, so
            self.broken = True  # none of them is trusted to say "delivered" (review R1)
            raise TemporaryFailure("the store answered the chunked group with extra replies")
        _expect(mail, "MAIL FROM")
        if rcpt.code // 100 != 2:  # the store read and dropped the chunk (RFC 3030 §2)
            self.broken = True  # its state after a refused chunk is not worth a guess
            return StoreReply(rcpt.code, rcpt.text)
        return StoreReply(final.code, final.text)


def _canonical_lines(content: bytes) -> bytes:
    """``content`` as a ``BDAT`` chunk carries it: every line end CRLF (a bare CR or LF
    becomes one, as ``DotStuffer`` does for DATA) and a final CRLF, so the store keeps the
    same bytes either way; no dot-stuffing (a chunk is counted, not ended by a dot)."""
    if has_bare_line_end(content):
        content = _LINE_END.sub(b"\r\n", content)
    return content if not content or content.endswith(b"\r\n") else content + b"\r\n"


_LINE_END = re.compile(rb"\r\n|\r|\n")


class StaleSession(Exception):
    """A pooled session failed its pipelined ``RSET``: the store took nothing of the
    message (not sent, or sent to a session it had closed: module docstring)."""


async def _stale_unless_reset(talk: _Conversation) -> None:
    """Read the pipelined ``RSET``'s reply (under the caller's deadline, whose expiry
    the caller turns into ``StaleSession``); any failure there is ``StaleSession``."""
    try:
        reply = await talk.next_reply()
    except (TemporaryFailure, *_SESSION_ERRORS) as error:
        raise StaleSession(f"pooled session lost: {type(error).__name__}") from None
    if reply.code != 250:
        raise StaleSession(f"RSET refused: {reply.code} {reply.text}")


async def _stale_unless_closed(talk: _Conversation) -> None:
    """Read the ``RSET`` in front of a chunked group (the content is already sent):
    ``StaleSession`` only if the store had closed the session (end of stream, reset
    connection, ``421``: as a rule no later command of the group was read, so the retry
    on a fresh session delivers once; a store that kept the message and died before
    answering even the ``RSET`` gets it twice, the at-least-once of the module
    docstring); any other refusal leaves the group's own replies to decide, and a
    timeout or a TLS error fails the transaction (``TemporaryFailure``: retried later,
    never at once on another session)."""
    try:
        reply = await talk.next_reply()
    except (TemporaryFailure, ConnectionError) as error:  # not ssl.SSLError: see above
        raise StaleSession(f"pooled session lost: {type(error).__name__}") from None
    if reply.code == 421:
        raise StaleSession(f"RSET refused: {reply.code} {reply.text}")


_SESSION_ERRORS = (OSError, TimeoutError, ProtocolError, ssl.SSLError)


class StorePool:
    """Up to ``size`` sessions with one store, reused across transactions.

    ``deliver`` takes an idle session (``RSET`` first) or opens one, and gives it back
    unless it failed (then closed). ``opened`` counts the connections made (tests, the
    benchmark). ``aclose`` closes the idle sessions; call it when the stage stops.
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
        """One transaction on a pooled session; ``TemporaryFailure``."""
        async with self._slots:
            session = await self._take()
            try:
                replies = await session.send(mail_from, recipients, content)
            except StaleSession:  # nothing of the message left: once more, on a new one
                await session.close()
                log.info("delivery.session_dropped", transactions=session.transactions)
                session = await self._open()
                replies = await self._send_or_close(session, mail_from, recipients, content)
            except BaseException:
                await session.close()
                raise
            if session.broken:
                await session.close()
            else:
                self._idle.append(session)
            return replies

    async def _send_or_close(
        self, session: StoreSession, mail_from: str, recipients: Sequence[str], content: bytes
    ) -> list[StoreReply]:
        try:
            return await session.send(mail_from, recipients, content)
        except BaseException:
            await session.close()
            raise

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
        return await self._open()

    async def _open(self) -> StoreSession:
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
    """Deliver ``content`` once to ``recipients`` on a connection of its own (module
    docstring, "Protocols"): one ``StoreReply`` per recipient, or ``TemporaryFailure``
    for a connection problem or a refusal of the whole session."""
    session = await StoreSession.open(StoreTarget(lmtp, host, port, helo, tls_context))
    try:
        return await session.send(mail_from, recipients, content)
    finally:
        await session.close()


async def _introduce(talk: _Conversation, target: StoreTarget) -> Reply:
    """Greeting, LHLO/EHLO, and STARTTLS for SMTP off loopback (RFC 3207); the hello
    reply that holds for the session (after STARTTLS: the second EHLO's, RFC 3207 §4.2)."""
    greeting = await talk.reply()
    if greeting.code != 220:
        raise TemporaryFailure(f"greeting {greeting.code} {greeting.text}")
    hello = await talk.command(f"{'LHLO' if target.lmtp else 'EHLO'} {target.helo}")
    _expect(hello, "hello")
    if not target.lmtp and not is_loopback(target.host):
        return await _starttls(talk, hello, target.host, target.helo, target.tls_context)
    return hello


def _advertises(hello: Reply, keyword: str) -> bool:
    """The hello reply lists the extension ``keyword`` (RFC 5321 §4.1.1.1: one per line
    after the first, keyword first, case-insensitive)."""
    return any(line.split(" ", 1)[0].upper() == keyword for line in hello.lines[1:])


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
        if reply.code // 100 == 2:  # any 2yz accepts (RFC 5321 §4.2.1): see "Protocols"
            accepted.append(address)
    if not accepted:
        return [replies[address] for address in recipients]
    start = await talk.command("DATA")
    return await _data_phase(talk, lmtp, start, content, recipients, replies, accepted)


async def _data_phase(
    talk: _Conversation,
    lmtp: bool,
    start: Reply,
    content: bytes,
    recipients: Sequence[str],
    replies: dict[str, StoreReply],
    accepted: list[str],
) -> list[StoreReply]:
    """After ``DATA`` was answered ``start``: the content and its reply or replies, each
    recipient's outcome in the caller's order (``replies`` holds the RCPT ones)."""
    if start.code < 400 and (start.code != 354 or talk.has_unread()):
        raise ProtocolError(f"DATA answered {start.code} or before the message was sent")
    if start.code != 354:
        return [
            replies[a] if a not in accepted else StoreReply(start.code, start.text)
            for a in recipients
        ]
    stuffer = DotStuffer()
    talk.writer.write(stuffer.feed(content) + stuffer.finish())
    # the drain and the final replies share one deadline: DATA_TIMEOUT per step
    answers = len(accepted) if lmtp else 1
    async with asyncio.timeout(DATA_TIMEOUT * (1 + answers)):
        await talk.writer.drain()
        finals = [await talk.next_reply() for _ in range(answers)]
    if lmtp:  # one reply per accepted recipient, in RCPT order (RFC 2033 §4.2)
        for address, reply in zip(accepted, finals, strict=True):
            replies[address] = StoreReply(reply.code, reply.text)
    else:  # one reply for the whole transaction (RFC 5321 §4.1.1.4)
        [reply] = finals
        replies.update({address: StoreReply(reply.code, reply.text) for address in accepted})
    return [replies[address] for address in recipients]


async def _starttls(
    talk: _Conversation, hello: Reply, host: str, helo: str, context: ssl.SSLContext | None
) -> Reply:
    if not any(line.upper().startswith("STARTTLS") for line in hello.lines[1:]):
        raise TemporaryFailure(f"{host} does not offer STARTTLS (required: not loopback)")
    _expect(await talk.command("STARTTLS"), "STARTTLS", code=220)
    await talk.writer.start_tls(context or ssl.create_default_context(), server_hostname=host)
    if talk.has_unread():  # clear text sent with the 220 must not answer a TLS command
        raise ProtocolError("bytes received outside TLS after STARTTLS (RFC 3207 §4.2)")
    second = await talk.command(f"EHLO {helo}")
    _expect(second, "EHLO after STARTTLS")
    return second


def _expect(reply: Reply, what: str, code: int = 250) -> None:
    if reply.code != code:
        raise TemporaryFailure(f"{what} refused: {reply.code} {reply.text}")
