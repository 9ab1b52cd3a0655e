"""The sans-IO parts of the IMAP fetcher: mailbox URL, response parsers, Return-Path.

Role: small pure functions the fetcher (``gateway.inbound.imap_fetch``, which imports
this module) applies to its configuration and to aioimaplib's answers: the
``imaps://host[:port]/MAILBOX`` URL (RFC 5092 subset), the mailbox as an IMAP astring
(RFC 9051 §4.3), UIDVALIDITY of a SELECT answer (RFC 9051 §7.1), the numbers of a
SEARCH answer, the ``BODY[]`` literal of a ``UID FETCH`` answer (RFC 9051 §6.4.5), the
envelope MAIL FROM of a fetched message (its ``Return-Path``, ``""`` if there is none or
it is not an address) and ``Origin.listener = "imap:<user>@<host>"``. ``ImapFetchError``
(and its ``ImapLoginError``) is the error of a failed session.

Invariants: a range ``n:*`` also names the highest UID when ``n`` is above it (RFC 9051
§6.4.4): the caller filters those out of ``parse_search``'s answer.

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
from urllib.parse import unquote, urlsplit

MAX_LISTENER = 128  # ``Origin.listener`` limit

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
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
        mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
        if not mailbox.isascii() or any(ch in mailbox for ch in "\r\n\x00"):
            raise ImapFetchError(f"{url!r}: the mailbox name must be plain ASCII")
        return cls(tls, parts.hostname, parts.port or (993 if tls else 143), mailbox)


def quote_mailbox(name: str) -> str:
    """The mailbox as an IMAP astring (RFC 9051 §4.3: quoted unless an atom)."""
    if _ATOM.match(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_uidvalidity(lines: Sequence[Any]) -> int:
    """The UIDVALIDITY response code of a SELECT answer (RFC 9051 §7.1)."""
    for line in lines:
        if isinstance(line, bytes) and (match := _UIDVALIDITY.search(line)):
            return int(match.group(1))
    raise ImapFetchError("SELECT answer without UIDVALIDITY")


def parse_search(lines: Sequence[Any]) -> list[int]:
    """The numbers of an (aioimaplib-stripped) SEARCH answer, ascending.

    aioimaplib hands ``* SEARCH 3 4`` over as ``b"3 4"`` and the tagged completion text
    as the last line, which is left out.
    """
    numbers: set[int] = set()
    for line in lines[:-1]:
        if not isinstance(line, bytes):
            continue
        words = line.split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        numbers.update(int(word) for word in words if word.isdigit())
    return sorted(numbers)


def parse_fetched_body(lines: Sequence[Any], uid: int) -> bytes | None:
    """The ``BODY[]`` literal of ``uid`` in a ``UID FETCH`` answer, or None if absent.

    aioimaplib returns ``[b'1 FETCH (UID 7 BODY[] {336}', bytearray(...), b')', ...]``;
    the UID may also come after the literal (``b' UID 7)'``). Other untagged FETCH
    responses (flag changes of other messages) may be mixed in and are skipped.
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
        if found is not None and int(found.group(1)) == uid:
            return bytes(line)
    return None


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
