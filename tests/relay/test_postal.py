"""Postal fallback letter: rendering read back with pypdf, the window geometry, AFNOR
address lines, the outbox files (modes, atomicity, names), and hostile input."""

from __future__ import annotations

import io
import json
import os
import stat
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from annuaire.model import Entry, Mailbox
from gateway.relay.letter import MAX_LETTER_PAGES
from gateway.relay.letter_content import html_to_text
from gateway.relay.postal import (
    LetterTooLong,
    NoPostalAddress,
    OutboxError,
    PostalError,
    PostalUnavailable,
    UnreadableMessage,
    letter_stem,
    render_letter,
    write_to_outbox,
)
from gateway.relay.postal_address import ADDRESS_AREA, DL_WINDOW, PAGE_HEIGHT, format_postal_address
from gateway.spool.ids import new_queue_id

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
SUBJECT = "Résultats de Mme Dupont — suivi cardiologique"
RECIPIENT = "helene.lefevre@clinique-b.test"
POINTS_PER_MM = 72 / 25.4


def entry(**changes: Any) -> Entry:
    fields: dict[str, Any] = {
        "key": "810000000001",
        "kind": "person",
        "display_name": "Dr Hélène Lefèvre",
        "organisation": "Clinique du Parc",
        "postal_address": ("Service de cardiologie", "12 rue de l'Église"),
        "postal_code": "42000",
        "city": "Saint-Étienne",
        "mailboxes": (Mailbox(RECIPIENT),),
    }
    fields.update(changes)
    return Entry(**fields)


def small_pdf(pages: int, text: str = "Annexe") -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for number in range(pages):
        pdf.add_page()
        pdf.cell(0, 10, f"{text} {number + 1}")
    return bytes(pdf.output())


def message(body: str = "Chère consœur,\n\nVoici les résultats.\n", **kw: Any) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Dr Alice Martin <alice.martin@chu-a.test>"
    msg["To"] = RECIPIENT
    msg["Subject"] = kw.get("subject", SUBJECT)
    msg.set_content(body)
    if "html" in kw:
        msg.add_alternative(kw["html"], subtype="html")
    for name, maintype, subtype, data in kw.get("attachments", ()):
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return bytes(msg)


def page_text(pdf: bytes, page: int = 0) -> str:
    return PdfReader(io.BytesIO(pdf)).pages[page].extract_text()


def all_text(pdf: bytes) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)


def render(raw: bytes | None = None, **kw: Any) -> Any:
    return render_letter(
        message() if raw is None else raw,
        kw.pop("recipient", entry()),
        "alice.martin@chu-a.test",
        now=NOW,
        **kw,
    )


# --- content ------------------------------------------------------------------------------


def test_letter_carries_address_subject_body_and_attachments() -> None:
    raw = message(
        html="<p>Chère consœur (HTML)</p>",
        attachments=[
            ("compte-rendu.pdf", "application", "pdf", small_pdf(2, "Compte rendu")),
            ("radio.png", "image", "png", b"\x89PNG\r\n\x1a\n not really"),
        ],
    )
    letter = render(raw)
    reader = PdfReader(io.BytesIO(letter.pdf))
    assert len(reader.pages) == 3  # one page of letter + the two appended pages
    first = page_text(letter.pdf)
    for line in (
        "Dr Hélène Lefèvre",
        "Clinique du Parc",
        "12 rue de l'Église",
        "42000 SAINT ETIENNE",
        SUBJECT,
        "Voici les résultats.",
        "alice.martin@chu-a.test",
        "Le 28 novembre 2026",
    ):
        assert line in first, line
    assert "compte-rendu.pdf" in first and "2 page(s)" in first
    assert "radio.png" in first and "non imprimable" in first
    assert "(HTML)" not in first  # the html alternative says the same as the body
    assert "Compte rendu 1" in page_text(letter.pdf, 1)
    assert "Compte rendu 2" in page_text(letter.pdf, 2)


def test_manifest_fields_never_hold_the_subject_body_or_file_names() -> None:
    raw = message(attachments=[("dupont.pdf", "application", "pdf", small_pdf(1))])
    letter = render(raw)
    manifest = letter.manifest
    assert manifest["format"] == "missive-postal-letter" and manifest["version"] == 1
    assert manifest["pages"] == {"letter": 1, "appended": 1, "total": 2}
    assert manifest["attachments"] == {"appended": 1, "listed_only": 0}
    assert manifest["address_lines"][-1] == "42000 SAINT ETIENNE"
    assert manifest["recipient"] == {"key": "810000000001", "name": "Dr Hélène Lefèvre"}
    assert manifest["created"] == NOW.isoformat()
    dumped = json.dumps(manifest, ensure_ascii=False)
    assert "Dupont" not in dumped and "résultats" not in dumped and "dupont.pdf" not in dumped


def test_html_only_body_is_reduced_to_text() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Compte rendu"
    msg.set_content(
        "<html><head><style>p{}</style><script>alert(1)</script></head>"
        "<body><p>Premier&nbsp;paragraphe</p><div>Second <b>gras</b></div></body></html>",
        subtype="html",
    )
    text = page_text(render(bytes(msg)).pdf)
    assert "Premier" in text and "Second gras" in text
    assert "alert" not in text and "p{}" not in text
    assert html_to_text("a<br>b") == "a\nb"


def test_english_letter() -> None:
    text = page_text(render(language="en").pdf)
    assert "Subject: " + SUBJECT in text and "28 November 2026" in text


def test_body_text_is_printed_as_written() -> None:
    text = page_text(render(message(body="Total {nb} pages ; 中 ✓\n")).pdf)
    assert "Total {nb} pages" in text  # fpdf2's page-count alias is switched off
    assert "?" in text  # a character DejaVu Sans lacks is replaced, not dropped silently


def test_unusable_pdf_attachments_are_listed_not_appended() -> None:
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(small_pdf(1))))
    writer.encrypt("secret")
    encrypted = io.BytesIO()
    writer.write(encrypted)
    raw = message(
        attachments=[
            ("casse.pdf", "application", "pdf", b"%PDF-1.7 not a pdf at all"),
            ("protege.pdf", "application", "pdf", encrypted.getvalue()),
        ]
    )
    letter = render(raw)
    assert len(PdfReader(io.BytesIO(letter.pdf)).pages) == 1
    text = page_text(letter.pdf)
    assert "casse.pdf" in text and "PDF illisible" in text
    assert "protege.pdf" in text and "mot de passe" in text
    assert letter.manifest["attachments"] == {"appended": 0, "listed_only": 2}


# --- geometry -----------------------------------------------------------------------------


def test_address_block_prints_inside_the_dl_window() -> None:
    letter = render()
    assert DL_WINDOW.contains(letter.address_area)
    address = letter.manifest["address_lines"]
    positions: dict[str, tuple[float, float]] = {}

    def visit(text: str, cm: list[float], tm: list[float], *_: Any) -> None:
        if text.strip() in address:
            x_pt = tm[4] * cm[0] + cm[4]
            y_pt = tm[5] * cm[3] + cm[5]
            positions[text.strip()] = (x_pt / POINTS_PER_MM, PAGE_HEIGHT - y_pt / POINTS_PER_MM)

    PdfReader(io.BytesIO(letter.pdf)).pages[0].extract_text(visitor_text=visit)
    assert set(positions) == set(address)
    for x_mm, baseline_mm in positions.values():
        # the baseline of each line lies in the address frame, inside the window
        assert ADDRESS_AREA.x - 0.5 <= x_mm <= ADDRESS_AREA.x + 2
        assert ADDRESS_AREA.y < baseline_mm < ADDRESS_AREA.y + ADDRESS_AREA.height
        assert DL_WINDOW.x < x_mm and DL_WINDOW.y < baseline_mm < DL_WINDOW.y + DL_WINDOW.height
    ordered = sorted(positions.values(), key=lambda p: p[1])
    assert [line for line in address] == [
        next(k for k, v in positions.items() if v == p) for p in ordered
    ]


# --- the address (NF Z10-011) -------------------------------------------------------------


def test_address_lines_follow_afnor() -> None:
    block = format_postal_address(entry(postal_code="75015", city="Paris"))
    assert block.lines == (
        "Dr Hélène Lefèvre",
        "Clinique du Parc",
        "Service de cardiologie",
        "12 rue de l'Église",
        "75015 PARIS",
    )
    assert block.warnings == ()


def test_organisation_is_dropped_before_the_sixth_line_is_passed() -> None:
    lines = ("Bâtiment B", "Escalier 3", "12 rue des Lilas", "BP 12")
    block = format_postal_address(entry(postal_address=lines))
    assert block.lines == ("Dr Hélène Lefèvre", *lines, "42000 SAINT ETIENNE")
    with pytest.raises(NoPostalAddress, match="more than 6 lines"):
        format_postal_address(entry(postal_address=(*lines, "Lieu-dit")))


def test_long_line_is_flagged_and_still_fits_the_frame() -> None:
    long_street = "123 boulevard du Professeur Jean-Bernard Lévy-Dumoulin"
    letter = render(recipient=entry(postal_address=(long_street,), postal_code="2A004"))
    assert letter.manifest["address_warnings"] == [
        "line 3 longer than 38 characters",
        "postcode is not 5 digits",
    ]
    assert long_street in page_text(letter.pdf)


@pytest.mark.parametrize(
    "changes",
    [{"postal_address": ()}, {"postal_code": None}, {"city": None}, {"postal_address": (" ",)}],
)
def test_no_postal_address_is_a_permanent_postal_error(changes: dict[str, Any]) -> None:
    with pytest.raises(NoPostalAddress) as caught:
        render(recipient=entry(**changes))
    assert isinstance(caught.value, PostalError) and caught.value.permanent
    assert "postal address" in caught.value.reason


# --- hostile input ------------------------------------------------------------------------


def test_huge_body_is_bounded_by_the_page_limit() -> None:
    with pytest.raises(LetterTooLong, match=f"{MAX_LETTER_PAGES} pages"):
        render(message(body="ligne\n" * 5000))


def test_body_over_the_character_limit_is_refused_before_drawing() -> None:
    with pytest.raises(LetterTooLong, match="characters"):
        render(message(body="x" * 600_000))


BROKEN_MULTIPART = (
    b"Subject: x\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="abc"\r\n\r\n'
    b"no boundary line ever appears\r\n"
)
NO_BOUNDARY = b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nbody\r\n"


@pytest.mark.parametrize("raw", [b"", b"\r\n \r\n", BROKEN_MULTIPART, NO_BOUNDARY])
def test_malformed_mime_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(UnreadableMessage) as caught:
        render(raw)
    assert caught.value.permanent


def test_deep_mime_nesting_is_refused() -> None:
    inner = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for depth in range(40):
        boundary = f"b{depth}".encode()
        inner = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + inner
            + b"--"
            + boundary
            + b"--\r\n"
        )
    with pytest.raises(UnreadableMessage, match="deeper"):
        render(b"Subject: deep\r\nMIME-Version: 1.0\r\n" + inner)


def test_missing_font_is_a_temporary_error(tmp_path: Path) -> None:
    with pytest.raises(PostalUnavailable) as caught:
        render(font_directory=tmp_path)
    assert not caught.value.permanent and "fonts-dejavu-core" in caught.value.reason


# --- the outbox ---------------------------------------------------------------------------


def test_write_to_outbox_writes_pdf_and_manifest_0600(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "postal"
    queue_id = new_queue_id()
    letter = render()
    pdf_path, manifest_path = write_to_outbox(outbox, queue_id, RECIPIENT, letter)
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    assert sorted(p.name for p in outbox.iterdir()) == sorted([pdf_path.name, manifest_path.name])
    for path in (pdf_path, manifest_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.name.startswith(queue_id + "-")
        for secret in ("Dupont", "lefevre", "Hélène", "helene"):
            assert secret.lower() not in path.name.lower()
    assert pdf_path.read_bytes() == letter.pdf
    manifest = json.loads(manifest_path.read_text("utf-8"))
    assert manifest["queue_id"] == queue_id
    assert manifest["recipient_address"] == RECIPIENT
    assert manifest["pdf_file"] == pdf_path.name
    assert manifest["pdf_sha256"] == letter.manifest["pdf_sha256"]
    assert SUBJECT not in manifest_path.read_text("utf-8")


def domain_upper(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.upper()}"


def test_same_hand_off_twice_replaces_the_same_files(tmp_path: Path) -> None:
    queue_id = new_queue_id()
    first = write_to_outbox(tmp_path, queue_id, RECIPIENT, render())
    second = write_to_outbox(tmp_path, queue_id, domain_upper(RECIPIENT), render())
    assert first == second and len(list(tmp_path.iterdir())) == 2


def test_failed_manifest_leaves_no_partial_letter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename
    calls: list[str] = []

    def rename(source: Any, target: Any) -> None:
        calls.append(str(target))
        if str(target).endswith(".json"):
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OutboxError, match="No space left") as caught:
        write_to_outbox(tmp_path, new_queue_id(), RECIPIENT, render())
    assert not caught.value.permanent
    assert len(calls) == 2  # the PDF was renamed, then the manifest failed
    assert list(tmp_path.iterdir()) == []


def test_outbox_that_is_a_file_is_an_outbox_error(tmp_path: Path) -> None:
    blocker = tmp_path / "postal"
    blocker.write_text("not a directory")
    with pytest.raises(OutboxError):
        write_to_outbox(blocker, new_queue_id(), RECIPIENT, render())


def test_queue_id_must_be_a_plain_file_name() -> None:
    with pytest.raises(ValueError, match="queue id"):
        letter_stem("../etc/passwd", RECIPIENT)
    assert letter_stem("01ABC", RECIPIENT) == letter_stem("01ABC", domain_upper(RECIPIENT))
    # the local part compares exactly (RFC 5321 2.4): another mailbox, another letter
    assert letter_stem("01ABC", RECIPIENT) != letter_stem("01ABC", RECIPIENT.upper())
