"""SMTP replies as typed errors, and the one place that turns an error into a reply line.

Role: every refusal in the SMTP front is raised as an ``SmtpReply`` (STYLE 7): an RFC 5321
reply code, an RFC 3463 enhanced status code and a public text. ``reply_line`` formats it;
``reply_for`` maps the errors of other layers (spool, audit) onto replies, so the session
never improvises a reply text.

Invariants: the public text never names a path, a configuration value, a certificate or a
login; the cause (``detail``) is for the local log and the audit trail only. Codes
4xx mean "try again later" (RFC 5321 §4.2.1), 5xx are final.

Trust level: pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit import AuditSinkClosed, AuditWriteError
from gateway.spool import SpoolError


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: ``code`` (RFC 5321 §4.2), ``enhanced`` (RFC 3463), ``text``."""

    code: int
    enhanced: str
    text: str

    def line(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class SmtpReply(Exception):
    """A refusal with its SMTP meaning; ``detail`` is for the log, never for the peer."""

    def __init__(self, reply: Reply, detail: str = "") -> None:
        super().__init__(detail or reply.text)
        self.reply = reply
        self.detail = detail or reply.text


# -- the replies the front sends (RFC 5321 §4.2.2/§4.2.3, RFC 3463 §3) --------------------

OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")

SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [SP <parameters>]")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [SP <parameters>]")
SYNTAX_DATA = Reply(501, "5.5.4", "Syntax: DATA")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid command parameter")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized or not implemented")
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Malformed sender address")
BAD_RECIPIENT_SYNTAX = Reply(553, "5.1.3", "Malformed recipient address")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command")
TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")  # RFC 3207 §4.2: no second STARTTLS
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
SMTPUTF8_NEEDED = Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")

AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed authentications, try again later")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64")
AUTH_BAD_PLAIN = Reply(501, "5.5.2", "Malformed PLAIN credentials")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not allowed for this login")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header address not allowed for this login")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
LOCAL_SENDER_FROM_OUTSIDE = Reply(550, "5.7.1", "Local sender address not allowed from outside")
OUTBOUND_FROM_NOT_LOCAL = Reply(550, "5.7.1", "From: domain is not served by this gateway")
NOT_TRUST_SPACE = Reply(550, "5.7.1", "Sender domain not authorised for this client certificate")
NOT_SIGNED = Reply(550, "5.7.1", "Only S/MIME signed or encrypted messages are accepted")
CERTIFICATE_REFUSED = Reply(550, "5.7.1", "Client certificate not accepted")
CERTIFICATE_NEEDED = Reply(550, "5.7.1", "Client certificate required")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
BAD_HEADER = Reply(550, "5.6.0", "Message header is malformed")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too large")

MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6)")
BARE_NEWLINE = Reply(554, "5.6.0", "Bare CR or LF in message data (RFC 5321 2.3.8)")
TOO_BUSY = Reply(451, "4.3.2", "Too many concurrent transfers, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Requested action aborted: local error in processing")


def reply_line(reply: Reply) -> str:
    """The wire text of ``reply`` (RFC 2034: no enhanced code on 354)."""
    if not reply.enhanced:
        return f"{reply.code} {reply.text}"
    return reply.line()


def reply_for(error: BaseException) -> SmtpReply:
    """The reply that stands for ``error``; unknown errors are temporary (STYLE 6)."""
    if isinstance(error, SmtpReply):
        return error
    if isinstance(error, SpoolError):
        reply = Reply(error.reply_code, error.enhanced_code, error.public_text)
        return SmtpReply(reply, f"{type(error).__name__}: {error}")
    if isinstance(error, AuditWriteError | AuditSinkClosed):
        return SmtpReply(LOCAL_ERROR, f"audit trail: {type(error).__name__}")
    return SmtpReply(LOCAL_ERROR, f"{type(error).__name__}: {error}")
