"""MDN builder (gateway.relay.mdn): RFC 8098 structure parsed back with the stdlib
``email`` package, processed vs dispatched, fr and en, never for an MDN or a DSN or to a
null return path, the Direct final-delivery option, and no content of the original."""

from __future__ import annotations

import email
import email.policy
import quopri
from datetime import UTC, datetime
from email.message import Message

import pytest

from gateway.relay.mdn import (
    Disposition,
    MdnRefused,
    build_mdn,
    is_report,
    mdn_envelope,
    mdn_recipients,
    should_send_mdn,
    wants_final_delivery_mdn,
)
from gateway.relay.report import NotificationRefused

UA = "mx.chu-a.test"
LOCAL = "dr.durand@chu-a.test"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

ORIGINAL = (
    b"Return-Path: <dr.martin@clinique-b.test>\r\n"
    b"From: Dr Martin <dr.martin@clinique-b.test>\r\n"
    b"To: dr.durand@chu-a.test\r\n"
    b"Subject: Patient Dupont, resultats\r\n"
    b"Message-ID: <orig-7@clinique-b.test>\r\n"
    b"Disposition-Notification-To: Dr Martin <dr.martin@clinique-b.test>\r\n"
    b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"
    b"Original-Recipient: rfc822;dr.durand@chu-a.test\r\n"
    b'Content-Type: text/plain; charset="us-ascii"\r\n'
    b"\r\n"
    b"Resultats confidentiels du patient Dupont\r\n"
)


def build(**kwargs: object) -> bytes:
    values: dict[str, object] = {
        "reporting_ua": UA,
        "original_headers": ORIGINAL,
        "final_recipient": LOCAL,
        "disposition": Disposition.PROCESSED,
        "now": NOW,
        "message_id": "<mdn-1@mx.chu-a.test>",
    }
    values.update(kwargs)
    return build_mdn(**values)  # type: ignore[arg-type]


def parts(data: bytes) -> list[Message]:
    payload = email.message_from_bytes(data).get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def notification(data: bytes) -> Message:
    blocks = parts(data)[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) == 1
    assert isinstance(blocks[0], Message)
    return blocks[0]


def human(data: bytes) -> str:
    """The human part, decoded, with its wrapping undone."""
    body = parts(data)[0].get_payload(decode=True)
    assert isinstance(body, bytes)
    return " ".join(body.decode("utf-8").split())


def test_processed_mdn_fields() -> None:
    data = build()
    message = email.message_from_bytes(data)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "disposition-notification"
    assert message["From"] == f"<{LOCAL}>"
    assert message["To"] == "<dr.martin@clinique-b.test>"
    assert message["Subject"] == "=?utf-8?q?Accus=C3=A9_de_traitement?="
    assert message["In-Reply-To"] == "<orig-7@clinique-b.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"] == "<mdn-1@mx.chu-a.test>"
    assert [part.get_content_type() for part in parts(data)] == [
        "text/plain",
        "message/disposition-notification",
    ]
    strict = email.message_from_bytes(data, policy=email.policy.strict)
    assert all(not part.defects for part in strict.walk())
    fields = notification(data)
    assert fields["Reporting-UA"] == "mx.chu-a.test; Missive"
    assert fields["Original-Recipient"] == "rfc822;dr.durand@chu-a.test"
    assert fields["Final-Recipient"] == "rfc822; dr.durand@chu-a.test"
    assert fields["Original-Message-ID"] == "<orig-7@clinique-b.test>"
    assert fields["Disposition"] == "automatic-action/MDN-sent-automatically; processed"


def test_dispatched_mdn_and_english() -> None:
    data = build(disposition="dispatched", language="en", original_recipient="rfc822;x@chu-a.test")
    fields = notification(data)
    assert fields["Disposition"] == "automatic-action/MDN-sent-automatically; dispatched"
    assert fields["Original-Recipient"] == "rfc822;x@chu-a.test"  # the ORCPT wins
    assert email.message_from_bytes(data)["Subject"] == "Delivery notification"
    text = human(data)
    assert "was delivered to the mailbox of dr.durand@chu-a.test" in text
    assert "This does not mean that it was read." in text


def test_french_text() -> None:
    text = human(build())
    assert "a été reçu et traité" in text
    assert "<orig-7@clinique-b.test>" in text
    assert "Cela ne signifie pas qu'il a été lu." in text


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_text_claims_nothing_about_signature_or_encryption(language: str) -> None:
    """A processed MDN also answers clear or unsigned messages: the text must not say
    the message was decrypted or verified."""
    text = human(build(language=language)).lower()
    for claim in ("chiffr", "vérifi", "crypt", "verif", "signé", "signed"):
        assert claim not in text


@pytest.mark.parametrize("language", ["fr", "en"])
@pytest.mark.parametrize("disposition", list(Disposition))
def test_no_content_of_the_original(language: str, disposition: Disposition) -> None:
    data = build(language=language, disposition=disposition)
    for view in (data, quopri.decodestring(data), human(data).encode()):
        assert b"Dupont" not in view
        assert b"confidentiels" not in view
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    assert data.isascii()


def test_envelope_is_null_sender_to_dnt() -> None:
    envelope = mdn_envelope(ORIGINAL)
    assert envelope.mail_from == ""
    assert envelope.addresses == ("dr.martin@clinique-b.test",)


def test_several_dnt_addresses() -> None:
    headers = b"Disposition-Notification-To: a@x.test, B <b@y.test>, not-an-address\r\n\r\n"
    assert mdn_recipients(headers) == ("a@x.test", "b@y.test")


# -- when --------------------------------------------------------------------------------

MDN_CT = b"Content-Type: multipart/report; report-type=disposition-notification;\r\n boundary=x\r\n"
DSN_CT = b'Content-Type: multipart/report; boundary="y"; report-type="delivery-status"\r\n'
DNT = b"Disposition-Notification-To: <a@x.test>\r\n"


@pytest.mark.parametrize(
    ("headers", "return_path", "expected"),
    [
        (DNT, None, False),  # no reverse-path known: nobody to compare DNT with
        (b"Return-Path: <a@x.test>\r\n" + DNT, None, True),  # the field stands in
        (DNT, "a@x.test", True),
        (b"From: a@x.test\r\n", None, False),  # nobody asked
        (DNT + MDN_CT, None, False),  # never an MDN for an MDN
        (DNT + DSN_CT, None, False),  # nor for a DSN
        (DNT, "", False),  # null reverse-path from the envelope
        (b"Return-Path: <>\r\n" + DNT, None, False),  # null Return-Path field
        (b"Disposition-Notification-To: nonsense\r\n", None, False),
    ],
)
def test_should_send_mdn(headers: bytes, return_path: str | None, expected: bool) -> None:
    assert should_send_mdn(headers + b"\r\nbody\r\n", return_path) is expected


def test_is_report() -> None:
    assert is_report(MDN_CT) and is_report(DSN_CT)
    assert not is_report(b"Content-Type: multipart/report; report-type=other\r\n")
    assert not is_report(b"Content-Type: multipart/mixed\r\n")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (b"X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true", True),
        (b"x-direct-final-destination-delivery = required , TRUE", True),
        (b"X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,false", False),
        (b"signed-receipt-protocol=optional,pkcs7-signature", False),
    ],
)
def test_direct_final_delivery_option(options: bytes, expected: bool) -> None:
    headers = b"Disposition-Notification-Options: " + options + b"\r\n\r\n"
    assert wants_final_delivery_mdn(headers) is expected
    assert not wants_final_delivery_mdn(b"From: a@x.test\r\n\r\n")


def test_refusals() -> None:
    with pytest.raises(MdnRefused):
        build(original_headers=ORIGINAL.replace(b"Disposition-Notification-To", b"X-Old"))
    with pytest.raises(MdnRefused):
        build(return_path="")
    with pytest.raises(MdnRefused):
        build(original_headers=DNT + MDN_CT)
    with pytest.raises(NotificationRefused):
        build(final_recipient="x@y.test\r\nBcc: z@w.test")
    with pytest.raises(ValueError):
        build(disposition="displayed")
    with pytest.raises(MdnRefused):
        mdn_envelope(b"From: a@x.test\r\n\r\n")
