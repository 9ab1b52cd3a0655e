"""Message disposition notifications (RFC 8098 inside RFC 6522 ``multipart/report``): sans-IO.

Role: pure functions, bytes in and bytes out, for the inbound agent (issue 7 item 5): the
*processed* MDN when a message that asks for one (``Disposition-Notification-To``) has
been processed (decrypted and verified where it was encrypted or signed), and the
*dispatched* MDN on final delivery when the sender
asked for it with the Direct option ``X-DIRECT-FINAL-DESTINATION-DELIVERY`` (Direct
Project, "Implementation Guide for Delivery Notification in Direct" §3). The caller signs
(and encrypts, when the sender's certificate is found) the result with the S/MIME engine,
then queues it with the envelope ``mdn_envelope`` returns (MAIL FROM:<>, RFC 8098 §3).

What an MDN holds (RFC 8098 §3):

1. ``text/plain`` for the sender in ``gateway.language`` (fr default, en); it names no
   content of the original - not even its Subject, which may name a patient - and
   claims nothing about its signature or encryption (a processed MDN is also sent for a
   clear or unsigned message: saying "decrypted and verified" would be untrue there).
2. ``message/disposition-notification``: Reporting-UA (the gateway host name and
   product), Original-Recipient (when known), Final-Recipient, Original-Message-ID,
   Disposition ``automatic-action/MDN-sent-automatically; processed|dispatched``
   (§3.2.6: the gateway acts without a user).

There is no third part: RFC 8098 §3 makes it optional, and leaving it out is what keeps
decrypted headers out of a notification (issue 7 item 2).

When (``should_send_mdn``): Disposition-Notification-To present with at least one
address (§2.1); never for an MDN or a DSN (§3: "MDNs MUST NOT be generated in response
to MDNs"; a ``multipart/report`` of type ``disposition-notification`` or
``delivery-status`` is an automatic report, and answering one can loop); never when the
return path is null (RFC 3461/5321 loop rule: the original was itself a notification);
and only to a Disposition-Notification-To address equal to the original's reverse-path.

To whom (``mdn_destinations``), decision: RFC 8098 §2.1 says an MDN should not be
sent automatically when Disposition-Notification-To differs from the Return-Path: the
user should be asked, and where that is not possible (no interactive client) no MDN
should be sent. The gateway has no user to ask, and an MDN it sends says, signed, that
a message reached a named doctor: anyone outside could otherwise write
``Disposition-Notification-To: third.party@elsewhere`` and have that confirmation
(backscatter) sent to an address of their choice. So an MDN goes only to the
Disposition-Notification-To addresses equal to the original's envelope reverse-path
(MAIL FROM; the ``Return-Path`` field only when no envelope is given), every other
address is dropped (the caller logs and audits each drop), and when none is equal no
MDN is sent. Addresses compare as the rest of the code base binds senders
(``gateway.config.domains.parse_email``, ``gateway.smtp.user_table``): the domain
case-insensitively in ASCII only (``str.lower`` would make a KELVIN SIGN domain equal
to its ``k`` look-alike), the local part exactly (RFC 5321 §2.4: only the receiving host
may fold it). No IDNA mapping: the code base maps IDNA forms only on the refusing side
(``gateway.smtp.policy``), and this is an allowing rule, so a U-label address never
matches an A-label reverse-path (fail closed: no MDN, never one to a look-alike). An
unknown reverse-path (no envelope, no Return-Path field) matches nothing. Decision
(session 7 review, R2): when an address matches, the MDN goes to the reverse-path *as the
envelope spells it* (RCPT TO and ``To:``), never to the header's spelling of it, so no
parsing trick in Disposition-Notification-To (display names, comments, group syntax,
encoded words, a case or Unicode variant of the domain) can steer where it goes: the
destination is a value the SMTP front already checked. A dropped address is not even
named. The gateway
sends only *processed/dispatched* (never *displayed*), the dispositions the Direct and
MSSanté profiles want sent automatically.

Cost (session 7 review, R2): the header block a stranger writes can hold 256 KiB of
folded Disposition-Notification-To (the SMTP front's header limit; more in a decrypted
copy), and splitting it is not cheap, so ``read_request`` reads every field this module
needs in one pass and each function accepts its ``MdnRequest`` in place of the block:
the inbound agent reads a block once per MDN instead of about ten times.

Trust level: pure data; no I/O, no keys, no logging.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from gateway.config.model import Language
from gateway.relay.report import (
    CRLF,
    NotificationRefused,
    check_address,
    header_field,
    header_value,
    human_part,
    is_message_id,
    make_message_id,
    multipart_body,
    new_boundary,
    split_fields,
)
from gateway.spool.model import Envelope, Recipient

PRODUCT = "Missive"
DIRECT_FINAL_DELIVERY = "X-DIRECT-FINAL-DESTINATION-DELIVERY"
_REPORT_RE = re.compile(
    r"^\s*multipart/report\s*;(?:.*;)?\s*report-type\s*=\s*\"?"
    r"(disposition-notification|delivery-status)\"?",
    re.IGNORECASE | re.DOTALL,
)
_ADDR_OK_RE = re.compile(r"[^\s<>\"@]+@[^\s<>\"@]+")
NO_DESTINATION = "no Disposition-Notification-To address equals the envelope sender"


class MdnRefused(NotificationRefused):
    """No MDN may be built (nothing asked, a notification, a null return path)."""


class Disposition(StrEnum):
    """The disposition-type values the gateway sends (RFC 8098 §3.2.6.2)."""

    PROCESSED = "processed"
    DISPATCHED = "dispatched"


# -- when ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MdnRequest:
    """What an original's header block says about an MDN, read in one pass over the
    block (``read_request``; module notes, "Cost"): the valid Disposition-Notification-To
    addresses, whether it is a report, its reverse-path (``reverse_path``), Message-ID
    and Original-Recipient fields. Every function below takes it in place of the header
    block, so a caller that asks several questions reads the block once."""

    addresses: tuple[str, ...]
    report: bool
    reverse_path: str | None
    message_id: str | None
    original_recipient: str | None


Original = bytes | MdnRequest  # a header block, or what read_request found in it

_READ_FIELDS = (
    "disposition-notification-to",
    "content-type",
    "return-path",
    "message-id",
    "original-recipient",
)


def _first_values(original_headers: bytes) -> dict[str, str]:
    """The unfolded value of the first field of each name ``read_request`` needs, by
    lower-case name, from one pass of ``split_fields`` (as ``header_value`` reads one)."""
    values: dict[str, str] = {}
    for field_name, raw in split_fields(original_headers):
        name = field_name.lower()
        if name in _READ_FIELDS and name not in values:
            value = raw.split(b":", 1)[1].decode("utf-8", "replace")
            values[name] = re.sub(r"\r?\n[ \t]+", " ", value).strip()
    return values


def read_request(original_headers: bytes, return_path: str | None = None) -> MdnRequest:
    """The ``MdnRequest`` of a header block (or a whole message; only its header block
    is read). ``return_path``: the envelope's MAIL FROM when the caller has it (``""``
    the null reverse-path), else the ``Return-Path`` field stands in."""
    values = _first_values(original_headers)
    content_type = values.get("content-type")
    if return_path is None:
        return_path = values.get("return-path")
    return MdnRequest(
        addresses=_addresses(values.get("disposition-notification-to")),
        report=content_type is not None and _REPORT_RE.match(content_type) is not None,
        reverse_path=None if return_path is None else _bare_path(return_path),
        message_id=values.get("message-id"),
        original_recipient=values.get("original-recipient"),
    )


def _request(original: Original, return_path: str | None = None) -> MdnRequest:
    """``original`` as an ``MdnRequest`` (read now when it is a header block; an
    ``MdnRequest`` already carries its reverse-path, ``return_path`` is then unused)."""
    if isinstance(original, MdnRequest):
        return original
    return read_request(original, return_path)


def _addresses(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    pairs = email.utils.getaddresses([value])
    return tuple(addr for _, addr in pairs if _ADDR_OK_RE.fullmatch(addr))


def mdn_recipients(original_headers: Original) -> tuple[str, ...]:
    """The addresses of Disposition-Notification-To (RFC 8098 §2.1), valid ones only."""
    return _request(original_headers).addresses


def is_report(original_headers: Original) -> bool:
    """Whether the message is an MDN or a DSN (RFC 6522 report of either type)."""
    return _request(original_headers).report


@dataclass(frozen=True)
class MdnDestinations:
    """The Disposition-Notification-To addresses split by the reverse-path rule (module
    notes): ``kept`` gets the MDN: the reverse-path itself, as the envelope spells it,
    when at least one address equals it, else nothing; ``dropped`` lists the others."""

    kept: tuple[str, ...]
    dropped: tuple[str, ...]


def same_mailbox(first: str, second: str) -> bool:
    """Whether two ``local@domain`` addresses name one mailbox: domain case-insensitive
    in ASCII only, local part exact (RFC 5321 §2.4), no IDNA mapping (module notes)."""
    first_local, at_1, first_domain = first.rpartition("@")
    second_local, at_2, second_domain = second.rpartition("@")
    if not (at_1 and at_2 and first_local and first_domain):
        return False
    return first_local == second_local and _ascii_lower(first_domain) == _ascii_lower(second_domain)


def _ascii_lower(text: str) -> str:
    """``text`` with A-Z lowered and nothing else: ``str.lower`` maps some non-ASCII
    letters to ASCII ones (KELVIN SIGN to ``k``), a look-alike the rule must not equate."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _bare_path(return_path: str) -> str:
    path = return_path.strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1].strip()
    return path


def reverse_path(original_headers: Original, return_path: str | None = None) -> str | None:
    """The original's reverse-path: ``return_path`` (the envelope's MAIL FROM) when
    given, else the ``Return-Path`` field without its angle brackets; ``""`` is the null
    reverse-path, None an unknown one."""
    return _request(original_headers, return_path).reverse_path


def mdn_destinations(original_headers: Original, return_path: str | None = None) -> MdnDestinations:
    """Disposition-Notification-To split into the addresses equal to the reverse-path
    (``reverse_path``) and the others; the MDN goes to the reverse-path as spelt in the
    envelope, never to a header's spelling of it (module notes); with a null or unknown
    reverse-path all are dropped (fail closed)."""
    request = _request(original_headers, return_path)
    path = request.reverse_path
    matching = [a for a in request.addresses if path and same_mailbox(a, path)]
    dropped = tuple(a for a in request.addresses if not (path and same_mailbox(a, path)))
    kept = (path,) if matching and path else ()
    return MdnDestinations(kept, dropped)


def mdn_asked(original_headers: Original, return_path: str | None = None) -> bool:
    """Whether the original asks for an MDN that may be answered at all: a
    Disposition-Notification-To address, not a report, a reverse-path that is not null
    (an unknown one passes here; ``mdn_destinations`` then drops every address)."""
    request = _request(original_headers, return_path)
    if not request.addresses or request.report:
        return False
    return request.reverse_path != ""


def should_send_mdn(original_headers: Original, return_path: str | None = None) -> bool:
    """Whether the original asks for an MDN the gateway may send (see the module notes):
    ``mdn_asked`` and at least one Disposition-Notification-To address equal to the
    reverse-path.

    ``return_path`` is the original's MAIL FROM when the caller has the envelope (``""``
    for the null reverse-path); else the ``Return-Path`` field of the headers is read.
    """
    request = _request(original_headers, return_path)
    return mdn_asked(request) and bool(mdn_destinations(request).kept)


def wants_final_delivery_mdn(original_headers: bytes) -> bool:
    """Whether Disposition-Notification-Options asks for the Direct dispatched MDN
    (``X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true``)."""
    value = header_value(original_headers, "Disposition-Notification-Options")
    if value is None:
        return False
    for option in value.split(";"):
        name, _, settings = option.partition("=")
        if name.strip().upper() == DIRECT_FINAL_DELIVERY:
            words = [word.strip().lower() for word in settings.split(",")]
            return "true" in words[1:]
    return False


def mdn_envelope(original_headers: Original, return_path: str | None = None) -> Envelope:
    """MAIL FROM:<> (RFC 8098 §3) and RCPT TO the reverse-path when a
    Disposition-Notification-To address equals it (``mdn_destinations``); ``MdnRefused``
    when there is none."""
    request = _request(original_headers, return_path)
    if not request.addresses:
        raise MdnRefused("no Disposition-Notification-To address")
    addresses = mdn_destinations(request).kept
    if not addresses:
        raise MdnRefused(NO_DESTINATION)
    return Envelope(mail_from="", recipients=tuple(Recipient(a) for a in addresses))


# -- the builder -----------------------------------------------------------------------


_TEXT: dict[Language, dict[str, str]] = {
    "fr": {
        Disposition.PROCESSED: "Accusé de traitement",
        Disposition.DISPATCHED: "Accusé de remise",
        "intro": ("Ceci est un accusé automatique de la passerelle de messagerie sécurisée {ua}."),
        f"body-{Disposition.PROCESSED}": (
            "Votre message {message_id} adressé à {recipient} a été reçu et traité"
            " par la passerelle du destinataire le {date}."
            " Cela ne signifie pas qu'il a été lu."
        ),
        f"body-{Disposition.DISPATCHED}": (
            "Votre message {message_id} a été remis dans la boîte de {recipient} le {date}."
            " Cela ne signifie pas qu'il a été lu."
        ),
        "footer": "Le rapport technique (RFC 8098) est joint à ce message.",
    },
    "en": {
        Disposition.PROCESSED: "Processed notification",
        Disposition.DISPATCHED: "Delivery notification",
        "intro": "This is an automatic notification from the secure mail gateway {ua}.",
        f"body-{Disposition.PROCESSED}": (
            "Your message {message_id} to {recipient} was received and processed"
            " by the recipient's gateway on {date}."
            " This does not mean that it was read."
        ),
        f"body-{Disposition.DISPATCHED}": (
            "Your message {message_id} was delivered to the mailbox of {recipient} on {date}."
            " This does not mean that it was read."
        ),
        "footer": "The technical report (RFC 8098) is attached.",
    },
}


def build_mdn(
    *,
    reporting_ua: str,
    original_headers: Original,
    final_recipient: str,
    disposition: Disposition | str,
    now: datetime,
    language: Language = "fr",
    original_recipient: str | None = None,
    return_path: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """The MDN (RFC 5322, CRLF, lines <= 78) for one recipient of the original.

    ``original_headers``: the original's header block (or the whole message; only the
    header block is read: Disposition-Notification-To, Message-ID, Content-Type,
    Return-Path, Original-Recipient). ``final_recipient``: the local address it went to;
    ``original_recipient``: the ORCPT (``rfc822;addr``) when the envelope has one, else
    the Original-Recipient field is used. ``reporting_ua``: ``gateway.hostname``.
    ``To:`` names only the Disposition-Notification-To addresses equal to the reverse-path
    (``return_path``, else the Return-Path field: ``mdn_destinations``).
    Raises ``MdnRefused`` when ``should_send_mdn`` says no, ``DsnRefused`` on a bad value.
    """
    disposition = Disposition(disposition)
    request = _request(original_headers, return_path)
    if not should_send_mdn(request):
        raise MdnRefused(
            "no MDN for this message (not asked, a notification, a null sender,"
            " or no Disposition-Notification-To address equal to the reverse-path)"
        )
    if now.tzinfo is None:
        raise NotificationRefused("now must be timezone-aware")
    to = mdn_destinations(request).kept
    original_id = request.message_id
    check_address("final recipient", final_recipient)
    boundary = new_boundary()
    header = _mdn_header(
        sender=final_recipient,
        to=to,
        subject=_TEXT[language][disposition],
        now=now,
        message_id=message_id or make_message_id(reporting_ua),
        in_reply_to=original_id,
        boundary=boundary,
        language=language,
    )
    if original_recipient is None:
        original_recipient = request.original_recipient
    parts = (
        human_part(
            _human_text(language, reporting_ua, final_recipient, original_id, now, disposition)
        ),
        _notification_part(
            reporting_ua, original_recipient, final_recipient, original_id, disposition
        ),
    )
    return header + CRLF + multipart_body(boundary, parts)


def _mdn_header(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    now: datetime,
    message_id: str,
    in_reply_to: str | None,
    boundary: str,
    language: Language,
) -> bytes:
    fields: list[tuple[str, str]] = [
        ("From", f"<{sender}>"),  # the recipient's address; the gateway is Reporting-UA
        ("To", ", ".join(f"<{address}>" for address in to)),
        ("Subject", subject),
        ("Date", email.utils.format_datetime(now.astimezone(UTC))),
        ("Message-ID", message_id),
    ]
    if in_reply_to and is_message_id(in_reply_to):
        fields += [("In-Reply-To", in_reply_to), ("References", in_reply_to)]
    fields += [
        ("Auto-Submitted", "auto-replied"),  # RFC 3834 §5
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            f'multipart/report; report-type=disposition-notification; boundary="{boundary}"',
        ),
        ("Content-Language", language),
    ]
    return b"".join(header_field(name, value) for name, value in fields)


def _notification_part(
    reporting_ua: str,
    original_recipient: str | None,
    final_recipient: str,
    original_id: str | None,
    disposition: Disposition,
) -> bytes:
    """The ``message/disposition-notification`` part (RFC 8098 §3.1 and §3.2)."""
    fields = [("Reporting-UA", f"{reporting_ua}; {PRODUCT}")]
    if original_recipient is not None and ";" in original_recipient:
        fields.append(("Original-Recipient", original_recipient))
    fields.append(("Final-Recipient", f"rfc822; {final_recipient}"))
    if original_id and is_message_id(original_id):
        fields.append(("Original-Message-ID", original_id))
    fields.append(("Disposition", f"automatic-action/MDN-sent-automatically; {disposition.value}"))
    block = b"".join(header_field(name, value) for name, value in fields)
    return header_field("Content-Type", "message/disposition-notification") + CRLF + block


def _human_text(
    language: Language,
    reporting_ua: str,
    recipient: str,
    original_id: str | None,
    now: datetime,
    disposition: Disposition,
) -> str:
    texts = _TEXT[language]
    message_id = original_id if original_id and is_message_id(original_id) else ""
    date = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = texts[f"body-{disposition}"].format(
        message_id=message_id, recipient=recipient, date=date
    )
    lines = [
        texts["intro"].format(ua=reporting_ua),
        "",
        body.replace("  ", " "),
        "",
        texts["footer"],
    ]
    return "\r\n".join(lines) + "\r\n"
