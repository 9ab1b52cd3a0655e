"""SMTP replies and the per-recipient outcomes made from them (sans-IO).

Role: ``ReplyParser`` turns reply lines into a ``Reply``; ``Outcome`` is the result for
one recipient (a peer's reply or one the relay made up) and ``DeliveryResult`` gathers
them for one message on one route (STYLE 6: per recipient). No I/O, no logging: the
session (``smtp_session``) reads the lines, the relay client (``client``) and the inbound
store client (``gateway.inbound.store_client``) use the replies.

Invariants (RFC 5321 unless noted):
- a reply is one or more lines ``code SP text`` or ``code - text`` (§4.2); every line of
  one reply has the same code, the last one has SP, anything else is a
  ``ProtocolError``; a reply has at most ``MAX_REPLY_LINES`` lines (the line length is
  bounded by the reader: ``smtp_session.MAX_LINE``);
- the enhanced status code (RFC 3463 §2) is the peer's when the first line starts with
  one, else derived from the class (``4.0.0``, ``5.0.0``);
- a reply's class decides the outcome: 2xx delivered, 4xx temporary, 5xx permanent;
  an outcome the relay makes up is 451 (temporary) or 554 (permanent);
- RCPT is accepted by 250 or 251 only (§4.3.2, ``RCPT_ACCEPTED``);
- EHLO keywords (§4.1.1.1) are upper-cased, their parameters kept as sent.

Security: the peer's text is untrusted; it is decoded as UTF-8 with replacement and
never interpreted, only carried as the outcome's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_REPLY_LINES = 100

# RFC 5321 §4.2: Reply-code [ SP textstring ] CRLF for the last line - the text is
# optional there ("250" alone is a reply); "-" marks every line but the last
_REPLY_RE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_ENHANCED_RE = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s|$)")

RCPT_ACCEPTED = (250, 251)  # RFC 5321 §4.3.2: the replies that accept a recipient


class ProtocolError(Exception):
    """The peer broke the protocol (unparsable reply)."""


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
        self._lines.append((match.group(3) or b"").decode("utf-8", "replace"))
        if len(self._lines) > MAX_REPLY_LINES:
            raise ProtocolError("reply too long")
        if match.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply


def parse_extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-case) -> their parameters (RFC 5321 §4.1.1.1)."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


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


class MessageRefused(Exception):
    """The message cannot go to this peer at all (size, 8BITMIME, SMTPUTF8): permanent."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome
