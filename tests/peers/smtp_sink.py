"""Capture SMTP sink: a next-hop MTA for tests that records exactly what it was sent.

Role: stands in for a remote MX or a hospital mail server in relay and delivery tests.
It listens on 127.0.0.1 (a port the kernel picks at bind time, so there is no window in
which another process could take it), optionally offers STARTTLS (RFC 3207) with a given
certificate and asks for a client certificate, and records per message: the envelope
(MAIL FROM and RCPT TO with their parameters, verbatim), the raw DATA bytes after
dot-unstuffing (RFC 5321 §4.5.2), the EHLO name, and the TLS version, cipher, SNI name
and client certificate of the session. It can be told to answer a given 4xx/5xx reply
to the next N MAIL, RCPT or end-of-DATA, or to always refuse one recipient, so later
tests can drive retries, per-recipient outcomes and bounces.

Why our own small asyncio server rather than aiosmtpd's ``Controller``: aiosmtpd 1.4.6
answers ``555`` to every RCPT parameter and to the MAIL parameters ``RET``/``ENVID``
(RFC 3461 DSN), and upper-cases the parameter values it keeps, so a relay that passes
``NOTIFY=``/``ORCPT=`` on to a DSN-capable next hop (RFC 3461 §4) could not be tested
against it; a sink must accept and record what the gateway sends, exactly (aiosmtpd
stays the right choice for the gateway's own listeners, which must refuse what they do
not support). The protocol subset is small: EHLO/HELO, STARTTLS, MAIL, RCPT, DATA, RSET,
NOOP, VRFY, QUIT; no AUTH, no BDAT/CHUNKING (not advertised).

The server runs on an event loop in a background thread (``LoopThread``), so a
synchronous test (smtplib) and an asynchronous test (whose loop must not block) can both
use it. ``stop()`` closes the listener and every open session. End of DATA is only
``<CRLF>.<CRLF>`` (RFC 5321 §4.1.1.4): a bare LF before the dot does not end the message
(the SMTP smuggling vector), and bare LF or CR bytes are kept in ``data`` as received.

Security note: test double only. It accepts any sender and recipient and keeps message
bodies in memory; it must never listen on anything but loopback.
"""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, cast

from tests.peers.loop_thread import LoopThread

LOOPBACK = "127.0.0.1"

Stage = Literal["MAIL", "RCPT", "DATA"]
STAGES: tuple[Stage, ...] = ("MAIL", "RCPT", "DATA")

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Longest line the stream reader accepts (a DATA line may be long; commands are short).
LINE_LIMIT = 4 * 1024 * 1024
#: Extensions advertised after EHLO; STARTTLS is added when a TLS context is set.
DEFAULT_EXTENSIONS = ("8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES", "PIPELINING")
#: How long a normal close waits for the client to finish the TLS shutdown.
CLOSE_TIMEOUT = 5.0

_MAIL_RE = re.compile(r"^FROM:\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE | re.DOTALL)
_RCPT_RE = re.compile(r"^TO:\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE | re.DOTALL)


class SinkError(RuntimeError):
    """The sink was used wrongly (bad forced code, not started)."""


@dataclass(frozen=True)
class TlsInfo:
    """What the TLS layer of a session showed."""

    version: str
    cipher: str
    server_name: str | None
    peer_certificate: bytes | None  # DER of the client certificate, when one was verified


@dataclass(frozen=True)
class CapturedMessage:
    """One accepted message: envelope, raw content and session facts."""

    queue_id: int
    peer: tuple[str, int]
    helo: str
    esmtp: bool
    mail_from: str
    mail_params: tuple[str, ...]
    recipients: tuple[str, ...]
    rcpt_params: tuple[tuple[str, ...], ...]
    data: bytes
    tls: TlsInfo | None

    @property
    def tls_version(self) -> str | None:
        """``"TLSv1.3"``, ``"TLSv1.2"``..., or None for a cleartext session."""
        return self.tls.version if self.tls else None

    @property
    def peer_certificate(self) -> bytes | None:
        """DER client certificate presented (and verified) during STARTTLS, if any."""
        return self.tls.peer_certificate if self.tls else None

    def parsed(self) -> EmailMessage:
        """The content parsed with the standard library (``email.policy.default``)."""
        return email.message_from_bytes(self.data, policy=email.policy.default)


def server_tls_context(
    cert_chain: Path,
    key: Path,
    *,
    client_cas: Sequence[Path] = (),
    require_client_cert: bool = False,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server context for the sink: ``cert_chain`` is leaf then intermediates (PEM).

    With ``client_cas`` the server asks for a client certificate and verifies it against
    them (``CERT_OPTIONAL``: a client without one may still go on, as Postfix with
    ``smtpd_tls_ask_ccert``; ``require_client_cert`` makes it ``CERT_REQUIRED``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = minimum_version
    if maximum_version is not None:
        context.maximum_version = maximum_version
    context.load_cert_chain(cert_chain, key)
    for ca_file in client_cas:
        context.load_verify_locations(cafile=ca_file)
    if client_cas:
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise SinkError("require_client_cert needs client_cas to verify against")
    return context


def forced_reply(code: int, text: str | None = None) -> str:
    """``"451 4.3.0 ..."``: the reply line for a forced 4xx/5xx (RFC 3463 class digit)."""
    if not 400 <= code <= 599:
        raise SinkError(f"a forced reply must be 4xx or 5xx, not {code}")
    if text is None:
        kind = "temporary" if code < 500 else "permanent"
        text = f"{code // 100}.3.0 sink: forced {kind} failure"
    return f"{code} {text}"


@dataclass
class _Envelope:
    mail_from: str | None = None
    mail_params: tuple[str, ...] = ()
    recipients: list[str] = field(default_factory=list)
    rcpt_params: list[tuple[str, ...]] = field(default_factory=list)


class SmtpSink:
    """A capture SMTP server on 127.0.0.1; use as a context manager or ``start``/``stop``.

    ``tls`` (see ``server_tls_context``) enables STARTTLS; the sink installs its own SNI
    callback on that context, so give each sink a context of its own. ``require_tls``
    answers 530 to MAIL before STARTTLS. ``extensions`` replaces the EHLO keywords
    offered besides ``SIZE`` and ``STARTTLS``.
    """

    def __init__(
        self,
        *,
        hostname: str = "sink.test",
        tls: ssl.SSLContext | None = None,
        require_tls: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    ) -> None:
        if require_tls and tls is None:
            raise SinkError("require_tls needs a TLS context")
        self.hostname = hostname
        self.host = LOOPBACK
        self.port = 0
        self.max_message_size = max_message_size
        self._tls = tls
        self._require_tls = require_tls
        self._extensions = tuple(extensions)
        self._loop_thread = LoopThread(f"smtp-sink-{hostname}")
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[CapturedMessage] = []
        self._transcript: list[str] = []
        self._tls_failures: list[str] = []
        self._connections = 0
        self._forced: dict[Stage, collections.deque[str]] = {s: collections.deque() for s in STAGES}
        self._refused_recipients: dict[str, str] = {}
        self._sni: dict[int, str | None] = {}
        if tls is not None:
            tls.sni_callback = self._remember_sni

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Bind 127.0.0.1 on a kernel-chosen port and serve in a background thread."""
        self._loop_thread.start()
        try:
            self._server = self._loop_thread.call(
                asyncio.start_server(self._on_connection, self.host, 0, limit=LINE_LIMIT)
            )
        except BaseException:
            self._loop_thread.stop()
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def stop(self) -> None:
        """Close the listener and every open session, then stop the thread (idempotent)."""
        try:
            if self._server is not None:
                self._loop_thread.call(self._close_server())
        finally:
            self._server = None
            self._loop_thread.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop`` (the serving thread is alive)."""
        return self._loop_thread.is_alive()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return (self.host, self.port)

    # -- what was seen ---------------------------------------------------------------

    @property
    def messages(self) -> list[CapturedMessage]:
        """Messages accepted so far, in order (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def transcript(self) -> list[str]:
        """Every command (``C: ...``) and reply (``S: ...``) of every session, in order."""
        with self._lock:
            return list(self._transcript)

    @property
    def tls_failures(self) -> list[str]:
        """TLS handshakes that failed (client rejected our certificate, or the reverse)."""
        with self._lock:
            return list(self._tls_failures)

    @property
    def connection_count(self) -> int:
        """How many connections were accepted."""
        with self._lock:
            return self._connections

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[CapturedMessage]:
        """Block until ``count`` messages were accepted; raise ``TimeoutError`` otherwise.

        The timeout bounds a wait for another component (a relay delivering in the
        background); it is not an assertion on speed.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"sink got {len(self._messages)} message(s), expected {count}; "
                    f"transcript tail: {self._transcript[-10:]}"
                )
            return list(self._messages)

    async def wait_for_messages_async(
        self, count: int, timeout: float = 10.0
    ) -> list[CapturedMessage]:
        """``wait_for_messages`` for async tests (waits in a worker thread)."""
        return await asyncio.to_thread(self.wait_for_messages, count, timeout)

    # -- behaviour ---------------------------------------------------------------------

    def fail_next(
        self, stage: Stage, code: int, *, count: int = 1, text: str | None = None
    ) -> None:
        """Answer ``code`` (4xx/5xx) to the next ``count`` MAIL, RCPT or end-of-DATA.

        For ``"DATA"`` the reply replaces the final ``250`` after the message was
        received (the message is then not recorded); the ``354`` is unchanged.
        """
        if stage not in STAGES:
            raise SinkError(f"stage must be one of {STAGES}, not {stage!r}")
        reply = forced_reply(code, text)
        with self._lock:
            self._forced[stage].extend([reply] * count)

    def refuse_recipient(self, address: str, code: int = 550, text: str | None = None) -> None:
        """Always answer ``code`` to ``RCPT TO:<address>`` (case-insensitive)."""
        if text is None:
            text = f"{code // 100}.1.1 sink: mailbox refused"
        with self._lock:
            self._refused_recipients[address.lower()] = forced_reply(code, text)

    def clear_failures(self) -> None:
        """Forget every pending forced reply and refused recipient."""
        with self._lock:
            for queue in self._forced.values():
                queue.clear()
            self._refused_recipients.clear()

    # -- internals used by sessions ------------------------------------------------------

    def _remember_sni(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        with self._lock:
            self._sni[id(ssl_object)] = server_name

    def _take_sni(self, ssl_object: ssl.SSLObject) -> str | None:
        with self._lock:
            return self._sni.pop(id(ssl_object), None)

    def _take_forced(self, stage: Stage) -> str | None:
        with self._lock:
            queue = self._forced[stage]
            return queue.popleft() if queue else None

    def _refusal_for(self, address: str) -> str | None:
        with self._lock:
            return self._refused_recipients.get(address.lower())

    def _log(self, line: str) -> None:
        with self._lock:
            self._transcript.append(line)

    def _tls_failed(self, problem: str) -> None:
        with self._lock:
            self._tls_failures.append(problem)

    def _record(self, make: Callable[[int], CapturedMessage]) -> int:
        """Store ``make(queue_id)`` under the next queue id and wake up the waiters."""
        with self._changed:
            queue_id = len(self._messages) + 1
            self._messages.append(make(queue_id))
            self._changed.notify_all()
        return queue_id

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with self._lock:
            self._connections += 1
        session = _Session(self, reader, writer)
        try:
            await session.run()
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            self._log(f"!: session ended: {type(error).__name__}: {error}")
        except asyncio.CancelledError:
            # stop(): drop the connection at once. The task then ends normally, because
            # asyncio 3.11's start_server callback calls task.exception() on a cancelled
            # handler task and logs a spurious CancelledError.
            writer.transport.abort()
        finally:
            if not writer.transport.is_closing():
                writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
            except (OSError, TimeoutError):
                writer.transport.abort()  # the client never finished the TLS shutdown


class _Session:
    """One SMTP connection (RFC 5321 §4.1 command set, minus AUTH and BDAT)."""

    def __init__(
        self, sink: SmtpSink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.sink = sink
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1]))
        self.helo: str | None = None
        self.esmtp = False
        self.tls: TlsInfo | None = None
        self.envelope = _Envelope()
        self.handlers: dict[str, Callable[[str], Awaitable[bool]]] = {
            "EHLO": self.ehlo,
            "HELO": self.helo_command,
            "STARTTLS": self.starttls,
            "MAIL": self.mail,
            "RCPT": self.rcpt,
            "DATA": self.data,
            "RSET": self.rset,
            "NOOP": self.noop,
            "VRFY": self.vrfy,
            "QUIT": self.quit,
        }

    async def reply(self, *lines: str) -> None:
        """Send a (possibly multi-line, RFC 5321 §4.2.1) reply."""
        for index, line in enumerate(lines):
            code, _, text = line.partition(" ")
            separator = " " if index == len(lines) - 1 else "-"
            formatted = f"{code}{separator}{text}"
            self.sink._log(f"S: {formatted}")
            self.writer.write(formatted.encode("utf-8") + b"\r\n")
        await self.writer.drain()

    async def read_line(self) -> bytes | None:
        line = await self.reader.readline()
        return line if line.endswith(b"\n") else None

    async def run(self) -> None:
        await self.reply(f"220 {self.sink.hostname} ESMTP capture sink")
        while True:
            raw = await self.read_line()
            if raw is None:
                return
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.sink._log(f"C: {text}")
            verb, _, argument = text.partition(" ")
            handler = self.handlers.get(verb.upper())
            if handler is None:
                await self.reply("500 5.5.2 command not recognized")
                continue
            if not await handler(argument.strip()):
                return

    # -- commands ---------------------------------------------------------------------

    def extensions(self) -> list[str]:
        offered = [f"SIZE {self.sink.max_message_size}", *self.sink._extensions]
        if self.sink._tls is not None and self.tls is None:
            offered.append("STARTTLS")
        return offered

    async def ehlo(self, argument: str) -> bool:
        if not argument:
            await self.reply("501 5.5.4 EHLO needs a domain")
            return True
        self.helo, self.esmtp, self.envelope = argument, True, _Envelope()
        lines = [f"250 {self.sink.hostname} greets {argument}"]
        lines += [f"250 {extension}" for extension in self.extensions()]
        await self.reply(*lines)
        return True

    async def helo_command(self, argument: str) -> bool:
        if not argument:
            await self.reply("501 5.5.4 HELO needs a domain")
            return True
        self.helo, self.esmtp, self.envelope = argument, False, _Envelope()
        await self.reply(f"250 {self.sink.hostname}")
        return True

    async def starttls(self, argument: str) -> bool:
        context = self.sink._tls
        if context is None or not self.esmtp:
            await self.reply("502 5.5.1 STARTTLS not offered")
            return True
        if self.tls is not None:
            await self.reply("503 5.5.1 TLS already active")
            return True
        await self.reply("220 2.0.0 ready to start TLS")
        try:
            await self.writer.start_tls(context)
        except (OSError, ConnectionError) as error:
            self.sink._tls_failed(f"{type(error).__name__}: {error}")
            return False
        ssl_object = cast(ssl.SSLObject, self.writer.get_extra_info("ssl_object"))
        cipher = ssl_object.cipher()
        self.tls = TlsInfo(
            version=str(ssl_object.version()),
            cipher=cipher[0] if cipher else "",
            server_name=self.sink._take_sni(ssl_object),
            peer_certificate=ssl_object.getpeercert(binary_form=True),
        )
        # RFC 3207 §4.2: forget everything learnt before TLS; the client must EHLO again.
        self.helo, self.esmtp, self.envelope = None, False, _Envelope()
        return True

    async def mail(self, argument: str) -> bool:
        if self.helo is None:
            await self.reply("503 5.5.1 say EHLO first")
            return True
        if self.sink._require_tls and self.tls is None:
            await self.reply("530 5.7.0 must issue a STARTTLS command first")
            return True
        if self.envelope.mail_from is not None:
            await self.reply("503 5.5.1 nested MAIL command")
            return True
        match = _MAIL_RE.match(argument)
        if match is None:
            await self.reply("501 5.5.4 syntax: MAIL FROM:<address> [parameters]")
            return True
        params = tuple(match.group(2).split())
        if params and not self.esmtp:
            await self.reply("555 5.5.4 parameters need EHLO")
            return True
        if self._declared_size(params) > self.sink.max_message_size:
            await self.reply("552 5.3.4 message size exceeds fixed limit")
            return True
        forced = self.sink._take_forced("MAIL")
        if forced is not None:
            await self.reply(forced)
            return True
        self.envelope = _Envelope(mail_from=match.group(1), mail_params=params)
        await self.reply("250 2.1.0 sender ok")
        return True

    @staticmethod
    def _declared_size(params: tuple[str, ...]) -> int:
        for param in params:
            name, _, value = param.partition("=")
            if name.upper() == "SIZE" and value.isdigit():
                return int(value)
        return 0

    async def rcpt(self, argument: str) -> bool:
        if self.envelope.mail_from is None:
            await self.reply("503 5.5.1 need MAIL first")
            return True
        match = _RCPT_RE.match(argument)
        if match is None or not match.group(1):
            await self.reply("501 5.5.4 syntax: RCPT TO:<address> [parameters]")
            return True
        address, params = match.group(1), tuple(match.group(2).split())
        if params and not self.esmtp:
            await self.reply("555 5.5.4 parameters need EHLO")
            return True
        refusal = self.sink._refusal_for(address) or self.sink._take_forced("RCPT")
        if refusal is not None:
            await self.reply(refusal)
            return True
        self.envelope.recipients.append(address)
        self.envelope.rcpt_params.append(params)
        await self.reply("250 2.1.5 recipient ok")
        return True

    async def data(self, argument: str) -> bool:
        if self.envelope.mail_from is None:
            await self.reply("503 5.5.1 need MAIL first")
            return True
        if not self.envelope.recipients:
            await self.reply("554 5.5.1 no valid recipients")
            return True
        await self.reply("354 end data with <CR><LF>.<CR><LF>")
        received = await self.read_data()
        if received is None:
            return False
        content, too_big = received
        envelope, self.envelope = self.envelope, _Envelope()
        if too_big:
            await self.reply("552 5.3.4 message size exceeds fixed limit")
            return True
        forced = self.sink._take_forced("DATA")
        if forced is not None:
            await self.reply(forced)
            return True
        queue_id = self.record(envelope, content)
        await self.reply(f"250 2.0.0 queued as {queue_id}")
        return True

    async def read_data(self) -> tuple[bytes, bool] | None:
        """Lines up to ``<CRLF>.<CRLF>``, dot-unstuffed; None if the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            line = await self.read_line()
            if line is None:
                return None
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            size += len(line)
            if size <= self.sink.max_message_size:
                chunks.append(line)
        return b"".join(chunks), size > self.sink.max_message_size

    def record(self, envelope: _Envelope, content: bytes) -> int:
        mail_from, helo = envelope.mail_from, self.helo
        assert mail_from is not None and helo is not None
        return self.sink._record(
            lambda queue_id: CapturedMessage(
                queue_id=queue_id,
                peer=self.peer,
                helo=helo,
                esmtp=self.esmtp,
                mail_from=mail_from,
                mail_params=envelope.mail_params,
                recipients=tuple(envelope.recipients),
                rcpt_params=tuple(envelope.rcpt_params),
                data=content,
                tls=self.tls,
            )
        )

    async def rset(self, argument: str) -> bool:
        self.envelope = _Envelope()
        await self.reply("250 2.0.0 reset")
        return True

    async def noop(self, argument: str) -> bool:
        await self.reply("250 2.0.0 ok")
        return True

    async def vrfy(self, argument: str) -> bool:
        await self.reply("252 2.5.2 cannot verify, will accept and attempt delivery")
        return True

    async def quit(self, argument: str) -> bool:
        await self.reply("221 2.0.0 bye")
        return False
