"""The one adapter around aiosmtpd: an ``SMTP`` subclass that speaks Missive's ESMTP.

Role: aiosmtpd 1.4.6 keeps the connection, the command loop, STARTTLS, AUTH framing and
its own protections (command line limits, bogus-command budget, ``<CRLF>.<CRLF>``-only
end of data); this subclass replaces what it does not do as shipped (measured, shared
research §4): EHLO with PIPELINING, ENHANCEDSTATUSCODES and DSN; MAIL/RCPT parameters
of RFC 1870, 6152, 6531 and 3461 kept with their case (``gateway.smtp.envelope``);
DATA streamed to the spool with bare CR/LF refused (``gateway.smtp.data``); AUTH against
an asynchronous authenticator with throttling; the relay policy (``gateway.smtp.policy``).
No ``handle_*`` hook is used: aiosmtpd finds hooks by name and silently ignores a
misspelt one (STYLE 2), so everything here is an overridden, typed method.

Split by concern (STYLE 11): this module keeps the connection life cycle, the commands
(STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA and their checks) and the one place where
refusals become replies (``_answer``, ``_refused``). What a session is given (the
collaborators' protocols and ``SessionSettings``) is in ``gateway.smtp.session_settings``;
the DATA stage after the command is accepted (reading to the final dot, spooling, the
after-DATA policy, ``read_block``) is in ``gateway.smtp.session_data`` (``DataStage``);
the TLS facts and client certificate check, the SASL exchange and password check, and
the audit records of refusals and failed logins moved unchanged, past 500 lines, to
``gateway.smtp.session_identity`` (``IdentityStage``). Both stages are the bases of
``MissiveSMTP`` and define no command: every ``smtp_*`` and ``auth_*`` method is on
``MissiveSMTP``. Public names are re-exported here, so ``gateway.smtp.session`` stays
the one import for the SMTP front.

Invariants:
- Each stored message starts with a ``Received:`` field (``gateway.smtp.trace``).
- ``250`` to DATA only after ``writer.commit()`` returned, i.e. the entry and its
  directory are fsynced and ``spool.added`` is in the audit trail (STYLE 4).
- Every refusal of MAIL, RCPT, DATA and AUTH is logged and recorded in the audit trail
  (``smtp.refused``, ``smtp.auth_failed``); acceptances are the spool's ``spool.added``.
- The reply to a refusal comes from ``SmtpReply`` via ``replies.reply_line`` only.
- Commands pipelined before STARTTLS are discarded (RFC 3207 §4.2): aiosmtpd clears its
  read buffer when the TLS layer comes up; a test checks it.
- During DATA the idle limit is ``data_timeout``, measured from the last bytes read
  (a time stamp per block read, the timer re-armed only when it fires). DATA is read
  in blocks that never go past a ``.<CRLF>`` (``read_block``), so
  commands pipelined after the final dot stay for the command loop.

Trust level: faces the Internet; holds no private key but the TLS one; never logs
message content, Subject or a password.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from gateway.log import get_logger
from gateway.smtp import replies as r
from gateway.smtp.envelope import (
    MailCommand,
    RcptCommand,
    parse_mail,
    parse_rcpt,
    same_mailbox,
)
from gateway.smtp.policy import ClientFacts
from gateway.smtp.replies import Reply, SmtpReply, reply_for, reply_line
from gateway.smtp.session_data import DataStage, read_block
from gateway.smtp.session_identity import IdentityStage
from gateway.smtp.session_settings import (
    AuditRecorder,
    AuthOutcome,
    Gate,
    MessageQueue,
    MessageWriter,
    PasswordAuthenticator,
    SessionSettings,
)
from gateway.spool import MailParams

__all__ = [
    "MAX_COMMAND_LINE",
    "AuditRecorder",
    "AuthOutcome",
    "Gate",
    "MessageQueue",
    "MessageWriter",
    "MissiveSMTP",
    "PasswordAuthenticator",
    "SessionSettings",
    "read_block",
]

_log = get_logger("smtp")

MAX_COMMAND_LINE = 1000  # MAIL/RCPT with DSN parameters; aiosmtpd's reader stops at 1001


class _NoHooks:
    """aiosmtpd wants a handler object; Missive uses none of its hooks."""


_DISCOVERED_PREFIXES = ("smtp_", "auth_")
_discovered_names: dict[type, list[str]] = {}


class MissiveSMTP(IdentityStage, DataStage):
    """One SMTP connection of a Missive listener; see the module docstring."""

    def __init__(self, settings: SessionSettings, starttls: ssl.SSLContext | None) -> None:
        listener = settings.listener
        submission = listener.kind == "submission"
        must_tls = starttls is not None and (
            submission or listener.client_certificate == "required"
        )
        self._discovering = True
        try:
            self._aiosmtpd_init(settings, starttls, submission, must_tls)
        finally:
            self._discovering = False
        # With implicit TLS the whole connection is encrypted: aiosmtpd only knows
        # STARTTLS, so tell it after its constructor (which warns on the False value).
        self._auth_require_tls = not settings.implicit_tls
        self.settings = settings
        self.command_size_limits = _command_limits()
        self._mail: MailCommand | None = None
        self._rcpts: list[RcptCommand] = []
        self._login: str | None = None
        self._tls_version: str | None = None
        self._tls_cipher: str | None = None
        self._client_dn: str | None = None
        self._client_check_problem: str | None = None
        self._client_facts = ClientFacts(ip="")
        self._admitted_ip: str | None = None
        self._in_data = False
        self._transaction_ends = False  # DATA went ahead: reset once answered (smtp_DATA)
        self._last_activity = 0.0
        self._background: set[asyncio.Task[None]] = set()

    def __dir__(self) -> Iterable[str]:
        """While aiosmtpd's constructor runs, only the ``smtp_*`` and ``auth_*`` names.

        aiosmtpd 1.4.6 finds its command and AUTH methods with ``dir(self)`` and
        ``inspect.getmembers(self)`` (a ``getattr`` of every attribute) for every new
        connection: about three quarters of the constructor's time (measured, issue 5).
        The names it looks for depend only on the class, so they are listed once per
        class; it finds the same methods, and ``dir`` is complete again afterwards
        (``tests/smtp/test_session_discovery.py``)."""
        if not self.__dict__.get("_discovering", False):
            return super().__dir__()
        names = _discovered_names.get(type(self))
        if names is None:
            names = [name for name in super().__dir__() if name.startswith(_DISCOVERED_PREFIXES)]
            _discovered_names[type(self)] = names
        return names

    def _aiosmtpd_init(
        self,
        settings: SessionSettings,
        starttls: ssl.SSLContext | None,
        submission: bool,
        must_tls: bool,
    ) -> None:
        listener = settings.listener
        super().__init__(
            _NoHooks(),
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident="Missive ESMTP",
            tls_context=starttls,
            require_starttls=must_tls,
            timeout=listener.command_timeout.total_seconds(),
            auth_required=submission,
            auth_require_tls=True,
        )

    # -- connection life cycle -----------------------------------------------------------

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    @property
    def peer_text(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown"

    async def _handle_client(self) -> None:
        ip = self.peer_ip
        if not self.settings.connections.try_acquire(ip):
            _log.warning("smtp.too_many_connections", listener=self.listener_name, peer=ip)
            await self.push(reply_line(r.TOO_MANY_CONNECTIONS))
            if self.transport is not None:
                self.transport.close()
            return
        self._admitted_ip = ip
        self._client_facts = ClientFacts(ip=ip)
        if self.settings.implicit_tls and self.transport is not None:
            await self._inspect_tls(self.transport.get_extra_info("ssl_object"))
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted_ip is not None:
            self.settings.connections.release(self._admitted_ip)
            self._admitted_ip = None
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        if self._in_data:
            limit = self.settings.listener.data_timeout.total_seconds()
            idle = self.loop.time() - self._last_activity
            if idle < limit:
                self._timeout_handle = self.loop.call_later(limit - idle, self._timeout_cb)
                return
        _log.info("smtp.timeout", listener=self.listener_name, peer=self.peer_text)
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._mail = None
        self._rcpts = []

    @property
    def listener_name(self) -> str:
        return self.settings.listener.name

    # -- TLS -----------------------------------------------------------------------------

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # aiosmtpd would start TLS inside TLS
            await self.push(reply_line(r.TLS_ACTIVE))
            return
        await super().smtp_STARTTLS(arg)
        if self._tls_protocol is not None and self.transport is not None:
            await self._inspect_tls(self.transport.get_extra_info("ssl_object"))

    # -- EHLO ----------------------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, *self._extensions()]
        # the whole reply in one write, so one send (it was a send per line)
        await self.push("".join(f"250-{line}\r\n" for line in lines) + "250 HELP")

    def _extensions(self) -> list[str]:
        """RFC 1870, 2920, 6152, 6531, 2034, 3461, 3207, 4954."""
        extensions = [
            f"SIZE {self.settings.max_message_size}",
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if self.tls_context is not None and self._tls_protocol is None:
            extensions.append("STARTTLS")
        if self.settings.authenticator is not None and self._auth_offered():
            extensions.append("AUTH PLAIN LOGIN")
        return extensions

    def _auth_offered(self) -> bool:
        if self.settings.listener.kind != "submission":
            return False
        return self.settings.implicit_tls or self._tls_protocol is not None

    # -- AUTH (RFC 4954; PLAIN RFC 4616) -----------------------------------------------

    async def smtp_AUTH(self, arg: str) -> None:
        if self.settings.authenticator is None or self.settings.listener.kind != "submission":
            await self.push("502 5.5.1 AUTH not available here")
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await self._auth_blob(args[1] if len(args) > 1 else None, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push(reply_line(r.AUTH_BAD_PLAIN))
            return AuthResult(success=False, handled=True)
        return await self._check_password(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login = await self._auth_blob(args[1] if len(args) > 1 else None, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self._auth_blob(None, "Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check_password(login, password)

    # -- MAIL, RCPT ----------------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._answer("mail", lambda: self._mail_command(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._answer("rcpt", lambda: self._rcpt_command(arg))

    async def smtp_DATA(self, arg: str | None) -> None:
        """The transaction ends once DATA is answered, not before: a refusal after the
        content (the From: binding, a spool failure, the size) is audited with the
        envelope it refuses."""
        try:
            await self._answer("data", lambda: self._data_command(arg))
        finally:
            if self._transaction_ends:
                self._transaction_ends = False
                self._set_post_data_state()

    async def _answer(self, stage: str, command: Callable[[], Awaitable[Reply]]) -> None:
        """Run a command; turn any refusal into its reply in this one place."""
        try:
            reply = await command()
        except SmtpReply as refusal:
            await self._refused(stage, refusal)
            return
        except (ConnectionError, TimeoutError):
            raise  # the client is gone: nothing to answer (aiosmtpd closes)
        except Exception as error:  # noqa: BLE001 - spool, audit, bug: a 4xx, never a trace
            _log.error("smtp.error", stage=stage, peer=self.peer_text, error=type(error).__name__)
            await self._refused(stage, reply_for(error))
            return
        await self.push(reply_line(reply))

    async def _refused(self, stage: str, refusal: SmtpReply) -> None:
        _log.info(
            "smtp.refused",
            listener=self.listener_name,
            peer=self.peer_text,
            stage=stage,
            code=refusal.reply.code,
            reason=refusal.detail,
        )
        await self._audit_refusal(stage, refusal.reply, refusal.detail)
        await self.push(reply_line(refusal.reply))

    def _check_session(self) -> None:
        assert self.session is not None
        if not self.session.host_name:
            raise SmtpReply(r.NEED_HELO)
        if self.settings.listener.kind == "submission" and self._login is None:
            raise SmtpReply(r.AUTH_REQUIRED)
        self._check_client_certificate()

    async def _mail_command(self, arg: str | None) -> Reply:
        self._check_session()
        rest = _after_keyword(arg, "FROM:", r.SYNTAX_MAIL)
        if self._mail is not None:
            raise SmtpReply(r.NESTED_MAIL)
        command = parse_mail(rest, max_size=self.settings.max_message_size)
        assert self.session is not None
        if not self.session.extended_smtp and command.params != MailParams():
            raise SmtpReply(r.SYNTAX_MAIL, "MAIL parameters after HELO (RFC 5321 §4.1.1.2)")
        self.settings.policy.check_mail(self._client_facts, command.sender)
        if self._login is None and command.params.auth is not None:
            # RFC 4954 §5: from a client that did not authenticate, AUTH=<> - never kept
            command = replace(command, params=replace(command.params, auth=None))
        self._mail = command
        self._rcpts = []
        return r.SENDER_OK

    async def _rcpt_command(self, arg: str | None) -> Reply:
        self._check_session()
        if self._mail is None:
            raise SmtpReply(r.NEED_MAIL)
        rest = _after_keyword(arg, "TO:", r.SYNTAX_RCPT)
        command = parse_rcpt(
            rest,
            smtputf8=self._mail.params.smtputf8,
            postmaster_domain=self.settings.postmaster_domain,
        )
        self.settings.policy.check_rcpt(self._client_facts, command.recipient, len(self._rcpts))
        if not any(same_mailbox(earlier, command) for earlier in self._rcpts):
            self._rcpts.append(command)  # a repeated RCPT is accepted once (no 2nd copy)
        return r.RECIPIENT_OK

    # -- DATA ----------------------------------------------------------------------------

    async def _data_command(self, arg: str | None) -> Reply:
        self._check_session()
        if self._mail is None or not self._rcpts:
            raise SmtpReply(r.NEED_RCPT)
        if arg:
            raise SmtpReply(r.SYNTAX_DATA)
        if not self.settings.data_transfers.try_acquire("data"):
            raise SmtpReply(r.TOO_BUSY, "concurrent DATA cap reached")
        self._transaction_ends = True
        try:
            return await self._receive(self._mail, tuple(self._rcpts))
        finally:
            self.settings.data_transfers.release("data")


def _command_limits() -> Any:
    return defaultdict(
        lambda: SMTP.command_size_limit, {"MAIL": MAX_COMMAND_LINE, "RCPT": MAX_COMMAND_LINE}
    )


def _after_keyword(arg: str | None, keyword: str, syntax: Reply) -> str:
    if arg is None or arg[: len(keyword)].upper() != keyword:
        raise SmtpReply(syntax, f"expected {keyword}")
    return arg[len(keyword) :]
