"""Header protection (RFC 9788), the outer header block, the Direct wrap and its
tamper rule: pure functions over bytes."""

from __future__ import annotations

import pytest

from gateway.relay import protect
from gateway.smime import header_protection, mime

MESSAGE = (
    b"Received: from client by mx.chu-a.test\r\n"
    b"From: Alice <alice.martin@chu-a.test>\r\n"
    b"To: Claire <claire.durand@clinique-b.test>\r\n"
    b"Cc: dan@clinique-b.test\r\n"
    b"Bcc: hidden@clinique-b.test\r\n"
    b"Subject: Compte rendu de\r\n M. Dupont Jean\r\n"
    b"Keywords: Dupont\r\n"
    b"X-Patient: Dupont\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\n"
    b"Message-ID: <m1@chu-a.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Le patient Dupont va mieux.\r\n"
)


def test_outer_header_hides_subject_and_unknown_fields() -> None:
    outer = protect.outer_header(protect.SplitMessage.of(MESSAGE), protect=True)
    text = outer.decode()
    assert "Dupont" not in text
    assert "Subject: [...]\r\n" in text
    assert "hidden@" not in text
    for kept in ("Received:", "From: Alice", "To: Claire", "Cc: dan@", "Date:", "Message-ID: <m1@"):
        assert kept in text
    assert "Content-Type" not in text and "MIME-Version" not in text


def test_outer_header_without_protection_keeps_all_but_bcc() -> None:
    outer = protect.outer_header(protect.SplitMessage.of(MESSAGE), protect=False)
    assert b"Subject: Compte rendu de\r\n M. Dupont Jean\r\n" in outer
    assert b"X-Patient" in outer and b"Bcc" not in outer


def test_cryptographic_payload_carries_the_real_headers() -> None:
    payload = protect.cryptographic_payload(
        protect.SplitMessage.of(MESSAGE), protect=True, wrap=False
    )
    entity = mime.parse_entity(payload)
    assert header_protection.header_protection_mode(entity) == "cipher"  # RFC 9788 §2.1
    fields = dict(header_protection.protected_header_fields(entity))
    assert fields["Subject"] == "Compte rendu de M. Dupont Jean"
    assert fields["From"] == "Alice <alice.martin@chu-a.test>"
    assert fields["Message-ID"] == "<m1@chu-a.test>"
    assert "Bcc" not in fields and b"hidden@" not in payload
    hp_outer = [v for n, v in header_protection.protected_header_fields(entity) if n == "HP-Outer"]
    assert "Subject: [...]" in hp_outer  # RFC 9788 §2.2
    assert not any(v.startswith("Received") for v in hp_outer)
    assert entity.content_type == "text/plain"
    assert payload.endswith(b"\r\n\r\nLe patient Dupont va mieux.\r\n")


def test_payload_without_protection_is_the_mime_entity() -> None:
    payload = protect.cryptographic_payload(
        protect.SplitMessage.of(MESSAGE), protect=False, wrap=False
    )
    assert payload.startswith(b"MIME-Version: 1.0\r\nContent-Type: text/plain")
    assert b"Subject" not in payload


def test_direct_wrap_is_message_rfc822_without_bcc() -> None:
    payload = protect.cryptographic_payload(
        protect.SplitMessage.of(MESSAGE), protect=True, wrap=True
    )
    wrapper = mime.parse_entity(payload)
    assert wrapper.content_type == "message/rfc822"
    assert wrapper.param("forwarded") == "no"
    inner = mime.parse_entity(payload, wrapper.body_start)
    assert inner.header_values("Subject") == ["Compte rendu de\r\n M. Dupont Jean"]
    assert inner.header_values("Bcc") == []
    assert inner.body == b"Le patient Dupont va mieux.\r\n"


def test_tamper_rule() -> None:
    split = protect.SplitMessage.of(MESSAGE)
    protect.check_tamper(split, "alice.martin@chu-a.test", ["claire.durand@clinique-b.test"])
    protect.check_tamper(split, "alice.martin@CHU-A.TEST", ["dan@clinique-b.test"])
    with pytest.raises(protect.TamperError, match=r"hidden@clinique-b\.test"):
        protect.check_tamper(split, "alice.martin@chu-a.test", ["hidden@clinique-b.test"])
    with pytest.raises(protect.TamperError, match="MAIL FROM"):
        protect.check_tamper(split, "mallory@chu-a.test", ["dan@clinique-b.test"])
    with pytest.raises(protect.TamperError, match="MAIL FROM"):
        protect.check_tamper(split, "", ["dan@clinique-b.test"])
    with_sender = protect.SplitMessage.of(b"Sender: sec@chu-a.test\r\n" + MESSAGE)
    protect.check_tamper(with_sender, "sec@chu-a.test", ["dan@clinique-b.test"])
