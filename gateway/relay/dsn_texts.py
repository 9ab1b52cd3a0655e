"""The human-readable part of a DSN (RFC 6522 §3 first part, RFC 3464 §2): sans-IO.

Role: the words a DSN says to the sender, in ``gateway.language`` (``fr`` by default,
``en``): ``DsnTexts`` and the ``HUMAN_TEXT`` tables (Subject per action, heading per
action, sentence and advice per ``Reason``), and ``human_text``, the ``text/plain;
charset=utf-8`` body that ``gateway.relay.dsn.build_dsn`` puts first in its
``multipart/report`` (quoted-printable): what happened, the reason per recipient, what
to do. Imported by ``gateway.relay.dsn`` only; imports ``gateway.relay.dsn_recipients``,
never ``gateway.relay.dsn``.

Security notes: no text of the original message is quoted (the Subject may name a
patient); remote replies are reduced to printable ASCII before they are shown; the
original is named by its Message-ID only when it is a well-formed one.

Trust level: pure data; no I/O, no keys, no logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config.model import Language
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.relay.report import is_message_id, printable_ascii


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


def human_text(
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
