"""One SMTP session to one next hop: open, secure, carry transactions, close.

Role: ``SmtpSession`` connects to one address of one host, reads the greeting, says
EHLO, secures the session (``tlsclient``) and authenticates as its route asks, then
carries transactions — MAIL, RCPT..., DATA — lock-step or pipelined, and returns one
``Outcome`` per recipient. It chooses no host, keeps no pool and schedules nothing: the
relay client (``client``) does. A session that cannot carry the message raises one of
``SESSION_ERRORS`` (the client then tries the next host); a message the peer cannot take
at all raises ``MessageRefused`` before MAIL. The command lines are ``smtp_commands``',
the reply parsing ``smtp_reply``'s, the DATA encoding ``smtp_data``'s.

Protocol (RFC 5321 unless noted):
- greeting 220, EHLO (HELO when EHLO gets 5xx, §3.2); a 421 to any command ends the
  session (§3.8, ``SessionFailure``);
- STARTTLS per the route's ``tls`` (RFC 3207) then EHLO again (RFC 3207 §4.2: forget
  what was learnt before TLS); ``verify`` never continues in clear when STARTTLS is
  missing or fails, and checks the peer (``tlsclient.PeerVerifier``) before any command;
  anything received in clear after the ``220`` to STARTTLS ends the session (a man in
  the middle's injected replies, CVE-2011-0411), whatever the mode;
- AUTH PLAIN (RFC 4954, RFC 4616) toward a route with credentials, only on a TLS
  session, only when the peer advertises PLAIN; anything but 235 is a ``SessionFailure``
  (what the client then does with it is decided in ``client``);
- a 2xx or 3xx that is not the reply a command needs (a 250 to DATA, a 252 to RCPT:
  §4.3.2 lists each command's replies) is a protocol error: the recipients are deferred
  with 4.5.0 and the session is marked broken, never "delivered";
- PIPELINING (RFC 2920) when the peer advertises it: MAIL, every RCPT and DATA (with
  the RSET of a reused session in front) go in one write, DATA last (§3.1); the replies
  are then read in order, each with its own timeout, and every one of them is checked
  (§3.1: a refused MAIL or no accepted RCPT still needs the DATA reply read; a 354
  there is answered by a lone ``.``); nothing of the content leaves before the 354.
  The group is not drained before its replies are read, so a long RCPT list cannot
  deadlock against a peer that blocks writing replies (§3.1). A peer without PIPELINING
  gets one command and waits for its reply (lock-step), as RFC 5321 requires;
- one RCPT per mailbox (decision, session 8): a record written by an older gateway may
  list one mailbox twice, in one spelling or two (``bob@b.test``, ``bob@B.TEST``); the
  session sends the first occurrence only (``Envelope.distinct``, whose ``mailbox_key``
  compares the local part exactly and the domain without case, RFC 5321 §2.4) and gives
  its outcome to every occurrence, so the peer never gets two RCPTs for one mailbox
  (two copies, or a "duplicate recipient" refusal taken for one of them), as
  ``gateway.inbound.store_client`` does;
- DATA: the content is streamed through ``smtp_data.DotStuffer`` (CRLF line ends,
  dot-stuffing, §4.5.2); the final ``.CRLF`` goes in the same write as the last block,
  so a message read whole goes out in one write;
- timeouts of §4.5.3.2 (``Timeouts``): greeting 5 min, MAIL 5 min, RCPT 5 min, DATA
  2 min, each data block 3 min, end of data 10 min; in a pipelined group each reply
  gets its own;
- reuse: ``reuse()`` sends RSET (§4.1.1.5) now, or with PIPELINING as the first command
  of the next group; a failure there is ``StaleSession``: nothing of the message was
  sent on the session (no 354 was read), so the client may open another one to the same
  address without any risk of a duplicate.

Security: every read is bounded (``MAX_LINE`` per line, ``smtp_reply.MAX_REPLY_LINES``
per reply, a timeout per step). The AUTH password is used for one command and never
kept on the session nor logged; only the login (``auth_user``) is. This module logs
nothing itself.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass

from gateway.config.model import Route
from gateway.relay.mx import MailHost
from gateway.relay.smtp_commands import check_size, mail_command, rcpt_command
from gateway.relay.smtp_data import ContentSource, DotStuffer
from gateway.relay.smtp_reply import (
    RCPT_ACCEPTED,
    Outcome,
    ProtocolError,
    Reply,
    ReplyParser,
    parse_extensions,
)
from gateway.relay.tlsclient import (
    PeerIdentity,
    PeerVerifier,
    TlsVerificationError,
    handshake_facts,
    server_name_indication,
)
from gateway.spool.model import Envelope, mailbox_key
from gateway.streams import has_unread

MAX_LINE = 8192  # RFC 5321 §4.5.3.1.5 says 512 for replies; be tolerant, stay bounded


class SessionFailure(Exception):
    """This session cannot carry the message: try the next host (§5.1)."""


class StaleSession(SessionFailure):
    """A pooled session failed its RSET: nothing was sent on it, open another one."""


#: Errors that end a session; the message then tries the next host (§5.1).
SESSION_ERRORS = (
    SessionFailure,
    ProtocolError,
    OSError,
    TimeoutError,
    ssl.SSLError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,  # LimitOverrunError surfaces as ValueError from readline()
)


@dataclass(frozen=True)
class Timeouts:
    """Seconds per step; defaults from RFC 5321 §4.5.3.2 (connect/TLS are ours)."""

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0  # EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT
    data_init: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0
    tls_handshake: float = 60.0


@dataclass
class SessionSecurity:
    """What a session needs to secure itself for a route."""

    mode: str  # none | opportunistic | verify
    context: ssl.SSLContext | None
    reference_name: str
    verifier: PeerVerifier | None
    credentials: tuple[str, str] | None = None


class SmtpSession:
    """One connection to one host: open, secure, carry transactions, close."""

    def __init__(
        self, host: MailHost, address: str, helo_name: str, timeouts: Timeouts, route: Route
    ) -> None:
        self.host = host
        self.address = address
        self._helo_name = helo_name
        self._timeouts = timeouts
        self._route = route
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.extensions: dict[str, str] = {}
        self.peer = PeerIdentity(None, None, None, verified=False)
        self.auth_user: str | None = None
        self.messages_sent = 0
        self.idle_since = time.monotonic()
        self.broken = False
        self._reset_pending = False  # RSET goes in front of the next pipelined group

    # -- plumbing --

    async def _send(self, line: str) -> None:
        assert self._writer is not None
        self._writer.write(line.encode("utf-8") + b"\r\n")
        await self._writer.drain()

    async def _read_reply(self) -> Reply:
        assert self._reader is not None
        parser = ReplyParser()
        while True:
            line = await self._reader.readline()
            if not line:
                raise SessionFailure("connection closed by the peer")
            if len(line) > MAX_LINE:
                raise ProtocolError("reply line too long")
            reply = parser.feed(line)
            if reply is not None:
                if reply.code == 421:
                    raise SessionFailure(f"peer closing: {reply.code} {reply.text}")
                return reply

    async def command(self, line: str, timeout: float | None = None) -> Reply:
        """Send one command and read its reply within ``timeout`` (default: command)."""
        async with asyncio.timeout(timeout or self._timeouts.command):
            await self._send(line)
            return await self._read_reply()

    # -- opening --

    async def open(self, security: SessionSecurity) -> None:
        """Connect, greet, EHLO, STARTTLS + verification, AUTH; ``SessionFailure`` if not."""
        async with asyncio.timeout(self._timeouts.connect):
            self._reader, self._writer = await asyncio.open_connection(
                self.address, self.host.port, limit=MAX_LINE
            )
        async with asyncio.timeout(self._timeouts.greeting):
            greeting = await self._read_reply()
        if greeting.code != 220:
            raise SessionFailure(f"greeting {greeting.code} {greeting.text}")
        await self._hello()
        if security.mode != "none":
            await self._starttls(security)
        if security.credentials is not None:
            await self._authenticate(*security.credentials)

    async def _hello(self) -> None:
        reply = await self.command(f"EHLO {self._helo_name}")
        if reply.code == 250:
            self.extensions = parse_extensions(reply)
            return
        reply = await self.command(f"HELO {self._helo_name}")
        if reply.code != 250:
            raise SessionFailure(f"HELO refused: {reply.code} {reply.text}")
        self.extensions = {}

    async def _starttls(self, security: SessionSecurity) -> None:
        if "STARTTLS" not in self.extensions:
            if security.mode == "verify":
                raise SessionFailure("STARTTLS not offered (tls = verify: never in clear)")
            return  # opportunistic: clear text, as the route allows
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SessionFailure(f"STARTTLS refused: {reply.code} {reply.text}")
        assert self._writer is not None and security.context is not None
        try:
            await self._writer.start_tls(
                security.context,
                server_hostname=server_name_indication(security.reference_name),
                ssl_handshake_timeout=self._timeouts.tls_handshake,
            )
        except ssl.SSLCertVerificationError as error:
            raise SessionFailure(f"TLS peer refused: {error.verify_message}") from None
        except ssl.SSLError as error:
            raise SessionFailure(f"TLS handshake failed: {error.reason}") from None
        self._refuse_clear_text_left_over()
        ssl_object = self._writer.get_extra_info("ssl_object")
        if security.mode == "verify":
            assert security.verifier is not None
            try:
                self.peer = await security.verifier.verify(
                    ssl_object, self._route, security.reference_name
                )
            except TlsVerificationError as error:
                raise SessionFailure(str(error)) from None
        else:
            self.peer = handshake_facts(ssl_object)
        await self._hello()  # RFC 3207 §4.2: discard what was learnt before TLS

    def _refuse_clear_text_left_over(self) -> None:
        """RFC 3207 §4.2 (CVE-2011-0411, client side): bytes that came in clear after the
        ``220`` to STARTTLS are no reply of the TLS peer. ``StreamWriter.start_tls`` keeps
        the reader's buffer, so they would be read as the replies to EHLO, MAIL, RCPT,
        DATA: an attacker on the path could answer the whole transaction. A server sends
        nothing before the client's first command over TLS: fail closed
        (``gateway.streams``)."""
        assert self._reader is not None
        if has_unread(self._reader):
            raise SessionFailure("clear text received after the STARTTLS reply (injection?)")

    async def _authenticate(self, user: str, password: str) -> None:
        if self.peer.tls_version is None:
            raise SessionFailure("AUTH refused: the session is not encrypted")
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" not in mechanisms:
            raise SessionFailure("the next hop does not offer AUTH PLAIN")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        reply = await self.command(f"AUTH PLAIN {token}")
        if reply.code != 235:
            raise SessionFailure(f"authentication failed: {reply.code} {reply.text}")
        self.auth_user = user

    # -- transactions --

    @property
    def pipelining(self) -> bool:
        """The peer advertised PIPELINING (RFC 2920) in its last EHLO reply."""
        return "PIPELINING" in self.extensions

    async def reuse(self) -> None:
        """Ready a pooled session for its next transaction: RSET (§4.1.1.5) now, or,
        with PIPELINING, as the first command of the next group (``StaleSession`` if
        it fails there)."""
        if self.pipelining:
            self._reset_pending = True
        else:
            await self.reset()

    async def transaction(
        self, envelope: Envelope, content: ContentSource, size: int | None
    ) -> tuple[dict[str, Outcome], bool]:
        """MAIL, RCPT..., DATA: per-recipient outcomes and whether DSN was passed."""
        check_size(size, self.extensions)
        mail, dsn = mail_command(envelope, self.extensions, size)
        if self.pipelining:
            return await self._pipelined(envelope, mail, dsn, content), dsn
        return await self._lockstep(envelope, mail, dsn, content), dsn

    async def _lockstep(
        self, envelope: Envelope, mail: str, dsn: bool, content: ContentSource
    ) -> dict[str, Outcome]:
        """One command, one reply (a peer without PIPELINING)."""
        reply = await self.command(mail)
        if reply.code != 250:
            outcome = self._not_accepted(reply, "MAIL")
            await self._reset_after_refusal()
            return {r.address: outcome for r in envelope.recipients}
        outcomes: dict[str, Outcome] = {}
        accepted: list[str] = []
        for recipient in envelope.distinct().recipients:
            reply = await self.command(rcpt_command(recipient, dsn))
            outcomes[recipient.address] = self._rcpt_outcome(reply)
            if reply.code in RCPT_ACCEPTED:
                accepted.append(recipient.address)
        if not accepted:
            await self._reset_after_refusal()
            return for_every_occurrence(envelope, outcomes)
        reply = await self.command("DATA", self._timeouts.data_init)
        outcome = await self._data_outcome(reply, content)
        return for_every_occurrence(envelope, self._final(outcomes, accepted, outcome))

    async def _pipelined(
        self, envelope: Envelope, mail: str, dsn: bool, content: ContentSource
    ) -> dict[str, Outcome]:
        """RFC 2920 §3.1: [RSET,] MAIL, RCPT..., DATA in one write, then every reply."""
        recipients = envelope.distinct().recipients
        group = [mail, *(rcpt_command(r, dsn) for r in recipients), "DATA"]
        if self._reset_pending:
            self._reset_pending = False
            await self._send_group(["RSET", *group])
        else:
            await self._send_group(group)
        assert self._writer is not None
        timeouts = self._timeouts
        async with asyncio.timeout(timeouts.command) as deadline:
            mail_reply = await self._read_reply()
            rcpt_replies: list[Reply] = []
            for _ in recipients:
                _extend(deadline, timeouts.command)
                rcpt_replies.append(await self._read_reply())
            _extend(deadline, timeouts.data_init)
            data_reply = await self._read_reply()
            await self._writer.drain()  # the group is out: the peer answered its DATA
        if mail_reply.code != 250:
            await self._abandon_data(data_reply)
            outcome = self._not_accepted(mail_reply, "MAIL")
            return {r.address: outcome for r in envelope.recipients}
        outcomes = {
            r.address: self._rcpt_outcome(reply)
            for r, reply in zip(recipients, rcpt_replies, strict=True)
        }
        accepted = [
            r.address
            for r, reply in zip(recipients, rcpt_replies, strict=True)
            if reply.code in RCPT_ACCEPTED
        ]
        if not accepted:
            await self._abandon_data(data_reply)
            return for_every_occurrence(envelope, outcomes)
        outcome = await self._data_outcome(data_reply, content)
        return for_every_occurrence(envelope, self._final(outcomes, accepted, outcome))

    async def _send_group(self, commands: list[str]) -> None:
        """Write a pipelined group; with an RSET in front, read its reply first and turn
        any failure of this pooled session into ``StaleSession`` (nothing was sent)."""
        assert self._writer is not None
        self._writer.write(("\r\n".join(commands) + "\r\n").encode("utf-8"))
        if commands[0] != "RSET":
            return
        try:
            async with asyncio.timeout(self._timeouts.command):
                reply = await self._read_reply()
        except SESSION_ERRORS as error:
            raise StaleSession(f"pooled session lost: {describe_error(error)}") from None
        if reply.code != 250:
            raise StaleSession(f"RSET refused: {reply.code} {reply.text}")

    def _not_accepted(self, reply: Reply, command: str) -> Outcome:
        """The outcome of a command that did not get the reply it needs: the peer's
        refusal (4xx, 5xx) as it is; a 2xx or 3xx out of place (a 250 to DATA, a 252 to
        RCPT) is a protocol error, never "delivered": nothing was sent, so it is a
        temporary failure (retried, 4.5.0) and the session is not reused."""
        if reply.code >= 400:
            return Outcome.from_reply(reply)
        self.broken = True
        return Outcome.temporary(f"unexpected reply {reply.code} to {command}", "4.5.0")

    def _rcpt_outcome(self, reply: Reply) -> Outcome:
        """RFC 5321 §4.3.2: RCPT succeeds with 250 or 251 only."""
        if reply.code in RCPT_ACCEPTED:
            return Outcome.from_reply(reply)
        return self._not_accepted(reply, "RCPT")

    async def _data_outcome(self, reply: Reply, content: ContentSource) -> Outcome:
        """After the DATA reply: the content and the end-of-data reply if it was 354
        (a 2xx there is delivered, §4.3.2), else the DATA refusal."""
        if reply.code != 354:
            return self._not_accepted(reply, "DATA")
        final = await self._send_content(content)
        if 300 <= final.code < 400:
            return self._not_accepted(final, "end of data")
        return Outcome.from_reply(final)

    def _final(
        self, outcomes: dict[str, Outcome], accepted: list[str], outcome: Outcome
    ) -> dict[str, Outcome]:
        """The end-of-DATA outcome (or a refused DATA) is that of every accepted RCPT."""
        for address in accepted:
            outcomes[address] = outcome
        self.messages_sent += 1
        return outcomes

    async def _abandon_data(self, data_reply: Reply) -> None:
        """No transaction to send: a peer that still answered DATA with 354 gets a lone
        ``.`` (RFC 2920 §3.1). The replies already read stand whatever happens here; a
        failure only marks the session unfit for reuse."""
        if data_reply.code != 354:
            return
        assert self._writer is not None
        try:
            async with asyncio.timeout(self._timeouts.data_end):
                self._writer.write(b".\r\n")
                await self._writer.drain()
                await self._read_reply()
        except SESSION_ERRORS:
            self.broken = True

    async def _send_content(self, content: ContentSource) -> Reply:
        """After a 354: the content as DATA (``DotStuffer``), the final ``.CRLF`` in the
        same write as the last block, then the end-of-data reply (§4.5.3.2 timeouts:
        each block written within ``data_block``, the reply within ``data_end``)."""
        assert self._writer is not None
        writer, timeouts = self._writer, self._timeouts
        stuffer = DotStuffer()
        pending = b""
        async for chunk in content():
            block = stuffer.feed(chunk)
            if not block:
                continue
            if pending:
                async with asyncio.timeout(timeouts.data_block):
                    writer.write(pending)
                    await writer.drain()
            pending = block
        async with asyncio.timeout(timeouts.data_block) as deadline:
            writer.write(pending + stuffer.finish())
            await writer.drain()
            _extend(deadline, timeouts.data_end)
            return await self._read_reply()

    async def reset(self) -> None:
        """RSET (§4.1.1.5): a clean state for the next transaction."""
        reply = await self.command("RSET")
        if reply.code != 250:
            raise SessionFailure(f"RSET refused: {reply.code} {reply.text}")

    async def _reset_after_refusal(self) -> None:
        """RSET after the peer refused MAIL or every RCPT: the peer's answers stand even
        if RSET fails; the session is then only marked unfit for reuse."""
        try:
            await self.reset()
        except SESSION_ERRORS:
            self.broken = True

    async def close(self) -> None:
        """QUIT politely when possible, then close; never raises."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            if not self.broken:
                async with asyncio.timeout(5):
                    writer.write(b"QUIT\r\n")
                    await writer.drain()
                    if self._reader is not None:
                        await self._reader.readline()
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
            pass
        writer.close()
        try:
            async with asyncio.timeout(5):
                await writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
            pass


def _extend(deadline: asyncio.Timeout, seconds: float) -> None:
    """Give the next reply of a group its own timeout (RFC 5321 §4.5.3.2: per command)."""
    deadline.reschedule(asyncio.get_running_loop().time() + seconds)


def for_every_occurrence(envelope: Envelope, sent: dict[str, Outcome]) -> dict[str, Outcome]:
    """The outcomes of the RCPTs sent (keyed by the spelling sent), given to every
    spelling the envelope lists of the same mailbox."""
    by_mailbox = {mailbox_key(address): outcome for address, outcome in sent.items()}
    return {r.address: by_mailbox[mailbox_key(r.address)] for r in envelope.recipients}


def describe_error(error: BaseException) -> str:
    """A short reason for a failed session, for ``DeliveryResult.attempts`` and logs."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and not isinstance(error, ssl.SSLError):
        return f"cannot connect ({error.strerror or type(error).__name__})"
    return str(error) or type(error).__name__
