"""The relay's SMTP client: one message to the next hop, an outcome per recipient.

Role: ``RelayClient.deliver(route, envelope, content)`` finds the hosts (``mx``), opens or
reuses an SMTP session (``SmtpSession``), secures it (``tlsclient``), sends MAIL, RCPT,
DATA and returns a ``DeliveryResult`` with one ``Outcome`` per recipient. It schedules
nothing: retries, DSN and the queue state are the caller's (STYLE 6). Trust level: holds
the gateway's TLS key and, for a smarthost route, its SMTP AUTH password (read from
``auth_password_file`` at each new session, never logged); talks only to next hops.

Decision (library): our own small client on asyncio streams rather than aiosmtplib
(MIT, maintained). aiosmtplib's ``data()``/``sendmail()`` take the whole message as one
``bytes``; the relay streams it from the spool (``Queue.content``, messages up to
``delivery.max_message_size`` and ``concurrency_per_destination`` at a time), needs the
raw ``SSLObject`` for its own chain validation and the reply of every RCPT kept apart.
What aiosmtplib would have given (reply parsing, dot-stuffing, EHLO keywords) is the
sans-IO part below, a few dozen lines each, tested without sockets.

Protocol (RFC 5321 unless noted):
- greeting, EHLO (HELO when EHLO gets 5xx, §3.2); STARTTLS per the route's ``tls``
  (RFC 3207) then EHLO again (§4.2 of 3207: forget what was learnt before TLS);
  ``verify`` never continues in clear when STARTTLS is missing or fails;
- AUTH PLAIN (RFC 4954, RFC 4616) toward a route with ``auth_user``, only on a TLS
  session, only when the peer advertises PLAIN; the login (never the password) is in
  ``DeliveryResult.auth_user`` and the ``relay.transaction`` log line. A refused AUTH
  (535 5.7.8 "credentials invalid", or 454, RFC 4954 §6) ends the session like any
  session failure: next host, then every recipient *deferred*, never bounced nor sent
  to the fallback — the credentials are the gateway's own configuration, not a fault
  of the message, and the operator fixes the password while the queue waits (Postfix's
  ``smtp_sasl_auth_soft_bounce = yes`` default makes the same choice); past
  ``max_lifetime`` the message fails with a DSN as any deferred one;
- MAIL FROM with SIZE (RFC 1870) when advertised, BODY=8BITMIME (RFC 6152) and SMTPUTF8
  (RFC 6531) when the message needs them (a peer lacking what the message needs is a
  permanent failure: 5.6.3 / 5.6.7), RET/ENVID and per-RCPT NOTIFY/ORCPT (RFC 3461 §4)
  only when the peer advertises DSN (``DeliveryResult.dsn_passed`` tells the DSN stage
  whether it must report "relayed"); a 2xx or 3xx that is not the reply a command
  needs (a 250 to DATA, a 252 to RCPT: §4.3.2 lists each command's replies) is a
  protocol error, deferred with 4.5.0 and the session dropped, never "delivered";
- PIPELINING (RFC 2920) when the peer advertises it: MAIL, every RCPT and DATA (with
  the RSET of a reused session in front) go in one write, DATA last (§3.1); the replies
  are then read in order, each with its own timeout, and every one of them is checked
  (§3.1: a refused MAIL or no accepted RCPT still needs the DATA reply read; a 354
  there is answered by a lone ``.``); nothing of the content leaves before the 354.
  The group is not drained before its replies are read, so a long RCPT list cannot
  deadlock against a peer that blocks writing replies (§3.1). A peer without PIPELINING
  gets one command and waits for its reply (lock-step), as RFC 5321 requires;
- DATA: the content is streamed, normalised to CRLF line ends (a bare CR or LF becomes
  CRLF: no SMTP smuggling through us), dot-stuffed (§4.5.2) and ended by ``.CRLF``; a
  message read whole goes out in one write with its final dot;
- timeouts of §4.5.3.2: greeting 5 min, MAIL 5 min, RCPT 5 min, DATA 2 min, each data
  block 3 min, end of data 10 min;
- outcomes: a 2xx to RCPT and then to the end of DATA is delivered; a reply's class
  decides temporary (4xx) or permanent (5xx); the enhanced code (RFC 3463) is the
  peer's when it gives one, else derived from the class;
- fall-through (§5.1): a host that cannot be reached, a TLS or verification failure, a
  421, a broken connection or a timeout moves on to the next address and the next MX
  (with fresh content); when every host failed, each recipient gets a temporary failure
  that lists why. A verification failure is never retried in clear (fail closed);
- reuse: after a transaction the session goes back to an idle pool (per route, host,
  port and address; at most ``MAX_MESSAGES_PER_SESSION`` messages, ``IDLE_LIMIT`` idle)
  and the next message to that host sends RSET (§4.1.1.5) on it instead of connecting
  (with PIPELINING, as the first command of its group). A pooled session whose RSET
  fails (the peer closed it while idle, a 421, a refusal) is stale: it is closed and
  the message takes the next pooled session or a new connection to the same address,
  not the next host. Nothing of the message was sent on it (no 354 was read), so
  this cannot duplicate a message;
- ``concurrency_per_destination``: one semaphore per destination (the static next hop,
  else the recipient domain) bounds the sessions in use toward it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from gateway.config.model import Route, TlsSection, TrustSection
from gateway.log import get_logger
from gateway.relay.mx import MailHost, MxResolver, RoutingError
from gateway.relay.tlsclient import (
    PeerIdentity,
    PeerVerifier,
    TlsVerificationError,
    client_context,
    handshake_facts,
    server_name_indication,
)
from gateway.spool.model import Envelope, Recipient

log = get_logger("relay.client")

ContentSource = Callable[[], AsyncIterator[bytes]]

MAX_REPLY_LINES = 100
MAX_LINE = 8192  # RFC 5321 §4.5.3.1.5 says 512 for replies; be tolerant, stay bounded
MAX_MESSAGES_PER_SESSION = 100
IDLE_LIMIT = 30.0  # seconds an idle session may wait for reuse

_REPLY_RE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.DOTALL)
_ENHANCED_RE = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s|$)")


# -- sans-IO: replies, outcomes, commands, DATA encoding --------------------------------


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines).strip()

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED_RE.match(self.lines[0]) if self.lines else None
        return ".".join(match.groups()) if match else None


class ReplyParser:
    """Collects reply lines (without CRLF) into a ``Reply``; ``ProtocolError`` if bad."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, line: bytes) -> Reply | None:
        """Add one line; the whole reply when this line was its last."""
        match = _REPLY_RE.match(line.rstrip(b"\r\n"))
        if match is None:
            raise ProtocolError("malformed reply line from the peer")
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            raise ProtocolError("reply lines with different codes")
        self._code = code
        self._lines.append(match.group(3).decode("utf-8", "replace"))
        if len(self._lines) > MAX_REPLY_LINES:
            raise ProtocolError("reply too long")
        if match.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply


@dataclass(frozen=True)
class Outcome:
    """The result for one recipient: a peer's reply or one the relay made up."""

    code: int
    enhanced: str
    text: str
    permanent: bool

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @classmethod
    def from_reply(cls, reply: Reply) -> Outcome:
        default = f"{reply.code // 100}.0.0"
        return cls(reply.code, reply.enhanced or default, reply.text, reply.code >= 500)

    @classmethod
    def temporary(cls, text: str, enhanced: str = "4.4.1") -> Outcome:
        return cls(451, enhanced, text, permanent=False)

    @classmethod
    def failed(cls, text: str, enhanced: str = "5.0.0") -> Outcome:
        return cls(554, enhanced, text, permanent=True)


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one message on one route (STYLE 6: per recipient)."""

    per_recipient: dict[str, Outcome]
    mx_host: str | None = None
    tls_version: str | None = None
    peer_dn: str | None = None
    peer_cert_serial: str | None = None
    peer_verified: bool = False
    dsn_passed: bool = False
    attempts: tuple[str, ...] = field(default=())  # why earlier hosts failed
    auth_user: str | None = None  # the login SMTP AUTH succeeded with (never the password)


RCPT_ACCEPTED = (250, 251)  # RFC 5321 §4.3.2: the replies that accept a recipient


class ProtocolError(Exception):
    """The peer broke the protocol (unparsable reply)."""


class SessionFailure(Exception):
    """This session cannot carry the message: try the next host (§5.1)."""


class StaleSession(SessionFailure):
    """A pooled session failed its RSET: nothing was sent on it, open another one."""


class MessageRefused(Exception):
    """The message cannot go to this peer at all (size, 8BITMIME, SMTPUTF8): permanent."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome


def parse_extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-case) -> their parameters (RFC 5321 §4.1.1.1)."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


def xtext(value: str) -> str:
    """RFC 3461 §4: encode ``+``, ``=``, controls and non-ASCII as ``+XX``."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{b:02X}"
        for c in value
        for b in (c.encode("utf-8") if ord(c) > 126 else bytes([ord(c)]))
    )


def mail_command(
    envelope: Envelope, extensions: dict[str, str], size: int | None
) -> tuple[str, bool]:
    """``MAIL FROM:<...> params`` and whether the DSN parameters were passed."""
    params = envelope.params
    words = [f"MAIL FROM:<{envelope.mail_from}>"]
    if size is not None and "SIZE" in extensions:
        words.append(f"SIZE={size}")
    if params.body is not None and params.body.upper() != "7BIT":
        if params.body.upper() != "8BITMIME" or "8BITMIME" not in extensions:
            raise MessageRefused(
                Outcome.failed(f"the next hop does not accept BODY={params.body}", "5.6.3")
            )
        words.append("BODY=8BITMIME")
    if params.smtputf8:
        if "SMTPUTF8" not in extensions:
            raise MessageRefused(Outcome.failed("the next hop does not support SMTPUTF8", "5.6.7"))
        words.append("SMTPUTF8")
    dsn = "DSN" in extensions
    if dsn and params.ret is not None:
        words.append(f"RET={params.ret}")
    if dsn and params.envid is not None:
        words.append(f"ENVID={xtext(params.envid)}")
    return " ".join(words), dsn


def rcpt_command(recipient: Recipient, dsn: bool) -> str:
    """``RCPT TO:<...>`` with NOTIFY/ORCPT when the peer supports DSN."""
    words = [f"RCPT TO:<{recipient.address}>"]
    if dsn and recipient.notify is not None:
        words.append("NOTIFY=" + ",".join(recipient.notify))
    if dsn and recipient.orcpt is not None:
        kind, _, address = recipient.orcpt.partition(";")
        words.append(f"ORCPT={kind};{xtext(address)}")
    return " ".join(words)


def check_size(size: int | None, extensions: dict[str, str]) -> None:
    """RFC 1870 §6: do not send a message larger than the peer's declared limit."""
    limit = extensions.get("SIZE", "")
    if size is not None and limit.isdigit() and int(limit) > 0 and size > int(limit):
        raise MessageRefused(
            Outcome.failed(f"message size {size} exceeds the next hop's limit {limit}", "5.3.4")
        )


class DotStuffer:
    """Streams content as DATA: CRLF line ends, dot-stuffing, final ``.CRLF`` (§4.5.2).

    A CR at the end of a chunk is held back until the next chunk shows whether an LF
    follows, so a CRLF is never split and a line start is always known. Whole buffers
    are handled with ``bytes`` methods (C loops): the line-end rewrite only runs when
    the chunk has a bare CR or LF, which what the gateway queues never has.
    """

    _LINE_END = re.compile(rb"\r\n|\r|\n")

    def __init__(self) -> None:
        self._held_cr = False
        self._at_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        data = b"\r" + chunk if self._held_cr else chunk
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        if has_bare_line_end(data):
            data = self._LINE_END.sub(b"\r\n", data)
        return self._stuff(data)

    def finish(self) -> bytes:
        tail = self._stuff(b"\r\n") if self._held_cr else b""
        self._held_cr = False
        if not self._at_line_start:
            tail += b"\r\n"
        return tail + b".\r\n"

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return data
        stuffed = data.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._at_line_start = stuffed.endswith(b"\r\n")
        return stuffed


def has_bare_line_end(data: bytes) -> bool:
    """True when ``data`` has a CR not followed by LF or an LF not preceded by CR."""
    pairs = data.count(b"\r\n")
    return data.count(b"\r") != pairs or data.count(b"\n") != pairs


#: Errors that end a session; the message then tries the next host (§5.1).
_SESSION_ERRORS = (
    SessionFailure,
    ProtocolError,
    OSError,
    TimeoutError,
    ssl.SSLError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,  # LimitOverrunError surfaces as ValueError from readline()
)


# -- timeouts ----------------------------------------------------------------------------


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


# -- one SMTP session --------------------------------------------------------------------


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
        for recipient in envelope.recipients:
            reply = await self.command(rcpt_command(recipient, dsn))
            outcomes[recipient.address] = self._rcpt_outcome(reply)
            if reply.code in RCPT_ACCEPTED:
                accepted.append(recipient.address)
        if not accepted:
            await self._reset_after_refusal()
            return outcomes
        reply = await self.command("DATA", self._timeouts.data_init)
        return self._final(outcomes, accepted, await self._data_outcome(reply, content))

    async def _pipelined(
        self, envelope: Envelope, mail: str, dsn: bool, content: ContentSource
    ) -> dict[str, Outcome]:
        """RFC 2920 §3.1: [RSET,] MAIL, RCPT..., DATA in one write, then every reply."""
        recipients = envelope.recipients
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
            return {r.address: outcome for r in recipients}
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
            return outcomes
        return self._final(outcomes, accepted, await self._data_outcome(data_reply, content))

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
        except _SESSION_ERRORS as error:
            raise StaleSession(f"pooled session lost: {_describe(error)}") from None
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
        except _SESSION_ERRORS:
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
        except _SESSION_ERRORS:
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


# -- the relay client ---------------------------------------------------------------------

_PoolKey = tuple[str, str, int, str]


class RelayClient:
    """Delivers messages for routes; owns the idle-session pool and the semaphores."""

    def __init__(
        self,
        *,
        helo_name: str,
        tls: TlsSection,
        trust: TrustSection,
        resolver: MxResolver,
        verifier: PeerVerifier,
        concurrency_per_destination: int,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._helo_name = helo_name
        self._tls = tls
        self._trust = trust
        self._resolver = resolver
        self._verifier = verifier
        self._concurrency = concurrency_per_destination
        self._timeouts = timeouts or Timeouts()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._idle: dict[_PoolKey, list[SmtpSession]] = {}
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}

    async def deliver(
        self,
        route: Route,
        envelope: Envelope,
        content: ContentSource,
        *,
        size: int | None = None,
    ) -> DeliveryResult:
        """Send one message to ``route``'s next hop or MX; never raises for a peer's fault.

        Without a static ``next_hop`` every recipient must be of one domain (the caller
        groups them). ``content()`` is called once per attempt (fresh iterator)."""
        domains = sorted({r.address.rpartition("@")[2].lower() for r in envelope.recipients})
        if route.next_hop is None and len(domains) != 1:
            raise ValueError("an MX route delivers one recipient domain at a time")
        destination = str(route.next_hop) if route.next_hop is not None else domains[0]
        size = size if size is not None else envelope.params.size
        semaphore = self._semaphores.setdefault(
            f"{route.name}/{destination}", asyncio.Semaphore(self._concurrency)
        )
        async with semaphore:
            return await self._deliver(route, envelope, content, size, domains)

    async def _deliver(
        self,
        route: Route,
        envelope: Envelope,
        content: ContentSource,
        size: int | None,
        domains: list[str],
    ) -> DeliveryResult:
        addresses = envelope.addresses
        try:
            hosts = await self._resolver.hosts_for(route, domains[0])
        except RoutingError as error:
            outcome = (
                Outcome.failed(error.text, error.enhanced)
                if error.permanent
                else Outcome.temporary(error.text, error.enhanced)
            )
            return DeliveryResult({a: outcome for a in addresses})
        attempts: list[str] = []
        for host in hosts:
            for address in host.addresses:
                result = await self._try_host(
                    route, host, address, envelope, content, size, domains, attempts
                )
                if result is not None:
                    return result
        text = "no next hop could take the message: " + "; ".join(attempts)
        enhanced = "4.7.5" if any("certificate" in a or "TLS" in a for a in attempts) else "4.4.1"
        return DeliveryResult(
            {a: Outcome.temporary(text[:900], enhanced) for a in addresses},
            attempts=tuple(attempts),
        )

    async def _try_host(
        self,
        route: Route,
        host: MailHost,
        address: str,
        envelope: Envelope,
        content: ContentSource,
        size: int | None,
        domains: list[str],
        attempts: list[str],
    ) -> DeliveryResult | None:
        """Deliver through one address; None (and a note in ``attempts``) to fall through."""
        session: SmtpSession | None = None
        try:
            while True:  # each stale pooled session is closed: this ends with a new one
                session = await self._session(route, host, address)
                if route.security == "tls-only":
                    self._check_liste_blanche(session, domains)
                try:
                    outcomes, dsn = await session.transaction(envelope, content, size)
                    break
                except StaleSession as stale:
                    log.debug("relay.session_stale", route=route.name, reason=str(stale))
                    stale_session, session = session, None
                    stale_session.broken = True
                    await stale_session.close()
        except MessageRefused as refused:
            assert session is not None  # raised before MAIL: the session is clean
            await self._release(route, session)
            outcomes = {a: refused.outcome for a in envelope.addresses}
            return _result(outcomes, host, session, dsn=False, attempts=attempts)
        except _SESSION_ERRORS as error:
            note = f"{host.name}[{address}]:{host.port}: {_describe(error)}"
            attempts.append(note)
            log.warning("relay.host_failed", route=route.name, host=host.name, error=note)
            if session is not None:
                session.broken = True
                await session.close()
            return None
        except BaseException:  # e.g. the spool's CorruptEntry while streaming DATA
            if session is not None:
                session.broken = True
                await session.close()
            raise
        await self._release(route, session)
        log.info(
            "relay.transaction",
            route=route.name,
            host=host.name,
            address=address,
            tls=session.peer.tls_version or "none",
            peer_dn=session.peer.dn or "",
            auth=session.auth_user or "none",
            delivered=sum(o.delivered for o in outcomes.values()),
            recipients=len(outcomes),
        )
        return _result(outcomes, host, session, dsn=dsn, attempts=attempts)

    def _check_liste_blanche(self, session: SmtpSession, domains: Sequence[str]) -> None:
        certificate = session.peer.certificate
        if certificate is None or not session.peer.verified:
            raise SessionFailure("tls-only route without a verified peer certificate")
        try:
            self._verifier.check_liste_blanche(certificate, domains)
        except TlsVerificationError as error:
            raise SessionFailure(str(error)) from None

    async def _session(self, route: Route, host: MailHost, address: str) -> SmtpSession:
        """An idle session to reuse (after RSET, or with RSET pending), else a new one."""
        key = (route.name, host.name, host.port, address)
        while idle := self._idle.get(key):
            session = idle.pop()
            if time.monotonic() - session.idle_since > IDLE_LIMIT:
                await session.close()
                continue
            try:
                await session.reuse()
                return session
            except _SESSION_ERRORS:
                session.broken = True
                await session.close()
        session = SmtpSession(host, address, self._helo_name, self._timeouts, route)
        try:
            await session.open(await self._security(route, host))
        except BaseException:
            session.broken = True
            await session.close()
            raise
        log.debug("relay.session_opened", route=route.name, host=host.name, address=address)
        return session

    async def _security(self, route: Route, host: MailHost) -> SessionSecurity:
        credentials = None
        if route.auth_user is not None and route.auth_password_file is not None:
            password = await asyncio.to_thread(route.auth_password_file.read_text, "utf-8")
            credentials = (route.auth_user, password.rstrip("\r\n"))
        if route.tls == "none":
            return SessionSecurity("none", None, host.name, None, credentials)
        verify = route.tls == "verify"
        key = (route.name, verify)
        if key not in self._contexts:
            self._contexts[key] = client_context(
                self._tls, self._trust, verify=verify, route_anchors=route.anchors
            )
        reference = route.tls_name or host.name
        return SessionSecurity(
            route.tls, self._contexts[key], reference, self._verifier, credentials
        )

    async def _release(self, route: Route, session: SmtpSession) -> None:
        """Keep a healthy session for the next message to the same host."""
        if session.broken or session.messages_sent >= MAX_MESSAGES_PER_SESSION:
            await session.close()
            return
        session.idle_since = time.monotonic()
        key = (route.name, session.host.name, session.host.port, session.address)
        self._idle.setdefault(key, []).append(session)

    async def close(self) -> None:
        """Close every idle session (QUIT)."""
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        await asyncio.gather(*(s.close() for s in sessions))


def _result(
    outcomes: dict[str, Outcome],
    host: MailHost,
    session: SmtpSession,
    *,
    dsn: bool,
    attempts: list[str],
) -> DeliveryResult:
    peer = session.peer
    return DeliveryResult(
        outcomes,
        mx_host=host.name,
        tls_version=peer.tls_version,
        peer_dn=peer.dn,
        peer_cert_serial=peer.serial,
        peer_verified=peer.verified,
        auth_user=session.auth_user,
        dsn_passed=dsn,
        attempts=tuple(attempts),
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and not isinstance(error, ssl.SSLError):
        return f"cannot connect ({error.strerror or type(error).__name__})"
    return str(error) or type(error).__name__
