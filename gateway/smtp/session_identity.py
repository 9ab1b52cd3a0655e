"""Who the SMTP client is, and the audit records that carry it: a base of ``MissiveSMTP``.

Role: ``IdentityStage`` holds the work behind the commands that establish the client's
identity in ``gateway.smtp.session.MissiveSMTP``: the TLS facts and the client
certificate check after a handshake (``_inspect_tls``, for STARTTLS and implicit TLS;
``gateway.smtp.tls``), the refusal of MAIL/RCPT/DATA when that check failed or a
required certificate is missing (``_check_client_certificate``), and the SASL exchange
of AUTH (RFC 4954: initial response or 334 challenge) for PLAIN (RFC 4616) and LOGIN
up to the password check, throttled per client IP and login (``gateway.smtp.throttle``).
It also builds the audit records of the session's refusals and failed logins
(``smtp.refused``, ``smtp.auth_failed``), which carry those facts: the login, the peer,
the client certificate's DN.

Like ``gateway.smtp.session_data.DataStage``, ``IdentityStage`` is a base class of
``MissiveSMTP`` only, never a session of its own, and defines no ``smtp_*`` or
``auth_*`` method: aiosmtpd finds every command and mechanism on ``MissiveSMTP``
(``smtp_STARTTLS``, ``smtp_AUTH``, ``auth_PLAIN``, ``auth_LOGIN`` call into this class).
The state it reads and sets is created by ``MissiveSMTP.__init__`` and the properties
it uses are defined on ``MissiveSMTP``; both are listed under ``TYPE_CHECKING`` in the
class, so mypy checks every use and a reader sees the whole coupling in one place.
Moved here unchanged from ``gateway.smtp.session`` when that module passed 500 lines.

Invariants:
- A client certificate that does not validate is refused, not taken as absent: the
  refusal is logged and audited at once (stage ``tls``) and every later MAIL, RCPT
  and DATA gets ``CERTIFICATE_REFUSED``.
- A throttled or failed login is logged and audited (``smtp.auth_failed``, outcome
  ``throttled`` or ``refused``) before the reply; a failure counts in the throttle
  for the IP and the login, a success clears that login's failures (not the IP's).
- An audit failure never stops a refusal: ``_record_quietly`` logs it and the reply
  is sent anyway.
- The refusal reason in audit details is made printable (``session_data._printable``);
  a failed login, the actor of ``smtp.auth_failed``, is cut to 200 characters.
- The client certificate's DN is recorded (spool record, audit details) as
  ``recorded_dn`` writes it: printable, at most ``MAX_RECORDED_DN`` characters, so
  that no certificate a trusted CA issued can make every message of its client fail
  (a DN of 2,100 accented characters passed the record's 4,096-character check and
  failed the trail's 4 KiB one; a line feed in a CN failed the record's; session 7
  review). Matching (``relay_clients``, the liste blanche) uses the certificate's own
  ``Name``, never this text.

Trust level: faces the Internet through the session; sees passwords in memory only,
never logs or audits one, nor message content or a Subject.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult
from cryptography import x509

from gateway.audit import AuditEvent
from gateway.log import get_logger
from gateway.smtp import replies as r
from gateway.smtp.envelope import MailCommand, RcptCommand
from gateway.smtp.policy import ClientFacts
from gateway.smtp.replies import Reply, SmtpReply, reply_line
from gateway.smtp.session_data import _printable
from gateway.smtp.session_settings import SessionSettings
from gateway.smtp.tls import check_client_certificate, tls_facts

_log = get_logger("smtp")

MAX_RECORDED_DN = 1000  # characters of a client DN kept in records (4 KiB of UTF-8 at most)


class IdentityStage(SMTP):
    """TLS facts, client certificate, password check and audit; a base of ``MissiveSMTP``."""

    if TYPE_CHECKING:  # set by MissiveSMTP.__init__, or defined on MissiveSMTP
        settings: SessionSettings
        _mail: MailCommand | None
        _rcpts: list[RcptCommand]
        _login: str | None
        _tls_version: str | None
        _tls_cipher: str | None
        _client_dn: str | None
        _client_check_problem: str | None
        _client_facts: ClientFacts

        @property
        def peer_ip(self) -> str: ...

        @property
        def peer_text(self) -> str: ...

        @property
        def listener_name(self) -> str: ...

    # -- TLS -----------------------------------------------------------------------------

    async def _inspect_tls(self, ssl_object: Any) -> None:
        facts = tls_facts(ssl_object)
        self._tls_version, self._tls_cipher = facts.version, facts.cipher
        if facts.certificate is None:
            return
        check = await check_client_certificate(self.settings.validator, facts.certificate)
        if check.dn is None:
            self._client_check_problem = check.problem
            _log.warning(
                "smtp.client_certificate_refused",
                listener=self.listener_name,
                peer=self.peer_text,
                serial=check.serial,
                problem=check.problem,
            )
            await self._audit_refusal("tls", r.CERTIFICATE_REFUSED, check.problem or "")
            return
        self._client_dn = recorded_dn(check.dn)
        self._client_facts = ClientFacts(ip=self.peer_ip, certificate_dn=check.dn)

    def _check_client_certificate(self) -> None:
        if self._client_check_problem is not None:
            raise SmtpReply(r.CERTIFICATE_REFUSED, self._client_check_problem)
        required = self.settings.listener.client_certificate == "required"
        if required and self._client_facts.certificate_dn is None:
            raise SmtpReply(r.CERTIFICATE_NEEDED, "no client certificate")

    # -- AUTH (RFC 4954; PLAIN RFC 4616) -----------------------------------------------

    async def _auth_blob(self, initial: str | None, challenge: str) -> bytes | None:
        """The client's base64 answer (initial response or after a 334 challenge)."""
        if initial is not None:
            return await self._decode_initial(initial)
        answer = await self.challenge_auth(challenge)
        return answer if isinstance(answer, bytes) else None

    async def _decode_initial(self, initial: str) -> bytes | None:
        if initial == "=":  # RFC 4954 §4: an empty initial response
            return b""
        try:
            return base64.b64decode(initial, validate=True)
        except (binascii.Error, ValueError):
            await self.push(reply_line(r.AUTH_BAD_BASE64))
            return None

    async def _check_password(self, login_bytes: bytes, password_bytes: bytes) -> AuthResult:
        authenticator = self.settings.authenticator
        assert authenticator is not None
        login = login_bytes.decode("utf-8", "replace")
        now = self.loop.time()
        blocked = self.settings.throttle.blocked(self.peer_ip, login, now)
        if blocked is not None:
            _log.warning("smtp.auth_throttled", peer=self.peer_text, login=login, by=blocked)
            await self._audit_auth(login, "throttled")
            return AuthResult(success=False, handled=False, message=reply_line(r.AUTH_THROTTLED))
        outcome = await authenticator.authenticate(login, password_bytes.decode("utf-8", "replace"))
        if not outcome.ok or outcome.login is None:
            self.settings.throttle.failed(self.peer_ip, login, now)
            _log.warning("smtp.auth_failed", peer=self.peer_text, login=login)
            await self._audit_auth(login, "refused")
            return AuthResult(success=False, handled=False, message=reply_line(r.AUTH_INVALID))
        self.settings.throttle.succeeded(login)
        self._login = outcome.login
        self._client_facts = ClientFacts(
            self.peer_ip, self._client_facts.certificate_dn, outcome.login
        )
        _log.info("smtp.auth_ok", peer=self.peer_text, login=outcome.login)
        return AuthResult(success=True, auth_data=outcome.login, message=reply_line(r.AUTH_OK))

    async def _audit_auth(self, login: str, outcome: str) -> None:
        event = AuditEvent(
            "smtp.auth_failed",
            actor=login[:200] or "-",
            peer=self.peer_text,
            outcome=outcome,
            details={"listener": self.listener_name},
        )
        await self._record_quietly(event)

    # -- audit records of refusals ----------------------------------------------------

    async def _audit_refusal(self, stage: str, reply: Reply, detail: str) -> None:
        mail = self._mail
        event = AuditEvent(
            "smtp.refused",
            mail_from=str(mail.sender) if mail is not None else None,
            rcpt_to=tuple(str(rcpt.recipient) for rcpt in self._rcpts),
            actor=self._login,
            peer=self.peer_text,
            outcome=f"{reply.code} {reply.enhanced}",
            details=_refusal_details(self.listener_name, stage, detail, self._client_dn),
        )
        await self._record_quietly(event)

    async def _record_quietly(self, event: AuditEvent) -> None:
        try:
            await self.settings.audit.record(event)
        except Exception as error:  # noqa: BLE001 - a refusal is sent anyway; logged
            _log.error("smtp.audit_failed", audit_event=event.type, error=type(error).__name__)


def _refusal_details(listener: str, stage: str, detail: str, dn: str | None) -> dict[str, str]:
    details = {"listener": listener, "stage": stage, "reason": _printable(detail) or "-"}
    if dn is not None:
        details["client_dn"] = dn
    return details


def recorded_dn(name: x509.Name) -> str:
    """``name`` as the spool record and the audit trail keep it: RFC 4514, each
    character that is not printable written as the hex escapes of its UTF-8 bytes
    (RFC 4514 §2.4: ``\\0A`` for a line feed), then cut to ``MAX_RECORDED_DN``
    characters (``...`` marks a cut)."""
    text = "".join(
        c if c.isprintable() else "".join(f"\\{b:02X}" for b in c.encode("utf-8"))
        for c in name.rfc4514_string()
    )
    return text if len(text) <= MAX_RECORDED_DN else text[:MAX_RECORDED_DN] + "..."
