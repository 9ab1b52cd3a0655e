"""Postal letter of a text part whose charset Python does not know, or whose bytes do
not decode: the letter is made (never a failure DSN for a label), the text is read as
UTF-8 or windows-1252, and the letter and its manifest say so (session 6, H5-1).

Every message is real MIME, built here as bytes; every letter is read back with pypdf.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from annuaire.model import Entry, Mailbox
from gateway.relay.letter import Letter, decoding_warnings
from gateway.relay.letter_content import TextDecoding, decode_text, read_message
from gateway.relay.postal import render_letter, write_to_outbox

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
RECIPIENT = "helene.lefevre@clinique-b.test"
BODY = "Tension artérielle 12/8, cœur régulier.\nÀ revoir dans 3 mois.\n"


def entry() -> Entry:
    return Entry(
        key="810000000001",
        kind="person",
        display_name="Dr Hélène Lefèvre",
        organisation="Clinique du Parc",
        postal_address=("Service de cardiologie", "12 rue de l'Église"),
        postal_code="42000",
        city="Saint-Étienne",
        mailboxes=(Mailbox(RECIPIENT),),
    )


def raw_message(
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    subject: str = "Compte rendu",
    encoding: str = "8bit",
) -> bytes:
    """A single-part message with exactly these header values and body bytes."""
    head = (
        "From: Dr Alice Martin <alice.martin@chu-a.test>\r\n"
        f"To: {RECIPIENT}\r\n"
        f"Subject: {subject}\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode("ascii") + body


def letter_of(message: bytes, language: Any = "fr") -> Letter:
    return render_letter(message, entry(), "alice.martin@chu-a.test", now=NOW, language=language)


def text_of(letter: Letter) -> str:
    """All the letter's text, whitespace runs made single spaces (pypdf breaks lines)."""
    reader = PdfReader(io.BytesIO(letter.pdf))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


# --- unknown charsets: the letter is made, read as UTF-8 or windows-1252, marked ----------


@pytest.mark.parametrize("label", ["unknown-8bit", "x-unknown", "utf8x", "base64"])
def test_unknown_charset_over_utf8_is_read_as_utf8_and_marked(label: str) -> None:
    letter = letter_of(raw_message(BODY.encode("utf-8"), f"text/plain; charset={label}"))
    text = text_of(letter)
    assert "Tension artérielle 12/8, cœur régulier." in text
    assert f"jeu de caractères « {label} », inconnu ou inexact : elle a été lue en utf-8." in text
    assert "vérifiez auprès de l'expéditeur" in text
    assert letter.manifest["text_decoding"] == [
        {"declared": label, "read_as": "utf-8", "replaced": 0}
    ]


def test_unknown_charset_over_windows_1252_keeps_oe_euro_and_counts_undefined_bytes() -> None:
    body = "Cœur : 35 € ; « réf. »\n".encode("cp1252") + b"dose \x81 mg\n"
    letter = letter_of(raw_message(body, "text/plain; charset=x-unknown"), language="en")
    text = text_of(letter)
    assert "Cœur : 35 € ; « réf. »" in text
    assert "dose \ufffd mg" in text
    assert "it was read as windows-1252. 1 unreadable character(s) in it are shown as" in text
    assert letter.manifest["text_decoding"] == [
        {"declared": "x-unknown", "read_as": "windows-1252", "replaced": 1}
    ]


def test_unknown_charset_in_base64_html_and_inline_parts_one_warning_per_label() -> None:
    msg = EmailMessage()
    msg["From"] = "alice.martin@chu-a.test"
    msg["To"] = RECIPIENT
    msg["Subject"] = "Compte rendu"
    msg.make_mixed()
    for text in ("Premier : fièvre", "Second : hépatite"):
        part = EmailMessage()
        part.set_payload(text.encode("utf-8"))
        part["Content-Type"] = "text/plain; charset=utf8x"
        part["Content-Transfer-Encoding"] = "8bit"
        msg.attach(part)
    html = EmailMessage()
    html.set_content(b"<p>Troisi\xe8me : \x9cd\xe8me</p>", maintype="text", subtype="html")
    html.replace_header("Content-Type", "text/html; charset=unknown-8bit")
    msg.attach(html)
    letter = letter_of(bytes(msg))
    text = text_of(letter)
    assert "Premier : fièvre" in text and "Second : hépatite" in text
    assert "Troisième : œdème" in text  # base64, HTML reduced, read as windows-1252
    assert letter.manifest["text_decoding"] == [
        {"declared": "utf8x", "read_as": "utf-8", "replaced": 0},
        {"declared": "unknown-8bit", "read_as": "windows-1252", "replaced": 0},
    ]
    assert text.count("Attention : ") == 2


# --- known or missing labels that do not fit the bytes: never a silent change ------------


def test_utf8_label_over_latin1_bytes_counts_the_replaced_characters() -> None:
    letter = letter_of(raw_message(BODY.encode("latin-1", errors="replace")))
    text = text_of(letter)
    assert "Tension art\ufffdrielle" in text
    assert "3 caractère(s) illisible(s) y sont remplacés par « \ufffd »" in text  # é é À
    assert letter.manifest["text_decoding"] == [
        {"declared": "utf-8", "read_as": "utf-8", "replaced": 3}
    ]


def test_no_charset_over_utf8_bytes_is_read_as_utf8_and_marked() -> None:
    letter = letter_of(raw_message(BODY.encode("utf-8"), "text/plain"))
    text = text_of(letter)
    assert "Tension artérielle 12/8, cœur régulier." in text  # not "art\ufffd\ufffdrielle"
    assert "ne déclarait pas son jeu de caractères : elle a été lue en utf-8." in text
    assert letter.manifest["text_decoding"] == [{"declared": "", "read_as": "utf-8", "replaced": 0}]


def test_latin1_label_keeps_the_windows_1252_characters_unmarked() -> None:
    body = "Le cœur, 35 €, l’épreuve\n".encode("cp1252")  # 0x9C 0x80 0x92: C1 in Latin-1
    letter = letter_of(raw_message(body, "text/plain; charset=iso-8859-1"))
    text = text_of(letter)
    assert "Le cœur, 35 €, l’épreuve" in text
    assert letter.manifest["text_decoding"] == []
    assert "Attention" not in text


def test_subject_with_an_unknown_charset_is_marked() -> None:
    message = raw_message(BODY.encode("utf-8"), subject="=?x-unknown?q?Bilan_h=E9patique?=")
    letter = letter_of(message)
    assert "l'objet contient 1 caractère(s) illisible(s)" in text_of(letter)
    assert letter.manifest["subject_replaced"] == 1


def test_a_clean_message_has_no_warning() -> None:
    letter = letter_of(raw_message(BODY.encode("utf-8")))
    text = text_of(letter)
    assert "Tension artérielle 12/8, cœur régulier." in text
    assert "Attention" not in text
    assert letter.manifest["text_decoding"] == [] and letter.manifest["subject_replaced"] == 0


def test_the_outbox_manifest_carries_the_decoding(tmp_path: Path) -> None:
    letter = letter_of(raw_message(BODY.encode("utf-8"), "text/plain; charset=x-unknown"))
    _, manifest_path = write_to_outbox(tmp_path / "outbox", "q1", RECIPIENT, letter)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["text_decoding"] == [
        {"declared": "x-unknown", "read_as": "utf-8", "replaced": 0}
    ]


# --- the decision, unit by unit ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "declared", "expected"),
    [
        (b"ok", "utf-8", ("ok", None)),
        (b"ok", None, ("ok", None)),
        (b"ok", "x-unknown", ("ok", TextDecoding("x-unknown", "utf-8", 0))),
        (b"\xc3\xa9", "US-ASCII", ("é", TextDecoding("us-ascii", "utf-8", 0))),
        (b"\xe9\x81", None, ("é\ufffd", TextDecoding("", "windows-1252", 1))),
        (b"\xe9", "zlib", ("é", TextDecoding("zlib", "windows-1252", 0))),  # not a text codec
        (b"\xe9", "punycode", ("é", TextDecoding("punycode", "windows-1252", 0))),
        (b"caf\\xe9", "unicode_escape", ("caf\\xe9", TextDecoding("unicode_escape", "utf-8", 0))),
        (b"\x80", "latin1", ("€", None)),
        (b"a\x81", "windows-1252", ("a\ufffd", TextDecoding("windows-1252", "windows-1252", 1))),
        (
            b"\xe9",
            "utf-8\n\x1b[31m" + "x" * 60,
            ("é", TextDecoding("utf-8 [31m" + "x" * 30, "windows-1252", 0)),
        ),
    ],
)
def test_decode_text(
    payload: bytes, declared: str | None, expected: tuple[str, TextDecoding | None]
) -> None:
    assert decode_text(payload, declared) == expected


def test_warnings_in_english() -> None:
    content = read_message(raw_message(b"caf\xe9", "text/plain; charset=utf8x"))
    assert decoding_warnings(content, "en") == (
        "Warning: part of the text below declared the character set “utf8x”, unknown or "
        "wrong: it was read as windows-1252. If in doubt, check with the sender.",
    )
