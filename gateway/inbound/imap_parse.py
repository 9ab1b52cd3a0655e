"""The sans-IO parts of the IMAP fetcher: mailbox URL, response parsers, Return-Path.

Role: small pure functions the fetcher (``gateway.inbound.imap_fetch``, which imports
this module) applies to its configuration and to aioimaplib's answers: the
``imaps://host[:port]/MAILBOX`` URL (RFC 5092 subset), a command argument (the mailbox,
the LOGIN user) as an IMAP astring (RFC 9051 §4.3), UIDVALIDITY and UIDNEXT of a SELECT
answer (RFC 9051 §7.1), the numbers of a SEARCH answer, the ``BODY[]`` literal of a
``UID FETCH`` answer (RFC 9051 §6.4.5), the
envelope MAIL FROM of a fetched message (its ``Return-Path``, ``""`` if there is none or
it is not an address) and ``Origin.listener = "imap:<user>@<host>"``. ``ImapFetchError``
(and its ``ImapLoginError``) is the error of a failed session.

Invariants: a range ``n:*`` also names the highest UID when ``n`` is above it (RFC 9051
§6.4.4): the caller filters those out of ``parse_search``'s answer. UIDs and UIDVALIDITY
are 32-bit (RFC 9051 §9 ``nz-number``, ``UID_MAX``): ``parse_search`` drops any other
number, so a buggy or hostile server cannot push the recorded last UID past what
``UID SEARCH UID <last+1>:*`` can name (every later SEARCH would be refused and the
mailbox stuck), and ``parse_uidvalidity`` refuses one out of range. A ``UID FETCH``
answer either holds the asked message's ``BODY[]`` literal, or no FETCH of that UID at
all (expunged meanwhile); anything else (the body of another UID, a body without UID,
a FETCH of the UID without its body) is an ``ImapFetchError``, never "gone": reading it
as gone would move the recorded last UID past a message still on the server (a loss).
The mailbox of the URL is checked by ``gateway.config.values.parse_imap_mailbox``, the
function the configuration check uses too, so the two refuse the same names.

Library: aioimaplib returns raw response lines, so these parsers (UIDVALIDITY, SEARCH,
the FETCH literal, Return-Path) are hand-written, sans-IO functions. Trust level: no
I/O, no keys, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

from gateway.config.value_errors import BadValue
from gateway.config.values import parse_imap_mailbox

MAX_LISTENER = 128  # ``Origin.listener`` limit
UID_MAX = 2**32 - 1  # RFC 9051 §9: nz-number, a non-zero unsigned 32-bit integer
_UID_DIGITS = len(str(UID_MAX))  # longer words are not UIDs (and int() would refuse 4300+)

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]", re.IGNORECASE)
_FETCH_OF_UID = re.compile(rb"^\d+ FETCH \(.*\bUID (\d+)\b", re.IGNORECASE)
_LITERAL_HEAD = re.compile(rb"\bUID (\d+)\b", re.IGNORECASE)
_BODY_LITERAL = re.compile(rb"BODY\[\] \{\d+\}$", re.IGNORECASE)
_ATOM = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_ADDRESS = re.compile(r"^[^\s<>()\[\]\\,;:\"]+@[^\s<>()\[\]\\,;:\"@]+$")


class ImapFetchError(Exception):
    """An IMAP session failed (network, TLS, protocol answer); safe to log."""


class ImapLoginError(ImapFetchError):
    """The server refused the login (wrong user or password, or account disabled)."""


@dataclass(frozen=True, slots=True)
class MailboxUrl:
    """``imaps://host[:port]/MAILBOX`` split (RFC 5092 subset; default INBOX)."""

    tls: bool
    host: str
    port: int
    mailbox: str

    @classmethod
    def parse(cls, url: str) -> MailboxUrl:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("imap", "imaps") or not parts.hostname:
            raise ImapFetchError(f"{url!r}: not an imaps://host[:port]/MAILBOX URL")
        tls = scheme == "imaps"
        try:
            mailbox = parse_imap_mailbox(parts.path)
        except BadValue as error:
            raise ImapFetchError(f"{url!r}: {error}") from None
        return cls(tls, parts.hostname, parts.port or (993 if tls else 143), mailbox)


def quote_astring(value: str) -> str:
    """A command argument (mailbox, LOGIN user) as an IMAP astring (RFC 9051 §4.3: an
    atom as is, anything else a quoted string with ``\\`` and ``"`` escaped). The caller
    refuses CR, LF and NUL first (a quoted string cannot hold them)."""
    if _ATOM.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_uidvalidity(lines: Sequence[Any]) -> int:
    """The UIDVALIDITY response code of a SELECT answer (RFC 9051 §7.1, a 32-bit
    number: ``ImapFetchError`` when it is out of range)."""
    for line in lines:
        if isinstance(line, bytes) and (match := _UIDVALIDITY.search(line)):
            value = _uid_number(match.group(1))
            if value is None:
                raise ImapFetchError("SELECT answer with a UIDVALIDITY out of the 32-bit range")
            return value
    raise ImapFetchError("SELECT answer without UIDVALIDITY")


def parse_uidnext(lines: Sequence[Any]) -> int | None:
    """The UIDNEXT response code of a SELECT answer (RFC 9051 §7.1: the UID the next
    message will get, above every UID of the mailbox), or None when absent or not a
    32-bit number (the caller then has no check to make)."""
    for line in lines:
        if isinstance(line, bytes) and (match := _UIDNEXT.search(line)):
            return _uid_number(match.group(1))
    return None


def parse_search(lines: Sequence[Any]) -> list[int]:
    """The UIDs of an (aioimaplib-stripped) SEARCH answer, ascending.

    aioimaplib hands ``* SEARCH 3 4`` over as ``b"3 4"`` and the tagged completion text
    as the last line, which is left out. A number outside ``1..UID_MAX`` is no UID and
    is dropped (module invariants).
    """
    numbers: set[int] = set()
    for line in lines[:-1]:
        if not isinstance(line, bytes):
            continue
        words = line.split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        numbers.update(uid for word in words if (uid := _uid_number(word)))
    return sorted(numbers)


def _uid_number(word: bytes) -> int | None:
    """``word`` as a number of ``0..UID_MAX``, or None when it is not one."""
    if not word.isdigit() or len(word) > _UID_DIGITS:
        return None
    value = int(word)
    return value if value <= UID_MAX else None


def parse_fetched_body(lines: Sequence[Any], uid: int) -> bytes | None:
    """The ``BODY[]`` literal of ``uid`` in a ``UID FETCH`` answer, or None when the
    answer holds no FETCH of ``uid`` (expunged meanwhile: RFC 9051 §6.4.9, OK, no data).

    aioimaplib returns ``[b'1 FETCH (UID 7 BODY[] {336}', bytearray(...), b')', ...]``;
    the UID may also come after the literal (``b' UID 7)'``). FETCH responses without a
    body (flag changes of other messages) may be mixed in and are skipped. The body of
    another UID (or without a UID), or a FETCH of ``uid`` without its body, is an
    ``ImapFetchError`` (module invariants: never read as "gone").
    """
    for index, line in enumerate(lines):
        if not isinstance(line, bytearray) or index == 0:
            continue
        head = lines[index - 1]
        if not isinstance(head, bytes) or not _BODY_LITERAL.search(head):
            continue
        tail = lines[index + 1] if index + 1 < len(lines) else b""
        found = _LITERAL_HEAD.search(head) or (
            _LITERAL_HEAD.search(tail) if isinstance(tail, bytes) else None
        )
        if found is None or int(found.group(1)) != uid:
            named = "no UID" if found is None else f"UID {int(found.group(1))}"
            raise ImapFetchError(f"UID FETCH {uid}: the answer holds the body of {named}")
        return bytes(line)
    if any(_names_uid(line, uid) for line in lines):
        raise ImapFetchError(f"UID FETCH {uid}: the answer names the message without its body")
    return None


def _names_uid(line: object, uid: int) -> bool:
    """Whether ``line`` is a FETCH response of ``uid`` (``b'3 FETCH (UID 7 ...'``)."""
    if not isinstance(line, bytes):
        return False
    match = _FETCH_OF_UID.search(line)
    return match is not None and _uid_number(match.group(1)) == uid


def return_path(message: bytes) -> str:
    """MAIL FROM for the queue: the message's ``Return-Path`` address (RFC 5322 §3.6.7,
    added by the final delivery, RFC 5321 §4.4), ``""`` when absent, null or not a
    plain address."""
    header_end = message.find(b"\r\n\r\n")
    if header_end < 0:
        header_end = message.find(b"\n\n")
    headers = message if header_end < 0 else message[: header_end + 2]
    value = BytesHeaderParser(policy=compat32).parsebytes(headers).get("Return-Path")
    if value is None:
        return ""
    address = parseaddr(str(value))[1]
    return address if _ADDRESS.match(address) and address.isprintable() else ""


def origin_listener(user: str, host: str) -> str:
    return f"imap:{user}@{host}"[:MAX_LISTENER]
