"""Delivery status notifications (RFC 3464 inside RFC 6522 ``multipart/report``): sans-IO.

Role: pure functions, bytes in and bytes out, that the relay (issue 6) and the inbound
agent (issue 7) call when a recipient failed, is delayed, was delivered (NOTIFY=SUCCESS)
or went by post. The caller queues the result as a message of its own (``Origin``
listener ``internal``) with the envelope ``dsn_envelope`` returns: MAIL FROM:<> and
RCPT TO the original sender.

What a DSN holds (RFC 6522 §3, RFC 3464 §2):

1. ``text/plain; charset=utf-8`` (quoted-printable) for the sender, in
   ``gateway.language`` (``fr`` by default, ``en``): what happened, the reason per
   recipient, what to do. No text of the original message is quoted.
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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from gateway.config.model import Language
from gateway.relay.report import (
    CRLF,
    NotificationRefused,
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
from gateway.spool.model import Envelope, Recipient

PROTECTED_SUBJECT = "[...]"  # RFC 9788 §4.2 placeholder, the outer Subject we send
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")  # RFC 3463 §2


DsnRefused = NotificationRefused  # the name the relay catches


class Action(StrEnum):
    """RFC 3464 §2.3.3 action-value."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class Reason(StrEnum):
    """Why, in words the sender understands; picks the human sentence and the advice."""

    REMOTE_REJECTED = "remote-rejected"  # 5xx from the next hop
    REMOTE_TEMPORARY = "remote-temporary"  # 4xx or no answer, still retrying
    EXPIRED = "expired"  # max_lifetime reached
    NO_VALID_CERTIFICATE = "no-valid-certificate"  # never sent in clear
    NO_POSTAL_ADDRESS = "no-postal-address"  # postal fallback without an address
    POSTAL = "postal"  # went by post (Action relayed)
    SECURE_CONNECTION = "secure-connection"  # TLS/peer DN check failed
    ROUTE_REJECTED = "route-rejected"  # a route with transport "reject"
    TOO_BIG = "too-big"
    UNDECRYPTABLE = "undecryptable"  # inbound: held in quarantine
    DELIVERED = "delivered"
    RELAYED = "relayed"  # handed to a network that sends no DSN
    OTHER = "other"


_DEFAULT_REASON = {
    Action.FAILED: Reason.OTHER,
    Action.DELAYED: Reason.REMOTE_TEMPORARY,
    Action.DELIVERED: Reason.DELIVERED,
    Action.RELAYED: Reason.RELAYED,
    Action.EXPANDED: Reason.DELIVERED,
}

_NOTIFY_FOR_ACTION = {
    Action.FAILED: "FAILURE",
    Action.DELAYED: "DELAY",
    Action.DELIVERED: "SUCCESS",
    Action.RELAYED: "SUCCESS",
    Action.EXPANDED: "SUCCESS",
}
DEFAULT_NOTIFY = ("FAILURE", "DELAY")  # RFC 3461 §4.1 allows FAILURE or FAILURE,DELAY


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient (one per-recipient block, RFC 3464 §2.3).

    ``original_recipient`` is the ORCPT as received (``rfc822;addr``); ``status`` an
    RFC 3463 code (``5.1.1``); ``diagnostic`` the remote SMTP reply as received
    (``550 5.1.1 no such user``); ``remote_mta`` the host that answered.
    """

    final_recipient: str
    action: Action
    status: str
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        check_address("final recipient", self.final_recipient)
        if not _STATUS_RE.fullmatch(self.status):
            raise DsnRefused(f"status {self.status!r} is not an RFC 3463 code")
        expected_class = {Action.FAILED: "5", Action.DELAYED: "4"}.get(self.action, "2")
        if self.status[0] != expected_class:
            raise DsnRefused(f"status {self.status} does not fit action {self.action}")
        if self.original_recipient is not None:
            check_text("original recipient", self.original_recipient)
            if ";" not in self.original_recipient:
                raise DsnRefused("original recipient: expected addr-type;address")
        if self.remote_mta is not None:
            check_text("remote MTA", self.remote_mta)
        for name in ("last_attempt", "will_retry_until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise DsnRefused(f"{name.replace('_', ' ')}: naive datetime")
        if self.will_retry_until is not None and self.action is not Action.DELAYED:
            raise DsnRefused("will-retry-until is only for action delayed (RFC 3464 §2.3.9)")

    @property
    def effective_reason(self) -> Reason:
        """The reason given, else one that fits the action (a remote 5xx: rejected)."""
        if self.reason is not None:
            return self.reason
        if self.action is Action.FAILED and self.remote_mta is not None:
            return Reason.REMOTE_REJECTED
        return _DEFAULT_REASON[self.action]


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
    return Envelope(mail_from="", recipients=(Recipient(original_sender),))


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
        human_part(_human_text(texts, reporting_mta, recipients, arrival_date, original_id)),
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
        ("To", f"<{to}>"),
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
    return b"".join(header_field(name, value) for name, value in fields)


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
        fields.append(("Original-Recipient", report.original_recipient))
    fields += [
        ("Final-Recipient", f"rfc822; {report.final_recipient}"),
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


# -- human text ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DsnTexts:
    """The words of the human part in one language."""

    subject: dict[Action, str]
    greeting: str
    intro: str
    heading: dict[Action, str]
    reason_label: str
    reply_label: str
    retry_label: str
    advice_label: str
    reasons: dict[Reason, tuple[str, str]]  # reason -> (what happened, what to do)
    original_label: str
    footer: str


HUMAN_TEXT: dict[Language, DsnTexts] = {
    "fr": DsnTexts(
        subject={
            Action.FAILED: "Message non remis",
            Action.DELAYED: "Message en attente de remise",
            Action.DELIVERED: "Message remis",
            Action.RELAYED: "Message transmis",
            Action.EXPANDED: "Message remis",
        },
        greeting="Bonjour,",
        intro=(
            "Ceci est un message automatique de la passerelle de messagerie sécurisée {mta}."
            " Merci de ne pas y répondre."
        ),
        heading={
            Action.FAILED: "Votre message n'a pas pu être remis aux destinataires suivants :",
            Action.DELAYED: (
                "Votre message n'a pas encore pu être remis aux destinataires suivants."
                " La passerelle continue d'essayer ; vous n'avez rien à renvoyer :"
            ),
            Action.DELIVERED: "Votre message a été remis aux destinataires suivants :",
            Action.RELAYED: "Votre message a été transmis pour les destinataires suivants :",
            Action.EXPANDED: "Votre message a été remis aux destinataires suivants :",
        },
        reason_label="Raison",
        reply_label="Réponse du serveur distant",
        retry_label="Nouvelles tentatives jusqu'au",
        advice_label="Que faire",
        reasons={
            Reason.REMOTE_REJECTED: (
                "le serveur du destinataire a refusé le message.",
                "vérifiez l'adresse ; si elle est juste, contactez le destinataire"
                " par un autre moyen.",
            ),
            Reason.REMOTE_TEMPORARY: (
                "le serveur du destinataire ne répond pas ou demande de réessayer plus tard.",
                "rien pour l'instant ; vous serez prévenu si la remise échoue.",
            ),
            Reason.EXPIRED: (
                "le message n'a pas pu être remis pendant la durée maximale de conservation ;"
                " la passerelle a cessé d'essayer.",
                "renvoyez le message plus tard ou contactez le destinataire par un autre moyen.",
            ),
            Reason.NO_VALID_CERTIFICATE: (
                "aucun certificat de chiffrement valide n'a été trouvé pour ce destinataire"
                " dans l'annuaire. Le message n'a pas été envoyé en clair.",
                "vérifiez l'adresse ou contactez le destinataire par un autre moyen"
                " (téléphone, courrier).",
            ),
            Reason.NO_POSTAL_ADDRESS: (
                "aucun certificat de chiffrement valide n'a été trouvé pour ce destinataire"
                " et l'annuaire ne donne pas d'adresse postale. Le message n'a pas été"
                " envoyé en clair.",
                "envoyez le document par courrier ou contactez le destinataire.",
            ),
            Reason.POSTAL: (
                "ce destinataire n'a pas de certificat de chiffrement valide : votre message"
                " lui est envoyé par courrier postal.",
                "rien ; la lettre arrivera sous quelques jours.",
            ),
            Reason.SECURE_CONNECTION: (
                "la connexion sécurisée avec le serveur du destinataire n'a pas pu être"
                " établie (serveur non reconnu ou non autorisé).",
                "contactez le service informatique de votre établissement.",
            ),
            Reason.ROUTE_REJECTED: (
                "la passerelle n'est pas autorisée à envoyer vers ce domaine.",
                "contactez le service informatique de votre établissement.",
            ),
            Reason.TOO_BIG: (
                "le message est trop volumineux.",
                "réduisez la taille des pièces jointes et renvoyez le message.",
            ),
            Reason.UNDECRYPTABLE: (
                "le message n'a pas pu être déchiffré ou vérifié ; il est retenu.",
                "vérifiez que vous utilisez le bon certificat du destinataire.",
            ),
            Reason.DELIVERED: ("le message a été remis au serveur du destinataire.", "rien."),
            Reason.RELAYED: (
                "le message a été transmis à un réseau qui ne renvoie pas d'accusé de remise.",
                "rien.",
            ),
            Reason.OTHER: (
                "le message n'a pas pu être remis.",
                "contactez le service informatique de votre établissement.",
            ),
        },
        original_label="Message concerné : {message_id}, reçu le {date}.",
        footer="Le rapport technique (RFC 3464) est joint à ce message.",
    ),
    "en": DsnTexts(
        subject={
            Action.FAILED: "Undelivered message",
            Action.DELAYED: "Delayed message",
            Action.DELIVERED: "Delivered message",
            Action.RELAYED: "Relayed message",
            Action.EXPANDED: "Delivered message",
        },
        greeting="Hello,",
        intro=(
            "This is an automatic message from the secure mail gateway {mta}. Please do not reply."
        ),
        heading={
            Action.FAILED: "Your message could not be delivered to these recipients:",
            Action.DELAYED: (
                "Your message could not be delivered yet to these recipients."
                " The gateway keeps trying; you do not need to send it again:"
            ),
            Action.DELIVERED: "Your message was delivered to these recipients:",
            Action.RELAYED: "Your message was passed on for these recipients:",
            Action.EXPANDED: "Your message was delivered to these recipients:",
        },
        reason_label="Reason",
        reply_label="Remote server reply",
        retry_label="Retrying until",
        advice_label="What to do",
        reasons={
            Reason.REMOTE_REJECTED: (
                "the recipient's server refused the message.",
                "check the address; if it is right, reach the recipient another way.",
            ),
            Reason.REMOTE_TEMPORARY: (
                "the recipient's server does not answer or asked to try again later.",
                "nothing for now; you will be told if delivery fails.",
            ),
            Reason.EXPIRED: (
                "the message could not be delivered within the maximum time in the queue;"
                " the gateway stopped trying.",
                "send it again later or reach the recipient another way.",
            ),
            Reason.NO_VALID_CERTIFICATE: (
                "no valid encryption certificate was found for this recipient in the"
                " directory. The message was not sent in clear.",
                "check the address or reach the recipient another way (phone, post).",
            ),
            Reason.NO_POSTAL_ADDRESS: (
                "no valid encryption certificate was found for this recipient and the"
                " directory has no postal address. The message was not sent in clear.",
                "send the document by post or contact the recipient.",
            ),
            Reason.POSTAL: (
                "this recipient has no valid encryption certificate: your message is"
                " sent to them by post.",
                "nothing; the letter will arrive within a few days.",
            ),
            Reason.SECURE_CONNECTION: (
                "a secure connection to the recipient's server could not be established"
                " (server unknown or not allowed).",
                "contact your IT department.",
            ),
            Reason.ROUTE_REJECTED: (
                "the gateway is not allowed to send to this domain.",
                "contact your IT department.",
            ),
            Reason.TOO_BIG: (
                "the message is too large.",
                "make the attachments smaller and send it again.",
            ),
            Reason.UNDECRYPTABLE: (
                "the message could not be decrypted or verified; it is held.",
                "check that you use the recipient's right certificate.",
            ),
            Reason.DELIVERED: ("the message was delivered to the recipient's server.", "nothing."),
            Reason.RELAYED: (
                "the message was passed to a network that sends no delivery reports.",
                "nothing.",
            ),
            Reason.OTHER: ("the message could not be delivered.", "contact your IT department."),
        },
        original_label="Message concerned: {message_id}, received {date}.",
        footer="The technical report (RFC 3464) is attached.",
    ),
}


def _human_text(
    texts: DsnTexts,
    reporting_mta: str,
    recipients: Sequence[RecipientReport],
    arrival_date: datetime,
    original_id: str | None,
) -> str:
    lines = [texts.greeting, "", texts.intro.format(mta=reporting_mta), ""]
    for action in Action:
        group = [report for report in recipients if report.action is action]
        if not group:
            continue
        lines += [texts.heading[action], ""]
        for report in group:
            lines += _recipient_lines(texts, report)
    message_id = original_id if original_id and is_message_id(original_id) else "-"
    date = arrival_date.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += [texts.original_label.format(message_id=message_id, date=date), texts.footer]
    return "\r\n".join(lines) + "\r\n"


def _recipient_lines(texts: DsnTexts, report: RecipientReport) -> list[str]:
    what, advice = texts.reasons[report.effective_reason]
    lines = [f"  - {report.final_recipient}", f"    {texts.reason_label} : {what}"]
    if report.diagnostic:
        lines.append(f"    {texts.reply_label} : {printable_ascii(report.diagnostic)}")
    if report.will_retry_until is not None:
        until = report.will_retry_until.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"    {texts.retry_label} : {until}")
    lines += [f"    {texts.advice_label} : {advice}", ""]
    return lines
