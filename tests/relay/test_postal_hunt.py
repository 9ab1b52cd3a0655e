"""Adversarial hunt on the postal fallback (session 5, H14): hostile PDFs, names and
addresses against ``gateway.relay.letter``/``enclosures``/``letter_content``/``postal``,
and the quarantine purge against a planted link.

Each finding is a test that failed before its fix (or still fails: see the report);
what held is kept as cheap regression tests at the end of the file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import tracemalloc
import unicodedata
import zlib
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF
from fpdf.fonts import TTFFont
from pypdf import PdfReader
from pypdf.generic import ArrayObject

from gateway.inbound.quarantine import purge_expired
from gateway.pki.dev import DevPki
from gateway.relay.enclosures import plan_enclosures
from gateway.relay.letter import FONT_DIRECTORY
from gateway.relay.letter_content import MAX_NAME_CHARACTERS, Attachment, read_message
from gateway.relay.letter_sandbox import render_letters_isolated
from gateway.relay.postal import (
    NoPostalAddress,
    OutboxError,
    PostalError,
    UnreadableMessage,
    render_letter,
    write_to_outbox,
)
from gateway.relay.postal_address import DL_WINDOW
from gateway.spool import RECEIVED
from gateway.spool.ids import new_queue_id
from tests.inbound.site import (
    ALICE,
    FROM_OUTSIDE,
    LETTER,
    MAILDIR,
    OpenSite,
    envelope,
    opened_site,
    real_now,
)
from tests.inbound.test_quarantine import RETENTION, held_by_agent
from tests.relay.test_agent_stage import ALICE as AGENT_ALICE
from tests.relay.test_agent_stage import PAUL, dsn_by_action, make_site
from tests.relay.test_agent_stage import Site as AgentSite
from tests.relay.test_agent_stage import envelope as agent_envelope
from tests.relay.test_postal import NOW, POINTS_PER_MM, entry, message, render

# --- hand-made PDFs -------------------------------------------------------------------------


def raw_pdf(objects: dict[int, str]) -> bytes:
    """A classic-xref PDF of ``objects`` (object 1 is the catalog)."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = out.tell()
        out.write(f"{number} 0 obj\n{objects[number]}\nendobj\n".encode("latin-1"))
    xref = out.tell()
    size = max(objects) + 1
    out.write(f"xref\n0 {size}\n0000000000 65535 f \n".encode())
    for number in range(1, size):
        used = number in offsets
        out.write(f"{offsets.get(number, 0):010d} 00000 {'n' if used else 'f'} \n".encode())
    out.write(f"trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def one_page_pdf(catalog_extra: str = "", page_extra: str = "") -> bytes:
    return raw_pdf(
        {
            1: f"<< /Type /Catalog /Pages 2 0 R {catalog_extra} >>",
            2: "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            3: f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] {page_extra} >>",
        }
    )


def shared_page_tree_pdf(fanout: int) -> bytes:
    """A page tree bomb: the root lists one inner node ``fanout`` times, which lists one
    page ``fanout`` times: ``fanout**2`` pages from a few kilobytes."""
    root_kids = " ".join(["3 0 R"] * fanout)
    inner_kids = " ".join(["4 0 R"] * fanout)
    return raw_pdf(
        {
            1: "<< /Type /Catalog /Pages 2 0 R >>",
            2: f"<< /Type /Pages /Kids [{root_kids}] /Count {fanout * fanout} >>",
            3: f"<< /Type /Pages /Parent 2 0 R /Kids [{inner_kids}] /Count {fanout} >>",
            4: "<< /Type /Page /Parent 3 0 R /MediaBox [0 0 595 842] >>",
        }
    )


def page_text(pdf: bytes, page: int = 0) -> str:
    return PdfReader(io.BytesIO(pdf)).pages[page].extract_text()


# --- finding 1: a page tree bomb is expanded in full ------------------------------------


def test_a_shared_page_tree_is_not_expanded() -> None:
    """A 4 KB attachment whose page tree names one node 300 times, each naming one page
    300 times: pypdf materialises 90,000 pages (about 60 MB and a second of CPU) before
    the 200-page budget says "too long"; 255 of them in one 1.5 MB message, rendered
    once per postal recipient, held the secure agent for minutes. The budget must
    bound the work, not only the result."""
    bomb = shared_page_tree_pdf(300)
    assert len(bomb) < 5_000
    tracemalloc.start()
    try:
        [enclosure] = plan_enclosures((Attachment("bombe.pdf", "application/pdf", bomb),))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert enclosure.reader is None and enclosure.note in ("too-long", "unreadable")
    assert peak < 5_000_000, f"{peak / 1e6:.0f} MB to refuse a {len(bomb)} byte PDF"


def test_a_long_but_honest_pdf_is_still_listed_as_too_long() -> None:
    """Regression for the fix: 201 real pages are "too long", as before."""
    pdf = FPDF()
    for _ in range(201):
        pdf.add_page()
    [enclosure] = plan_enclosures((Attachment("long.pdf", "application/pdf", bytes(pdf.output())),))
    assert enclosure.reader is None and enclosure.note == "too-long"


def object_stream_pdf(padding: int) -> bytes:
    """One page whose page object sits in a compressed object stream followed by
    ``padding`` spaces (zlib: about 1,000 to 1; the xref is a cross-reference stream)."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = {}
    for number, body in ((1, "<< /Type /Catalog /Pages 2 0 R >>"), (2, PAGES_OF_ONE)):
        offsets[number] = out.tell()
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode())
    header = b"3 0 "
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>"
    packed = zlib.compress(header + page + b" " * padding, 9)
    offsets[4] = out.tell()
    out.write(
        f"4 0 obj\n<< /Type /ObjStm /N 1 /First {len(header)} /Filter /FlateDecode"
        f" /Length {len(packed)} >>\nstream\n".encode()
        + packed
        + b"\nendstream\nendobj\n"
    )
    offsets[5] = out.tell()
    rows = [(0, 0, 65535), (1, offsets[1], 0), (1, offsets[2], 0), (2, 4, 0)]
    rows += [(1, offsets[4], 0), (1, offsets[5], 0)]
    table = b"".join(struct.pack(">BIH", *row) for row in rows)
    out.write(
        f"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 2] /Root 1 0 R /Length {len(table)} >>"
        "\nstream\n".encode()
        + table
        + f"\nendstream\nendobj\nstartxref\n{offsets[5]}\n%%EOF\n".encode()
    )
    return out.getvalue()


PAGES_OF_ONE = "<< /Type /Pages /Kids [3 0 R] /Count 1 >>"


def test_a_whitespace_bomb_costs_the_secure_agent_nothing_and_is_refused() -> None:
    """pypdf inflates an object stream up to 75 MB (its own per-stream limit) and then
    reads the spaces after the object one byte at a time (``read_non_whitespace``,
    about 80 ns a byte). One 68 KB attachment holding 70 MB of spaces took 5.6 s of
    CPU and 146 MB (measured; three of them 17 s and 285 MB); a 50 MB message holds
    hundreds, and the per-stream limit does not bound their sum. No page budget can
    bound that, so the secure agent renders letters in a child process without keys,
    limited in CPU and memory (``gateway.relay.letter_sandbox``): here a message of
    such attachments to three postal recipients meets a 3 s CPU limit (their one child
    is killed) and ends as a permanent ``PostalError`` for each of them (the sender's
    failure DSN); the agent's own memory does not move."""
    bomb = object_stream_pdf(70_000_000)
    attachments = [(f"bombe{n}.pdf", "application", "pdf", bomb) for n in range(4)]
    raw = message(attachments=attachments)
    recipients = [entry(key=f"8100000000{n:02d}") for n in range(3)]
    tracemalloc.start()
    try:
        outcomes = asyncio.run(
            render_letters_isolated(
                raw, recipients, "alice.martin@chu-a.test", now=NOW, cpu_seconds=3
            )
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(outcomes) == 3
    for refused in outcomes:
        assert isinstance(refused, PostalError) and refused.permanent
        assert "within its limits" in refused.reason
    assert peak < 16_000_000, f"{peak / 1e6:.0f} MB in the agent's own process"


def test_an_ordinary_letter_is_the_same_from_the_child_process() -> None:
    raw = message(attachments=[("compte-rendu.pdf", "application", "pdf", one_page_pdf())])
    here = render(raw)
    (isolated,) = asyncio.run(
        render_letters_isolated(raw, [entry()], "alice.martin@chu-a.test", now=NOW)
    )
    assert not isinstance(isolated, PostalError)
    assert isolated.manifest == here.manifest
    assert len(PdfReader(io.BytesIO(isolated.pdf)).pages) == here.manifest["pages"]["total"]


# --- finding 2: a PDF pypdf opens but cannot append crashes the letter ------------------

UNAPPENDABLE = {
    "annotations that are numbers": one_page_pdf(page_extra="/Annots [7 8]"),
    "a link action that is a number": raw_pdf(
        {
            1: "<< /Type /Catalog /Pages 2 0 R >>",
            2: "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            3: "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Annots [4 0 R] >>",
            4: "<< /Type /Annot /Subtype /Link /A 5 /Rect [0 0 1 1] >>",
        }
    ),
    "article beads that are a number": one_page_pdf(page_extra="/B 7"),
    "threads that are numbers": one_page_pdf("/Threads [5]", "/B [5]"),
}


@pytest.mark.parametrize("pdf", UNAPPENDABLE.values(), ids=UNAPPENDABLE.keys())
def test_a_pdf_pypdf_cannot_append_is_listed_not_a_crash(pdf: bytes) -> None:
    """enclosures.py: "any exception there makes the PDF 'listed, not appended', never a
    crash". These open and count one page, then ``PdfWriter.append`` raised
    AttributeError/TypeError out of ``render_letter``: not a ``PostalError``, so the
    relay agent held the whole message ("agent error: AttributeError"), no DSN."""
    letter = render(message(attachments=[("annexe.pdf", "application", "pdf", pdf)]))
    assert len(PdfReader(io.BytesIO(letter.pdf)).pages) == 1
    assert letter.manifest["attachments"] == {"appended": 0, "listed_only": 1}
    text = page_text(letter.pdf)
    assert "annexe.pdf" in text and "PDF illisible" in text


def test_a_good_pdf_beside_a_broken_one_is_still_appended() -> None:
    good = FPDF()
    good.set_font("helvetica", size=12)
    good.add_page()
    good.cell(0, 10, "Annexe valide")
    raw = message(
        attachments=[
            ("casse.pdf", "application", "pdf", UNAPPENDABLE["annotations that are numbers"]),
            ("bon.pdf", "application", "pdf", bytes(good.output())),
        ]
    )
    letter = render(raw)
    assert letter.manifest["attachments"] == {"appended": 1, "listed_only": 1}
    assert "Annexe valide" in page_text(letter.pdf, 1)


@pytest.fixture
async def agent_site(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[AgentSite]:
    async for built in make_site(dev_pki, tmp_path / "agent"):
        yield built


async def test_the_agent_posts_a_letter_despite_an_unappendable_pdf(
    agent_site: AgentSite,
) -> None:
    """The same PDF through the secure agent stage: the letter is posted and the sender
    told ("relayed"), instead of the message held for an AttributeError."""
    msg = EmailMessage()
    msg["From"] = f"Alice Martin <{AGENT_ALICE}>"
    msg["To"] = PAUL
    msg["Subject"] = "Compte rendu"
    msg.set_content("Voici le compte rendu.")
    pdf = UNAPPENDABLE["annotations that are numbers"]
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="annexe.pdf")
    await agent_site.stage.received.recover()
    await agent_site.add(agent_envelope(PAUL), bytes(msg))
    outcome = await agent_site.stage.process_next()
    assert outcome is not None and outcome.disposition == "completed", outcome
    outbox = agent_site.config.postal.outbox
    assert len(list(outbox.glob("*.pdf"))) == 1 and len(list(outbox.glob("*.json"))) == 1
    assert "relayed" in dsn_by_action(await agent_site.entries(RECEIVED))


# --- finding 3: the attachment's active content reaches the print operator -------------

ACTIVE_PDF = raw_pdf(
    {
        1: "<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R /AA << /WC 5 0 R >>"
        " /Names << /JavaScript << /Names [(a) 5 0 R] >> >>"
        " /AcroForm << /Fields [10 0 R] /XFA 8 0 R >> /Outlines 11 0 R >>",
        2: "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /AA << /O 5 0 R >>"
        " /Annots [4 0 R 6 0 R 10 0 R] >>",
        4: "<< /Type /Annot /Subtype /Link /Rect [0 0 595 842] /A << /S /Launch /F (cmd.exe) >> >>",
        5: "<< /S /JavaScript /JS (app.alert\\('MARKERJS'\\)) >>",
        6: "<< /Type /Annot /Subtype /FileAttachment /Rect [0 0 10 10] /FS 7 0 R >>",
        7: "<< /Type /Filespec /F (evil.exe) /EF << /F 9 0 R >> >>",
        8: "<< /Length 3 >>\nstream\nxfa\nendstream",
        9: "<< /Type /EmbeddedFile /Length 9 >>\nstream\nMZPAYLOAD\nendstream",
        10: "<< /Type /Annot /Subtype /Widget /FT /Tx /T (nom) /V (Dupont) /P 3 0 R"
        " /Rect [50 700 250 720] /AP << /N 13 0 R >> /AA << /K 5 0 R >> /Parent 14 0 R >>",
        11: "<< /Type /Outlines /First 12 0 R /Last 12 0 R /Count 1 >>",
        12: "<< /Title (x) /Parent 11 0 R /A 5 0 R >>",
        13: "<< /Type /XObject /Subtype /Form /BBox [0 0 200 20] /Length 37 >>\nstream\n"
        "BT /Helv 12 Tf 2 5 Td (Dupont) Tj ET\nendstream",
        14: "<< /T (patient) /Kids [10 0 R] /AA << /C 5 0 R >> >>",  # not in /Fields
    }
)
ACTIVE_MARKERS = (
    b"MARKERJS",
    b"/JavaScript",
    b"/Launch",
    b"/AA",
    b"/OpenAction 5",
    b"/EmbeddedFile",
    b"MZPAYLOAD",
    b"/XFA",
)


def test_an_appended_pdf_carries_no_script_launch_or_embedded_file() -> None:
    """The letter PDF goes to a print operator's workstation or a mailing provider:
    page-open JavaScript (/AA /O), a page-wide /Launch link, an embedded executable
    (FileAttachment) and XFA from the sender's PDF were copied into it as they were.
    What prints (the page, a form field's appearance) must stay; what acts must go."""
    letter = render(message(attachments=[("actif.pdf", "application", "pdf", ACTIVE_PDF)]))
    assert letter.manifest["attachments"] == {"appended": 1, "listed_only": 0}
    assert [marker for marker in ACTIVE_MARKERS if marker in letter.pdf] == []
    appended = PdfReader(io.BytesIO(letter.pdf)).pages[1]
    annotations = appended["/Annots"]
    assert isinstance(annotations, ArrayObject)
    subtypes = [annotation.get_object()["/Subtype"] for annotation in annotations]
    assert subtypes == ["/Widget"]  # the filled-in form field still prints


# --- finding 4: zero-width characters make fpdf2's line breaking quadratic ------------

ZERO_WIDTH = ("\u0301", "\u200b", "\u200d", "\ufeff", "\u2060", "\ufe0f", "\u034f")


def longest_zero_width_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if unicodedata.category(char) in ("Mn", "Me", "Cf") else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("char", ZERO_WIDTH, ids=[f"U+{ord(c):04X}" for c in ZERO_WIDTH])
def test_a_run_of_zero_width_characters_is_bounded(char: str) -> None:
    """fpdf2 re-measures the whole line for each character it adds to it, so the cost
    of a line is quadratic in its characters; a character of zero width never fills a
    line. "e" + 5,000 / 10,000 / 20,000 U+0301 took 1.1 / 4.0 / 15 s of CPU (measured);
    498,000 of them (a 1 MB body, under the 500,000-character limit) ran past 5 minutes
    and would take hours, once per postal recipient, in the secure agent. The body
    reaching the drawing must hold no long run of zero-width characters."""
    content = read_message(message(body="e" + char * 10_000 + " fin\n"))
    assert longest_zero_width_run(content.body) <= 3
    assert content.body.startswith("e") and content.body.endswith(" fin")


def test_ordinary_marks_and_joiners_are_kept() -> None:
    """NFD Vietnamese (two marks on one letter), Hebrew points, an emoji ZWJ sequence."""
    text = (
        "Vi\u1ec7t: e\u0323\u0302 ; \u05e9\u05c1\u05b8 ; \U0001f468\u200d\U0001f469\u200d\U0001f467"
    )
    assert read_message(message(body=text + "\n")).body == text


# --- finding 5: two recipients, one pair of file names ----------------------------------


def test_recipients_whose_addresses_casefold_alike_get_two_letters(tmp_path: Path) -> None:
    """postal.py names the files after SHA-256 of ``address.casefold()``; casefold is
    more than case: "straße" -> "strasse", "ﬁ" -> "fi", KELVIN SIGN -> "k". Two
    distinct recipients of one message (RFC 6531 local parts) got the same two file
    names: the second letter replaced the first, and both were reported "sent by post"."""
    queue_id = new_queue_id()
    first = write_to_outbox(tmp_path, queue_id, "strasse@clinique-b.test", render())
    second = write_to_outbox(tmp_path, queue_id, "straße@clinique-b.test", render())
    assert first != second
    assert len(list(tmp_path.iterdir())) == 4


# --- finding 6: an address line that overflows the window -------------------------------

LONG_ORGANISATION = (
    "Groupement Hospitalier de Territoire Loire — Centre Hospitalier Universitaire de Saint-Étienne"
)


LONG_STREET = "Centre Hospitalier Universitaire, Hôpital Nord, avenue Albert Raimond, bâtiment A"


@pytest.mark.parametrize(
    "changes",
    [{"organisation": LONG_ORGANISATION}, {"postal_address": (LONG_STREET,)}],
    ids=["organisation", "street"],
)
def test_an_address_line_too_wide_for_the_window_is_not_printed_past_it(
    changes: dict[str, Any],
) -> None:
    """A 93-character organisation (a plausible FINESS label) or an 81-character
    street line (the annuaire accepts 1024): at the 7 pt floor the line still runs to
    x = 228 / 213 mm, past the window (200 mm) and past the A4 sheet (210 mm), and the
    manifest only says "longer than 38 characters". The letter must keep every line
    inside the window, or refuse (NoPostalAddress -> failure DSN): never post an
    address that the window cuts."""
    try:
        letter = render(recipient=entry(**changes))
    except NoPostalAddress:
        return  # refusing is a correct answer: the sender is told
    metrics = FPDF(unit="mm")
    metrics.add_font("DejaVu", "", str(FONT_DIRECTORY / "DejaVuSans.ttf"))
    right_edges: dict[str, float] = {}

    def visit(text: str, cm: list[float], tm: list[float], _font: Any, size: float) -> None:
        line = text.strip()
        if line in letter.manifest["address_lines"]:
            metrics.set_font("DejaVu", size=size)
            left_mm = (tm[4] * cm[0] + cm[4]) / POINTS_PER_MM
            right_edges[line] = left_mm + metrics.get_string_width(line)

    try:
        PdfReader(io.BytesIO(letter.pdf)).pages[0].extract_text(visitor_text=visit)
    finally:
        for font in metrics.fonts.values():  # fpdf2 never closes the TTF it opened
            if isinstance(font, TTFFont):
                font.ttfont.close()
    assert set(right_edges) == set(letter.manifest["address_lines"])
    window_right = DL_WINDOW.x + DL_WINDOW.width
    assert all(edge <= window_right for edge in right_edges.values()), {
        line[:20]: round(edge, 1) for line, edge in right_edges.items()
    }


# --- finding 7: peer text in the manifest is not cleaned --------------------------------


def test_manifest_sender_carries_no_control_or_bidi_character(tmp_path: Path) -> None:
    """The manifest is "what an operator's tooling logs". The envelope sender goes in
    raw: an RFC 6531 local part may hold U+009B (C1 CSI) and U+202E (RIGHT-TO-LEFT
    OVERRIDE) (gateway.smtp.envelope accepts any non-ASCII), and json.dumps with
    ensure_ascii=False writes both as they are. The letter prints the sender through
    ``clean_label``; the manifest should too (or be written with ensure_ascii)."""
    sender = "dr\u009b31m\u202eevil@chu-a.test"
    letter = render_letter(message(), entry(), sender, now=NOW)
    _, manifest_path = write_to_outbox(tmp_path, new_queue_id(), "x@clinique-b.test", letter)
    text = manifest_path.read_text("utf-8")
    assert "\u009b" not in text and "\u202e" not in text


# --- held: names, outbox, counts ----------------------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd.pdf",
    "/root/.ssh/authorized_keys",
    "a\x00b\x1b[31m\x9b31m.pdf",
    "facture\u202efdp.exe",
    "résumé\r\nBcc: x@y.test.pdf",
    "x" * 5000 + ".pdf",
]


def test_hostile_attachment_names_stay_on_paper(tmp_path: Path) -> None:
    """Names are printed cleaned and bounded; none reaches a file name or the manifest."""
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("corps")
    for name in HOSTILE_NAMES:
        msg.add_attachment(b"data", maintype="application", subtype="octet-stream")
        *_, part = msg.iter_attachments()
        part.set_param("filename", name, header="Content-Disposition")
    letter = render(bytes(msg))
    queue_id = new_queue_id()
    pdf_path, manifest_path = write_to_outbox(tmp_path, queue_id, "x@clinique-b.test", letter)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pdf_path.name, manifest_path.name])
    manifest = manifest_path.read_text("utf-8")
    for fragment in ("passwd", "authorized_keys", "facture", "résumé", "xxxxxxxx"):
        assert fragment not in manifest
    text = page_text(letter.pdf)
    joined = text.replace("\n", "")  # the letter wraps a long name
    assert "x" * MAX_NAME_CHARACTERS in joined and "x" * (MAX_NAME_CHARACTERS + 1) not in joined
    assert not any(c in text for c in "\x00\x1b\x9b\r")
    assert "../../etc/passwd.pdf" in joined and "/root/.ssh/authorized_keys" in joined
    assert "factureexe.pdf" not in joined  # U+202E does not reorder the printed name
    assert json.loads(manifest)["attachments"] == {"appended": 0, "listed_only": 6}


def test_an_outbox_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    outbox = tmp_path / "postal"
    outbox.symlink_to(target)
    with pytest.raises(OutboxError):
        write_to_outbox(outbox, new_queue_id(), "x@clinique-b.test", render())
    assert list(target.iterdir()) == []


def test_planted_links_at_the_letter_names_are_replaced_not_followed(tmp_path: Path) -> None:
    queue_id = new_queue_id()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    outbox = tmp_path / "postal"
    outbox.mkdir(mode=0o700)
    first_pdf, first_json = write_to_outbox(outbox, queue_id, "x@clinique-b.test", render())
    for path in (first_pdf, first_json):
        path.unlink()
        path.symlink_to(victim)
    write_to_outbox(outbox, queue_id, "x@clinique-b.test", render())
    assert victim.read_text() == "keep"
    assert not first_pdf.is_symlink() and not first_json.is_symlink()


def test_hundreds_of_attachments_are_a_permanent_error() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("corps")
    for number in range(300):
        msg.add_attachment(
            b"x", maintype="application", subtype="octet-stream", filename=f"{number}"
        )
    with pytest.raises(UnreadableMessage, match="MIME parts") as caught:
        render(bytes(msg))
    assert caught.value.permanent


# --- held: the quarantine purge and a planted link ----------------------------------------


@pytest.fixture
async def site(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[OpenSite]:
    async with opened_site(tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent") as opened:
        await opened.inbound.recover()
        yield opened


async def test_the_purge_never_touches_a_file_a_link_in_hold_points_to(
    site: OpenSite, tmp_path: Path
) -> None:
    """A quarantined record moved out of the spool, a symlink left in ``hold/`` in its
    place: the purge skips it (the spool reads with O_NOFOLLOW), the file stays."""
    queue_id = await held_by_agent(site)
    in_hold = site.inbound.dirs.state("hold") / queue_id
    outside = tmp_path / "outside-copy"
    os.rename(in_hold, outside)
    in_hold.symlink_to(outside)
    kept = outside.read_bytes()
    far = real_now() + RETENTION + timedelta(days=3650)
    assert await purge_expired(site.inbound, RETENTION, far) == []
    assert outside.read_bytes() == kept and in_hold.is_symlink()
    other = await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, LETTER)
    assert await site.inbound.locate(other) == "incoming"  # the purge touched hold/ only
