"""DSN builder (gateway.relay.dsn): RFC 3464/6522 structure parsed back with the stdlib
``email`` package, fr and en text, RET=HDRS vs FULL, the protected Subject never copied
(raw bytes and every decoded part), the null sender refused, the NOTIFY matrix, header
injection, line lengths, and one DSN accepted and stored by a real Postfix."""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import smtplib
from datetime import UTC, datetime, timedelta
from email.message import Message

import pytest

from gateway.relay.dsn import build_dsn, dsn_envelope, headers_for_dsn, should_send_dsn
from gateway.relay.dsn_recipients import Action, DsnRefused, Reason, RecipientReport
from tests.peers.postfix import PostfixInstance

MTA = "mx.chu-a.test"
SENDER = "dr.martin@chu-a.test"
SECRET_SUBJECT = "Patient Dupont Jeanne, IRM cérébrale"
SECRET_BODY = "Compte rendu confidentiel : tumeur cérébrale"
ARRIVAL = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

ORIGINAL = (
    "Return-Path: <dr.martin@chu-a.test>\r\n"
    "Received: from pc-12.intra.chu-a.test (10.1.2.3)\r\n"
    "\tby mx.chu-a.test with ESMTPSA\r\n"
    "From: =?utf-8?q?Dr_Martin_=C3=89mile?= <dr.martin@chu-a.test>\r\n"
    "To: Dr Durand <dr.durand@clinique-b.test>\r\n"
    "Cc: secretariat@clinique-b.test\r\n"
    "Bcc: cache@chu-a.test\r\n"
    "Subject: =?utf-8?q?Patient_Dupont_Jeanne=2C_IRM_c=C3=A9r=C3=A9brale?=\r\n"
    "Thread-Topic: Patient Dupont Jeanne\r\n"
    "HP-Outer: Subject: [...]\r\n"
    "Date: Sat, 28 Nov 2026 09:29:00 +0000\r\n"
    "Message-ID: <orig-1@chu-a.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: text/plain; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    f"{SECRET_BODY}\r\n"
).encode()
SECRET_FRAGMENTS = ("Dupont", "IRM", "tumeur", "Thread-Topic", "HP-Outer", "cache@")


def failed(address: str = "dr.durand@clinique-b.test", **kwargs: object) -> RecipientReport:
    values: dict[str, object] = {
        "original_recipient": f"rfc822;{address}",
        "remote_mta": "mx.clinique-b.test",
        "diagnostic": "550 5.1.1 <dr.durand@clinique-b.test>: Recipient address rejected",
        "last_attempt": NOW - timedelta(minutes=5),
    }
    values.update(kwargs)
    return RecipientReport(address, Action.FAILED, "5.1.1", **values)  # type: ignore[arg-type]


def delayed(address: str = "secretariat@clinique-b.test") -> RecipientReport:
    return RecipientReport(
        address,
        Action.DELAYED,
        "4.4.1",
        remote_mta="mx.clinique-b.test",
        diagnostic="421 4.4.1 try again later",
        last_attempt=NOW,
        will_retry_until=ARRIVAL + timedelta(days=5),
    )


def build(**kwargs: object) -> bytes:
    values: dict[str, object] = {
        "reporting_mta": MTA,
        "original_sender": SENDER,
        "recipients": [failed()],
        "original": ORIGINAL,
        "arrival_date": ARRIVAL,
        "now": NOW,
        "envid": "QID-42",
        "message_id": "<dsn-1@mx.chu-a.test>",
    }
    values.update(kwargs)
    return build_dsn(**values)  # type: ignore[arg-type]


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(data: bytes) -> list[Message]:
    message = parse(data)
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def human(data: bytes) -> str:
    """The human part, decoded, with its wrapping undone."""
    body = parts(data)[0].get_payload(decode=True)
    assert isinstance(body, bytes)
    return " ".join(body.decode("utf-8").split())


def status_blocks(data: bytes) -> list[Message]:
    blocks = parts(data)[1].get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, Message)]


def decoded_views(data: bytes) -> list[bytes]:
    """The raw bytes plus every part decoded by its transfer encoding, and every run of
    base64/QP text in it decoded too, so a secret cannot hide behind an encoding."""
    views = [data, quopri.decodestring(data)]
    for part in parse(data).walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            views.append(payload)
    for line in data.split(b"\r\n"):
        try:
            views.append(base64.b64decode(line, validate=True))
        except ValueError:
            pass
    return views


# -- structure ---------------------------------------------------------------------------


def test_top_level_fields_and_envelope() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"].endswith("<MAILER-DAEMON@mx.chu-a.test>")
    assert message["To"] == "<dr.martin@chu-a.test>"
    assert message["Subject"] == "Message non remis"
    assert message["Message-ID"] == "<dsn-1@mx.chu-a.test>"
    assert message["In-Reply-To"] == "<orig-1@chu-a.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Date"] == "Sat, 28 Nov 2026 12:00:00 +0000"
    assert [part.get_content_type() for part in parts(build())] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    strict = email.message_from_bytes(
        build(ret="FULL", protected=False), policy=email.policy.strict
    )
    assert [part.defects for part in strict.walk()] == [[]] * len(list(strict.walk()))
    envelope = dsn_envelope(SENDER)
    assert envelope.mail_from == ""
    assert envelope.addresses == (SENDER,)


def test_fresh_message_id_at_hostname() -> None:
    first = parse(build(message_id=None))["Message-ID"]
    second = parse(build(message_id=None))["Message-ID"]
    assert first.endswith("@mx.chu-a.test>") and first.startswith("<")
    assert first != second


def test_delivery_status_fields() -> None:
    data = build(recipients=[failed(), delayed()])
    per_message, first, second = status_blocks(data)
    assert per_message["Reporting-MTA"] == "dns; mx.chu-a.test"
    assert per_message["Original-Envelope-Id"] == "QID-42"
    assert per_message["Arrival-Date"] == "Sat, 28 Nov 2026 09:30:00 +0000"
    assert first["Original-Recipient"] == "rfc822;dr.durand@clinique-b.test"
    assert first["Final-Recipient"] == "rfc822; dr.durand@clinique-b.test"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; mx.clinique-b.test"
    assert " ".join(first["Diagnostic-Code"].split()) == (
        "smtp; 550 5.1.1 <dr.durand@clinique-b.test>: Recipient address rejected"
    )
    assert first["Last-Attempt-Date"] == "Sat, 28 Nov 2026 11:55:00 +0000"
    assert first["Will-Retry-Until"] is None
    assert second["Original-Recipient"] is None
    assert second["Action"] == "delayed"
    assert second["Status"] == "4.4.1"
    assert second["Will-Retry-Until"] == "Thu, 03 Dec 2026 09:30:00 +0000"


def test_no_envid_no_field() -> None:
    per_message = status_blocks(build(envid=None))[0]
    assert per_message["Original-Envelope-Id"] is None


def test_every_line_crlf_and_at_most_78() -> None:
    long_reply = "550 5.7.1 " + " ".join(["policy"] * 60)
    data = build(recipients=[failed(diagnostic=long_reply)], language="en")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    assert data.isascii()
    folded = status_blocks(data)[1]["Diagnostic-Code"]
    assert " ".join(folded.split()) == f"smtp; {long_reply}"


# -- human text --------------------------------------------------------------------------


def test_french_text_by_default() -> None:
    text = human(build(recipients=[failed(), delayed()]))
    assert "Votre message n'a pas pu être remis aux destinataires suivants" in text
    assert "le serveur du destinataire a refusé le message." in text
    assert "Que faire : vérifiez l'adresse" in text
    assert "Nouvelles tentatives jusqu'au : 2026-12-03 09:30 UTC" in text
    assert "<orig-1@chu-a.test>" in text
    assert parse(build())["Content-Language"] == "fr"


def test_english_text() -> None:
    data = build(language="en", recipients=[failed(reason=Reason.NO_VALID_CERTIFICATE)])
    text = human(data)
    assert "Your message could not be delivered to these recipients:" in text
    assert "no valid encryption certificate was found" in text
    assert "The message was not sent in clear." in text
    assert parse(data)["Subject"] == "Undelivered message"
    assert "Votre" not in text


def test_postal_fallback_is_relayed_with_a_text_saying_post() -> None:
    report = RecipientReport(
        "dr.durand@clinique-b.test", Action.RELAYED, "2.0.0", reason=Reason.POSTAL
    )
    data = build(recipients=[report])
    assert status_blocks(data)[1]["Action"] == "relayed"
    assert "envoyé par courrier postal" in human(data)
    assert parse(data)["Subject"] == "Message transmis"


def test_french_subject_with_accents_is_rfc2047() -> None:
    data = build()
    raw_from = next(line for line in data.split(b"\r\n") if line.startswith(b"From:"))
    assert b"=?utf-8?" in raw_from
    decoded = email.message_from_bytes(data, policy=email.policy.default)["From"]
    assert str(decoded).startswith("Système de messagerie")


# -- what of the original is shown -------------------------------------------------------


def test_ret_hdrs_protected_shows_only_the_allow_list() -> None:
    third = parts(build(ret="HDRS"))[2]
    shown = third.get_payload(decode=True)
    assert isinstance(shown, bytes)
    names = [line.split(b":")[0] for line in shown.split(b"\r\n") if line]
    assert names == [b"From", b"To", b"Cc", b"Date", b"Message-ID", b"MIME-Version", b"Subject"]
    assert b"Subject: [...]\r\n" in shown


@pytest.mark.parametrize("ret", [None, "HDRS", "FULL"])
@pytest.mark.parametrize("language", ["fr", "en"])
def test_protected_subject_and_body_never_present(ret: str | None, language: str) -> None:
    data = build(ret=ret, language=language, recipients=[failed(), delayed()])
    for view in decoded_views(data):
        for secret in (*SECRET_FRAGMENTS, SECRET_SUBJECT):
            assert secret.encode() not in view, (secret, ret)
            assert secret.encode("latin-1", "replace") not in view
    assert parts(data)[2].get_content_type() == "text/rfc822-headers"


def test_ret_full_unprotected_returns_the_whole_message() -> None:
    data = build(ret="FULL", protected=False)
    third = parts(data)[2]
    assert third.get_content_type() == "message/rfc822"
    assert third["Content-Transfer-Encoding"] == "8bit"  # the original body is 8-bit
    inner = third.get_payload()
    assert isinstance(inner, list) and isinstance(inner[0], Message)
    assert inner[0]["Message-ID"] == "<orig-1@chu-a.test>"
    assert inner[0]["Bcc"] == "cache@chu-a.test"  # FULL is the message as it was
    assert SECRET_BODY.encode() in data


def test_ret_hdrs_unprotected_keeps_headers_but_bcc() -> None:
    third = parts(build(ret="HDRS", protected=False))[2]
    shown = third.get_payload(decode=True)
    assert isinstance(shown, bytes)
    assert b"Thread-Topic: Patient Dupont Jeanne\r\n" in shown
    assert b"\tby mx.chu-a.test with ESMTPSA\r\n" in shown  # folded line kept whole
    assert b"Bcc" not in shown
    assert SECRET_BODY.encode() not in shown


def test_unprotected_8bit_headers_are_quoted_printable() -> None:
    original = "Subject: Réunion\r\nFrom: a@chu-a.test\r\n\r\nx\r\n".encode()
    data = build(original=original, protected=False)
    third = parts(data)[2]
    assert third["Content-Transfer-Encoding"] == "quoted-printable"
    assert third.get_payload(decode=True) == "Subject: Réunion\r\nFrom: a@chu-a.test\r\n".encode()
    assert data.isascii()


def test_headers_for_dsn_end_at_a_broken_line() -> None:
    """A line that is no field starts the body for a reader (the sender forgot the empty
    line): nothing from it on is copied, not even what looks like a field."""
    block = b"From: a@b.test\r\nnot a header\r\n continued\r\nTo: c@d.test\r\n\r\nbody\r\n"
    assert headers_for_dsn(block, protected=False) == b"From: a@b.test\r\n"


# -- refusals and injection --------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>"])
def test_null_sender_refused(sender: str) -> None:
    with pytest.raises(DsnRefused, match="null sender"):
        build(original_sender=sender)
    with pytest.raises(DsnRefused, match="null sender"):
        dsn_envelope(sender)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("envid", "ENV\r\nBcc: x@y.test"),
        ("reporting_mta", "mx\nX-Injected: 1"),
        ("original_sender", "a@b.test\r\nBcc: x@y.test"),
        ("ret", "NONE"),
        ("recipients", []),
    ],
)
def test_bad_values_refused(field: str, value: object) -> None:
    with pytest.raises(DsnRefused):
        build(**{field: value})


def test_remote_reply_cannot_inject_fields() -> None:
    reply = "550 no\r\nX-Injected: yes\r\n\r\nfake body \x00\x1b[31m é"
    data = build(recipients=[failed(diagnostic=reply)])
    assert b"\r\nX-Injected" not in data
    block = status_blocks(data)[1]
    assert block["X-Injected"] is None
    assert "X-Injected: yes fake body ??[31m ?" in block["Diagnostic-Code"]


@pytest.mark.parametrize(
    ("action", "status"),
    [(Action.FAILED, "4.4.1"), (Action.DELAYED, "5.1.1"), (Action.DELIVERED, "5.0.0")],
)
def test_status_must_fit_action(action: Action, status: str) -> None:
    with pytest.raises(DsnRefused, match="does not fit"):
        RecipientReport("a@b.test", action, status)


def test_will_retry_until_only_for_delayed() -> None:
    with pytest.raises(DsnRefused, match="only for action delayed"):
        RecipientReport("a@b.test", Action.FAILED, "5.0.0", will_retry_until=NOW)


# -- NOTIFY matrix (RFC 3461 §4.1) ------------------------------------------------------

F, D, S, R = Action.FAILED, Action.DELAYED, Action.DELIVERED, Action.RELAYED
MATRIX = [
    # notify, actions that get a DSN
    (None, {F, D}),
    (("NEVER",), set()),
    (("SUCCESS",), {S, R, Action.EXPANDED}),
    (("FAILURE",), {F}),
    (("DELAY",), {D}),
    (("FAILURE", "DELAY"), {F, D}),
    (("SUCCESS", "FAILURE", "DELAY"), set(Action)),
]


@pytest.mark.parametrize(("notify", "expected"), MATRIX)
def test_notify_matrix(notify: tuple[str, ...] | None, expected: set[Action]) -> None:
    got = {action for action in Action if should_send_dsn(action, notify, SENDER)}
    assert got == expected
    assert not any(should_send_dsn(action, notify, "") for action in Action)


@pytest.mark.parametrize(
    ("notify", "expected"), [(None, True), (("FAILURE",), True), (("NEVER",), False)]
)
def test_postal_relayed_is_told_unless_never(
    notify: tuple[str, ...] | None, expected: bool
) -> None:
    assert should_send_dsn("relayed", notify, SENDER, postal=True) is expected
    assert should_send_dsn("relayed", notify, SENDER) is False


# -- a real peer -------------------------------------------------------------------------


def test_postfix_accepts_and_stores_the_dsn(postfix_mx: PostfixInstance) -> None:
    """Postfix does not parse DSNs: this proves the bytes are acceptable mail."""
    rcpt = "dr.martin@clinique-b.test"
    data = build(original_sender=rcpt, recipients=[failed(), delayed()], language="fr")
    envelope = dsn_envelope(rcpt)
    with smtplib.SMTP(postfix_mx.host, postfix_mx.port, timeout=30) as client:
        client.ehlo("mx.chu-a.test")
        refused = client.sendmail(envelope.mail_from, list(envelope.addresses), data)
    assert refused == {}
    (stored,) = postfix_mx.wait_for_messages(1)
    assert stored.replace(b"\r\n", b"\n").endswith(
        data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
    )
    received = parse(stored)
    assert received["Return-Path"] == "<>"
    assert received["Message-ID"] == "<dsn-1@mx.chu-a.test>"
    assert received.get_param("report-type") == "delivery-status"
