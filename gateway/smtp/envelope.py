"""Parsing of MAIL FROM and RCPT TO arguments: the path and the ESMTP parameters (sans-IO).

Role: turn the argument text of ``MAIL FROM:`` / ``RCPT TO:`` (after the keyword) into
typed values, or raise ``SmtpReply``. aiosmtpd's own parsing upper-cases every parameter
and refuses DSN parameters (measured, shared research §4); this module replaces it.

Decisions (stricter than RFC 5321 where a gateway for health data can afford it):

- The path must be in angle brackets (RFC 5321 §4.1.2 ``Path``); ``<>`` is the null
  reverse-path (MAIL only); ``<Postmaster>`` alone is the postmaster of the gateway's
  first local domain (RFC 5321 §4.5.1), and ``<POSTMASTER@d>`` in any ASCII case is
  ``postmaster@d``: RFC 5321 §4.1.1.3 makes that one local part case-insensitive, so
  ``<Postmaster>`` and ``<postmaster@chu-a.test>`` in one transaction are one mailbox
  and one copy (every other local part keeps its case: "Duplicate recipients").
- Source routes (``<@a,@b:user@d>``, RFC 5321 §4.1.1.3, obsolete) are refused, not
  silently stripped: they are an open-relay probe.
- The local part must be a dot-string (RFC 5321 §4.1.2); quoted local parts are
  refused (they hide ``@`` and ``%`` routing). Exactly one ``@``: ``user@local@remote``
  is malformed. Address literals (``user@[192.0.2.1]``) are refused.
- Non-ASCII in an address needs ``SMTPUTF8`` on MAIL (RFC 6531 §3.4, 553 5.6.7).
- CR, LF and NUL anywhere in the argument: 501 (header injection in a later DSN).
- Parameters (RFC 5321 §4.1.2 ``esmtp-param``): keywords are case-insensitive; values
  keep their case where the RFC says so (ENVID, ORCPT: RFC 3461 §4.2, §4.4) and are
  xtext-decoded (RFC 3461 §4). MAIL: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8
  (RFC 6531), RET and ENVID (RFC 3461), AUTH (RFC 4954 §5). RCPT: NOTIFY and ORCPT
  (RFC 3461). A repeated or unknown keyword: 501 / 555.

Duplicate recipients (decision, session 8): two RCPTs name one mailbox when
``same_mailbox`` says so, which is ``gateway.spool.model.mailbox_key`` - local part
exact, domain lower-cased with ``str.lower`` (RFC 5321 §2.4) - so the front, the spool,
the secure agent and the relay's client follow one rule. ``Address`` lower-cases its
domain with the same ``str.lower``, which is idempotent on every code point (checked
over all of Unicode in the tests), so the rule and ``Address`` equality agree on every
address this parser accepts, an internationalized domain (RFC 6531) included. The rule
is deliberately narrow for such a domain: it does not map a U-label to its A-label
(``bücher.test`` and ``xn--bcher-kva.test`` stay two keys) nor case-fold ``ß`` to
``ss``. Python's ``idna`` codec is IDNA2003, which maps ``faß.test`` to ``fass.test``,
two distinct domains under IDNA2008 (RFC 5891, 5892); merging them would drop a
recipient, while a merge missed costs at most a second copy to one mailbox.

Trust level: pure functions over text from the network; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.smtp import replies as r
from gateway.smtp.replies import Reply, SmtpReply
from gateway.spool import MailParams, Recipient
from gateway.spool.model import mailbox_key

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_ENVID = 100  # RFC 3461 §4.4

_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\x80-\U0010ffff]+")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True)
class Address:
    """A mailbox ``local@domain`` (``domain`` lower-cased); ``Address.null()`` is ``<>``."""

    local: str
    domain: str

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    def __str__(self) -> str:
        return "" if self.is_null else f"{self.local}@{self.domain}"

    @classmethod
    def null(cls) -> Address:
        return cls("", "")


@dataclass(frozen=True)
class MailCommand:
    sender: Address
    params: MailParams


@dataclass(frozen=True)
class RcptCommand:
    recipient: Address
    notify: tuple[str, ...] | None
    orcpt: str | None


def parse_mail(arg: str, *, max_size: int) -> MailCommand:
    """``arg`` is what follows ``MAIL FROM:``; raise ``SmtpReply`` if unusable."""
    path, rest = _split_path(arg, r.SYNTAX_MAIL)
    params = _parameters(rest)
    mail = _mail_params(params, max_size)
    sender = Address.null() if path == "" else _mailbox(path, r.BAD_SENDER_SYNTAX)
    _require_utf8_flag(sender, mail.smtputf8)
    return MailCommand(sender, mail)


def parse_rcpt(arg: str, *, smtputf8: bool, postmaster_domain: str | None = None) -> RcptCommand:
    """``arg`` is what follows ``RCPT TO:``; raise ``SmtpReply`` if unusable.

    ``<Postmaster>`` without a domain (RFC 5321 §4.1.1.3, §4.5.1: MUST be accepted)
    means ``postmaster@<postmaster_domain>``.
    """
    path, rest = _split_path(arg, r.SYNTAX_RCPT)
    params = _parameters(rest)
    if postmaster_domain is not None and path.lower() == "postmaster":
        path = f"postmaster@{postmaster_domain}"
    recipient = _postmaster_folded(_mailbox(path, r.BAD_RECIPIENT_SYNTAX))
    _require_utf8_flag(recipient, smtputf8)
    notify = _notify(params.pop("NOTIFY", None))
    orcpt = _orcpt(params.pop("ORCPT", None))
    if params:
        raise SmtpReply(r.UNKNOWN_PARAMETER, f"RCPT parameters {sorted(params)}")
    return RcptCommand(recipient, notify, orcpt)


def _postmaster_folded(recipient: Address) -> Address:
    """``Postmaster@domain`` in any ASCII case as ``postmaster@domain`` (RFC 5321
    §4.1.1.3: "the "Postmaster" string ... is treated as case-insensitive")."""
    local = recipient.local
    if local != "postmaster" and local.isascii() and local.lower() == "postmaster":
        return Address("postmaster", recipient.domain)
    return recipient


def to_recipient(command: RcptCommand) -> Recipient:
    return Recipient(str(command.recipient), notify=command.notify, orcpt=command.orcpt)


def same_mailbox(first: RcptCommand, second: RcptCommand) -> bool:
    """Whether two RCPTs name one mailbox: the spool's rule, ``mailbox_key`` (module
    docstring, "Duplicate recipients"), the one copy every stage uses."""
    return mailbox_key(str(first.recipient)) == mailbox_key(str(second.recipient))


# -- the path ----------------------------------------------------------------------------


def _split_path(arg: str, syntax: Reply) -> tuple[str, str]:
    if _FORBIDDEN.search(arg):
        raise SmtpReply(r.BAD_PARAMETER, "CR, LF or NUL in the command argument")
    text = arg.strip(" ")
    if not text.startswith("<"):
        raise SmtpReply(syntax, "path without angle brackets")
    end = text.find(">")
    if end < 0:
        raise SmtpReply(syntax, "unterminated path")
    rest = text[end + 1 :]
    if rest and not rest.startswith(" "):
        raise SmtpReply(syntax, "text after the path")
    return text[1:end], rest.strip(" ")


def _mailbox(path: str, malformed: Reply) -> Address:
    if path.startswith("@"):
        raise SmtpReply(malformed, "source route refused")
    if '"' in path or "\\" in path:
        raise SmtpReply(malformed, "quoted local part refused")
    if path.count("@") != 1:
        raise SmtpReply(malformed, "not exactly one @")
    local, domain = path.split("@")
    if not _is_dot_string(local) or len(local.encode()) > MAX_LOCAL_PART:
        raise SmtpReply(malformed, "local part is not a dot-string")
    if not _is_domain(domain):
        raise SmtpReply(malformed, "domain is not a host name")
    return Address(local, domain.lower())


def _is_dot_string(local: str) -> bool:
    atoms = local.split(".")
    return all(atom and (_ATEXT.fullmatch(atom) or _utf8_atom(atom)) for atom in atoms)


def _utf8_atom(atom: str) -> bool:
    """RFC 6531 §3.3: atext extended with UTF-8 non-ASCII (valid UTF-8 only)."""
    return all(
        (ord(c) > 0x7F and not 0xDC80 <= ord(c) <= 0xDCFF) or _ATEXT.fullmatch(c) for c in atom
    )


def _is_domain(domain: str) -> bool:
    if not domain or len(domain.encode()) > MAX_DOMAIN or domain.startswith("["):
        return False
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return False
    return all(_LABEL.fullmatch(label) for label in ascii_domain.split("."))


def _require_utf8_flag(address: Address, smtputf8: bool) -> None:
    if not smtputf8 and not str(address).isascii():
        raise SmtpReply(r.SMTPUTF8_NEEDED, "non-ASCII address without SMTPUTF8")


# -- parameters --------------------------------------------------------------------------


def _parameters(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, equals, value = item.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (equals and not _VALUE.fullmatch(value)):
            raise SmtpReply(r.BAD_PARAMETER, "malformed ESMTP parameter")
        name = keyword.upper()
        if name in params:
            raise SmtpReply(r.BAD_PARAMETER, f"repeated parameter {name}")
        params[name] = value if equals else None
    return params


def _mail_params(params: dict[str, str | None], max_size: int) -> MailParams:
    size = _size(params.pop("SIZE", None), max_size) if "SIZE" in params else None
    body = _choice(params.pop("BODY", None), {"7BIT", "8BITMIME"}) if "BODY" in params else None
    smtputf8 = "SMTPUTF8" in params
    if smtputf8 and params.pop("SMTPUTF8") is not None:
        raise SmtpReply(r.BAD_PARAMETER, "SMTPUTF8 takes no value")
    ret = _choice(params.pop("RET", None), {"FULL", "HDRS"}) if "RET" in params else None
    envid = _xtext(params.pop("ENVID", None)) if "ENVID" in params else None
    if envid is not None and len(envid) > MAX_ENVID:
        raise SmtpReply(r.BAD_PARAMETER, "ENVID longer than 100 characters")
    auth = _xtext(params.pop("AUTH", None)) if "AUTH" in params else None
    if params:
        raise SmtpReply(r.UNKNOWN_PARAMETER, f"MAIL parameters {sorted(params)}")
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid, auth=auth)


def _size(value: str | None, max_size: int) -> int:
    if value is None or not value.isdigit() or not value.isascii() or len(value) > 20:
        raise SmtpReply(r.BAD_PARAMETER, "SIZE needs a number")
    size = int(value)
    if size > max_size:
        raise SmtpReply(r.MESSAGE_TOO_BIG, f"declared SIZE {size} > {max_size}")
    return size


def _choice(value: str | None, allowed: set[str]) -> str:
    if value is None or value.upper() not in allowed:
        raise SmtpReply(r.BAD_PARAMETER, f"expected one of {sorted(allowed)}")
    return value.upper()


def _xtext(value: str | None) -> str:
    """RFC 3461 §4: ``+XX`` hex escapes, decoded; the result must be printable ASCII."""
    if value is None or not _XTEXT.fullmatch(value):
        raise SmtpReply(r.BAD_PARAMETER, "malformed xtext")
    decoded = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)
    if not decoded or any(not 0x20 <= ord(c) < 0x7F for c in decoded):
        raise SmtpReply(r.BAD_PARAMETER, "xtext decodes to a control character")
    return decoded


def _notify(value: str | None) -> tuple[str, ...] | None:
    """RFC 3461 §4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY."""
    if value is None:
        return None
    words = tuple(word.upper() for word in value.split(","))
    if words == ("NEVER",):
        return words
    if not words or len(set(words)) != len(words) or not set(words) <= _NOTIFY_WORDS:
        raise SmtpReply(r.BAD_PARAMETER, "malformed NOTIFY")
    return words


def _orcpt(value: str | None) -> str | None:
    """RFC 3461 §4.2: ``addr-type ";" xtext``; stored as ``type;decoded`` with its case."""
    if value is None:
        return None
    kind, semicolon, address = value.partition(";")
    if not semicolon or not _KEYWORD.fullmatch(kind):
        raise SmtpReply(r.BAD_PARAMETER, "malformed ORCPT")
    return f"{kind};{_xtext(address)}"
