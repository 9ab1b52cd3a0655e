"""Header protection and Direct wrapping of an outbound message (sans-IO).

Role: turns the message a doctor sent into (1) the *Cryptographic Payload* the secure
agent signs and encrypts and (2) the outer header block that travels in clear around the
``application/pkcs7-mime`` entity. Pure functions over bytes; no crypto here.

Header protection (RFC 9788, ``[smime] protect_headers = true``):
- §2.1: the Cryptographic Payload carries the message's own header fields (the real
  Subject, From, To, Cc, Date, Message-ID, ...) and ``hp="cipher"`` on its Content-Type,
  because the payload is encrypted;
- §2.2: one ``HP-Outer`` field per outer field, so the recipient can tell what was
  visible in transit;
- outside, the header confidentiality policy is the RFC's baseline one: the Subject
  becomes ``[...]`` and every field not on the allow-list below is dropped (Keywords,
  Comments, X-* fields of the client: any of them may name a patient). Kept: From,
  Sender, Reply-To, To, Cc, Date, Message-ID, In-Reply-To, References, the trace fields
  (Received, Return-Path: RFC 5321 §4.4 forbids removing them) and the MDN request
  fields (RFC 8098 §2). A decision of this module, stricter than the RFC's baseline.
  The outer block ends at the first line that is not an RFC 5322 §2.2 field
  (``name:`` in ftext, or its continuation): where a sender forgot the empty line,
  that line starts the body for the stdlib parser and for mail clients, so no line
  after it (a body line shaped like ``Date: ...``) is ever copied outside.
Without header protection the outer block is every non-MIME field of the message.

Bcc and Resent-Bcc (RFC 5322 §3.6.3, §3.6.6): never copied anywhere, inside or
outside; the hidden recipient's own copy is a separate message
(``gateway.relay.routing``), with the same inner content (wrapped or not) as the To/Cc
copy. The Bcc addresses are read only for the tamper rule of a Bcc copy.

Direct wrap (``wrap = true``; RFC 8551 §3.1, Direct Applicability Statement): the
payload is ``message/rfc822`` holding the whole message (Bcc, Resent-Bcc removed), with
``forwarded="no"`` (the parameter the header-protection drafts use to tell a wrapped
message from a forwarded one; readers that do not know it ignore it, RFC 2045 §5.1).
The tamper rule (``check_tamper``): MAIL FROM must be the From (or Sender) address and
each RCPT TO of the To/Cc copy must appear in To or Cc of the wrapped message; a
violation is refused, never silently sent.

Bcc on a wrap route (decision of session 6). The Applicability Statement's rule (1.3,
ANSI/DS 2019-01-100-2021) is about To and Cc; its reference implementation reads it as
To and Cc, explicitly not Bcc. Applied as such to every RCPT TO it refused every blind
copy (a failure DSN to the sender). RFC 5322 §3.6.3 leaves the Bcc method to the
implementation; here:

- a Bcc recipient's copy wraps the *same* message as the To/Cc copy: the message as
  sent, no Bcc or Resent-Bcc field (§3.6.3, first method: the field is removed and
  every recipient gets the same message). No copy, inside or outside, names a blind
  recipient; the gateway adds to the content it signs no field the author did not
  write (not ``Bcc: <that recipient>`` either, §3.6.3's second method); the blind
  recipient reads exactly the signed message the others read;
- its tamper check (``check_tamper(..., blind=True)``) asks the RCPT TO to be one of
  the Bcc addresses of the original (``SplitMessage.blind``, every Bcc field, groups
  flattened): the author named it as a blind copy. A RCPT TO in none of To, Cc, Bcc
  is still refused; so is a blind RCPT TO of a message with no Bcc field or an empty
  one (a client that strips Bcc before submission names nobody: fail closed).
  Resent-Bcc is not read: the Direct rule is about the original destination fields.

Interoperability note: a receiving Direct agent that enforces its tamper rule on To
and Cc only (the reference implementation does, explicitly not Bcc) may refuse such a
Bcc copy on arrival; the sender then gets that agent's DSN, never a copy in clear.

Invariants: every output is CRLF-canonical; a field value is never rewritten except the
outer Subject; header values are copied as raw bytes (folding kept).
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.relay.routing import (
    SHOWN_FIELDS,
    contains_address,
    header_addresses,
    plain_addresses,
)
from gateway.smime import header_protection, mime

OBSCURED_SUBJECT = "[...]"  # RFC 9788 baseline header confidentiality policy
HP_CIPHER = "cipher"
OUTER_ALLOWED = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "received",
        "return-path",
        "disposition-notification-to",
        "disposition-notification-options",
    }
)
NEVER_COPIED = frozenset({"bcc", "resent-bcc"})  # RFC 5322 §3.6.3, §3.6.6
BLIND_FIELDS = ("bcc",)  # the tamper rule of a Bcc copy (module docstring)
_PLAIN_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")  # RFC 5322 §3.6.8 ftext, colon
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # and §4.5.4 blanks
_HIDDEN_FIELD_NAMES = frozenset(name.encode("ascii") for name in NEVER_COPIED)


class TamperError(ValueError):
    """The envelope does not match the wrapped message (Direct tamper rule)."""


@dataclass(frozen=True)
class HeaderField:
    """One header field as found: its name and its raw lines (CRLF ended, folding kept)."""

    name: str
    raw: bytes

    @functools.cached_property
    def key(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> str:
        text = self.raw.split(b":", 1)[1].decode("utf-8", "replace")
        return " ".join(text.split())

    @property
    def plain(self) -> bool:
        """True when the field starts with an ftext name and its colon, as
        ``mime.plain_header_message`` requires of every line that is no continuation."""
        return _PLAIN_FIELD_START.match(self.raw) is not None

    def compat32_value(self) -> str | None:
        """The value ``email``'s compat32 parser gives this (plain, ASCII) field: the text
        after the colon, leading blanks of the first line removed, continuation lines
        kept with their CRLF, the final CRLF removed; None if not ASCII."""
        try:
            text = self.raw[len(self.name) + 1 :].decode("ascii")
        except UnicodeDecodeError:
            return None
        return text.lstrip(" \t").rstrip("\r\n")


_OBSCURED_SUBJECT_FIELD = HeaderField("Subject", f"Subject: {OBSCURED_SUBJECT}\r\n".encode("ascii"))


def header_fields(block: bytes) -> list[HeaderField]:
    """The fields of a header block (CRLF), continuation lines kept with their field.
    Each field's lines are joined once (linear in the block: a field folded over
    thousands of lines, which anyone outside can send, must not cost their square)."""
    fields: list[tuple[str, list[bytes]]] = []
    for line in block.split(b"\r\n")[:-1] if block else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace")
        fields.append((name, [line]))
    return [HeaderField(name, b"\r\n".join(lines) + b"\r\n") for name, lines in fields]


@dataclass(frozen=True)
class SplitMessage:
    """A message cut into its non-MIME fields and its MIME entity (Content-*, body);
    both CRLF-canonical (``of`` makes them so: ``mime.split_message``)."""

    fields: tuple[HeaderField, ...]
    entity: bytes

    @classmethod
    def of(cls, message: bytes) -> SplitMessage:
        outer, entity = mime.split_message(message)
        return cls(tuple(header_fields(outer)), entity)

    def block(self, *, exclude: frozenset[str] = NEVER_COPIED) -> bytes:
        return b"".join(f.raw for f in self.fields if f.key not in exclude)

    def values(self, name: str) -> list[str]:
        return [f.value for f in self.fields if f.key == name.lower()]

    def without_bcc(self) -> bytes:
        """The whole message again, Bcc and Resent-Bcc removed (what a wrapped copy
        carries)."""
        return self.block() + self.entity

    @functools.cached_property
    def shown(self) -> tuple[str, ...]:
        """The To and Cc addresses (``routing.header_addresses``), read once per message:
        routing, the Bcc split and the tamper rule all ask for them. A plain header block
        whose To/Cc values are plain mailboxes is read from the fields already split
        (``routing.plain_addresses``); any other goes through ``header_addresses``."""
        values = self._plain_values(SHOWN_FIELDS)
        plain = plain_addresses(values) if values is not None else None
        return plain if plain is not None else header_addresses(self.block())

    @functools.cached_property
    def blind(self) -> tuple[str, ...]:
        """The Bcc addresses (every Bcc field, groups flattened; an empty field names
        nobody), read like ``shown``: for the tamper rule of a Bcc copy only, never
        copied into any output."""
        values = self._plain_values(BLIND_FIELDS)
        plain = plain_addresses(values) if values is not None else None
        if plain is not None:
            return plain
        return header_addresses(self.block(exclude=frozenset()), BLIND_FIELDS)

    def _plain_values(self, names: Iterable[str]) -> list[str] | None:
        """The compat32 values of the fields ``names`` (all of the first name, then the
        second...), or None unless every field is plain and those values are ASCII."""
        if not all(f.plain for f in self.fields):
            return None
        values: list[str] = []
        for name in names:
            for f in self.fields:
                if f.key == name:
                    value = f.compat32_value()
                    if value is None:
                        return None
                    values.append(value)
        return values


def without_hidden_fields(message: bytes) -> bytes:
    """``message`` with its Bcc and Resent-Bcc fields (continuation lines included)
    removed and every other byte kept as it was: what a route that passes the message on
    unchanged (local, postal, tls-only) carries, since all its recipients, hidden ones
    included, share that one copy (RFC 5322 §3.6.3: the originator's system removes the
    field; the gateway is that system).

    Fail closed: every line up to the first empty one is looked at, even past a line
    that is no field (a reader may or may not take such a line for the body's start),
    and a name followed by blanks before its colon (RFC 5322 §4.5.4 obsolete syntax) is
    recognised too; a body line that looks like a Bcc field in a message without an
    empty line is removed with it, which hides nothing from anyone."""
    head_end = message.find(b"\r\n\r\n")
    head = message if head_end < 0 else message[: head_end + 2]
    if b"bcc" not in head.lower():  # the usual case: nothing to remove, no copy made
        return message
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a continuation: goes with its field
            if not dropping:
                kept.append(line)
            continue
        field = _FIELD_NAME.match(line)
        dropping = field is not None and field.group(1).lower() in _HIDDEN_FIELD_NAMES
        if not dropping:
            kept.append(line)
    return b"".join(kept) + message[len(head) :]


def outer_header(message: SplitMessage, *, protect: bool) -> bytes:
    """The clear header block around the S/MIME entity (see the module docstring)."""
    return b"".join(f.raw for f in _outer_fields(message, protect=protect))


def _outer_fields(message: SplitMessage, *, protect: bool) -> list[HeaderField]:
    if not protect:
        return [f for f in message.fields if f.key not in NEVER_COPIED]
    kept: list[HeaderField] = []
    for f in message.fields:
        if not f.plain:  # the body starts here for a reader (module docstring)
            break
        if f.key in OUTER_ALLOWED:
            kept.append(f)
    kept.append(_OBSCURED_SUBJECT_FIELD)
    return kept


def _hp_outer_fields(outer: Sequence[HeaderField]) -> bytes:
    """RFC 9788 §2.2: ``HP-Outer: <name>: <value>`` for each outer field (trace excluded)."""
    lines = [
        f"HP-Outer: {f.name}: {f.value}\r\n".encode()
        for f in outer
        if f.key not in ("received", "return-path")
    ]
    return b"".join(lines)


def cryptographic_payload(message: SplitMessage, *, protect: bool, wrap: bool) -> bytes:
    """The entity to sign and encrypt: header-protected (``hp="cipher"``), wrapped
    (``message/rfc822``), or the bare MIME entity when neither is asked."""
    if wrap:
        return wrap_rfc822(message.without_bcc())
    if not protect:
        return message.entity
    outer = _outer_fields(message, protect=True)
    protected = message.block() + _hp_outer_fields(outer)
    return header_protection.with_protected_headers(
        message.entity, protected, hp=HP_CIPHER, canonical_entity=True
    )


def wrap_rfc822(message: bytes) -> bytes:
    """A ``message/rfc822`` entity holding ``message`` (Direct wrap, RFC 8551 §3.1)."""
    head = b'Content-Type: message/rfc822; forwarded="no"\r\n\r\n'
    return head + mime.canonicalize_crlf(message)


def check_tamper(
    message: SplitMessage, mail_from: str, recipients: Sequence[str], *, blind: bool = False
) -> None:
    """The Direct tamper rule; ``TamperError`` naming the first violation.

    ``blind=False``: the recipients of the To/Cc copy, each in To or Cc. ``blind=True``:
    the recipient of a Bcc copy, in Bcc (see the module docstring). MAIL FROM is the
    From or Sender address in both cases."""
    authors = message.values("from") + message.values("sender")
    senders = plain_addresses(authors)
    if senders is None:
        senders = tuple(address for _, address in email.utils.getaddresses(authors) if address)
    if not contains_address(senders, mail_from):
        raise TamperError(f"MAIL FROM <{mail_from}> is neither the From nor the Sender address")
    for recipient in recipients:
        if blind:
            _check_blind_recipient(message, recipient)
        elif not contains_address(message.shown, recipient):
            raise TamperError(f"RCPT TO <{recipient}> is in neither To nor Cc")


def _check_blind_recipient(message: SplitMessage, recipient: str) -> None:
    if contains_address(message.blind, recipient):
        return
    if contains_address(message.shown, recipient):  # a caller's mistake: never a Bcc copy
        raise TamperError(f"RCPT TO <{recipient}> is in To or Cc, not in Bcc")
    raise TamperError(f"RCPT TO <{recipient}> is in neither To nor Cc, nor in Bcc")
