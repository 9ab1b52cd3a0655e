"""The DATA stage of a Missive SMTP session: from the 354 reply to the final one.

Role: ``DataStage`` holds the part of ``gateway.smtp.session.MissiveSMTP`` that runs once
the DATA command has been accepted (``MissiveSMTP._data_command`` checks the session,
the envelope and the concurrent-DATA gate, then calls ``_receive``): it opens a spool
entry, writes the ``Received:`` field (``gateway.smtp.trace``), reads the data in blocks
up to the final dot (``read_block``), judges them with the sans-IO
``gateway.smtp.data.DataReceiver`` while streaming the content to the spool, runs the
after-DATA policy on the header section (``Policy.check_message``) and commits.

``DataStage`` is a base class of ``MissiveSMTP`` only, never a session of its own: it
keeps the DATA methods beside each other and out of the command code. The state they
read is set by ``MissiveSMTP.__init__`` and the properties they use are defined on
``MissiveSMTP``; both are listed under ``TYPE_CHECKING`` in the class so that mypy checks
every use and a reader sees the whole coupling in one place. It defines no ``smtp_*``
or ``auth_*`` method: aiosmtpd finds those on ``MissiveSMTP``.

Invariants:
- Each stored message starts with a ``Received:`` field (RFC 5321 §4.4).
- ``250`` to DATA only after ``writer.commit()`` returned, i.e. the entry and its
  directory are fsynced and ``spool.added`` is in the audit trail (STYLE 4). A refusal
  or an error aborts the entry before the reply; a cancelled transfer (connection
  lost) aborts it in a background task, kept referenced until it is done.
- The reply comes after the final dot (RFC 5321 §4.2.5): a problem found on the way
  (bare CR/LF, line or size limit, a spool write error) is recorded in the receiver and
  the reading goes on to the final dot.
- During DATA the idle limit is ``data_timeout``, measured from the last bytes read
  (a time stamp per block read, the timer re-armed only when it fires, in
  ``MissiveSMTP._timeout_cb``). DATA is read in blocks that never go past a
  ``.<CRLF>`` (``read_block``), so commands pipelined after the final dot stay for the
  command loop.

Trust level: faces the Internet through the session; sees message content and never
logs it, nor a Subject. The client's HELO name is stored in the entry's origin made
printable and cut to 255 characters (``_printable``, also used for audit details).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP

from gateway.log import get_logger
from gateway.smtp import replies as r
from gateway.smtp.data import END_OF_DATA, DataReceiver
from gateway.smtp.envelope import MailCommand, RcptCommand, to_recipient
from gateway.smtp.policy import ClientFacts, MessageFacts
from gateway.smtp.replies import Reply, SmtpReply, reply_for, reply_line
from gateway.smtp.session_settings import MessageWriter, SessionSettings
from gateway.smtp.trace import protocol_name, received_header
from gateway.spool import Envelope, Origin, SpoolError

_log = get_logger("smtp")


class DataStage(SMTP):
    """Reading, judging and spooling one message after DATA; a base of ``MissiveSMTP``."""

    if TYPE_CHECKING:  # set by MissiveSMTP.__init__, or defined on MissiveSMTP
        settings: SessionSettings
        _client_facts: ClientFacts
        _login: str | None
        _tls_version: str | None
        _tls_cipher: str | None
        _client_dn: str | None
        _in_data: bool
        _last_activity: float
        _background: set[asyncio.Task[None]]

        @property
        def peer_ip(self) -> str: ...

        @property
        def peer_text(self) -> str: ...

        @property
        def listener_name(self) -> str: ...

    async def _receive(self, mail: MailCommand, rcpts: tuple[RcptCommand, ...]) -> Reply:
        envelope = Envelope(
            mail_from=str(mail.sender),
            recipients=tuple(to_recipient(rcpt) for rcpt in rcpts),
            params=mail.params,
        )
        writer = await self.settings.queue.open_writer(envelope, self._origin())
        try:
            await writer.write(self._trace(writer, mail))
            receiver = await self._read_data(writer)
            if receiver.problem is not None:
                raise SmtpReply(receiver.problem, "message data refused")
            await writer.write(receiver.take_chunk(final=True))
            facts = MessageFacts.from_headers(receiver.headers)
            recipients = tuple(rcpt.recipient for rcpt in rcpts)
            self.settings.policy.check_message(self._client_facts, recipients, facts)
        except SmtpReply as refusal:
            await writer.abort(refusal.detail)
            raise
        except asyncio.CancelledError:
            self._abort_in_background(writer, "connection lost during DATA")
            raise
        except BaseException:
            await writer.abort("error during DATA")
            raise
        queue_id = await writer.commit()
        _log.info("smtp.accepted", listener=self.listener_name, peer=self.peer_text, id=queue_id)
        return Reply(250, "2.0.0", f"OK queued as {queue_id}")

    async def _read_data(self, writer: MessageWriter) -> DataReceiver:
        """Read up to the final dot, streaming content to ``writer``."""
        receiver = DataReceiver(self.settings.max_message_size)
        await self.push(reply_line(r.START_DATA))
        self._in_data = True
        self._last_activity = self.loop.time()
        self._reset_timeout(self.settings.listener.data_timeout.total_seconds())
        try:
            while not await self._read_data_block(receiver):
                chunk = receiver.take_chunk()
                if chunk:
                    await self._write_chunk(writer, receiver, chunk)
        finally:
            self._in_data = False
            self._reset_timeout()
        return receiver

    async def _read_data_block(self, receiver: DataReceiver) -> bool:
        """Read the next block of DATA (``read_block``); True at the final dot."""
        try:
            block = await read_block(self._reader)
        except asyncio.IncompleteReadError as error:
            raise ConnectionResetError("end of stream during DATA") from error
        self._last_activity = self.loop.time()
        return receiver.feed_block(block)

    @staticmethod
    async def _write_chunk(writer: MessageWriter, receiver: DataReceiver, chunk: bytes) -> None:
        try:
            await writer.write(chunk)
        except SpoolError as error:
            receiver.fail(reply_for(error).reply)

    def _abort_in_background(self, writer: MessageWriter, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(writer.abort(reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _trace(self, writer: MessageWriter, mail: MailCommand) -> bytes:
        """The ``Received:`` field (RFC 5321 §4.4) that starts the stored content."""
        assert self.session is not None
        protocol = protocol_name(
            extended=self.session.extended_smtp,
            tls=self._tls_version is not None,
            authenticated=self._login is not None,
            smtputf8=mail.params.smtputf8,
        )
        return received_header(
            helo=self.session.host_name or "",
            client_ip=self.peer_ip,
            hostname=self.hostname,
            protocol=protocol,
            queue_id=getattr(writer, "queue_id", None),
            when=datetime.now(UTC),
        )

    def _origin(self) -> Origin:
        assert self.session is not None
        return Origin(
            listener=self.listener_name,
            client_address=self.peer_ip,
            helo=_printable(self.session.host_name),
            tls_version=self._tls_version,
            tls_cipher=self._tls_cipher,
            client_cert_dn=self._client_dn,
            auth_login=self._login,
        )


async def read_block(reader: asyncio.StreamReader) -> bytes:
    """The next DATA bytes for ``DataReceiver.feed_block``: up to the first ``.<CRLF>``
    (which may or may not be the final dot), or, past the reader's limit, what it holds
    before it; never a byte after it, so pipelined commands stay in ``reader``.
    ``IncompleteReadError`` at the end of the stream. With aiosmtpd's reader limit (1001
    octets, its line length) a block past the limit is what the buffer held when the
    limit was passed: often about 1 KiB, so blocks batch less than their size allows
    (measured in review; the gain is in ``bench/README.md``)."""
    try:
        return await reader.readuntil(END_OF_DATA)
    except asyncio.LimitOverrunError as error:
        return await reader.readexactly(error.consumed)


def _printable(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = "".join(c if c.isprintable() else "?" for c in text)[:255]
    return cleaned or None
