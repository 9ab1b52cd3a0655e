"""Delivery status notifications (RFC 3464 inside RFC 6522 ``multipart/report``): sans-IO.

Role: pure functions, bytes in and bytes out, that the relay (issue 6) and the inbound
agent (issue 7) call when a recipient failed, is delayed, was delivered (NOTIFY=SUCCESS)
or went by post. The caller queues the result as a message of its own (``Origin``
listener ``internal``) with the envelope ``dsn_envelope`` returns: MAIL FROM:<> and
RCPT TO the original sender. What happened to each recipient (``Action``, ``Reason``,
``RecipientReport``, ``DsnRefused``) is in ``gateway.relay.dsn_recipients``; the words
of the human part in ``gateway.relay.dsn_texts``. This module imports those two, never
the reverse.

What a DSN holds (RFC 6522 §3, RFC 3464 §2):

1. ``text/plain; charset=utf-8`` (quoted-printable) for the sender, in
   ``gateway.language`` (``fr`` by default, ``en``), written by
   ``gateway.relay.dsn_texts``: what happened, the reason per recipient, what to do. No
   text of the original message is quoted.
2. ``message/delivery-status``: Reporting-MTA ``dns;`` the gateway host name,
   Original-Envelope-Id (ENVID), Arrival-Date; per recipient Original-Recipient (ORCPT),
   Final-Recipient, Action, Status (RFC 3463), Remote-MTA, Diagnostic-Code ``smtp;`` the
   remote reply, Last-Attempt-Date, Will-Retry-Until (``delayed`` only, §2.3.9).
3. ``text/rfc822-headers`` of the original (RET=HDRS, the default) or ``message/rfc822``
   of the whole original when RET=FULL was asked (RFC 3461 §4.3) - except when the
   original is *protected*, see below.

Security notes (fail closed):

- The real Subject often names a patient. ``build_dsn(..., protected=True)`` never copies
  it: the original's header block goes through ``headers_for_dsn`` (an allow-list, Subject
  replaced by ``[...]``) and RET=FULL is downgraded to those headers, because a full
  clear-text body cannot be made safe. ``protected=False`` is only for an original that
  is not confidential or a DSN that never leaves the gateway in clear; it still drops
  Bcc. The caller passes what it holds: the encrypted message when it has one (then
  nothing decrypted can be copied at all).
- Every value that comes from the envelope or a remote reply is checked or cleaned: no
  CR, LF or other control character reaches a header field (header injection); remote
  replies are reduced to printable ASCII (RFC 3464 §2.3.6 wants ``text``) and folded.
- No DSN to the null reverse-path (RFC 3461 §6.1 and RFC 5321 §6.1: "notifications MUST
  NOT be sent to a null reverse-path", the loop rule): ``build_dsn`` raises ``DsnRefused``.

Decisions written down here:

- NOTIFY absent = FAILURE,DELAY. RFC 3461 §4.1 allows either NOTIFY=FAILURE or
  NOTIFY=FAILURE,DELAY; issue 6 asks for a delayed DSN at ``delay_warning``.
- ``relayed`` is sent only with NOTIFY=SUCCESS (RFC 3461 §5.2.2, relaying to an
  environment without DSN), *except* the postal fallback (``postal=True``): a paper
  letter instead of an encrypted e-mail changes what the recipient gets, so the sender
  is told unless NOTIFY=NEVER.
- The DSN itself carries ``Auto-Submitted: auto-replied`` (RFC 3834 §5), a fresh
  Message-ID at the gateway's host name, and ``In-Reply-To``/``References`` of the
  original's Message-ID when known, so the client threads it.

Why the MIME structure is assembled by hand (with ``gateway.relay.report``): the layout
of a report is fixed and small, and every byte of it must be decided here (field order,
CRLF, line length <= 78, no encoded-word inside ``message/delivery-status`` where RFC
3464 does not allow one). The stdlib does the encodings: ``email.header`` (RFC 2047),
``email.quoprimime`` (quoted-printable), ``email.utils`` (dates, address parsing). The
tests parse every output with the stdlib ``email`` package.

Trust level: pure data; no I/O, no keys, no logging.
"""

from __future__ import annotations

import email.quoprimime
import email.utils
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from gateway.config.model import Language
from gateway.relay.dsn_recipients import Action, DsnRefused, RecipientReport
from gateway.relay.dsn_texts import HUMAN_TEXT, human_text
from gateway.relay.report import (
    CRLF,
    check_address,
    check_text,
    crlf,
    format_address,
    format_date,
    header_field,
    header_value,
    human_part,
    is_7bit,
    is_message_id,
    make_message_id,
    multipart_body,
    new_boundary,
    printable_ascii,
    split_fields,
)
from gateway.spool.model import Envelope, MailParams, Recipient

PROTECTED_SUBJECT = "[...]"  # RFC 9788 §4.2 placeholder, the outer Subject we send

_NOTIFY_FOR_ACTION = {
    Action.FAILED: "FAILURE",
    Action.DELAYED: "DELAY",
    Action.DELIVERED: "SUCCESS",
    Action.RELAYED: "SUCCESS",
    Action.EXPANDED: "SUCCESS",
}
DEFAULT_NOTIFY = ("FAILURE", "DELAY")  # RFC 3461 §4.1 allows FAILURE or FAILURE,DELAY


# -- when ------------------------------------------------------------------------------


def should_send_dsn(
    action: Action | str,
    notify: Sequence[str] | None,
    mail_from: str,
    *,
    postal: bool = False,
) -> bool:
    """Whether a DSN with ``action`` is due for a recipient with this NOTIFY (RFC 3461 §4.1).

    Never to the null reverse-path; NOTIFY=NEVER: never; NOTIFY absent: FAILURE,DELAY.
    ``failed`` needs FAILURE, ``delayed`` DELAY, ``delivered``/``expanded``/``relayed``
    SUCCESS - except a postal ``relayed`` (``postal=True``), sent unless NEVER.
    """
    action = Action(action)
    if not mail_from:
        return False
    words = tuple(word.upper() for word in notify) if notify is not None else DEFAULT_NOTIFY
    if "NEVER" in words:
        return False
    if postal and action is Action.RELAYED:
        return True
    return _NOTIFY_FOR_ACTION[action] in words


def dsn_envelope(original_sender: str) -> Envelope:
    """The DSN's own envelope: MAIL FROM:<> and RCPT TO the original sender (RFC 3461
    §6.1). Raises ``DsnRefused`` for the null reverse-path."""
    _refuse_null_sender(original_sender)
    params = MailParams(smtputf8=not original_sender.isascii())  # RFC 6531 §3.4
    return Envelope(mail_from="", recipients=(Recipient(original_sender),), params=params)


# -- which original headers may be shown -----------------------------------------------

# With protected=True only these are copied (RFC 5322 names); everything else - Subject,
# Received (internal hosts), X-*, List-*, HP-Outer residue (RFC 9788 §2.2), Comments,
# Keywords, Content-* parameters that may name a file - is dropped.
SHOWN_WHEN_PROTECTED = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
)
ALWAYS_DROPPED = ("bcc", "resent-bcc")  # never reveal a blind copy (RFC 5322 §3.6.3)


def headers_for_dsn(original_headers: bytes, *, protected: bool) -> bytes:
    """The header block of the original that a DSN may show, CRLF-terminated lines.

    ``original_headers`` may be a header block or a whole message (cut at the first
    empty line). ``protected=True``: only ``SHOWN_WHEN_PROTECTED`` fields are kept and a
    ``Subject: [...]`` is added; ``protected=False``: every field but Bcc is kept as is.
    """
    fields = [
        (name, raw)
        for name, raw in split_fields(original_headers)
        if name.lower() not in ALWAYS_DROPPED
    ]
    if not protected:
        return b"".join(raw for _, raw in fields)
    kept = [raw for name, raw in fields if name.lower() in SHOWN_WHEN_PROTECTED]
    kept.append(f"Subject: {PROTECTED_SUBJECT}".encode() + CRLF)
    return b"".join(kept)


# -- the builder -----------------------------------------------------------------------


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    recipients: Sequence[RecipientReport],
    original: bytes,
    arrival_date: datetime,
    now: datetime,
    language: Language = "fr",
    ret: str | None = None,
    envid: str | None = None,
    protected: bool = True,
    message_id: str | None = None,
) -> bytes:
    """The DSN message (RFC 5322, CRLF, lines <= 78) for ``recipients`` of one original.

    ``original`` is the original message as the caller holds it (or just its header
    block); ``ret`` its RET (``FULL``/``HDRS``/None = HDRS); ``envid`` its ENVID;
    ``protected`` as in ``headers_for_dsn`` (default True: fail closed).
    Raises ``DsnRefused`` for the null sender, no recipient, or a bad value.
    """
    _refuse_null_sender(original_sender)
    check_text("reporting MTA", reporting_mta)
    if not recipients:
        raise DsnRefused("a DSN needs at least one recipient")
    if ret not in (None, "FULL", "HDRS"):
        raise DsnRefused(f"RET must be FULL or HDRS, not {ret!r}")
    if envid is not None:
        check_text("ENVID", envid)
    if arrival_date.tzinfo is None or now.tzinfo is None:
        raise DsnRefused("arrival date and now must be timezone-aware")
    texts = HUMAN_TEXT[language]
    main_action = _main_action(recipients)
    boundary = new_boundary()
    original_id = header_value(original, "Message-ID")
    header = _dsn_header(
        reporting_mta=reporting_mta,
        to=original_sender,
        subject=texts.subject[main_action],
        now=now,
        message_id=message_id or make_message_id(reporting_mta),
        in_reply_to=original_id,
        boundary=boundary,
        language=language,
    )
    parts = (
        human_part(human_text(texts, reporting_mta, recipients, arrival_date, original_id)),
        _status_part(reporting_mta, envid, arrival_date, recipients),
        _original_part(original, ret=ret, protected=protected),
    )
    return header + CRLF + multipart_body(boundary, parts)


def _refuse_null_sender(sender: str) -> None:
    if not sender or sender == "<>":
        raise DsnRefused("no DSN to a null sender (RFC 3461 §6.1, RFC 5321 §6.1)")
    check_address("original sender", sender)


def _main_action(recipients: Sequence[RecipientReport]) -> Action:
    """The most serious action of the report decides its Subject."""
    order = (Action.FAILED, Action.DELAYED, Action.RELAYED, Action.DELIVERED, Action.EXPANDED)
    actions = {report.action for report in recipients}
    return next(action for action in order if action in actions)


def _dsn_header(
    *,
    reporting_mta: str,
    to: str,
    subject: str,
    now: datetime,
    message_id: str,
    in_reply_to: str | None,
    boundary: str,
    language: Language,
) -> bytes:
    postmaster = "Mail Delivery System" if language == "en" else "Système de messagerie"
    fields: list[tuple[str, str]] = [
        ("From", format_address(postmaster, f"MAILER-DAEMON@{reporting_mta}")),
        ("To", f"<{to}>"),  # raw UTF-8 when not ASCII (RFC 6532): header_fields
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
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
        ("Content-Language", language),
    ]
    return b"".join(_header_line(name, value) for name, value in fields)


def _header_line(name: str, value: str) -> bytes:
    """``header_field``, except an address field with a non-ASCII address: written as
    UTF-8 as it is (RFC 6532 §3.2; the DSN then goes out with SMTPUTF8,
    ``dsn_envelope``), since an encoded-word is not allowed in an addr-spec (RFC 2047
    §5)."""
    if name == "To" and not value.isascii():
        check_text(name, value)
        return f"{name}: {value}".encode() + CRLF
    return header_field(name, value)


def _status_part(
    reporting_mta: str,
    envid: str | None,
    arrival_date: datetime,
    recipients: Sequence[RecipientReport],
) -> bytes:
    """The ``message/delivery-status`` part (RFC 3464 §2.2 and §2.3)."""
    message_fields = [("Reporting-MTA", f"dns; {reporting_mta}")]
    if envid is not None:
        message_fields.append(("Original-Envelope-Id", envid))
    message_fields.append(("Arrival-Date", format_date(arrival_date)))
    blocks = [_fields_block(message_fields)]
    blocks += [_fields_block(_recipient_fields(report)) for report in recipients]
    header = b"Content-Type: message/delivery-status" + CRLF
    return header + CRLF + CRLF.join(blocks)


def _recipient_fields(report: RecipientReport) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    if report.original_recipient is not None:
        fields.append(("Original-Recipient", _typed_address(report.original_recipient)))
    fields += [
        ("Final-Recipient", _typed_address(f"rfc822; {report.final_recipient}")),
        ("Action", report.action.value),
        ("Status", report.status),
    ]
    if report.remote_mta is not None:
        fields.append(("Remote-MTA", f"dns; {report.remote_mta}"))
    if report.diagnostic:
        fields.append(("Diagnostic-Code", f"smtp; {printable_ascii(report.diagnostic)}"))
    if report.last_attempt is not None:
        fields.append(("Last-Attempt-Date", format_date(report.last_attempt)))
    if report.will_retry_until is not None:
        fields.append(("Will-Retry-Until", format_date(report.will_retry_until)))
    return fields


def _typed_address(value: str) -> str:
    """An ``address-type; address`` value as ``message/delivery-status`` may carry it:
    as is when ASCII, else the RFC 6533 §3 form ``utf-8; `` with each non-ASCII
    character written ``\\x{HEX}`` (never an RFC 2047 encoded-word, which no DSN parser
    reads there)."""
    if value.isascii():
        return value
    _, _, address = value.partition(";")
    escaped = "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in address.strip())
    return f"utf-8; {escaped}"


def _fields_block(fields: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(header_field(name, value) for name, value in fields)


def _original_part(original: bytes, *, ret: str | None, protected: bool) -> bytes:
    """RET=FULL and not protected: ``message/rfc822``; else ``text/rfc822-headers``."""
    if ret == "FULL" and not protected:
        content = crlf(original)
        encoding = "7bit" if is_7bit(content) else "8bit"  # RFC 2046 §5.2.1: no QP/base64
        header = header_field("Content-Type", "message/rfc822") + header_field(
            "Content-Transfer-Encoding", encoding
        )
        return header + CRLF + content
    headers = headers_for_dsn(original, protected=protected)
    header = header_field("Content-Type", "text/rfc822-headers")
    if is_7bit(headers):
        return header + header_field("Content-Transfer-Encoding", "7bit") + CRLF + headers
    encoded = email.quoprimime.body_encode(headers.decode("latin-1"), eol="\r\n")
    header += header_field("Content-Transfer-Encoding", "quoted-printable")
    return header + CRLF + crlf(encoded.encode("ascii"))
